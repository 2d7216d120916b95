/* pricing: the price table in force, its default for unknown models, and its run-time changes. */
#include "relay/pricing.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pricing_internal.h"
#include "util.h"

#define SETTING_NAME "pricing"
#define SETTING_MAX  (128 * 1024)

/*
 * Anthropic list prices, USD per million tokens (input, output, 5m write, 1h write, read), from
 * Anthropic's pricing page as published in 2026. Longest prefix wins, so "claude-opus-4-5" and
 * "claude-opus-4-6" take precedence over the older, dearer "claude-opus-4" (4.0 and 4.1).
 * Sonnet 4/4.5 above 200k input tokens cost more (long context): not modelled, see docs/budgets.md.
 */
static const relay_price_t BUILTIN_PRICES[] = {
    {"claude-opus-4-6", 5, 25, 6.25, 10, 0.50},
    {"claude-opus-4-5", 5, 25, 6.25, 10, 0.50},
    {"claude-opus-4", 15, 75, 18.75, 30, 1.50},
    {"claude-3-opus", 15, 75, 18.75, 30, 1.50},
    {"claude-sonnet-4", 3, 15, 3.75, 6, 0.30},
    {"claude-3-7-sonnet", 3, 15, 3.75, 6, 0.30},
    {"claude-3-5-sonnet", 3, 15, 3.75, 6, 0.30},
    {"claude-3-sonnet", 3, 15, 3.75, 6, 0.30},
    {"claude-haiku-4", 1, 5, 1.25, 2, 0.10},
    {"claude-3-5-haiku", 0.80, 4, 1.00, 1.6, 0.08},
    {"claude-3-haiku", 0.25, 1.25, 0.30, 0.50, 0.03},
};
#define N_BUILTIN (sizeof BUILTIN_PRICES / sizeof BUILTIN_PRICES[0])

struct relay_pricing {
    pthread_rwlock_t lock;
    relay_price_t *tbl;
    size_t n;
    size_t def; /* index of the default entry */
    const char *source;
};

/* The entry with the highest output price (then input): the fail-safe default. */
static size_t dearest(const relay_price_t *t, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (t[i].output > t[best].output ||
            (t[i].output == t[best].output && t[i].input > t[best].input))
            best = i;
    return best;
}

static int find_prefix(const relay_price_t *t, size_t n, const char *prefix, size_t *out)
{
    for (size_t i = 0; prefix && i < n; i++)
        if (strcmp(t[i].model_prefix, prefix) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

int relay_pricing_lookup(relay_t *r, const char *model, relay_price_t *out)
{
    struct relay_pricing *p = r->pricing;
    pthread_rwlock_rdlock(&p->lock);
    size_t best = p->def, best_len = 0;
    for (size_t i = 0; model && i < p->n; i++) {
        size_t l = strlen(p->tbl[i].model_prefix);
        if (l > best_len && strncmp(model, p->tbl[i].model_prefix, l) == 0) {
            best = i;
            best_len = l;
        }
    }
    *out = p->tbl[best];
    pthread_rwlock_unlock(&p->lock);
    return best_len > 0;
}

double relay_pricing_cost(const relay_price_t *p, int64_t input, int64_t output, int64_t cache_5m,
                          int64_t cache_1h, int64_t cache_read)
{
    return ((double)input * p->input + (double)output * p->output +
            (double)cache_5m * p->cache_write_5m + (double)cache_1h * p->cache_write_1h +
            (double)cache_read * p->cache_read) /
           1e6;
}

static json_t *price_json(const relay_price_t *e)
{
    return json_pack("{s:s, s:f, s:f, s:f, s:f, s:f}", "model_prefix", e->model_prefix, "input",
                     e->input, "output", e->output, "cache_write_5m", e->cache_write_5m,
                     "cache_write_1h", e->cache_write_1h, "cache_read", e->cache_read);
}

static char *table_json(const relay_price_t *t, size_t n, size_t def, const char *source)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, price_json(&t[i]));
    json_t *o =
        json_pack("{s:s, s:s, s:o}", "default", t[def].model_prefix, "source", source, "prices", a);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(o);
    return s;
}

char *relay_pricing_to_json(relay_t *r)
{
    struct relay_pricing *p = r->pricing;
    pthread_rwlock_rdlock(&p->lock);
    char *s = table_json(p->tbl, p->n, p->def, p->source);
    pthread_rwlock_unlock(&p->lock);
    return s;
}

/* One optional price field; missing cache prices follow Anthropic's multiples of input. */
static int price_num(json_t *o, const char *field, size_t i, double dflt, double *out,
                     relay_error_t *err)
{
    json_t *v = json_object_get(o, field);
    if (!v || json_is_null(v)) {
        if (dflt < 0)
            return relay_error_set(err, RELAY_ERR_INVALID, "prices[%zu].%s: required", i, field);
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < 0)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "prices[%zu].%s: expected a non-negative number", i, field);
    *out = json_number_value(v);
    return 0;
}

static int parse_entry(json_t *o, size_t i, relay_price_t *e, relay_error_t *err)
{
    if (!json_is_object(o))
        return relay_error_set(err, RELAY_ERR_INVALID, "prices[%zu]: expected an object", i);
    json_t *m = json_object_get(o, "model_prefix");
    const char *s = json_string_value(m);
    if (!s || !*s || strlen(s) >= sizeof e->model_prefix)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "prices[%zu].model_prefix: expected a string of 1 to %zu "
                               "characters",
                               i, sizeof e->model_prefix - 1);
    relay_strlcpy(e->model_prefix, s, sizeof e->model_prefix);
    int rc = price_num(o, "input", i, -1, &e->input, err);
    rc = rc ? rc : price_num(o, "output", i, -1, &e->output, err);
    rc = rc ? rc : price_num(o, "cache_write_5m", i, e->input * 1.25, &e->cache_write_5m, err);
    rc = rc ? rc : price_num(o, "cache_write_1h", i, e->input * 2, &e->cache_write_1h, err);
    rc = rc ? rc : price_num(o, "cache_read", i, e->input * 0.1, &e->cache_read, err);
    return rc;
}

/* Parses a whole table; *tbl is malloc'd. */
static int parse_table(const char *json, relay_price_t **tbl, size_t *n, size_t *def,
                       relay_error_t *err)
{
    json_error_t je;
    json_t *o = json ? json_loads(json, JSON_REJECT_DUPLICATES, &je) : NULL;
    json_t *a = json_object_get(o, "prices");
    size_t count = json_array_size(a);
    int rc = 0;
    if (!json_is_object(o))
        rc = relay_error_set(err, RELAY_ERR_INVALID, "expected an object with a prices list");
    else if (!json_is_array(a) || count == 0 || count > RELAY_PRICING_MAX)
        rc = relay_error_set(err, RELAY_ERR_INVALID, "prices: expected a list of 1 to %d entries",
                             RELAY_PRICING_MAX);
    *tbl = rc ? NULL : calloc(count, sizeof **tbl);
    if (!rc && !*tbl)
        rc = relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < count; i++)
        rc = parse_entry(json_array_get(a, i), i, &(*tbl)[i], err);
    json_t *d = json_object_get(o, "default");
    if (!rc && d && !json_is_null(d) && find_prefix(*tbl, count, json_string_value(d), def) != 0)
        rc = relay_error_set(err, RELAY_ERR_INVALID,
                             "default: expected the model_prefix of one "
                             "of the prices");
    else if (!rc && (!d || json_is_null(d)))
        *def = dearest(*tbl, count);
    json_decref(o);
    if (rc) {
        free(*tbl);
        *tbl = NULL;
        return rc;
    }
    *n = count;
    return 0;
}

static void install(struct relay_pricing *p, relay_price_t *tbl, size_t n, size_t def,
                    const char *source)
{
    pthread_rwlock_wrlock(&p->lock);
    free(p->tbl);
    p->tbl = tbl;
    p->n = n;
    p->def = def;
    p->source = source;
    pthread_rwlock_unlock(&p->lock);
}

int relay_pricing_set(relay_t *r, const char *json, relay_error_t *err)
{
    relay_price_t *tbl;
    size_t n, def;
    int rc = parse_table(json, &tbl, &n, &def, err);
    if (rc)
        return rc;
    char *canon = table_json(tbl, n, def, "admin");
    rc = canon ? relay_store_setting_set(r->store, SETTING_NAME, canon) : RELAY_ERR_NOMEM;
    free(canon);
    if (rc) {
        free(tbl);
        return relay_error_set(err, rc, "cannot store the price table: %s", relay_strerror(rc));
    }
    install(r->pricing, tbl, n, def, "admin");
    return 0;
}

/* The table from the options (config or built-in), with its configured default. */
static int initial_table(relay_t *r, relay_error_t *err)
{
    const relay_price_t *src = r->opts.prices ? r->opts.prices : BUILTIN_PRICES;
    size_t n = r->opts.prices ? r->opts.n_prices : N_BUILTIN;
    relay_price_t *tbl = calloc(n, sizeof *tbl);
    if (!tbl)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    memcpy(tbl, src, n * sizeof *tbl);
    size_t def = dearest(tbl, n);
    if (r->opts.price_default && find_prefix(tbl, n, r->opts.price_default, &def) != 0) {
        free(tbl);
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "pricing.default: '%s' is not the model_prefix of a price",
                               r->opts.price_default);
    }
    install(r->pricing, tbl, n, def, r->opts.prices ? "config" : "builtin");
    return 0;
}

/* A table set through the admin API outlives restarts; a broken stored one is logged, not fatal. */
static void load_stored(relay_t *r)
{
    char *buf = malloc(SETTING_MAX);
    if (!buf)
        return;
    if (relay_store_setting_get(r->store, SETTING_NAME, buf, SETTING_MAX) == 0) {
        relay_price_t *tbl;
        size_t n, def;
        relay_error_t e = {0};
        if (parse_table(buf, &tbl, &n, &def, &e) == 0)
            install(r->pricing, tbl, n, def, "admin");
        else
            relay_log(r, RELAY_LOG_ERROR, "pricing.stored_invalid", NULL,
                      "the stored price table is invalid (%s); using the configured one",
                      e.message);
    }
    free(buf);
}

int relay_pricing_start(relay_t *r, relay_error_t *err)
{
    struct relay_pricing *p = calloc(1, sizeof *p);
    if (!p)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_rwlock_init(&p->lock, NULL);
    r->pricing = p;
    int rc = initial_table(r, err);
    if (rc)
        return rc;
    load_stored(r);
    return 0;
}

void relay_pricing_stop(relay_t *r)
{
    struct relay_pricing *p = r->pricing;
    if (!p)
        return;
    pthread_rwlock_destroy(&p->lock);
    free(p->tbl);
    free(p);
    r->pricing = NULL;
}
