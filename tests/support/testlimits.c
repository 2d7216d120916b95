/* testlimits: the key records and admit requests both limits suites (in-process, Redis) build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "testlimits.h"
#include "util.h"

void testlimits_key_init(relay_key_record_t *k, const char *tier, int64_t limit, int64_t used)
{
    memset(k, 0, sizeof *k);
    assert_int_equal(relay_uuid4(k->id, sizeof k->id), 0);
    relay_strlcpy(k->rate_limit_tier, tier, sizeof k->rate_limit_tier);
    k->token_limit = limit;
    k->token_used = used;
    k->is_active = 1;
}

relay_admit_request_t testlimits_req(const relay_key_record_t *k, const char *model, int64_t input,
                                     int64_t max_tokens)
{
    relay_admit_request_t q = {.key = k,
                               .client_ip = "127.0.0.1",
                               .model = model,
                               .input_tokens_estimate = input,
                               .max_tokens = max_tokens,
                               .consumes_quota = 1};
    return q;
}
