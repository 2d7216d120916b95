/* util: small helpers every module shares (time, randomness, encodings, hashing). */
#ifndef RELAY_UTIL_H
#define RELAY_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall clock, Unix seconds / milliseconds. */
int64_t relay_now(void);
int64_t relay_now_ms(void);
/* Monotonic milliseconds, for durations and deadlines. */
int64_t relay_mono_ms(void);

struct timespec;
/* The wall-clock instant ms milliseconds from now, as pthread_cond_timedwait wants it. */
void relay_deadline_in(struct timespec *ts, int64_t ms);

/* "2026-11-26T03:23:28Z" into out (cap >= 21); t == 0 gives "". */
void relay_iso8601(int64_t t, char *out, size_t cap);
/* "YYYY-MM-DD" of t (UTC) into out (cap >= 11). */
void relay_utc_day(int64_t t, char *out, size_t cap);
/*
 * Parses "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS[.fff]]" with an optional "Z" or "+HH:MM"/"-HH:MM"
 * offset (none means UTC). Returns 0 and sets *t, or RELAY_ERR_INVALID.
 */
int relay_parse_iso8601(const char *s, int64_t *t);

/* Fills buf with n bytes from the operating system's random source. 0 or RELAY_ERR_IO. */
int relay_random_bytes(void *buf, size_t n);
/*
 * Random bytes for identifiers (UUIDs, admission ids, usage row ids): the same source, drawn
 * 256 bytes at a time per thread, so a request does not pay a getrandom() per id (strace: two a
 * request). A forked child draws afresh. Not for secrets: those use relay_random_bytes, so their
 * bytes never wait in memory before use.
 */
int relay_random_id_bytes(void *buf, size_t n);
/* A random UUID v4, lower-case, into out (cap >= 37). */
int relay_uuid4(char *out, size_t cap);
/* Is s a UUID in 8-4-4-4-12 hex form? */
int relay_is_uuid(const char *s);

/* URL-safe base64 without padding; out must hold 4*ceil(n/3)+1 bytes. Returns the length. */
size_t relay_base64url(const void *in, size_t n, char *out);
/* Decodes standard or URL-safe base64 (padding optional) of in[0..n) into out; *out_len gets the
 * length. -1 on bad input or when cap is too small. */
int relay_base64_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *out_len);
/* Lower-case hex; out must hold 2n+1 bytes. */
void relay_hex(const void *in, size_t n, char *out);

/* SHA-256 of data into out[32]. */
void relay_sha256(const void *data, size_t len, uint8_t out[32]);

/* Constant-time comparison of two buffers of length n: 1 when equal. */
int relay_ct_equal(const void *a, const void *b, size_t n);
/* Constant-time string comparison (time depends only on the lengths): 1 when equal. */
int relay_ct_streq(const char *a, const char *b);

/* Copies src into dst of size cap, truncating, always NUL-terminated. Returns dst. */
char *relay_strlcpy(char *dst, const char *src, size_t cap);
/* strdup that accepts NULL (returns NULL). */
char *relay_strdup0(const char *s);

/* FNV-1a of a NUL-terminated string: for hash tables of non-secret ids, not for secrets. */
uint64_t relay_hash_str(const char *s);

/*
 * One UTF-8 sequence at s (at most n bytes, n >= 1): its length, with the code point in *cp, or
 * 0 when it is not valid UTF-8 (a stray continuation byte, a cut sequence, an overlong form, a
 * surrogate, past U+10FFFF). Inline: the tokeniser calls it for every character.
 */
static inline size_t relay_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

#endif
