/* admin: the admin REST API (/admin/...) as a transport-neutral handler any host can mount. */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include <stddef.h>

#include "relay/http.h"
#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest admin request body; larger ones get 413. */
#define RELAY_ADMIN_BODY_MAX (1024 * 1024)

/*
 * Answers one admin request (the original Python relay's routes and JSON shapes):
 *   POST   /admin/login                      HTTP Basic →
 * {"access_token","token_type","expires_in"} GET /admin/api-keys?skip=&limit=&active_only=&status=
 * → {"items","total","skip","limit"} POST   /admin/api-keys                   → key object +
 * "api_key" (shown this once) GET    /admin/api-keys/{id}              → key object GET
 * /admin/api-keys/{id}/stats        → key object + "is_expired" PATCH  /admin/api-keys/{id} → key
 * object (PUT accepted as an alias) POST   /admin/api-keys/{id}/disable|enable → {"message"} POST
 * /admin/api-keys/{id}/rotate       → key object + new "api_key" DELETE
 * /admin/api-keys/{id}[?hard_delete=true] → {"message"} GET    /admin/rate-limit-tiers           →
 * [{"name","requests","period","tokens_per_minute","concurrent"}] GET|PUT|DELETE
 * /admin/rate-limit-tiers/{name} GET    /admin/audit-log?skip=&limit=     →
 * {"items","total","skip","limit"} Everything but /admin/login needs "Authorization: Bearer <JWT>"
 * (401 otherwise). Errors are relay_error_json bodies; 400s name the field; a known path with
 * another method gets 405. Every change writes an audit_log row with the actor and req->client_ip.
 *
 * Returns 0 when it answered (resp filled, whatever the status), RELAY_ERR_NOT_FOUND when the path
 * is none of the above (resp untouched: the host tries its next handler or answers 404).
 * Thread safety: may run concurrently on one relay_t. resp is the caller's; clear it with
 * relay_http_response_clear.
 */
RELAY_API int relay_admin_handle(relay_t *r, const relay_http_request_t *req,
                                 relay_http_response_t *resp);
/* Calls fn for every route relay_admin_handle serves (relay/http.h patterns, e.g.
 * "/admin/api-keys/{id}"). Thread-safe; the strings are static. */
RELAY_API void relay_admin_routes(relay_http_route_fn fn, void *ud);

/*
 * The Bearer check every admin route makes, for hosts and other modules that add admin routes
 * (usage statistics): 0 and subject (cap >= 1) filled when the request carries a valid admin
 * token; otherwise the 401 (or 503 without SECRET_KEY) is written to resp and the error returned.
 */
RELAY_API int relay_admin_authenticate(relay_t *r, const relay_http_request_t *req, char *subject,
                                       size_t cap, relay_http_response_t *resp);

#ifdef __cplusplus
}
#endif
#endif
