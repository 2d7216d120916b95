/* tiers: the rate-limit tier table — persisted in the store, read on every request from memory. */
#include "relay/tiers.h"

#include "relay/budgets.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "relay/store.h"
#include "util.h"

#define TIERS_MAX 1024

struct relay_tiers_state {
    pthread_rwlock_t lock;
    relay_tier_def_t *tiers; /* sorted by name */
    size_t n;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const relay_tier_def_t *)a)->name, ((const relay_tier_def_t *)b)->name);
}

/* Replaces the table with tiers (taken over, sorted here). */
static void install(struct relay_tiers_state *st, relay_tier_def_t *tiers, size_t n)
{
    qsort(tiers, n, sizeof *tiers, by_name);
    pthread_rwlock_wrlock(&st->lock);
    relay_tier_def_t *old = st->tiers;
    st->tiers = tiers;
    st->n = n;
    pthread_rwlock_unlock(&st->lock);
    free(old);
}

int relay_tiers_reload(relay_t *r)
{
    relay_tier_def_t *t = NULL;
    size_t n = 0;
    int rc = relay_store_tier_list(r->store, &t, &n);
    if (rc)
        return rc;
    install(r->tiers, t, n);
    return 0;
}

static int check_tier(const relay_tier_def_t *t, relay_error_t *err)
{
    size_t nl = strnlen(t->name, sizeof t->name);
    if (nl == 0 || nl >= sizeof t->name)
        return relay_error_set(err, RELAY_ERR_INVALID, "name: expected 1 to %zu characters",
                               sizeof t->name - 1);
    for (size_t i = 0; i < nl; i++) {
        char c = t->name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return relay_error_set(err, RELAY_ERR_INVALID,
                                   "name: only letters, digits, '-', '_' and '.'");
    }
    if (t->requests != -1 && t->requests <= 0)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "requests: expected a positive integer or -1 (unlimited)");
    if (t->period_s <= 0)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "period: expected a positive number of seconds");
    if (t->tokens_per_minute < 0)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "tokens_per_minute: expected a non-negative integer");
    if (t->concurrent < 0)
        return relay_error_set(err, RELAY_ERR_INVALID,
                               "concurrent: expected a non-negative integer");
    if (!memchr(t->cost_limits, '\0', sizeof t->cost_limits))
        return relay_error_set(err, RELAY_ERR_INVALID, "cost_limits: too long");
    return t->cost_limits[0] ? relay_budgets_validate(t->cost_limits, err) : 0;
}

/* Writes the configured tiers when the store has none yet (first start), then loads the table. */
int relay_tiers_start(relay_t *r, relay_error_t *err)
{
    struct relay_tiers_state *st = calloc(1, sizeof *st);
    if (!st)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_rwlock_init(&st->lock, NULL);
    r->tiers = st;
    relay_tier_def_t *t = NULL;
    size_t n = 0;
    int rc = relay_store_tier_list(r->store, &t, &n);
    if (rc)
        return relay_error_set(err, rc, "cannot read rate-limit tiers: %s", relay_strerror(rc));
    if (n == 0) {
        free(t);
        for (size_t i = 0; i < r->opts.n_tiers; i++) {
            relay_error_t why = {0};
            if (check_tier(&r->opts.tiers[i], &why) != 0)
                return relay_error_set(err, RELAY_ERR_CONFIG, "rate_limit.by_tier.%s.%s",
                                       r->opts.tiers[i].name, why.message);
            if ((rc = relay_store_tier_upsert(r->store, &r->opts.tiers[i])) != 0)
                return relay_error_set(err, rc, "cannot store rate-limit tiers: %s",
                                       relay_strerror(rc));
        }
        rc = relay_store_tier_list(r->store, &t, &n);
        if (rc)
            return relay_error_set(err, rc, "cannot read rate-limit tiers: %s", relay_strerror(rc));
    }
    install(st, t, n);
    return 0;
}

void relay_tiers_stop(relay_t *r)
{
    struct relay_tiers_state *st = r->tiers;
    if (!st)
        return;
    pthread_rwlock_destroy(&st->lock);
    free(st->tiers);
    free(st);
    r->tiers = NULL;
}

int relay_tiers_get(relay_t *r, const char *name, relay_tier_def_t *out)
{
    struct relay_tiers_state *st = r->tiers;
    if (!st || !name)
        return RELAY_ERR_NOT_FOUND;
    relay_tier_def_t key;
    relay_strlcpy(key.name, name, sizeof key.name);
    int rc = RELAY_ERR_NOT_FOUND;
    pthread_rwlock_rdlock(&st->lock);
    const relay_tier_def_t *t = st->n ? bsearch(&key, st->tiers, st->n, sizeof key, by_name) : NULL;
    if (t && strcmp(t->name, name) == 0) {
        *out = *t;
        rc = 0;
    }
    pthread_rwlock_unlock(&st->lock);
    return rc;
}

int relay_tiers_list(relay_t *r, relay_tier_def_t **out, size_t *n)
{
    struct relay_tiers_state *st = r->tiers;
    *out = NULL;
    *n = 0;
    if (!st)
        return 0;
    pthread_rwlock_rdlock(&st->lock);
    relay_tier_def_t *copy = calloc(st->n ? st->n : 1, sizeof *copy);
    if (copy) {
        if (st->n)
            memcpy(copy, st->tiers, st->n * sizeof *copy);
        *n = st->n;
    }
    pthread_rwlock_unlock(&st->lock);
    *out = copy;
    return copy ? 0 : RELAY_ERR_NOMEM;
}

int relay_tiers_set(relay_t *r, const relay_tier_def_t *tier, relay_error_t *err)
{
    int rc = check_tier(tier, err);
    if (rc)
        return rc;
    relay_tier_def_t existing;
    size_t count = 0;
    relay_tier_def_t *all = NULL;
    if (relay_tiers_get(r, tier->name, &existing) != 0 && relay_tiers_list(r, &all, &count) == 0 &&
        count >= TIERS_MAX) {
        free(all);
        return relay_error_set(err, RELAY_ERR_INVALID, "name: at most %d tiers", TIERS_MAX);
    }
    free(all);
    rc = relay_store_tier_upsert(r->store, tier);
    if (rc)
        return relay_error_set(err, rc, "cannot store the tier: %s", relay_strerror(rc));
    rc = relay_tiers_reload(r);
    return rc ? relay_error_set(err, rc, "cannot reload tiers: %s", relay_strerror(rc)) : 0;
}

/* 1 when a key not deleted still names tier (paged scan: deleting a tier is rare). */
static int tier_in_use(relay_t *r, const char *tier, int *in_use)
{
    *in_use = 0;
    for (int64_t skip = 0;; skip += 500) {
        relay_key_record_t *recs = NULL;
        size_t n = 0;
        int64_t total = 0;
        int rc = relay_store_key_list(r->store, RELAY_KEYS_ALL, relay_now(), skip, 500, &recs, &n,
                                      &total);
        if (rc)
            return rc;
        for (size_t i = 0; i < n && !*in_use; i++)
            *in_use = strcmp(recs[i].rate_limit_tier, tier) == 0;
        relay_key_records_free(recs, n);
        if (*in_use || n < 500)
            return 0;
    }
}

int relay_tiers_delete(relay_t *r, const char *name, relay_error_t *err)
{
    relay_tier_def_t t;
    if (relay_tiers_get(r, name, &t) != 0) {
        relay_tiers_reload(r); /* another process may have made it */
        if (relay_tiers_get(r, name, &t) != 0)
            return relay_error_set(err, RELAY_ERR_NOT_FOUND, "rate-limit tier not found");
    }
    if (r->opts.default_tier && strcmp(name, r->opts.default_tier) == 0)
        return relay_error_set(err, RELAY_ERR_CONFLICT,
                               "tier '%s' is the default tier for new keys", name);
    int in_use;
    int rc = tier_in_use(r, name, &in_use);
    if (rc)
        return relay_error_set(err, rc, "cannot check the tier's keys: %s", relay_strerror(rc));
    if (in_use)
        return relay_error_set(err, RELAY_ERR_CONFLICT, "tier '%s' is still used by API keys",
                               name);
    rc = relay_store_tier_delete(r->store, name);
    if (rc == RELAY_ERR_NOT_FOUND)
        return relay_error_set(err, rc, "rate-limit tier not found");
    if (rc)
        return relay_error_set(err, rc, "cannot delete the tier: %s", relay_strerror(rc));
    rc = relay_tiers_reload(r);
    return rc ? relay_error_set(err, rc, "cannot reload tiers: %s", relay_strerror(rc)) : 0;
}
