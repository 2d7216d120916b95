/* forward_internal: the forwarder's lifecycle hooks and pieces the proxy pipeline shares. */
#ifndef RELAY_FORWARD_INTERNAL_H
#define RELAY_FORWARD_INTERNAL_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdint.h>

#include "buf.h"
#include "internal.h"
#include "relay/forward.h"

/* ---- the I/O thread (forward_loop.c) ---- */
typedef struct relay_loop relay_loop_t;
typedef struct relay_xfer relay_xfer_t;

/*
 * One upstream attempt, shared by the worker that forwards the request and the I/O thread that
 * runs it. The worker owns it (on its stack); between relay_loop_submit and seeing done it may
 * touch only what mu guards. The callbacks run on the I/O thread.
 */
struct relay_xfer {
    CURL *h;
    void *ud;                            /* for the callbacks */
    int (*check)(void *ud, int64_t now); /* nonzero: abort the transfer (deadlines) */
    void (*on_client_gone)(void *ud);    /* a direct write failed */
    pthread_mutex_t mu;
    /* The worker sleeps on this futex word (not a condition variable): a notifier changes state
     * under mu, bumps it and wakes only after unlocking, so the worker never wakes straight into
     * a mutex its waker still holds (forward_loop.c, "Why a futex"). The word is the worker
     * thread's own, so it outlives the transfer that a last wake may arrive after. */
    uint32_t *gen;
    /* under mu */
    int waiting; /* the worker is asleep on gen (or about to be) */
    int done;
    CURLcode cc;
    int head_ready, head_taken; /* the I/O thread has a head for the worker; the worker took it */
    relay_buf_t pending;        /* body bytes not yet written (framed when direct) */
    int direct;                 /* the I/O thread writes the body to client_fd itself */
    int client_fd, chunked;
    int paused, unpause_queued;
    /* the I/O thread's own */
    relay_loop_t *loop;
    int client_watched;
    struct {
        int kind, fd;
        relay_xfer_t *x;
    } client_tag;
    relay_xfer_t *next, *prev, *qnext;
};

#define RELAY_XFER_PAUSE 1

int relay_loop_start(relay_loop_t **out, long max_idle_conns);
/* Ends every transfer still running (their workers see done with an error) and the thread. */
void relay_loop_stop(relay_loop_t *l);
void relay_xfer_init(relay_xfer_t *x);
void relay_xfer_free(relay_xfer_t *x);
/* Worker, with x->mu held: sleeps until the I/O thread changes something (or spuriously); mu is
 * held again on return. */
void relay_xfer_wait(relay_xfer_t *x);
/* Before each attempt (worker, not while submitted). */
void relay_xfer_reset(relay_xfer_t *x);
/* Worker: hands x (with x->h set up) to the I/O thread. -1 when the loop is stopping. */
int relay_loop_submit(relay_loop_t *l, relay_xfer_t *x);
/* Worker: the body it took from pending is written: let a paused transfer go on. */
void relay_loop_request_unpause(relay_loop_t *l, relay_xfer_t *x);
/* I/O thread, from curl's callbacks: the head is ready for the worker. */
void relay_xfer_head(relay_xfer_t *x);
/* I/O thread: would len more bytes overflow what is held for the client? Then the transfer is
 * marked paused and the caller returns CURL_WRITEFUNC_PAUSE (RELAY_XFER_PAUSE), before using
 * the bytes: curl hands them again on resume. */
int relay_xfer_would_pause(relay_xfer_t *x, size_t len);
/* I/O thread: body bytes for the client, written directly or queued for the worker. */
void relay_xfer_body(relay_xfer_t *x, const char *data, size_t len);

int relay_forward_start(relay_t *r, relay_error_t *err);
void relay_forward_stop(relay_t *r);
/* Writes Anthropic error JSON (or, once a stream's head is out, an SSE error event) to sink. */
void relay_forward_write_error(const relay_sink_t *sink, int head_sent, int is_sse, int code,
                               const char *msg, int *client_gone);
void relay_forward_count_retry(relay_t *r);
/* Does a JSON body say "stream": true (a quick scan, not a parse)? */
int relay_forward_body_asks_stream(const char *body, size_t len);
/* Is req a call the upstream bills (a Messages or legacy Complete request)? */
int relay_forward_is_billable(const relay_http_request_t *req);
/* Upstream retries made since start. */
uint64_t relay_forward_retries(relay_t *r);

#endif
