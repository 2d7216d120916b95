/* test_config: .env, config.yaml and environment loading, precedence and positioned errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay/config.h"

/* Every variable the loader reads: saved, cleared before each test and restored after it. */
static const char *const ENV_VARS[] = {
    "UPSTREAM_API_KEY", "UPSTREAM_API_URL", "ADMIN_USERNAME", "ADMIN_PASSWORD", "SECRET_KEY",
    "DATABASE_URL",     "REDIS_URL",        "RELAY_LISTEN",   "RELAY_DATA_DIR", "LOG_LEVEL",
    "RELAY_CONFIG",     "FALLBACK_API_KEY", "CFG_TEST_A",     "CFG_TEST_B",     "CFG_TEST_PORT",
};
#define N_ENV (sizeof ENV_VARS / sizeof ENV_VARS[0])
static char *saved_env[N_ENV];

#define MAX_TMP 8
static char tmp_paths[MAX_TMP][64];
static int n_tmp;

static int setup(void **state)
{
    for (size_t i = 0; i < N_ENV; i++) {
        const char *v = getenv(ENV_VARS[i]);
        saved_env[i] = v ? strdup(v) : NULL;
        unsetenv(ENV_VARS[i]);
    }
    n_tmp = 0;
    return 0;
}

static int teardown(void **state)
{
    for (size_t i = 0; i < N_ENV; i++) {
        if (saved_env[i])
            setenv(ENV_VARS[i], saved_env[i], 1);
        else
            unsetenv(ENV_VARS[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
    for (int i = 0; i < n_tmp; i++)
        unlink(tmp_paths[i]);
    n_tmp = 0;
    return 0;
}

/* Writes text to a new temporary file and returns its path (removed in teardown). */
static const char *tmp_file(const char *text)
{
    assert_true(n_tmp < MAX_TMP);
    char *p = tmp_paths[n_tmp++];
    snprintf(p, 64, "/tmp/relay-cfg-XXXXXX");
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return p;
}

static relay_config_t *load_ok(const char *yaml, const char *env)
{
    relay_config_t *c = NULL;
    relay_error_t err = {0};
    int rc = relay_config_load(&c, yaml, env, &err);
    if (rc)
        fail_msg("unexpected error %d: %s", rc, err.message);
    assert_non_null(c);
    return c;
}

/* Loads yaml_text and asserts the error reads "<tmpfile>:<tail>". */
static void expect_yaml_error(const char *yaml_text, const char *tail)
{
    const char *path = tmp_file(yaml_text);
    relay_config_t *c = (relay_config_t *)1;
    relay_error_t err = {0};
    int rc = relay_config_load(&c, path, "", &err);
    char want[512];
    snprintf(want, sizeof want, "%s:%s", path, tail);
    assert_int_equal(rc, RELAY_ERR_CONFIG);
    assert_int_equal(err.code, RELAY_ERR_CONFIG);
    assert_null(c);
    assert_string_equal(err.message, want);
}

static int has_warning(const relay_config_t *c, const char *text)
{
    for (size_t i = 0; i < c->warnings.n; i++)
        if (strstr(c->warnings.items[i], text))
            return 1;
    return 0;
}

static const relay_tier_def_t *tier(const relay_config_t *c, const char *name)
{
    for (size_t i = 0; i < c->relay.n_tiers; i++)
        if (strcmp(c->relay.tiers[i].name, name) == 0)
            return &c->relay.tiers[i];
    return NULL;
}

static void fixture_path(char *out, size_t cap, const char *rel)
{
    const char *src = getenv("RELAY_SOURCE_DIR");
    if (!src)
        skip();
    snprintf(out, cap, "%s/%s", src, rel);
}

/* ---- defaults ---- */

static void test_defaults_without_files(void **state)
{
    relay_config_t *c = load_ok("", "");
    assert_string_equal(c->source, "");
    assert_string_equal(c->env_source, "");
    assert_int_equal(c->warnings.n, 0);
    assert_string_equal(c->listen, "127.0.0.1:8000");
    assert_int_equal(c->worker_threads, 2500);
    assert_int_equal(c->shutdown_grace_s, 30);
    assert_int_equal(c->forward_event_logging, 0);
    assert_int_equal(c->console_enabled, 1);
    assert_int_equal(c->trusted_proxies.n, 0);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(c->relay.log_level, RELAY_LOG_INFO);
    assert_string_equal(c->metrics_path, "/metrics");
    assert_string_equal(c->health_path, "/health");
    assert_string_equal(c->metrics_key_label, "name");
    assert_null(c->metrics_token);
    assert_string_equal(c->relay.upstream_url, "https://api.anthropic.com");
    assert_null(c->relay.upstream_api_key);
    assert_null(c->relay.database_url);
    assert_null(c->relay.redis_url);
    assert_string_equal(c->relay.data_dir, "./data");
    assert_string_equal(c->relay.key_prefix, "sk-proxy-");
    assert_int_equal(c->relay.default_token_limit, 1000000);
    assert_true(c->relay.warning_threshold == 0.8);
    assert_string_equal(c->relay.admin_username, "admin");
    assert_int_equal(c->relay.max_body_bytes, 33554432);
    assert_int_equal(c->relay.auto_migrate, -1);
    assert_null(c->relay.prices);
    assert_int_equal(c->relay.n_tiers, 3);
    assert_int_equal(tier(c, "basic")->requests, 100);
    assert_int_equal(tier(c, "basic")->period_s, 60);
    assert_int_equal(tier(c, "premium")->requests, 1000);
    assert_int_equal(tier(c, "unlimited")->requests, -1);
    assert_int_equal(c->n_alert_thresholds, 2);
    assert_true(c->alert_thresholds[0] == 0.8 && c->alert_thresholds[1] == 1.0);
    assert_null(c->alert_webhook_url);
    relay_config_free(c);
}

/* NULL paths: ./.env and ./config.yaml when present, RELAY_CONFIG before ./config.yaml. */
static void test_default_paths_in_cwd(void **state)
{
    char old[PATH_MAX], dir[] = "/tmp/relay-cfgdir-XXXXXX";
    assert_non_null(getcwd(old, sizeof old));
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chdir(dir), 0);
    FILE *f = fopen("config.yaml", "w");
    fputs("server:\n  worker_threads: 7\n", f);
    fclose(f);
    f = fopen(".env", "w");
    fputs("RELAY_LISTEN=127.0.0.1:9001\n", f);
    fclose(f);

    relay_config_t *c = load_ok(NULL, NULL);
    assert_string_equal(c->source, "config.yaml");
    assert_string_equal(c->env_source, ".env");
    assert_int_equal(c->worker_threads, 7);
    assert_string_equal(c->listen, "127.0.0.1:9001");
    relay_config_free(c);

    const char *other = tmp_file("server:\n  worker_threads: 9\n");
    setenv("RELAY_CONFIG", other, 1);
    c = load_ok(NULL, NULL);
    assert_string_equal(c->source, other);
    assert_int_equal(c->worker_threads, 9);
    relay_config_free(c);

    unlink("config.yaml");
    unlink(".env");
    assert_int_equal(chdir(old), 0);
    rmdir(dir);
}

static void test_missing_file_is_an_error(void **state)
{
    relay_config_t *c = NULL;
    relay_error_t err = {0};
    assert_int_equal(relay_config_load(&c, "/nonexistent/relay.yaml", "", &err), RELAY_ERR_CONFIG);
    assert_null(c);
    assert_string_equal(err.message,
                        "/nonexistent/relay.yaml: cannot open: No such file or directory");
    assert_int_equal(relay_config_load(&c, "", "/nonexistent/.env", &err), RELAY_ERR_CONFIG);
    assert_string_equal(err.message, "/nonexistent/.env: cannot open: No such file or directory");
}

/* ---- the original relay's config.yaml ---- */

static void test_original_config_loads_unchanged(void **state)
{
    char path[PATH_MAX];
    fixture_path(path, sizeof path, "tests/unit/config_fixtures/original.yaml");
    setenv("UPSTREAM_API_KEY", "sk-ant-test-upstream", 1);
    setenv("ADMIN_PASSWORD", "hunter2-admin", 1);
    relay_config_t *c = load_ok(path, "");

    assert_string_equal(c->relay.upstream_url, "https://api.anthropic.com/v1");
    assert_string_equal(c->relay.upstream_api_key, "sk-ant-test-upstream");
    assert_true(c->relay.upstream_timeout_s == 300);
    assert_int_equal(c->relay.max_retries, 3);
    assert_string_equal(c->upstream_name, "anthropic");
    assert_string_equal(c->app_name, "Claude API Proxy");
    assert_string_equal(c->listen, "0.0.0.0:8000");
    /* SQLAlchemy's driver suffix is dropped so the store understands the URL */
    assert_string_equal(c->relay.database_url, "sqlite:///./data/proxy.db");
    assert_int_equal(c->relay.db_pool_size, 10);
    assert_null(c->relay.redis_url);
    assert_string_equal(c->relay.admin_username, "admin");
    assert_string_equal(c->relay.admin_password, "hunter2-admin");
    assert_string_equal(c->relay.key_prefix, "sk-proxy-");
    assert_int_equal(c->relay.default_token_limit, 1000000);
    assert_true(c->relay.warning_threshold == 0.8);
    assert_int_equal(c->relay.n_tiers, 3);
    assert_int_equal(tier(c, "basic")->requests, 100);
    assert_int_equal(tier(c, "premium")->requests, 1000);
    assert_int_equal(tier(c, "unlimited")->requests, -1);
    assert_int_equal(tier(c, "unlimited")->period_s, 60);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(c->metrics_enabled, 1);
    assert_int_equal(c->cors_enabled, 1);
    assert_int_equal(c->cors_origins.n, 1);
    assert_string_equal(c->cors_origins.items[0], "*");
    assert_int_equal(c->cors_methods.n, 5);
    assert_string_equal(c->cors_methods.items[4], "PATCH");

    /* what the relay does not use is reported with its line, never an error */
    assert_true(has_warning(c, ":16: upstream.fallback: unknown setting, ignored"));
    assert_true(has_warning(c, ":24: database.max_overflow: unknown setting, ignored"));
    assert_true(has_warning(c, ":56: logging.file: unknown setting, ignored"));
    assert_int_equal(c->warnings.n, 3);
    for (size_t i = 0; i < c->warnings.n; i++)
        assert_true(strncmp(c->warnings.items[i], path, strlen(path)) == 0);
    relay_config_free(c);
}

static void test_unset_api_key_means_not_configured(void **state)
{
    const char *path = tmp_file("upstream:\n  primary:\n    api_key: ${UPSTREAM_API_KEY}\n");
    relay_config_t *c = load_ok(path, "");
    assert_null(c->relay.upstream_api_key);
    relay_config_free(c);
}

/* ---- environment ---- */

static void test_env_overrides_yaml(void **state)
{
    const char *path = tmp_file("upstream:\n"
                                "  primary:\n"
                                "    url: https://api.anthropic.com/v1\n"
                                "    api_key: from-yaml\n"
                                "database:\n"
                                "  url: /srv/relay.db\n"
                                "server:\n"
                                "  listen: 127.0.0.1:8100\n"
                                "  data_dir: /srv/data\n"
                                "logging:\n"
                                "  level: error\n");
    setenv("UPSTREAM_API_URL", "http://127.0.0.1:9999", 1);
    setenv("UPSTREAM_API_KEY", "from-env", 1);
    setenv("ADMIN_USERNAME", "root", 1);
    setenv("ADMIN_PASSWORD", "pw", 1);
    setenv("SECRET_KEY", "s3cret", 1);
    setenv("DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:5432/relay", 1);
    setenv("REDIS_URL", "redis://127.0.0.1:6379/0", 1);
    setenv("RELAY_LISTEN", "[::1]:8200", 1);
    setenv("RELAY_DATA_DIR", "/var/lib/relay", 1);
    setenv("LOG_LEVEL", "DEBUG", 1);
    relay_config_t *c = load_ok(path, "");
    assert_string_equal(c->relay.upstream_url, "http://127.0.0.1:9999");
    assert_string_equal(c->relay.upstream_api_key, "from-env");
    assert_string_equal(c->relay.admin_username, "root");
    assert_string_equal(c->relay.admin_password, "pw");
    assert_string_equal(c->relay.secret_key, "s3cret");
    assert_string_equal(c->relay.database_url, "postgresql://u:p@127.0.0.1:5432/relay");
    assert_string_equal(c->relay.redis_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(c->listen, "[::1]:8200");
    assert_string_equal(c->relay.data_dir, "/var/lib/relay");
    assert_string_equal(c->log_level, "debug");
    assert_int_equal(c->relay.log_level, RELAY_LOG_DEBUG);
    relay_config_free(c);

    /* an empty variable counts as unset: the YAML value stays */
    setenv("UPSTREAM_API_KEY", "", 1);
    unsetenv("UPSTREAM_API_URL");
    c = load_ok(path, "");
    assert_string_equal(c->relay.upstream_api_key, "from-yaml");
    assert_string_equal(c->relay.upstream_url, "https://api.anthropic.com/v1");
    relay_config_free(c);
}

static void test_upstream_api_url_override(void **state)
{
    setenv("UPSTREAM_API_URL", "https://gateway.example.com/v1", 1);
    relay_config_t *c = load_ok("", "");
    assert_string_equal(c->relay.upstream_url, "https://gateway.example.com/v1");
    relay_config_free(c);

    relay_error_t err = {0};
    setenv("UPSTREAM_API_URL", "api.anthropic.com", 1);
    assert_int_equal(relay_config_load(&c, "", "", &err), RELAY_ERR_CONFIG);
    assert_null(c);
    assert_string_equal(err.message,
                        "environment: UPSTREAM_API_URL: expected an http:// or https:// URL");
}

static void test_env_errors_do_not_leak_secrets(void **state)
{
    relay_config_t *c = NULL;
    relay_error_t err = {0};
    setenv("DATABASE_URL", "mysql://relay:TopSecretPw@127.0.0.1/relay", 1);
    assert_int_equal(relay_config_load(&c, "", "", &err), RELAY_ERR_CONFIG);
    assert_null(strstr(err.message, "TopSecretPw"));
    assert_string_equal(err.message,
                        "environment: DATABASE_URL: expected postgresql://..., "
                        "sqlite:///path or a file path (other databases are not supported)");
    unsetenv("DATABASE_URL");
    setenv("RELAY_LISTEN", "8000", 1);
    assert_int_equal(relay_config_load(&c, "", "", &err), RELAY_ERR_CONFIG);
    assert_string_equal(err.message, "environment: RELAY_LISTEN: expected host:port with an IP "
                                     "address (e.g. 127.0.0.1:8000 or [::1]:8000)");
    unsetenv("RELAY_LISTEN");
    setenv("LOG_LEVEL", "loud", 1);
    assert_int_equal(relay_config_load(&c, "", "", &err), RELAY_ERR_CONFIG);
    assert_string_equal(err.message,
                        "environment: LOG_LEVEL: expected one of debug, info, warning, error");
}

/* ---- .env ---- */

static void test_dotenv_parsing_and_precedence(void **state)
{
    const char *env = tmp_file("# the relay's secrets\n"
                               "\n"
                               "export UPSTREAM_API_KEY=sk-ant-dotenv\n"
                               "ADMIN_USERNAME = 'lit$eral # not a comment'\n"
                               "ADMIN_PASSWORD=\"two\\nlines \\\"quoted\\\"\"   # comment\n"
                               "SECRET_KEY=plain value # trailing comment\r\n"
                               "CFG_TEST_A=from-dotenv\n"
                               "CFG_TEST_B=first\n"
                               "CFG_TEST_B=second\n"
                               "RELAY_DATA_DIR=\n");
    const char *yaml = tmp_file("app:\n  name: \"${CFG_TEST_A}/${CFG_TEST_B}\"\n");
    setenv("UPSTREAM_API_KEY", "sk-ant-real-env", 1); /* the real environment wins */
    relay_config_t *c = load_ok(yaml, env);
    assert_string_equal(c->env_source, env);
    assert_string_equal(c->relay.upstream_api_key, "sk-ant-real-env");
    assert_string_equal(c->relay.admin_username, "lit$eral # not a comment");
    assert_string_equal(c->relay.admin_password, "two\nlines \"quoted\"");
    assert_string_equal(c->relay.secret_key, "plain value");
    assert_string_equal(c->app_name, "from-dotenv/second");
    assert_string_equal(c->relay.data_dir, "./data"); /* empty: default */
    /* .env values live in the config, not in the process environment */
    assert_null(getenv("CFG_TEST_A"));
    relay_config_free(c);

    unsetenv("UPSTREAM_API_KEY");
    c = load_ok(yaml, env);
    assert_string_equal(c->relay.upstream_api_key, "sk-ant-dotenv");
    relay_config_free(c);
}

static void test_dotenv_errors(void **state)
{
    static const struct {
        const char *text, *tail;
    } cases[] = {
        {"A=1\nthis is not an assignment\n", ":2: expected KEY=VALUE"},
        {"A=1\n\n1ABC=2\n", ":3: expected KEY=VALUE"},
        {"SECRET_KEY='never closed\n", ":1: SECRET_KEY: unterminated quoted value"},
        {"X=1\nSECRET_KEY=\"abc\" junk\n",
         ":2: SECRET_KEY: unexpected text after the closing quote"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *env = tmp_file(cases[i].text);
        relay_config_t *c = NULL;
        relay_error_t err = {0};
        char want[256];
        snprintf(want, sizeof want, "%s%s", env, cases[i].tail);
        assert_int_equal(relay_config_load(&c, "", env, &err), RELAY_ERR_CONFIG);
        assert_null(c);
        assert_string_equal(err.message, want);
        assert_null(strstr(err.message, "never closed"));
        unlink(env);
        n_tmp--;
    }
}

static void test_dotenv_value_error_names_the_line(void **state)
{
    const char *env = tmp_file("# comment\nRELAY_LISTEN=nowhere\n");
    relay_config_t *c = NULL;
    relay_error_t err = {0};
    char want[256];
    snprintf(want, sizeof want,
             "%s:2: RELAY_LISTEN: expected host:port with an IP address (e.g. 127.0.0.1:8000 or "
             "[::1]:8000)",
             env);
    assert_int_equal(relay_config_load(&c, "", env, &err), RELAY_ERR_CONFIG);
    assert_string_equal(err.message, want);
}

/* ---- ${VAR} expansion ---- */

static void test_variable_expansion(void **state)
{
    const char *path = tmp_file("app:\n"
                                "  name: \"pre-${CFG_TEST_A:-fallback}-post\"\n"
                                "  port: ${CFG_TEST_PORT:-8123}\n"
                                "upstream:\n"
                                "  primary:\n"
                                "    api_key: '${CFG_TEST_B}'\n"
                                "    url: ${CFG_TEST_A:-https://api.anthropic.com}\n");
    relay_config_t *c = load_ok(path, "");
    assert_string_equal(c->app_name, "pre-fallback-post");
    assert_string_equal(c->listen, "127.0.0.1:8123");
    assert_null(c->relay.upstream_api_key);
    assert_string_equal(c->relay.upstream_url, "https://api.anthropic.com");
    relay_config_free(c);

    setenv("CFG_TEST_A", "https://relay.example.com", 1);
    setenv("CFG_TEST_B", "sk-ant-xyz", 1);
    setenv("CFG_TEST_PORT", "9100", 1);
    c = load_ok(path, "");
    assert_string_equal(c->app_name, "pre-https://relay.example.com-post");
    assert_string_equal(c->listen, "127.0.0.1:9100");
    assert_string_equal(c->relay.upstream_api_key, "sk-ant-xyz");
    assert_string_equal(c->relay.upstream_url, "https://relay.example.com");
    relay_config_free(c);

    /* ${VAR:-default} also applies when VAR is set but empty */
    setenv("CFG_TEST_PORT", "", 1);
    c = load_ok(path, "");
    assert_string_equal(c->listen, "127.0.0.1:8123");
    relay_config_free(c);
}

/* ---- our own sections ---- */

static void test_server_and_extras(void **state)
{
    const char *path =
        tmp_file("server:\n"
                 "  listen: localhost:8080\n"
                 "  worker_threads: 16\n"
                 "  max_body_size: 8MB\n"
                 "  trusted_proxies: [10.0.0.0/8, \"::1\", 192.168.1.7]\n"
                 "  shutdown_grace_seconds: 0\n"
                 "  forward_event_logging: yes\n"
                 "console:\n"
                 "  enabled: off\n"
                 "app:\n"
                 "  port: 1\n" /* server.listen wins over app.host/app.port */
                 "upstream:\n"
                 "  primary:\n"
                 "    connect_timeout: 2.5\n"
                 "    drain_timeout: 1.5\n"
                 "    retry_base_ms: 10\n"
                 "admin:\n"
                 "  jwt_expire_minutes: 60\n"
                 "api_keys:\n"
                 "  bcrypt_cost: 12\n"
                 "  cache_ttl_ms: 0\n"
                 "  bcrypt_concurrency: 3\n"
                 "  verify_wait_ms: 2500\n"
                 "database:\n"
                 "  auto_migrate: false\n"
                 "redis:\n"
                 "  url: redis://127.0.0.1:6380\n"
                 "  timeout_ms: 50\n"
                 "usage:\n"
                 "  reservation_ceiling: 4096\n"
                 "  weights: {input: 1, output: 5, cache_creation: 1.25, cache_read: 0.1}\n"
                 "  retention_days: 90\n"
                 "alerts:\n"
                 "  thresholds: [1.0, 0.5, 0.9, 0.5]\n"
                 "  webhook_url: https://hooks.example.com/relay\n"
                 "monitoring:\n"
                 "  metrics:\n"
                 "    token: ${CFG_TEST_A:-metrics-token}\n"
                 "    allowed_ips: 127.0.0.1, 10.1.0.0/16\n"
                 "    key_label: off\n");
    relay_config_t *c = load_ok(path, "");
    assert_int_equal(c->warnings.n, 0);
    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_int_equal(c->worker_threads, 16);
    assert_int_equal(c->relay.max_body_bytes, 8 * 1024 * 1024);
    assert_int_equal(c->trusted_proxies.n, 3);
    assert_string_equal(c->trusted_proxies.items[1], "::1");
    assert_int_equal(c->shutdown_grace_s, 0);
    assert_int_equal(c->forward_event_logging, 1);
    assert_int_equal(c->console_enabled, 0);
    assert_true(c->relay.connect_timeout_s == 2.5);
    assert_int_equal(c->relay.drain_timeout_ms, 1500);
    assert_int_equal(c->relay.retry_base_ms, 10);
    assert_int_equal(c->relay.jwt_lifetime_s, 3600);
    assert_int_equal(c->relay.bcrypt_cost, 12);
    assert_int_equal(c->relay.key_cache_ttl_ms, 0);
    assert_int_equal(c->relay.bcrypt_concurrency, 3);
    assert_int_equal(c->relay.key_verify_wait_ms, 2500);
    assert_int_equal(c->relay.auto_migrate, 0);
    assert_string_equal(c->relay.redis_url, "redis://127.0.0.1:6380");
    assert_int_equal(c->relay.redis_timeout_ms, 50);
    assert_int_equal(c->relay.reservation_ceiling, 4096);
    assert_true(c->relay.weight_output == 5 && c->relay.weight_cache_read == 0.1);
    assert_int_equal(c->relay.log_retention_days, 90);
    assert_int_equal(c->n_alert_thresholds, 3); /* sorted, repeats dropped */
    assert_true(c->alert_thresholds[0] == 0.5 && c->alert_thresholds[1] == 0.9 &&
                c->alert_thresholds[2] == 1.0);
    assert_string_equal(c->alert_webhook_url, "https://hooks.example.com/relay");
    assert_string_equal(c->metrics_token, "metrics-token");
    assert_int_equal(c->metrics_allowed_ips.n, 2);
    assert_string_equal(c->metrics_allowed_ips.items[1], "10.1.0.0/16");
    assert_string_equal(c->metrics_key_label, "off");
    relay_config_free(c);
}

static void test_app_host_port_and_debug(void **state)
{
    const char *path = tmp_file("app:\n  host: \"::\"\n  port: 8443\n  debug: true\n");
    relay_config_t *c = load_ok(path, "");
    assert_string_equal(c->listen, "[::]:8443");
    assert_string_equal(c->log_level, "debug");
    relay_config_free(c);
}

static void test_rate_limit_default_and_tiers(void **state)
{
    /* no by_tier: rate_limit.default shapes the default tier, the other built-ins stay */
    const char *a = tmp_file("rate_limit:\n  default: {requests: 30, period: 10}\n");
    relay_config_t *c = load_ok(a, "");
    assert_int_equal(c->relay.n_tiers, 3);
    assert_int_equal(tier(c, "basic")->requests, 30);
    assert_int_equal(tier(c, "basic")->period_s, 10);
    assert_int_equal(tier(c, "premium")->requests, 1000);
    relay_config_free(c);

    /* by_tier given: exactly those tiers, plus the default tier from rate_limit.default */
    const char *b = tmp_file(
        "api_keys:\n  default_tier: starter\n"
        "rate_limit:\n"
        "  default: {requests: 5, period: 1}\n"
        "  by_tier:\n"
        "    gold: {requests: 500, period: 60, tokens_per_minute: 100000, concurrent: 4}\n");
    c = load_ok(b, "");
    assert_int_equal(c->relay.n_tiers, 2);
    assert_string_equal(c->relay.default_tier, "starter");
    assert_int_equal(tier(c, "starter")->requests, 5);
    assert_int_equal(tier(c, "gold")->tokens_per_minute, 100000);
    assert_int_equal(tier(c, "gold")->concurrent, 4);
    assert_null(tier(c, "basic"));
    relay_config_free(c);

    /* both define the default tier and disagree: by_tier wins, with a warning */
    const char *d = tmp_file("rate_limit:\n"
                             "  default:\n    requests: 60\n    period: 60\n"
                             "  by_tier:\n    basic: {requests: 100, period: 60}\n");
    c = load_ok(d, "");
    assert_int_equal(tier(c, "basic")->requests, 100);
    assert_int_equal(c->warnings.n, 1);
    assert_true(has_warning(
        c, ":3: rate_limit.default: differs from rate_limit.by_tier.basic, which is used"));
    relay_config_free(c);
}

static void test_pricing(void **state)
{
    const char *path = tmp_file("pricing:\n"
                                "  - {model_prefix: claude-sonnet-4, input: 3, output: 15}\n"
                                "  - model_prefix: claude-opus-4\n"
                                "    input: 15\n"
                                "    output: 75\n"
                                "    cache_write_5m: 18.75\n"
                                "    cache_write_1h: 30\n"
                                "    cache_read: 1.5\n");
    relay_config_t *c = load_ok(path, "");
    assert_int_equal(c->relay.n_prices, 2);
    const relay_price_t *p = &c->relay.prices[0];
    assert_string_equal(p->model_prefix, "claude-sonnet-4");
    assert_true(p->input == 3 && p->output == 15);
    assert_true(p->cache_write_5m == 3.75 && p->cache_write_1h == 6 &&
                fabs(p->cache_read - 0.3) < 1e-9);
    assert_true(c->relay.prices[1].cache_read == 1.5);
    relay_config_free(c);
}

/* ---- errors: each names file, line, key path and what was expected ---- */

static void test_errors_are_positioned(void **state)
{
    static const struct {
        const char *yaml, *tail;
    } cases[] = {
        {"# tiers\nrate_limit:\n  by_tier:\n    basic:\n      requests: 0\n      period: 60\n",
         "5: rate_limit.by_tier.basic.requests: expected a positive integer (or -1 for unlimited)"},
        {"rate_limit:\n  by_tier:\n    basic: {requests: -2, period: 60}\n",
         "3: rate_limit.by_tier.basic.requests: expected a positive integer (or -1 for unlimited)"},
        {"rate_limit:\n  by_tier:\n    basic:\n      requests: lots\n",
         "4: rate_limit.by_tier.basic.requests: expected a positive integer (or -1 for unlimited)"},
        {"rate_limit:\n  by_tier:\n    basic:\n      requests: 10\n      period: 0\n",
         "5: rate_limit.by_tier.basic.period: expected an integer from 1 to 31536000"},
        {"rate_limit:\n  by_tier:\n    gold:\n      period: 60\n",
         "4: rate_limit.by_tier.gold: missing requests"},
        {"rate_limit:\n  by_tier:\n    \"bad tier\": {requests: 1}\n",
         "3: rate_limit.by_tier.bad tier: expected a tier name of at most 63 letters, digits, '-', "
         "'_' or '.'"},
        {"api_keys:\n  default_tier: gold\n",
         "2: api_keys.default_tier: no tier named gold in rate_limit.by_tier"},
        {"rate_limit:\n  by_tier:\n    gold: {requests: 1}\n",
         "3: rate_limit.by_tier: no tier named basic (api_keys.default_tier); define it or set "
         "api_keys.default_tier"},
        {"upstream:\n  primary:\n    timeout: -5\n",
         "3: upstream.primary.timeout: expected a positive number of seconds"},
        {"upstream:\n  primary:\n    timeout:\n      - 5\n",
         "4: upstream.primary.timeout: expected a positive number of seconds"},
        {"upstream:\n  primary:\n    idle_timeout: 0\n",
         "3: upstream.primary.idle_timeout: expected a positive number of seconds"},
        {"upstream:\n  primary:\n    drain_timeout: -1\n",
         "3: upstream.primary.drain_timeout: expected a non-negative number of seconds (at most "
         "86400)"},
        {"upstream:\n  primary:\n    max_retries: 2.5\n",
         "3: upstream.primary.max_retries: expected an integer from 0 to 20"},
        {"upstream:\n  primary:\n    url: ftp://example.com\n",
         "3: upstream.primary.url: expected an http:// or https:// URL"},
        {"upstream:\n  primary: 5\n", "2: upstream.primary: expected a mapping"},
        {"api_keys:\n  warning_threshold: 1.5\n",
         "2: api_keys.warning_threshold: expected a number in (0, 1]"},
        {"api_keys:\n  warning_threshold: 0\n",
         "2: api_keys.warning_threshold: expected a number in (0, 1]"},
        {"api_keys:\n  bcrypt_cost: 3\n",
         "2: api_keys.bcrypt_cost: expected an integer from 4 to 31"},
        {"api_keys:\n  bcrypt_concurrency: -1\n",
         "2: api_keys.bcrypt_concurrency: expected an integer from 0 to 1024"},
        {"api_keys:\n  verify_wait_ms: 0\n",
         "2: api_keys.verify_wait_ms: expected an integer from 1 to 600000"},
        {"api_keys:\n  prefix: \"sk proxy\"\n",
         "2: api_keys.prefix: expected 1 to 32 letters, digits, '-' or '_'"},
        {"alerts:\n  thresholds: [0.5, 2]\n",
         "2: alerts.thresholds[1]: expected a number in (0, 1]"},
        {"alerts:\n  thresholds:\n    - 0.5\n    - 0\n",
         "4: alerts.thresholds[1]: expected a number in (0, 1]"},
        {"server:\n  listen: localhost\n", "2: server.listen: expected host:port with an IP "
                                           "address (e.g. 127.0.0.1:8000 or [::1]:8000)"},
        {"server:\n  listen: 127.0.0.1:70000\n", "2: server.listen: expected host:port with an IP "
                                                 "address (e.g. 127.0.0.1:8000 or [::1]:8000)"},
        {"server:\n  listen: example.com:80\n", "2: server.listen: expected host:port with an IP "
                                                "address (e.g. 127.0.0.1:8000 or [::1]:8000)"},
        {"server:\n  worker_threads: many\n",
         "2: server.worker_threads: expected an integer from 1 to 16384"},
        {"server:\n  worker_threads:\n",
         "2: server.worker_threads: expected an integer from 1 to 16384"},
        {"server:\n  max_body_size: huge\n", "2: server.max_body_size: expected a size in bytes "
                                             "from 1024 to 1073741824 (e.g. 33554432 or 32MB)"},
        {"server:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n",
         "4: server.trusted_proxies[1]: expected an IP address or CIDR range"},
        {"server:\n  trusted_proxies: [{a: 1}]\n",
         "2: server.trusted_proxies[0]: expected a string"},
        {"app:\n  debug: maybe\n", "2: app.debug: expected true or false"},
        {"app:\n  host: my-host\n",
         "2: app.host: expected an IP address (e.g. 127.0.0.1 or 0.0.0.0)"},
        {"app:\n  port: 65536\n", "2: app.port: expected an integer from 0 to 65535"},
        {"app:\n  port: 1\n  name: x\n  port: 2\n", "4: app.port: duplicate key (first at line 2)"},
        {"database:\n  url: mysql://u:pw@h/db\n",
         "2: database.url: expected postgresql://..., sqlite:///path or a file path (other "
         "databases are not "
         "supported)"},
        {"redis:\n  url: http://127.0.0.1:6379\n",
         "2: redis.url: expected a redis://, rediss:// or unix:// URL"},
        {"logging:\n  level: verbose\n",
         "2: logging.level: expected one of debug, info, warning, error"},
        {"monitoring:\n  metrics:\n    key_label: email\n",
         "3: monitoring.metrics.key_label: expected one of name, id, off"},
        {"monitoring:\n  health:\n    path: health\n",
         "3: monitoring.health.path: expected a URL path starting with /"},
        {"pricing:\n  - model_prefix: claude\n    input: 1\n", "2: pricing[0]: missing output"},
        {"pricing:\n  - {model_prefix: claude, input: 1, output: -3}\n",
         "2: pricing[0].output: expected a non-negative number"},
        {"pricing: {prices: {model_prefix: claude}}\n",
         "1: pricing.prices: expected a list of {model_prefix, input, output, ...}"},
        {"pricing:\n  default: nope\n  prices:\n    - {model_prefix: claude, input: 1, output: "
         "2}\n",
         "2: pricing: default: 'nope' is not the model_prefix of one of the prices"},
        {"budgets:\n  timezone: Mars/Olympus_Mons\n",
         "2: budgets.timezone: unknown time zone (expected an IANA name such as Europe/Berlin, "
         "from the system tz database)"},
        {"budgets:\n  week_starts: Caturday 25:00\n",
         "2: budgets.week_starts: expected a day and time such as \"Monday 00:00\""},
        {"usage:\n  weights:\n    output: -1\n",
         "3: usage.weights.output: expected a non-negative number"},
        {"upstream:\n  primary:\n    api_key: ${UNCLOSED\n",
         "3: upstream.primary.api_key: malformed ${VAR} reference (expected ${NAME} or "
         "${NAME:-default})"},
        {"- app\n- server\n", "1: expected a mapping of sections at the top level"},
        {"app:\n  name: [unclosed\nserver:\n  listen: 1\n",
         "3: invalid YAML: did not find expected ',' or ']' while parsing a flow sequence"},
        {"app:\n\tname: x\n",
         "2: invalid YAML: found character that cannot start any token while scanning for the "
         "next token"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_yaml_error(cases[i].yaml, cases[i].tail);
        unlink(tmp_paths[--n_tmp]);
    }
}

static void test_upstream_pool_loads(void **state)
{
    char yaml[PATH_MAX];
    fixture_path(yaml, sizeof yaml, "tests/unit/config_fixtures/pool.yaml");
    setenv("UPSTREAM_API_KEY", "sk-ant-primary", 1);
    setenv("CFG_TEST_A", "sk-ant-backup", 1);
    setenv("CFG_TEST_B", "sk-ant-team-b", 1);
    relay_config_t *c = load_ok(yaml, "");
    const relay_options_t *o = &c->relay;
    assert_int_equal(c->warnings.n, 0);
    assert_string_equal(o->upstream_name, "main");
    assert_string_equal(o->upstream_api_key, "sk-ant-primary");
    assert_int_equal(o->session_ttl_s, 600);
    assert_int_equal(o->session_max, 5000);
    assert_int_equal(o->n_upstreams, 3);
    const relay_upstream_def_t *b = &o->upstreams[0], *t = &o->upstreams[1], *s = &o->upstreams[2];
    assert_string_equal(b->name, "backup");
    assert_int_equal(b->priority, 1); /* the secondary: only while the others are unavailable */
    assert_int_equal(b->weight, 1);
    assert_int_equal(b->max_retries, -1);
    assert_string_equal(b->api_key, "sk-ant-backup");
    assert_string_equal(t->name, "team-b");
    assert_string_equal(t->api_key, "sk-ant-team-b");
    assert_int_equal(t->weight, 2);
    assert_int_equal(t->priority, 0);
    assert_int_equal(t->n_models, 2);
    assert_string_equal(t->models[1], "claude-haiku-*");
    assert_int_equal(t->max_concurrency, 8);
    assert_true(t->timeout_s == 30);
    assert_int_equal(t->max_retries, 1);
    assert_string_equal(t->group, "team-b");
    assert_string_equal(s->url, "http://127.0.0.1:9");
    assert_string_equal(s->api_key, "sk-ant-inline-spare");
    relay_config_free(c);
}

/* Without a pool the primary alone is the pool, named as before. */
static void test_upstream_primary_alone(void **state)
{
    relay_config_t *c = load_ok("", "");
    assert_int_equal(c->relay.n_upstreams, 0);
    assert_null(c->relay.upstreams);
    assert_string_equal(c->relay.upstream_name, "anthropic");
    relay_config_free(c);
}

static void test_upstream_errors(void **state)
{
    setenv("CFG_TEST_A", "sk-ant-a", 1);
    static const struct {
        const char *yaml, *tail;
    } cases[] = {
        {"upstream:\n  primary:\n    url: https://a.example\n    colour: blue\n",
         "4: upstream.primary.colour: unknown setting"},
        {"upstream:\n  pools: []\n", "2: upstream.pools: unknown setting"},
        {"upstream:\n  pool:\n    - name: a\n      url: https://a.example\n      api_key: k\n"
         "      wieght: 2\n",
         "6: upstream.pool[0].wieght: unknown setting"},
        {"upstream:\n  pool:\n    - name: a\n      api_key: k\n",
         "3: upstream.pool[0]: missing url"},
        {"upstream:\n  pool:\n    - {name: a, url: \"https://a.example\"}\n",
         "3: upstream.pool[0]: missing api_key (empty after ${VAR} expansion?)"},
        {"upstream:\n  pool:\n    - {name: a, url: \"https://a.example\", api_key: "
         "\"${UNSET_X}\"}\n",
         "3: upstream.pool[0]: missing api_key (empty after ${VAR} expansion?)"},
        {"upstream:\n  pool:\n    - {url: \"https://a.example\", api_key: k}\n",
         "3: upstream.pool[0]: missing name"},
        {"upstream:\n  pool:\n    - {name: a, url: \"https://a.example\", api_key: k}\n"
         "    - {name: a, url: \"https://b.example\", api_key: k}\n",
         "4: upstream.pool[1]: duplicate upstream name a (first at line 3)"},
        {"upstream:\n  primary: {name: main}\n  secondary: {name: main, url: "
         "\"https://b.example\", "
         "api_key: \"${CFG_TEST_A}\"}\n",
         "3: upstream.secondary: duplicate upstream name main (upstream.primary)"},
        {"upstream:\n  pool:\n    - {name: anthropic, url: \"https://a.example\", api_key: k}\n",
         "3: upstream.pool[0]: duplicate upstream name anthropic (upstream.primary, by default)"},
        {"upstream:\n  pool:\n    - {name: a, url: \"https://a.example\", api_key: k, weight: 0}\n",
         "3: upstream.pool[0].weight: expected an integer from 1 to 1000000"},
        {"upstream:\n  pool:\n    - {name: a, url: \"https://a.example\", api_key: k, weight: "
         "-1}\n",
         "3: upstream.pool[0].weight: expected an integer from 1 to 1000000"},
        {"upstream:\n  pool:\n    - name: a\n      url: https://a.example\n      api_key: k\n"
         "      models: [\"claude-*\", \"claude [opus]\"]\n",
         "6: upstream.pool[0].models[1]: expected a model pattern of 1 to 63 letters, digits, '-', "
         "'_', '.', ':', '@', '/' and the wildcards '*' and '?'"},
        {"upstream:\n  pool:\n    - {name: \"a b\", url: \"https://a.example\", api_key: k}\n",
         "3: upstream.pool[0].name: expected a name of 1 to 63 letters, digits, '-', '_' or '.'"},
        {"upstream:\n  pool:\n    - {name: a, url: \"ftp://a.example\", api_key: k}\n",
         "3: upstream.pool[0].url: expected an http:// or https:// URL"},
        {"upstream:\n  pool: {name: a}\n",
         "2: upstream.pool: expected a list of {name, url, api_key, ...}"},
        {"upstream:\n  secondary: [1]\n",
         "2: upstream.secondary: expected a mapping with name, url and api_key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_yaml_error(cases[i].yaml, cases[i].tail);
        unlink(tmp_paths[--n_tmp]);
    }
}

static void test_yaml_error_never_shows_the_value(void **state)
{
    setenv("ADMIN_PASSWORD", "VerySecretValue", 1);
    expect_yaml_error("admin:\n  login_max_failures: ${ADMIN_PASSWORD}\n",
                      "2: admin.login_max_failures: expected a positive integer");
}

static void test_warning_for_unknown_key_has_position(void **state)
{
    const char *path = tmp_file("app:\n  name: x\n  workers: 4\nmystery:\n  a: 1\n");
    relay_config_t *c = load_ok(path, "");
    assert_int_equal(c->warnings.n, 2);
    char want[128];
    snprintf(want, sizeof want, "%s:3: app.workers: unknown setting, ignored", path);
    assert_string_equal(c->warnings.items[0], want);
    snprintf(want, sizeof want, "%s:4: mystery: unknown setting, ignored", path);
    assert_string_equal(c->warnings.items[1], want);
    relay_config_free(c);
}

static void test_empty_file_gives_defaults(void **state)
{
    const char *path = tmp_file("# nothing yet\n");
    relay_config_t *c = load_ok(path, "");
    assert_string_equal(c->source, path);
    assert_string_equal(c->listen, "127.0.0.1:8000");
    assert_int_equal(c->relay.n_tiers, 3);
    relay_config_free(c);
}

static void test_oversized_file_is_refused(void **state)
{
    size_t n = 1024 * 1024 + 2;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = i % 64 == 63 ? '\n' : '#';
    big[n] = 0;
    const char *path = tmp_file(big);
    free(big);
    relay_config_t *c = NULL;
    relay_error_t err = {0};
    char want[128];
    snprintf(want, sizeof want, "%s: larger than 1048576 bytes", path);
    assert_int_equal(relay_config_load(&c, path, "", &err), RELAY_ERR_CONFIG);
    assert_null(c);
    assert_string_equal(err.message, want);
}

/* ---- the shipped examples ---- */

static void test_example_files_load(void **state)
{
    char yaml[PATH_MAX], env[PATH_MAX];
    fixture_path(yaml, sizeof yaml, "config.example.yaml");
    fixture_path(env, sizeof env, ".env.example");
    relay_config_t *c = load_ok(yaml, env);
    for (size_t i = 0; i < c->warnings.n; i++)
        print_error("warning: %s\n", c->warnings.items[i]);
    assert_int_equal(c->warnings.n, 0);
    relay_config_t *d = load_ok("", "");

    /* the examples document the defaults, so they must load to the same settings */
    assert_string_equal(c->listen, d->listen);
    assert_int_equal(c->worker_threads, d->worker_threads);
    assert_int_equal(c->shutdown_grace_s, d->shutdown_grace_s);
    assert_string_equal(c->relay.upstream_url, d->relay.upstream_url);
    const relay_options_t *a = &c->relay, *b = &d->relay;
    assert_true(a->upstream_timeout_s == b->upstream_timeout_s);
    assert_true(a->connect_timeout_s == b->connect_timeout_s);
    assert_true(a->first_byte_timeout_s == b->first_byte_timeout_s);
    assert_true(a->idle_timeout_s == b->idle_timeout_s);
    assert_int_equal(a->max_retries, b->max_retries);
    assert_int_equal(a->retry_base_ms, b->retry_base_ms);
    assert_int_equal(a->retry_max_ms, b->retry_max_ms);
    assert_int_equal(a->max_body_bytes, b->max_body_bytes);
    assert_int_equal(a->drain_timeout_ms, b->drain_timeout_ms);
    assert_int_equal(a->db_pool_size, b->db_pool_size);
    assert_int_equal(a->redis_timeout_ms, b->redis_timeout_ms);
    assert_string_equal(a->key_prefix, b->key_prefix);
    assert_int_equal(a->default_token_limit, b->default_token_limit);
    assert_true(a->warning_threshold == b->warning_threshold);
    assert_int_equal(a->bcrypt_cost, b->bcrypt_cost);
    assert_int_equal(a->key_cache_ttl_ms, b->key_cache_ttl_ms);
    assert_int_equal(a->key_cache_max, b->key_cache_max);
    assert_int_equal(a->bcrypt_concurrency, b->bcrypt_concurrency);
    assert_int_equal(a->key_verify_wait_ms, b->key_verify_wait_ms);
    assert_string_equal(a->default_tier, b->default_tier);
    assert_string_equal(a->admin_username, b->admin_username);
    assert_int_equal(a->jwt_lifetime_s, b->jwt_lifetime_s);
    assert_int_equal(a->login_max_failures, b->login_max_failures);
    assert_int_equal(a->login_window_s, b->login_window_s);
    assert_int_equal(a->login_cooldown_s, b->login_cooldown_s);
    assert_int_equal(a->n_tiers, b->n_tiers);
    for (size_t i = 0; i < a->n_tiers; i++)
        assert_memory_equal(&a->tiers[i], &b->tiers[i], sizeof a->tiers[i]);
    assert_int_equal(a->reservation_ceiling, b->reservation_ceiling);
    assert_true(a->weight_input == b->weight_input && a->weight_output == b->weight_output &&
                a->weight_cache_creation == b->weight_cache_creation &&
                a->weight_cache_read == b->weight_cache_read);
    assert_int_equal(a->usage_queue_max, b->usage_queue_max);
    assert_int_equal(a->usage_batch_max, b->usage_batch_max);
    assert_int_equal(a->usage_flush_ms, b->usage_flush_ms);
    assert_int_equal(a->log_retention_days, b->log_retention_days);
    assert_int_equal(a->log_level, b->log_level);
    assert_string_equal(c->metrics_path, d->metrics_path);
    assert_string_equal(c->health_path, d->health_path);
    assert_string_equal(c->metrics_key_label, d->metrics_key_label);
    assert_int_equal(c->metrics_enabled, d->metrics_enabled);
    assert_int_equal(c->console_enabled, d->console_enabled);
    assert_int_equal(c->cors_enabled, d->cors_enabled);
    assert_int_equal(c->n_alert_thresholds, d->n_alert_thresholds);
    assert_int_equal(c->alert_webhook_timeout_ms, d->alert_webhook_timeout_ms);
    relay_config_free(d);
    relay_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults_without_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_paths_in_cwd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_original_config_loads_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unset_api_key_means_not_configured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_overrides_yaml, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_api_url_override, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_errors_do_not_leak_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_parsing_and_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_value_error_names_the_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_variable_expansion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_and_extras, setup, teardown),
        cmocka_unit_test_setup_teardown(test_app_host_port_and_debug, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit_default_and_tiers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pricing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_are_positioned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_error_never_shows_the_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_pool_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_primary_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warning_for_unknown_key_has_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_gives_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_file_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_example_files_load, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
