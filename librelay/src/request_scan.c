/* request_scan: the request body's token estimate read in one pass, without a jansson DOM. */
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"
#include "tokens_internal.h"
#include "util.h"

/*
 * The estimate must come out exactly as the jansson reader in tokens.c computes it, so this
 * follows that reader rule by rule: jansson keeps the last of duplicate keys (here a later value
 * overwrites an earlier one), and the values counted "as JSON" (tool inputs and schemas, blocks
 * of unknown type) are jansson's compact dump. That dump is the input with the whitespace between
 * tokens removed, as long as nothing in it is rewritten by jansson: a number with a fraction
 * (reprinted with 17 digits), "-0" (printed 0), an escape jansson writes differently (\/ and \u),
 * a duplicate key (dropped). Any of those, and anything json_scan declines, and anything odd
 * (an escaped key, a type name with escapes) sends the body to jansson. unit.test_tokens and
 * fuzz_request compare the two readers.
 */

typedef struct rq {
    const relay_tokenizer_t *t;
    char *scratch; /* unescaped strings and compact dumps, one at a time */
    size_t scratch_cap;
    const char **keys; /* the keys of the objects being dumped, innermost last (pairs b, e) */
    size_t n_keys, cap_keys;
    int tools_n; /* elements of the last "tools" array */
} rq_t;

typedef struct field field_t;
typedef int (*walk_fn)(rq_t *q, relay_jscan_t *s, int depth, int64_t *n);

/* A key of interest in an object: its last value (kind RELAY_JV_NONE when absent) and, when it
 * is walked as it is read, what the walk counted for that last value. */
struct field {
    const char *key;
    walk_fn walk;
    relay_jval_t v;
    int64_t n;
};

#define F(k, w)                                                                                    \
    {                                                                                              \
        .key = (k), .walk = (w)                                                                    \
    }

static char *scratch(rq_t *q, size_t n)
{
    if (n > q->scratch_cap) {
        char *p = realloc(q->scratch, n);
        if (!p)
            return NULL;
        q->scratch = p;
        q->scratch_cap = n;
    }
    return q->scratch;
}

static int has_escape(const char *b, const char *e)
{
    return memchr(b, '\\', (size_t)(e - b)) != NULL;
}

typedef struct obj_walk {
    rq_t *q;
    field_t *f;
    size_t nf;
} obj_walk_t;

static int on_key(void *ud, relay_jscan_t *s, const char *kb, const char *ke, int depth)
{
    obj_walk_t *o = ud;
    if (has_escape(kb, ke))
        return 0; /* an escaped key may spell a wanted one */
    field_t *hit = NULL;
    for (size_t i = 0; i < o->nf && !hit; i++)
        if (relay_js_is(kb, ke, o->f[i].key))
            hit = &o->f[i];
    if (!hit || !hit->walk)
        return relay_js_value(s, hit ? &hit->v : NULL, depth);
    relay_js_ws(s);
    hit->v = (relay_jval_t){.kind = RELAY_JV_OTHER, .b = s->p};
    hit->n = 0;
    if (!hit->walk(o->q, s, depth, &hit->n))
        return 0;
    hit->v.e = s->p;
    return 1;
}

/* An object's fields: the wanted ones kept (the last of duplicates), the rest checked. */
static int obj_fields(rq_t *q, relay_jscan_t *s, field_t *f, size_t nf, int depth)
{
    obj_walk_t o = {q, f, nf};
    return relay_js_object(s, depth, on_key, &o);
}

/* Fields of a value already read: an object is scanned again (absent fields if it is not). */
static int fields_of(rq_t *q, const relay_jval_t *v, field_t *f, size_t nf, int depth)
{
    if (v->kind != RELAY_JV_OBJECT)
        return 1;
    relay_jscan_t s = {v->b, v->e};
    return obj_fields(q, &s, f, nf, depth);
}

/* A type name is compared as written: one with an escape may spell any of them, and goes to
 * jansson. A value that is not a string is fine (it names no type). */
static int plain_name(const relay_jval_t *v)
{
    return v->kind != RELAY_JV_STRING || !has_escape(v->b, v->e);
}

static int is_string(const relay_jval_t *v, const char *lit)
{
    return v->kind == RELAY_JV_STRING && relay_js_is(v->b, v->e, lit);
}

/* A string's value, [*b, *b + *n) unescaped (in place when it has no escape); *b NULL for a
 * value that is not a string. 0 when it cannot be unescaped here. */
static int string_of(rq_t *q, const relay_jval_t *v, const char **b, size_t *n)
{
    *b = NULL;
    *n = 0;
    if (v->kind != RELAY_JV_STRING)
        return 1;
    size_t raw = (size_t)(v->e - v->b);
    if (!has_escape(v->b, v->e)) {
        *b = v->b;
        *n = raw;
        return 1;
    }
    char *out = scratch(q, raw + 4);
    long len = out ? relay_js_unescape(v->b, v->e, out, raw + 4) : -1;
    if (len < 0)
        return 0;
    *b = out;
    *n = (size_t)len;
    return 1;
}

/* count_str: the tokens of a string's text, 0 for anything else. */
static int count_str(rq_t *q, const relay_jval_t *v, int64_t *n)
{
    const char *b;
    size_t len;
    if (!string_of(q, v, &b, &len))
        return 0;
    *n += relay_tokens_count_text(q->t, b, len);
    return 1;
}

/* Whether jansson writes the string body [b, e) back byte for byte. */
static int dumps_as_is(const char *b, const char *e)
{
    for (const char *p = b; (p = memchr(p, '\\', (size_t)(e - p))); p += 2)
        if (!strchr("\"\\bfnrt", p[1]))
            return 0;
    return 1;
}

/* A key of the object being dumped (*mark: where its keys start); 0 for a duplicate. */
static int new_key(rq_t *q, size_t mark, const char *b, const char *e)
{
    for (size_t i = mark; i < q->n_keys; i += 2)
        if (q->keys[i + 1] - q->keys[i] == e - b && !memcmp(q->keys[i], b, (size_t)(e - b)))
            return 0;
    if (q->n_keys + 2 > q->cap_keys) {
        size_t nc = q->cap_keys ? q->cap_keys * 2 : 64;
        const char **k = realloc(q->keys, nc * sizeof *k);
        if (!k)
            return 0;
        q->keys = k;
        q->cap_keys = nc;
    }
    q->keys[q->n_keys++] = b;
    q->keys[q->n_keys++] = e;
    return 1;
}

static int dump_value(rq_t *q, relay_jscan_t *s, char **o, int depth);

/* The inside of an object or array after its opening byte, written compactly. */
static int dump_container(rq_t *q, relay_jscan_t *s, char **o, int object, int depth)
{
    char close = object ? '}' : ']';
    size_t mark = q->n_keys;
    if (!relay_js_char(s, close)) {
        do {
            const char *kb, *ke;
            if (object) {
                if (!relay_js_string(s, &kb, &ke) || !relay_js_char(s, ':') || has_escape(kb, ke) ||
                    !new_key(q, mark, kb, ke))
                    return 0;
                *(*o)++ = '"';
                memcpy(*o, kb, (size_t)(ke - kb));
                *o += ke - kb;
                *(*o)++ = '"';
                *(*o)++ = ':';
            }
            if (!dump_value(q, s, o, depth + 1))
                return 0;
            *(*o)++ = ',';
        } while (relay_js_char(s, ','));
        (*o)--;
        if (!relay_js_char(s, close))
            return 0;
    }
    q->n_keys = mark;
    *(*o)++ = close;
    return 1;
}

static int dump_value(rq_t *q, relay_jscan_t *s, char **o, int depth)
{
    relay_js_ws(s);
    if (s->p < s->end && (*s->p == '{' || *s->p == '[')) {
        int object = *s->p == '{';
        if (depth >= RELAY_JS_MAX_DEPTH)
            return 0;
        *(*o)++ = *s->p++;
        return dump_container(q, s, o, object, depth);
    }
    relay_jval_t v;
    if (!relay_js_value(s, &v, depth))
        return 0;
    if (v.kind == RELAY_JV_STRING) {
        if (!dumps_as_is(v.b, v.e))
            return 0;
        v.b--; /* with its quotes */
        v.e++;
    } else if ((v.kind == RELAY_JV_UINT && *v.b == '-') ||
               (v.kind == RELAY_JV_OTHER_NUM && memchr(v.b, '.', (size_t)(v.e - v.b)))) {
        return 0; /* "-0" and reals are reprinted */
    }
    memcpy(*o, v.b, (size_t)(v.e - v.b));
    *o += v.e - v.b;
    return 1;
}

/* count_json: the tokens of a value as jansson dumps it compactly (0 when absent). */
static int count_json(rq_t *q, const relay_jval_t *v, int64_t *n)
{
    if (v->kind == RELAY_JV_NONE)
        return 1;
    const char *b = v->kind == RELAY_JV_STRING ? v->b - 1 : v->b;
    const char *e = v->kind == RELAY_JV_STRING ? v->e + 1 : v->e;
    char *out = scratch(q, (size_t)(e - b) + 1);
    if (!out)
        return 0;
    char *o = out;
    relay_jscan_t s = {b, e};
    if (!dump_value(q, &s, &o, 0))
        return 0;
    *n += relay_tokens_count_text(q->t, out, (size_t)(o - out));
    return 1;
}

static int walk_content(rq_t *q, relay_jscan_t *s, int depth, int64_t *n);

/* A document block's source: base64 data by its size, content blocks, or text. */
static int count_document(rq_t *q, const relay_jval_t *src, int depth, int64_t *n)
{
    field_t f[] = {F("type", NULL), F("data", NULL), F("content", walk_content)};
    if (!fields_of(q, src, f, 3, depth))
        return 0;
    if (!plain_name(&f[0].v))
        return 0;
    if (is_string(&f[0].v, "base64")) {
        const char *b;
        size_t len;
        if (!string_of(q, &f[1].v, &b, &len))
            return 0;
        *n += (int64_t)(len * 3 / 4) / REQ_PDF_BYTES_PER_TOK;
        return 1;
    }
    if (is_string(&f[0].v, "content")) {
        *n += f[2].n;
        return 1;
    }
    return count_str(q, &f[1].v, n);
}

/* count_block of tokens.c: an element of a content array. */
static int walk_block(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    relay_js_ws(s);
    relay_jval_t whole = {.kind = RELAY_JV_OBJECT, .b = s->p};
    if (s->p >= s->end || *s->p != '{')
        return relay_js_value(s, &whole, depth) && count_json(q, &whole, n);
    enum { TYPE, TEXT, THINKING, DATA, NAME, INPUT, CONTENT, SOURCE };
    field_t f[] = {
        F("type", NULL), F("text", NULL),  F("thinking", NULL),        F("data", NULL),
        F("name", NULL), F("input", NULL), F("content", walk_content), F("source", NULL)};
    if (!obj_fields(q, s, f, 8, depth))
        return 0;
    whole.e = s->p;
    const relay_jval_t *type = &f[TYPE].v;
    if (type->kind != RELAY_JV_STRING)
        return count_json(q, &whole, n);
    if (!plain_name(type))
        return 0;
    if (is_string(type, "text"))
        return count_str(q, &f[TEXT].v, n);
    if (is_string(type, "thinking"))
        return count_str(q, &f[THINKING].v, n);
    if (is_string(type, "redacted_thinking")) {
        int64_t d = 0;
        if (!count_str(q, &f[DATA].v, &d))
            return 0;
        *n += d / 4;
        return 1;
    }
    if (is_string(type, "tool_use") || is_string(type, "server_tool_use"))
        return count_str(q, &f[NAME].v, n) && count_json(q, &f[INPUT].v, n);
    if (is_string(type, "tool_result")) {
        *n += f[CONTENT].n;
        return 1;
    }
    if (is_string(type, "image")) {
        *n += REQ_IMAGE_TOKENS;
        return 1;
    }
    if (is_string(type, "document"))
        return count_document(q, &f[SOURCE].v, depth + 1, n);
    return count_json(q, &whole, n);
}

static int at(relay_jscan_t *s, char c)
{
    relay_js_ws(s);
    return s->p < s->end && *s->p == c;
}

/* Elements of an array, each walked; another value is checked and counts nothing (jansson's
 * json_array_foreach over a non-array). */
static int walk_array(rq_t *q, relay_jscan_t *s, int depth, int64_t *n, walk_fn each, int *count)
{
    if (!at(s, '['))
        return relay_js_value(s, NULL, depth);
    if (depth >= RELAY_JS_MAX_DEPTH || !relay_js_char(s, '['))
        return 0;
    if (relay_js_char(s, ']'))
        return 1;
    do {
        if (!each(q, s, depth + 1, n))
            return 0;
        if (count)
            (*count)++;
    } while (relay_js_char(s, ','));
    return relay_js_char(s, ']');
}

/* count_content: a string's text, an array's blocks, nothing for another value. */
static int walk_content(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    if (at(s, '['))
        return walk_array(q, s, depth, n, walk_block, NULL);
    relay_jval_t v;
    return relay_js_value(s, &v, depth) && count_str(q, &v, n);
}

static int walk_message(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    *n += REQ_MESSAGE_TOKENS;
    if (!at(s, '{'))
        return relay_js_value(s, NULL, depth);
    field_t f[] = {F("content", walk_content)};
    if (!obj_fields(q, s, f, 1, depth))
        return 0;
    *n += f[0].n;
    return 1;
}

static int walk_messages(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    return walk_array(q, s, depth, n, walk_message, NULL);
}

static int walk_tool(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    *n += REQ_TOOL_TOKENS;
    if (!at(s, '{'))
        return relay_js_value(s, NULL, depth);
    field_t f[] = {F("name", NULL), F("description", NULL), F("input_schema", NULL)};
    return obj_fields(q, s, f, 3, depth) && count_str(q, &f[0].v, n) && count_str(q, &f[1].v, n) &&
           count_json(q, &f[2].v, n);
}

/* Each tool's cost; the tool-use prompt is added at the end, once tool_choice is known. */
static int walk_tools(rq_t *q, relay_jscan_t *s, int depth, int64_t *n)
{
    q->tools_n = 0;
    return walk_array(q, s, depth, n, walk_tool, &q->tools_n);
}

/* A short string field into dst (cut as relay_strlcpy cuts), left alone when not a string. */
static int copy_string(rq_t *q, const relay_jval_t *v, char *dst, size_t cap)
{
    const char *b;
    size_t len;
    if (!string_of(q, v, &b, &len))
        return 0;
    if (!b)
        return 1;
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, b, n);
    dst[n] = '\0';
    return 1;
}

static int fill_info(rq_t *q, field_t *f, relay_request_info_t *info)
{
    enum { SYSTEM, MESSAGES, TOOLS, CHOICE, MAX_TOKENS, STREAM, MODEL, METADATA };
    field_t choice[] = {F("type", NULL)}, meta[] = {F("user_id", NULL)};
    if (!fields_of(q, &f[CHOICE].v, choice, 1, 1) || !fields_of(q, &f[METADATA].v, meta, 1, 1))
        return 0;
    const relay_jval_t *ct = &choice[0].v;
    if (!plain_name(ct))
        return 0;
    int64_t n = REQ_BASE_TOKENS + f[SYSTEM].n + f[MESSAGES].n;
    if (f[TOOLS].v.kind != RELAY_JV_NONE && q->tools_n > 0)
        n += f[TOOLS].n + (is_string(ct, "any") || is_string(ct, "tool") ? REQ_TOOL_PROMPT_FORCE
                                                                         : REQ_TOOL_PROMPT_AUTO);
    info->input_tokens_estimate = n;
    if (f[MAX_TOKENS].v.kind == RELAY_JV_UINT && f[MAX_TOKENS].v.n > 0)
        info->max_tokens = f[MAX_TOKENS].v.n;
    info->stream = f[STREAM].v.kind == RELAY_JV_TRUE;
    return copy_string(q, &f[MODEL].v, info->model, sizeof info->model) &&
           copy_string(q, &meta[0].v, info->user_id, sizeof info->user_id);
}

int relay_tokens_count_request_fast(const relay_tokenizer_t *t, const char *body, size_t len,
                                    relay_request_info_t *out)
{
    if (!body || !len)
        return 0;
    rq_t q = {.t = t};
    field_t f[] = {F("system", walk_content), F("messages", walk_messages), F("tools", walk_tools),
                   F("tool_choice", NULL),    F("max_tokens", NULL),        F("stream", NULL),
                   F("model", NULL),          F("metadata", NULL)};
    relay_jscan_t s = {body, body + len};
    relay_request_info_t info = {0};
    int ok = obj_fields(&q, &s, f, 8, 0);
    if (ok) {
        relay_js_ws(&s);
        ok = s.p == s.end && fill_info(&q, f, &info);
    }
    free(q.scratch);
    free(q.keys);
    if (ok)
        *out = info;
    return ok;
}
