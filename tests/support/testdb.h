/* testdb: one fresh database per cmocka test, for suites run on SQLite and PostgreSQL. */
#ifndef RELAY_TESTS_TESTDB_H
#define RELAY_TESTS_TESTDB_H

#include "relay/relay.h"

/*
 * Call first in main. The backend is argv[1] ("sqlite", the default, or "pg"); suite names the
 * temporary directories (/tmp/relay-test-<suite>-XXXXXX) and databases
 * (relay_test_<suite>_<pid>_<hex>) so a leftover shows which suite made it.
 * Returns 0, or 77 (ctest's "skipped") for "pg" when RELAY_TEST_PG_URL is unset.
 * The suite string must outlive the run (a literal).
 */
int testdb_init(int argc, char **argv, const char *suite);

/*
 * cmocka setup / teardown of one test: an empty temporary directory for SQLite (the relay
 * creates relay.db there), or a new PostgreSQL database on RELAY_TEST_PG_URL's server, dropped
 * WITH (FORCE) afterwards. Migrations are the relay's job (testdb_options sets auto_migrate).
 */
int testdb_setup(void **state);
int testdb_teardown(void **state);

/* "sqlite" or "pg", as given to testdb_init (also the cmocka group name). */
const char *testdb_backend(void);
/* 1 on the SQLite backend. */
int testdb_is_sqlite(void);
/* The running test's database: a SQLite file path or a PostgreSQL URL. Valid until teardown. */
const char *testdb_url(void);
/* The running test's SQLite directory (holds relay.db and its -wal/-shm files). */
const char *testdb_dir(void);

/*
 * relay_options_init(o), pointed at the running test's database, migrating it on open, with
 * bcrypt at its cheapest cost (the tests count bcrypt calls, they do not time them).
 */
void testdb_options(relay_options_t *o);

/*
 * All of this is process-global state for the cmocka main thread: setup, teardown and init run
 * there; other threads may read testdb_url()/testdb_dir() while a test runs.
 */

#endif
