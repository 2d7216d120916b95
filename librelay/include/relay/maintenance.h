/* maintenance: the background thread of a relay_t — log retention, tier reload, quota alerts. */
#ifndef RELAY_MAINTENANCE_H
#define RELAY_MAINTENANCE_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * relay_new starts one maintenance thread per relay_t; relay_free stops it. It
 *  - prunes usage_logs rows older than relay_options_t.log_retention_days (0: never) in bounded
 *    batches (RELAY_MAINTENANCE_PRUNE_BATCH rows per transaction), once a minute; usage_daily is
 *    never touched, so daily totals outlive the rows;
 *  - re-reads the rate-limit tiers from the store every few seconds (relay_tiers_reload), so
 *    several relay processes sharing one database converge on admin changes;
 *  - delivers quota alerts. After each proxied request the key's live quota use is compared
 *    with the thresholds (in memory, on the request thread); a threshold crossed for the first
 *    time is queued. The thread then records it in the store (setting
 *    "alert.quota.<key id>.<percent>" = the key's token_limit), logs "quota.alert" and POSTs the
 *    JSON body to the webhook, retrying with backoff. Recording before sending makes an alert
 *    fire at most once per key, threshold and token_limit, across restarts and processes
 *    (raising a key's limit re-arms its alerts).
 *
 * Thread safety: every call may run concurrently with the others on one relay_t.
 */

#define RELAY_MAINTENANCE_PRUNE_BATCH    1000
#define RELAY_MAINTENANCE_MAX_THRESHOLDS 8

typedef struct relay_alert_options {
    const double *thresholds; /* ascending, in (0, 10]; NULL: warning_threshold and 1.0 */
    size_t n_thresholds;
    const char *webhook_url; /* NULL or "": alerts are only logged */
    int webhook_timeout_ms;  /* per attempt; <= 0: 5000 */
    int webhook_attempts;    /* <= 0: 4 (first try plus 3 retries, 0.5 s, 1 s, 2 s apart) */
} relay_alert_options_t;

/* Replaces the alert settings (copied). RELAY_ERR_INVALID names the bad field in err. */
RELAY_API int relay_maintenance_set_alerts(relay_t *r, const relay_alert_options_t *o,
                                           relay_error_t *err);

/* Runs one retention pass now (all batches); *deleted (may be NULL) gets the rows removed. */
RELAY_API int relay_maintenance_prune(relay_t *r, int64_t *deleted);

/* Waits until every alert queued so far was recorded and delivered (or gave up). */
RELAY_API int relay_maintenance_flush_alerts(relay_t *r, int timeout_ms);

typedef struct relay_maintenance_stats {
    uint64_t pruned_rows;       /* usage_logs rows deleted by retention */
    uint64_t alerts_fired;      /* alerts recorded and logged */
    uint64_t alerts_suppressed; /* crossings already recorded in the store (an earlier run) */
    uint64_t alerts_dropped;    /* crossings lost because the alert queue was full */
    uint64_t webhook_sent;      /* deliveries answered 2xx */
    uint64_t webhook_failed;    /* deliveries that failed every attempt */
    uint64_t tier_reloads;
} relay_maintenance_stats_t;

RELAY_API void relay_maintenance_get_stats(relay_t *r, relay_maintenance_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
