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
    if (ri->content_length > (long long)max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body of %lld bytes exceeds the limit of %zu bytes",
                 ri->content_length, max_body);
        server_write_error(conn, RELAY_ERR_TOO_LARGE, msg);
        return RELAY_ERR_TOO_LARGE;
    }
    const char *te = mg_get_header(conn, "Transfer-Encoding");
    if (ri->content_length <= 0 && !te)
        return 0;
    int rc = read_body(conn, req, ri->content_length, max_body);
    if (rc == RELAY_ERR_TOO_LARGE) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", max_body);
        server_write_error(conn, RELAY_ERR_TOO_LARGE, msg);
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

/* ---- responses ---- */
void server_write_response(struct mg_connection *conn, const relay_http_response_t *resp)
{
    char clen[32];
    snprintf(clen, sizeof clen, "%zu", resp->body_len);
    mg_response_header_start(conn, resp->status);
    server_cors_headers(conn);
    if (resp->body_len || resp->content_type[0])
        mg_response_header_add(conn, "Content-Type",
                               resp->content_type[0] ? resp->content_type : "application/json", -1);
    for (size_t i = 0; i < resp->n_headers; i++)
        mg_response_header_add(conn, resp->headers[i].name, resp->headers[i].value, -1);
    mg_response_header_add(conn, "Content-Length", clen, -1);
    mg_response_header_send(conn);
    if (resp->body_len)
        mg_write(conn, resp->body, resp->body_len);
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
    if (mg_response_header_start(conn, status) != 0)
        return -1;
    server_cors_headers(conn);
    for (size_t i = 0; i < n; i++)
        mg_response_header_add(conn, headers[i].name, headers[i].value, -1);
    if (!ctx->head_only)
        mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
    mg_response_header_add(conn, "X-Accel-Buffering", "no", -1);
    return mg_response_header_send(conn) == 0 ? 0 : -1;
}

static int sink_body(void *ud, const char *data, size_t len)
{
    server_sink_t *ctx = ud;
    struct mg_connection *conn = ctx->conn;
    if (ctx->head_only)
        return 0; /* an answer to HEAD has no body */
    while (len) {
        unsigned int n = len > 1u << 30 ? 1u << 30 : (unsigned int)len;
        if (mg_send_chunk(conn, data, n) <= 0)
            return -1;
        data += n;
        len -= n;
    }
    return 0;
}

void server_sink_init(relay_sink_t *sink, server_sink_t *ctx, struct mg_connection *conn,
                      const char *method)
{
    ctx->conn = conn;
    ctx->head_only = strcmp(method, "HEAD") == 0;
    sink->ud = ctx;
    sink->head = sink_head;
    sink->body = sink_body;
}
