/* metrics: a bounded Prometheus registry and the relay's own metrics, read at scrape time. */
#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "forward_internal.h"
#include "internal.h"
#include "maintenance_internal.h"
#include "budgets_internal.h"
#include "metrics_internal.h"
#include "relay/keys.h"
#include "relay/budgets.h"
#include "relay/limits.h"
#include "relay/metrics.h"
#include "relay/usage.h"
#include "upstreams_internal.h"
#include "util.h"

#define DEFAULT_MAX_SERIES 1000
/* The exposition of one scrape; far above what 1000 keys produce, but never unbounded. */
#define RENDER_CAP ((size_t)64 << 20)

typedef struct series {
    char *key; /* label values joined by '\x1f' */
    char (*values)[RELAY_METRICS_LABEL_MAX];
    double value;   /* counter / gauge */
    uint64_t *hits; /* histogram: per bucket (not cumulative), then +Inf */
    double sum;
    uint64_t count;
} series_t;

struct relay_metric {
    relay_metrics_t *reg;
    char name[128];
    char help[256];
    relay_metric_type type;
    size_t n_labels;
    char labels[RELAY_METRICS_MAX_LABELS][64];
    int bounded_label;
    size_t max_series;
    double buckets[RELAY_METRICS_MAX_BUCKETS];
    size_t n_buckets;
    series_t *series; /* in creation order, for a stable exposition */
    size_t n_series, cap_series;
    size_t *slots; /* open addressing: index + 1 into series, 0 empty */
    size_t n_slots;
    struct relay_metric *next;
};

/* The relay's families (NULL in a registry made by relay_metrics_new for a host). */
typedef struct relay_families {
    relay_metric_t *requests, *duration, *ttfb, *tokens, *quota_ratio, *active_streams;
    relay_metric_t *auth_failures, *rate_limited, *permission, *retries, *queue_depth, *drops;
    relay_metric_t *spool_bytes, *spool_full, *spool_errors, *spool_replayed, *duplicates, *db_up;
    relay_metric_t *written, *batches, *unknown_model, *budget_ratio, *cache_hits, *bcrypt,
        *redis_up, *build_info;
    relay_metric_t *key_verify, *key_waiting, *key_timeouts, *key_unknown, *key_throttled, *cost,
        *redis_configured;
    relay_metric_t *up_requests, *up_up, *up_in_flight, *up_failovers, *up_cooldowns;
} relay_families_t;

struct relay_metrics {
    pthread_mutex_t mu;
    relay_metric_t *first, *last;
    relay_families_t fam;
    int key_label; /* relay_metrics_key_label */
};

/* ---------------------------------------------------------------- the registry */

int relay_metrics_new(relay_metrics_t **out)
{
    relay_metrics_t *m = calloc(1, sizeof *m);
    *out = m;
    if (!m)
        return RELAY_ERR_NOMEM;
    pthread_mutex_init(&m->mu, NULL);
    return 0;
}

static void family_free(relay_metric_t *f)
{
    for (size_t i = 0; i < f->n_series; i++) {
        free(f->series[i].key);
        free(f->series[i].values);
        free(f->series[i].hits);
    }
    free(f->series);
    free(f->slots);
    free(f);
}

void relay_metrics_free(relay_metrics_t *m)
{
    if (!m)
        return;
    for (relay_metric_t *f = m->first, *next; f; f = next) {
        next = f->next;
        family_free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int valid_name(const char *s, int colon_ok)
{
    if (!s || !*s || strlen(s) >= 64)
        return 0;
    for (const char *p = s; *p; p++) {
        int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                    (colon_ok && *p == ':');
        if (!alpha && !(p > s && *p >= '0' && *p <= '9'))
            return 0;
    }
    return 1;
}

static int valid_desc(const relay_metric_desc_t *d)
{
    if (!d || !valid_name(d->name, 1) || d->n_labels > RELAY_METRICS_MAX_LABELS)
        return 0;
    if (d->bounded_label >= (int)d->n_labels || d->bounded_label < -1)
        return 0;
    for (size_t i = 0; i < d->n_labels; i++)
        if (!valid_name(d->label_names[i], 0) || strncmp(d->label_names[i], "__", 2) == 0 ||
            (d->type == RELAY_METRIC_HISTOGRAM && strcmp(d->label_names[i], "le") == 0))
            return 0;
    if (d->type == RELAY_METRIC_HISTOGRAM) {
        if (!d->buckets || d->n_buckets == 0 || d->n_buckets > RELAY_METRICS_MAX_BUCKETS)
            return 0;
        for (size_t i = 1; i < d->n_buckets; i++)
            if (!(d->buckets[i] > d->buckets[i - 1]))
                return 0;
    }
    return 1;
}

int relay_metrics_register(relay_metrics_t *m, const relay_metric_desc_t *d, relay_metric_t **out)
{
    if (out)
        *out = NULL;
    if (!m || !valid_desc(d))
        return RELAY_ERR_INVALID;
    relay_metric_t *f = calloc(1, sizeof *f);
    if (!f)
        return RELAY_ERR_NOMEM;
    f->reg = m;
    relay_strlcpy(f->name, d->name, sizeof f->name);
    relay_strlcpy(f->help, d->help ? d->help : "", sizeof f->help);
    f->type = d->type;
    f->n_labels = d->n_labels;
    for (size_t i = 0; i < d->n_labels; i++)
        relay_strlcpy(f->labels[i], d->label_names[i], sizeof f->labels[i]);
    f->bounded_label = d->bounded_label;
    f->max_series = d->max_series ? d->max_series : DEFAULT_MAX_SERIES;
    if (d->type == RELAY_METRIC_HISTOGRAM) {
        memcpy(f->buckets, d->buckets, d->n_buckets * sizeof *d->buckets);
        f->n_buckets = d->n_buckets;
    }
    pthread_mutex_lock(&m->mu);
    for (relay_metric_t *g = m->first; g; g = g->next)
        if (strcmp(g->name, f->name) == 0) {
            pthread_mutex_unlock(&m->mu);
            free(f);
            return RELAY_ERR_CONFLICT;
        }
    if (m->last)
        m->last->next = f;
    else
        m->first = f;
    m->last = f;
    pthread_mutex_unlock(&m->mu);
    if (out)
        *out = f;
    return 0;
}

/* Joins the (truncated) label values into key (cap bytes); values too long are cut. */
static void make_key(const relay_metric_t *f, const char *const *values, char *key, size_t cap,
                     char vals[][RELAY_METRICS_LABEL_MAX])
{
    size_t o = 0;
    key[0] = '\0';
    for (size_t i = 0; i < f->n_labels; i++) {
        relay_strlcpy(vals[i], values && values[i] ? values[i] : "", RELAY_METRICS_LABEL_MAX);
        size_t l = strlen(vals[i]);
        if (o + l + 2 > cap)
            break;
        memcpy(key + o, vals[i], l);
        o += l;
        key[o++] = '\x1f';
        key[o] = '\0';
    }
}

static series_t *lookup(relay_metric_t *f, const char *key)
{
    if (!f->n_slots)
        return NULL;
    for (size_t i = relay_hash_str(key) & (f->n_slots - 1);; i = (i + 1) & (f->n_slots - 1)) {
        if (!f->slots[i])
            return NULL;
        series_t *s = &f->series[f->slots[i] - 1];
        if (strcmp(s->key, key) == 0)
            return s;
    }
}

static int rehash(relay_metric_t *f)
{
    size_t n = f->n_slots ? f->n_slots * 2 : 64;
    size_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return RELAY_ERR_NOMEM;
    for (size_t k = 0; k < f->n_series; k++) {
        size_t i = relay_hash_str(f->series[k].key) & (n - 1);
        while (slots[i])
            i = (i + 1) & (n - 1);
        slots[i] = k + 1;
    }
    free(f->slots);
    f->slots = slots;
    f->n_slots = n;
    return 0;
}

static series_t *insert(relay_metric_t *f, const char *key, char vals[][RELAY_METRICS_LABEL_MAX])
{
    if ((f->n_series + 1) * 2 > f->n_slots && rehash(f) != 0)
        return NULL;
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 8;
        series_t *p = realloc(f->series, cap * sizeof *p);
        if (!p)
            return NULL;
        f->series = p;
        f->cap_series = cap;
    }
    series_t *s = &f->series[f->n_series];
    memset(s, 0, sizeof *s);
    s->key = strdup(key);
    s->values = calloc(f->n_labels ? f->n_labels : 1, sizeof *s->values);
    if (f->type == RELAY_METRIC_HISTOGRAM)
        s->hits = calloc(f->n_buckets + 1, sizeof *s->hits);
    if (!s->key || !s->values || (f->type == RELAY_METRIC_HISTOGRAM && !s->hits)) {
        free(s->key);
        free(s->values);
        free(s->hits);
        return NULL;
    }
    memcpy(s->values, vals, f->n_labels * sizeof *s->values);
    size_t i = relay_hash_str(key) & (f->n_slots - 1);
    while (f->slots[i])
        i = (i + 1) & (f->n_slots - 1);
    f->slots[i] = ++f->n_series;
    return s;
}

/* The series for values, created when new; past the cap, the "other" series. Lock held. */
static series_t *series_for(relay_metric_t *f, const char *const *values)
{
    char vals[RELAY_METRICS_MAX_LABELS][RELAY_METRICS_LABEL_MAX];
    char key[RELAY_METRICS_MAX_LABELS * (RELAY_METRICS_LABEL_MAX + 1) + 1];
    make_key(f, values, key, sizeof key, vals);
    series_t *s = lookup(f, key);
    if (s)
        return s;
    if (f->n_series >= f->max_series) {
        /* Fold into "other": the cap bounds memory whatever the clients send. */
        const char *folded[RELAY_METRICS_MAX_LABELS];
        for (size_t i = 0; i < f->n_labels; i++)
            folded[i] = (f->bounded_label < 0 || (int)i == f->bounded_label) ? RELAY_METRICS_OTHER
                                                                             : vals[i];
        make_key(f, folded, key, sizeof key, vals);
        s = lookup(f, key);
        if (s)
            return s;
    }
    return insert(f, key, vals);
}

static int update(relay_metric_t *f, const char *const *values, double v, int op)
{
    if (!f || isnan(v))
        return RELAY_ERR_INVALID;
    int is_hist = f->type == RELAY_METRIC_HISTOGRAM;
    if ((op == 2) != is_hist || (op == 0 && f->type == RELAY_METRIC_COUNTER && v < 0))
        return RELAY_ERR_INVALID;
    pthread_mutex_lock(&f->reg->mu);
    series_t *s = series_for(f, values);
    if (s && op == 0)
        s->value += v;
    else if (s && op == 1)
        s->value = v;
    else if (s) {
        size_t b = 0;
        while (b < f->n_buckets && v > f->buckets[b])
            b++;
        s->hits[b]++;
        s->sum += v;
        s->count++;
    }
    pthread_mutex_unlock(&f->reg->mu);
    return s ? 0 : RELAY_ERR_NOMEM;
}

int relay_metrics_add(relay_metric_t *f, const char *const *label_values, double v)
{
    return update(f, label_values, v, 0);
}

int relay_metrics_set(relay_metric_t *f, const char *const *label_values, double v)
{
    return update(f, label_values, v, 1);
}

int relay_metrics_observe(relay_metric_t *f, const char *const *label_values, double v)
{
    return update(f, label_values, v, 2);
}

double relay_metrics_value(relay_metric_t *f, const char *const *label_values)
{
    char vals[RELAY_METRICS_MAX_LABELS][RELAY_METRICS_LABEL_MAX];
    char key[RELAY_METRICS_MAX_LABELS * (RELAY_METRICS_LABEL_MAX + 1) + 1];
    if (!f)
        return 0;
    make_key(f, label_values, key, sizeof key, vals);
    pthread_mutex_lock(&f->reg->mu);
    series_t *s = lookup(f, key);
    double v = s ? (f->type == RELAY_METRIC_HISTOGRAM ? (double)s->count : s->value) : 0;
    pthread_mutex_unlock(&f->reg->mu);
    return v;
}

size_t relay_metrics_series(relay_metric_t *f)
{
    if (!f)
        return 0;
    pthread_mutex_lock(&f->reg->mu);
    size_t n = f->n_series;
    pthread_mutex_unlock(&f->reg->mu);
    return n;
}

/* ---------------------------------------------------------------- exposition */

/* Prometheus text: integers print exactly, others with round-trip precision. */
static int put_number(relay_buf_t *b, double v)
{
    if (isinf(v))
        return relay_buf_appends(b, v > 0 ? "+Inf" : "-Inf");
    if (v == floor(v) && fabs(v) < 1e15)
        return relay_buf_printf(b, "%.0f", v);
    return relay_buf_printf(b, "%.17g", v);
}

/* Escapes a help text (\\, \n) or a label value (also \"). */
static int put_escaped(relay_buf_t *b, const char *s, int quote)
{
    int rc = 0;
    for (; *s && !rc; s++) {
        if (*s == '\\')
            rc = relay_buf_appends(b, "\\\\");
        else if (*s == '\n')
            rc = relay_buf_appends(b, "\\n");
        else if (quote && *s == '"')
            rc = relay_buf_appends(b, "\\\"");
        else
            rc = relay_buf_append(b, s, 1);
    }
    return rc;
}

/*
 * {a="x",b="y"[,le="..."]}. A label whose value is "" is left out: Prometheus treats an empty
 * label as absent, and that is how metrics_key_label "off" drops the key label.
 */
static int put_labels(relay_buf_t *b, const relay_metric_t *f, const series_t *s, const char *le)
{
    int rc = 0, n = 0;
    for (size_t i = 0; i < f->n_labels && !rc; i++) {
        if (!s->values[i][0])
            continue;
        rc = relay_buf_printf(b, "%s%s=\"", n++ ? "," : "{", f->labels[i]);
        rc = rc ? rc : put_escaped(b, s->values[i], 1);
        rc = rc ? rc : relay_buf_appends(b, "\"");
    }
    if (!rc && le)
        rc = relay_buf_printf(b, "%sle=\"%s\"", n++ ? "," : "{", le);
    return rc || !n ? rc : relay_buf_appends(b, "}");
}

static int put_histogram(relay_buf_t *b, const relay_metric_t *f, const series_t *s)
{
    uint64_t cum = 0;
    int rc = 0;
    char le[48];
    for (size_t i = 0; i <= f->n_buckets && !rc; i++) {
        cum += s->hits[i];
        if (i < f->n_buckets)
            snprintf(le, sizeof le, "%g", f->buckets[i]);
        else
            relay_strlcpy(le, "+Inf", sizeof le);
        rc = relay_buf_printf(b, "%s_bucket", f->name);
        rc = rc ? rc : put_labels(b, f, s, le);
        rc = rc ? rc : relay_buf_printf(b, " %llu\n", (unsigned long long)cum);
    }
    rc = rc ? rc : relay_buf_printf(b, "%s_sum", f->name);
    rc = rc ? rc : put_labels(b, f, s, NULL);
    rc = rc ? rc : relay_buf_appends(b, " ");
    rc = rc ? rc : put_number(b, s->sum);
    rc = rc ? rc : relay_buf_printf(b, "\n%s_count", f->name);
    rc = rc ? rc : put_labels(b, f, s, NULL);
    return rc ? rc : relay_buf_printf(b, " %llu\n", (unsigned long long)s->count);
}

static int put_family(relay_buf_t *b, const relay_metric_t *f)
{
    static const char *const TYPES[] = {"counter", "gauge", "histogram"};
    int rc = relay_buf_printf(b, "# HELP %s ", f->name);
    rc = rc ? rc : put_escaped(b, f->help, 0);
    rc = rc ? rc : relay_buf_printf(b, "\n# TYPE %s %s\n", f->name, TYPES[f->type]);
    for (size_t i = 0; i < f->n_series && !rc; i++) {
        const series_t *s = &f->series[i];
        if (f->type == RELAY_METRIC_HISTOGRAM) {
            rc = put_histogram(b, f, s);
            continue;
        }
        rc = relay_buf_appends(b, f->name);
        rc = rc ? rc : put_labels(b, f, s, NULL);
        rc = rc ? rc : relay_buf_appends(b, " ");
        rc = rc ? rc : put_number(b, s->value);
        rc = rc ? rc : relay_buf_appends(b, "\n");
    }
    return rc;
}

int relay_metrics_render(relay_metrics_t *m, char **out, size_t *len)
{
    *out = NULL;
    if (len)
        *len = 0;
    if (!m)
        return RELAY_ERR_INVALID;
    relay_buf_t b;
    relay_buf_init(&b, RENDER_CAP);
    int rc = relay_buf_appends(&b, ""); /* an empty registry still gives a (empty) string */
    pthread_mutex_lock(&m->mu);
    for (const relay_metric_t *f = m->first; f && !rc; f = f->next)
        rc = put_family(&b, f);
    pthread_mutex_unlock(&m->mu);
    if (rc) {
        relay_buf_free(&b);
        return rc;
    }
    if (len)
        *len = b.len;
    *out = relay_buf_detach(&b);
    if (!*out)
        *out = strdup("");
    return *out ? 0 : RELAY_ERR_NOMEM;
}

/* ---------------------------------------------------------------- the relay's metrics */

static const double DURATION_BUCKETS[] = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
                                          10,   20,  30,   60,  120, 300, 600};
static const double TTFB_BUCKETS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                      2,    5,     10,   30,  60,   120, 300};
/* From a cache hit (about a microsecond) to a verification that queued for seconds. */
static const double VERIFY_BUCKETS[] = {0.00001, 0.0001, 0.001, 0.005, 0.01, 0.025, 0.05,
                                        0.1,     0.25,   0.5,   1,     2.5,  5,     10};

typedef struct fam_def {
    size_t off; /* offset of the pointer in relay_families_t */
    relay_metric_desc_t d;
} fam_def_t;

#define L(...) ((const char *const[]){__VA_ARGS__})
#define FAM(field, ...)                                                                            \
    {                                                                                              \
        offsetof(relay_families_t, field),                                                         \
        {                                                                                          \
            __VA_ARGS__                                                                            \
        }                                                                                          \
    }

static const fam_def_t FAMILIES[] = {
    FAM(requests, "relay_requests_total", "Proxied requests by answer status and route.",
        RELAY_METRIC_COUNTER, L("status", "route"), 2, -1, 0, NULL, 0),
    FAM(duration, "proxy_duration_seconds", "Whole duration of proxied requests, streams included.",
        RELAY_METRIC_HISTOGRAM, L("route"), 1, -1, 0, DURATION_BUCKETS,
        sizeof DURATION_BUCKETS / sizeof DURATION_BUCKETS[0]),
    FAM(ttfb, "relay_time_to_first_byte_seconds", "Time until the upstream's first response byte.",
        RELAY_METRIC_HISTOGRAM, L("route"), 1, -1, 0, TTFB_BUCKETS,
        sizeof TTFB_BUCKETS / sizeof TTFB_BUCKETS[0]),
    FAM(tokens, "tokens_used_total", "Tokens used by type and key (key \"other\" past the cap).",
        RELAY_METRIC_COUNTER, L("type", "key"), 2, 1, 4 * RELAY_METRICS_MAX_KEYS, NULL, 0),
    FAM(cost, "relay_cost_usd_total", "Cost in USD of the usage billed, per key (price table).",
        RELAY_METRIC_COUNTER, L("key"), 1, 0, RELAY_METRICS_MAX_KEYS, NULL, 0),
    FAM(quota_ratio, "token_quota_usage_ratio", "Share of the token quota used, per limited key.",
        RELAY_METRIC_GAUGE, L("key"), 1, 0, RELAY_METRICS_MAX_KEYS, NULL, 0),
    FAM(active_streams, "relay_active_streams", "Streaming requests being forwarded now.",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(auth_failures, "relay_auth_failures_total", "Proxy requests refused at authentication.",
        RELAY_METRIC_COUNTER, L("reason"), 1, -1, 0, NULL, 0),
    FAM(rate_limited, "relay_rate_limited_total", "Requests refused by a rate limit or the quota.",
        RELAY_METRIC_COUNTER, L("reason"), 1, -1, 0, NULL, 0),
    FAM(permission, "relay_permission_denied_total", "Requests refused by a key's allowlists.",
        RELAY_METRIC_COUNTER, L("reason"), 1, -1, 0, NULL, 0),
    FAM(retries, "relay_upstream_retries_total", "Upstream attempts that were retries.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(queue_depth, "relay_usage_write_queue_depth", "Usage rows waiting for the writer.",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(drops, "relay_usage_write_drops_total", "Usage rows lost because the queue was full.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(written, "relay_usage_rows_written_total", "Usage rows committed to the database.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(batches, "relay_usage_write_batches_total",
        "Transactions the usage writer committed (rows are gathered for usage.flush_ms).",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(spool_bytes, "relay_usage_spool_bytes",
        "Bytes of usage rows in the spool file, waiting for the database.", RELAY_METRIC_GAUGE,
        NULL, 0, -1, 0, NULL, 0),
    FAM(spool_full, "relay_usage_spool_full_total",
        "Usage rows not spooled because the spool reached usage.spool_max_bytes.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(spool_errors, "relay_usage_spool_errors_total",
        "Spool appends or fsyncs that failed (disk full, I/O error).", RELAY_METRIC_COUNTER, NULL,
        0, -1, 0, NULL, 0),
    FAM(spool_replayed, "relay_usage_spool_replayed_total",
        "Usage rows read back from the spool at start.", RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL,
        0),
    FAM(duplicates, "relay_usage_duplicate_rows_total",
        "Replayed usage rows the database already had (skipped by row_uid).", RELAY_METRIC_COUNTER,
        NULL, 0, -1, 0, NULL, 0),
    FAM(db_up, "relay_database_up",
        "1 while the database answers (0 during an outage; probed every second).",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(unknown_model, "relay_unpriced_requests_total",
        "Requests whose model has no price (billed at pricing.default).", RELAY_METRIC_COUNTER,
        L("model"), 1, 0, 100, NULL, 0),
    FAM(budget_ratio, "relay_budget_usage_ratio",
        "Share of a cost budget spent this period, per key and budget.", RELAY_METRIC_GAUGE,
        L("key", "period", "models"), 3, 0, 4 * RELAY_METRICS_MAX_KEYS, NULL, 0),
    FAM(cache_hits, "relay_key_cache_hits_total", "Key verifications answered from the cache.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(bcrypt, "relay_key_bcrypt_total", "Key verifications that ran bcrypt.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(key_verify, "relay_key_verify_seconds",
        "Duration of key verifications by result (cached, bcrypt, failed).", RELAY_METRIC_HISTOGRAM,
        L("result"), 1, -1, 0, VERIFY_BUCKETS, sizeof VERIFY_BUCKETS / sizeof VERIFY_BUCKETS[0]),
    FAM(key_waiting, "relay_key_verify_waiting",
        "Key verifications waiting for a bcrypt slot or for a concurrent verification.",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(key_timeouts, "relay_key_verify_timeouts_total",
        "Key verifications refused after waiting verify_wait_ms.", RELAY_METRIC_COUNTER, NULL, 0,
        -1, 0, NULL, 0),
    FAM(redis_configured, "relay_redis_configured", "1 when a Redis URL is configured.",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(key_unknown, "relay_key_unknown_id_refused_total",
        "Keys refused from memory: their public id was unknown to the store within 60 s.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(key_throttled, "relay_key_guessing_throttled_total",
        "Keys refused with 429: their client address sent 20 invalid keys within 60 s.",
        RELAY_METRIC_COUNTER, NULL, 0, -1, 0, NULL, 0),
    FAM(redis_up, "relay_redis_up", "1 when the shared Redis limiter is reachable.",
        RELAY_METRIC_GAUGE, NULL, 0, -1, 0, NULL, 0),
    FAM(up_requests, "relay_upstream_requests_total",
        "Upstream attempts by upstream and answer status (connect_error, timeout: none).",
        RELAY_METRIC_COUNTER, L("upstream", "status"), 2, -1, 0, NULL, 0),
    FAM(up_up, "relay_upstream_up", "1 when the upstream is healthy and may take requests.",
        RELAY_METRIC_GAUGE, L("upstream"), 1, -1, 0, NULL, 0),
    FAM(up_in_flight, "relay_upstream_in_flight", "Requests in flight to the upstream now.",
        RELAY_METRIC_GAUGE, L("upstream"), 1, -1, 0, NULL, 0),
    FAM(up_failovers, "relay_upstream_failovers_total",
        "Requests moved from an upstream to another before their first byte, by reason.",
        RELAY_METRIC_COUNTER, L("from", "reason"), 2, -1, 0, NULL, 0),
    FAM(up_cooldowns, "relay_upstream_cooldowns_total",
        "Times the upstream was cooled down (429, 529, no connection, no first byte).",
        RELAY_METRIC_COUNTER, L("upstream"), 1, -1, 0, NULL, 0),
    FAM(build_info, "relay_build_info", "The relay's version (value 1).", RELAY_METRIC_GAUGE,
        L("version"), 1, -1, 0, NULL, 0),
};

int relay_metrics_start(relay_t *r, relay_error_t *err)
{
    relay_metrics_t *m;
    if (relay_metrics_new(&m) != 0)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++) {
        relay_metric_t **slot = (relay_metric_t **)((char *)&m->fam + FAMILIES[i].off);
        int rc = relay_metrics_register(m, &FAMILIES[i].d, slot);
        if (rc) {
            relay_metrics_free(m);
            return relay_error_set(err, rc, "metrics: cannot register %s", FAMILIES[i].d.name);
        }
    }
    /* Scrapes show every family from the start, so dashboards see zeros rather than gaps. */
    relay_metrics_add(m->fam.retries, NULL, 0);
    relay_metrics_set(m->fam.active_streams, NULL, 0);
    relay_metrics_set(m->fam.build_info, L(relay_version()), 1);
    r->metrics = m;
    return 0;
}

void relay_metrics_stop(relay_t *r)
{
    relay_metrics_free(r->metrics);
    r->metrics = NULL;
}

relay_metrics_t *relay_metrics_registry(relay_t *r)
{
    return r ? r->metrics : NULL;
}

int relay_metrics_set_key_label(relay_t *r, const char *mode)
{
    int v;
    if (!mode || !*mode || strcmp(mode, "name") == 0)
        v = RELAY_METRICS_KEY_NAME;
    else if (strcmp(mode, "id") == 0)
        v = RELAY_METRICS_KEY_ID;
    else if (strcmp(mode, "off") == 0)
        v = RELAY_METRICS_KEY_OFF;
    else
        return RELAY_ERR_INVALID;
    if (!r || !r->metrics)
        return RELAY_ERR_INVALID;
    __atomic_store_n(&r->metrics->key_label, v, __ATOMIC_RELAXED);
    return 0;
}

/* A bounded route label: which API a proxied request called. */
static const char *route_of(const relay_http_request_t *req)
{
    const char *p = req && req->path ? req->path : "";
    if (strcmp(p, "/v1/messages") == 0)
        return "messages";
    if (strcmp(p, "/v1/messages/count_tokens") == 0)
        return "count_tokens";
    if (strncmp(p, "/v1/messages/batches", 20) == 0)
        return "batches";
    if (strcmp(p, "/v1/models") == 0 || strncmp(p, "/v1/models/", 11) == 0)
        return "models";
    if (strcmp(p, "/v1/complete") == 0)
        return "complete";
    return "other";
}

static const char *auth_reason(int code, int has_key)
{
    switch (code) {
    case RELAY_ERR_KEY_DISABLED:
        return "disabled";
    case RELAY_ERR_KEY_EXPIRED:
        return "expired";
    case RELAY_ERR_STORE:
        return "store";
    default:
        return has_key ? "invalid" : "missing";
    }
}

void relay_metrics_forward_begin(relay_t *r, int stream)
{
    if (r->metrics && stream)
        relay_metrics_add(r->metrics->fam.active_streams, NULL, 1);
}

/* One read of the key's budgets (this instance's mirror: no Redis call on the request path)
 * serves the ratio gauge and the budget alerts. */
static void observe_budgets(relay_t *r, const relay_key_record_t *key, const char *label)
{
    relay_budget_view_t *v;
    size_t n;
    if (budgets_view_local(r, key, &v, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (label)
            relay_metrics_set(r->metrics->fam.budget_ratio, L(label, v[i].period, v[i].models),
                              v[i].limit > 0 ? v[i].spent / v[i].limit : 1.0);
        relay_maintenance_budget_check(r, key, &v[i]);
    }
    free(v);
}

static void observe_tokens(relay_t *r, const relay_key_record_t *key, const relay_usage_t *u,
                           double cost)
{
    relay_families_t *fam = &r->metrics->fam;
    int mode = __atomic_load_n(&r->metrics->key_label, __ATOMIC_RELAXED);
    const char *label = mode == RELAY_METRICS_KEY_ID ? key->id : (key->name ? key->name : key->id);
    if (mode == RELAY_METRICS_KEY_OFF)
        label = ""; /* an empty label is not rendered: the key label is dropped */
    const struct {
        const char *type;
        int64_t n;
    } kinds[] = {{"input", u->input_tokens},
                 {"output", u->output_tokens},
                 {"cache_creation", u->cache_creation_input_tokens},
                 {"cache_read", u->cache_read_input_tokens}};
    for (size_t i = 0; i < 4; i++)
        relay_metrics_add(fam->tokens, L(kinds[i].type, label), (double)kinds[i].n);
    if (cost > 0)
        relay_metrics_add(fam->cost, L(label), cost);
    observe_budgets(r, key, mode != RELAY_METRICS_KEY_OFF ? label : NULL);
    if (key->token_limit <= 0)
        return;
    /* One live quota read serves the ratio gauge and the alert check. */
    relay_quota_view_t q;
    if (relay_limits_quota(r, key, &q) != 0 || q.token_limit <= 0)
        return;
    if (mode != RELAY_METRICS_KEY_OFF)
        relay_metrics_set(fam->quota_ratio, L(label), (double)q.token_used / (double)q.token_limit);
    relay_maintenance_quota_check(r, key, q.token_used, q.token_limit);
}

void relay_metrics_observe_request(relay_t *r, const relay_http_request_t *req,
                                   const relay_key_record_t *key, const relay_proxy_result_t *res,
                                   int forwarded, int stream, const char *model)
{
    if (!r->metrics)
        return;
    relay_families_t *fam = &r->metrics->fam;
    const char *route = route_of(req);
    char status[16];
    int st = res->status ? res->status : (res->fwd.client_gone ? 499 : 0);
    snprintf(status, sizeof status, "%d", st);
    relay_metrics_add(fam->requests, L(status, route), 1);
    if (forwarded && stream)
        relay_metrics_add(fam->active_streams, NULL, -1);
    if (res->refused && strcmp(res->refusal_reason, "auth") == 0)
        relay_metrics_add(fam->auth_failures, L(auth_reason(res->refused, key != NULL)), 1);
    if (res->refused && strcmp(res->refusal_reason, "store") == 0)
        relay_metrics_add(fam->auth_failures, L("store"), 1);
    if (!forwarded)
        return;
    relay_metrics_observe(fam->duration, L(route), (double)res->fwd.duration_ms / 1000.0);
    if (res->fwd.got_first_byte) /* on loopback it can take under a millisecond */
        relay_metrics_observe(fam->ttfb, L(route), (double)res->fwd.time_to_first_byte_ms / 1000.0);
    const relay_usage_t *u = &res->fwd.usage;
    if (key)
        observe_tokens(r, key, u, res->cost);
    const char *m = u->model[0] ? u->model : model;
    int known = 1;
    int64_t tokens = u->input_tokens + u->output_tokens + u->cache_creation_input_tokens +
                     u->cache_read_input_tokens;
    if (tokens > 0 && m && *m)
        relay_usage_cost(r, m, 0, 0, 0, 0, 0, &known);
    if (!known)
        relay_metrics_add(fam->unknown_model, L(m), 1);
}

/* The pool's counters (upstreams.c keeps them under its own lock). */
static void refresh_upstreams(relay_t *r, relay_families_t *fam)
{
    relay_upstream_counts_t *c;
    size_t n;
    if (relay_upstreams_counts(r, &c, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        const char *name = c[i].name;
        relay_metrics_set(fam->up_up, L(name), c[i].up);
        relay_metrics_set(fam->up_in_flight, L(name), c[i].in_flight);
        relay_metrics_set(fam->up_cooldowns, L(name), (double)c[i].cooldowns);
        for (int k = 0; k < c[i].n_status; k++)
            relay_metrics_set(fam->up_requests, L(name, c[i].by_status[k].status),
                              (double)c[i].by_status[k].n);
        for (int k = 1; k < 6; k++)
            if (c[i].failovers[k])
                relay_metrics_set(fam->up_failovers, L(name, relay_upstreams_reason_label(k)),
                                  (double)c[i].failovers[k]);
    }
    free(c);
}

/* Counters other modules keep, copied into the registry just before rendering. */
static void refresh(relay_t *r)
{
    relay_families_t *fam = &r->metrics->fam;
    relay_usage_stats_t us;
    relay_usage_get_stats(r, &us);
    relay_metrics_set(fam->queue_depth, NULL, (double)us.depth);
    relay_metrics_set(fam->drops, NULL, (double)us.dropped);
    relay_metrics_set(fam->written, NULL, (double)us.written);
    relay_metrics_set(fam->batches, NULL, (double)us.batches);
    relay_metrics_set(fam->spool_bytes, NULL, (double)us.spool_bytes);
    relay_metrics_set(fam->spool_full, NULL, (double)us.spool_full);
    relay_metrics_set(fam->spool_errors, NULL, (double)us.spool_errors);
    relay_metrics_set(fam->spool_replayed, NULL, (double)us.spool_replayed);
    relay_metrics_set(fam->duplicates, NULL, (double)us.duplicates);
    relay_metrics_set(fam->db_up, NULL, relay_database_state(r, NULL, 0) == 0 ? 1 : 0);
    relay_metrics_set(fam->retries, NULL, (double)relay_forward_retries(r));
    relay_limits_stats_t ls;
    relay_limits_get_stats(r, &ls);
    relay_metrics_set(fam->rate_limited, L("quota"), (double)ls.refused_quota);
    relay_metrics_set(fam->rate_limited, L("budget"), (double)ls.refused_budget);
    relay_metrics_set(fam->rate_limited, L("requests"), (double)ls.refused_requests);
    relay_metrics_set(fam->rate_limited, L("tokens"), (double)ls.refused_tokens);
    relay_metrics_set(fam->rate_limited, L("concurrency"), (double)ls.refused_concurrency);
    relay_metrics_set(fam->permission, L("allowlist"), (double)ls.refused_permission);
    relay_metrics_set(fam->redis_up, NULL, ls.redis_up ? 1 : 0);
    relay_metrics_set(fam->redis_configured, NULL,
                      strcmp(relay_limits_redis_status(r), "disabled") != 0);
    relay_keys_stats_t ks;
    relay_keys_stats(r, &ks);
    relay_metrics_set(fam->cache_hits, NULL, (double)ks.cache_hits);
    relay_metrics_set(fam->bcrypt, NULL, (double)ks.bcrypt_calls);
    relay_metrics_set(fam->key_waiting, NULL, (double)ks.verify_waiting);
    relay_metrics_set(fam->key_timeouts, NULL, (double)ks.verify_timeouts);
    refresh_upstreams(r, fam);
    relay_metrics_set(fam->key_unknown, NULL, (double)ks.unknown_id_hits);
    relay_metrics_set(fam->key_throttled, NULL, (double)ks.throttled);
}

void relay_metrics_observe_key_verify(relay_t *r, const char *result, double seconds)
{
    if (r && r->metrics)
        relay_metrics_observe(r->metrics->fam.key_verify, L(result), seconds);
}

int relay_metrics_scrape(relay_t *r, char **out, size_t *len)
{
    if (!r || !r->metrics)
        return RELAY_ERR_UNAVAILABLE;
    refresh(r);
    return relay_metrics_render(r->metrics, out, len);
}

/* ---------------------------------------------------------------- access to /metrics */

/* Is ip equal to, or inside, entry ("10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8")? */
static int ip_matches(const char *entry, const char *ip)
{
    char net[64];
    relay_strlcpy(net, entry, sizeof net);
    char *slash = strchr(net, '/');
    int bits = -1;
    if (slash) {
        *slash = '\0';
        bits = atoi(slash + 1);
    }
    unsigned char a[16], b[16];
    int fam = strchr(net, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(fam, net, a) != 1 || inet_pton(fam, ip, b) != 1)
        return 0;
    int total = fam == AF_INET6 ? 128 : 32;
    if (bits < 0 || bits > total)
        bits = total;
    for (int i = 0; i < bits / 8; i++)
        if (a[i] != b[i])
            return 0;
    int rem = bits % 8;
    return rem == 0 || ((a[bits / 8] ^ b[bits / 8]) & (0xff << (8 - rem)) & 0xff) == 0;
}

int relay_metrics_check_access(const relay_http_request_t *req, const char *token,
                               const char *const *allowed_ips, size_t n_allowed)
{
    if (n_allowed) {
        const char *ip = req->client_ip ? req->client_ip : "";
        int ok = 0;
        for (size_t i = 0; i < n_allowed && !ok; i++)
            ok = allowed_ips[i] && ip_matches(allowed_ips[i], ip);
        if (!ok)
            return RELAY_ERR_PERMISSION;
    }
    if (token && *token) {
        const char *a = relay_http_header(req, "authorization");
        if (!a || strncasecmp(a, "Bearer ", 7) != 0)
            return RELAY_ERR_AUTH;
        a += 7;
        while (*a == ' ')
            a++;
        if (!relay_ct_streq(a, token))
            return RELAY_ERR_AUTH;
    }
    return 0;
}
