/* upstreams_internal: what the forwarder, the metrics and the admin REST take from the pool. */
#ifndef RELAY_UPSTREAMS_INTERNAL_H
#define RELAY_UPSTREAMS_INTERNAL_H

#include <stdint.h>

#include "internal.h"
#include "relay/upstreams.h"

int relay_upstreams_start(relay_t *r, relay_error_t *err);
void relay_upstreams_stop(relay_t *r);

typedef struct relay_upstream relay_upstream_t;

/* Attempts one request may make at most (its tried list). */
#define RELAY_UPSTREAM_MAX_TRIED 32

/* What a request asks of the pool. */
typedef struct relay_upstream_query {
    const char *model;   /* NULL or "": any upstream */
    const char *session; /* NULL or "": no stickiness */
    const char *group;   /* NULL or "": the upstreams without a group */
    relay_upstream_t *tried[RELAY_UPSTREAM_MAX_TRIED]; /* failed this request already */
    int n_tried;
} relay_upstream_query_t;

/*
 * An upstream taken for one attempt (its in-flight count raised until relay_upstreams_done).
 * The definition is copied, so an admin's PATCH during the attempt changes nothing of it.
 */
typedef struct relay_upstream_lease {
    relay_upstream_t *u;
    relay_upstream_def_t def;
    int sticky; /* chosen because the session was already on it */
} relay_upstream_lease_t;

/*
 * Takes an upstream for q: 0 and *out filled; RELAY_ERR_OVERLOADED when every upstream that
 * could serve q is cooling, broken, disabled or full (*retry_at_ms: the earliest cooldown end,
 * Unix ms, 0 when none is cooling); RELAY_ERR_UNAVAILABLE when no upstream is configured at all.
 * again: may retake an upstream of q->tried that is cooling (a pool without another choice
 * retries the same upstream after its backoff, as the relay always did).
 */
int relay_upstreams_take(relay_t *r, relay_upstream_query_t *q, int again,
                         relay_upstream_lease_t *out, int64_t *retry_at_ms);

/* How an attempt ended, for health, cooldown and metrics. */
typedef enum relay_upstream_outcome {
    RELAY_UPSTREAM_OK = 0,     /* an answer reached the client (any status not below) */
    RELAY_UPSTREAM_CONNECT,    /* no connection / transport error before the answer */
    RELAY_UPSTREAM_TIMEOUT,    /* no first byte in time */
    RELAY_UPSTREAM_OVERLOADED, /* 429 or 529: cools down */
    RELAY_UPSTREAM_SERVER,     /* 500, 502, 503, 504 */
    RELAY_UPSTREAM_AUTH,       /* 401 or 403: broken */
} relay_upstream_outcome_t;

typedef struct relay_upstream_report {
    relay_upstream_outcome_t outcome;
    int status;          /* the HTTP status, 0 when none */
    int retry_after_s;   /* -1: none */
    double rl_remaining; /* smallest remaining/limit of anthropic-ratelimit-*, -1: none */
    const char *error;   /* a short reason for last_error (never a secret), or NULL */
    int failover;        /* the request moves on to another upstream */
} relay_upstream_report_t;

/* Gives the lease back with how the attempt went; the session is bound to it on success. */
void relay_upstreams_done(relay_t *r, relay_upstream_query_t *q, relay_upstream_lease_t *l,
                          const relay_upstream_report_t *rep);

/* Gives the lease back unused (nothing is counted). */
void relay_upstreams_release(relay_t *r, relay_upstream_lease_t *l);

/* Is there an upstream other than q's tried ones that could take q now? (I/O thread: decides
 * whether a long retry-after is worth a failover.) */
int relay_upstreams_has_other(relay_t *r, const relay_upstream_query_t *q,
                              const relay_upstream_t *current);

/* The number of upstreams in the pool (deleted ones not counted). */
size_t relay_upstreams_count(relay_t *r);

/* The session a Messages request belongs to: x-claude-code-session-id, else session_id of the
 * JSON string metadata.user_id in body (NULL). "" when none. */
void relay_upstreams_session_of(const relay_http_request_t *req, const char *body_session,
                                char *out, size_t cap);

/* Metric counters of one upstream, for relay_metrics_scrape. */
typedef struct relay_upstream_counts {
    char name[64];
    int up, in_flight;
    uint64_t cooldowns;
    struct {
        char status[16];
        uint64_t n;
    } by_status[24];
    int n_status;
    uint64_t failovers[6]; /* by outcome (RELAY_UPSTREAM_*) */
} relay_upstream_counts_t;

/* Free *out with free(). */
int relay_upstreams_counts(relay_t *r, relay_upstream_counts_t **out, size_t *n);
/* The label of a failover reason (an outcome): "connect", "timeout", "overloaded", ... */
const char *relay_upstreams_reason_label(int outcome);

/* Tests replace the wall clock (Unix ms). NULL restores. */
void relay_upstreams_set_clock_for_tests(relay_t *r, int64_t (*now_ms)(void *ud), void *ud);

/* ---- database upstreams (upstreams_admin.c) ---- */
/* Loads the stored upstreams into the pool (start, and every maintenance tick: other instances
 * may have changed them). */
int relay_upstreams_sync(relay_t *r, relay_error_t *err);

/* Adds or replaces (by id) a pool entry; from_db marks REST upstreams. */
int relay_upstreams_put(relay_t *r, const char *id, const relay_upstream_def_t *d, int from_db,
                        int disabled);
/* 1 when the stored upstreams were loaded before (then marks them loaded). */
int relay_upstreams_mark_synced(relay_t *r);
/* 0 when no upstream but id has the name, else RELAY_ERR_CONFLICT. */
int relay_upstreams_name_free(relay_t *r, const char *name, const char *id);
/* Marks the entry deleted (kept in memory until relay_free: a lease may still point at it). */
int relay_upstreams_remove(relay_t *r, const char *id);
/* disabled: 1 / 0; clear_broken: a test passed or an admin enabled it. */
int relay_upstreams_set_disabled(relay_t *r, const char *id, int disabled);
int relay_upstreams_clear_broken(relay_t *r, const char *id);
/* The definition of id into *d (the key included: for the test call only). */
int relay_upstreams_get_def(relay_t *r, const char *id, relay_upstream_def_t *d, int *from_db);

#endif
