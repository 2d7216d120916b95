/* proxy: the whole way of one client request: authenticate → admit → forward → settle. */
#ifndef RELAY_PROXY_H
#define RELAY_PROXY_H

#include "relay/forward.h"
#include "relay/http.h"
#include "relay/limits.h"
#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What happened to one proxied request (for the host's own logs and metrics). */
typedef struct relay_proxy_result {
    int status;              /* the status the client was sent (0: nothing was sent) */
    int refused;             /* a relay_err when the relay refused it before forwarding, else 0 */
    char refusal_reason[32]; /* "auth", "quota", "requests", "ip", ... when refused */
    char key_id[37];         /* the authenticated key, "" before authentication */
    char key_name[256];
    char model[128];            /* the model the request body named ("" when none) */
    int64_t billed_tokens;      /* counted against the key's quota */
    double cost;                /* USD, from the price table */
    relay_forward_result_t fwd; /* forwarding details (zero when refused) */
} relay_proxy_result_t;

/*
 * Runs the four stages for a request meant for the upstream and writes the answer to sink:
 *  1. authenticate: the proxy key from x-api-key or Authorization: Bearer (relay_keys_verify);
 *  2. admit: allowlists, rate tier, quota reservation (relay_limits_admit);
 *  3. forward: relay_forward (key swapped, streamed, retried before the first byte);
 *  4. settle: the reservation settled to the real usage, the usage row queued for the writer.
 * Every refusal is written as Anthropic error JSON with the matching status and headers
 * (retry-after, anthropic-ratelimit-*, x-should-retry). Returns 0 when an answer was written
 * (whatever its status), RELAY_ERR_CLIENT_GONE when the client left before it was complete.
 * Thread safety: may run concurrently from any number of threads.
 */
RELAY_API int relay_proxy(relay_t *r, const relay_http_request_t *req, const relay_sink_t *sink,
                          relay_proxy_result_t *res);

/*
 * Stage 4 on its own, for hosts that run the stages themselves (the same code relay_proxy runs,
 * so the two cannot bill differently): computes res->billed_tokens and res->cost from
 * res->fwd.usage, settles adm (NULL when the request was refused before admission), and queues
 * the request's usage row. Before the call: res->fwd holds relay_forward's result, res->status
 * the status the client was sent, res->model the request body's model (may be ""), and
 * res->refused the relay_err of a refusal (else 0). Call it once per request, on every path
 * after a successful admit.
 */
RELAY_API void relay_proxy_settle(relay_t *r, const relay_http_request_t *req,
                                  const relay_key_record_t *key, relay_admission_t *adm,
                                  relay_proxy_result_t *res);

/* The proxy key a request presents (x-api-key, else Authorization: Bearer) or NULL. */
RELAY_API const char *relay_proxy_request_key(const relay_http_request_t *req, char *buf,
                                              size_t cap);

#ifdef __cplusplus
}
#endif
#endif
