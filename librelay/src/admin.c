/* admin: the /admin REST routes — login, API keys, rate-limit tiers, audit log — over
 * keys/auth/tiers. */
#include "relay/admin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin_internal.h"
#include "internal.h"
#include "relay/auth.h"
#include "relay/budgets.h"
#include "relay/pricing.h"
#include "relay/keys.h"
#include "relay/tiers.h"
#include "util.h"

#define DUMP_FLAGS         (JSON_COMPACT | JSON_REAL_PRECISION(15))
#define LIST_LIMIT_DEFAULT 100
#define LIST_LIMIT_MAX     1000

/* One request being answered. */
typedef struct ctx {
    relay_t *r;
    const relay_http_request_t *req;
    relay_http_response_t *resp;
    char actor[RELAY_AUTH_USERNAME_MAX + 1]; /* the token's subject */
    const char *arg;                         /* {id} or {name} from the path */
} ctx_t;

typedef void (*handler_fn)(ctx_t *c);

/* ---- responses ---- */

static void reply_json(ctx_t *c, int status, json_t *body)
{
    char *s = body ? json_dumps(body, DUMP_FLAGS) : NULL;
    json_decref(body);
    if (!s) {
        relay_http_response_error(c->resp, RELAY_ERR_NOMEM, NULL);
        return;
    }
    relay_http_response_set(c->resp, status, s);
}

static void reply_error(ctx_t *c, int code, const char *msg)
{
    relay_http_response_error(c->resp, code, msg);
}

static void reply_message(ctx_t *c, const char *msg)
{
    reply_json(c, 200, json_pack("{s:s}", "message", msg));
}

/* One page of a list, in the shape every paged admin route answers; takes items. */
static void reply_page(ctx_t *c, json_t *items, int64_t total, int64_t skip, int64_t limit)
{
    reply_json(c, 200,
               json_pack("{s:o, s:I, s:I, s:I}", "items", items, "total", (json_int_t)total, "skip",
                         (json_int_t)skip, "limit", (json_int_t)limit));
}

/* The key object as JSON (relay_keys_to_json, re-parsed so the live budgets can be added). */
static json_t *key_object(ctx_t *c, const relay_key_record_t *rec)
{
    char *s = relay_keys_to_json(rec, relay_now());
    json_t *o = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    char *b = o ? relay_budgets_to_json(c->r, rec) : NULL;
    json_t *bj = b ? json_loads(b, 0, NULL) : NULL;
    free(b);
    if (o)
        json_object_set_new(o, "budgets", bj ? bj : json_array());
    return o;
}

/* Answers a key object plus the one-time "api_key"; wipes every copy of the key we made. */
static void reply_key_with_secret(ctx_t *c, const relay_key_record_t *rec, char *key)
{
    json_t *o = key_object(c, rec);
    if (o)
        json_object_set_new(o, "api_key", json_string(key));
    explicit_bzero(key, strlen(key));
    relay_http_response_add_header(c->resp, "cache-control", "no-store");
    reply_json(c, 200, o);
}

/* ---- audit ---- */

void relay_admin_audit(relay_t *r, const char *actor, const char *client_ip, const char *action,
                       const char *target, const char *details)
{
    relay_audit_entry_t e = {0};
    relay_strlcpy(e.action, action, sizeof e.action);
    relay_strlcpy(e.target, target ? target : "", sizeof e.target);
    relay_strlcpy(e.actor, actor, sizeof e.actor);
    relay_strlcpy(e.client_ip, client_ip ? client_ip : "", sizeof e.client_ip);
    e.details = (char *)details;
    e.created_at = relay_now();
    int rc = relay_store_audit_insert(r->store, &e);
    if (rc)
        relay_log(r, RELAY_LOG_ERROR, "admin.audit_failed", NULL,
                  "cannot write audit row for %s: %s", e.action, relay_strerror(rc));
}

static void audit(ctx_t *c, const char *action, const char *target, json_t *details)
{
    char *d = details ? json_dumps(details, DUMP_FLAGS) : NULL;
    json_decref(details);
    relay_admin_audit(c->r, c->actor, c->req->client_ip, action, target, d);
    free(d);
}

/* ---- request parsing ---- */

/* The body as a JSON object; on failure the 400 is answered and NULL returned. */
static json_t *body_object(ctx_t *c)
{
    json_error_t je;
    if (!c->req->body || c->req->body_len == 0) {
        reply_error(c, RELAY_ERR_INVALID, "invalid JSON body: the body is empty");
        return NULL;
    }
    json_t *o = json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &je);
    char msg[RELAY_ERRMSG_MAX];
    if (!o) {
        snprintf(msg, sizeof msg, "invalid JSON body: %s (line %d, column %d)", je.text, je.line,
                 je.column);
        reply_error(c, RELAY_ERR_INVALID, msg);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        reply_error(c, RELAY_ERR_INVALID, "invalid JSON body: expected an object");
        return NULL;
    }
    return o;
}

static int field_error(ctx_t *c, const char *field, const char *what)
{
    char msg[RELAY_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s: %s", field, what);
    reply_error(c, RELAY_ERR_INVALID, msg);
    return -1;
}

/* A query parameter as an integer in [min, max] (def when absent); -1 after answering 400. */
static int query_int(ctx_t *c, const char *name, int64_t def, int64_t min, int64_t max,
                     const char *what, int64_t *out)
{
    char buf[32];
    *out = def;
    if (!relay_http_query_param(c->req, name, buf, sizeof buf))
        return 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (!buf[0] || *end || v < min || v > max || strlen(buf) > 18)
        return field_error(c, name, what);
    *out = v;
    return 0;
}

/* A query parameter as a boolean (absent: 0); -1 after answering 400. */
static int query_bool(ctx_t *c, const char *name, int *out)
{
    char buf[16];
    *out = 0;
    if (!relay_http_query_param(c->req, name, buf, sizeof buf))
        return 0;
    if (!strcasecmp(buf, "true") || !strcmp(buf, "1") || !strcasecmp(buf, "yes"))
        *out = 1;
    else if (strcasecmp(buf, "false") && strcmp(buf, "0") && strcasecmp(buf, "no"))
        return field_error(c, name, "expected true or false");
    return 0;
}

/* The JSON text of an allowed_* / metadata value (NULL for null); validated later by keys. */
static char *json_text(json_t *v)
{
    return json_is_null(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* expires_in_days (1..365) or expires_at (ISO 8601, future, or null) from o into *t; -1 after a
 * 400. */
static int parse_expiry(ctx_t *c, json_t *o, int *present, int64_t *t)
{
    json_t *days = json_object_get(o, "expires_in_days"), *at = json_object_get(o, "expires_at");
    *present = 0;
    *t = 0;
    if (days && !json_is_null(days)) {
        if (at && !json_is_null(at))
            return field_error(c, "expires_at",
                               "give either expires_in_days or expires_at, not both");
        if (!json_is_integer(days) || json_integer_value(days) < 1 ||
            json_integer_value(days) > 365)
            return field_error(c, "expires_in_days", "expected an integer from 1 to 365");
        *present = 1;
        *t = relay_now() + json_integer_value(days) * 86400;
        return 0;
    }
    if (!at)
        return 0;
    *present = 1;
    if (json_is_null(at))
        return 0;
    if (!json_is_string(at) || relay_parse_iso8601(json_string_value(at), t) != 0)
        return field_error(c, "expires_at", "expected an ISO 8601 date-time or null");
    if (*t <= relay_now())
        return field_error(c, "expires_at", "must be in the future");
    return 0;
}

/* Optional string field: absent leaves *out; null gives NULL when nullable, else 400. */
static int opt_string(ctx_t *c, json_t *o, const char *field, int nullable, int *present,
                      const char **out)
{
    json_t *v = json_object_get(o, field);
    *present = v != NULL;
    if (!v)
        return 0;
    if (json_is_null(v) && nullable) {
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v))
        return field_error(c, field, nullable ? "expected a string or null" : "expected a string");
    *out = json_string_value(v);
    return 0;
}

/* Optional non-negative integer; null counts as absent (the original relay's Optional[int]). */
static int opt_count(ctx_t *c, json_t *o, const char *field, int *present, int64_t *out)
{
    json_t *v = json_object_get(o, field);
    *present = v && !json_is_null(v);
    if (!*present)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return field_error(c, field, "expected a non-negative integer");
    *out = json_integer_value(v);
    return 0;
}

/* allowed_origins, or its alias allowed_domains. */
static json_t *origins_field(json_t *o)
{
    json_t *v = json_object_get(o, "allowed_origins");
    return v ? v : json_object_get(o, "allowed_domains");
}

/* ---- auth ---- */

int relay_admin_authenticate(relay_t *r, const relay_http_request_t *req, char *subject, size_t cap,
                             relay_http_response_t *resp)
{
    const char *h = relay_http_header(req, "authorization");
    relay_error_t err = {0};
    int rc;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        rc = relay_error_set(&err, RELAY_ERR_AUTH, "Not authenticated");
    } else {
        const char *t = h + 7;
        while (*t == ' ')
            t++;
        rc = relay_auth_verify_token(r, t, subject, cap, &err);
    }
    if (rc) {
        relay_http_response_error(resp, rc, err.message);
        if (rc == RELAY_ERR_AUTH)
            relay_http_response_add_header(resp, "www-authenticate", "Bearer");
    }
    return rc;
}

static void h_login(ctx_t *c)
{
    char user[RELAY_AUTH_USERNAME_MAX + 1], pass[RELAY_AUTH_PASSWORD_MAX + 1];
    if (relay_auth_parse_basic(relay_http_header(c->req, "authorization"), user, sizeof user, pass,
                               sizeof pass) != 0) {
        reply_error(c, RELAY_ERR_AUTH, "HTTP Basic credentials required");
        relay_http_response_add_header(c->resp, "www-authenticate", "Basic");
        return;
    }
    char *token = NULL;
    int expires_in = 0;
    relay_error_t err = {0};
    int rc = relay_auth_login(c->r, user, pass, c->req->client_ip, &token, &expires_in, &err);
    explicit_bzero(pass, sizeof pass);
    if (rc) {
        reply_error(c, rc, err.message);
        if (rc == RELAY_ERR_AUTH)
            relay_http_response_add_header(c->resp, "www-authenticate", "Basic");
        return;
    }
    json_t *o = json_pack("{s:s, s:s, s:i}", "access_token", token, "token_type", "bearer",
                          "expires_in", expires_in);
    explicit_bzero(token, strlen(token));
    free(token);
    relay_http_response_add_header(c->resp, "cache-control", "no-store");
    reply_json(c, 200, o);
}

/* ---- api keys ---- */

static const char *const BUDGET_FIELDS[] = {"cost_limit", "daily_cost_limit", "weekly_cost_limit",
                                            "monthly_cost_limit", "model_cost_limits"};

/* The budget fields the body holds, as one patch object text (NULL when none); 0 or -1 (sent). */
static int budget_patch(ctx_t *c, json_t *o, char **out)
{
    *out = NULL;
    json_t *p = json_object();
    for (size_t i = 0; i < sizeof BUDGET_FIELDS / sizeof BUDGET_FIELDS[0]; i++) {
        json_t *v = json_object_get(o, BUDGET_FIELDS[i]);
        if (v)
            json_object_set(p, BUDGET_FIELDS[i], v);
    }
    if (json_object_size(p))
        *out = json_dumps(p, DUMP_FLAGS);
    json_decref(p);
    relay_error_t err = {0};
    if (*out && relay_budgets_validate(*out, &err) != 0) {
        free(*out);
        *out = NULL;
        reply_error(c, RELAY_ERR_INVALID, err.message);
        return -1;
    }
    return 0;
}

/* A budget set at or below what its period already spent refuses at once: say so. */
static void add_budget_warnings(ctx_t *c, json_t *o)
{
    json_t *w = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(o, "budgets"), i, b)
    {
        double limit = json_number_value(json_object_get(b, "limit"));
        double spent = json_number_value(json_object_get(b, "spent"));
        if (spent < limit)
            continue;
        const char *reset = json_string_value(json_object_get(b, "resets_at"));
        char msg[512];
        snprintf(msg, sizeof msg,
                 "%s budget $%.2f is at or below the $%.4f already spent%s%s: requests are "
                 "refused %s%s",
                 json_string_value(json_object_get(b, "period")), limit, spent,
                 json_is_array(json_object_get(b, "models")) ? " by its models" : "",
                 reset ? " this period" : "", reset ? "until " : "for good", reset ? reset : "");
        json_array_append_new(w, json_string(msg));
    }
    if (json_array_size(w))
        json_object_set_new(o, "warnings", w);
    else
        json_decref(w);
    (void)c;
}

/* Fills the create params from the body (strings borrowed from o, JSON texts into texts[]). */
static int create_params(ctx_t *c, json_t *o, relay_key_params_t *p, char *texts[5])
{
    int present;
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name))
        return field_error(c, "name", "required, a string of 1 to 255 characters");
    p->name = json_string_value(name);
    if (opt_string(c, o, "description", 1, &present, &p->description) ||
        opt_count(c, o, "token_limit", &present, &p->token_limit) ||
        opt_string(c, o, "rate_limit_tier", 1, &present, &p->tier) ||
        opt_string(c, o, "upstream_group", 1, &present, &p->upstream_group) ||
        parse_expiry(c, o, &present, &p->expires_at))
        return -1;
    json_t *js[4] = {json_object_get(o, "allowed_ips"), origins_field(o),
                     json_object_get(o, "allowed_models"), json_object_get(o, "metadata")};
    for (int i = 0; i < 4; i++)
        texts[i] = js[i] ? json_text(js[i]) : NULL;
    p->allowed_ips = texts[0];
    p->allowed_origins = texts[1];
    p->allowed_models = texts[2];
    p->metadata = texts[3];
    if (budget_patch(c, o, &texts[4]))
        return -1;
    p->cost_limits = texts[4];
    return 0;
}

static void h_create(ctx_t *c)
{
    json_t *o = body_object(c);
    if (!o)
        return;
    relay_key_params_t p;
    relay_key_params_init(&p);
    char *texts[5] = {0};
    if (create_params(c, o, &p, texts) == 0) {
        char key[RELAY_KEY_MAX];
        relay_key_record_t rec;
        relay_error_t err = {0};
        int rc = relay_keys_create(c->r, &p, key, sizeof key, &rec, &err);
        if (rc) {
            reply_error(c, rc, err.message);
        } else {
            audit(c, "api_key.create", rec.id,
                  json_pack("{s:s, s:s, s:I}", "name", rec.name, "rate_limit_tier",
                            rec.rate_limit_tier, "token_limit", (json_int_t)rec.token_limit));
            reply_key_with_secret(c, &rec, key);
            relay_key_record_clear(&rec);
        }
    }
    for (int i = 0; i < 5; i++)
        free(texts[i]);
    json_decref(o);
}

static void h_list(ctx_t *c)
{
    int64_t skip, limit;
    int active_only;
    char status[16] = "";
    if (query_int(c, "skip", 0, 0, INT64_MAX / 2, "expected a non-negative integer", &skip) ||
        query_int(c, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX,
                  "expected an integer from 1 to 1000", &limit) ||
        query_bool(c, "active_only", &active_only))
        return;
    relay_key_filter f = active_only ? RELAY_KEYS_ACTIVE : RELAY_KEYS_ALL;
    if (relay_http_query_param(c->req, "status", status, sizeof status) && status[0]) {
        static const char *names[] = {"all", "active", "disabled", "expired"};
        size_t i = 0;
        while (i < 4 && strcmp(status, names[i]))
            i++;
        if (i == 4) {
            field_error(c, "status", "expected all, active, disabled or expired");
            return;
        }
        f = (relay_key_filter)i;
    }
    relay_key_record_t *recs = NULL;
    size_t n = 0;
    int64_t total = 0;
    relay_error_t err = {0};
    int rc = relay_keys_list(c->r, f, skip, limit, &recs, &n, &total, &err);
    if (rc) {
        reply_error(c, rc, err.message);
        return;
    }
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(items, key_object(c, &recs[i]));
    relay_key_records_free(recs, n);
    reply_page(c, items, total, skip, limit);
}

/* The key the path names into *rec (the caller clears it); non-zero once the error is sent. */
static int get_path_key(ctx_t *c, relay_key_record_t *rec)
{
    relay_error_t err = {0};
    int rc = relay_keys_get(c->r, c->arg, rec, &err);
    if (rc)
        reply_error(c, rc, err.message);
    return rc;
}

static void h_get(ctx_t *c)
{
    relay_key_record_t rec;
    if (get_path_key(c, &rec))
        return;
    reply_json(c, 200, key_object(c, &rec));
    relay_key_record_clear(&rec);
}

static void h_stats(ctx_t *c)
{
    relay_key_record_t rec;
    if (get_path_key(c, &rec))
        return;
    json_t *o = key_object(c, &rec);
    if (o)
        json_object_set_new(o, "is_expired",
                            json_boolean(rec.expires_at && rec.expires_at <= relay_now()));
    reply_json(c, 200, o);
    relay_key_record_clear(&rec);
}

/* One optional JSON-text field of a PATCH body. */
static void patch_json(json_t *v, unsigned bit, const char **slot, char **text,
                       relay_key_update_t *u)
{
    if (!v)
        return;
    u->set |= bit;
    *text = json_text(v);
    *slot = *text;
}

/* Builds the partial update from the body; names of the changed fields go to `fields`. */
static int patch_params(ctx_t *c, json_t *o, relay_key_update_t *u, char *texts[5])
{
    int present;
    int64_t exp;
    if (opt_string(c, o, "name", 0, &present, &u->name))
        return -1;
    u->set |= present ? RELAY_KEY_SET_NAME : 0;
    if (opt_string(c, o, "description", 1, &present, &u->description))
        return -1;
    u->set |= present ? RELAY_KEY_SET_DESCRIPTION : 0;
    json_t *tl = json_object_get(o, "token_limit");
    if (tl && (!json_is_integer(tl) || json_integer_value(tl) < 0))
        return field_error(c, "token_limit", "expected a non-negative integer");
    if (tl) {
        u->set |= RELAY_KEY_SET_TOKEN_LIMIT;
        u->token_limit = json_integer_value(tl);
    }
    if (opt_string(c, o, "rate_limit_tier", 0, &present, &u->tier))
        return -1;
    u->set |= present ? RELAY_KEY_SET_TIER : 0;
    if (opt_string(c, o, "upstream_group", 1, &present, &u->upstream_group))
        return -1;
    u->set |= present ? RELAY_KEY_SET_UPSTREAM_GROUP : 0;
    if (parse_expiry(c, o, &present, &exp))
        return -1;
    if (present) {
        u->set |= RELAY_KEY_SET_EXPIRES_AT;
        u->expires_at = exp;
    }
    json_t *active = json_object_get(o, "is_active");
    if (active && !json_is_boolean(active))
        return field_error(c, "is_active", "expected true or false");
    if (active) {
        u->set |= RELAY_KEY_SET_IS_ACTIVE;
        u->is_active = json_is_true(active);
    }
    patch_json(json_object_get(o, "allowed_ips"), RELAY_KEY_SET_ALLOWED_IPS, &u->allowed_ips,
               &texts[0], u);
    patch_json(origins_field(o), RELAY_KEY_SET_ALLOWED_ORIGINS, &u->allowed_origins, &texts[1], u);
    patch_json(json_object_get(o, "allowed_models"), RELAY_KEY_SET_ALLOWED_MODELS,
               &u->allowed_models, &texts[2], u);
    patch_json(json_object_get(o, "metadata"), RELAY_KEY_SET_METADATA, &u->metadata, &texts[3], u);
    if (budget_patch(c, o, &texts[4]))
        return -1;
    if (texts[4]) {
        u->set |= RELAY_KEY_SET_COST_LIMITS;
        u->cost_limits = texts[4];
    }
    return 0;
}

/* The names of the fields an update touched, for the audit row (values may be personal data). */
static json_t *changed_fields(unsigned set)
{
    static const char *names[] = {"name",       "description", "token_limit",     "rate_limit_tier",
                                  "expires_at", "allowed_ips", "allowed_origins", "allowed_models",
                                  "metadata",   "is_active",   "cost_limits",     "upstream_group"};
    json_t *a = json_array();
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (set & (1u << i))
            json_array_append_new(a, json_string(names[i]));
    return json_pack("{s:o}", "fields", a);
}

static void h_patch(ctx_t *c)
{
    json_t *o = body_object(c);
    if (!o)
        return;
    relay_key_update_t u = {0};
    char *texts[5] = {0};
    if (patch_params(c, o, &u, texts) == 0) {
        relay_key_record_t rec;
        relay_error_t err = {0};
        int rc = relay_keys_update(c->r, c->arg, &u, &rec, &err);
        if (rc) {
            reply_error(c, rc, err.message);
        } else {
            audit(c, "api_key.update", rec.id, changed_fields(u.set));
            json_t *ko = key_object(c, &rec);
            if (ko && (u.set & RELAY_KEY_SET_COST_LIMITS))
                add_budget_warnings(c, ko);
            reply_json(c, 200, ko);
            relay_key_record_clear(&rec);
        }
    }
    for (int i = 0; i < 5; i++)
        free(texts[i]);
    json_decref(o);
}

static void set_active(ctx_t *c, int active)
{
    relay_error_t err = {0};
    int rc =
        active ? relay_keys_enable(c->r, c->arg, &err) : relay_keys_disable(c->r, c->arg, &err);
    if (rc) {
        reply_error(c, rc, err.message);
        return;
    }
    audit(c, active ? "api_key.enable" : "api_key.disable", c->arg, NULL);
    reply_message(c, active ? "API key enabled" : "API key disabled");
}

static void h_disable(ctx_t *c)
{
    set_active(c, 0);
}

static void h_enable(ctx_t *c)
{
    set_active(c, 1);
}

static void h_rotate(ctx_t *c)
{
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    relay_error_t err = {0};
    int rc = relay_keys_rotate(c->r, c->arg, key, sizeof key, &rec, &err);
    if (rc) {
        reply_error(c, rc, err.message);
        return;
    }
    audit(c, "api_key.rotate", rec.id, json_pack("{s:s}", "key_prefix", rec.key_prefix));
    reply_key_with_secret(c, &rec, key);
    relay_key_record_clear(&rec);
}

static void h_delete(ctx_t *c)
{
    int hard;
    if (query_bool(c, "hard_delete", &hard))
        return;
    relay_error_t err = {0};
    int rc = relay_keys_delete(c->r, c->arg, hard, &err);
    if (rc) {
        reply_error(c, rc, err.message);
        return;
    }
    audit(c, "api_key.delete", c->arg, json_pack("{s:b}", "hard_delete", hard));
    reply_message(c, hard ? "API key permanently deleted" : "API key deleted");
}

/* ---- tiers ---- */

static json_t *tier_object(const relay_tier_def_t *t)
{
    json_t *o =
        json_pack("{s:s, s:I, s:I, s:I, s:I}", "name", t->name, "requests", (json_int_t)t->requests,
                  "period", (json_int_t)t->period_s, "tokens_per_minute",
                  (json_int_t)t->tokens_per_minute, "concurrent", (json_int_t)t->concurrent);
    json_t *c = t->cost_limits[0] ? json_loads(t->cost_limits, 0, NULL) : NULL;
    for (size_t i = 0; o && i < sizeof BUDGET_FIELDS / sizeof BUDGET_FIELDS[0]; i++) {
        json_t *v = json_object_get(c, BUDGET_FIELDS[i]);
        json_object_set_new(o, BUDGET_FIELDS[i], v ? json_incref(v) : json_null());
    }
    json_decref(c);
    return o;
}

/* A tier PUT with budget fields sets the tier's defaults to them; without, keeps the old. */
static int tier_budgets(ctx_t *c, json_t *o, const relay_tier_def_t *old, int existed,
                        relay_tier_def_t *t)
{
    char *patch = NULL, *merged = NULL;
    if (budget_patch(c, o, &patch))
        return -1;
    if (!patch) {
        if (existed)
            relay_strlcpy(t->cost_limits, old->cost_limits, sizeof t->cost_limits);
        return 0;
    }
    relay_error_t err = {0};
    int rc = relay_budgets_merge(NULL, patch, &merged, &err);
    free(patch);
    if (!rc && merged && strlen(merged) >= sizeof t->cost_limits)
        rc = relay_error_set(&err, RELAY_ERR_INVALID, "cost_limits: at most %zu characters",
                             sizeof t->cost_limits - 1);
    if (!rc && merged)
        relay_strlcpy(t->cost_limits, merged, sizeof t->cost_limits);
    relay_free_string(merged);
    if (rc)
        reply_error(c, rc, err.message);
    return rc ? -1 : 0;
}

static void h_tiers(ctx_t *c)
{
    relay_tier_def_t *t = NULL;
    size_t n = 0;
    int rc = relay_tiers_list(c->r, &t, &n);
    if (rc) {
        reply_error(c, rc, NULL);
        return;
    }
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, tier_object(&t[i]));
    free(t);
    reply_json(c, 200, a);
}

static void h_tier_get(ctx_t *c)
{
    relay_tier_def_t t;
    if (relay_tiers_get(c->r, c->arg, &t) != 0) {
        reply_error(c, RELAY_ERR_NOT_FOUND, "rate-limit tier not found");
        return;
    }
    reply_json(c, 200, tier_object(&t));
}

/* An integer tier field: required ones answer 400 when absent; *out keeps its default otherwise. */
static int tier_int(ctx_t *c, json_t *o, const char *field, int required, const char *what,
                    int64_t *out)
{
    json_t *v = json_object_get(o, field);
    if (!v && !required)
        return 0;
    if (!json_is_integer(v))
        return field_error(c, field, what);
    *out = json_integer_value(v);
    return 0;
}

static void h_tier_put(ctx_t *c)
{
    json_t *o = body_object(c);
    if (!o)
        return;
    relay_tier_def_t t = {.period_s = 60};
    if (strlen(c->arg) >= sizeof t.name) {
        field_error(c, "name", "at most 63 characters");
        json_decref(o);
        return;
    }
    relay_strlcpy(t.name, c->arg, sizeof t.name);
    relay_tier_def_t old;
    int existed = relay_tiers_get(c->r, t.name, &old) == 0;
    if (tier_int(c, o, "requests", 1, "expected a positive integer or -1 (unlimited)",
                 &t.requests) == 0 &&
        tier_int(c, o, "period", 0, "expected a positive number of seconds", &t.period_s) == 0 &&
        tier_int(c, o, "tokens_per_minute", 0, "expected a non-negative integer",
                 &t.tokens_per_minute) == 0 &&
        tier_int(c, o, "concurrent", 0, "expected a non-negative integer", &t.concurrent) == 0 &&
        tier_budgets(c, o, &old, existed, &t) == 0) {
        relay_error_t err = {0};
        int rc = relay_tiers_set(c->r, &t, &err);
        if (rc) {
            reply_error(c, rc, err.message);
        } else {
            audit(c, existed ? "tier.update" : "tier.create", t.name,
                  json_pack("{s:I, s:I}", "requests", (json_int_t)t.requests, "period",
                            (json_int_t)t.period_s));
            reply_json(c, 200, tier_object(&t));
        }
    }
    json_decref(o);
}

static void h_tier_delete(ctx_t *c)
{
    relay_error_t err = {0};
    int rc = relay_tiers_delete(c->r, c->arg, &err);
    if (rc) {
        reply_error(c, rc, err.message);
        return;
    }
    audit(c, "tier.delete", c->arg, NULL);
    reply_message(c, "rate-limit tier deleted");
}

/* ---- audit log ---- */

static json_t *audit_object(const relay_audit_entry_t *e)
{
    char ts[32];
    relay_iso8601(e->created_at, ts, sizeof ts);
    json_t *details = e->details ? json_loads(e->details, JSON_DECODE_ANY, NULL) : NULL;
    return json_pack("{s:I, s:s, s:s, s:s, s:s, s:o, s:s}", "id", (json_int_t)e->id, "action",
                     e->action, "target", e->target, "actor", e->actor, "client_ip", e->client_ip,
                     "details", details ? details : json_null(), "created_at", ts);
}

static void h_audit(ctx_t *c)
{
    int64_t skip, limit;
    if (query_int(c, "skip", 0, 0, INT64_MAX / 2, "expected a non-negative integer", &skip) ||
        query_int(c, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX,
                  "expected an integer from 1 to 1000", &limit))
        return;
    relay_audit_entry_t *e = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = relay_store_audit_list(c->r->store, skip, limit, &e, &n, &total);
    if (rc) {
        reply_error(c, rc, "cannot read the audit log");
        return;
    }
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(items, audit_object(&e[i]));
    relay_audit_entries_free(e, n);
    reply_page(c, items, total, skip, limit);
}

/* ---- pricing ---- */

static void h_pricing_get(ctx_t *c)
{
    char *s = relay_pricing_to_json(c->r);
    json_t *o = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    reply_json(c, 200, o);
}

static void h_pricing_put(ctx_t *c)
{
    json_t *o = body_object(c);
    if (!o)
        return;
    char *text = json_dumps(o, DUMP_FLAGS);
    relay_error_t err = {0};
    int rc = text ? relay_pricing_set(c->r, text, &err) : RELAY_ERR_NOMEM;
    free(text);
    if (rc) {
        reply_error(c, rc, err.message);
    } else {
        json_t *d = json_object();
        json_object_set(d, "prices", json_object_get(o, "prices"));
        json_object_set(d, "default", json_object_get(o, "default"));
        audit(c, "pricing.update", "pricing", d);
        h_pricing_get(c);
    }
    json_decref(o);
}

/* ---- routing ---- */

/* Every admin route: method, pattern (relay_http_path_match) and handler, in one table that
 * dispatch, the 405 Allow header and relay_admin_routes all read. */
static const struct {
    const char *method, *pattern;
    handler_fn fn;
} ROUTES[] = {
    {"POST", "/admin/login", h_login},
    {"GET", "/admin/api-keys", h_list},
    {"POST", "/admin/api-keys", h_create},
    {"GET", "/admin/api-keys/{id}", h_get},
    {"PATCH", "/admin/api-keys/{id}", h_patch},
    {"PUT", "/admin/api-keys/{id}", h_patch},
    {"DELETE", "/admin/api-keys/{id}", h_delete},
    {"GET", "/admin/api-keys/{id}/stats", h_stats},
    {"POST", "/admin/api-keys/{id}/disable", h_disable},
    {"POST", "/admin/api-keys/{id}/enable", h_enable},
    {"POST", "/admin/api-keys/{id}/rotate", h_rotate},
    {"GET", "/admin/rate-limit-tiers", h_tiers},
    {"GET", "/admin/rate-limit-tiers/{name}", h_tier_get},
    {"PUT", "/admin/rate-limit-tiers/{name}", h_tier_put},
    {"DELETE", "/admin/rate-limit-tiers/{name}", h_tier_delete},
    {"GET", "/admin/audit-log", h_audit},
    {"GET", "/admin/pricing", h_pricing_get},
    {"PUT", "/admin/pricing", h_pricing_put},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])

void relay_admin_routes(relay_http_route_fn fn, void *ud)
{
    for (size_t i = 0; i < N_ROUTES; i++)
        fn(ud, ROUTES[i].method, ROUTES[i].pattern);
}

/* 405 with the methods the matched pattern has. */
static void method_not_allowed(ctx_t *c, const char *pattern)
{
    char allow[64] = "";
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (strcmp(ROUTES[i].pattern, pattern) != 0)
            continue;
        if (allow[0])
            relay_strlcpy(allow + strlen(allow), ", ", sizeof allow - strlen(allow));
        relay_strlcpy(allow + strlen(allow), ROUTES[i].method, sizeof allow - strlen(allow));
    }
    char msg[128];
    snprintf(msg, sizeof msg, "method %.16s is not allowed here (allowed: %s)", c->req->method,
             allow);
    relay_http_response_set(c->resp, 405, relay_error_json(RELAY_ERR_INVALID, msg));
    relay_http_response_add_header(c->resp, "allow", allow);
}

int relay_admin_handle(relay_t *r, const relay_http_request_t *req, relay_http_response_t *resp)
{
    char arg[128];
    const char *pattern = NULL;
    handler_fn fn = NULL;
    for (size_t i = 0; i < N_ROUTES && !fn; i++) {
        if (!relay_http_path_match(ROUTES[i].pattern, req->path, arg, sizeof arg))
            continue;
        pattern = ROUTES[i].pattern;
        if (req->method && strcmp(ROUTES[i].method, req->method) == 0)
            fn = ROUTES[i].fn;
    }
    if (!pattern)
        return RELAY_ERR_NOT_FOUND; /* e.g. /admin/api-keys/{id}/usage: another module's route */
    ctx_t c = {.r = r, .req = req, .resp = resp, .arg = arg};
    if (!fn) {
        method_not_allowed(&c, pattern);
        return 0;
    }
    if (req->body_len > RELAY_ADMIN_BODY_MAX) {
        reply_error(&c, RELAY_ERR_TOO_LARGE, "request body exceeds the admin API's 1 MiB limit");
        return 0;
    }
    if (fn != h_login && relay_admin_authenticate(r, req, c.actor, sizeof c.actor, resp) != 0)
        return 0;
    fn(&c);
    return 0;
}
