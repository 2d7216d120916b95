/* testrelay: helpers every cmocka suite shares to build a relay_t and clean up after it. */
#ifndef RELAY_TESTS_TESTRELAY_H
#define RELAY_TESTS_TESTRELAY_H

#include "relay/relay.h"

/*
 * relay_new(o), failing the running cmocka test with the library's message when it refuses.
 * The caller owns the result (relay_free). Main test thread only: fail_msg longjmps.
 */
relay_t *testrelay_new(const relay_options_t *o);

/*
 * A relay_t on a fresh data directory: dir holds a mkdtemp template on entry (e.g.
 * "/tmp/relay-limits-XXXXXX") and the directory's path on return; o->data_dir is set to it.
 * Free with testrelay_free_dir. Main test thread only.
 */
relay_t *testrelay_new_in_tmpdir(char *dir, relay_options_t *o);

/* relay_free(r), then removes dir and everything below it. */
void testrelay_free_dir(relay_t *r, const char *dir);

/* Removes dir and everything below it (no shell involved). 0, or -1 if something stayed. */
int testrelay_rm_tree(const char *dir);

#endif
