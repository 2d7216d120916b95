/* spool_internal: the usage spool, a file of the rows the database has not stored yet. */
#ifndef RELAY_SPOOL_INTERNAL_H
#define RELAY_SPOOL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"
#include "relay/store.h"

/*
 * Every usage row is appended (one JSON line) to <data_dir>/usage.spool before the writer
 * queues it, so a crash of the process (SIGKILL, OOM) loses none: at the next start the rows are
 * queued again and written; their row_uid makes a row the database has already stored a no-op.
 * The writer fsyncs the file before each batch it writes (so rows are on disk before the database
 * acknowledges them), and empties it whenever every row in it is stored. While the database is
 * away the file grows: past a quarter of max_bytes (at most 4 MiB) it is sealed as usage.spool.1,
 * deleted once all its rows are stored, and a new file is started; the two together never exceed
 * max_bytes (an append past it fails with RELAY_ERR_TOO_LARGE: the row is then only in memory).
 * A failed or short write (disk full) is cut back off, so the file never holds half a row.
 * The spool holds an exclusive flock on usage.spool.lock: a second relay on the same data
 * directory (e.g. `relay-server keys` while serving) cannot open it (RELAY_ERR_CONFLICT).
 * Thread safety: every call may run concurrently; appends are serialised by the spool's lock.
 */
typedef struct relay_spool relay_spool_t;

typedef struct relay_spool_stats {
    uint64_t appended; /* rows written to the file */
    uint64_t full;     /* appends refused: max_bytes reached */
    uint64_t errors;   /* appends or fsyncs that failed (disk full, I/O error) */
    uint64_t replayed; /* rows read back at start */
    uint64_t torn;     /* lines at start that were not a whole row (skipped) */
    uint64_t bytes;    /* now, both files */
} relay_spool_stats_t;

int relay_spool_open(relay_spool_t **out, const char *dir, size_t max_bytes, relay_error_t *err);
/* Closes the files (their content stays for the next start) and frees sp. NULL is a no-op. */
void relay_spool_close(relay_spool_t *sp);

/*
 * Reads back every whole row of a previous run, oldest first, and hands each to fn, which queues
 * it and returns its sequence number in the writer's queue (0: not queued). Call once, before
 * the first append. Returns the number of rows handed over.
 */
size_t relay_spool_replay(relay_spool_t *sp, uint64_t (*fn)(void *ud, const relay_usage_row_t *row),
                          void *ud);
/* The row's spool line (newline included) into *len bytes, for relay_spool_append_line; free it
 * with relay_spool_line_free. NULL when out of memory. Any thread, no lock: callers encode before
 * taking the lock that orders appends. */
char *relay_spool_encode(const relay_usage_row_t *row, size_t *len);
/* Appends an encoded line, queued as sequence number seq: relay_spool_append without encoding. */
int relay_spool_append_line(relay_spool_t *sp, char *line, size_t len, uint64_t seq,
                            int *errno_out);
/* Wipes (it holds the row's client IP and error text) and frees a line; NULL is fine. */
void relay_spool_line_free(char *line, size_t len);
/* Appends row, queued as sequence number seq. 0, RELAY_ERR_TOO_LARGE (full) or RELAY_ERR_IO
 * (errno_out says why; nothing of the row stays in the file). */
int relay_spool_append(relay_spool_t *sp, const relay_usage_row_t *row, uint64_t seq,
                       int *errno_out);
/* fdatasync of what was appended since the last call. 0 or RELAY_ERR_IO. */
int relay_spool_sync(relay_spool_t *sp);
/* Every row up to sequence number seq_written is stored; all: every row queued then was (a row
 * appended later, with a higher sequence number, is never dropped). A rotation's disk flush runs
 * after the spool's lock is released; call it without holding the usage queue's lock. */
void relay_spool_written(relay_spool_t *sp, uint64_t seq_written, int all);
void relay_spool_get_stats(relay_spool_t *sp, relay_spool_stats_t *out);

#endif
