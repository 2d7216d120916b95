/* relay-server: command line, configuration, start and graceful stop of the CivetWeb shell. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "relay/admin.h"
#include "relay/auth.h"
#include "relay/forward.h"
#include "relay/keys.h"
#include "relay/stats.h"
#include "relay/store.h"
#include "relay/usage.h"
#include "relay/upstreams.h"
#include "server.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "relay-server %s: a Claude API relay\n\n"
        "Usage:\n"
        "  relay-server [serve] [--config FILE] [--env-file FILE]   run the server (default)\n"
        "  relay-server --check-config [--config FILE]              validate the configuration and "
        "exit\n"
        "  relay-server migrate up | down [N] | status              manage the database schema\n"
        "  relay-server keys create --name NAME [--token-limit N] [--tier TIER]\n"
        "                           [--description TEXT] [--expires-in-days N]\n"
        "  relay-server keys list                                   list keys (no secrets)\n"
        "  relay-server upstreams reseal                            re-seal stored upstream keys\n"
        "                           from RELAY_OLD_SECRET_KEY to SECRET_KEY (docs/upstreams.md)\n"
        "  relay-server routes                                      print the REST routes served\n"
        "  relay-server version\n"
        "  relay-server --help\n\n"
        "Configuration: .env, then config.yaml ($RELAY_CONFIG), then the environment\n"
        "(UPSTREAM_API_KEY, UPSTREAM_API_URL, ADMIN_USERNAME, ADMIN_PASSWORD, SECRET_KEY,\n"
        "DATABASE_URL, REDIS_URL, RELAY_LISTEN, RELAY_DATA_DIR, LOG_LEVEL). See "
        "docs/configuration.md.\n",
        relay_version());
}

static relay_log_level parse_level(const char *s)
{
    if (!strcmp(s, "debug"))
        return RELAY_LOG_DEBUG;
    if (!strcmp(s, "warning") || !strcmp(s, "warn"))
        return RELAY_LOG_WARN;
    if (!strcmp(s, "error"))
        return RELAY_LOG_ERROR;
    return RELAY_LOG_INFO;
}

typedef struct cli {
    const char *config_path;
    const char *env_path;
    int check_config;
    char **args; /* the subcommand and its words */
    int nargs;
} cli_t;

/* Global options may stand anywhere; everything else is the subcommand's. */
static int parse_cli(int argc, char **argv, cli_t *c)
{
    memset(c, 0, sizeof *c);
    c->args = calloc((size_t)argc + 1, sizeof *c->args);
    if (!c->args)
        return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config") && i + 1 < argc)
            c->config_path = argv[++i];
        else if (!strncmp(a, "--config=", 9))
            c->config_path = a + 9;
        else if (!strcmp(a, "--env-file") && i + 1 < argc)
            c->env_path = argv[++i];
        else if (!strcmp(a, "--check-config"))
            c->check_config = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            c->args[c->nargs++] = "help";
        else if (!strcmp(a, "--version"))
            c->args[c->nargs++] = "version";
        else
            c->args[c->nargs++] = argv[i];
    }
    return 0;
}

static relay_config_t *load_config(const cli_t *c)
{
    relay_config_t *cfg = NULL;
    relay_error_t err = {0};
    if (relay_config_load(&cfg, c->config_path, c->env_path, &err) != 0) {
        fprintf(stderr, "relay-server: %s\n", err.message);
        return NULL;
    }
    server_set_log_level(parse_level(cfg->log_level));
    for (size_t i = 0; i < cfg->warnings.n; i++)
        server_log(RELAY_LOG_WARN, "config.warning", NULL, "%s", cfg->warnings.items[i]);
    cfg->relay.log_fn = server_log_fn;
    /* A known key's request needs no database connection (the key cache, the in-memory limits
     * and the usage writer's queue), so the pool serves admin calls, first sights of keys and
     * the writer: a few dozen, not one per worker (PostgreSQL allows 100 by default). */
    if (cfg->relay.db_pool_size <= 0)
        cfg->relay.db_pool_size = cfg->worker_threads < 32 ? cfg->worker_threads : 32;
    cfg->relay.log_level = parse_level(cfg->log_level);
    return cfg;
}

/* SECRET_KEY, or one generated at first start and kept in the data directory (mode 0600). */
static int ensure_secret_key(relay_config_t *cfg, char *buf, size_t cap)
{
    if (cfg->relay.secret_key && *cfg->relay.secret_key)
        return 0;
    const char *dir = cfg->relay.data_dir && *cfg->relay.data_dir ? cfg->relay.data_dir : "./data";
    char path[4096];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "relay-server: cannot create data directory %s: %s\n", dir,
                strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/secret_key", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, cap - 1, f);
        fclose(f);
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        if (strlen(buf) >= 32) {
            cfg->relay.secret_key = buf;
            return 0;
        }
    }
    unsigned char raw[48];
    if (getentropy(raw, sizeof raw) != 0)
        return -1;
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < sizeof raw && o + 1 < cap; i++)
        buf[o++] = b64[raw[i] & 63];
    buf[o] = '\0';
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, buf, o) != (ssize_t)o || write(fd, "\n", 1) != 1) {
        fprintf(stderr, "relay-server: cannot write %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    cfg->relay.secret_key = buf;
    server_log(RELAY_LOG_INFO, "secret_key.generated", NULL,
               "no SECRET_KEY configured: generated one and stored it in %s (mode 0600)", path);
    return 0;
}

static relay_t *open_relay(relay_config_t *cfg)
{
    relay_t *r = NULL;
    relay_error_t err = {0};
    if (relay_new(&r, &cfg->relay, &err) != 0) {
        server_log(RELAY_LOG_ERROR, "startup.failed", NULL, "%s", err.message);
        fprintf(stderr, "relay-server: %s\n", err.message);
        return NULL;
    }
    return r;
}

/* ---- serve ---- */
static int handle_request(server_t *s, struct mg_connection *conn);

static int authorize_all(struct mg_connection *conn, void *cbdata)
{
    (void)conn;
    (void)cbdata;
    return 1;
}

static int handler(struct mg_connection *conn, void *cbdata)
{
    server_t *s = cbdata;
    __atomic_add_fetch(&s->inflight, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->stopping, __ATOMIC_SEQ_CST)) {
        /* Draining: requests already running finish, new ones are turned away. */
        relay_http_response_t resp = {0};
        relay_http_response_error(&resp, RELAY_ERR_UNAVAILABLE,
                                  "the relay is shutting down; retry shortly");
        relay_http_response_add_header(&resp, "Connection", "close");
        relay_http_response_add_header(&resp, "Retry-After", "1");
        server_write_response(conn, &resp);
        relay_http_response_clear(&resp);
        __atomic_sub_fetch(&s->inflight, 1, __ATOMIC_SEQ_CST);
        return 1;
    }
    int status = handle_request(s, conn);
    __atomic_sub_fetch(&s->inflight, 1, __ATOMIC_SEQ_CST);
    return status;
}

static int handle_request(server_t *s, struct mg_connection *conn)
{
    server_request_t req;
    int rc = server_request_read(s, conn, &req, s->cfg->relay.max_body_bytes);
    if (rc) {
        server_request_free(&req);
        return rc == RELAY_ERR_IO ? 0 : 1;
    }
    if (server_cors_begin(s, conn)) {
        server_cors_end();
        server_request_free(&req);
        return 1;
    }
    const char *p = req.http.path;
    if (!strcmp(p, s->cfg->health_path))
        route_health(s, conn, &req);
    else if (s->cfg->metrics_enabled && !strcmp(p, s->cfg->metrics_path))
        route_metrics(s, conn, &req);
    else if (!strcmp(p, "/api/usage") || !strncmp(p, "/api/usage/", 11))
        route_user(s, conn, &req);
    else if (!strcmp(p, "/admin") || !strncmp(p, "/admin/", 7)) {
        if (!route_stats_admin(s, conn, &req))
            route_admin(s, conn, &req);
    } else if (!strcmp(p, "/console") || !strncmp(p, "/console/", 9))
        route_console(s, conn, &req); /* 404 when console.enabled is false */
    else
        route_proxy(s, conn, &req);
    server_cors_end();
    server_request_free(&req);
    server_conn_mark(req.fd);
    return 1;
}

static void *stop_thread(void *arg)
{
    server_t *s = arg;
    mg_stop(s->ctx);
    __atomic_store_n(&s->stopped, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int start_civetweb(server_t *s)
{
    if (s->cfg->listen[0] == '[' && !mg_check_feature(8)) {
        fprintf(stderr,
                "relay-server: listen %s: this CivetWeb build has no IPv6 support; use an IPv4 "
                "address\n",
                s->cfg->listen);
        return -1;
    }
    char threads[16], head_ms[16], head_max[24];
    snprintf(threads, sizeof threads, "%d", s->cfg->worker_threads);
    /* request_timeout_ms bounds the whole request head (a slowloris client trickling headers
     * holds its worker this long at most), and each stalled read of a body or write to the
     * client; max_request_size is the head's buffer, checked before the head is read further. */
    snprintf(head_ms, sizeof head_ms, "%d", s->cfg->header_timeout_ms);
    snprintf(head_max, sizeof head_max, "%zu", s->cfg->max_header_bytes);
    /* Headers and each chunk are separate writes: without tcp_nodelay, Nagle's algorithm and the
     * client's delayed ACK add ~40 ms to every answer (bench/bench_proxy.py shows it). */
    /* A burst of new connections (a deploy, a thousand clients at once) must not overflow the
     * listen backlog (a dropped SYN costs the client a 1 s retransmit) nor the accept queue. */
    const char *opts[] = {"listening_ports", s->cfg->listen, "num_threads", threads,
                          "listen_backlog", "4096", "connection_queue", threads,
                          "enable_keep_alive", "yes", "keep_alive_timeout_ms", "30000",
                          "request_timeout_ms", head_ms, "max_request_size", head_max,
                          /* Routes see the path as sent: decoded, "%00" cut a path short
                           * ("/console/index.html%00.txt" served index.html) and "%2f" made
                           * a separator; no route needs an escape decoded. */
                          "decode_url", "no", "tcp_nodelay", "1",
                          /* CivetWeb answers preflights itself and sends "*" by default; the
                           * relay does CORS only as security.cors says (cors.c). */
                          "access_control_allow_origin", "", NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.http_error = server_http_error;
    mg_init_library(0);
    s->ctx = mg_start(&cb, s, opts);
    if (!s->ctx) {
        fprintf(stderr, "relay-server: cannot listen on %s (address in use or invalid)\n",
                s->cfg->listen);
        return -1;
    }
    /* Without an authorization handler CivetWeb looks for a ".htpasswd" (a stat per request,
     * strace); every route authenticates for itself. */
    mg_set_auth_handler(s->ctx, "/", authorize_all, NULL);
    mg_set_request_handler(s->ctx, "/", handler, s);
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Gives the heap's free pages back after a burst. glibc keeps what a thousand streams freed in
 * its arenas (RSS stayed at the burst's peak); malloc_trim returns the free pages to the kernel.
 * Once per TRIM_EVERY_MS, and only when the requests in flight are under half of the peak since
 * the last trim: the walk locks each arena in turn, so it is not done while the load holds.
 */
#define TRIM_EVERY_MS 30000

static void trim_after_bursts(server_t *s, int *peak, int64_t *since_ms)
{
    int now = __atomic_load_n(&s->inflight, __ATOMIC_SEQ_CST);
    if (now > *peak)
        *peak = now;
    *since_ms += 100;
    if (*since_ms < TRIM_EVERY_MS)
        return;
    if (now <= *peak / 2)
        malloc_trim(0);
    *peak = now;
    *since_ms = 0;
}

/*
 * SIGTERM/SIGINT: turn new requests away (503, Connection: close), let the requests in flight
 * finish within the grace period, then stop CivetWeb and flush pending usage rows. CivetWeb's
 * own stop makes every write fail at once, so it runs only after the drain.
 */
static int wait_and_stop(server_t *s)
{
    int peak = 0;
    int64_t since_trim = 0;
    while (!g_stop) {
        sleep_ms(100);
        trim_after_bursts(s, &peak, &since_trim);
    }
    __atomic_store_n(&s->stopping, 1, __ATOMIC_SEQ_CST);
    server_log(RELAY_LOG_INFO, "shutdown.begin", NULL,
               "stopping: new requests refused, %d s for requests in flight",
               s->cfg->shutdown_grace_s);
    int64_t waited = 0, grace_ms = (int64_t)s->cfg->shutdown_grace_s * 1000;
    while (__atomic_load_n(&s->inflight, __ATOMIC_SEQ_CST) > 0 && waited < grace_ms) {
        sleep_ms(50);
        waited += 50;
    }
    int left = __atomic_load_n(&s->inflight, __ATOMIC_SEQ_CST);
    if (left > 0) {
        /* Past the grace: streams end now with an SSE error event, billed for what they got. */
        server_log(RELAY_LOG_WARN, "shutdown.cut", NULL,
                   "grace period over with %d request(s) in flight; ending them with an error "
                   "(each is billed for what it produced)",
                   left);
        relay_forward_shutdown(s->relay);
        for (waited = 0; __atomic_load_n(&s->inflight, __ATOMIC_SEQ_CST) > 0 && waited < 10000;
             waited += 50)
            sleep_ms(50);
        left = __atomic_load_n(&s->inflight, __ATOMIC_SEQ_CST);
    }
    pthread_t t;
    int have_thread = pthread_create(&t, NULL, stop_thread, s) == 0;
    for (int i = 0; have_thread && i < 100 && !__atomic_load_n(&s->stopped, __ATOMIC_SEQ_CST); i++)
        sleep_ms(50);
    if (left > 0 || !__atomic_load_n(&s->stopped, __ATOMIC_SEQ_CST)) {
        /* Requests still running past the grace period: keep what they have billed so far. */
        int rc = relay_usage_flush(s->relay, 10000);
        server_log(RELAY_LOG_WARN, "shutdown.forced", NULL,
                   "grace period over with %d request(s) in flight; usage %s", left,
                   rc == 0 ? "flushed" : "NOT fully flushed");
        _exit(rc == 0 ? 0 : 1);
    }
    pthread_join(t, NULL);
    relay_free(s->relay);
    server_log(RELAY_LOG_INFO, "shutdown.done", NULL, "stopped; usage flushed");
    return 0;
}

static int cmd_serve(relay_config_t *cfg)
{
    char secret[128];
    if (ensure_secret_key(cfg, secret, sizeof secret) != 0)
        return 1;
    server_t s = {.cfg = cfg};
    s.relay = open_relay(cfg);
    if (!s.relay)
        return 1;
    if (server_observability_setup(&s) != 0) {
        relay_free(s.relay);
        return 1;
    }
    char pw[128];
    if (relay_auth_take_generated_password(s.relay, pw, sizeof pw) == 1) {
        printf("Generated admin password for '%s' (shown once; only its hash is stored): %s\n",
               cfg->relay.admin_username, pw);
        fflush(stdout);
        explicit_bzero(pw, sizeof pw);
        server_log(
            RELAY_LOG_WARN, "admin.password_generated", NULL,
            "no ADMIN_PASSWORD configured: generated one and printed it once on standard output");
    }
    if (!cfg->relay.upstream_api_key || !*cfg->relay.upstream_api_key)
        server_log(RELAY_LOG_WARN, "upstream.no_key", NULL,
                   "no UPSTREAM_API_KEY configured: forwarding answers 503 until one is set");
    if (start_civetweb(&s) != 0) {
        relay_free(s.relay);
        return 1;
    }
    char fields[256];
    snprintf(fields, sizeof fields, "{\"listen\":\"%s\",\"workers\":%d,\"version\":\"%s\"}",
             cfg->listen, cfg->worker_threads, relay_version());
    server_log(RELAY_LOG_INFO, "server.started", fields, "relay-server listening on http://%s",
               cfg->listen);
    return wait_and_stop(&s);
}

/* ---- routes ---- */
static void print_route(void *ud, const char *method, const char *pattern)
{
    fprintf(ud, "%s %s\n", method, pattern);
}

/* The routes handle_request serves itself, then librelay's REST tables: one "METHOD PATTERN" a
 * line. Everything else goes to the upstream (the proxy), so it is not listed. */
static int cmd_routes(const relay_config_t *cfg)
{
    print_route(stdout, "GET", cfg->health_path);
    if (cfg->metrics_enabled)
        print_route(stdout, "GET", cfg->metrics_path);
    if (cfg->console_enabled) {
        print_route(stdout, "GET", "/console");
        print_route(stdout, "GET", "/console/{file}");
    }
    relay_admin_routes(print_route, stdout);
    relay_upstreams_routes(print_route, stdout);
    relay_stats_routes(print_route, stdout);
    return 0;
}

/* ---- migrate ---- */
static int cmd_migrate(relay_config_t *cfg, char **args, int n)
{
    const char *what = n > 1 ? args[1] : "status";
    relay_store_t *st = NULL;
    relay_error_t err = {0};
    if (relay_store_open_configured(&st, &cfg->relay, &err) != 0) {
        fprintf(stderr, "relay-server: %s\n", err.message);
        return 1;
    }
    int rc = 0, count = 0;
    if (!strcmp(what, "up")) {
        rc = relay_store_migrate_up(st, &count, &err);
        if (!rc)
            printf("applied %d migration(s) on %s\n", count, relay_store_backend(st));
    } else if (!strcmp(what, "down")) {
        int steps = n > 2 ? atoi(args[2]) : 1;
        if (steps <= 0) {
            fprintf(stderr, "relay-server: migrate down N: N must be a positive integer\n");
            relay_store_free(st);
            return 2;
        }
        rc = relay_store_migrate_down(st, steps, &count, &err);
        if (!rc)
            printf("rolled back %d migration(s) on %s\n", count, relay_store_backend(st));
    } else if (!strcmp(what, "status")) {
        relay_migration_info_t *m = NULL;
        size_t nm = 0;
        rc = relay_store_migrate_status(st, &m, &nm, &err);
        for (size_t i = 0; !rc && i < nm; i++) {
            char when[32];
            time_t t = (time_t)m[i].applied_at;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("%04d  %-32s %s%s\n", m[i].version, m[i].name,
                   m[i].applied ? "applied " : "pending", m[i].applied ? when : "");
        }
        free(m);
    } else {
        fprintf(stderr, "relay-server: migrate: expected up, down [N] or status\n");
        relay_store_free(st);
        return 2;
    }
    if (rc)
        fprintf(stderr, "relay-server: migrate %s: %s\n", what, err.message);
    relay_store_free(st);
    return rc ? 1 : 0;
}

/* ---- keys ---- */
static int cmd_keys_create(relay_t *r, char **args, int n)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    int64_t days = 0;
    for (int i = 2; i + 1 < n; i += 2) {
        const char *o = args[i], *v = args[i + 1];
        if (!strcmp(o, "--name"))
            p.name = v;
        else if (!strcmp(o, "--token-limit"))
            p.token_limit = strtoll(v, NULL, 10);
        else if (!strcmp(o, "--tier"))
            p.tier = v;
        else if (!strcmp(o, "--description"))
            p.description = v;
        else if (!strcmp(o, "--expires-in-days"))
            days = strtoll(v, NULL, 10);
        else {
            fprintf(stderr, "relay-server: keys create: unknown option %s\n", o);
            return 2;
        }
    }
    if ((n - 2) % 2) {
        fprintf(stderr, "relay-server: keys create: option %s needs a value\n", args[n - 1]);
        return 2;
    }
    if (days < 0 || days > 365) {
        fprintf(stderr, "relay-server: keys create: --expires-in-days must be 1..365\n");
        return 2;
    }
    if (days)
        p.expires_at = (int64_t)time(NULL) + days * 86400;
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec = {0};
    relay_error_t err = {0};
    if (relay_keys_create(r, &p, key, sizeof key, &rec, &err) != 0) {
        fprintf(stderr, "relay-server: keys create: %s\n", err.message);
        return 1;
    }
    printf("Created key '%s' (id %s, tier %s, token limit %lld).\n"
           "API key (shown once, store it now): %s\n",
           rec.name, rec.id, rec.rate_limit_tier, (long long)rec.token_limit, key);
    explicit_bzero(key, sizeof key);
    relay_key_record_clear(&rec);
    return 0;
}

static int cmd_keys_list(relay_t *r)
{
    relay_key_record_t *recs = NULL;
    size_t n = 0;
    int64_t total = 0;
    relay_error_t err = {0};
    printf("%-36s  %-24s %-20s %-10s %12s %12s  %s\n", "ID", "NAME", "PREFIX", "TIER", "USED",
           "LIMIT", "STATE");
    for (int64_t skip = 0;; skip += 1000) {
        if (relay_keys_list(r, RELAY_KEYS_ALL, skip, 1000, &recs, &n, &total, &err) != 0) {
            fprintf(stderr, "relay-server: keys list: %s\n", err.message);
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            printf("%-36s  %-24.24s %-20.20s %-10.10s %12lld %12lld  %s\n", recs[i].id,
                   recs[i].name, recs[i].key_prefix, recs[i].rate_limit_tier,
                   (long long)recs[i].token_used, (long long)recs[i].token_limit,
                   recs[i].is_active ? "active" : "disabled");
        relay_key_records_free(recs, n);
        if (skip + 1000 >= total)
            break;
    }
    return 0;
}

static int cmd_keys(relay_config_t *cfg, char **args, int n)
{
    const char *what = n > 1 ? args[1] : "";
    if (strcmp(what, "create") && strcmp(what, "list")) {
        fprintf(stderr, "relay-server: keys: expected create or list\n");
        return 2;
    }
    char secret[128];
    if (ensure_secret_key(cfg, secret, sizeof secret) != 0)
        return 1;
    cfg->relay.usage_spool = 0; /* the serving process owns the spool; this one writes no rows */
    relay_t *r = open_relay(cfg);
    if (!r)
        return 1;
    int rc = !strcmp(what, "create") ? cmd_keys_create(r, args, n) : cmd_keys_list(r);
    relay_free(r);
    return rc;
}

/* After SECRET_KEY changed: the stored upstream keys, sealed under the old one, are sealed again
 * under the new one (the old one comes from RELAY_OLD_SECRET_KEY, never from the command line,
 * where ps would show it). */
static int cmd_upstreams(relay_config_t *cfg, char **args, int n)
{
    if (n < 2 || strcmp(args[1], "reseal") != 0) {
        fprintf(stderr, "relay-server: upstreams: expected reseal\n");
        return 2;
    }
    const char *old = getenv("RELAY_OLD_SECRET_KEY");
    if (!old || !*old || !cfg->relay.secret_key || !*cfg->relay.secret_key) {
        fprintf(stderr, "relay-server: upstreams reseal: set SECRET_KEY (the new secret) and "
                        "RELAY_OLD_SECRET_KEY (the old one)\n");
        return 2;
    }
    relay_t *r = open_relay(cfg);
    if (!r)
        return 1;
    int count = 0;
    relay_error_t err = {0};
    int rc = relay_upstreams_reseal(r, old, &count, &err);
    relay_free(r);
    if (rc) {
        fprintf(stderr, "relay-server: upstreams reseal: %s\n", err.message);
        return 1;
    }
    printf("re-sealed %d upstream key%s\n", count, count == 1 ? "" : "s");
    return 0;
}

static int run(cli_t *c);

int main(int argc, char **argv)
{
    /* glibc gives busy threads their own malloc arenas (up to 8 per core); with a thousand
     * workers each arena kept its own freed memory, and 1,000 streams cost 252 MB of RSS. Four
     * arenas: 148 MB for the same load (docs/benchmarks.md). MALLOC_ARENA_MAX in the environment,
     * which glibc reads itself, wins. */
    if (!getenv("MALLOC_ARENA_MAX"))
        mallopt(M_ARENA_MAX, 4);
    cli_t c;
    if (parse_cli(argc, argv, &c) != 0)
        return 1;
    int rc = run(&c);
    free(c.args);
    return rc;
}

static int run(cli_t *c)
{
    const char *cmd = c->nargs ? c->args[0] : "serve";
    if (!strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version")) {
        printf("relay-server %s\n", relay_version());
        return 0;
    }
    if (strcmp(cmd, "serve") && strcmp(cmd, "migrate") && strcmp(cmd, "keys") &&
        strcmp(cmd, "upstreams") && strcmp(cmd, "routes")) {
        fprintf(stderr, "relay-server: unknown command '%s'\n\n", cmd);
        usage(stderr);
        return 2;
    }
    relay_config_t *cfg = load_config(c);
    if (!cfg)
        return 1;
    int rc;
    if (c->check_config) {
        printf("configuration OK (%s)\n", cfg->source[0] ? cfg->source : "built-in defaults");
        rc = 0;
    } else if (!strcmp(cmd, "migrate")) {
        rc = cmd_migrate(cfg, c->args, c->nargs);
    } else if (!strcmp(cmd, "keys")) {
        rc = cmd_keys(cfg, c->args, c->nargs);
    } else if (!strcmp(cmd, "upstreams")) {
        rc = cmd_upstreams(cfg, c->args, c->nargs);
    } else if (!strcmp(cmd, "routes")) {
        rc = cmd_routes(cfg);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        /* A file size limit (RLIMIT_FSIZE) fails the write with EFBIG, reported like a full
         * disk, instead of killing the relay with its streams. */
        signal(SIGXFSZ, SIG_IGN);
        rc = cmd_serve(cfg);
    }
    relay_config_free(cfg);
    return rc;
}
