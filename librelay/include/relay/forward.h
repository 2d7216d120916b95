/* forward: passing one request to the upstream and its answer back, streaming, with retries. */
#ifndef RELAY_FORWARD_H
#define RELAY_FORWARD_H

#include <stdint.h>

#include "relay/http.h"
#include "relay/relay.h"
#include "relay/sse.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Where the answer goes: the host's callbacks. librelay calls head once, then body for each chunk
 * as it arrives from the upstream (the host writes and flushes it at once; SSE events are never
 * collected first). The headers given to head are end-to-end ones only: no content-length,
 * content-encoding or transfer-encoding (the body is always sent decoded; the host frames it).
 * Either callback returns nonzero when the client has gone away; librelay then stops writing and,
 * for a stream, keeps reading the upstream (up to drain_timeout_ms) so the request is billed.
 */
typedef struct relay_sink {
    void *ud;
    int (*head)(void *ud, int status, const relay_http_header_t *headers, size_t n_headers);
    int (*body)(void *ud, const char *data, size_t len);
    /*
     * Optional (NULL: librelay calls head, then body once). A complete answer whose length is
     * known before its first byte leaves (a held JSON answer, a refusal, an error the relay
     * writes): the host can frame it with a content-length and send head and body in one write.
     * Called instead of head and body, never after them. Since 0.2: zero-initialise the sink.
     */
    int (*whole)(void *ud, int status, const relay_http_header_t *headers, size_t n_headers,
                 const char *body, size_t len);
    /*
     * Optional (NULL: every body byte goes through body()). Called once after head() succeeded:
     * a host that owns a plain (non-TLS), non-blocking socket to the client with nothing of its
     * own buffered may return 0 with *fd set, and *chunked 1 for HTTP/1.1 chunked framing (0: raw
     * bytes). librelay's I/O thread then writes the rest of the body to fd itself, framed as
     * asked, without waking the calling thread for every event; it stops touching fd before
     * relay_forward returns. Since 0.2.
     */
    int (*direct)(void *ud, int *fd, int *chunked);
} relay_sink_t;

/* What happened to one forwarded request. */
typedef struct relay_forward_result {
    int status;           /* the status the client was sent (0: nothing was sent) */
    int attempts;         /* upstream attempts made (1 + retries) */
    int stream;           /* the answer was SSE */
    int client_gone;      /* the client went away before the end */
    int cut;              /* the upstream ended the answer early (a stream without message_stop) */
    int estimated;        /* some usage figures are the relay's estimate */
    relay_usage_t usage;  /* final usage: parsed from the upstream, completed by estimates */
    char request_id[128]; /* the upstream's request-id */
    int64_t request_bytes, response_bytes;
    int64_t time_to_first_byte_ms, duration_ms;
    int got_first_byte;      /* a response byte arrived (time_to_first_byte_ms may then be 0) */
    int error_code;          /* a relay_err when the relay itself failed the request, else 0 */
    char error_message[256]; /* why (never a secret), or the upstream's error message */
    char error_type[64];     /* Anthropic error type of an upstream or relay error */
    char upstream[64];       /* the pool upstream of the last attempt (the one that served) */
} relay_forward_result_t;

/* What relay_forward_ex takes beside the request, for the upstream pool (relay/upstreams.h). */
typedef struct relay_forward_options {
    const char *model;          /* the request's model (NULL: any upstream serves it) */
    const char *session_id;     /* NULL or "": no stickiness */
    const char *upstream_group; /* NULL or "": the upstreams without a group */
    /* The request asks for a stream ("stream": true). Its transfer then runs on the relay's I/O
     * threads, which hold thousands at once and write each event without waking the caller;
     * any other request runs on the calling thread, two thread hand-offs cheaper. A wrong hint
     * costs only that: either way the answer is forwarded whole. relay_forward() reads it from
     * the body. Since 0.2. */
    int stream;
} relay_forward_options_t;

/*
 * Stage 3 on its own, for hosts that authenticate and admit themselves: sends req to the upstream
 * with the client's credentials (x-api-key, Authorization) replaced by the upstream key, retries
 * with exponential backoff and jitter (connection failures, 408, 429, 500, 502, 503, 504, 529)
 * while nothing has reached the client, and streams the answer to sink. Errors the relay itself
 * produces (no upstream key, upstream unreachable after the retries) are written to sink as
 * Anthropic error JSON. Fills res in every case. Returns 0 when an answer (possibly an upstream
 * error status) was written, else the relay_err written.
 * Thread safety: may run concurrently from any number of threads; upstream connections are shared.
 */
RELAY_API int relay_forward(relay_t *r, const relay_http_request_t *req, const relay_sink_t *sink,
                            relay_forward_result_t *res);

/*
 * For a host's shutdown, after its grace period: every forward in flight ends within about
 * 250 ms (the I/O threads' sweep). A stream under way gets an SSE `event: error` (api_error,
 * "the relay is shutting down") and ends properly; a held JSON answer gets a 503; each is billed
 * for what the upstream produced (estimated, as for a cut stream). Forwards that start later, and
 * retries, answer 503 at once. There is no undo: call it only when the relay is going away.
 * Thread safety: may run concurrently with relay_forward.
 */
RELAY_API void relay_forward_shutdown(relay_t *r);

/*
 * relay_forward with the pool's choice steered by fo (NULL: as relay_forward): an upstream of
 * fo->upstream_group that serves fo->model, the session's one when it has one. Failover to
 * another upstream (connection failure, no first byte in time, 401, 403, 408, 429, 500, 502,
 * 503, 504, 529) happens only before anything reached the client and counts towards max_retries.
 * When no upstream can take the request, 529 overloaded_error with retry-after. Since 0.3.
 */
RELAY_API int relay_forward_ex(relay_t *r, const relay_http_request_t *req,
                               const relay_forward_options_t *fo, const relay_sink_t *sink,
                               relay_forward_result_t *res);

/*
 * The upstream URL for a client path and query ("/v1/messages", "beta=true") into out. A base
 * configured as ".../v1" (as the original relay wrote it) is not doubled: both
 * "https://api.anthropic.com" and "https://api.anthropic.com/v1" give ".../v1/messages".
 */
/* Writes a complete answer through sink: whole when the sink has it, else head then body.
 * Returns nonzero when the client has gone away. */
RELAY_API int relay_sink_write_whole(const relay_sink_t *sink, int status,
                                     const relay_http_header_t *headers, size_t n_headers,
                                     const char *body, size_t len);

RELAY_API int relay_forward_url(relay_t *r, const char *path, const char *query, char *out,
                                size_t cap);

#ifdef __cplusplus
}
#endif
#endif
