/* forward: libcurl to the upstream with the key swapped, streaming to the host's sink, with
 * retries. */
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "forward_internal.h"
#include "internal.h"
#include "relay/forward.h"
#include "relay/tokens.h"
#include "upstreams_internal.h"
#include "util.h"

#define MAX_RESP_HEADERS    64
#define JSON_BODY_CAP       (16u * 1024 * 1024) /* non-streaming answers kept for their usage */
#define ERR_BODY_CAP        (64u * 1024)        /* a retried attempt's error body, for the log */
#define UPSTREAM_IDLE_CONNS 4096L               /* idle upstream connections kept for reuse */
#define POOL_MAX            65536               /* pooled handles at most */
#define POOL_IDLE_MS        60000               /* a handle unused this long is freed */

/*
 * Upstream transfers all run on one I/O thread (forward_loop.c), whose multi handle keeps the
 * connections: one cache, no locks, reused by every request. Easy handles are pooled only to save
 * their allocation; a handle idle for a minute at the bottom of the stack is freed.
 */
typedef struct pooled {
    CURL *h;
    CURLM *m; /* the transfer's own multi handle (and connection cache) when run inline */
    int64_t idle_since_ms;
} pooled_t;

/* A stack of idle handles: the top was used last. */
typedef struct handle_pool {
    pooled_t *items;
    size_t n, cap;
} handle_pool_t;

#define MAX_IO_THREADS 8

struct relay_forward_state {
    relay_loop_t *loops[MAX_IO_THREADS];
    int n_loops;
    unsigned next_loop; /* atomic: round robin */
    pthread_mutex_t pool_mu;
    /* Handles run on the calling thread (curl_easy_perform) keep their upstream connection
     * inside themselves, not in a loop's cache: they have a stack of their own. */
    handle_pool_t pool, ipool;
    uint64_t retries;  /* atomic */
    int shutting_down; /* atomic: relay_forward_shutdown was called */
};

void relay_forward_shutdown(relay_t *r)
{
    if (r && r->forward)
        __atomic_store_n(&r->forward->shutting_down, 1, __ATOMIC_SEQ_CST);
}

static int shutting_down(relay_t *r)
{
    return __atomic_load_n(&r->forward->shutting_down, __ATOMIC_RELAXED);
}

void relay_forward_count_retry(relay_t *r)
{
    __atomic_add_fetch(&r->forward->retries, 1, __ATOMIC_RELAXED);
}

uint64_t relay_forward_retries(relay_t *r)
{
    return r->forward ? __atomic_load_n(&r->forward->retries, __ATOMIC_RELAXED) : 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int relay_forward_start(relay_t *r, relay_error_t *err)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return relay_error_set(err, RELAY_ERR_INTERNAL, "libcurl initialisation failed");
    struct relay_forward_state *f = calloc(1, sizeof *f);
    if (!f)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&f->pool_mu, NULL);
    r->forward = f;
    /* One I/O thread per core: a single one saturated a core at ~1,000 streams. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    f->n_loops = cores < 1 ? 1 : cores > MAX_IO_THREADS ? MAX_IO_THREADS : (int)cores;
    for (int i = 0; i < f->n_loops; i++)
        if (relay_loop_start(&f->loops[i], UPSTREAM_IDLE_CONNS / f->n_loops) != 0)
            return relay_error_set(err, RELAY_ERR_INTERNAL,
                                   "cannot start the upstream I/O threads");
    if (r->opts.tokenizer_file && *r->opts.tokenizer_file) {
        int rc = relay_tokenizer_new(&r->tokenizer, r->opts.tokenizer_file, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* An inline handle's multi holds its upstream connection: both go together. */
static void handle_free(CURL *h, CURLM *m)
{
    if (h)
        curl_easy_cleanup(h);
    if (m)
        curl_multi_cleanup(m);
}

void relay_forward_stop(relay_t *r)
{
    struct relay_forward_state *f = r->forward;
    if (!f)
        return;
    for (int i = 0; i < f->n_loops; i++)
        relay_loop_stop(f->loops[i]);
    handle_pool_t *pools[] = {&f->pool, &f->ipool};
    for (size_t k = 0; k < 2; k++) {
        for (size_t i = 0; i < pools[k]->n; i++)
            handle_free(pools[k]->items[i].h, pools[k]->items[i].m);
        free(pools[k]->items);
    }
    pthread_mutex_destroy(&f->pool_mu);
    free(f);
    r->forward = NULL;
    relay_tokenizer_free(r->tokenizer);
    r->tokenizer = NULL;
}

/* The stack of handles run on a loop (0) or on the calling thread (1). */
static handle_pool_t *pool_of(struct relay_forward_state *f, int inline_xfer)
{
    return inline_xfer ? &f->ipool : &f->pool;
}

/* A handle from the stack, or a new one; *m gets its multi handle when inline (NULL when either
 * cannot be made). */
static CURL *easy_get(struct relay_forward_state *f, int inline_xfer, CURLM **m)
{
    CURL *h = NULL;
    *m = NULL;
    handle_pool_t *p = pool_of(f, inline_xfer);
    pthread_mutex_lock(&f->pool_mu);
    if (p->n) {
        p->n--;
        h = p->items[p->n].h;
        *m = p->items[p->n].m;
    }
    pthread_mutex_unlock(&f->pool_mu);
    if (h) {
        curl_easy_reset(h);
        return h;
    }
    h = curl_easy_init();
    if (h && inline_xfer && !(*m = curl_multi_init())) {
        curl_easy_cleanup(h);
        h = NULL;
    }
    return h;
}

/* Returns h to the top of the stack; a handle idle at the bottom for longer than the upstream
 * would keep its connection is closed, so a burst's handles do not hold sockets forever. */
static void easy_put(struct relay_forward_state *f, CURL *h, CURLM *m, int inline_xfer)
{
    pooled_t stale = {0};
    int64_t now = relay_mono_ms();
    handle_pool_t *hp = pool_of(f, inline_xfer);
    pthread_mutex_lock(&f->pool_mu);
    if (hp->n && now - hp->items[0].idle_since_ms > POOL_IDLE_MS) {
        stale = hp->items[0];
        memmove(hp->items, hp->items + 1, (hp->n - 1) * sizeof *hp->items);
        hp->n--;
    }
    if (hp->n == hp->cap) {
        size_t nc = hp->cap ? hp->cap * 2 : 64;
        pooled_t *p = nc <= POOL_MAX ? realloc(hp->items, nc * sizeof *p) : NULL;
        if (!p) {
            pthread_mutex_unlock(&f->pool_mu);
            handle_free(h, m);
            handle_free(stale.h, stale.m);
            return;
        }
        hp->items = p;
        hp->cap = nc;
    }
    hp->items[hp->n++] = (pooled_t){h, m, now};
    pthread_mutex_unlock(&f->pool_mu);
    handle_free(stale.h, stale.m);
}

int relay_forward_is_billable(const relay_http_request_t *req)
{
    return strcmp(req->method, "POST") == 0 &&
           (strcmp(req->path, "/v1/messages") == 0 || strcmp(req->path, "/v1/complete") == 0);
}

/* ---- URL and headers ---- */
/* The URL for path and query under one upstream's base. */
static int url_for(const char *base, const char *path, const char *query, char *out, size_t cap)
{
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    /* A base written as ".../v1" already names the version the client's path starts with. */
    if (bl >= 3 && strncmp(base + bl - 3, "/v1", 3) == 0 &&
        (strncmp(path, "/v1/", 4) == 0 || strcmp(path, "/v1") == 0))
        bl -= 3;
    int n = snprintf(out, cap, "%.*s%s%s%s", (int)bl, base, path, query && *query ? "?" : "",
                     query ? query : "");
    return n < 0 || (size_t)n >= cap ? RELAY_ERR_TOO_LARGE : 0;
}

int relay_forward_url(relay_t *r, const char *path, const char *query, char *out, size_t cap)
{
    return url_for(r->opts.upstream_url ? r->opts.upstream_url : "https://api.anthropic.com", path,
                   query, out, cap);
}

/* Headers that describe one connection, or that the relay itself sets, never cross it. */
static int is_hop_or_owned_request_header(const char *name)
{
    static const char *const drop[] = {"host",
                                       "content-length",
                                       "connection",
                                       "keep-alive",
                                       "proxy-connection",
                                       "proxy-authorization",
                                       "te",
                                       "trailer",
                                       "transfer-encoding",
                                       "upgrade",
                                       "x-api-key",
                                       "authorization",
                                       "accept-encoding",
                                       "expect",
                                       "http2-settings"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strcasecmp(name, drop[i]) == 0)
            return 1;
    return 0;
}

static int is_hop_or_framing_response_header(const char *name)
{
    static const char *const drop[] = {
        "connection",       "keep-alive",         "proxy-connection", "te",
        "trailer",          "transfer-encoding",  "upgrade",          "content-length",
        "content-encoding", "proxy-authenticate", "set-cookie"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strcasecmp(name, drop[i]) == 0)
            return 1;
    return 0;
}

/* Frees the upstream request headers, wiping them first: one carries the upstream key. */
static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *p = list; p; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(list);
}

/* Is name one of the comma-separated tokens of list (a Connection header's value)? */
static int listed_in(const char *list, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = list; p && *p;) {
        p += strspn(p, " \t,");
        size_t tl = strcspn(p, " \t,");
        if (tl == nl && strncasecmp(p, name, nl) == 0)
            return 1;
        p += tl;
    }
    return 0;
}

static struct curl_slist *build_request_headers(const relay_http_request_t *req,
                                                const char *api_key, int *err)
{
    struct curl_slist *list = NULL, *tmp;
    relay_buf_t line;
    relay_buf_init(&line, 16384);
    *err = 0;
    /* Headers the client's Connection header names are hop-by-hop too (RFC 9110 7.6.1). */
    const char *conn_tokens = relay_http_header(req, "connection");
    for (size_t i = 0; i < req->n_headers && !*err; i++) {
        const relay_http_header_t *h = &req->headers[i];
        if (!h->name || !h->value || is_hop_or_owned_request_header(h->name) ||
            listed_in(conn_tokens, h->name))
            continue;
        relay_buf_reset(&line);
        if (relay_buf_printf(&line, "%s: %s", h->name, h->value) != 0)
            continue; /* an oversized header is not forwarded */
        if (!(tmp = curl_slist_append(list, relay_buf_str(&line))))
            *err = RELAY_ERR_NOMEM;
        else
            list = tmp;
    }
    relay_buf_reset(&line);
    if (!*err && relay_buf_printf(&line, "x-api-key: %s", api_key) == 0) {
        if (!(tmp = curl_slist_append(list, relay_buf_str(&line))))
            *err = RELAY_ERR_NOMEM;
        else
            list = tmp;
    }
    /* The key must not linger in freed memory longer than needed. */
    if (line.data)
        explicit_bzero(line.data, line.alloc);
    relay_buf_free(&line);
    if (!*err && (tmp = curl_slist_append(list, "Expect:")))
        list = tmp;
    if (*err) {
        free_headers(list);
        list = NULL;
    }
    return list;
}

/* ---- one request's state ---- */
typedef struct fwd {
    relay_t *r;
    const relay_sink_t *sink;
    relay_forward_result_t *res;
    /* per attempt */
    int status;
    int discard;           /* this attempt will be retried: swallow its body */
    int retry_after_s;     /* the upstream's retry-after, -1 when absent */
    relay_buf_t hdr_store; /* response header lines "name\0value\0" */
    relay_http_header_t hdrs[MAX_RESP_HEADERS];
    size_t n_hdrs;
    relay_buf_t err_body; /* a retried attempt's body */
    /* across attempts */
    int is_last_attempt;
    int head_sent;
    int is_sse;
    int is_json;           /* content-type application/json */
    char conn_tokens[256]; /* the upstream's Connection header: names more hop-by-hop headers */
    int headers_done;      /* this attempt's header block is complete (trailers may follow) */
    int hold;         /* a 2xx JSON answer is held until it is complete (a cut one becomes a 502) */
    int got_2xx_body; /* a success answer's body started: the upstream did the work, no retry */
    relay_sse_t *sse;
    relay_buf_t json; /* non-streaming body, for its usage */
    int json_overflow;
    int json_parsed; /* res->usage already holds the parse of json */
    int64_t t_start, t_attempt, t_last_rx, t_first_byte;
    int64_t drain_deadline;        /* atomic: set by whichever thread sees the client leave */
    int abort_reason;              /* why the transfer was stopped early */
    relay_xfer_t x;                /* the attempt, shared with the I/O thread */
    relay_buf_t spare;             /* the worker's side of the pending body (swapped, not copied) */
    int direct_fd, direct_chunked; /* the host's socket for direct writes (-1: none) */
    relay_loop_t *loop;            /* the I/O thread running the current attempt */
    int inline_xfer;               /* the attempts run on this thread (not a stream) */
    CURLM *multi;                  /* inline: the handle's own multi handle */
    /* the pool */
    relay_upstream_query_t q;
    relay_upstream_lease_t lease; /* the current attempt's upstream */
    int budget;                   /* retries this request may make */
    double timeout_s;             /* the current upstream's whole-request timeout */
    int64_t retry_at_ms;          /* when nothing could take it: the earliest cooldown end */
    struct curl_slist *headers;   /* the current attempt's request headers (with its key) */
    int64_t rl_remaining[4], rl_limit[4]; /* anthropic-ratelimit-{requests,tokens,...} */
    char prev_upstream[64];               /* the failed attempt's upstream, for the log */
    int prev_outcome;
} fwd_t;

enum { ABORT_NONE, ABORT_FIRST_BYTE, ABORT_IDLE, ABORT_TOTAL, ABORT_DRAIN, ABORT_SHUTDOWN };

#define SHUTDOWN_MSG "the relay is shutting down; this answer was cut short (retry it)"

static int is_retryable_status(int s)
{
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504 || s == 529;
}

/* Either thread: the client went away. For a stream the transfer goes on (billing) until the
 * drain deadline; a non-streaming one ends at its next byte. */
static void client_left(fwd_t *f)
{
    if (__atomic_exchange_n(&f->res->client_gone, 1, __ATOMIC_SEQ_CST))
        return;
    __atomic_store_n(&f->drain_deadline, relay_mono_ms() + f->r->opts.drain_timeout_ms,
                     __ATOMIC_SEQ_CST);
}

static int gone(const fwd_t *f)
{
    return __atomic_load_n(&f->res->client_gone, __ATOMIC_SEQ_CST);
}

static void on_client_gone(void *ud)
{
    client_left(ud);
}

static void deliver_head(fwd_t *f);

/* The head is decided: the worker writes it (at once when the transfer runs on its thread). */
static void announce_head(fwd_t *f)
{
    f->head_sent = 1;
    f->res->status = f->status;
    if (f->inline_xfer)
        deliver_head(f);
    else
        relay_xfer_head(&f->x);
}

/* Body bytes for the client: written now on the worker's own transfer, else handed over. */
static void pass_body(fwd_t *f, const char *data, size_t len)
{
    if (!f->inline_xfer)
        relay_xfer_body(&f->x, data, len);
    else if (!gone(f) && f->sink->body(f->sink->ud, data, len) != 0)
        client_left(f);
}

/* Worker: writes the head the I/O thread announced, and asks the host for direct writes. */
static void deliver_head(fwd_t *f)
{
    if (f->sink->head(f->sink->ud, f->status, f->hdrs, f->n_hdrs) != 0) {
        client_left(f);
        return;
    }
    f->direct_fd = -1;
    if (f->sink->direct && f->sink->direct(f->sink->ud, &f->direct_fd, &f->direct_chunked) != 0)
        f->direct_fd = -1;
}

/* Seconds of a retry-after header; -1 when absent or not a number (an HTTP date is treated as
 * absent: the normal backoff applies). Clamped to a day so arithmetic cannot overflow. */
static int parse_retry_after(const char *v, size_t vl)
{
    char buf[32];
    if (vl == 0 || vl >= sizeof buf)
        return -1;
    memcpy(buf, v, vl);
    buf[vl] = '\0';
    char *end;
    long n = strtol(buf, &end, 10);
    if (end == buf || *end != '\0' || n < 0)
        return -1;
    return n > 86400 ? 86400 : (int)n;
}

/* anthropic-ratelimit-<kind>-remaining / -limit, so a nearly exhausted key gets no new session. */
static void keep_ratelimit(fwd_t *f, const char *n, size_t nl, const char *v, size_t vl)
{
    static const char *const kinds[] = {"requests-", "tokens-", "input-tokens-", "output-tokens-"};
    for (int k = 0; k < 4; k++) {
        size_t kl = strlen(kinds[k]);
        if (nl <= kl || strncasecmp(n, kinds[k], kl) != 0)
            continue;
        int remaining = nl - kl == 9 && strncasecmp(n + kl, "remaining", 9) == 0;
        int limit = nl - kl == 5 && strncasecmp(n + kl, "limit", 5) == 0;
        char buf[24];
        snprintf(buf, sizeof buf, "%.*s", (int)(vl < 23 ? vl : 23), v);
        if (remaining)
            f->rl_remaining[k] = strtoll(buf, NULL, 10);
        else if (limit)
            f->rl_limit[k] = strtoll(buf, NULL, 10);
    }
}

/* The smallest remaining share of the limits the upstream reported; -1 when it reported none. */
static double ratelimit_share(const fwd_t *f)
{
    double share = -1;
    for (int k = 0; k < 4; k++)
        if (f->rl_limit[k] > 0 && f->rl_remaining[k] >= 0) {
            double s = (double)f->rl_remaining[k] / (double)f->rl_limit[k];
            if (share < 0 || s < share)
                share = s;
        }
    return share;
}

/* Remembers a response header; the values live in hdr_store, fixed up once headers are complete. */
static void keep_header(fwd_t *f, const char *name, size_t nl, const char *value, size_t vl)
{
    if (strncasecmp(name, "request-id", nl) == 0 && nl == 10)
        snprintf(f->res->request_id, sizeof f->res->request_id, "%.*s", (int)vl, value);
    if (nl == 11 && strncasecmp(name, "retry-after", 11) == 0)
        f->retry_after_s = parse_retry_after(value, vl);
    if (nl == 12 && strncasecmp(name, "content-type", 12) == 0) {
        f->is_sse = vl >= 17 && strncasecmp(value, "text/event-stream", 17) == 0;
        f->is_json = vl >= 16 && strncasecmp(value, "application/json", 16) == 0;
    }
    if (nl == 10 && strncasecmp(name, "connection", 10) == 0)
        snprintf(f->conn_tokens, sizeof f->conn_tokens, "%.*s", (int)vl, value);
    if (nl > 20 && strncasecmp(name, "anthropic-ratelimit-", 20) == 0)
        keep_ratelimit(f, name + 20, nl - 20, value, vl);
    char nm[128];
    snprintf(nm, sizeof nm, "%.*s", (int)(nl < 127 ? nl : 127), name);
    if (is_hop_or_framing_response_header(nm) || f->n_hdrs >= MAX_RESP_HEADERS)
        return;
    size_t off = f->hdr_store.len;
    if (relay_buf_append(&f->hdr_store, name, nl) || relay_buf_append(&f->hdr_store, "", 1) ||
        relay_buf_append(&f->hdr_store, value, vl) || relay_buf_append(&f->hdr_store, "", 1))
        return;
    /* Offsets for now: hdr_store may still move as it grows. */
    f->hdrs[f->n_hdrs].name = (const char *)(uintptr_t)off;
    f->hdrs[f->n_hdrs].value = (const char *)(uintptr_t)(off + nl + 1);
    f->n_hdrs++;
}

static void headers_complete(fwd_t *f)
{
    f->headers_done = 1;
    size_t kept = 0;
    for (size_t i = 0; i < f->n_hdrs; i++) {
        relay_http_header_t h = {f->hdr_store.data + (uintptr_t)f->hdrs[i].name,
                                 f->hdr_store.data + (uintptr_t)f->hdrs[i].value};
        if (!listed_in(f->conn_tokens, h.name))
            f->hdrs[kept++] = h;
    }
    f->n_hdrs = kept;
    int auth = f->status == 401 || f->status == 403;
    f->discard = (is_retryable_status(f->status) || auth) && !f->is_last_attempt;
    /* A broken key or a wait longer than we would sleep: worth it only for another upstream. */
    int other_needed = auth || (f->retry_after_s > 0 && (int64_t)f->retry_after_s * 1000 >
                                                            (int64_t)f->r->opts.retry_max_ms);
    if (f->discard && other_needed && !relay_upstreams_has_other(f->r, &f->q, f->lease.u))
        f->discard = 0; /* the client decides */
    if (f->discard)
        return;
    /* A JSON answer arrives whole in one go; holding it costs nothing and lets a cut one be
     * answered with an error instead of a truncated 200. Streams are never held. */
    f->hold = f->is_json && f->status >= 200 && f->status < 300;
    if (!f->hold)
        announce_head(f);
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    fwd_t *f = ud;
    size_t len = size * nmemb;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A status line starts a new header block (after 100 Continue or a redirect). */
        const char *sp = memchr(data, ' ', len);
        f->status = sp ? atoi(sp + 1) : 0;
        relay_buf_reset(&f->hdr_store);
        f->n_hdrs = 0;
        f->retry_after_s = -1;
        f->is_sse = 0;
        f->is_json = 0;
        f->conn_tokens[0] = '\0';
        f->headers_done = 0;
        return len;
    }
    if (len <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        if (f->status >= 200 && !f->headers_done)
            headers_complete(f);
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon || f->headers_done) /* trailers are not passed on */
        return len;
    size_t nl = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t vl = len - nl - 1;
    while (vl && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    keep_header(f, data, nl, v, vl);
    return len;
}

int relay_sink_write_whole(const relay_sink_t *sink, int status, const relay_http_header_t *h,
                           size_t n, const char *body, size_t len)
{
    if (sink->whole)
        return sink->whole(sink->ud, status, h, n, body, len) != 0;
    return sink->head(sink->ud, status, h, n) != 0 || (len && sink->body(sink->ud, body, len) != 0);
}

/* Sends what was held of a JSON answer: whole when it is complete (worker, at the end), so the
 * host can give it a content-length and one write; else (I/O thread, too big to hold) the head
 * and the bytes so far are passed on and the rest follows as it comes. */
static void release_held(fwd_t *f, int complete)
{
    f->hold = 0;
    if (!complete) {
        announce_head(f);
        if (f->json.len)
            pass_body(f, f->json.data, f->json.len);
        return;
    }
    f->head_sent = 1;
    f->res->status = f->status;
    if (relay_sink_write_whole(f->sink, f->status, f->hdrs, f->n_hdrs, f->json.data, f->json.len))
        client_left(f);
}

/* I/O thread: curl's write callback. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    fwd_t *f = ud;
    size_t len = size * nmemb;
    int64_t now = relay_mono_ms();
    f->t_last_rx = now;
    if (f->discard) {
        relay_buf_append(&f->err_body, data, len); /* past the cap: not needed for the log */
        return len;
    }
    if (!f->headers_done) /* a body without a header block end seen: be safe */
        headers_complete(f);
    /* A slow client: stop reading the upstream before these bytes are used (curl hands them
     * again on resume), so what the relay holds for one client stays bounded. */
    if (!f->hold && !f->inline_xfer && !gone(f) && relay_xfer_would_pause(&f->x, len))
        return CURL_WRITEFUNC_PAUSE;
    if (f->status >= 200 && f->status < 300)
        f->got_2xx_body = 1;
    if (!f->t_first_byte) {
        f->t_first_byte = now;
        f->res->got_first_byte = 1;
        f->res->time_to_first_byte_ms = now - f->t_start;
    }
    f->res->response_bytes += (int64_t)len;
    if (f->is_sse) {
        relay_sse_feed(f->sse, data, len);
    } else if (!f->json_overflow && relay_buf_append(&f->json, data, len) != 0) {
        f->json_overflow = 1;
        if (f->hold)
            release_held(f, 0); /* too big to hold: pass it on as it comes */
    }
    if (f->hold)
        return len;
    if (!gone(f))
        pass_body(f, data, len);
    /* Without a stream to drain, a gone client ends the transfer: nothing more to bill. */
    if (gone(f) && !f->is_sse)
        return f->json_overflow ? 0 : len;
    return len;
}

/* Why the transfer should stop now (ABORT_*), from either curl's progress callback or the I/O
 * thread's sweep of idle transfers: both run on the I/O thread. */
static int deadline_passed(fwd_t *f, int64_t now)
{
    const relay_options_t *o = &f->r->opts;
    if (shutting_down(f->r))
        f->abort_reason = ABORT_SHUTDOWN;
    else if (gone(f) && now > __atomic_load_n(&f->drain_deadline, __ATOMIC_SEQ_CST))
        f->abort_reason = ABORT_DRAIN;
    else if (!f->t_last_rx && now - f->t_attempt > (int64_t)(o->first_byte_timeout_s * 1000))
        f->abort_reason = ABORT_FIRST_BYTE;
    else if (f->t_last_rx && now - f->t_last_rx > (int64_t)(o->idle_timeout_s * 1000))
        f->abort_reason = ABORT_IDLE;
    else if (!f->is_sse && now - f->t_attempt > (int64_t)(f->timeout_s * 1000))
        f->abort_reason = ABORT_TOTAL;
    return f->abort_reason != ABORT_NONE;
}

static int check_deadlines(void *ud, int64_t now)
{
    return deadline_passed(ud, now);
}

static int on_progress(void *ud, curl_off_t dlt, curl_off_t dln, curl_off_t ult, curl_off_t uln)
{
    (void)dlt, (void)dln, (void)ult, (void)uln;
    return deadline_passed(ud, relay_mono_ms());
}

static void setup_easy(fwd_t *f, CURL *h, const relay_http_request_t *req)
{
    const relay_options_t *o = &f->r->opts;
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(o->connect_timeout_s * 1000));
    /* Ask for every encoding libcurl can decode, and hand the client decoded bytes: the relay must
     * read the usage inside, and a client's accept-encoding is then trivially satisfied. */
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, f);
    /* A stream's events are a few hundred bytes each, and every pooled handle keeps its buffer:
     * 4 KiB for the I/O threads' handles (a thousand streams hold a thousand), 16 KiB for the
     * others, whose answers come whole. */
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, f->inline_xfer ? 16384L : 4096L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(req->method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
    }
}

/* Records in res an error the relay itself produced (its code, message and type). */
static void result_error(relay_forward_result_t *res, int code, const char *msg)
{
    res->error_code = code;
    relay_strlcpy(res->error_message, msg, sizeof res->error_message);
    relay_strlcpy(res->error_type, relay_err_type(code), sizeof res->error_type);
}

/* Writes an error the relay itself produced, as Anthropic error JSON (or an SSE error event when
 * a stream is already under way). */
static void write_relay_error(fwd_t *f, int code, const char *msg)
{
    result_error(f->res, code, msg);
    int left = gone(f);
    relay_forward_write_error(f->sink, f->head_sent, f->is_sse, code, msg, &left);
    if (left)
        client_left(f);
    if (!f->head_sent)
        f->res->status = relay_err_http_status(code);
    f->head_sent = 1;
}

void relay_forward_write_error(const relay_sink_t *sink, int head_sent, int is_sse, int code,
                               const char *msg, int *client_gone)
{
    if (*client_gone)
        return;
    char *json = relay_error_json(code, msg);
    if (!json)
        return;
    if (!head_sent) {
        relay_http_header_t h[] = {{"content-type", "application/json"}};
        if (relay_sink_write_whole(sink, relay_err_http_status(code), h, 1, json, strlen(json)))
            *client_gone = 1;
    } else if (is_sse) {
        /* The status is gone already: say it in the stream so the client does not hang. */
        relay_buf_t ev;
        relay_buf_init(&ev, 4096);
        if (relay_buf_printf(&ev, "event: error\ndata: %s\n\n", json) == 0 &&
            sink->body(sink->ud, ev.data, ev.len) != 0)
            *client_gone = 1;
        relay_buf_free(&ev);
    }
    free(json);
}

static int backoff_ms(relay_t *r, int attempt, int retry_after_s)
{
    if (retry_after_s >= 0) {
        int64_t ms = (int64_t)retry_after_s * 1000;
        return (int)(ms < r->opts.retry_max_ms ? ms : r->opts.retry_max_ms);
    }
    int64_t base = (int64_t)r->opts.retry_base_ms << (attempt < 20 ? attempt : 20);
    if (base > r->opts.retry_max_ms)
        base = r->opts.retry_max_ms;
    uint32_t rnd = 0;
    relay_random_bytes(&rnd, sizeof rnd);
    /* "Equal jitter": half fixed, half random, so retries of many clients spread out. */
    return (int)(base / 2 + (int64_t)(rnd % (uint32_t)(base / 2 + 1)));
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Fills in what the upstream did not say: the input from the request, the output from the text. */
static void complete_usage(fwd_t *f, const relay_http_request_t *req)
{
    relay_forward_result_t *res = f->res;
    if (f->is_sse) {
        res->usage = *relay_sse_usage(f->sse);
    } else if (!f->json_overflow && f->json.len && !f->json_parsed) {
        relay_usage_parse_json(&res->usage, f->json.data, f->json.len);
    }
    /* The upstream charges only a Messages call it answered with success (its own status, not
     * what the client was sent); an answer cut later was still charged for what it produced. */
    if (f->status < 200 || f->status >= 300 || !relay_forward_is_billable(req))
        return;
    int complete =
        f->is_sse ? res->usage.saw_message_stop && res->usage.has_final : res->usage.has_usage;
    if (complete)
        return;
    res->estimated = 1;
    if (!res->usage.has_usage && req->body_len) {
        relay_request_info_t info;
        if (relay_tokens_count_request(f->r->tokenizer, req->body, req->body_len, &info) == 0) {
            res->usage.input_tokens = info.input_tokens_estimate;
            if (!res->usage.model[0])
                snprintf(res->usage.model, sizeof res->usage.model, "%s", info.model);
        }
    }
    if (!f->is_sse && f->json.len) {
        /* A cut JSON answer: its text so far is the best measure of the output. */
        int64_t est = relay_tokens_count_text(f->r->tokenizer, f->json.data, f->json.len);
        if (est > res->usage.output_tokens)
            res->usage.output_tokens = est;
    } else if (f->is_sse) {
        size_t len = 0, total = 0;
        const char *text = relay_sse_output_text(f->sse, &len, &total);
        int64_t est = relay_tokens_count_text(f->r->tokenizer, text, len);
        if (len && total > len)
            est = (int64_t)((double)est * (double)total / (double)len);
        if (est > res->usage.output_tokens)
            res->usage.output_tokens = est;
    }
    res->usage.has_usage = 1;
}

static void result_error_from_usage(relay_forward_result_t *res, fwd_t *f)
{
    if (res->error_code || !res->usage.saw_error)
        return;
    snprintf(res->error_type, sizeof res->error_type, "%s", res->usage.error_type);
    snprintf(res->error_message, sizeof res->error_message, "%s", res->usage.error_message);
    (void)f;
}

/* Worker: writes bytes a direct transfer could not flush before it ended (already framed). */
static void write_leftover(fwd_t *f, const char *p, size_t len)
{
    int64_t deadline = relay_mono_ms() + f->r->opts.drain_timeout_ms;
    while (len && !gone(f)) {
        ssize_t n = send(f->direct_fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        struct pollfd pfd = {.fd = f->direct_fd, .events = POLLOUT};
        int64_t left = deadline - relay_mono_ms();
        if ((n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) || left <= 0 ||
            (poll(&pfd, 1, (int)left) < 0 && errno != EINTR))
            client_left(f);
    }
}

/* Worker: writes what the I/O thread hands over (the head, body bytes) until the attempt is
 * done. Once the head is out and nothing is pending, a host socket is handed to the I/O thread,
 * which writes the rest of the body itself: the worker then sleeps until the end. */
static void pump(fwd_t *f)
{
    relay_xfer_t *x = &f->x;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        if (x->head_ready && !x->head_taken) {
            x->head_taken = 1;
            pthread_mutex_unlock(&x->mu);
            deliver_head(f);
            pthread_mutex_lock(&x->mu);
        } else if (x->head_taken && !x->direct && x->pending.len) {
            relay_buf_t t = x->pending;
            x->pending = f->spare;
            f->spare = t;
            int resume = x->paused && !x->unpause_queued;
            x->unpause_queued |= resume;
            pthread_mutex_unlock(&x->mu);
            if (!gone(f) && f->sink->body(f->sink->ud, f->spare.data, f->spare.len) != 0)
                client_left(f);
            relay_buf_reset(&f->spare);
            if (resume)
                relay_loop_request_unpause(f->loop, x);
            pthread_mutex_lock(&x->mu);
        } else if (x->head_taken && !x->direct && !x->done && f->direct_fd >= 0 && !gone(f)) {
            x->client_fd = f->direct_fd;
            x->chunked = f->direct_chunked;
            x->direct = 1;
        } else if (x->done) {
            break;
        } else {
            relay_xfer_wait(x);
        }
    }
    int direct = x->direct;
    x->direct = 0;
    pthread_mutex_unlock(&x->mu);
    if (x->pending.len && direct)
        write_leftover(f, x->pending.data, x->pending.len);
    else if (x->pending.len && !gone(f) &&
             f->sink->body(f->sink->ud, x->pending.data, x->pending.len))
        client_left(f);
    relay_buf_reset(&x->pending);
}

/*
 * curl_easy_perform without its first poll: curl's loop polls its wake-up socket before the
 * transfer has a socket to wait for (strace: a poll(..., 0) a request). This one runs the transfer
 * first and waits only when it must; the connection stays in m's cache for the handle's next use.
 */
static CURLcode perform_inline(CURLM *m, CURL *h)
{
    CURLMcode mc = curl_multi_add_handle(m, h);
    if (mc != CURLM_OK)
        return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
    int running = 1;
    for (;;) {
        mc = curl_multi_perform(m, &running);
        if (mc != CURLM_OK || !running)
            break;
        mc = curl_multi_wait(m, NULL, 0, 1000, NULL);
        if (mc != CURLM_OK)
            break;
    }
    CURLcode cc = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_BAD_FUNCTION_ARGUMENT;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)))
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == h)
            cc = msg->data.result;
    curl_multi_remove_handle(m, h);
    return cc;
}

/* One attempt on the I/O thread. Returns the curl code. */
static CURLcode run_attempt(fwd_t *f, CURL *h, int attempt)
{
    f->is_last_attempt = attempt >= f->budget;
    f->status = 0;
    f->headers_done = 0;
    f->discard = 0;
    f->hold = 0;
    f->retry_after_s = -1;
    f->n_hdrs = 0;
    f->t_attempt = relay_mono_ms();
    f->t_last_rx = 0;
    f->abort_reason = ABORT_NONE;
    for (int k = 0; k < 4; k++)
        f->rl_remaining[k] = f->rl_limit[k] = -1;
    relay_buf_reset(&f->err_body);
    relay_buf_reset(&f->hdr_store);
    f->res->attempts = attempt + 1;
    relay_xfer_reset(&f->x);
    f->x.h = h;
    if (f->inline_xfer) {
        /* The callbacks write to the sink on this thread; deadlines are checked by on_progress,
         * which curl calls at least once a second. */
        f->x.cc = perform_inline(f->multi, h);
        return f->x.cc;
    }
    struct relay_forward_state *st = f->r->forward;
    unsigned i = __atomic_fetch_add(&st->next_loop, 1, __ATOMIC_RELAXED) % (unsigned)st->n_loops;
    f->loop = st->loops[i];
    if (relay_loop_submit(f->loop, &f->x) != 0)
        return CURLE_ABORTED_BY_CALLBACK;
    pump(f);
    return f->x.cc;
}

static void log_retry(fwd_t *f, int attempt, CURLcode cc, int wait)
{
    char fields[256];
    snprintf(fields, sizeof fields,
             "{\"attempt\":%d,\"status\":%d,\"wait_ms\":%d,\"upstream\":\"%s\"}", attempt + 1,
             f->status, wait, f->res->upstream);
    relay_log(f->r, RELAY_LOG_WARN, "upstream.retry", fields,
              "upstream attempt %d failed (%s); retrying", attempt + 1,
              cc != CURLE_OK ? curl_easy_strerror(cc) : "retryable status");
    relay_forward_count_retry(f->r);
}

static void log_failover(fwd_t *f, int attempt, const char *from, int outcome)
{
    char fields[256];
    snprintf(fields, sizeof fields,
             "{\"attempt\":%d,\"status\":%d,\"from\":\"%s\",\"to\":\"%s\",\"reason\":\"%s\"}",
             attempt + 1, f->status, from, f->lease.def.name,
             relay_upstreams_reason_label(outcome));
    relay_log(f->r, RELAY_LOG_WARN, "upstream.failover", fields,
              "upstream %s failed before the first byte; trying %s", from, f->lease.def.name);
    relay_forward_count_retry(f->r);
}

/* How the attempt went, for the pool. */
static relay_upstream_outcome_t outcome_of(const fwd_t *f, CURLcode cc)
{
    int s = f->status;
    if (s == 429 || s == 529)
        return RELAY_UPSTREAM_OVERLOADED;
    if (s == 401 || s == 403)
        return RELAY_UPSTREAM_AUTH;
    if (s == 408 || s == 500 || s == 502 || s == 503 || s == 504)
        return RELAY_UPSTREAM_SERVER;
    if (cc == CURLE_OK || f->abort_reason == ABORT_DRAIN || gone(f))
        return RELAY_UPSTREAM_OK;
    if (!s)
        return cc == CURLE_OPERATION_TIMEDOUT || f->abort_reason == ABORT_FIRST_BYTE
                   ? RELAY_UPSTREAM_TIMEOUT
                   : RELAY_UPSTREAM_CONNECT;
    return RELAY_UPSTREAM_SERVER; /* cut after its head */
}

/* Points the handle at the lease's upstream: its URL, its key, its timeout. */
static int aim(fwd_t *f, CURL *h, const relay_http_request_t *req)
{
    const relay_upstream_def_t *d = &f->lease.def;
    enum { URL_CAP = 8192 };
    relay_strlcpy(f->res->upstream, d->name, sizeof f->res->upstream);
    f->timeout_s = d->timeout_s > 0 ? d->timeout_s : f->r->opts.upstream_timeout_s;
    char *url = malloc(URL_CAP); /* not on the worker's stack (see relay_forward_ex) */
    if (!url)
        return RELAY_ERR_NOMEM;
    if (url_for(d->url, req->path, req->query, url, URL_CAP) != 0) {
        free(url);
        return RELAY_ERR_INVALID;
    }
    int herr;
    struct curl_slist *hl = build_request_headers(req, d->api_key, &herr);
    if (herr) {
        free(url);
        return herr;
    }
    curl_easy_setopt(h, CURLOPT_URL, url); /* curl keeps its own copy */
    free(url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    free_headers(f->headers);
    f->headers = hl;
    return 0;
}

/* When no upstream can take the request: 529 with retry-after at the earliest cooldown end. */
static void write_no_upstream(fwd_t *f, int code)
{
    if (code != RELAY_ERR_OVERLOADED) {
        write_relay_error(f, code,
                          code == RELAY_ERR_UNAVAILABLE
                              ? "no upstream API key is configured: set UPSTREAM_API_KEY (or "
                                "upstream.primary.api_key)"
                          : code == RELAY_ERR_INVALID ? "request URL too long"
                                                      : relay_strerror(code));
        return;
    }
    const char *msg = "no upstream can take the request now; retry later";
    result_error(f->res, code, msg);
    f->res->status = relay_err_http_status(code);
    f->head_sent = 1;
    char *json = relay_error_json(code, msg);
    char ra[24];
    int64_t wait_s = f->retry_at_ms ? (f->retry_at_ms - relay_now_ms() + 999) / 1000 : 0;
    snprintf(ra, sizeof ra, "%lld", (long long)(wait_s > 0 ? wait_s : 1));
    relay_http_header_t h[] = {{"content-type", "application/json"}, {"retry-after", ra}};
    if (!json || gone(f) ||
        relay_sink_write_whole(f->sink, f->res->status, h, f->retry_at_ms ? 2 : 1, json,
                               strlen(json)))
        client_left(f);
    free(json);
}

/* Takes the first upstream, or the next one after a failed attempt: another one at once when the
 * pool has one, else (after the backoff) the same again. 0, or the relay_err for
 * write_no_upstream. *slept: the backoff ran. */
static int next_upstream(fwd_t *f, CURL *h, const relay_http_request_t *req, int attempt,
                         CURLcode cc, int *slept)
{
    *slept = 0;
    int rc = relay_upstreams_take(f->r, &f->q, 0, &f->lease, &f->retry_at_ms);
    if (attempt > 0 && rc == RELAY_ERR_OVERLOADED) {
        int wait = backoff_ms(f->r, attempt - 1, f->discard ? f->retry_after_s : -1);
        log_retry(f, attempt - 1, cc, wait);
        for (; wait > 0 && !shutting_down(f->r); wait -= 100) /* a shutdown cuts it short */
            sleep_ms(wait < 100 ? wait : 100);
        *slept = 1;
        rc = relay_upstreams_take(f->r, &f->q, 0, &f->lease, &f->retry_at_ms);
        if (rc == RELAY_ERR_OVERLOADED)
            rc = relay_upstreams_take(f->r, &f->q, 1, &f->lease, &f->retry_at_ms);
    }
    if (!rc && attempt == 0)
        f->budget =
            f->lease.def.max_retries >= 0 ? f->lease.def.max_retries : f->r->opts.max_retries;
    if (!rc && (rc = aim(f, h, req)) != 0)
        relay_upstreams_release(f->r, &f->lease);
    return rc;
}

/* Gives the attempt's upstream back with its outcome. */
static void settle_attempt(fwd_t *f, CURLcode cc, int retry)
{
    relay_upstream_outcome_t oc = outcome_of(f, cc);
    relay_upstream_report_t rep = {
        .outcome = oc,
        .status = f->status,
        .retry_after_s = f->retry_after_s,
        .rl_remaining = ratelimit_share(f),
        .error = cc != CURLE_OK && !f->status ? curl_easy_strerror(cc) : NULL,
        .failover =
            retry && oc != RELAY_UPSTREAM_OK && relay_upstreams_has_other(f->r, &f->q, f->lease.u),
    };
    relay_strlcpy(f->prev_upstream, f->lease.def.name, sizeof f->prev_upstream);
    f->prev_outcome = oc;
    relay_upstreams_done(f->r, &f->q, &f->lease, &rep);
}

static int perform(fwd_t *f, CURL *h, const relay_http_request_t *req)
{
    CURLcode cc = CURLE_OK;
    for (int attempt = 0;; attempt++) {
        int slept;
        int rc = next_upstream(f, h, req, attempt, cc, &slept);
        if (rc) {
            write_no_upstream(f, rc);
            return f->res->error_code;
        }
        if (attempt > 0 && !slept)
            log_failover(f, attempt - 1, f->prev_upstream, f->prev_outcome);
        cc = run_attempt(f, h, attempt);
        int failed_before_client =
            !f->head_sent && !f->got_2xx_body && (cc != CURLE_OK || f->discard);
        /* A shutdown ends retrying: the answer is the shutdown's 503. */
        int retry = failed_before_client && attempt < f->budget && !shutting_down(f->r);
        settle_attempt(f, cc, retry);
        if (!retry)
            break;
    }
    if (f->hold) {
        /* A held JSON answer: sent now if it is whole; a cut one becomes an error, as nothing of
         * it reached the client (it is still billed by estimate: the upstream did the work). */
        /* Parsed once here: complete_usage reuses it (the parse was 30% of a request's
         * instructions when it ran twice; callgrind). */
        f->json_parsed = 1;
        if (cc == CURLE_OK &&
            relay_usage_parse_json(&f->res->usage, f->json.data, f->json.len) == 0) {
            release_held(f, 1);
            return 0;
        }
        f->hold = 0;
        f->res->cut = 1;
        if (f->abort_reason == ABORT_SHUTDOWN)
            write_relay_error(f, RELAY_ERR_UNAVAILABLE, SHUTDOWN_MSG);
        else
            write_relay_error(f, RELAY_ERR_UPSTREAM, "upstream answer was cut off");
        return f->res->error_code;
    }
    if (cc == CURLE_OK)
        return 0;
    if (f->abort_reason == ABORT_SHUTDOWN) {
        f->res->cut = f->head_sent;
        write_relay_error(f, RELAY_ERR_UNAVAILABLE, SHUTDOWN_MSG);
        return f->head_sent ? 0 : f->res->error_code;
    }
    if (!f->head_sent) {
        int timeout = cc == CURLE_OPERATION_TIMEDOUT || f->abort_reason == ABORT_FIRST_BYTE;
        write_relay_error(f, timeout ? RELAY_ERR_UPSTREAM_TIMEOUT : RELAY_ERR_UPSTREAM,
                          timeout ? "upstream did not answer in time"
                                  : "could not reach the upstream API");
        return f->res->error_code;
    }
    if (f->abort_reason == ABORT_DRAIN)
        return 0; /* the client left and the drain ran out: billed by estimate */
    f->res->cut = 1;
    if (f->is_sse && !relay_sse_usage(f->sse)->saw_message_stop)
        write_relay_error(f, RELAY_ERR_UPSTREAM, "upstream stream was interrupted");
    else
        f->res->error_code = RELAY_ERR_UPSTREAM;
    return 0;
}

static size_t skip_json_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Does a JSON body say "stream": true? A quick scan for relay_forward(), which has no parse of
 * the body: a wrong answer only moves the transfer to the other kind of thread. */
int relay_forward_body_asks_stream(const char *body, size_t len)
{
    static const char key[] = "\"stream\"";
    const size_t kl = sizeof key - 1;
    for (size_t i = 0; body && i + kl <= len; i++) {
        if (body[i] != '"' || memcmp(body + i, key, kl) != 0 || (i && body[i - 1] == '\\'))
            continue;
        size_t j = skip_json_ws(body, i + kl, len);
        if (j >= len || body[j] != ':')
            continue;
        j = skip_json_ws(body, j + 1, len);
        return len - j >= 4 && memcmp(body + j, "true", 4) == 0;
    }
    return 0;
}

int relay_forward(relay_t *r, const relay_http_request_t *req, const relay_sink_t *sink,
                  relay_forward_result_t *res)
{
    char session[128];
    relay_upstreams_session_of(req, NULL, session, sizeof session);
    relay_forward_options_t fo = {
        .session_id = session, .stream = relay_forward_body_asks_stream(req->body, req->body_len)};
    return relay_forward_ex(r, req, &fo, sink, res);
}

static int forward_with(fwd_t *f, relay_t *r, const relay_http_request_t *req,
                        const relay_forward_options_t *fo, const relay_sink_t *sink,
                        relay_forward_result_t *res)
{
    f->r = r;
    f->sink = sink;
    f->res = res;
    f->t_start = relay_mono_ms();
    f->q.model = fo ? fo->model : NULL;
    f->q.session = fo ? fo->session_id : NULL;
    f->q.group = fo ? fo->upstream_group : NULL;
    res->request_bytes = (int64_t)req->body_len;
    if (shutting_down(r)) {
        write_relay_error(f, RELAY_ERR_UNAVAILABLE, "the relay is shutting down; retry shortly");
        return res->error_code;
    }
    f->inline_xfer = !(fo && fo->stream);
    CURL *h = easy_get(r->forward, f->inline_xfer, &f->multi);
    relay_buf_init(&f->hdr_store, 64 * 1024);
    relay_buf_init(&f->err_body, ERR_BODY_CAP);
    relay_buf_init(&f->json, JSON_BODY_CAP);
    relay_xfer_init(&f->x);
    relay_buf_init(&f->spare, f->x.pending.cap);
    f->direct_fd = -1;
    f->x.ud = f;
    f->x.check = check_deadlines;
    f->x.on_client_gone = on_client_gone;
    int rc;
    if (!h || relay_sse_new(&f->sse, 0) != 0) {
        write_relay_error(f, RELAY_ERR_NOMEM, "out of memory");
        rc = RELAY_ERR_NOMEM;
        if (h)
            easy_put(r->forward, h, f->multi, f->inline_xfer);
    } else {
        setup_easy(f, h, req);
        rc = perform(f, h, req);
        /* The easy handle keeps a pointer to the headers list: drop it before the list goes. */
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
        easy_put(r->forward, h, f->multi, f->inline_xfer);
    }
    free_headers(f->headers);
    res->stream = f->is_sse;
    res->duration_ms = relay_mono_ms() - f->t_start;
    complete_usage(f, req);
    result_error_from_usage(res, f);
    relay_sse_free(f->sse);
    relay_buf_free(&f->hdr_store);
    relay_buf_free(&f->err_body);
    relay_buf_free(&f->json);
    relay_buf_free(&f->spare);
    relay_xfer_free(&f->x);
    return rc;
}

int relay_forward_ex(relay_t *r, const relay_http_request_t *req, const relay_forward_options_t *fo,
                     const relay_sink_t *sink, relay_forward_result_t *res)
{
    memset(res, 0, sizeof *res);
    /* On the heap, not the worker's stack: a worker's stack pages stay resident once touched, and
     * with 2,500 workers this 5 KiB (and the URL's 8 KiB) counted for every one that ever
     * forwarded a stream (smaps at 1,000 streams: 64 KiB of stack each, 12 KiB idle). */
    fwd_t *f = calloc(1, sizeof *f);
    if (!f) {
        int left = 0;
        result_error(res, RELAY_ERR_NOMEM, "out of memory");
        relay_forward_write_error(sink, 0, 0, RELAY_ERR_NOMEM, "out of memory", &left);
        res->status = relay_err_http_status(RELAY_ERR_NOMEM);
        res->client_gone = left;
        return RELAY_ERR_NOMEM;
    }
    int rc = forward_with(f, r, req, fo, sink, res);
    free(f);
    return rc;
}
