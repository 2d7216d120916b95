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
};

#endif
