/* http_util: CivetWeb ↔ librelay translation (requests, responses, the streaming sink) and JSON
 * logs. */
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "relay/limits.h"
#include "server.h"

/* ---- logging ---- */
static relay_log_level g_level = RELAY_LOG_INFO;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void server_set_log_level(relay_log_level level)
{
    g_level = level;
}

static const char *level_name(relay_log_level l)
{
    switch (l) {
    case RELAY_LOG_DEBUG:
        return "debug";
    case RELAY_LOG_INFO:
        return "info";
    case RELAY_LOG_WARN:
        return "warning";
    default:
        return "error";
    }
}

void server_log_fn(void *ud, relay_log_level level, const char *event, const char *msg,
                   const char *fields_json)
{
    (void)ud;
    if (level < g_level)
        return;
    json_t *o = NULL;
    if (fields_json)
        o = json_loads(fields_json, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char t[40];
    size_t n = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(t + n, sizeof t - n, ".%03ldZ", ts.tv_nsec / 1000000);
    json_object_set_new(o, "ts", json_string(t));
    json_object_set_new(o, "level", json_string(level_name(level)));
    json_object_set_new(o, "event", json_string(event ? event : "log"));
    json_object_set_new(o, "msg", json_string(msg ? msg : ""));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line)
        return;
    pthread_mutex_lock(&g_log_mu);
    fputs(line, stderr);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&g_log_mu);
    free(line);
}

void server_log(relay_log_level level, const char *event, const char *fields_json, const char *fmt,
                ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    server_log_fn(NULL, level, event, msg, fields_json);
}

/* ---- requests ---- */
static int read_body(struct mg_connection *conn, server_request_t *req, long long clen,
                     size_t max_body)
{
    size_t cap = clen >= 0 ? (size_t)clen : 65536, len = 0;
    req->body = malloc(cap + 1);
    if (!req->body)
        return RELAY_ERR_NOMEM;
    for (;;) {
        if (len == cap) {
            if (clen >= 0)
                break;
            if (cap > max_body)
                return RELAY_ERR_TOO_LARGE;
            size_t ncap = cap * 2 > max_body + 1 ? max_body + 1 : cap * 2;
            char *p = realloc(req->body, ncap + 1);
            if (!p)
                return RELAY_ERR_NOMEM;
            req->body = p;
            cap = ncap;
        }
        int n = mg_read(conn, req->body + len, cap - len);
        if (n < 0)
            return RELAY_ERR_IO;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (clen >= 0 && len < (size_t)clen)
        return RELAY_ERR_IO; /* the client sent less than it announced */
    if (len > max_body)
        return RELAY_ERR_TOO_LARGE;
    req->body[len] = '\0';
    req->http.body = req->body;
    req->http.body_len = len;
    return 0;
}

/*
 * Every X-Forwarded-For line joined in order: a proxy may add its own line after the client's,
 * and CivetWeb's mg_get_header would return only the first (the client's, forgeable). When they
 * do not fit, only the last line (the nearest proxy's) is kept. X-Real-IP: the last one.
 */
static const char *forwarded_for(const struct mg_request_info *ri, char *xff, size_t cap)
{
    const char *xri = NULL, *last = NULL;
    size_t len = 0;
    int overflow = 0;
    xff[0] = '\0';
    for (int i = 0; i < ri->num_headers; i++) {
        const char *n = ri->http_headers[i].name, *v = ri->http_headers[i].value;
        if (!strcasecmp(n, "X-Real-IP"))
            xri = v;
        if (strcasecmp(n, "X-Forwarded-For"))
            continue;
        last = v;
        int w = snprintf(xff + len, cap - len, "%s%s", len ? ", " : "", v);
        if (w < 0 || (size_t)w >= cap - len)
            overflow = 1;
        else
            len += (size_t)w;
    }
    if (overflow && (!last || snprintf(xff, cap, "%s", last) >= (int)cap))
        xff[0] = '\0';
    return xri;
}

int server_request_read(server_t *s, struct mg_connection *conn, server_request_t *req,
                        size_t max_body)
{
    memset(req, 0, sizeof *req);
    req->fd = server_conn_fd(conn);
    const struct mg_request_info *ri = mg_get_request_info(conn);
    req->http.method = ri->request_method;
    req->http.path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
    req->http.query = ri->query_string;
    int nh = ri->num_headers < SERVER_MAX_HEADERS ? ri->num_headers : SERVER_MAX_HEADERS;
    for (int i = 0; i < nh; i++) {
        req->headers[i].name = ri->http_headers[i].name;
        req->headers[i].value = ri->http_headers[i].value;
    }
    req->http.headers = req->headers;
    req->http.n_headers = (size_t)nh;
    /* The socket peer, unless it is a trusted proxy that says who it forwards for. */
    char xff[2048];
    const char *xri = forwarded_for(ri, xff, sizeof xff);
    if (relay_limits_client_ip(ri->remote_addr, xff[0] ? xff : NULL, xri,
                               (const char *const *)s->cfg->trusted_proxies.items,
                               s->cfg->trusted_proxies.n, req->client_ip,
                               sizeof req->client_ip) != 0)
        snprintf(req->client_ip, sizeof req->client_ip, "%s", ri->remote_addr);
    req->http.client_ip = req->client_ip;
    if (server_framing_check(s, conn, req) != 0)
        return RELAY_ERR_INVALID;
    if (ri->content_length > (long long)max_body) {
        /* Refused unread: the connection closes, so the body is never taken for a request. */
        char msg[128];
        snprintf(msg, sizeof msg, "request body of %lld bytes exceeds the limit of %zu bytes",
                 ri->content_length, max_body);
        server_count_refused("body_too_large");
        server_write_error_close(conn, 413, RELAY_ERR_TOO_LARGE, msg);
        return RELAY_ERR_TOO_LARGE;
    }
    const char *te = mg_get_header(conn, "Transfer-Encoding");
    if (ri->content_length <= 0 && !te)
        return 0;
    int rc = read_body(conn, req, ri->content_length, max_body);
    if (rc == RELAY_ERR_TOO_LARGE) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", max_body);
        server_count_refused("body_too_large");
        server_write_error_close(conn, 413, RELAY_ERR_TOO_LARGE, msg);
    } else if (rc == RELAY_ERR_NOMEM) {
        server_write_error(conn, RELAY_ERR_NOMEM, NULL);
    }
    return rc;
}

void server_request_free(server_request_t *req)
{
    free(req->body);
    req->body = NULL;
}

/* ---- responses: a head (and a short body) assembled in one buffer, sent in one write ---- */
/* Past this a response is not sent: far above any head, and above the largest held JSON answer. */
#define OUT_CAP (32u << 20)

void server_out_init(server_out_t *o)
{
    o->data = o->inline_buf;
    o->len = 0;
    o->cap = sizeof o->inline_buf;
    o->failed = 0;
}

void server_out_free(server_out_t *o)
{
    if (o->data != o->inline_buf)
        free(o->data);
    server_out_init(o);
}

void server_out_add(server_out_t *o, const void *p, size_t n)
{
    if (o->failed)
        return;
    if (o->len + n > o->cap) {
        size_t nc = o->cap * 2;
        while (nc < o->len + n)
            nc *= 2;
        char *d = nc <= OUT_CAP ? malloc(nc) : NULL;
        if (!d) {
            o->failed = 1;
            return;
        }
        memcpy(d, o->data, o->len);
        if (o->data != o->inline_buf)
            free(o->data);
        o->data = d;
        o->cap = nc;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void out_str(server_out_t *o, const char *s)
{
    server_out_add(o, s, strlen(s));
}

void server_out_header(server_out_t *o, const char *name, const char *value)
{
    out_str(o, name);
    server_out_add(o, ": ", 2);
    out_str(o, value);
    server_out_add(o, "\r\n", 2);
}

/* The Date header's value, formatted once a second per thread. */
static const char *http_date(void)
{
    static __thread time_t t_when;
    static __thread char t_date[40];
    time_t now = time(NULL);
    if (now != t_when) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(t_date, sizeof t_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        t_when = now;
    }
    return t_date;
}

/* Does the client keep the connection (CivetWeb's own rule: a Connection header naming
 * keep-alive, or HTTP/1.1 without one)? */
static int has_token(const char *list, const char *tok)
{
    size_t tl = strlen(tok);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        if (n == tl && !strncasecmp(p, tok, n))
            return 1;
        p += n;
    }
    return 0;
}

static int client_keeps_alive(struct mg_connection *conn)
{
    const char *h = mg_get_header(conn, "Connection");
    if (h)
        return has_token(h, "keep-alive");
    const char *v = mg_get_request_info(conn)->http_version;
    return v && !strcmp(v, "1.1");
}

void server_out_start(server_out_t *o, struct mg_connection *conn, int status)
{
    char line[160];
    const char *v = mg_get_request_info(conn)->http_version;
    snprintf(line, sizeof line, "HTTP/%s %d %s\r\n", v && !strcmp(v, "1.0") ? "1.0" : "1.1", status,
             mg_get_response_code_text(conn, status));
    out_str(o, line);
    server_out_header(o, "Date", http_date());
    server_cors_headers(o);
}

int server_out_end_head(server_out_t *o, struct mg_connection *conn, int close)
{
    if (close || !client_keeps_alive(conn)) {
        mg_disable_keep_alive(conn);
        close = 1;
    }
    server_out_header(o, "Connection", close ? "close" : "keep-alive");
    server_out_add(o, "\r\n", 2);
    return close;
}

int server_out_send(server_out_t *o, struct mg_connection *conn)
{
    int rc = o->failed ? -1 : mg_write(conn, o->data, o->len) == (int)o->len ? 0 : -1;
    server_out_free(o);
    return rc;
}

static int is_connection_close(const char *name, const char *value)
{
    return !strcasecmp(name, "Connection") && has_token(value, "close");
}

/* A whole answer of known length into o: head and body, for one write. */
static void build_whole(server_out_t *o, struct mg_connection *conn, int status,
                        const char *content_type, const relay_http_header_t *h, size_t n,
                        const char *body, size_t len, int head_only)
{
    server_out_start(o, conn, status);
    if (content_type)
        server_out_header(o, "Content-Type", content_type);
    int close = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_connection_close(h[i].name, h[i].value))
            close = 1;
        else if (strcasecmp(h[i].name, "Connection"))
            server_out_header(o, h[i].name, h[i].value);
    }
    char clen[32];
    snprintf(clen, sizeof clen, "%zu", len);
    server_out_header(o, "Content-Length", clen);
    server_out_end_head(o, conn, close);
    if (!head_only)
        server_out_add(o, body, len);
}

static int write_whole(struct mg_connection *conn, int status, const char *content_type,
                       const relay_http_header_t *h, size_t n, const char *body, size_t len,
                       int head_only)
{
    server_out_t o;
    server_out_init(&o);
    build_whole(&o, conn, status, content_type, h, n, body, len, head_only);
    return server_out_send(&o, conn);
}

void server_write_response(struct mg_connection *conn, const relay_http_response_t *resp)
{
    relay_http_header_t h[RELAY_HTTP_MAX_RESP_HEADERS];
    size_t n = resp->n_headers < RELAY_HTTP_MAX_RESP_HEADERS ? resp->n_headers
                                                             : RELAY_HTTP_MAX_RESP_HEADERS;
    for (size_t i = 0; i < n; i++) {
        h[i].name = resp->headers[i].name;
        h[i].value = resp->headers[i].value;
    }
    const char *ct = resp->content_type[0] ? resp->content_type
                     : resp->body_len      ? "application/json"
                                           : NULL;
    const char *method = mg_get_request_info(conn)->request_method;
    write_whole(conn, resp->status, ct, h, n, resp->body, resp->body_len,
                method && !strcmp(method, "HEAD"));
}

void server_write_json(struct mg_connection *conn, int status, const char *json)
{
    relay_http_response_t resp = {
        .status = status, .body = (char *)json, .body_len = json ? strlen(json) : 0};
    snprintf(resp.content_type, sizeof resp.content_type, "application/json");
    server_write_response(conn, &resp);
}

void server_write_error(struct mg_connection *conn, int code, const char *message)
{
    char *json = relay_error_json(code, message);
    server_write_json(conn, relay_err_http_status(code), json ? json : "{\"type\":\"error\"}");
    relay_free_string(json);
}

/* ---- the streaming sink ---- */
static int sink_head(void *ud, int status, const relay_http_header_t *headers, size_t n)
{
    server_sink_t *ctx = ud;
    struct mg_connection *conn = ctx->conn;
    server_out_t o;
    server_out_init(&o);
    server_out_start(&o, conn, status);
    for (size_t i = 0; i < n; i++)
        server_out_header(&o, headers[i].name, headers[i].value);
    /* An HTTP/1.0 client cannot read chunks: the body runs to the connection's end. */
    const char *v = mg_get_request_info(conn)->http_version;
    ctx->chunked = !ctx->head_only && !(v && !strcmp(v, "1.0"));
    if (ctx->chunked)
        server_out_header(&o, "Transfer-Encoding", "chunked");
    server_out_header(&o, "X-Accel-Buffering", "no");
    server_out_end_head(&o, conn, !ctx->chunked && !ctx->head_only);
    return server_out_send(&o, conn);
}

/*
 * A held answer of known length: head, content-length and body assembled now and written in one
 * go by server_sink_end, after relay_proxy has settled the request. A client that has its whole
 * answer may send its next request at once, and that one must see this one's real cost, not its
 * reservation (as it did when the chunked end was the last thing written).
 */
static int sink_whole(void *ud, int status, const relay_http_header_t *headers, size_t n,
                      const char *body, size_t len)
{
    server_sink_t *ctx = ud;
    ctx->whole = 1;
    build_whole(&ctx->pending, ctx->conn, status, NULL, headers, n, body, len, ctx->head_only);
    return ctx->pending.failed ? -1 : 0;
}

#define CHUNK_PIECE 16384

/* One chunk per write: size line, data and CRLF leave together (one packet, not three). The
 * frame is on the heap: on the stack it put mg_write's frames 16 KiB deeper, and a worker keeps
 * every stack page it touched (perf -e page-faults at 1,000 new streams: sink_body 14%). */
static int sink_body(void *ud, const char *data, size_t len)
{
    server_sink_t *ctx = ud;
    struct mg_connection *conn = ctx->conn;
    if (ctx->head_only)
        return 0; /* an answer to HEAD has no body */
    if (!ctx->chunked)
        return len && mg_write(conn, data, len) != (int)len ? -1 : 0;
    if (!ctx->frame && !(ctx->frame = malloc(CHUNK_PIECE + 32)))
        return -1;
    char *frame = ctx->frame;
    while (len) {
        size_t n = len > CHUNK_PIECE ? CHUNK_PIECE : len;
        int hl = snprintf(frame, 32, "%zx\r\n", n);
        memcpy(frame + hl, data, n);
        memcpy(frame + hl + n, "\r\n", 2);
        size_t total = (size_t)hl + n + 2;
        if (mg_write(conn, frame, total) != (int)total)
            return -1;
        data += n;
        len -= n;
    }
    return 0;
}

/* After the head: the socket, for librelay's I/O thread to write the body to (mg_write keeps
 * nothing buffered, and CivetWeb's sockets are non-blocking). */
static int sink_direct(void *ud, int *fd, int *chunked)
{
    server_sink_t *ctx = ud;
    if (ctx->fd < 0 || ctx->head_only)
        return -1;
    *fd = ctx->fd;
    *chunked = ctx->chunked;
    return 0;
}

void server_sink_end(server_sink_t *ctx)
{
    if (ctx->whole)
        server_out_send(&ctx->pending, ctx->conn);
    else if (ctx->chunked && !ctx->head_only)
        mg_write(ctx->conn, "0\r\n\r\n", 5);
}

void server_sink_free(server_sink_t *ctx)
{
    free(ctx->frame);
    ctx->frame = NULL;
    server_out_free(&ctx->pending);
}

void server_sink_init(relay_sink_t *sink, server_sink_t *ctx, struct mg_connection *conn, int fd,
                      const char *method)
{
    memset(ctx, 0, sizeof *ctx);
    server_out_init(&ctx->pending);
    ctx->conn = conn;
    ctx->fd = fd;
    ctx->head_only = strcmp(method, "HEAD") == 0;
    sink->ud = ctx;
    sink->head = sink_head;
    sink->body = sink_body;
    sink->whole = sink_whole;
    sink->direct = sink_direct;
}
