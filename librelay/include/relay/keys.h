/* keys: proxy API keys — creation, lookup, update, rotation and O(1) cached verification. */
#ifndef RELAY_KEYS_H
#define RELAY_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A key reads "<prefix><public id>_<secret>" (prefix: relay_options_t.key_prefix, "sk-proxy-").
 * The public id is 12 random alphanumeric characters; the secret is 32 bytes (256 bits) from
 * getrandom, base64url (43 characters). The store keeps only key_prefix ("<prefix><public id>",
 * non-secret, unique, used for lookup) and a bcrypt ("$2b$", libxcrypt, cost
 * relay_options_t.bcrypt_cost) hash of the secret. The full key leaves librelay only through
 * relay_keys_create and relay_keys_rotate.
 *
 * Verification costs one bcrypt the first time a key is seen; afterwards a bounded in-memory
 * cache (key_cache_max entries, key_cache_ttl_ms) keyed by SHA-256 of the presented key answers.
 * Concurrent verifications of the same presented key (same SHA-256) share one store lookup and
 * one bcrypt: the first runs them, the others wait for its result (single flight). At most
 * relay_options_t.bcrypt_concurrency bcrypts (0: one per online CPU) run at once in a relay_t;
 * further verifications needing one queue in arrival order. Either wait lasts at most
 * key_verify_wait_ms, then the verification is refused like a wrong key. A wrong secret for a
 * public id whose right secret the cache holds (against the same stored hash) is refused without
 * a bcrypt.
 * Changes made through this API evict the key from this relay_t's cache at once; other processes
 * sharing the database see them when the entry's TTL ends and the record is re-read (which costs
 * no bcrypt while the stored hash is unchanged).
 *
 * Thread safety: every call may run concurrently with any other on the same relay_t. No lock is
 * held across store I/O or bcrypt.
 * Ownership: records filled by these calls are the caller's; release them with
 * relay_key_record_clear (arrays with relay_key_records_free). Strings returned are freed with
 * relay_free_string.
 */

/* Room for a full key including the NUL (prefix up to 50 characters). */
#define RELAY_KEY_MAX             128
#define RELAY_KEY_PUBLIC_ID_LEN   12
#define RELAY_KEY_NAME_MAX        255
#define RELAY_KEY_DESCRIPTION_MAX 4096
/* Largest accepted allowed_* / metadata JSON text. */
#define RELAY_KEY_JSON_MAX 65536

/* What relay_keys_create needs. Start from relay_key_params_init. */
typedef struct relay_key_params {
    const char *name;        /* required, 1..255 characters */
    const char *description; /* NULL: none */
    int64_t token_limit;     /* < 0: relay_options_t.default_token_limit; 0: unlimited */
    const char *tier;        /* NULL: relay_options_t.default_tier; must exist (relay/tiers.h) */
    int64_t expires_at;      /* Unix seconds; 0: never */
    const char *allowed_ips; /* JSON array of IP addresses / CIDR ranges, or NULL */
    const char *allowed_origins; /* JSON array of host names ("*.example.com" allowed), or NULL */
    const char *allowed_models;  /* JSON array of model names, or NULL */
    const char *metadata;        /* JSON object, or NULL */
    const char *cost_limits;     /* JSON object of cost budgets (relay/budgets.h), or NULL */
    const char *upstream_group;  /* NULL or "": the upstreams without a group (relay/upstreams.h) */
} relay_key_params_t;

/* Zeroes p and sets token_limit = -1 (the configured default). */
RELAY_API void relay_key_params_init(relay_key_params_t *p);

/*
 * Creates a key. key_out (cap >= RELAY_KEY_MAX) receives the full key — the only time it exists
 * outside the caller's hands; rec_out (may be NULL) the stored record. RELAY_ERR_INVALID names the
 * offending field in err ("token_limit: ...", "rate_limit_tier: unknown tier 'x'").
 */
RELAY_API int relay_keys_create(relay_t *r, const relay_key_params_t *p, char *key_out, size_t cap,
                                relay_key_record_t *rec_out, relay_error_t *err);

/* Fetches a key by id. RELAY_ERR_NOT_FOUND for an unknown, malformed or deleted id. */
RELAY_API int relay_keys_get(relay_t *r, const char *id, relay_key_record_t *rec_out,
                             relay_error_t *err);

/*
 * Lists keys not deleted, newest first. limit 1..1000, skip >= 0. *out is freed with
 * relay_key_records_free; *total counts every match, not just this page.
 */
RELAY_API int relay_keys_list(relay_t *r, relay_key_filter filter, int64_t skip, int64_t limit,
                              relay_key_record_t **out, size_t *n, int64_t *total,
                              relay_error_t *err);

/* Which fields of relay_key_update_t to apply. */
enum {
    RELAY_KEY_SET_NAME = 1 << 0,
    RELAY_KEY_SET_DESCRIPTION = 1 << 1, /* NULL clears */
    RELAY_KEY_SET_TOKEN_LIMIT = 1 << 2,
    RELAY_KEY_SET_TIER = 1 << 3,
    RELAY_KEY_SET_EXPIRES_AT = 1 << 4,  /* 0 clears */
    RELAY_KEY_SET_ALLOWED_IPS = 1 << 5, /* NULL clears */
    RELAY_KEY_SET_ALLOWED_ORIGINS = 1 << 6,
    RELAY_KEY_SET_ALLOWED_MODELS = 1 << 7,
    RELAY_KEY_SET_METADATA = 1 << 8,
    RELAY_KEY_SET_IS_ACTIVE = 1 << 9,
    RELAY_KEY_SET_COST_LIMITS = 1 << 10,    /* merged: see relay_budgets_merge (null removes) */
    RELAY_KEY_SET_UPSTREAM_GROUP = 1 << 11, /* NULL or "" clears */
};

/* A partial update: only the fields whose RELAY_KEY_SET_* bit is in `set` are applied. */
typedef struct relay_key_update {
    unsigned set;
    const char *name;
    const char *description;
    int64_t token_limit; /* >= 0 */
    const char *tier;
    int64_t expires_at;
    const char *allowed_ips, *allowed_origins, *allowed_models, *metadata;
    int is_active;
    const char *cost_limits; /* a budgets patch object: the fields it holds replace the key's */
    const char *upstream_group;
} relay_key_update_t;

/* Applies u to the key id (validated like create); rec_out (may be NULL) gets the new record. */
RELAY_API int relay_keys_update(relay_t *r, const char *id, const relay_key_update_t *u,
                                relay_key_record_t *rec_out, relay_error_t *err);
RELAY_API int relay_keys_disable(relay_t *r, const char *id, relay_error_t *err);
RELAY_API int relay_keys_enable(relay_t *r, const char *id, relay_error_t *err);
/* Soft delete (hard == 0: the row stays, marked deleted) or hard (the row and its usage rows). */
RELAY_API int relay_keys_delete(relay_t *r, const char *id, int hard, relay_error_t *err);
/* Replaces public id and secret; the old key stops working at once. Outputs as for create. */
RELAY_API int relay_keys_rotate(relay_t *r, const char *id, char *key_out, size_t cap,
                                relay_key_record_t *rec_out, relay_error_t *err);

/*
 * Verifies a presented key. 0 and rec_out (may be NULL) filled for a valid, active, unexpired key;
 * RELAY_ERR_KEY_DISABLED "API key is disabled"; RELAY_ERR_KEY_EXPIRED "API key has expired";
 * RELAY_ERR_AUTH with one message for malformed, unknown, deleted or wrong keys (nothing tells
 * them apart), and for a verification that waited key_verify_wait_ms for a bcrypt slot or for a
 * concurrent verification of the same key; RELAY_ERR_STORE when the database cannot answer for a
 * key not in the cache. Counters (token_used, ...) in rec_out may be up to the cache TTL old.
 * May block: up to key_verify_wait_ms waiting, plus the store lookup and one bcrypt.
 */
RELAY_API int relay_keys_verify(relay_t *r, const char *presented_key, relay_key_record_t *rec_out,
                                relay_error_t *err);

/*
 * relay_keys_verify for a request from client_ip (NULL: no address), with guessing made cheap
 * and slow: a public id the store did not know is refused from memory for 60 s (no database
 * lookup, no bcrypt), and key_max_invalid_per_ip invalid keys from one address within 60 s
 * block it for 60 s:
 * RELAY_ERR_RATE_LIMITED with *retry_after_s (may be NULL) set, for every key not already in
 * the verified cache. Same threading and blocking as relay_keys_verify.
 */
RELAY_API int relay_keys_verify_client(relay_t *r, const char *presented_key, const char *client_ip,
                                       int *retry_after_s, relay_key_record_t *rec_out,
                                       relay_error_t *err);

/*
 * Makes every cache entry of key id in this relay_t stale, so the next verify re-reads the record
 * (other modules that change a key in the store call it).
 */
RELAY_API void relay_keys_cache_evict(relay_t *r, const char *id);

/*
 * Counters for tests and metrics: monotonic since relay_new, except the ones marked "now".
 * A snapshot; the fields are read one by one, so under load they need not add up exactly.
 */
typedef struct relay_keys_stats {
    uint64_t bcrypt_calls;        /* bcrypt runs during verification */
    uint64_t cache_hits;          /* answered from a fresh cache entry */
    uint64_t cache_refresh;       /* stale entry re-read from the store, same hash: no bcrypt */
    uint64_t store_lookups;       /* lookups by key_prefix on the request path (the maintenance
                                     thread's re-reads of stale entries are cache_refresh) */
    uint64_t rejected;            /* RELAY_ERR_AUTH answers */
    size_t cache_entries;         /* now */
    uint64_t verify_shared;       /* answered by a concurrent verification of the same key */
    uint64_t verify_timeouts;     /* gave up after key_verify_wait_ms (answered RELAY_ERR_AUTH) */
    uint64_t refuted_by_cache;    /* wrong secrets refused without bcrypt: the cache holds another
                                     secret proven against the key's current hash */
    uint64_t bcrypt_max_parallel; /* most verification bcrypts ever running at the same instant */
    uint64_t bcrypt_running;      /* now: verification bcrypts running */
    size_t verify_waiting;     /* now: waiting for a bcrypt slot or for a concurrent verification */
    int bcrypt_slots;          /* the bound in force (bcrypt_concurrency, or the CPUs for 0) */
    uint64_t cache_stale_hits; /* answered from an entry past its TTL while it is re-read */
    uint64_t unknown_id_hits;  /* refused from memory: the public id was unknown within 60 s */
    uint64_t throttled;        /* refused RELAY_ERR_RATE_LIMITED: the client address is blocked */
    uint64_t throttle_blocks;  /* addresses blocked for guessing keys */
} relay_keys_stats_t;

/* Fills out. Thread-safe; takes the cache lock briefly. */
RELAY_API void relay_keys_stats(relay_t *r, relay_keys_stats_t *out);

/*
 * The JSON object of a key as the admin API shows it (the original relay's shape): id, name,
 * description, key_prefix, token_limit, token_used, token_remaining (null when unlimited),
 * usage_percentage (0..100, 2 decimals), rate_limit_tier, request_count, error_count, is_active,
 * created_at, updated_at, last_used_at, expires_at (ISO 8601 UTC or null), allowed_ips,
 * allowed_origins, allowed_models (arrays or null), metadata (object or null), and the budget
 * fields cost_limit, daily_cost_limit, weekly_cost_limit, monthly_cost_limit (USD or null) and
 * model_cost_limits (list, or null).
 * `now` is unused today but fixes the instant for callers adding time-dependent fields.
 * Returns a string to free with relay_free_string, or NULL when out of memory.
 */
RELAY_API char *relay_keys_to_json(const relay_key_record_t *rec, int64_t now);

/*
 * Validates one allowed_* / metadata JSON text as create and update do. field names the field in
 * err ("allowed_ips"). Exposed so hosts (the CLI) can check input before creating a key.
 */
RELAY_API int relay_keys_validate_json_field(const char *field, const char *json,
                                             relay_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
