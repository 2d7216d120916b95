/* keys_guard: what stops key guessing from costing the database and bcrypt (keys.c uses it). */
#ifndef RELAY_KEYS_GUARD_H
#define RELAY_KEYS_GUARD_H

#include <stdint.h>

/*
 * Two bounded tables behind one mutex, both thread-safe:
 * - unknown public ids: an id the store said does not exist is refused without asking again
 *   for KEYS_GUARD_UNKNOWN_TTL_MS (up to KEYS_GUARD_UNKNOWN_MAX ids; the oldest is forgotten
 *   first). Safe to remember: ids are random, so no real key gets an id somebody guessed before.
 * - failures per client address: max_failures invalid keys within
 *   KEYS_GUARD_WINDOW_MS block the address for KEYS_GUARD_BLOCK_MS, but only for keys that would
 *   need the database or bcrypt: keys already in the verified cache still pass, so one broken
 *   client behind a shared address does not lock the others out.
 */
#define KEYS_GUARD_UNKNOWN_TTL_MS 60000
#define KEYS_GUARD_UNKNOWN_MAX    16384
#define KEYS_GUARD_WINDOW_MS      60000
#define KEYS_GUARD_BLOCK_MS       60000

typedef struct keys_guard keys_guard_t;

/* max_failures 0: addresses are never blocked. NULL when out of memory. */
keys_guard_t *relay_keys_guard_new(int max_failures);
void relay_keys_guard_free(keys_guard_t *g);

/* 1 when prefix (the key's public part) was found missing within the TTL. */
int relay_keys_guard_is_unknown(keys_guard_t *g, const char *prefix);
void relay_keys_guard_note_unknown(keys_guard_t *g, const char *prefix);
/* A key with this prefix now exists (created or rotated here). */
void relay_keys_guard_forget(keys_guard_t *g, const char *prefix);

/* Seconds (>= 1) the address stays blocked, or 0. NULL or "" ip: never blocked. */
int relay_keys_guard_blocked(keys_guard_t *g, const char *ip);
/* Counts an invalid key presented from ip. */
void relay_keys_guard_note_failure(keys_guard_t *g, const char *ip);

typedef struct keys_guard_stats {
    uint64_t unknown_hits; /* refused from the unknown-id table: no database, no bcrypt */
    uint64_t throttled;    /* refused because the client address was blocked */
    uint64_t blocks;       /* addresses blocked so far */
} keys_guard_stats_t;
void relay_keys_guard_stats(keys_guard_t *g, keys_guard_stats_t *out);

#endif
