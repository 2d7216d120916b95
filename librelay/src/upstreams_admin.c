/* upstreams_admin: the pool's database upstreams (sealed keys) and the /admin/upstreams REST. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"
#include "relay/admin.h"
#include "relay/auth.h"
#include "relay/forward.h"
#include "seal.h"
#include "upstreams_internal.h"
#include "util.h"

#define DUMP_FLAGS   (JSON_COMPACT | JSON_REAL_PRECISION(15))
#define TEST_TIMEOUT 10L /* seconds a test call may take */

/* ---- the database's upstreams in the pool ---- */

static int is_stored(const relay_upstream_record_t *recs, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i].id, id) == 0)
            return 1;
    return 0;
}

/* One stored upstream into the pool; its key opened with SECRET_KEY. A key that does not open is
 * logged once: at the first load, or when the upstream leaves the pool. */
static void load_one(relay_t *r, relay_upstream_record_t *rec, int first)
{
    const char *secret = r->opts.secret_key ? r->opts.secret_key : "";
    int rc = relay_unseal(secret, rec->id, rec->api_key_sealed, rec->def.api_key,
                          sizeof rec->def.api_key);
    if (rc) {
        if (relay_upstreams_remove(r, rec->id) == 0 || first)
            relay_log(r, RELAY_LOG_ERROR, "upstreams.unseal_failed", NULL,
                      "upstream %s: its stored key does not open with SECRET_KEY (changed? see "
                      "relay-server upstreams reseal); left out of the pool",
                      rec->def.name);
        return;
    }
    if (relay_upstreams_put(r, rec->id, &rec->def, 1, rec->is_disabled) != 0 && first)
        relay_log(r, RELAY_LOG_ERROR, "upstreams.conflict", NULL,
                  "upstream %s: its name is taken by another upstream; left out of the pool",
                  rec->def.name);
    explicit_bzero(rec->def.api_key, sizeof rec->def.api_key);
}

int relay_upstreams_sync(relay_t *r, relay_error_t *err)
{
    relay_upstream_record_t *recs;
    size_t n;
    int rc = relay_store_upstream_list(r->store, &recs, &n);
    if (rc)
        return relay_error_set(err, rc, "cannot read the stored upstreams");
    int first = !relay_upstreams_mark_synced(r);
    for (size_t i = 0; i < n; i++)
        load_one(r, &recs[i], first);
    relay_upstream_info_t *in;
    size_t ni;
    if (relay_upstreams_list(r, &in, &ni) == 0) {
        for (size_t i = 0; i < ni; i++)
            if (strcmp(in[i].source, "database") == 0 && !is_stored(recs, n, in[i].id))
                relay_upstreams_remove(r, in[i].id);
        free(in);
    }
    free(recs);
    return 0;
}

int relay_upstreams_reseal(relay_t *r, const char *old_secret, int *count, relay_error_t *err)
{
    *count = 0;
    const char *secret = r->opts.secret_key;
    if (!secret || !*secret)
        return relay_error_set(err, RELAY_ERR_CONFIG, "SECRET_KEY is not set");
    relay_upstream_record_t *recs;
    size_t n;
    int rc = relay_store_upstream_list(r->store, &recs, &n);
    if (rc)
        return relay_error_set(err, rc, "cannot read the stored upstreams");
    char key[sizeof recs->def.api_key];
    for (size_t i = 0; i < n && !rc; i++) {
        if (relay_unseal(secret, recs[i].id, recs[i].api_key_sealed, key, sizeof key) == 0)
            continue; /* already under the new secret */
        if (relay_unseal(old_secret, recs[i].id, recs[i].api_key_sealed, key, sizeof key) != 0)
            rc =
                relay_error_set(err, RELAY_ERR_AUTH,
                                "upstream %s: its key opens with neither secret", recs[i].def.name);
        else if ((rc = relay_seal(secret, recs[i].id, key, recs[i].api_key_sealed,
                                  sizeof recs[i].api_key_sealed)) == 0 &&
                 (rc = relay_store_upstream_update(r->store, &recs[i])) == 0)
            (*count)++;
        else
            relay_error_set(err, rc, "upstream %s: cannot re-seal its key", recs[i].def.name);
    }
    explicit_bzero(key, sizeof key);
    free(recs);
    return rc;
}

/* ---- REST ---- */

typedef struct ctx {
    relay_t *r;
    const relay_http_request_t *req;
    relay_http_response_t *resp;
    const char *actor;
    char id[64];
} ctx_t;

static void reply(ctx_t *c, int status, json_t *body)
{
    char *s = body ? json_dumps(body, DUMP_FLAGS) : NULL;
    json_decref(body);
    if (!s)
        relay_http_response_error(c->resp, RELAY_ERR_NOMEM, NULL);
    else
        relay_http_response_set(c->resp, status, s);
}

static void fail(ctx_t *c, int code, const char *msg)
{
    relay_http_response_error(c->resp, code, msg);
}

static void audit(ctx_t *c, const char *action, const char *target, json_t *details)
{
    char *d = details ? json_dumps(details, DUMP_FLAGS) : NULL;
    json_decref(details);
    relay_admin_audit(c->r, c->actor, c->req->client_ip, action, target, d);
    free(d);
}

static json_t *iso_or_null(int64_t t)
{
    char buf[32];
    relay_iso8601(t, buf, sizeof buf);
    return t ? json_string(buf) : json_null();
}

static json_t *info_object(const relay_upstream_info_t *u)
{
    json_t *models = json_array();
    for (int i = 0; i < u->n_models; i++)
        json_array_append_new(models, json_string(u->models[i]));
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:s?, s:i, s:i, s:o, s:i, s:f, s:i, s:s}", "id", u->id,
                  "name", u->name, "url", u->url, "source", u->source, "group",
                  u->group[0] ? u->group : NULL, "priority", u->priority, "weight", u->weight,
                  "models", models, "max_concurrency", u->max_concurrency, "timeout", u->timeout_s,
                  "max_retries", u->max_retries, "key_last4", u->key_last4);
    json_t *more = json_pack(
        "{s:b, s:s, s:o, s:i, s:I, s:I, s:s?, s:o, s:o, s:I, s:I}", "healthy", u->healthy, "state",
        u->state, "cooldown_until", iso_or_null(u->cooldown_until_ms / 1000), "in_flight",
        u->in_flight, "requests_5m", (json_int_t)u->requests_5m, "errors_5m",
        (json_int_t)u->errors_5m, "last_error", u->last_error[0] ? u->last_error : NULL,
        "last_error_at", iso_or_null(u->last_error_at), "ratelimit_remaining",
        u->ratelimit_remaining >= 0 ? json_real(u->ratelimit_remaining) : json_null(), "cooldowns",
        (json_int_t)u->cooldowns, "requests_total", (json_int_t)u->requests_total);
    if (!o || !more || json_object_update(o, more) != 0) {
        json_decref(o);
        o = NULL;
    }
    json_decref(more);
    return o;
}

/* The pool's view of one upstream; RELAY_ERR_NOT_FOUND (answered) when absent. */
static json_t *find_object(ctx_t *c, relay_upstream_info_t *out)
{
    relay_upstream_info_t *in;
    size_t n;
    json_t *o = NULL;
    if (relay_upstreams_list(c->r, &in, &n) != 0) {
        fail(c, RELAY_ERR_NOMEM, NULL);
        return NULL;
    }
    for (size_t i = 0; i < n && !o; i++)
        if (strcmp(in[i].id, c->id) == 0 || strcmp(in[i].name, c->id) == 0) {
            o = info_object(&in[i]);
            if (out)
                *out = in[i];
        }
    free(in);
    if (!o)
        fail(c, RELAY_ERR_NOT_FOUND, "no such upstream");
    return o;
}

static void h_list(ctx_t *c)
{
    relay_upstream_info_t *in;
    size_t n;
    if (relay_upstreams_list(c->r, &in, &n) != 0) {
        fail(c, RELAY_ERR_NOMEM, NULL);
        return;
    }
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(items, info_object(&in[i]));
    free(in);
    reply(c, 200, json_pack("{s:o, s:I}", "items", items, "total", (json_int_t)n));
}

static void h_get(ctx_t *c)
{
    json_t *o = find_object(c, NULL);
    if (o)
        reply(c, 200, o);
}

/* ---- reading a definition from a body ---- */

static int field_fail(ctx_t *c, const char *field, const char *what)
{
    char msg[RELAY_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s: %s", field, what);
    fail(c, RELAY_ERR_INVALID, msg);
    return RELAY_ERR_INVALID;
}

static int str_field(ctx_t *c, json_t *o, const char *k, char *dst, size_t cap,
                     const char *(*check)(const char *), int nullable)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        return 0;
    if (nullable && json_is_null(v)) {
        dst[0] = '\0';
        return 0;
    }
    const char *s = json_string_value(v), *bad = NULL;
    if (!s || strlen(s) >= cap || (check && (bad = check(s))))
        return field_fail(c, k, bad ? bad : "expected a string");
    relay_strlcpy(dst, s, cap);
    return 0;
}

static int int_field(ctx_t *c, json_t *o, const char *k, int min, int max, int *dst)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        return 0;
    char what[96];
    snprintf(what, sizeof what, "expected an integer from %d to %d", min, max);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return field_fail(c, k, what);
    *dst = (int)json_integer_value(v);
    return 0;
}

static int models_field(ctx_t *c, json_t *o, relay_upstream_def_t *d)
{
    json_t *v = json_object_get(o, "models"), *m;
    size_t i;
    if (!v)
        return 0;
    if (json_is_null(v)) {
        d->n_models = 0;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) > RELAY_UPSTREAM_MAX_MODELS)
        return field_fail(c, "models", "expected a list of at most 16 model patterns");
    d->n_models = 0;
    json_array_foreach(v, i, m)
    {
        const char *s = json_string_value(m), *bad = s ? relay_upstreams_check_model(s) : NULL;
        if (!s || bad)
            return field_fail(c, "models", bad ? bad : "expected strings");
        relay_strlcpy(d->models[d->n_models++], s, sizeof d->models[0]);
    }
    return 0;
}

static const char *check_url(const char *s)
{
    if ((strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) || strchr(s, ' '))
        return "expected an http:// or https:// URL";
    return NULL;
}

static const char *check_key(const char *s)
{
    return *s ? NULL : "expected a non-empty key";
}

static const char *const FIELDS[] = {"name",        "url",    "api_key",         "weight",
                                     "priority",    "models", "max_concurrency", "timeout",
                                     "max_retries", "group",  "disabled"};

/* Fills d (and *disabled) from o; unknown fields are refused. */
static int parse_def(ctx_t *c, json_t *o, relay_upstream_def_t *d, int *disabled)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        size_t i = 0;
        while (i < sizeof FIELDS / sizeof FIELDS[0] && strcmp(FIELDS[i], k) != 0)
            i++;
        if (i == sizeof FIELDS / sizeof FIELDS[0])
            return field_fail(c, k, "unknown field");
    }
    json_t *t = json_object_get(o, "timeout"), *dis = json_object_get(o, "disabled");
    if (t && (!json_is_number(t) || json_number_value(t) < 0 || json_number_value(t) > 86400))
        return field_fail(c, "timeout", "expected seconds from 0 to 86400 (0: the default)");
    if (t)
        d->timeout_s = json_number_value(t);
    if (dis && !json_is_boolean(dis))
        return field_fail(c, "disabled", "expected true or false");
    if (dis)
        *disabled = json_is_true(dis);
    int rc = str_field(c, o, "name", d->name, sizeof d->name, relay_upstreams_check_name, 0);
    rc = rc ? rc : str_field(c, o, "url", d->url, sizeof d->url, check_url, 0);
    rc = rc ? rc : str_field(c, o, "api_key", d->api_key, sizeof d->api_key, check_key, 0);
    rc = rc ? rc
            : str_field(c, o, "group", d->group, sizeof d->group, relay_upstreams_check_name, 1);
    rc = rc ? rc : int_field(c, o, "weight", 1, 1000000, &d->weight);
    rc = rc ? rc : int_field(c, o, "priority", 0, 1000, &d->priority);
    rc = rc ? rc : int_field(c, o, "max_concurrency", 0, 10000000, &d->max_concurrency);
    rc = rc ? rc : int_field(c, o, "max_retries", -1, 20, &d->max_retries);
    return rc ? rc : models_field(c, o, d);
}

static json_t *body_object(ctx_t *c)
{
    json_t *o = c->req->body_len
                    ? json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, NULL)
                    : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        fail(c, RELAY_ERR_INVALID, "invalid JSON body: expected an object");
        return NULL;
    }
    return o;
}

/* The names of the fields a body set, for the audit row (never the key's value). */
static json_t *changed_fields(json_t *o)
{
    json_t *a = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        json_array_append_new(a, json_string(k));
    }
    return json_pack("{s:o}", "fields", a);
}

/* Seals d's key into rec and writes it (insert or update). */
static int store_def(ctx_t *c, relay_upstream_record_t *rec, const relay_upstream_def_t *d,
                     int disabled, int update)
{
    const char *secret = c->r->opts.secret_key;
    if (!secret || !*secret) {
        fail(c, RELAY_ERR_UNAVAILABLE, "SECRET_KEY is not set: upstream keys cannot be sealed");
        return RELAY_ERR_UNAVAILABLE;
    }
    rec->def = *d;
    explicit_bzero(rec->def.api_key, sizeof rec->def.api_key);
    rec->is_disabled = disabled;
    size_t kl = strlen(d->api_key);
    relay_strlcpy(rec->key_last4, kl > 8 ? d->api_key + kl - 4 : "", sizeof rec->key_last4);
    int rc = relay_upstreams_name_free(c->r, d->name, rec->id);
    rc = rc ? rc
            : relay_seal(secret, rec->id, d->api_key, rec->api_key_sealed,
                         sizeof rec->api_key_sealed);
    rc = rc       ? rc
         : update ? relay_store_upstream_update(c->r->store, rec)
                  : relay_store_upstream_insert(c->r->store, rec);
    rc = rc ? rc : relay_upstreams_put(c->r, rec->id, d, 1, disabled);
    if (rc)
        fail(c, rc,
             rc == RELAY_ERR_CONFLICT ? "an upstream of that name exists"
                                      : "cannot store the upstream");
    return rc;
}

static void h_create(ctx_t *c)
{
    json_t *o = body_object(c);
    if (!o)
        return;
    relay_upstream_def_t d = {.weight = 1, .max_retries = -1};
    int disabled = 0;
    relay_upstream_record_t rec = {0};
    int rc = parse_def(c, o, &d, &disabled);
    if (!rc && (!d.name[0] || !d.url[0] || !d.api_key[0]))
        rc = field_fail(c, !d.name[0] ? "name" : !d.url[0] ? "url" : "api_key", "required");
    if (!rc && relay_uuid4(rec.id, sizeof rec.id) != 0)
        rc = RELAY_ERR_INTERNAL, fail(c, rc, NULL);
    rc = rc ? rc : store_def(c, &rec, &d, disabled, 0);
    explicit_bzero(&d, sizeof d);
    if (!rc) {
        audit(c, "upstream.create", rec.id, changed_fields(o));
        relay_strlcpy(c->id, rec.id, sizeof c->id);
        json_t *u = find_object(c, NULL);
        if (u)
            reply(c, 201, u);
    }
    json_decref(o);
}

/* The path's upstream: its view, its definition (with its key) and c->id set to its id; a 404
 * is answered when there is none. */
static int lookup(ctx_t *c, relay_upstream_info_t *in, relay_upstream_def_t *d, int *from_db)
{
    json_t *o = find_object(c, in);
    if (!o)
        return RELAY_ERR_NOT_FOUND;
    json_decref(o);
    relay_strlcpy(c->id, in->id, sizeof c->id);
    *from_db = 0;
    if (relay_upstreams_get_def(c->r, c->id, d, from_db) != 0) {
        fail(c, RELAY_ERR_NOT_FOUND, "no such upstream");
        return RELAY_ERR_NOT_FOUND;
    }
    return 0;
}

/* A database upstream's stored definition (with its key) for a change; answered otherwise. */
static int editable(ctx_t *c, relay_upstream_def_t *d, int *disabled)
{
    relay_upstream_info_t in;
    int from_db;
    if (lookup(c, &in, d, &from_db) != 0)
        return RELAY_ERR_NOT_FOUND;
    if (!from_db) {
        explicit_bzero(d, sizeof *d);
        fail(c, RELAY_ERR_INVALID,
             "this upstream comes from the configuration file and is read-only here");
        return RELAY_ERR_INVALID;
    }
    *disabled = strcmp(in.state, "disabled") == 0;
    return 0;
}

static void h_patch(ctx_t *c)
{
    relay_upstream_def_t d;
    int disabled;
    if (editable(c, &d, &disabled) != 0)
        return;
    json_t *o = body_object(c);
    relay_upstream_record_t rec = {0};
    relay_strlcpy(rec.id, c->id, sizeof rec.id);
    if (o && parse_def(c, o, &d, &disabled) == 0 && store_def(c, &rec, &d, disabled, 1) == 0) {
        audit(c, "upstream.update", c->id, changed_fields(o));
        json_t *u = find_object(c, NULL);
        if (u)
            reply(c, 200, u);
    }
    explicit_bzero(&d, sizeof d);
    json_decref(o);
}

static void h_delete(ctx_t *c)
{
    relay_upstream_def_t d;
    int disabled;
    if (editable(c, &d, &disabled) != 0)
        return;
    explicit_bzero(&d, sizeof d);
    int rc = relay_store_upstream_delete(c->r->store, c->id);
    if (rc && rc != RELAY_ERR_NOT_FOUND) {
        fail(c, rc, "cannot delete the upstream");
        return;
    }
    relay_upstreams_remove(c->r, c->id);
    audit(c, "upstream.delete", c->id, NULL);
    reply(c, 200, json_pack("{s:s}", "message", "upstream deleted"));
}

/* disable / enable: stored for a database upstream, in this process for a config one. */
static void set_disabled(ctx_t *c, int disabled)
{
    relay_upstream_info_t in;
    relay_upstream_def_t d;
    int from_db;
    json_t *o;
    if (lookup(c, &in, &d, &from_db) != 0)
        return;
    relay_upstream_record_t rec = {0};
    relay_strlcpy(rec.id, c->id, sizeof rec.id);
    int rc = from_db ? store_def(c, &rec, &d, disabled, 1) : 0;
    explicit_bzero(&d, sizeof d);
    if (rc)
        return;
    relay_upstreams_set_disabled(c->r, c->id, disabled);
    audit(c, disabled ? "upstream.disable" : "upstream.enable", c->id, NULL);
    if ((o = find_object(c, NULL)) != NULL)
        reply(c, 200, o);
}

static void h_disable(ctx_t *c)
{
    set_disabled(c, 1);
}

static void h_enable(ctx_t *c)
{
    set_disabled(c, 0);
}

static size_t discard_body(char *p, size_t s, size_t n, void *ud)
{
    (void)p, (void)ud;
    return s * n;
}

/* GET /v1/models with the upstream's key: its HTTP status, or 0 when it did not answer. */
static long probe(const relay_upstream_def_t *d, char *why, size_t cap)
{
    char url[1100], hdr[600];
    const char *sep = strlen(d->url) && d->url[strlen(d->url) - 1] == '/' ? "" : "/";
    size_t bl = strlen(d->url);
    int has_v1 = bl >= 3 && strcmp(d->url + bl - 3, "/v1") == 0;
    snprintf(url, sizeof url, "%s%s%s", d->url, has_v1 ? "/models" : sep,
             has_v1 ? "" : "v1/models");
    snprintf(hdr, sizeof hdr, "x-api-key: %s", d->api_key);
    struct curl_slist *h = curl_slist_append(NULL, hdr);
    struct curl_slist *h2 = h ? curl_slist_append(h, "anthropic-version: 2023-06-01") : NULL;
    explicit_bzero(hdr, sizeof hdr);
    CURL *e = h2 ? curl_easy_init() : NULL;
    long status = 0;
    if (e) {
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h2);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT, TEST_TIMEOUT);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard_body);
        CURLcode cc = curl_easy_perform(e);
        if (cc == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        else
            relay_strlcpy(why, curl_easy_strerror(cc), cap);
        curl_easy_cleanup(e);
    }
    for (struct curl_slist *p = h; p; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(h);
    return status;
}

static void h_test(ctx_t *c)
{
    relay_upstream_info_t in;
    relay_upstream_def_t d;
    int from_db;
    json_t *o;
    if (lookup(c, &in, &d, &from_db) != 0)
        return;
    char why[128] = "";
    long status = probe(&d, why, sizeof why);
    explicit_bzero(&d, sizeof d);
    int ok = status >= 200 && status < 300;
    if (ok) /* a passing test mends a broken upstream */
        relay_upstreams_clear_broken(c->r, c->id);
    if (!why[0])
        snprintf(why, sizeof why, status ? "HTTP %ld" : "no answer", status);
    audit(c, "upstream.test", c->id, json_pack("{s:b, s:i}", "ok", ok, "status", (int)status));
    o = find_object(c, NULL);
    if (o)
        reply(c, 200,
              json_pack("{s:b, s:i, s:s, s:o}", "ok", ok, "status", (int)status, "message",
                        ok ? "the upstream answered GET /v1/models" : why, "upstream", o));
}

typedef void (*handler_fn)(ctx_t *c);

static const struct {
    const char *action; /* NULL: /admin/upstreams/{id} itself; "": the collection */
    const char *method;
    const char *pattern; /* for relay_upstreams_routes */
    handler_fn fn;
} ROUTES[] = {
    {"", "GET", "/admin/upstreams", h_list},
    {"", "POST", "/admin/upstreams", h_create},
    {NULL, "GET", "/admin/upstreams/{id}", h_get},
    {NULL, "PATCH", "/admin/upstreams/{id}", h_patch},
    {NULL, "DELETE", "/admin/upstreams/{id}", h_delete},
    {"disable", "POST", "/admin/upstreams/{id}/disable", h_disable},
    {"enable", "POST", "/admin/upstreams/{id}/enable", h_enable},
    {"test", "POST", "/admin/upstreams/{id}/test", h_test},
};

void relay_upstreams_routes(relay_http_route_fn fn, void *ud)
{
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        fn(ud, ROUTES[i].method, ROUTES[i].pattern);
}

/* "" for the collection, NULL for one upstream, else its action; id filled. -1: not ours. */
static int route_of(const char *path, char *id, size_t cap, const char **action)
{
    if (strcmp(path, "/admin/upstreams") == 0 || strcmp(path, "/admin/upstreams/") == 0) {
        *action = "";
        return 0;
    }
    if (strncmp(path, "/admin/upstreams/", 17) != 0)
        return -1;
    const char *rest = path + 17, *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= cap || (slash && strchr(slash + 1, '/')))
        return -1;
    memcpy(id, rest, n);
    id[n] = '\0';
    *action = slash ? slash + 1 : NULL;
    return 0;
}

static int same_action(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int relay_upstreams_admin_handle(relay_t *r, const relay_http_request_t *req,
                                 relay_http_response_t *resp)
{
    char actor[RELAY_AUTH_USERNAME_MAX + 1];
    ctx_t c = {.r = r, .req = req, .resp = resp, .actor = actor};
    const char *action;
    if (!req->path || route_of(req->path, c.id, sizeof c.id, &action) != 0)
        return RELAY_ERR_NOT_FOUND;
    int known = 0;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        if (!same_action(ROUTES[i].action, action))
            continue;
        known = 1;
        if (!req->method || strcmp(ROUTES[i].method, req->method) != 0)
            continue;
        if (relay_admin_authenticate(r, req, actor, sizeof actor, resp) != 0)
            return 0;
        if (req->body_len > RELAY_ADMIN_BODY_MAX)
            fail(&c, RELAY_ERR_TOO_LARGE, "request body exceeds the admin API's 1 MiB limit");
        else
            ROUTES[i].fn(&c);
        return 0;
    }
    if (!known)
        return RELAY_ERR_NOT_FOUND;
    relay_http_response_set(resp, 405,
                            relay_error_json(RELAY_ERR_INVALID, "method not allowed here"));
    return 0;
}
