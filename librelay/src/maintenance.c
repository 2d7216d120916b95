/* maintenance: retention pruning, tier reload and quota-alert delivery on a background thread. */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "maintenance_internal.h"
#include "keys_internal.h"
#include "relay/maintenance.h"
#include "relay/store.h"
#include "relay/tiers.h"
#include "upstreams_internal.h"
#include "util.h"

#define TICK_MS         1000
#define TIER_RELOAD_MS  5000
#define PRUNE_EVERY_MS  60000
#define PRUNE_FIRST_MS  2000
#define ALERT_QUEUE_MAX 1024
/* Remembered crossings (64-bit fingerprints); when full, the store's record still stops repeats. */
#define FIRED_MAX 65536

typedef struct alert {
    char key_id[37];
    char key_name[256];
    double threshold;
    int64_t used, limit;
    int64_t at;
    /* A cost budget's alert (budget[0] != 0): which budget and period, and its USD figures. */
    char budget[8];   /* period: daily, weekly, monthly, total */
    char models[256]; /* JSON array, "" for the whole key */
    int64_t resets_at;
    double spent, usd_limit;
} alert_t;

struct relay_maintenance {
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    pthread_t thread;
    int running, stopping, busy;
    int keys_wanted; /* a cached key went stale on the request path: re-read it now */
    double thresholds[RELAY_MAINTENANCE_MAX_THRESHOLDS];
    size_t n_thresholds;
    char *webhook_url;
    int timeout_ms, attempts;
    alert_t queue[ALERT_QUEUE_MAX];
    size_t q_head, q_count;
    uint64_t *fired; /* open addressing, 0 empty */
    size_t n_fired;
    relay_maintenance_stats_t stats;
};

/* ---------------------------------------------------------------- the request-path check */

static uint64_t fingerprint(const char *key_id, double threshold, int64_t limit)
{
    char s[128];
    snprintf(s, sizeof s, "%s|%.4f|%lld", key_id, threshold, (long long)limit);
    uint8_t h[32];
    relay_sha256(s, strlen(s), h);
    uint64_t v;
    memcpy(&v, h, sizeof v);
    return v ? v : 1;
}

/* 1 when fp was new (and is now remembered), 0 when seen before. Lock held. */
static int remember(struct relay_maintenance *m, uint64_t fp)
{
    size_t i = (size_t)(fp & (FIRED_MAX - 1));
    for (size_t probes = 0; probes < FIRED_MAX; probes++, i = (i + 1) & (FIRED_MAX - 1)) {
        if (m->fired[i] == fp)
            return 0;
        if (!m->fired[i]) {
            if (m->n_fired * 4 < (size_t)FIRED_MAX * 3) {
                m->fired[i] = fp;
                m->n_fired++;
            }
            return 1;
        }
    }
    return 1;
}

/* Queues the alert of key at threshold i unless fingerprint fp fired before. Lock held. */
static alert_t *queue_alert(struct relay_maintenance *m, const relay_key_record_t *key, size_t i,
                            uint64_t fp)
{
    if (!remember(m, fp))
        return NULL;
    if (m->q_count == ALERT_QUEUE_MAX) {
        m->stats.alerts_dropped++;
        return NULL;
    }
    alert_t *a = &m->queue[(m->q_head + m->q_count++) % ALERT_QUEUE_MAX];
    memset(a, 0, sizeof *a);
    relay_strlcpy(a->key_id, key->id, sizeof a->key_id);
    relay_strlcpy(a->key_name, key->name ? key->name : "", sizeof a->key_name);
    a->threshold = m->thresholds[i];
    a->at = relay_now();
    pthread_cond_signal(&m->wake);
    return a;
}

void relay_maintenance_quota_check(relay_t *r, const relay_key_record_t *key, int64_t used,
                                   int64_t limit)
{
    struct relay_maintenance *m = r->maintenance;
    if (!m || limit <= 0)
        return;
    double ratio = (double)used / (double)limit;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n_thresholds && ratio >= m->thresholds[i]; i++) {
        alert_t *a = queue_alert(m, key, i, fingerprint(key->id, m->thresholds[i], limit));
        if (a) {
            a->used = used;
            a->limit = limit;
        }
    }
    pthread_mutex_unlock(&m->mu);
}

/* One alert per budget, period, threshold and limit: a daily budget warns again each day. */
static uint64_t budget_fingerprint(const char *key_id, const relay_budget_view_t *v, double th)
{
    char s[1400];
    snprintf(s, sizeof s, "%s|%s|%s|%lld|%.4f|%.9g", key_id, v->period, v->models,
             (long long)v->resets_at, th, v->limit);
    uint8_t h[32];
    relay_sha256(s, strlen(s), h);
    uint64_t x;
    memcpy(&x, h, sizeof x);
    return x ? x : 1;
}

void relay_maintenance_budget_check(relay_t *r, const relay_key_record_t *key,
                                    const relay_budget_view_t *v)
{
    struct relay_maintenance *m = r->maintenance;
    if (!m || v->limit <= 0)
        return;
    double ratio = v->spent / v->limit;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n_thresholds && ratio >= m->thresholds[i]; i++) {
        alert_t *a = queue_alert(m, key, i, budget_fingerprint(key->id, v, m->thresholds[i]));
        if (!a)
            continue;
        relay_strlcpy(a->budget, v->period, sizeof a->budget);
        relay_strlcpy(a->models, v->models, sizeof a->models);
        a->resets_at = v->resets_at;
        a->spent = v->spent;
        a->usd_limit = v->limit;
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---------------------------------------------------------------- alert delivery */

static json_t *budget_alert_json(const alert_t *a, const char *when)
{
    char reset[32] = "";
    if (a->resets_at)
        relay_iso8601(a->resets_at, reset, sizeof reset);
    json_t *models = a->models[0] ? json_loads(a->models, 0, NULL) : NULL;
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:f, s:f, s:f, s:f, s:o, s:s}", "type",
                     "budget_alert", "api_key_id", a->key_id, "api_key_name", a->key_name, "period",
                     a->budget, "models", models ? models : json_null(), "threshold", a->threshold,
                     "usage_ratio", a->spent / a->usd_limit, "spent", a->spent, "limit",
                     a->usd_limit, "resets_at", reset[0] ? json_string(reset) : json_null(),
                     "timestamp", when);
}

static json_t *alert_json(const alert_t *a)
{
    char when[32];
    relay_iso8601(a->at, when, sizeof when);
    if (a->budget[0])
        return budget_alert_json(a, when);
    return json_pack("{s:s, s:s, s:s, s:f, s:f, s:I, s:I, s:s}", "type", "quota_alert",
                     "api_key_id", a->key_id, "api_key_name", a->key_name, "threshold",
                     a->threshold, "usage_ratio", (double)a->used / (double)a->limit, "token_used",
                     (json_int_t)a->used, "token_limit", (json_int_t)a->limit, "timestamp", when);
}

/*
 * Records the alert in the store unless an earlier run did. 1: fire it now; 0: already fired;
 * < 0: the store failed (the alert is not fired; the next crossing check tries again).
 */
static int record_alert(relay_t *r, const alert_t *a)
{
    char name[160], want[32], have[32];
    snprintf(name, sizeof name, "alert.quota.%s.%d", a->key_id, (int)lround(a->threshold * 100));
    snprintf(want, sizeof want, "%lld", (long long)a->limit);
    if (a->budget[0]) { /* one record per budget and period; the value is the limit */
        uint8_t h[32];
        relay_sha256(a->models, strlen(a->models), h);
        snprintf(name, sizeof name, "alert.budget.%s.%s.%lld.%02x%02x%02x%02x.%d", a->key_id,
                 a->budget, (long long)a->resets_at, h[0], h[1], h[2], h[3],
                 (int)lround(a->threshold * 100));
        snprintf(want, sizeof want, "%.9g", a->usd_limit);
    }
    int rc = relay_store_setting_get(r->store, name, have, sizeof have);
    if (rc == 0 && strcmp(have, want) == 0)
        return 0;
    if (rc != 0 && rc != RELAY_ERR_NOT_FOUND)
        return rc;
    rc = relay_store_setting_set(r->store, name, want);
    return rc ? rc : 1;
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* One POST; 0 on a 2xx answer. */
static int post_once(const char *url, const char *body, int timeout_ms, long *status)
{
    CURL *c = curl_easy_init();
    if (!c)
        return RELAY_ERR_NOMEM;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(c);
    *status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return cc == CURLE_OK && *status >= 200 && *status < 300 ? 0 : RELAY_ERR_IO;
}

/* Sleeps ms unless stop is requested (1 then). Lock held. */
static int nap(struct relay_maintenance *m, int ms)
{
    struct timespec dl;
    relay_deadline_in(&dl, ms);
    while (!m->stopping)
        if (pthread_cond_timedwait(&m->wake, &m->mu, &dl) == ETIMEDOUT)
            break;
    return m->stopping;
}

/* Delivers body with retries and backoff. Called and returns with the lock held. */
static void deliver(relay_t *r, struct relay_maintenance *m, const char *body)
{
    char *url = relay_strdup0(m->webhook_url);
    int timeout = m->timeout_ms, attempts = m->attempts;
    if (!url)
        return;
    int backoff = 500, ok = 0;
    long status = 0;
    for (int i = 0; i < attempts && !ok; i++) {
        if (i && nap(m, backoff))
            break;
        backoff *= 2;
        pthread_mutex_unlock(&m->mu);
        ok = post_once(url, body, timeout, &status) == 0;
        pthread_mutex_lock(&m->mu);
        if (!ok)
            relay_log(r, RELAY_LOG_WARN, "alert.webhook_failed", NULL,
                      "quota alert webhook attempt %d of %d failed (HTTP status %ld)", i + 1,
                      attempts, status);
    }
    if (ok)
        m->stats.webhook_sent++;
    else
        m->stats.webhook_failed++;
    free(url);
}

/* Takes the oldest queued alert through record, log and webhook. Lock held. */
static void process_alert(relay_t *r, struct relay_maintenance *m)
{
    alert_t a = m->queue[m->q_head];
    m->q_head = (m->q_head + 1) % ALERT_QUEUE_MAX;
    m->q_count--;
    m->busy = 1;
    pthread_mutex_unlock(&m->mu);
    int rc = record_alert(r, &a);
    json_t *o = rc > 0 ? alert_json(&a) : NULL;
    char *fields =
        o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    if (rc > 0 && a.budget[0])
        relay_log(r, RELAY_LOG_WARN, "budget.alert", fields,
                  "API key %s reached %.0f%% of its %s cost budget%s%s ($%.4f of $%.2f)", a.key_id,
                  a.threshold * 100, a.budget, a.models[0] ? " for " : "", a.models, a.spent,
                  a.usd_limit);
    else if (rc > 0)
        relay_log(r, RELAY_LOG_WARN, "quota.alert", fields,
                  "API key %s reached %.0f%% of its token quota (%lld of %lld tokens)", a.key_id,
                  a.threshold * 100, (long long)a.used, (long long)a.limit);
    else if (rc < 0)
        relay_log(r, RELAY_LOG_ERROR, "alert.record_failed", NULL,
                  "cannot record a quota alert (%s); it will be retried", relay_strerror(rc));
    pthread_mutex_lock(&m->mu);
    if (rc > 0) {
        m->stats.alerts_fired++;
        if (m->webhook_url && fields)
            deliver(r, m, fields);
    } else if (rc == 0) {
        m->stats.alerts_suppressed++;
    } else if (m->q_count < ALERT_QUEUE_MAX) {
        /* The store is away: keep the alert (it is remembered, so nothing else re-queues it). */
        m->queue[(m->q_head + m->q_count++) % ALERT_QUEUE_MAX] = a;
        nap(m, TICK_MS);
    }
    free(fields);
    m->busy = 0;
    pthread_cond_broadcast(&m->idle);
}

/* ---------------------------------------------------------------- retention and tiers */

int relay_maintenance_prune(relay_t *r, int64_t *deleted)
{
    int64_t total = 0, n = 0;
    int rc = 0;
    if (deleted)
        *deleted = 0;
    if (r->opts.log_retention_days <= 0)
        return 0;
    int64_t before = relay_now() - (int64_t)r->opts.log_retention_days * 86400;
    do {
        rc = relay_store_usage_prune(r->store, before, RELAY_MAINTENANCE_PRUNE_BATCH, &n);
        total += rc ? 0 : n;
    } while (!rc && n == RELAY_MAINTENANCE_PRUNE_BATCH &&
             !(r->maintenance && __atomic_load_n(&r->maintenance->stopping, __ATOMIC_RELAXED)));
    if (r->maintenance) {
        pthread_mutex_lock(&r->maintenance->mu);
        r->maintenance->stats.pruned_rows += (uint64_t)total;
        pthread_mutex_unlock(&r->maintenance->mu);
    }
    if (total)
        relay_log(r, RELAY_LOG_INFO, "retention.pruned", NULL,
                  "deleted %lld usage log rows older than %d days", (long long)total,
                  r->opts.log_retention_days);
    if (rc)
        relay_log(r, RELAY_LOG_WARN, "retention.failed", NULL, "pruning usage logs failed: %s",
                  relay_strerror(rc));
    if (deleted)
        *deleted = total;
    return rc;
}

static void *maintenance_main(void *arg)
{
    relay_t *r = arg;
    struct relay_maintenance *m = r->maintenance;
    int64_t next_reload = relay_mono_ms() + TIER_RELOAD_MS;
    int64_t next_prune = relay_mono_ms() + PRUNE_FIRST_MS;
    int64_t next_keys = relay_mono_ms() + TICK_MS;
    int64_t next_probe = next_keys; /* at most one probe a tick, however often keys wake us */
    pthread_mutex_lock(&m->mu);
    while (!m->stopping) {
        if (m->q_count) {
            process_alert(r, m);
            continue;
        }
        int64_t now = relay_mono_ms();
        if (now >= next_reload || now >= next_prune) {
            int reload = now >= next_reload;
            pthread_mutex_unlock(&m->mu);
            if (reload) {
                if (relay_tiers_reload(r) == 0)
                    __atomic_add_fetch(&m->stats.tier_reloads, 1, __ATOMIC_RELAXED);
                relay_upstreams_sync(r, NULL); /* another instance may have changed them */
                next_reload = relay_mono_ms() + TIER_RELOAD_MS;
            } else {
                relay_maintenance_prune(r, NULL);
                next_prune = relay_mono_ms() + PRUNE_EVERY_MS;
            }
            pthread_mutex_lock(&m->mu);
            continue;
        }
        if (m->keys_wanted || now >= next_keys) {
            m->keys_wanted = 0;
            pthread_mutex_unlock(&m->mu);
            if (now >= next_probe) { /* an outage (and its end) is noticed with no traffic */
                relay_health_database(r);
                next_probe = relay_mono_ms() + TICK_MS;
            }
            relay_keys_refresh_stale(r);
            next_keys = relay_mono_ms() + TICK_MS;
            pthread_mutex_lock(&m->mu);
            continue;
        }
        struct timespec dl;
        relay_deadline_in(&dl, TICK_MS);
        while (!m->stopping && !m->keys_wanted && !m->q_count)
            if (pthread_cond_timedwait(&m->wake, &m->mu, &dl) == ETIMEDOUT)
                break;
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

void relay_maintenance_wake(relay_t *r)
{
    struct relay_maintenance *m = r->maintenance;
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    if (!m->keys_wanted) {
        m->keys_wanted = 1;
        pthread_cond_signal(&m->wake);
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---------------------------------------------------------------- configuration, lifecycle */

static int set_thresholds(struct relay_maintenance *m, const double *t, size_t n,
                          relay_error_t *err)
{
    if (n > RELAY_MAINTENANCE_MAX_THRESHOLDS)
        return relay_error_set(err, RELAY_ERR_INVALID, "alert thresholds: at most %d",
                               RELAY_MAINTENANCE_MAX_THRESHOLDS);
    for (size_t i = 0; i < n; i++)
        if (!(t[i] > 0 && t[i] <= 10) || (i && !(t[i] > t[i - 1])))
            return relay_error_set(err, RELAY_ERR_INVALID,
                                   "alert thresholds: expected ascending numbers in (0, 10]");
    memcpy(m->thresholds, t, n * sizeof *t);
    m->n_thresholds = n;
    return 0;
}

int relay_maintenance_set_alerts(relay_t *r, const relay_alert_options_t *o, relay_error_t *err)
{
    struct relay_maintenance *m = r ? r->maintenance : NULL;
    if (!m || !o)
        return relay_error_set(err, RELAY_ERR_INVALID, "no relay or options");
    const char *url = o->webhook_url && *o->webhook_url ? o->webhook_url : NULL;
    if (url && strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "alert webhook_url: expected http(s)://");
    char *copy = relay_strdup0(url);
    if (url && !copy)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    if (o->thresholds)
        rc = set_thresholds(m, o->thresholds, o->n_thresholds, err);
    if (!rc) {
        free(m->webhook_url);
        m->webhook_url = copy;
        copy = NULL;
        m->timeout_ms = o->webhook_timeout_ms > 0 ? o->webhook_timeout_ms : 5000;
        m->attempts = o->webhook_attempts > 0 ? o->webhook_attempts : 4;
    }
    pthread_mutex_unlock(&m->mu);
    free(copy);
    return rc;
}

int relay_maintenance_flush_alerts(relay_t *r, int timeout_ms)
{
    struct relay_maintenance *m = r->maintenance;
    if (!m)
        return 0;
    int64_t deadline = relay_mono_ms() + timeout_ms;
    pthread_mutex_lock(&m->mu);
    pthread_cond_signal(&m->wake);
    while ((m->q_count || m->busy) && relay_mono_ms() < deadline) {
        struct timespec dl;
        relay_deadline_in(&dl, 20);
        pthread_cond_timedwait(&m->idle, &m->mu, &dl);
    }
    int done = !m->q_count && !m->busy;
    pthread_mutex_unlock(&m->mu);
    return done ? 0 : RELAY_ERR_UPSTREAM_TIMEOUT;
}

void relay_maintenance_get_stats(relay_t *r, relay_maintenance_stats_t *out)
{
    memset(out, 0, sizeof *out);
    struct relay_maintenance *m = r ? r->maintenance : NULL;
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    *out = m->stats;
    out->tier_reloads = __atomic_load_n(&m->stats.tier_reloads, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&m->mu);
}

int relay_maintenance_start(relay_t *r, relay_error_t *err)
{
    struct relay_maintenance *m = calloc(1, sizeof *m);
    if (!m || !(m->fired = calloc(FIRED_MAX, sizeof *m->fired))) {
        free(m);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_cond_init(&m->idle, NULL);
    double t[2] = {r->opts.warning_threshold, 1.0};
    if (t[0] > 0 && t[0] < 1.0)
        set_thresholds(m, t, 2, NULL);
    else
        set_thresholds(m, t + 1, 1, NULL);
    m->timeout_ms = 5000;
    m->attempts = 4;
    r->maintenance = m;
    if (pthread_create(&m->thread, NULL, maintenance_main, r) != 0) {
        relay_maintenance_stop(r);
        return relay_error_set(err, RELAY_ERR_INTERNAL, "cannot start the maintenance thread");
    }
    m->running = 1;
    return 0;
}

void relay_maintenance_stop(relay_t *r)
{
    struct relay_maintenance *m = r->maintenance;
    if (!m)
        return;
    if (m->running) {
        pthread_mutex_lock(&m->mu);
        __atomic_store_n(&m->stopping, 1, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->thread, NULL);
    }
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->wake);
    pthread_cond_destroy(&m->idle);
    free(m->webhook_url);
    free(m->fired);
    free(m);
    r->maintenance = NULL;
}
