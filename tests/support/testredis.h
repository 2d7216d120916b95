/* testredis: a Redis database of the test's own on RELAY_TEST_REDIS_URL's server. */
#ifndef RELAY_TESTS_TESTREDIS_H
#define RELAY_TESTS_TESTREDIS_H

/*
 * The URL of one logical database (1..15) that no other test process holds, flushed, or NULL
 * when RELAY_TEST_REDIS_URL is unset (the caller skips its Redis part). It is leased the way
 * tests/relaytest.py leases them, by an flock on $TMPDIR/relaytest-redis-db-<n>.lock (/tmp by
 * default) held until the process exits, so C suites and the e2e suites running in parallel never
 * share one. Aborts the test run when all 15 are held or the server cannot be flushed. Main thread,
 * once per process.
 */
const char *testredis_url(void);

#endif
