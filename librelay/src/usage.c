/* usage: request cost from the price table, and the batched background writer of usage rows. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "relay/pricing.h"
#include "relay/usage.h"
#include "spool_internal.h"
#include "usage_internal.h"
#include "util.h"

double relay_usage_cost(relay_t *r, const char *model, int64_t input, int64_t output,
                        int64_t cache_5m, int64_t cache_1h, int64_t cache_read, int *known)
{
    relay_price_t p;
    int k = relay_pricing_lookup(r, model, &p);
    if (known)
        *known = k;
    return relay_pricing_cost(&p, input, output, cache_5m, cache_1h, cache_read);
}

/* ---- the writer ---- */
struct relay_usage_state {
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* rows arrived or stop requested */
    pthread_cond_t written; /* a batch committed */
    pthread_t thread;
    int running, stopping;
    relay_usage_row_t *ring; /* circular queue */
    size_t cap, head, count, max;
    size_t batch_max;                 /* rows per transaction */
    uint64_t seq_queued, seq_written; /* row sequence numbers, for flush */
    uint64_t flush_target;            /* a flush waits for rows up to this one: no lingering */
    int64_t first_queued_ms;          /* when the oldest unwritten row arrived */
    int64_t taken_ms;                 /* when the batch being written was taken (see commit) */
    relay_usage_stats_t stats;
    relay_spool_t *spool; /* NULL: usage.spool off (or unavailable) */
    int spool_trouble;    /* an append failed: logged once until one succeeds again */
    int replaying;        /* at start: the queue may grow past max to take the spool back */
};

static int ring_grow(struct relay_usage_state *u)
{
    size_t ncap = u->cap ? u->cap * 2 : 256;
    if (ncap > u->max && !u->replaying)
        ncap = u->max;
    if (ncap <= u->cap)
        return RELAY_ERR_TOO_LARGE;
    relay_usage_row_t *n = malloc(ncap * sizeof *n);
    if (!n)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; i < u->count; i++)
        n[i] = u->ring[(u->head + i) % u->cap];
    free(u->ring);
    u->ring = n;
    u->cap = ncap;
    u->head = 0;
    return 0;
}

/* Lock held: the row at the back of the queue; its sequence number. */
static uint64_t enqueue(struct relay_usage_state *u, const relay_usage_row_t *row)
{
    u->ring[(u->head + u->count) % u->cap] = *row;
    if (u->count++ == 0)
        u->first_queued_ms = relay_mono_ms();
    u->stats.queued++;
    return ++u->seq_queued;
}

/* Logs a failed spool append once, until one succeeds again. Lock not held. */
static void spool_report(relay_t *r, int rc, int err_no, int first)
{
    if (!first)
        return;
    if (rc == RELAY_ERR_TOO_LARGE)
        relay_log(r, RELAY_LOG_ERROR, "usage.spool_full", NULL,
                  "usage spool full (usage.spool_max_bytes %zu): rows are kept in memory only "
                  "until the database stores them; a crash now would lose them",
                  r->opts.usage_spool_max_bytes);
    else
        relay_log(r, RELAY_LOG_ERROR, "usage.spool_write_failed", NULL,
                  "cannot append to the usage spool (%s): rows are kept in memory only until "
                  "the database stores them; a crash now would lose them",
                  err_no ? strerror(err_no) : relay_strerror(rc));
}

int relay_usage_new_row_uid(int64_t ms, char out[33])
{
    uint8_t uid[16]; /* big-endian ms first, so ids sort by time (usage_internal.h) */
    for (int i = 0; i < 6; i++)
        uid[i] = (uint8_t)((uint64_t)ms >> (40 - 8 * i));
    int rc = relay_random_id_bytes(uid + 6, sizeof uid - 6);
    if (rc)
        return rc;
    relay_hex(uid, sizeof uid, out);
    return 0;
}

int relay_usage_record(relay_t *r, const relay_usage_row_t *row_in)
{
    struct relay_usage_state *u = r->usage;
    if (!u)
        return RELAY_ERR_UNAVAILABLE;
    relay_usage_row_t row = *row_in;
    if (!row.row_uid[0]) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        relay_usage_new_row_uid((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, row.row_uid);
    }
    /* Encoded before the lock every request thread takes to queue its row (callgrind: ~19 k
     * instructions a row); only the append, which must follow the sequence, stays under it. */
    size_t line_len = 0;
    char *line = u->spool ? relay_spool_encode(&row, &line_len) : NULL;
    pthread_mutex_lock(&u->mu);
    if (u->count == u->cap && ring_grow(u) != 0) {
        /* Full (the database has been away for long): the row is lost, and the loss counted. The
         * queued rows are kept because a batch of them may be in flight. */
        u->stats.dropped++;
        pthread_mutex_unlock(&u->mu);
        relay_spool_line_free(line, line_len);
        relay_log(r, RELAY_LOG_ERROR, "usage.row_dropped", NULL,
                  "usage queue full (%zu rows); row dropped", u->max);
        return RELAY_ERR_OVERLOADED;
    }
    /* On disk (the page cache: a killed process loses nothing) before it is queued; in sequence
     * order, so the spool knows which rows each of its files holds. */
    int srs = 0, err_no = 0, first = 0;
    if (u->spool)
        srs = line ? relay_spool_append_line(u->spool, line, line_len, u->seq_queued + 1, &err_no)
                   : RELAY_ERR_NOMEM;
    if (srs) {
        first = !u->spool_trouble;
        u->spool_trouble = 1;
    } else {
        u->spool_trouble = 0;
    }
    enqueue(u, &row);
    /* The writer gathers rows for up to flush_ms; it needs waking only for the first row of a
     * batch and for a full one, not for every row (a futex wake per request otherwise). */
    if (u->count == 1 || u->count == u->batch_max)
        pthread_cond_signal(&u->wake);
    pthread_mutex_unlock(&u->mu);
    relay_spool_line_free(line, line_len);
    if (srs)
        spool_report(r, srs, err_no, first);
    return 0;
}

int relay_usage_flush(relay_t *r, int timeout_ms)
{
    struct relay_usage_state *u = r->usage;
    if (!u)
        return 0;
    struct timespec dl;
    relay_deadline_in(&dl, timeout_ms);
    pthread_mutex_lock(&u->mu);
    uint64_t target = u->seq_queued;
    int rc = 0;
    if (target > u->flush_target)
        u->flush_target = target;
    pthread_cond_signal(&u->wake);
    while (u->seq_written < target && rc == 0)
        rc = pthread_cond_timedwait(&u->written, &u->mu, &dl);
    int ok = u->seq_written >= target;
    pthread_mutex_unlock(&u->mu);
    return ok ? 0 : RELAY_ERR_STORE;
}

void relay_usage_get_stats(relay_t *r, relay_usage_stats_t *out)
{
    struct relay_usage_state *u = r->usage;
    memset(out, 0, sizeof *out);
    if (!u)
        return;
    pthread_mutex_lock(&u->mu);
    *out = u->stats;
    out->depth = u->count;
    pthread_mutex_unlock(&u->mu);
    if (u->spool) {
        relay_spool_stats_t ss;
        relay_spool_get_stats(u->spool, &ss);
        out->spool_enabled = 1;
        out->spool_bytes = ss.bytes;
        out->spool_full = ss.full;
        out->spool_errors = ss.errors;
        out->spool_replayed = ss.replayed;
        out->spool_torn = ss.torn;
    }
}

/* Copies up to max rows from the front of the queue into batch (they stay queued until written). */
static size_t take_batch(struct relay_usage_state *u, relay_usage_row_t *batch, size_t max)
{
    size_t n = u->count < max ? u->count : max;
    u->taken_ms = n == u->count ? relay_mono_ms() : 0; /* 0: rows older than this batch stay */
    for (size_t i = 0; i < n; i++)
        batch[i] = u->ring[(u->head + i) % u->cap];
    return n;
}

static void commit_batch(struct relay_usage_state *u, size_t n)
{
    u->head = u->cap ? (u->head + n) % u->cap : 0;
    u->count -= n;
    u->seq_written += n;
    u->stats.written += n;
    u->stats.batches++;
    /* Rows left arrived while this batch was written (or did not fit in it, taken_ms 0): they
     * linger from the moment the batch was taken, so a row still waits at most flush_ms. Setting
     * 0 here made the writer commit again as soon as it finished, at any rate: strace at c=1
     * saw ~44 commits (and spool fdatasyncs) a second instead of ~5, each a few rows. */
    u->first_queued_ms = u->count ? u->taken_ms : 0;
    pthread_cond_broadcast(&u->written);
}

/*
 * The store refused the batch's content (not the database being away): retrying the same batch
 * would fail forever, so write the rows one by one and count the ones it refuses as dropped.
 */
static int write_one_by_one(relay_t *r, const relay_usage_row_t *batch, size_t n, size_t *done)
{
    for (size_t i = 0; i < n; i++, *done = i) {
        int rc = relay_store_usage_write(r->store, &batch[i], 1);
        if (rc == RELAY_ERR_CONFLICT) {
            /* Its row_uid is stored: a row replayed from the spool that was written before the
             * crash. Counted once already; skipped. */
            pthread_mutex_lock(&r->usage->mu);
            r->usage->stats.duplicates++;
            pthread_mutex_unlock(&r->usage->mu);
        } else if (rc == RELAY_ERR_INVALID) {
            pthread_mutex_lock(&r->usage->mu);
            r->usage->stats.dropped++;
            pthread_mutex_unlock(&r->usage->mu);
            relay_log(r, RELAY_LOG_ERROR, "usage.row_rejected", NULL,
                      "the database refused a usage row of key %s (status %d); dropped",
                      batch[i].api_key_id, batch[i].response_status);
        } else if (rc != 0) {
            return rc; /* the database went away mid-way: rows [done, n) are retried */
        }
    }
    *done = n;
    return 0;
}

/*
 * Rows gathered into one transaction cost a fraction of one each: at low rates every request
 * was its own commit, and the writer was 45% of the relay's CPU at one client (perf: WAL frames
 * and fsync bookkeeping per commit). Waits (returns 1) while the batch is neither full, nor
 * flush_ms old, nor wanted by a flush or a stop.
 */
static int linger(relay_t *r, struct relay_usage_state *u)
{
    int flush_ms = r->opts.usage_flush_ms > 0 ? r->opts.usage_flush_ms : 200;
    int64_t due = u->first_queued_ms + flush_ms, now = relay_mono_ms();
    if (u->count >= u->batch_max || u->stopping || u->flush_target > u->seq_written || now >= due)
        return 0;
    struct timespec dl;
    relay_deadline_in(&dl, (int)(due - now));
    pthread_cond_timedwait(&u->wake, &u->mu, &dl);
    return 1;
}

static void *writer_main(void *arg)
{
    relay_t *r = arg;
    struct relay_usage_state *u = r->usage;
    size_t bmax = u->batch_max;
    relay_usage_row_t *batch = malloc(bmax * sizeof *batch);
    int backoff_ms = 100;
    pthread_mutex_lock(&u->mu);
    while (batch) {
        if (u->count == 0) {
            if (u->stopping)
                break;
            struct timespec dl;
            relay_deadline_in(&dl, r->opts.usage_flush_ms > 0 ? r->opts.usage_flush_ms : 200);
            pthread_cond_timedwait(&u->wake, &u->mu, &dl);
            continue;
        }
        if (linger(r, u))
            continue;
        size_t n = take_batch(u, batch, bmax);
        pthread_mutex_unlock(&u->mu);
        size_t done = 0;
        if (u->spool && relay_spool_sync(u->spool) != 0)
            relay_log(r, RELAY_LOG_ERROR, "usage.spool_sync_failed", NULL,
                      "fdatasync of the usage spool failed: a power loss now could lose rows");
        relay_error_t e = {0};
        int rc = relay_store_usage_write_err(r->store, batch, n, &e);
        if (rc == RELAY_ERR_INVALID || rc == RELAY_ERR_CONFLICT)
            rc = write_one_by_one(r, batch, n, &done);
        relay_db_note_write(r, rc != RELAY_ERR_STORE, e.message);
        pthread_mutex_lock(&u->mu);
        if (rc != 0 && done)
            commit_batch(u, done); /* never write those again */
        if (rc == 0)
            commit_batch(u, n);
        if (u->spool && (rc == 0 || done)) {
            /* The spool drops what is stored, outside the queue's lock: a rotation flushes a
             * file to disk, and every request thread queues its row under that lock. The spool
             * itself never drops a row appended after seq (it checks under its own lock). */
            uint64_t seq = u->seq_written;
            int all = u->count == 0;
            pthread_mutex_unlock(&u->mu);
            relay_spool_written(u->spool, seq, all);
            pthread_mutex_lock(&u->mu);
        }
        if (rc == 0) {
            backoff_ms = 100;
            continue;
        }
        u->stats.failed_batches++;
        /* The log callback does I/O: never under the lock every request thread needs. */
        pthread_mutex_unlock(&u->mu);
        relay_log(r, RELAY_LOG_WARN, "usage.write_failed", NULL,
                  "writing %zu usage rows failed (%s); retrying in %d ms, rows kept", n,
                  e.message[0] ? e.message : relay_strerror(rc), backoff_ms);
        pthread_mutex_lock(&u->mu);
        /* On stop, keep trying for a bounded time so rows are not lost to a brief outage. */
        if (u->stopping && backoff_ms >= 3200)
            break;
        struct timespec dl;
        relay_deadline_in(&dl, backoff_ms);
        pthread_cond_timedwait(&u->wake, &u->mu, &dl);
        backoff_ms = backoff_ms < 2500 ? backoff_ms * 2 : 5000;
    }
    size_t left = u->count;
    pthread_mutex_unlock(&u->mu);
    if (left)
        relay_log(r, RELAY_LOG_ERROR, "usage.unwritten_at_stop", NULL,
                  "%zu usage rows could not be written", left);
    free(batch);
    return NULL;
}

/* relay_spool_replay's callback: a row of the last run back into the queue. Lock held. */
static uint64_t requeue(void *ud, const relay_usage_row_t *row)
{
    struct relay_usage_state *u = ud;
    if (u->count == u->cap && ring_grow(u) != 0)
        return 0;
    return enqueue(u, row);
}

/* Opens the spool and queues what a previous run left in it. A spool that cannot be opened is
 * logged, not fatal: the relay then runs as with usage.spool off. */
static void spool_start(relay_t *r, struct relay_usage_state *u)
{
    const char *dir = r->opts.data_dir && *r->opts.data_dir ? r->opts.data_dir : "./data";
    relay_error_t e = {0};
    if (!r->opts.usage_spool)
        return;
    if (relay_spool_open(&u->spool, dir, r->opts.usage_spool_max_bytes, &e) != 0) {
        relay_log(r, RELAY_LOG_WARN, "usage.spool_unavailable", NULL,
                  "usage spool off: %s (a crash would lose up to usage.flush_ms of rows)",
                  e.message);
        return;
    }
    pthread_mutex_lock(&u->mu);
    u->replaying = 1;
    size_t n = relay_spool_replay(u->spool, requeue, u);
    u->replaying = 0;
    pthread_mutex_unlock(&u->mu);
    if (n)
        relay_log(r, RELAY_LOG_WARN, "usage.spool_replayed", NULL,
                  "%zu usage rows of the last run were not known to be stored; queued again "
                  "(rows the database already has are skipped by their row_uid)",
                  n);
}

int relay_usage_start(relay_t *r, relay_error_t *err)
{
    struct relay_usage_state *u = calloc(1, sizeof *u);
    if (!u)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&u->mu, NULL);
    pthread_cond_init(&u->wake, NULL);
    pthread_cond_init(&u->written, NULL);
    u->max = r->opts.usage_queue_max ? r->opts.usage_queue_max : 100000;
    u->batch_max = r->opts.usage_batch_max > 0 ? (size_t)r->opts.usage_batch_max : 500;
    r->usage = u;
    spool_start(r, u);
    if (pthread_create(&u->thread, NULL, writer_main, r) != 0) {
        relay_usage_stop(r);
        return relay_error_set(err, RELAY_ERR_INTERNAL, "cannot start the usage writer thread");
    }
    u->running = 1;
    return 0;
}

void relay_usage_stop(relay_t *r)
{
    struct relay_usage_state *u = r->usage;
    if (!u)
        return;
    if (u->running) {
        pthread_mutex_lock(&u->mu);
        u->stopping = 1;
        pthread_cond_signal(&u->wake);
        pthread_mutex_unlock(&u->mu);
        pthread_join(u->thread, NULL);
    }
    relay_spool_close(u->spool); /* rows still unwritten stay in it for the next start */
    pthread_mutex_destroy(&u->mu);
    pthread_cond_destroy(&u->wake);
    pthread_cond_destroy(&u->written);
    free(u->ring);
    free(u);
    r->usage = NULL;
}
