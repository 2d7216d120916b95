/* modules: the start/stop hooks of librelay's modules, in start order (see relay.c). */
#ifndef RELAY_MODULES_H
#define RELAY_MODULES_H

#include "internal.h"

/* Each module appends its pair here when it lands; stop must tolerate a start that never ran. */
#define RELAY_MODULES                                                                                   \
    {                                                                                                   \
        {"tiers", relay_tiers_start, relay_tiers_stop},                                                 \
        {"keys", relay_keys_start, relay_keys_stop},                                                    \
        {"limits", relay_limits_start, relay_limits_stop},                                              \
        {"auth", relay_auth_start, relay_auth_stop},                                                    \
        {"forward", relay_forward_start, relay_forward_stop},                                           \
        {"usage", relay_usage_start, relay_usage_stop},                                                 \
        {"metrics", relay_metrics_start, relay_metrics_stop},                                           \
        {"maintenance", relay_maintenance_start, relay_maintenance_stop},                               \
    }

#include "forward_internal.h"
#include "limits_internal.h"
#include "maintenance_internal.h"
#include "metrics_internal.h"
#include "usage_internal.h"

/* tiers.c, keys.c, auth.c */
int relay_tiers_start(relay_t *r, relay_error_t *err);
void relay_tiers_stop(relay_t *r);
int relay_keys_start(relay_t *r, relay_error_t *err);
void relay_keys_stop(relay_t *r);
int relay_auth_start(relay_t *r, relay_error_t *err);
void relay_auth_stop(relay_t *r);

static inline int relay_noop_start(relay_t *r, relay_error_t *err)
{
    (void)r;
    (void)err;
    return 0;
}
static inline void relay_noop_stop(relay_t *r)
{
    (void)r;
}

#endif
