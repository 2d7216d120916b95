/* budgets: per-key cost caps — definitions, periods in a time zone, spend and reservations. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budgets_internal.h"
#include "limits_internal.h"
#include "relay/tiers.h"
#include "tz.h"
#include "util.h"

#define NBUCKETS    4096
#define MODEL_MAX   128
#define DUMP_FLAGS  (JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15))
#define USD_EPSILON 1e-9 /* float sums of cents must not refuse a request that fits exactly */

enum { BP_TOTAL = 0, BP_DAILY = 1, BP_WEEKLY = 2, BP_MONTHLY = 3 };
static const char *const PERIOD_NAMES[] = {"total", "daily", "weekly", "monthly"};
static const char *const LIMIT_FIELDS[] = {"cost_limit", "daily_cost_limit", "weekly_cost_limit",
                                           "monthly_cost_limit"};

/* One budget of one key, and its spend in the current period. */
typedef struct budget {
    int period;
    double limit;
    char *models_json; /* canonical JSON array, NULL for the whole key */
    char **patterns;
    size_t n_patterns;
    int64_t start, end; /* current period [start, end), Unix seconds; total: 0, 0 */
    double spent, reserved;
    double pending; /* in spent, but its Redis settle has not returned yet: not a seed */
    int seeded;     /* spent includes the store's spend of this period */
} budget_t;

typedef struct bkey {
    struct bkey *next;
    char key_id[37];
    char *defs_text; /* the key's cost_limits text the budgets were built from */
    char *tier_text; /* and its tier's defaults */
    budget_t *b;
    size_t n;
} bkey_t;

struct relay_budgets {
    pthread_mutex_t mu; /* guards the table; never held across store I/O */
    bkey_t *buckets[NBUCKETS];
    relay_tz_t *tz;
    int week_day, week_minute;
};

/* ---- definitions ---- */

static void budget_free(budget_t *b)
{
    free(b->models_json);
    for (size_t i = 0; i < b->n_patterns; i++)
        free(b->patterns[i]);
    free(b->patterns);
}

static void budgets_free(budget_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        budget_free(&b[i]);
    free(b);
}

static int bad(relay_error_t *err, const char *field, const char *what)
{
    return relay_error_set(err, RELAY_ERR_INVALID, "%s: %s", field, what);
}

static int check_limit(json_t *v, const char *field, relay_error_t *err)
{
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < 0)
        return bad(err, field, "expected a non-negative number of USD (or null for none)");
    return 0;
}

static int check_models(json_t *m, const char *field, relay_error_t *err)
{
    if (!json_is_array(m) || json_array_size(m) == 0)
        return bad(err, field, "expected a non-empty list of model names or prefixes ending in *");
    if (json_array_size(m) > RELAY_BUDGETS_MAX_MODELS)
        return bad(err, field, "at most 16 models");
    size_t i;
    json_t *v;
    json_array_foreach(m, i, v)
    {
        const char *s = json_string_value(v);
        if (!s || !*s || strlen(s) >= MODEL_MAX || strcmp(s, "*") == 0)
            return bad(err, field,
                       "expected model names or prefixes ending in * (1 to 127 "
                       "characters, not \"*\" alone)");
    }
    return 0;
}

static int period_of(const char *s)
{
    for (int i = 0; s && i < 4; i++)
        if (strcmp(s, PERIOD_NAMES[i]) == 0)
            return i;
    return -1;
}

static int check_model_limit(json_t *e, size_t i, relay_error_t *err)
{
    char f[64];
    snprintf(f, sizeof f, "model_cost_limits[%zu]", i);
    if (!json_is_object(e))
        return bad(err, f, "expected {models, period, limit}");
    const char *k;
    json_t *v;
    json_object_foreach(e, k,
                        v) if (strcmp(k, "models") && strcmp(k, "period") && strcmp(k, "limit"))
    {
        snprintf(f, sizeof f, "model_cost_limits[%zu].%.20s", i, k);
        return bad(err, f, "unknown field (expected models, period, limit)");
    }
    snprintf(f, sizeof f, "model_cost_limits[%zu].models", i);
    if (check_models(json_object_get(e, "models"), f, err))
        return RELAY_ERR_INVALID;
    snprintf(f, sizeof f, "model_cost_limits[%zu].period", i);
    if (period_of(json_string_value(json_object_get(e, "period"))) < 0)
        return bad(err, f, "expected daily, weekly, monthly or total");
    snprintf(f, sizeof f, "model_cost_limits[%zu].limit", i);
    return check_limit(json_object_get(e, "limit"), f, err);
}

static int check_object(json_t *o, relay_error_t *err)
{
    if (!json_is_object(o))
        return bad(err, "cost_limits", "expected an object");
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        int known = strcmp(k, "model_cost_limits") == 0;
        for (int i = 0; i < 4 && !known; i++)
            known = strcmp(k, LIMIT_FIELDS[i]) == 0;
        if (!known)
            return bad(err, k, "unknown budget field");
        if (!known || json_is_null(v) || strcmp(k, "model_cost_limits") == 0)
            continue;
        if (check_limit(v, k, err))
            return RELAY_ERR_INVALID;
    }
    json_t *ml = json_object_get(o, "model_cost_limits");
    if (!ml || json_is_null(ml))
        return 0;
    if (!json_is_array(ml) || json_array_size(ml) > RELAY_BUDGETS_MAX_MODEL_LIMITS)
        return bad(err, "model_cost_limits",
                   "expected a list of at most 32 {models, period, "
                   "limit}");
    for (size_t i = 0; i < json_array_size(ml); i++)
        if (check_model_limit(json_array_get(ml, i), i, err))
            return RELAY_ERR_INVALID;
    return 0;
}

static json_t *load(const char *json, relay_error_t *err)
{
    json_error_t je;
    json_t *o = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        relay_error_set(err, RELAY_ERR_INVALID, "cost_limits: invalid JSON: %s", je.text);
    return o;
}

int relay_budgets_validate(const char *json, relay_error_t *err)
{
    if (!json)
        return 0;
    json_t *o = load(json, err);
    if (!o)
        return RELAY_ERR_INVALID;
    int rc = check_object(o, err);
    json_decref(o);
    return rc;
}

int relay_budgets_merge(const char *base, const char *patch, char **out, relay_error_t *err)
{
    *out = NULL;
    json_t *b = base ? load(base, err) : json_object();
    json_t *p = patch ? load(patch, err) : json_object();
    int rc = b && p ? 0 : RELAY_ERR_INVALID;
    if (!rc && (!json_is_object(b) || !json_is_object(p)))
        rc = bad(err, "cost_limits", "expected an object");
    const char *k;
    json_t *v;
    if (!rc)
        json_object_foreach(p, k, v)
        {
            if (json_is_null(v))
                json_object_del(b, k);
            else
                json_object_set(b, k, v);
        }
    if (!rc)
        rc = check_object(b, err);
    if (!rc && json_object_size(b) > 0 && !(*out = json_dumps(b, DUMP_FLAGS)))
        rc = relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    json_decref(b);
    json_decref(p);
    return rc;
}

static int add_budget(budget_t *b, size_t *n, int period, double limit, json_t *models)
{
    budget_t *x = &b[(*n)++];
    memset(x, 0, sizeof *x);
    x->period = period;
    x->limit = limit;
    if (!models)
        return 0;
    x->models_json = json_dumps(models, JSON_COMPACT);
    x->patterns = calloc(json_array_size(models), sizeof *x->patterns);
    if (!x->models_json || !x->patterns)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; i < json_array_size(models); i++) {
        x->patterns[i] = strdup(json_string_value(json_array_get(models, i)));
        if (!x->patterns[i])
            return RELAY_ERR_NOMEM;
        x->n_patterns++;
    }
    return 0;
}

/* The budgets of a (valid) cost_limits text, in view order. */
static int parse_defs(const char *text, budget_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    json_t *o = text ? json_loads(text, 0, NULL) : NULL;
    if (!o || check_object(o, NULL)) {
        json_decref(o);
        return text ? RELAY_ERR_INVALID : 0;
    }
    json_t *ml = json_object_get(o, "model_cost_limits");
    budget_t *b = calloc(4 + json_array_size(ml), sizeof *b);
    int rc = b ? 0 : RELAY_ERR_NOMEM;
    for (int i = 0; !rc && i < 4; i++) {
        json_t *v = json_object_get(o, LIMIT_FIELDS[i]);
        if (v && !json_is_null(v))
            rc = add_budget(b, n, i, json_number_value(v), NULL);
    }
    for (size_t i = 0; !rc && i < json_array_size(ml); i++) {
        json_t *e = json_array_get(ml, i);
        rc = add_budget(b, n, period_of(json_string_value(json_object_get(e, "period"))),
                        json_number_value(json_object_get(e, "limit")),
                        json_object_get(e, "models"));
    }
    json_decref(o);
    if (rc) {
        budgets_free(b, *n);
        *n = 0;
        return rc;
    }
    *out = b;
    return 0;
}

static int applies(const budget_t *b, const char *model)
{
    if (!b->n_patterns)
        return 1;
    for (size_t i = 0; model && i < b->n_patterns; i++) {
        size_t l = strlen(b->patterns[i]);
        if (l && b->patterns[i][l - 1] == '*' ? strncmp(model, b->patterns[i], l - 1) == 0
                                              : strcmp(model, b->patterns[i]) == 0)
            return 1;
    }
    return 0;
}

/* ---- periods ---- */

/* The instant of local midnight + minute on day `days` (days since 1970-01-01, local). */
static int64_t local_day_start(const relay_tz_t *tz, int64_t days, int minute)
{
    return relay_tz_to_utc(tz, days * 86400 + (int64_t)minute * 60);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* [start, end) of the period of kind holding instant now. */
static void period_bounds(const struct relay_budgets *bs, int kind, int64_t now, int64_t *start,
                          int64_t *end)
{
    *start = *end = 0;
    if (kind == BP_TOTAL)
        return;
    int64_t days = floor_div(now + relay_tz_offset(bs->tz, now), 86400);
    if (kind == BP_DAILY) {
        *start = local_day_start(bs->tz, days, 0);
        *end = local_day_start(bs->tz, days + 1, 0);
    } else if (kind == BP_WEEKLY) {
        int64_t wday = ((days + 4) % 7 + 7) % 7; /* 1970-01-01 was a Thursday; 0 = Sunday */
        int64_t first = days - ((wday - bs->week_day + 7) % 7);
        if (now < local_day_start(bs->tz, first, bs->week_minute))
            first -= 7;
        *start = local_day_start(bs->tz, first, bs->week_minute);
        *end = local_day_start(bs->tz, first + 7, bs->week_minute);
    } else {
        int64_t y;
        unsigned m, d;
        relay_civil_from_days(days, &y, &m, &d);
        *start = local_day_start(bs->tz, relay_days_from_civil(y, m, 1), 0);
        *end =
            local_day_start(bs->tz, relay_days_from_civil(m == 12 ? y + 1 : y, m % 12 + 1, 1), 0);
    }
}

/* Moves b to the period holding now; a new period starts with nothing spent. */
static void roll(const struct relay_budgets *bs, budget_t *b, int64_t now)
{
    if (b->period == BP_TOTAL || (b->end && now >= b->start && now < b->end))
        return;
    int was_known = b->end != 0 && now >= b->end;
    period_bounds(bs, b->period, now, &b->start, &b->end);
    b->spent = 0;
    b->pending = 0;
    /* A period this relay saw begin has no older spend in the store; a first look (start,
       restart, or a clock moved back by a test) must read it. */
    b->seeded = was_known;
}

/* ---- the per-key table (caller holds bs->mu) ---- */

static size_t bucket_of(const char *id)
{
    return (size_t)(relay_hash_str(id) % NBUCKETS);
}

static bkey_t *bkey_find(struct relay_budgets *bs, const char *id)
{
    for (bkey_t *k = bs->buckets[bucket_of(id)]; k; k = k->next)
        if (strcmp(k->key_id, id) == 0)
            return k;
    return NULL;
}

static int same_budget(const budget_t *a, const budget_t *b)
{
    return a->period == b->period &&
           ((!a->models_json && !b->models_json) ||
            (a->models_json && b->models_json && strcmp(a->models_json, b->models_json) == 0));
}

static int same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The budgets of a key: its own fields over its tier's defaults. *out NULL when none. */
static int effective_text(const char *key_text, const char *tier_text, char **out)
{
    *out = NULL;
    if (!tier_text)
        return key_text && !(*out = strdup(key_text)) ? RELAY_ERR_NOMEM : 0;
    return relay_budgets_merge(tier_text, key_text, out, NULL);
}

/*
 * Rebuilds k's budgets when the key's or its tier's text changed, keeping the spend of the
 * budgets that stayed (same period and models).
 */
static int bkey_sync(bkey_t *k, const char *text, const char *tier)
{
    if (same_text(text, k->defs_text) && same_text(tier, k->tier_text))
        return 0;
    budget_t *nb = NULL;
    size_t n = 0;
    char *eff = NULL, *copy = text ? strdup(text) : NULL, *tcopy = tier ? strdup(tier) : NULL;
    int rc = (text && !copy) || (tier && !tcopy) ? RELAY_ERR_NOMEM : 0;
    rc = rc ? rc : effective_text(text, tier, &eff);
    rc = rc ? rc : parse_defs(eff, &nb, &n);
    free(eff);
    if (rc) {
        free(copy);
        free(tcopy);
        return rc;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < k->n; j++)
            if (same_budget(&nb[i], &k->b[j])) {
                nb[i].start = k->b[j].start;
                nb[i].end = k->b[j].end;
                nb[i].spent = k->b[j].spent;
                nb[i].reserved = k->b[j].reserved;
                nb[i].pending = k->b[j].pending;
                nb[i].seeded = k->b[j].seeded;
            }
    budgets_free(k->b, k->n);
    free(k->defs_text);
    free(k->tier_text);
    k->b = nb;
    k->n = n;
    k->defs_text = copy;
    k->tier_text = tcopy;
    return 0;
}

/* The key's tier's budget defaults (the default tier's for an unknown tier), or NULL. */
static const char *tier_text_of(relay_t *r, const relay_key_record_t *key, relay_tier_def_t *def)
{
    if (relay_tiers_get(r, key->rate_limit_tier, def) != 0 &&
        (!r->opts.default_tier || relay_tiers_get(r, r->opts.default_tier, def) != 0))
        return NULL;
    return def->cost_limits[0] ? def->cost_limits : NULL;
}

static bkey_t *bkey_get(struct relay_budgets *bs, const relay_key_record_t *key, const char *tier)
{
    bkey_t *k = bkey_find(bs, key->id);
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k)
            return NULL;
        relay_strlcpy(k->key_id, key->id, sizeof k->key_id);
        size_t i = bucket_of(key->id);
        k->next = bs->buckets[i];
        bs->buckets[i] = k;
    }
    return bkey_sync(k, key->cost_limits, tier) == 0 ? k : NULL;
}

/* ---- the spend already in the store ---- */

typedef struct seed {
    int period;
    int64_t start;
    char *models_json;
    char **patterns;
    size_t n_patterns;
    double spent;
    int ok;
} seed_t;

static double logs_cost(relay_t *r, const char *id, const budget_t *b, int64_t since, int64_t until,
                        int *ok)
{
    relay_model_cost_t *mc = NULL;
    size_t n = 0;
    double sum = 0;
    if (relay_store_usage_cost_by_model(r->store, id, since, until, &mc, &n) != 0) {
        *ok = 0;
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        if (applies(b, mc[i].model))
            sum += mc[i].cost;
    free(mc);
    return sum;
}

static double daily_cost(relay_t *r, const char *id, const char *from_day, int *ok)
{
    relay_usage_daily_t *d = NULL;
    size_t n = 0;
    double sum = 0;
    if (relay_store_usage_daily(r->store, id, from_day, NULL, &d, &n) != 0) {
        *ok = 0;
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        sum += d[i].cost;
    free(d);
    return sum;
}

static void day_of(int64_t t, char out[16])
{
    int64_t y;
    unsigned m, d;
    relay_civil_from_days(floor_div(t, 86400), &y, &m, &d);
    snprintf(out, 16, "%04d-%02u-%02u", (int)(y % 10000), m % 100, d % 100);
}

/*
 * Spend of one budget since its period began. Model budgets read usage_logs (the daily totals
 * have no model). Whole-key budgets read the daily totals (UTC days, kept past log retention)
 * for the UTC days inside the period and usage_logs for the part of the first UTC day inside it;
 * when that day's logs are past retention, its whole daily total counts (errs high).
 */
static double store_spend(relay_t *r, const char *id, const budget_t *b, int64_t now, int *ok)
{
    *ok = 1;
    if (b->n_patterns)
        return logs_cost(r, id, b, b->start, 0, ok);
    if (b->start == 0)
        return daily_cost(r, id, NULL, ok);
    int64_t midnight = floor_div(b->start + 86399, 86400) * 86400;
    char day[16];
    int64_t keep = (int64_t)r->opts.log_retention_days * 86400;
    if (midnight != b->start && keep > 0 && midnight - 86400 < now - keep) {
        day_of(b->start, day); /* the first day's logs are gone: count all of it */
        return daily_cost(r, id, day, ok);
    }
    day_of(midnight, day);
    double full = daily_cost(r, id, day, ok);
    return midnight == b->start ? full : full + logs_cost(r, id, b, b->start, midnight, ok);
}

/* A deep copy of src's definition and period (what a store query needs). */
static int budget_clone(budget_t *dst, const budget_t *src)
{
    *dst = *src;
    dst->models_json = NULL;
    dst->patterns = NULL;
    dst->n_patterns = 0;
    if (!src->models_json)
        return 0;
    dst->models_json = strdup(src->models_json);
    dst->patterns = calloc(src->n_patterns, sizeof *dst->patterns);
    if (!dst->models_json || !dst->patterns)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; i < src->n_patterns; i++) {
        if (!(dst->patterns[i] = strdup(src->patterns[i])))
            return RELAY_ERR_NOMEM;
        dst->n_patterns++;
    }
    return 0;
}

/* Adds a store reading to the budget it was read for, if that budget is still in that period. */
static void seed_apply(struct relay_budgets *bs, const char *id, const budget_t *d, double spent)
{
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_find(bs, id);
    for (size_t j = 0; k && j < k->n; j++) {
        budget_t *b = &k->b[j];
        if (same_budget(b, d) && b->start == d->start && !b->seeded) {
            b->spent += spent; /* plus what settled here meanwhile (not yet in the store) */
            b->seeded = 1;
        }
    }
    pthread_mutex_unlock(&bs->mu);
}

#define MAX_BUDGETS (4 + RELAY_BUDGETS_MAX_MODEL_LIMITS)

/* Reads the store spend of every budget of key not yet seeded, outside the lock. */
static void seed(relay_t *r, const relay_key_record_t *key, const char *tier, int64_t now)
{
    struct relay_budgets *bs = r->budgets;
    budget_t todo[MAX_BUDGETS];
    size_t n = 0;
    int rc = 0;
    if (relay_db_is_down(r))
        return; /* no query per request while it is away: decided on this instance's count */
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    for (size_t i = 0; k && !rc && i < k->n && n < MAX_BUDGETS; i++)
        if (!k->b[i].seeded)
            rc = budget_clone(&todo[n++], &k->b[i]);
    pthread_mutex_unlock(&bs->mu);
    int failed = rc != 0;
    for (size_t i = 0; i < n; i++) {
        int ok = 0;
        double spent = rc ? 0 : store_spend(r, key->id, &todo[i], now, &ok);
        if (ok)
            seed_apply(bs, key->id, &todo[i], spent);
        failed |= !ok;
        budget_free(&todo[i]);
    }
    if (failed)
        relay_db_note(r, 0, "reading a key's spend failed", NULL);
    if (failed)
        relay_log(r, RELAY_LOG_WARN, "budgets.seed_failed", NULL,
                  "cannot read the spend of key %s from the store; deciding on this instance's "
                  "count until it answers",
                  key->id);
}

static int needs_seed(struct relay_budgets *bs, const relay_key_record_t *key, const char *tier,
                      int64_t now)
{
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    int need = 0;
    for (size_t i = 0; k && i < k->n; i++) {
        roll(bs, &k->b[i], now);
        need |= !k->b[i].seeded;
    }
    pthread_mutex_unlock(&bs->mu);
    return need;
}

/* ---- admit / settle ---- */

static void budget_name(const budget_t *b, char *out, size_t cap)
{
    static const char *const names[] = {"lifetime", "daily", "weekly", "monthly"};
    if (!b->n_patterns) {
        snprintf(out, cap, "%s cost budget", names[b->period]);
        return;
    }
    size_t used = (size_t)snprintf(out, cap, "%s cost budget for ", names[b->period]);
    for (size_t i = 0; i < b->n_patterns && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? ", " : "", b->patterns[i]);
}

typedef struct verdict {
    int busy;         /* fits alone but not beside the reservations in flight */
    budget_t refused; /* shallow copy of the budget that refused */
    char name[256];
} verdict_t;

/* Finds the first budget with no room; 0 when every applicable one has room. Lock held. */
static int decide(bkey_t *k, const char *model, double est, verdict_t *v)
{
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < k->n; i++) {
            budget_t *b = &k->b[i];
            if (!applies(b, model))
                continue;
            int full = b->spent >= b->limit || b->spent + est > b->limit + USD_EPSILON;
            int busy = b->spent + b->reserved + est > b->limit + USD_EPSILON;
            if ((pass == 0 && full) || (pass == 1 && busy)) {
                v->busy = pass == 1;
                v->refused = *b;
                budget_name(b, v->name, sizeof v->name);
                return 1;
            }
        }
    return 0;
}

static int refuse(const verdict_t *v, double est, int64_t now, relay_admission_t *out,
                  relay_error_t *err)
{
    const budget_t *b = &v->refused;
    relay_strlcpy(out->reason, "budget", sizeof out->reason);
    out->requests_limit = -1; /* no request-window headers: the window was not consulted */
    out->tokens_limit = 0;
    char reset[32] = "";
    if (b->end)
        relay_iso8601(b->end, reset, sizeof reset);
    if (v->busy) {
        out->code = RELAY_ERR_RATE_LIMITED;
        out->retry_after_s = 1;
        out->reset_at = now + 1;
        return relay_error_set(err, out->code,
                               "%s nearly exhausted: $%.4f of $%.2f spent and $%.4f reserved by "
                               "requests in flight; retry shortly",
                               v->name, b->spent, b->limit, b->reserved);
    }
    out->code = b->period == BP_TOTAL ? RELAY_ERR_QUOTA : RELAY_ERR_RATE_LIMITED;
    int64_t wait = b->end > now ? b->end - now : 1;
    out->retry_after_s = b->period == BP_TOTAL ? 0 : (int)(wait > INT32_MAX ? INT32_MAX : wait);
    out->reset_at = b->end;
    const char *why = b->spent >= b->limit ? "exhausted" : "nearly exhausted";
    if (b->period == BP_TOTAL)
        return relay_error_set(err, out->code, "%s %s: $%.4f of $%.2f spent%s", v->name, why,
                               b->spent, b->limit,
                               b->spent >= b->limit ? ""
                                                    : " and this request may cost more than is "
                                                      "left; lower max_tokens to fit");
    return relay_error_set(err, out->code,
                           "%s %s: $%.4f of $%.2f spent (this request may cost "
                           "up to $%.4f); it resets at %s",
                           v->name, why, b->spent, b->limit, est, reset);
}

/* ---- Redis: the same decision, shared by every instance ---- */

static void budget_id(const budget_t *b, char out[17])
{
    uint64_t h = 1469598103934665603ULL;
    const char *m = b->models_json ? b->models_json : "";
    h = (h ^ (uint8_t)('0' + b->period)) * 1099511628211ULL;
    for (; *m; m++)
        h = (h ^ (uint8_t)*m) * 1099511628211ULL;
    snprintf(out, 17, "%016" PRIx64, h);
}

/* The Redis op of k's budgets that apply to model (all of them when all). Lock held. */
static void build_op(const struct relay_budgets *bs, bkey_t *k, const char *model, int all,
                     int64_t now, limits_budget_op_t *op)
{
    relay_strlcpy(op->key_id, k->key_id, sizeof op->key_id);
    op->n = 0;
    for (size_t i = 0; i < k->n && op->n < LIMITS_MAX_BUDGETS; i++) {
        budget_t *b = &k->b[i];
        roll(bs, b, now);
        if (!all && !applies(b, model))
            continue;
        budget_id(b, op->b[op->n].bid);
        op->b[op->n].start = b->start;
        op->b[op->n].limit = b->limit;
        /* The seed never holds a cost whose own settle may still add it to Redis. */
        op->b[op->n].seed = b->spent > b->pending ? b->spent - b->pending : 0;
        /* A period's spend outlives its end by a day (a late settle); lifetime by 400 days idle */
        op->b[op->n].ttl_s = b->end ? b->end - now + 86400 : 400 * 86400;
        op->n++;
    }
}

/* The budget of k an op entry stands for, or NULL. Lock held. */
static budget_t *op_budget(bkey_t *k, const limits_budget_op_t *op, int i)
{
    char bid[17];
    for (size_t j = 0; k && j < k->n; j++) {
        budget_id(&k->b[j], bid);
        if (strcmp(bid, op->b[i].bid) == 0 && k->b[j].start == op->b[i].start)
            return &k->b[j];
    }
    return NULL;
}

/* Keeps the local mirror at least at Redis's spend, for views and for when Redis goes away. */
static void mirror(bkey_t *k, const limits_budget_op_t *op, const limits_budget_verdict_t *v)
{
    for (int i = 0; i < op->n; i++) {
        budget_t *b = op_budget(k, op, i);
        if (b && v->spent[i] > b->spent)
            b->spent = v->spent[i];
    }
}

/* Decides in Redis. *handled 0 when Redis did not answer (decide in process then). */
static int redis_admit(relay_t *r, relay_limits_redis_t *rd, int64_t lease_ms,
                       const relay_key_record_t *key, const char *tier, const char *model,
                       double est, int64_t now_ms, relay_admission_t *out, relay_error_t *err,
                       int *handled)
{
    struct relay_budgets *bs = r->budgets;
    limits_budget_op_t op;
    limits_budget_verdict_t v;
    *handled = 0;
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    if (k)
        build_op(bs, k, model, 0, now_ms / 1000, &op);
    pthread_mutex_unlock(&bs->mu);
    if (!k || op.n == 0) {
        *handled = 1;
        return 0;
    }
    op.now_ms = now_ms;
    op.lease_ms = lease_ms;
    op.estimate = est;
    snprintf(op.member, sizeof op.member, "%s:%.17g", out->id, est);
    if (limits_redis_budget_admit(rd, &op, 1, &v) != 0)
        return 0;
    *handled = 1;
    verdict_t vd = {.busy = v.verdict == 2};
    pthread_mutex_lock(&bs->mu);
    k = bkey_find(bs, key->id);
    if (k)
        mirror(k, &op, &v);
    budget_t *b = v.verdict && k ? op_budget(k, &op, v.index) : NULL;
    if (b) {
        vd.refused = *b;
        vd.refused.spent = v.spent[v.index];
        vd.refused.reserved = v.reserved[v.index];
        budget_name(b, vd.name, sizeof vd.name);
    }
    pthread_mutex_unlock(&bs->mu);
    if (v.verdict && !b) { /* the key's budgets changed meanwhile: refuse without detail */
        vd.refused.period = BP_DAILY;
        vd.refused.spent = v.spent[v.index];
        vd.refused.limit = op.b[v.index].limit;
        relay_strlcpy(vd.name, "cost budget", sizeof vd.name);
    }
    if (v.verdict)
        return refuse(&vd, est, now_ms / 1000, out, err);
    out->cost_reserved = est;
    out->budget_redis = 1;
    return 0;
}

/* Refreshes the mirror (spend and reservations) of every budget of key from Redis. */
static void redis_view(relay_t *r, const relay_key_record_t *key, const char *tier, int64_t now)
{
    struct relay_budgets *bs = r->budgets;
    int64_t lease;
    relay_limits_redis_t *rd = relay_limits_redis_up(r, &lease);
    if (!rd)
        return;
    limits_budget_op_t op;
    limits_budget_verdict_t v;
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    op.n = 0;
    if (k)
        build_op(bs, k, NULL, 1, now, &op);
    pthread_mutex_unlock(&bs->mu);
    op.now_ms = now * 1000;
    op.lease_ms = lease;
    op.estimate = 0;
    relay_strlcpy(op.member, "view", sizeof op.member);
    if (op.n == 0 || limits_redis_budget_admit(rd, &op, 0, &v) != 0)
        return;
    pthread_mutex_lock(&bs->mu);
    k = bkey_find(bs, key->id);
    for (int i = 0; k && i < op.n; i++) {
        budget_t *b = op_budget(k, &op, i);
        if (b) {
            b->spent = v.spent[i] > b->spent ? v.spent[i] : b->spent;
            b->reserved = v.reserved[i];
        }
    }
    pthread_mutex_unlock(&bs->mu);
}

int budgets_admit(relay_t *r, const relay_key_record_t *key, const char *tier, const char *model,
                  double estimate, int64_t now_ms, relay_admission_t *out, relay_error_t *err)
{
    struct relay_budgets *bs = r->budgets;
    relay_strlcpy(out->model, model ? model : "", sizeof out->model);
    if (!bs || (!key->cost_limits && !tier))
        return 0;
    int64_t now = now_ms / 1000;
    if (needs_seed(bs, key, tier, now))
        seed(r, key, tier, now);
    int64_t lease;
    relay_limits_redis_t *rd = relay_limits_redis_up(r, &lease);
    if (rd) {
        int handled,
            rc = redis_admit(r, rd, lease, key, tier, model, estimate, now_ms, out, err, &handled);
        if (handled)
            return rc;
        relay_limits_count_budget_fallback(r);
    }
    verdict_t v;
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    int refused = 0;
    if (k) {
        for (size_t i = 0; i < k->n; i++)
            roll(bs, &k->b[i], now);
        refused = decide(k, model, estimate, &v);
        for (size_t i = 0; !refused && i < k->n; i++)
            if (applies(&k->b[i], model))
                k->b[i].reserved += estimate;
    }
    pthread_mutex_unlock(&bs->mu);
    if (refused)
        return refuse(&v, estimate, now, out, err);
    out->cost_reserved = k ? estimate : 0;
    out->budget_held = k != NULL;
    return 0;
}

/* Takes the reservation back and adds cost. */
/*
 * Takes the reservation back and adds cost, in the mirror and (for a Redis admission) in Redis.
 * The Redis seed is each budget's mirror *before* this cost, taken in the same critical section
 * that adds it: so neither the mirror nor Redis ever counts one request twice.
 */
/* The settle in Redis has returned (or failed): its cost may now be part of a seed. */
static void redis_settled(struct relay_budgets *bs, const char *key_id,
                          const limits_budget_op_t *op, double cost)
{
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_find(bs, key_id);
    for (int i = 0; k && i < op->n; i++) {
        budget_t *b = op_budget(k, op, i); /* NULL after a period change: pending was reset */
        if (b)
            b->pending = b->pending > cost ? b->pending - cost : 0;
    }
    pthread_mutex_unlock(&bs->mu);
}

/*
 * Takes the reservation back and adds cost, in the mirror and (for a Redis admission) in Redis.
 * Until Redis has it, the cost is also "pending" in the mirror and left out of every seed sent
 * to Redis, so no request is ever counted twice there; a settle that fails leaves it in the
 * mirror, and the next seed makes it good.
 */
static void apply(relay_t *r, relay_admission_t *a, double cost, int64_t now_ms)
{
    struct relay_budgets *bs = r->budgets;
    if (!bs)
        return;
    const char *model = a->model[0] ? a->model : NULL;
    int64_t lease;
    relay_limits_redis_t *rd = a->budget_redis ? relay_limits_redis_up(r, &lease) : NULL;
    limits_budget_op_t op;
    op.n = 0;
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_find(bs, a->key_id);
    if (k && rd)
        build_op(bs, k, model, 0, now_ms / 1000, &op);
    for (size_t i = 0; k && i < k->n; i++) {
        budget_t *b = &k->b[i];
        if (!applies(b, model))
            continue;
        roll(bs, b, now_ms / 1000);
        if (a->budget_held)
            b->reserved = b->reserved > a->cost_reserved ? b->reserved - a->cost_reserved : 0;
        b->spent += cost;
        if (op.n)
            b->pending += cost;
    }
    pthread_mutex_unlock(&bs->mu);
    if (op.n) { /* when Redis is away the reservation ends with its lease */
        snprintf(op.member, sizeof op.member, "%s:%.17g", a->id, a->cost_reserved);
        limits_redis_budget_settle(rd, &op, cost);
        redis_settled(bs, a->key_id, &op, cost);
    }
    a->budget_held = 0;
    a->budget_redis = 0;
}

void budgets_release(relay_t *r, relay_admission_t *a, int64_t now_ms)
{
    if (a->budget_held || a->budget_redis)
        apply(r, a, 0, now_ms);
}

void budgets_settle(relay_t *r, relay_admission_t *a, double cost, int64_t now_ms)
{
    apply(r, a, cost > 0 ? cost : 0, now_ms);
}

/* ---- views ---- */

static int view(relay_t *r, const relay_key_record_t *key, int ask_redis, relay_budget_view_t **out,
                size_t *n)
{
    *out = NULL;
    *n = 0;
    struct relay_budgets *bs = r->budgets;
    if (!bs || !key)
        return 0;
    relay_tier_def_t def;
    const char *tier = tier_text_of(r, key, &def);
    if (!key->cost_limits && !tier)
        return 0;
    int64_t now = relay_limits_now_ms(r) / 1000;
    if (needs_seed(bs, key, tier, now))
        seed(r, key, tier, now);
    if (ask_redis)
        redis_view(r, key, tier, now);
    pthread_mutex_lock(&bs->mu);
    bkey_t *k = bkey_get(bs, key, tier);
    relay_budget_view_t *v = k && k->n ? calloc(k->n, sizeof *v) : NULL;
    for (size_t i = 0; v && i < k->n; i++) {
        budget_t *b = &k->b[i];
        roll(bs, b, now);
        relay_strlcpy(v[i].period, PERIOD_NAMES[b->period], sizeof v[i].period);
        relay_strlcpy(v[i].models, b->models_json ? b->models_json : "", sizeof v[i].models);
        v[i].limit = b->limit;
        v[i].spent = b->spent;
        v[i].reserved = b->reserved;
        v[i].remaining = b->limit > b->spent ? b->limit - b->spent : 0;
        v[i].resets_at = b->end;
    }
    size_t count = v ? k->n : 0;
    pthread_mutex_unlock(&bs->mu);
    if (!v && k && count)
        return RELAY_ERR_NOMEM;
    *out = v;
    *n = count;
    return 0;
}

/* Nano-dollars: float noise gone, every digit a usage log's total_cost has kept. */
int relay_budgets_view(relay_t *r, const relay_key_record_t *key, relay_budget_view_t **out,
                       size_t *n)
{
    return view(r, key, 1, out, n);
}

int budgets_view_local(relay_t *r, const relay_key_record_t *key, relay_budget_view_t **out,
                       size_t *n)
{
    return view(r, key, 0, out, n);
}

static double usd_round(double usd)
{
    return round(usd * 1e9) / 1e9;
}

static json_t *view_json(const relay_budget_view_t *v)
{
    json_t *models = v->models[0] ? json_loads(v->models, 0, NULL) : NULL;
    char reset[32];
    if (v->resets_at)
        relay_iso8601(v->resets_at, reset, sizeof reset);
    return json_pack("{s:s, s:o, s:f, s:f, s:f, s:f, s:o}", "period", v->period, "models",
                     models ? models : json_null(), "limit", v->limit, "spent", usd_round(v->spent),
                     "reserved", usd_round(v->reserved), "remaining", usd_round(v->remaining),
                     "resets_at", v->resets_at ? json_string(reset) : json_null());
}

char *relay_budgets_to_json(relay_t *r, const relay_key_record_t *key)
{
    relay_budget_view_t *v;
    size_t n;
    if (relay_budgets_view(r, key, &v, &n) != 0)
        return NULL;
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, view_json(&v[i]));
    free(v);
    char *s = a ? json_dumps(a, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(a);
    return s;
}

/* ---- module hooks ---- */

int relay_budgets_start(relay_t *r, relay_error_t *err)
{
    struct relay_budgets *bs = calloc(1, sizeof *bs);
    if (!bs)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&bs->mu, NULL);
    r->budgets = bs;
    int d = r->opts.budget_week_start_day, m = r->opts.budget_week_start_minute;
    if (d < 0 || d > 6 || m < 0 || m >= 24 * 60)
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "budgets.week_starts: expected a day 0-6 and a time 00:00-23:59");
    bs->week_day = d;
    bs->week_minute = m;
    relay_error_t e = {0};
    if (relay_tz_load(&bs->tz, r->opts.budget_timezone ? r->opts.budget_timezone : "UTC", &e))
        return relay_error_set(err, RELAY_ERR_CONFIG, "budgets.timezone: %s", e.message);
    return 0;
}

void relay_budgets_stop(relay_t *r)
{
    struct relay_budgets *bs = r->budgets;
    if (!bs)
        return;
    for (size_t i = 0; i < NBUCKETS; i++)
        for (bkey_t *k = bs->buckets[i], *next; k; k = next) {
            next = k->next;
            budgets_free(k->b, k->n);
            free(k->defs_text);
            free(k->tier_text);
            free(k);
        }
    relay_tz_free(bs->tz);
    pthread_mutex_destroy(&bs->mu);
    free(bs);
    r->budgets = NULL;
}
