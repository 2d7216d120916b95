/* upstreams: the pool of Anthropic upstreams behind one relay (docs/upstreams.md). */
#ifndef RELAY_UPSTREAMS_H
#define RELAY_UPSTREAMS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/http.h"
#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The pool: the primary (relay_options_t upstream_url / upstream_api_key), the configured
 * upstreams (relay_options_t upstreams) and those stored in the database (admin REST). A request
 * goes to a healthy upstream of the lowest priority that serves its model, has room under its
 * max_concurrency and belongs to the key's upstream_group, chosen by smooth weighted round robin;
 * a session (x-claude-code-session-id, else metadata.user_id's session_id) stays on one upstream.
 * Thread safety: every call may run concurrently with any other on the same relay_t.
 */

/* NULL when s is a valid upstream (or group) name: 1-63 of [A-Za-z0-9._-]; else what was
 * expected. */
RELAY_API const char *relay_upstreams_check_name(const char *s);
/* NULL when s is a valid model pattern: 1-63 characters of [A-Za-z0-9._:@/-] with '*' (any run)
 * and '?' (one character) as wildcards; else what was expected. */
RELAY_API const char *relay_upstreams_check_model(const char *s);
/* 1 when model matches the glob pattern (see relay_upstreams_check_model). */
RELAY_API int relay_upstreams_model_match(const char *pattern, const char *model);

/* One upstream's state, as GET /admin/upstreams and the metrics show it. No key, only its last
 * four characters. */
typedef struct relay_upstream_info {
    char id[80]; /* "config:<name>" or the database row's UUID */
    char name[64];
    char url[1024];
    char source[16]; /* "config" | "database" */
    char group[64];
    int priority, weight, max_concurrency, max_retries;
    double timeout_s;
    char models[RELAY_UPSTREAM_MAX_MODELS][64];
    int n_models;
    char key_last4[8];
    int healthy;               /* usable now and its recent error rate is low */
    char state[16];            /* "ok" | "cooling" | "broken" | "disabled" */
    int64_t cooldown_until_ms; /* Unix ms; 0: not cooling */
    int in_flight;
    int64_t requests_5m, errors_5m;
    char last_error[160];
    int64_t last_error_at;      /* Unix s */
    double ratelimit_remaining; /* smallest remaining/limit share the upstream reported; -1 */
    uint64_t cooldowns, requests_total;
} relay_upstream_info_t;

/* Every upstream of the pool, config ones first. *out is freed with free(). */
RELAY_API int relay_upstreams_list(relay_t *r, relay_upstream_info_t **out, size_t *n);

/*
 * Admin REST (admin Bearer token required, every change audited):
 *   GET    /admin/upstreams                    → {"items":[upstream...],"total"}
 *   POST   /admin/upstreams                    {name,url,api_key,weight,priority,models,
 *                                               max_concurrency,timeout,max_retries,group,disabled}
 *   GET|PATCH|DELETE /admin/upstreams/{id}      (PATCH and DELETE: database upstreams only)
 *   POST   /admin/upstreams/{id}/disable|enable|test
 * {id} is the id or the name. Returns 0 when it answered (resp filled), RELAY_ERR_NOT_FOUND when
 * the path is not its own (resp untouched).
 */
RELAY_API int relay_upstreams_admin_handle(relay_t *r, const relay_http_request_t *req,
                                           relay_http_response_t *resp);

/* Calls fn once per route relay_upstreams_admin_handle answers (method, pattern). */
RELAY_API void relay_upstreams_routes(relay_http_route_fn fn, void *ud);

/*
 * Re-seals every stored upstream key from old_secret (the previous SECRET_KEY) to the relay's
 * SECRET_KEY. *n gets how many were re-sealed. A key that opens with neither fails the call
 * (nothing is changed then).
 */
RELAY_API int relay_upstreams_reseal(relay_t *r, const char *old_secret, int *n,
                                     relay_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
