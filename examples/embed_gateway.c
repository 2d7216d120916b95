/* embed_gateway: a gateway that does its own I/O and calls librelay's four stages one by one. */
/*
 * A host with its own HTTP stack (here: a request body from a file or stdin, the answer on
 * stdout) runs the stages itself instead of relay_proxy():
 *
 *   relay_keys_verify → relay_limits_admit → relay_forward(sink) → relay_proxy_settle
 *
 * Usage: embed_gateway DATA_DIR UPSTREAM_URL [BODY_FILE|-]
 * The upstream key comes from the environment (UPSTREAM_API_KEY), never from argv, so it does
 * not show in `ps`. The program creates its own proxy key first (as a client would have been
 * given one), then presents it like a client would. It prints the upstream's answer as it
 * streams in, then a summary the tests check:
 *   relay: status=200 stream=1 input=25 output=15 billed=40 estimated=0
 *   relay: key token_used=40 request_count=1
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <relay/forward.h>
#include <relay/keys.h>
#include <relay/limits.h>
#include <relay/proxy.h>
#include <relay/relay.h>
#include <relay/tokens.h>
#include <relay/usage.h>

/* Large enough for any example body; a real gateway would use its configured max_body_bytes. */
#define BODY_MAX ((size_t)1 << 20)

/* Reads at most BODY_MAX bytes of path ("-": stdin). Returns a malloc'd NUL-terminated buffer. */
static char *read_body(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(BODY_MAX + 1);
    size_t n = buf ? fread(buf, 1, BODY_MAX + 1, f) : 0;
    int too_big = n > BODY_MAX, failed = buf == NULL || ferror(f);
    if (f != stdin)
        fclose(f);
    if (too_big || failed) {
        fprintf(stderr, "embed_gateway: %s: %s\n", path, too_big ? "body too large" : "read error");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The sink: the host's way back to its client. Here the client is stdout. */
static int sink_head(void *ud, int status, const relay_http_header_t *h, size_t n)
{
    (void)ud;
    printf("HTTP %d\n", status);
    for (size_t i = 0; i < n; i++)
        printf("%s: %s\n", h[i].name, h[i].value);
    printf("\n");
    return fflush(stdout) != 0; /* nonzero tells librelay the client is gone */
}

static int sink_body(void *ud, const char *data, size_t len)
{
    (void)ud;
    /* Flushed per chunk, as a real host must for SSE: each event reaches the client at once. */
    return fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0;
}

/* Stages 1-4 for one request; the proxy key is the one a client presented. */
static int serve_one(relay_t *r, const char *presented, const char *body, size_t len)
{
    relay_error_t err = {0};
    relay_key_record_t key = {0};
    int rc = relay_keys_verify(r, presented, &key, &err); /* 1. authenticate */
    if (rc) {
        fprintf(stderr, "embed_gateway: refused: %s\n", err.message);
        return rc;
    }
    relay_request_info_t info = {0};
    rc = relay_tokens_count_request(NULL, body, len, &info);
    if (rc) {
        fprintf(stderr, "embed_gateway: the body is not a JSON object\n");
        relay_key_record_clear(&key);
        return rc;
    }
    relay_admit_request_t areq = {.key = &key,
                                  .client_ip = "127.0.0.1",
                                  .model = info.model[0] ? info.model : NULL,
                                  .input_tokens_estimate = info.input_tokens_estimate,
                                  .max_tokens = info.max_tokens,
                                  .consumes_quota = 1};
    relay_admission_t adm;
    rc = relay_limits_admit(r, &areq, &adm, &err); /* 2. admit */
    if (rc) {
        fprintf(stderr, "embed_gateway: refused (%s): %s\n", adm.reason, err.message);
        relay_key_record_clear(&key);
        return rc;
    }
    /* 3. forward: librelay swaps the client's x-api-key for the upstream key. */
    relay_http_header_t hdrs[] = {{"content-type", "application/json"},
                                  {"anthropic-version", "2023-06-01"},
                                  {"x-api-key", presented}};
    relay_http_request_t req = {.method = "POST",
                                .path = "/v1/messages",
                                .body = body,
                                .body_len = len,
                                .client_ip = "127.0.0.1",
                                .headers = hdrs,
                                .n_headers = sizeof hdrs / sizeof hdrs[0]};
    relay_sink_t sink = {.ud = NULL, .head = sink_head, .body = sink_body};
    relay_forward_result_t res;
    rc = relay_forward(r, &req, &sink, &res);
    /* 4. settle: on every path after a successful admit, so the slot and reservation are freed;
     * the same code relay_proxy runs (billed tokens, cost, the usage row). */
    relay_proxy_result_t pres;
    memset(&pres, 0, sizeof pres);
    pres.fwd = res;
    pres.status = res.status;
    snprintf(pres.model, sizeof pres.model, "%s", info.model);
    relay_proxy_settle(r, &req, &key, &adm, &pres);
    const relay_usage_t *u = &res.usage;
    printf("\nrelay: status=%d stream=%d input=%lld output=%lld billed=%lld estimated=%d\n",
           res.status, res.stream, (long long)u->input_tokens, (long long)u->output_tokens,
           (long long)pres.billed_tokens, res.estimated);
    relay_key_record_clear(&key);
    return rc;
}

/* Creates the proxy key this run presents; the full key is in key_out only. */
static int create_key(relay_t *r, char *key_out, size_t cap, char *id_out, size_t id_cap)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "embed-gateway-example";
    p.token_limit = 100000;
    relay_key_record_t rec = {0};
    relay_error_t err = {0};
    int rc = relay_keys_create(r, &p, key_out, cap, &rec, &err);
    if (rc) {
        fprintf(stderr, "embed_gateway: create key: %s\n", err.message);
        return rc;
    }
    snprintf(id_out, id_cap, "%s", rec.id);
    printf("relay: created key id=%s prefix=%s\n", rec.id, rec.key_prefix);
    relay_key_record_clear(&rec);
    return 0;
}

/* Waits for the usage writer, then shows the counters the store now holds for the key. */
static int report_key(relay_t *r, const char *id)
{
    int rc = relay_usage_flush(r, 10000);
    relay_key_record_t rec = {0};
    if (rc == 0)
        rc = relay_keys_get(r, id, &rec, NULL);
    if (rc) {
        fprintf(stderr, "embed_gateway: reading the key back: %s\n", relay_strerror(rc));
        return rc;
    }
    printf("relay: key token_used=%lld request_count=%lld\n", (long long)rec.token_used,
           (long long)rec.request_count);
    relay_key_record_clear(&rec);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s DATA_DIR UPSTREAM_URL [BODY_FILE|-]  (env UPSTREAM_API_KEY)\n",
                argv[0]);
        return 2;
    }
    size_t len = 0;
    char *body = read_body(argc == 4 ? argv[3] : "-", &len);
    if (!body)
        return 1;
    relay_options_t opts;
    relay_options_init(&opts);
    opts.data_dir = argv[1];
    opts.upstream_url = argv[2];
    opts.upstream_api_key = getenv("UPSTREAM_API_KEY");
    opts.bcrypt_cost = 4; /* the cheapest bcrypt: this demo verifies one key once */
    relay_t *r = NULL;
    relay_error_t err = {0};
    if (relay_new(&r, &opts, &err) != 0) {
        fprintf(stderr, "embed_gateway: %s\n", err.message);
        free(body);
        return 1;
    }
    char key[RELAY_KEY_MAX], id[37];
    int rc = create_key(r, key, sizeof key, id, sizeof id);
    if (rc == 0)
        rc = serve_one(r, key, body, len);
    if (rc == 0)
        rc = report_key(r, id);
    memset(key, 0, sizeof key); /* a secret does not outlive its use */
    relay_free(r);
    free(body);
    return rc == 0 ? 0 : 1;
}
