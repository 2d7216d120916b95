/* buf: a growable byte buffer with a hard cap. */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/relay.h"
#include "util.h"

void relay_buf_init(relay_buf_t *b, size_t cap)
{
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->cap = cap;
}

void relay_buf_free(relay_buf_t *b)
{
    free(b->data);
    relay_buf_init(b, b->cap);
}

void relay_buf_reset(relay_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static int buf_reserve(relay_buf_t *b, size_t extra)
{
    if (extra > b->cap || b->len > b->cap - extra)
        return RELAY_ERR_TOO_LARGE;
    size_t need = b->len + extra + 1;
    if (need <= b->alloc)
        return 0;
    size_t n = b->alloc ? b->alloc : 64;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    char *p = realloc(b->data, n);
    if (!p)
        return RELAY_ERR_NOMEM;
    b->data = p;
    b->alloc = n;
    return 0;
}

int relay_buf_append(relay_buf_t *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int relay_buf_appends(relay_buf_t *b, const char *s)
{
    return relay_buf_append(b, s, strlen(s));
}

int relay_buf_vprintf(relay_buf_t *b, const char *fmt, va_list ap)
{
    /* Formatted once into the room already there; a second time only when it did not fit (the
     * size-then-write pair was a tenth of a request's instructions under callgrind). */
    size_t room = b->alloc > b->len + 1 ? b->alloc - b->len - 1 : 0;
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(room ? b->data + b->len : NULL, room ? room + 1 : 0, fmt, cp);
    va_end(cp);
    if (n < 0) {
        if (b->data)
            b->data[b->len] = '\0';
        return RELAY_ERR_INVALID;
    }
    if ((size_t)n <= room && (size_t)n <= b->cap - b->len) {
        b->len += (size_t)n;
        return 0;
    }
    int rc = buf_reserve(b, (size_t)n);
    if (rc) {
        if (b->data)
            b->data[b->len] = '\0'; /* what the first try wrote past len is dropped */
        return rc;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int relay_buf_json_string(relay_buf_t *b, const char *s, size_t n)
{
    size_t start = b->len;
    int rc = relay_buf_append(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (!rc && i < n) {
        size_t run = i; /* bytes that go as they are */
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            rc = relay_buf_append(b, s + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        uint32_t cp;
        size_t seq = c >= 0x80 ? relay_utf8_decode(p + i, n - i, &cp) : 0;
        char esc[8];
        if (seq) {
            rc = relay_buf_append(b, s + i, seq);
            i += seq;
            continue;
        }
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            rc = relay_buf_append(b, esc, 2);
        } else if (c >= 0x80) {
            rc = relay_buf_append(b, "\\ufffd", 6); /* not UTF-8: the replacement character */
        } else {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            rc = relay_buf_append(b, esc, 6);
        }
        i++;
    }
    if (!rc)
        rc = relay_buf_append(b, "\"", 1);
    if (rc) { /* nothing half-written */
        b->len = start;
        if (b->data)
            b->data[start] = '\0';
    }
    return rc;
}

int relay_buf_printf(relay_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = relay_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void relay_buf_consume(relay_buf_t *b, size_t n)
{
    if (n >= b->len) {
        relay_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *relay_buf_detach(relay_buf_t *b)
{
    char *p = b->data;
    if (!p)
        p = calloc(1, 1);
    relay_buf_init(b, b->cap);
    return p;
}

const char *relay_buf_str(const relay_buf_t *b)
{
    return b->data ? b->data : "";
}
