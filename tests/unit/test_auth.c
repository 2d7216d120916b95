/* test_auth: the admin JWT pinning (HS256 only), expiry, tampering, Basic parsing and password
 * hashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <jwt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "relay/auth.h"
#include "util.h"

#define SECRET "unit-test-secret-key-0123456789abcdef"

/* Token checks read only the options, so a bare relay_t with options is enough here. */
static struct relay R;

static int setup(void **state)
{
    (void)state;
    memset(&R, 0, sizeof R);
    relay_options_init(&R.opts);
    R.opts.secret_key = SECRET;
    return 0;
}

/* A token built by hand with libjwt: any alg, any claims. */
static char *make_token(jwt_alg_t alg, const char *key, const char *sub, long iat, long exp)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    if (sub)
        jwt_add_grant(j, "sub", sub);
    if (iat)
        jwt_add_grant_int(j, "iat", iat);
    if (exp)
        jwt_add_grant_int(j, "exp", exp);
    assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)key, key ? (int)strlen(key) : 0),
                     0);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    assert_non_null(t);
    return t;
}

static char *b64url_str(const char *s)
{
    char *out = malloc(4 * (strlen(s) / 3 + 2));
    relay_base64url(s, strlen(s), out);
    return out;
}

static int verify(const char *token, relay_error_t *err)
{
    char sub[64];
    return relay_auth_verify_token(&R, token, sub, sizeof sub, err);
}

static void test_issue_and_verify(void **state)
{
    (void)state;
    char *tok = NULL;
    relay_error_t err = {0};
    assert_int_equal(relay_auth_issue_token(&R, "admin", 0, &tok, &err), 0);
    assert_int_equal(strncmp(tok, "eyJ", 3), 0);
    char sub[64];
    assert_int_equal(relay_auth_verify_token(&R, tok, sub, sizeof sub, &err), 0);
    assert_string_equal(sub, "admin");
    /* The lifetime is the configured one. */
    jwt_t *j = NULL;
    assert_int_equal(jwt_decode(&j, tok, (const unsigned char *)SECRET, (int)strlen(SECRET)), 0);
    assert_int_equal(jwt_get_grant_int(j, "exp") - jwt_get_grant_int(j, "iat"), 1800);
    assert_int_equal(jwt_get_alg(j), JWT_ALG_HS256);
    jwt_free(j);
    relay_free_string(tok);
}

static void test_expired_token(void **state)
{
    (void)state;
    long now = (long)relay_now();
    char *tok = make_token(JWT_ALG_HS256, SECRET, "admin", now - 100, now - 10);
    relay_error_t err = {0};
    assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
    assert_string_equal(err.message, "token expired");
    free(tok);
}

static void test_tampered_token(void **state)
{
    (void)state;
    long now = (long)relay_now();
    char *tok = make_token(JWT_ALG_HS256, SECRET, "admin", now, now + 600);
    relay_error_t err = {0};
    assert_int_equal(verify(tok, &err), 0);
    /* Change one character of the payload: the signature no longer matches. */
    char *p = strchr(tok, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
    assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
    assert_string_equal(err.message, "invalid token");
    free(tok);
    /* Signed with another secret. */
    tok = make_token(JWT_ALG_HS256, "another-secret-entirely-different", "admin", now, now + 600);
    assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
    free(tok);
}

static void test_alg_none_refused(void **state)
{
    (void)state;
    long now = (long)relay_now();
    char payload[128];
    snprintf(payload, sizeof payload, "{\"sub\":\"admin\",\"iat\":%ld,\"exp\":%ld}", now,
             now + 600);
    const char *headers[] = {"{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"alg\":\"None\"}",
                             "{\"typ\":\"JWT\"}", "{\"alg\":\"HS256 \"}", "[\"HS256\"]"};
    char *pl = b64url_str(payload);
    /* A valid token's signature, to be sure no header is saved by a real signature either. */
    char *good = make_token(JWT_ALG_HS256, SECRET, "admin", now, now + 600);
    const char *sig = strrchr(good, '.') + 1;
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        char *h = b64url_str(headers[i]);
        char tok[1024];
        relay_error_t err = {0};
        snprintf(tok, sizeof tok, "%s.%s.", h, pl);
        assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
        snprintf(tok, sizeof tok, "%s.%s", h, pl);
        assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
        snprintf(tok, sizeof tok, "%s.%s.%s", h, pl, sig);
        assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
        free(h);
    }
    /* libjwt's own alg none encoder. */
    char *none = make_token(JWT_ALG_NONE, NULL, "admin", now, now + 600);
    relay_error_t err = {0};
    assert_int_equal(verify(none, &err), RELAY_ERR_AUTH);
    free(none);
    free(good);
    free(pl);
}

static void test_other_hmac_refused(void **state)
{
    (void)state;
    long now = (long)relay_now();
    jwt_alg_t algs[] = {JWT_ALG_HS512, JWT_ALG_HS384};
    for (size_t i = 0; i < 2; i++) {
        /* Signed with the right secret, valid claims: only the algorithm is wrong. */
        char *tok = make_token(algs[i], SECRET, "admin", now, now + 600);
        relay_error_t err = {0};
        assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
        free(tok);
    }
}

static void test_claims_checked(void **state)
{
    (void)state;
    long now = (long)relay_now();
    relay_error_t err = {0};
    struct {
        const char *sub;
        long iat, exp;
    } cases[] = {
        {"root", now, now + 600},          /* another subject */
        {NULL, now, now + 600},            /* no subject */
        {"admin", 0, now + 600},           /* no iat */
        {"admin", now, 0},                 /* no exp */
        {"admin", now + 3600, now + 7200}, /* issued in the future */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *tok = make_token(JWT_ALG_HS256, SECRET, cases[i].sub, cases[i].iat, cases[i].exp);
        assert_int_equal(verify(tok, &err), RELAY_ERR_AUTH);
        free(tok);
    }
    assert_int_equal(verify("", &err), RELAY_ERR_AUTH);
    assert_int_equal(verify("a.b.c", &err), RELAY_ERR_AUTH);
    assert_int_equal(verify("not a token", &err), RELAY_ERR_AUTH);
    char *huge = malloc(RELAY_AUTH_TOKEN_MAX + 10);
    memset(huge, 'A', RELAY_AUTH_TOKEN_MAX + 9);
    huge[RELAY_AUTH_TOKEN_MAX + 9] = '\0';
    assert_int_equal(verify(huge, &err), RELAY_ERR_AUTH);
    free(huge);
}

static void test_no_secret_key(void **state)
{
    (void)state;
    R.opts.secret_key = NULL;
    char *tok = NULL;
    relay_error_t err = {0};
    assert_int_equal(relay_auth_issue_token(&R, "admin", 0, &tok, &err), RELAY_ERR_UNAVAILABLE);
    assert_null(tok);
    assert_non_null(strstr(err.message, "SECRET_KEY"));
    assert_int_equal(verify("x.y.z", &err), RELAY_ERR_UNAVAILABLE);
    R.opts.secret_key = SECRET;
}

static void test_parse_basic(void **state)
{
    (void)state;
    char u[64], p[64];
    /* admin:s3cret:with:colons */
    assert_int_equal(
        relay_auth_parse_basic("Basic YWRtaW46czNjcmV0OndpdGg6Y29sb25z", u, sizeof u, p, sizeof p),
        0);
    assert_string_equal(u, "admin");
    assert_string_equal(p, "s3cret:with:colons");
    assert_int_equal(relay_auth_parse_basic("basic YWRtaW46", u, sizeof u, p, sizeof p),
                     0); /* "admin:" */
    assert_string_equal(u, "admin");
    assert_string_equal(p, "");
    assert_int_equal(relay_auth_parse_basic("Basic YWRtaW4=", u, sizeof u, p, sizeof p),
                     RELAY_ERR_AUTH); /* no ':' */
    assert_int_equal(relay_auth_parse_basic("Bearer abc", u, sizeof u, p, sizeof p),
                     RELAY_ERR_AUTH);
    assert_int_equal(relay_auth_parse_basic("Basic !!!!", u, sizeof u, p, sizeof p),
                     RELAY_ERR_AUTH);
    assert_int_equal(relay_auth_parse_basic(NULL, u, sizeof u, p, sizeof p), RELAY_ERR_AUTH);
    /* A password longer than the caller's buffer is refused, never truncated into a match. */
    assert_int_equal(
        relay_auth_parse_basic("Basic YWRtaW46czNjcmV0OndpdGg6Y29sb25z", u, sizeof u, p, 5),
        RELAY_ERR_AUTH);
}

static void test_password_hash(void **state)
{
    (void)state;
    char h[128];
    assert_int_equal(relay_auth_hash_password(h, sizeof h, "correct horse", 5), 0);
    assert_int_equal(strncmp(h, "$2b$05$", 7), 0);
    assert_int_equal(strlen(h), 60);
    assert_int_equal(relay_auth_check_password("correct horse", h), 1);
    assert_int_equal(relay_auth_check_password("correct horsf", h), 0);
    assert_int_equal(relay_auth_check_password("", h), 0);
    assert_int_equal(relay_auth_check_password("correct horse", ""), 0);
    char h2[128];
    assert_int_equal(relay_auth_hash_password(h2, sizeof h2, "correct horse", 5), 0);
    assert_string_not_equal(h, h2); /* fresh salt each time */
    assert_int_equal(relay_auth_hash_password(h2, sizeof h2, "x", 3), RELAY_ERR_INVALID);
    assert_int_equal(relay_auth_hash_password(h2, 10, "x", 4), RELAY_ERR_INVALID);
}

/* ---- login lockout under parallel attempts: a real relay_t on a fresh SQLite file ---- */

static atomic_int n_failure_logs; /* auth.login_failed + auth.login_locked: one per bcrypt lost */

static void count_failure_logs(void *ud, relay_log_level level, const char *event, const char *msg,
                               const char *fields)
{
    (void)ud, (void)level, (void)msg, (void)fields;
    if (strncmp(event, "auth.login_", 11) == 0)
        atomic_fetch_add(&n_failure_logs, 1);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

typedef struct guesser {
    relay_t *r;
    pthread_barrier_t *go;
    atomic_int *wrong, *locked, *other;
} guesser_t;

static void *guesser_main(void *arg)
{
    guesser_t *g = arg;
    char *tok = NULL;
    int exp;
    relay_error_t err;
    pthread_barrier_wait(g->go);
    int rc = relay_auth_login(g->r, "admin", "a-wrong-guess", "192.0.2.9", &tok, &exp, &err);
    atomic_fetch_add(rc == RELAY_ERR_AUTH           ? g->wrong
                     : rc == RELAY_ERR_LOGIN_LOCKED ? g->locked
                                                    : g->other,
                     1);
    free(tok);
    return NULL;
}

/* A relay on a fresh data directory (dir: a mkdtemp template) with the known admin password
 * and o's other settings (o from relay_options_init). */
static relay_t *login_relay(char *dir, relay_options_t *o)
{
    assert_non_null(mkdtemp(dir));
    o->data_dir = dir;
    o->secret_key = SECRET;
    o->admin_password = "the-right-password";
    relay_t *r = NULL;
    relay_error_t err = {0};
    if (relay_new(&r, o, &err) != 0)
        fail_msg("relay_new: %s", err.message);
    return r;
}

/*
 * 20 wrong guesses from one address at once, with login_max_failures 5: the lockout check and the
 * count of attempts in flight are one step, so exactly 5 reach bcrypt and the other 15 get 429.
 * (Checked and then counted separately, all 20 passed the check while the first bcrypt ran.)
 */
static void test_parallel_logins_cannot_outrun_lockout(void **state)
{
    (void)state;
    char dir[64] = "/tmp/relay-auth-XXXXXX";
    relay_options_t o;
    relay_options_init(&o);
    o.bcrypt_cost = 10; /* tens of ms a check: all 20 threads arrive while the first runs */
    o.login_max_failures = 5;
    o.login_window_s = 300;
    o.login_cooldown_s = 300;
    o.log_fn = count_failure_logs;
    o.log_level = RELAY_LOG_DEBUG;
    relay_t *r = login_relay(dir, &o);
    relay_error_t err = {0};
    enum { T = 20 };
    pthread_t th[T];
    guesser_t g[T];
    pthread_barrier_t go;
    atomic_int wrong = 0, locked = 0, other = 0;
    atomic_store(&n_failure_logs, 0);
    pthread_barrier_init(&go, NULL, T);
    for (int i = 0; i < T; i++) {
        g[i] = (guesser_t){.r = r, .go = &go, .wrong = &wrong, .locked = &locked, .other = &other};
        assert_int_equal(pthread_create(&th[i], NULL, guesser_main, &g[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    assert_int_equal(atomic_load(&other), 0);
    assert_int_equal(atomic_load(&wrong), 5);
    assert_int_equal(atomic_load(&locked), T - 5);
    assert_int_equal(atomic_load(&n_failure_logs), 5);
    /* Locked now, even with the right password; another address is not. */
    char *tok = NULL;
    int exp;
    assert_int_equal(
        relay_auth_login(r, "admin", "the-right-password", "192.0.2.9", &tok, &exp, &err),
        RELAY_ERR_LOGIN_LOCKED);
    assert_int_equal(
        relay_auth_login(r, "admin", "the-right-password", "192.0.2.10", &tok, &exp, &err), 0);
    relay_free_string(tok);
    relay_free(r);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* One wrong guess for user from each of n addresses; then the right password from a fresh one. */
static int guesses_then_login(relay_t *r, const char *user, int n)
{
    char *tok = NULL, ip[32];
    int exp;
    relay_error_t err = {0};
    for (int i = 0; i < n; i++) {
        snprintf(ip, sizeof ip, "198.51.100.%d", i + 1);
        assert_int_equal(relay_auth_login(r, user, "guess", ip, &tok, &exp, &err), RELAY_ERR_AUTH);
    }
    int rc = relay_auth_login(r, "admin", "the-right-password", "198.51.100.200", &tok, &exp, &err);
    if (rc == RELAY_ERR_LOGIN_LOCKED)
        assert_non_null(strstr(err.message, "try again in"));
    relay_free_string(tok);
    return rc;
}

/* Guesses from many addresses never trigger the per-address lockout; the per-user one does, and
 * then even the right password from a fresh address is refused. Only the admin name counts. */
static void test_lockout_per_user_across_addresses(void **state)
{
    (void)state;
    char dir[64] = "/tmp/relay-auth-XXXXXX";
    relay_options_t o;
    relay_options_init(&o);
    o.bcrypt_cost = 4;
    o.login_max_failures_per_user = 6;
    relay_t *r = login_relay(dir, &o);
    assert_int_equal(guesses_then_login(r, "root", 10), 0); /* other names: per address only */
    assert_int_equal(guesses_then_login(r, "admin", 6), RELAY_ERR_LOGIN_LOCKED);
    relay_free(r);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    strcpy(dir, "/tmp/relay-auth-XXXXXX");
    o.login_max_failures_per_user = 0; /* off */
    r = login_relay(dir, &o);
    assert_int_equal(guesses_then_login(r, "admin", 30), 0);
    relay_free(r);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Tokens claiming an asymmetric algorithm (key confusion), or HS256 spelt otherwise, are refused
 * before any signature check. */
static void test_asymmetric_alg_refused(void **state)
{
    (void)state;
    long now = (long)relay_now();
    relay_error_t err = {0};
    char payload[128];
    snprintf(payload, sizeof payload, "{\"sub\":\"admin\",\"iat\":%ld,\"exp\":%ld}", now,
             now + 600);
    const char *headers[] = {"{\"alg\":\"RS256\",\"typ\":\"JWT\"}", "{\"alg\":\"ES256\"}",
                             "{\"alg\":\"hs256\"}", "{\"alg\":[\"HS256\"]}"};
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        char *h = b64url_str(headers[i]), *p = b64url_str(payload), t[512];
        snprintf(t, sizeof t, "%s.%s.c2lnbmF0dXJl", h, p);
        assert_int_equal(verify(t, &err), RELAY_ERR_AUTH);
        free(h);
        free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_issue_and_verify, setup),
        cmocka_unit_test_setup(test_expired_token, setup),
        cmocka_unit_test_setup(test_tampered_token, setup),
        cmocka_unit_test_setup(test_alg_none_refused, setup),
        cmocka_unit_test_setup(test_other_hmac_refused, setup),
        cmocka_unit_test_setup(test_claims_checked, setup),
        cmocka_unit_test_setup(test_no_secret_key, setup),
        cmocka_unit_test_setup(test_parse_basic, setup),
        cmocka_unit_test_setup(test_password_hash, setup),
        cmocka_unit_test(test_parallel_logins_cannot_outrun_lockout),
        cmocka_unit_test(test_lockout_per_user_across_addresses),
        cmocka_unit_test_setup(test_asymmetric_alg_refused, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
