/* testlimits: the key records and admit requests both limits suites (in-process, Redis) build. */
#ifndef RELAY_TESTS_TESTLIMITS_H
#define RELAY_TESTS_TESTLIMITS_H

#include <stdint.h>

#include "relay/limits.h"

/*
 * An active key of the given tier, token_limit and token_used, with a fresh random id (so each
 * key starts with empty windows, also in a Redis shared across tests) and no allowlists.
 * Overwrites all of *k; the caller owns nothing new (no heap fields are set).
 */
void testlimits_key_init(relay_key_record_t *k, const char *tier, int64_t limit, int64_t used);

/*
 * An admit request for k from 127.0.0.1 that consumes quota, with this input estimate and
 * max_tokens. model may be NULL (no model to check). k and model are borrowed: they must
 * outlive the request.
 */
relay_admit_request_t testlimits_req(const relay_key_record_t *k, const char *model, int64_t input,
                                     int64_t max_tokens);

#endif
