/* test_keys: key creation, cached verification (bcrypt counted), revocation, TTL re-read, tiers —
 * on SQLite and PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "relay/keys.h"
#include "relay/metrics.h"
#include "relay/store.h"
#include "relay/tiers.h"
#include "testdb.h"
#include "testrelay.h"
#include "util.h"

static relay_t *new_relay_stale(int ttl_ms, size_t cache_max, int stale_ms)
{
    relay_options_t o;
    testdb_options(&o); /* bcrypt at cost 4: the counts matter here, not the cost */
    o.key_cache_ttl_ms = ttl_ms;
    o.key_cache_stale_ms = stale_ms;
    o.key_cache_max = cache_max;
    o.secret_key = "test-secret-key-for-jwt-signing-0123456789";
    o.admin_password = "test-admin-password";
    return testrelay_new(&o);
}

static relay_t *new_relay_opts(int ttl_ms, size_t cache_max)
{
    return new_relay_stale(ttl_ms, cache_max, 300000);
}

static relay_t *new_relay(void)
{
    return new_relay_opts(5000, 10000);
}

static void create_key(relay_t *r, const char *name, char key[RELAY_KEY_MAX],
                       relay_key_record_t *rec)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = name;
    relay_error_t err = {0};
    int rc = relay_keys_create(r, &p, key, RELAY_KEY_MAX, rec, &err);
    if (rc)
        fail_msg("create: %s", err.message);
}

static uint64_t bcrypts(relay_t *r)
{
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    return s.bcrypt_calls;
}

static int verify(relay_t *r, const char *key, relay_error_t *err)
{
    relay_key_record_t rec;
    int rc = relay_keys_verify(r, key, &rec, err);
    relay_key_record_clear(&rec);
    return rc;
}

/* A well-formed key with a random public id (unknown to the store). */
static void made_up_key(char out[RELAY_KEY_MAX])
{
    uint8_t rnd[32];
    char sec[64], pub[32];
    relay_random_bytes(rnd, sizeof rnd);
    relay_base64url(rnd, 32, sec);
    relay_random_bytes(rnd, 9);
    relay_hex(rnd, 6, pub);
    snprintf(out, RELAY_KEY_MAX, "sk-proxy-%s_%s", pub, sec);
}

/* ---- tests ---- */

static void test_create_format_and_record(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "first", key, &rec);
    /* sk-proxy-<12 alnum>_<43 base64url> */
    assert_int_equal(strncmp(key, "sk-proxy-", 9), 0);
    assert_int_equal(strlen(key), 9 + 12 + 1 + 43);
    assert_int_equal(key[21], '_');
    for (int i = 9; i < 21; i++)
        assert_true(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                           key[i]) != NULL);
    assert_int_equal(strncmp(rec.key_prefix, key, 21), 0);
    assert_int_equal(strlen(rec.key_prefix), 21);
    assert_int_equal(strncmp(rec.key_hash, "$2b$04$", 7), 0);
    assert_true(relay_is_uuid(rec.id));
    assert_string_equal(rec.name, "first");
    assert_int_equal(rec.token_limit, 1000000); /* default_token_limit */
    assert_string_equal(rec.rate_limit_tier, "basic");
    assert_int_equal(rec.is_active, 1);
    assert_true(rec.created_at > 0);
    /* Two keys never share a public id or a secret. */
    char key2[RELAY_KEY_MAX];
    relay_key_record_t rec2;
    create_key(r, "second", key2, &rec2);
    assert_string_not_equal(rec.key_prefix, rec2.key_prefix);
    assert_string_not_equal(key + 22, key2 + 22);
    relay_key_record_t got;
    relay_error_t err = {0};
    assert_int_equal(relay_keys_get(r, rec.id, &got, &err), 0);
    assert_string_equal(got.key_hash, rec.key_hash);
    relay_key_record_clear(&got);
    relay_key_record_clear(&rec);
    relay_key_record_clear(&rec2);
    relay_free(r);
}

static void test_verify_cached_costs_no_bcrypt(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "cached", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(bcrypts(r), 0);
    relay_key_record_t got;
    assert_int_equal(relay_keys_verify(r, key, &got, &err), 0);
    assert_string_equal(got.id, rec.id);
    assert_string_equal(got.name, "cached");
    relay_key_record_clear(&got);
    assert_int_equal(bcrypts(r), 1);
    for (int i = 0; i < 200; i++)
        assert_int_equal(verify(r, key, &err), 0);
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    assert_int_equal(s.bcrypt_calls, 1);
    assert_int_equal(s.cache_hits, 200);
    assert_int_equal(s.store_lookups, 1);
    assert_int_equal(s.cache_entries, 1);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_unknown_and_malformed_cost_no_bcrypt(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "real", key, &rec);
    relay_error_t err = {0};
    char msg_unknown[RELAY_ERRMSG_MAX] = "";
    /* Well-formed keys with random public ids: refused by lookup, nothing hashed. */
    for (int i = 0; i < 100; i++) {
        char fake[RELAY_KEY_MAX];
        made_up_key(fake);
        assert_int_equal(verify(r, fake, &err), RELAY_ERR_AUTH);
        relay_strlcpy(msg_unknown, err.message, sizeof msg_unknown);
    }
    const char *malformed[] = {"",
                               "sk-proxy-",
                               "sk-ant-api03-xyz",
                               "sk-proxy-short_abc",
                               "Bearer x",
                               "sk-proxy-AAAAAAAAAAAA_tooshort"};
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        assert_int_equal(verify(r, malformed[i], &err), RELAY_ERR_AUTH);
        assert_string_equal(err.message, msg_unknown);
    }
    assert_int_equal(relay_keys_verify(r, NULL, NULL, &err), RELAY_ERR_AUTH);
    assert_int_equal(bcrypts(r), 0);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_wrong_secret_refused(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "victim", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(verify(r, key, &err), 0); /* cached now */
    char wrong[RELAY_KEY_MAX];
    relay_strlcpy(wrong, key, sizeof wrong);
    wrong[30] = wrong[30] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(r, wrong, &err), RELAY_ERR_AUTH);
    char msg_wrong[RELAY_ERRMSG_MAX];
    relay_strlcpy(msg_wrong, err.message, sizeof msg_wrong);
    /* The same words as for an unknown key: nothing says the public id exists. */
    char unknown[RELAY_KEY_MAX];
    relay_strlcpy(unknown, wrong, sizeof unknown);
    unknown[12] = unknown[12] == 'Z' ? 'Y' : 'Z';
    assert_int_equal(verify(r, unknown, &err), RELAY_ERR_AUTH);
    assert_string_equal(err.message, msg_wrong);
    /* A wrong secret is never cached into success. */
    assert_int_equal(verify(r, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(verify(r, key, &err), 0);
    /* The cache holds the right secret for this public id and hash: wrong ones cost no bcrypt,
     * also once the entry is stale (it still proves which secret matches the hash). */
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    assert_int_equal(s.bcrypt_calls, 1);
    assert_int_equal(s.refuted_by_cache, 2);
    relay_keys_cache_evict(r, rec.id);
    assert_int_equal(verify(r, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(bcrypts(r), 1);
    assert_int_equal(verify(r, key, &err), 0);
    assert_int_equal(bcrypts(r), 1);
    /* Without such an entry (another process) only bcrypt can tell: one per attempt. */
    relay_t *b = new_relay();
    assert_int_equal(verify(b, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(verify(b, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(bcrypts(b), 2);
    assert_int_equal(verify(b, key, &err), 0);
    assert_int_equal(verify(b, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(bcrypts(b), 3);
    relay_free(b);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_disable_enable_at_once(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "toggle", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(verify(r, key, &err), 0);
    assert_int_equal(relay_keys_disable(r, rec.id, &err), 0);
    assert_int_equal(verify(r, key, &err), RELAY_ERR_KEY_DISABLED);
    assert_string_equal(err.message, "API key is disabled");
    assert_int_equal(relay_keys_enable(r, rec.id, &err), 0);
    assert_int_equal(verify(r, key, &err), 0);
    /* Re-reading after an eviction costs no bcrypt when the hash did not change. */
    assert_int_equal(bcrypts(r), 1);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_delete_soft_and_hard(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char k1[RELAY_KEY_MAX], k2[RELAY_KEY_MAX];
    relay_key_record_t r1, r2, got;
    create_key(r, "soft", k1, &r1);
    create_key(r, "hard", k2, &r2);
    relay_error_t err = {0};
    assert_int_equal(verify(r, k1, &err), 0);
    assert_int_equal(verify(r, k2, &err), 0);
    assert_int_equal(relay_keys_delete(r, r1.id, 0, &err), 0);
    assert_int_equal(verify(r, k1, &err), RELAY_ERR_AUTH);
    assert_int_equal(relay_keys_get(r, r1.id, &got, &err), RELAY_ERR_NOT_FOUND);
    /* The soft-deleted row is still there, marked. */
    assert_int_equal(relay_store_key_get(r->store, r1.id, &got), 0);
    assert_int_equal(got.is_deleted, 1);
    assert_true(got.deleted_at > 0);
    relay_key_record_clear(&got);
    assert_int_equal(relay_keys_delete(r, r1.id, 0, &err), RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_keys_delete(r, r2.id, 1, &err), 0);
    assert_int_equal(verify(r, k2, &err), RELAY_ERR_AUTH);
    assert_int_equal(relay_store_key_get(r->store, r2.id, &got), RELAY_ERR_NOT_FOUND);
    /* A soft-deleted key can still be removed for good. */
    assert_int_equal(relay_keys_delete(r, r1.id, 1, &err), 0);
    assert_int_equal(relay_store_key_get(r->store, r1.id, &got), RELAY_ERR_NOT_FOUND);
    relay_key_record_t *list;
    size_t n;
    int64_t total;
    assert_int_equal(relay_keys_list(r, RELAY_KEYS_ALL, 0, 100, &list, &n, &total, &err), 0);
    assert_int_equal(total, 0);
    relay_key_records_free(list, n);
    relay_key_record_clear(&r1);
    relay_key_record_clear(&r2);
    relay_free(r);
}

static void test_rotate(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX], key2[RELAY_KEY_MAX];
    relay_key_record_t rec, rec2;
    create_key(r, "rot", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(verify(r, key, &err), 0);
    assert_int_equal(relay_keys_rotate(r, rec.id, key2, sizeof key2, &rec2, &err), 0);
    assert_string_equal(rec2.id, rec.id);
    assert_string_not_equal(rec2.key_prefix, rec.key_prefix);
    assert_string_not_equal(key, key2);
    assert_int_equal(verify(r, key, &err), RELAY_ERR_AUTH);
    assert_int_equal(verify(r, key2, &err), 0);
    relay_key_record_clear(&rec);
    relay_key_record_clear(&rec2);
    relay_free(r);
}

static void test_expiry(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "short-lived";
    p.expires_at = relay_now() + 2;
    relay_error_t err = {0};
    assert_int_equal(relay_keys_create(r, &p, key, sizeof key, &rec, &err), 0);
    assert_int_equal(verify(r, key, &err), 0);
    sleep(3);
    /* Still in the cache, but expiry is checked on every verify. */
    assert_int_equal(verify(r, key, &err), RELAY_ERR_KEY_EXPIRED);
    assert_string_equal(err.message, "API key has expired");
    /* Moving expiry into the future revives it; into the past ends it at once. */
    relay_key_update_t u = {.set = RELAY_KEY_SET_EXPIRES_AT, .expires_at = relay_now() + 3600};
    assert_int_equal(relay_keys_update(r, rec.id, &u, NULL, &err), 0);
    assert_int_equal(verify(r, key, &err), 0);
    u.expires_at = relay_now() - 1;
    assert_int_equal(relay_keys_update(r, rec.id, &u, NULL, &err), 0);
    assert_int_equal(verify(r, key, &err), RELAY_ERR_KEY_EXPIRED);
    u.expires_at = 0;
    assert_int_equal(relay_keys_update(r, rec.id, &u, NULL, &err), 0);
    assert_int_equal(verify(r, key, &err), 0);
    relay_key_record_clear(&rec);
    relay_free(r);
}

/* verify until it returns want (at most ~5 s: the maintenance thread re-reads a stale key as
 * soon as a request found it stale); returns the last result. */
static int verify_until(relay_t *r, const char *key, int want)
{
    relay_error_t err = {0};
    int rc = verify(r, key, &err);
    for (int i = 0; i < 500 && rc != want; i++) {
        usleep(10 * 1000);
        rc = verify(r, key, &err);
    }
    return rc;
}

/* Past the TTL, a known key is answered from memory while it is re-read off the request path,
 * and with key_cache_stale_ms 0 the request re-reads it itself, as 0.1 did. */
static void test_stale_key_served_while_reread(void **state)
{
    (void)state;
    relay_t *a = new_relay_opts(100, 10000);
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(a, "stale", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(verify(a, key, &err), 0);
    usleep(200 * 1000);
    relay_keys_stats_t s0, s1;
    relay_keys_stats(a, &s0);
    assert_int_equal(verify(a, key, &err), 0);
    relay_keys_stats(a, &s1);
    assert_int_equal(s1.cache_stale_hits, s0.cache_stale_hits + 1);
    assert_int_equal(s1.store_lookups, s0.store_lookups); /* none on the request's path */
    for (int i = 0; i < 500 && s1.cache_refresh == s0.cache_refresh; i++) {
        usleep(10 * 1000);
        relay_keys_stats(a, &s1);
    }
    assert_int_equal(s1.cache_refresh, s0.cache_refresh + 1); /* re-read in the background */
    assert_int_equal(s1.bcrypt_calls, 1);
    relay_key_record_clear(&rec);
    relay_free(a);
    /* key_cache_stale_ms 0: the request that finds the entry expired re-reads it itself. */
    relay_t *b = new_relay_stale(100, 10000, 0);
    create_key(b, "no-stale", key, &rec);
    assert_int_equal(verify(b, key, &err), 0);
    usleep(200 * 1000);
    relay_keys_stats(b, &s0);
    assert_int_equal(verify(b, key, &err), 0);
    relay_keys_stats(b, &s1);
    assert_int_equal(s1.cache_stale_hits, 0);
    assert_int_equal(s1.store_lookups, s0.store_lookups + 1);
    assert_int_equal(s1.cache_refresh, s0.cache_refresh + 1);
    assert_int_equal(s1.bcrypt_calls, 1);
    relay_key_record_clear(&rec);
    relay_free(b);
}

static void test_ttl_second_process_sees_changes(void **state)
{
    (void)state;
    relay_t *a = new_relay();
    relay_t *b = new_relay_opts(300, 10000); /* "another process": its own cache, 300 ms TTL */
    char key[RELAY_KEY_MAX], key2[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(a, "shared", key, &rec);
    relay_error_t err = {0};
    assert_int_equal(verify(b, key, &err), 0);
    assert_int_equal(relay_keys_disable(a, rec.id, &err), 0);
    /* b's cache still answers until its TTL ends ... */
    assert_int_equal(verify(b, key, &err), 0);
    usleep(400 * 1000);
    /* ... then the first use past the TTL is still answered from memory (no request waits on
     * the database) while b's maintenance thread re-reads the record, and the disable shows
     * within one re-read, without another bcrypt. */
    assert_int_equal(verify_until(b, key, RELAY_ERR_KEY_DISABLED), RELAY_ERR_KEY_DISABLED);
    assert_int_equal(bcrypts(b), 1);
    assert_int_equal(relay_keys_enable(a, rec.id, &err), 0);
    usleep(400 * 1000);
    assert_int_equal(verify_until(b, key, 0), 0);
    relay_keys_stats_t s;
    relay_keys_stats(b, &s);
    assert_int_equal(s.bcrypt_calls, 1);
    assert_true(s.cache_refresh >= 1);
    assert_true(s.cache_stale_hits >= 1);
    /* A rotation elsewhere ends the old key here within the TTL and one re-read. */
    assert_int_equal(relay_keys_rotate(a, rec.id, key2, sizeof key2, NULL, &err), 0);
    usleep(400 * 1000);
    assert_int_equal(verify_until(b, key, RELAY_ERR_AUTH), RELAY_ERR_AUTH);
    assert_int_equal(verify(b, key2, &err), 0);
    /* And a soft delete too. */
    assert_int_equal(relay_keys_delete(a, rec.id, 0, &err), 0);
    usleep(400 * 1000);
    assert_int_equal(verify_until(b, key2, RELAY_ERR_AUTH), RELAY_ERR_AUTH);
    relay_key_record_clear(&rec);
    relay_free(b);
    relay_free(a);
}

/* 1 when needle occurs in the file at path (missing file: 0). */
static int file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    int found = memmem(buf, got, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

static void test_no_plaintext_key_in_database(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char keys[3][RELAY_KEY_MAX];
    relay_key_record_t rec;
    relay_error_t err = {0};
    for (int i = 0; i < 3; i++) {
        create_key(r, "scan", keys[i], &rec);
        if (i == 2)
            assert_int_equal(relay_keys_rotate(r, rec.id, keys[i], RELAY_KEY_MAX, NULL, &err), 0);
        assert_int_equal(verify(r, keys[i], &err), 0);
        relay_key_record_clear(&rec);
    }
    if (testdb_is_sqlite()) {
        relay_free(r); /* checkpoints the WAL; the -wal file is scanned too in case it stays */
        const char *files[] = {"relay.db", "relay.db-wal", "relay.db-shm"};
        char path[512];
        snprintf(path, sizeof path, "%s/relay.db", testdb_dir());
        assert_true(file_contains(path, "$2b$04$")); /* the scan does see the hashes */
        for (int i = 0; i < 3; i++) {
            const char *secret = keys[i] + 22;
            for (size_t f = 0; f < 3; f++) {
                snprintf(path, sizeof path, "%s/%s", testdb_dir(), files[f]);
                assert_false(file_contains(path, secret));
                /* Not even a half of it. */
                char half[32];
                relay_strlcpy(half, secret, 22);
                assert_false(file_contains(path, half));
            }
        }
        return;
    }
    relay_free(r);
    PGconn *c = PQconnectdb(testdb_url());
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    const char *tables[] = {"api_keys", "audit_log", "rate_limit_tiers"};
    int hashes = 0;
    for (size_t t = 0; t < 3; t++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT t::text FROM %s t", tables[t]);
        PGresult *res = PQexec(c, sql);
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        for (int row = 0; row < PQntuples(res); row++) {
            const char *v = PQgetvalue(res, row, 0);
            hashes += strstr(v, "$2b$04$") != NULL;
            for (int i = 0; i < 3; i++) {
                char half[32];
                relay_strlcpy(half, keys[i] + 22, 22);
                assert_null(strstr(v, half));
            }
        }
        PQclear(res);
    }
    assert_int_equal(hashes, 3);
    PQfinish(c);
}

static void test_validation_names_field(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_error_t err = {0};
    struct {
        relay_key_params_t p;
        const char *prefix;
    } cases[8];
    for (int i = 0; i < 8; i++) {
        relay_key_params_init(&cases[i].p);
        cases[i].p.name = "ok";
    }
    cases[0].p.name = "";
    cases[0].prefix = "name:";
    cases[1].p.tier = "gold";
    cases[1].prefix = "rate_limit_tier:";
    cases[2].p.allowed_ips = "[\"10.0.0.0/8\",\"not-an-ip\"]";
    cases[2].prefix = "allowed_ips[1]:";
    cases[3].p.allowed_ips = "[\"10.0.0.0/33\"]";
    cases[3].prefix = "allowed_ips[0]:";
    cases[4].p.metadata = "[1,2]";
    cases[4].prefix = "metadata:";
    cases[5].p.allowed_models = "{\"a\":1}";
    cases[5].prefix = "allowed_models:";
    cases[6].p.allowed_origins = "[\"ok.example.com\", \"\"]";
    cases[6].prefix = "allowed_origins[1]:";
    cases[7].p.metadata = "{not json";
    cases[7].prefix = "metadata:";
    for (int i = 0; i < 8; i++) {
        assert_int_equal(relay_keys_create(r, &cases[i].p, key, sizeof key, NULL, &err),
                         RELAY_ERR_INVALID);
        if (strncmp(err.message, cases[i].prefix, strlen(cases[i].prefix)) != 0)
            fail_msg("case %d: '%s' does not start with '%s'", i, err.message, cases[i].prefix);
    }
    /* Valid JSON fields are stored in compact form; IPv6 CIDR accepted; a named tier too. */
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "full";
    p.tier = "premium";
    p.token_limit = 0;
    p.allowed_ips = "[ \"192.168.1.0/24\", \"::1\", \"2001:db8::/32\" ]";
    p.allowed_origins = "[\"*.example.com\"]";
    p.allowed_models = "[\"claude-sonnet-4-5\"]";
    p.metadata = "{ \"team\" : \"infra\" }";
    relay_key_record_t rec;
    assert_int_equal(relay_keys_create(r, &p, key, sizeof key, &rec, &err), 0);
    assert_string_equal(rec.allowed_ips, "[\"192.168.1.0/24\",\"::1\",\"2001:db8::/32\"]");
    assert_string_equal(rec.metadata, "{\"team\":\"infra\"}");
    assert_string_equal(rec.rate_limit_tier, "premium");
    assert_int_equal(rec.token_limit, 0);
    /* Update validates the same way and leaves the key untouched on error. */
    relay_key_update_t u = {
        .set = RELAY_KEY_SET_TIER | RELAY_KEY_SET_NAME, .tier = "nope", .name = "renamed"};
    assert_int_equal(relay_keys_update(r, rec.id, &u, NULL, &err), RELAY_ERR_INVALID);
    relay_key_record_t got;
    assert_int_equal(relay_keys_get(r, rec.id, &got, &err), 0);
    assert_string_equal(got.name, "full");
    relay_key_record_clear(&got);
    u.set = RELAY_KEY_SET_TOKEN_LIMIT;
    u.token_limit = -5;
    assert_int_equal(relay_keys_update(r, rec.id, &u, NULL, &err), RELAY_ERR_INVALID);
    assert_int_equal(strncmp(err.message, "token_limit:", 12), 0);
    u.set = RELAY_KEY_SET_ALLOWED_IPS | RELAY_KEY_SET_DESCRIPTION | RELAY_KEY_SET_NAME;
    u.allowed_ips = NULL;
    u.description = "now described";
    u.name = "renamed";
    assert_int_equal(relay_keys_update(r, rec.id, &u, &got, &err), 0);
    assert_null(got.allowed_ips);
    assert_string_equal(got.description, "now described");
    assert_string_equal(got.name, "renamed");
    assert_string_equal(got.metadata, "{\"team\":\"infra\"}"); /* untouched */
    relay_key_record_clear(&got);
    assert_int_equal(relay_keys_get(r, "not-a-uuid", &got, &err), RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_keys_get(r, "00000000-0000-4000-8000-000000000000", &got, &err),
                     RELAY_ERR_NOT_FOUND);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_list_filters(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t act, dis, exp;
    create_key(r, "active", key, &act);
    create_key(r, "disabled", key, &dis);
    create_key(r, "expired", key, &exp);
    relay_error_t err = {0};
    assert_int_equal(relay_keys_disable(r, dis.id, &err), 0);
    relay_key_update_t u = {.set = RELAY_KEY_SET_EXPIRES_AT, .expires_at = relay_now() - 10};
    assert_int_equal(relay_keys_update(r, exp.id, &u, NULL, &err), 0);
    struct {
        relay_key_filter f;
        int64_t total;
        const char *id;
    } cases[] = {{RELAY_KEYS_ALL, 3, NULL},
                 {RELAY_KEYS_ACTIVE, 1, act.id},
                 {RELAY_KEYS_DISABLED, 1, dis.id},
                 {RELAY_KEYS_EXPIRED, 1, exp.id}};
    for (size_t i = 0; i < 4; i++) {
        relay_key_record_t *l;
        size_t n;
        int64_t total;
        assert_int_equal(relay_keys_list(r, cases[i].f, 0, 100, &l, &n, &total, &err), 0);
        assert_int_equal(total, cases[i].total);
        assert_int_equal(n, (size_t)cases[i].total);
        if (cases[i].id)
            assert_string_equal(l[0].id, cases[i].id);
        relay_key_records_free(l, n);
    }
    /* Paging: total counts everything, the page holds `limit`. */
    relay_key_record_t *l;
    size_t n;
    int64_t total;
    assert_int_equal(relay_keys_list(r, RELAY_KEYS_ALL, 1, 1, &l, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(total, 3);
    relay_key_records_free(l, n);
    assert_int_equal(relay_keys_list(r, RELAY_KEYS_ALL, 0, 0, &l, &n, &total, &err),
                     RELAY_ERR_INVALID);
    assert_int_equal(relay_keys_list(r, RELAY_KEYS_ALL, 0, 1001, &l, &n, &total, &err),
                     RELAY_ERR_INVALID);
    assert_int_equal(relay_keys_list(r, RELAY_KEYS_ALL, -1, 10, &l, &n, &total, &err),
                     RELAY_ERR_INVALID);
    relay_key_record_clear(&act);
    relay_key_record_clear(&dis);
    relay_key_record_clear(&exp);
    relay_free(r);
}

static void test_to_json_shape(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "json";
    p.token_limit = 10000;
    p.expires_at = 1795663408; /* 2026-11-26T03:23:28Z */
    p.allowed_models = "[\"claude-opus-4-1\"]";
    relay_key_record_t rec;
    relay_error_t err = {0};
    assert_int_equal(relay_keys_create(r, &p, key, sizeof key, &rec, &err), 0);
    rec.token_used = 1234;
    char *s = relay_keys_to_json(&rec, relay_now());
    json_t *o = json_loads(s, 0, NULL);
    assert_non_null(o);
    const char *fields[] = {"id",
                            "name",
                            "description",
                            "key_prefix",
                            "token_limit",
                            "token_used",
                            "token_remaining",
                            "usage_percentage",
                            "rate_limit_tier",
                            "request_count",
                            "error_count",
                            "is_active",
                            "created_at",
                            "updated_at",
                            "last_used_at",
                            "expires_at",
                            "allowed_ips",
                            "allowed_origins",
                            "allowed_models",
                            "metadata",
                            "cost_limit",
                            "daily_cost_limit",
                            "weekly_cost_limit",
                            "monthly_cost_limit",
                            "model_cost_limits",
                            "upstream_group"};
    assert_int_equal(json_object_size(o), sizeof fields / sizeof fields[0]);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        assert_non_null(json_object_get(o, fields[i]));
    assert_int_equal(json_integer_value(json_object_get(o, "token_remaining")), 8766);
    assert_true(json_real_value(json_object_get(o, "usage_percentage")) == 12.34);
    assert_non_null(strstr(s, "\"usage_percentage\":12.34,"));
    assert_string_equal(json_string_value(json_object_get(o, "expires_at")),
                        "2026-11-26T03:23:28Z");
    assert_true(json_is_null(json_object_get(o, "last_used_at")));
    assert_true(json_is_null(json_object_get(o, "description")));
    assert_true(json_is_null(json_object_get(o, "allowed_ips")));
    assert_true(json_is_null(json_object_get(o, "metadata")));
    assert_true(json_is_true(json_object_get(o, "is_active")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "allowed_models"), 0)),
                        "claude-opus-4-1");
    assert_null(strstr(s, "$2b$")); /* never the hash */
    assert_null(strstr(s, key + 22));
    json_decref(o);
    free(s);
    /* Unlimited: remaining null, 0 %; over the limit: remaining 0, 100 %. */
    rec.token_limit = 0;
    s = relay_keys_to_json(&rec, relay_now());
    o = json_loads(s, 0, NULL);
    assert_true(json_is_null(json_object_get(o, "token_remaining")));
    assert_true(json_real_value(json_object_get(o, "usage_percentage")) == 0.0);
    json_decref(o);
    free(s);
    rec.token_limit = 1000;
    rec.token_used = 5000;
    s = relay_keys_to_json(&rec, relay_now());
    o = json_loads(s, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(o, "token_remaining")), 0);
    assert_true(json_real_value(json_object_get(o, "usage_percentage")) == 100.0);
    json_decref(o);
    free(s);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_cache_is_bounded(void **state)
{
    (void)state;
    relay_t *r = new_relay_opts(5000, 2);
    char keys[3][RELAY_KEY_MAX];
    relay_key_record_t rec;
    relay_error_t err = {0};
    for (int i = 0; i < 3; i++) {
        create_key(r, "bounded", keys[i], &rec);
        relay_key_record_clear(&rec);
        assert_int_equal(verify(r, keys[i], &err), 0);
    }
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    assert_int_equal(s.cache_entries, 2);
    assert_int_equal(s.bcrypt_calls, 3);
    /* The oldest was evicted: verifying it again costs a bcrypt; the newest does not. */
    assert_int_equal(verify(r, keys[2], &err), 0);
    assert_int_equal(bcrypts(r), 3);
    assert_int_equal(verify(r, keys[0], &err), 0);
    assert_int_equal(bcrypts(r), 4);
    relay_free(r);
}

typedef struct thr_arg {
    relay_t *r;
    const char *key;
    int ok;
} thr_arg_t;

static void *verify_loop(void *p)
{
    thr_arg_t *a = p;
    for (int i = 0; i < 500; i++) {
        relay_error_t err;
        relay_key_record_t rec;
        if (relay_keys_verify(a->r, a->key, &rec, &err) == 0)
            a->ok++;
        relay_key_record_clear(&rec);
    }
    return NULL;
}

static void test_concurrent_verify(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "threads", key, &rec);
    pthread_t t[4];
    thr_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg_t){r, key, 0};
        pthread_create(&t[i], NULL, verify_loop, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].ok, 500);
    }
    /* At most one bcrypt per thread that missed the cache at the same first instant. */
    assert_true(bcrypts(r) >= 1 && bcrypts(r) <= 4);
    relay_key_record_clear(&rec);
    relay_free(r);
}

/* ---- bursts: single flight and the bcrypt bound ---- */

/* A relay whose bcrypts take tens of milliseconds, so a burst's threads all arrive during one. */
static relay_t *new_slow_relay(int cost, int concurrency, int wait_ms)
{
    relay_options_t o;
    testdb_options(&o);
    o.bcrypt_cost = cost;
    o.bcrypt_concurrency = concurrency;
    o.key_verify_wait_ms = wait_ms;
    o.admin_password = "test-admin-password";
    return testrelay_new(&o);
}

typedef struct burst_arg {
    relay_t *r;
    const char *key;
    pthread_barrier_t *go;
    int rc;
    char id[40];
    char msg[RELAY_ERRMSG_MAX];
} burst_arg_t;

static void *burst_one(void *p)
{
    burst_arg_t *a = p;
    relay_error_t err = {0};
    relay_key_record_t rec;
    pthread_barrier_wait(a->go);
    a->rc = relay_keys_verify(a->r, a->key, &rec, &err);
    relay_strlcpy(a->id, a->rc == 0 ? rec.id : "", sizeof a->id);
    relay_strlcpy(a->msg, err.message, sizeof a->msg);
    relay_key_record_clear(&rec);
    return NULL;
}

/* n threads, released together, each verifying keys[i]; results in a[]. */
static void run_burst(relay_t *r, const char *const *keys, burst_arg_t *a, size_t n)
{
    pthread_t *t = calloc(n, sizeof *t);
    pthread_barrier_t go;
    assert_non_null(t);
    pthread_barrier_init(&go, NULL, (unsigned)n);
    for (size_t i = 0; i < n; i++) {
        a[i] = (burst_arg_t){.r = r, .key = keys[i], .go = &go};
        assert_int_equal(pthread_create(&t[i], NULL, burst_one, &a[i]), 0);
    }
    for (size_t i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
    free(t);
}

/* The sample value of one line of r's /metrics text ("name{labels}"), or -1 if absent. */
static double scraped(relay_t *r, const char *series)
{
    char *text;
    size_t len;
    assert_int_equal(relay_metrics_scrape(r, &text, &len), 0);
    double v = -1;
    size_t sl = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, sl) == 0 && p[sl] == ' ')
            v = strtod(p + sl + 1, NULL);
    free(text);
    return v;
}

static void test_burst_one_new_key_one_bcrypt(void **state)
{
    (void)state;
    enum { N = 32 };
    relay_t *r = new_slow_relay(10, 0, 30000); /* cost 10: ~50 ms, the default */
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "burst", key, &rec);
    const char *keys[N];
    for (int i = 0; i < N; i++)
        keys[i] = key;
    burst_arg_t a[N];
    run_burst(r, keys, a, N);
    for (int i = 0; i < N; i++) {
        if (a[i].rc != 0)
            fail_msg("thread %d: %d %s", i, a[i].rc, a[i].msg);
        assert_string_equal(a[i].id, rec.id);
    }
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    assert_int_equal(s.bcrypt_calls, 1);
    assert_int_equal(s.store_lookups, 1);
    /* The others waited for the one bcrypt (or came after it and hit the cache). */
    assert_int_equal(s.verify_shared + s.cache_hits, N - 1);
    assert_true(s.verify_shared >= 1);
    assert_int_equal(s.verify_waiting, 0);
    assert_int_equal(s.bcrypt_running, 0);
    assert_int_equal(s.bcrypt_max_parallel, 1);
    /* The histogram tells them apart: one bcrypt (plus who shared it), the rest cached. */
    assert_true(scraped(r, "relay_key_verify_seconds_count{result=\"bcrypt\"}") ==
                (double)(1 + s.verify_shared));
    assert_true(scraped(r, "relay_key_verify_seconds_count{result=\"cached\"}") ==
                (s.cache_hits ? (double)s.cache_hits : -1));
    assert_true(scraped(r, "relay_key_verify_waiting") == 0);
    assert_true(scraped(r, "relay_key_bcrypt_total") == 1);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_burst_wrong_secret_gets_no_shared_success(void **state)
{
    (void)state;
    enum { N = 16 };
    relay_t *r = new_slow_relay(12, 0, 30000); /* ~200 ms: every thread arrives during it */
    char key[RELAY_KEY_MAX], wrong[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "identity", key, &rec);
    /* Same public id, another secret: the lookup finds the key, only bcrypt can refuse it. */
    relay_strlcpy(wrong, key, sizeof wrong);
    wrong[30] = wrong[30] == 'A' ? 'B' : 'A';
    const char *keys[N];
    for (int i = 0; i < N; i++)
        keys[i] = i % 2 ? wrong : key;
    burst_arg_t a[N];
    run_burst(r, keys, a, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(a[i].rc, i % 2 ? RELAY_ERR_AUTH : 0);
        if (i % 2)
            assert_string_equal(a[i].msg, "invalid API key");
    }
    /* One bcrypt per distinct presented key, however many threads presented it (the wrong one
     * costs none if it came only after the right one was cached). */
    assert_true(bcrypts(r) >= 1 && bcrypts(r) <= 2);
    relay_error_t err = {0};
    assert_int_equal(verify(r, wrong, &err), RELAY_ERR_AUTH);
    assert_int_equal(verify(r, key, &err), 0);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static void test_burst_distinct_keys_bounded(void **state)
{
    (void)state;
    enum { N = 200 };
    relay_t *r = new_slow_relay(4, 0, 60000); /* the default bound: one per online CPU */
    static char keys[N][RELAY_KEY_MAX];
    const char *kp[N];
    relay_key_record_t rec;
    for (int i = 0; i < N; i++) {
        create_key(r, "distinct", keys[i], &rec);
        relay_key_record_clear(&rec);
        kp[i] = keys[i];
    }
    static burst_arg_t a[N];
    run_burst(r, kp, a, N);
    for (int i = 0; i < N; i++)
        if (a[i].rc != 0)
            fail_msg("thread %d: %d %s", i, a[i].rc, a[i].msg);
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(s.bcrypt_slots, cpus > 0 ? cpus : 1);
    assert_int_equal(s.bcrypt_calls, N);
    assert_true(s.bcrypt_max_parallel >= 1);
    if (s.bcrypt_max_parallel > (uint64_t)s.bcrypt_slots)
        fail_msg("%llu bcrypts at once, bound %d", (unsigned long long)s.bcrypt_max_parallel,
                 s.bcrypt_slots);
    assert_int_equal(s.verify_waiting, 0);
    relay_free(r);

    /* An explicit bound above the cores is honoured as well, and reached under this load. */
    r = new_slow_relay(4, 3, 60000);
    for (int i = 0; i < N; i++) {
        create_key(r, "distinct3", keys[i], &rec);
        relay_key_record_clear(&rec);
    }
    run_burst(r, kp, a, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(a[i].rc, 0);
    relay_keys_stats(r, &s);
    assert_int_equal(s.bcrypt_slots, 3);
    assert_int_equal(s.bcrypt_calls, N);
    assert_true(s.bcrypt_max_parallel >= 2 && s.bcrypt_max_parallel <= 3);
    relay_free(r);
}

static void test_burst_wait_is_bounded(void **state)
{
    (void)state;
    enum { N = 4 };
    /* One slot, cost 12 (~200 ms), 20 ms of patience: whoever queues behind the first gives up. */
    relay_t *r = new_slow_relay(12, 1, 20);
    char keys[N][RELAY_KEY_MAX];
    const char *kp[N];
    relay_key_record_t rec;
    for (int i = 0; i < N; i++) {
        create_key(r, "patience", keys[i], &rec);
        relay_key_record_clear(&rec);
        kp[i] = keys[i];
    }
    burst_arg_t a[N];
    run_burst(r, kp, a, N);
    int ok = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        ok += a[i].rc == 0;
        if (a[i].rc == RELAY_ERR_AUTH) {
            refused++;
            assert_string_equal(a[i].msg, "invalid API key"); /* as for a wrong key */
        }
    }
    assert_true(ok >= 1);
    assert_int_equal(ok + refused, N);
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    assert_int_equal(s.verify_timeouts, (uint64_t)refused);
    assert_true(refused >= 1);
    assert_int_equal(s.bcrypt_calls, (uint64_t)ok);
    assert_int_equal(s.bcrypt_max_parallel, 1);
    /* A time-out is not remembered as a wrong key: alone, each verifies. */
    relay_error_t err = {0};
    for (int i = 0; i < N; i++)
        assert_int_equal(verify(r, keys[i], &err), 0);
    relay_free(r);
}

typedef struct flood_arg {
    relay_t *r;
    atomic_int stop;
} flood_arg_t;

static void *flood_unknown(void *p)
{
    flood_arg_t *f = p;
    while (!atomic_load(&f->stop)) {
        char fake[RELAY_KEY_MAX], sec[64], pub[32];
        uint8_t rnd[32];
        relay_random_bytes(rnd, sizeof rnd);
        relay_base64url(rnd, 32, sec);
        relay_hex(rnd, 6, pub);
        snprintf(fake, sizeof fake, "sk-proxy-%s_%s", pub, sec);
        relay_error_t err;
        relay_keys_verify(f->r, fake, NULL, &err);
    }
    return NULL;
}

static void test_unknown_keys_do_not_keep_a_key_out_of_the_cache(void **state)
{
    (void)state;
    relay_t *r = new_slow_relay(10, 0, 30000);
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    create_key(r, "steady", key, &rec);
    /* Random keys arrive all the time while the first verification runs its bcrypt ... */
    flood_arg_t f = {.r = r};
    atomic_init(&f.stop, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flood_unknown, &f), 0);
    relay_error_t err = {0};
    assert_int_equal(verify(r, key, &err), 0);
    atomic_store(&f.stop, 1);
    pthread_join(t, NULL);
    /* ... and still the key was cached: the next verification runs no bcrypt. */
    assert_int_equal(verify(r, key, &err), 0);
    assert_int_equal(bcrypts(r), 1);
    relay_key_record_clear(&rec);
    relay_free(r);
}

static relay_keys_stats_t key_stats(relay_t *r)
{
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    return s;
}

static void test_unknown_id_looked_up_once(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char fake[RELAY_KEY_MAX], other[RELAY_KEY_MAX];
    made_up_key(fake);
    relay_error_t err = {0};
    uint64_t lookups0 = key_stats(r).store_lookups;
    for (int i = 0; i < 10; i++) /* no address: never throttled */
        assert_int_equal(verify(r, fake, &err), RELAY_ERR_AUTH);
    /* The same public id with other secrets is still the same unknown id. */
    memcpy(other, fake, sizeof other);
    other[strlen(other) - 1] = other[strlen(other) - 1] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(r, other, &err), RELAY_ERR_AUTH);
    relay_keys_stats_t s = key_stats(r);
    assert_int_equal(s.store_lookups, lookups0 + 1);
    assert_int_equal(s.unknown_id_hits, 10);
    assert_int_equal(s.bcrypt_calls, 0);
    assert_string_equal(err.message, "invalid API key"); /* the same words as any refusal */
    relay_free(r);
}

static void test_guessing_address_throttled(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    char good[RELAY_KEY_MAX], fresh[RELAY_KEY_MAX], fake[RELAY_KEY_MAX];
    relay_key_record_t rec, rec2, out;
    create_key(r, "cached", good, &rec);
    create_key(r, "fresh", fresh, &rec2);
    relay_error_t err = {0};
    int retry = 0;
    const char *ip = "192.0.2.7";
    assert_int_equal(relay_keys_verify_client(r, good, ip, &retry, &out, &err), 0);
    relay_key_record_clear(&out);
    for (int i = 0; i < 20; i++) { /* the default key_max_invalid_per_ip */
        made_up_key(fake);
        assert_int_equal(relay_keys_verify_client(r, fake, ip, &retry, NULL, &err), RELAY_ERR_AUTH);
    }
    uint64_t lookups = key_stats(r).store_lookups;
    made_up_key(fake);
    assert_int_equal(relay_keys_verify_client(r, fake, ip, &retry, NULL, &err),
                     RELAY_ERR_RATE_LIMITED);
    assert_true(retry >= 59 && retry <= 60);
    assert_non_null(strstr(err.message, "too many invalid API keys"));
    /* A key that would need the store is refused too, without a lookup ... */
    assert_int_equal(relay_keys_verify_client(r, fresh, ip, &retry, NULL, &err),
                     RELAY_ERR_RATE_LIMITED);
    assert_int_equal(key_stats(r).store_lookups, lookups);
    /* ... but the cached key still passes, and another address is not affected. */
    assert_int_equal(relay_keys_verify_client(r, good, ip, &retry, &out, &err), 0);
    relay_key_record_clear(&out);
    assert_int_equal(relay_keys_verify_client(r, fresh, "192.0.2.8", &retry, &out, &err), 0);
    relay_key_record_clear(&out);
    relay_keys_stats_t s = key_stats(r);
    assert_int_equal(s.throttled, 2);
    assert_int_equal(s.throttle_blocks, 1);
    relay_key_record_clear(&rec);
    relay_key_record_clear(&rec2);
    relay_free(r);
}

static void test_tiers(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    relay_tier_def_t *list;
    size_t n;
    assert_int_equal(relay_tiers_list(r, &list, &n), 0);
    assert_int_equal(n, 3); /* seeded from the defaults, sorted by name */
    assert_string_equal(list[0].name, "basic");
    assert_int_equal(list[0].requests, 100);
    assert_int_equal(list[0].period_s, 60);
    assert_string_equal(list[1].name, "premium");
    assert_string_equal(list[2].name, "unlimited");
    assert_int_equal(list[2].requests, -1);
    free(list);
    relay_error_t err = {0};
    relay_tier_def_t t = {.name = "gold", .requests = 500, .period_s = 30};
    assert_int_equal(relay_tiers_set(r, &t, &err), 0);
    relay_tier_def_t got;
    assert_int_equal(relay_tiers_get(r, "gold", &got), 0);
    assert_int_equal(got.requests, 500);
    assert_int_equal(got.period_s, 30);
    relay_tier_def_t bad = {.name = "bad", .requests = 0, .period_s = 60};
    assert_int_equal(relay_tiers_set(r, &bad, &err), RELAY_ERR_INVALID);
    assert_int_equal(strncmp(err.message, "requests:", 9), 0);
    bad.requests = 5;
    bad.period_s = 0;
    assert_int_equal(relay_tiers_set(r, &bad, &err), RELAY_ERR_INVALID);
    assert_int_equal(strncmp(err.message, "period:", 7), 0);
    /* A key on gold keeps gold alive; the default tier cannot go either. */
    char key[RELAY_KEY_MAX];
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "gold key";
    p.tier = "gold";
    relay_key_record_t rec;
    assert_int_equal(relay_keys_create(r, &p, key, sizeof key, &rec, &err), 0);
    assert_int_equal(relay_tiers_delete(r, "gold", &err), RELAY_ERR_CONFLICT);
    assert_int_equal(relay_tiers_delete(r, "basic", &err), RELAY_ERR_CONFLICT);
    assert_int_equal(relay_tiers_delete(r, "nope", &err), RELAY_ERR_NOT_FOUND);
    /* A second relay_t on the same database loads the persisted table. */
    relay_t *b = new_relay();
    assert_int_equal(relay_tiers_get(b, "gold", &got), 0);
    assert_int_equal(relay_tiers_delete(r, "premium", &err), 0);
    assert_int_equal(relay_tiers_get(r, "premium", &got), RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_tiers_get(b, "premium", &got), 0); /* until b reloads */
    assert_int_equal(relay_tiers_reload(b), 0);
    assert_int_equal(relay_tiers_get(b, "premium", &got), RELAY_ERR_NOT_FOUND);
    /* Once the key is gone, gold may go. */
    assert_int_equal(relay_keys_delete(r, rec.id, 0, &err), 0);
    assert_int_equal(relay_tiers_delete(r, "gold", &err), 0);
    relay_key_record_clear(&rec);
    relay_free(b);
    relay_free(r);
}

int main(int argc, char **argv)
{
    int skip = testdb_init(argc, argv, "keys");
    if (skip)
        return skip;
#define T(f) cmocka_unit_test_setup_teardown(f, testdb_setup, testdb_teardown)
    const struct CMUnitTest tests[] = {
        T(test_create_format_and_record),
        T(test_verify_cached_costs_no_bcrypt),
        T(test_unknown_and_malformed_cost_no_bcrypt),
        T(test_wrong_secret_refused),
        T(test_disable_enable_at_once),
        T(test_delete_soft_and_hard),
        T(test_rotate),
        T(test_expiry),
        T(test_ttl_second_process_sees_changes),
        T(test_stale_key_served_while_reread),
        T(test_no_plaintext_key_in_database),
        T(test_validation_names_field),
        T(test_list_filters),
        T(test_to_json_shape),
        T(test_cache_is_bounded),
        T(test_concurrent_verify),
        T(test_burst_one_new_key_one_bcrypt),
        T(test_burst_wrong_secret_gets_no_shared_success),
        T(test_burst_distinct_keys_bounded),
        T(test_burst_wait_is_bounded),
        T(test_unknown_keys_do_not_keep_a_key_out_of_the_cache),
        T(test_unknown_id_looked_up_once),
        T(test_guessing_address_throttled),
        T(test_tiers),
    };
    return cmocka_run_group_tests_name(testdb_backend(), tests, NULL, NULL);
}
