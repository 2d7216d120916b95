/* usage: accounting of each request (cost, billed tokens) and the batched usage-log writer. */
#ifndef RELAY_USAGE_H
#define RELAY_USAGE_H

#include <stdint.h>

#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The writer: rows are queued in memory and written by one background thread in batches (one
 * transaction per batch, key counters and usage_daily in the same transaction), so the request
 * path never waits on the database. With usage_spool on (the default) each row is first appended
 * to <data_dir>/usage.spool and fsynced before its batch is written; rows a crash left there are
 * queued again at the next start (a row's row_uid makes a second write of it a no-op). On database
 * errors the batch is retried with backoff while rows stay queued (bounded by
 * relay_options_t.usage_queue_max; past it the oldest rows are dropped and counted). relay_free
 * flushes what is queued before it returns. Thread safety: every call may run concurrently.
 */

/* Queues a copy of row. Never blocks on the database. */
RELAY_API int relay_usage_record(relay_t *r, const relay_usage_row_t *row);
/* Waits until every row queued before the call is written, or timeout_ms passes (RELAY_ERR_STORE).
 */
RELAY_API int relay_usage_flush(relay_t *r, int timeout_ms);

typedef struct relay_usage_stats {
    uint64_t queued;         /* rows accepted */
    uint64_t written;        /* rows committed */
    uint64_t batches;        /* transactions that committed rows (one per usage.flush_ms at most,
                              * unless a batch fills up or a flush asks) */
    uint64_t dropped;        /* rows lost because the queue was full (must stay 0) */
    uint64_t failed_batches; /* transactions that failed and were retried */
    uint64_t depth;          /* rows waiting now */
    uint64_t duplicates;     /* rows the database had already (by row_uid): spool replays */
    /* the spool (usage.spool): rows on disk until stored, replayed at start */
    int spool_enabled;
    uint64_t spool_bytes;    /* now */
    uint64_t spool_full;     /* appends refused at usage.spool_max_bytes */
    uint64_t spool_errors;   /* appends or fsyncs that failed (disk full, I/O error) */
    uint64_t spool_replayed; /* rows read back at start */
    uint64_t spool_torn;     /* partial lines found at start (a crash mid-append), skipped */
} relay_usage_stats_t;
RELAY_API void relay_usage_get_stats(relay_t *r, relay_usage_stats_t *out);

/*
 * Cost in USD of one request from the price table in force (relay/pricing.h), matched by the
 * longest model-name prefix. *known is set to 0 when no price matched: the cost is then at the
 * default price (pricing.default, by default the dearest entry), never 0. cache_5m/cache_1h split
 * the cache writes; when the split is unknown pass all of them as cache_5m.
 */
RELAY_API double relay_usage_cost(relay_t *r, const char *model, int64_t input, int64_t output,
                                  int64_t cache_5m, int64_t cache_1h, int64_t cache_read,
                                  int *known);

#ifdef __cplusplus
}
#endif
#endif
