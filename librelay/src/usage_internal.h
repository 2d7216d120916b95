/* usage_internal: the usage writer's lifecycle hooks (called by relay_new / relay_free). */
#ifndef RELAY_USAGE_INTERNAL_H
#define RELAY_USAGE_INTERNAL_H

#include "internal.h"

int relay_usage_start(relay_t *r, relay_error_t *err);
void relay_usage_stop(relay_t *r);

#endif
