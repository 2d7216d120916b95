/* sockets: finds the socket behind a CivetWeb connection, which CivetWeb keeps to itself. */
#include <arpa/inet.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "server.h"

/*
 * relay-server needs a client's socket twice: to see that a client left while its request
 * waited for a worker (it must then be forwarded to no one), and to let librelay's I/O thread
 * write a stream's events to the client itself instead of waking the worker for each one.
 * CivetWeb 1.15 has no call that gives the socket, but it accepts every connection with
 * accept(3), and a dynamically linked program's own definition of a libc function is the one
 * the shared libraries call. This accept() records each new socket under its peer address;
 * server_conn_fd() looks the connection's peer up and checks the answer with getpeername(),
 * so a stale entry can never name another connection's socket.
 */

#define MAX_FD  65536 /* sockets above this are not recorded: those connections fall back */
#define BUCKETS 16384

/* by_fd[fd] is the peer of the connection fd was last accepted for, chained in its peer's
 * bucket. A reused fd number unlinks its old peer first, so entries never outnumber sockets. */
typedef struct peer {
    int used;
    int next; /* next fd in the bucket, -1 */
    uint16_t port;
    char addr[INET6_ADDRSTRLEN];
    int served;          /* a request on it has ended since the accept */
    int64_t mark_ms;     /* when the last request on it ended (or it was accepted) */
    uint64_t mark_bytes; /* bytes received by then */
} peer_t;

static peer_t g_by_fd[MAX_FD];
static int g_bucket[BUCKETS];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_ready;

static int peer_of(const struct sockaddr *sa, char addr[INET6_ADDRSTRLEN], uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        *port = ntohs(in->sin_port);
        return inet_ntop(AF_INET, &in->sin_addr, addr, INET6_ADDRSTRLEN) ? 0 : -1;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(in6->sin6_port);
        return inet_ntop(AF_INET6, &in6->sin6_addr, addr, INET6_ADDRSTRLEN) ? 0 : -1;
    }
    return -1;
}

static size_t bucket_of(const char *addr, uint16_t port)
{
    uint32_t h = 2166136261u ^ port;
    for (const char *p = addr; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % BUCKETS;
}

/* Under g_mu. */
static void unlink_fd(int fd)
{
    peer_t *e = &g_by_fd[fd];
    int *pp = &g_bucket[bucket_of(e->addr, e->port)];
    while (*pp >= 0 && *pp != fd)
        pp = &g_by_fd[*pp].next;
    if (*pp == fd)
        *pp = e->next;
    e->used = 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Bytes the kernel has received on fd so far (0 when it cannot say). */
static uint64_t bytes_received(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
        return 0;
    return ti.tcpi_bytes_received;
}

static void record(int fd, const struct sockaddr *sa)
{
    char addr[INET6_ADDRSTRLEN];
    uint16_t port;
    if (fd >= MAX_FD || peer_of(sa, addr, &port) != 0)
        return;
    pthread_mutex_lock(&g_mu);
    if (!g_ready) {
        for (size_t i = 0; i < BUCKETS; i++)
            g_bucket[i] = -1;
        g_ready = 1;
    }
    if (g_by_fd[fd].used)
        unlink_fd(fd);
    peer_t *e = &g_by_fd[fd];
    e->port = port;
    snprintf(e->addr, sizeof e->addr, "%s", addr);
    size_t b = bucket_of(addr, port);
    e->next = g_bucket[b];
    e->used = 1;
    e->served = 0;
    e->mark_ms = now_ms();
    e->mark_bytes = 0;
    g_bucket[b] = fd;
    pthread_mutex_unlock(&g_mu);
}

/* Under g_mu: the last fd accepted from (addr, port), or -1. */
static int lookup(const char *addr, uint16_t port)
{
    if (!g_ready)
        return -1;
    for (int fd = g_bucket[bucket_of(addr, port)]; fd >= 0; fd = g_by_fd[fd].next)
        if (g_by_fd[fd].port == port && !strcmp(g_by_fd[fd].addr, addr))
            return fd;
    return -1;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int s = accept4(fd, (struct sockaddr *)&ss, &sl, 0);
    if (s < 0)
        return s;
    record(s, (struct sockaddr *)&ss);
    if (addr && len) {
        memcpy(addr, &ss, sl < *len ? sl : *len);
        *len = sl;
    }
    return s;
}

int server_conn_fd(struct mg_connection *conn)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!ri || ri->is_ssl)
        return -1;
    pthread_mutex_lock(&g_mu);
    int fd = lookup(ri->remote_addr, (uint16_t)ri->remote_port);
    pthread_mutex_unlock(&g_mu);
    if (fd < 0)
        return -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char addr[INET6_ADDRSTRLEN];
    uint16_t port;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        peer_of((struct sockaddr *)&ss, addr, &port) != 0 || port != ri->remote_port ||
        strcmp(addr, ri->remote_addr))
        return -1;
    return fd;
}

int server_conn_closed(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

void server_conn_mark(int fd)
{
    if (fd < 0 || fd >= MAX_FD)
        return;
    uint64_t bytes = bytes_received(fd);
    pthread_mutex_lock(&g_mu);
    g_by_fd[fd].served = 1;
    g_by_fd[fd].mark_ms = now_ms();
    g_by_fd[fd].mark_bytes = bytes;
    pthread_mutex_unlock(&g_mu);
}

int server_conn_first(int fd)
{
    if (fd < 0 || fd >= MAX_FD)
        return 1;
    pthread_mutex_lock(&g_mu);
    int first = !g_by_fd[fd].served;
    pthread_mutex_unlock(&g_mu);
    return first;
}

int server_conn_since_mark(int fd, int64_t *ms, uint64_t *bytes)
{
    if (fd < 0 || fd >= MAX_FD)
        return -1;
    uint64_t got = bytes_received(fd);
    pthread_mutex_lock(&g_mu);
    *ms = now_ms() - g_by_fd[fd].mark_ms;
    *bytes = got > g_by_fd[fd].mark_bytes ? got - g_by_fd[fd].mark_bytes : 0;
    pthread_mutex_unlock(&g_mu);
    return 0;
}
