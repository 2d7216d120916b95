/* test_admin: every /admin route through relay_admin_handle — statuses, JSON fields, audit rows,
 * lockout — on SQLite and PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "relay/admin.h"
#include "relay/auth.h"
#include "relay/keys.h"
#include "testdb.h"
#include "testrelay.h"
#include "util.h"

#define PASSWORD  "admin-test-password-1"
#define CLIENT_IP "10.1.2.3"

static relay_t *new_relay_with(const char *password, const char *secret)
{
    relay_options_t o;
    testdb_options(&o);
    o.secret_key = secret;
    o.admin_password = password;
    o.login_max_failures = 3;
    o.login_window_s = 60;
    o.login_cooldown_s = 2;
    return testrelay_new(&o);
}

static relay_t *new_relay(void)
{
    return new_relay_with(PASSWORD, "admin-test-secret-key-0123456789abcdef");
}

/* ---- calling the handler ---- */

typedef struct reply {
    int rc;
    int status;
    json_t *json;
    char body[8192];
    relay_http_response_t resp;
} reply_t;

static char g_token[2048];

/* One request; auth: NULL (none), "token" (g_token as Bearer) or a full Authorization value. */
static reply_t *call_ip(relay_t *r, const char *method, const char *path, const char *query,
                        const char *body, const char *auth, const char *ip)
{
    static reply_t rep;
    relay_http_response_clear(&rep.resp);
    json_decref(rep.json);
    memset(&rep, 0, sizeof rep);
    char authz[2100];
    relay_http_header_t hdr[2] = {{"Content-Type", "application/json"}, {"Authorization", authz}};
    size_t nh = 1;
    if (auth) {
        if (strcmp(auth, "token") == 0)
            snprintf(authz, sizeof authz, "Bearer %s", g_token);
        else
            relay_strlcpy(authz, auth, sizeof authz);
        nh = 2;
    }
    relay_http_request_t req = {.method = method,
                                .path = path,
                                .query = query,
                                .body = body,
                                .body_len = body ? strlen(body) : 0,
                                .client_ip = ip,
                                .headers = hdr,
                                .n_headers = nh};
    rep.rc = relay_admin_handle(r, &req, &rep.resp);
    rep.status = rep.resp.status;
    if (rep.resp.body) {
        relay_strlcpy(rep.body, rep.resp.body, sizeof rep.body);
        rep.json = json_loads(rep.resp.body, JSON_DECODE_ANY, NULL);
    }
    return &rep;
}

static reply_t *call(relay_t *r, const char *method, const char *path, const char *query,
                     const char *body, const char *auth)
{
    return call_ip(r, method, path, query, body, auth, CLIENT_IP);
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t jint(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* The error body: Anthropic's shape plus "detail" with the same words. */
static void assert_error(reply_t *rep, int status, const char *type, const char *detail_prefix)
{
    if (rep->status != status)
        fail_msg("status %d, expected %d: %s", rep->status, status, rep->body);
    assert_non_null(rep->json);
    assert_string_equal(jstr(rep->json, "type"), "error");
    json_t *e = json_object_get(rep->json, "error");
    assert_string_equal(jstr(e, "type"), type);
    assert_string_equal(jstr(e, "message"), jstr(rep->json, "detail"));
    if (detail_prefix &&
        strncmp(jstr(rep->json, "detail"), detail_prefix, strlen(detail_prefix)) != 0)
        fail_msg("detail '%s' does not start with '%s'", jstr(rep->json, "detail"), detail_prefix);
}

static void login(relay_t *r)
{
    char basic[256], creds[128], b64[200];
    snprintf(creds, sizeof creds, "admin:%s", PASSWORD);
    relay_base64url(creds, strlen(creds), b64);
    snprintf(basic, sizeof basic, "Basic %s", b64);
    reply_t *rep = call(r, "POST", "/admin/login", NULL, NULL, basic);
    if (rep->status != 200)
        fail_msg("login: %d %s", rep->status, rep->body);
    relay_strlcpy(g_token, jstr(rep->json, "access_token"), sizeof g_token);
}

/* Creates a key through the API; copies its id and full key. */
static void api_create(relay_t *r, const char *body, char id[37], char key[RELAY_KEY_MAX])
{
    reply_t *rep = call(r, "POST", "/admin/api-keys", NULL, body, "token");
    if (rep->status != 200)
        fail_msg("create: %d %s", rep->status, rep->body);
    relay_strlcpy(id, jstr(rep->json, "id"), 37);
    if (key)
        relay_strlcpy(key, jstr(rep->json, "api_key"), RELAY_KEY_MAX);
}

static int verify(relay_t *r, const char *key)
{
    relay_error_t err;
    return relay_keys_verify(r, key, NULL, &err);
}

/* ---- tests ---- */

static void test_login(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    /* curl -u admin:PASSWORD sends standard base64: YWRtaW46YWRtaW4tdGVzdC1wYXNzd29yZC0x */
    reply_t *rep =
        call(r, "POST", "/admin/login", NULL, NULL, "Basic YWRtaW46YWRtaW4tdGVzdC1wYXNzd29yZC0x");
    assert_int_equal(rep->rc, 0);
    assert_int_equal(rep->status, 200);
    assert_int_equal(json_object_size(rep->json), 3);
    assert_string_equal(jstr(rep->json, "token_type"), "bearer");
    assert_int_equal(jint(rep->json, "expires_in"), 1800);
    relay_strlcpy(g_token, jstr(rep->json, "access_token"), sizeof g_token);
    char sub[64];
    relay_error_t err;
    assert_int_equal(relay_auth_verify_token(r, g_token, sub, sizeof sub, &err), 0);
    assert_string_equal(sub, "admin");
    /* Wrong password, wrong user, no credentials, a Bearer in place of Basic. */
    assert_error(call(r, "POST", "/admin/login", NULL, NULL, "Basic YWRtaW46d3Jvbmc="), 401,
                 "authentication_error", "invalid username or password");
    assert_error(call_ip(r, "POST", "/admin/login", NULL, NULL,
                         "Basic cm9vdDphZG1pbi10ZXN0LXBhc3N3b3JkLTE=", "10.9.9.9"),
                 401, "authentication_error", "invalid username or password");
    assert_error(call(r, "POST", "/admin/login", NULL, NULL, NULL), 401, "authentication_error",
                 NULL);
    assert_error(call(r, "POST", "/admin/login", NULL, NULL, "token"), 401, "authentication_error",
                 NULL);
    assert_error(call(r, "GET", "/admin/login", NULL, NULL, NULL), 405, "invalid_request_error",
                 NULL);
    relay_free(r);
}

static void test_login_lockout(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    const char *bad = "Basic YWRtaW46d3Jvbmc=";
    const char *good = "Basic YWRtaW46YWRtaW4tdGVzdC1wYXNzd29yZC0x";
    for (int i = 0; i < 3; i++)
        assert_error(call_ip(r, "POST", "/admin/login", NULL, NULL, bad, "192.0.2.7"), 401,
                     "authentication_error", NULL);
    /* Past 3 failures even the right password gets 429 from that address ... */
    assert_error(call_ip(r, "POST", "/admin/login", NULL, NULL, good, "192.0.2.7"), 429,
                 "rate_limit_error", "too many failed login attempts");
    /* ... while another address is not affected. */
    assert_int_equal(call_ip(r, "POST", "/admin/login", NULL, NULL, good, "192.0.2.8")->status,
                     200);
    sleep(3); /* login_cooldown_s = 2 */
    assert_int_equal(call_ip(r, "POST", "/admin/login", NULL, NULL, good, "192.0.2.7")->status,
                     200);
    /* A success clears the count: two more failures do not lock. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(call_ip(r, "POST", "/admin/login", NULL, NULL, bad, "192.0.2.7")->status,
                         401);
    assert_int_equal(call_ip(r, "POST", "/admin/login", NULL, NULL, good, "192.0.2.7")->status,
                     200);
    relay_free(r);
}

static void test_login_needs_secret_key(void **state)
{
    (void)state;
    relay_t *r = new_relay_with(PASSWORD, NULL);
    reply_t *rep =
        call(r, "POST", "/admin/login", NULL, NULL, "Basic YWRtaW46YWRtaW4tdGVzdC1wYXNzd29yZC0x");
    assert_error(rep, 503, "api_error", NULL);
    assert_non_null(strstr(jstr(rep->json, "detail"), "SECRET_KEY"));
    relay_free(r);
}

static void test_generated_password(void **state)
{
    (void)state;
    relay_t *r = new_relay_with(NULL, "admin-test-secret-key-0123456789abcdef");
    char pw[64];
    assert_int_equal(relay_auth_take_generated_password(r, pw, sizeof pw), 1);
    assert_true(strlen(pw) >= 20);
    char again[64];
    assert_int_equal(relay_auth_take_generated_password(r, again, sizeof again), 0);
    char *tok = NULL;
    int exp;
    relay_error_t err;
    assert_int_equal(relay_auth_login(r, "admin", pw, "127.0.0.1", &tok, &exp, &err), 0);
    free(tok);
    relay_free(r);
    /* The next start keeps the stored hash and generates nothing. */
    r = new_relay_with(NULL, "admin-test-secret-key-0123456789abcdef");
    assert_int_equal(relay_auth_take_generated_password(r, again, sizeof again), 0);
    assert_int_equal(relay_auth_login(r, "admin", pw, "127.0.0.1", &tok, &exp, &err), 0);
    free(tok);
    relay_free(r);
    /* A configured password replaces it. */
    r = new_relay();
    assert_int_equal(relay_auth_login(r, "admin", pw, "127.0.0.2", &tok, &exp, &err),
                     RELAY_ERR_AUTH);
    assert_int_equal(relay_auth_login(r, "admin", PASSWORD, "127.0.0.2", &tok, &exp, &err), 0);
    free(tok);
    relay_free(r);
}

static void test_bearer_required(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    const char *paths[][2] = {
        {"GET", "/admin/api-keys"},
        {"POST", "/admin/api-keys"},
        {"GET", "/admin/api-keys/00000000-0000-4000-8000-000000000000"},
        {"POST", "/admin/api-keys/00000000-0000-4000-8000-000000000000/rotate"},
        {"GET", "/admin/rate-limit-tiers"},
        {"DELETE", "/admin/rate-limit-tiers/basic"},
        {"GET", "/admin/audit-log"}};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        reply_t *rep = call(r, paths[i][0], paths[i][1], NULL, "{}", NULL);
        assert_int_equal(rep->rc, 0);
        assert_error(rep, 401, "authentication_error", "Not authenticated");
        assert_error(call(r, paths[i][0], paths[i][1], NULL, "{}", "Bearer not.a.token"), 401,
                     "authentication_error", "invalid token");
    }
    /* A token signed with another secret is refused too. */
    relay_t *other = new_relay_with(PASSWORD, "a-different-secret-key-0123456789");
    char *tok = NULL;
    relay_error_t err;
    assert_int_equal(relay_auth_issue_token(other, "admin", 0, &tok, &err), 0);
    char authz[2100];
    snprintf(authz, sizeof authz, "Bearer %s", tok);
    assert_error(call(r, "GET", "/admin/api-keys", NULL, NULL, authz), 401, "authentication_error",
                 NULL);
    free(tok);
    relay_free(other);
    /* The basic tier still exists: nothing above got through. */
    login(r);
    assert_int_equal(call(r, "GET", "/admin/rate-limit-tiers/basic", NULL, NULL, "token")->status,
                     200);
    relay_free(r);
}

static void test_create_key(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    reply_t *rep =
        call(r, "POST", "/admin/api-keys", NULL,
             "{\"name\":\"ci bot\",\"description\":\"for CI\",\"expires_in_days\":30,"
             "\"allowed_ips\":[\"10.0.0.0/8\"],\"allowed_domains\":[\"*.example.com\"],"
             "\"allowed_models\":[\"claude-sonnet-4-5\"],\"metadata\":{\"team\":\"infra\"}}",
             "token");
    assert_int_equal(rep->status, 200);
    const char *fields[] = {"id",
                            "name",
                            "description",
                            "key_prefix",
                            "token_limit",
                            "token_used",
                            "token_remaining",
                            "usage_percentage",
                            "rate_limit_tier",
                            "request_count",
                            "error_count",
                            "is_active",
                            "created_at",
                            "updated_at",
                            "last_used_at",
                            "expires_at",
                            "allowed_ips",
                            "allowed_origins",
                            "allowed_models",
                            "metadata",
                            "cost_limit",
                            "daily_cost_limit",
                            "weekly_cost_limit",
                            "monthly_cost_limit",
                            "model_cost_limits",
                            "upstream_group",
                            "budgets",
                            "api_key"};
    assert_int_equal(json_object_size(rep->json), sizeof fields / sizeof fields[0]);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!json_object_get(rep->json, fields[i]))
            fail_msg("missing %s", fields[i]);
    assert_string_equal(jstr(rep->json, "name"), "ci bot");
    assert_string_equal(jstr(rep->json, "description"), "for CI");
    assert_int_equal(jint(rep->json, "token_limit"), 1000000);
    assert_int_equal(jint(rep->json, "token_remaining"), 1000000);
    assert_int_equal(jint(rep->json, "token_used"), 0);
    assert_string_equal(jstr(rep->json, "rate_limit_tier"), "basic");
    assert_true(json_is_true(json_object_get(rep->json, "is_active")));
    assert_true(json_is_null(json_object_get(rep->json, "last_used_at")));
    assert_string_equal(jstr(json_object_get(rep->json, "metadata"), "team"), "infra");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(rep->json, "allowed_origins"), 0)),
        "*.example.com");
    int64_t exp;
    assert_int_equal(relay_parse_iso8601(jstr(rep->json, "expires_at"), &exp), 0);
    assert_true(llabs(exp - (relay_now() + 30 * 86400)) <= 5);
    char key[RELAY_KEY_MAX], id[37];
    relay_strlcpy(key, jstr(rep->json, "api_key"), sizeof key);
    relay_strlcpy(id, jstr(rep->json, "id"), sizeof id);
    assert_int_equal(
        strncmp(key, jstr(rep->json, "key_prefix"), strlen(jstr(rep->json, "key_prefix"))), 0);
    assert_int_equal(verify(r, key), 0);
    /* The key is never shown again. */
    rep = call(r, "GET", "/admin/api-keys/", NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_null(strstr(rep->body, key + 22));
    char path[128];
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    rep = call(r, "GET", path, NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_null(json_object_get(rep->json, "api_key"));
    assert_null(strstr(rep->body, key + 22));
    /* Other create forms: explicit limit, tier and expires_at. */
    rep = call(r, "POST", "/admin/api-keys", NULL,
               "{\"name\":\"n2\",\"token_limit\":0,\"rate_limit_tier\":\"premium\",\"expires_at\":"
               "\"2099-01-02T03:04:05Z\"}",
               "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(jint(rep->json, "token_limit"), 0);
    assert_true(json_is_null(json_object_get(rep->json, "token_remaining")));
    assert_string_equal(jstr(rep->json, "rate_limit_tier"), "premium");
    assert_string_equal(jstr(rep->json, "expires_at"), "2099-01-02T03:04:05Z");
    relay_free(r);
}

static void test_create_errors(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    struct {
        const char *body;
        int status;
        const char *detail;
    } cases[] = {
        {"{}", 400, "name:"},
        {"{\"name\":\"\"}", 400, "name:"},
        {"{\"name\":5}", 400, "name:"},
        {"{\"name\":\"x\",\"token_limit\":-1}", 400,
         "token_limit: expected a non-negative integer"},
        {"{\"name\":\"x\",\"token_limit\":\"10\"}", 400,
         "token_limit: expected a non-negative integer"},
        {"{\"name\":\"x\",\"rate_limit_tier\":\"gold\"}", 400, "rate_limit_tier:"},
        {"{\"name\":\"x\",\"expires_in_days\":0}", 400, "expires_in_days:"},
        {"{\"name\":\"x\",\"expires_in_days\":366}", 400, "expires_in_days:"},
        {"{\"name\":\"x\",\"expires_at\":\"tomorrow\"}", 400, "expires_at:"},
        {"{\"name\":\"x\",\"expires_at\":\"2001-01-01T00:00:00Z\"}", 400,
         "expires_at: must be in the future"},
        {"{\"name\":\"x\",\"expires_in_days\":3,\"expires_at\":\"2099-01-01\"}", 400,
         "expires_at:"},
        {"{\"name\":\"x\",\"allowed_ips\":[\"1.2.3.4\",\"nope\"]}", 400, "allowed_ips[1]:"},
        {"{\"name\":\"x\",\"allowed_ips\":\"1.2.3.4\"}", 400, "allowed_ips:"},
        {"{\"name\":\"x\",\"metadata\":[1]}", 400, "metadata:"},
        {"{\"name\":\"x\"", 400, "invalid JSON body:"},
        {"[1,2]", 400, "invalid JSON body:"},
        {"", 400, "invalid JSON body:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reply_t *rep = call(r, "POST", "/admin/api-keys", NULL, cases[i].body, "token");
        assert_error(rep, cases[i].status, "invalid_request_error", cases[i].detail);
    }
    /* Over 1 MiB: 413 before anything is parsed. */
    size_t n = RELAY_ADMIN_BODY_MAX + 10;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "{\"name\":\"x\"}", 12);
    big[n] = '\0';
    assert_error(call(r, "POST", "/admin/api-keys", NULL, big, "token"), 413, "request_too_large",
                 NULL);
    free(big);
    /* Nothing was created by any of it. */
    reply_t *rep = call(r, "GET", "/admin/api-keys", NULL, NULL, "token");
    assert_int_equal(jint(rep->json, "total"), 0);
    relay_free(r);
}

static void test_list_keys(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    char ids[3][37];
    api_create(r, "{\"name\":\"k0\"}", ids[0], NULL);
    api_create(r, "{\"name\":\"k1\"}", ids[1], NULL);
    api_create(r, "{\"name\":\"k2\"}", ids[2], NULL);
    char path[128];
    snprintf(path, sizeof path, "/admin/api-keys/%s/disable", ids[1]);
    assert_int_equal(call(r, "POST", path, NULL, NULL, "token")->status, 200);
    reply_t *rep = call(r, "GET", "/admin/api-keys", NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(json_object_size(rep->json), 4);
    assert_int_equal(jint(rep->json, "total"), 3);
    assert_int_equal(jint(rep->json, "skip"), 0);
    assert_int_equal(jint(rep->json, "limit"), 100);
    assert_int_equal(json_array_size(json_object_get(rep->json, "items")), 3);
    rep = call(r, "GET", "/admin/api-keys", "active_only=true", NULL, "token");
    assert_int_equal(jint(rep->json, "total"), 2);
    rep = call(r, "GET", "/admin/api-keys", "status=disabled", NULL, "token");
    assert_int_equal(jint(rep->json, "total"), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(rep->json, "items"), 0), "id"), ids[1]);
    rep = call(r, "GET", "/admin/api-keys", "skip=1&limit=1", NULL, "token");
    assert_int_equal(jint(rep->json, "total"), 3);
    assert_int_equal(jint(rep->json, "skip"), 1);
    assert_int_equal(jint(rep->json, "limit"), 1);
    assert_int_equal(json_array_size(json_object_get(rep->json, "items")), 1);
    const char *bad[][2] = {{"limit=0", "limit:"},       {"limit=1001", "limit:"},
                            {"limit=abc", "limit:"},     {"skip=-1", "skip:"},
                            {"skip=1x", "skip:"},        {"active_only=maybe", "active_only:"},
                            {"status=zombie", "status:"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_error(call(r, "GET", "/admin/api-keys", bad[i][0], NULL, "token"), 400,
                     "invalid_request_error", bad[i][1]);
    rep = call(r, "GET", "/admin/api-keys", "limit=1000", NULL, "token");
    assert_int_equal(rep->status, 200);
    relay_free(r);
}

static void test_get_stats_and_404(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    char id[37];
    api_create(r, "{\"name\":\"g\",\"token_limit\":100}", id, NULL);
    char path[128];
    snprintf(path, sizeof path, "/admin/api-keys/%s/stats", id);
    reply_t *rep = call(r, "GET", path, NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(json_object_size(rep->json), 28);
    assert_true(json_is_false(json_object_get(rep->json, "is_expired")));
    assert_string_equal(jstr(rep->json, "id"), id);
    /* Unknown and malformed ids give the same 404. */
    rep =
        call(r, "GET", "/admin/api-keys/00000000-0000-4000-8000-000000000000", NULL, NULL, "token");
    assert_error(rep, 404, "not_found_error", "API key not found");
    assert_error(call(r, "GET", "/admin/api-keys/not-a-uuid", NULL, NULL, "token"), 404,
                 "not_found_error", "API key not found");
    assert_error(call(r, "POST", "/admin/api-keys/not-a-uuid/disable", NULL, NULL, "token"), 404,
                 "not_found_error", "API key not found");
    relay_free(r);
}

static void test_patch_key(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    char id[37], key[RELAY_KEY_MAX];
    api_create(r,
               "{\"name\":\"p\",\"description\":\"d\",\"expires_in_days\":5,\"allowed_ips\":[\"10."
               "0.0.1\"]}",
               id, key);
    char path[128];
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    reply_t *rep =
        call(r, "PATCH", path, NULL,
             "{\"name\":\"renamed\",\"token_limit\":42,\"rate_limit_tier\":\"premium\",\"expires_"
             "at\":null,"
             "\"allowed_ips\":null,\"allowed_origins\":[\"a.example.com\"],\"metadata\":{\"k\":1},"
             "\"description\":null}",
             "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "name"), "renamed");
    assert_int_equal(jint(rep->json, "token_limit"), 42);
    assert_string_equal(jstr(rep->json, "rate_limit_tier"), "premium");
    assert_true(json_is_null(json_object_get(rep->json, "expires_at")));
    assert_true(json_is_null(json_object_get(rep->json, "allowed_ips")));
    assert_true(json_is_null(json_object_get(rep->json, "description")));
    assert_int_equal(jint(json_object_get(rep->json, "metadata"), "k"), 1);
    assert_null(json_object_get(rep->json, "api_key"));
    /* is_active through PATCH takes effect on the next verify. */
    assert_int_equal(verify(r, key), 0);
    assert_int_equal(call(r, "PATCH", path, NULL, "{\"is_active\":false}", "token")->status, 200);
    assert_int_equal(verify(r, key), RELAY_ERR_KEY_DISABLED);
    assert_int_equal(call(r, "PATCH", path, NULL, "{\"is_active\":true}", "token")->status, 200);
    assert_int_equal(verify(r, key), 0);
    assert_error(call(r, "PATCH", path, NULL, "{\"is_active\":\"no\"}", "token"), 400,
                 "invalid_request_error", "is_active:");
    assert_error(call(r, "PATCH", path, NULL, "{\"token_limit\":-3}", "token"), 400,
                 "invalid_request_error", "token_limit: expected a non-negative integer");
    assert_error(call(r, "PATCH", path, NULL, "{\"rate_limit_tier\":\"gold\"}", "token"), 400,
                 "invalid_request_error", "rate_limit_tier:");
    assert_error(call(r, "PATCH", path, NULL, "{\"name\":null}", "token"), 400,
                 "invalid_request_error", "name:");
    assert_error(call(r, "PATCH", "/admin/api-keys/00000000-0000-4000-8000-000000000000", NULL,
                      "{\"name\":\"x\"}", "token"),
                 404, "not_found_error", NULL);
    /* A failed PATCH changed nothing. */
    rep = call(r, "GET", path, NULL, NULL, "token");
    assert_string_equal(jstr(rep->json, "rate_limit_tier"), "premium");
    assert_int_equal(jint(rep->json, "token_limit"), 42);
    relay_free(r);
}

static void test_disable_enable_rotate_delete(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    char id[37], key[RELAY_KEY_MAX], path[160];
    api_create(r, "{\"name\":\"life\"}", id, key);
    assert_int_equal(verify(r, key), 0);
    snprintf(path, sizeof path, "/admin/api-keys/%s/disable", id);
    reply_t *rep = call(r, "POST", path, NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "message"), "API key disabled");
    assert_int_equal(json_object_size(rep->json), 1);
    assert_int_equal(verify(r, key), RELAY_ERR_KEY_DISABLED);
    snprintf(path, sizeof path, "/admin/api-keys/%s/enable", id);
    rep = call(r, "POST", path, NULL, NULL, "token");
    assert_string_equal(jstr(rep->json, "message"), "API key enabled");
    assert_int_equal(verify(r, key), 0);
    snprintf(path, sizeof path, "/admin/api-keys/%s/rotate", id);
    rep = call(r, "POST", path, NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(json_object_size(rep->json), 28);
    char key2[RELAY_KEY_MAX];
    relay_strlcpy(key2, jstr(rep->json, "api_key"), sizeof key2);
    assert_string_not_equal(key, key2);
    assert_int_equal(verify(r, key), RELAY_ERR_AUTH);
    assert_int_equal(verify(r, key2), 0);
    assert_error(call(r, "GET", path, NULL, NULL, "token"), 405, "invalid_request_error", NULL);
    /* Soft delete: gone from the API, the row kept. */
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    rep = call(r, "DELETE", path, NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "message"), "API key deleted");
    assert_int_equal(verify(r, key2), RELAY_ERR_AUTH);
    assert_error(call(r, "GET", path, NULL, NULL, "token"), 404, "not_found_error", NULL);
    relay_key_record_t rec;
    assert_int_equal(relay_store_key_get(r->store, id, &rec), 0);
    assert_int_equal(rec.is_deleted, 1);
    relay_key_record_clear(&rec);
    assert_error(call(r, "DELETE", path, "hard_delete=maybe", NULL, "token"), 400,
                 "invalid_request_error", "hard_delete:");
    rep = call(r, "DELETE", path, "hard_delete=true", NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "message"), "API key permanently deleted");
    assert_int_equal(relay_store_key_get(r->store, id, &rec), RELAY_ERR_NOT_FOUND);
    assert_error(call(r, "DELETE", path, NULL, NULL, "token"), 404, "not_found_error", NULL);
    relay_free(r);
}

static void test_routes_and_methods(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    /* Not ours: the host tries its next handler (resp untouched). */
    const char *foreign[] = {
        "/admin/usage",          "/admin/api-keys/00000000-0000-4000-8000-000000000000/usage",
        "/v1/messages",          "/admin",
        "/admin/api-keys/x/y/z", "/health"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        reply_t *rep = call(r, "GET", foreign[i], NULL, NULL, "token");
        assert_int_equal(rep->rc, RELAY_ERR_NOT_FOUND);
        assert_int_equal(rep->status, 0);
    }
    /* Known paths, other methods: 405 with an Allow header, even without a token. */
    struct {
        const char *method, *path, *allow;
    } cases[] = {{"DELETE", "/admin/api-keys", "GET, POST"},
                 {"PUT", "/admin/audit-log", "GET"},
                 {"POST", "/admin/rate-limit-tiers", "GET"},
                 {"POST", "/admin/rate-limit-tiers/basic", "GET, PUT, DELETE"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reply_t *rep = call(r, cases[i].method, cases[i].path, NULL, NULL, NULL);
        assert_int_equal(rep->rc, 0);
        assert_error(rep, 405, "invalid_request_error", NULL);
        assert_int_equal(rep->resp.n_headers, 1);
        assert_string_equal(rep->resp.headers[0].name, "allow");
        assert_string_equal(rep->resp.headers[0].value, cases[i].allow);
    }
    relay_free(r);
}

static void test_tiers_api(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    reply_t *rep = call(r, "GET", "/admin/rate-limit-tiers", NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_true(json_is_array(rep->json));
    assert_int_equal(json_array_size(rep->json), 3);
    json_t *basic = json_array_get(rep->json, 0);
    assert_string_equal(jstr(basic, "name"), "basic");
    assert_int_equal(jint(basic, "requests"), 100);
    assert_int_equal(jint(basic, "period"), 60);
    assert_int_equal(jint(json_array_get(rep->json, 2), "requests"), -1);
    rep = call(r, "PUT", "/admin/rate-limit-tiers/gold", NULL, "{\"requests\":5,\"period\":10}",
               "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "name"), "gold");
    assert_int_equal(jint(rep->json, "requests"), 5);
    assert_int_equal(jint(rep->json, "period"), 10);
    rep = call(r, "PUT", "/admin/rate-limit-tiers/gold", NULL, "{\"requests\":-1}", "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(jint(rep->json, "period"), 60);
    assert_error(call(r, "PUT", "/admin/rate-limit-tiers/bad", NULL,
                      "{\"requests\":0,\"period\":10}", "token"),
                 400, "invalid_request_error", "requests:");
    assert_error(call(r, "PUT", "/admin/rate-limit-tiers/bad", NULL, "{\"period\":10}", "token"),
                 400, "invalid_request_error", "requests:");
    assert_error(call(r, "PUT", "/admin/rate-limit-tiers/bad", NULL,
                      "{\"requests\":1,\"period\":0}", "token"),
                 400, "invalid_request_error", "period:");
    assert_error(call(r, "PUT", "/admin/rate-limit-tiers/b d", NULL, "{\"requests\":1}", "token"),
                 400, "invalid_request_error", "name:");
    /* A key on gold: gold cannot go; once the key is gone it can. The tier takes effect at once. */
    char id[37], path[128];
    api_create(r, "{\"name\":\"on gold\",\"rate_limit_tier\":\"gold\"}", id, NULL);
    assert_error(call(r, "DELETE", "/admin/rate-limit-tiers/gold", NULL, NULL, "token"), 409,
                 "invalid_request_error", NULL);
    assert_error(call(r, "DELETE", "/admin/rate-limit-tiers/nope", NULL, NULL, "token"), 404,
                 "not_found_error", NULL);
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    assert_int_equal(call(r, "DELETE", path, NULL, NULL, "token")->status, 200);
    rep = call(r, "DELETE", "/admin/rate-limit-tiers/gold", NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_string_equal(jstr(rep->json, "message"), "rate-limit tier deleted");
    assert_error(call(r, "GET", "/admin/rate-limit-tiers/gold", NULL, NULL, "token"), 404,
                 "not_found_error", NULL);
    assert_error(call(r, "POST", "/admin/api-keys", NULL,
                      "{\"name\":\"x\",\"rate_limit_tier\":\"gold\"}", "token"),
                 400, "invalid_request_error", "rate_limit_tier:");
    relay_free(r);
}

static void test_audit_log(void **state)
{
    (void)state;
    relay_t *r = new_relay();
    login(r);
    char id[37], key[RELAY_KEY_MAX], path[160];
    api_create(r, "{\"name\":\"audited\"}", id, key);
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    assert_int_equal(call(r, "PATCH", path, NULL, "{\"token_limit\":7}", "token")->status, 200);
    snprintf(path, sizeof path, "/admin/api-keys/%s/disable", id);
    assert_int_equal(call(r, "POST", path, NULL, NULL, "token")->status, 200);
    snprintf(path, sizeof path, "/admin/api-keys/%s/enable", id);
    assert_int_equal(call(r, "POST", path, NULL, NULL, "token")->status, 200);
    snprintf(path, sizeof path, "/admin/api-keys/%s/rotate", id);
    reply_t *rep = call(r, "POST", path, NULL, NULL, "token");
    char key2[RELAY_KEY_MAX];
    relay_strlcpy(key2, jstr(rep->json, "api_key"), sizeof key2);
    assert_int_equal(
        call(r, "PUT", "/admin/rate-limit-tiers/gold", NULL, "{\"requests\":5}", "token")->status,
        200);
    assert_int_equal(call(r, "DELETE", "/admin/rate-limit-tiers/gold", NULL, NULL, "token")->status,
                     200);
    snprintf(path, sizeof path, "/admin/api-keys/%s", id);
    assert_int_equal(call(r, "DELETE", path, NULL, NULL, "token")->status, 200);
    /* A refused change writes nothing. */
    assert_int_equal(call(r, "PATCH", path, NULL, "{\"name\":\"x\"}", "token")->status, 404);

    rep = call(r, "GET", "/admin/audit-log", NULL, NULL, "token");
    assert_int_equal(rep->status, 200);
    assert_int_equal(jint(rep->json, "total"), 8);
    assert_int_equal(jint(rep->json, "limit"), 100);
    json_t *items = json_object_get(rep->json, "items");
    /* Newest first. */
    const char *actions[] = {"api_key.delete", "tier.delete",    "tier.create",
                             "api_key.rotate", "api_key.enable", "api_key.disable",
                             "api_key.update", "api_key.create"};
    for (size_t i = 0; i < 8; i++) {
        json_t *e = json_array_get(items, i);
        assert_int_equal(json_object_size(e), 7);
        assert_string_equal(jstr(e, "action"), actions[i]);
        assert_string_equal(jstr(e, "actor"), "admin");
        assert_string_equal(jstr(e, "client_ip"), CLIENT_IP);
        assert_true(json_is_integer(json_object_get(e, "id")));
        int64_t t;
        assert_int_equal(relay_parse_iso8601(jstr(e, "created_at"), &t), 0);
        assert_true(llabs(t - relay_now()) < 60);
        assert_true(json_is_object(json_object_get(e, "details")) ||
                    json_is_null(json_object_get(e, "details")));
    }
    assert_string_equal(jstr(json_array_get(items, 7), "target"), id);
    assert_string_equal(jstr(json_array_get(items, 1), "target"), "gold");
    json_t *fields =
        json_object_get(json_object_get(json_array_get(items, 6), "details"), "fields");
    assert_string_equal(json_string_value(json_array_get(fields, 0)), "token_limit");
    /* No key and no password anywhere in the log. */
    assert_null(strstr(rep->body, key + 22));
    assert_null(strstr(rep->body, key2 + 22));
    assert_null(strstr(rep->body, PASSWORD));
    rep = call(r, "GET", "/admin/audit-log", "skip=2&limit=3", NULL, "token");
    assert_int_equal(json_array_size(json_object_get(rep->json, "items")), 3);
    assert_string_equal(jstr(json_array_get(json_object_get(rep->json, "items"), 0), "action"),
                        "tier.create");
    assert_error(call(r, "GET", "/admin/audit-log", "limit=5000", NULL, "token"), 400,
                 "invalid_request_error", "limit:");
    relay_free(r);
}

int main(int argc, char **argv)
{
    int skip = testdb_init(argc, argv, "admin");
    if (skip)
        return skip;
#define T(f) cmocka_unit_test_setup_teardown(f, testdb_setup, testdb_teardown)
    const struct CMUnitTest tests[] = {
        T(test_login),
        T(test_login_lockout),
        T(test_login_needs_secret_key),
        T(test_generated_password),
        T(test_bearer_required),
        T(test_create_key),
        T(test_create_errors),
        T(test_list_keys),
        T(test_get_stats_and_404),
        T(test_patch_key),
        T(test_disable_enable_rotate_delete),
        T(test_routes_and_methods),
        T(test_tiers_api),
        T(test_audit_log),
    };
    int rc = cmocka_run_group_tests_name(testdb_backend(), tests, NULL, NULL);
    return rc;
}
