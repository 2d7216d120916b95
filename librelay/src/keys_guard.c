/* keys_guard: the unknown-id cache and the per-address throttle in front of key verification. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "keys_guard.h"
#include "util.h"

#define ID_BUCKETS 4096 /* power of two */
#define IP_SLOTS   4096 /* power of two; direct-mapped: a colliding address takes the slot */

typedef struct unknown_id {
    char prefix[64];
    int64_t until_ms;
    int next; /* index in the bucket chain, -1 */
    int used;
} unknown_id_t;

typedef struct ip_slot {
    char ip[64];
    int failures;
    int64_t window_start_ms, blocked_until_ms;
} ip_slot_t;

struct keys_guard {
    pthread_mutex_t mu;
    unknown_id_t ids[KEYS_GUARD_UNKNOWN_MAX]; /* a ring: the next insert takes the oldest */
    int id_bucket[ID_BUCKETS];
    size_t id_next;
    ip_slot_t ips[IP_SLOTS];
    keys_guard_stats_t stats;
    int max_failures;
};

keys_guard_t *relay_keys_guard_new(int max_failures)
{
    keys_guard_t *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->max_failures = max_failures;
    pthread_mutex_init(&g->mu, NULL);
    for (size_t i = 0; i < ID_BUCKETS; i++)
        g->id_bucket[i] = -1;
    return g;
}

void relay_keys_guard_free(keys_guard_t *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* ---- unknown ids (under g->mu) ---- */

static int *id_link(keys_guard_t *g, const char *prefix, int *found)
{
    int *pp = &g->id_bucket[relay_hash_str(prefix) & (ID_BUCKETS - 1)];
    while (*pp >= 0 && strcmp(g->ids[*pp].prefix, prefix) != 0)
        pp = &g->ids[*pp].next;
    *found = *pp;
    return pp;
}

static void id_unlink(keys_guard_t *g, int i)
{
    int found;
    int *pp = id_link(g, g->ids[i].prefix, &found);
    if (found == i)
        *pp = g->ids[i].next;
    g->ids[i].used = 0;
}

int relay_keys_guard_is_unknown(keys_guard_t *g, const char *prefix)
{
    int found, yes;
    pthread_mutex_lock(&g->mu);
    id_link(g, prefix, &found);
    yes = found >= 0 && g->ids[found].until_ms > relay_mono_ms();
    if (yes)
        g->stats.unknown_hits++;
    pthread_mutex_unlock(&g->mu);
    return yes;
}

void relay_keys_guard_note_unknown(keys_guard_t *g, const char *prefix)
{
    int64_t until = relay_mono_ms() + KEYS_GUARD_UNKNOWN_TTL_MS;
    int found;
    pthread_mutex_lock(&g->mu);
    int *pp = id_link(g, prefix, &found);
    if (found >= 0) {
        g->ids[found].until_ms = until;
    } else {
        int i = (int)(g->id_next++ % KEYS_GUARD_UNKNOWN_MAX);
        if (g->ids[i].used)
            id_unlink(g, i);
        pp = id_link(g, prefix, &found); /* the unlink may have moved the chain's end */
        relay_strlcpy(g->ids[i].prefix, prefix, sizeof g->ids[i].prefix);
        g->ids[i].until_ms = until;
        g->ids[i].next = -1;
        g->ids[i].used = 1;
        *pp = i;
    }
    pthread_mutex_unlock(&g->mu);
}

void relay_keys_guard_forget(keys_guard_t *g, const char *prefix)
{
    int found;
    pthread_mutex_lock(&g->mu);
    id_link(g, prefix, &found);
    if (found >= 0)
        id_unlink(g, found);
    pthread_mutex_unlock(&g->mu);
}

/* ---- client addresses ---- */

static ip_slot_t *ip_slot(keys_guard_t *g, const char *ip)
{
    return &g->ips[relay_hash_str(ip) & (IP_SLOTS - 1)];
}

int relay_keys_guard_blocked(keys_guard_t *g, const char *ip)
{
    if (!ip || !*ip)
        return 0;
    int64_t now = relay_mono_ms(), left = 0;
    pthread_mutex_lock(&g->mu);
    ip_slot_t *s = ip_slot(g, ip);
    if (strcmp(s->ip, ip) == 0 && s->blocked_until_ms > now) {
        left = s->blocked_until_ms - now;
        g->stats.throttled++;
    }
    pthread_mutex_unlock(&g->mu);
    return left ? (int)((left + 999) / 1000) : 0;
}

void relay_keys_guard_note_failure(keys_guard_t *g, const char *ip)
{
    if (!ip || !*ip || g->max_failures <= 0)
        return;
    int64_t now = relay_mono_ms();
    pthread_mutex_lock(&g->mu);
    ip_slot_t *s = ip_slot(g, ip);
    if (strcmp(s->ip, ip) != 0) { /* the slot changes hands (a colliding address) */
        memset(s, 0, sizeof *s);
        relay_strlcpy(s->ip, ip, sizeof s->ip);
        s->window_start_ms = now;
    } else if (now - s->window_start_ms >= KEYS_GUARD_WINDOW_MS) {
        s->failures = 0;
        s->window_start_ms = now;
    }
    if (s->blocked_until_ms <= now && ++s->failures >= g->max_failures) {
        s->blocked_until_ms = now + KEYS_GUARD_BLOCK_MS;
        s->failures = 0;
        s->window_start_ms = now;
        g->stats.blocks++;
    }
    pthread_mutex_unlock(&g->mu);
}

void relay_keys_guard_stats(keys_guard_t *g, keys_guard_stats_t *out)
{
    pthread_mutex_lock(&g->mu);
    *out = g->stats;
    pthread_mutex_unlock(&g->mu);
}
