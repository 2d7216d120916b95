/* keys_internal: what other modules call in keys.c beyond its start/stop hooks. */
#ifndef RELAY_KEYS_INTERNAL_H
#define RELAY_KEYS_INTERNAL_H

#include "internal.h"

/*
 * Re-reads, off the request path, the cached keys that requests found past their TTL (at most a
 * batch per call): an unchanged record is fresh again, a changed hash or a deleted key leaves the
 * cache, a store error leaves the entry stale (served until key_cache_stale_ms, then the request
 * path re-reads it). Called by the maintenance thread; thread-safe.
 */
void relay_keys_refresh_stale(relay_t *r);

#endif
