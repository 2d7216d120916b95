/* usage_internal: the usage writer's lifecycle hooks (called by relay_new / relay_free). */
#ifndef RELAY_USAGE_INTERNAL_H
#define RELAY_USAGE_INTERNAL_H

#include "internal.h"

int relay_usage_start(relay_t *r, relay_error_t *err);
void relay_usage_stop(relay_t *r);
/*
 * A new row_uid for a row recorded at ms (Unix milliseconds): 48 bits of ms, then 80 random
 * ones, as 32 hex digits. Rows recorded close together get ids that sort close together, so the
 * unique index on row_uid is appended to instead of written at random pages. 0 or RELAY_ERR_IO.
 */
int relay_usage_new_row_uid(int64_t ms, char out[33]);

#endif
