/* tiers: the rate-limit tiers (requests per period, ...), persisted in the store, served from
 * memory. */
#ifndef RELAY_TIERS_H
#define RELAY_TIERS_H

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The tier table lives in memory (read on every request) and in the store (rate_limit_tiers).
 * At relay_new the store's tiers are loaded; when the store has none, the configured ones
 * (relay_options_t.tiers) are written first. Changes through this API persist and take effect at
 * once in this process; other processes sharing the database see them at their next reload
 * (the maintenance thread calls relay_tiers_reload every few seconds).
 * Thread safety: all calls may run concurrently (a read-write lock guards the table).
 */

/* Copies the tier called name into out. RELAY_ERR_NOT_FOUND when there is none. */
RELAY_API int relay_tiers_get(relay_t *r, const char *name, relay_tier_def_t *out);
/* Every tier, sorted by name. Free *out with free(). */
RELAY_API int relay_tiers_list(relay_t *r, relay_tier_def_t **out, size_t *n);
/* Creates or replaces a tier (requests -1 or > 0, period_s > 0). RELAY_ERR_INVALID names the field.
 */
RELAY_API int relay_tiers_set(relay_t *r, const relay_tier_def_t *tier, relay_error_t *err);
/* Deletes a tier. RELAY_ERR_CONFLICT while a key not deleted still uses it; NOT_FOUND when absent.
 */
RELAY_API int relay_tiers_delete(relay_t *r, const char *name, relay_error_t *err);
/* Re-reads the table from the store. */
RELAY_API int relay_tiers_reload(relay_t *r);

#ifdef __cplusplus
}
#endif
#endif
