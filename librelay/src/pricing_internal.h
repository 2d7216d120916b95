/* pricing_internal: the price table's lifecycle hooks (called by relay_new / relay_free). */
#ifndef RELAY_PRICING_INTERNAL_H
#define RELAY_PRICING_INTERNAL_H

#include "internal.h"

int relay_pricing_start(relay_t *r, relay_error_t *err);
void relay_pricing_stop(relay_t *r);

#endif
