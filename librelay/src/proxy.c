/* proxy: one client request's whole way: authenticate → admit → forward → settle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "forward_internal.h"
#include "internal.h"
#include "metrics_internal.h"
#include "relay/keys.h"
#include "relay/limits.h"
#include "relay/proxy.h"
#include "relay/tokens.h"
#include "relay/usage.h"
#include "upstreams_internal.h"
#include "util.h"

const char *relay_proxy_request_key(const relay_http_request_t *req, char *buf, size_t cap)
{
    const char *k = relay_http_header(req, "x-api-key");
    if (k && *k)
        return relay_strlcpy(buf, k, cap);
    const char *a = relay_http_header(req, "authorization");
    if (a && strncasecmp(a, "Bearer ", 7) == 0) {
        a += 7;
        while (*a == ' ')
            a++;
        if (*a)
            return relay_strlcpy(buf, a, cap);
    }
    return NULL;
}

/* Writes a complete response (a refusal) through the sink. */
static void sink_write_response(const relay_sink_t *sink, const relay_http_response_t *resp,
                                int *gone)
{
    relay_http_header_t h[RELAY_HTTP_MAX_RESP_HEADERS + 1];
    size_t n = 0;
    h[n].name = "content-type";
    h[n++].value = resp->content_type[0] ? resp->content_type : "application/json";
    for (size_t i = 0; i < resp->n_headers; i++) {
        h[n].name = resp->headers[i].name;
        h[n++].value = resp->headers[i].value;
    }
    if (relay_sink_write_whole(sink, resp->status, h, n, resp->body, resp->body_len))
        *gone = 1;
}

static int refuse_after(const relay_sink_t *sink, relay_proxy_result_t *res, int code,
                        const char *msg, const char *reason, const relay_admission_t *adm,
                        int retry_after_s)
{
    relay_http_response_t resp = {0};
    relay_http_response_error(&resp, code, msg);
    if (adm)
        relay_limits_refusal_headers(adm, code, &resp);
    relay_http_retry_after(&resp, retry_after_s);
    int gone = 0;
    sink_write_response(sink, &resp, &gone);
    res->status = resp.status;
    res->refused = code;
    relay_strlcpy(res->refusal_reason, reason, sizeof res->refusal_reason);
    relay_http_response_clear(&resp);
    return gone ? RELAY_ERR_CLIENT_GONE : 0;
}

static int refuse(const relay_sink_t *sink, relay_proxy_result_t *res, int code, const char *msg,
                  const char *reason, const relay_admission_t *adm)
{
    return refuse_after(sink, res, code, msg, reason, adm, 0);
}

/* Bodies the relay reads: every billed call (for its reservation and model check) and
 * count_tokens (for its model check). */
static int reads_body(const relay_http_request_t *req)
{
    return relay_forward_is_billable(req) || (strcmp(req->method, "POST") == 0 &&
                                              strcmp(req->path, "/v1/messages/count_tokens") == 0);
}

/* The usage row of a forwarded (or refused) request. */
static void fill_row(relay_usage_row_t *row, const relay_http_request_t *req,
                     const relay_key_record_t *key, const relay_proxy_result_t *res)
{
    const relay_forward_result_t *f = &res->fwd;
    const relay_usage_t *u = &f->usage;
    memset(row, 0, sizeof *row);
    relay_strlcpy(row->api_key_id, key->id, sizeof row->api_key_id);
    relay_strlcpy(row->request_id, f->request_id, sizeof row->request_id);
    relay_strlcpy(row->request_method, req->method, sizeof row->request_method);
    relay_strlcpy(row->request_path, req->path, sizeof row->request_path);
    row->request_size = (int64_t)req->body_len;
    row->response_size = f->response_bytes;
    row->response_status = res->status;
    row->response_time_ms = f->duration_ms;
    row->time_to_first_byte_ms = f->time_to_first_byte_ms;
    row->prompt_tokens = u->input_tokens;
    row->completion_tokens = u->output_tokens;
    row->cache_creation_tokens = u->cache_creation_input_tokens;
    row->cache_creation_5m_tokens = u->cache_creation_5m_tokens;
    row->cache_creation_1h_tokens = u->cache_creation_1h_tokens;
    row->cache_read_tokens = u->cache_read_input_tokens;
    row->total_tokens = u->input_tokens + u->output_tokens + u->cache_creation_input_tokens +
                        u->cache_read_input_tokens;
    row->billed_tokens = res->billed_tokens;
    row->total_cost = res->cost;
    relay_strlcpy(row->model, u->model[0] ? u->model : res->model, sizeof row->model);
    row->stream = f->stream;
    row->estimated = f->estimated;
    row->attempts = f->attempts;
    relay_strlcpy(row->upstream, f->upstream, sizeof row->upstream);
    row->is_error = res->status >= 400 || res->refused || f->error_code || f->cut || u->saw_error;
    const char *etype = res->refused ? relay_err_type(res->refused) : f->error_type;
    relay_strlcpy(row->error_code, etype, sizeof row->error_code);
    relay_strlcpy(row->error_message, f->error_message, sizeof row->error_message);
    relay_strlcpy(row->client_ip, req->client_ip ? req->client_ip : "", sizeof row->client_ip);
    const char *ua = relay_http_header(req, "user-agent");
    relay_strlcpy(row->user_agent, ua ? ua : "", sizeof row->user_agent);
    row->created_at = relay_now();
}

/* Stage 4: the reservation settled to the real usage, the row queued. */
void relay_proxy_settle(relay_t *r, const relay_http_request_t *req, const relay_key_record_t *key,
                        relay_admission_t *adm, relay_proxy_result_t *res)
{
    const char *model = res->model;
    const relay_usage_t *u = &res->fwd.usage;
    res->billed_tokens =
        relay_limits_billed_tokens(r, u->input_tokens, u->output_tokens,
                                   u->cache_creation_input_tokens, u->cache_read_input_tokens);
    int64_t c5 = u->cache_creation_5m_tokens, c1 = u->cache_creation_1h_tokens;
    if (c5 + c1 < u->cache_creation_input_tokens)
        c5 = u->cache_creation_input_tokens - c1; /* no split given: the 5-minute price applies */
    res->cost = relay_usage_cost(r, u->model[0] ? u->model : model, u->input_tokens,
                                 u->output_tokens, c5, c1, u->cache_read_input_tokens, NULL);
    if (adm)
        relay_limits_settle_cost(r, adm, res->billed_tokens, res->cost);
    relay_usage_row_t row;
    fill_row(&row, req, key, res);
    relay_usage_record(r, &row);
}

int relay_proxy(relay_t *r, const relay_http_request_t *req, const relay_sink_t *sink,
                relay_proxy_result_t *res)
{
    memset(res, 0, sizeof *res);
    int rc_auth;
    char keybuf[256];
    const char *presented = relay_proxy_request_key(req, keybuf, sizeof keybuf);
    if (!presented) {
        rc_auth =
            refuse(sink, res, RELAY_ERR_AUTH,
                   "missing API key: send it as x-api-key or Authorization: Bearer", "auth", NULL);
        relay_metrics_observe_request(r, req, NULL, res, 0, 0, NULL);
        return rc_auth;
    }
    relay_key_record_t key = {0};
    relay_error_t err = {0};
    int retry_after = 0;
    int rc = relay_keys_verify_client(r, presented, req->client_ip, &retry_after, &key, &err);
    explicit_bzero(keybuf, sizeof keybuf);
    if (rc) {
        rc_auth = refuse_after(sink, res, rc, err.message, rc == RELAY_ERR_STORE ? "store" : "auth",
                               NULL, retry_after);
        relay_metrics_observe_request(r, req, &key, res, 0, 0, NULL);
        return rc_auth;
    }
    relay_strlcpy(res->key_id, key.id, sizeof res->key_id);
    relay_strlcpy(res->key_name, key.name ? key.name : "", sizeof res->key_name);

    relay_request_info_t info = {0};
    if (req->body_len > r->opts.max_body_bytes) {
        rc = refuse(sink, res, RELAY_ERR_TOO_LARGE, NULL, "size", NULL);
        goto log_refusal;
    }
    if (reads_body(req) &&
        relay_tokens_count_request(r->tokenizer, req->body, req->body_len, &info) != 0) {
        rc =
            refuse(sink, res, RELAY_ERR_INVALID, "request body is not valid JSON", "invalid", NULL);
        goto log_refusal;
    }
    relay_strlcpy(res->model, info.model, sizeof res->model);
    relay_admit_request_t areq = {
        .key = &key,
        .client_ip = req->client_ip,
        .origin = relay_http_header(req, "origin"),
        .referer = relay_http_header(req, "referer"),
        .model = info.model[0] ? info.model : NULL,
        .input_tokens_estimate = info.input_tokens_estimate,
        .max_tokens = info.max_tokens,
        .consumes_quota = relay_forward_is_billable(req),
    };
    relay_admission_t adm;
    rc = relay_limits_admit(r, &areq, &adm, &err);
    if (rc) {
        rc = refuse(sink, res, rc, err.message, adm.reason, &adm);
        goto log_refusal;
    }
    relay_metrics_forward_begin(r, info.stream);
    char session[128];
    relay_upstreams_session_of(req, info.user_id, session, sizeof session);
    relay_forward_options_t fo = {.model = info.model[0] ? info.model : NULL,
                                  .session_id = session,
                                  .upstream_group = key.upstream_group,
                                  .stream = info.stream};
    rc = relay_forward_ex(r, req, &fo, sink, &res->fwd);
    res->status = res->fwd.status;
    relay_proxy_settle(r, req, &key, &adm, res);
    relay_metrics_observe_request(r, req, &key, res, 1, info.stream, info.model);
    relay_key_record_clear(&key);
    return res->fwd.client_gone ? RELAY_ERR_CLIENT_GONE : 0;

log_refusal:
    /* A refused request of a known key is logged (and counted as an error) but costs nothing. */
    relay_proxy_settle(r, req, &key, NULL, res);
    relay_metrics_observe_request(r, req, &key, res, 0, 0, info.model);
    relay_key_record_clear(&key);
    return rc;
}
