/* metrics: a Prometheus registry (counters, gauges, histograms) and the relay's own metrics. */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/http.h"
#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Part 1: a registry any host can use on its own.
 * A family (relay_metric_t) has a name, help text, a type and fixed label names; each distinct
 * set of label values is one series. Cardinality is bounded per family: past max_series new
 * label sets are folded into a series whose "bounded" label (or, when the family has none, every
 * label) reads "other", so a flood of distinct keys or models can never grow memory without end.
 *
 * Ownership: the registry owns its families; relay_metric_t pointers live until
 * relay_metrics_free. relay_metrics_render hands out a string freed with relay_free_string.
 * Thread safety: every call may run concurrently (one short lock per registry); only
 * relay_metrics_free must run alone.
 */
typedef struct relay_metrics relay_metrics_t;
typedef struct relay_metric relay_metric_t;

typedef enum relay_metric_type {
    RELAY_METRIC_COUNTER = 0,
    RELAY_METRIC_GAUGE = 1,
    RELAY_METRIC_HISTOGRAM = 2,
} relay_metric_type;

/* Most label names per family, buckets per histogram, bytes per label value. */
#define RELAY_METRICS_MAX_LABELS  4
#define RELAY_METRICS_MAX_BUCKETS 32
#define RELAY_METRICS_LABEL_MAX   128
/* The label value that collects series past a family's max_series. */
#define RELAY_METRICS_OTHER "other"

/* A family's shape. label_names (n_labels of them) and buckets are copied. */
typedef struct relay_metric_desc {
    const char *name; /* [a-zA-Z_:][a-zA-Z0-9_:]*; counters should end in _total */
    const char *help;
    relay_metric_type type;
    const char *const *label_names;
    size_t n_labels;
    int bounded_label;     /* index of the label folded to "other" at the cap; -1: all labels */
    size_t max_series;     /* 0: the registry's default (1000) */
    const double *buckets; /* histograms: ascending upper bounds, +Inf implied */
    size_t n_buckets;
} relay_metric_desc_t;

RELAY_API int relay_metrics_new(relay_metrics_t **out);
RELAY_API void relay_metrics_free(relay_metrics_t *m);

/* Registers a family. RELAY_ERR_INVALID for a bad name, label or bucket list; CONFLICT when the
 * name is taken. *out lives as long as m. */
RELAY_API int relay_metrics_register(relay_metrics_t *m, const relay_metric_desc_t *d,
                                     relay_metric_t **out);

/*
 * Updates the series with these label values (n_labels strings, truncated to
 * RELAY_METRICS_LABEL_MAX; NULL reads as ""). add: counters and gauges (a counter refuses a
 * negative v with RELAY_ERR_INVALID); set: gauges only (and counters read from elsewhere at
 * scrape time, which only grow); observe: histograms only.
 */
RELAY_API int relay_metrics_add(relay_metric_t *f, const char *const *label_values, double v);
RELAY_API int relay_metrics_set(relay_metric_t *f, const char *const *label_values, double v);
RELAY_API int relay_metrics_observe(relay_metric_t *f, const char *const *label_values, double v);
/* The value of a counter or gauge series (0 when it does not exist): for tests. */
RELAY_API double relay_metrics_value(relay_metric_t *f, const char *const *label_values);
/* Series in the family now. */
RELAY_API size_t relay_metrics_series(relay_metric_t *f);

/* The whole registry in the Prometheus text exposition format 0.0.4. Free with relay_free_string.
 */
RELAY_API int relay_metrics_render(relay_metrics_t *m, char **out, size_t *len);

/*
 * Part 2: the relay's metrics, kept in the registry every relay_t owns (see docs/metrics.md):
 *   relay_requests_total{status,route}        proxy_duration_seconds{route} (buckets to 600 s)
 *   relay_time_to_first_byte_seconds{route}   tokens_used_total{type,key}
 *   token_quota_usage_ratio{key}              relay_active_streams
 *   relay_auth_failures_total{reason}         relay_rate_limited_total{reason}
 *   relay_permission_denied_total{reason}     relay_upstream_retries_total
 *   relay_usage_write_queue_depth             relay_usage_write_drops_total
 *   relay_usage_rows_written_total            relay_unpriced_requests_total{model}
 *   relay_usage_write_batches_total
 *   relay_key_cache_hits_total                relay_key_bcrypt_total
 *   relay_key_verify_seconds{result}          relay_key_verify_waiting
 *   relay_key_verify_timeouts_total
 *   relay_redis_up                            relay_build_info{version}
 * Counters kept by other modules (retries, usage writer, limits, keys) are read at scrape time.
 */

/* What the key label of per-key series shows. */
typedef enum relay_metrics_key_label {
    RELAY_METRICS_KEY_NAME = 0, /* the key's name (default) */
    RELAY_METRICS_KEY_ID = 1,   /* the key's UUID */
    RELAY_METRICS_KEY_OFF = 2,  /* no per-key series at all */
} relay_metrics_key_label;

/* Most distinct key label values before new keys count as "other" (per family). */
#define RELAY_METRICS_MAX_KEYS 1000

/* Chooses the key label; "name", "id" or "off" (RELAY_ERR_INVALID otherwise). Call before serving.
 */
RELAY_API int relay_metrics_set_key_label(relay_t *r, const char *mode);

/* The registry of r (for hosts adding their own families). Lives as long as r. */
RELAY_API relay_metrics_t *relay_metrics_registry(relay_t *r);

/* The current metrics of r as Prometheus text. Free *out with relay_free_string. */
RELAY_API int relay_metrics_scrape(relay_t *r, char **out, size_t *len);

/*
 * Whether a /metrics request may read the metrics: with a token configured the request must
 * carry "Authorization: Bearer <token>" (constant-time compare); with an IP list, client_ip
 * must match one of its addresses or CIDR ranges. Both set: both must pass. 0 allowed,
 * RELAY_ERR_AUTH (no or wrong token) or RELAY_ERR_PERMISSION (address not listed).
 */
RELAY_API int relay_metrics_check_access(const relay_http_request_t *req, const char *token,
                                         const char *const *allowed_ips, size_t n_allowed);

#ifdef __cplusplus
}
#endif
#endif
