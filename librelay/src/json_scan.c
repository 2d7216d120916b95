/* json_scan: a checking JSON scanner that agrees with jansson or declines (see json_scan.h). */
#include "json_scan.h"

#include <string.h>

#include "util.h"

void relay_js_ws(relay_jscan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

int relay_js_char(relay_jscan_t *s, char c)
{
    relay_js_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

int relay_js_is(const char *b, const char *e, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(e - b) == n && !memcmp(b, lit, n);
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d > 15)
            return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

/* A \u escape at p (6 bytes, or 12 for a surrogate pair, before end): its code point and length,
 * 0 for a NUL (jansson refuses it), a lone surrogate or bad hex. */
static size_t u_escape(const char *p, const char *end, unsigned *cp)
{
    unsigned lo;
    if (end - p < 6 || p[1] != 'u' || !hex4(p + 2, cp) || *cp == 0)
        return 0;
    if (*cp >= 0xDC00 && *cp < 0xE000)
        return 0;
    if (*cp < 0xD800 || *cp >= 0xDC00)
        return 6;
    if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 ||
        lo > 0xDFFF)
        return 0;
    *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
    return 12;
}

int relay_js_string(relay_jscan_t *s, const char **b, const char **e)
{
    if (!relay_js_char(s, '"'))
        return 0;
    *b = s->p;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            *e = s->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (s->end - s->p < 2)
                return 0;
            char x = s->p[1];
            unsigned cp;
            size_t n = x && strchr("\"\\/bfnrt", x) ? 2 : u_escape(s->p, s->end, &cp);
            if (!n)
                return 0;
            s->p += n;
            continue;
        }
        if (c < 0x80) {
            s->p++;
            continue;
        }
        /* UTF-8: no overlong form, no surrogate, nothing past U+10FFFF. */
        uint32_t cp;
        size_t n = relay_utf8_decode((const unsigned char *)s->p, (size_t)(s->end - s->p), &cp);
        if (!n)
            return 0;
        s->p += n;
    }
    return 0;
}

long relay_js_unescape(const char *b, const char *e, char *out, size_t cap)
{
    size_t o = 0;
    while (b < e) {
        if (o + 4 > cap)
            return -1;
        if (*b != '\\') {
            out[o++] = *b++;
            continue;
        }
        if (e - b < 2)
            return -1;
        char c = b[1];
        const char *map = strchr("\"\\/bfnrt", c);
        if (map && c) {
            static const char to[] = "\"\\/\b\f\n\r\t";
            out[o++] = to[map - "\"\\/bfnrt"];
            b += 2;
            continue;
        }
        unsigned cp;
        size_t n = u_escape(b, e, &cp);
        if (!n)
            return -1;
        b += n;
        o += put_utf8(out + o, cp);
    }
    return (long)o;
}

static int js_number(relay_jscan_t *s, relay_jval_t *v)
{
    const char *b = s->p;
    if (s->p < s->end && *s->p == '-')
        s->p++;
    const char *digits = s->p;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
    size_t nd = (size_t)(s->p - digits);
    if (!nd || nd > 18)
        return 0; /* no digits, or maybe beyond int64 (jansson's error to give) */
    int real = 0;
    if (s->p < s->end && *s->p == '.') {
        const char *f = ++s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
        if (s->p == f)
            return 0;
        real = 1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E'))
        return 0; /* may overflow: jansson decides */
    if (s->p < s->end && ((*s->p >= '0' && *s->p <= '9') || *s->p == '-' || *s->p == '+'))
        return 0; /* "01", "1-": not JSON */
    int64_t n = 0;
    for (const char *p = digits; !real && p < s->p; p++)
        n = n * 10 + (*p - '0');
    /* A real, or a negative integer, is not a count; "-0" is jansson's integer 0, which is. */
    v->kind = real || (*b == '-' && n != 0) ? RELAY_JV_OTHER_NUM : RELAY_JV_UINT;
    v->n = n;
    v->b = b;
    v->e = s->p;
    return 1;
}

static int js_literal(relay_jscan_t *s, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

int relay_js_object(relay_jscan_t *s, int depth, relay_js_key_fn on_key, void *ud)
{
    if (depth >= RELAY_JS_MAX_DEPTH || !relay_js_char(s, '{'))
        return 0;
    if (relay_js_char(s, '}'))
        return 1;
    do {
        const char *kb, *ke;
        if (!relay_js_string(s, &kb, &ke) || !relay_js_char(s, ':'))
            return 0;
        if (!(on_key ? on_key(ud, s, kb, ke, depth + 1) : relay_js_value(s, NULL, depth + 1)))
            return 0;
    } while (relay_js_char(s, ','));
    return relay_js_char(s, '}');
}

static int js_array(relay_jscan_t *s, int depth)
{
    if (depth >= RELAY_JS_MAX_DEPTH || !relay_js_char(s, '['))
        return 0;
    if (relay_js_char(s, ']'))
        return 1;
    do
        if (!relay_js_value(s, NULL, depth + 1))
            return 0;
    while (relay_js_char(s, ','));
    return relay_js_char(s, ']');
}

int relay_js_value(relay_jscan_t *s, relay_jval_t *v, int depth)
{
    relay_jval_t tmp;
    if (!v)
        v = &tmp;
    relay_js_ws(s);
    if (s->p >= s->end)
        return 0;
    char c = *s->p;
    if (c == '"') {
        v->kind = RELAY_JV_STRING;
        return relay_js_string(s, &v->b, &v->e);
    }
    v->b = s->p;
    if (c == '{' || c == '[') {
        v->kind = c == '{' ? RELAY_JV_OBJECT : RELAY_JV_ARRAY;
        if (!(c == '{' ? relay_js_object(s, depth, NULL, NULL) : js_array(s, depth)))
            return 0;
        v->e = s->p;
        return 1;
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return js_number(s, v);
    v->kind = c == 't' ? RELAY_JV_TRUE : RELAY_JV_OTHER;
    if (!js_literal(s, "true") && !js_literal(s, "false") && !js_literal(s, "null"))
        return 0;
    v->e = s->p;
    return 1;
}
