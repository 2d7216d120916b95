/* librelay: the context every other module hangs off, its options, errors and version. */
#ifndef RELAY_RELAY_H
#define RELAY_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "relay/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define RELAY_API __attribute__((visibility("default")))
#else
#define RELAY_API
#endif

/*
 * Errors. Every call returns 0 on success or one of these (negative). Each code maps to one HTTP
 * status and one Anthropic error type (relay_err_http_status, relay_err_type), so every host
 * answers the same JSON for the same failure.
 */
typedef enum relay_err {
    RELAY_OK = 0,
    RELAY_ERR_NOMEM = -1,             /* 500 api_error */
    RELAY_ERR_INVALID = -2,           /* 400 invalid_request_error: bad argument or request */
    RELAY_ERR_NOT_FOUND = -3,         /* 404 not_found_error */
    RELAY_ERR_AUTH = -4,              /* 401 authentication_error: missing or invalid credential */
    RELAY_ERR_KEY_DISABLED = -5,      /* 401 authentication_error */
    RELAY_ERR_KEY_EXPIRED = -6,       /* 401 authentication_error */
    RELAY_ERR_PERMISSION = -7,        /* 403 permission_error: allowlists */
    RELAY_ERR_RATE_LIMITED = -8,      /* 429 rate_limit_error: request/concurrency limits */
    RELAY_ERR_QUOTA = -9,             /* 429 rate_limit_error: token quota spent (no retry) */
    RELAY_ERR_TOO_LARGE = -10,        /* 413 request_too_large */
    RELAY_ERR_UPSTREAM = -11,         /* 502 api_error: upstream unreachable or broken */
    RELAY_ERR_UPSTREAM_TIMEOUT = -12, /* 504 timeout_error */
    RELAY_ERR_STORE = -13,            /* 503 api_error: database unavailable or failed */
    RELAY_ERR_CONFIG = -14,           /* 500 api_error: configuration is wrong */
    RELAY_ERR_CONFLICT = -15,         /* 409 invalid_request_error: already exists */
    RELAY_ERR_OVERLOADED = -16,       /* 529 overloaded_error */
    RELAY_ERR_IO = -17,               /* 500 api_error: file or socket I/O */
    RELAY_ERR_INTERNAL = -18,         /* 500 api_error */
    RELAY_ERR_UNAVAILABLE = -19,  /* 503 api_error: feature not configured (e.g. no upstream key) */
    RELAY_ERR_LOGIN_LOCKED = -20, /* 429 rate_limit_error: too many failed admin logins */
    RELAY_ERR_CLIENT_GONE = -21,  /* 499: the client went away (no answer is written) */
} relay_err;

#define RELAY_ERRMSG_MAX 256

/* A call's error in words, filled by calls that take one (may be NULL). Never holds a secret. */
typedef struct relay_error {
    int code;                       /* the relay_err returned */
    char message[RELAY_ERRMSG_MAX]; /* for a human; config errors read "file:line: key.path: ..." */
} relay_error_t;

/* A static description of code ("invalid request"). Never NULL. */
RELAY_API const char *relay_strerror(int code);
/* The HTTP status a host answers for code (400, 401, ...; 499 for RELAY_ERR_CLIENT_GONE). */
RELAY_API int relay_err_http_status(int code);
/* The Anthropic error type for code ("invalid_request_error", "authentication_error", ...). */
RELAY_API const char *relay_err_type(int code);
/*
 * Anthropic's error JSON for code and message (message NULL: relay_strerror(code)):
 *   {"type":"error","error":{"type":"...","message":"..."},"detail":"..."}
 * `detail` repeats the message for clients of the original Python relay. Returns a string the
 * caller frees with relay_free_string, or NULL when out of memory.
 */
RELAY_API char *relay_error_json(int code, const char *message);
/* Frees a string returned by librelay. */
RELAY_API void relay_free_string(char *s);

/* Fills err (if not NULL) with code and a printf-style message; returns code. */
RELAY_API int relay_error_set(relay_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The version string of the library that is linked (may differ from RELAY_VERSION_STRING). */
RELAY_API const char *relay_version(void);

/* Logging: the host decides where lines go. Messages never contain keys, tokens or passwords. */
typedef enum relay_log_level {
    RELAY_LOG_DEBUG = 0,
    RELAY_LOG_INFO = 1,
    RELAY_LOG_WARN = 2,
    RELAY_LOG_ERROR = 3,
} relay_log_level;

/*
 * Called from any thread. `event` is a short machine name ("usage.flush_failed"), `msg` a
 * human sentence, `fields_json` NULL or a JSON object of extra fields ({"attempt":2}).
 */
typedef void (*relay_log_fn)(void *ud, relay_log_level level, const char *event, const char *msg,
                             const char *fields_json);

/* One rate-limit tier: requests per period (requests < 0: unlimited). */
typedef struct relay_tier_def {
    char name[64];
    int64_t requests;          /* per period; -1 unlimited */
    int64_t period_s;          /* window length in seconds (> 0) */
    int64_t tokens_per_minute; /* 0: no token rate limit */
    int64_t concurrent;        /* 0: no concurrency limit */
    /* "" none, else a JSON object of cost budgets (relay/budgets.h) every key of the tier has
       for the budget fields it does not set itself */
    char cost_limits[2048];
} relay_tier_def_t;

/* One row of the price table: USD per million tokens, matched by model-name prefix. */
typedef struct relay_price {
    char model_prefix[64];
    double input, output, cache_write_5m, cache_write_1h, cache_read;
} relay_price_t;

/*
 * One upstream of the pool beside the primary (config.yaml upstream.secondary and upstream.pool;
 * docs/upstreams.md). Fixed buffers so a list is copied with memcpy; relay_new copies the list.
 */
#define RELAY_UPSTREAM_MAX_MODELS 16
typedef struct relay_upstream_def {
    char name[64];     /* unique; [A-Za-z0-9._-] */
    char url[1024];    /* base URL, as upstream_url */
    char api_key[512]; /* the upstream's key (a secret) */
    int weight;        /* 1: share among the healthy upstreams of one priority */
    int priority;      /* 0: lower is preferred (secondary: 1) */
    char models[RELAY_UPSTREAM_MAX_MODELS][64]; /* glob patterns ("claude-sonnet-*"); none: all */
    int n_models;
    int max_concurrency; /* 0: no cap on requests in flight to it */
    double timeout_s;    /* 0: upstream_timeout_s */
    int max_retries;     /* -1: max_retries */
    char group[64];      /* "": serves every key; else only keys whose upstream_group is this */
} relay_upstream_def_t;

/*
 * Options of a relay_t. relay_options_init fills every field with its default (noted below);
 * relay_new copies what it keeps, so the strings need only live until relay_new returns.
 * The server's config.yaml maps onto these fields one to one (see docs/configuration.md).
 */
typedef struct relay_options {
    /* upstream (config.yaml upstream.primary.*) */
    const char *upstream_url;     /* "https://api.anthropic.com"; a trailing /v1 is accepted */
    const char *upstream_api_key; /* NULL: forwarding answers 503 until one is configured */
    double upstream_timeout_s;    /* 600: whole request, for a non-streaming answer */
    double connect_timeout_s;     /* 10 */
    double first_byte_timeout_s;  /* 300: until the upstream's first response byte */
    double idle_timeout_s;        /* 300: between two chunks of a stream */
    int max_retries;           /* 3: attempts after the first, before any byte reached the client */
    int retry_base_ms;         /* 500: first backoff; doubles each attempt, with jitter */
    int retry_max_ms;          /* 30000: ceiling of one backoff (and of a honoured retry-after) */
    size_t max_body_bytes;     /* 32 MiB: larger request bodies get 413 */
    int drain_timeout_ms;      /* 30000: keep reading a stream after the client left, to bill it */
    const char *upstream_name; /* "anthropic": the primary's name in the pool, logs and metrics */
    const relay_upstream_def_t *upstreams; /* NULL: the primary alone (a pool of one) */
    size_t n_upstreams;
    int session_ttl_s;  /* 3600: a session's upstream is remembered this long */
    size_t session_max; /* 100000: sessions remembered in memory at most */

    /* storage */
    const char *database_url; /* NULL: SQLite file relay.db in data_dir; "postgresql://..." */
    const char *data_dir;     /* "./data" */
    int db_pool_size; /* 0: 8 (relay-server: its worker threads); PostgreSQL connections, opened on
                         demand */
    int auto_migrate; /* 1 for SQLite, 0 for PostgreSQL unless set: -1 means "by backend" */
    const char *redis_url; /* NULL: limits in process only */
    int redis_timeout_ms;  /* 200 */

    int db_busy_timeout_ms;    /* 5000: SQLite busy timeout / PostgreSQL connect timeout */
    int db_outage_fail_closed; /* 0 (database.outage: serve_cached): while the database is away,
                                  keys verified before keep working from the key cache; 1
                                  (fail_closed): every proxied request is refused with 503 */

    /* keys (config.yaml api_keys.*) */
    const char *key_prefix;      /* "sk-proxy-" */
    int64_t default_token_limit; /* 1000000 */
    double warning_threshold;    /* 0.8 */
    int bcrypt_cost;             /* 10 */
    int key_cache_ttl_ms;        /* 5000 */
    size_t key_cache_max;        /* 10000 entries */
    int bcrypt_concurrency;      /* 0: the number of online CPUs; most key bcrypts run at once */
    int key_verify_wait_ms;      /* 10000: longest a verification waits for a bcrypt slot or for
                                    a concurrent verification of the same key */
    int key_cache_stale_ms;      /* 300000: past its TTL a cached key is still served this long
                                    while the maintenance thread re-reads it (0: never; the
                                    request re-reads it itself) */
    int key_max_invalid_per_ip;  /* 20: invalid keys from one address within 60 s before it is
                                    blocked for 60 s (keys not in the cache get 429); 0: never */
    const char *default_tier;    /* "basic" */

    /* admin (config.yaml admin.*, env ADMIN_USERNAME/ADMIN_PASSWORD/SECRET_KEY) */
    const char *admin_username; /* "admin" */
    const char
        *admin_password; /* NULL: keep the stored hash (the server generates one at first start) */
    const char *secret_key;          /* JWT signing key; required for admin login */
    int jwt_lifetime_s;              /* 1800 */
    int login_max_failures;          /* 5 failures per client IP within login_window_s ... */
    int login_window_s;              /* 300 */
    int login_cooldown_s;            /* 300: ... then 429 for this long */
    int login_max_failures_per_user; /* 20 failures for the admin username within
                                        login_window_s, from any addresses, lock the username
                                        for login_cooldown_s (0: no per-user lockout) */

    /* rate-limit tiers: the initial set, persisted on first start (config.yaml rate_limit.by_tier)
     */
    const relay_tier_def_t *tiers; /* NULL: basic 100/60 s, premium 1000/60 s, unlimited */
    size_t n_tiers;

    /* accounting */
    int64_t reservation_ceiling; /* 16384: most output tokens reserved per request before it runs */
    double weight_input, weight_output, weight_cache_creation, weight_cache_read; /* 1 each */
    const relay_price_t *prices; /* NULL: built-in Anthropic list prices */
    size_t n_prices;
    const char *price_default; /* NULL: the entry with the highest output price; else the
                                  model_prefix of the entry unknown models are billed at */

    /* cost budgets (config.yaml budgets.*, docs/budgets.md) */
    const char *budget_timezone;  /* "UTC": IANA zone (system tz database) periods reset in */
    int budget_week_start_day;    /* 1: Monday (0 Sunday .. 6 Saturday) */
    int budget_week_start_minute; /* 0: minutes after local midnight the week starts */
    size_t usage_queue_max;       /* 100000 rows held while the database is away */
    int usage_batch_max;          /* 500 rows per transaction */
    int usage_flush_ms;           /* 200: longest a row waits before it is written */
    int usage_spool;              /* 1: rows appended to data_dir/usage.spool until stored */
    size_t usage_spool_max_bytes; /* 64 MiB: the spool's bound (past it rows are memory-only) */
    int log_retention_days;       /* 0: keep usage_logs forever */
    const char *tokenizer_file;   /* NULL: heuristic counter; else a tiktoken-format vocabulary */

    /* logging */
    relay_log_fn log_fn; /* NULL: silent */
    void *log_ud;
    relay_log_level log_level; /* RELAY_LOG_INFO */
} relay_options_t;

/* Fills opts with the defaults above. */
RELAY_API void relay_options_init(relay_options_t *opts);

/*
 * The context: store, key cache, limits, usage writer, metrics and their threads.
 * Thread safety: one relay_t is shared by all threads of a host; every relay_* call taking a
 * relay_t may run concurrently with any other, except relay_free, which must run alone after all
 * other calls returned. Two relay_t in one process share nothing.
 */
typedef struct relay relay_t;

/*
 * Opens the store (migrating it when auto_migrate allows), loads tiers, starts the background
 * threads. On failure *out is NULL and err says why.
 */
RELAY_API int relay_new(relay_t **out, const relay_options_t *opts, relay_error_t *err);
/* Stops the threads after a final flush of pending usage rows, closes the store, frees r. */
RELAY_API void relay_free(relay_t *r);

/* 0 when the database answers a probe transaction now, RELAY_ERR_STORE otherwise; the answer
 * also updates relay_database_state. It may wait up to db_busy_timeout_ms. */
RELAY_API int relay_health_database(relay_t *r);
/*
 * The database as this relay last saw it, without a query: 0 when the last operation on it
 * succeeded; RELAY_ERR_STORE while it is away, with reason (cap bytes, may be NULL) saying for
 * how long and what failed. Updated by every request that needed it, the usage writer, the
 * maintenance thread (once a second) and relay_health_database.
 */
RELAY_API int relay_database_state(relay_t *r, char *reason, size_t cap);

/* Logs through the host's callback (librelay's own modules and hosts alike). */
RELAY_API void relay_log(relay_t *r, relay_log_level level, const char *event,
                         const char *fields_json, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#ifdef __cplusplus
}
#endif
#endif
