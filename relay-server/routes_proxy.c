/* routes_proxy: everything outside the relay's own routes goes to the upstream through relay_proxy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/proxy.h"
#include "server.h"

/* Claude Code's side traffic that needs no upstream: connectivity probes and telemetry. */
static int side_traffic(server_t *s, struct mg_connection *conn, const relay_http_request_t *req)
{
    if (!strcmp(req->method, "HEAD") &&
        (!strcmp(req->path, "/") || !strcmp(req->path, "/api/hello"))) {
        relay_http_response_t resp = {.status = 200};
        server_write_response(conn, &resp);
        return 1;
    }
    if (!strcmp(req->method, "POST") && !strncmp(req->path, "/api/event_logging/", 19) &&
        !s->cfg->forward_event_logging) {
        server_write_json(conn, 200, "{}");
        return 1;
    }
    return 0;
}

/* What a proxied request keeps while it runs, on the heap: a worker keeps every stack page it
 * ever touched, and these 7 KiB were most of route_proxy's frame (perf -e page-faults). */
typedef struct proxy_call {
    relay_sink_t sink;
    server_sink_t ctx;
    relay_proxy_result_t res;
} proxy_call_t;

static int proxy_call(server_t *s, struct mg_connection *conn, server_request_t *req,
                      proxy_call_t *c)
{
    relay_sink_t *sink = &c->sink;
    server_sink_t *ctx = &c->ctx;
    server_sink_init(sink, ctx, conn, req->fd, req->http.method);
    /* A client that gave up while its request waited for a worker is answered by no one and
     * forwarded to no one: nothing was done for it, so nothing is billed. Only a connection's
     * first request can have waited (strace: one poll a request saved). */
    if (ctx->fd >= 0 && server_conn_first(ctx->fd) && server_conn_closed(ctx->fd)) {
        mg_disable_keep_alive(conn);
        server_log(RELAY_LOG_INFO, "proxy.client_gone_before_start", NULL,
                   "%s %s: the client closed the connection before the request was handled; not "
                   "forwarded",
                   req->http.method, req->http.path);
        server_sink_free(ctx);
        return 1;
    }
    relay_proxy_result_t *res = &c->res;
    relay_proxy(s->relay, &req->http, sink, res);
    /* Close the chunked body, unless the client left, the answer to HEAD has none, or the
     * upstream cut a passed-through body (the client must see it incomplete, not whole). */
    int truncated = res->fwd.cut && !res->fwd.stream && res->fwd.error_code == RELAY_ERR_UPSTREAM &&
                    res->status >= 200 && res->status < 300;
    if (res->status && !res->fwd.client_gone && !truncated)
        server_sink_end(ctx);
    else if (truncated)
        mg_disable_keep_alive(conn); /* an unterminated body: the connection cannot be reused */
    server_sink_free(ctx);
    if (res->fwd.attempts > 1 || res->fwd.cut || res->fwd.client_gone) {
        char fields[512];
        snprintf(fields, sizeof fields,
                 "{\"key_id\":\"%s\",\"status\":%d,\"attempts\":%d,\"cut\":%d,\"client_gone\":%d,"
                 "\"estimated\":%d}",
                 res->key_id, res->status, res->fwd.attempts, res->fwd.cut, res->fwd.client_gone,
                 res->fwd.estimated);
        server_log(RELAY_LOG_INFO, "proxy.request", fields, "%s %s", req->http.method,
                   req->http.path);
    }
    return 1;
}

int route_proxy(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    if (side_traffic(s, conn, &req->http))
        return 1;
    /* /api/... belongs to the relay (the usage API), never to the upstream. */
    if (!strcmp(req->http.path, "/api") || !strncmp(req->http.path, "/api/", 5)) {
        if (strncmp(req->http.path, "/api/event_logging/", 19) != 0) {
            server_write_error(conn, RELAY_ERR_NOT_FOUND, "no such relay API route");
            return 1;
        }
    }
    proxy_call_t *c = malloc(sizeof *c);
    if (!c) {
        server_write_error(conn, RELAY_ERR_NOMEM, "out of memory");
        return 1;
    }
    int rc = proxy_call(s, conn, req, c);
    free(c);
    return rc;
}
