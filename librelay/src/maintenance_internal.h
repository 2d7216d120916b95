/* maintenance_internal: the maintenance thread's lifecycle hooks and the alert check of the request
 * path. */
#ifndef RELAY_MAINTENANCE_INTERNAL_H
#define RELAY_MAINTENANCE_INTERNAL_H

#include <stdint.h>

#include "internal.h"
#include "relay/budgets.h"

int relay_maintenance_start(relay_t *r, relay_error_t *err);
void relay_maintenance_stop(relay_t *r);

/*
 * Compares used/limit of key with the alert thresholds and queues each threshold crossed that
 * this process has not queued before. Memory only (no I/O): safe on the request path.
 */
/* Asks the maintenance thread to re-read stale cached keys now (never blocks; any thread). */
void relay_maintenance_wake(relay_t *r);

void relay_maintenance_quota_check(relay_t *r, const relay_key_record_t *key, int64_t used,
                                   int64_t limit);
/* The same for one cost budget (spent/limit), once per budget, period, threshold and limit. */
void relay_maintenance_budget_check(relay_t *r, const relay_key_record_t *key,
                                    const relay_budget_view_t *v);

#endif
