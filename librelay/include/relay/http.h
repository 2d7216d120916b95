/* http: the transport-neutral request/response a host hands to librelay's REST handlers. */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stddef.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A host (relay-server's CivetWeb handlers, or another gateway) fills a relay_http_request_t,
 * calls a handler (relay_admin_handle, relay_user_handle, ...) and writes the response back.
 * Everything the request points to is the host's and must live for the duration of the call.
 */
typedef struct relay_http_header {
    const char *name;
    const char *value;
} relay_http_header_t;

typedef struct relay_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* decoded path without the query: "/admin/api-keys/123" */
    const char *query;  /* raw query string without '?', or NULL */
    const char *body;   /* may be NULL when body_len == 0 */
    size_t body_len;
    const char *client_ip; /* the effective client address (after trusted-proxy handling) */
    const relay_http_header_t *headers;
    size_t n_headers;
} relay_http_request_t;

#define RELAY_HTTP_MAX_RESP_HEADERS 16

typedef struct relay_http_response {
    int status;
    char *body; /* owned by the response; free with relay_http_response_clear */
    size_t body_len;
    char content_type[64]; /* "application/json" unless said otherwise */
    struct {
        char name[64];
        char value[256];
    } headers[RELAY_HTTP_MAX_RESP_HEADERS];
    size_t n_headers;
} relay_http_response_t;

/* Case-insensitive header lookup; NULL when absent. */
RELAY_API const char *relay_http_header(const relay_http_request_t *req, const char *name);
/* Value of a query parameter (URL-decoded into buf). 1 when present, 0 when absent. */
RELAY_API int relay_http_query_param(const relay_http_request_t *req, const char *name, char *buf,
                                     size_t cap);
/*
 * Refuses a request whose framing two HTTP parsers could read differently (request smuggling,
 * RFC 9112 sections 6.1 and 6.3): Content-Length together with Transfer-Encoding, two different
 * Content-Length values or one that is not a plain number, Transfer-Encoding other than one
 * "chunked" (or any on HTTP/1.0), a field name that is not a token, and CR, LF, NUL or another
 * control character (tab aside) in a value. http_version: "1.1", "1.0" (NULL: 1.1).
 * Returns 0, or RELAY_ERR_INVALID with a static English reason in *why. The host must answer
 * 400 and close the connection, since where this request ends is not known. Thread-safe.
 */
RELAY_API int relay_http_check_framing(const relay_http_request_t *req, const char *http_version,
                                       const char **why);
/* Sets status and takes ownership of body (a malloc'd JSON string; NULL: empty body). */
RELAY_API void relay_http_response_set(relay_http_response_t *resp, int status, char *body);
/* Sets the Anthropic error JSON for code and message (relay_error_json) as the response. */
RELAY_API void relay_http_response_error(relay_http_response_t *resp, int code,
                                         const char *message);
/* Adds a response header (truncated to the fixed sizes; ignored past RELAY_HTTP_MAX_RESP_HEADERS).
 */
RELAY_API void relay_http_response_add_header(relay_http_response_t *resp, const char *name,
                                              const char *value);
/* Adds retry-after: seconds when seconds > 0; else nothing. */
RELAY_API void relay_http_retry_after(relay_http_response_t *resp, int seconds);
RELAY_API void relay_http_response_clear(relay_http_response_t *resp);

/*
 * Route patterns, the one form every REST table in librelay uses: literal segments and at most one
 * "{name}" segment, e.g. "/admin/api-keys/{id}/stats". relay_http_path_match says whether path
 * (one trailing '/' ignored) fits pattern; arg (cap bytes, may be NULL for a pattern without a
 * parameter) receives the {name} segment. A segment that does not fit in arg does not match.
 * Returns 1 on a match, 0 otherwise. Pure function: thread-safe.
 */
RELAY_API int relay_http_path_match(const char *pattern, const char *path, char *arg, size_t cap);

/*
 * Called once per route a REST handler serves (method "GET", ..., pattern as above), in table
 * order; the strings are static. Used by `relay-server routes` and the OpenAPI test.
 */
typedef void (*relay_http_route_fn)(void *ud, const char *method, const char *pattern);

#ifdef __cplusplus
}
#endif
#endif
