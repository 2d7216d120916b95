/* budgets: per-key cost caps in USD — lifetime, daily, weekly, monthly, and per model family. */
#ifndef RELAY_BUDGETS_H
#define RELAY_BUDGETS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A key's budgets are one JSON object (relay_key_record_t.cost_limits), every field optional:
 *   {"cost_limit": 100, "daily_cost_limit": 20, "weekly_cost_limit": 60,
 *    "monthly_cost_limit": 300,
 *    "model_cost_limits": [{"models": ["claude-opus-*"], "period": "weekly", "limit": 50}]}
 * cost_limit is lifetime ("total"). Limits are USD >= 0 (0 refuses every billed request);
 * absent or null means no such budget. Model patterns are exact names or prefixes ending in '*'.
 * Periods reset in relay_options_t.budget_timezone: days at local midnight, weeks on
 * budget_week_start_day at budget_week_start_minute, months on day 1.
 * relay_limits_admit enforces them (docs/budgets.md): it reserves each request's worst-case
 * cost and relay_limits_settle_cost replaces the reservation with the real cost.
 * Thread safety: every call may run concurrently. Ownership: as stated per call.
 */

#define RELAY_BUDGETS_MAX_MODEL_LIMITS 32
#define RELAY_BUDGETS_MAX_MODELS       16

/*
 * Checks a budgets object. RELAY_ERR_INVALID names the field ("daily_cost_limit: expected a
 * non-negative number", "model_cost_limits[1].period: expected daily, weekly, monthly or total").
 */
RELAY_API int relay_budgets_validate(const char *json, relay_error_t *err);

/*
 * Applies patch (an object holding some of the fields above; null removes a field) to base
 * (NULL: none) and validates the result. *out is the merged canonical text, or NULL when nothing
 * is left; free with relay_free_string.
 */
RELAY_API int relay_budgets_merge(const char *base, const char *patch, char **out,
                                  relay_error_t *err);

/* One budget's state now. */
typedef struct relay_budget_view {
    char period[8];    /* "daily" | "weekly" | "monthly" | "total" */
    char models[1024]; /* JSON array of the model patterns; "" for a budget of the whole key */
    double limit, spent, reserved, remaining; /* USD; remaining = max(0, limit - spent) */
    int64_t resets_at;                        /* Unix seconds; 0 for total (never) */
} relay_budget_view_t;

/*
 * The budgets of key, live (this instance's spend, or Redis's when configured), in the order
 * total, daily, weekly, monthly, then model_cost_limits. *out is freed with free(); *n may be 0.
 */
RELAY_API int relay_budgets_view(relay_t *r, const relay_key_record_t *key,
                                 relay_budget_view_t **out, size_t *n);

/* The same as a JSON array text of {period, models, limit, spent, remaining, resets_at}
 * (models null for the whole key, resets_at ISO 8601 or null). Free with relay_free_string. */
RELAY_API char *relay_budgets_to_json(relay_t *r, const relay_key_record_t *key);

#ifdef __cplusplus
}
#endif
#endif
