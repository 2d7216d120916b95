/* server: what relay-server's files share: the running server's state and the HTTP glue. */
#ifndef RELAY_SERVER_H
#define RELAY_SERVER_H

#include <civetweb.h>
#include <stddef.h>
#include <stdint.h>

#include "relay/config.h"
#include "relay/forward.h"
#include "relay/http.h"
#include "relay/relay.h"

typedef struct server {
    relay_config_t *cfg;
    relay_t *relay;
    struct mg_context *ctx;
    int stopping; /* atomic: draining after SIGTERM */
    int stopped;  /* atomic: CivetWeb has stopped */
    int inflight; /* atomic: requests being handled */
} server_t;

/* ---- logging (http_util.c): one JSON object a line on stderr ---- */
void server_log_fn(void *ud, relay_log_level level, const char *event, const char *msg,
                   const char *fields_json);
void server_log(relay_log_level level, const char *event, const char *fields_json, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));
void server_set_log_level(relay_log_level level);

/* ---- requests (http_util.c) ---- */
#define SERVER_MAX_HEADERS 64

/* A CivetWeb request translated for librelay; owns the body. */
typedef struct server_request {
    relay_http_request_t http;
    relay_http_header_t headers[SERVER_MAX_HEADERS];
    char client_ip[64];
    char *body;
    int fd; /* the plain socket behind the connection (server_conn_fd), -1: unknown */
} server_request_t;

/*
 * Reads the request (body up to max_body bytes) into req. Returns 0, or RELAY_ERR_TOO_LARGE
 * (answered 413) / RELAY_ERR_INVALID (framing refused, answered 400 or 431; both close the
 * connection) / RELAY_ERR_IO (client gone; nothing to answer).
 */
int server_request_read(server_t *s, struct mg_connection *conn, server_request_t *req,
                        size_t max_body);
void server_request_free(server_request_t *req);

/*
 * A response head assembled in one buffer (spilling to the heap past the inline part, capped at
 * 32 MiB), so that a head, or a head with its body, leaves in one write: CivetWeb's own
 * mg_response_header_send writes every header line separately, a packet each with tcp_nodelay.
 */
typedef struct server_out {
    char *data;
    size_t len, cap;
    int failed;            /* out of memory or past the cap: nothing is sent */
    char inline_buf[2048]; /* most heads; two of these sit on a streaming worker's stack */
} server_out_t;
void server_out_init(server_out_t *o);
void server_out_free(server_out_t *o);
void server_out_add(server_out_t *o, const void *p, size_t n);
void server_out_header(server_out_t *o, const char *name, const char *value);
/* The status line, Date and the request's CORS headers. */
void server_out_start(server_out_t *o, struct mg_connection *conn, int status);
/* The Connection header and the blank line; close (or a client that does not keep the
 * connection) makes CivetWeb close it after this answer. Returns whether it will close. */
int server_out_end_head(server_out_t *o, struct mg_connection *conn, int close);
/* Writes everything in one mg_write and frees o. 0, or -1 when the client is gone. */
int server_out_send(server_out_t *o, struct mg_connection *conn);

/* Writes a complete response (status, headers, body) with a content-length, in one write. */
void server_write_response(struct mg_connection *conn, const relay_http_response_t *resp);
/* Writes Anthropic error JSON for code and message. */
void server_write_error(struct mg_connection *conn, int code, const char *message);
/* Writes a JSON body with status. */
void server_write_json(struct mg_connection *conn, int status, const char *json);
/* The sink librelay streams a proxied answer into: chunked transfer, one write per chunk; a
 * held answer of known length goes out whole with a content-length. */
typedef struct server_sink {
    struct mg_connection *conn;
    int head_only; /* a HEAD request: headers only, no body and no chunked framing */
    int chunked;   /* the body is chunked (HTTP/1.1); else it runs to the connection's end */
    int whole;     /* the answer is whole (content-length), waiting in pending */
    int fd;        /* the client socket for librelay's direct writes, -1: none */
    char *frame;   /* a chunk's size line, data and CRLF, for one write (heap: see sink_body) */
    server_out_t pending;
} server_sink_t;
void server_sink_init(relay_sink_t *sink, server_sink_t *ctx, struct mg_connection *conn, int fd,
                      const char *method);
/* Ends the answer: writes a pending whole answer, or ends a chunked body (the zero-length
 * chunk). Call once the request is settled, unless the client left or the body was cut. */
void server_sink_end(server_sink_t *ctx);
/* Frees what the sink holds (a whole answer never sent). Always call it. */
void server_sink_free(server_sink_t *ctx);

/* ---- sockets (sockets.c) ---- */
/* The plain socket behind conn (-1: unknown, or TLS). Checked against the peer address. */
int server_conn_fd(struct mg_connection *conn);
/* Has the client closed its side (or the connection failed)? Never blocks. */
int server_conn_closed(int fd);
/* Has no request on fd ended since it was accepted? Only such a request can have waited in
 * CivetWeb's queue: a keep-alive connection keeps its worker between requests. */
int server_conn_first(int fd);
/* Notes that a request on fd ended: its time and the bytes received so far (TCP_INFO), so that
 * a refusal by CivetWeb of the next request can tell a slow one from an oversized one. */
void server_conn_mark(int fd);
/* Milliseconds and bytes received since the last mark (or the accept). -1: fd unknown. */
int server_conn_since_mark(int fd, int64_t *ms, uint64_t *bytes);

/* ---- framing (framing.c): checks before any route runs ---- */
/* Refuses a request whose framing another parser could read differently (request smuggling):
 * answers 400 (or 431 for too many header fields) with Connection: close and returns
 * RELAY_ERR_INVALID; 0 when the request may go on. */
int server_framing_check(server_t *s, struct mg_connection *conn, server_request_t *req);
/* CivetWeb's http_error callback: its own refusals (oversized or slow request heads, bad
 * versions) in Anthropic's error shape, with the right status, and the connection closed. */
int server_http_error(struct mg_connection *conn, int status, const char *msg);
/* Registers relay_http_refused_total (at start, before CivetWeb runs). 0 or -1. */
int server_framing_setup(server_t *s);
/* Counts a request refused before routing, by reason. */
void server_count_refused(const char *reason);
/* Writes the error JSON of code with this HTTP status and Connection: close. */
void server_write_error_close(struct mg_connection *conn, int status, int code, const char *msg);

/* ---- CORS (cors.c), per request on the worker's thread ---- */
/* Decides the request's CORS headers; answers a preflight itself (returns 1 then). */
int server_cors_begin(server_t *s, struct mg_connection *conn);
/* Adds the decided Access-Control-* headers to a response being started (no-op when none). */
void server_cors_headers(server_out_t *o);
void server_cors_end(void);

/* ---- routes ---- */
int route_proxy(server_t *s, struct mg_connection *conn, server_request_t *req);
int route_admin(server_t *s, struct mg_connection *conn, server_request_t *req);
int route_health(server_t *s, struct mg_connection *conn, server_request_t *req);
/* routes_user.c: /api/usage...; route_stats_admin returns 0 when the path is not a statistics one.
 */
int route_user(server_t *s, struct mg_connection *conn, server_request_t *req);
int route_stats_admin(server_t *s, struct mg_connection *conn, server_request_t *req);
/* routes_metrics.c: GET metrics_path; and the metrics key label and alert settings at start. */
int route_metrics(server_t *s, struct mg_connection *conn, server_request_t *req);
int server_observability_setup(server_t *s);
/* routes_console.c: GET/HEAD /console and /console/<file>, the embedded web console. */
int route_console(server_t *s, struct mg_connection *conn, server_request_t *req);

#endif
