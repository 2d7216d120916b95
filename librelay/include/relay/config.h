/* config: loads .env, config.yaml and the environment into relay_options_t plus the server's own
 * settings. */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include <stddef.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * CivetWeb gives every connection a worker for as long as it is open, idle keep-alive ones
 * included, and a stream's worker sleeps until the stream ends (librelay's I/O thread writes
 * its events). 2,500 serves 1,000 streams beside 1,500 idle keep-alive connections; an idle
 * worker costs ~20 KiB of RSS (docs/benchmarks.md).
 */
#define RELAY_DEFAULT_WORKER_THREADS 2500

/* A list of strings owned by the config. */
typedef struct relay_config_strlist {
    char **items;
    size_t n;
} relay_config_strlist_t;

#define RELAY_CONFIG_MAX_THRESHOLDS 8

/*
 * The whole configuration, as loaded. Every setting and its default is documented in
 * docs/configuration.md and config.example.yaml.
 *
 * Ownership: the config owns every string and array it points to, including the char pointers
 * inside `relay` (relay.tiers, relay.prices, relay.upstream_url, ...), which live until
 * relay_config_free. relay_new copies what it keeps, so the config may be freed after relay_new.
 * The host may set relay.log_fn / relay.log_ud before calling relay_new.
 * Thread safety: a loaded config is never modified by librelay; any number of threads may read it.
 */
typedef struct relay_config {
    relay_options_t relay; /* librelay's options; defaults from relay_options_init */

    /* server.* (and app.host / app.port of the original relay) */
    char listen[128];          /* "127.0.0.1:8000"; "[::1]:8000" form for IPv6 */
    int worker_threads;        /* RELAY_DEFAULT_WORKER_THREADS */
    int shutdown_grace_s;      /* 30 */
    int header_timeout_ms;     /* 30000: request line and headers must arrive within this */
    size_t max_header_bytes;   /* 65536: request line and headers together, else 431 */
    int forward_event_logging; /* 0: POST /api/event_logging/... answers 200 locally */
    relay_config_strlist_t trusted_proxies; /* IPs / CIDRs whose X-Forwarded-For is believed */

    /* logging.* / LOG_LEVEL */
    char log_level[16];  /* "debug" | "info" | "warning" | "error" (also in relay.log_level) */
    char log_format[16]; /* "json" | "text" */

    /* monitoring.* */
    int metrics_enabled;                        /* 1 */
    char metrics_path[128];                     /* "/metrics" */
    char *metrics_token;                        /* NULL: no bearer token needed */
    relay_config_strlist_t metrics_allowed_ips; /* empty: any client */
    char metrics_key_label[8];                  /* "name" | "id" | "off" */
    char health_path[128];                      /* "/health" */

    /* console.* */
    int console_enabled; /* 1; 0: /console and /console/... answer 404 */

    /* security.cors.* */
    int cors_enabled;                    /* 0 */
    relay_config_strlist_t cors_origins; /* allow_origins */
    relay_config_strlist_t cors_methods; /* allow_methods */
    relay_config_strlist_t cors_headers; /* allow_headers */
    int cors_allow_credentials;          /* 0 */
    int cors_max_age;                    /* 600 seconds */

    /* alerts.* */
    double alert_thresholds[RELAY_CONFIG_MAX_THRESHOLDS]; /* ascending; default
                                                             warning_threshold, 1.0 */
    size_t n_alert_thresholds;
    char *alert_webhook_url;      /* NULL: alerts are logged only */
    int alert_webhook_timeout_ms; /* 5000 */

    /* informational, from the original relay's app.* and upstream.primary.name */
    char app_name[128];     /* "Claude API Relay" */
    char upstream_name[64]; /* "anthropic" */

    /* "config.yaml:7: upstream.fallback: unknown setting, ignored", for the host to log */
    relay_config_strlist_t warnings;
    char source[1024];     /* the YAML file read, "" when built-in defaults were used */
    char env_source[1024]; /* the .env file read, "" when none */

    struct relay_config_priv *priv; /* owned allocations; not for the host */
} relay_config_t;

/*
 * Loads, in order:
 *  1. the .env file: env_path, or NULL for "./.env" when it exists, or "" for none. Its values are
 *     kept inside the config (the process environment is not changed) and never override a
 *     variable that is set in the real environment.
 *  2. the YAML file: yaml_path, or NULL for $RELAY_CONFIG, else "./config.yaml" when it exists,
 *     else built-in defaults; "" for built-in defaults. ${VAR} and ${VAR:-default} in scalar
 *     values are expanded from the environment and the .env file; an unset ${VAR} is "".
 *  3. the environment (then .env): UPSTREAM_API_KEY, UPSTREAM_API_URL, ADMIN_USERNAME,
 *     ADMIN_PASSWORD, SECRET_KEY, DATABASE_URL, REDIS_URL, RELAY_LISTEN, RELAY_DATA_DIR, LOG_LEVEL.
 *     An empty variable counts as unset.
 * An empty string setting means "not set": the default applies.
 * On success *out is a new config (free with relay_config_free). On failure *out is NULL, the
 * return is RELAY_ERR_CONFIG (or RELAY_ERR_NOMEM) and err->message reads
 * "config.yaml:12: rate_limit.by_tier.basic.requests: expected a positive integer ...";
 * messages never contain a value that could be a secret.
 * Not thread-safe against concurrent setenv (it reads the environment).
 */
RELAY_API int relay_config_load(relay_config_t **out, const char *yaml_path, const char *env_path,
                                relay_error_t *err);
/* Frees c and everything it owns (NULL is fine). */
RELAY_API void relay_config_free(relay_config_t *c);

#ifdef __cplusplus
}
#endif
#endif
