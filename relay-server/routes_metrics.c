/* routes_metrics: GET /metrics (Prometheus text), guarded by an optional token or IP list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/maintenance.h"
#include "relay/metrics.h"
#include "server.h"

int server_observability_setup(server_t *s)
{
    relay_config_t *cfg = s->cfg;
    if (relay_metrics_set_key_label(s->relay, cfg->metrics_key_label) != 0) {
        server_log(RELAY_LOG_ERROR, "config.invalid", NULL,
                   "monitoring.metrics.key_label: expected name, id or off");
        return -1;
    }
    if (server_framing_setup(s) != 0)
        return -1;
    relay_alert_options_t ao = {
        .thresholds = cfg->n_alert_thresholds ? cfg->alert_thresholds : NULL,
        .n_thresholds = cfg->n_alert_thresholds,
        .webhook_url = cfg->alert_webhook_url,
        .webhook_timeout_ms = cfg->alert_webhook_timeout_ms,
    };
    relay_error_t err = {0};
    if (relay_maintenance_set_alerts(s->relay, &ao, &err) != 0) {
        server_log(RELAY_LOG_ERROR, "config.invalid", NULL, "alerts: %s", err.message);
        return -1;
    }
    return 0;
}

int route_metrics(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    relay_config_t *cfg = s->cfg;
    if (strcmp(req->http.method, "GET")) {
        server_write_error(conn, RELAY_ERR_INVALID, "method not allowed: use GET");
        return 1;
    }
    int rc = relay_metrics_check_access(&req->http, cfg->metrics_token,
                                        (const char *const *)cfg->metrics_allowed_ips.items,
                                        cfg->metrics_allowed_ips.n);
    if (rc) {
        relay_http_response_t resp = {0};
        relay_http_response_error(&resp, rc,
                                  rc == RELAY_ERR_AUTH ? "metrics need a valid bearer token"
                                                       : "metrics are not served to this address");
        if (rc == RELAY_ERR_AUTH)
            relay_http_response_add_header(&resp, "www-authenticate", "Bearer");
        server_write_response(conn, &resp);
        relay_http_response_clear(&resp);
        return 1;
    }
    relay_http_response_t resp = {0};
    char *text = NULL;
    rc = relay_metrics_scrape(s->relay, &text, NULL);
    if (rc) {
        server_write_error(conn, rc, NULL);
        return 1;
    }
    snprintf(resp.content_type, sizeof resp.content_type,
             "text/plain; version=0.0.4; charset=utf-8");
    relay_http_response_set(&resp, 200, text);
    server_write_response(conn, &resp);
    relay_http_response_clear(&resp);
    return 1;
}
