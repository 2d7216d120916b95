/* limits: allowlists, rate-limit tiers and token quota reservations, in process (Redis:
 * limits_redis.c). */
#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "budgets_internal.h"
#include "limits_internal.h"
#include "relay/pricing.h"
#include "relay/tiers.h"
#include "util.h"

/* ---- per-key state of the in-process limiter ---- */

typedef struct key_entry {
    struct key_entry *next;
    char key_id[37];
    int used_known; /* used was seeded from the store's counter */
    int64_t used, reserved, slots;
    int64_t *win; /* ring of admission times (ms), oldest at win_head */
    size_t win_head, win_len, win_cap;
    int64_t tpm_sec[LIMITS_TPM_BUCKETS], tpm_val[LIMITS_TPM_BUCKETS];
} key_entry_t;

struct relay_limits_state {
    pthread_mutex_t mu; /* guards everything below except redis (which locks itself) */
    key_entry_t **buckets;
    size_t nbuckets, nentries;
    int64_t (*clock)(void *ud);
    void *clock_ud;
    int64_t lease_ms;
    relay_limits_stats_t st;
    relay_limits_redis_t *redis;
};

static void entry_free(key_entry_t *e)
{
    free(e->win);
    free(e);
}

static void table_grow(struct relay_limits_state *st)
{
    size_t nb = st->nbuckets * 2;
    key_entry_t **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* a longer chain is slower, not wrong */
    for (size_t i = 0; i < st->nbuckets; i++) {
        for (key_entry_t *e = st->buckets[i], *next; e; e = next) {
            next = e->next;
            size_t j = relay_hash_str(e->key_id) & (nb - 1);
            e->next = b[j];
            b[j] = e;
        }
    }
    free(st->buckets);
    st->buckets = b;
    st->nbuckets = nb;
}

/* The entry of key_id, created when asked. Caller holds st->mu. NULL only when out of memory. */
static key_entry_t *entry_get(struct relay_limits_state *st, const char *key_id, int create)
{
    size_t i = relay_hash_str(key_id) & (st->nbuckets - 1);
    for (key_entry_t *e = st->buckets[i]; e; e = e->next)
        if (strcmp(e->key_id, key_id) == 0)
            return e;
    if (!create)
        return NULL;
    key_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    relay_strlcpy(e->key_id, key_id, sizeof e->key_id);
    e->next = st->buckets[i];
    st->buckets[i] = e;
    if (++st->nentries > st->nbuckets)
        table_grow(st);
    return e;
}

static int64_t limits_now_ms(struct relay_limits_state *st)
{
    return st->clock ? st->clock(st->clock_ud) : relay_now_ms();
}

/* ---- the request window: a sliding log, so no window edge ever lets 2x the limit through ---- */

static void win_expire(key_entry_t *e, int64_t now_ms, int64_t period_ms)
{
    while (e->win_len && e->win[e->win_head] <= now_ms - period_ms) {
        e->win_head = (e->win_head + 1) % e->win_cap;
        e->win_len--;
    }
}

/* Room for one more entry; the log never holds more than the tier's limit. */
static int win_reserve(key_entry_t *e, int64_t limit)
{
    if (e->win_len < e->win_cap)
        return 0;
    size_t cap = e->win_cap ? e->win_cap * 2 : 8;
    if ((int64_t)cap > limit)
        cap = (size_t)limit;
    if (cap <= e->win_len)
        cap = e->win_len + 1;
    int64_t *w = malloc(cap * sizeof *w);
    if (!w)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; i < e->win_len; i++)
        w[i] = e->win[(e->win_head + i) % e->win_cap];
    free(e->win);
    e->win = w;
    e->win_cap = cap;
    e->win_head = 0;
    return 0;
}

static void win_push(key_entry_t *e, int64_t t)
{
    e->win[(e->win_head + e->win_len) % e->win_cap] = t;
    e->win_len++;
}

/* ---- the token window: 61 one-second buckets, summed over the last minute (conservative) ---- */

static int64_t tpm_sum(const key_entry_t *e, int64_t now_s)
{
    int64_t sum = 0;
    for (int i = 0; i < LIMITS_TPM_BUCKETS; i++)
        if (e->tpm_sec[i] >= now_s - 60 && e->tpm_sec[i] <= now_s)
            sum += e->tpm_val[i];
    return sum;
}

/* How long until enough old buckets leave the window for the sum to drop below tpm. */
static int64_t tpm_retry_ms(const key_entry_t *e, int64_t now_ms, int64_t tpm)
{
    int64_t now_s = now_ms / 1000, left = tpm_sum(e, now_s);
    for (int64_t s = now_s - 60; s <= now_s; s++) {
        int i = (int)(s % LIMITS_TPM_BUCKETS);
        if (e->tpm_sec[i] == s)
            left -= e->tpm_val[i];
        if (left < tpm)
            return (s + 61) * 1000 - now_ms;
    }
    return 60000;
}

static void tpm_add(key_entry_t *e, int64_t sec, int64_t delta, int create)
{
    int i = (int)(sec % LIMITS_TPM_BUCKETS);
    if (e->tpm_sec[i] != sec) {
        if (!create)
            return; /* that second has left the window: nothing to correct */
        e->tpm_sec[i] = sec;
        e->tpm_val[i] = 0;
    }
    e->tpm_val[i] += delta;
    if (e->tpm_val[i] < 0)
        e->tpm_val[i] = 0;
}

/* ---- one decision, from the counts; the Lua script in limits_redis.c mirrors it line by line ----
 */

typedef struct limits_counts {
    int64_t n_req, oldest_ms; /* requests in the window and the oldest one's time */
    int64_t tpm_sum, tpm_retry_ms;
    int64_t slots, used, reserved;
} limits_counts_t;

static void limits_decide(const limits_take_t *t, const limits_counts_t *c, limits_verdict_t *v)
{
    memset(v, 0, sizeof *v);
    v->used = c->used;
    v->reserved = c->reserved;
    v->slots = c->slots;
    v->tpm_used = c->tpm_sum;
    v->req_remaining = t->req_limit < 0 ? -1 : t->req_limit - c->n_req;
    v->req_reset_ms = c->n_req ? c->oldest_ms + t->period_ms : t->now_ms;
    int quota = t->consumes_quota && t->token_limit > 0;
    /* used >= limit on its own: a request reserving nothing must not slip in at used == limit */
    if (quota && (c->used >= t->token_limit || c->used + t->reserve > t->token_limit)) {
        v->reason = LIMIT_QUOTA;
    } else if (t->req_limit >= 0 && c->n_req >= t->req_limit) {
        v->reason = LIMIT_REQUESTS;
        v->retry_after_ms = v->req_reset_ms - t->now_ms;
    } else if (t->tpm > 0 && t->consumes_quota && c->tpm_sum >= t->tpm) {
        v->reason = LIMIT_TOKENS;
        v->retry_after_ms = c->tpm_retry_ms;
    } else if (t->concurrent > 0 && c->slots >= t->concurrent) {
        v->reason = LIMIT_CONCURRENCY;
        v->retry_after_ms = 1000;
    } else if (quota && c->used + c->reserved + t->reserve > t->token_limit) {
        v->reason = LIMIT_QUOTA_BUSY;
        v->retry_after_ms = 1000;
    }
    if (v->req_remaining < 0 && t->req_limit >= 0)
        v->req_remaining = 0;
}

/* What a take changes in the verdict's view. */
static void limits_after_take(const limits_take_t *t, limits_verdict_t *v)
{
    if (t->req_limit >= 0) {
        if (v->req_remaining == t->req_limit)
            v->req_reset_ms = t->now_ms + t->period_ms;
        v->req_remaining--;
    }
    if (t->tpm > 0 && t->consumes_quota)
        v->tpm_used += t->tpm_cost;
    if (t->concurrent > 0)
        v->slots++;
    if (t->consumes_quota)
        v->reserved += t->reserve;
}

/* The in-process check-and-take. Caller holds st->mu. */
static int mem_take(key_entry_t *e, const limits_take_t *t, int take, limits_verdict_t *v)
{
    limits_counts_t c = {0};
    if (!e->used_known || e->used < t->used_floor) {
        e->used = e->used > t->used_floor ? e->used : t->used_floor;
        e->used_known = 1;
    }
    c.used = e->used;
    c.reserved = e->reserved;
    c.slots = e->slots;
    if (t->req_limit >= 0 && e->win_len) {
        win_expire(e, t->now_ms, t->period_ms);
        c.n_req = (int64_t)e->win_len;
        c.oldest_ms = e->win_len ? e->win[e->win_head] : 0;
    }
    if (t->tpm > 0 && t->consumes_quota) {
        c.tpm_sum = tpm_sum(e, t->now_ms / 1000);
        if (c.tpm_sum >= t->tpm)
            c.tpm_retry_ms = tpm_retry_ms(e, t->now_ms, t->tpm);
    }
    limits_decide(t, &c, v);
    if (!take || v->reason != LIMIT_OK)
        return 0;
    if (t->req_limit >= 0 && win_reserve(e, t->req_limit) != 0)
        return RELAY_ERR_NOMEM;
    if (t->req_limit >= 0)
        win_push(e, t->now_ms);
    if (t->tpm > 0 && t->consumes_quota)
        tpm_add(e, t->now_ms / 1000, t->tpm_cost, 1);
    if (t->concurrent > 0)
        e->slots++;
    if (t->consumes_quota)
        e->reserved += t->reserve;
    limits_after_take(t, v);
    return 0;
}

/* ---- allowlists ---- */

typedef struct ipaddr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t b[16];
} ipaddr_t;

/* Parses an address (no port); IPv4-mapped IPv6 becomes IPv4. 0 or -1. */
static int ip_parse_plain(const char *s, ipaddr_t *out, int *was_mapped)
{
    *was_mapped = 0;
    if (inet_pton(AF_INET, s, out->b) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, out->b) != 1)
        return -1;
    out->family = AF_INET6;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(out->b, mapped, 12) == 0) {
        memmove(out->b, out->b + 12, 4);
        out->family = AF_INET;
        *was_mapped = 1;
    }
    return 0;
}

/* Copies [s, s+n) trimmed of blanks into buf. -1 when it does not fit or is empty. */
static int trim_copy(const char *s, size_t n, char *buf, size_t cap)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (!n || n >= cap)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* An address as it appears in headers: plain, "[v6]", "[v6]:port" or "v4:port". */
static int ip_parse_loose(const char *s, size_t n, ipaddr_t *out)
{
    char buf[64];
    int mapped;
    if (trim_copy(s, n, buf, sizeof buf) != 0)
        return -1;
    char *p = buf;
    if (*p == '[') {
        char *end = strchr(p, ']');
        if (!end)
            return -1;
        *end = '\0';
        p++;
    } else {
        char *colon = strchr(p, ':');
        if (colon && !strchr(colon + 1, ':') && strchr(p, '.'))
            *colon = '\0'; /* "1.2.3.4:5678" */
    }
    return ip_parse_plain(p, out, &mapped);
}

/* "addr" or "addr/len". 0 or -1. */
static int cidr_parse(const char *s, ipaddr_t *net, int *prefix)
{
    char buf[64];
    int mapped;
    if (trim_copy(s, strlen(s), buf, sizeof buf) != 0)
        return -1;
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    if (ip_parse_plain(buf, net, &mapped) != 0)
        return -1;
    int max = net->family == AF_INET ? 32 : 128;
    if (!slash) {
        *prefix = max;
        return 0;
    }
    char *end;
    long len = strtol(slash + 1, &end, 10);
    if (end == slash + 1 || *end || len < 0)
        return -1;
    if (mapped)
        len -= 96; /* "::ffff:10.0.0.0/104" is 10.0.0.0/8 */
    if (len < 0 || len > max)
        return -1;
    *prefix = (int)len;
    return 0;
}

static int cidr_contains(const ipaddr_t *net, int prefix, const ipaddr_t *ip)
{
    if (net->family != ip->family)
        return 0;
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(net->b, ip->b, (size_t)full) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net->b[full] & mask) == (ip->b[full] & mask);
}

static int cidr_match_str(const char *rule, const ipaddr_t *ip)
{
    ipaddr_t net;
    int prefix;
    return cidr_parse(rule, &net, &prefix) == 0 && cidr_contains(&net, prefix, ip);
}

typedef int (*item_fn)(const char *item, void *ud);

/*
 * Calls fn for each item of list (a JSON array of strings, else a comma-separated list) until
 * one returns 1. *n_items counts the items seen (an empty list allows everything).
 */
static int list_any(const char *list, item_fn fn, void *ud, int *n_items)
{
    *n_items = 0;
    if (!list)
        return 0;
    const char *p = list;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p || strcmp(p, "null") == 0)
        return 0;
    json_t *j = *p == '[' ? json_loads(p, 0, NULL) : NULL;
    if (j && json_is_array(j)) {
        size_t i;
        json_t *v;
        int hit = 0;
        json_array_foreach(j, i, v)
        {
            (*n_items)++;
            if (!hit && json_is_string(v) && fn(json_string_value(v), ud))
                hit = 1;
        }
        json_decref(j);
        return hit;
    }
    json_decref(j);
    if (*p == '[') {
        *n_items = 1; /* unparsable JSON: a list was meant, so nothing matches */
        return 0;
    }
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[512];
        if (trim_copy(p, n, item, sizeof item) == 0) {
            (*n_items)++;
            if (fn(item, ud))
                return 1;
        }
        p = comma ? comma + 1 : p + n;
    }
    return 0;
}

static int ip_item(const char *item, void *ud)
{
    return cidr_match_str(item, ud);
}

int relay_limits_ip_allowed(const char *list, const char *ip)
{
    int n;
    ipaddr_t addr;
    int valid = ip && ip_parse_loose(ip, strlen(ip), &addr) == 0;
    int hit = list_any(list, ip_item, &addr, &n);
    if (n == 0)
        return 1;
    return valid && hit;
}

/* The host of an origin or URL ("https://App.Example.com:8443/x" → "app.example.com"). */
static int host_of(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    if (n && *p == '[') {
        const char *end = memchr(p, ']', n);
        if (!end)
            return -1;
        n = (size_t)(end - p - 1);
        p++;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon)
            n = (size_t)(colon - p);
    }
    while (n && p[n - 1] == '.')
        n--;
    if (trim_copy(p, n, out, cap) != 0)
        return -1;
    for (char *c = out; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    return 0;
}

static int origin_item(const char *item, void *ud)
{
    const char *host = ud;
    if (strcmp(item, "*") == 0)
        return 1;
    if (item[0] == '*' && item[1] == '.') {
        const char *suffix = item + 1; /* ".example.com": a subdomain, never example.com itself */
        size_t hl = strlen(host), sl = strlen(suffix);
        return hl > sl && strcasecmp(host + hl - sl, suffix) == 0;
    }
    char want[256];
    return host_of(item, want, sizeof want) == 0 && strcmp(want, host) == 0;
}

int relay_limits_origin_allowed(const char *list, const char *origin, const char *referer)
{
    char host[256];
    const char *src = origin && *origin ? origin : referer;
    int have = src && *src && host_of(src, host, sizeof host) == 0;
    int n;
    int hit = list_any(list, origin_item, have ? host : (char *)"", &n);
    if (n == 0)
        return 1;
    return have && hit;
}

static int model_item(const char *item, void *ud)
{
    const char *model = ud;
    size_t n = strlen(item);
    if (n && item[n - 1] == '*')
        return strncmp(model, item, n - 1) == 0;
    return strcmp(model, item) == 0;
}

int relay_limits_model_allowed(const char *list, const char *model)
{
    if (!model || !*model)
        return 1; /* nothing to check: the upstream refuses a body without a model */
    int n;
    int hit = list_any(list, model_item, (void *)model, &n);
    return n == 0 || hit;
}

/* ---- client address behind trusted proxies ---- */

static int is_trusted(const ipaddr_t *ip, const char *const *trusted, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (trusted[i] && cidr_match_str(trusted[i], ip))
            return 1;
    return 0;
}

static int ip_format(const ipaddr_t *ip, char *out, size_t cap)
{
    char buf[INET6_ADDRSTRLEN];
    if (!inet_ntop(ip->family, ip->b, buf, sizeof buf) || strlen(buf) >= cap)
        return RELAY_ERR_INVALID;
    relay_strlcpy(out, buf, cap);
    return 0;
}

/* Rightmost untrusted X-Forwarded-For hop (leftmost when all are trusted). -1 when unusable. */
static int xff_pick(const char *xff, const char *const *trusted, size_t n_trusted, ipaddr_t *out)
{
    const char *end = xff + strlen(xff);
    int found = 0;
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',')
            start--;
        ipaddr_t hop;
        if (ip_parse_loose(start, (size_t)(end - start), &hop) != 0)
            return found ? 0 : -1; /* a forged or broken hop: trust nothing left of it */
        *out = hop;
        found = 1;
        if (!is_trusted(&hop, trusted, n_trusted))
            return 0;
        end = start > xff ? start - 1 : xff;
    }
    return found ? 0 : -1;
}

int relay_limits_client_ip(const char *peer, const char *xff, const char *x_real_ip,
                           const char *const *trusted, size_t n_trusted, char *out, size_t cap)
{
    ipaddr_t ip;
    if (!peer || ip_parse_loose(peer, strlen(peer), &ip) != 0)
        return RELAY_ERR_INVALID;
    if (is_trusted(&ip, trusted, n_trusted)) {
        ipaddr_t fwd;
        if (xff && *xff && xff_pick(xff, trusted, n_trusted, &fwd) == 0)
            ip = fwd;
        else if (x_real_ip && ip_parse_loose(x_real_ip, strlen(x_real_ip), &fwd) == 0)
            ip = fwd;
    }
    return ip_format(&ip, out, cap);
}

/* ---- admit / settle ---- */

static void resolve_tier(relay_t *r, const char *name, relay_tier_def_t *def)
{
    if (name && *name && relay_tiers_get(r, name, def) == 0)
        return;
    if (r->opts.default_tier && relay_tiers_get(r, r->opts.default_tier, def) == 0)
        return;
    /* No such tier (deleted meanwhile): no rate limit rather than refusing paying traffic. */
    memset(def, 0, sizeof *def);
    relay_strlcpy(def->name, name ? name : "", sizeof def->name);
    def->requests = -1;
    def->period_s = 60;
}

static int64_t reserve_for(relay_t *r, const relay_admit_request_t *req)
{
    if (!req->consumes_quota)
        return 0;
    int64_t out = req->max_tokens > 0 ? req->max_tokens : 0;
    if (r->opts.reservation_ceiling >= 0 && out > r->opts.reservation_ceiling)
        out = r->opts.reservation_ceiling;
    int64_t in = req->input_tokens_estimate > 0 ? req->input_tokens_estimate : 0;
    return relay_limits_billed_tokens(r, in, out, 0, 0);
}

static int deny(relay_t *r, const relay_admit_request_t *req, relay_admission_t *out,
                const char *reason, const char *what, relay_error_t *err)
{
    relay_strlcpy(out->reason, reason, sizeof out->reason);
    out->code = RELAY_ERR_PERMISSION;
    pthread_mutex_lock(&r->limits->mu);
    r->limits->st.refused_permission++;
    pthread_mutex_unlock(&r->limits->mu);
    json_t *f = json_pack("{s:s, s:s, s:s}", "key_id", out->key_id, "reason", reason, "client_ip",
                          req->client_ip ? req->client_ip : "");
    char *fields = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    relay_log(r, RELAY_LOG_INFO, "limits.denied", fields,
              "request refused: %s not in the key's allowlist", what);
    free(fields);
    return relay_error_set(err, RELAY_ERR_PERMISSION, "this API key is not allowed to use this %s",
                           what);
}

static int check_allowlists(relay_t *r, const relay_admit_request_t *req, relay_admission_t *out,
                            relay_error_t *err)
{
    const relay_key_record_t *k = req->key;
    if (!relay_limits_ip_allowed(k->allowed_ips, req->client_ip))
        return deny(r, req, out, "ip", "client address", err);
    if (!relay_limits_origin_allowed(k->allowed_origins, req->origin, req->referer))
        return deny(r, req, out, "origin", "origin", err);
    if (!relay_limits_model_allowed(k->allowed_models, req->model))
        return deny(r, req, out, "model", "model", err);
    return 0;
}

static int ceil_s(int64_t ms)
{
    int64_t s = (ms + 999) / 1000;
    return s < 1 ? 1 : (int)(s > INT32_MAX ? INT32_MAX : s);
}

/* Turns a refusal into the admission's fields, the counters and the client's message. */
static int refuse(relay_t *r, const limits_take_t *t, const limits_verdict_t *v,
                  relay_admission_t *out, relay_error_t *err)
{
    struct relay_limits_state *st = r->limits;
    int code = RELAY_ERR_RATE_LIMITED;
    out->retry_after_s = ceil_s(v->retry_after_ms);
    out->reset_at = (t->now_ms + v->retry_after_ms + 999) / 1000;
    pthread_mutex_lock(&st->mu);
    switch (v->reason) {
    case LIMIT_QUOTA:
    case LIMIT_QUOTA_BUSY:
        st->st.refused_quota++;
        break;
    case LIMIT_REQUESTS:
        st->st.refused_requests++;
        break;
    case LIMIT_TOKENS:
        st->st.refused_tokens++;
        break;
    default:
        st->st.refused_concurrency++;
    }
    pthread_mutex_unlock(&st->mu);
    if (v->reason == LIMIT_QUOTA || v->reason == LIMIT_QUOTA_BUSY) {
        relay_strlcpy(out->reason, "quota", sizeof out->reason);
        out->limit = t->token_limit;
        out->remaining = t->token_limit > v->used ? t->token_limit - v->used : 0;
    }
    if (v->reason == LIMIT_QUOTA) {
        code = RELAY_ERR_QUOTA;
        out->retry_after_s = 0;
        out->reset_at = 0;
        if (v->used >= t->token_limit)
            relay_error_set(err, code,
                            "token quota exhausted: %" PRId64 " of %" PRId64 " tokens used",
                            v->used, t->token_limit);
        else
            relay_error_set(err, code,
                            "token quota nearly exhausted: %" PRId64 " of %" PRId64
                            " tokens used and this request may use up to %" PRId64
                            " more; lower max_tokens to fit",
                            v->used, t->token_limit, t->reserve);
    } else if (v->reason == LIMIT_QUOTA_BUSY) {
        relay_error_set(err, code,
                        "token quota nearly exhausted: %" PRId64 " of %" PRId64
                        " tokens used and %" PRId64
                        " reserved by requests in flight; retry shortly",
                        v->used, t->token_limit, v->reserved);
    } else if (v->reason == LIMIT_REQUESTS) {
        relay_strlcpy(out->reason, "requests", sizeof out->reason);
        out->limit = t->req_limit;
        out->remaining = 0;
        relay_error_set(err, code,
                        "rate limit exceeded: %" PRId64 " requests per %" PRId64 " s for tier %s",
                        t->req_limit, t->period_ms / 1000, out->tier);
    } else if (v->reason == LIMIT_TOKENS) {
        relay_strlcpy(out->reason, "tokens", sizeof out->reason);
        out->limit = t->tpm;
        out->remaining = 0;
        relay_error_set(err, code, "rate limit exceeded: %" PRId64 " tokens per minute for tier %s",
                        t->tpm, out->tier);
    } else {
        relay_strlcpy(out->reason, "concurrency", sizeof out->reason);
        out->limit = t->concurrent;
        out->remaining = 0;
        relay_error_set(err, code,
                        "rate limit exceeded: %" PRId64 " concurrent requests for tier %s",
                        t->concurrent, out->tier);
    }
    out->code = code;
    return code;
}

static void fill_take(relay_t *r, const relay_admit_request_t *req, const relay_tier_def_t *def,
                      const char *id, limits_take_t *t)
{
    memset(t, 0, sizeof *t);
    t->key_id = req->key->id;
    t->admission_id = id;
    t->now_ms = limits_now_ms(r->limits);
    t->req_limit = def->requests < 0 ? -1 : def->requests;
    t->period_ms = (def->period_s > 0 ? def->period_s : 60) * 1000;
    t->tpm = def->tokens_per_minute > 0 ? def->tokens_per_minute : 0;
    t->concurrent = def->concurrent > 0 ? def->concurrent : 0;
    t->lease_ms = r->limits->lease_ms;
    t->consumes_quota = req->consumes_quota;
    t->token_limit = req->key->token_limit > 0 ? req->key->token_limit : 0;
    t->reserve = reserve_for(r, req);
    t->tpm_cost = t->reserve;
    t->used_floor = req->key->token_used > 0 ? req->key->token_used : 0;
}

/* Decides in Redis when it is up, else in process. Fills v; sets *backend. */
static int take(relay_t *r, limits_take_t *t, limits_verdict_t *v, int *backend)
{
    struct relay_limits_state *st = r->limits;
    pthread_mutex_lock(&st->mu);
    key_entry_t *e = entry_get(st, t->key_id, 1);
    /* Redis seeds a quota it lost (restarted empty) from the floor: this instance's mirror is
     * newer than the cached key's counter (settles not yet written, or not yet re-read), and
     * never more than what was really used, so seeding from it overshoots nothing. */
    if (e && e->used_known && e->used > t->used_floor)
        t->used_floor = e->used;
    pthread_mutex_unlock(&st->mu);
    if (!e)
        return RELAY_ERR_NOMEM;
    if (st->redis) {
        if (limits_redis_admit(st->redis, t, v) == 0) {
            *backend = RELAY_ADMIT_REDIS;
            pthread_mutex_lock(&st->mu);
            if (v->used > e->used) /* keep the mirror close, for when Redis goes away */
                e->used = v->used;
            e->used_known = 1;
            pthread_mutex_unlock(&st->mu);
            return 0;
        }
        pthread_mutex_lock(&st->mu);
        st->st.redis_fallbacks++;
        pthread_mutex_unlock(&st->mu);
    }
    *backend = RELAY_ADMIT_MEMORY;
    pthread_mutex_lock(&st->mu);
    int rc = mem_take(e, t, 1, v);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* The worst case of one request in USD: its input estimate and reserved output at its price. */
static double cost_estimate(relay_t *r, const relay_admit_request_t *req)
{
    int64_t out = req->max_tokens > 0 ? req->max_tokens : 0;
    if (r->opts.reservation_ceiling >= 0 && out > r->opts.reservation_ceiling)
        out = r->opts.reservation_ceiling;
    int64_t in = req->input_tokens_estimate > 0 ? req->input_tokens_estimate : 0;
    relay_price_t p;
    relay_pricing_lookup(r, req->model, &p);
    return relay_pricing_cost(&p, in, out, 0, 0, 0);
}

/* Cost budgets go first: a spent budget refuses before a rate-limit slot is taken. */
static int admit_budgets(relay_t *r, const relay_admit_request_t *req, const relay_tier_def_t *def,
                         int64_t now_ms, relay_admission_t *out, relay_error_t *err)
{
    const char *tier = def->cost_limits[0] ? def->cost_limits : NULL;
    if (!req->consumes_quota || (!req->key->cost_limits && !tier)) {
        relay_strlcpy(out->model, req->model ? req->model : "", sizeof out->model);
        return 0;
    }
    int rc = budgets_admit(r, req->key, tier, req->model, cost_estimate(r, req), now_ms, out, err);
    if (rc) {
        pthread_mutex_lock(&r->limits->mu);
        r->limits->st.refused_budget++;
        pthread_mutex_unlock(&r->limits->mu);
    }
    return rc;
}

int relay_limits_admit(relay_t *r, const relay_admit_request_t *req, relay_admission_t *out,
                       relay_error_t *err)
{
    memset(out, 0, sizeof *out);
    if (!r || !r->limits || !req || !req->key || !req->key->id[0])
        return relay_error_set(err, RELAY_ERR_INVALID, "limits: no key to admit");
    relay_strlcpy(out->key_id, req->key->id, sizeof out->key_id);
    if (relay_uuid4(out->id, sizeof out->id) != 0)
        return relay_error_set(err, RELAY_ERR_INTERNAL, "limits: no random source");
    int rc = check_allowlists(r, req, out, err);
    if (rc)
        return rc;
    relay_tier_def_t def;
    resolve_tier(r, req->key->rate_limit_tier, &def);
    relay_strlcpy(out->tier, def.name, sizeof out->tier);
    limits_take_t t;
    limits_verdict_t v;
    int backend;
    fill_take(r, req, &def, out->id, &t);
    if ((rc = admit_budgets(r, req, &def, t.now_ms, out, err)) != 0)
        return rc;
    rc = take(r, &t, &v, &backend);
    if (rc || v.reason != LIMIT_OK)
        budgets_release(r, out, t.now_ms); /* another limit refused: give the cost back */
    if (rc)
        return relay_error_set(err, rc, "limits: out of memory");
    out->requests_limit = t.req_limit;
    out->requests_remaining = v.req_remaining;
    out->requests_reset_ms = v.req_reset_ms;
    out->tokens_limit = t.tpm;
    out->tokens_remaining = t.tpm > v.tpm_used ? t.tpm - v.tpm_used : 0;
    if (v.reason != LIMIT_OK)
        return refuse(r, &t, &v, out, err);
    out->backend = backend;
    out->reserved_tokens = t.consumes_quota ? t.reserve : 0;
    out->has_slot = t.concurrent > 0;
    if (t.tpm > 0 && t.consumes_quota) {
        out->tpm_charged = t.tpm_cost;
        out->tpm_second = t.now_ms / 1000;
    }
    pthread_mutex_lock(&r->limits->mu);
    r->limits->st.admitted++;
    pthread_mutex_unlock(&r->limits->mu);
    return 0;
}

void relay_limits_settle(relay_t *r, relay_admission_t *a, int64_t billed)
{
    if (!a)
        return;
    /* Without the real cost, charge the reservation's cost per reserved token: nothing for a
       request the upstream did not bill, about the estimate for one that used its reservation. */
    double cost = a->reserved_tokens > 0 && billed > 0
                      ? a->cost_reserved * (double)billed / (double)a->reserved_tokens
                      : 0;
    relay_limits_settle_cost(r, a, billed, cost);
}

void relay_limits_settle_cost(relay_t *r, relay_admission_t *a, int64_t billed, double cost)
{
    if (!r || !r->limits || !a || a->settled || a->backend == RELAY_ADMIT_NONE)
        return;
    struct relay_limits_state *st = r->limits;
    a->settled = 1;
    budgets_settle(r, a, cost, limits_now_ms(st));
    if (billed < 0)
        billed = 0;
    pthread_mutex_lock(&st->mu);
    key_entry_t *e = entry_get(st, a->key_id, 1);
    if (e) {
        e->used += billed;
        if (a->backend == RELAY_ADMIT_MEMORY) {
            e->reserved = e->reserved > a->reserved_tokens ? e->reserved - a->reserved_tokens : 0;
            if (a->has_slot && e->slots > 0)
                e->slots--;
            if (a->tpm_charged)
                tpm_add(e, a->tpm_second, billed - a->tpm_charged, 0);
        }
    }
    pthread_mutex_unlock(&st->mu);
    if (a->backend == RELAY_ADMIT_REDIS && st->redis) {
        limits_settle_op_t op = {.reserved = a->reserved_tokens,
                                 .billed = billed,
                                 .tpm_second = a->tpm_second,
                                 .tpm_delta = a->tpm_charged ? billed - a->tpm_charged : 0,
                                 .has_slot = a->has_slot};
        relay_strlcpy(op.key_id, a->key_id, sizeof op.key_id);
        relay_strlcpy(op.admission_id, a->id, sizeof op.admission_id);
        limits_redis_settle(st->redis, &op);
    }
}

int relay_limits_quota(relay_t *r, const relay_key_record_t *key, relay_quota_view_t *out)
{
    memset(out, 0, sizeof *out);
    if (!r || !r->limits || !key)
        return RELAY_ERR_INVALID;
    relay_tier_def_t def;
    resolve_tier(r, key->rate_limit_tier, &def);
    relay_admit_request_t req = {.key = key, .consumes_quota = 0};
    limits_take_t t;
    limits_verdict_t v;
    fill_take(r, &req, &def, "", &t);
    t.token_limit = 0; /* a view: no quota decision */
    struct relay_limits_state *st = r->limits;
    int rc = -1;
    if (st->redis)
        rc = limits_redis_peek(st->redis, &t, &v);
    pthread_mutex_lock(&st->mu);
    key_entry_t *e = entry_get(st, key->id, 1);
    if (rc != 0 && e)
        rc = mem_take(e, &t, 0, &v);
    pthread_mutex_unlock(&st->mu);
    if (rc != 0)
        return RELAY_ERR_NOMEM;
    out->token_limit = key->token_limit > 0 ? key->token_limit : 0;
    out->token_used = v.used > key->token_used ? v.used : key->token_used;
    out->token_reserved = v.reserved;
    out->token_remaining =
        out->token_limit
            ? (out->token_limit > out->token_used ? out->token_limit - out->token_used : 0)
            : -1;
    out->usage_percentage =
        out->token_limit ? 100.0 * (double)out->token_used / (double)out->token_limit : 0;
    out->is_quota_exceeded = out->token_limit && out->token_used >= out->token_limit;
    relay_strlcpy(out->tier, def.name, sizeof out->tier);
    out->requests_limit = t.req_limit;
    out->requests_remaining = v.req_remaining;
    out->reset_at = (v.req_reset_ms + 999) / 1000;
    return 0;
}

/* ---- helpers for hosts ---- */

int64_t relay_limits_billed_tokens(relay_t *r, int64_t in, int64_t out, int64_t cc, int64_t cr)
{
    const relay_options_t *o = &r->opts;
    if (o->weight_input == 1.0 && o->weight_output == 1.0 && o->weight_cache_creation == 1.0 &&
        o->weight_cache_read == 1.0)
        return in + out + cc + cr; /* exact, the common case */
    double b = (double)in * o->weight_input + (double)out * o->weight_output +
               (double)cc * o->weight_cache_creation + (double)cr * o->weight_cache_read;
    return b > 0 ? (int64_t)llround(b) : 0;
}

static void add_header_i64(relay_http_response_t *resp, const char *name, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    relay_http_response_add_header(resp, name, buf);
}

void relay_limits_refusal_headers(const relay_admission_t *a, int code, relay_http_response_t *resp)
{
    if (code == RELAY_ERR_QUOTA) {
        relay_http_response_add_header(resp, "x-should-retry", "false");
        return;
    }
    if (code != RELAY_ERR_RATE_LIMITED)
        return;
    add_header_i64(resp, "retry-after", a->retry_after_s > 0 ? a->retry_after_s : 1);
    char iso[32];
    if (a->requests_limit >= 0) {
        add_header_i64(resp, "anthropic-ratelimit-requests-limit", a->requests_limit);
        add_header_i64(resp, "anthropic-ratelimit-requests-remaining",
                       a->requests_remaining > 0 ? a->requests_remaining : 0);
        relay_iso8601((a->requests_reset_ms + 999) / 1000, iso, sizeof iso);
        relay_http_response_add_header(resp, "anthropic-ratelimit-requests-reset", iso);
    }
    if (a->tokens_limit > 0) {
        add_header_i64(resp, "anthropic-ratelimit-tokens-limit", a->tokens_limit);
        add_header_i64(resp, "anthropic-ratelimit-tokens-remaining", a->tokens_remaining);
    }
}

const char *relay_limits_redis_status(relay_t *r)
{
    if (!r || !r->limits || !r->limits->redis)
        return "disabled";
    return limits_redis_is_up(r->limits->redis) ? "ok" : "down";
}

void relay_limits_get_stats(relay_t *r, relay_limits_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if (!r || !r->limits)
        return;
    pthread_mutex_lock(&r->limits->mu);
    *out = r->limits->st;
    pthread_mutex_unlock(&r->limits->mu);
    if (r->limits->redis) {
        limits_redis_stats(r->limits->redis, &out->redis_errors, &out->redis_settles_lost);
        out->redis_up = limits_redis_is_up(r->limits->redis);
    }
}

relay_limits_redis_t *relay_limits_redis_up(relay_t *r, int64_t *lease_ms)
{
    struct relay_limits_state *st = r->limits;
    if (!st || !st->redis || !limits_redis_is_up(st->redis))
        return NULL;
    *lease_ms = st->lease_ms;
    return st->redis;
}

void relay_limits_count_budget_fallback(relay_t *r)
{
    pthread_mutex_lock(&r->limits->mu);
    r->limits->st.redis_fallbacks++;
    pthread_mutex_unlock(&r->limits->mu);
}

int64_t relay_limits_now_ms(relay_t *r)
{
    return r->limits ? limits_now_ms(r->limits) : relay_now_ms();
}

void relay_limits_set_clock_for_tests(relay_t *r, int64_t (*now_ms)(void *ud), void *ud)
{
    pthread_mutex_lock(&r->limits->mu);
    r->limits->clock = now_ms;
    r->limits->clock_ud = ud;
    pthread_mutex_unlock(&r->limits->mu);
}

void relay_limits_lose_redis_replies_for_tests(relay_t *r, int n)
{
    if (r->limits->redis)
        limits_redis_lose_replies_for_tests(r->limits->redis, n);
}

/* ---- module hooks ---- */

int relay_limits_start(relay_t *r, relay_error_t *err)
{
    struct relay_limits_state *st = calloc(1, sizeof *st);
    if (!st)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    st->nbuckets = 64;
    st->buckets = calloc(st->nbuckets, sizeof *st->buckets);
    if (!st->buckets) {
        free(st);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&st->mu, NULL);
    /* A slot or reservation whose settle never reaches Redis (instance crash) ends after the
       longest a request may run, so a crash cannot lock a key out for good. */
    st->lease_ms = (int64_t)(r->opts.upstream_timeout_s * 1000) + r->opts.drain_timeout_ms + 60000;
    r->limits = st;
    if (r->opts.redis_url && *r->opts.redis_url) {
        int timeout = r->opts.redis_timeout_ms > 0 ? r->opts.redis_timeout_ms : 200;
        int rc = limits_redis_new(&st->redis, r, r->opts.redis_url, timeout, err);
        if (rc) {
            relay_limits_stop(r);
            return rc;
        }
    }
    return 0;
}

void relay_limits_stop(relay_t *r)
{
    struct relay_limits_state *st = r->limits;
    if (!st)
        return;
    if (st->redis)
        limits_redis_free(st->redis);
    for (size_t i = 0; i < st->nbuckets; i++) {
        for (key_entry_t *e = st->buckets[i], *next; e; e = next) {
            next = e->next;
            entry_free(e);
        }
    }
    free(st->buckets);
    pthread_mutex_destroy(&st->mu);
    free(st);
    r->limits = NULL;
}
