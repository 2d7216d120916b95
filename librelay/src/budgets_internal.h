/* budgets_internal: what limits.c asks of budgets.c — reserve, release and settle cost. */
#ifndef RELAY_BUDGETS_INTERNAL_H
#define RELAY_BUDGETS_INTERNAL_H

#include "internal.h"
#include "relay/budgets.h"
#include "relay/limits.h"

int relay_budgets_start(relay_t *r, relay_error_t *err);
void relay_budgets_stop(relay_t *r);

/*
 * tier: the budget defaults of the key's tier (relay_tier_def_t.cost_limits) or NULL.
 * Checks every budget of key that applies to model and, when all have room for `estimate`
 * (USD) beside what is spent and reserved, reserves it in each (out->cost_reserved,
 * out->budget_held). Otherwise fills out's refusal fields (reason "budget", retry_after_s,
 * reset_at) and err, and returns RELAY_ERR_QUOTA (lifetime cap) or RELAY_ERR_RATE_LIMITED.
 * May read the store the first time a key (or a new period of a restarted relay) is seen.
 */
int budgets_admit(relay_t *r, const relay_key_record_t *key, const char *tier, const char *model,
                  double estimate, int64_t now_ms, relay_admission_t *out, relay_error_t *err);
/* relay_budgets_view from this instance's mirror only (no Redis call): for metrics and alerts
   on the request path. */
int budgets_view_local(relay_t *r, const relay_key_record_t *key, relay_budget_view_t **out,
                       size_t *n);
/* Gives back a reservation of an admission that another limit then refused. */
void budgets_release(relay_t *r, relay_admission_t *a, int64_t now_ms);
/* Replaces the reservation with the real cost (also for admissions that reserved nothing). */
void budgets_settle(relay_t *r, relay_admission_t *a, double cost, int64_t now_ms);

#endif
