/* buf: a growable byte buffer with a hard cap, instead of strcpy/sprintf (after curl's dynbuf). */
#ifndef RELAY_BUF_H
#define RELAY_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct relay_buf {
    char *data; /* always NUL-terminated when not NULL */
    size_t len;
    size_t alloc;
    size_t cap; /* most bytes it may ever hold (excluding the NUL) */
} relay_buf_t;

/* An empty buffer that refuses to grow past cap bytes. */
void relay_buf_init(relay_buf_t *b, size_t cap);
void relay_buf_free(relay_buf_t *b);
/* Keeps the allocation, forgets the content. */
void relay_buf_reset(relay_buf_t *b);
/* 0, RELAY_ERR_TOO_LARGE past the cap (nothing appended), or RELAY_ERR_NOMEM. */
int relay_buf_append(relay_buf_t *b, const void *data, size_t len);
int relay_buf_appends(relay_buf_t *b, const char *s);
int relay_buf_printf(relay_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int relay_buf_vprintf(relay_buf_t *b, const char *fmt, va_list ap);
/* Appends s (n bytes) as a JSON string, quotes included: ", \ and control characters escaped,
 * valid UTF-8 as it is, any other byte as U+FFFD (so the result always parses). All or nothing. */
int relay_buf_json_string(relay_buf_t *b, const char *s, size_t n);
/* Drops the first n bytes. */
void relay_buf_consume(relay_buf_t *b, size_t n);
/* Hands the content to the caller (free with free()); the buffer is left empty. */
char *relay_buf_detach(relay_buf_t *b);
/* The content as a string ("" when empty). */
const char *relay_buf_str(const relay_buf_t *b);

#endif
