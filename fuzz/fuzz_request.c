/* fuzz_request: libFuzzer target; request bodies and JSON answers from anywhere must never crash.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/sse.h"
#include "relay/tokens.h"
#include "tokens_internal.h"

/* The counter's promise: malformed input gives RELAY_ERR_INVALID, never a negative estimate;
 * and where the reader without jansson answers, it answers exactly as jansson's reader does. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    relay_request_info_t info;
    if (relay_tokens_count_request(NULL, (const char *)data, size, &info) == 0 &&
        (info.input_tokens_estimate < 0 || info.max_tokens < 0))
        abort();
    relay_request_info_t fast, slow;
    memset(&fast, 0, sizeof fast);
    memset(&slow, 0, sizeof slow);
    if (relay_tokens_count_request_fast(NULL, (const char *)data, size, &fast) &&
        (relay_tokens_count_request_jansson(NULL, (const char *)data, size, &slow) != 0 ||
         memcmp(&fast, &slow, sizeof fast) != 0))
        abort();
    relay_usage_t u;
    relay_usage_parse_json(&u, (const char *)data, size);
    if (relay_tokens_count_text(NULL, (const char *)data, size) < 0)
        abort();
    return 0;
}
