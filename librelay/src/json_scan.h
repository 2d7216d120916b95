/* json_scan: a checking JSON scanner over a byte range, for the readers that must not build a
 * jansson DOM on the request's path (the SSE delta reader, the answer's usage, the request's
 * token estimate). */
#ifndef RELAY_JSON_SCAN_H
#define RELAY_JSON_SCAN_H

#include <stddef.h>
#include <stdint.h>

/*
 * Every reader built on this promises the same thing: where it answers, jansson (json_loadb with
 * no flags) would have given the same answer, and anything it is not sure of is left to jansson.
 * So the scanner refuses (returns 0) not only what is not JSON, but also what jansson might read
 * differently: a number with an exponent or more than 18 digits (jansson's overflow errors), a
 * \u0000 (jansson refuses NUL), a lone surrogate, bytes that are not UTF-8, nesting deeper than
 * RELAY_JS_MAX_DEPTH. A refusal therefore means "ask jansson", never "invalid".
 * Not thread-affine: a scanner is a pair of pointers on the caller's stack.
 */
#define RELAY_JS_MAX_DEPTH 32

typedef struct relay_jscan {
    const char *p, *end;
} relay_jscan_t;

enum {
    RELAY_JV_NONE,      /* not seen */
    RELAY_JV_UINT,      /* an integer >= 0 (n); "-0" too, as jansson reads it */
    RELAY_JV_OTHER_NUM, /* a negative integer or a number with a fraction */
    RELAY_JV_STRING,    /* [b, e) is the body between the quotes, still escaped */
    RELAY_JV_OBJECT,    /* [b, e) is the whole object, braces included */
    RELAY_JV_ARRAY,     /* [b, e) is the whole array */
    RELAY_JV_TRUE,
    RELAY_JV_OTHER /* false or null */
};

typedef struct relay_jval {
    int kind;
    int64_t n;         /* RELAY_JV_UINT */
    const char *b, *e; /* see the kinds; numbers and literals: their text */
} relay_jval_t;

void relay_js_ws(relay_jscan_t *s);
/* Skips whitespace; 1 (and consumed) when the next byte is c. */
int relay_js_char(relay_jscan_t *s, char c);
/* Whether [b, e) spells lit exactly. */
int relay_js_is(const char *b, const char *e, const char *lit);
/* A string, checked as jansson checks it; [*b, *e) is its body, still escaped. */
int relay_js_string(relay_jscan_t *s, const char **b, const char **e);
/* Unescapes the body [b, e) of a checked string into out (cap bytes, at least 4 more than the
 * result); the length, or -1 when it does not fit or holds anything unusual. Never longer than
 * e - b. */
long relay_js_unescape(const char *b, const char *e, char *out, size_t cap);
/* A key of an object being read: on_key must read its value (the scanner is past the ':'); 0
 * stops the walk (declined). depth is the value's. */
typedef int (*relay_js_key_fn)(void *ud, relay_jscan_t *s, const char *kb, const char *ke,
                               int depth);
/* An object at the scanner, every key handed to on_key (NULL: values checked and passed over). */
int relay_js_object(relay_jscan_t *s, int depth, relay_js_key_fn on_key, void *ud);
/* One value of any kind at the scanner (leading whitespace skipped) into v (may be NULL);
 * objects and arrays are checked through and passed over. */
int relay_js_value(relay_jscan_t *s, relay_jval_t *v, int depth);

#endif
