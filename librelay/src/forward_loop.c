/* forward_loop: one I/O thread that runs every upstream transfer (curl_multi_socket_action over
 * epoll) and, where the host allows it, writes a stream's body straight to the client socket. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "forward_internal.h"
#include "util.h"

/*
 * Why one thread: with one blocking curl_easy_perform per worker, every SSE event woke that
 * worker's poll(), and on this project's machine a wake-up is the dearest thing there is (perf at
 * 1,000 streams: half the relay's CPU in poll and the scheduler, ~50 µs of CPU per event). Here
 * one epoll_wait hands over every ready socket at once, curl runs them without any lock (the multi
 * handle belongs to this thread), and a stream's events go to the client with one send each,
 * without waking the worker, which sleeps until its transfer is done.
 */

#define SWEEP_MS    250                /* deadline checks of idle transfers */
#define PENDING_CAP (4u * 1024 * 1024) /* body bytes held for a slow client before pausing */
/* The hard bound: a held JSON answer that outgrew its 16 MiB hold is handed over in one piece,
 * on top of what a paused transfer may already hold. */
#define PENDING_HARD_CAP (PENDING_CAP + (16u << 20) + 65536)

enum { EV_WAKE = 1, EV_CURL, EV_CLIENT };

typedef struct ev_tag {
    int kind;
    int fd;
    relay_xfer_t *x; /* EV_CLIENT */
} ev_tag_t;

struct relay_loop {
    pthread_t thread;
    int started;
    int ep, wake_fd;
    ev_tag_t wake_tag;
    CURLM *multi;
    int64_t timer_due; /* curl's next timeout (monotonic ms), -1: none */
    relay_xfer_t *active;
    pthread_mutex_t mu;    /* guards the queues and stopping */
    relay_xfer_t *queue;   /* submitted, not yet added */
    relay_xfer_t *unpause; /* drained by their workers: resume */
    int stopping;
    ev_tag_t **dead; /* tags of sockets curl closed: freed after the epoll batch naming them */
    size_t n_dead, cap_dead;
};

/*
 * Why a futex: with a condition variable signalled under x->mu, the worker woke, found the mutex
 * still held by the I/O thread and slept again on it, and the I/O thread's unlock had to wake it
 * a second time: three futex calls and two extra context switches per request (strace of one
 * non-streaming request; perf at c=32: a quarter of the relay's samples under futex_wake, most
 * from finish() and pump()). Now the notifier changes the state under mu, bumps the worker's
 * word, unlocks, and only then wakes the worker, and only when it is asleep. The last wake of a
 * transfer may come after the worker has seen done and freed the transfer: the word is therefore
 * the worker thread's own (thread-local, alive as long as the thread), and such a late wake is
 * a spurious wake-up of its next wait, which the loop around relay_xfer_wait tolerates. The data
 * itself still passes under mu.
 */
static __thread uint32_t worker_word;

static void futex_wake_one(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Under mu: marks a change for the worker; returns whether it must be woken (after unlocking). */
static int xfer_changed(relay_xfer_t *x)
{
    __atomic_add_fetch(x->gen, 1, __ATOMIC_SEQ_CST);
    return x->waiting;
}

/* ---- the worker's side of a transfer ---- */
void relay_xfer_init(relay_xfer_t *x)
{
    memset(x, 0, sizeof *x);
    pthread_mutex_init(&x->mu, NULL);
    x->gen = &worker_word; /* relay_xfer_init runs on the worker */
    relay_buf_init(&x->pending, PENDING_HARD_CAP);
    x->client_fd = -1;
}

void relay_xfer_free(relay_xfer_t *x)
{
    relay_buf_free(&x->pending);
    pthread_mutex_destroy(&x->mu);
}

void relay_xfer_wait(relay_xfer_t *x)
{
    uint32_t g = __atomic_load_n(x->gen, __ATOMIC_SEQ_CST);
    x->waiting = 1;
    pthread_mutex_unlock(&x->mu);
    /* Returns at once if gen moved since it was read (EAGAIN), else at the notifier's wake. */
    syscall(SYS_futex, x->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
    pthread_mutex_lock(&x->mu);
    x->waiting = 0;
}

void relay_xfer_reset(relay_xfer_t *x)
{
    x->done = 0;
    x->cc = CURLE_OK;
    x->head_ready = x->head_taken = 0;
    x->paused = x->unpause_queued = 0;
    relay_buf_reset(&x->pending);
}

static void wake(relay_loop_t *l)
{
    uint64_t one = 1;
    ssize_t n = write(l->wake_fd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is already non-zero, the loop will wake anyway */
}

int relay_loop_submit(relay_loop_t *l, relay_xfer_t *x)
{
    pthread_mutex_lock(&l->mu);
    int stopping = l->stopping;
    if (!stopping) {
        x->qnext = l->queue;
        l->queue = x;
    }
    pthread_mutex_unlock(&l->mu);
    if (stopping)
        return -1;
    wake(l);
    return 0;
}

void relay_loop_request_unpause(relay_loop_t *l, relay_xfer_t *x)
{
    pthread_mutex_lock(&l->mu);
    x->qnext = l->unpause;
    l->unpause = x;
    pthread_mutex_unlock(&l->mu);
    wake(l);
}

/* ---- the loop thread's side ---- */
void relay_xfer_head(relay_xfer_t *x)
{
    pthread_mutex_lock(&x->mu);
    x->head_ready = 1;
    int wake = xfer_changed(x);
    pthread_mutex_unlock(&x->mu);
    if (wake)
        futex_wake_one(x->gen);
}

static void watch_client(relay_loop_t *l, relay_xfer_t *x, int on)
{
    if (on == x->client_watched)
        return;
    x->client_tag.kind = EV_CLIENT;
    x->client_tag.fd = x->client_fd;
    x->client_tag.x = x;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &x->client_tag};
    epoll_ctl(l->ep, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, x->client_fd, &ev);
    x->client_watched = on;
}

/* Sends iov to the client without blocking; what does not fit waits in pending. Returns -1 when
 * the client is gone. Called with x->mu held. */
static int send_direct(relay_loop_t *l, relay_xfer_t *x, struct iovec *iov, int n)
{
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    ssize_t sent = 0;
    if (!x->pending.len) {
        do
            sent = sendmsg(x->client_fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (sent < 0 && errno == EINTR);
        if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (sent < 0)
            sent = 0;
    }
    size_t skip = (size_t)sent;
    for (int i = 0; i < n; i++) {
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        if (relay_buf_append(&x->pending, (char *)iov[i].iov_base + skip, len - skip) != 0)
            return -1; /* beyond the pause cap: cannot happen while pausing works */
        skip = 0;
    }
    if ((size_t)sent < total)
        watch_client(l, x, 1);
    return 0;
}

/* Flushes pending bytes to the client when it can take them (EPOLLOUT). */
static void flush_client(relay_loop_t *l, relay_xfer_t *x)
{
    pthread_mutex_lock(&x->mu);
    while (x->pending.len) {
        ssize_t n =
            send(x->client_fd, x->pending.data, x->pending.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            relay_buf_reset(&x->pending);
            x->on_client_gone(x->ud);
            break;
        }
        relay_buf_consume(&x->pending, (size_t)n);
    }
    int drained = x->pending.len == 0;
    int resume = x->paused && x->pending.len < PENDING_CAP / 2;
    if (resume)
        x->paused = 0;
    pthread_mutex_unlock(&x->mu);
    if (drained)
        watch_client(l, x, 0);
    if (resume)
        curl_easy_pause(x->h, CURLPAUSE_CONT);
}

int relay_xfer_would_pause(relay_xfer_t *x, size_t len)
{
    pthread_mutex_lock(&x->mu);
    int pause = x->pending.len + len > PENDING_CAP;
    if (pause)
        x->paused = 1;
    pthread_mutex_unlock(&x->mu);
    return pause ? RELAY_XFER_PAUSE : 0;
}

void relay_xfer_body(relay_xfer_t *x, const char *data, size_t len)
{
    relay_loop_t *l = x->loop;
    int gone = 0, wake = 0;
    pthread_mutex_lock(&x->mu);
    if (x->direct) {
        char size[24];
        struct iovec iov[3];
        int n = 0;
        if (x->chunked) {
            int sl = snprintf(size, sizeof size, "%zx\r\n", len);
            iov[n++] = (struct iovec){size, (size_t)sl};
        }
        iov[n++] = (struct iovec){(void *)data, len};
        if (x->chunked)
            iov[n++] = (struct iovec){"\r\n", 2};
        if (send_direct(l, x, iov, n) != 0) {
            relay_buf_reset(&x->pending);
            gone = 1;
        }
    } else if (relay_buf_append(&x->pending, data, len) == 0) {
        wake = xfer_changed(x);
    }
    pthread_mutex_unlock(&x->mu);
    if (wake)
        futex_wake_one(x->gen);
    if (gone)
        x->on_client_gone(x->ud);
}

static void finish(relay_loop_t *l, relay_xfer_t *x, CURLcode cc)
{
    curl_multi_remove_handle(l->multi, x->h);
    if (x->prev)
        x->prev->next = x->next;
    else
        l->active = x->next;
    if (x->next)
        x->next->prev = x->prev;
    if (x->client_watched)
        watch_client(l, x, 0);
    pthread_mutex_lock(&l->mu); /* an unpause its worker asked for must not outlive it */
    for (relay_xfer_t **pp = &l->unpause; *pp; pp = &(*pp)->qnext)
        if (*pp == x) {
            *pp = x->qnext;
            break;
        }
    pthread_mutex_unlock(&l->mu);
    /* Last touch: once done is seen the worker owns x (and the client socket) again; the wake
     * after the unlock uses only the word's address (see "Why a futex"). */
    pthread_mutex_lock(&x->mu);
    x->cc = cc;
    x->done = 1;
    int wake = xfer_changed(x);
    uint32_t *word = x->gen;
    pthread_mutex_unlock(&x->mu);
    if (wake)
        futex_wake_one(word);
}

static void add_transfers(relay_loop_t *l)
{
    pthread_mutex_lock(&l->mu);
    relay_xfer_t *q = l->queue, *u = l->unpause;
    l->queue = l->unpause = NULL;
    pthread_mutex_unlock(&l->mu);
    for (relay_xfer_t *x = q, *nx; x; x = nx) {
        nx = x->qnext;
        x->loop = l;
        curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
        x->prev = NULL;
        x->next = l->active;
        if (l->active)
            l->active->prev = x;
        l->active = x;
        CURLMcode mc = curl_multi_add_handle(l->multi, x->h);
        if (mc != CURLM_OK)
            finish(l, x, CURLE_OUT_OF_MEMORY);
    }
    for (relay_xfer_t *x = u, *nx; x; x = nx) {
        nx = x->qnext;
        pthread_mutex_lock(&x->mu);
        int resume = x->paused && !x->done;
        x->paused = 0;
        x->unpause_queued = 0;
        pthread_mutex_unlock(&x->mu);
        if (resume)
            curl_easy_pause(x->h, CURLPAUSE_CONT);
    }
}

static void reap(relay_loop_t *l)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(l->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        relay_xfer_t *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x)
            finish(l, x, m->data.result);
    }
}

/* Deadlines curl cannot see (first byte, idle, drain): an idle transfer runs no callback. */
static void sweep(relay_loop_t *l)
{
    int64_t now = relay_mono_ms();
    for (relay_xfer_t *x = l->active, *nx; x; x = nx) {
        nx = x->next;
        if (x->check(x->ud, now))
            finish(l, x, CURLE_ABORTED_BY_CALLBACK);
    }
}

/* A later event of the same epoll batch may still name t: it is freed after the batch. */
static void bury(relay_loop_t *l, ev_tag_t *t)
{
    t->kind = 0;
    if (l->n_dead == l->cap_dead) {
        size_t nc = l->cap_dead ? l->cap_dead * 2 : 64;
        ev_tag_t **d = realloc(l->dead, nc * sizeof *d);
        if (!d) {
            t->fd = -1; /* leaks one small tag rather than risking a use after free */
            return;
        }
        l->dead = d;
        l->cap_dead = nc;
    }
    l->dead[l->n_dead++] = t;
}

static void free_dead(relay_loop_t *l)
{
    for (size_t i = 0; i < l->n_dead; i++)
        free(l->dead[i]);
    l->n_dead = 0;
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    relay_loop_t *l = userp;
    ev_tag_t *t = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (t) {
            epoll_ctl(l->ep, EPOLL_CTL_DEL, s, NULL);
            curl_multi_assign(l->multi, s, NULL);
            bury(l, t);
        }
        return 0;
    }
    struct epoll_event ev = {0};
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t)
            return -1;
        t->kind = EV_CURL;
        t->fd = s;
        curl_multi_assign(l->multi, s, t);
        ev.data.ptr = t;
        return epoll_ctl(l->ep, EPOLL_CTL_ADD, s, &ev) == 0 ? 0 : -1;
    }
    ev.data.ptr = t;
    (void)e;
    return epoll_ctl(l->ep, EPOLL_CTL_MOD, s, &ev) == 0 ? 0 : -1;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    relay_loop_t *l = userp;
    (void)m;
    l->timer_due = timeout_ms < 0 ? -1 : relay_mono_ms() + timeout_ms;
    return 0;
}

static int next_timeout(relay_loop_t *l, int64_t next_sweep)
{
    int64_t now = relay_mono_ms(), due = next_sweep;
    if (l->timer_due >= 0 && l->timer_due < due)
        due = l->timer_due;
    return due <= now ? 0 : (int)(due - now);
}

static void dispatch(relay_loop_t *l, struct epoll_event *ev)
{
    ev_tag_t *t = ev->data.ptr;
    int running;
    if (t->kind == EV_WAKE) {
        uint64_t n;
        ssize_t r = read(l->wake_fd, &n, sizeof n);
        (void)r;
        add_transfers(l);
    } else if (t->kind == EV_CURL) {
        int mask = (ev->events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                   (ev->events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                   (ev->events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(l->multi, t->fd, mask, &running);
    } else if (t->kind == EV_CLIENT && t->x) {
        flush_client(l, t->x);
    }
}

static void *loop_main(void *arg)
{
    relay_loop_t *l = arg;
    struct epoll_event evs[256];
    int64_t next_sweep = relay_mono_ms() + SWEEP_MS;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        int stopping = l->stopping;
        pthread_mutex_unlock(&l->mu);
        if (stopping)
            break;
        int n = epoll_wait(l->ep, evs, 256, next_timeout(l, next_sweep));
        for (int i = 0; i < n; i++)
            dispatch(l, &evs[i]);
        free_dead(l);
        if (l->timer_due >= 0 && relay_mono_ms() >= l->timer_due) {
            int running;
            l->timer_due = -1;
            curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        reap(l);
        if (relay_mono_ms() >= next_sweep) {
            sweep(l);
            next_sweep = relay_mono_ms() + SWEEP_MS;
        }
    }
    add_transfers(l); /* submitted while stopping: end them too, never hang their workers */
    while (l->active) /* relay_free with forwards still running: end them */
        finish(l, l->active, CURLE_ABORTED_BY_CALLBACK);
    free_dead(l);
    return NULL;
}

int relay_loop_start(relay_loop_t **out, long max_idle_conns)
{
    relay_loop_t *l = calloc(1, sizeof *l);
    if (!l)
        return RELAY_ERR_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    l->timer_due = -1;
    l->ep = l->wake_fd = -1;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->multi = curl_multi_init();
    *out = l;
    if (l->ep < 0 || l->wake_fd < 0 || !l->multi)
        return RELAY_ERR_INTERNAL;
    l->wake_tag.kind = EV_WAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->wake_tag};
    epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake_fd, &ev);
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
    /* Idle upstream connections kept for reuse (curl's default is 4 × transfers running). */
    curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, max_idle_conns);
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0)
        return RELAY_ERR_INTERNAL;
    l->started = 1;
    return 0;
}

void relay_loop_stop(relay_loop_t *l)
{
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->mu);
        l->stopping = 1;
        pthread_mutex_unlock(&l->mu);
        wake(l);
        pthread_join(l->thread, NULL);
    }
    if (l->multi)
        curl_multi_cleanup(l->multi);
    if (l->ep >= 0)
        close(l->ep);
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    pthread_mutex_destroy(&l->mu);
    free(l->dead);
    free(l);
}
