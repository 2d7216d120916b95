/* fuzz_sse: libFuzzer target; feeds arbitrary bytes to the SSE parser in fuzzer-chosen chunks. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/sse.h"
#include "relay/tokens.h"
#include "sse_internal.h"

/*
 * The first byte picks the chunk size and the event cap, so splits and the oversized-event path
 * are explored too. Whatever the chunking, the usage must equal that of a single feed: that is
 * the parser's promise, so a difference aborts.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t chunk = (size_t)(data[0] & 0x3F) + 1;
    size_t cap = data[0] & 0x40 ? 256 : 0;
    data++;
    size--;

    relay_sse_t *whole = NULL, *split = NULL;
    if (relay_sse_new(&whole, cap) || relay_sse_new(&split, cap))
        abort();
    relay_sse_feed(whole, data, size);
    for (size_t off = 0; off < size; off += chunk)
        relay_sse_feed(split, data + off, size - off < chunk ? size - off : chunk);
    if (memcmp(relay_sse_usage(whole), relay_sse_usage(split), sizeof(relay_usage_t)) != 0)
        abort();
    size_t len1, len2, total1, total2;
    const char *t1 = relay_sse_output_text(whole, &len1, &total1);
    const char *t2 = relay_sse_output_text(split, &len2, &total2);
    if (len1 != len2 || total1 != total2 || memcmp(t1, t2, len1) != 0)
        abort();
    relay_tokens_count_text(NULL, t1, len1);
    relay_sse_free(whole);
    relay_sse_free(split);

    /* The JSON body's fast reader must give jansson's answer on every input it accepts. */
    relay_usage_t u, slow;
    int rc = relay_usage_parse_json(&u, (const char *)data, size);
    int rc_slow = relay_usage_parse_json_jansson(&slow, (const char *)data, size);
    if (rc != rc_slow || memcmp(&u, &slow, sizeof u) != 0)
        abort();
    relay_request_info_t info;
    relay_tokens_count_request(NULL, (const char *)data, size, &info);
    relay_tokens_count_text(NULL, (const char *)data, size);
    return 0;
}
