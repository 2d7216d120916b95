/* upstreams: the pool's state: choice by priority and weight, sticky sessions, cooldowns after
 * 429/529, passive health from recent errors, broken keys. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "limits_internal.h"
#include "upstreams_internal.h"
#include "util.h"

#define MAX_UPSTREAMS   256 /* entries ever held, deleted ones included */
#define HEALTH_BUCKETS  30  /* of 10 s: the last five minutes */
#define BUCKET_MS       10000
#define HEALTH_WINDOW   6     /* buckets judged for passive health: the last minute */
#define HEALTH_MIN_REQS 4     /* fewer requests than this say nothing */
#define COOL_BASE_MS    1000  /* first cooldown without a retry-after; doubles per streak */
#define COOL_MAX_MS     60000 /* longest backoff cooldown */
#define RETRY_AFTER_MAX 3600  /* longest honoured retry-after, seconds */
#define RL_LOW          0.05  /* a key with less than this share left is steered around ... */
#define RL_FRESH_MS     60000 /* ... while that report is this recent */
#define SESSION_BUCKETS 4096
#define MAX_STATUSES    24

typedef struct bucket {
    int64_t start; /* Unix ms of the bucket's 10 s */
    uint32_t requests, errors;
} bucket_t;

struct relay_upstream {
    relay_upstream_def_t def; /* changed under the pool's lock (PATCH) */
    char id[80];
    int from_db, deleted, disabled, broken;
    int in_flight;
    int64_t cooldown_until; /* Unix ms */
    int cool_streak;
    int64_t swrr; /* smooth weighted round robin's current weight */
    bucket_t buckets[HEALTH_BUCKETS];
    char last_error[160];
    int64_t last_error_at;
    double rl_remaining;
    int64_t rl_at;
    uint64_t cooldowns, requests;
    struct {
        char status[16];
        uint64_t n;
    } by_status[MAX_STATUSES];
    int n_status;
    uint64_t failovers[6];
};

typedef struct session {
    struct session *next;
    int64_t expires; /* Unix ms */
    char upstream[64];
    char id[128];
} session_t;

struct relay_upstreams {
    pthread_mutex_t mu;
    relay_upstream_t *u[MAX_UPSTREAMS];
    size_t n;
    session_t *sessions[SESSION_BUCKETS];
    size_t n_sessions;
    int64_t (*clock)(void *ud);
    void *clock_ud;
    int synced; /* the stored upstreams were loaded once */
};

/* ---- names and patterns ---- */

const char *relay_upstreams_check_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != n)
        return "expected a name of 1 to 63 letters, digits, '-', '_' or '.'";
    return NULL;
}

const char *relay_upstreams_check_model(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/*?") != n)
        return "expected a model pattern of 1 to 63 letters, digits, '-', '_', '.', ':', '@', "
               "'/' and the wildcards '*' and '?'";
    return NULL;
}

int relay_upstreams_model_match(const char *p, const char *m)
{
    const char *star = NULL, *resume = NULL;
    while (*m) {
        if (*p == '*') {
            star = p++;
            resume = m;
        } else if (*p == '?' || *p == *m) {
            p++, m++;
        } else if (star) {
            p = star + 1;
            m = ++resume;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

/* ---- clock and lifecycle ---- */

static int64_t now_ms(const struct relay_upstreams *p)
{
    return p->clock ? p->clock(p->clock_ud) : relay_now_ms();
}

void relay_upstreams_set_clock_for_tests(relay_t *r, int64_t (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&r->upstreams->mu);
    r->upstreams->clock = fn;
    r->upstreams->clock_ud = ud;
    pthread_mutex_unlock(&r->upstreams->mu);
}

/* Under mu. */
static relay_upstream_t *find(struct relay_upstreams *p, const char *id)
{
    for (size_t i = 0; i < p->n; i++)
        if (!p->u[i]->deleted && strcmp(p->u[i]->id, id) == 0)
            return p->u[i];
    return NULL;
}

static relay_upstream_t *find_name(struct relay_upstreams *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (!p->u[i]->deleted && strcmp(p->u[i]->def.name, name) == 0)
            return p->u[i];
    return NULL;
}

/* Under mu: a deleted entry no lease holds, once the table is full (a request's list of tried
 * upstreams may still name it, which only makes that request skip the newcomer). */
static relay_upstream_t *reusable(struct relay_upstreams *p)
{
    for (size_t i = 0; p->n >= MAX_UPSTREAMS && i < p->n; i++)
        if (p->u[i]->deleted && p->u[i]->in_flight == 0)
            return p->u[i];
    return NULL;
}

/* Under mu. */
static int put_locked(struct relay_upstreams *p, const char *id, const relay_upstream_def_t *d,
                      int from_db, int disabled)
{
    relay_upstream_t *u = find(p, id);
    relay_upstream_t *same = find_name(p, d->name);
    if (same && same != u)
        return RELAY_ERR_CONFLICT;
    if (!u && (u = reusable(p)) != NULL) {
        memset(u, 0, sizeof *u);
    } else if (!u) {
        if (p->n >= MAX_UPSTREAMS || !(u = calloc(1, sizeof *u)))
            return RELAY_ERR_TOO_LARGE;
        p->u[p->n++] = u;
    }
    if (!u->id[0]) {
        relay_strlcpy(u->id, id, sizeof u->id);
        u->rl_remaining = -1;
    } else if (strcmp(u->def.api_key, d->api_key) != 0) {
        u->broken = 0; /* a new key deserves a new chance */
    }
    u->def = *d;
    u->from_db = from_db;
    u->disabled = disabled;
    return 0;
}

int relay_upstreams_mark_synced(relay_t *r)
{
    return __atomic_exchange_n(&r->upstreams->synced, 1, __ATOMIC_SEQ_CST);
}

int relay_upstreams_name_free(relay_t *r, const char *name, const char *id)
{
    pthread_mutex_lock(&r->upstreams->mu);
    relay_upstream_t *u = find_name(r->upstreams, name);
    int taken = u && strcmp(u->id, id) != 0;
    pthread_mutex_unlock(&r->upstreams->mu);
    return taken ? RELAY_ERR_CONFLICT : 0;
}

int relay_upstreams_put(relay_t *r, const char *id, const relay_upstream_def_t *d, int from_db,
                        int disabled)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    int rc = put_locked(p, id, d, from_db, disabled);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static void primary_def(const relay_options_t *o, relay_upstream_def_t *d)
{
    memset(d, 0, sizeof *d);
    relay_strlcpy(d->name, o->upstream_name && *o->upstream_name ? o->upstream_name : "anthropic",
                  sizeof d->name);
    relay_strlcpy(d->url, o->upstream_url ? o->upstream_url : "https://api.anthropic.com",
                  sizeof d->url);
    relay_strlcpy(d->api_key, o->upstream_api_key, sizeof d->api_key);
    d->weight = 1;
    d->max_retries = -1;
}

int relay_upstreams_start(relay_t *r, relay_error_t *err)
{
    struct relay_upstreams *p = calloc(1, sizeof *p);
    if (!p)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&p->mu, NULL);
    r->upstreams = p;
    const relay_options_t *o = &r->opts;
    relay_upstream_def_t d;
    char id[80];
    int rc = 0;
    if (o->upstream_api_key && *o->upstream_api_key) {
        primary_def(o, &d);
        if (relay_upstreams_check_name(d.name)) {
            explicit_bzero(&d, sizeof d);
            return relay_error_set(err, RELAY_ERR_CONFIG,
                                   "upstream_name: expected 1 to 63 of A-Za-z0-9._-");
        }
        snprintf(id, sizeof id, "config:%s", d.name);
        rc = put_locked(p, id, &d, 0, 0);
        explicit_bzero(&d, sizeof d);
    }
    for (size_t i = 0; !rc && i < o->n_upstreams; i++) {
        snprintf(id, sizeof id, "config:%s", o->upstreams[i].name);
        rc = relay_upstreams_check_name(o->upstreams[i].name)
                 ? RELAY_ERR_INVALID
                 : put_locked(p, id, &o->upstreams[i], 0, 0);
    }
    if (rc)
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "upstreams: a name is invalid or taken twice, or too many");
    return relay_upstreams_sync(r, err) == RELAY_ERR_NOMEM ? RELAY_ERR_NOMEM : 0;
}

void relay_upstreams_stop(relay_t *r)
{
    struct relay_upstreams *p = r->upstreams;
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        explicit_bzero(p->u[i], sizeof *p->u[i]);
        free(p->u[i]);
    }
    for (size_t b = 0; b < SESSION_BUCKETS; b++)
        for (session_t *s = p->sessions[b], *next; s; s = next) {
            next = s->next;
            free(s);
        }
    pthread_mutex_destroy(&p->mu);
    free(p);
    r->upstreams = NULL;
}

/* ---- health ---- */

static bucket_t *bucket_now(relay_upstream_t *u, int64_t now)
{
    int64_t start = now - now % BUCKET_MS;
    bucket_t *b = &u->buckets[(start / BUCKET_MS) % HEALTH_BUCKETS];
    if (b->start != start)
        *b = (bucket_t){.start = start};
    return b;
}

/* Requests and errors in the last `buckets` buckets. */
static void recent(const relay_upstream_t *u, int64_t now, int buckets, int64_t *req, int64_t *err)
{
    *req = *err = 0;
    int64_t oldest = now - now % BUCKET_MS - (int64_t)(buckets - 1) * BUCKET_MS;
    for (int i = 0; i < HEALTH_BUCKETS; i++)
        if (u->buckets[i].start >= oldest) {
            *req += u->buckets[i].requests;
            *err += u->buckets[i].errors;
        }
}

/* Passive health: half of the last minute's requests (at least a few) failing is unhealthy. */
static int errors_low(const relay_upstream_t *u, int64_t now)
{
    int64_t req, err;
    recent(u, now, HEALTH_WINDOW, &req, &err);
    return req < HEALTH_MIN_REQS || err * 2 < req;
}

static const char *state_of(const relay_upstream_t *u, int64_t now)
{
    return u->disabled               ? "disabled"
           : u->broken               ? "broken"
           : u->cooldown_until > now ? "cooling"
                                     : "ok";
}

/* ---- sessions ---- */

static size_t session_bucket(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *c = (const unsigned char *)id; *c; c++)
        h = (h ^ *c) * 1099511628211ULL;
    return (size_t)(h % SESSION_BUCKETS);
}

/* Under mu: the upstream name the session is on, or NULL; expired entries are dropped. */
static const char *session_get(struct relay_upstreams *p, const char *id, int64_t now)
{
    session_t **pp = &p->sessions[session_bucket(id)];
    while (*pp) {
        session_t *s = *pp;
        if (s->expires <= now) {
            *pp = s->next;
            free(s);
            p->n_sessions--;
        } else if (strcmp(s->id, id) == 0) {
            return s->upstream;
        } else {
            pp = &s->next;
        }
    }
    return NULL;
}

/* Under mu. Past session_max the oldest of the bucket gives way; 1 when the binding changed or
 * is past half its life (so the shared copy in Redis is refreshed while the session lasts). */
static int session_put(struct relay_upstreams *p, size_t max, const char *id, const char *up,
                       int64_t expires, int64_t now)
{
    size_t b = session_bucket(id);
    session_get(p, id, now); /* sweeps the bucket's expired entries */
    for (session_t *s = p->sessions[b]; s; s = s->next)
        if (strcmp(s->id, id) == 0) {
            int changed = strcmp(s->upstream, up) != 0 || s->expires - now < (expires - now) / 2;
            relay_strlcpy(s->upstream, up, sizeof s->upstream);
            s->expires = expires;
            return changed;
        }
    if (p->n_sessions >= max && p->sessions[b]) {
        session_t *old = p->sessions[b];
        p->sessions[b] = old->next;
        free(old);
        p->n_sessions--;
    }
    session_t *s = p->n_sessions < max ? calloc(1, sizeof *s) : NULL;
    if (!s)
        return 0;
    relay_strlcpy(s->id, id, sizeof s->id);
    relay_strlcpy(s->upstream, up, sizeof s->upstream);
    s->expires = expires;
    s->next = p->sessions[b];
    p->sessions[b] = s;
    p->n_sessions++;
    return 1;
}

static void redis_session_key(const char *id, char *out, size_t cap)
{
    uint8_t h[32];
    char hex[65];
    relay_sha256(id, strlen(id), h);
    relay_hex(h, 16, hex);
    snprintf(out, cap, "relay:session:%s", hex);
}

/* Another instance may have placed the session: ask Redis when this one does not know it. */
static void session_from_redis(relay_t *r, const char *id)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    int known = session_get(p, id, now_ms(p)) != NULL;
    pthread_mutex_unlock(&p->mu);
    int64_t lease;
    relay_limits_redis_t *rd = known ? NULL : relay_limits_redis_up(r, &lease);
    char key[96], name[64];
    redis_session_key(id, key, sizeof key);
    if (!rd || limits_redis_get(rd, key, name, sizeof name) != 0)
        return;
    pthread_mutex_lock(&p->mu);
    int64_t now = now_ms(p);
    session_put(p, r->opts.session_max, id, name, now + (int64_t)r->opts.session_ttl_s * 1000, now);
    pthread_mutex_unlock(&p->mu);
}

/* ---- choice ---- */

static int tried(const relay_upstream_query_t *q, const relay_upstream_t *u)
{
    for (int i = 0; i < q->n_tried; i++)
        if (q->tried[i] == u)
            return 1;
    return 0;
}

static int serves(const relay_upstream_t *u, const relay_upstream_query_t *q)
{
    const char *g = q->group ? q->group : "";
    if (u->deleted || u->disabled || u->broken || strcmp(u->def.group, g) != 0)
        return 0;
    if (u->def.n_models && q->model && *q->model) {
        int any = 0;
        for (int i = 0; i < u->def.n_models && !any; i++)
            any = relay_upstreams_model_match(u->def.models[i], q->model);
        if (!any)
            return 0;
    }
    return 1;
}

/* Could u take q now? again: an upstream q already tried may be retaken, cooling or not. */
static int usable(const relay_upstream_t *u, const relay_upstream_query_t *q, int again,
                  int64_t now)
{
    if (!serves(u, q) || (u->def.max_concurrency && u->in_flight >= u->def.max_concurrency))
        return 0;
    if (tried(q, u))
        return again;
    return u->cooldown_until <= now;
}

static int rl_low(const relay_upstream_t *u, int64_t now)
{
    return u->rl_remaining >= 0 && u->rl_remaining < RL_LOW && now - u->rl_at < RL_FRESH_MS;
}

typedef struct choice {
    relay_upstream_t *c[MAX_UPSTREAMS];
    size_t n;
} choice_t;

/* The candidates: usable, of the best priority, healthy ones first; with steer, keys near their
 * rate limit only when nothing else is left (a session already on one keeps it). */
static void candidates(struct relay_upstreams *p, const relay_upstream_query_t *q, int again,
                       int steer, int64_t now, choice_t *ch)
{
    ch->n = 0;
    for (int pass = steer ? 0 : 1; pass < 3 && !ch->n; pass++) {
        int best = -1;
        for (size_t i = 0; i < p->n; i++) {
            relay_upstream_t *u = p->u[i];
            if (!usable(u, q, again, now) || (pass < 2 && !errors_low(u, now)) ||
                (pass == 0 && rl_low(u, now)))
                continue;
            if (best < 0 || u->def.priority < best) {
                best = u->def.priority;
                ch->n = 0;
            }
            if (u->def.priority == best)
                ch->c[ch->n++] = u;
        }
    }
}

/* Smooth weighted round robin (nginx's): exact shares at any concurrency, interleaved. */
static relay_upstream_t *swrr(choice_t *ch)
{
    int64_t total = 0;
    relay_upstream_t *best = NULL;
    for (size_t i = 0; i < ch->n; i++) {
        relay_upstream_t *u = ch->c[i];
        u->swrr += u->def.weight;
        total += u->def.weight;
        if (!best || u->swrr > best->swrr)
            best = u;
    }
    if (best)
        best->swrr -= total;
    return best;
}

/* The earliest end of a cooldown among the upstreams that could serve q (0: none cooling). */
static int64_t earliest_cool_end(struct relay_upstreams *p, const relay_upstream_query_t *q,
                                 int64_t now)
{
    int64_t at = 0;
    for (size_t i = 0; i < p->n; i++) {
        const relay_upstream_t *u = p->u[i];
        if (serves(u, q) && u->cooldown_until > now && (!at || u->cooldown_until < at))
            at = u->cooldown_until;
    }
    return at;
}

/* The session's upstream when it is among the candidates. */
static relay_upstream_t *sticky(struct relay_upstreams *p, const relay_upstream_query_t *q,
                                const choice_t *ch, int64_t now)
{
    const char *name = q->session && *q->session ? session_get(p, q->session, now) : NULL;
    for (size_t i = 0; name && i < ch->n; i++)
        if (strcmp(ch->c[i]->def.name, name) == 0)
            return ch->c[i];
    return NULL;
}

static size_t live_count(const struct relay_upstreams *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += !p->u[i]->deleted;
    return n;
}

int relay_upstreams_take(relay_t *r, relay_upstream_query_t *q, int again,
                         relay_upstream_lease_t *out, int64_t *retry_at_ms)
{
    struct relay_upstreams *p = r->upstreams;
    if (q->session && *q->session && r->opts.redis_url)
        session_from_redis(r, q->session);
    memset(out, 0, sizeof *out);
    *retry_at_ms = 0;
    choice_t *ch = malloc(sizeof *ch);
    if (!ch)
        return RELAY_ERR_NOMEM;
    pthread_mutex_lock(&p->mu);
    int64_t now = now_ms(p);
    int rc = 0;
    relay_upstream_t *u = NULL;
    if (q->session && *q->session) {
        candidates(p, q, again, 0, now, ch);
        u = sticky(p, q, ch, now);
    }
    out->sticky = u != NULL;
    if (!u) {
        candidates(p, q, again, 1, now, ch);
        u = swrr(ch);
    }
    if (u) {
        u->in_flight++;
        out->u = u;
        out->def = u->def;
    } else {
        rc = live_count(p) ? RELAY_ERR_OVERLOADED : RELAY_ERR_UNAVAILABLE;
        *retry_at_ms = earliest_cool_end(p, q, now);
    }
    pthread_mutex_unlock(&p->mu);
    free(ch);
    return rc;
}

int relay_upstreams_has_other(relay_t *r, const relay_upstream_query_t *q,
                              const relay_upstream_t *current)
{
    struct relay_upstreams *p = r->upstreams;
    int any = 0;
    pthread_mutex_lock(&p->mu);
    int64_t now = now_ms(p);
    for (size_t i = 0; i < p->n && !any; i++)
        any = p->u[i] != current && usable(p->u[i], q, 0, now);
    pthread_mutex_unlock(&p->mu);
    return any;
}

/* ---- outcomes ---- */

static void count_status(relay_upstream_t *u, const relay_upstream_report_t *rep)
{
    char st[16];
    if (rep->status)
        snprintf(st, sizeof st, "%d", rep->status);
    else
        relay_strlcpy(st, rep->outcome == RELAY_UPSTREAM_TIMEOUT ? "timeout" : "connect_error",
                      sizeof st);
    int i = 0;
    while (i < u->n_status && strcmp(u->by_status[i].status, st) != 0)
        i++;
    if (i == u->n_status && u->n_status < MAX_STATUSES)
        relay_strlcpy(u->by_status[u->n_status++].status, st, sizeof u->by_status[0].status);
    else if (i == u->n_status)
        i = MAX_STATUSES - 1; /* past the cap: the last series takes the rest */
    u->by_status[i].n++;
}

/* A 429/529 (retry-after or backoff), or a transport failure (backoff) cools u down. */
static void cool_down(relay_upstream_t *u, const relay_upstream_report_t *rep, int64_t now)
{
    int64_t ms;
    if (rep->retry_after_s >= 0)
        ms =
            (int64_t)(rep->retry_after_s < RETRY_AFTER_MAX ? rep->retry_after_s : RETRY_AFTER_MAX) *
            1000;
    else
        ms = (int64_t)COOL_BASE_MS << (u->cool_streak < 6 ? u->cool_streak : 6);
    if (rep->retry_after_s < 0 && ms > COOL_MAX_MS)
        ms = COOL_MAX_MS;
    if (ms <= 0)
        return;
    u->cool_streak++;
    u->cooldowns++;
    if (now + ms > u->cooldown_until)
        u->cooldown_until = now + ms;
}

static void note_error(relay_upstream_t *u, const relay_upstream_report_t *rep, int64_t now)
{
    if (rep->status)
        snprintf(u->last_error, sizeof u->last_error, "HTTP %d%s%.120s", rep->status,
                 rep->error ? ": " : "", rep->error ? rep->error : "");
    else
        snprintf(u->last_error, sizeof u->last_error, "%s", rep->error ? rep->error : "no answer");
    u->last_error_at = now / 1000;
}

/* Under mu. A pool of one keeps the relay's old behaviour: its upstream's answers go to the
 * client as they are, so it is never cooled down or marked broken here. */
static void apply(struct relay_upstreams *p, relay_upstream_t *u,
                  const relay_upstream_report_t *rep, int64_t now)
{
    int alone = live_count(p) <= 1;
    bucket_t *b = bucket_now(u, now);
    b->requests++;
    u->requests++;
    count_status(u, rep);
    if (rep->rl_remaining >= 0) {
        u->rl_remaining = rep->rl_remaining;
        u->rl_at = now;
    }
    if (rep->outcome == RELAY_UPSTREAM_OK) {
        u->cool_streak = 0;
        return;
    }
    b->errors++;
    note_error(u, rep, now);
    if (rep->failover && rep->outcome < 6)
        u->failovers[rep->outcome]++;
    if (alone)
        return;
    if (rep->outcome == RELAY_UPSTREAM_AUTH)
        u->broken = 1;
    else if (rep->outcome != RELAY_UPSTREAM_SERVER)
        cool_down(u, rep, now);
}

static void bind_session(relay_t *r, const char *session, const char *name)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    int64_t now = now_ms(p);
    int changed = session_put(p, r->opts.session_max, session, name,
                              now + (int64_t)r->opts.session_ttl_s * 1000, now);
    pthread_mutex_unlock(&p->mu);
    int64_t lease;
    relay_limits_redis_t *rd = changed ? relay_limits_redis_up(r, &lease) : NULL;
    if (rd) {
        char key[96];
        redis_session_key(session, key, sizeof key);
        limits_redis_set_ex(rd, key, name, (int64_t)r->opts.session_ttl_s * 1000);
    }
}

void relay_upstreams_done(relay_t *r, relay_upstream_query_t *q, relay_upstream_lease_t *l,
                          const relay_upstream_report_t *rep)
{
    struct relay_upstreams *p = r->upstreams;
    if (!l->u)
        return;
    pthread_mutex_lock(&p->mu);
    l->u->in_flight--;
    apply(p, l->u, rep, now_ms(p));
    pthread_mutex_unlock(&p->mu);
    if (rep->outcome == RELAY_UPSTREAM_OK && q->session && *q->session)
        bind_session(r, q->session, l->def.name);
    else if (rep->outcome != RELAY_UPSTREAM_OK && q->n_tried < RELAY_UPSTREAM_MAX_TRIED)
        q->tried[q->n_tried++] = l->u;
    explicit_bzero(l->def.api_key, sizeof l->def.api_key);
    l->u = NULL;
}

void relay_upstreams_release(relay_t *r, relay_upstream_lease_t *l)
{
    if (!l->u)
        return;
    pthread_mutex_lock(&r->upstreams->mu);
    l->u->in_flight--;
    pthread_mutex_unlock(&r->upstreams->mu);
    explicit_bzero(l->def.api_key, sizeof l->def.api_key);
    l->u = NULL;
}

/* ---- sessions of requests ---- */

/* Claude Code's metadata.user_id: a JSON string with session_id, or (older versions)
 * "user_<hash>_account_<uuid>_session_<uuid>". */
static void session_from_user_id(const char *uid, char *out, size_t cap)
{
    json_t *j = uid[0] == '{' ? json_loads(uid, 0, NULL) : NULL;
    const char *sid = j ? json_string_value(json_object_get(j, "session_id")) : NULL;
    if (sid)
        relay_strlcpy(out, sid, cap);
    json_decref(j);
    const char *legacy = sid ? NULL : strstr(uid, "_session_");
    if (legacy && legacy[9])
        relay_strlcpy(out, legacy + 9, cap);
}

void relay_upstreams_session_of(const relay_http_request_t *req, const char *user_id, char *out,
                                size_t cap)
{
    out[0] = '\0';
    const char *h = relay_http_header(req, "x-claude-code-session-id");
    if (h && *h)
        relay_strlcpy(out, h, cap);
    else if (user_id && *user_id)
        session_from_user_id(user_id, out, cap);
}

/* ---- admin and metrics views ---- */

size_t relay_upstreams_count(relay_t *r)
{
    pthread_mutex_lock(&r->upstreams->mu);
    size_t n = live_count(r->upstreams);
    pthread_mutex_unlock(&r->upstreams->mu);
    return n;
}

static void last4(const char *key, char *out, size_t cap)
{
    size_t n = strlen(key);
    snprintf(out, cap, "%s", n > 8 ? key + n - 4 : "");
}

static void info_of(const relay_upstream_t *u, int64_t now, relay_upstream_info_t *in)
{
    memset(in, 0, sizeof *in);
    relay_strlcpy(in->id, u->id, sizeof in->id);
    relay_strlcpy(in->name, u->def.name, sizeof in->name);
    relay_strlcpy(in->url, u->def.url, sizeof in->url);
    relay_strlcpy(in->source, u->from_db ? "database" : "config", sizeof in->source);
    relay_strlcpy(in->group, u->def.group, sizeof in->group);
    in->priority = u->def.priority;
    in->weight = u->def.weight;
    in->max_concurrency = u->def.max_concurrency;
    in->max_retries = u->def.max_retries;
    in->timeout_s = u->def.timeout_s;
    memcpy(in->models, u->def.models, sizeof in->models);
    in->n_models = u->def.n_models;
    last4(u->def.api_key, in->key_last4, sizeof in->key_last4);
    relay_strlcpy(in->state, state_of(u, now), sizeof in->state);
    in->healthy = strcmp(in->state, "ok") == 0 && errors_low(u, now);
    in->cooldown_until_ms = u->cooldown_until > now ? u->cooldown_until : 0;
    in->in_flight = u->in_flight;
    recent(u, now, HEALTH_BUCKETS, &in->requests_5m, &in->errors_5m);
    relay_strlcpy(in->last_error, u->last_error, sizeof in->last_error);
    in->last_error_at = u->last_error_at;
    in->ratelimit_remaining = now - u->rl_at < RL_FRESH_MS ? u->rl_remaining : -1;
    in->cooldowns = u->cooldowns;
    in->requests_total = u->requests;
}

int relay_upstreams_list(relay_t *r, relay_upstream_info_t **out, size_t *n)
{
    struct relay_upstreams *p = r->upstreams;
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&p->mu);
    relay_upstream_info_t *v = calloc(p->n ? p->n : 1, sizeof *v);
    int64_t now = now_ms(p);
    for (size_t i = 0; v && i < p->n; i++)
        if (!p->u[i]->deleted)
            info_of(p->u[i], now, &v[(*n)++]);
    pthread_mutex_unlock(&p->mu);
    *out = v;
    return v ? 0 : RELAY_ERR_NOMEM;
}

int relay_upstreams_counts(relay_t *r, relay_upstream_counts_t **out, size_t *n)
{
    struct relay_upstreams *p = r->upstreams;
    *n = 0;
    pthread_mutex_lock(&p->mu);
    relay_upstream_counts_t *v = calloc(p->n ? p->n : 1, sizeof *v);
    int64_t now = now_ms(p);
    for (size_t i = 0; v && i < p->n; i++) {
        const relay_upstream_t *u = p->u[i];
        if (u->deleted)
            continue;
        relay_upstream_counts_t *c = &v[(*n)++];
        relay_strlcpy(c->name, u->def.name, sizeof c->name);
        c->up = strcmp(state_of(u, now), "ok") == 0 && errors_low(u, now);
        c->in_flight = u->in_flight;
        c->cooldowns = u->cooldowns;
        memcpy(c->by_status, u->by_status, sizeof c->by_status);
        c->n_status = u->n_status;
        memcpy(c->failovers, u->failovers, sizeof c->failovers);
    }
    pthread_mutex_unlock(&p->mu);
    *out = v;
    return v ? 0 : RELAY_ERR_NOMEM;
}

const char *relay_upstreams_reason_label(int outcome)
{
    static const char *const names[] = {"ok", "connect", "timeout", "overloaded", "server", "auth"};
    return outcome >= 0 && outcome < 6 ? names[outcome] : "other";
}

/* ---- changes from the admin REST ---- */

int relay_upstreams_remove(relay_t *r, const char *id)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    relay_upstream_t *u = find(p, id);
    if (u) {
        u->deleted = 1;
        explicit_bzero(u->def.api_key, sizeof u->def.api_key);
    }
    pthread_mutex_unlock(&p->mu);
    return u ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_upstreams_set_disabled(relay_t *r, const char *id, int disabled)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    relay_upstream_t *u = find(p, id);
    if (u) {
        u->disabled = disabled;
        if (!disabled) /* an admin's enable is a fresh start */
            u->broken = 0, u->cooldown_until = 0, u->cool_streak = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return u ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_upstreams_clear_broken(relay_t *r, const char *id)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    relay_upstream_t *u = find(p, id);
    if (u)
        u->broken = 0, u->cooldown_until = 0, u->cool_streak = 0;
    pthread_mutex_unlock(&p->mu);
    return u ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_upstreams_get_def(relay_t *r, const char *id, relay_upstream_def_t *d, int *from_db)
{
    struct relay_upstreams *p = r->upstreams;
    pthread_mutex_lock(&p->mu);
    relay_upstream_t *u = find(p, id);
    if (u) {
        *d = u->def;
        *from_db = u->from_db;
    }
    pthread_mutex_unlock(&p->mu);
    return u ? 0 : RELAY_ERR_NOT_FOUND;
}
