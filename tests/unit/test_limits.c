/* test_limits: the in-process limiter — allowlists, tier windows, token rate, slots, quota races.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "limits_internal.h"
#include "relay/limits.h"
#include "relay/relay.h"
#include "testlimits.h"
#include "testrelay.h"
#include "util.h"

/* ---- fixture: a relay_t on a fresh SQLite file, with a clock the test moves ---- */

/* Every request's model; only test_allowlists_in_admit gives its key a model allowlist. */
#define MODEL "claude-sonnet-4-5"

static const relay_tier_def_t TEST_TIERS[] = {
    {"basic", 100, 60, 0, 0, ""}, {"t3", 3, 60, 0, 0, ""},     {"unl", -1, 60, 0, 0, ""},
    {"tpm", -1, 60, 1000, 0, ""}, {"conc2", -1, 60, 0, 2, ""},
};

typedef struct fixture {
    char dir[64];
    relay_t *r;
    _Atomic int64_t now_ms;
} fixture_t;

static int64_t fake_clock(void *ud)
{
    return atomic_load(&((fixture_t *)ud)->now_ms);
}

static fixture_t *fixture_new(int64_t ceiling)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/relay-limits-XXXXXX");
    relay_options_t o;
    relay_options_init(&o);
    o.tiers = TEST_TIERS;
    o.n_tiers = sizeof TEST_TIERS / sizeof TEST_TIERS[0];
    if (ceiling)
        o.reservation_ceiling = ceiling;
    f->r = testrelay_new_in_tmpdir(f->dir, &o);
    atomic_store(&f->now_ms, 1700000000000LL);
    relay_limits_set_clock_for_tests(f->r, fake_clock, f);
    return f;
}

static void fixture_free(fixture_t *f)
{
    testrelay_free_dir(f->r, f->dir);
    free(f);
}

static int setup(void **state)
{
    *state = fixture_new(0);
    return 0;
}

static int teardown(void **state)
{
    fixture_free(*state);
    return 0;
}

static int admit(fixture_t *f, const relay_admit_request_t *q, relay_admission_t *a,
                 relay_error_t *err)
{
    return relay_limits_admit(f->r, q, a, err);
}

/* ---- pure functions ---- */

static void test_client_ip(void **state)
{
    (void)state;
    const char *trusted[] = {"10.0.0.0/8", "::1"};
    char out[64];
    /* Untrusted peer: headers are ignored (a client cannot spoof its address). */
    assert_int_equal(
        relay_limits_client_ip("203.0.113.5", "1.2.3.4", "5.6.7.8", trusted, 2, out, sizeof out),
        0);
    assert_string_equal(out, "203.0.113.5");
    /* Trusted peer: rightmost untrusted X-Forwarded-For hop. */
    assert_int_equal(relay_limits_client_ip("10.1.1.1", "6.6.6.6, 198.51.100.7, 10.2.2.2", NULL,
                                            trusted, 2, out, sizeof out),
                     0);
    assert_string_equal(out, "198.51.100.7");
    /* All hops trusted: the leftmost. */
    assert_int_equal(
        relay_limits_client_ip("10.1.1.1", "10.9.9.9,10.2.2.2", NULL, trusted, 2, out, sizeof out),
        0);
    assert_string_equal(out, "10.9.9.9");
    /* No X-Forwarded-For: X-Real-IP, IPv6 peer in the trusted list. */
    assert_int_equal(
        relay_limits_client_ip("::1", NULL, "2001:db8::7", trusted, 2, out, sizeof out), 0);
    assert_string_equal(out, "2001:db8::7");
    /* Ports and brackets are stripped; IPv4-mapped IPv6 becomes IPv4. */
    assert_int_equal(
        relay_limits_client_ip("10.0.0.1", "[2001:db8::1]:443", NULL, trusted, 2, out, sizeof out),
        0);
    assert_string_equal(out, "2001:db8::1");
    assert_int_equal(
        relay_limits_client_ip("10.0.0.1", "192.0.2.1:5555", NULL, trusted, 2, out, sizeof out), 0);
    assert_string_equal(out, "192.0.2.1");
    assert_int_equal(
        relay_limits_client_ip("::ffff:192.0.2.9", NULL, NULL, trusted, 2, out, sizeof out), 0);
    assert_string_equal(out, "192.0.2.9");
    /* A garbage hop ends the walk: nothing left of it is believed. */
    assert_int_equal(
        relay_limits_client_ip("10.0.0.1", "1.1.1.1, junk", NULL, trusted, 2, out, sizeof out), 0);
    assert_string_equal(out, "10.0.0.1");
    /* No trusted list: the peer, always. */
    assert_int_equal(relay_limits_client_ip("10.0.0.1", "1.1.1.1", NULL, NULL, 0, out, sizeof out),
                     0);
    assert_string_equal(out, "10.0.0.1");
    assert_int_equal(relay_limits_client_ip("not-an-ip", NULL, NULL, NULL, 0, out, sizeof out),
                     RELAY_ERR_INVALID);
}

static void test_ip_allowlist(void **state)
{
    (void)state;
    const char *l = "[\"192.0.2.10\", \"10.0.0.0/8\", \"2001:db8::/32\", \"::1\"]";
    assert_true(relay_limits_ip_allowed(l, "192.0.2.10"));
    assert_false(relay_limits_ip_allowed(l, "192.0.2.11"));
    assert_true(relay_limits_ip_allowed(l, "10.255.0.1"));
    assert_false(relay_limits_ip_allowed(l, "11.0.0.1"));
    assert_true(relay_limits_ip_allowed(l, "2001:db8:abcd::5"));
    assert_false(relay_limits_ip_allowed(l, "2001:db9::5"));
    assert_true(relay_limits_ip_allowed(l, "::1"));
    assert_true(relay_limits_ip_allowed(l, "::ffff:10.1.2.3")); /* mapped IPv4 matches IPv4 rules */
    assert_false(relay_limits_ip_allowed(l, "garbage"));
    assert_false(relay_limits_ip_allowed(l, NULL));
    /* Odd prefix lengths cut inside a byte. */
    assert_true(relay_limits_ip_allowed("[\"172.16.0.0/12\"]", "172.31.255.255"));
    assert_false(relay_limits_ip_allowed("[\"172.16.0.0/12\"]", "172.32.0.0"));
    /* Empty lists allow all; a comma-separated list works too; a bad entry matches nothing. */
    assert_true(relay_limits_ip_allowed(NULL, "1.2.3.4"));
    assert_true(relay_limits_ip_allowed("[]", "1.2.3.4"));
    assert_true(relay_limits_ip_allowed("", "1.2.3.4"));
    assert_true(relay_limits_ip_allowed("1.2.3.4, 5.6.7.0/24", "5.6.7.8"));
    assert_false(relay_limits_ip_allowed("[\"10.0.0.0/33\"]", "10.0.0.1"));
    assert_false(
        relay_limits_ip_allowed("[\"10.0.0.0/8\"", "10.0.0.1")); /* broken JSON: fail closed */
}

static void test_origin_allowlist(void **state)
{
    (void)state;
    const char *l = "[\"app.example.com\", \"*.example.org\", \"https://exact.test:8443\"]";
    assert_true(relay_limits_origin_allowed(l, "https://app.example.com", NULL));
    assert_true(relay_limits_origin_allowed(l, "https://APP.Example.com:3000", NULL));
    assert_false(relay_limits_origin_allowed(l, "https://evil.app.example.com", NULL));
    assert_false(relay_limits_origin_allowed(l, "https://app.example.com.evil.net", NULL));
    /* "*.example.org": any depth of subdomain, never the apex, never a look-alike. */
    assert_true(relay_limits_origin_allowed(l, "https://a.example.org", NULL));
    assert_true(relay_limits_origin_allowed(l, "https://a.b.example.org", NULL));
    assert_false(relay_limits_origin_allowed(l, "https://example.org", NULL));
    assert_false(relay_limits_origin_allowed(l, "https://badexample.org", NULL));
    /* Entries written as origins match by host. */
    assert_true(relay_limits_origin_allowed(l, "http://exact.test", NULL));
    /* Referer when there is no Origin; neither header: refused. */
    assert_true(relay_limits_origin_allowed(l, NULL, "https://x.example.org/page?q=1"));
    assert_false(relay_limits_origin_allowed(l, NULL, "https://other.test/page"));
    assert_false(relay_limits_origin_allowed(l, NULL, NULL));
    assert_true(relay_limits_origin_allowed("[\"*\"]", "https://anything.test", NULL));
    assert_true(relay_limits_origin_allowed(NULL, NULL, NULL));
    assert_true(relay_limits_origin_allowed("[\"[::1]\"]", "http://[::1]:8080", NULL));
}

static void test_model_allowlist(void **state)
{
    (void)state;
    const char *l = "[\"claude-haiku-4-5\", \"claude-sonnet-4*\"]";
    assert_true(relay_limits_model_allowed(l, "claude-haiku-4-5"));
    assert_false(relay_limits_model_allowed(l, "claude-haiku-4-5-20251001"));
    assert_true(relay_limits_model_allowed(l, "claude-sonnet-4-5-20250929"));
    assert_true(relay_limits_model_allowed(l, "claude-sonnet-4"));
    assert_false(relay_limits_model_allowed(l, "claude-opus-4-1"));
    assert_true(relay_limits_model_allowed(l, NULL));
    assert_true(relay_limits_model_allowed("[]", "claude-opus-4-1"));
    assert_true(relay_limits_model_allowed("[\"*\"]", "anything"));
}

/* ---- with a relay_t ---- */

static void test_billed_tokens_and_status(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(relay_limits_billed_tokens(f->r, 10, 20, 30, 40), 100);
    f->r->opts.weight_cache_read = 0.1;
    f->r->opts.weight_output = 5;
    assert_int_equal(relay_limits_billed_tokens(f->r, 10, 20, 30, 40), 10 + 100 + 30 + 4);
    f->r->opts.weight_cache_read = f->r->opts.weight_output = 1;
    assert_string_equal(relay_limits_redis_status(f->r), "disabled");
}

static void test_requests_exact_count_and_retry_after(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "t3", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 10, 10);
    relay_admission_t a;
    relay_error_t err;
    int64_t t0 = atomic_load(&f->now_ms);
    for (int i = 0; i < 3; i++) {
        atomic_store(&f->now_ms, t0 + i * 10000);
        assert_int_equal(admit(f, &q, &a, &err), 0);
        assert_int_equal(a.requests_limit, 3);
        assert_int_equal(a.requests_remaining, 2 - i);
        assert_int_equal(a.requests_reset_ms, t0 + 60000);
        assert_int_equal(a.backend, RELAY_ADMIT_MEMORY);
        relay_limits_settle(f->r, &a, 20);
    }
    atomic_store(&f->now_ms, t0 + 30000);
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(a.reason, "requests");
    assert_int_equal(a.retry_after_s, 30);
    assert_int_equal(a.limit, 3);
    assert_int_equal(a.remaining, 0);
    assert_string_equal(err.message, "rate limit exceeded: 3 requests per 60 s for tier t3");
    /* A refusal takes nothing: settle on it is a no-op, and the count stays exact. */
    relay_limits_settle(f->r, &a, 0);
    atomic_store(&f->now_ms, t0 + 59999);
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_int_equal(a.retry_after_s, 1);
    /* The first request leaves the window exactly one period after it came. */
    atomic_store(&f->now_ms, t0 + 60000);
    assert_int_equal(admit(f, &q, &a, &err), 0);
    assert_int_equal(a.requests_remaining, 0);
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_RATE_LIMITED);
    assert_int_equal(a.retry_after_s, 10); /* the one from t0+10s frees at t0+70s */

    relay_http_response_t resp = {0};
    relay_limits_refusal_headers(&a, RELAY_ERR_RATE_LIMITED, &resp);
    int seen = 0;
    for (size_t i = 0; i < resp.n_headers; i++) {
        if (strcmp(resp.headers[i].name, "retry-after") == 0 &&
            strcmp(resp.headers[i].value, "10") == 0)
            seen |= 1;
        if (strcmp(resp.headers[i].name, "anthropic-ratelimit-requests-limit") == 0 &&
            strcmp(resp.headers[i].value, "3") == 0)
            seen |= 2;
        if (strcmp(resp.headers[i].name, "anthropic-ratelimit-requests-remaining") == 0 &&
            strcmp(resp.headers[i].value, "0") == 0)
            seen |= 4;
        if (strcmp(resp.headers[i].name, "anthropic-ratelimit-requests-reset") == 0 &&
            strlen(resp.headers[i].value) == 20)
            seen |= 8;
        assert_string_not_equal(resp.headers[i].name, "x-should-retry");
    }
    assert_int_equal(seen, 15);
    relay_http_response_clear(&resp);
}

static void test_no_double_burst_at_window_edge(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "t3", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 1, 1);
    relay_admission_t a;
    /* A fixed minute window would reset at 60 s and let 3 more through at once. */
    int64_t t0 = atomic_load(&f->now_ms) / 60000 * 60000;
    atomic_store(&f->now_ms, t0 + 59900);
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit(f, &q, &a, NULL), 0);
    atomic_store(&f->now_ms, t0 + 60100);
    assert_int_equal(admit(f, &q, &a, NULL), RELAY_ERR_RATE_LIMITED);
    atomic_store(&f->now_ms, t0 + 119899);
    assert_int_equal(admit(f, &q, &a, NULL), RELAY_ERR_RATE_LIMITED);
    atomic_store(&f->now_ms, t0 + 119900);
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit(f, &q, &a, NULL), 0);
    assert_int_equal(admit(f, &q, &a, NULL), RELAY_ERR_RATE_LIMITED);
}

static void test_unlimited_and_unknown_tier(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 1, 1);
    relay_admission_t a;
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(admit(f, &q, &a, NULL), 0);
        relay_limits_settle(f->r, &a, 2);
    }
    assert_int_equal(a.requests_limit, -1);
    /* A tier that vanished falls back to the default tier (basic: 100 per 60 s). */
    testlimits_key_init(&k, "deleted-tier", 0, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(admit(f, &q, &a, NULL), 0);
    assert_string_equal(a.tier, "basic");
    assert_int_equal(admit(f, &q, &a, NULL), RELAY_ERR_RATE_LIMITED);
}

static void test_tokens_per_minute(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "tpm", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 400, 0);
    relay_admission_t a[4];
    relay_error_t err;
    int64_t t0 = atomic_load(&f->now_ms) / 1000 * 1000 + 250;
    atomic_store(&f->now_ms, t0);
    /* Admitted while the minute has room; each reservation counts at once (0, 400, 800 < 1000). */
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit(f, &q, &a[i], &err), 0);
    assert_int_equal(admit(f, &q, &a[3], &err), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(a[3].reason, "tokens");
    assert_int_equal(a[3].retry_after_s, 61); /* the bucket of t0's second leaves at second+61 */
    assert_string_equal(err.message, "rate limit exceeded: 1000 tokens per minute for tier tpm");
    /* Settling at the real usage (100 each) gives the difference back. */
    for (int i = 0; i < 3; i++)
        relay_limits_settle(f->r, &a[i], 100);
    assert_int_equal(admit(f, &q, &a[3], &err), 0);
    assert_int_equal(a[3].tokens_remaining, 1000 - 700);
    /* count_tokens/models do not touch the token window. */
    relay_admit_request_t free_q = q;
    free_q.consumes_quota = 0;
    assert_int_equal(admit(f, &free_q, &a[0], &err), 0);
    atomic_store(&f->now_ms, t0 + 61000);
    assert_int_equal(admit(f, &q, &a[1], &err), 0);
}

static void test_concurrency_slots_released(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "conc2", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 1, 1);
    relay_admission_t a1, a2, a3;
    relay_error_t err;
    assert_int_equal(admit(f, &q, &a1, &err), 0);
    assert_int_equal(admit(f, &q, &a2, &err), 0);
    assert_true(a1.has_slot && a2.has_slot);
    assert_int_equal(admit(f, &q, &a3, &err), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(a3.reason, "concurrency");
    assert_int_equal(a3.retry_after_s, 1);
    assert_string_equal(err.message, "rate limit exceeded: 2 concurrent requests for tier conc2");
    /* A client that disconnected before anything was billed still gives its slot back ... */
    relay_limits_settle(f->r, &a1, 0);
    /* ... once: a second settle of the same admission must not free another request's slot. */
    relay_limits_settle(f->r, &a1, 0);
    assert_int_equal(admit(f, &q, &a3, &err), 0);
    assert_int_equal(admit(f, &q, &a1, &err), RELAY_ERR_RATE_LIMITED);
    relay_limits_settle(f->r, &a2, 5);
    relay_limits_settle(f->r, &a3, 5);
    assert_int_equal(admit(f, &q, &a1, &err), 0);
    assert_int_equal(admit(f, &q, &a2, &err), 0);
}

static void test_quota_exhausted(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000000, 1000000);
    relay_admit_request_t q = testlimits_req(&k, MODEL, 10, 10);
    relay_admission_t a;
    relay_error_t err;
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_QUOTA);
    assert_string_equal(a.reason, "quota");
    assert_string_equal(err.message, "token quota exhausted: 1000000 of 1000000 tokens used");
    assert_int_equal(a.retry_after_s, 0);
    relay_http_response_t resp = {0};
    relay_limits_refusal_headers(&a, RELAY_ERR_QUOTA, &resp);
    assert_int_equal(resp.n_headers, 1);
    assert_string_equal(resp.headers[0].name, "x-should-retry");
    assert_string_equal(resp.headers[0].value, "false");
    relay_http_response_clear(&resp);
    /* count_tokens and models still work on a spent key. */
    q.consumes_quota = 0;
    assert_int_equal(admit(f, &q, &a, &err), 0);
    relay_limits_settle(f->r, &a, 0);
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(f->r, &k, &v), 0);
    assert_true(v.is_quota_exceeded);
    assert_int_equal(v.token_remaining, 0);
}

/* A request that reserves nothing (max_tokens 0, no input estimate) is still refused once used
 * reaches the limit: used == limit is exhausted, not "0 more fits". */
static void test_quota_zero_reserve_at_limit(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000, 999);
    relay_admit_request_t zero = testlimits_req(&k, MODEL, 0, 0);
    relay_admission_t a;
    relay_error_t err;
    assert_int_equal(admit(f, &zero, &a, &err), 0); /* 999 < 1000: room left */
    assert_int_equal(a.reserved_tokens, 0);
    relay_limits_settle(f->r, &a, 1); /* the live count reaches the limit */
    assert_int_equal(admit(f, &zero, &a, &err), RELAY_ERR_QUOTA);
    assert_string_equal(a.reason, "quota");
    assert_string_equal(err.message, "token quota exhausted: 1000 of 1000 tokens used");
    k.token_used = 1000; /* and from the store's counter alone, on a fresh key */
    assert_int_equal(relay_uuid4(k.id, sizeof k.id), 0);
    assert_int_equal(admit(f, &zero, &a, &err), RELAY_ERR_QUOTA);
}

static void test_quota_live_used_and_reservations(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000, 0);
    relay_admission_t a, b, c;
    relay_error_t err;
    relay_admit_request_t q = testlimits_req(&k, MODEL, 100, 200);
    assert_int_equal(admit(f, &q, &a, &err), 0);
    assert_int_equal(a.reserved_tokens, 300);
    relay_limits_settle(f->r, &a, 600);
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(f->r, &k, &v), 0);
    assert_int_equal(v.token_used, 600); /* the record still says 0: the live count wins */
    assert_int_equal(v.token_reserved, 0);
    assert_int_equal(v.token_remaining, 400);
    /* 600 + 500 > 1000: cannot fit even alone, so no point retrying. */
    relay_admit_request_t big = testlimits_req(&k, MODEL, 100, 400);
    assert_int_equal(admit(f, &big, &b, &err), RELAY_ERR_QUOTA);
    assert_non_null(strstr(err.message, "token quota nearly exhausted: 600 of 1000 tokens used"));
    /* 600 + 300 fits; a second 300 does not fit next to the first in flight: retry later. */
    assert_int_equal(admit(f, &q, &b, &err), 0);
    assert_int_equal(relay_limits_quota(f->r, &k, &v), 0);
    assert_int_equal(v.token_reserved, 300);
    assert_int_equal(admit(f, &q, &c, &err), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(c.reason, "quota");
    assert_true(c.retry_after_s >= 1);
    /* The request failed before the upstream charged anything: released in full. */
    relay_limits_settle(f->r, &b, 0);
    assert_int_equal(admit(f, &q, &c, &err), 0);
    /* The store's counter moving past the mirror (another instance) is taken into account. */
    relay_limits_settle(f->r, &c, 0);
    k.token_used = 900;
    assert_int_equal(admit(f, &q, &c, &err), RELAY_ERR_QUOTA);
    /* Unlimited keys (token_limit 0) are never refused for quota. */
    k.token_limit = 0;
    assert_int_equal(admit(f, &q, &c, &err), 0);
}

static void test_allowlists_in_admit(void **state)
{
    fixture_t *f = *state;
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 0, 0);
    k.allowed_ips = "[\"10.0.0.0/8\", \"2001:db8::/32\"]";
    k.allowed_origins = "[\"*.example.com\"]";
    k.allowed_models = "[\"claude-haiku-*\"]";
    relay_admit_request_t q = testlimits_req(&k, MODEL, 1, 1);
    q.client_ip = "10.2.3.4";
    q.origin = "https://app.example.com";
    q.model = "claude-haiku-4-5";
    relay_admission_t a;
    relay_error_t err;
    assert_int_equal(admit(f, &q, &a, &err), 0);
    relay_limits_settle(f->r, &a, 2);
    q.client_ip = "2001:db8::9";
    assert_int_equal(admit(f, &q, &a, &err), 0);
    q.client_ip = "192.168.0.1";
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_PERMISSION);
    assert_string_equal(a.reason, "ip");
    assert_int_equal(a.backend, RELAY_ADMIT_NONE);
    q.client_ip = "10.2.3.4";
    q.origin = "https://example.com";
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_PERMISSION);
    assert_string_equal(a.reason, "origin");
    q.origin = "https://x.example.com";
    q.model = "claude-opus-4-1";
    assert_int_equal(admit(f, &q, &a, &err), RELAY_ERR_PERMISSION);
    assert_string_equal(a.reason, "model");
    assert_non_null(strstr(err.message, "model"));
    relay_limits_stats_t st;
    relay_limits_get_stats(f->r, &st);
    assert_int_equal(st.refused_permission, 3);
    assert_int_equal(st.admitted, 2);
}

/* ---- 50 threads against a nearly spent quota ---- */

typedef struct race {
    fixture_t *f;
    relay_key_record_t *k;
    int64_t input, max_tokens;
    pthread_barrier_t *go;
    atomic_int admitted, in_flight, max_in_flight;
} race_t;

static void *race_thread(void *arg)
{
    race_t *rc = arg;
    relay_admit_request_t q = testlimits_req(rc->k, MODEL, rc->input, rc->max_tokens);
    pthread_barrier_wait(rc->go);
    for (;;) {
        relay_admission_t a;
        int code = relay_limits_admit(rc->f->r, &q, &a, NULL);
        if (code == RELAY_ERR_QUOTA)
            return NULL; /* permanent: nothing more fits */
        if (code != 0) {
            usleep(200); /* others' reservations in flight */
            continue;
        }
        int n = atomic_fetch_add(&rc->in_flight, 1) + 1;
        int m = atomic_load(&rc->max_in_flight);
        while (n > m && !atomic_compare_exchange_weak(&rc->max_in_flight, &m, n))
            ;
        atomic_fetch_add(&rc->admitted, 1);
        usleep(1000); /* the upstream works */
        atomic_fetch_sub(&rc->in_flight, 1);
        /* Worst case: the answer used every max_tokens the client allowed. */
        relay_limits_settle(rc->f->r, &a, rc->input + rc->max_tokens);
    }
}

static void run_race(fixture_t *f, relay_key_record_t *k, race_t *rc)
{
    enum { N = 50 };
    pthread_t th[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    rc->f = f;
    rc->k = k;
    rc->go = &go;
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_thread, rc), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
}

static void test_quota_race_no_overshoot(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(16384); /* ceiling >= max_tokens: reservations cover everything */
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000000, 1000000 - 5000);
    race_t rc = {.input = 100, .max_tokens = 1000};
    run_race(f, &k, &rc);
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(f->r, &k, &v), 0);
    assert_int_equal(atomic_load(&rc.admitted), 5000 / 1100);
    assert_int_equal(v.token_used, 1000000 - 5000 + 4 * 1100);
    assert_true(v.token_used <= k.token_limit);
    assert_int_equal(v.token_reserved, 0);
    fixture_free(f);
}

static void test_quota_race_bounded_overshoot(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(200); /* ceiling < max_tokens: each request may exceed by 800 */
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000000, 1000000 - 5000);
    race_t rc = {.input = 100, .max_tokens = 1000};
    run_race(f, &k, &rc);
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(f->r, &k, &v), 0);
    int admitted = atomic_load(&rc.admitted), peak = atomic_load(&rc.max_in_flight);
    /*
     * The documented bound: overshoot <= (requests in flight at once) * (max_tokens - ceiling).
     * Reservations cap the requests in flight at (limit - used) / reservation = 5000 / 300.
     */
    int64_t bound = (int64_t)(5000 / 300) * (1000 - 200);
    print_message("admitted %d, peak in flight %d, used %" PRId64 " (limit %" PRId64
                  ", bound +%" PRId64 ")\n",
                  admitted, peak, v.token_used, k.token_limit, bound);
    assert_true(admitted >= 5000 / 1100);
    assert_true(v.token_used <= k.token_limit + bound);
    assert_true(v.token_used > k.token_limit - 1100); /* and the quota was really used up */
    assert_int_equal(v.token_reserved, 0);
    fixture_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_ip),
        cmocka_unit_test(test_ip_allowlist),
        cmocka_unit_test(test_origin_allowlist),
        cmocka_unit_test(test_model_allowlist),
        cmocka_unit_test_setup_teardown(test_billed_tokens_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requests_exact_count_and_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_double_burst_at_window_edge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unlimited_and_unknown_tier, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_per_minute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_slots_released, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_exhausted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_zero_reserve_at_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_live_used_and_reservations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allowlists_in_admit, setup, teardown),
        cmocka_unit_test(test_quota_race_no_overshoot),
        cmocka_unit_test(test_quota_race_bounded_overshoot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
