/* relay: the context (options, lifecycle), the error model and logging. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "modules.h"
#include "util.h"

/* ---- errors: one table, so every host answers the same status, type and words ---- */
typedef struct err_info {
    int code;
    int status;
    const char *type;
    const char *text;
} err_info_t;

static const err_info_t ERRS[] = {
    {RELAY_OK, 200, "", "success"},
    {RELAY_ERR_NOMEM, 500, "api_error", "out of memory"},
    {RELAY_ERR_INVALID, 400, "invalid_request_error", "invalid request"},
    {RELAY_ERR_NOT_FOUND, 404, "not_found_error", "not found"},
    {RELAY_ERR_AUTH, 401, "authentication_error", "invalid x-api-key"},
    {RELAY_ERR_KEY_DISABLED, 401, "authentication_error", "this API key is disabled"},
    {RELAY_ERR_KEY_EXPIRED, 401, "authentication_error", "this API key has expired"},
    {RELAY_ERR_PERMISSION, 403, "permission_error", "this API key is not allowed to do that"},
    {RELAY_ERR_RATE_LIMITED, 429, "rate_limit_error", "rate limit exceeded"},
    {RELAY_ERR_QUOTA, 429, "rate_limit_error", "token quota exhausted for this API key"},
    {RELAY_ERR_TOO_LARGE, 413, "request_too_large", "request exceeds the maximum allowed size"},
    {RELAY_ERR_UPSTREAM, 502, "api_error", "upstream request failed"},
    {RELAY_ERR_UPSTREAM_TIMEOUT, 504, "timeout_error", "upstream timed out"},
    {RELAY_ERR_STORE, 503, "api_error", "database unavailable"},
    {RELAY_ERR_CONFIG, 500, "api_error", "configuration error"},
    {RELAY_ERR_CONFLICT, 409, "invalid_request_error", "already exists"},
    {RELAY_ERR_OVERLOADED, 529, "overloaded_error", "overloaded"},
    {RELAY_ERR_IO, 500, "api_error", "I/O error"},
    {RELAY_ERR_INTERNAL, 500, "api_error", "internal error"},
    {RELAY_ERR_UNAVAILABLE, 503, "api_error", "service unavailable"},
    {RELAY_ERR_LOGIN_LOCKED, 429, "rate_limit_error",
     "too many failed login attempts; try again later"},
    {RELAY_ERR_CLIENT_GONE, 499, "api_error", "client closed the connection"},
};

static const err_info_t *err_find(int code)
{
    for (size_t i = 0; i < sizeof ERRS / sizeof ERRS[0]; i++)
        if (ERRS[i].code == code)
            return &ERRS[i];
    return &ERRS[RELAY_OK - RELAY_ERR_INTERNAL];
}

const char *relay_strerror(int code)
{
    return err_find(code)->text;
}

int relay_err_http_status(int code)
{
    return err_find(code)->status;
}

const char *relay_err_type(int code)
{
    return err_find(code)->type;
}

char *relay_error_json(int code, const char *message)
{
    const char *msg = message && *message ? message : relay_strerror(code);
    json_t *o = json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type",
                          relay_err_type(code), "message", msg, "detail", msg);
    if (!o)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

void relay_free_string(char *s)
{
    free(s);
}

int relay_error_set(relay_error_t *err, int code, const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *relay_version(void)
{
    return RELAY_VERSION_STRING;
}

/* ---- options ---- */
void relay_options_init(relay_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->upstream_url = "https://api.anthropic.com";
    o->upstream_timeout_s = 600;
    o->connect_timeout_s = 10;
    o->first_byte_timeout_s = 300;
    o->idle_timeout_s = 300;
    o->max_retries = 3;
    o->retry_base_ms = 500;
    o->retry_max_ms = 30000;
    o->max_body_bytes = 32u * 1024 * 1024;
    o->drain_timeout_ms = 30000;
    o->session_ttl_s = 3600;
    o->session_max = 100000;
    o->data_dir = "./data";
    o->db_pool_size = 0;
    o->auto_migrate = -1;
    o->db_busy_timeout_ms = 5000;
    o->redis_timeout_ms = 200;
    o->key_prefix = "sk-proxy-";
    o->default_token_limit = 1000000;
    o->warning_threshold = 0.8;
    o->bcrypt_cost = 10;
    o->key_cache_ttl_ms = 5000;
    o->key_cache_max = 10000;
    o->bcrypt_concurrency = 0;
    o->key_verify_wait_ms = 10000;
    o->key_max_invalid_per_ip = 20;
    o->key_cache_stale_ms = 300000;
    o->default_tier = "basic";
    o->admin_username = "admin";
    o->jwt_lifetime_s = 1800;
    o->login_max_failures = 5;
    o->login_window_s = 300;
    o->login_cooldown_s = 300;
    o->login_max_failures_per_user = 20;
    o->reservation_ceiling = 16384;
    o->weight_input = o->weight_output = o->weight_cache_creation = o->weight_cache_read = 1.0;
    o->usage_queue_max = 100000;
    o->usage_batch_max = 500;
    o->usage_flush_ms = 200;
    o->usage_spool = 1;
    o->usage_spool_max_bytes = 64u << 20;
    o->budget_timezone = "UTC";
    o->budget_week_start_day = 1;
    o->log_level = RELAY_LOG_INFO;
}

static const relay_tier_def_t DEFAULT_TIERS[] = {
    {"basic", 100, 60, 0, 0, ""},
    {"premium", 1000, 60, 0, 0, ""},
    {"unlimited", -1, 60, 0, 0, ""},
};

/* Copies every string option so the host's need only live until relay_new returns. */
static int copy_options(relay_t *r, const relay_options_t *in)
{
    r->opts = *in;
    const char **fields[] = {
        &r->opts.upstream_url,    &r->opts.upstream_api_key, &r->opts.database_url,
        &r->opts.data_dir,        &r->opts.redis_url,        &r->opts.key_prefix,
        &r->opts.default_tier,    &r->opts.admin_username,   &r->opts.admin_password,
        &r->opts.secret_key,      &r->opts.tokenizer_file,   &r->opts.price_default,
        &r->opts.budget_timezone, &r->opts.upstream_name};
    _Static_assert(sizeof fields / sizeof fields[0] <=
                       sizeof r->own_strings / sizeof r->own_strings[0],
                   "own_strings too small");
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (!*fields[i])
            continue;
        r->own_strings[i] = strdup(*fields[i]);
        if (!r->own_strings[i])
            return RELAY_ERR_NOMEM;
        *fields[i] = r->own_strings[i];
    }
    const relay_tier_def_t *tiers = in->tiers ? in->tiers : DEFAULT_TIERS;
    size_t nt = in->tiers ? in->n_tiers : sizeof DEFAULT_TIERS / sizeof DEFAULT_TIERS[0];
    r->own_tiers = calloc(nt ? nt : 1, sizeof *tiers);
    if (!r->own_tiers)
        return RELAY_ERR_NOMEM;
    memcpy(r->own_tiers, tiers, nt * sizeof *tiers);
    r->opts.tiers = r->own_tiers;
    r->opts.n_tiers = nt;
    if (in->prices && in->n_prices) {
        r->own_prices = calloc(in->n_prices, sizeof *in->prices);
        if (!r->own_prices)
            return RELAY_ERR_NOMEM;
        memcpy(r->own_prices, in->prices, in->n_prices * sizeof *in->prices);
        r->opts.prices = r->own_prices;
    }
    if (in->upstreams && in->n_upstreams) {
        r->own_upstreams = calloc(in->n_upstreams, sizeof *in->upstreams);
        if (!r->own_upstreams)
            return RELAY_ERR_NOMEM;
        memcpy(r->own_upstreams, in->upstreams, in->n_upstreams * sizeof *in->upstreams);
        r->opts.upstreams = r->own_upstreams;
    }
    return 0;
}

int relay_store_open_configured(relay_store_t **out, const relay_options_t *opts,
                                relay_error_t *err)
{
    relay_store_options_t so = {.pool_size = opts->db_pool_size,
                                .busy_timeout_ms = opts->db_busy_timeout_ms};
    char path[4096];
    const char *url = opts->database_url;
    *out = NULL;
    if (!url || !*url) {
        const char *dir = opts->data_dir && *opts->data_dir ? opts->data_dir : "./data";
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return relay_error_set(err, RELAY_ERR_IO, "cannot create data directory %s: %s", dir,
                                   strerror(errno));
        if ((size_t)snprintf(path, sizeof path, "%s/relay.db", dir) >= sizeof path)
            return relay_error_set(err, RELAY_ERR_CONFIG, "data directory path too long");
        url = path;
    }
    return relay_store_open(out, url, &so, err);
}

/* Opens the configured store and migrates it (SQLite by default) or checks it is migrated. */
static int open_store(relay_t *r, relay_error_t *err)
{
    int rc = relay_store_open_configured(&r->store, &r->opts, err);
    if (rc)
        return rc;
    int is_sqlite = strcmp(relay_store_backend(r->store), "sqlite") == 0;
    int auto_migrate = r->opts.auto_migrate < 0 ? is_sqlite : r->opts.auto_migrate;
    if (auto_migrate)
        return relay_store_migrate_up(r->store, NULL, err);
    return relay_store_check_schema(r->store, err);
}

/* The modules, started in this order and stopped in the reverse. */
typedef struct module_hooks {
    const char *name;
    int (*start)(relay_t *r, relay_error_t *err);
    void (*stop)(relay_t *r);
} module_hooks_t;

/* Each stop must tolerate a start that never ran (relay_free runs every stop). */
static const module_hooks_t MODULES[] = {
    {"tiers", relay_tiers_start, relay_tiers_stop},
    {"keys", relay_keys_start, relay_keys_stop},
    {"pricing", relay_pricing_start, relay_pricing_stop},
    {"budgets", relay_budgets_start, relay_budgets_stop},
    {"limits", relay_limits_start, relay_limits_stop},
    {"upstreams", relay_upstreams_start, relay_upstreams_stop},
    {"auth", relay_auth_start, relay_auth_stop},
    {"forward", relay_forward_start, relay_forward_stop},
    {"usage", relay_usage_start, relay_usage_stop},
    {"metrics", relay_metrics_start, relay_metrics_stop},
    {"maintenance", relay_maintenance_start, relay_maintenance_stop},
};
#define N_MODULES (sizeof MODULES / sizeof MODULES[0])

int relay_new(relay_t **out, const relay_options_t *opts, relay_error_t *err)
{
    *out = NULL;
    relay_t *r = calloc(1, sizeof *r);
    if (!r)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->db_mu, NULL);
    relay_options_t defaults;
    if (!opts) {
        relay_options_init(&defaults);
        opts = &defaults;
    }
    int rc = copy_options(r, opts);
    if (rc) {
        relay_error_set(err, rc, "out of memory");
        relay_free(r);
        return rc;
    }
    rc = open_store(r, err);
    for (size_t i = 0; rc == 0 && i < N_MODULES; i++)
        rc = MODULES[i].start(r, err);
    if (rc) {
        relay_free(r); /* stops every module, started or not */
        return rc;
    }
    *out = r;
    return 0;
}

void relay_free(relay_t *r)
{
    if (!r)
        return;
    if (r->store) {
        /* Modules stop in reverse order; each stop is a no-op when its start never ran. */
        for (size_t i = N_MODULES; i-- > 0;)
            MODULES[i].stop(r);
        relay_store_free(r->store);
    }
    for (size_t i = 0; i < sizeof r->own_strings / sizeof r->own_strings[0]; i++)
        free(r->own_strings[i]);
    free(r->own_tiers);
    free(r->own_prices);
    if (r->own_upstreams) /* they hold upstream keys */
        explicit_bzero(r->own_upstreams, r->opts.n_upstreams * sizeof *r->own_upstreams);
    free(r->own_upstreams);
    pthread_mutex_destroy(&r->db_mu);
    free(r);
}

int relay_health_database(relay_t *r)
{
    relay_error_t e = {0};
    int rc = relay_store_probe_write(r->store, &e);
    relay_db_note(r, rc == 0, "a probe transaction failed", e.message);
    return rc ? RELAY_ERR_STORE : 0;
}

/*
 * ---- the database's state: one transition logged per outage, not one line per request ----
 * what is shown on /health (public: it never names hosts or users); detail only goes to the log.
 * A failure of the usage writer (real writes: a full disk fails them, the probe's empty
 * transaction not) is cleared only by the writer's next success, so the two cannot flap.
 */
static void db_note(relay_t *r, int ok, int writer, const char *what, const char *detail)
{
    if (ok && !__atomic_load_n(&r->db_down, __ATOMIC_RELAXED))
        return; /* the common case: no lock */
    pthread_mutex_lock(&r->db_mu);
    int was_down = r->db_down;
    if (ok && was_down && r->db_down_by_writer && !writer) {
        pthread_mutex_unlock(&r->db_mu);
        return;
    }
    int64_t since = r->db_down_since, now = relay_now();
    if (!ok) {
        relay_strlcpy(r->db_what, what ? what : "a query failed", sizeof r->db_what);
        if (!was_down)
            r->db_down_since = now;
        r->db_down_by_writer = writer || (was_down && r->db_down_by_writer);
    }
    __atomic_store_n(&r->db_down, !ok, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->db_mu);
    if (!ok && !was_down)
        relay_log(
            r, RELAY_LOG_ERROR, "database.down", NULL,
            "database unavailable (%s%s%s): %s; usage rows wait in the queue",
            what ? what : "a query failed", detail && *detail ? ": " : "", detail ? detail : "",
            r->opts.db_outage_fail_closed ? "requests are refused (database.outage: fail_closed)"
                                          : "keys verified before are served from the cache");
    else if (ok && was_down)
        relay_log(r, RELAY_LOG_INFO, "database.up", NULL, "database available again after %lld s",
                  (long long)(now - since));
}

void relay_db_note(relay_t *r, int ok, const char *what, const char *detail)
{
    db_note(r, ok, 0, what, detail);
}

void relay_db_note_write(relay_t *r, int ok, const char *detail)
{
    db_note(r, ok, 1, "writing usage rows failed", detail);
}

int relay_db_is_down(relay_t *r)
{
    return __atomic_load_n(&r->db_down, __ATOMIC_RELAXED);
}

int relay_database_state(relay_t *r, char *reason, size_t cap)
{
    if (!relay_db_is_down(r)) {
        if (reason && cap)
            reason[0] = '\0';
        return 0;
    }
    pthread_mutex_lock(&r->db_mu);
    int64_t secs = relay_now() - r->db_down_since;
    if (reason && cap)
        snprintf(reason, cap, "database unavailable for %lld s (%s)", (long long)secs, r->db_what);
    pthread_mutex_unlock(&r->db_mu);
    return RELAY_ERR_STORE;
}

void relay_log(relay_t *r, relay_log_level level, const char *event, const char *fields_json,
               const char *fmt, ...)
{
    if (!r || !r->opts.log_fn || level < r->opts.log_level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->opts.log_fn(r->opts.log_ud, level, event, msg, fields_json);
}
