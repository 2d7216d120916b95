/* test_limits_redis: the shared limiter — two instances on one Redis, and Redis dying mid-traffic.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "limits_internal.h"
#include "relay/limits.h"
#include "relay/relay.h"
#include "testlimits.h"
#include "testrelay.h"
#include "util.h"

static const relay_tier_def_t TIERS[] = {
    {"basic", 100, 60, 0, 0, ""}, {"t5", 5, 60, 0, 0, ""},   {"t40", 40, 60, 0, 0, ""},
    {"one", -1, 60, 0, 1, ""},    {"unl", -1, 60, 0, 0, ""}, {"one100", 100, 60, 0, 1, ""},
};

typedef struct instance {
    char dir[64];
    relay_t *r;
} instance_t;

static _Atomic int64_t fake_now = 1700000000000LL;
static int64_t fake_clock(void *ud)
{
    (void)ud;
    return atomic_load(&fake_now);
}

/* Counts the log lines by event, to check the outage warning comes once. */
static atomic_int n_down_logs, n_up_logs;
static void count_logs(void *ud, relay_log_level level, const char *event, const char *msg,
                       const char *fields)
{
    (void)ud, (void)level, (void)msg, (void)fields;
    if (strcmp(event, "limits.redis_down") == 0)
        atomic_fetch_add(&n_down_logs, 1);
    if (strcmp(event, "limits.redis_up") == 0)
        atomic_fetch_add(&n_up_logs, 1);
}

static void instance_open(instance_t *in, const char *redis_url, int timeout_ms, int fake_time)
{
    strcpy(in->dir, "/tmp/relay-limits-redis-XXXXXX");
    relay_options_t o;
    relay_options_init(&o);
    o.tiers = TIERS;
    o.n_tiers = sizeof TIERS / sizeof TIERS[0];
    o.redis_url = redis_url;
    o.redis_timeout_ms = timeout_ms;
    o.log_fn = count_logs;
    o.log_level = RELAY_LOG_DEBUG;
    in->r = testrelay_new_in_tmpdir(in->dir, &o);
    if (fake_time)
        relay_limits_set_clock_for_tests(in->r, fake_clock, NULL);
}

static void instance_close(instance_t *in)
{
    testrelay_free_dir(in->r, in->dir);
}

static const char *redis_url(void)
{
    return getenv("RELAY_TEST_REDIS_URL");
}

/* ---- two instances, one Redis ---- */

static void test_two_instances_exact_count(void **state)
{
    (void)state;
    instance_t a, b;
    instance_open(&a, redis_url(), 1000, 1);
    instance_open(&b, redis_url(), 1000, 1);
    assert_string_equal(relay_limits_redis_status(a.r), "ok");
    assert_string_equal(relay_limits_redis_status(b.r), "ok");
    relay_key_record_t k;
    testlimits_key_init(&k, "t5", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, NULL, 1, 1);
    relay_admission_t adm;
    relay_error_t err;
    int64_t t0 = atomic_load(&fake_now);
    /* Alternating instances share one window: exactly 5 in total. */
    for (int i = 0; i < 5; i++) {
        atomic_store(&fake_now, t0 + i * 1000);
        assert_int_equal(relay_limits_admit(i % 2 ? b.r : a.r, &q, &adm, &err), 0);
        assert_int_equal(adm.backend, RELAY_ADMIT_REDIS);
        assert_int_equal(adm.requests_remaining, 4 - i);
        relay_limits_settle(i % 2 ? b.r : a.r, &adm, 2);
    }
    atomic_store(&fake_now, t0 + 10000);
    assert_int_equal(relay_limits_admit(a.r, &q, &adm, &err), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(adm.reason, "requests");
    assert_int_equal(adm.retry_after_s, 50);
    assert_int_equal(relay_limits_admit(b.r, &q, &adm, &err), RELAY_ERR_RATE_LIMITED);
    atomic_store(&fake_now, t0 + 60000); /* the first leaves the window: one more, on either */
    assert_int_equal(relay_limits_admit(b.r, &q, &adm, &err), 0);
    relay_admission_t refused;
    assert_int_equal(relay_limits_admit(a.r, &q, &refused, &err), RELAY_ERR_RATE_LIMITED);
    relay_limits_settle(b.r, &adm, 0);
    /* Quota used is shared too: what b settled shows in a's view. */
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(a.r, &k, &v), 0);
    assert_int_equal(v.token_used, 10);
    instance_close(&a);
    instance_close(&b);
}

typedef struct racer {
    relay_t *r;
    const relay_key_record_t *k;
    pthread_barrier_t *go;
    atomic_int *admitted, *not_shared;
} racer_t;

static void *racer_main(void *arg)
{
    racer_t *rc = arg;
    relay_admit_request_t q = testlimits_req(rc->k, NULL, 100, 1000);
    pthread_barrier_wait(rc->go);
    for (int i = 0; i < 10; i++) {
        relay_admission_t adm;
        if (relay_limits_admit(rc->r, &q, &adm, NULL) == 0) {
            if (adm.backend != RELAY_ADMIT_REDIS)
                atomic_fetch_add(rc->not_shared, 1); /* checked by the main thread */
            atomic_fetch_add(rc->admitted, 1);
            relay_limits_settle(rc->r, &adm, 1100);
        }
    }
    return NULL;
}

/* 20 threads, alternately on a and b, released together, each trying 10 admissions of k. */
static void race(relay_t *a, relay_t *b, const relay_key_record_t *k, atomic_int *admitted,
                 atomic_int *not_shared)
{
    enum { T = 20 };
    pthread_t th[T];
    racer_t rc[T];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, T);
    for (int i = 0; i < T; i++) {
        rc[i] = (racer_t){
            .r = i % 2 ? b : a, .k = k, .go = &go, .admitted = admitted, .not_shared = not_shared};
        assert_int_equal(pthread_create(&th[i], NULL, racer_main, &rc[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
}

/* 2 instances x 10 threads race for a window of 40 and a quota with room for 12 requests. */
static void test_two_instances_race(void **state)
{
    (void)state;
    instance_t a, b;
    instance_open(&a, redis_url(), 2000, 1);
    instance_open(&b, redis_url(), 2000, 1);
    atomic_int admitted = 0, not_shared = 0;

    relay_key_record_t k;
    testlimits_key_init(&k, "t40", 0, 0);
    race(a.r, b.r, &k, &admitted, &not_shared);
    assert_int_equal(atomic_load(&admitted), 40);
    assert_int_equal(atomic_load(&not_shared), 0);

    testlimits_key_init(&k, "unl", 1000000, 1000000 - 12 * 1100);
    atomic_store(&admitted, 0);
    race(a.r, b.r, &k, &admitted, &not_shared);
    relay_quota_view_t v;
    assert_int_equal(relay_limits_quota(b.r, &k, &v), 0);
    assert_true(atomic_load(&admitted) <= 12);
    assert_true(v.token_used <= k.token_limit); /* never over, across instances */
    assert_int_equal(v.token_used, k.token_used + atomic_load(&admitted) * 1100);
    assert_int_equal(v.token_reserved, 0);
    assert_int_equal(atomic_load(&not_shared), 0);
    instance_close(&a);
    instance_close(&b);
}

static void test_two_instances_slot(void **state)
{
    (void)state;
    instance_t a, b;
    instance_open(&a, redis_url(), 1000, 1);
    instance_open(&b, redis_url(), 1000, 1);
    relay_key_record_t k;
    testlimits_key_init(&k, "one", 0, 0);
    relay_admit_request_t q = testlimits_req(&k, NULL, 1, 1);
    relay_admission_t x, y;
    assert_int_equal(relay_limits_admit(a.r, &q, &x, NULL), 0);
    assert_int_equal(relay_limits_admit(b.r, &q, &y, NULL), RELAY_ERR_RATE_LIMITED);
    assert_string_equal(y.reason, "concurrency");
    relay_limits_settle(a.r, &x, 0);
    assert_int_equal(relay_limits_admit(b.r, &q, &y, NULL), 0);
    relay_limits_settle(b.r, &y, 0);
    relay_limits_settle(b.r, &y, 0); /* idempotent */
    assert_int_equal(relay_limits_admit(a.r, &q, &x, NULL), 0);
    relay_limits_settle(a.r, &x, 0);
    instance_close(&a);
    instance_close(&b);
}

/* The Lua script refuses at used == limit even a request reserving nothing, as limits_decide does.
 * b has no local mirror of what a settled: the refusal can only come from Redis. */
static void test_quota_zero_reserve_at_limit(void **state)
{
    (void)state;
    instance_t a, b;
    instance_open(&a, redis_url(), 1000, 1);
    instance_open(&b, redis_url(), 1000, 1);
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 1000, 999);
    relay_admit_request_t zero = testlimits_req(&k, NULL, 0, 0);
    relay_admission_t adm;
    relay_error_t err;
    assert_int_equal(relay_limits_admit(a.r, &zero, &adm, &err), 0);
    assert_int_equal(adm.backend, RELAY_ADMIT_REDIS);
    relay_limits_settle(a.r, &adm, 1);
    assert_int_equal(relay_limits_admit(b.r, &zero, &adm, &err), RELAY_ERR_QUOTA);
    assert_string_equal(err.message, "token quota exhausted: 1000 of 1000 tokens used");
    relay_limits_stats_t st;
    relay_limits_get_stats(b.r, &st);
    assert_int_equal(st.redis_fallbacks, 0);
    instance_close(&a);
    instance_close(&b);
}

/* ---- Redis killed and restarted under traffic ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t redis_start(int port)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl("/usr/bin/redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save",
              "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) { /* until it answers PING, at most 5 s */
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
        redisReply *rep = c && !c->err ? redisCommand(c, "PING") : NULL;
        int ok = rep && rep->type == REDIS_REPLY_STATUS;
        freeReplyObject(rep);
        redisFree(c);
        if (ok)
            return pid;
        usleep(50000);
    }
    fail_msg("redis-server did not start on port %d", port);
    return -1;
}

static void redis_kill(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* One admit + settle; fails the test when it errs or takes longer than the bound. */
static int timed_admit(relay_t *r, const relay_admit_request_t *q, int64_t bound_ms)
{
    relay_admission_t adm;
    relay_error_t err;
    int64_t t = relay_mono_ms();
    int rc = relay_limits_admit(r, q, &adm, &err);
    int64_t took = relay_mono_ms() - t;
    if (rc != 0)
        fail_msg("admit failed during the outage: %s", err.message);
    if (took > bound_ms)
        fail_msg("admit took %lld ms (bound %lld)", (long long)took, (long long)bound_ms);
    relay_limits_settle(r, &adm, 10);
    return adm.backend;
}

static void test_redis_killed_and_restarted(void **state)
{
    (void)state;
    enum { TIMEOUT_MS = 200 };
    const int64_t bound = TIMEOUT_MS + 300; /* one Redis timeout plus scheduling slack */
    int port = free_port();
    pid_t pid = redis_start(port);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    atomic_store(&n_down_logs, 0);
    atomic_store(&n_up_logs, 0);
    instance_t a;
    instance_open(&a, url, TIMEOUT_MS, 0);
    relay_key_record_t k;
    testlimits_key_init(&k, "unl", 10000000, 0);
    relay_admit_request_t q = testlimits_req(&k, NULL, 5, 5);
    assert_string_equal(relay_limits_redis_status(a.r), "ok");
    for (int i = 0; i < 20; i++)
        assert_int_equal(timed_admit(a.r, &q, bound), RELAY_ADMIT_REDIS);

    /* Killed: every call still answers, in process, and the status says so. */
    redis_kill(pid);
    for (int i = 0; i < 50; i++) {
        timed_admit(a.r, &q, bound);
        usleep(20000);
    }
    assert_string_equal(relay_limits_redis_status(a.r), "down");
    assert_int_equal(timed_admit(a.r, &q, bound), RELAY_ADMIT_MEMORY);
    assert_int_equal(atomic_load(&n_down_logs), 1); /* one warning per outage, not per request */

    /* Back: within a few probe intervals the shared limiter is used again. */
    pid = redis_start(port);
    int back = 0;
    for (int i = 0; i < 200 && !back; i++) {
        back = timed_admit(a.r, &q, bound) == RELAY_ADMIT_REDIS;
        usleep(25000);
    }
    assert_true(back);
    assert_string_equal(relay_limits_redis_status(a.r), "ok");
    assert_int_equal(atomic_load(&n_up_logs), 1);

    /* Hung (SIGSTOP): calls give up after the timeout instead of hanging, then fall back. */
    kill(pid, SIGSTOP);
    for (int i = 0; i < 10; i++)
        timed_admit(a.r, &q, bound);
    assert_string_equal(relay_limits_redis_status(a.r), "down");
    kill(pid, SIGCONT);
    back = 0;
    for (int i = 0; i < 200 && !back; i++) {
        back = timed_admit(a.r, &q, bound) == RELAY_ADMIT_REDIS;
        usleep(25000);
    }
    assert_true(back);
    relay_limits_stats_t st;
    relay_limits_get_stats(a.r, &st);
    assert_true(st.redis_fallbacks > 0);
    assert_int_equal(st.redis_up, 1);
    instance_close(&a);
    redis_kill(pid);
}

/* ZCARD of one of key_id's Redis sets ("rw" requests, "cc" slots, "qr" reservations). */
static long long redis_zcard(int port, const char *key_id, const char *suffix)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_true(c && !c->err);
    redisReply *rep = redisCommand(c, "ZCARD relay:{%s}:%s", key_id, suffix);
    assert_true(rep && rep->type == REDIS_REPLY_INTEGER);
    long long n = rep->integer;
    freeReplyObject(rep);
    redisFree(c);
    return n;
}

/*
 * The admit script ran but its reply was lost (a timeout after the send): the request is admitted
 * in memory, and the slot and reservation the script took in Redis are given back once Redis
 * answers again, instead of holding the key's only slot until the lease ends.
 */
static void test_lost_admit_reply_is_undone(void **state)
{
    (void)state;
    int port = free_port();
    pid_t pid = redis_start(port);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    instance_t a;
    instance_open(&a, url, 1000, 0);
    relay_key_record_t k;
    testlimits_key_init(&k, "one100", 1000000, 0);
    relay_admit_request_t q = testlimits_req(&k, NULL, 100, 200);
    relay_admission_t lost, adm;
    relay_error_t err;
    relay_limits_lose_redis_replies_for_tests(a.r, 1);
    assert_int_equal(relay_limits_admit(a.r, &q, &lost, &err), 0);
    assert_int_equal(lost.backend, RELAY_ADMIT_MEMORY);
    assert_int_equal(lost.reserved_tokens, 300);
    /* The script did run (its request-window entry stays: the request happened). Its slot and
     * reservation may already be undone here if the prober was quick, so they are not checked. */
    assert_int_equal(redis_zcard(port, k.id, "rw"), 1);
    /* The prober finds Redis again within a few seconds and applies the queued undo. */
    int64_t deadline = relay_mono_ms() + 5000;
    while ((redis_zcard(port, k.id, "cc") || redis_zcard(port, k.id, "qr")) &&
           relay_mono_ms() < deadline)
        usleep(50000);
    assert_int_equal(redis_zcard(port, k.id, "cc"), 0);
    assert_int_equal(redis_zcard(port, k.id, "qr"), 0);
    relay_limits_settle(a.r, &lost, 250); /* in memory, where it was admitted */
    /* Redis is used again and the key's one slot is free there. */
    assert_string_equal(relay_limits_redis_status(a.r), "ok");
    assert_int_equal(relay_limits_admit(a.r, &q, &adm, &err), 0);
    assert_int_equal(adm.backend, RELAY_ADMIT_REDIS);
    relay_limits_settle(a.r, &adm, 0);
    relay_limits_stats_t st;
    relay_limits_get_stats(a.r, &st);
    assert_int_equal(st.redis_fallbacks, 1);
    assert_int_equal(st.redis_settles_lost, 0);
    instance_close(&a);
    redis_kill(pid);
}

int main(void)
{
    if (!redis_url() || !*redis_url()) {
        fprintf(stderr, "RELAY_TEST_REDIS_URL not set: skipped\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_instances_exact_count),
        cmocka_unit_test(test_two_instances_race),
        cmocka_unit_test(test_two_instances_slot),
        cmocka_unit_test(test_quota_zero_reserve_at_limit),
        cmocka_unit_test(test_redis_killed_and_restarted),
        cmocka_unit_test(test_lost_admit_reply_is_undone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
