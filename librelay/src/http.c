/* http: helpers for the transport-neutral request/response of librelay's REST handlers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relay/http.h"
#include "util.h"

const char *relay_http_header(const relay_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name && strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

/* RFC 9110 section 5.6.2: tchar. */
static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int name_ok(const char *n)
{
    if (!n || !*n)
        return 0;
    for (; *n; n++)
        if (!is_tchar((unsigned char)*n))
            return 0;
    return 1;
}

/* Field content: visible characters, spaces, tabs and obs-text; no CR, LF or other controls. */
static int value_ok(const char *v)
{
    for (; v && *v; v++) {
        unsigned char c = (unsigned char)*v;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

/* The value without surrounding spaces and tabs: [*b, *b + *n). */
static void trim_ows(const char *v, const char **b, size_t *n)
{
    while (*v == ' ' || *v == '\t')
        v++;
    size_t len = strlen(v);
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    *b = v;
    *n = len;
}

/* Content-Length: 1 to 18 digits (no sign, no list, no spaces inside). */
static int clen_ok(const char *v, const char **digits, size_t *n)
{
    trim_ows(v, digits, n);
    if (*n == 0 || *n > 18)
        return 0;
    for (size_t i = 0; i < *n; i++)
        if ((*digits)[i] < '0' || (*digits)[i] > '9')
            return 0;
    return 1;
}

/* Transfer-Encoding: "chunked" alone, any case. */
static int te_ok(const char *v)
{
    const char *b;
    size_t n;
    trim_ows(v, &b, &n);
    return n == 7 && strncasecmp(b, "chunked", 7) == 0;
}

/* Content-Length and Transfer-Encoding, each header on its own; 0 or the reason. */
static const char *check_length_fields(const relay_http_request_t *req, const char *http_version)
{
    const char *cl = NULL, *why = NULL;
    size_t cl_n = 0;
    int te = 0;
    for (size_t i = 0; i < req->n_headers && !why; i++) {
        const char *name = req->headers[i].name, *v = req->headers[i].value;
        if (!strcasecmp(name, "Content-Length")) {
            const char *d;
            size_t n;
            if (!clen_ok(v, &d, &n))
                why = "Content-Length is not a number";
            else if (cl && (n != cl_n || memcmp(d, cl, n)))
                why = "two different Content-Length values";
            cl = d;
            cl_n = n;
        } else if (!strcasecmp(name, "Transfer-Encoding")) {
            if (te++ || !te_ok(v))
                why = "Transfer-Encoding other than chunked";
            else if (http_version && !strcmp(http_version, "1.0"))
                why = "Transfer-Encoding in an HTTP/1.0 request";
        }
    }
    if (!why && cl && te)
        why = "Content-Length together with Transfer-Encoding";
    return why;
}

int relay_http_check_framing(const relay_http_request_t *req, const char *http_version,
                             const char **why)
{
    *why = NULL;
    for (size_t i = 0; i < req->n_headers && !*why; i++) {
        if (!name_ok(req->headers[i].name))
            *why = "a header name that is not a token";
        else if (!value_ok(req->headers[i].value))
            *why = "a control character in a header value";
    }
    if (!*why)
        *why = check_length_fields(req, http_version);
    return *why ? RELAY_ERR_INVALID : 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* URL-decodes [s, s+n) into buf (cap bytes incl. NUL), '+' as space; truncates at cap. */
static void url_decode(const char *s, size_t n, char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            buf[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            buf[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    buf[o] = '\0';
}

int relay_http_query_param(const relay_http_request_t *req, const char *name, char *buf, size_t cap)
{
    const char *q = req->query;
    size_t nl = strlen(name);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t klen = eq ? (size_t)(eq - q) : len;
        if (klen == nl && memcmp(q, name, nl) == 0) {
            if (cap)
                url_decode(eq ? eq + 1 : q + len, eq ? len - klen - 1 : 0, buf, cap);
            return 1;
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

void relay_http_response_set(relay_http_response_t *resp, int status, char *body)
{
    free(resp->body);
    resp->status = status;
    resp->body = body;
    resp->body_len = body ? strlen(body) : 0;
    if (!resp->content_type[0])
        relay_strlcpy(resp->content_type, "application/json", sizeof resp->content_type);
}

void relay_http_response_error(relay_http_response_t *resp, int code, const char *message)
{
    relay_http_response_set(resp, relay_err_http_status(code), relay_error_json(code, message));
}

void relay_http_response_add_header(relay_http_response_t *resp, const char *name,
                                    const char *value)
{
    if (resp->n_headers >= RELAY_HTTP_MAX_RESP_HEADERS)
        return;
    relay_strlcpy(resp->headers[resp->n_headers].name, name, sizeof resp->headers[0].name);
    relay_strlcpy(resp->headers[resp->n_headers].value, value, sizeof resp->headers[0].value);
    resp->n_headers++;
}

void relay_http_retry_after(relay_http_response_t *resp, int seconds)
{
    if (seconds <= 0)
        return;
    char v[16];
    snprintf(v, sizeof v, "%d", seconds);
    relay_http_response_add_header(resp, "retry-after", v);
}

void relay_http_response_clear(relay_http_response_t *resp)
{
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

/* The {name} segment at s (up to '/' or end) into arg; the end of the segment, or NULL. */
static const char *take_segment(const char *s, const char *end, char *arg, size_t cap)
{
    const char *seg = s;
    while (s < end && *s != '/')
        s++;
    size_t len = (size_t)(s - seg);
    if (!len || !arg || len >= cap)
        return NULL;
    memcpy(arg, seg, len);
    arg[len] = '\0';
    return s;
}

int relay_http_path_match(const char *pattern, const char *path, char *arg, size_t cap)
{
    if (!pattern || !path)
        return 0;
    const char *end = path + strlen(path);
    if (end - path > 1 && end[-1] == '/')
        end--;
    const char *p = pattern, *s = path;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close || !(s = take_segment(s, end, arg, cap)))
                return 0;
            p = close + 1;
        } else if (s < end && *s == *p) {
            s++;
            p++;
        } else {
            return 0;
        }
    }
    return s == end;
}
