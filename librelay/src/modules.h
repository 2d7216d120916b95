/* modules: the start/stop hooks of librelay's modules; relay.c runs them in its MODULES order. */
#ifndef RELAY_MODULES_H
#define RELAY_MODULES_H

#include "internal.h"

#include "forward_internal.h"
#include "limits_internal.h"
#include "maintenance_internal.h"
#include "budgets_internal.h"
#include "metrics_internal.h"
#include "pricing_internal.h"
#include "upstreams_internal.h"
#include "usage_internal.h"

/* tiers.c, keys.c, auth.c (the others come from their *_internal.h). */
int relay_tiers_start(relay_t *r, relay_error_t *err);
void relay_tiers_stop(relay_t *r);
int relay_keys_start(relay_t *r, relay_error_t *err);
void relay_keys_stop(relay_t *r);
int relay_auth_start(relay_t *r, relay_error_t *err);
void relay_auth_stop(relay_t *r);

#endif
