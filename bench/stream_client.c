/* stream_client: a load client for the streaming benchmarks (one epoll thread). Keeps --conns
 * keep-alive connections each sending streaming Messages requests back to back for --seconds,
 * and measures what a client sees: time to first event, the gap between events, whole-stream
 * time, completed and failed streams. --idle connections make one GET request and then sit
 * silent on their keep-alive connection the whole run. Loopback only; not part of the tests.
 *
 *   stream_client --port P --conns 1000 --seconds 10 [--key K] [--idle N] [--body-bytes B]
 *                 [--drain-seconds 15] [--stream 0|1]
 * Prints one JSON object on stdout. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct samples {
    double *v;
    size_t n, cap;
} samples_t;

static void add(samples_t *s, double x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = x;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(samples_t *s, double p)
{
    if (!s->n)
        return 0;
    size_t i = (size_t)(p * (double)s->n);
    return s->v[i >= s->n ? s->n - 1 : i];
}

enum { ST_CONNECTING, ST_HEAD, ST_BODY, ST_IDLE_WAIT, ST_IDLE, ST_DONE };

typedef struct conn {
    int fd, state, idle;
    char *req;
    size_t req_len, req_off;
    char in[65536];
    size_t in_len;
    /* response being read */
    int status, chunked;
    long remaining; /* content-length left, or current chunk left (-1: need a size line) */
    int64_t t_send, t_last_event;
    int events;
    char tail[16]; /* last decoded bytes, to find "\n\n" and "message_stop" across reads */
    size_t tail_len;
    int saw_stop, saw_error;
    int server_closes; /* the answer said Connection: close */
} conn_t;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int g_ep, g_port, g_stream = 1;
static int64_t g_t0, g_window_end, g_hard_end;
static samples_t s_ttfe, s_gap, s_total;
static long n_completed, n_failed, n_started, n_late, n_events, n_idle_ok, n_conn_err;
static char *g_request;
static size_t g_request_len;
static const char g_idle_request[] = "GET /health HTTP/1.1\r\nHost: bench\r\n\r\n";

static void build_request(const char *key, int body_bytes)
{
    char *pad = malloc((size_t)body_bytes + 1);
    memset(pad, 'a', (size_t)body_bytes);
    pad[body_bytes] = '\0';
    size_t cap = (size_t)body_bytes + 1024;
    char *body = malloc(cap);
    int bl = snprintf(body, cap,
                      "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"stream\":%s,"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                      g_stream ? "true" : "false", pad);
    g_request = malloc(cap + 1024);
    int hl = snprintf(g_request, cap + 1024,
                      "POST /v1/messages HTTP/1.1\r\nHost: bench\r\nx-api-key: %s\r\n"
                      "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                      "content-length: %d\r\n\r\n",
                      key, bl);
    memcpy(g_request + hl, body, (size_t)bl);
    g_request_len = (size_t)hl + (size_t)bl;
    free(pad);
    free(body);
}

static void watch(conn_t *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(g_ep, op, c->fd, &ev);
}

static void conn_open(conn_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(c->fd, (struct sockaddr *)&a, sizeof a);
    c->state = ST_CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void conn_finish(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_DONE;
}

static void send_request(conn_t *c)
{
    if (c->idle) {
        c->req = (char *)g_idle_request;
        c->req_len = sizeof g_idle_request - 1;
    } else {
        c->req = g_request;
        c->req_len = g_request_len;
        n_started++;
    }
    c->req_off = 0;
    c->t_send = now_us();
    c->status = 0;
    c->events = 0;
    c->tail_len = 0;
    c->saw_stop = c->saw_error = 0;
    c->state = ST_HEAD;
    while (c->req_off < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
            return;
        }
        if (n <= 0) {
            n_conn_err++;
            n_failed++;
            conn_finish(c);
            return;
        }
        c->req_off += (size_t)n;
    }
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
}

/* Decoded body bytes: events end at a blank line. */
static void body_bytes(conn_t *c, const char *p, size_t n)
{
    int64_t t = now_us();
    for (size_t i = 0; i < n; i++) {
        if (c->tail_len == sizeof c->tail) {
            memmove(c->tail, c->tail + 1, sizeof c->tail - 1);
            c->tail_len--;
        }
        c->tail[c->tail_len++] = p[i];
        if (c->tail_len >= 12 && !memcmp(c->tail + c->tail_len - 12, "message_stop", 12))
            c->saw_stop = 1;
        if (c->tail_len >= 12 && !memcmp(c->tail + c->tail_len - 12, "event: error", 12))
            c->saw_error = 1;
        if (p[i] == '\n' && c->tail_len >= 2 && c->tail[c->tail_len - 2] == '\n') {
            if (c->events == 0)
                add(&s_ttfe, (double)(t - c->t_send) / 1000.0);
            else
                add(&s_gap, (double)(t - c->t_last_event) / 1000.0);
            c->t_last_event = t;
            c->events++;
            n_events++;
        }
    }
}

static void response_done(conn_t *c)
{
    int64_t t = now_us();
    if (c->idle) {
        if (c->status == 200)
            n_idle_ok++;
        c->state = ST_IDLE;
        return;
    }
    int ok = c->status == 200 && !c->saw_error && (!g_stream || c->saw_stop);
    if (!ok)
        n_failed++;
    else if (t <= g_window_end) {
        n_completed++;
        add(&s_total, (double)(t - c->t_send) / 1000.0);
    } else {
        n_late++;
        add(&s_total, (double)(t - c->t_send) / 1000.0);
    }
    if (t >= g_window_end) {
        conn_finish(c);
    } else if (c->server_closes) { /* reconnect: the next request goes on a new connection */
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->in_len = 0;
        conn_open(c);
    } else {
        send_request(c);
    }
}

/* Parses what is buffered; returns 0 to wait for more, -1 on a protocol error. */
static int parse(conn_t *c)
{
    for (;;) {
        if (c->state == ST_HEAD) {
            char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!e)
                return c->in_len == sizeof c->in ? -1 : 0;
            *e = '\0';
            c->status = atoi(c->in + 9);
            c->chunked = strcasestr(c->in, "transfer-encoding: chunked") != NULL;
            c->server_closes = strcasestr(c->in, "connection: close") != NULL;
            char *cl = strcasestr(c->in, "content-length:");
            c->remaining = c->chunked ? -1 : cl ? strtol(cl + 15, NULL, 10) : 0;
            size_t used = (size_t)(e - c->in) + 4;
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
            c->state = ST_BODY;
            if (!c->chunked && c->remaining == 0) {
                response_done(c);
                if (c->state != ST_HEAD)
                    return 0;
            }
            continue;
        }
        if (c->state != ST_BODY)
            return 0;
        if (!c->chunked) {
            size_t take = (size_t)c->remaining < c->in_len ? (size_t)c->remaining : c->in_len;
            body_bytes(c, c->in, take);
            memmove(c->in, c->in + take, c->in_len - take);
            c->in_len -= take;
            c->remaining -= (long)take;
            if (c->remaining > 0)
                return 0;
            response_done(c);
            continue;
        }
        if (c->remaining < 0) {
            char *e = memmem(c->in, c->in_len, "\r\n", 2);
            if (!e)
                return 0;
            long sz = strtol(c->in, NULL, 16);
            size_t used = (size_t)(e - c->in) + 2;
            if (sz == 0) {
                if (c->in_len < used + 2)
                    return 0;
                used += 2; /* the empty trailer line */
                memmove(c->in, c->in + used, c->in_len - used);
                c->in_len -= used;
                response_done(c);
                continue;
            }
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
            c->remaining = sz + 2; /* data and its CRLF */
        }
        size_t take = (size_t)c->remaining < c->in_len ? (size_t)c->remaining : c->in_len;
        size_t data = take;
        if ((long)take > c->remaining - 2)
            data = c->remaining > 2 ? (size_t)(c->remaining - 2) : 0;
        body_bytes(c, c->in, data);
        memmove(c->in, c->in + take, c->in_len - take);
        c->in_len -= take;
        c->remaining -= (long)take;
        if (c->remaining > 0)
            return 0;
        c->remaining = -1;
    }
}

static void on_event(conn_t *c, uint32_t ev)
{
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            n_conn_err++;
            conn_finish(c);
            return;
        }
        send_request(c);
        return;
    }
    if ((ev & EPOLLOUT) && c->req_off < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (n > 0)
            c->req_off += (size_t)n;
        if (c->req_off == c->req_len)
            watch(c, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            if (c->state == ST_HEAD || c->state == ST_BODY) {
                if (!c->idle)
                    n_failed++;
            }
            conn_finish(c);
            return;
        }
        c->in_len += (size_t)n;
        if (parse(c) < 0) {
            n_failed++;
            conn_finish(c);
            return;
        }
        if (c->state == ST_DONE)
            return;
    }
}

static void print_samples(const char *name, samples_t *s)
{
    qsort(s->v, s->n, sizeof *s->v, cmp);
    printf("\"%s\":{\"n\":%zu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},", name, s->n,
           pct(s, 0.5), pct(s, 0.9), pct(s, 0.99), s->n ? s->v[s->n - 1] : 0.0);
}

int main(int argc, char **argv)
{
    int conns = 100, idle = 0, body = 256;
    double seconds = 10, drain = 15;
    const char *key = "none";
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--port"))
            g_port = atoi(v);
        else if (!strcmp(o, "--conns"))
            conns = atoi(v);
        else if (!strcmp(o, "--idle"))
            idle = atoi(v);
        else if (!strcmp(o, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(o, "--drain-seconds"))
            drain = atof(v);
        else if (!strcmp(o, "--key"))
            key = v;
        else if (!strcmp(o, "--body-bytes"))
            body = atoi(v);
        else if (!strcmp(o, "--stream"))
            g_stream = atoi(v);
    }
    signal(SIGPIPE, SIG_IGN);
    build_request(key, body);
    g_ep = epoll_create1(0);
    conn_t *cs = calloc((size_t)(conns + idle), sizeof *cs);
    /* The idle connections first, so they hold their places before the streams arrive. */
    for (int i = 0; i < idle; i++) {
        cs[i].idle = 1;
        conn_open(&cs[i]);
    }
    int64_t idle_deadline = now_us() + 10 * 1000000;
    struct epoll_event evs[1024];
    while (idle && n_idle_ok + n_conn_err < idle && now_us() < idle_deadline) {
        int n = epoll_wait(g_ep, evs, 1024, 100);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
    g_t0 = now_us();
    g_window_end = g_t0 + (int64_t)(seconds * 1e6);
    g_hard_end = g_window_end + (int64_t)(drain * 1e6);
    for (int i = idle; i < idle + conns; i++)
        conn_open(&cs[i]);
    for (;;) {
        int64_t now = now_us();
        if (now >= g_hard_end)
            break;
        int active = 0;
        for (int i = idle; i < idle + conns && !active; i++)
            active = cs[i].state != ST_DONE;
        if (!active)
            break;
        int n = epoll_wait(g_ep, evs, 1024, 50);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
    long unfinished = 0;
    for (int i = idle; i < idle + conns; i++)
        if (cs[i].state == ST_HEAD || cs[i].state == ST_BODY)
            unfinished++;
    double wall = (double)(now_us() - g_t0) / 1e6;
    printf("{\"conns\":%d,\"idle\":%d,\"idle_ok\":%ld,\"seconds\":%.1f,\"wall\":%.2f,"
           "\"started\":%ld,\"completed\":%ld,\"late\":%ld,\"failed\":%ld,\"unfinished\":%ld,"
           "\"conn_errors\":%ld,\"events\":%ld,",
           conns, idle, n_idle_ok, seconds, wall, n_started, n_completed, n_late, n_failed,
           unfinished, n_conn_err, n_events);
    print_samples("ttfe_ms", &s_ttfe);
    print_samples("gap_ms", &s_gap);
    print_samples("total_ms", &s_total);
    printf("\"ok\":1}\n");
    return 0;
}
