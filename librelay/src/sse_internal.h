/* sse_internal: the parsers' pieces that tests and fuzz targets hold to each other. */
#ifndef RELAY_SSE_INTERNAL_H
#define RELAY_SSE_INTERNAL_H

#include <stddef.h>

#include "relay/sse.h"

/* The fast reader on its own: 1 when it answered (out filled exactly as jansson would fill it,
 * out zeroed by the caller), 0 when the body goes to jansson. */
int relay_usage_parse_json_fast(relay_usage_t *out, const char *body, size_t len);
/* relay_usage_parse_json through jansson alone (what its fast reader must always agree with). */
int relay_usage_parse_json_jansson(relay_usage_t *out, const char *body, size_t len);

#endif
