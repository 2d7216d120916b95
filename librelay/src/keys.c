/* keys: proxy API keys — generation, bcrypt hashing, CRUD over the store, the verified-key cache,
 * and single-flight verification with a bound on concurrent bcrypts. */
#include "relay/keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "metrics_internal.h"
#include "relay/auth.h"
#include "relay/budgets.h"
#include "relay/tiers.h"
#include "relay/upstreams.h"
#include "keys_guard.h"
#include "keys_internal.h"
#include "maintenance_internal.h"
#include "util.h"

#define SECRET_BYTES       32
#define SECRET_LEN         43 /* base64url of 32 bytes, unpadded */
#define KEY_PREFIX_OPT_MAX 50
#define JSON_ARRAY_MAX     1000
#define JSON_ITEM_MAX      255
/* One answer for every key we refuse, so nothing tells an unknown key from a wrong one. */
#define AUTH_MSG "invalid API key"

/* One verified key. rec.key_hash is the hash the presented key was checked against. */
typedef struct cache_entry {
    uint8_t digest[32]; /* SHA-256 of the presented key */
    relay_key_record_t rec;
    int64_t fresh_until_ms;    /* monotonic; after it the record is re-read (INT64_MIN: now) */
    int refresh_wanted;        /* served stale: the maintenance thread re-reads it */
    struct cache_entry *next;  /* bucket chain */
    struct cache_entry *pnext; /* chain of the by-key_prefix index */
    struct cache_entry *older; /* FIFO order, for eviction when full */
    struct cache_entry *newer;
} cache_entry_t;

/*
 * One verification in progress (store lookup, then bcrypt if needed) of one presented key, found
 * by the same SHA-256 the cache uses: concurrent verifications of that exact key wait for it
 * instead of running their own bcrypt. A different secret for the same public id has another
 * digest, hence its own flight: it can never receive this one's success.
 */
typedef struct flight {
    uint8_t digest[32];
    pthread_cond_t done_cv;
    int refs; /* the leader and every waiter still holding it; the last one frees it */
    int done;
    int rc;                 /* the leader's result: 0 (secret proven), RELAY_ERR_AUTH, _STORE... */
    const char *how;        /* "bcrypt" or "cached" (re-read after the TTL, no bcrypt) */
    relay_key_record_t rec; /* when done with rc 0 and someone waits */
    struct flight *next;
} flight_t;

/* A verification queued for a bcrypt slot (on its thread's stack); served in arrival order. */
typedef struct slot_waiter {
    pthread_cond_t cv;
    int granted;
    struct slot_waiter *next;
} slot_waiter_t;

struct relay_keys_state {
    pthread_mutex_t mu; /* the cache, the flights and the bcrypt slots */
    cache_entry_t **buckets;
    cache_entry_t **pbuckets; /* the same entries by rec.key_prefix (the public id) */
    size_t nbuckets;          /* power of two, for both */
    cache_entry_t *oldest, *newest;
    size_t count, max;
    /* Bumped by every eviction: a verify that read the store before it must not cache its copy. */
    uint64_t generation;
    flight_t *flights;
    int slots_max, slots_busy;
    slot_waiter_t *slot_head, *slot_tail;
    size_t waiting; /* for a flight's result or a bcrypt slot */
    atomic_uint_fast64_t bcrypt_calls, hits, refreshes, lookups, rejected, shared, timeouts;
    atomic_uint_fast64_t refuted, stale_hits;
    int stale_ms; /* key_cache_stale_ms */
    atomic_uint_fast64_t bcrypt_running, bcrypt_max_parallel;
    keys_guard_t *guard; /* unknown ids and per-address throttling (keys_guard.c) */
};

/* ---- cache (all under st->mu) ---- */

static size_t bucket_of(const struct relay_keys_state *st, const uint8_t d[32])
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    return (size_t)h & (st->nbuckets - 1);
}

static cache_entry_t *cache_find(struct relay_keys_state *st, const uint8_t d[32])
{
    for (cache_entry_t *e = st->buckets[bucket_of(st, d)]; e; e = e->next)
        if (relay_ct_equal(e->digest, d, 32))
            return e;
    return NULL;
}

static size_t pbucket_of(const struct relay_keys_state *st, const char *key_prefix)
{
    return (size_t)relay_hash_str(key_prefix) & (st->nbuckets - 1); /* the prefix is not secret */
}

/*
 * Does an entry other than d's prove another secret for this public id against this same hash?
 * Then the key presented with digest d cannot be right (two secrets matching one bcrypt hash
 * would be a collision) and needs no bcrypt to be refused. Lock held.
 */
static int cache_refutes(struct relay_keys_state *st, const uint8_t d[32], const char *key_prefix,
                         const char *key_hash)
{
    for (cache_entry_t *e = st->pbuckets[pbucket_of(st, key_prefix)]; e; e = e->pnext)
        if (strcmp(e->rec.key_prefix, key_prefix) == 0 && !relay_ct_equal(e->digest, d, 32) &&
            relay_ct_streq(e->rec.key_hash, key_hash))
            return 1;
    return 0;
}

static void cache_remove(struct relay_keys_state *st, cache_entry_t *e)
{
    cache_entry_t **pp = &st->buckets[bucket_of(st, e->digest)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    pp = &st->pbuckets[pbucket_of(st, e->rec.key_prefix)];
    while (*pp != e)
        pp = &(*pp)->pnext;
    *pp = e->pnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        st->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        st->newest = e->older;
    relay_key_record_clear(&e->rec);
    free(e);
    st->count--;
}

/* Inserts or replaces the entry for d with a copy of rec; evicts the oldest when full. */
static void cache_put(struct relay_keys_state *st, const uint8_t d[32],
                      const relay_key_record_t *rec, int64_t fresh_until_ms)
{
    if (st->max == 0)
        return;
    cache_entry_t *old = cache_find(st, d);
    if (old)
        cache_remove(st, old);
    while (st->count >= st->max && st->oldest)
        cache_remove(st, st->oldest);
    cache_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return;
    if (relay_key_record_copy(&e->rec, rec) != 0) {
        free(e);
        return;
    }
    memcpy(e->digest, d, 32);
    e->fresh_until_ms = fresh_until_ms;
    size_t b = bucket_of(st, d);
    e->next = st->buckets[b];
    st->buckets[b] = e;
    b = pbucket_of(st, e->rec.key_prefix);
    e->pnext = st->pbuckets[b];
    st->pbuckets[b] = e;
    e->older = st->newest;
    if (st->newest)
        st->newest->newer = e;
    else
        st->oldest = e;
    st->newest = e;
    st->count++;
}

void relay_keys_cache_evict(relay_t *r, const char *id)
{
    struct relay_keys_state *st = r->keys;
    if (!st || !id)
        return;
    pthread_mutex_lock(&st->mu);
    /*
     * A key may sit under several digests (e.g. before and after a rotation): scan them all.
     * Entries are marked stale rather than dropped, so the next verify re-reads the record at
     * once but keeps the proof of the secret: an unchanged hash costs no second bcrypt.
     */
    for (cache_entry_t *e = st->oldest; e; e = e->newer)
        if (strcmp(e->rec.id, id) == 0)
            e->fresh_until_ms = INT64_MIN;
    st->generation++;
    pthread_mutex_unlock(&st->mu);
}

void relay_keys_stats(relay_t *r, relay_keys_stats_t *out)
{
    struct relay_keys_state *st = r->keys;
    memset(out, 0, sizeof *out);
    if (!st)
        return;
    out->bcrypt_calls = atomic_load(&st->bcrypt_calls);
    out->cache_hits = atomic_load(&st->hits);
    out->cache_refresh = atomic_load(&st->refreshes);
    out->cache_stale_hits = atomic_load(&st->stale_hits);
    out->store_lookups = atomic_load(&st->lookups);
    out->rejected = atomic_load(&st->rejected);
    out->verify_shared = atomic_load(&st->shared);
    out->verify_timeouts = atomic_load(&st->timeouts);
    out->refuted_by_cache = atomic_load(&st->refuted);
    out->bcrypt_running = atomic_load(&st->bcrypt_running);
    out->bcrypt_max_parallel = atomic_load(&st->bcrypt_max_parallel);
    keys_guard_stats_t gs;
    relay_keys_guard_stats(st->guard, &gs);
    out->unknown_id_hits = gs.unknown_hits;
    out->throttled = gs.throttled;
    out->throttle_blocks = gs.blocks;
    pthread_mutex_lock(&st->mu);
    out->cache_entries = st->count;
    out->verify_waiting = st->waiting;
    out->bcrypt_slots = st->slots_max;
    pthread_mutex_unlock(&st->mu);
}

/* ---- lifecycle hooks (modules.h) ---- */

int relay_keys_start(relay_t *r, relay_error_t *err)
{
    size_t pl = strlen(r->opts.key_prefix ? r->opts.key_prefix : "");
    if (pl == 0 || pl > KEY_PREFIX_OPT_MAX)
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "api_keys.prefix: expected 1 to %d characters", KEY_PREFIX_OPT_MAX);
    if (r->opts.bcrypt_cost < 4 || r->opts.bcrypt_cost > 31)
        return relay_error_set(err, RELAY_ERR_CONFIG, "bcrypt_cost: expected 4 to 31");
    if (r->opts.bcrypt_concurrency < 0 || r->opts.bcrypt_concurrency > 1024)
        return relay_error_set(err, RELAY_ERR_CONFIG, "bcrypt_concurrency: expected 0 to 1024");
    if (r->opts.key_verify_wait_ms <= 0)
        return relay_error_set(err, RELAY_ERR_CONFIG, "key_verify_wait_ms: expected > 0");
    struct relay_keys_state *st = calloc(1, sizeof *st);
    if (!st)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    st->max = r->opts.key_cache_max;
    st->stale_ms = r->opts.key_cache_stale_ms > 0 ? r->opts.key_cache_stale_ms : 0;
    st->nbuckets = 16;
    while (st->nbuckets < st->max && st->nbuckets < ((size_t)1 << 20))
        st->nbuckets <<= 1;
    st->buckets = calloc(st->nbuckets, sizeof *st->buckets);
    st->pbuckets = calloc(st->nbuckets, sizeof *st->pbuckets);
    if (!st->buckets || !st->pbuckets) {
        free(st->buckets);
        free(st->pbuckets);
        free(st);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    st->slots_max = r->opts.bcrypt_concurrency;
    if (st->slots_max == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        st->slots_max = n > 0 ? (n < 1024 ? (int)n : 1024) : 1;
    }
    st->guard = relay_keys_guard_new(r->opts.key_max_invalid_per_ip);
    if (!st->guard) {
        free(st->buckets);
        free(st->pbuckets);
        free(st);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&st->mu, NULL);
    r->keys = st;
    return 0;
}

void relay_keys_stop(relay_t *r)
{
    struct relay_keys_state *st = r->keys;
    if (!st)
        return;
    while (st->oldest)
        cache_remove(st, st->oldest);
    pthread_mutex_destroy(&st->mu);
    relay_keys_guard_free(st->guard);
    free(st->buckets);
    free(st->pbuckets);
    free(st);
    r->keys = NULL;
}

/* ---- key material ---- */

static int is_alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_b64url(char c)
{
    return is_alnum(c) || c == '-' || c == '_';
}

/* 12 alphanumeric characters (no '_', so the key splits unambiguously), by rejection sampling. */
static int gen_public_id(char out[RELAY_KEY_PUBLIC_ID_LEN + 1])
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    uint8_t b[32];
    size_t n = 0;
    while (n < RELAY_KEY_PUBLIC_ID_LEN) {
        int rc = relay_random_bytes(b, sizeof b);
        if (rc)
            return rc;
        for (size_t i = 0; i < sizeof b && n < RELAY_KEY_PUBLIC_ID_LEN; i++)
            if (b[i] < 248) /* 248 = 4 * 62: keeps the characters uniform */
                out[n++] = A[b[i] % 62];
    }
    out[n] = '\0';
    return 0;
}

/*
 * A fresh key into key_out, its lookup prefix and the bcrypt hash of its secret. Only the secret
 * is hashed: it is always 43 bytes, well inside bcrypt's 72-byte input limit whatever the
 * configured prefix, and the public id is bound by the lookup anyway.
 */
static int gen_key(relay_t *r, char *key_out, size_t cap, char prefix[64], char hash[128])
{
    char pub[RELAY_KEY_PUBLIC_ID_LEN + 1];
    uint8_t raw[SECRET_BYTES];
    char secret[SECRET_LEN + 2];
    int rc = gen_public_id(pub);
    if (!rc)
        rc = relay_random_bytes(raw, sizeof raw);
    if (rc)
        return rc;
    relay_base64url(raw, sizeof raw, secret);
    explicit_bzero(raw, sizeof raw);
    if ((size_t)snprintf(prefix, 64, "%s%s", r->opts.key_prefix, pub) >= 64 ||
        (size_t)snprintf(key_out, cap, "%s_%s", prefix, secret) >= cap)
        rc = RELAY_ERR_INVALID;
    if (!rc)
        rc = relay_auth_hash_password(hash, 128, secret, r->opts.bcrypt_cost);
    explicit_bzero(secret, sizeof secret);
    return rc;
}

/* Splits a presented key into its lookup prefix and secret; -1 when it cannot be one of ours. */
static int parse_key(relay_t *r, const char *key, char prefix[64], const char **secret)
{
    size_t pl = strlen(r->opts.key_prefix);
    if (!key || strnlen(key, RELAY_KEY_MAX) >= RELAY_KEY_MAX ||
        strncmp(key, r->opts.key_prefix, pl) != 0)
        return -1;
    const char *id = key + pl;
    for (int i = 0; i < RELAY_KEY_PUBLIC_ID_LEN; i++)
        if (!is_alnum(id[i]))
            return -1;
    if (id[RELAY_KEY_PUBLIC_ID_LEN] != '_')
        return -1;
    const char *s = id + RELAY_KEY_PUBLIC_ID_LEN + 1;
    size_t sl = strlen(s);
    if (sl != SECRET_LEN)
        return -1;
    for (size_t i = 0; i < sl; i++)
        if (!is_b64url(s[i]))
            return -1;
    memcpy(prefix, key, pl + RELAY_KEY_PUBLIC_ID_LEN);
    prefix[pl + RELAY_KEY_PUBLIC_ID_LEN] = '\0';
    *secret = s;
    return 0;
}

/* ---- validation ---- */

static int valid_ip_or_cidr(const char *s)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    size_t al = slash ? (size_t)(slash - s) : strlen(s);
    if (al == 0 || al >= sizeof addr)
        return 0;
    memcpy(addr, s, al);
    addr[al] = '\0';
    unsigned char bin[16];
    int bits;
    if (inet_pton(AF_INET, addr, bin) == 1)
        bits = 32;
    else if (inet_pton(AF_INET6, addr, bin) == 1)
        bits = 128;
    else
        return 0;
    if (!slash)
        return 1;
    const char *p = slash + 1;
    if (!*p || strlen(p) > 3)
        return 0;
    int v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (*p - '0');
    }
    return v <= bits;
}

static int valid_token(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > JSON_ITEM_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return 0;
    return 1;
}

/* Checks a JSON array of strings; each must pass item_ok. */
static int check_array(const char *field, json_t *v, int (*item_ok)(const char *), const char *what,
                       relay_error_t *err)
{
    if (!json_is_array(v))
        return relay_error_set(err, RELAY_ERR_INVALID, "%s: expected an array of strings or null",
                               field);
    if (json_array_size(v) > JSON_ARRAY_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "%s: at most %d entries", field,
                               JSON_ARRAY_MAX);
    size_t i;
    json_t *it;
    json_array_foreach(v, i, it)
    {
        if (!json_is_string(it) || !item_ok(json_string_value(it)))
            return relay_error_set(err, RELAY_ERR_INVALID, "%s[%zu]: expected %s", field, i, what);
    }
    return 0;
}

/* Validates field's JSON text and gives back its compact form (NULL for NULL or "null"). */
static int norm_json_field(const char *field, const char *text, char **out, relay_error_t *err)
{
    *out = NULL;
    if (!text)
        return 0;
    if (strlen(text) > RELAY_KEY_JSON_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "%s: longer than %d bytes", field,
                               RELAY_KEY_JSON_MAX);
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (!v)
        return relay_error_set(err, RELAY_ERR_INVALID, "%s: invalid JSON: %s", field, je.text);
    int rc = 0;
    if (json_is_null(v)) {
        json_decref(v);
        return 0;
    }
    if (strcmp(field, "metadata") == 0) {
        if (!json_is_object(v))
            rc = relay_error_set(err, RELAY_ERR_INVALID, "metadata: expected an object or null");
    } else if (strcmp(field, "allowed_ips") == 0) {
        rc = check_array(field, v, valid_ip_or_cidr, "an IP address or CIDR range", err);
    } else {
        rc = check_array(field, v, valid_token,
                         "a non-empty string without spaces (at most 255 bytes)", err);
    }
    if (!rc) {
        *out = json_dumps(v, JSON_COMPACT);
        if (!*out)
            rc = relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    json_decref(v);
    return rc;
}

int relay_keys_validate_json_field(const char *field, const char *json, relay_error_t *err)
{
    char *norm = NULL;
    int rc = norm_json_field(field, json, &norm, err);
    free(norm);
    return rc;
}

static int check_name(const char *name, relay_error_t *err)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > RELAY_KEY_NAME_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "name: expected 1 to %d characters",
                               RELAY_KEY_NAME_MAX);
    return 0;
}

static int check_description(const char *d, relay_error_t *err)
{
    if (d && strlen(d) > RELAY_KEY_DESCRIPTION_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "description: at most %d characters",
                               RELAY_KEY_DESCRIPTION_MAX);
    return 0;
}

static int check_tier(relay_t *r, const char *tier, relay_error_t *err)
{
    relay_tier_def_t t;
    if (!tier || !*tier || strlen(tier) >= sizeof t.name)
        return relay_error_set(err, RELAY_ERR_INVALID, "rate_limit_tier: expected a tier name");
    if (relay_tiers_get(r, tier, &t) != 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "rate_limit_tier: unknown tier '%s'", tier);
    return 0;
}

/* Replaces *slot with the normalised JSON of text (validated under field's rules). */
static int set_json(char **slot, const char *field, const char *text, relay_error_t *err)
{
    char *norm;
    int rc = norm_json_field(field, text, &norm, err);
    if (rc)
        return rc;
    free(*slot);
    *slot = norm;
    return 0;
}

static int set_str(char **slot, const char *s)
{
    char *d = relay_strdup0(s);
    if (s && !d)
        return RELAY_ERR_NOMEM;
    free(*slot);
    *slot = d;
    return 0;
}

/* ---- create / read ---- */

/* Merges a budgets patch into *slot (validated; an empty result clears it). */
static int set_cost_limits(char **slot, const char *patch, relay_error_t *err)
{
    if (!patch)
        return 0;
    char *merged = NULL;
    int rc = relay_budgets_merge(*slot, patch, &merged, err);
    if (rc)
        return rc;
    free(*slot);
    *slot = merged;
    return 0;
}

void relay_key_params_init(relay_key_params_t *p)
{
    memset(p, 0, sizeof *p);
    p->token_limit = -1;
}

/* upstream_group: a group name (relay_upstreams_check_name), or NULL / "" for none. */
static int set_group(char *dst, size_t cap, const char *g, relay_error_t *err)
{
    const char *bad = g && *g ? relay_upstreams_check_name(g) : NULL;
    if (bad)
        return relay_error_set(err, RELAY_ERR_INVALID, "upstream_group: %s", bad);
    relay_strlcpy(dst, g ? g : "", cap);
    return 0;
}

static int fill_new_record(relay_t *r, const relay_key_params_t *p, relay_key_record_t *rec,
                           relay_error_t *err)
{
    int rc = check_name(p->name, err);
    if (!rc)
        rc = check_description(p->description, err);
    if (rc)
        return rc;
    const char *tier = p->tier ? p->tier : r->opts.default_tier;
    if ((rc = check_tier(r, tier, err)) != 0)
        return rc;
    if (p->expires_at < 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "expires_at: expected a time or null");
    if ((rc = relay_uuid4(rec->id, sizeof rec->id)) != 0)
        return relay_error_set(err, rc, "cannot read random bytes");
    if (set_str(&rec->name, p->name) || set_str(&rec->description, p->description))
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    if ((rc = set_json(&rec->allowed_ips, "allowed_ips", p->allowed_ips, err)) ||
        (rc = set_json(&rec->allowed_origins, "allowed_origins", p->allowed_origins, err)) ||
        (rc = set_json(&rec->allowed_models, "allowed_models", p->allowed_models, err)) ||
        (rc = set_json(&rec->metadata, "metadata", p->metadata, err)) ||
        (rc = set_cost_limits(&rec->cost_limits, p->cost_limits, err)) ||
        (rc = set_group(rec->upstream_group, sizeof rec->upstream_group, p->upstream_group, err)))
        return rc;
    rec->token_limit = p->token_limit < 0 ? r->opts.default_token_limit : p->token_limit;
    relay_strlcpy(rec->rate_limit_tier, tier, sizeof rec->rate_limit_tier);
    rec->is_active = 1;
    rec->expires_at = p->expires_at;
    rec->created_at = rec->updated_at = relay_now();
    return 0;
}

static int finish_out(relay_key_record_t *rec, relay_key_record_t *rec_out)
{
    if (rec_out)
        *rec_out = *rec; /* hands over the owned strings */
    else
        relay_key_record_clear(rec);
    return 0;
}

int relay_keys_create(relay_t *r, const relay_key_params_t *p, char *key_out, size_t cap,
                      relay_key_record_t *rec_out, relay_error_t *err)
{
    if (!key_out || cap < RELAY_KEY_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "key buffer too small");
    key_out[0] = '\0';
    relay_key_record_t rec = {0};
    int rc = fill_new_record(r, p, &rec, err);
    /* A public-id collision (2^-71 per pair) is retried with a fresh key rather than reported. */
    for (int attempt = 0; rc == 0 && attempt < 3; attempt++) {
        rc = gen_key(r, key_out, cap, rec.key_prefix, rec.key_hash);
        if (rc) {
            relay_error_set(err, rc, "cannot generate a key");
            break;
        }
        rc = relay_store_key_insert(r->store, &rec);
        if (rc && rc != RELAY_ERR_CONFLICT)
            relay_error_set(err, rc, "cannot store the key: %s", relay_strerror(rc));
        if (rc != RELAY_ERR_CONFLICT)
            break;
        relay_error_set(err, rc, "cannot store the key: key prefix collision");
    }
    if (rc) {
        explicit_bzero(key_out, cap);
        relay_key_record_clear(&rec);
        return rc;
    }
    relay_keys_guard_forget(r->keys->guard, rec.key_prefix);
    return finish_out(&rec, rec_out);
}

/* The live (not deleted) record of id; NOT_FOUND with one message for unknown and malformed ids. */
static int load_live(relay_t *r, const char *id, relay_key_record_t *rec, int allow_deleted,
                     relay_error_t *err)
{
    memset(rec, 0, sizeof *rec);
    if (!relay_is_uuid(id))
        return relay_error_set(err, RELAY_ERR_NOT_FOUND, "API key not found");
    char lid[37];
    for (int i = 0; i < 37; i++)
        lid[i] = (char)((id[i] >= 'A' && id[i] <= 'F') ? id[i] + 32 : id[i]);
    int rc = relay_store_key_get(r->store, lid, rec);
    if (rc == RELAY_ERR_NOT_FOUND || (rc == 0 && rec->is_deleted && !allow_deleted)) {
        relay_key_record_clear(rec);
        return relay_error_set(err, RELAY_ERR_NOT_FOUND, "API key not found");
    }
    if (rc)
        return relay_error_set(err, rc, "cannot read the key: %s", relay_strerror(rc));
    return 0;
}

int relay_keys_get(relay_t *r, const char *id, relay_key_record_t *rec_out, relay_error_t *err)
{
    relay_key_record_t rec;
    int rc = load_live(r, id, &rec, 0, err);
    if (rc)
        return rc;
    return finish_out(&rec, rec_out);
}

int relay_keys_list(relay_t *r, relay_key_filter filter, int64_t skip, int64_t limit,
                    relay_key_record_t **out, size_t *n, int64_t *total, relay_error_t *err)
{
    *out = NULL;
    *n = 0;
    *total = 0;
    if (skip < 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "skip: expected a non-negative integer");
    if (limit < 1 || limit > 1000)
        return relay_error_set(err, RELAY_ERR_INVALID, "limit: expected an integer from 1 to 1000");
    int rc = relay_store_key_list(r->store, filter, relay_now(), skip, limit, out, n, total);
    if (rc)
        return relay_error_set(err, rc, "cannot list keys: %s", relay_strerror(rc));
    return 0;
}

/* ---- changes ---- */

/* Writes rec, then evicts it here so the change is seen by the very next verify. */
static int store_and_evict(relay_t *r, relay_key_record_t *rec, relay_error_t *err)
{
    rec->updated_at = relay_now();
    int rc = relay_store_key_update(r->store, rec);
    relay_keys_cache_evict(r, rec->id);
    if (rc == RELAY_ERR_NOT_FOUND)
        return relay_error_set(err, rc, "API key not found");
    if (rc)
        return relay_error_set(err, rc, "cannot update the key: %s", relay_strerror(rc));
    return 0;
}

static int apply_update(relay_t *r, relay_key_record_t *rec, const relay_key_update_t *u,
                        relay_error_t *err)
{
    int rc = 0;
    if ((u->set & RELAY_KEY_SET_NAME) &&
        ((rc = check_name(u->name, err)) || set_str(&rec->name, u->name)))
        return rc ? rc : relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    if ((u->set & RELAY_KEY_SET_DESCRIPTION) && ((rc = check_description(u->description, err)) ||
                                                 set_str(&rec->description, u->description)))
        return rc ? rc : relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    if (u->set & RELAY_KEY_SET_TOKEN_LIMIT) {
        if (u->token_limit < 0)
            return relay_error_set(err, RELAY_ERR_INVALID,
                                   "token_limit: expected a non-negative integer");
        rec->token_limit = u->token_limit;
    }
    if (u->set & RELAY_KEY_SET_TIER) {
        if ((rc = check_tier(r, u->tier, err)) != 0)
            return rc;
        relay_strlcpy(rec->rate_limit_tier, u->tier, sizeof rec->rate_limit_tier);
    }
    if (u->set & RELAY_KEY_SET_EXPIRES_AT) {
        if (u->expires_at < 0)
            return relay_error_set(err, RELAY_ERR_INVALID, "expires_at: expected a time or null");
        rec->expires_at = u->expires_at;
    }
    if (((u->set & RELAY_KEY_SET_ALLOWED_IPS) &&
         (rc = set_json(&rec->allowed_ips, "allowed_ips", u->allowed_ips, err))) ||
        ((u->set & RELAY_KEY_SET_ALLOWED_ORIGINS) &&
         (rc = set_json(&rec->allowed_origins, "allowed_origins", u->allowed_origins, err))) ||
        ((u->set & RELAY_KEY_SET_ALLOWED_MODELS) &&
         (rc = set_json(&rec->allowed_models, "allowed_models", u->allowed_models, err))) ||
        ((u->set & RELAY_KEY_SET_METADATA) &&
         (rc = set_json(&rec->metadata, "metadata", u->metadata, err))))
        return rc;
    if (u->set & RELAY_KEY_SET_IS_ACTIVE)
        rec->is_active = u->is_active ? 1 : 0;
    if ((u->set & RELAY_KEY_SET_COST_LIMITS) &&
        (rc = set_cost_limits(&rec->cost_limits, u->cost_limits, err)))
        return rc;
    if ((u->set & RELAY_KEY_SET_UPSTREAM_GROUP) &&
        (rc = set_group(rec->upstream_group, sizeof rec->upstream_group, u->upstream_group, err)))
        return rc;
    return 0;
}

int relay_keys_update(relay_t *r, const char *id, const relay_key_update_t *u,
                      relay_key_record_t *rec_out, relay_error_t *err)
{
    relay_key_record_t rec;
    int rc = load_live(r, id, &rec, 0, err);
    if (!rc)
        rc = apply_update(r, &rec, u, err);
    if (!rc)
        rc = store_and_evict(r, &rec, err);
    if (rc) {
        relay_key_record_clear(&rec);
        return rc;
    }
    return finish_out(&rec, rec_out);
}

static int set_active(relay_t *r, const char *id, int active, relay_error_t *err)
{
    relay_key_update_t u = {.set = RELAY_KEY_SET_IS_ACTIVE, .is_active = active};
    return relay_keys_update(r, id, &u, NULL, err);
}

int relay_keys_disable(relay_t *r, const char *id, relay_error_t *err)
{
    return set_active(r, id, 0, err);
}

int relay_keys_enable(relay_t *r, const char *id, relay_error_t *err)
{
    return set_active(r, id, 1, err);
}

int relay_keys_delete(relay_t *r, const char *id, int hard, relay_error_t *err)
{
    relay_key_record_t rec;
    /* A soft-deleted key may still be removed for good. */
    int rc = load_live(r, id, &rec, hard, err);
    if (rc)
        return rc;
    if (hard) {
        rc = relay_store_key_delete_hard(r->store, rec.id);
        relay_keys_cache_evict(r, rec.id);
        if (rc)
            relay_error_set(err, rc, "cannot delete the key: %s", relay_strerror(rc));
    } else {
        rec.is_deleted = 1;
        rec.is_active = 0;
        rec.deleted_at = relay_now();
        rc = store_and_evict(r, &rec, err);
    }
    relay_key_record_clear(&rec);
    return rc;
}

int relay_keys_rotate(relay_t *r, const char *id, char *key_out, size_t cap,
                      relay_key_record_t *rec_out, relay_error_t *err)
{
    if (!key_out || cap < RELAY_KEY_MAX)
        return relay_error_set(err, RELAY_ERR_INVALID, "key buffer too small");
    key_out[0] = '\0';
    relay_key_record_t rec;
    int rc = load_live(r, id, &rec, 0, err);
    for (int attempt = 0; rc == 0 && attempt < 3; attempt++) {
        if ((rc = gen_key(r, key_out, cap, rec.key_prefix, rec.key_hash)) != 0) {
            relay_error_set(err, rc, "cannot generate a key");
            break;
        }
        rc = store_and_evict(r, &rec, err);
        if (rc != RELAY_ERR_CONFLICT)
            break;
    }
    if (rc) {
        explicit_bzero(key_out, cap);
        relay_key_record_clear(&rec);
        return rc;
    }
    relay_keys_guard_forget(r->keys->guard, rec.key_prefix);
    return finish_out(&rec, rec_out);
}

/* ---- verification ---- */

static int reject(struct relay_keys_state *st, relay_error_t *err)
{
    atomic_fetch_add(&st->rejected, 1);
    return relay_error_set(err, RELAY_ERR_AUTH, AUTH_MSG);
}

/* The state checks that follow a proven secret: only then may we say "disabled" or "expired". */
static int check_state(relay_key_record_t *rec, relay_key_record_t *rec_out, relay_error_t *err)
{
    int rc = 0;
    if (!rec->is_active)
        rc = relay_error_set(err, RELAY_ERR_KEY_DISABLED, "API key is disabled");
    else if (rec->expires_at && rec->expires_at <= relay_now())
        rc = relay_error_set(err, RELAY_ERR_KEY_EXPIRED, "API key has expired");
    if (rc) {
        relay_key_record_clear(rec);
        return rc;
    }
    return finish_out(rec, rec_out);
}

/*
 * Looks in the cache (lock held): 1 with rec filled for a fresh hit, or for one past its TTL but
 * within key_cache_stale_ms (*stale set the first time: the caller asks the maintenance thread to
 * re-read it, so no request waits on the database for a known key). Else 0 and the stale entry's
 * hash, if any. An entry a change on this instance marked (INT64_MIN) is never served stale.
 */
static int cache_lookup(struct relay_keys_state *st, const uint8_t d[32], relay_key_record_t *rec,
                        char stale_hash[128], int *stale)
{
    cache_entry_t *e = cache_find(st, d);
    int64_t now = relay_mono_ms();
    if (e && e->fresh_until_ms > now)
        return relay_key_record_copy(rec, &e->rec) == 0;
    if (e && e->fresh_until_ms != INT64_MIN && now - e->fresh_until_ms < st->stale_ms &&
        relay_key_record_copy(rec, &e->rec) == 0) {
        *stale = 1;
        if (!e->refresh_wanted) {
            e->refresh_wanted = 1;
            *stale = 2; /* first stale hit: wake the re-reader */
        }
        return 1;
    }
    if (e)
        relay_strlcpy(stale_hash, e->rec.key_hash, 128);
    return 0;
}

/* ---- bcrypt slots: at most slots_max bcrypts at once, the rest queue in arrival order ---- */

/* Counts bcrypts really running, apart from the slot bookkeeping, so tests check the bound. */
static void bcrypt_enter(struct relay_keys_state *st)
{
    uint_fast64_t now = atomic_fetch_add(&st->bcrypt_running, 1) + 1;
    uint_fast64_t max = atomic_load(&st->bcrypt_max_parallel);
    while (now > max && !atomic_compare_exchange_weak(&st->bcrypt_max_parallel, &max, now))
        ;
}

static void slot_unlink(struct relay_keys_state *st, slot_waiter_t *w)
{
    slot_waiter_t **pp = &st->slot_head, *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = w->next;
    if (st->slot_tail == w)
        st->slot_tail = prev;
}

/* Waits (at most wait_ms) for a bcrypt slot. 0 with the slot held, or RELAY_ERR_OVERLOADED. */
static int slot_acquire(struct relay_keys_state *st, int wait_ms)
{
    pthread_mutex_lock(&st->mu);
    if (st->slots_busy < st->slots_max && !st->slot_head) {
        st->slots_busy++;
        pthread_mutex_unlock(&st->mu);
        return 0;
    }
    /* w lives on this stack only while queued: it leaves the queue before we return, taken
     * off by slot_release when granted or by slot_unlink on a time-out. */
    slot_waiter_t w = {.granted = 0};
    pthread_cond_init(&w.cv, NULL);
    if (st->slot_tail)
        st->slot_tail->next = &w;
    else
        st->slot_head = &w; /* cppcheck-suppress autoVariables */
    st->slot_tail = &w;     /* cppcheck-suppress autoVariables */
    st->waiting++;
    struct timespec until;
    relay_deadline_in(&until, wait_ms);
    while (!w.granted)
        if (pthread_cond_timedwait(&w.cv, &st->mu, &until) == ETIMEDOUT && !w.granted) {
            slot_unlink(st, &w);
            break;
        }
    st->waiting--;
    pthread_mutex_unlock(&st->mu);
    pthread_cond_destroy(&w.cv);
    return w.granted ? 0 : RELAY_ERR_OVERLOADED;
}

/* Hands the slot to the longest waiter, or frees it. */
static void slot_release(struct relay_keys_state *st)
{
    pthread_mutex_lock(&st->mu);
    slot_waiter_t *w = st->slot_head;
    if (w) {
        st->slot_head = w->next;
        if (!st->slot_head)
            st->slot_tail = NULL;
        w->granted = 1;
        pthread_cond_signal(&w->cv);
    } else {
        st->slots_busy--;
    }
    pthread_mutex_unlock(&st->mu);
}

/* One bcrypt of secret against hash inside a slot: 1 match, 0 no match, <0 no slot in time. */
static int bcrypt_bounded(relay_t *r, const char *secret, const char *hash)
{
    struct relay_keys_state *st = r->keys;
    if (slot_acquire(st, r->opts.key_verify_wait_ms) != 0)
        return RELAY_ERR_OVERLOADED;
    atomic_fetch_add(&st->bcrypt_calls, 1);
    bcrypt_enter(st);
    int ok = relay_auth_check_password(secret, hash);
    atomic_fetch_sub(&st->bcrypt_running, 1);
    slot_release(st);
    return ok;
}

/* ---- single flight ---- */

static flight_t *flight_find(struct relay_keys_state *st, const uint8_t d[32])
{
    for (flight_t *f = st->flights; f; f = f->next)
        if (relay_ct_equal(f->digest, d, 32))
            return f;
    return NULL;
}

/* Drops one reference; the last frees the flight. Lock held. */
static void flight_put(flight_t *f)
{
    if (--f->refs > 0)
        return;
    relay_key_record_clear(&f->rec);
    pthread_cond_destroy(&f->done_cv);
    free(f);
}

/*
 * Waits (at most key_verify_wait_ms) for the leader of f, then takes its result. Lock held.
 * RELAY_ERR_OVERLOADED on a time-out (relay_keys_verify answers it like a wrong key).
 */
static int flight_wait(relay_t *r, flight_t *f, relay_key_record_t *rec, const char **how)
{
    struct relay_keys_state *st = r->keys;
    struct timespec until;
    relay_deadline_in(&until, r->opts.key_verify_wait_ms);
    f->refs++;
    st->waiting++;
    while (!f->done)
        if (pthread_cond_timedwait(&f->done_cv, &st->mu, &until) == ETIMEDOUT)
            break;
    st->waiting--;
    int done = f->done;
    int rc = done ? f->rc : RELAY_ERR_OVERLOADED;
    if (rc == 0 && relay_key_record_copy(rec, &f->rec) != 0)
        rc = RELAY_ERR_NOMEM;
    *how = f->how; /* a string constant: outlives f */
    flight_put(f);
    if (done)
        atomic_fetch_add(&st->shared, 1);
    return rc;
}

static flight_t *flight_begin(struct relay_keys_state *st, const uint8_t d[32])
{
    flight_t *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    memcpy(f->digest, d, 32);
    pthread_cond_init(&f->done_cv, NULL);
    f->refs = 1;
    f->how = "bcrypt";
    f->next = st->flights;
    st->flights = f;
    return f;
}

static void flight_unlink(struct relay_keys_state *st, flight_t *f)
{
    flight_t **pp = &st->flights;
    while (*pp != f)
        pp = &(*pp)->next;
    *pp = f->next;
}

/* A wrong secret for a key whose right one the cache holds: refused without a bcrypt. */
static int refuted(struct relay_keys_state *st, const uint8_t d[32], const relay_key_record_t *rec)
{
    pthread_mutex_lock(&st->mu);
    int yes = cache_refutes(st, d, rec->key_prefix, rec->key_hash);
    pthread_mutex_unlock(&st->mu);
    return yes;
}

/*
 * The leader's work, outside the lock: the store lookup, then bcrypt unless a stale entry already
 * proved this exact key against the same hash. 0 with rec filled when the secret is proven.
 */
static int lead(relay_t *r, const uint8_t d[32], const char *prefix, const char *secret,
                const char *stale_hash, relay_key_record_t *rec, const char **how)
{
    struct relay_keys_state *st = r->keys;
    atomic_fetch_add(&st->lookups, 1);
    int rc = relay_store_key_get_by_prefix(r->store, prefix, rec);
    if (rc && rc != RELAY_ERR_NOT_FOUND) /* only writes (usage, probe) say it is back */
        relay_db_note(r, 0, "reading an API key failed", NULL);
    if (rc == RELAY_ERR_NOT_FOUND)
        relay_keys_guard_note_unknown(st->guard, prefix);
    if (rc == RELAY_ERR_NOT_FOUND || (rc == 0 && rec->is_deleted))
        rc = RELAY_ERR_AUTH;
    else if (rc) {
        relay_key_record_clear(rec);
        return RELAY_ERR_STORE;
    }
    if (rc == 0 && stale_hash[0] && relay_ct_streq(stale_hash, rec->key_hash)) {
        atomic_fetch_add(&st->refreshes, 1);
        *how = "cached";
        return 0;
    }
    if (rc == 0 && refuted(st, d, rec)) {
        atomic_fetch_add(&st->refuted, 1);
        rc = RELAY_ERR_AUTH;
    } else if (rc == 0) {
        int ok = bcrypt_bounded(r, secret, rec->key_hash);
        rc = ok == 1 ? 0 : ok == 0 ? RELAY_ERR_AUTH : ok;
    }
    if (rc)
        relay_key_record_clear(rec);
    return rc;
}

/*
 * Publishes the leader's result: cached (unless a change raced it) or, for a refused key, its
 * stale entry dropped; then handed to the waiters.
 */
static void flight_finish(relay_t *r, flight_t *f, uint64_t gen, int rc,
                          const relay_key_record_t *rec, const char *how)
{
    struct relay_keys_state *st = r->keys;
    pthread_mutex_lock(&st->mu);
    cache_entry_t *e = rc == RELAY_ERR_AUTH ? cache_find(st, f->digest) : NULL;
    if (e) {
        /* Only a dropped entry moves the generation: a refused key without one (every unknown
         * key) changes nothing a concurrent verification could be caching. */
        cache_remove(st, e);
        st->generation++;
    }
    if (rc == 0 && st->generation == gen)
        cache_put(st, f->digest, rec,
                  relay_mono_ms() + (r->opts.key_cache_ttl_ms > 0 ? r->opts.key_cache_ttl_ms : 0));
    if (rc == 0 && f->refs > 1 && relay_key_record_copy(&f->rec, rec) != 0)
        rc = RELAY_ERR_NOMEM;
    f->rc = rc;
    f->how = how;
    f->done = 1;
    flight_unlink(st, f);
    pthread_cond_broadcast(&f->done_cv);
    flight_put(f);
    pthread_mutex_unlock(&st->mu);
}

/*
 * A verification past the syntax check: the cache, else another thread's flight for the same
 * digest, else our own. 0 with rec filled when the secret is proven; *how says what it cost.
 */
static int verify_digest(relay_t *r, const uint8_t d[32], const char *prefix, const char *secret,
                         const char *ip, int *retry_after, relay_key_record_t *rec,
                         const char **how)
{
    struct relay_keys_state *st = r->keys;
    char stale_hash[128] = "";
    int stale = 0;
    pthread_mutex_lock(&st->mu);
    if (cache_lookup(st, d, rec, stale_hash, &stale)) {
        pthread_mutex_unlock(&st->mu);
        atomic_fetch_add(stale ? &st->stale_hits : &st->hits, 1);
        if (stale == 2)
            relay_maintenance_wake(r);
        *how = "cached";
        return 0;
    }
    /* Past the cache, a key costs the database or bcrypt: a guessing address pays nothing. */
    if ((*retry_after = relay_keys_guard_blocked(st->guard, ip)) > 0 ||
        relay_keys_guard_is_unknown(st->guard, prefix)) {
        pthread_mutex_unlock(&st->mu);
        return *retry_after > 0 ? RELAY_ERR_RATE_LIMITED : RELAY_ERR_AUTH;
    }
    flight_t *f = flight_find(st, d);
    if (f) {
        int rc = flight_wait(r, f, rec, how);
        pthread_mutex_unlock(&st->mu);
        return rc;
    }
    uint64_t gen = st->generation;
    f = flight_begin(st, d);
    pthread_mutex_unlock(&st->mu);
    if (!f)
        return RELAY_ERR_NOMEM;
    *how = "bcrypt";
    int rc = lead(r, d, prefix, secret, stale_hash, rec, how);
    flight_finish(r, f, gen, rc, rec, *how);
    return rc;
}

static double elapsed_s(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* The error a verification ends with; a wait that ran out reads like a wrong key. */
static int verify_error(struct relay_keys_state *st, int rc, int retry_after, relay_error_t *err)
{
    if (rc == RELAY_ERR_RATE_LIMITED)
        return relay_error_set(
            err, rc, "too many invalid API keys from this address; try again in %d s", retry_after);
    if (rc == RELAY_ERR_OVERLOADED)
        atomic_fetch_add(&st->timeouts, 1);
    if (rc == RELAY_ERR_AUTH || rc == RELAY_ERR_OVERLOADED)
        return reject(st, err);
    if (rc == RELAY_ERR_NOMEM)
        return relay_error_set(err, rc, "out of memory");
    return relay_error_set(err, RELAY_ERR_STORE,
                           "cannot verify the API key: the relay's database is unavailable (keys "
                           "used recently keep working; retry this one when it returns)");
}

int relay_keys_verify(relay_t *r, const char *presented_key, relay_key_record_t *rec_out,
                      relay_error_t *err)
{
    return relay_keys_verify_client(r, presented_key, NULL, NULL, rec_out, err);
}

int relay_keys_verify_client(relay_t *r, const char *presented_key, const char *client_ip,
                             int *retry_after_s, relay_key_record_t *rec_out, relay_error_t *err)
{
    struct relay_keys_state *st = r->keys;
    int retry_after = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char prefix[64];
    const char *secret, *how = "failed";
    if (rec_out)
        memset(rec_out, 0, sizeof *rec_out);
    int rc = RELAY_ERR_AUTH;
    relay_key_record_t rec = {0};
    if (r->opts.db_outage_fail_closed && relay_db_is_down(r)) {
        /* database.outage: fail_closed: no key is trusted on the cache's word alone. */
        relay_metrics_observe_key_verify(r, "failed", elapsed_s(&t0));
        return relay_error_set(err, RELAY_ERR_STORE,
                               "the relay's database is unavailable and database.outage is "
                               "fail_closed: requests are refused until it returns");
    }
    if (parse_key(r, presented_key, prefix, &secret) == 0) {
        uint8_t d[32];
        relay_sha256(presented_key, strlen(presented_key), d);
        rc = verify_digest(r, d, prefix, secret, client_ip, &retry_after, &rec, &how);
    }
    if (rc == RELAY_ERR_AUTH)
        relay_keys_guard_note_failure(st->guard, client_ip);
    if (retry_after_s)
        *retry_after_s = retry_after;
    if (rc) {
        rc = verify_error(st, rc, retry_after, err);
        how = "failed";
    } else {
        rc = check_state(&rec, rec_out, err);
        how = rc ? "failed" : how;
    }
    relay_metrics_observe_key_verify(r, how, elapsed_s(&t0));
    return rc;
}

/* ---- JSON ---- */

static json_t *time_json(int64_t t)
{
    if (!t)
        return json_null();
    char b[32];
    relay_iso8601(t, b, sizeof b);
    return json_string(b);
}

static json_t *text_json(const char *json_text)
{
    json_t *v = json_text ? json_loads(json_text, JSON_DECODE_ANY, NULL) : NULL;
    return v ? v : json_null();
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* The budget fields, each null when unset, so clients see every field always. */
static void add_cost_limits(json_t *o, const char *text)
{
    static const char *const fields[] = {"cost_limit", "daily_cost_limit", "weekly_cost_limit",
                                         "monthly_cost_limit", "model_cost_limits"};
    json_t *c = text ? json_loads(text, 0, NULL) : NULL;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        json_t *v = json_object_get(c, fields[i]);
        json_object_set_new(o, fields[i], v ? json_incref(v) : json_null());
    }
    json_decref(c);
}

char *relay_keys_to_json(const relay_key_record_t *rec, int64_t now)
{
    (void)now;
    json_t *o = json_object();
    if (!o)
        return NULL;
    int64_t remaining = rec->token_limit - rec->token_used;
    double pct = 0;
    if (rec->token_limit > 0) {
        pct = (double)rec->token_used * 100.0 / (double)rec->token_limit;
        pct = round((pct > 100 ? 100 : pct < 0 ? 0 : pct) * 100.0) / 100.0;
    }
    json_object_set_new(o, "id", json_string(rec->id));
    json_object_set_new(o, "name", str_or_null(rec->name));
    json_object_set_new(o, "description", str_or_null(rec->description));
    json_object_set_new(o, "key_prefix", json_string(rec->key_prefix));
    json_object_set_new(o, "token_limit", json_integer(rec->token_limit));
    json_object_set_new(o, "token_used", json_integer(rec->token_used));
    json_object_set_new(o, "token_remaining",
                        rec->token_limit > 0 ? json_integer(remaining > 0 ? remaining : 0)
                                             : json_null());
    json_object_set_new(o, "usage_percentage", json_real(pct));
    json_object_set_new(o, "rate_limit_tier", json_string(rec->rate_limit_tier));
    json_object_set_new(o, "request_count", json_integer(rec->request_count));
    json_object_set_new(o, "error_count", json_integer(rec->error_count));
    json_object_set_new(o, "is_active", json_boolean(rec->is_active));
    json_object_set_new(o, "created_at", time_json(rec->created_at));
    json_object_set_new(o, "updated_at", time_json(rec->updated_at));
    json_object_set_new(o, "last_used_at", time_json(rec->last_used_at));
    json_object_set_new(o, "expires_at", time_json(rec->expires_at));
    json_object_set_new(o, "allowed_ips", text_json(rec->allowed_ips));
    json_object_set_new(o, "allowed_origins", text_json(rec->allowed_origins));
    json_object_set_new(o, "allowed_models", text_json(rec->allowed_models));
    json_object_set_new(o, "metadata", text_json(rec->metadata));
    add_cost_limits(o, rec->cost_limits);
    json_object_set_new(o, "upstream_group",
                        rec->upstream_group[0] ? json_string(rec->upstream_group) : json_null());
    /* 15 significant digits print 12.34 as 12.34, not 12.339999999999999. */
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(o);
    return s;
}

/* ---- re-reading stale entries, off the request path ---- */

#define REFRESH_BATCH 64

typedef struct refresh_item {
    uint8_t digest[32];
    char prefix[64];
    char hash[128];
} refresh_item_t;

/* Under st->mu: the entries requests found stale, up to max; their flag is cleared. */
static size_t collect_stale(struct relay_keys_state *st, refresh_item_t *items, size_t max)
{
    size_t n = 0;
    int64_t now = relay_mono_ms();
    for (cache_entry_t *e = st->oldest; e && n < max; e = e->newer) {
        if (!e->refresh_wanted || e->fresh_until_ms > now || e->fresh_until_ms == INT64_MIN)
            continue;
        e->refresh_wanted = 0;
        memcpy(items[n].digest, e->digest, 32);
        relay_strlcpy(items[n].prefix, e->rec.key_prefix, sizeof items[n].prefix);
        relay_strlcpy(items[n].hash, e->rec.key_hash, sizeof items[n].hash);
        n++;
    }
    return n;
}

/* Under st->mu: applies one re-read (rc, rec) to the entry it was read for. */
static void apply_refresh(relay_t *r, const refresh_item_t *it, int rc,
                          const relay_key_record_t *rec, uint64_t gen)
{
    struct relay_keys_state *st = r->keys;
    cache_entry_t *e = cache_find(st, it->digest);
    if (!e || st->generation != gen)
        return; /* it left, or a change raced the read: the next verify reads it again */
    if (rc == 0 && !rec->is_deleted && relay_ct_streq(it->hash, rec->key_hash)) {
        relay_key_record_t copy = {0};
        if (relay_key_record_copy(&copy, rec) != 0)
            return;
        relay_key_record_clear(&e->rec);
        e->rec = copy;
        e->fresh_until_ms =
            relay_mono_ms() + (r->opts.key_cache_ttl_ms > 0 ? r->opts.key_cache_ttl_ms : 0);
        atomic_fetch_add(&st->refreshes, 1);
    } else if (rc == 0 || rc == RELAY_ERR_NOT_FOUND) {
        cache_remove(st, e); /* deleted or a new secret: the full verification decides */
        st->generation++;
    } else {
        e->refresh_wanted = 1; /* the database is away: stale it stays, tried again */
    }
}

void relay_keys_refresh_stale(relay_t *r)
{
    struct relay_keys_state *st = r->keys;
    if (!st || !r->store)
        return;
    refresh_item_t items[REFRESH_BATCH];
    pthread_mutex_lock(&st->mu);
    size_t n = collect_stale(st, items, REFRESH_BATCH);
    uint64_t gen = st->generation;
    pthread_mutex_unlock(&st->mu);
    for (size_t i = 0; i < n; i++) {
        relay_key_record_t rec = {0};
        int rc = relay_store_key_get_by_prefix(r->store, items[i].prefix, &rec);
        if (rc && rc != RELAY_ERR_NOT_FOUND)
            relay_db_note(r, 0, "re-reading an API key failed", NULL);
        pthread_mutex_lock(&st->mu);
        apply_refresh(r, &items[i], rc, &rec, gen);
        gen = st->generation;
        pthread_mutex_unlock(&st->mu);
        relay_key_record_clear(&rec);
    }
    explicit_bzero(items, sizeof items);
}
