/* test_upstreams: the pool's choice (priority, weight, models, groups, room), sessions,
 * cooldowns, broken keys and rate-limit steering, on a relay_t with a test clock; the sealing
 * of stored keys; and the measurement behind choosing smooth weighted round robin. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/upstreams.h"
#include "seal.h"
#include "testrelay.h"
#include "upstreams_internal.h"

typedef struct fixture {
    char dir[64];
    relay_t *r;
    int64_t now;
} fixture_t;

static int64_t fake_clock(void *ud)
{
    return ((fixture_t *)ud)->now;
}

static relay_upstream_def_t def(const char *name, int weight, int priority)
{
    relay_upstream_def_t d = {.weight = weight, .priority = priority, .max_retries = -1};
    snprintf(d.name, sizeof d.name, "%s", name);
    snprintf(d.url, sizeof d.url, "http://127.0.0.1:9/%s", name);
    snprintf(d.api_key, sizeof d.api_key, "sk-ant-test-key-of-%s", name);
    return d;
}

/* A pool of a (weight 1), b (weight 3), both priority 0, and the secondary s; no primary. */
static fixture_t *start(const relay_upstream_def_t *defs, size_t n)
{
    fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/relay-upstreams-XXXXXX");
    relay_options_t o;
    relay_options_init(&o);
    o.upstreams = defs;
    o.n_upstreams = n;
    f->r = testrelay_new_in_tmpdir(f->dir, &o);
    f->now = 1700000000000;
    relay_upstreams_set_clock_for_tests(f->r, fake_clock, f);
    return f;
}

static int setup_pool(void **state)
{
    static relay_upstream_def_t defs[3];
    defs[0] = def("a", 1, 0);
    defs[1] = def("b", 3, 0);
    defs[2] = def("s", 1, 1);
    *state = start(defs, 3);
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    testrelay_free_dir(f->r, f->dir);
    free(f);
    return 0;
}

static const relay_upstream_report_t OK = {
    .outcome = RELAY_UPSTREAM_OK, .status = 200, .retry_after_s = -1, .rl_remaining = -1};

/* Takes an upstream for q and gives it back with rep; returns its name (static buffer). */
static const char *pick(fixture_t *f, relay_upstream_query_t *q, const relay_upstream_report_t *rep)
{
    static char name[64];
    relay_upstream_lease_t l;
    int64_t at;
    int rc = relay_upstreams_take(f->r, q, 0, &l, &at);
    if (rc)
        return "-";
    snprintf(name, sizeof name, "%s", l.def.name);
    relay_upstreams_done(f->r, q, &l, rep ? rep : &OK);
    return name;
}

static const char *pick_plain(fixture_t *f)
{
    relay_upstream_query_t q = {0};
    return pick(f, &q, NULL);
}

static void test_shares_follow_weights(void **state)
{
    fixture_t *f = *state;
    int a = 0, b = 0, s = 0;
    for (int i = 0; i < 400; i++) {
        const char *n = pick_plain(f);
        a += !strcmp(n, "a"), b += !strcmp(n, "b"), s += !strcmp(n, "s");
    }
    assert_int_equal(a, 100);
    assert_int_equal(b, 300);
    assert_int_equal(s, 0); /* the secondary waits while priority 0 can serve */
}

static void test_session_stays_on_its_upstream(void **state)
{
    fixture_t *f = *state;
    relay_upstream_query_t q = {.session = "session-1"};
    char first[64];
    snprintf(first, sizeof first, "%s", pick(f, &q, NULL));
    for (int i = 0; i < 20; i++) {
        relay_upstream_query_t again = {.session = "session-1"};
        assert_string_equal(pick(f, &again, NULL), first);
        pick_plain(f); /* other traffic moves the round robin on */
    }
}

static void test_cooldown_then_back(void **state)
{
    fixture_t *f = *state;
    relay_upstream_query_t q = {0};
    relay_upstream_lease_t l;
    int64_t at;
    /* b answers 529 with retry-after 30: it cools down for 30 s */
    while (relay_upstreams_take(f->r, &q, 0, &l, &at) == 0 && strcmp(l.def.name, "b") != 0)
        relay_upstreams_release(f->r, &l);
    relay_upstream_report_t overloaded = {.outcome = RELAY_UPSTREAM_OVERLOADED,
                                          .status = 529,
                                          .retry_after_s = 30,
                                          .rl_remaining = -1};
    relay_upstreams_done(f->r, &q, &l, &overloaded);
    for (int i = 0; i < 10; i++)
        assert_string_equal(pick_plain(f), "a");
    relay_upstream_info_t *in;
    size_t n;
    assert_int_equal(relay_upstreams_list(f->r, &in, &n), 0);
    assert_string_equal(in[1].name, "b");
    assert_string_equal(in[1].state, "cooling");
    assert_int_equal(in[1].cooldown_until_ms, f->now + 30000);
    assert_int_equal(in[1].cooldowns, 1);
    free(in);
    f->now += 31000;
    int b = 0;
    for (int i = 0; i < 8; i++)
        b += !strcmp(pick_plain(f), "b");
    assert_int_equal(b, 6);
}

static void test_secondary_only_while_others_unavailable(void **state)
{
    fixture_t *f = *state;
    relay_upstream_report_t auth = {
        .outcome = RELAY_UPSTREAM_AUTH, .status = 401, .retry_after_s = -1, .rl_remaining = -1};
    /* a and b answer 401: broken, and the secondary serves */
    for (int i = 0; i < 2; i++) {
        relay_upstream_query_t q = {0};
        pick(f, &q, &auth);
    }
    for (int i = 0; i < 5; i++)
        assert_string_equal(pick_plain(f), "s");
    relay_upstream_info_t *in;
    size_t n;
    assert_int_equal(relay_upstreams_list(f->r, &in, &n), 0);
    assert_string_equal(in[0].state, "broken");
    assert_false(in[0].healthy);
    free(in);
    /* an admin enables a: priority 0 serves again, the secondary waits */
    assert_int_equal(relay_upstreams_set_disabled(f->r, "config:a", 0), 0);
    for (int i = 0; i < 5; i++)
        assert_string_equal(pick_plain(f), "a");
}

static void test_nothing_available_gives_earliest_cooldown(void **state)
{
    fixture_t *f = *state;
    int ra[] = {20, 5, 60};
    for (int i = 0; i < 3; i++) {
        relay_upstream_query_t q = {0};
        relay_upstream_report_t rep = {.outcome = RELAY_UPSTREAM_OVERLOADED,
                                       .status = 429,
                                       .retry_after_s = ra[i],
                                       .rl_remaining = -1};
        pick(f, &q, &rep);
    }
    relay_upstream_query_t q = {0};
    relay_upstream_lease_t l;
    int64_t at = 0;
    assert_int_equal(relay_upstreams_take(f->r, &q, 0, &l, &at), RELAY_ERR_OVERLOADED);
    assert_int_equal(at, f->now + 5000);
}

static void test_failed_upstream_is_not_retaken_by_its_request(void **state)
{
    fixture_t *f = *state;
    relay_upstream_query_t q = {0};
    relay_upstream_report_t err = {
        .outcome = RELAY_UPSTREAM_SERVER, .status = 503, .retry_after_s = -1, .rl_remaining = -1};
    char first[64];
    snprintf(first, sizeof first, "%s", pick(f, &q, &err));
    const char *second = pick(f, &q, &err);
    assert_string_not_equal(second, first);
    assert_string_equal(pick(f, &q, NULL), "s"); /* both priority 0 failed it: the secondary */
}

static void test_ratelimit_steers_new_sessions(void **state)
{
    fixture_t *f = *state;
    relay_upstream_report_t low = OK;
    low.rl_remaining = 0.01;
    relay_upstream_query_t q = {.session = "old"};
    while (strcmp(pick(f, &q, &low), "b") != 0)
        q = (relay_upstream_query_t){.session = "old"};
    /* b is nearly exhausted: new work goes to a, the session already on b stays */
    for (int i = 0; i < 6; i++)
        assert_string_equal(pick_plain(f), "a");
    relay_upstream_query_t s = {.session = "old"};
    assert_string_equal(pick(f, &s, NULL), "b");
}

static void test_models_groups_and_room(void **state)
{
    static relay_upstream_def_t defs[3];
    defs[0] = def("haiku", 1, 0);
    snprintf(defs[0].models[0], sizeof defs[0].models[0], "claude-haiku-*");
    defs[0].n_models = 1;
    defs[1] = def("any", 1, 0);
    defs[1].max_concurrency = 1;
    defs[2] = def("team", 1, 0);
    snprintf(defs[2].group, sizeof defs[2].group, "team-x");
    fixture_t *f = start(defs, 3);
    relay_upstream_query_t opus = {.model = "claude-opus-4-1"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(pick(f, &opus, NULL), "any");
    relay_upstream_query_t team = {.group = "team-x", .model = "claude-haiku-4-5"};
    assert_string_equal(pick(f, &team, NULL), "team");
    /* "any" holds its one request: the next opus request finds no room */
    relay_upstream_lease_t l, l2;
    int64_t at;
    relay_upstream_query_t q1 = {.model = "claude-opus-4-1"}, q2 = q1;
    assert_int_equal(relay_upstreams_take(f->r, &q1, 0, &l, &at), 0);
    assert_int_equal(relay_upstreams_take(f->r, &q2, 0, &l2, &at), RELAY_ERR_OVERLOADED);
    relay_upstreams_release(f->r, &l);
    *state = f;
    teardown(state);
}

static void test_pool_of_one_never_cools(void **state)
{
    static relay_upstream_def_t defs[1];
    defs[0] = def("only", 1, 0);
    fixture_t *f = start(defs, 1);
    relay_upstream_report_t overloaded = {.outcome = RELAY_UPSTREAM_OVERLOADED,
                                          .status = 529,
                                          .retry_after_s = 30,
                                          .rl_remaining = -1};
    relay_upstream_report_t auth = {
        .outcome = RELAY_UPSTREAM_AUTH, .status = 401, .retry_after_s = -1, .rl_remaining = -1};
    relay_upstream_query_t q = {0}, q2 = {0};
    pick(f, &q, &overloaded);
    pick(f, &q2, &auth);
    assert_string_equal(pick_plain(f), "only");
    *state = f;
    teardown(state);
}

static void test_patterns_and_sessions(void **state)
{
    assert_true(relay_upstreams_model_match("claude-sonnet-*", "claude-sonnet-4-5"));
    assert_true(relay_upstreams_model_match("*", "x"));
    assert_true(relay_upstreams_model_match("claude-?-x*", "claude-3-x"));
    assert_false(relay_upstreams_model_match("claude-sonnet-*", "claude-opus-4"));
    assert_false(relay_upstreams_model_match("claude", "claude-opus"));
    assert_null(relay_upstreams_check_model("claude-3-5-sonnet@20241022"));
    assert_non_null(relay_upstreams_check_model("claude [x]"));
    assert_non_null(relay_upstreams_check_model(""));
    char sid[128];
    relay_http_header_t h[] = {{"x-claude-code-session-id", "hdr-session"}};
    relay_http_request_t with = {.headers = h, .n_headers = 1}, without = {0};
    relay_upstreams_session_of(&with, "{\"session_id\":\"body\"}", sid, sizeof sid);
    assert_string_equal(sid, "hdr-session");
    relay_upstreams_session_of(&without, "{\"device_id\":\"d\",\"session_id\":\"s-123\"}", sid,
                               sizeof sid);
    assert_string_equal(sid, "s-123");
    relay_upstreams_session_of(&without, "user_abc_account_def_session_0f0e-11", sid, sizeof sid);
    assert_string_equal(sid, "0f0e-11");
    relay_upstreams_session_of(&without, "plain-user", sid, sizeof sid);
    assert_string_equal(sid, "");
}

static void test_seal_round_trip(void **state)
{
    char sealed[RELAY_SEAL_LEN(64)], open[128];
    const char *key = "sk-ant-api03-secret-value-0123456789";
    assert_int_equal(relay_seal("secret-1", "row-1", key, sealed, sizeof sealed), 0);
    assert_null(strstr(sealed, "secret-value"));
    assert_int_equal(strncmp(sealed, "v1:", 3), 0);
    assert_int_equal(relay_unseal("secret-1", "row-1", sealed, open, sizeof open), 0);
    assert_string_equal(open, key);
    /* another secret, another row, or one altered character: it does not open */
    assert_int_equal(relay_unseal("secret-2", "row-1", sealed, open, sizeof open), RELAY_ERR_AUTH);
    assert_int_equal(relay_unseal("secret-1", "row-2", sealed, open, sizeof open), RELAY_ERR_AUTH);
    sealed[10] = sealed[10] == 'A' ? 'B' : 'A';
    assert_int_equal(relay_unseal("secret-1", "row-1", sealed, open, sizeof open), RELAY_ERR_AUTH);
    char again[RELAY_SEAL_LEN(64)];
    relay_seal("secret-1", "row-1", key, again, sizeof again);
    assert_string_not_equal(again, sealed); /* a fresh nonce each time */
}

/*
 * The measurement behind the choice: smooth weighted round robin against least-in-flight by
 * weight (pick the smallest (in_flight + 1) / weight), for weights 1:3, with requests one at a
 * time and with 64 in flight of random length. The share of the weight-3 upstream should be 75%.
 */
static double simulate(int lif, int concurrency, unsigned seed)
{
    const int w[2] = {1, 3};
    int64_t cw[2] = {0, 0};
    int inflight[2] = {0, 0}, served[2] = {0, 0};
    int ends[64], who[64], n = 0;
    srand(seed);
    for (int t = 0; t < 20000; t++) {
        for (int i = 0; i < n;) /* requests end at random times */
            if (ends[i] <= t) {
                inflight[who[i]]--;
                ends[i] = ends[--n], who[i] = who[n];
            } else {
                i++;
            }
        if (n >= concurrency)
            continue;
        int c;
        if (lif) {
            c = (inflight[0] + 1) * w[1] < (inflight[1] + 1) * w[0] ? 0 : 1;
        } else {
            cw[0] += w[0], cw[1] += w[1];
            c = cw[1] >= cw[0] ? 1 : 0;
            cw[c] -= w[0] + w[1];
        }
        inflight[c]++, served[c]++;
        ends[n] = t + (concurrency == 1 ? 0 : 1 + rand() % 200), who[n++] = c;
    }
    return (double)served[1] / (served[0] + served[1]);
}

static void test_swrr_measured_against_least_in_flight(void **state)
{
    double swrr1 = simulate(0, 1, 1), swrr64 = simulate(0, 64, 1);
    double lif1 = simulate(1, 1, 1), lif64 = simulate(1, 64, 1);
    print_message("weight-3 share (want 0.75): swrr sequential %.3f, 64 in flight %.3f; "
                  "least-in-flight sequential %.3f, 64 in flight %.3f\n",
                  swrr1, swrr64, lif1, lif64);
    assert_true(fabs(swrr1 - 0.75) < 0.01);
    assert_true(fabs(swrr64 - 0.75) < 0.01);
    assert_true(fabs(lif1 - 0.75) > 0.2); /* one at a time it sends everything to one upstream */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shares_follow_weights, setup_pool, teardown),
        cmocka_unit_test_setup_teardown(test_session_stays_on_its_upstream, setup_pool, teardown),
        cmocka_unit_test_setup_teardown(test_cooldown_then_back, setup_pool, teardown),
        cmocka_unit_test_setup_teardown(test_secondary_only_while_others_unavailable, setup_pool,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_nothing_available_gives_earliest_cooldown, setup_pool,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_upstream_is_not_retaken_by_its_request,
                                        setup_pool, teardown),
        cmocka_unit_test_setup_teardown(test_ratelimit_steers_new_sessions, setup_pool, teardown),
        cmocka_unit_test(test_models_groups_and_room),
        cmocka_unit_test(test_pool_of_one_never_cools),
        cmocka_unit_test(test_patterns_and_sessions),
        cmocka_unit_test(test_seal_round_trip),
        cmocka_unit_test(test_swrr_measured_against_least_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
