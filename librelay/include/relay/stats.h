/* stats: the usage REST API for key holders (/api/usage...) and admins (/admin/usage...). */
#ifndef RELAY_STATS_H
#define RELAY_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/http.h"
#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Transport-neutral handlers (relay/http.h) answering with the original Python relay's JSON
 * shapes plus cache fields; see docs/usage-api.md for every field.
 *
 * relay_user_handle: GET only, authenticated by the proxy key itself (x-api-key or
 * Authorization: Bearer; 401 otherwise), each answer about that key alone:
 *   /api/usage?start_date=&end_date=        totals, model_usage, error_breakdown
 *   /api/usage/daily?days=30                [{date, requests, tokens, cost, errors, ...}] newest
 * first /api/usage/logs?start_date=&end_date=&skip=&limit=&model=&status=
 *                                           {"items":[row...],"total","skip","limit"} newest first
 *   /api/usage/quota                        quota, tier window, expiry
 * relay_stats_admin_handle: GET only, admin JWT (relay_admin_authenticate):
 *   /admin/usage?skip=&limit=&sort=&order=&start_date=&end_date=
 *                                           {"items":[per key],"total","skip","limit","totals"}
 *   /admin/api-keys/{id}/usage, /usage/daily, /usage/logs   as the user endpoints, for key id
 *   /admin/usage/summary, /admin/usage/daily, /admin/usage/logs  the same, over every key
 * The logs views also take is_error=true (only failed requests).
 *
 * Dates are ISO 8601 ("2025-01-31", "2025-01-31T12:00:00Z", offsets accepted); a date-only
 * end_date includes that whole day. A bad parameter gets 400 invalid_request_error naming it.
 * Both return 0 when they answered (resp filled, whatever the status) and RELAY_ERR_NOT_FOUND,
 * resp untouched, for a path that is not theirs; a path of theirs with another method gets 405.
 *
 * Thread safety: may run concurrently on one relay_t. Ownership: resp is the caller's; clear it
 * with relay_http_response_clear. Statistics read the store (usage_logs for ranges of raw rows,
 * usage_daily for daily series and the admin overview, which therefore outlive retention).
 */
RELAY_API int relay_user_handle(relay_t *r, const relay_http_request_t *req,
                                relay_http_response_t *resp);
RELAY_API int relay_stats_admin_handle(relay_t *r, const relay_http_request_t *req,
                                       relay_http_response_t *resp);
/* Calls fn for every route the two handlers above serve (all GET; relay/http.h patterns).
 * Thread-safe; the strings are static. */
RELAY_API void relay_stats_routes(relay_http_route_fn fn, void *ud);

/* The totals /api/usage answers, for hosts that want them without JSON. */
typedef struct relay_usage_summary {
    int64_t total_requests, total_tokens, total_prompt_tokens, total_completion_tokens;
    int64_t total_cache_creation_tokens, total_cache_read_tokens, error_count;
    double total_cost, avg_response_time_ms;
} relay_usage_summary_t;

/* Sums usage_logs of key_id (NULL: every key) with created_at in [start, end) (0: unbounded). */
RELAY_API int relay_stats_summary(relay_t *r, const char *key_id, int64_t start, int64_t end,
                                  relay_usage_summary_t *out);

#ifdef __cplusplus
}
#endif
#endif
