/* cors: security.cors for browser clients: preflight answers and the headers on every answer. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "server.h"

/* The Access-Control-Allow-Origin value for this request's thread, NULL when none applies. */
static __thread const char *t_allow_origin;
static __thread char t_origin_buf[512];

static int list_has(const relay_config_strlist_t *l, const char *v)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->items[i], v))
            return 1;
    return 0;
}

/* Joins a list with ", ", or gives dflt when the list is empty or is "*". */
static void joined(const relay_config_strlist_t *l, const char *dflt, char *out, size_t cap)
{
    if (l->n == 0 || list_has(l, "*")) {
        snprintf(out, cap, "%s", dflt);
        return;
    }
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < l->n && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? ", " : "", l->items[i]);
}

int server_cors_begin(server_t *s, struct mg_connection *conn)
{
    t_allow_origin = NULL;
    const relay_config_t *c = s->cfg;
    const char *origin = mg_get_header(conn, "Origin");
    if (!c->cors_enabled || !origin || !*origin)
        return 0;
    if (list_has(&c->cors_origins, "*") && !c->cors_allow_credentials) {
        t_allow_origin = "*";
    } else if (list_has(&c->cors_origins, "*") || list_has(&c->cors_origins, origin)) {
        /* With credentials the browser needs the origin itself, never "*". */
        snprintf(t_origin_buf, sizeof t_origin_buf, "%s", origin);
        t_allow_origin = t_origin_buf;
    } else {
        return 0;
    }
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *want = mg_get_header(conn, "Access-Control-Request-Method");
    if (strcmp(ri->request_method, "OPTIONS") || !want)
        return 0;
    /* A preflight: answered here, never forwarded. */
    char methods[256], headers[512], age[16];
    joined(&c->cors_methods, "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD", methods,
           sizeof methods);
    const char *asked = mg_get_header(conn, "Access-Control-Request-Headers");
    joined(&c->cors_headers, asked ? asked : "", headers, sizeof headers);
    snprintf(age, sizeof age, "%d", c->cors_max_age);
    server_out_t o;
    server_out_init(&o);
    server_out_start(&o, conn, 204);
    server_out_header(&o, "Access-Control-Allow-Methods", methods);
    if (headers[0])
        server_out_header(&o, "Access-Control-Allow-Headers", headers);
    server_out_header(&o, "Access-Control-Max-Age", age);
    server_out_header(&o, "Content-Length", "0");
    server_out_end_head(&o, conn, 0);
    server_out_send(&o, conn);
    return 1;
}

void server_cors_headers(server_out_t *o)
{
    if (!t_allow_origin)
        return;
    server_out_header(o, "Access-Control-Allow-Origin", t_allow_origin);
    if (strcmp(t_allow_origin, "*")) {
        server_out_header(o, "Vary", "Origin");
        server_out_header(o, "Access-Control-Allow-Credentials", "true");
    }
    /* What a browser client of the API needs to read from an answer. */
    server_out_header(
        o, "Access-Control-Expose-Headers",
        "request-id, retry-after, x-should-retry, anthropic-ratelimit-requests-limit, "
        "anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset");
}

void server_cors_end(void)
{
    t_allow_origin = NULL;
}
