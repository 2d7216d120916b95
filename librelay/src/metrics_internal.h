/* metrics_internal: the metrics module's lifecycle hooks and the proxy pipeline's observation
 * calls. */
#ifndef RELAY_METRICS_INTERNAL_H
#define RELAY_METRICS_INTERNAL_H

#include "internal.h"
#include "relay/http.h"
#include "relay/proxy.h"
#include "relay/store.h"

int relay_metrics_start(relay_t *r, relay_error_t *err);
void relay_metrics_stop(relay_t *r);

/* A request is about to be forwarded (stream: the body asked for SSE): relay_active_streams. */
void relay_metrics_forward_begin(relay_t *r, int stream);
/*
 * One proxied request is over (after settle): requests, durations, tokens, quota ratio, auth
 * failures, unknown-model cost; and quota alerts are checked (in memory; delivery happens on the
 * maintenance thread). key is NULL when authentication failed. forwarded/stream say whether
 * relay_metrics_forward_begin ran for it and with which flag.
 */
void relay_metrics_observe_request(relay_t *r, const relay_http_request_t *req,
                                   const relay_key_record_t *key, const relay_proxy_result_t *res,
                                   int forwarded, int stream, const char *model);

/*
 * One relay_keys_verify call took seconds; result is "cached" (no bcrypt: a cache entry, or a
 * stale one re-read), "bcrypt" (this call's own or a shared one) or "failed" (any refusal).
 * Feeds relay_key_verify_seconds{result}; no-op before the metrics module starts.
 */
void relay_metrics_observe_key_verify(relay_t *r, const char *result, double seconds);

#endif
