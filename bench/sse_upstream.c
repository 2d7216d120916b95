/* sse_upstream: a fast fake Anthropic upstream for the benchmarks (one epoll thread, HTTP/1.1
 * keep-alive). POST /v1/messages answers a fixed JSON message, or with "stream": true an SSE
 * stream of --deltas content_block_delta events --interval-ms apart, in Anthropic's wire format,
 * with the usage the benchmark checks billing against. Loopback only; not part of the tests.
 *
 *   sse_upstream [--port P] [--deltas 64] [--interval-ms 31] [--input-tokens 25]
 * Prints "port N" on stdout once listening (P 0 or absent: a free port). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

#define IN_CAP (1u << 20)

typedef struct conn {
    int fd;
    char *in;
    size_t in_len;
    char *out;
    size_t out_len, out_off, out_cap;
    int streaming;  /* events still to send */
    int sent;       /* deltas sent */
    int64_t due_ms; /* next event */
    struct conn *next_timer;
    int in_timer;
    int closed;
    struct conn *next_dead;
} conn_t;

static int g_deltas = 64, g_interval = 31, g_input = 25;
static int g_ep;
static conn_t *g_dead; /* closed connections, freed after the loop iteration that closed them */
static conn_t *t_head, *t_tail; /* FIFO: every stream has the same interval, so due times are
                                 * in the order streams were queued */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void out_add(conn_t *c, const char *s, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t nc = c->out_cap ? c->out_cap : 4096;
        while (nc < c->out_len + n)
            nc *= 2;
        c->out = realloc(c->out, nc);
        c->out_cap = nc;
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

static void out_chunk(conn_t *c, const char *s, size_t n)
{
    char h[32];
    int hl = snprintf(h, sizeof h, "%zx\r\n", n);
    out_add(c, h, (size_t)hl);
    out_add(c, s, n);
    out_add(c, "\r\n", 2);
}

static void conn_close(conn_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (!c->in_timer) {
        c->next_dead = g_dead;
        g_dead = c;
    } /* else buried when it leaves the timer queue */
}

static void bury_dead(void)
{
    while (g_dead) {
        conn_t *c = g_dead;
        g_dead = c->next_dead;
        free(c->in);
        free(c->out);
        free(c);
    }
}

static void flush_out(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
}

static void timer_push(conn_t *c)
{
    c->due_ms = now_ms() + g_interval;
    c->next_timer = NULL;
    c->in_timer = 1;
    if (t_tail)
        t_tail->next_timer = c;
    else
        t_head = c;
    t_tail = c;
}

static void event(conn_t *c, const char *type, const char *data)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "event: %s\ndata: %s\n\n", type, data);
    out_chunk(c, buf, (size_t)n);
}

static void stream_start(conn_t *c)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "content-type: text/event-stream; charset=utf-8\r\n"
                               "cache-control: no-cache\r\n"
                               "request-id: req_bench\r\n"
                               "transfer-encoding: chunked\r\n\r\n";
    out_add(c, head, sizeof head - 1);
    char d[512];
    snprintf(d, sizeof d,
             "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\","
             "\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],"
             "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,"
             "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,"
             "\"output_tokens\":1}}}",
             g_input);
    event(c, "message_start", d);
    event(c, "content_block_start",
          "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
          "\"text\":\"\"}}");
    event(c, "ping", "{\"type\": \"ping\"}");
    c->streaming = 1;
    c->sent = 0;
    flush_out(c);
    if (!c->closed)
        timer_push(c);
}

static void stream_step(conn_t *c)
{
    if (c->sent < g_deltas) {
        event(c, "content_block_delta",
              "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
              "\"text\":\"word \"}}");
        c->sent++;
        flush_out(c);
        if (!c->closed)
            timer_push(c);
        return;
    }
    char d[256];
    event(c, "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}");
    snprintf(d, sizeof d,
             "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
             "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}",
             g_deltas);
    event(c, "message_delta", d);
    event(c, "message_stop", "{\"type\":\"message_stop\"}");
    out_add(c, "0\r\n\r\n", 5);
    c->streaming = 0;
    flush_out(c);
}

static void answer_json(conn_t *c)
{
    char body[768], head[256];
    int bl = snprintf(body, sizeof body,
                      "{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\","
                      "\"model\":\"claude-sonnet-4-5\",\"content\":[{\"type\":\"text\","
                      "\"text\":\"Hello from the benchmark upstream.\"}],\"stop_reason\":"
                      "\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,"
                      "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,"
                      "\"output_tokens\":%d}}",
                      g_input, g_deltas);
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                      "request-id: req_bench\r\ncontent-length: %d\r\n\r\n",
                      bl);
    out_add(c, head, (size_t)hl);
    out_add(c, body, (size_t)bl);
    flush_out(c);
}

/* Handles every complete request in the input buffer. */
static void parse_requests(conn_t *c)
{
    while (!c->closed && !c->streaming) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t hlen = (size_t)(end - c->in) + 4;
        long clen = 0;
        for (char *p = c->in; p < end; p++) {
            if ((p == c->in || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
                clen = strtol(p + 15, NULL, 10);
        }
        if (clen < 0 || hlen + (size_t)clen > IN_CAP) {
            conn_close(c);
            return;
        }
        if (c->in_len < hlen + (size_t)clen)
            return;
        const char *body = c->in + hlen;
        int stream = memmem(body, (size_t)clen, "\"stream\":true", 13) ||
                     memmem(body, (size_t)clen, "\"stream\": true", 14);
        if (stream)
            stream_start(c);
        else
            answer_json(c);
        memmove(c->in, c->in + hlen + clen, c->in_len - hlen - (size_t)clen);
        c->in_len -= hlen + (size_t)clen;
    }
}

static void on_readable(conn_t *c)
{
    for (;;) {
        if (c->in_len == IN_CAP) {
            conn_close(c);
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->in_len += (size_t)n;
    }
    parse_requests(c);
}

static void run_timers(void)
{
    int64_t now = now_ms();
    while (t_head && t_head->due_ms <= now) {
        conn_t *c = t_head;
        t_head = c->next_timer;
        if (!t_head)
            t_tail = NULL;
        c->in_timer = 0;
        if (c->closed) {
            c->next_dead = g_dead;
            g_dead = c;
            continue;
        }
        stream_step(c);
        if (!c->closed && !c->streaming && c->in_len)
            parse_requests(c); /* a pipelined request waited for the stream's end */
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
        perror("sse_upstream: bind/listen");
        exit(1);
    }
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        c->fd = fd;
        c->in = malloc(IN_CAP);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

int main(int argc, char **argv)
{
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--deltas"))
            g_deltas = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--interval-ms"))
            g_interval = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--input-tokens"))
            g_input = atoi(argv[i + 1]);
    }
    signal(SIGPIPE, SIG_IGN);
    g_ep = epoll_create1(0);
    int lfd = listen_on(port);
    static conn_t listener;
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listener};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[512];
    for (;;) {
        int timeout = -1;
        if (t_head) {
            int64_t d = t_head->due_ms - now_ms();
            timeout = d < 0 ? 0 : (int)d;
        }
        int n = epoll_wait(g_ep, evs, 512, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == &listener) {
                accept_all(lfd);
                continue;
            }
            if (c->closed)
                continue;
            if (evs[i].events & EPOLLOUT) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
                flush_out(c);
            }
            if (!c->closed && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
        run_timers();
        bury_dead();
    }
}
