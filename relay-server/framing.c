/* framing: refuses, before any route runs, a request another HTTP parser could frame differently
 * (request smuggling), and answers CivetWeb's own refusals in Anthropic's error shape. */
#include <stdio.h>
#include <string.h>

#include "relay/metrics.h"
#include "server.h"

/* CivetWeb 1.15 keeps at most this many header fields and drops the rest without a word. */
#define CIVETWEB_MAX_HEADERS 64

static relay_metric_t *g_refused; /* relay_http_refused_total{reason} */

int server_framing_setup(server_t *s)
{
    static const char *const labels[] = {"reason"};
    const relay_metric_desc_t d = {
        .name = "relay_http_refused_total",
        .help = "Requests refused before routing: framing (smuggling), header_fields, "
                "head_too_large, head_timeout, malformed, body_too_large",
        .type = RELAY_METRIC_COUNTER,
        .label_names = labels,
        .n_labels = 1,
        .bounded_label = -1,
    };
    return relay_metrics_register(relay_metrics_registry(s->relay), &d, &g_refused) ? -1 : 0;
}

void server_count_refused(const char *reason)
{
    if (g_refused)
        relay_metrics_add(g_refused, (const char *const[]){reason}, 1);
}

void server_write_error_close(struct mg_connection *conn, int status, int code, const char *msg)
{
    relay_http_response_t resp = {0};
    relay_http_response_error(&resp, code, msg);
    resp.status = status;
    relay_http_response_add_header(&resp, "Connection", "close");
    server_write_response(conn, &resp);
    relay_http_response_clear(&resp);
}

/*
 * CivetWeb 1.15 parses the request head in place: it ends each line by writing NUL over its CR
 * and LF, and ends each field name with NUL over the colon. So what it skipped is still there
 * to see. The line after the string s starts past those NULs (CR LF, or a bare LF).
 */
static const char *next_line(const char *s)
{
    const char *p = s + strlen(s);
    return p[1] == '\0' ? p + 2 : p + 1;
}

/*
 * CivetWeb ends the header block silently at a line it cannot read as "name: value": an
 * obs-folded continuation (a line starting with a space or tab), a line starting with a colon,
 * or the 65th field. What follows is dropped, though a proxy in front may have read it as
 * fields (a Content-Length, say). So each field must start right where the previous line ended,
 * only spaces and tabs may stand between a colon and the value, and the last line must be
 * followed by the empty one. Returns NULL, or why not (431 for too many fields).
 */
static const char *check_layout(const struct mg_request_info *ri, int *status)
{
    *status = 400;
    const char *line = ri->http_version ? next_line(ri->http_version) : NULL;
    for (int i = 0; line && i < ri->num_headers; i++) {
        const char *name = ri->http_headers[i].name, *value = ri->http_headers[i].value;
        if (name != line)
            return "a malformed header line";
        for (const char *p = name + strlen(name) + 1; p < value; p++)
            if (*p != ' ' && *p != '\t')
                return "whitespace between a header name and its colon";
        line = next_line(value);
    }
    if (line && (*line == '\r' || *line == '\n'))
        return NULL;
    if (ri->num_headers >= CIVETWEB_MAX_HEADERS) {
        *status = 431;
        return "more than 64 header fields";
    }
    return "a folded (obs-fold) or malformed header line";
}

int server_framing_check(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    int status;
    const char *why = check_layout(ri, &status);
    if (!why && relay_http_check_framing(&req->http, ri->http_version, &why) == 0)
        return 0;
    (void)s;
    char msg[160];
    snprintf(msg, sizeof msg, "request refused: %s", why);
    char fields[128];
    snprintf(fields, sizeof fields, "{\"client_ip\":\"%s\",\"status\":%d}", req->client_ip, status);
    server_log(RELAY_LOG_WARN, "request.refused", fields, "%s; connection closed", msg);
    server_count_refused(status == 431 ? "header_fields" : "framing");
    server_write_error_close(conn, status, status == 431 ? RELAY_ERR_TOO_LARGE : RELAY_ERR_INVALID,
                             msg);
    return RELAY_ERR_INVALID;
}

/* What a head CivetWeb could not read was: too slow, too large, or malformed. It cannot say, so
 * look at the connection: the time and the bytes since its previous request ended. */
static int classify_unread_head(server_t *s, struct mg_connection *conn, char *msg, size_t cap,
                                const char **reason)
{
    int64_t ms = 0;
    uint64_t bytes = 0;
    int fd = server_conn_fd(conn);
    if (fd >= 0 && server_conn_since_mark(fd, &ms, &bytes) == 0) {
        if (ms >= s->cfg->header_timeout_ms) {
            snprintf(msg, cap, "the request line and headers did not arrive within %d ms",
                     s->cfg->header_timeout_ms);
            *reason = "head_timeout";
            return 408;
        }
        if (bytes >= s->cfg->max_header_bytes) {
            snprintf(msg, cap, "the request line and headers exceed the limit of %zu bytes",
                     s->cfg->max_header_bytes);
            *reason = "head_too_large";
            return 431;
        }
    }
    snprintf(msg, cap, "malformed request line or headers");
    *reason = "malformed";
    return 400;
}

int server_http_error(struct mg_connection *conn, int status, const char *errmsg)
{
    server_t *s = mg_get_user_data(mg_get_context(conn));
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char msg[160];
    const char *reason = "malformed";
    if (status == 400 && (!ri || !ri->request_method))
        status = classify_unread_head(s, conn, msg, sizeof msg, &reason);
    else
        snprintf(msg, sizeof msg, "%s", errmsg && *errmsg ? errmsg : "bad request");
    int code = status == 413 || status == 431 ? RELAY_ERR_TOO_LARGE
               : status >= 500                ? RELAY_ERR_INTERNAL
                                              : RELAY_ERR_INVALID;
    server_count_refused(reason);
    server_write_error_close(conn, status, code, msg);
    return 0;
}
