/* test_store: one store suite, run on SQLite (argv[1] "sqlite") and PostgreSQL ("pg"). */
#include <libgen.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "relay/store.h"
#include "util.h"

static relay_store_t *S;
static int IS_PG;
static char SQLITE_PATH[256];

#define DAY 86400
/* 2024-03-10T12:00:00Z: a fixed noon, so "+/- a few hours" stays on the same UTC day. */
#define T0 1710072000

/* ---------------------------------------------------------------- helpers */

/* Drops everything and migrates up, so every test starts from an empty, current schema. */
static int reset_schema(void **state)
{
    (void)state;
    relay_error_t err = {0};
    int n = 0;
    if (relay_store_migrate_down(S, 1000, &n, &err) != 0 ||
        relay_store_migrate_up(S, &n, &err) != 0) {
        fprintf(stderr, "reset_schema: %s\n", err.message);
        return -1;
    }
    return 0;
}

static void make_key(relay_key_record_t *k, const char *name, int64_t created)
{
    memset(k, 0, sizeof *k);
    assert_int_equal(relay_uuid4(k->id, sizeof k->id), 0);
    k->name = strdup(name);
    snprintf(k->key_prefix, sizeof k->key_prefix, "sk-proxy-%.8s%.4s", k->id, k->id + 9);
    snprintf(k->key_hash, sizeof k->key_hash, "$2b$10$%s",
             "abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz1");
    k->token_limit = 1000000;
    snprintf(k->rate_limit_tier, sizeof k->rate_limit_tier, "basic");
    k->is_active = 1;
    k->created_at = created;
    k->updated_at = created;
}

static void insert_key(relay_key_record_t *k, const char *name, int64_t created)
{
    make_key(k, name, created);
    assert_int_equal(relay_store_key_insert(S, k), 0);
}

static void make_row(relay_usage_row_t *r, const char *key_id, int64_t created, int64_t prompt,
                     int64_t completion)
{
    memset(r, 0, sizeof *r);
    snprintf(r->api_key_id, sizeof r->api_key_id, "%s", key_id);
    snprintf(r->request_method, sizeof r->request_method, "POST");
    snprintf(r->request_path, sizeof r->request_path, "/v1/messages");
    snprintf(r->model, sizeof r->model, "claude-sonnet-4-5");
    r->response_status = 200;
    r->prompt_tokens = prompt;
    r->completion_tokens = completion;
    r->total_tokens = prompt + completion;
    r->billed_tokens = prompt + completion;
    r->total_cost = (double)(prompt + completion) / 1000.0;
    r->attempts = 1;
    r->created_at = created;
}

static int64_t count_logs(const char *key_id)
{
    relay_usage_query_t q = {.api_key_id = key_id, .limit = 0};
    relay_usage_row_t *rows = NULL;
    size_t n = 0;
    int64_t total = -1;
    assert_int_equal(relay_store_usage_logs(S, &q, &rows, &n, &total), 0);
    assert_int_equal(n, 0);
    free(rows);
    return total;
}

/* ---------------------------------------------------------------- migrations */

static void test_migrations(void **state)
{
    (void)state;
    relay_error_t err = {0};
    int n = -1;
    assert_int_equal(relay_store_migrate_down(S, 1000, &n, &err), 0);

    /* Unmigrated: status shows nothing applied, check_schema refuses, tables are gone. */
    relay_migration_info_t *info = NULL;
    size_t ni = 0;
    assert_int_equal(relay_store_migrate_status(S, &info, &ni, &err), 0);
    assert_true(ni >= 2);
    for (size_t i = 0; i < ni; i++)
        assert_false(info[i].applied);
    assert_int_equal(info[0].version, 1);
    assert_string_equal(info[0].name, "init");
    size_t known = ni;
    free(info);
    assert_int_equal(relay_store_check_schema(S, &err), RELAY_ERR_CONFIG);
    assert_non_null(strstr(err.message, "pending"));
    relay_key_record_t k;
    make_key(&k, "no-table", T0);
    assert_int_equal(relay_store_key_insert(S, &k), RELAY_ERR_STORE);

    /* Up applies every one; a second up applies none. */
    assert_int_equal(relay_store_migrate_up(S, &n, &err), 0);
    assert_int_equal(n, (int)known);
    assert_int_equal(relay_store_migrate_up(S, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(relay_store_check_schema(S, &err), 0);
    assert_int_equal(relay_store_migrate_status(S, &info, &ni, &err), 0);
    for (size_t i = 0; i < ni; i++) {
        assert_true(info[i].applied);
        assert_true(info[i].applied_at >= relay_now() - 60);
    }
    free(info);
    assert_int_equal(relay_store_key_insert(S, &k), 0);

    /* Down 1 reverts only the newest. */
    assert_int_equal(relay_store_migrate_down(S, 1, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(relay_store_migrate_status(S, &info, &ni, &err), 0);
    for (size_t i = 0; i < ni; i++)
        assert_int_equal(info[i].applied, i + 1 < ni);
    free(info);
    assert_int_equal(relay_store_check_schema(S, &err), RELAY_ERR_CONFIG);
    /* The key row survived; the code reads the newest schema, so look once it is back. */
    assert_int_equal(relay_store_migrate_up(S, &n, &err), 0);
    assert_int_equal(n, 1);
    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, k.id, &got), 0);
    relay_key_record_clear(&got);
    assert_int_equal(relay_store_migrate_down(S, 1, &n, &err), 0);

    /* Down N stops at what is applied; then up again restores everything. */
    assert_int_equal(relay_store_migrate_down(S, 50, &n, &err), 0);
    assert_int_equal(n, (int)known - 1);
    assert_int_equal(relay_store_migrate_down(S, 0, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(relay_store_key_get(S, k.id, &got), RELAY_ERR_STORE);
    assert_int_equal(relay_store_migrate_up(S, &n, &err), 0);
    assert_int_equal(n, (int)known);
    assert_int_equal(relay_store_key_get(S, k.id, &got), RELAY_ERR_NOT_FOUND);
    relay_key_record_clear(&k);
}

/* ---------------------------------------------------------------- api_keys */

static void test_key_roundtrip_and_update(void **state)
{
    (void)state;
    relay_key_record_t k, got;
    make_key(&k, "full", T0);
    k.description = strdup("a key with every field");
    k.token_used = 5;
    k.request_count = 6;
    k.error_count = 1;
    k.allowed_ips = strdup("[\"10.0.0.0/8\",\"::1\"]");
    k.allowed_origins = strdup("[\"*.example.com\"]");
    k.allowed_models = strdup("[\"claude-sonnet-4-5\"]");
    k.metadata = strdup("{\"team\":\"a\",\"n\":1}");
    k.expires_at = T0 + 30 * DAY;
    k.last_used_at = T0 + 5;
    assert_int_equal(relay_store_key_insert(S, &k), 0);

    assert_int_equal(relay_store_key_get(S, k.id, &got), 0);
    assert_string_equal(got.id, k.id);
    assert_string_equal(got.name, "full");
    assert_string_equal(got.description, k.description);
    assert_string_equal(got.key_prefix, k.key_prefix);
    assert_string_equal(got.key_hash, k.key_hash);
    assert_int_equal(got.token_limit, 1000000);
    assert_int_equal(got.token_used, 5);
    assert_int_equal(got.request_count, 6);
    assert_int_equal(got.error_count, 1);
    assert_string_equal(got.rate_limit_tier, "basic");
    assert_int_equal(got.is_active, 1);
    assert_int_equal(got.is_deleted, 0);
    assert_string_equal(got.allowed_ips, k.allowed_ips); /* JSON text kept exactly */
    assert_string_equal(got.allowed_origins, k.allowed_origins);
    assert_string_equal(got.allowed_models, k.allowed_models);
    assert_string_equal(got.metadata, k.metadata);
    assert_int_equal(got.expires_at, T0 + 30 * DAY);
    assert_int_equal(got.created_at, T0);
    assert_int_equal(got.updated_at, T0);
    assert_int_equal(got.last_used_at, T0 + 5);
    assert_int_equal(got.deleted_at, 0);
    relay_key_record_clear(&got);

    /* Lookups: by prefix, by upper-case id, misses. */
    assert_int_equal(relay_store_key_get_by_prefix(S, k.key_prefix, &got), 0);
    assert_string_equal(got.id, k.id);
    relay_key_record_clear(&got);
    char upper[37];
    for (int i = 0; i < 37; i++)
        upper[i] = (char)(k.id[i] >= 'a' && k.id[i] <= 'f' ? k.id[i] - 32 : k.id[i]);
    assert_int_equal(relay_store_key_get(S, upper, &got), 0);
    relay_key_record_clear(&got);
    assert_int_equal(relay_store_key_get_by_prefix(S, "sk-proxy-none", &got), RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_store_key_get(S, "not-a-uuid", &got), RELAY_ERR_NOT_FOUND);
    char other[37];
    relay_uuid4(other, sizeof other);
    assert_int_equal(relay_store_key_get(S, other, &got), RELAY_ERR_NOT_FOUND);

    /* Copy is deep. */
    relay_key_record_t copy;
    assert_int_equal(relay_key_record_copy(&copy, &k), 0);
    assert_ptr_not_equal(copy.metadata, k.metadata);
    assert_string_equal(copy.metadata, k.metadata);
    relay_key_record_clear(&copy);
    assert_null(copy.name);

    /* Update writes the mutable fields and leaves the counters alone. */
    free(k.name);
    k.name = strdup("renamed");
    free(k.description);
    k.description = NULL;
    free(k.metadata);
    k.metadata = strdup("{}");
    snprintf(k.rate_limit_tier, sizeof k.rate_limit_tier, "premium");
    k.is_active = 0;
    k.expires_at = 0;
    k.token_limit = 42;
    k.token_used = 999999; /* ignored: counters are the usage writer's */
    k.updated_at = T0 + 100;
    assert_int_equal(relay_store_key_update(S, &k), 0);
    assert_int_equal(relay_store_key_get(S, k.id, &got), 0);
    assert_string_equal(got.name, "renamed");
    assert_null(got.description);
    assert_string_equal(got.metadata, "{}");
    assert_string_equal(got.rate_limit_tier, "premium");
    assert_int_equal(got.is_active, 0);
    assert_int_equal(got.expires_at, 0);
    assert_int_equal(got.token_limit, 42);
    assert_int_equal(got.token_used, 5);
    assert_int_equal(got.updated_at, T0 + 100);
    relay_key_record_clear(&got);

    /* Soft delete is just an update. */
    k.is_deleted = 1;
    k.deleted_at = T0 + 200;
    assert_int_equal(relay_store_key_update(S, &k), 0);
    assert_int_equal(relay_store_key_get(S, k.id, &got), 0);
    assert_int_equal(got.is_deleted, 1);
    assert_int_equal(got.deleted_at, T0 + 200);
    relay_key_record_clear(&got);

    relay_key_record_t missing;
    make_key(&missing, "missing", T0);
    assert_int_equal(relay_store_key_update(S, &missing), RELAY_ERR_NOT_FOUND);
    relay_key_record_clear(&missing);
    relay_key_record_clear(&k);
}

static void test_key_conflicts_and_constraints(void **state)
{
    (void)state;
    relay_key_record_t a, b;
    insert_key(&a, "a", T0);
    make_key(&b, "b", T0);
    snprintf(b.key_prefix, sizeof b.key_prefix, "%s", a.key_prefix);
    assert_int_equal(relay_store_key_insert(S, &b), RELAY_ERR_CONFLICT);

    char bid[37];
    memcpy(bid, b.id, sizeof bid);
    memcpy(b.id, a.id, sizeof b.id);
    snprintf(b.key_prefix, sizeof b.key_prefix, "sk-proxy-distinct");
    assert_int_equal(relay_store_key_insert(S, &b), RELAY_ERR_CONFLICT); /* same id */

    memcpy(b.id, bid, sizeof b.id);
    assert_int_equal(relay_store_key_insert(S, &b), 0);
    snprintf(b.key_prefix, sizeof b.key_prefix, "%s", a.key_prefix);
    assert_int_equal(relay_store_key_update(S, &b), RELAY_ERR_CONFLICT);

    /* The schema enforces JSON and a non-negative limit on both backends. */
    relay_key_record_t c;
    make_key(&c, "c", T0);
    c.allowed_ips = strdup("[not json");
    assert_int_equal(relay_store_key_insert(S, &c), RELAY_ERR_INVALID);
    free(c.allowed_ips);
    c.allowed_ips = NULL;
    c.token_limit = -1;
    assert_int_equal(relay_store_key_insert(S, &c), RELAY_ERR_INVALID);
    snprintf(c.id, sizeof c.id, "not-a-uuid");
    c.token_limit = 0;
    assert_int_equal(relay_store_key_insert(S, &c), RELAY_ERR_INVALID);

    int64_t total = -1;
    relay_key_record_t *list;
    size_t n;
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ALL, T0, 0, 10, &list, &n, &total), 0);
    assert_int_equal(total, 2);
    relay_key_records_free(list, n);
    relay_key_record_clear(&a);
    relay_key_record_clear(&b);
    relay_key_record_clear(&c);
}

static void test_key_list(void **state)
{
    (void)state;
    /* 25 keys, created one second apart: 0-4 disabled, 5-9 expired, 10-12 deleted, rest active. */
    char ids[25][37];
    for (int i = 0; i < 25; i++) {
        relay_key_record_t k;
        char name[16];
        snprintf(name, sizeof name, "k%02d", i);
        make_key(&k, name, T0 + i);
        k.is_active = i >= 5;
        if (i >= 5 && i < 10)
            k.expires_at = T0 - 1;
        else if (i >= 20)
            k.expires_at = T0 + DAY; /* set but in the future: still active */
        k.is_deleted = i >= 10 && i < 13;
        assert_int_equal(relay_store_key_insert(S, &k), 0);
        memcpy(ids[i], k.id, 37);
        relay_key_record_clear(&k);
    }
    relay_key_record_t *list;
    size_t n;
    int64_t total;

    /* ALL: 22 not deleted, newest first, paged. */
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ALL, T0, 0, 10, &list, &n, &total), 0);
    assert_int_equal(total, 22);
    assert_int_equal(n, 10);
    assert_string_equal(list[0].name, "k24");
    assert_string_equal(list[9].name, "k15");
    for (size_t i = 1; i < n; i++)
        assert_true(list[i - 1].created_at > list[i].created_at);
    relay_key_records_free(list, n);
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ALL, T0, 10, 10, &list, &n, &total), 0);
    assert_int_equal(n, 10);
    assert_string_equal(list[0].name, "k14");
    assert_string_equal(list[2].name, "k09"); /* k12..k10 are deleted */
    relay_key_records_free(list, n);
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ALL, T0, 20, 10, &list, &n, &total), 0);
    assert_int_equal(n, 2);
    assert_string_equal(list[1].name, "k00");
    relay_key_records_free(list, n);

    /* Filters. */
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ACTIVE, T0, 0, 100, &list, &n, &total), 0);
    assert_int_equal(total, 12);
    assert_int_equal(n, 12);
    relay_key_records_free(list, n);
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_DISABLED, T0, 0, 100, &list, &n, &total),
                     0);
    assert_int_equal(total, 5);
    relay_key_records_free(list, n);
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_EXPIRED, T0, 0, 100, &list, &n, &total), 0);
    assert_int_equal(total, 5);
    assert_string_equal(list[0].name, "k09");
    relay_key_records_free(list, n);
    /* A day later the five future expiries have passed too. */
    assert_int_equal(
        relay_store_key_list(S, RELAY_KEYS_EXPIRED, T0 + DAY, 0, 100, &list, &n, &total), 0);
    assert_int_equal(total, 10);
    relay_key_records_free(list, n);
    assert_int_equal(
        relay_store_key_list(S, RELAY_KEYS_ACTIVE, T0 + DAY, 0, 100, &list, &n, &total), 0);
    assert_int_equal(total, 7);
    relay_key_records_free(list, n);

    /* limit 0: only the total. */
    assert_int_equal(relay_store_key_list(S, RELAY_KEYS_ALL, T0, 0, 0, &list, &n, &total), 0);
    assert_int_equal(n, 0);
    assert_int_equal(total, 22);
    free(list);
    assert_int_equal(relay_store_key_list(S, (relay_key_filter)9, T0, 0, 1, &list, &n, &total),
                     RELAY_ERR_INVALID);
}

static void test_key_delete_hard(void **state)
{
    (void)state;
    relay_key_record_t a, b;
    insert_key(&a, "doomed", T0);
    insert_key(&b, "kept", T0);
    relay_usage_row_t rows[4];
    make_row(&rows[0], a.id, T0, 10, 5);
    make_row(&rows[1], a.id, T0 + DAY, 10, 5);
    make_row(&rows[2], b.id, T0, 1, 1);
    make_row(&rows[3], b.id, T0 + DAY, 1, 1);
    assert_int_equal(relay_store_usage_write(S, rows, 4), 0);
    assert_int_equal(count_logs(a.id), 2);

    assert_int_equal(relay_store_key_delete_hard(S, a.id), 0);
    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, a.id, &got), RELAY_ERR_NOT_FOUND);
    assert_int_equal(count_logs(a.id), 0);
    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, a.id, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 0);
    free(d);
    /* The other key is untouched. */
    assert_int_equal(count_logs(b.id), 2);
    assert_int_equal(relay_store_usage_daily(S, b.id, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 2);
    free(d);
    assert_int_equal(relay_store_key_delete_hard(S, a.id), RELAY_ERR_NOT_FOUND);
    relay_key_record_clear(&a);
    relay_key_record_clear(&b);
}

/* ---------------------------------------------------------------- usage */

static void test_usage_write_counters_and_daily(void **state)
{
    (void)state;
    relay_key_record_t a, b;
    insert_key(&a, "a", T0 - DAY);
    insert_key(&b, "b", T0 - DAY);
    relay_usage_row_t r[4];
    make_row(&r[0], a.id, T0, 100, 20);
    r[0].cache_creation_tokens = 7;
    r[0].cache_read_tokens = 3;
    r[0].total_tokens = 130;
    r[0].billed_tokens = 130;
    make_row(&r[1], a.id, T0 + 60, 50, 0);
    r[1].is_error = 1;
    r[1].response_status = 529;
    make_row(&r[2], b.id, T0 + 30, 1, 2);
    char ghost[37];
    relay_uuid4(ghost, sizeof ghost);
    make_row(&r[3], ghost, T0, 9, 9); /* key gone: logged, counts nowhere */
    assert_int_equal(relay_store_usage_write(S, r, 4), 0);

    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.token_used, 180);
    assert_int_equal(got.request_count, 2);
    assert_int_equal(got.error_count, 1);
    assert_int_equal(got.last_used_at, T0 + 60);
    relay_key_record_clear(&got);
    assert_int_equal(relay_store_key_get(S, b.id, &got), 0);
    assert_int_equal(got.token_used, 3);
    assert_int_equal(got.request_count, 1);
    assert_int_equal(got.error_count, 0);
    relay_key_record_clear(&got);
    assert_int_equal(count_logs(ghost), 1);
    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, ghost, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 0);
    free(d);

    /* Second batch: same day for a (summed), a new day, and an older row (last_used keeps max). */
    relay_usage_row_t r2[3];
    make_row(&r2[0], a.id, T0 + 3600, 10, 10);
    make_row(&r2[1], a.id, T0 + DAY, 1000, 1);
    make_row(&r2[2], a.id, T0 - 10, 1, 0);
    r2[2].created_at = T0 + 1; /* same day as T0 */
    assert_int_equal(relay_store_usage_write(S, r2, 3), 0);
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.token_used, 180 + 20 + 1001 + 1);
    assert_int_equal(got.request_count, 5);
    assert_int_equal(got.last_used_at, T0 + DAY);
    relay_key_record_clear(&got);

    assert_int_equal(relay_store_usage_daily(S, a.id, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].day, "2024-03-11"); /* newest first */
    assert_int_equal(d[0].requests, 1);
    assert_int_equal(d[0].tokens, 1001);
    assert_string_equal(d[1].day, "2024-03-10");
    assert_int_equal(d[1].requests, 4);
    assert_int_equal(d[1].tokens, 130 + 50 + 20 + 1);
    assert_int_equal(d[1].prompt_tokens, 100 + 50 + 10 + 1);
    assert_int_equal(d[1].completion_tokens, 30);
    assert_int_equal(d[1].cache_creation_tokens, 7);
    assert_int_equal(d[1].cache_read_tokens, 3);
    assert_int_equal(d[1].errors, 1);
    assert_float_equal(d[1].cost, (120 + 50 + 20 + 1) / 1000.0, 1e-9);
    free(d);

    /* An empty batch and a keyless row are fine. */
    assert_int_equal(relay_store_usage_write(S, NULL, 0), 0);
    relay_usage_row_t anon;
    make_row(&anon, "", T0, 1, 1);
    assert_int_equal(relay_store_usage_write(S, &anon, 1), 0);
    relay_key_record_clear(&a);
    relay_key_record_clear(&b);
}

static void test_usage_write_all_or_nothing(void **state)
{
    (void)state;
    relay_key_record_t a;
    insert_key(&a, "atomic", T0 - DAY);
    relay_usage_row_t r[3];
    make_row(&r[0], a.id, T0, 10, 10);
    make_row(&r[1], a.id, T0 + 1, 10, 10);
    make_row(&r[2], a.id, T0 + 2, 10, 10);
    r[2].completion_tokens = -1; /* CHECK (completion_tokens >= 0) */
    assert_int_equal(relay_store_usage_write(S, r, 3), RELAY_ERR_INVALID);

    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.token_used, 0);
    assert_int_equal(got.request_count, 0);
    assert_int_equal(got.last_used_at, 0);
    relay_key_record_clear(&got);
    assert_int_equal(count_logs(NULL), 0);
    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, NULL, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 0);
    free(d);

    /* A malformed key id is refused before any SQL runs. */
    r[2].completion_tokens = 1;
    snprintf(r[1].api_key_id, sizeof r[1].api_key_id, "nope");
    assert_int_equal(relay_store_usage_write(S, r, 3), RELAY_ERR_INVALID);
    assert_int_equal(count_logs(NULL), 0);

    /* The same rows, fixed, go in. */
    snprintf(r[1].api_key_id, sizeof r[1].api_key_id, "%s", a.id);
    assert_int_equal(relay_store_usage_write(S, r, 3), 0);
    assert_int_equal(count_logs(a.id), 3);
    relay_key_record_clear(&a);
}

static void test_usage_logs_query(void **state)
{
    (void)state;
    relay_key_record_t a, b;
    insert_key(&a, "a", T0 - DAY);
    insert_key(&b, "b", T0 - DAY);
    /* 30 rows: i even → a, odd → b; i % 3 == 0 → haiku; i % 5 == 0 → 429. */
    relay_usage_row_t r[30];
    for (int i = 0; i < 30; i++) {
        make_row(&r[i], i % 2 ? b.id : a.id, T0 + i * 10, i, 1);
        if (i % 3 == 0)
            snprintf(r[i].model, sizeof r[i].model, "claude-haiku-4-5");
        if (i % 5 == 0) {
            r[i].response_status = 429;
            r[i].is_error = 1;
        }
    }
    /* One row with every field set, to check the round trip. */
    relay_usage_row_t *f = &r[29];
    snprintf(f->request_id, sizeof f->request_id, "req_011CXYZ");
    f->request_size = 1234;
    f->response_size = 5678;
    f->response_time_ms = 4321;
    f->time_to_first_byte_ms = 210;
    f->cache_creation_tokens = 300;
    f->cache_creation_5m_tokens = 100;
    f->cache_creation_1h_tokens = 200;
    f->cache_read_tokens = 40;
    f->total_tokens = 29 + 1 + 300 + 40;
    f->total_cost = 0.125;
    f->stream = 1;
    f->estimated = 1;
    f->attempts = 3;
    snprintf(f->error_message, sizeof f->error_message, "upstream cut the stream");
    snprintf(f->error_code, sizeof f->error_code, "stream_cut");
    snprintf(f->client_ip, sizeof f->client_ip, "2001:db8::1");
    snprintf(f->user_agent, sizeof f->user_agent, "claude-cli/2.0 (external, cli)");
    assert_int_equal(relay_store_usage_write(S, r, 15), 0);
    assert_int_equal(relay_store_usage_write(S, r + 15, 15), 0);

    relay_usage_row_t *out;
    size_t n;
    int64_t total;
    relay_usage_query_t q = {.limit = 100};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 30);
    assert_int_equal(n, 30);
    /* Newest first: row 29 is first, with every field intact. */
    assert_string_equal(out[0].api_key_id, b.id);
    assert_true(out[0].id > 0);
    assert_string_equal(out[0].request_id, "req_011CXYZ");
    assert_string_equal(out[0].request_method, "POST");
    assert_string_equal(out[0].request_path, "/v1/messages");
    assert_int_equal(out[0].request_size, 1234);
    assert_int_equal(out[0].response_size, 5678);
    assert_int_equal(out[0].response_status, 200);
    assert_int_equal(out[0].response_time_ms, 4321);
    assert_int_equal(out[0].time_to_first_byte_ms, 210);
    assert_int_equal(out[0].prompt_tokens, 29);
    assert_int_equal(out[0].completion_tokens, 1);
    assert_int_equal(out[0].cache_creation_tokens, 300);
    assert_int_equal(out[0].cache_creation_5m_tokens, 100);
    assert_int_equal(out[0].cache_creation_1h_tokens, 200);
    assert_int_equal(out[0].cache_read_tokens, 40);
    assert_int_equal(out[0].total_tokens, 370);
    assert_float_equal(out[0].total_cost, 0.125, 1e-12);
    assert_string_equal(out[0].model, "claude-sonnet-4-5");
    assert_int_equal(out[0].is_error, 0);
    assert_int_equal(out[0].stream, 1);
    assert_int_equal(out[0].estimated, 1);
    assert_int_equal(out[0].attempts, 3);
    assert_string_equal(out[0].error_message, "upstream cut the stream");
    assert_string_equal(out[0].error_code, "stream_cut");
    assert_string_equal(out[0].client_ip, "2001:db8::1");
    assert_string_equal(out[0].user_agent, "claude-cli/2.0 (external, cli)");
    assert_int_equal(out[0].created_at, T0 + 290);
    assert_string_equal(out[1].request_id, ""); /* unset optional text reads back empty */
    for (size_t i = 1; i < n; i++)
        assert_true(out[i - 1].created_at > out[i].created_at);
    free(out);

    /* Filters combine. Key a: i = 0,2,...,28 (15); haiku among them: i % 6 == 0 → 0,6,12,18,24. */
    q = (relay_usage_query_t){.api_key_id = a.id, .model = "claude-haiku-4-5", .limit = 100};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 5);
    assert_int_equal(out[0].created_at, T0 + 240);
    free(out);
    /* 429s of key a: i % 10 == 0 → 0, 10, 20. */
    q = (relay_usage_query_t){.api_key_id = a.id, .status = 429, .limit = 100};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 3);
    assert_int_equal(out[2].created_at, T0);
    free(out);
    /* Only errors, every key, with the model filter: i % 5 == 0 and i % 3 == 0 → 0, 15. */
    q = (relay_usage_query_t){.is_error = 1, .model = "claude-haiku-4-5", .limit = 100};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 2);
    assert_true(out[0].is_error && out[1].is_error);
    assert_int_equal(out[0].created_at, T0 + 150);
    free(out);
    q = (relay_usage_query_t){.is_error = 1, .limit = 100}; /* 0, 5, ..., 25 */
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 6);
    free(out);
    /* Time range [T0+50, T0+150): i = 5..14 → 10 rows, end exclusive. */
    q = (relay_usage_query_t){.start = T0 + 50, .end = T0 + 150, .limit = 4, .skip = 8};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 10);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].created_at, T0 + 60);
    assert_int_equal(out[1].created_at, T0 + 50);
    free(out);
    /* A filter id that is not a UUID matches nothing. */
    q = (relay_usage_query_t){.api_key_id = "xyz", .limit = 10};
    assert_int_equal(relay_store_usage_logs(S, &q, &out, &n, &total), 0);
    assert_int_equal(total, 0);
    free(out);
    relay_key_record_clear(&a);
    relay_key_record_clear(&b);
}

static void test_usage_daily_range(void **state)
{
    (void)state;
    relay_key_record_t a, b;
    insert_key(&a, "a", T0 - DAY);
    insert_key(&b, "b", T0 - DAY);
    /* Five days; day i has i+1 requests for a and one for b. */
    relay_usage_row_t rows[20];
    size_t nr = 0;
    for (int day = 0; day < 5; day++) {
        for (int j = 0; j <= day; j++)
            make_row(&rows[nr++], a.id, T0 + day * DAY + j, 10, 0);
        make_row(&rows[nr++], b.id, T0 + day * DAY, 1, 0);
    }
    assert_int_equal(relay_store_usage_write(S, rows, nr), 0);

    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, a.id, "2024-03-11", "2024-03-13", &d, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(d[0].day, "2024-03-13");
    assert_int_equal(d[0].requests, 4);
    assert_int_equal(d[0].tokens, 40);
    assert_string_equal(d[2].day, "2024-03-11");
    assert_int_equal(d[2].requests, 2);
    free(d);
    /* All keys, open-ended from the 13th. */
    assert_int_equal(relay_store_usage_daily(S, NULL, "2024-03-13", NULL, &d, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].day, "2024-03-14");
    assert_int_equal(d[0].requests, 6);
    assert_int_equal(d[0].tokens, 51);
    assert_int_equal(d[1].requests, 5);
    free(d);
    assert_int_equal(relay_store_usage_daily(S, NULL, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 5);
    free(d);
    assert_int_equal(relay_store_usage_daily(S, a.id, "2024-3-1", NULL, &d, &n), RELAY_ERR_INVALID);
    relay_key_record_clear(&a);
    relay_key_record_clear(&b);
}

static void test_usage_prune(void **state)
{
    (void)state;
    relay_key_record_t a;
    insert_key(&a, "a", T0 - DAY);
    relay_usage_row_t rows[30];
    for (int i = 0; i < 30; i++)
        make_row(&rows[i], a.id, i < 25 ? T0 + i : T0 + 10 * DAY + i, 2, 2);
    assert_int_equal(relay_store_usage_write(S, rows, 30), 0);

    int64_t deleted = -1, sum = 0;
    int batches = 0;
    do {
        assert_int_equal(relay_store_usage_prune(S, T0 + 5 * DAY, 10, &deleted), 0);
        assert_true(deleted <= 10);
        sum += deleted;
        batches++;
    } while (deleted > 0);
    assert_int_equal(sum, 25);
    assert_int_equal(batches, 4); /* 10, 10, 5, 0 */
    assert_int_equal(count_logs(a.id), 5);

    /* Daily totals stay. */
    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, a.id, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(d[0].requests, 5);
    assert_int_equal(d[1].requests, 25);
    assert_int_equal(d[1].tokens, 100);
    free(d);
    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.request_count, 30);
    relay_key_record_clear(&got);
    relay_key_record_clear(&a);
}

/* ---------------------------------------------------------------- tiers, audit, settings */

static void test_tiers(void **state)
{
    (void)state;
    relay_tier_def_t basic = {"basic", 100, 60, 0, 0, ""};
    relay_tier_def_t premium = {"premium", 1000, 60, 50000, 4, ""};
    relay_tier_def_t unlimited = {"unlimited", -1, 60, 0, 0, ""};
    assert_int_equal(relay_store_tier_upsert(S, &premium), 0);
    assert_int_equal(relay_store_tier_upsert(S, &basic), 0);
    assert_int_equal(relay_store_tier_upsert(S, &unlimited), 0);
    relay_tier_def_t *t;
    size_t n;
    assert_int_equal(relay_store_tier_list(S, &t, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(t[0].name, "basic");
    assert_string_equal(t[1].name, "premium");
    assert_int_equal(t[1].requests, 1000);
    assert_int_equal(t[1].tokens_per_minute, 50000);
    assert_int_equal(t[1].concurrent, 4);
    assert_int_equal(t[2].requests, -1);
    free(t);

    basic.requests = 5;
    basic.period_s = 10;
    assert_int_equal(relay_store_tier_upsert(S, &basic), 0);
    assert_int_equal(relay_store_tier_delete(S, "premium"), 0);
    assert_int_equal(relay_store_tier_delete(S, "premium"), RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_store_tier_list(S, &t, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(t[0].name, "basic");
    assert_int_equal(t[0].requests, 5);
    assert_int_equal(t[0].period_s, 10);
    free(t);

    relay_tier_def_t bad = {"bad", 1, 0, 0, 0, ""}; /* CHECK (period_s > 0) */
    assert_int_equal(relay_store_tier_upsert(S, &bad), RELAY_ERR_INVALID);
}

static void test_audit(void **state)
{
    (void)state;
    for (int i = 0; i < 15; i++) {
        relay_audit_entry_t e = {0};
        snprintf(e.action, sizeof e.action, i % 2 ? "api_key.update" : "api_key.create");
        snprintf(e.target, sizeof e.target, "target-%d", i);
        snprintf(e.actor, sizeof e.actor, "admin");
        snprintf(e.client_ip, sizeof e.client_ip, "127.0.0.1");
        char details[64];
        snprintf(details, sizeof details, "{\"i\":%d}", i);
        e.details = i == 3 ? NULL : details;
        e.created_at = T0 + i;
        assert_int_equal(relay_store_audit_insert(S, &e), 0);
    }
    relay_audit_entry_t *e;
    size_t n;
    int64_t total;
    assert_int_equal(relay_store_audit_list(S, 0, 5, &e, &n, &total), 0);
    assert_int_equal(total, 15);
    assert_int_equal(n, 5);
    assert_string_equal(e[0].target, "target-14");
    assert_string_equal(e[0].details, "{\"i\":14}");
    assert_string_equal(e[0].action, "api_key.create");
    assert_string_equal(e[0].actor, "admin");
    assert_string_equal(e[0].client_ip, "127.0.0.1");
    assert_int_equal(e[0].created_at, T0 + 14);
    assert_true(e[0].id > e[1].id);
    relay_audit_entries_free(e, n);
    assert_int_equal(relay_store_audit_list(S, 11, 5, &e, &n, &total), 0);
    assert_int_equal(n, 4);
    assert_string_equal(e[0].target, "target-3");
    assert_null(e[0].details);
    assert_string_equal(e[3].target, "target-0");
    relay_audit_entries_free(e, n);

    relay_audit_entry_t bad = {.action = "x", .details = "{oops"};
    assert_int_equal(relay_store_audit_insert(S, &bad), RELAY_ERR_INVALID);
    relay_audit_entry_t noaction = {0};
    assert_int_equal(relay_store_audit_insert(S, &noaction), RELAY_ERR_INVALID);
}

static void test_settings(void **state)
{
    (void)state;
    char buf[128];
    assert_int_equal(relay_store_setting_get(S, "admin_password_hash", buf, sizeof buf),
                     RELAY_ERR_NOT_FOUND);
    assert_int_equal(relay_store_setting_set(S, "admin_password_hash", "$2b$12$first"), 0);
    assert_int_equal(relay_store_setting_get(S, "admin_password_hash", buf, sizeof buf), 0);
    assert_string_equal(buf, "$2b$12$first");
    assert_int_equal(relay_store_setting_set(S, "admin_password_hash", "$2b$12$second-longer"), 0);
    assert_int_equal(relay_store_setting_get(S, "admin_password_hash", buf, sizeof buf), 0);
    assert_string_equal(buf, "$2b$12$second-longer");
    assert_int_equal(relay_store_setting_set(S, "empty", ""), 0);
    assert_int_equal(relay_store_setting_get(S, "empty", buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    char small[8];
    assert_int_equal(relay_store_setting_get(S, "admin_password_hash", small, sizeof small),
                     RELAY_ERR_TOO_LARGE);
}

/* ---------------------------------------------------------------- concurrency */

#define THREADS 8
#define WRITES  200

typedef struct worker {
    const char *key_id;
    int failures;
} worker_t;

static void *writer(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < WRITES; i++) {
        relay_usage_row_t r;
        make_row(&r, w->key_id, T0 + i, 2, 1);
        r.is_error = i % 4 == 0;
        if (relay_store_usage_write(S, &r, 1) != 0)
            w->failures++;
        if (i % 20 == 0) { /* readers beside the writers */
            relay_key_record_t k;
            if (relay_store_key_get(S, w->key_id, &k) != 0)
                w->failures++;
            relay_key_record_clear(&k);
        }
    }
    return NULL;
}

static void test_concurrent_writes(void **state)
{
    (void)state;
    relay_key_record_t a;
    insert_key(&a, "busy", T0 - DAY);
    pthread_t th[THREADS];
    worker_t w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker_t){a.id, 0};
        assert_int_equal(pthread_create(&th[i], NULL, writer, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    relay_key_record_t got;
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.request_count, THREADS * WRITES);
    assert_int_equal(got.token_used, THREADS * WRITES * 3);
    assert_int_equal(got.error_count, THREADS * (WRITES / 4));
    assert_int_equal(got.last_used_at, T0 + WRITES - 1);
    relay_key_record_clear(&got);
    assert_int_equal(count_logs(a.id), THREADS * WRITES);
    relay_usage_daily_t *d;
    size_t n;
    assert_int_equal(relay_store_usage_daily(S, a.id, NULL, NULL, &d, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(d[0].requests, THREADS * WRITES);
    assert_int_equal(d[0].tokens, THREADS * WRITES * 3);
    free(d);
    relay_key_record_clear(&a);
}

/* ---------------------------------------------------------------- PostgreSQL restart */

static int pg_script(const char *cmd)
{
    const char *dir = getenv("RELAY_TEST_PG_DIR");
    const char *src = getenv("RELAY_SOURCE_DIR");
    char here[512], line[1024];
    if (!src) { /* this file is <src>/tests/store/test_store.c */
        snprintf(here, sizeof here, "%s", __FILE__);
        src = dirname(dirname(dirname(here)));
    }
    snprintf(line, sizeof line, "'%s/scripts/pg-test-server.sh' %s '%s' >/dev/null", src, cmd, dir);
    return system(line);
}

static void test_pg_reconnect(void **state)
{
    (void)state;
    if (!IS_PG || !getenv("RELAY_TEST_PG_DIR"))
        skip();
    relay_key_record_t a, got;
    insert_key(&a, "survivor", T0);
    assert_int_equal(relay_store_ping(S), 0);

    /* Down: ping says so at once (connection refused), and so do queries. */
    assert_int_equal(pg_script("stop"), 0);
    int64_t t = relay_mono_ms();
    assert_int_equal(relay_store_ping(S), RELAY_ERR_STORE);
    assert_true(relay_mono_ms() - t < 3000);
    assert_int_equal(relay_store_key_get(S, a.id, &got), RELAY_ERR_STORE);
    relay_usage_row_t r;
    make_row(&r, a.id, T0, 1, 1);
    assert_int_equal(relay_store_usage_write(S, &r, 1), RELAY_ERR_STORE);

    /* Back: the same handle works again. */
    assert_int_equal(pg_script("start"), 0);
    assert_int_equal(relay_store_ping(S), 0);
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_string_equal(got.name, "survivor");
    relay_key_record_clear(&got);

    /* A restart under live pooled connections: the very next calls succeed, no ping first. */
    assert_int_equal(pg_script("restart"), 0);
    assert_int_equal(relay_store_usage_write(S, &r, 1), 0);
    assert_int_equal(relay_store_key_get(S, a.id, &got), 0);
    assert_int_equal(got.request_count, 1);
    relay_key_record_clear(&got);
    relay_key_record_clear(&a);
}

/* ---------------------------------------------------------------- URLs */

static void test_open_urls(void **state)
{
    (void)state;
    relay_store_t *s = NULL;
    relay_error_t err = {0};
    char url[300];
    snprintf(url, sizeof url, "sqlite://%s",
             SQLITE_PATH[0] ? SQLITE_PATH : "/tmp/relay-url-test.db");
    assert_int_equal(relay_store_open(&s, url, NULL, &err), 0);
    assert_string_equal(relay_store_backend(s), "sqlite");
    assert_int_equal(relay_store_ping(s), 0);
    relay_store_free(s);
    assert_int_equal(relay_store_open(&s, "", NULL, &err), RELAY_ERR_CONFIG);
    assert_null(s);
    assert_int_equal(relay_store_open(&s, "/nonexistent-dir/x/y.db", NULL, &err), RELAY_ERR_STORE);
    assert_null(s);
    /* Nothing listens on port 1: fails fast, and the message does not repeat the password. */
    assert_int_equal(relay_store_open(&s, "postgresql://u:hunter2@127.0.0.1:1/db", NULL, &err),
                     RELAY_ERR_STORE);
    assert_null(s);
    assert_null(strstr(err.message, "hunter2"));
    if (!SQLITE_PATH[0])
        unlink("/tmp/relay-url-test.db");
}

int main(int argc, char **argv)
{
    const char *backend = argc > 1 ? argv[1] : "sqlite";
    char url[512];
    if (strcmp(backend, "pg") == 0) {
        const char *pg = getenv("RELAY_TEST_PG_URL");
        if (!pg || !*pg) {
            fprintf(stderr, "RELAY_TEST_PG_URL not set: skipping the PostgreSQL store suite\n");
            return 77;
        }
        IS_PG = 1;
        snprintf(url, sizeof url, "%s", pg);
    } else {
        snprintf(SQLITE_PATH, sizeof SQLITE_PATH, "/tmp/relay-test-store-XXXXXX");
        int fd = mkstemp(SQLITE_PATH);
        if (fd < 0)
            return 1;
        close(fd);
        snprintf(url, sizeof url, "sqlite://%s", SQLITE_PATH);
    }
    relay_error_t err = {0};
    relay_store_options_t opts = {.pool_size = 8, .busy_timeout_ms = 5000};
    if (relay_store_open(&S, url, &opts, &err) != 0) {
        fprintf(stderr, "cannot open store: %s\n", err.message);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations),
        cmocka_unit_test_setup(test_key_roundtrip_and_update, reset_schema),
        cmocka_unit_test_setup(test_key_conflicts_and_constraints, reset_schema),
        cmocka_unit_test_setup(test_key_list, reset_schema),
        cmocka_unit_test_setup(test_key_delete_hard, reset_schema),
        cmocka_unit_test_setup(test_usage_write_counters_and_daily, reset_schema),
        cmocka_unit_test_setup(test_usage_write_all_or_nothing, reset_schema),
        cmocka_unit_test_setup(test_usage_logs_query, reset_schema),
        cmocka_unit_test_setup(test_usage_daily_range, reset_schema),
        cmocka_unit_test_setup(test_usage_prune, reset_schema),
        cmocka_unit_test_setup(test_tiers, reset_schema),
        cmocka_unit_test_setup(test_audit, reset_schema),
        cmocka_unit_test_setup(test_settings, reset_schema),
        cmocka_unit_test_setup(test_concurrent_writes, reset_schema),
        cmocka_unit_test_setup(test_pg_reconnect, reset_schema),
        cmocka_unit_test(test_open_urls),
    };
    char name[32];
    snprintf(name, sizeof name, "store.%s", backend);
    int failed = cmocka_run_group_tests_name(name, tests, NULL, NULL);
    relay_store_free(S);
    if (SQLITE_PATH[0]) {
        char side[300];
        unlink(SQLITE_PATH);
        snprintf(side, sizeof side, "%s-wal", SQLITE_PATH);
        unlink(side);
        snprintf(side, sizeof side, "%s-shm", SQLITE_PATH);
        unlink(side);
    }
    return failed ? 1 : 0;
}
