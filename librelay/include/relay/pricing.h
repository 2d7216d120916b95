/* pricing: the price table in force — built-in Anthropic list prices, config, or set at run time.
 */
#ifndef RELAY_PRICING_H
#define RELAY_PRICING_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A model is priced by the longest model_prefix it starts with. A model no entry matches is
 * priced at the default entry (relay_options_t.price_default, else the entry with the highest
 * output price), so a money cap fails safe instead of letting unknown models run for free; such
 * requests are counted (relay_unpriced_requests_total{model}).
 * The table starts as relay_options_t.prices (else the built-in one); a table stored with
 * relay_pricing_set (PUT /admin/pricing) replaces it at start and at once when set.
 * Thread safety: every call may run concurrently (a read-write lock guards the table).
 */

#define RELAY_PRICING_MAX 256

/*
 * The price of model into *out; returns 1 when an entry matched, 0 when the default applied.
 * model NULL or "" takes the default too.
 */
RELAY_API int relay_pricing_lookup(relay_t *r, const char *model, relay_price_t *out);

/* USD of the given token counts at price p. */
RELAY_API double relay_pricing_cost(const relay_price_t *p, int64_t input, int64_t output,
                                    int64_t cache_5m, int64_t cache_1h, int64_t cache_read);

/*
 * The table in force as JSON: {"default":"<prefix>","source":"builtin|config|admin",
 * "prices":[{model_prefix,input,output,cache_write_5m,cache_write_1h,cache_read},...]}.
 * Free with relay_free_string; NULL when out of memory.
 */
RELAY_API char *relay_pricing_to_json(relay_t *r);

/*
 * Replaces the table from JSON of the shape relay_pricing_to_json gives ("source" ignored;
 * cache prices default to 1.25x / 2x / 0.1x input; "default" optional, naming an entry) and
 * persists it in the store (setting "pricing") so a restart keeps it. RELAY_ERR_INVALID names the
 * field ("prices[2].output: expected a non-negative number"); the table in force is unchanged then.
 */
RELAY_API int relay_pricing_set(relay_t *r, const char *json, relay_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
