/* fuzz_admin: libFuzzer target; admin REST bodies from anywhere, through relay_admin_handle on a
 * real (SQLite) store: every answer is JSON, every refusal an Anthropic error object. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/admin.h"
#include "relay/auth.h"
#include "relay/keys.h"
#include "relay/relay.h"

static relay_t *g_r;
static char g_auth[1024];
static char g_key_path[96], g_rotate_path[128];

/* One relay for the whole run, on a fresh data directory (left behind in /tmp on exit). */
static void init(void)
{
    static char dir[] = "/tmp/relay-fuzz-admin-XXXXXX";
    relay_options_t o;
    relay_options_init(&o);
    if (!mkdtemp(dir))
        abort();
    o.data_dir = dir;
    o.secret_key = "fuzz-secret-key-0123456789abcdefghijkl";
    o.admin_password = "fuzz-admin-password";
    o.bcrypt_cost = 4;
    relay_error_t err = {0};
    char *tok = NULL;
    if (relay_new(&g_r, &o, &err) != 0 || relay_auth_issue_token(g_r, "admin", 3600, &tok, &err))
        abort();
    snprintf(g_auth, sizeof g_auth, "Bearer %s", tok);
    relay_free_string(tok);
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "fuzz target";
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec;
    if (relay_keys_create(g_r, &p, key, sizeof key, &rec, &err) != 0)
        abort();
    snprintf(g_key_path, sizeof g_key_path, "/admin/api-keys/%s", rec.id);
    snprintf(g_rotate_path, sizeof g_rotate_path, "/admin/api-keys/%s/rotate", rec.id);
    relay_key_record_clear(&rec);
}

/* The first byte picks the route, the rest is the JSON body. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"POST", "PATCH", "PUT", "PUT", "PUT"};
    const char *paths[] = {"/admin/api-keys", g_key_path, "/admin/rate-limit-tiers/fuzz",
                           "/admin/pricing", g_key_path};
    if (!g_r)
        init();
    if (size < 1)
        return 0;
    size_t route = data[0] % 5;
    relay_http_header_t h[] = {{"authorization", g_auth}, {"content-type", "application/json"}};
    relay_http_request_t req = {.method = methods[route],
                                .path = route == 4 && size > 1 && data[1] == 'r' ? g_rotate_path
                                                                                 : paths[route],
                                .body = (const char *)data + 1,
                                .body_len = size - 1,
                                .client_ip = "192.0.2.1",
                                .headers = h,
                                .n_headers = 2};
    if (route == 4 && req.path == g_rotate_path)
        req.method = "POST";
    relay_http_response_t resp = {0};
    if (relay_admin_handle(g_r, &req, &resp) != 0)
        abort(); /* every one of these paths is the admin API's */
    json_error_t jerr;
    json_t *j = resp.body ? json_loadb(resp.body, resp.body_len, 0, &jerr) : NULL;
    if (!j || resp.status < 200 || resp.status > 599)
        abort();
    if (resp.status >= 400) {
        json_t *e = json_object_get(j, "error");
        if (!json_is_string(json_object_get(j, "type")) || !json_is_object(e) ||
            !json_is_string(json_object_get(e, "message")))
            abort();
    }
    if (resp.status >= 500 && resp.status != 503)
        abort(); /* a bad body is the client's fault, never an internal error */
    json_decref(j);
    relay_http_response_clear(&resp);
    return 0;
}
