/* store: the persistence interface (keys, usage, tiers, audit, admin credential) and its backends.
 */
#ifndef RELAY_STORE_H
#define RELAY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A store is SQLite (embedded default) or PostgreSQL, chosen by URL. All timestamps are Unix
 * seconds (UTC); 0 stands for SQL NULL. All SQL is parameterised.
 * Thread safety: a relay_store_t may be used from any number of threads at once (SQLite: WAL and a
 * connection per call under a pool; PostgreSQL: a pool of connections that reconnects after a
 * server restart). Records returned are owned by the caller and freed with the matching _free.
 */
typedef struct relay_store relay_store_t;

typedef struct relay_store_options {
    int pool_size;       /* connections (PostgreSQL) / SQLite handles; default 8 */
    int busy_timeout_ms; /* SQLite busy timeout / PostgreSQL connect timeout; default 5000 */
} relay_store_options_t;

/*
 * url: "postgresql://..." or "postgres://..." → PostgreSQL; "sqlite:///abs/path.db",
 * "sqlite://rel/path.db" or a plain file path → SQLite (the file is created).
 * opts may be NULL (defaults). Does not migrate.
 */
RELAY_API int relay_store_open(relay_store_t **out, const char *url,
                               const relay_store_options_t *opts, relay_error_t *err);
/*
 * Opens the store relay_options_t names: database_url, or the SQLite file relay.db in data_dir
 * (created with mode 0700 when missing). Does not migrate. For hosts' maintenance commands.
 */
RELAY_API int relay_store_open_configured(relay_store_t **out, const relay_options_t *opts,
                                          relay_error_t *err);
RELAY_API void relay_store_free(relay_store_t *s);
/* "sqlite" or "postgresql" */
RELAY_API const char *relay_store_backend(const relay_store_t *s);
/* 0 when the database answers a trivial query now, RELAY_ERR_STORE otherwise. */
RELAY_API int relay_store_ping(relay_store_t *s);
/* The same query inside a write transaction: also fails while another process holds SQLite's
 * write lock past the busy timeout, or PostgreSQL refuses writes. err says why. */
RELAY_API int relay_store_probe_write(relay_store_t *s, relay_error_t *err);

/* ---- migrations (SQL from migrations/<backend>/, compiled into the library) ---- */
typedef struct relay_migration_info {
    int version;
    char name[64];
    int applied;
    int64_t applied_at;
} relay_migration_info_t;

/* Applies every pending migration, in order, each in its own transaction. *applied may be NULL. */
RELAY_API int relay_store_migrate_up(relay_store_t *s, int *applied, relay_error_t *err);
/* Rolls back the newest `steps` applied migrations (steps <= 0 means 1). */
RELAY_API int relay_store_migrate_down(relay_store_t *s, int steps, int *rolled_back,
                                       relay_error_t *err);
/* Lists every known migration for this backend with whether it is applied. Free with free(). */
RELAY_API int relay_store_migrate_status(relay_store_t *s, relay_migration_info_t **out, size_t *n,
                                         relay_error_t *err);
/* 0 when every known migration is applied; RELAY_ERR_CONFIG with a message when some are not. */
RELAY_API int relay_store_check_schema(relay_store_t *s, relay_error_t *err);

/* ---- api_keys ---- */
typedef struct relay_key_record {
    char id[37];         /* UUID, lower-case, 8-4-4-4-12 */
    char *name;          /* owned */
    char *description;   /* owned, may be NULL */
    char key_prefix[64]; /* "sk-proxy-<public id>": unique, non-secret, used for lookup */
    char key_hash[128];  /* "$2b$..." */
    int64_t token_limit; /* 0: unlimited */
    int64_t token_used;
    int64_t request_count;
    int64_t error_count;
    char rate_limit_tier[64];
    int is_active;
    int is_deleted;
    char *allowed_ips;     /* owned JSON array text, or NULL */
    char *allowed_origins; /* owned JSON array text, or NULL */
    char *allowed_models;  /* owned JSON array text, or NULL */
    char *metadata;        /* owned JSON object text, or NULL */
    int64_t expires_at, created_at, updated_at, last_used_at, deleted_at;
    char *cost_limits; /* owned JSON object text of the key's cost budgets (relay/budgets.h) */
    char upstream_group[64]; /* "": the upstreams without a group (relay/upstreams.h) */
} relay_key_record_t;

/* Frees the owned strings of rec (not rec itself) and zeroes it. */
RELAY_API void relay_key_record_clear(relay_key_record_t *rec);
/* Deep copy of src into dst (dst is overwritten, not cleared). */
RELAY_API int relay_key_record_copy(relay_key_record_t *dst, const relay_key_record_t *src);

/* Inserts rec (all fields as given). RELAY_ERR_CONFLICT when id or key_prefix exists. */
RELAY_API int relay_store_key_insert(relay_store_t *s, const relay_key_record_t *rec);
/* Fetches by id (deleted rows included; check is_deleted). RELAY_ERR_NOT_FOUND when absent. */
RELAY_API int relay_store_key_get(relay_store_t *s, const char *id, relay_key_record_t *out);
/* Fetches by key_prefix. RELAY_ERR_NOT_FOUND when absent. */
RELAY_API int relay_store_key_get_by_prefix(relay_store_t *s, const char *key_prefix,
                                            relay_key_record_t *out);

typedef enum relay_key_filter {
    RELAY_KEYS_ALL = 0,      /* every key not deleted */
    RELAY_KEYS_ACTIVE = 1,   /* is_active and not expired at `now` */
    RELAY_KEYS_DISABLED = 2, /* not is_active */
    RELAY_KEYS_EXPIRED = 3,  /* expires_at set and <= now */
} relay_key_filter;

/* Lists keys not deleted, newest first (created_at, then id), paged. Free with
 * relay_key_records_free. */
RELAY_API int relay_store_key_list(relay_store_t *s, relay_key_filter filter, int64_t now,
                                   int64_t skip, int64_t limit, relay_key_record_t **out, size_t *n,
                                   int64_t *total);
RELAY_API void relay_key_records_free(relay_key_record_t *recs, size_t n);
/*
 * Writes every mutable field of rec to the row with rec->id: name, description, key_prefix,
 * key_hash, token_limit, rate_limit_tier, is_active, is_deleted, allowed_*, metadata, expires_at,
 * updated_at, deleted_at, cost_limits. (Counters are the usage writer's: see
 * relay_store_usage_write.) RELAY_ERR_NOT_FOUND when no such row.
 */
RELAY_API int relay_store_key_update(relay_store_t *s, const relay_key_record_t *rec);
/* Removes the row and its usage_logs and usage_daily rows. */
RELAY_API int relay_store_key_delete_hard(relay_store_t *s, const char *id);

/* ---- usage ---- */
typedef struct relay_usage_row {
    int64_t id; /* assigned by the store on insert; filled on read */
    char api_key_id[37];
    char request_id[128]; /* the upstream's request-id */
    char request_method[16];
    char request_path[512];
    int64_t request_size, response_size;
    int response_status;
    int64_t response_time_ms, time_to_first_byte_ms;
    int64_t prompt_tokens;         /* input_tokens */
    int64_t completion_tokens;     /* output_tokens */
    int64_t cache_creation_tokens; /* total written to cache */
    int64_t cache_creation_5m_tokens, cache_creation_1h_tokens;
    int64_t cache_read_tokens;
    int64_t total_tokens;  /* all four kinds */
    int64_t billed_tokens; /* weighted sum that counts against the quota (not a column) */
    double total_cost;     /* USD */
    char model[128];
    int is_error, stream, estimated, attempts;
    char error_message[256];
    char error_code[64];
    char client_ip[64];
    char user_agent[256];
    int64_t created_at;
    /* 32 hex digits, unique per request (relay_usage_record gives one when empty), stored in the
     * unique column usage_logs.row_uid: a row written twice (a spool replay after a crash) is
     * refused with RELAY_ERR_CONFLICT, and its counters are not added twice. "" = none. */
    char row_uid[33];
    char upstream[64]; /* the pool upstream that served it ("" for a refusal) */
} relay_usage_row_t;

/*
 * Writes rows in one transaction: inserts each into usage_logs; adds billed_tokens to token_used,
 * 1 to request_count, is_error to error_count and sets last_used_at (= max created_at) on each
 * key; upserts usage_daily (day = UTC date of created_at). All or nothing.
 * Rows whose key no longer exists are still logged (api_key_id kept) but touch no counters.
 * RELAY_ERR_CONFLICT (nothing written) when a row's row_uid is stored already.
 */
RELAY_API int relay_store_usage_write(relay_store_t *s, const relay_usage_row_t *rows, size_t n);
/* The same, with the driver's message in err (e.g. "sqlite: database or disk is full"). */
RELAY_API int relay_store_usage_write_err(relay_store_t *s, const relay_usage_row_t *rows, size_t n,
                                          relay_error_t *err);

typedef struct relay_usage_query {
    const char *api_key_id; /* NULL: all keys */
    int64_t start, end;     /* created_at in [start, end); 0 = unbounded */
    const char *model;      /* NULL or exact model */
    int status;             /* 0 or exact response_status */
    int64_t skip, limit;
    int is_error; /* -1 or 0: any row (0 from a zeroed struct); 1 only errors */
} relay_usage_query_t;

/* Rows matching q, newest first (created_at desc, id desc). Free with free(). */
RELAY_API int relay_store_usage_logs(relay_store_t *s, const relay_usage_query_t *q,
                                     relay_usage_row_t **out, size_t *n, int64_t *total);

typedef struct relay_usage_daily {
    char day[11]; /* YYYY-MM-DD */
    int64_t requests, tokens, prompt_tokens, completion_tokens, cache_creation_tokens,
        cache_read_tokens;
    int64_t errors;
    double cost;
} relay_usage_daily_t;

/* usage_daily rows of one key (NULL: summed over all keys) with day in [from_day, to_day], newest
 * first. */
RELAY_API int relay_store_usage_daily(relay_store_t *s, const char *api_key_id,
                                      const char *from_day, const char *to_day,
                                      relay_usage_daily_t **out, size_t *n);
/* Spend of one model: the sum of usage_logs.total_cost. */
typedef struct relay_model_cost {
    char model[128];
    double cost;
} relay_model_cost_t;

/*
 * usage_logs.total_cost of key api_key_id with created_at in [since, until) (until 0: no end),
 * summed per model. Free *out with free().
 */
RELAY_API int relay_store_usage_cost_by_model(relay_store_t *s, const char *api_key_id,
                                              int64_t since, int64_t until,
                                              relay_model_cost_t **out, size_t *n);
/* Deletes at most `batch` usage_logs rows with created_at < before; *deleted says how many. */
RELAY_API int relay_store_usage_prune(relay_store_t *s, int64_t before, int batch,
                                      int64_t *deleted);

/* ---- rate_limit_tiers ---- */
RELAY_API int relay_store_tier_list(relay_store_t *s, relay_tier_def_t **out,
                                    size_t *n); /* free() */
RELAY_API int relay_store_tier_upsert(relay_store_t *s, const relay_tier_def_t *tier);
/* RELAY_ERR_NOT_FOUND when absent. */
RELAY_API int relay_store_tier_delete(relay_store_t *s, const char *name);

/* ---- audit_log ---- */
typedef struct relay_audit_entry {
    int64_t id;
    char action[64];  /* "api_key.create", "tier.update", ... */
    char target[128]; /* key id, tier name, ... */
    char actor[64];   /* admin username */
    char client_ip[64];
    char *details; /* owned JSON object text or NULL */
    int64_t created_at;
} relay_audit_entry_t;

RELAY_API int relay_store_audit_insert(relay_store_t *s, const relay_audit_entry_t *e);
/* Newest first, paged. Free with relay_audit_entries_free. */
RELAY_API int relay_store_audit_list(relay_store_t *s, int64_t skip, int64_t limit,
                                     relay_audit_entry_t **out, size_t *n, int64_t *total);
RELAY_API void relay_audit_entries_free(relay_audit_entry_t *e, size_t n);

/* ---- upstreams (those made through the admin REST; relay/upstreams.h) ---- */
typedef struct relay_upstream_record {
    char id[37];
    relay_upstream_def_t def;  /* def.api_key is not stored: api_key_sealed holds it */
    char api_key_sealed[1400]; /* "v1:" base64(nonce | ciphertext | tag), see upstreams_admin.c */
    char key_last4[8];
    int is_disabled;
    int64_t created_at, updated_at;
} relay_upstream_record_t;

/* Every stored upstream, by name. Free *out with free(). */
RELAY_API int relay_store_upstream_list(relay_store_t *s, relay_upstream_record_t **out, size_t *n);
/* RELAY_ERR_CONFLICT when the name (or id) exists. */
RELAY_API int relay_store_upstream_insert(relay_store_t *s, const relay_upstream_record_t *rec);
/* Writes every field of rec to the row with rec->id. RELAY_ERR_NOT_FOUND when absent. */
RELAY_API int relay_store_upstream_update(relay_store_t *s, const relay_upstream_record_t *rec);
RELAY_API int relay_store_upstream_delete(relay_store_t *s, const char *id);

/* ---- settings (admin credential hash, generated secrets, ...) ---- */
/* Copies the value of name into buf (NUL-terminated). RELAY_ERR_NOT_FOUND when unset. */
RELAY_API int relay_store_setting_get(relay_store_t *s, const char *name, char *buf, size_t cap);
RELAY_API int relay_store_setting_set(relay_store_t *s, const char *name, const char *value);

#ifdef __cplusplus
}
#endif
#endif
