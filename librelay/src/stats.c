/* stats: usage statistics over the store, served as the user (/api/usage) and admin REST APIs. */
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "internal.h"
#include "relay/admin.h"
#include "relay/keys.h"
#include "relay/budgets.h"
#include "relay/limits.h"
#include "relay/proxy.h"
#include "relay/stats.h"
#include "store_internal.h"
#include "util.h"

#define DEFAULT_LOG_LIMIT 100
#define MAX_LOG_LIMIT     1000
#define MAX_DAYS          365
/* model_usage and error_breakdown list at most this many entries (the largest first). */
#define MAX_GROUPS 100

/*
 * The aggregate queries are written here, in the SQL both engines accept, and run through the
 * store's driver: they serve only this module, and store.c keeps the per-row queries.
 */
#define V_INT(x)  ((relay_sql_val_t){.type = RELAY_SQL_INT, .i = (int64_t)(x)})
#define V_TEXT(x) ((relay_sql_val_t){.type = RELAY_SQL_TEXT, .s = (x)})

typedef struct sql_where {
    relay_buf_t text;
    relay_sql_val_t p[8];
    int np;
} sql_where_t;

typedef struct sql_ctx {
    const relay_store_driver_t *d;
    void *ud;
    void (*reset)(void *ud); /* forget partial results before a retried read */
} sql_ctx_t;

/* Runs one read, redone once on a fresh connection when the pooled one turned out dead. */
static int stats_read(relay_t *r, const char *sql, const relay_sql_val_t *p, int np,
                      relay_sql_row_fn fn, sql_ctx_t *ctx)
{
    const relay_store_driver_t *d = r->store->drv;
    for (int attempt = 0;; attempt++) {
        relay_store_conn_t *c;
        int rc = d->acquire(r->store, &c, NULL);
        if (rc)
            return rc;
        if (ctx->reset)
            ctx->reset(ctx->ud);
        rc = d->exec(c, sql, p, np, fn, ctx, NULL, NULL);
        int retry = rc == RELAY_ERR_STORE && attempt == 0 && d->broken(c);
        d->release(r->store, c);
        if (!retry)
            return rc;
    }
}

/* "1 = 1 [AND api_key_id = $n] [AND created_at >= $n] [AND created_at < $n]" */
static int where_init(sql_where_t *w, const char *key_id, int64_t start, int64_t end)
{
    memset(w, 0, sizeof *w);
    relay_buf_init(&w->text, 512);
    int rc = relay_buf_appends(&w->text, "1 = 1");
    if (!rc && key_id) {
        w->p[w->np++] = V_TEXT(key_id);
        rc = relay_buf_printf(&w->text, " AND api_key_id = $%d", w->np);
    }
    if (!rc && start) {
        w->p[w->np++] = V_INT(start);
        rc = relay_buf_printf(&w->text, " AND created_at >= $%d", w->np);
    }
    if (!rc && end) {
        w->p[w->np++] = V_INT(end);
        rc = relay_buf_printf(&w->text, " AND created_at < $%d", w->np);
    }
    return rc;
}

/* ---------------------------------------------------------------- summary */

static int summary_row(void *ud, const relay_sql_row_t *row)
{
    sql_ctx_t *c = ud;
    relay_usage_summary_t *s = c->ud;
    s->total_requests = c->d->col_int(row, 0);
    s->total_tokens = c->d->col_int(row, 1);
    s->total_prompt_tokens = c->d->col_int(row, 2);
    s->total_completion_tokens = c->d->col_int(row, 3);
    s->total_cache_creation_tokens = c->d->col_int(row, 4);
    s->total_cache_read_tokens = c->d->col_int(row, 5);
    s->total_cost = c->d->col_real(row, 6);
    s->avg_response_time_ms = c->d->col_real(row, 7);
    s->error_count = c->d->col_int(row, 8);
    return 0;
}

static void summary_reset(void *ud)
{
    memset(ud, 0, sizeof(relay_usage_summary_t));
}

int relay_stats_summary(relay_t *r, const char *key_id, int64_t start, int64_t end,
                        relay_usage_summary_t *out)
{
    memset(out, 0, sizeof *out);
    sql_where_t w;
    relay_buf_t sql;
    relay_buf_init(&sql, 2048);
    int rc = where_init(&w, key_id, start, end);
    rc = rc ? rc
            : relay_buf_printf(
                  &sql,
                  "SELECT count(*), COALESCE(SUM(total_tokens), 0), "
                  "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                  "COALESCE(SUM(cache_creation_tokens), 0), "
                  "COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(total_cost), 0), "
                  "COALESCE(AVG(response_time_ms), 0), COALESCE(SUM(is_error), 0) "
                  "FROM usage_logs WHERE %s",
                  relay_buf_str(&w.text));
    sql_ctx_t ctx = {r->store->drv, out, summary_reset};
    rc = rc ? rc : stats_read(r, relay_buf_str(&sql), w.p, w.np, summary_row, &ctx);
    relay_buf_free(&sql);
    relay_buf_free(&w.text);
    return rc;
}

/* Rows of a GROUP BY (name, count, tokens, cost) appended to a JSON array. */
typedef struct group_ctx {
    json_t *arr;
    int kind; /* 0 model_usage, 1 error_breakdown, 2 upstream_usage */
} group_ctx_t;

static int group_row(void *ud, const relay_sql_row_t *row)
{
    sql_ctx_t *c = ud;
    group_ctx_t *g = c->ud;
    const char *name = c->d->col_text(row, 0);
    json_t *o;
    if (g->kind != 1)
        o = json_pack("{s:s?, s:I, s:I, s:f}", g->kind ? "upstream" : "model",
                      name && *name ? name : NULL, "request_count",
                      (json_int_t)c->d->col_int(row, 1), "total_tokens",
                      (json_int_t)c->d->col_int(row, 2), "total_cost", c->d->col_real(row, 3));
    else
        o = json_pack("{s:s, s:I}", "error_code", name ? name : "unknown", "count",
                      (json_int_t)c->d->col_int(row, 1));
    return o && json_array_append_new(g->arr, o) == 0 ? 0 : RELAY_ERR_NOMEM;
}

static void group_reset(void *ud)
{
    json_array_clear(((group_ctx_t *)ud)->arr);
}

static int groups(relay_t *r, const char *key_id, int64_t start, int64_t end, int kind, json_t *arr)
{
    sql_where_t w;
    relay_buf_t sql;
    relay_buf_init(&sql, 2048);
    int rc = where_init(&w, key_id, start, end);
    /* the column comes from this fixed choice, never from the request */
    const char *col = kind == 2 ? "upstream" : "model";
    if (!rc && kind != 1)
        rc = relay_buf_printf(&sql,
                              "SELECT COALESCE(%s, ''), count(*), COALESCE(SUM(total_tokens), 0), "
                              "COALESCE(SUM(total_cost), 0) FROM usage_logs WHERE %s "
                              "GROUP BY COALESCE(%s, '') ORDER BY 2 DESC, 1 LIMIT %d",
                              col, relay_buf_str(&w.text), col, MAX_GROUPS);
    else if (!rc)
        rc = relay_buf_printf(
            &sql,
            "SELECT COALESCE(error_code, 'http_' || CAST(response_status AS TEXT)), "
            "count(*) FROM usage_logs WHERE %s AND is_error = 1 GROUP BY "
            "COALESCE(error_code, 'http_' || CAST(response_status AS TEXT)) "
            "ORDER BY 2 DESC, 1 LIMIT %d",
            relay_buf_str(&w.text), MAX_GROUPS);
    group_ctx_t g = {arr, kind};
    sql_ctx_t ctx = {r->store->drv, &g, group_reset};
    rc = rc ? rc : stats_read(r, relay_buf_str(&sql), w.p, w.np, group_row, &ctx);
    relay_buf_free(&sql);
    relay_buf_free(&w.text);
    return rc;
}

/* ---------------------------------------------------------------- request helpers */

typedef struct req_ctx {
    relay_t *r;
    const relay_http_request_t *req;
    relay_http_response_t *resp;
} req_ctx_t;

static void reply(req_ctx_t *c, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12))
                   : NULL;
    json_decref(body);
    if (!s) {
        relay_http_response_error(c->resp, RELAY_ERR_NOMEM, NULL);
        return;
    }
    relay_http_response_set(c->resp, status, s);
}

static int fail(req_ctx_t *c, int code, const char *msg)
{
    relay_http_response_error(c->resp, code, msg);
    return code;
}

static int bad_param(req_ctx_t *c, const char *name, const char *what)
{
    char msg[200];
    snprintf(msg, sizeof msg, "%s: %s", name, what);
    return fail(c, RELAY_ERR_INVALID, msg);
}

/* An integer query parameter in [min, max]; def when absent. */
static int int_param(req_ctx_t *c, const char *name, int64_t def, int64_t min, int64_t max,
                     int64_t *out)
{
    char buf[32], msg[96];
    *out = def;
    if (!relay_http_query_param(c->req, name, buf, sizeof buf))
        return 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (!buf[0] || *end || v < min || v > max) {
        snprintf(msg, sizeof msg, "expected an integer from %lld to %lld", (long long)min,
                 (long long)max);
        return bad_param(c, name, msg);
    }
    *out = v;
    return 0;
}

/* A true/false query parameter into *out (0 or 1); *out untouched when absent. */
static int bool_param(req_ctx_t *c, const char *name, int *out)
{
    char buf[8];
    if (!relay_http_query_param(c->req, name, buf, sizeof buf))
        return 0;
    if (!strcmp(buf, "true") || !strcmp(buf, "1"))
        *out = 1;
    else if (!strcmp(buf, "false") || !strcmp(buf, "0"))
        *out = 0;
    else
        return bad_param(c, name, "expected true or false");
    return 0;
}

/*
 * An ISO 8601 date parameter. A '+' of an offset that arrived unencoded reads as a space after
 * URL decoding; it is taken back. *date_only says whether it had no time part.
 */
static int date_param(req_ctx_t *c, const char *name, int64_t *out, int *date_only)
{
    char buf[64];
    *out = 0;
    *date_only = 0;
    if (!relay_http_query_param(c->req, name, buf, sizeof buf) || !buf[0])
        return 0;
    for (size_t i = 11; i < strlen(buf); i++)
        if (buf[i] == ' ')
            buf[i] = '+';
    if (relay_parse_iso8601(buf, out) != 0 || *out <= 0)
        return bad_param(
            c, name, "expected an ISO 8601 date or date-time (2025-01-31 or 2025-01-31T12:00:00Z)");
    *date_only = strlen(buf) == 10;
    return 0;
}

/* start_date and end_date as [start, end); a date-only end_date includes its whole day. */
static int range_params(req_ctx_t *c, int64_t *start, int64_t *end)
{
    int d1, d2;
    int rc = date_param(c, "start_date", start, &d1);
    rc = rc ? rc : date_param(c, "end_date", end, &d2);
    if (rc)
        return rc;
    if (*end && d2)
        *end += 86400;
    if (*start && *end && *end <= *start)
        return bad_param(c, "end_date", "must be after start_date");
    return 0;
}

static json_t *iso_or_null(int64_t t)
{
    char s[32];
    if (!t)
        return json_null();
    relay_iso8601(t, s, sizeof s);
    return json_string(s);
}

static json_t *text_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static double round2(double v)
{
    return round(v * 100.0) / 100.0;
}

/* ---------------------------------------------------------------- the four views of a key */

static int view_summary(req_ctx_t *c, const char *key_id)
{
    int64_t start, end;
    if (range_params(c, &start, &end))
        return 0;
    relay_usage_summary_t s;
    json_t *models = json_array(), *errors = json_array(), *ups = json_array();
    int rc = relay_stats_summary(c->r, key_id, start, end, &s);
    rc = rc ? rc : groups(c->r, key_id, start, end, 0, models);
    rc = rc ? rc : groups(c->r, key_id, start, end, 1, errors);
    rc = rc ? rc : groups(c->r, key_id, start, end, 2, ups);
    if (rc) {
        json_decref(models);
        json_decref(errors);
        json_decref(ups);
        return fail(c, rc, NULL);
    }
    double rate =
        s.total_requests ? round(10000.0 * s.error_count / s.total_requests) / 10000.0 : 0;
    json_t *o = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:f, s:o, s:o, s:o, s:o}", "total_requests",
        (json_int_t)s.total_requests, "total_tokens", (json_int_t)s.total_tokens,
        "total_prompt_tokens", (json_int_t)s.total_prompt_tokens, "total_completion_tokens",
        (json_int_t)s.total_completion_tokens, "total_cache_creation_tokens",
        (json_int_t)s.total_cache_creation_tokens, "total_cache_read_tokens",
        (json_int_t)s.total_cache_read_tokens, "total_cost", s.total_cost, "avg_response_time_ms",
        round2(s.avg_response_time_ms), "error_count", (json_int_t)s.error_count, "error_rate",
        rate, "model_usage", models, "error_breakdown", errors, "start_date", iso_or_null(start),
        "end_date", iso_or_null(end));
    if (o)
        json_object_set_new(o, "upstream_usage", ups);
    else
        json_decref(ups);
    reply(c, 200, o);
    return 0;
}

static json_t *day_object(const char *day, const relay_usage_daily_t *d)
{
    static const relay_usage_daily_t zero;
    if (!d)
        d = &zero;
    return json_pack("{s:s, s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:I}", "date", day, "requests",
                     (json_int_t)d->requests, "tokens", (json_int_t)d->tokens, "cost", d->cost,
                     "errors", (json_int_t)d->errors, "prompt_tokens", (json_int_t)d->prompt_tokens,
                     "completion_tokens", (json_int_t)d->completion_tokens, "cache_creation_tokens",
                     (json_int_t)d->cache_creation_tokens, "cache_read_tokens",
                     (json_int_t)d->cache_read_tokens);
}

static int view_daily(req_ctx_t *c, const char *key_id)
{
    int64_t days;
    if (int_param(c, "days", 30, 1, MAX_DAYS, &days))
        return 0;
    int64_t now = relay_now();
    char from[11], to[11], day[11];
    relay_utc_day(now - (days - 1) * 86400, from, sizeof from);
    relay_utc_day(now, to, sizeof to);
    relay_usage_daily_t *rows = NULL;
    size_t n = 0;
    int rc = relay_store_usage_daily(c->r->store, key_id, from, to, &rows, &n);
    if (rc)
        return fail(c, rc, NULL);
    /* Rows come newest first; walk them alongside the calendar so empty days read as zeros. */
    json_t *arr = json_array();
    size_t k = 0;
    for (int64_t i = 0; i < days && arr; i++) {
        relay_utc_day(now - i * 86400, day, sizeof day);
        while (k < n && strcmp(rows[k].day, day) > 0)
            k++;
        const relay_usage_daily_t *d = k < n && strcmp(rows[k].day, day) == 0 ? &rows[k] : NULL;
        if (json_array_append_new(arr, day_object(day, d)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    free(rows);
    reply(c, 200, arr);
    return 0;
}

static json_t *log_object(const relay_usage_row_t *u)
{
    json_t *o = json_pack(
        "{s:I, s:s, s:o, s:s, s:s, s:I, s:i, s:I, s:I, s:I, s:I, s:I}", "id", (json_int_t)u->id,
        "api_key_id", u->api_key_id, "request_id", text_or_null(u->request_id), "request_method",
        u->request_method, "request_path", u->request_path, "request_size",
        (json_int_t)u->request_size, "response_status", u->response_status, "response_size",
        (json_int_t)u->response_size, "response_time_ms", (json_int_t)u->response_time_ms,
        "prompt_tokens", (json_int_t)u->prompt_tokens, "completion_tokens",
        (json_int_t)u->completion_tokens, "total_tokens", (json_int_t)u->total_tokens);
    json_t *more = json_pack(
        "{s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:f, s:b, s:b, s:I, s:i}", "model",
        text_or_null(u->model), "is_error", u->is_error, "error_message",
        text_or_null(u->error_message), "error_code", text_or_null(u->error_code), "client_ip",
        text_or_null(u->client_ip), "user_agent", text_or_null(u->user_agent), "created_at",
        iso_or_null(u->created_at), "cache_creation_tokens", (json_int_t)u->cache_creation_tokens,
        "cache_creation_5m_tokens", (json_int_t)u->cache_creation_5m_tokens,
        "cache_creation_1h_tokens", (json_int_t)u->cache_creation_1h_tokens, "cache_read_tokens",
        (json_int_t)u->cache_read_tokens, "total_cost", u->total_cost, "stream", u->stream,
        "estimated", u->estimated, "time_to_first_byte_ms", (json_int_t)u->time_to_first_byte_ms,
        "attempts", u->attempts);
    if (more)
        json_object_set_new(more, "upstream", text_or_null(u->upstream));
    if (!o || !more || json_object_update(o, more) != 0) {
        json_decref(o);
        o = NULL;
    }
    json_decref(more);
    return o;
}

static int view_logs(req_ctx_t *c, const char *key_id)
{
    int64_t start, end, skip, limit, status;
    char model[128];
    if (range_params(c, &start, &end) || int_param(c, "skip", 0, 0, INT64_MAX / 2, &skip) ||
        int_param(c, "limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT, &limit) ||
        int_param(c, "status", 0, 100, 599, &status))
        return 0;
    int has_model = relay_http_query_param(c->req, "model", model, sizeof model) && model[0];
    int is_error = -1;
    if (bool_param(c, "is_error", &is_error))
        return 0;
    relay_usage_query_t q = {.api_key_id = key_id,
                             .is_error = is_error,
                             .start = start,
                             .end = end,
                             .model = has_model ? model : NULL,
                             .status = (int)status,
                             .skip = skip,
                             .limit = limit};
    relay_usage_row_t *rows = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = relay_store_usage_logs(c->r->store, &q, &rows, &n, &total);
    if (rc)
        return fail(c, rc, NULL);
    json_t *items = json_array();
    for (size_t i = 0; i < n && items; i++)
        if (json_array_append_new(items, log_object(&rows[i])) != 0) {
            json_decref(items);
            items = NULL;
        }
    free(rows);
    reply(c, 200,
          items ? json_pack("{s:o, s:I, s:I, s:I}", "items", items, "total", (json_int_t)total,
                            "skip", (json_int_t)skip, "limit", (json_int_t)limit)
                : NULL);
    return 0;
}

static json_t *int_or_null(int64_t v)
{
    return v < 0 ? json_null() : json_integer(v);
}

static int view_quota(req_ctx_t *c, const relay_key_record_t *key)
{
    relay_quota_view_t q;
    int rc = relay_limits_quota(c->r, key, &q);
    if (rc)
        return fail(c, rc, NULL);
    int64_t now = relay_now();
    json_t *o = json_pack(
        "{s:I, s:I, s:o, s:f, s:b, s:s, s:b, s:o, s:b, s:o, s:o, s:o, s:I}", "token_limit",
        (json_int_t)q.token_limit, "token_used", (json_int_t)q.token_used, "token_remaining",
        q.token_limit > 0 ? json_integer(q.token_remaining) : json_null(), "usage_percentage",
        round2(q.usage_percentage), "is_quota_exceeded", q.is_quota_exceeded, "rate_limit_tier",
        q.tier[0] ? q.tier : key->rate_limit_tier, "is_active", key->is_active, "expires_at",
        iso_or_null(key->expires_at), "is_expired", key->expires_at && key->expires_at <= now,
        "requests_limit", int_or_null(q.requests_limit), "requests_remaining",
        int_or_null(q.requests_remaining), "reset_at", iso_or_null(q.reset_at), "token_reserved",
        (json_int_t)q.token_reserved);
    char *b = o ? relay_budgets_to_json(c->r, key) : NULL;
    json_t *bj = b ? json_loads(b, 0, NULL) : NULL;
    free(b);
    if (o)
        json_object_set_new(o, "budgets", bj ? bj : json_array());
    reply(c, 200, o);
    return 0;
}

/* ---------------------------------------------------------------- routing */

enum { V_NONE = 0, V_SUMMARY, V_DAILY, V_LOGS, V_QUOTA, V_OVERVIEW };

/* The statistics routes (all GET): the key holder's under /api/usage, the admin's under /admin.
 * Dispatch and relay_stats_routes read this one table. */
static const struct {
    const char *pattern;
    int view, admin;
} VIEWS[] = {
    {"/api/usage", V_SUMMARY, 0},
    {"/api/usage/daily", V_DAILY, 0},
    {"/api/usage/logs", V_LOGS, 0},
    {"/api/usage/quota", V_QUOTA, 0},
    {"/admin/usage", V_OVERVIEW, 1},
    {"/admin/usage/summary", V_SUMMARY, 1},
    {"/admin/usage/daily", V_DAILY, 1},
    {"/admin/usage/logs", V_LOGS, 1},
    {"/admin/api-keys/{id}/usage", V_SUMMARY, 1},
    {"/admin/api-keys/{id}/usage/daily", V_DAILY, 1},
    {"/admin/api-keys/{id}/usage/logs", V_LOGS, 1},
};

void relay_stats_routes(relay_http_route_fn fn, void *ud)
{
    for (size_t i = 0; i < sizeof VIEWS / sizeof VIEWS[0]; i++)
        fn(ud, "GET", VIEWS[i].pattern);
}

/* The view path names among the user (admin 0) or admin (1) routes; arg receives {id}. */
static int view_of(const char *path, int admin, char *arg, size_t cap)
{
    for (size_t i = 0; i < sizeof VIEWS / sizeof VIEWS[0]; i++)
        if (VIEWS[i].admin == admin && relay_http_path_match(VIEWS[i].pattern, path, arg, cap))
            return VIEWS[i].view;
    return V_NONE;
}

static int method_ok(req_ctx_t *c)
{
    if (!strcmp(c->req->method, "GET"))
        return 1;
    relay_http_response_set(c->resp, 405,
                            relay_error_json(RELAY_ERR_INVALID, "method not allowed: use GET"));
    relay_http_response_add_header(c->resp, "allow", "GET");
    return 0;
}

/* A view of one key, or of every key when key is NULL (the admin's /admin/usage/... views). */
static int run_view(req_ctx_t *c, int view, const relay_key_record_t *key)
{
    const char *id = key ? key->id : NULL;
    switch (view) {
    case V_SUMMARY:
        return view_summary(c, id);
    case V_DAILY:
        return view_daily(c, id);
    case V_LOGS:
        return view_logs(c, id);
    default:
        return key ? view_quota(c, key) : fail(c, RELAY_ERR_NOT_FOUND, NULL);
    }
}

int relay_user_handle(relay_t *r, const relay_http_request_t *req, relay_http_response_t *resp)
{
    int view = req->path ? view_of(req->path, 0, NULL, 0) : V_NONE;
    if (view == V_NONE)
        return RELAY_ERR_NOT_FOUND;
    req_ctx_t c = {r, req, resp};
    if (!method_ok(&c))
        return 0;
    char keybuf[256];
    const char *presented = relay_proxy_request_key(req, keybuf, sizeof keybuf);
    if (!presented) {
        fail(&c, RELAY_ERR_AUTH, "missing API key: send it as x-api-key or Authorization: Bearer");
        return 0;
    }
    relay_key_record_t key = {0};
    relay_error_t err = {0};
    int retry_after = 0;
    int rc = relay_keys_verify_client(r, presented, req->client_ip, &retry_after, &key, &err);
    explicit_bzero(keybuf, sizeof keybuf);
    if (rc) {
        fail(&c, rc, err.message);
        relay_http_retry_after(resp, retry_after);
        return 0;
    }
    run_view(&c, view, &key);
    relay_key_record_clear(&key);
    return 0;
}

/* ---------------------------------------------------------------- admin overview */

static const struct {
    const char *name, *expr;
} SORTS[] = {
    {"total_tokens", "tokens"},     {"total_requests", "requests"},     {"total_cost", "cost"},
    {"error_count", "errors"},      {"token_used", "k.token_used"},     {"name", "k.name"},
    {"created_at", "k.created_at"}, {"last_used_at", "k.last_used_at"},
};

typedef struct overview_ctx {
    json_t *items;
} overview_ctx_t;

static int overview_row(void *ud, const relay_sql_row_t *row)
{
    sql_ctx_t *c = ud;
    const relay_store_driver_t *d = c->d;
    overview_ctx_t *o = c->ud;
    int64_t limit = d->col_int(row, 4), used = d->col_int(row, 5);
    json_t *it = json_pack(
        "{s:s, s:s, s:s, s:b, s:s, s:I, s:I, s:o, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, "
        "s:o}",
        "api_key_id", d->col_text(row, 0) ? d->col_text(row, 0) : "", "name",
        d->col_text(row, 1) ? d->col_text(row, 1) : "", "key_prefix",
        d->col_text(row, 2) ? d->col_text(row, 2) : "", "is_active", (int)d->col_int(row, 3),
        "rate_limit_tier", d->col_text(row, 6) ? d->col_text(row, 6) : "", "token_limit",
        (json_int_t)limit, "token_used", (json_int_t)used, "token_remaining",
        limit > 0 ? json_integer(used < limit ? limit - used : 0) : json_null(), "usage_percentage",
        limit > 0 ? round2(100.0 * (double)used / (double)limit) : 0.0, "total_requests",
        (json_int_t)d->col_int(row, 8), "total_tokens", (json_int_t)d->col_int(row, 9),
        "total_prompt_tokens", (json_int_t)d->col_int(row, 10), "total_completion_tokens",
        (json_int_t)d->col_int(row, 11), "total_cache_creation_tokens",
        (json_int_t)d->col_int(row, 12), "total_cache_read_tokens", (json_int_t)d->col_int(row, 13),
        "total_cost", d->col_real(row, 15), "error_count", (json_int_t)d->col_int(row, 14),
        "last_used_at", iso_or_null(d->col_int(row, 7)));
    return it && json_array_append_new(o->items, it) == 0 ? 0 : RELAY_ERR_NOMEM;
}

static void overview_reset(void *ud)
{
    json_array_clear(((overview_ctx_t *)ud)->items);
}

/* usage_daily summed per key for days in [from, to] ("" = unbounded), as a derived table. */
static int daily_where(sql_where_t *w, const char *from, const char *to)
{
    memset(w, 0, sizeof *w);
    relay_buf_init(&w->text, 256);
    int rc = relay_buf_appends(&w->text, "1 = 1");
    if (!rc && from[0]) {
        w->p[w->np++] = V_TEXT(from);
        rc = relay_buf_printf(&w->text, " AND day >= $%d", w->np);
    }
    if (!rc && to[0]) {
        w->p[w->np++] = V_TEXT(to);
        rc = relay_buf_printf(&w->text, " AND day <= $%d", w->np);
    }
    return rc;
}

#define DAILY_SUMS                                                                                 \
    "SELECT api_key_id, SUM(requests) AS requests, SUM(tokens) AS tokens, "                        \
    "SUM(prompt_tokens) AS prompt, SUM(completion_tokens) AS completion, "                         \
    "SUM(cache_creation_tokens) AS cache_creation, SUM(cache_read_tokens) AS cache_read, "         \
    "SUM(errors) AS errors, SUM(cost) AS cost FROM usage_daily WHERE %s GROUP BY api_key_id"

static int overview_items(relay_t *r, const char *from, const char *to, const char *order_by,
                          int desc, int64_t skip, int64_t limit, json_t *items)
{
    sql_where_t w;
    relay_buf_t sql;
    relay_buf_init(&sql, 4096);
    int rc = daily_where(&w, from, to);
    rc = rc ? rc
            : relay_buf_appends(&sql, "SELECT k.id, k.name, k.key_prefix, k.is_active, "
                                      "k.token_limit, k.token_used, k.rate_limit_tier, "
                                      "k.last_used_at, COALESCE(d.requests, 0) AS requests, "
                                      "COALESCE(d.tokens, 0) AS tokens, COALESCE(d.prompt, 0), "
                                      "COALESCE(d.completion, 0), "
                                      "COALESCE(d.cache_creation, 0), "
                                      "COALESCE(d.cache_read, 0), "
                                      "COALESCE(d.errors, 0) AS errors, "
                                      "COALESCE(d.cost, 0) AS cost FROM api_keys k LEFT JOIN (");
    rc = rc ? rc : relay_buf_printf(&sql, DAILY_SUMS, relay_buf_str(&w.text));
    /* order_by comes from the SORTS whitelist, never from the request. */
    rc = rc ? rc
            : relay_buf_printf(&sql,
                               ") d ON d.api_key_id = k.id WHERE k.is_deleted = 0 "
                               "ORDER BY %s %s, k.id LIMIT %lld OFFSET %lld",
                               order_by, desc ? "DESC" : "ASC", (long long)limit, (long long)skip);
    overview_ctx_t o = {items};
    sql_ctx_t ctx = {r->store->drv, &o, overview_reset};
    rc = rc ? rc : stats_read(r, relay_buf_str(&sql), w.p, w.np, overview_row, &ctx);
    relay_buf_free(&sql);
    relay_buf_free(&w.text);
    return rc;
}

static int totals_row(void *ud, const relay_sql_row_t *row)
{
    sql_ctx_t *c = ud;
    const relay_store_driver_t *d = c->d;
    json_t **out = c->ud;
    json_decref(*out);
    *out = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I}", "total_keys",
                     (json_int_t)d->col_int(row, 0), "total_requests",
                     (json_int_t)d->col_int(row, 1), "total_tokens", (json_int_t)d->col_int(row, 2),
                     "total_prompt_tokens", (json_int_t)d->col_int(row, 3),
                     "total_completion_tokens", (json_int_t)d->col_int(row, 4),
                     "total_cache_creation_tokens", (json_int_t)d->col_int(row, 5),
                     "total_cache_read_tokens", (json_int_t)d->col_int(row, 6), "total_cost",
                     d->col_real(row, 8), "error_count", (json_int_t)d->col_int(row, 7));
    return *out ? 0 : RELAY_ERR_NOMEM;
}

static int overview_totals(relay_t *r, const char *from, const char *to, json_t **out)
{
    sql_where_t w;
    relay_buf_t sql;
    relay_buf_init(&sql, 4096);
    int rc = daily_where(&w, from, to);
    rc = rc ? rc
            : relay_buf_appends(&sql, "SELECT count(*), COALESCE(SUM(d.requests), 0), "
                                      "COALESCE(SUM(d.tokens), 0), COALESCE(SUM(d.prompt), 0), "
                                      "COALESCE(SUM(d.completion), 0), "
                                      "COALESCE(SUM(d.cache_creation), 0), "
                                      "COALESCE(SUM(d.cache_read), 0), "
                                      "COALESCE(SUM(d.errors), 0), COALESCE(SUM(d.cost), 0) "
                                      "FROM api_keys k LEFT JOIN (");
    rc = rc ? rc : relay_buf_printf(&sql, DAILY_SUMS, relay_buf_str(&w.text));
    rc = rc ? rc : relay_buf_appends(&sql, ") d ON d.api_key_id = k.id WHERE k.is_deleted = 0");
    sql_ctx_t ctx = {r->store->drv, out, NULL};
    rc = rc ? rc : stats_read(r, relay_buf_str(&sql), w.p, w.np, totals_row, &ctx);
    relay_buf_free(&sql);
    relay_buf_free(&w.text);
    return rc;
}

/* start_date/end_date as UTC days for the daily table ("" when absent). */
static int day_range(req_ctx_t *c, char from[11], char to[11])
{
    int64_t start, end;
    from[0] = to[0] = '\0';
    if (range_params(c, &start, &end))
        return -1;
    if (start)
        relay_utc_day(start, from, 11);
    if (end)
        relay_utc_day(end - 1, to, 11);
    return 0;
}

static int admin_overview(req_ctx_t *c)
{
    int64_t skip, limit;
    char sort[32] = "total_tokens", order[8] = "desc", from[11], to[11];
    if (int_param(c, "skip", 0, 0, INT64_MAX / 2, &skip) ||
        int_param(c, "limit", 100, 1, 1000, &limit) || day_range(c, from, to))
        return 0;
    relay_http_query_param(c->req, "sort", sort, sizeof sort);
    relay_http_query_param(c->req, "order", order, sizeof order);
    const char *expr = NULL;
    for (size_t i = 0; i < sizeof SORTS / sizeof SORTS[0]; i++)
        if (!strcmp(sort, SORTS[i].name))
            expr = SORTS[i].expr;
    if (!expr)
        return bad_param(c, "sort",
                         "expected total_tokens, total_requests, total_cost, "
                         "error_count, token_used, name, created_at or last_used_at");
    if (strcmp(order, "asc") && strcmp(order, "desc"))
        return bad_param(c, "order", "expected asc or desc");
    json_t *items = json_array(), *totals = NULL, *ups = json_array();
    int64_t start, end;
    range_params(c, &start, &end); /* already checked by day_range */
    int rc = overview_items(c->r, from, to, expr, !strcmp(order, "desc"), skip, limit, items);
    rc = rc ? rc : overview_totals(c->r, from, to, &totals);
    rc = rc ? rc : groups(c->r, NULL, start, end, 2, ups);
    if (rc || !totals) {
        json_decref(items);
        json_decref(totals);
        json_decref(ups);
        return fail(c, rc ? rc : RELAY_ERR_NOMEM, NULL);
    }

    json_t *total = json_object_get(totals, "total_keys");
    reply(c, 200,
          json_pack("{s:o, s:O, s:I, s:I, s:s, s:s, s:o, s:o}", "items", items, "total", total,
                    "skip", (json_int_t)skip, "limit", (json_int_t)limit, "sort", sort, "order",
                    order, "totals", totals, "upstream_usage", ups));
    return 0;
}

int relay_stats_admin_handle(relay_t *r, const relay_http_request_t *req,
                             relay_http_response_t *resp)
{
    char id[40] = "";
    int view = req->path ? view_of(req->path, 1, id, sizeof id) : V_NONE;
    if (view == V_NONE)
        return RELAY_ERR_NOT_FOUND;
    req_ctx_t c = {r, req, resp};
    char subject[128];
    if (!method_ok(&c) || relay_admin_authenticate(r, req, subject, sizeof subject, resp) != 0)
        return 0;
    if (view == V_OVERVIEW) {
        admin_overview(&c);
        return 0;
    }
    if (!id[0]) /* /admin/usage/summary, /daily, /logs: every key together */
        return run_view(&c, view, NULL), 0;
    relay_key_record_t key = {0};
    relay_error_t err = {0};
    int rc = relay_keys_get(r, id, &key, &err);
    if (rc) {
        fail(&c, rc, rc == RELAY_ERR_NOT_FOUND ? "API key not found" : err.message);
        return 0;
    }
    run_view(&c, view, &key);
    relay_key_record_clear(&key);
    return 0;
}
