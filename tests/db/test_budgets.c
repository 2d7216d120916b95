/* test_budgets: per-key cost budgets — each period's cap and reset (test clock), model-family caps,
 * 50 racing requests, restart persistence, default price — on SQLite and PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "limits_internal.h"
#include "relay/budgets.h"
#include "relay/keys.h"
#include "relay/limits.h"
#include "relay/pricing.h"
#include "relay/tiers.h"
#include "relay/usage.h"
#include "testdb.h"
#include "testredis.h"
#include "testlimits.h"
#include "testrelay.h"
#include "tz.h"
#include "util.h"

#define SONNET "claude-sonnet-4-5-20250929"
#define OPUS   "claude-opus-4-1-20250805"
/* Sonnet: $3 in, $15 out per million. 1000 in + 1000 out = $0.018. */
#define EST 0.018

static _Atomic int64_t g_now_ms;
static char g_redis_url[256]; /* set for the Redis round: every relay_t shares that Redis */

static int64_t fake_clock(void *ud)
{
    (void)ud;
    return atomic_load(&g_now_ms);
}

/* 2026-12-01 (a Tuesday) at hh:mm UTC, in ms. */
static int64_t at(int64_t day_offset, int hh, int mm)
{
    return (relay_days_from_civil(2026, 12, 1) + day_offset) * 86400000LL +
           (int64_t)(hh * 3600 + mm * 60) * 1000;
}

static relay_t *new_relay_tz(const char *tz, int clock)
{
    relay_options_t o;
    testdb_options(&o);
    o.budget_timezone = tz;
    if (g_redis_url[0])
        o.redis_url = g_redis_url;
    relay_t *r = testrelay_new(&o);
    if (clock)
        relay_limits_set_clock_for_tests(r, fake_clock, NULL);
    return r;
}

static relay_t *new_relay(void)
{
    atomic_store(&g_now_ms, at(0, 12, 0));
    return new_relay_tz("UTC", 1);
}

static void create_key(relay_t *r, const char *budgets, relay_key_record_t *rec)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "budgeted";
    p.tier = "unlimited";
    p.token_limit = 0;
    p.cost_limits = budgets;
    char key[RELAY_KEY_MAX];
    relay_error_t err = {0};
    if (relay_keys_create(r, &p, key, sizeof key, rec, &err))
        fail_msg("create: %s", err.message);
}

/* One request of 1000 input / 1000 max output tokens, settled at its estimate. */
static int request(relay_t *r, const relay_key_record_t *k, const char *model, double cost,
                   relay_admission_t *a, relay_error_t *err)
{
    relay_admit_request_t q = testlimits_req(k, model, 1000, 1000);
    memset(err, 0, sizeof *err);
    int rc = relay_limits_admit(r, &q, a, err);
    if (rc == 0 && cost >= 0)
        relay_limits_settle_cost(r, a, 2000, cost);
    return rc;
}

static double spent_of(relay_t *r, const relay_key_record_t *k, const char *period)
{
    relay_budget_view_t *v;
    size_t n;
    assert_int_equal(relay_budgets_view(r, k, &v, &n), 0);
    double s = -1;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].period, period) == 0 && !v[i].models[0])
            s = v[i].spent;
    free(v);
    return s;
}

/* Spends until refused; returns how many requests were admitted. */
static int spend_until_refused(relay_t *r, const relay_key_record_t *k, const char *model,
                               relay_admission_t *a, relay_error_t *err, int *code)
{
    int n = 0;
    while ((*code = request(r, k, model, EST, a, err)) == 0)
        n++;
    return n;
}

/* ---- tests ---- */

static void period_case(const char *budgets, int64_t reset_ms, int expect_code)
{
    relay_t *r = new_relay();
    relay_key_record_t k;
    create_key(r, budgets, &k);
    relay_admission_t a;
    relay_error_t err;
    int code;
    /* $0.10 holds 5 requests of $0.018; the 6th would pass the cap. */
    assert_int_equal(spend_until_refused(r, &k, SONNET, &a, &err, &code), 5);
    assert_int_equal(code, expect_code);
    assert_string_equal(a.reason, "budget");
    assert_non_null(strstr(err.message, "cost budget nearly exhausted"));
    if (expect_code == RELAY_ERR_RATE_LIMITED) {
        assert_int_equal(a.retry_after_s, (reset_ms - at(0, 12, 0)) / 1000);
        assert_int_equal(a.reset_at, reset_ms / 1000);
    } else {
        assert_int_equal(a.retry_after_s, 0);
    }
    /* Still refused a second before the reset, admitted again at it. */
    atomic_store(&g_now_ms, reset_ms - 1000);
    assert_int_equal(request(r, &k, SONNET, EST, &a, &err), expect_code);
    atomic_store(&g_now_ms, reset_ms);
    int rc = request(r, &k, SONNET, EST, &a, &err);
    assert_int_equal(rc, expect_code == RELAY_ERR_QUOTA ? RELAY_ERR_QUOTA : 0);
    relay_key_record_clear(&k);
    relay_free(r);
}

static void test_daily_cap_and_reset(void **state)
{
    (void)state;
    period_case("{\"daily_cost_limit\":0.1}", at(1, 0, 0), RELAY_ERR_RATE_LIMITED);
}

static void test_weekly_cap_and_reset(void **state)
{
    (void)state;
    /* Tuesday noon: the week (Monday 00:00) resets next Monday, 2026-12-07. */
    period_case("{\"weekly_cost_limit\":0.1}", at(6, 0, 0), RELAY_ERR_RATE_LIMITED);
}

static void test_monthly_cap_and_reset(void **state)
{
    (void)state;
    period_case("{\"monthly_cost_limit\":0.1}", at(31, 0, 0), RELAY_ERR_RATE_LIMITED);
}

static void test_lifetime_cap_never_resets(void **state)
{
    (void)state;
    period_case("{\"cost_limit\":0.1}", at(400, 0, 0), RELAY_ERR_QUOTA);
}

static void test_exhausted_message_and_lowered_limit(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":1}", &k);
    relay_admission_t a;
    relay_error_t err;
    for (int i = 0; i < 10; i++)
        assert_int_equal(request(r, &k, SONNET, 0.05, &a, &err), 0);
    /* Lowered below the $0.50 spent: refused at once, and the message says it is spent. */
    relay_key_update_t u = {.set = RELAY_KEY_SET_COST_LIMITS,
                            .cost_limits = "{\"daily_cost_limit\":0.4}"};
    relay_key_record_t k2;
    assert_int_equal(relay_keys_update(r, k.id, &u, &k2, &err), 0);
    assert_int_equal(request(r, &k2, SONNET, EST, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_non_null(strstr(err.message, "daily cost budget exhausted: $0.5000 of $0.40 spent"));
    assert_non_null(strstr(err.message, "resets at 2026-12-02T00:00:00Z"));
    /* The spend survived the change of limit. */
    assert_true(fabs(spent_of(r, &k2, "daily") - 0.5) < 1e-9);
    relay_key_record_clear(&k);
    relay_key_record_clear(&k2);
    relay_free(r);
}

static void test_model_family_cap(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_key_record_t k;
    create_key(r,
               "{\"model_cost_limits\":[{\"models\":[\"claude-opus-*\"],\"period\":\"weekly\","
               "\"limit\":0.2}]}",
               &k);
    relay_admission_t a;
    relay_error_t err;
    /* Opus 4.1: $15 in + $75 out per million: 1000 + 1000 = $0.09 reserved; 2 fit in $0.20. */
    int code, n = 0;
    while ((code = request(r, &k, OPUS, 0.09, &a, &err)) == 0)
        n++;
    assert_int_equal(n, 2);
    assert_int_equal(code, RELAY_ERR_RATE_LIMITED);
    assert_non_null(strstr(err.message, "weekly cost budget for claude-opus-*"));
    /* Sonnet is outside the family: still admitted. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(request(r, &k, SONNET, EST, &a, &err), 0);
    relay_key_record_clear(&k);
    relay_free(r);
}

typedef struct race {
    relay_t *r;
    const relay_key_record_t *k;
    pthread_barrier_t *go;
    _Atomic int admitted;
} race_t;

/* Each request really costs 10% more than its estimate (say, a longer input than estimated). */
static void *race_thread(void *arg)
{
    race_t *rc = arg;
    relay_admission_t a;
    relay_error_t err;
    relay_admit_request_t q = testlimits_req(rc->k, SONNET, 1000, 1000);
    pthread_barrier_wait(rc->go);
    if (relay_limits_admit(rc->r, &q, &a, &err) == 0) {
        atomic_fetch_add(&rc->admitted, 1);
        relay_limits_settle_cost(rc->r, &a, 2000, EST * 1.1);
    }
    return NULL;
}

static void test_fifty_concurrent_overshoot_bounded(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":1.0}", &k);
    relay_admission_t a;
    relay_error_t err;
    /* Nearly spent: $0.91 of $1.00, so at most 5 requests of $0.018 can be reserved. */
    for (int i = 0; i < 91; i++)
        assert_int_equal(request(r, &k, SONNET, 0.01, &a, &err), 0);
    enum { N = 50 };
    pthread_t th[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    race_t rc = {.r = r, .k = &k, .go = &go};
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_thread, &rc), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    double spent = spent_of(r, &k, "daily");
    int n = atomic_load(&rc.admitted);
    assert_true(n >= 1 && n <= 5);
    /* Over the cap by at most the admitted requests' estimation error (10% each), never more
       than one request's estimate. */
    assert_true(spent <= 1.0 + EST + 1e-9);
    assert_true(spent <= 0.91 + n * EST * 1.1 + 1e-9);
    relay_budget_view_t *v;
    size_t nv;
    assert_int_equal(relay_budgets_view(r, &k, &v, &nv), 0);
    assert_true(v[0].reserved < 1e-9);
    free(v);
    relay_key_record_clear(&k);
    relay_free(r);
}

static void record_row(relay_t *r, const char *key_id, const char *model, double cost)
{
    relay_usage_row_t row = {0};
    relay_strlcpy(row.api_key_id, key_id, sizeof row.api_key_id);
    relay_strlcpy(row.model, model, sizeof row.model);
    relay_strlcpy(row.request_method, "POST", sizeof row.request_method);
    relay_strlcpy(row.request_path, "/v1/messages", sizeof row.request_path);
    row.response_status = 200;
    row.prompt_tokens = 1000;
    row.completion_tokens = 1000;
    row.total_tokens = 2000;
    row.billed_tokens = 2000;
    row.total_cost = cost;
    row.attempts = 1;
    row.created_at = relay_now();
    assert_int_equal(relay_usage_record(r, &row), 0);
}

static void test_restart_keeps_spend(void **state)
{
    (void)state;
    relay_t *r = new_relay_tz("UTC", 0); /* the real clock: rows carry real times */
    relay_key_record_t k;
    create_key(r,
               "{\"daily_cost_limit\":1,\"weekly_cost_limit\":2,\"monthly_cost_limit\":3,"
               "\"cost_limit\":4,\"model_cost_limits\":[{\"models\":[\"claude-opus-*\"],"
               "\"period\":\"daily\",\"limit\":1}]}",
               &k);
    record_row(r, k.id, SONNET, 0.25);
    record_row(r, k.id, OPUS, 0.5);
    assert_int_equal(relay_usage_flush(r, 5000), 0);
    relay_free(r);
    r = new_relay_tz("UTC", 0);
    relay_budget_view_t *v;
    size_t n;
    assert_int_equal(relay_budgets_view(r, &k, &v, &n), 0);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        double want = v[i].models[0] ? 0.5 : 0.75;
        if (fabs(v[i].spent - want) > 1e-9)
            fail_msg("%s %s: spent %f, want %f", v[i].period, v[i].models, v[i].spent, want);
    }
    free(v);
    relay_key_record_clear(&k);
    relay_free(r);
}

static void test_restart_partial_day_in_time_zone(void **state)
{
    (void)state;
    /* In a zone far from UTC a daily period starts inside a UTC day: the part of that day before
       the period must not count, and the rest must. */
    relay_t *r = new_relay_tz("Pacific/Kiritimati", 0); /* UTC+14 */
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":1,\"cost_limit\":5}", &k);
    record_row(r, k.id, SONNET, 0.3);
    assert_int_equal(relay_usage_flush(r, 5000), 0);
    relay_free(r);
    r = new_relay_tz("Pacific/Kiritimati", 0);
    assert_true(fabs(spent_of(r, &k, "daily") - 0.3) < 1e-9);
    assert_true(fabs(spent_of(r, &k, "total") - 0.3) < 1e-9);
    relay_key_record_clear(&k);
    relay_free(r);
}

static void test_unknown_model_default_price(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    int known = 1;
    double c = relay_usage_cost(r, "gpt-unknown-1", 1000000, 1000000, 0, 0, 0, &known);
    assert_int_equal(known, 0);
    assert_true(fabs(c - 90.0) < 1e-9); /* the dearest entry: Opus 4/4.1, $15 + $75 */
    c = relay_usage_cost(r, "claude-opus-4-6", 1000000, 1000000, 0, 0, 0, &known);
    assert_int_equal(known, 1);
    assert_true(fabs(c - 30.0) < 1e-9);
    c = relay_usage_cost(r, "claude-haiku-4-5-20251001", 1000000, 1000000, 0, 0, 0, &known);
    assert_true(known && fabs(c - 6.0) < 1e-9);
    /* A budget holds for an unknown model too: reserved at the default price ($0.09 here). */
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":0.1}", &k);
    relay_admission_t a;
    relay_error_t err;
    assert_int_equal(request(r, &k, "gpt-unknown-1", -1, &a, &err), 0);
    assert_true(fabs(a.cost_reserved - 0.09) < 1e-9);
    relay_limits_settle_cost(r, &a, 2000, 0.09);
    assert_int_equal(request(r, &k, "gpt-unknown-1", -1, &a, &err), RELAY_ERR_RATE_LIMITED);
    relay_key_record_clear(&k);
    relay_free(r);
}

static void test_pricing_set_persists(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_error_t err = {0};
    assert_int_equal(relay_pricing_set(r,
                                       "{\"prices\":[{\"model_prefix\":\"x-\",\"input\":-1,"
                                       "\"output\":1}]}",
                                       &err),
                     RELAY_ERR_INVALID);
    assert_string_equal(err.message, "prices[0].input: expected a non-negative number");
    assert_int_equal(relay_pricing_set(r,
                                       "{\"prices\":[{\"model_prefix\":\"claude-\","
                                       "\"input\":1,\"output\":2},{\"model_prefix\":\"big\","
                                       "\"input\":10,\"output\":20}],\"default\":\"claude-\"}",
                                       &err),
                     0);
    relay_free(r);
    r = new_relay();
    int known;
    double c = relay_usage_cost(r, "zzz", 1000000, 0, 0, 0, 0, &known);
    assert_int_equal(known, 0);
    assert_true(fabs(c - 1.0) < 1e-9);
    char *s = relay_pricing_to_json(r);
    assert_non_null(strstr(s, "\"source\":\"admin\""));
    relay_free_string(s);
    relay_free(r);
}

static void test_two_instances_share_through_redis(void **state)
{
    (void)state;
    if (!g_redis_url[0])
        skip();
    relay_t *r1 = new_relay(), *r2 = new_relay_tz("UTC", 1);
    relay_key_record_t k;
    create_key(r1, "{\"daily_cost_limit\":0.1}", &k);
    relay_admission_t a;
    relay_error_t err;
    for (int i = 0; i < 3; i++)
        assert_int_equal(request(r1, &k, SONNET, EST, &a, &err), 0);
    /* r2 never served the key: Redis tells it what r1 spent, so only 2 more fit. */
    assert_int_equal(request(r2, &k, SONNET, EST, &a, &err), 0);
    assert_int_equal(request(r2, &k, SONNET, EST, &a, &err), 0);
    assert_int_equal(request(r2, &k, SONNET, EST, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_int_equal(request(r1, &k, SONNET, EST, &a, &err), RELAY_ERR_RATE_LIMITED);
    /* A reservation held on r1 is seen by r2. */
    relay_key_record_t k2;
    create_key(r1, "{\"daily_cost_limit\":0.03}", &k2);
    relay_admission_t held;
    assert_int_equal(request(r1, &k2, SONNET, -1, &held, &err), 0);
    assert_int_equal(request(r2, &k2, SONNET, EST, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_non_null(strstr(err.message, "reserved by requests in flight"));
    relay_limits_settle_cost(r1, &held, 2000, 0.001);
    assert_int_equal(request(r2, &k2, SONNET, EST, &a, &err), 0);
    assert_true(fabs(spent_of(r1, &k2, "daily") - 0.019) < 1e-9);
    relay_key_record_clear(&k);
    relay_key_record_clear(&k2);
    relay_free(r2);
    relay_free(r1);
}

static void test_redis_down_decides_in_process(void **state)
{
    (void)state;
    char saved[sizeof g_redis_url];
    memcpy(saved, g_redis_url, sizeof saved);
    /* Nothing listens on port 1: Redis is down from the start, as after an outage. */
    relay_strlcpy(g_redis_url, "redis://127.0.0.1:1", sizeof g_redis_url);
    period_case("{\"daily_cost_limit\":0.1}", at(1, 0, 0), RELAY_ERR_RATE_LIMITED);
    relay_t *r = new_relay();
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":0.1}", &k);
    relay_admission_t a;
    relay_error_t err;
    assert_int_equal(request(r, &k, SONNET, EST, &a, &err), 0);
    relay_limits_stats_t st;
    relay_limits_get_stats(r, &st);
    assert_int_equal(st.redis_up, 0);
    relay_key_record_clear(&k);
    relay_free(r);
    memcpy(g_redis_url, saved, sizeof saved);
}

static void test_tier_defaults_inherited(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_tier_def_t t = {.name = "team", .requests = -1, .period_s = 60};
    relay_strlcpy(t.cost_limits, "{\"daily_cost_limit\":0.05}", sizeof t.cost_limits);
    relay_error_t err = {0};
    assert_int_equal(relay_tiers_set(r, &t, &err), 0);
    relay_strlcpy(t.cost_limits, "{\"daily_cost_limit\":-1}", sizeof t.cost_limits);
    assert_int_equal(relay_tiers_set(r, &t, &err), RELAY_ERR_INVALID);
    assert_non_null(strstr(err.message, "daily_cost_limit: expected a non-negative"));
    /* A key of the tier with no budgets of its own has the tier's... */
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "inherits";
    p.tier = "team";
    p.token_limit = 0;
    char key[RELAY_KEY_MAX];
    relay_key_record_t k;
    assert_int_equal(relay_keys_create(r, &p, key, sizeof key, &k, &err), 0);
    relay_admission_t a;
    int code;
    assert_int_equal(spend_until_refused(r, &k, SONNET, &a, &err, &code), 2);
    assert_int_equal(code, RELAY_ERR_RATE_LIMITED);
    /* ... and its own value replaces the tier's, while the tier's others still apply. */
    relay_strlcpy(t.cost_limits, "{\"daily_cost_limit\":0.05,\"cost_limit\":0.2}",
                  sizeof t.cost_limits);
    assert_int_equal(relay_tiers_set(r, &t, &err), 0);
    relay_key_update_t u = {.set = RELAY_KEY_SET_COST_LIMITS,
                            .cost_limits = "{\"daily_cost_limit\":1}"};
    relay_key_record_t k2;
    assert_int_equal(relay_keys_update(r, k.id, &u, &k2, &err), 0);
    relay_budget_view_t *v;
    size_t n;
    assert_int_equal(relay_budgets_view(r, &k2, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].period, "total");
    assert_true(fabs(v[0].limit - 0.2) < 1e-12);
    assert_string_equal(v[1].period, "daily");
    assert_true(fabs(v[1].limit - 1) < 1e-12);
    assert_true(fabs(v[1].spent - 2 * EST) < 1e-9); /* the spend stayed with the period */
    free(v);
    /* The new lifetime budget read its spend from the store, which holds no rows here (these
       requests settle without a usage row): all of 0.2 is left, 11 requests of 0.018. */
    assert_int_equal(spend_until_refused(r, &k2, SONNET, &a, &err, &code), 11);
    assert_int_equal(code, RELAY_ERR_QUOTA);
    relay_key_record_clear(&k);
    relay_key_record_clear(&k2);
    relay_free(r);
}

static void expect_invalid(const char *json, const char *msg)
{
    relay_error_t err = {0};
    assert_int_equal(relay_budgets_validate(json, &err), RELAY_ERR_INVALID);
    if (!strstr(err.message, msg))
        fail_msg("%s: got '%s', want '%s'", json, err.message, msg);
}

static void test_validation_names_field(void **state)
{
    (void)state;
    expect_invalid("{\"daily_cost_limit\":-1}", "daily_cost_limit: expected a non-negative");
    expect_invalid("{\"cost_limit\":\"10\"}", "cost_limit: expected a non-negative");
    expect_invalid("{\"model_cost_limits\":[{\"models\":[],\"period\":\"daily\",\"limit\":1}]}",
                   "model_cost_limits[0].models: expected a non-empty list");
    expect_invalid("{\"model_cost_limits\":[{\"models\":[\"a\"],\"period\":\"hourly\","
                   "\"limit\":1}]}",
                   "model_cost_limits[0].period: expected daily, weekly, monthly or total");
    expect_invalid("{\"yearly_cost_limit\":1}", "yearly_cost_limit: unknown budget field");
    relay_error_t err = {0};
    assert_int_equal(relay_budgets_validate("{\"daily_cost_limit\":null}", &err), 0);
    /* A nonexistent time zone refuses to start, naming the option. */
    relay_options_t o;
    testdb_options(&o);
    o.budget_timezone = "Mars/Olympus_Mons";
    relay_t *r = NULL;
    assert_int_equal(relay_new(&r, &o, &err), RELAY_ERR_CONFIG);
    assert_non_null(strstr(err.message, "budgets.timezone: unknown time zone"));
}

static void test_time_zone_periods(void **state)
{
    (void)state;
    /* Europe/Berlin in December is UTC+1: the day starts at 23:00 UTC the evening before. */
    atomic_store(&g_now_ms, at(0, 22, 30));
    relay_t *r = new_relay_tz("Europe/Berlin", 1);
    relay_key_record_t k;
    create_key(r, "{\"daily_cost_limit\":1,\"monthly_cost_limit\":5}", &k);
    relay_budget_view_t *v;
    size_t n;
    assert_int_equal(relay_budgets_view(r, &k, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].period, "daily");
    assert_int_equal(v[0].resets_at, at(0, 23, 0) / 1000);
    assert_string_equal(v[1].period, "monthly");
    assert_int_equal(v[1].resets_at, at(30, 23, 0) / 1000); /* 2027-01-01 00:00 Berlin */
    free(v);
    relay_key_record_clear(&k);
    relay_free(r);
}

int main(int argc, char **argv)
{
    int skip = testdb_init(argc, argv, "budgets");
    if (skip)
        return skip;
#define T(f) cmocka_unit_test_setup_teardown(f, testdb_setup, testdb_teardown)
    const struct CMUnitTest tests[] = {
        T(test_daily_cap_and_reset),
        T(test_weekly_cap_and_reset),
        T(test_monthly_cap_and_reset),
        T(test_lifetime_cap_never_resets),
        T(test_exhausted_message_and_lowered_limit),
        T(test_model_family_cap),
        T(test_fifty_concurrent_overshoot_bounded),
        T(test_restart_keeps_spend),
        T(test_restart_partial_day_in_time_zone),
        T(test_unknown_model_default_price),
        T(test_pricing_set_persists),
        T(test_validation_names_field),
        T(test_time_zone_periods),
        T(test_two_instances_share_through_redis),
        T(test_tier_defaults_inherited),
        T(test_redis_down_decides_in_process),
    };
    int failed = cmocka_run_group_tests_name(testdb_backend(), tests, NULL, NULL);
    /* The same again with the budgets shared through Redis, when there is one. */
    /* A database of its own: the sqlite and pg runs of this suite, and the e2e suites, run in
     * parallel, and a shared one let them see each other's tier budgets. */
    const char *redis = testredis_url();
    if (!redis)
        return failed;
    snprintf(g_redis_url, sizeof g_redis_url, "%s", redis);
    char name[64];
    snprintf(name, sizeof name, "%s+redis", testdb_backend());
    return failed | cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
