/* test_stats: the usage REST API, admin statistics, retention and quota alerts with exact numbers
 * from known rows, on SQLite and PostgreSQL; plus the metrics registry's format and bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "maintenance_internal.h"
#include "relay/auth.h"
#include "relay/keys.h"
#include "relay/maintenance.h"
#include "relay/metrics.h"
#include "relay/stats.h"
#include "relay/store.h"
#include "relay/usage.h"
#include "testdb.h"
#include "testrelay.h"
#include "util.h"

/* ---- log capture: the events relay_log emitted ---- */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[16384];

static void capture_log(void *ud, relay_log_level level, const char *event, const char *msg,
                        const char *fields)
{
    (void)ud;
    (void)level;
    pthread_mutex_lock(&g_log_mu);
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s %s %s\n", event, msg, fields ? fields : "");
    pthread_mutex_unlock(&g_log_mu);
}

static int log_count(const char *event)
{
    int n = 0;
    pthread_mutex_lock(&g_log_mu);
    for (const char *p = g_log; (p = strstr(p, event)); p += strlen(event))
        n++;
    pthread_mutex_unlock(&g_log_mu);
    return n;
}

static relay_t *new_relay(void)
{
    relay_options_t o;
    testdb_options(&o);
    o.secret_key = "test-secret-key-for-jwt-signing-0123456789";
    o.admin_password = "test-admin-password";
    o.log_fn = capture_log;
    o.log_level = RELAY_LOG_DEBUG;
    return testrelay_new(&o);
}

/* ---- fixtures: two keys and known rows ---- */
typedef struct fixture {
    relay_t *r;
    char key[RELAY_KEY_MAX], key2[RELAY_KEY_MAX];
    relay_key_record_t rec, rec2;
    int64_t day0; /* 00:00 UTC today */
    char today[11], yesterday[11], oldday[11];
} fixture_t;

static void row(relay_usage_row_t *u, const char *key_id, int64_t at, const char *model, int64_t in,
                int64_t out, int64_t cc, int64_t cr, double cost, int status, int64_t rt_ms,
                const char *err_code)
{
    memset(u, 0, sizeof *u);
    relay_strlcpy(u->api_key_id, key_id, sizeof u->api_key_id);
    relay_strlcpy(u->request_method, "POST", sizeof u->request_method);
    relay_strlcpy(u->request_path, "/v1/messages", sizeof u->request_path);
    relay_strlcpy(u->model, model, sizeof u->model);
    u->prompt_tokens = in;
    u->completion_tokens = out;
    u->cache_creation_tokens = u->cache_creation_5m_tokens = cc;
    u->cache_read_tokens = cr;
    u->total_tokens = u->billed_tokens = in + out + cc + cr;
    u->total_cost = cost;
    u->response_status = status;
    u->is_error = status >= 400;
    u->response_time_ms = rt_ms;
    u->attempts = 1;
    if (err_code)
        relay_strlcpy(u->error_code, err_code, sizeof u->error_code);
    u->created_at = at;
}

static void make_key(relay_t *r, const char *name, int64_t limit, char *key,
                     relay_key_record_t *rec)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = name;
    p.token_limit = limit;
    relay_error_t err = {0};
    if (relay_keys_create(r, &p, key, RELAY_KEY_MAX, rec, &err))
        fail_msg("create key: %s", err.message);
}

/*
 * Key "alpha": today r1 (sonnet 100/50/10/20, $0.25, 1000 ms), r2 (sonnet 200/100, $0.5, 3000 ms),
 * r3 (haiku 10, 429 rate_limit_error, 2000 ms); yesterday r4 (haiku 1000/500, $1, 500 ms);
 * 40 days ago r5 (sonnet 5/5, 500 api_error, $0.125, 100 ms). Key "beta": one row today (7/7).
 */
static void fixture_init(fixture_t *f)
{
    memset(f, 0, sizeof *f);
    f->r = new_relay();
    make_key(f->r, "alpha", 10000, f->key, &f->rec);
    make_key(f->r, "beta", 0, f->key2, &f->rec2);
    int64_t now = relay_now();
    f->day0 = now - now % 86400;
    relay_utc_day(f->day0, f->today, sizeof f->today);
    relay_utc_day(f->day0 - 3600, f->yesterday, sizeof f->yesterday);
    relay_utc_day(f->day0 - 40 * 86400, f->oldday, sizeof f->oldday);
    const char *sonnet = "claude-sonnet-4-5", *haiku = "claude-haiku-4-5";
    relay_usage_row_t rows[6];
    const char *a = f->rec.id;
    row(&rows[0], a, f->day0 + 1, sonnet, 100, 50, 10, 20, 0.25, 200, 1000, NULL);
    row(&rows[1], a, f->day0 + 2, sonnet, 200, 100, 0, 0, 0.5, 200, 3000, NULL);
    row(&rows[2], a, f->day0 + 3, haiku, 10, 0, 0, 0, 0, 429, 2000, "rate_limit_error");
    row(&rows[3], a, f->day0 - 3600, haiku, 1000, 500, 0, 0, 1.0, 200, 500, NULL);
    row(&rows[4], a, f->day0 - 40 * 86400, sonnet, 5, 5, 0, 0, 0.125, 500, 100, "api_error");
    row(&rows[5], f->rec2.id, f->day0 + 1, haiku, 7, 7, 0, 0, 0.0625, 200, 10, NULL);
    assert_int_equal(relay_store_usage_write(f->r->store, rows, 6), 0);
}

static void fixture_free(fixture_t *f)
{
    relay_key_record_clear(&f->rec);
    relay_key_record_clear(&f->rec2);
    relay_free(f->r);
}

/* ---- calling the handlers ---- */
typedef struct call {
    int rc;
    int status;
    json_t *json;
} call_t;

static call_t do_call(relay_t *r, int admin, const char *method, const char *path,
                      const char *query, const char *auth_name, const char *auth_value)
{
    relay_http_header_t h[1] = {{auth_name, auth_value}};
    relay_http_request_t req = {.method = method,
                                .path = path,
                                .query = query,
                                .client_ip = "127.0.0.1",
                                .headers = h,
                                .n_headers = auth_name ? 1 : 0};
    relay_http_response_t resp = {0};
    call_t c = {0};
    c.rc = admin ? relay_stats_admin_handle(r, &req, &resp) : relay_user_handle(r, &req, &resp);
    c.status = resp.status;
    if (resp.body)
        c.json = json_loads(resp.body, 0, NULL);
    relay_http_response_clear(&resp);
    return c;
}

static call_t user_get(fixture_t *f, const char *path, const char *query)
{
    return do_call(f->r, 0, "GET", path, query, "x-api-key", f->key);
}

static call_t admin_get(fixture_t *f, const char *path, const char *query)
{
    char *tok = NULL;
    assert_int_equal(relay_auth_issue_token(f->r, "admin", 0, &tok, NULL), 0);
    char bearer[4200];
    snprintf(bearer, sizeof bearer, "Bearer %s", tok);
    relay_free_string(tok);
    return do_call(f->r, 1, "GET", path, query, "authorization", bearer);
}

static int64_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("field %s is not an integer", k);
    return json_integer_value(v);
}

static double jnum(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_number(v))
        fail_msg("field %s is not a number", k);
    return json_number_value(v);
}

static void assert_bad_param(call_t c, const char *param)
{
    assert_int_equal(c.rc, 0);
    assert_int_equal(c.status, 400);
    json_t *e = json_object_get(c.json, "error");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    if (strncmp(msg, param, strlen(param)) != 0)
        fail_msg("error message '%s' does not name %s", msg, param);
    json_decref(c.json);
}

/* ---- tests ---- */

static void test_summary_exact(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    call_t c = user_get(&f, "/api/usage", NULL);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total_requests"), 5);
    assert_int_equal(jint(c.json, "total_tokens"), 2000);
    assert_int_equal(jint(c.json, "total_prompt_tokens"), 1315);
    assert_int_equal(jint(c.json, "total_completion_tokens"), 655);
    assert_int_equal(jint(c.json, "total_cache_creation_tokens"), 10);
    assert_int_equal(jint(c.json, "total_cache_read_tokens"), 20);
    assert_true(fabs(jnum(c.json, "total_cost") - 1.875) < 1e-9);
    assert_true(fabs(jnum(c.json, "avg_response_time_ms") - 1320) < 1e-9);
    assert_int_equal(jint(c.json, "error_count"), 2);
    assert_true(fabs(jnum(c.json, "error_rate") - 0.4) < 1e-9);
    json_t *mu = json_object_get(c.json, "model_usage");
    assert_int_equal(json_array_size(mu), 2);
    json_t *m0 = json_array_get(mu, 0), *m1 = json_array_get(mu, 1);
    assert_string_equal(json_string_value(json_object_get(m0, "model")), "claude-sonnet-4-5");
    assert_int_equal(jint(m0, "request_count"), 3);
    assert_int_equal(jint(m0, "total_tokens"), 490);
    assert_true(fabs(jnum(m0, "total_cost") - 0.875) < 1e-9);
    assert_string_equal(json_string_value(json_object_get(m1, "model")), "claude-haiku-4-5");
    assert_int_equal(jint(m1, "total_tokens"), 1510);
    json_t *eb = json_object_get(c.json, "error_breakdown");
    assert_int_equal(json_array_size(eb), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(eb, 0), "error_code")),
                        "api_error");
    assert_int_equal(jint(json_array_get(eb, 1), "count"), 1);
    json_decref(c.json);
    fixture_free(&f);
}

static void test_summary_ranges_and_params(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    char q[128];
    snprintf(q, sizeof q, "start_date=%s", f.today);
    call_t c = user_get(&f, "/api/usage", q);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total_requests"), 3);
    assert_int_equal(jint(c.json, "total_tokens"), 490);
    assert_int_equal(jint(c.json, "error_count"), 1);
    json_decref(c.json);
    /* A date-only end_date includes its whole day. */
    snprintf(q, sizeof q, "end_date=%s", f.yesterday);
    c = user_get(&f, "/api/usage", q);
    assert_int_equal(jint(c.json, "total_requests"), 2);
    assert_int_equal(jint(c.json, "total_tokens"), 1510);
    json_decref(c.json);
    /* A date-time with an offset, '+' arriving unencoded (a space after decoding). */
    snprintf(q, sizeof q, "start_date=%sT01:00:00+01:00", f.today);
    c = user_get(&f, "/api/usage", q);
    assert_int_equal(jint(c.json, "total_requests"), 3);
    json_decref(c.json);
    assert_bad_param(user_get(&f, "/api/usage", "start_date=yesterday"), "start_date");
    snprintf(q, sizeof q, "start_date=%s&end_date=%s", f.today, f.oldday);
    assert_bad_param(user_get(&f, "/api/usage", q), "end_date");
    fixture_free(&f);
}

static void test_daily_zeros_newest_first(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    call_t c = user_get(&f, "/api/usage/daily", "days=3");
    assert_int_equal(c.status, 200);
    assert_true(json_is_array(c.json));
    assert_int_equal(json_array_size(c.json), 3);
    json_t *d0 = json_array_get(c.json, 0), *d1 = json_array_get(c.json, 1);
    json_t *d2 = json_array_get(c.json, 2);
    assert_string_equal(json_string_value(json_object_get(d0, "date")), f.today);
    assert_int_equal(jint(d0, "requests"), 3);
    assert_int_equal(jint(d0, "tokens"), 490);
    assert_true(fabs(jnum(d0, "cost") - 0.75) < 1e-9);
    assert_int_equal(jint(d0, "errors"), 1);
    assert_string_equal(json_string_value(json_object_get(d1, "date")), f.yesterday);
    assert_int_equal(jint(d1, "requests"), 1);
    assert_int_equal(jint(d1, "tokens"), 1500);
    assert_int_equal(jint(d2, "requests"), 0);
    assert_int_equal(jint(d2, "tokens"), 0);
    json_decref(c.json);
    c = user_get(&f, "/api/usage/daily", NULL);
    assert_int_equal(json_array_size(c.json), 30);
    json_decref(c.json);
    assert_bad_param(user_get(&f, "/api/usage/daily", "days=0"), "days");
    assert_bad_param(user_get(&f, "/api/usage/daily", "days=366"), "days");
    assert_bad_param(user_get(&f, "/api/usage/daily", "days=abc"), "days");
    fixture_free(&f);
}

static void test_logs_paging_and_filters(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    call_t c = user_get(&f, "/api/usage/logs", "limit=2");
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total"), 5);
    assert_int_equal(jint(c.json, "limit"), 2);
    json_t *items = json_object_get(c.json, "items");
    assert_int_equal(json_array_size(items), 2);
    json_t *first = json_array_get(items, 0);
    assert_int_equal(jint(first, "response_status"), 429); /* newest first */
    assert_string_equal(json_string_value(json_object_get(first, "error_code")),
                        "rate_limit_error");
    assert_true(json_is_true(json_object_get(first, "is_error")));
    assert_true(json_is_number(json_object_get(first, "total_cost")));
    json_t *second = json_array_get(items, 1);
    assert_int_equal(jint(second, "cache_creation_tokens"), 0);
    assert_true(fabs(jnum(second, "total_cost") - 0.5) < 1e-9);
    json_decref(c.json);
    c = user_get(&f, "/api/usage/logs", "status=200");
    assert_int_equal(jint(c.json, "total"), 3);
    json_decref(c.json);
    c = user_get(&f, "/api/usage/logs", "model=claude-haiku-4-5&skip=1");
    assert_int_equal(jint(c.json, "total"), 2);
    assert_int_equal(json_array_size(json_object_get(c.json, "items")), 1);
    json_decref(c.json);
    assert_bad_param(user_get(&f, "/api/usage/logs", "limit=1001"), "limit");
    assert_bad_param(user_get(&f, "/api/usage/logs", "limit=0"), "limit");
    assert_bad_param(user_get(&f, "/api/usage/logs", "skip=-1"), "skip");
    assert_bad_param(user_get(&f, "/api/usage/logs", "status=abc"), "status");
    fixture_free(&f);
}

static void test_quota_and_auth(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    call_t c = user_get(&f, "/api/usage/quota", NULL);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "token_limit"), 10000);
    assert_int_equal(jint(c.json, "token_used"), 2000);
    assert_int_equal(jint(c.json, "token_remaining"), 8000);
    assert_true(fabs(jnum(c.json, "usage_percentage") - 20.0) < 1e-9);
    assert_true(json_is_false(json_object_get(c.json, "is_quota_exceeded")));
    assert_string_equal(json_string_value(json_object_get(c.json, "rate_limit_tier")), "basic");
    assert_true(json_is_true(json_object_get(c.json, "is_active")));
    assert_true(json_is_null(json_object_get(c.json, "expires_at")));
    assert_true(json_is_false(json_object_get(c.json, "is_expired")));
    assert_non_null(json_object_get(c.json, "requests_remaining"));
    assert_non_null(json_object_get(c.json, "reset_at"));
    json_decref(c.json);
    /* No key, a wrong key, another method, a path that is not ours. */
    c = do_call(f.r, 0, "GET", "/api/usage", NULL, NULL, NULL);
    assert_int_equal(c.status, 401);
    json_decref(c.json);
    c = do_call(f.r, 0, "GET", "/api/usage", NULL, "x-api-key", "sk-proxy-nothing_wrong");
    assert_int_equal(c.status, 401);
    json_decref(c.json);
    char bearer[RELAY_KEY_MAX + 8];
    snprintf(bearer, sizeof bearer, "Bearer %s", f.key2);
    c = do_call(f.r, 0, "GET", "/api/usage", NULL, "authorization", bearer);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total_requests"), 1); /* beta sees only its own row */
    json_decref(c.json);
    c = do_call(f.r, 0, "POST", "/api/usage", NULL, "x-api-key", f.key);
    assert_int_equal(c.status, 405);
    json_decref(c.json);
    c = do_call(f.r, 0, "GET", "/api/usage/other", NULL, "x-api-key", f.key);
    assert_int_equal(c.rc, RELAY_ERR_NOT_FOUND);
    assert_int_equal(c.status, 0);
    c = do_call(f.r, 0, "GET", "/api/usagex", NULL, "x-api-key", f.key);
    assert_int_equal(c.rc, RELAY_ERR_NOT_FOUND);
    fixture_free(&f);
}

static void test_admin_overview_and_per_key(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    call_t c = admin_get(&f, "/admin/usage", NULL);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total"), 2);
    json_t *items = json_object_get(c.json, "items");
    assert_int_equal(json_array_size(items), 2);
    json_t *a = json_array_get(items, 0); /* sorted by total_tokens desc: alpha first */
    assert_string_equal(json_string_value(json_object_get(a, "name")), "alpha");
    assert_int_equal(jint(a, "total_requests"), 5);
    assert_int_equal(jint(a, "total_tokens"), 2000);
    assert_int_equal(jint(a, "error_count"), 2);
    assert_true(fabs(jnum(a, "total_cost") - 1.875) < 1e-9);
    json_t *t = json_object_get(c.json, "totals");
    assert_int_equal(jint(t, "total_keys"), 2);
    assert_int_equal(jint(t, "total_requests"), 6);
    assert_int_equal(jint(t, "total_tokens"), 2014);
    assert_true(fabs(jnum(t, "total_cost") - 1.9375) < 1e-9);
    json_decref(c.json);

    c = admin_get(&f, "/admin/usage", "sort=name&order=desc&limit=1");
    items = json_object_get(c.json, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "name")),
                        "beta");
    json_decref(c.json);
    char q[64];
    snprintf(q, sizeof q, "start_date=%s", f.today);
    c = admin_get(&f, "/admin/usage", q);
    assert_int_equal(jint(json_object_get(c.json, "totals"), "total_requests"), 4);
    json_decref(c.json);
    assert_bad_param(admin_get(&f, "/admin/usage", "sort=secret"), "sort");
    assert_bad_param(admin_get(&f, "/admin/usage", "order=up"), "order");

    char path[128];
    snprintf(path, sizeof path, "/admin/api-keys/%s/usage", f.rec.id);
    c = admin_get(&f, path, NULL);
    assert_int_equal(c.status, 200);
    assert_int_equal(jint(c.json, "total_tokens"), 2000);
    json_decref(c.json);
    snprintf(path, sizeof path, "/admin/api-keys/%s/usage/daily", f.rec2.id);
    c = admin_get(&f, path, "days=2");
    assert_int_equal(jint(json_array_get(c.json, 0), "tokens"), 14);
    json_decref(c.json);
    snprintf(path, sizeof path, "/admin/api-keys/%s/usage/logs", f.rec.id);
    c = admin_get(&f, path, "limit=1");
    assert_int_equal(jint(c.json, "total"), 5);
    json_decref(c.json);
    c = admin_get(&f, "/admin/api-keys/00000000-0000-4000-8000-000000000000/usage", NULL);
    assert_int_equal(c.status, 404);
    json_decref(c.json);
    /* No token: 401; not a statistics path: NOT_FOUND for the admin handler to take. */
    c = do_call(f.r, 1, "GET", "/admin/usage", NULL, NULL, NULL);
    assert_int_equal(c.status, 401);
    json_decref(c.json);
    c = do_call(f.r, 1, "GET", "/admin/api-keys", NULL, NULL, NULL);
    assert_int_equal(c.rc, RELAY_ERR_NOT_FOUND);
    snprintf(path, sizeof path, "/admin/api-keys/%s/stats", f.rec.id);
    c = do_call(f.r, 1, "GET", path, NULL, NULL, NULL);
    assert_int_equal(c.rc, RELAY_ERR_NOT_FOUND);
    fixture_free(&f);
}

static void test_retention_keeps_daily(void **state)
{
    (void)state;
    fixture_t f;
    fixture_init(&f);
    int64_t deleted = -1;
    assert_int_equal(relay_maintenance_prune(f.r, &deleted), 0);
    assert_int_equal(deleted, 0); /* retention off by default */
    f.r->opts.log_retention_days = 30;
    assert_int_equal(relay_maintenance_prune(f.r, &deleted), 0);
    assert_int_equal(deleted, 1);
    call_t c = user_get(&f, "/api/usage", NULL);
    assert_int_equal(jint(c.json, "total_requests"), 4);
    json_decref(c.json);
    relay_usage_daily_t *d = NULL;
    size_t n = 0;
    assert_int_equal(relay_store_usage_daily(f.r->store, f.rec.id, f.oldday, f.oldday, &d, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(d[0].requests, 1);
    assert_int_equal(d[0].tokens, 10);
    free(d);
    c = admin_get(&f, "/admin/usage", NULL);
    assert_int_equal(jint(json_object_get(c.json, "totals"), "total_requests"), 6);
    json_decref(c.json);
    relay_maintenance_stats_t ms;
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.pruned_rows, 1);
    fixture_free(&f);
}

static void test_alerts_fire_once_across_restart(void **state)
{
    (void)state;
    g_log[0] = '\0';
    fixture_t f;
    fixture_init(&f);
    relay_maintenance_stats_t ms;
    relay_maintenance_quota_check(f.r, &f.rec, 7999, 10000);
    assert_int_equal(relay_maintenance_flush_alerts(f.r, 5000), 0);
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.alerts_fired, 0); /* below 0.8 */
    relay_maintenance_quota_check(f.r, &f.rec, 8000, 10000);
    relay_maintenance_quota_check(f.r, &f.rec, 9000, 10000);
    assert_int_equal(relay_maintenance_flush_alerts(f.r, 5000), 0);
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.alerts_fired, 1);
    relay_maintenance_quota_check(f.r, &f.rec, 10000, 10000);
    assert_int_equal(relay_maintenance_flush_alerts(f.r, 5000), 0);
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.alerts_fired, 2);
    assert_int_equal(log_count("quota.alert"), 2);
    assert_non_null(strstr(g_log, "\"threshold\":0.8,"));
    assert_non_null(strstr(g_log, "\"threshold\":1,") ? strstr(g_log, "\"threshold\":1,")
                                                      : strstr(g_log, "\"threshold\":1.0,"));
    relay_free(f.r);
    /* A restart forgets memory, not the store: nothing fires again. */
    f.r = new_relay();
    relay_maintenance_quota_check(f.r, &f.rec, 10000, 10000);
    assert_int_equal(relay_maintenance_flush_alerts(f.r, 5000), 0);
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.alerts_fired, 0);
    assert_int_equal(ms.alerts_suppressed, 2);
    assert_int_equal(log_count("quota.alert"), 2);
    /* A raised limit re-arms the alerts. */
    relay_maintenance_quota_check(f.r, &f.rec, 16000, 20000);
    assert_int_equal(relay_maintenance_flush_alerts(f.r, 5000), 0);
    relay_maintenance_get_stats(f.r, &ms);
    assert_int_equal(ms.alerts_fired, 1);
    double bad[] = {0.9, 0.5};
    relay_alert_options_t ao = {.thresholds = bad, .n_thresholds = 2};
    relay_error_t err = {0};
    assert_int_equal(relay_maintenance_set_alerts(f.r, &ao, &err), RELAY_ERR_INVALID);
    ao.thresholds = NULL;
    ao.webhook_url = "ftp://example.com";
    assert_int_equal(relay_maintenance_set_alerts(f.r, &ao, &err), RELAY_ERR_INVALID);
    fixture_free(&f);
}

/* ---- the registry (no store needed; runs on both passes, cheaply) ---- */

static void test_registry_format_and_cap(void **state)
{
    (void)state;
    relay_metrics_t *m;
    assert_int_equal(relay_metrics_new(&m), 0);
    relay_metric_t *c, *h, *g;
    const char *labels[] = {"type", "key"};
    relay_metric_desc_t dc = {
        "t_tokens_total", "Tokens.", RELAY_METRIC_COUNTER, labels, 2, 1, 3, NULL, 0};
    assert_int_equal(relay_metrics_register(m, &dc, &c), 0);
    assert_int_equal(relay_metrics_register(m, &dc, NULL), RELAY_ERR_CONFLICT);
    static const double b[] = {0.5, 1, 10};
    relay_metric_desc_t dh = {
        "t_seconds", "Line one\nwith \\ back", RELAY_METRIC_HISTOGRAM, NULL, 0, -1, 0, b, 3};
    assert_int_equal(relay_metrics_register(m, &dh, &h), 0);
    relay_metric_desc_t dg = {"t_gauge", "G.", RELAY_METRIC_GAUGE, labels + 1, 1, 0, 0, NULL, 0};
    assert_int_equal(relay_metrics_register(m, &dg, &g), 0);
    relay_metric_desc_t bad = {"9bad", "x", RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0};
    assert_int_equal(relay_metrics_register(m, &bad, NULL), RELAY_ERR_INVALID);
    double unsorted[] = {2, 1};
    relay_metric_desc_t bad2 = {"t_h2", "x", RELAY_METRIC_HISTOGRAM, NULL, 0, -1, 0, unsorted, 2};
    assert_int_equal(relay_metrics_register(m, &bad2, NULL), RELAY_ERR_INVALID);

    /* Cap 3: the fourth and later keys fold into key="other", the type label kept. */
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(relay_metrics_add(c, (const char *[]){"input", key}, 2), 0);
    }
    assert_int_equal(relay_metrics_series(c), 4);
    assert_true(relay_metrics_value(c, (const char *[]){"input", "other"}) == 14);
    assert_int_equal(relay_metrics_add(c, (const char *[]){"input", "k0"}, -1), RELAY_ERR_INVALID);
    assert_int_equal(relay_metrics_observe(c, (const char *[]){"input", "k0"}, 1),
                     RELAY_ERR_INVALID);
    assert_int_equal(relay_metrics_observe(h, NULL, 0.5), 0);
    assert_int_equal(relay_metrics_observe(h, NULL, 5), 0);
    assert_int_equal(relay_metrics_observe(h, NULL, 100), 0);
    assert_int_equal(relay_metrics_set(g, (const char *[]){"a\"b\\c\nd"}, 0.25), 0);
    assert_int_equal(relay_metrics_set(g, (const char *[]){""}, 3), 0);

    char *text = NULL;
    size_t len = 0;
    assert_int_equal(relay_metrics_render(m, &text, &len), 0);
    assert_int_equal(strlen(text), len);
    assert_non_null(strstr(text, "# TYPE t_tokens_total counter\n"));
    assert_non_null(strstr(text, "t_tokens_total{type=\"input\",key=\"k0\"} 2\n"));
    assert_non_null(strstr(text, "t_tokens_total{type=\"input\",key=\"other\"} 14\n"));
    assert_non_null(strstr(text, "# HELP t_seconds Line one\\nwith \\\\ back\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{le=\"0.5\"} 1\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{le=\"1\"} 1\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{le=\"10\"} 2\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(text, "t_seconds_sum 105.5\n"));
    assert_non_null(strstr(text, "t_seconds_count 3\n"));
    assert_non_null(strstr(text, "t_gauge{key=\"a\\\"b\\\\c\\nd\"} 0.25\n"));
    assert_non_null(strstr(text, "\nt_gauge 3\n")); /* an empty label is left out */
    relay_free_string(text);
    relay_metrics_free(m);
}

static void test_metrics_access(void **state)
{
    (void)state;
    relay_http_header_t h[1] = {{"authorization", "Bearer s3cret-token"}};
    relay_http_request_t req = {
        .method = "GET", .path = "/metrics", .client_ip = "10.1.2.3", .headers = h, .n_headers = 1};
    const char *ips[] = {"127.0.0.1", "10.0.0.0/8"};
    assert_int_equal(relay_metrics_check_access(&req, NULL, NULL, 0), 0);
    assert_int_equal(relay_metrics_check_access(&req, "s3cret-token", ips, 2), 0);
    assert_int_equal(relay_metrics_check_access(&req, "other-token", NULL, 0), RELAY_ERR_AUTH);
    assert_int_equal(relay_metrics_check_access(&req, NULL, ips, 1), RELAY_ERR_PERMISSION);
    req.client_ip = "::1";
    const char *v6[] = {"::1/128"};
    assert_int_equal(relay_metrics_check_access(&req, NULL, v6, 1), 0);
    req.n_headers = 0;
    assert_int_equal(relay_metrics_check_access(&req, "s3cret-token", NULL, 0), RELAY_ERR_AUTH);
}

static void test_relay_scrape_has_required_families(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char *text = NULL;
    assert_int_equal(relay_metrics_scrape(r, &text, NULL), 0);
    const char *want[] = {"relay_requests_total",
                          "proxy_duration_seconds",
                          "relay_time_to_first_byte_seconds",
                          "tokens_used_total",
                          "token_quota_usage_ratio",
                          "relay_upstream_retries_total",
                          "relay_active_streams",
                          "relay_auth_failures_total",
                          "relay_rate_limited_total",
                          "relay_usage_write_queue_depth",
                          "relay_usage_write_drops_total",
                          "relay_unpriced_requests_total"};
    char line[128];
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "# TYPE %s ", want[i]);
        if (!strstr(text, line))
            fail_msg("%s missing from the scrape", want[i]);
    }
    assert_non_null(strstr(text, "relay_usage_write_drops_total 0\n"));
    relay_free_string(text);
    assert_int_equal(relay_metrics_set_key_label(r, "id"), 0);
    assert_int_equal(relay_metrics_set_key_label(r, "secret"), RELAY_ERR_INVALID);
    relay_free(r);
}

/* ---- the usage writer gathers rows for usage.flush_ms ---- */

/*
 * Rows arriving one every 5 ms must be committed about once per flush_ms (100 ms here), not once
 * per row or once per commit: the writer used to start the next transaction as soon as one ended
 * whenever rows had come in meanwhile, ~44 commits a second at one client on this machine.
 */
static void test_usage_writer_gathers_rows(void **state)
{
    (void)state;
    relay_options_t o;
    testdb_options(&o);
    o.usage_flush_ms = 100;
    relay_t *r = testrelay_new(&o);
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    make_key(r, "writer", 0, key, &rec);
    int64_t t0 = relay_mono_ms();
    for (int i = 0; i < 150; i++) {
        relay_usage_row_t u;
        row(&u, rec.id, relay_now(), "claude-sonnet-4-5", 10, 5, 0, 0, 0.001, 200, 1, NULL);
        assert_int_equal(relay_usage_record(r, &u), 0);
        usleep(5000);
    }
    int64_t elapsed = relay_mono_ms() - t0;
    assert_int_equal(relay_usage_flush(r, 20000), 0);
    relay_usage_stats_t st;
    relay_usage_get_stats(r, &st);
    assert_int_equal(st.written, 150);
    /* One batch per 100 ms of arrivals, one more for the flush, one for a boundary. */
    if (st.batches < 2 || (int64_t)st.batches > elapsed / 100 + 2)
        fail_msg("%llu batches for 150 rows over %lld ms", (unsigned long long)st.batches,
                 (long long)elapsed);
    relay_key_record_clear(&rec);
    relay_free(r);
}

int main(int argc, char **argv)
{
    int skip = testdb_init(argc, argv, "stats");
    if (skip)
        return skip;
#define T(f) cmocka_unit_test_setup_teardown(f, testdb_setup, testdb_teardown)
    const struct CMUnitTest tests[] = {
        T(test_summary_exact),
        T(test_summary_ranges_and_params),
        T(test_daily_zeros_newest_first),
        T(test_logs_paging_and_filters),
        T(test_quota_and_auth),
        T(test_admin_overview_and_per_key),
        T(test_retention_keeps_daily),
        T(test_alerts_fire_once_across_restart),
        cmocka_unit_test(test_registry_format_and_cap),
        cmocka_unit_test(test_metrics_access),
        T(test_relay_scrape_has_required_families),
        T(test_usage_writer_gathers_rows),
    };
    return cmocka_run_group_tests_name(testdb_backend(), tests, NULL, NULL);
}
