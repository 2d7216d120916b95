/* sse: a byte-fed parser of Anthropic's Messages SSE stream and JSON bodies that extracts usage. */
#ifndef RELAY_SSE_H
#define RELAY_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * What a response told us about its cost and its end. All counts are the upstream's own numbers;
 * a field the upstream never sent stays 0.
 */
typedef struct relay_usage {
    int64_t input_tokens, output_tokens;
    int64_t cache_creation_input_tokens, cache_creation_5m_tokens, cache_creation_1h_tokens;
    int64_t cache_read_input_tokens;
    int has_usage;   /* any usage field was seen */
    int has_final;   /* a message_delta with usage was seen (stream) / JSON body parsed */
    char model[128]; /* from message_start.message.model or the JSON body */
    char message_id[64];
    char stop_reason[32];
    int saw_message_stop; /* the stream ended cleanly */
    int saw_error;        /* an `event: error` (possibly after a 200) */
    char error_type[64], error_message[256];
    int64_t events; /* complete events parsed (ping included) */
} relay_usage_t;

/* Default cap of one event (all its lines); larger events are skipped, not buffered. */
#define RELAY_SSE_DEFAULT_MAX_EVENT ((size_t)4 << 20)
/* At most this many bytes of output text are kept for estimates (the total is still counted). */
#define RELAY_SSE_OUTPUT_CAP ((size_t)1 << 20)

/*
 * The parser of one response stream. Thread safety: none; one stream is fed by one thread at a
 * time. It performs no I/O: the caller hands it the bytes it received, in any chunking.
 */
typedef struct relay_sse relay_sse_t;

/* max_event_bytes 0: RELAY_SSE_DEFAULT_MAX_EVENT. *out is freed with relay_sse_free. */
RELAY_API int relay_sse_new(relay_sse_t **out, size_t max_event_bytes);
/* Accepts NULL. */
RELAY_API void relay_sse_free(relay_sse_t *p);

/*
 * Feeds a chunk of the stream. Any chunking gives the same result (a byte at a time included).
 * Handles \n, \r\n and \r line endings, `event:` / `data:` fields (other fields are ignored),
 * multi-line data, comments (lines starting with ':') and events without `event:` (their type is
 * the JSON "type"). Events whose data is not JSON count as events and change nothing else.
 * Returns 0, or RELAY_ERR_TOO_LARGE when an event in this chunk exceeded the cap: that event is
 * dropped, the parser skips to the next blank line and the rest of the chunk is still parsed, so
 * the caller may simply go on feeding. RELAY_ERR_NOMEM if memory ran out (state stays consistent).
 */
RELAY_API int relay_sse_feed(relay_sse_t *p, const void *data, size_t len);

/*
 * The usage so far. message_start sets the input and cache counts; each message_delta's usage is
 * cumulative, so every field it carries replaces the earlier value (never added). The pointer
 * lives as long as p and changes content as p is fed.
 */
RELAY_API const relay_usage_t *relay_sse_usage(const relay_sse_t *p);

/*
 * Output text seen so far: text_delta.text, thinking_delta.thinking and
 * input_json_delta.partial_json concatenated, its first RELAY_SSE_OUTPUT_CAP bytes kept (cut on a
 * UTF-8 boundary). *len gets the kept length, *total_bytes (may be NULL) the length of all output
 * text seen, so the tokens of a cut stream can be estimated. The string is NUL-terminated, owned
 * by p and valid until the next feed or free.
 */
RELAY_API const char *relay_sse_output_text(const relay_sse_t *p, size_t *len, size_t *total_bytes);

/*
 * Usage of a non-streaming Messages response body: id, model, stop_reason and usage, with
 * has_final set. For an error body ({"type":"error","error":{...}}) it sets saw_error, error_type
 * and error_message. *out is zeroed first. RELAY_ERR_INVALID when body is not a JSON object.
 */
RELAY_API int relay_usage_parse_json(relay_usage_t *out, const char *body, size_t len);

#ifdef __cplusplus
}
#endif
#endif
