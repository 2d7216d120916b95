/* internal: the layout of relay_t, shared by librelay's modules and nothing else. */
#ifndef RELAY_INTERNAL_H
#define RELAY_INTERNAL_H

#include <pthread.h>

#include "relay/relay.h"
#include "relay/store.h"

/*
 * Each module keeps its state behind its own pointer and offers a pair of hooks that relay_new
 * and relay_free call in order: relay_<module>_start(r, err) / relay_<module>_stop(r).
 */
struct relay_keys_state;
struct relay_tiers_state;
struct relay_auth_state;
struct relay_limits_state;
struct relay_usage_state;
struct relay_forward_state;
struct relay_metrics;
struct relay_maintenance;
struct relay_tokenizer;
struct relay_pricing;
struct relay_budgets;
struct relay_upstreams;

struct relay {
    relay_options_t opts; /* strings point into owned copies below */
    char *own_strings[16];
    relay_tier_def_t *own_tiers;
    relay_price_t *own_prices;
    relay_upstream_def_t *own_upstreams;

    relay_store_t *store;
    struct relay_tiers_state *tiers;
    struct relay_keys_state *keys;
    struct relay_auth_state *auth;
    struct relay_pricing *pricing;
    struct relay_budgets *budgets;
    struct relay_limits_state *limits;
    struct relay_usage_state *usage;
    struct relay_forward_state *forward;
    struct relay_upstreams *upstreams;
    struct relay_metrics *metrics;
    struct relay_tokenizer *tokenizer;
    struct relay_maintenance *maintenance;

    /* The database as the relay last saw it (relay.c): for /health, database.outage and the
     * budget seeding that must not query a database known to be away. */
    pthread_mutex_t db_mu;
    int db_down;           /* atomic read; written under db_mu */
    int64_t db_down_since; /* wall clock, seconds */
    char db_what[160];     /* what failed last */
    int db_down_by_writer; /* only the usage writer's next success says it is back */
};

/* Notes the outcome of a database operation: ok, or failed with what (shown on /health) and
 * detail (the log line only); logged once per outage. */
void relay_db_note(relay_t *r, int ok, const char *what, const char *detail);
/* The usage writer's outcome (detail: the driver's message, for the log). */
void relay_db_note_write(relay_t *r, int ok, const char *detail);
/* 1 while the last database operation failed. */
int relay_db_is_down(relay_t *r);

#endif
