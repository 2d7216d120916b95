/* sse: incremental SSE parser for Anthropic Messages streams; extracts usage and output text. */
#include "relay/sse.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "json_scan.h"
#include "sse_internal.h"
#include "util.h"

struct relay_sse {
    size_t max_event;   /* cap of one event, all its lines together */
    relay_buf_t line;   /* the line being received, without its terminator */
    relay_buf_t data;   /* data fields of the current event, joined by '\n' */
    char event[64];     /* the current event's `event:` field ("" when none) */
    size_t event_bytes; /* bytes of the current event so far, for the cap */
    int has_fields;     /* the current event had an event: or data: field */
    int skipping;       /* dropping an oversized event until its blank line */
    int skip_line_nonempty;
    int last_cr;     /* the previous byte was '\r': a following '\n' belongs to it */
    int first_line;  /* the stream's first line may start with a BOM */
    relay_buf_t out; /* output text, capped */
    size_t out_total;
    relay_usage_t usage;
};

int relay_sse_new(relay_sse_t **out, size_t max_event_bytes)
{
    *out = NULL;
    relay_sse_t *p = calloc(1, sizeof(*p));
    if (!p)
        return RELAY_ERR_NOMEM;
    p->max_event = max_event_bytes ? max_event_bytes : RELAY_SSE_DEFAULT_MAX_EVENT;
    relay_buf_init(&p->line, p->max_event);
    relay_buf_init(&p->data, p->max_event);
    relay_buf_init(&p->out, RELAY_SSE_OUTPUT_CAP);
    p->first_line = 1;
    *out = p;
    return 0;
}

void relay_sse_free(relay_sse_t *p)
{
    if (!p)
        return;
    relay_buf_free(&p->line);
    relay_buf_free(&p->data);
    relay_buf_free(&p->out);
    free(p);
}

const relay_usage_t *relay_sse_usage(const relay_sse_t *p)
{
    return &p->usage;
}

const char *relay_sse_output_text(const relay_sse_t *p, size_t *len, size_t *total_bytes)
{
    *len = p->out.len;
    if (total_bytes)
        *total_bytes = p->out_total;
    return relay_buf_str(&p->out);
}

/* ---- usage extraction (shared by the stream and the JSON body) ---- */

/* Sets *dst from obj[key] when it is a non-negative integer; absent or null leaves it alone. */
static int take_count(int64_t *dst, const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *dst = json_integer_value(v);
    return 1;
}

static void take_string(char *dst, size_t cap, const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    if (s)
        relay_strlcpy(dst, s, cap);
}

/*
 * Both message_start and message_delta carry usage; message_delta's is cumulative, so each field
 * present replaces the earlier value. Returns 1 when any field was present.
 */
static int apply_usage(relay_usage_t *u, const json_t *usage)
{
    if (!json_is_object(usage))
        return 0;
    int seen = 0;
    seen |= take_count(&u->input_tokens, usage, "input_tokens");
    seen |= take_count(&u->output_tokens, usage, "output_tokens");
    seen |= take_count(&u->cache_creation_input_tokens, usage, "cache_creation_input_tokens");
    seen |= take_count(&u->cache_read_input_tokens, usage, "cache_read_input_tokens");
    json_t *cc = json_object_get(usage, "cache_creation");
    if (json_is_object(cc)) {
        seen |= take_count(&u->cache_creation_5m_tokens, cc, "ephemeral_5m_input_tokens");
        seen |= take_count(&u->cache_creation_1h_tokens, cc, "ephemeral_1h_input_tokens");
    }
    if (seen)
        u->has_usage = 1;
    return seen;
}

static void apply_error(relay_usage_t *u, const json_t *root)
{
    u->saw_error = 1;
    json_t *e = json_object_get(root, "error");
    take_string(u->error_type, sizeof(u->error_type), e, "type");
    take_string(u->error_message, sizeof(u->error_message), e, "message");
}

/* The fields a complete Message object (JSON body, or message_start.message) carries. */
static void apply_message(relay_usage_t *u, const json_t *msg)
{
    take_string(u->model, sizeof(u->model), msg, "model");
    take_string(u->message_id, sizeof(u->message_id), msg, "id");
    take_string(u->stop_reason, sizeof(u->stop_reason), msg, "stop_reason");
    apply_usage(u, json_object_get(msg, "usage"));
}

/* Keeps the first RELAY_SSE_OUTPUT_CAP bytes of output text, cut on a UTF-8 boundary. */
static int keep_output(relay_sse_t *p, const char *s, size_t n)
{
    p->out_total += n;
    size_t room = p->out.cap - p->out.len;
    if (n > room) {
        n = room;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    return n ? relay_buf_append(&p->out, s, n) : 0;
}

static int on_delta(relay_sse_t *p, const json_t *root)
{
    json_t *d = json_object_get(root, "delta");
    const char *type = json_string_value(json_object_get(d, "type"));
    const char *key = NULL;
    if (!type)
        return 0;
    if (!strcmp(type, "text_delta"))
        key = "text";
    else if (!strcmp(type, "thinking_delta"))
        key = "thinking";
    else if (!strcmp(type, "input_json_delta"))
        key = "partial_json";
    json_t *v = key ? json_object_get(d, key) : NULL;
    if (!json_is_string(v))
        return 0;
    return keep_output(p, json_string_value(v), json_string_length(v));
}

/* ---- a reader for the commonest event, without jansson ---- */

/*
 * content_block_delta is nearly every event of a stream, and parsing each with jansson (a DOM,
 * a hash table, mallocs) was 55% of the instructions a stream cost (callgrind, 64-delta stream).
 * This reads exactly that shape, {"type":...,"index":N,"delta":{"type":"text_delta","text":"..."}}
 * in any key order, into the output text. Anything it does not fully understand (other shapes,
 * odd escapes, long values, trailing bytes) returns 0, and jansson decides as before.
 */

/* The "delta" object: its type names the key of the text (text, thinking, partial_json). */
static int js_delta(relay_jscan_t *s, const char **tb, const char **te)
{
    const char *type_b = NULL, *type_e = NULL, *vb[3] = {0}, *ve[3] = {0};
    static const char *const keys[3] = {"text", "thinking", "partial_json"};
    static const char *const types[3] = {"text_delta", "thinking_delta", "input_json_delta"};
    if (!relay_js_char(s, '{'))
        return 0;
    do {
        const char *kb, *ke, *b, *e;
        if (!relay_js_string(s, &kb, &ke) || !relay_js_char(s, ':') || !relay_js_string(s, &b, &e))
            return 0;
        if (relay_js_is(kb, ke, "type")) {
            type_b = b;
            type_e = e;
        }
        for (int i = 0; i < 3; i++)
            if (relay_js_is(kb, ke, keys[i])) {
                vb[i] = b;
                ve[i] = e;
            }
    } while (relay_js_char(s, ','));
    if (!relay_js_char(s, '}') || !type_b)
        return 0;
    for (int i = 0; i < 3; i++)
        if (relay_js_is(type_b, type_e, types[i]) && vb[i]) {
            *tb = vb[i];
            *te = ve[i];
            return 1;
        }
    return 0;
}

/* 1 when data was a content_block_delta of the usual shape and its text was kept. */
static int fast_delta(relay_sse_t *p, const char *data, size_t len)
{
    if (len == 0)
        return 0; /* (data may then be NULL: no pointer arithmetic on it) */
    relay_jscan_t s = {data, data + len};
    const char *tb = NULL, *te = NULL;
    int have_delta = 0;
    if (!relay_js_char(&s, '{'))
        return 0;
    do {
        const char *kb, *ke, *b, *e;
        if (!relay_js_string(&s, &kb, &ke) || !relay_js_char(&s, ':'))
            return 0;
        if (relay_js_is(kb, ke, "delta")) {
            if (have_delta || !js_delta(&s, &tb, &te))
                return 0;
            have_delta = 1;
        } else if (relay_js_is(kb, ke, "index")) {
            relay_jval_t v; /* checked in full: a bare digit run let "01" through */
            if (!relay_js_value(&s, &v, 1) || v.kind != RELAY_JV_UINT)
                return 0;
        } else if (!relay_js_is(kb, ke, "type") || !relay_js_string(&s, &b, &e) ||
                   !relay_js_is(b, e, "content_block_delta")) {
            return 0;
        }
    } while (relay_js_char(&s, ','));
    if (!relay_js_char(&s, '}') || !have_delta)
        return 0;
    relay_js_ws(&s);
    if (s.p != s.end)
        return 0;
    char text[4096];
    long n = relay_js_unescape(tb, te, text, sizeof text);
    if (n < 0)
        return 0;
    keep_output(p, text, (size_t)n);
    return 1;
}

static int on_event(relay_sse_t *p, const char *type, const json_t *root)
{
    relay_usage_t *u = &p->usage;
    if (!strcmp(type, "message_start")) {
        apply_message(u, json_object_get(root, "message"));
    } else if (!strcmp(type, "message_delta")) {
        take_string(u->stop_reason, sizeof(u->stop_reason), json_object_get(root, "delta"),
                    "stop_reason");
        if (apply_usage(u, json_object_get(root, "usage")))
            u->has_final = 1;
    } else if (!strcmp(type, "message_stop")) {
        u->saw_message_stop = 1;
    } else if (!strcmp(type, "content_block_delta")) {
        return on_delta(p, root);
    } else if (!strcmp(type, "error")) {
        apply_error(u, root);
    }
    return 0;
}

/* A blank line ends an event: parse its data and apply it. */
static int dispatch(relay_sse_t *p)
{
    int rc = 0;
    if (p->has_fields) {
        p->usage.events++;
        json_t *root = NULL;
        /* Pings carry nothing, deltas go the short way: no DOM for either. */
        if (!strcmp(p->event, "ping") ||
            (!strcmp(p->event, "content_block_delta") && fast_delta(p, p->data.data, p->data.len)))
            goto done;
        if (p->data.len) {
            /* The data buffer ends with the '\n' each data line added; JSON does not need it. */
            root = json_loadb(p->data.data, p->data.len, 0, NULL);
        }
        if (!json_is_object(root)) {
            json_decref(root);
            root = NULL; /* garbage data: the event's name alone may still tell something */
        }
        const char *type =
            p->event[0] ? p->event : json_string_value(json_object_get(root, "type"));
        if (type)
            rc = on_event(p, type, root);
        json_decref(root);
    }
done:
    relay_buf_reset(&p->data);
    p->event[0] = '\0';
    p->event_bytes = 0;
    p->has_fields = 0;
    return rc;
}

static void start_skipping(relay_sse_t *p);

static int on_field(relay_sse_t *p, const char *name, size_t nlen, const char *val, size_t vlen)
{
    if (nlen == 5 && !memcmp(name, "event", 5)) {
        size_t n = vlen < sizeof(p->event) - 1 ? vlen : sizeof(p->event) - 1;
        memcpy(p->event, val, n);
        p->event[n] = '\0';
        p->has_fields = 1;
    } else if (nlen == 4 && !memcmp(name, "data", 4)) {
        int rc = relay_buf_append(&p->data, val, vlen);
        if (!rc)
            rc = relay_buf_append(&p->data, "\n", 1);
        if (rc) {
            start_skipping(p); /* half an event's data must not be parsed as the whole */
            return rc;
        }
        p->has_fields = 1;
    }
    return 0; /* id:, retry: and unknown fields mean nothing to usage */
}

/* One complete line (terminator removed), per the WHATWG event-stream rules. */
static int on_line(relay_sse_t *p, const char *s, size_t n)
{
    if (p->first_line) {
        p->first_line = 0;
        if (n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) {
            s += 3;
            n -= 3;
        }
    }
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':')
        return 0;
    const char *colon = memchr(s, ':', n);
    if (!colon)
        return on_field(p, s, n, "", 0);
    size_t nlen = (size_t)(colon - s);
    const char *val = colon + 1;
    size_t vlen = n - nlen - 1;
    if (vlen && val[0] == ' ') {
        val++;
        vlen--;
    }
    return on_field(p, s, nlen, val, vlen);
}

/* Drops the current event: it grew past the cap. Bytes up to its blank line are ignored. */
static void start_skipping(relay_sse_t *p)
{
    relay_buf_reset(&p->line);
    relay_buf_reset(&p->data);
    p->event[0] = '\0';
    p->has_fields = 0;
    p->skipping = 1;
    p->skip_line_nonempty = 0;
}

static int end_line(relay_sse_t *p)
{
    if (p->skipping) {
        if (!p->skip_line_nonempty) {
            p->skipping = 0;
            p->event_bytes = 0;
        }
        p->skip_line_nonempty = 0;
        p->first_line = 0;
        return 0;
    }
    int rc = on_line(p, p->line.data ? p->line.data : "", p->line.len);
    relay_buf_reset(&p->line);
    return rc;
}

/* Appends part of a line; returns 1 when the event went over the cap (and is now skipped). */
static int add_to_line(relay_sse_t *p, const char *s, size_t n)
{
    if (p->skipping) {
        p->skip_line_nonempty |= n > 0;
        return 0;
    }
    p->event_bytes += n;
    if (p->event_bytes > p->max_event || relay_buf_append(&p->line, s, n) != 0) {
        start_skipping(p);
        p->skip_line_nonempty = 1;
        return 1;
    }
    return 0;
}

int relay_sse_feed(relay_sse_t *p, const void *data, size_t len)
{
    const char *s = data, *end = s + len;
    int too_large = 0, rc = 0;
    while (s < end) {
        if (p->last_cr) {
            p->last_cr = 0;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        const char *t = s;
        while (t < end && *t != '\n' && *t != '\r')
            t++;
        too_large |= add_to_line(p, s, (size_t)(t - s));
        if (t == end)
            break;
        p->last_cr = *t == '\r';
        /* The terminator counts toward the cap so an endless run of blank-less lines is bounded. */
        p->event_bytes++;
        if (!p->skipping && p->event_bytes > p->max_event) {
            start_skipping(p);
            too_large = 1;
        }
        int lrc = end_line(p);
        if (lrc == RELAY_ERR_TOO_LARGE)
            too_large = 1;
        else if (lrc && !rc)
            rc = lrc;
        s = t + 1;
    }
    if (rc)
        return rc;
    return too_large ? RELAY_ERR_TOO_LARGE : 0;
}

/* ---- non-streaming bodies ---- */

/* ---- a non-streaming answer without jansson ---- */

/*
 * Parsing a whole Message with jansson to read a dozen fields was 15% of a proxied request's
 * instructions (callgrind, c=4, a 300-byte answer). This walks the document once, checking the
 * whole grammar, and keeps the last value of each field it needs (jansson's rule for duplicate
 * keys). It claims only what it is sure jansson would give the same answer for: anything it is
 * not (a number with an exponent or more than 18 digits, a \u0000, a lone surrogate, bytes that
 * are not UTF-8, deep nesting, a needed string it cannot unescape) sends the body to jansson.
 * A unit test and fuzz_sse compare the two on every input.
 */
typedef struct msg_fields {
    relay_jval_t type, model, id, stop_reason, usage, error;
    relay_jval_t counts[4]; /* input, output, cache_creation_input, cache_read_input */
    relay_jval_t cc, cc5m, cc1h;
    relay_jval_t err_type, err_message;
} msg_fields_t;

typedef struct want {
    const char *key;
    relay_jval_t *into;
    /* an object to look inside, or NULL */
    int (*walk)(relay_jscan_t *s, msg_fields_t *m, int depth);
} want_t;

typedef struct obj_walk {
    msg_fields_t *m;
    const want_t *w;
    size_t nw;
    void (*reset)(msg_fields_t *m, const char *key);
} obj_walk_t;

static int on_key(void *ud, relay_jscan_t *s, const char *kb, const char *ke, int depth)
{
    const obj_walk_t *o = ud;
    const want_t *hit = NULL;
    for (size_t i = 0; i < o->nw && !hit; i++)
        if (relay_js_is(kb, ke, o->w[i].key))
            hit = &o->w[i];
    if (!hit)
        return relay_js_value(s, NULL, depth);
    relay_js_ws(s);
    if (hit->walk && o->reset)
        o->reset(o->m, hit->key);
    if (hit->walk && s->p < s->end && *s->p == '{') {
        hit->into->kind = RELAY_JV_OBJECT;
        return hit->walk(s, o->m, depth);
    }
    return relay_js_value(s, hit->into, depth);
}

/* An object whose keys in w[] are kept (the last one wins; a later duplicate of an object key
 * first forgets what the earlier one held, via reset), every other value passed over. */
static int js_object(relay_jscan_t *s, msg_fields_t *m, const want_t *w, size_t nw, int depth,
                     void (*reset)(msg_fields_t *m, const char *key))
{
    obj_walk_t o = {m, w, nw, reset};
    return relay_js_object(s, depth, on_key, &o);
}

static void forget(msg_fields_t *m, const char *key)
{
    if (!strcmp(key, "usage")) {
        memset(m->counts, 0, sizeof m->counts);
        m->cc = m->cc5m = m->cc1h = (relay_jval_t){0};
    } else if (!strcmp(key, "cache_creation")) {
        m->cc5m = m->cc1h = (relay_jval_t){0};
    } else if (!strcmp(key, "error")) {
        m->err_type = m->err_message = (relay_jval_t){0};
    }
}

static int walk_cc(relay_jscan_t *s, msg_fields_t *m, int depth)
{
    const want_t w[] = {{"ephemeral_5m_input_tokens", &m->cc5m, NULL},
                        {"ephemeral_1h_input_tokens", &m->cc1h, NULL}};
    return js_object(s, m, w, 2, depth, NULL);
}

static int walk_usage(relay_jscan_t *s, msg_fields_t *m, int depth)
{
    const want_t w[] = {{"input_tokens", &m->counts[0], NULL},
                        {"output_tokens", &m->counts[1], NULL},
                        {"cache_creation_input_tokens", &m->counts[2], NULL},
                        {"cache_read_input_tokens", &m->counts[3], NULL},
                        {"cache_creation", &m->cc, walk_cc}};
    return js_object(s, m, w, 5, depth, forget);
}

static int walk_error(relay_jscan_t *s, msg_fields_t *m, int depth)
{
    const want_t w[] = {{"type", &m->err_type, NULL}, {"message", &m->err_message, NULL}};
    return js_object(s, m, w, 2, depth, NULL);
}

/* take_count and take_string of the jansson path, from a kept value. */
static int fast_count(int64_t *dst, const relay_jval_t *v)
{
    if (v->kind != RELAY_JV_UINT)
        return 0;
    *dst = v->n;
    return 1;
}

static int fast_string(char *dst, size_t cap, const relay_jval_t *v)
{
    if (v->kind != RELAY_JV_STRING)
        return 1;
    char tmp[1024];
    long n = relay_js_unescape(v->b, v->e, tmp, sizeof tmp);
    if (n < 0 || memchr(tmp, '\0', (size_t)n))
        return 0;
    tmp[n] = '\0';
    relay_strlcpy(dst, tmp, cap);
    return 1;
}

int relay_usage_parse_json_fast(relay_usage_t *out, const char *body, size_t len)
{
    if (!body || !len)
        return 0;
    msg_fields_t m;
    memset(&m, 0, sizeof m);
    relay_jscan_t s = {body, body + len};
    const want_t w[] = {{"type", &m.type, NULL},
                        {"model", &m.model, NULL},
                        {"id", &m.id, NULL},
                        {"stop_reason", &m.stop_reason, NULL},
                        {"usage", &m.usage, walk_usage},
                        {"error", &m.error, walk_error}};
    if (!js_object(&s, &m, w, 6, 0, forget))
        return 0;
    relay_js_ws(&s);
    if (s.p != s.end)
        return 0;
    if (m.type.kind == RELAY_JV_STRING && relay_js_is(m.type.b, m.type.e, "error")) {
        out->saw_error = 1;
        if (m.error.kind == RELAY_JV_OBJECT)
            return fast_string(out->error_type, sizeof out->error_type, &m.err_type) &&
                   fast_string(out->error_message, sizeof out->error_message, &m.err_message);
        return 1;
    }
    if (m.type.kind == RELAY_JV_STRING && memchr(m.type.b, '\\', (size_t)(m.type.e - m.type.b)))
        return 0; /* an escaped type might still spell "error" */
    if (!fast_string(out->model, sizeof out->model, &m.model) ||
        !fast_string(out->message_id, sizeof out->message_id, &m.id) ||
        !fast_string(out->stop_reason, sizeof out->stop_reason, &m.stop_reason))
        return 0;
    if (m.usage.kind == RELAY_JV_OBJECT) {
        int seen = 0;
        seen |= fast_count(&out->input_tokens, &m.counts[0]);
        seen |= fast_count(&out->output_tokens, &m.counts[1]);
        seen |= fast_count(&out->cache_creation_input_tokens, &m.counts[2]);
        seen |= fast_count(&out->cache_read_input_tokens, &m.counts[3]);
        if (m.cc.kind == RELAY_JV_OBJECT) {
            seen |= fast_count(&out->cache_creation_5m_tokens, &m.cc5m);
            seen |= fast_count(&out->cache_creation_1h_tokens, &m.cc1h);
        }
        if (seen)
            out->has_usage = 1;
    }
    out->has_final = 1;
    return 1;
}

int relay_usage_parse_json(relay_usage_t *out, const char *body, size_t len)
{
    memset(out, 0, sizeof(*out));
    if (relay_usage_parse_json_fast(out, body, len))
        return 0;
    return relay_usage_parse_json_jansson(out, body, len); /* zeroes out first */
}

int relay_usage_parse_json_jansson(relay_usage_t *out, const char *body, size_t len)
{
    memset(out, 0, sizeof(*out));
    json_t *root = body ? json_loadb(body, len, 0, NULL) : NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        return RELAY_ERR_INVALID;
    }
    const char *type = json_string_value(json_object_get(root, "type"));
    if (type && !strcmp(type, "error")) {
        apply_error(out, root);
    } else {
        apply_message(out, root);
        out->has_final = 1;
    }
    json_decref(root);
    return 0;
}
