/* testdb: one fresh database per cmocka test, for suites run on SQLite and PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testdb.h"
#include "testrelay.h"
#include "util.h"

static const char *g_backend;
static const char *g_suite;
static char g_dir[256];
static char g_url[1024];
static char g_pgname[96];

/* One statement on the server's own database (CREATE/DROP DATABASE cannot run in the test's). */
static void pg_exec(const char *sql)
{
    PGconn *c = PQconnectdb(getenv("RELAY_TEST_PG_URL"));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(res);
    PQfinish(c);
}

/* base URL with its database name replaced by db (query string kept). */
static void with_dbname(const char *base, const char *db, char *out, size_t cap)
{
    const char *p = strstr(base, "://");
    assert_non_null(p);
    p += 3;
    const char *q = strchr(p, '?');
    const char *slash = strchr(p, '/');
    if (slash && q && slash > q)
        slash = NULL;
    size_t head = slash ? (size_t)(slash - base) : q ? (size_t)(q - base) : strlen(base);
    snprintf(out, cap, "%.*s/%s%s", (int)head, base, db, q ? q : "");
}

int testdb_init(int argc, char **argv, const char *suite)
{
    g_backend = argc > 1 ? argv[1] : "sqlite";
    g_suite = suite;
    /* Keeps the directory and database names well inside their buffers. */
    if (strlen(suite) > 32) {
        fprintf(stderr, "testdb: suite name too long: %s\n", suite);
        return 1;
    }
    if (strcmp(g_backend, "pg") == 0 && !getenv("RELAY_TEST_PG_URL")) {
        fprintf(stderr, "RELAY_TEST_PG_URL unset: skipping the PostgreSQL run\n");
        return 77;
    }
    return 0;
}

int testdb_setup(void **state)
{
    (void)state;
    /* A directory of its own for every test and both backends: the relay's data directory (the
     * usage spool and its lock) must not be ./data, which the suites running at once share. */
    snprintf(g_dir, sizeof g_dir, "/tmp/relay-test-%s-XXXXXX", g_suite);
    assert_non_null(mkdtemp(g_dir));
    if (testdb_is_sqlite()) {
        snprintf(g_url, sizeof g_url, "%s/relay.db", g_dir);
        return 0;
    }
    uint8_t rnd[4];
    char hex[9], sql[160];
    relay_random_bytes(rnd, sizeof rnd);
    relay_hex(rnd, sizeof rnd, hex);
    snprintf(g_pgname, sizeof g_pgname, "relay_test_%s_%d_%s", g_suite, (int)getpid(), hex);
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", g_pgname);
    pg_exec(sql);
    with_dbname(getenv("RELAY_TEST_PG_URL"), g_pgname, g_url, sizeof g_url);
    return 0;
}

int testdb_teardown(void **state)
{
    (void)state;
    int rc = testrelay_rm_tree(g_dir);
    if (testdb_is_sqlite())
        return rc;
    char sql[160];
    /* FORCE ends sessions a test left open (e.g. a relay_t it failed before freeing). */
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", g_pgname);
    pg_exec(sql);
    return rc;
}

const char *testdb_backend(void)
{
    return g_backend;
}

int testdb_is_sqlite(void)
{
    return strcmp(g_backend, "sqlite") == 0;
}

const char *testdb_url(void)
{
    return g_url;
}

const char *testdb_dir(void)
{
    return g_dir;
}

void testdb_options(relay_options_t *o)
{
    relay_options_init(o);
    o->database_url = g_url;
    o->data_dir = g_dir;
    o->auto_migrate = 1;
    o->bcrypt_cost = 4;
}
