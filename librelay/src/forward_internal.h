/* forward_internal: the forwarder's lifecycle hooks and pieces the proxy pipeline shares. */
#ifndef RELAY_FORWARD_INTERNAL_H
#define RELAY_FORWARD_INTERNAL_H

#include <stdint.h>

#include "internal.h"
#include "relay/forward.h"

int relay_forward_start(relay_t *r, relay_error_t *err);
void relay_forward_stop(relay_t *r);
/* Writes Anthropic error JSON (or, once a stream's head is out, an SSE error event) to sink. */
void relay_forward_write_error(const relay_sink_t *sink, int head_sent, int is_sse, int code,
                               const char *msg, int *client_gone);
void relay_forward_count_retry(relay_t *r);
/* Is req a call the upstream bills (a Messages or legacy Complete request)? */
int relay_forward_is_billable(const relay_http_request_t *req);
/* Upstream retries made since start. */
uint64_t relay_forward_retries(relay_t *r);

#endif
