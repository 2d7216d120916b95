/* config: .env, config.yaml (libyaml) and the environment into relay_config_t, with positioned
 * errors. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#include "relay/config.h"
#include "relay/upstreams.h"
#include "buf.h"
#include "tz.h"
#include "util.h"

#define CFG_MAX_FILE      (1024 * 1024) /* config.yaml and .env are small; refuse anything odd */
#define CFG_MAX_VALUE     (64 * 1024)   /* one scalar after ${VAR} expansion */
#define CFG_MAX_WARNINGS  64
#define CFG_MAX_TIERS     64
#define CFG_MAX_PRICES    256
#define CFG_MAX_ENTRIES   1024 /* entries of one mapping or list */
#define CFG_MAX_UPSTREAMS 64   /* secondary and pool entries */

/* relay_error_set, with the code as the visible result so callers (and analysers) see failure. */
#define CFG_ERR(err, code, ...) (relay_error_set((err), (code), __VA_ARGS__), (code))

typedef struct dotenv_var {
    const char *key;
    const char *value;
    int line;
} dotenv_var_t;

struct relay_config_priv {
    void **owned; /* every string and array the config points to */
    size_t n_owned, cap_owned;
    dotenv_var_t *env;
    size_t n_env, cap_env;
};

/* ---- ownership ---- */

/* Takes p into the config's care; frees it and fails when even that bookkeeping cannot grow. */
static int own(relay_config_t *c, void *p)
{
    struct relay_config_priv *pv = c->priv;
    if (!p)
        return RELAY_ERR_NOMEM;
    if (pv->n_owned == pv->cap_owned) {
        size_t cap = pv->cap_owned ? pv->cap_owned * 2 : 64;
        void **o = realloc(pv->owned, cap * sizeof *o);
        if (!o) {
            free(p);
            return RELAY_ERR_NOMEM;
        }
        pv->owned = o;
        pv->cap_owned = cap;
    }
    pv->owned[pv->n_owned++] = p;
    return 0;
}

static char *own_strndup(relay_config_t *c, const char *s, size_t n)
{
    char *d = strndup(s, n);
    return own(c, d) == 0 ? d : NULL;
}

/* A copy of n items of size bytes, owned by the config; NULL when out of memory. */
static void *own_copy(relay_config_t *c, const void *src, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (own(c, p))
        return NULL;
    memcpy(p, src, n * size);
    return p;
}

static char *own_strdup(relay_config_t *c, const char *s)
{
    return own_strndup(c, s, strlen(s));
}

static int strlist_add(relay_config_strlist_t *l, char *s)
{
    if (l->n >= CFG_MAX_ENTRIES)
        return RELAY_ERR_TOO_LARGE;
    char **items = realloc(l->items, (l->n + 1) * sizeof *items);
    if (!items)
        return RELAY_ERR_NOMEM;
    l->items = items;
    l->items[l->n++] = s;
    return 0;
}

static void strlist_clear(relay_config_strlist_t *l)
{
    free(l->items); /* the strings themselves are owned by the config */
    l->items = NULL;
    l->n = 0;
}

/* ---- small parsers shared by the YAML and environment paths ---- */

/* A decimal integer; YAML 1.1 allows '_' between digits (1_000_000), as PyYAML did. */
static int parse_i64(const char *s, int64_t *out)
{
    char digits[32];
    size_t n = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '_' && p != s && isdigit((unsigned char)p[-1]) && isdigit((unsigned char)p[1]))
            continue;
        if (n + 1 >= sizeof digits)
            return -1;
        digits[n++] = *p;
    }
    digits[n] = 0;
    if (n == 0)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(digits, &end, 10);
    if (errno || *end || end == digits ||
        !(isdigit((unsigned char)digits[0]) || digits[0] == '-' || digits[0] == '+'))
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* YAML 1.1 booleans, plus 1/0 (the original relay's pydantic accepted those). */
static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

/* "32MB", "512K", "1GiB" or plain bytes. */
static int parse_size(const char *s, int64_t *out)
{
    char num[32];
    size_t n = 0;
    while (isdigit((unsigned char)s[n]) || s[n] == '_')
        n++;
    if (n == 0 || n >= sizeof num)
        return -1;
    memcpy(num, s, n);
    num[n] = 0;
    int64_t v;
    if (parse_i64(num, &v))
        return -1;
    const char *u = s + n;
    while (*u == ' ')
        u++;
    int64_t mul = 1;
    if (*u) {
        switch (toupper((unsigned char)*u)) {
        case 'K':
            mul = 1024;
            break;
        case 'M':
            mul = 1024 * 1024;
            break;
        case 'G':
            mul = 1024 * 1024 * 1024;
            break;
        case 'B':
            mul = 1;
            u--;
            break;
        default:
            return -1;
        }
        u++;
        if (strcasecmp(u, "") && strcasecmp(u, "B") && strcasecmp(u, "iB"))
            return -1;
    }
    if (v > INT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

static int is_ip(const char *s, int *v6)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, s, a) == 1)
        return *v6 = 0, 1;
    if (inet_pton(AF_INET6, s, a) == 1)
        return *v6 = 1, 1;
    return 0;
}

static const char *check_ip_or_cidr(const char *s)
{
    static const char *const expect = "expected an IP address or CIDR range";
    char host[64];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    int v6;
    if (hl == 0 || hl >= sizeof host)
        return expect;
    memcpy(host, s, hl);
    host[hl] = 0;
    if (!is_ip(host, &v6))
        return expect;
    if (slash) {
        int64_t bits;
        if (!isdigit((unsigned char)slash[1]) || parse_i64(slash + 1, &bits) ||
            bits > (v6 ? 128 : 32))
            return expect;
    }
    return NULL;
}

/* Turns "127.0.0.1:8000", "[::1]:8000" or "localhost:8000" into CivetWeb's listening form. */
static const char *parse_listen(const char *s, char *out, size_t cap)
{
    static const char *const expect =
        "expected host:port with an IP address (e.g. 127.0.0.1:8000 or [::1]:8000)";
    char host[64];
    const char *colon;
    int v6 = 0;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof host)
            return expect;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = 0;
        colon = close + 1;
        if (!is_ip(host, &v6) || !v6)
            return expect;
    } else {
        colon = strrchr(s, ':');
        if (!colon || colon == s || (size_t)(colon - s) >= sizeof host)
            return expect;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
        if (strcmp(host, "localhost") == 0)
            relay_strlcpy(host, "127.0.0.1", sizeof host);
        if (!is_ip(host, &v6) || v6)
            return expect;
    }
    int64_t port;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p) || parse_i64(p, &port) ||
        port > 65535)
        return expect;
    if ((size_t)snprintf(out, cap, v6 ? "[%s]:%" PRId64 : "%s:%" PRId64, host, port) >= cap)
        return expect;
    return NULL;
}

static const char *check_http_url(const char *s)
{
    size_t skip = strncasecmp(s, "https://", 8) == 0  ? 8
                  : strncasecmp(s, "http://", 7) == 0 ? 7
                                                      : 0;
    if (!skip || !s[skip] || s[skip] == '/')
        return "expected an http:// or https:// URL";
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ')
            return "expected an http:// or https:// URL";
    return NULL;
}

static const char *check_redis_url(const char *s)
{
    if (strncasecmp(s, "redis://", 8) && strncasecmp(s, "rediss://", 9) &&
        strncasecmp(s, "unix://", 7))
        return "expected a redis://, rediss:// or unix:// URL";
    return NULL;
}

/*
 * The original relay wrote SQLAlchemy URLs ("postgresql+asyncpg://", "sqlite+aiosqlite:///x.db");
 * the driver part is dropped so those .env files work unchanged. Never echoes the URL: it may hold
 * a password.
 */
static const char *norm_db_url(relay_config_t *c, const char *s, const char **out)
{
    static const char *const expect = "expected postgresql://..., sqlite:///path or a file path "
                                      "(other databases are not supported)";
    const char *sep = strstr(s, "://");
    if (!sep) {
        *out = s;
        return NULL;
    }
    size_t scheme = (size_t)(sep - s);
    const char *plus = memchr(s, '+', scheme);
    size_t base = plus ? (size_t)(plus - s) : scheme;
    const char *kind = NULL;
    if (base == 10 && strncasecmp(s, "postgresql", 10) == 0)
        kind = "postgresql";
    else if (base == 8 && strncasecmp(s, "postgres", 8) == 0)
        kind = "postgresql";
    else if (base == 6 && strncasecmp(s, "sqlite", 6) == 0)
        kind = "sqlite";
    if (!kind)
        return expect;
    if (!plus && strncmp(s, kind, base) == 0) {
        *out = s;
        return NULL;
    }
    size_t kl = strlen(kind), rest = strlen(sep);
    char *d = malloc(kl + rest + 1);
    if (own(c, d))
        return "out of memory";
    memcpy(d, kind, kl);
    memcpy(d + kl, sep, rest + 1);
    *out = d;
    return NULL;
}

static const char *parse_log_level(const char *s, char *name, size_t cap, relay_log_level *lvl)
{
    static const struct {
        const char *in, *name;
        relay_log_level lvl;
    } L[] = {{"debug", "debug", RELAY_LOG_DEBUG},    {"info", "info", RELAY_LOG_INFO},
             {"warning", "warning", RELAY_LOG_WARN}, {"warn", "warning", RELAY_LOG_WARN},
             {"error", "error", RELAY_LOG_ERROR},    {"critical", "error", RELAY_LOG_ERROR}};
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
        if (strcasecmp(s, L[i].in) == 0) {
            relay_strlcpy(name, L[i].name, cap);
            *lvl = L[i].lvl;
            return NULL;
        }
    }
    return "expected one of debug, info, warning, error";
}

static const char *check_path(const char *s)
{
    if (s[0] != '/' || strpbrk(s, " \t\r\n?#"))
        return "expected a URL path starting with /";
    return NULL;
}

static const char *check_key_label(const char *s)
{
    return strcmp(s, "name") && strcmp(s, "id") && strcmp(s, "off")
               ? "expected one of name, id, off"
               : NULL;
}

static const char *check_log_format(const char *s)
{
    return strcmp(s, "json") && strcmp(s, "text") ? "expected one of json, text" : NULL;
}

static const char *check_key_prefix(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32 ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != n)
        return "expected 1 to 32 letters, digits, '-' or '_'";
    return NULL;
}

static const char *check_tier_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n >= sizeof(((relay_tier_def_t *)0)->name) ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != n)
        return "expected a tier name of at most 63 letters, digits, '-', '_' or '.'";
    return NULL;
}

/* ---- the .env file ---- */

static int read_file(const char *path, char **data, size_t *len, relay_error_t *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return CFG_ERR(err, RELAY_ERR_CONFIG, "%s: cannot open: %s", path, strerror(errno));
    relay_buf_t b;
    relay_buf_init(&b, CFG_MAX_FILE);
    char chunk[8192];
    size_t n;
    int rc = 0;
    while (!rc && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rc = relay_buf_append(&b, chunk, n);
    int rerr = ferror(f);
    fclose(f);
    if (rc == RELAY_ERR_TOO_LARGE || (!rc && rerr)) {
        relay_buf_free(&b);
        return rc ? CFG_ERR(err, RELAY_ERR_CONFIG, "%s: larger than %d bytes", path, CFG_MAX_FILE)
                  : CFG_ERR(err, RELAY_ERR_CONFIG, "%s: read error", path);
    }
    if (rc) {
        relay_buf_free(&b);
        return CFG_ERR(err, rc, "out of memory");
    }
    *len = b.len;
    *data = b.data ? relay_buf_detach(&b) : strdup("");
    return *data ? 0 : CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
}

static int dotenv_add(relay_config_t *c, const char *key, size_t kl, const char *val, size_t vl,
                      int line)
{
    struct relay_config_priv *pv = c->priv;
    if (pv->n_env == pv->cap_env) {
        size_t cap = pv->cap_env ? pv->cap_env * 2 : 32;
        dotenv_var_t *e = realloc(pv->env, cap * sizeof *e);
        if (!e)
            return RELAY_ERR_NOMEM;
        pv->env = e;
        pv->cap_env = cap;
    }
    const char *k = own_strndup(c, key, kl), *v = own_strndup(c, val, vl);
    if (!k || !v)
        return RELAY_ERR_NOMEM;
    pv->env[pv->n_env++] = (dotenv_var_t){k, v, line};
    return 0;
}

/* After a closing quote only blanks or a comment may follow. */
static int rest_is_blank(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p == end || *p == '#';
}

/* Parses the value part of one line into b; returns NULL or what was wrong (never the value). */
static const char *dotenv_value(const char *p, const char *end, relay_buf_t *b)
{
    if (p < end && *p == '\'') {
        const char *q = memchr(p + 1, '\'', (size_t)(end - p - 1));
        if (!q)
            return "unterminated quoted value";
        if (relay_buf_append(b, p + 1, (size_t)(q - p - 1)))
            return "value too long";
        return rest_is_blank(q + 1, end) ? NULL : "unexpected text after the closing quote";
    }
    if (p < end && *p == '"') {
        for (p++; p < end && *p != '"'; p++) {
            char ch = *p;
            if (ch == '\\' && p + 1 < end) {
                char e = *++p;
                ch = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
                if (!strchr("ntr\\\"$'", e) && relay_buf_append(b, "\\", 1))
                    return "value too long";
            }
            if (relay_buf_append(b, &ch, 1))
                return "value too long";
        }
        if (p >= end)
            return "unterminated quoted value";
        return rest_is_blank(p + 1, end) ? NULL : "unexpected text after the closing quote";
    }
    const char *v_end = p;
    for (const char *q = p; q < end; q++) {
        if (*q == '#' && (q == p || q[-1] == ' ' || q[-1] == '\t'))
            break;
        v_end = q + 1;
    }
    while (v_end > p && (v_end[-1] == ' ' || v_end[-1] == '\t'))
        v_end--;
    return relay_buf_append(b, p, (size_t)(v_end - p)) ? "value too long" : NULL;
}

static int dotenv_line(relay_config_t *c, const char *path, int line, const char *p,
                       const char *end, relay_error_t *err)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p == end || *p == '#')
        return 0;
    if (end - p > 7 && strncmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t'))
        for (p += 6; p < end && (*p == ' ' || *p == '\t');)
            p++;
    const char *key = p;
    if (p < end && (isalpha((unsigned char)*p) || *p == '_'))
        while (p < end && (isalnum((unsigned char)*p) || *p == '_'))
            p++;
    size_t kl = (size_t)(p - key);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (kl == 0 || p == end || *p != '=')
        return CFG_ERR(err, RELAY_ERR_CONFIG, "%s:%d: expected KEY=VALUE", path, line);
    for (p++; p < end && (*p == ' ' || *p == '\t');)
        p++;
    relay_buf_t b;
    relay_buf_init(&b, CFG_MAX_VALUE);
    const char *bad = dotenv_value(p, end, &b);
    int rc = bad ? CFG_ERR(err, RELAY_ERR_CONFIG, "%s:%d: %.*s: %s", path, line, (int)kl, key, bad)
                 : dotenv_add(c, key, kl, relay_buf_str(&b), b.len, line);
    relay_buf_free(&b);
    if (rc == RELAY_ERR_NOMEM)
        relay_error_set(err, rc, "out of memory");
    return rc;
}

static int dotenv_parse(relay_config_t *c, const char *path, const char *text, size_t len,
                        relay_error_t *err)
{
    const char *p = text, *end = text + len;
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *stop = le > p && le[-1] == '\r' ? le - 1 : le;
        int rc = dotenv_line(c, path, line, p, stop, err);
        if (rc)
            return rc;
        p = nl ? nl + 1 : end;
    }
    return 0;
}

static int load_dotenv(relay_config_t *c, const char *env_path, relay_error_t *err)
{
    if (env_path && !*env_path)
        return 0;
    if (!env_path) {
        if (access(".env", F_OK) != 0)
            return 0;
        env_path = ".env";
    }
    char *text;
    size_t len;
    int rc = read_file(env_path, &text, &len, err);
    if (rc)
        return rc;
    relay_strlcpy(c->env_source, env_path, sizeof c->env_source);
    rc = dotenv_parse(c, env_path, text, len, err);
    free(text);
    return rc;
}

/* The real environment first (it always wins), then the .env file (its last assignment). */
static const char *env_get(const relay_config_t *c, const char *name, int *line)
{
    const char *v = getenv(name);
    *line = 0;
    if (v)
        return v;
    for (size_t i = c->priv->n_env; i-- > 0;) {
        if (strcmp(c->priv->env[i].key, name) == 0) {
            *line = c->priv->env[i].line;
            return c->priv->env[i].value;
        }
    }
    return NULL;
}

/* ---- walking the YAML document ---- */

typedef struct ctx ctx_t;
typedef struct field field_t;
/* Reads node n into base + f->off. */
typedef int (*field_fn)(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);

struct field {
    const char *key;
    field_fn fn;
    size_t off;
    int64_t min, max; /* integer range; for f_strbuf max is the buffer size; for f_num the mode */
    int64_t scale;    /* integers: multiplied after the range check (minutes → seconds) */
    const field_t *sub;
    const char *(*check)(const char *s); /* strings: NULL or what was expected */
};

struct ctx {
    relay_config_t *c;
    relay_error_t *err;
    const char *file;
    yaml_document_t *doc;
    char path[512];
    size_t path_len;
    /* remembered during the walk, resolved afterwards */
    int have_listen, have_app_host, have_app_port, app_port, app_host_line;
    char app_host[64];
    int have_log_level, app_debug, have_thresholds;
    relay_tier_def_t tiers[CFG_MAX_TIERS];
    size_t n_tiers;
    int by_tier_line;
    relay_tier_def_t default_def;
    int have_default_def, default_def_line, default_tier_line;
    int strict; /* unknown keys are errors (the upstream section) */
    relay_upstream_def_t ups[CFG_MAX_UPSTREAMS];
    int ups_line[CFG_MAX_UPSTREAMS];
    char ups_path[CFG_MAX_UPSTREAMS][48];
    size_t n_ups;
    int primary_name_line;
};

static unsigned long node_line(const yaml_node_t *n)
{
    return n ? (unsigned long)n->start_mark.line + 1 : 1;
}

static size_t path_push(ctx_t *x, const char *key)
{
    size_t old = x->path_len;
    int w = snprintf(x->path + old, sizeof x->path - old, "%s%s", old ? "." : "", key);
    x->path_len = w < 0                               ? old
                  : old + (size_t)w >= sizeof x->path ? sizeof x->path - 1
                                                      : old + (size_t)w;
    return old;
}

static size_t path_push_index(ctx_t *x, size_t i)
{
    size_t old = x->path_len;
    int w = snprintf(x->path + old, sizeof x->path - old, "[%zu]", i);
    x->path_len = w < 0                               ? old
                  : old + (size_t)w >= sizeof x->path ? sizeof x->path - 1
                                                      : old + (size_t)w;
    return old;
}

static void path_pop(ctx_t *x, size_t old)
{
    x->path_len = old;
    x->path[old] = 0;
}

static int vfail_at(ctx_t *x, unsigned long line, const char *path, const char *fmt, va_list ap)
{
    char what[RELAY_ERRMSG_MAX];
    vsnprintf(what, sizeof what, fmt, ap);
    return CFG_ERR(x->err, RELAY_ERR_CONFIG, "%s:%lu: %s%s%s", x->file, line, path,
                   *path ? ": " : "", what);
}

static int fail_at(ctx_t *x, unsigned long line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(ctx_t *x, unsigned long line, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail_at(x, line, path, fmt, ap);
    va_end(ap);
    return rc;
}

/* An error at node n under the current key path. */
static int fail(ctx_t *x, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(ctx_t *x, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail_at(x, node_line(n), x->path, fmt, ap);
    va_end(ap);
    return rc;
}

static int nomem(ctx_t *x)
{
    return CFG_ERR(x->err, RELAY_ERR_NOMEM, "out of memory");
}

static int warn_at(ctx_t *x, unsigned long line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int warn_at(ctx_t *x, unsigned long line, const char *path, const char *fmt, ...)
{
    relay_config_strlist_t *w = &x->c->warnings;
    if (w->n >= CFG_MAX_WARNINGS)
        return 0;
    char what[256], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (w->n == CFG_MAX_WARNINGS - 1)
        snprintf(msg, sizeof msg, "%s: further warnings suppressed", x->file);
    else
        snprintf(msg, sizeof msg, "%s:%lu: %s%s%s", x->file, line, path, *path ? ": " : "", what);
    char *s = own_strdup(x->c, msg);
    if (!s || strlist_add(w, s))
        return nomem(x);
    return 0;
}

static int is_null(const yaml_node_t *n)
{
    if (!n)
        return 1;
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

/* Expands ${VAR} and ${VAR:-default} (default also when VAR is empty; not nested). */
static int expand(ctx_t *x, const yaml_node_t *n, const char *in, size_t len, char **out)
{
    relay_buf_t b;
    relay_buf_init(&b, CFG_MAX_VALUE);
    int rc = 0;
    for (size_t i = 0; i < len && !rc; i++) {
        if (in[i] != '$' || i + 1 >= len || in[i + 1] != '{') {
            rc = relay_buf_append(&b, in + i, 1);
            continue;
        }
        const char *start = in + i + 2, *close = memchr(start, '}', len - i - 2);
        size_t nl =
            strspn(start, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_");
        if (!close || nl == 0 || nl >= 128 || isdigit((unsigned char)*start) ||
            (start[nl] != '}' && strncmp(start + nl, ":-", 2) != 0)) {
            relay_buf_free(&b);
            return fail(x, n, "malformed ${VAR} reference (expected ${NAME} or ${NAME:-default})");
        }
        char name[128];
        memcpy(name, start, nl);
        name[nl] = 0;
        int line;
        const char *v = env_get(x->c, name, &line);
        if (start[nl] == ':' && (!v || !*v))
            rc = relay_buf_append(&b, start + nl + 2, (size_t)(close - start - nl - 2));
        else if (v)
            rc = relay_buf_appends(&b, v);
        i = (size_t)(close - in);
    }
    if (rc) {
        relay_buf_free(&b);
        return rc == RELAY_ERR_TOO_LARGE ? fail(x, n, "value longer than %d bytes", CFG_MAX_VALUE)
                                         : nomem(x);
    }
    *out = b.data ? relay_buf_detach(&b) : strdup("");
    return own(x->c, *out) ? nomem(x) : 0;
}

/* The scalar's expanded value (owned by the config), or NULL for a YAML null. */
static int scalar(ctx_t *x, yaml_node_t *n, const char *expect, const char **out)
{
    *out = NULL;
    if (is_null(n))
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return fail(x, n, "expected %s", expect);
    char *s = NULL;
    int rc = expand(x, n, (const char *)n->data.scalar.value, n->data.scalar.length, &s);
    if (rc)
        return rc;
    *out = s;
    return 0;
}

typedef int (*pair_fn)(ctx_t *x, yaml_node_t *k, yaml_node_t *v, void *arg);

/* Calls fn for each key of mapping n with the key pushed on the path; refuses duplicate keys. */
static int each_pair(ctx_t *x, yaml_node_t *n, const char *expect, pair_fn fn, void *arg)
{
    if (is_null(n))
        return 0;
    if (n->type != YAML_MAPPING_NODE)
        return fail(x, n, "expected %s", expect);
    yaml_node_pair_t *first = n->data.mapping.pairs.start, *top = n->data.mapping.pairs.top;
    if (top - first > CFG_MAX_ENTRIES)
        return fail(x, n, "more than %d entries", CFG_MAX_ENTRIES);
    for (yaml_node_pair_t *p = first; p < top; p++) {
        yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fail(x, k ? k : n, "expected a plain key");
        const char *key = (const char *)k->data.scalar.value;
        size_t mark = path_push(x, key);
        int rc = 0;
        for (yaml_node_pair_t *q = first; q < p && !rc; q++) {
            yaml_node_t *qk = yaml_document_get_node(x->doc, q->key);
            if (qk && qk->type == YAML_SCALAR_NODE &&
                strcmp((const char *)qk->data.scalar.value, key) == 0)
                rc = fail(x, k, "duplicate key (first at line %lu)", node_line(qk));
        }
        if (!rc)
            rc = fn(x, k, v, arg);
        path_pop(x, mark);
        if (rc)
            return rc;
    }
    return 0;
}

typedef int (*item_fn)(ctx_t *x, yaml_node_t *item, size_t i, void *arg);

/* Calls fn for each item of sequence n with its index pushed on the path. */
static int each_item(ctx_t *x, yaml_node_t *n, item_fn fn, void *arg)
{
    size_t i = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++, i++) {
        size_t mark = path_push_index(x, i);
        int rc = fn(x, yaml_document_get_node(x->doc, *it), i, arg);
        path_pop(x, mark);
        if (rc)
            return rc;
    }
    return 0;
}

typedef struct walk_arg {
    const field_t *fields;
    void *base;
} walk_arg_t;

static int walk_pair(ctx_t *x, yaml_node_t *k, yaml_node_t *v, void *arg)
{
    walk_arg_t *w = arg;
    const char *key = (const char *)k->data.scalar.value;
    for (const field_t *f = w->fields; f->key; f++)
        if (strcmp(f->key, key) == 0 && f->fn)
            return f->fn(x, v, f, w->base);
        else if (strcmp(f->key, key) == 0) /* known, and ignored on purpose */
            return warn_at(x, node_line(k), x->path, "unknown setting, ignored");
    if (x->strict)
        return fail(x, k, "unknown setting");
    return warn_at(x, node_line(k), x->path, "unknown setting, ignored");
}

static int walk(ctx_t *x, yaml_node_t *n, const field_t *fields, void *base)
{
    walk_arg_t w = {fields, base};
    return each_pair(x, n, "a mapping", walk_pair, &w);
}

/* ---- field kinds ---- */

#define AT(base, f) ((void *)((char *)(base) + (f)->off))

static int f_section(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    return walk(x, n, f->sub, base);
}

/* Accepted and not used, without a warning (informational keys of the original relay). */
static int f_accept(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    return 0;
}

static const char *int_expect(const field_t *f, char *buf, size_t cap)
{
    if (f->min == 1 && f->max >= INT_MAX)
        return "a positive integer";
    if (f->min == 0 && f->max >= INT_MAX)
        return "a non-negative integer";
    snprintf(buf, cap, "an integer from %" PRId64 " to %" PRId64, f->min, f->max);
    return buf;
}

static int get_int(ctx_t *x, yaml_node_t *n, const field_t *f, int64_t *out)
{
    char eb[64];
    const char *expect = int_expect(f, eb, sizeof eb), *s;
    int64_t v = 0;
    int rc = scalar(x, n, expect, &s);
    if (rc)
        return rc;
    if (!s || parse_i64(s, &v) || v < f->min || v > f->max)
        return fail(x, n, "expected %s", expect);
    *out = f->scale > 1 ? v * f->scale : v;
    return 0;
}

static int f_int(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int64_t v = 0;
    int rc = get_int(x, n, f, &v);
    if (!rc)
        *(int *)AT(base, f) = (int)v;
    return rc;
}

static int f_i64(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int64_t v = 0;
    int rc = get_int(x, n, f, &v);
    if (!rc)
        *(int64_t *)AT(base, f) = v;
    return rc;
}

static int f_size(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int64_t v = 0;
    int rc = get_int(x, n, f, &v);
    if (!rc)
        *(size_t *)AT(base, f) = (size_t)v;
    return rc;
}

enum { NUM_POS, NUM_POS_S, NUM_NONNEG, NUM_FRACTION };
static const char *const NUM_EXPECT[] = {"a positive number", "a positive number of seconds",
                                         "a non-negative number", "a number in (0, 1]"};

static int get_num(ctx_t *x, yaml_node_t *n, int mode, double *out)
{
    const char *s;
    double v;
    int rc = scalar(x, n, NUM_EXPECT[mode], &s);
    if (rc)
        return rc;
    int ok = s && parse_double(s, &v) == 0 && v < 1e12;
    if (ok && mode == NUM_NONNEG)
        ok = v >= 0;
    else if (ok)
        ok = v > 0 && (mode != NUM_FRACTION || v <= 1.0);
    if (!ok)
        return fail(x, n, "expected %s", NUM_EXPECT[mode]);
    *out = v;
    return 0;
}

static int f_num(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    return get_num(x, n, (int)f->min, (double *)AT(base, f));
}

/* Seconds in the file, milliseconds in the options (drain_timeout); 0 is allowed. */
static int f_secs_ms(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s;
    double v;
    int rc = scalar(x, n, "a non-negative number of seconds", &s);
    if (rc)
        return rc;
    if (!s || parse_double(s, &v) || v < 0 || v > 86400)
        return fail(x, n, "expected a non-negative number of seconds (at most 86400)");
    *(int *)AT(base, f) = (int)llround(v * 1000);
    return 0;
}

static int f_bool(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s;
    int v, rc = scalar(x, n, "true or false", &s);
    if (rc)
        return rc;
    if (!s || parse_bool(s, &v))
        return fail(x, n, "expected true or false");
    *(int *)AT(base, f) = v;
    return 0;
}

/* A string held by pointer (const char * in relay_options_t, char * elsewhere). Empty: default. */
static int f_str(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s, *bad;
    int rc = scalar(x, n, "a string", &s);
    if (rc || !s || !*s)
        return rc;
    if (f->check && (bad = f->check(s)))
        return fail(x, n, "%s", bad);
    memcpy(AT(base, f), &s, sizeof s);
    return 0;
}

/* A string copied into a fixed buffer of f->max bytes. Empty: default. */
static int f_strbuf(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s, *bad;
    int rc = scalar(x, n, "a string", &s);
    if (rc || !s || !*s)
        return rc;
    if (strlen(s) >= (size_t)f->max)
        return fail(x, n, "expected at most %" PRId64 " characters", f->max - 1);
    if (f->check && (bad = f->check(s)))
        return fail(x, n, "%s", bad);
    relay_strlcpy(AT(base, f), s, (size_t)f->max);
    return 0;
}

static int f_bytes(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s;
    int64_t v;
    int rc = scalar(x, n, "a size in bytes", &s);
    if (rc)
        return rc;
    if (!s || parse_size(s, &v) || v < f->min || v > f->max)
        return fail(x, n,
                    "expected a size in bytes from %" PRId64 " to %" PRId64
                    " (e.g. 33554432 or 32MB)",
                    f->min, f->max);
    *(size_t *)AT(base, f) = (size_t)v;
    return 0;
}

static int list_add(ctx_t *x, const yaml_node_t *n, const field_t *f, relay_config_strlist_t *l,
                    char *s)
{
    const char *bad = f->check ? f->check(s) : NULL;
    if (bad)
        return fail(x, n, "%s", bad);
    int rc = strlist_add(l, s);
    return rc == RELAY_ERR_TOO_LARGE ? fail(x, n, "more than %d entries", CFG_MAX_ENTRIES)
           : rc                      ? nomem(x)
                                     : 0;
}

/* "a, b ,c" as a list: the original relay's .env habit carried into YAML. */
static int list_from_string(ctx_t *x, yaml_node_t *n, const field_t *f, relay_config_strlist_t *l)
{
    const char *s;
    int rc = scalar(x, n, "a list", &s);
    for (const char *p = s; !rc && p && *p;) {
        size_t len = strcspn(p, ",");
        const char *a = p, *b = p + len;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (b > a) {
            char *item = own_strndup(x->c, a, (size_t)(b - a));
            rc = item ? list_add(x, n, f, l, item) : nomem(x);
        }
        p += len + (p[len] == ',');
    }
    return rc;
}

typedef struct list_arg {
    const field_t *f;
    relay_config_strlist_t *l;
} list_arg_t;

static int list_item(ctx_t *x, yaml_node_t *v, size_t i, void *arg)
{
    list_arg_t *a = arg;
    const char *s = NULL;
    int rc = v && v->type == YAML_SCALAR_NODE ? scalar(x, v, "a string", &s)
                                              : fail(x, v, "expected a string");
    if (!rc && s && *s)
        rc = list_add(x, v, a->f, a->l, (char *)s);
    return rc;
}

static int list_from_sequence(ctx_t *x, yaml_node_t *n, const field_t *f, relay_config_strlist_t *l)
{
    list_arg_t a = {f, l};
    return each_item(x, n, list_item, &a);
}

/* A list of strings: a YAML sequence, or one comma-separated string. Replaces the default. */
static int f_list(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    relay_config_strlist_t *l = AT(base, f);
    strlist_clear(l);
    if (is_null(n))
        return 0;
    if (n->type == YAML_SCALAR_NODE)
        return list_from_string(x, n, f, l);
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(x, n, "expected a list");
    return list_from_sequence(x, n, f, l);
}

/* ---- fields that need more than one kind ---- */

static int f_listen(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s, *bad;
    int rc = scalar(x, n, "host:port", &s);
    if (rc || !s || !*s)
        return rc;
    if ((bad = parse_listen(s, x->c->listen, sizeof x->c->listen)))
        return fail(x, n, "%s", bad);
    x->have_listen = 1;
    return 0;
}

static int f_app_host(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s;
    int v6, rc = scalar(x, n, "an IP address", &s);
    if (rc || !s || !*s)
        return rc;
    if (strcmp(s, "localhost") == 0)
        s = "127.0.0.1";
    if (!is_ip(s, &v6))
        return fail(x, n, "expected an IP address (e.g. 127.0.0.1 or 0.0.0.0)");
    snprintf(x->app_host, sizeof x->app_host, v6 ? "[%s]" : "%s", s);
    x->have_app_host = 1;
    x->app_host_line = (int)node_line(n);
    return 0;
}

static int f_app_port(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int64_t v = 0;
    int rc = get_int(x, n, f, &v);
    if (!rc) {
        x->app_port = (int)v;
        x->have_app_port = 1;
    }
    return rc;
}

static int f_app_debug(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    return f_bool(x, n, &(field_t){.off = offsetof(ctx_t, app_debug)}, x);
}

static int f_log_level(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s, *bad;
    int rc = scalar(x, n, "a log level", &s);
    if (rc || !s || !*s)
        return rc;
    if ((bad = parse_log_level(s, x->c->log_level, sizeof x->c->log_level, &x->c->relay.log_level)))
        return fail(x, n, "%s", bad);
    x->have_log_level = 1;
    return 0;
}

static int f_db_url(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s, *bad;
    int rc = scalar(x, n, "a database URL", &s);
    if (rc || !s || !*s)
        return rc;
    if ((bad = norm_db_url(x->c, s, &x->c->relay.database_url)))
        return fail(x, n, "%s", bad);
    return 0;
}

/* database.outage: what a database outage does to requests of keys the cache knows. */
static int f_db_outage(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    (void)f, (void)base;
    const char *s;
    int rc = scalar(x, n, "serve_cached or fail_closed", &s);
    if (rc || !s)
        return rc;
    if (strcmp(s, "serve_cached") == 0)
        x->c->relay.db_outage_fail_closed = 0;
    else if (strcmp(s, "fail_closed") == 0)
        x->c->relay.db_outage_fail_closed = 1;
    else
        return fail(x, n, "expected serve_cached or fail_closed");
    return 0;
}

static int f_default_tier(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int rc = f_str(x, n, f, base);
    if (!rc)
        x->default_tier_line = (int)node_line(n);
    return rc;
}

/* requests: -1 means unlimited, as in the original relay; 0 and other negatives are mistakes. */
static int f_tier_requests(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    const char *s;
    int64_t v;
    static const char *const expect = "a positive integer (or -1 for unlimited)";
    int rc = scalar(x, n, expect, &s);
    if (rc)
        return rc;
    if (!s || parse_i64(s, &v) || (v < 1 && v != -1) || v > INT32_MAX)
        return fail(x, n, "expected %s", expect);
    *(int64_t *)AT(base, f) = v;
    return 0;
}

#define TOFF(m) offsetof(relay_tier_def_t, m)
// clang-format off
static const field_t TIER_FIELDS[] = {
    {.key = "requests", .fn = f_tier_requests, .off = TOFF(requests)},
    {.key = "period", .fn = f_i64, .off = TOFF(period_s), .min = 1, .max = 31536000},
    {.key = "tokens_per_minute", .fn = f_i64, .off = TOFF(tokens_per_minute), .min = 0, .max = INT32_MAX},
    {.key = "concurrent", .fn = f_i64, .off = TOFF(concurrent), .min = 0, .max = 1000000},
    {.key = NULL},
};
// clang-format on

static int parse_tier(ctx_t *x, yaml_node_t *n, relay_tier_def_t *t)
{
    t->requests = 0; /* never valid, so it marks "missing" */
    t->period_s = 60;
    t->tokens_per_minute = t->concurrent = 0;
    if (!is_null(n) && n->type != YAML_MAPPING_NODE)
        return fail(x, n, "expected a mapping with requests and period");
    int rc = walk(x, n, TIER_FIELDS, t);
    if (!rc && t->requests == 0)
        rc = fail(x, n, "missing requests");
    return rc;
}

static int tier_pair(ctx_t *x, yaml_node_t *k, yaml_node_t *v, void *arg)
{
    const char *name = (const char *)k->data.scalar.value, *bad;
    if ((bad = check_tier_name(name)))
        return fail(x, k, "%s", bad);
    if (x->n_tiers >= CFG_MAX_TIERS)
        return fail(x, k, "more than %d tiers", CFG_MAX_TIERS);
    relay_tier_def_t *t = &x->tiers[x->n_tiers];
    int rc = parse_tier(x, v, t);
    if (!rc) {
        relay_strlcpy(t->name, name, sizeof t->name);
        x->n_tiers++;
    }
    return rc;
}

static int f_tiers(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    x->by_tier_line = (int)node_line(n);
    return each_pair(x, n, "a mapping of tier names to {requests, period}", tier_pair, NULL);
}

static int f_rate_default(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    int rc = parse_tier(x, n, &x->default_def);
    x->have_default_def = !rc;
    x->default_def_line = (int)node_line(n);
    return rc;
}

#define POFF(m) offsetof(relay_price_t, m)
// clang-format off
static const field_t PRICE_FIELDS[] = {
    {.key = "model_prefix", .fn = f_strbuf, .off = POFF(model_prefix),
     .max = sizeof(((relay_price_t *)0)->model_prefix)},
    {.key = "input", .fn = f_num, .off = POFF(input), .min = NUM_NONNEG},
    {.key = "output", .fn = f_num, .off = POFF(output), .min = NUM_NONNEG},
    {.key = "cache_write_5m", .fn = f_num, .off = POFF(cache_write_5m), .min = NUM_NONNEG},
    {.key = "cache_write_1h", .fn = f_num, .off = POFF(cache_write_1h), .min = NUM_NONNEG},
    {.key = "cache_read", .fn = f_num, .off = POFF(cache_read), .min = NUM_NONNEG},
    {.key = NULL},
};
// clang-format on

/* Missing cache prices follow Anthropic's rule: 1.25x / 2x / 0.1x the input price. */
static int parse_price(ctx_t *x, yaml_node_t *n, relay_price_t *p)
{
    memset(p, 0, sizeof *p);
    p->input = p->output = p->cache_write_5m = p->cache_write_1h = p->cache_read = -1;
    if (n->type != YAML_MAPPING_NODE)
        return fail(x, n, "expected a mapping with model_prefix, input and output");
    int rc = walk(x, n, PRICE_FIELDS, p);
    if (rc)
        return rc;
    if (!p->model_prefix[0])
        return fail(x, n, "missing model_prefix");
    if (p->input < 0 || p->output < 0)
        return fail(x, n, "missing %s", p->input < 0 ? "input" : "output");
    if (p->cache_write_5m < 0)
        p->cache_write_5m = p->input * 1.25;
    if (p->cache_write_1h < 0)
        p->cache_write_1h = p->input * 2;
    if (p->cache_read < 0)
        p->cache_read = p->input * 0.1;
    return 0;
}

static int price_item(ctx_t *x, yaml_node_t *v, size_t i, void *arg)
{
    return v ? parse_price(x, v, (relay_price_t *)arg + i) : fail(x, v, "expected a mapping");
}

static int f_price_list(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    if (is_null(n))
        return 0;
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(x, n, "expected a list of {model_prefix, input, output, ...}");
    size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count > CFG_MAX_PRICES)
        return fail(x, n, "more than %d prices", CFG_MAX_PRICES);
    if (count == 0)
        return 0;
    relay_price_t *prices = calloc(count, sizeof *prices);
    if (own(x->c, prices))
        return nomem(x);
    int rc = each_item(x, n, price_item, prices);
    if (rc)
        return rc;
    x->c->relay.prices = prices;
    x->c->relay.n_prices = count;
    return 0;
}

static const field_t PRICING[] = {
    {.key = "prices", .fn = f_price_list},
    {.key = "default", .fn = f_str, .off = offsetof(relay_config_t, relay.price_default)},
    {.key = NULL},
};

/* pricing: a list of prices, or {prices: [...], default: <model_prefix>}. */
static int f_prices(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    if (!n || n->type != YAML_MAPPING_NODE)
        return f_price_list(x, n, f, base);
    int rc = walk(x, n, PRICING, base);
    const relay_options_t *o = &x->c->relay;
    for (size_t i = 0; !rc && o->price_default && o->prices && i <= o->n_prices; i++)
        if (i == o->n_prices)
            return fail(x, n, "default: '%s' is not the model_prefix of one of the prices",
                        o->price_default);
        else if (strcmp(o->prices[i].model_prefix, o->price_default) == 0)
            break;
    return rc;
}

static const char *check_timezone(const char *s)
{
    relay_tz_t *tz;
    if (relay_tz_load(&tz, s, NULL) != 0)
        return "unknown time zone (expected an IANA name such as Europe/Berlin, from the system "
               "tz database)";
    relay_tz_free(tz);
    return NULL;
}

/* "Monday", "mon 06:00", "Sunday 23:30": the day and local time weekly budgets reset. */
static int f_week_starts(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    static const char *const days[] = {"sunday",   "monday", "tuesday", "wednesday",
                                       "thursday", "friday", "saturday"};
    const char *s;
    int rc = scalar(x, n, "a day and time such as \"Monday 00:00\"", &s);
    if (rc || !s || !*s)
        return rc;
    size_t dl = strcspn(s, " ");
    int day = -1, hh = 0, mm = 0;
    for (int i = 0; i < 7 && day < 0; i++)
        if (dl >= 3 && dl <= strlen(days[i]) && strncasecmp(s, days[i], dl) == 0)
            day = i;
    const char *t = s + dl + strspn(s + dl, " ");
    int consumed = 0;
    if (day < 0 || (*t && (sscanf(t, "%2d:%2d%n", &hh, &mm, &consumed) != 2 || t[consumed] ||
                           hh > 23 || mm > 59 || hh < 0 || mm < 0)))
        return fail(x, n, "expected a day and time such as \"Monday 00:00\"");
    x->c->relay.budget_week_start_day = day;
    x->c->relay.budget_week_start_minute = hh * 60 + mm;
    return 0;
}

static int threshold_item(ctx_t *x, yaml_node_t *v, size_t i, void *arg)
{
    relay_config_t *c = x->c;
    int rc = get_num(x, v, NUM_FRACTION, &c->alert_thresholds[i]);
    c->n_alert_thresholds += !rc;
    return rc;
}

static int f_thresholds(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    relay_config_t *c = x->c;
    x->have_thresholds = 1;
    c->n_alert_thresholds = 0;
    if (is_null(n))
        return 0;
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(x, n, "expected a list of numbers in (0, 1]");
    if (n->data.sequence.items.top - n->data.sequence.items.start > RELAY_CONFIG_MAX_THRESHOLDS)
        return fail(x, n, "at most %d thresholds", RELAY_CONFIG_MAX_THRESHOLDS);
    return each_item(x, n, threshold_item, NULL);
}

/* The upstream section's field kinds (defined after the schema, which they walk). */
static int f_primary_name(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);
static int f_upstream_models(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);
static int f_upstream_secondary(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);
static int f_upstream_pool(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);
static int f_upstream(ctx_t *x, yaml_node_t *n, const field_t *f, void *base);

/* ---- the schema ---- */

/* The settings, one per line: section tables of field kinds (clang-format would pack them). */
// clang-format off
#define OFF(m)                offsetof(relay_config_t, m)
#define INT(k, m, lo, hi)     {.key = k, .fn = f_int, .off = OFF(m), .min = lo, .max = hi}
#define I64(k, m, lo, hi)     {.key = k, .fn = f_i64, .off = OFF(m), .min = lo, .max = hi}
#define SIZE(k, m, lo, hi)    {.key = k, .fn = f_size, .off = OFF(m), .min = lo, .max = hi}
#define NUM(k, m, mode)       {.key = k, .fn = f_num, .off = OFF(m), .min = mode}
#define BOOL(k, m)            {.key = k, .fn = f_bool, .off = OFF(m)}
#define STR(k, m, chk)        {.key = k, .fn = f_str, .off = OFF(m), .check = chk}
#define STRBUF(k, m, chk)     {.key = k, .fn = f_strbuf, .off = OFF(m), \
                               .max = sizeof(((relay_config_t *)0)->m), .check = chk}
#define LIST(k, m, chk)       {.key = k, .fn = f_list, .off = OFF(m), .check = chk}
#define CUSTOM(k, f)          {.key = k, .fn = f}
#define SECTION(k, fields)    {.key = k, .fn = f_section, .sub = fields}
#define END                   {.key = NULL}

static const field_t APP[] = {
    STRBUF("name", app_name, NULL),
    CUSTOM("version", f_accept),
    CUSTOM("debug", f_app_debug),
    CUSTOM("host", f_app_host),
    {.key = "port", .fn = f_app_port, .min = 0, .max = 65535},
    END,
};

static const field_t SERVER[] = {
    CUSTOM("listen", f_listen),
    INT("worker_threads", worker_threads, 1, 16384),
    {.key = "max_body_size", .fn = f_bytes, .off = OFF(relay.max_body_bytes), .min = 1024,
     .max = 1024LL * 1024 * 1024},
    LIST("trusted_proxies", trusted_proxies, check_ip_or_cidr),
    INT("shutdown_grace_seconds", shutdown_grace_s, 0, 3600),
    INT("header_timeout_ms", header_timeout_ms, 100, 3600000),
    {.key = "max_header_size", .fn = f_bytes, .off = OFF(max_header_bytes), .min = 4096,
     .max = 1024 * 1024},
    BOOL("forward_event_logging", forward_event_logging),
    STR("data_dir", relay.data_dir, NULL),
    END,
};

static const field_t UPSTREAM_PRIMARY[] = {
    {.key = "name", .fn = f_primary_name, .off = OFF(upstream_name),
     .max = sizeof(((relay_config_t *)0)->upstream_name), .check = relay_upstreams_check_name},
    STR("url", relay.upstream_url, check_http_url),
    STR("api_key", relay.upstream_api_key, NULL),
    NUM("timeout", relay.upstream_timeout_s, NUM_POS_S),
    INT("max_retries", relay.max_retries, 0, 20),
    NUM("connect_timeout", relay.connect_timeout_s, NUM_POS_S),
    NUM("first_byte_timeout", relay.first_byte_timeout_s, NUM_POS_S),
    NUM("idle_timeout", relay.idle_timeout_s, NUM_POS_S),
    INT("retry_base_ms", relay.retry_base_ms, 1, 600000),
    INT("retry_max_ms", relay.retry_max_ms, 1, 3600000),
    {.key = "drain_timeout", .fn = f_secs_ms, .off = OFF(relay.drain_timeout_ms)},
    END,
};

#define UOFF(m) offsetof(relay_upstream_def_t, m)
#define UBUF(k, m, chk) {.key = k, .fn = f_strbuf, .off = UOFF(m), \
                         .max = sizeof(((relay_upstream_def_t *)0)->m), .check = chk}
static const field_t UPSTREAM_ENTRY[] = {
    UBUF("name", name, relay_upstreams_check_name),
    UBUF("url", url, check_http_url),
    UBUF("api_key", api_key, NULL),
    {.key = "weight", .fn = f_int, .off = UOFF(weight), .min = 1, .max = 1000000},
    {.key = "priority", .fn = f_int, .off = UOFF(priority), .min = 0, .max = 1000},
    CUSTOM("models", f_upstream_models),
    {.key = "max_concurrency", .fn = f_int, .off = UOFF(max_concurrency), .min = 0, .max = 10000000},
    {.key = "timeout", .fn = f_num, .off = UOFF(timeout_s), .min = NUM_POS_S},
    {.key = "max_retries", .fn = f_int, .off = UOFF(max_retries), .min = 0, .max = 20},
    UBUF("group", group, relay_upstreams_check_name),
    END,
};

static const field_t UPSTREAM[] = {
    SECTION("primary", UPSTREAM_PRIMARY),
    CUSTOM("secondary", f_upstream_secondary),
    CUSTOM("pool", f_upstream_pool),
    /* the original relay's layout: accepted (and ignored) with a warning, as before */
    {.key = "fallback", .fn = NULL},
    {.key = "session_ttl", .fn = f_int, .off = OFF(relay.session_ttl_s), .min = 1, .max = 604800},
    SIZE("session_max", relay.session_max, 1, 10000000),
    END,
};

static const field_t DATABASE[] = {
    CUSTOM("url", f_db_url),
    INT("pool_size", relay.db_pool_size, 1, 1024),
    BOOL("auto_migrate", relay.auto_migrate),
    CUSTOM("outage", f_db_outage),
    INT("busy_timeout_ms", relay.db_busy_timeout_ms, 1, 600000),
    END,
};

static const field_t REDIS[] = {
    STR("url", relay.redis_url, check_redis_url),
    INT("timeout_ms", relay.redis_timeout_ms, 1, 60000),
    END,
};

static const field_t ADMIN[] = {
    STR("username", relay.admin_username, NULL),
    STR("password", relay.admin_password, NULL),
    {.key = "jwt_expire_minutes", .fn = f_int, .off = OFF(relay.jwt_lifetime_s), .min = 1,
     .max = 525600, .scale = 60},
    INT("login_max_failures", relay.login_max_failures, 1, INT_MAX),
    INT("login_window_seconds", relay.login_window_s, 1, INT_MAX),
    INT("login_cooldown_seconds", relay.login_cooldown_s, 1, INT_MAX),
    INT("login_max_failures_per_user", relay.login_max_failures_per_user, 0, INT_MAX),
    END,
};

static const field_t API_KEYS[] = {
    STR("prefix", relay.key_prefix, check_key_prefix),
    I64("default_limit", relay.default_token_limit, 0, INT64_MAX),
    NUM("warning_threshold", relay.warning_threshold, NUM_FRACTION),
    INT("bcrypt_cost", relay.bcrypt_cost, 4, 31),
    INT("cache_ttl_ms", relay.key_cache_ttl_ms, 0, INT_MAX),
    SIZE("cache_max", relay.key_cache_max, 1, 100000000),
    INT("bcrypt_concurrency", relay.bcrypt_concurrency, 0, 1024),
    INT("verify_wait_ms", relay.key_verify_wait_ms, 1, 600000),
    INT("cache_stale_ms", relay.key_cache_stale_ms, 0, 86400000),
    INT("max_invalid_per_ip", relay.key_max_invalid_per_ip, 0, 1000000),
    {.key = "default_tier", .fn = f_default_tier, .off = OFF(relay.default_tier),
     .check = check_tier_name},
    END,
};

static const field_t RATE_LIMIT[] = {
    CUSTOM("default", f_rate_default),
    CUSTOM("by_tier", f_tiers),
    END,
};

static const field_t WEIGHTS[] = {
    NUM("input", relay.weight_input, NUM_NONNEG),
    NUM("output", relay.weight_output, NUM_NONNEG),
    NUM("cache_creation", relay.weight_cache_creation, NUM_NONNEG),
    NUM("cache_read", relay.weight_cache_read, NUM_NONNEG),
    END,
};

static const field_t USAGE[] = {
    I64("reservation_ceiling", relay.reservation_ceiling, 1, INT32_MAX),
    SECTION("weights", WEIGHTS),
    SIZE("queue_max", relay.usage_queue_max, 1, 100000000),
    INT("batch_max", relay.usage_batch_max, 1, 100000),
    INT("flush_ms", relay.usage_flush_ms, 1, 3600000),
    BOOL("spool", relay.usage_spool),
    SIZE("spool_max_bytes", relay.usage_spool_max_bytes, 4096, (size_t)1 << 40),
    INT("retention_days", relay.log_retention_days, 0, 36500),
    STR("tokenizer_file", relay.tokenizer_file, NULL),
    END,
};

static const field_t BUDGETS[] = {
    STR("timezone", relay.budget_timezone, check_timezone),
    CUSTOM("week_starts", f_week_starts),
    END,
};

static const field_t ALERTS[] = {
    CUSTOM("thresholds", f_thresholds),
    STR("webhook_url", alert_webhook_url, check_http_url),
    INT("webhook_timeout_ms", alert_webhook_timeout_ms, 1, 600000),
    END,
};

static const field_t LOGGING[] = {
    CUSTOM("level", f_log_level),
    STRBUF("format", log_format, check_log_format),
    END,
};

static const field_t METRICS[] = {
    BOOL("enabled", metrics_enabled),
    STRBUF("path", metrics_path, check_path),
    STR("token", metrics_token, NULL),
    LIST("allowed_ips", metrics_allowed_ips, check_ip_or_cidr),
    STRBUF("key_label", metrics_key_label, check_key_label),
    END,
};

static const field_t HEALTH[] = {
    STRBUF("path", health_path, check_path),
    END,
};

static const field_t MONITORING[] = {
    SECTION("metrics", METRICS),
    SECTION("health", HEALTH),
    END,
};

static const field_t CORS[] = {
    BOOL("enabled", cors_enabled),
    LIST("allow_origins", cors_origins, NULL),
    LIST("allow_methods", cors_methods, NULL),
    LIST("allow_headers", cors_headers, NULL),
    BOOL("allow_credentials", cors_allow_credentials),
    INT("max_age", cors_max_age, 0, INT_MAX),
    END,
};

static const field_t SECURITY[] = {
    SECTION("cors", CORS),
    END,
};

static const field_t CONSOLE[] = {
    BOOL("enabled", console_enabled),
    END,
};

static const field_t ROOT[] = {
    SECTION("app", APP),
    SECTION("server", SERVER),
    CUSTOM("upstream", f_upstream),
    SECTION("database", DATABASE),
    SECTION("redis", REDIS),
    SECTION("admin", ADMIN),
    SECTION("api_keys", API_KEYS),
    SECTION("rate_limit", RATE_LIMIT),
    SECTION("usage", USAGE),
    CUSTOM("pricing", f_prices),
    SECTION("budgets", BUDGETS),
    SECTION("alerts", ALERTS),
    SECTION("logging", LOGGING),
    SECTION("monitoring", MONITORING),
    SECTION("security", SECURITY),
    SECTION("console", CONSOLE),
    END,
};
// clang-format on

/* ---- the upstream pool ---- */

static int f_primary_name(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    x->primary_name_line = (int)node_line(n);
    return f_strbuf(x, n, f, base);
}

static int f_upstream_models(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    relay_upstream_def_t *d = base;
    relay_config_strlist_t l = {0};
    field_t lf = {.check = relay_upstreams_check_model};
    int rc = f_list(x, n, &lf, &l);
    if (!rc && l.n > RELAY_UPSTREAM_MAX_MODELS)
        rc = fail(x, n, "at most %d model patterns", RELAY_UPSTREAM_MAX_MODELS);
    for (size_t i = 0; !rc && i < l.n; i++)
        relay_strlcpy(d->models[i], l.items[i], sizeof d->models[i]);
    d->n_models = rc ? 0 : (int)l.n;
    strlist_clear(&l);
    return rc;
}

/* One secondary or pool entry; url and api_key are required. */
static int parse_upstream(ctx_t *x, yaml_node_t *n, int priority, const char *default_name)
{
    if (x->n_ups >= CFG_MAX_UPSTREAMS)
        return fail(x, n, "more than %d upstreams", CFG_MAX_UPSTREAMS);
    if (!n || n->type != YAML_MAPPING_NODE)
        return fail(x, n, "expected a mapping with name, url and api_key");
    relay_upstream_def_t *d = &x->ups[x->n_ups];
    memset(d, 0, sizeof *d);
    d->weight = 1;
    d->priority = priority;
    d->max_retries = -1;
    if (default_name)
        relay_strlcpy(d->name, default_name, sizeof d->name);
    int rc = walk(x, n, UPSTREAM_ENTRY, d);
    if (!rc && !d->name[0])
        rc = fail(x, n, "missing name");
    if (!rc && !d->url[0])
        rc = fail(x, n, "missing url");
    if (!rc && !d->api_key[0])
        rc = fail(x, n, "missing api_key (empty after ${VAR} expansion?)");
    if (rc)
        return rc;
    x->ups_line[x->n_ups] = (int)node_line(n);
    relay_strlcpy(x->ups_path[x->n_ups], x->path, sizeof x->ups_path[0]);
    x->n_ups++;
    return 0;
}

static int f_upstream_secondary(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    return is_null(n) ? 0 : parse_upstream(x, n, 1, "secondary");
}

static int pool_item(ctx_t *x, yaml_node_t *v, size_t i, void *arg)
{
    return parse_upstream(x, v, 0, NULL);
}

static int f_upstream_pool(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    if (is_null(n))
        return 0;
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(x, n, "expected a list of {name, url, api_key, ...}");
    return each_item(x, n, pool_item, NULL);
}

/* The upstream section is strict: a mistyped key there would silently reroute traffic. */
static int f_upstream(ctx_t *x, yaml_node_t *n, const field_t *f, void *base)
{
    x->strict = 1;
    int rc = walk(x, n, UPSTREAM, base);
    x->strict = 0;
    return rc;
}

/* Names are unique across the primary, the secondary and the pool. */
static int resolve_upstreams(ctx_t *x)
{
    relay_config_t *c = x->c;
    for (size_t i = 0; i < x->n_ups; i++) {
        if (strcmp(x->ups[i].name, c->upstream_name) == 0)
            return fail_at(x, (unsigned long)x->ups_line[i], x->ups_path[i],
                           "duplicate upstream name %s (upstream.primary%s)", x->ups[i].name,
                           x->primary_name_line ? "" : ", by default");
        for (size_t j = 0; j < i; j++)
            if (strcmp(x->ups[i].name, x->ups[j].name) == 0)
                return fail_at(x, (unsigned long)x->ups_line[i], x->ups_path[i],
                               "duplicate upstream name %s (first at line %d)", x->ups[i].name,
                               x->ups_line[j]);
    }
    c->relay.upstream_name = c->upstream_name;
    if (!x->n_ups)
        return 0;
    relay_upstream_def_t *ups = own_copy(c, x->ups, x->n_ups, sizeof *ups);
    if (!ups)
        return nomem(x);
    c->relay.upstreams = ups;
    c->relay.n_upstreams = x->n_ups;
    return 0;
}

/* ---- after the walk: settings that depend on each other ---- */

static const relay_tier_def_t DEFAULT_TIERS[] = {
    {"basic", 100, 60, 0, 0, ""},
    {"premium", 1000, 60, 0, 0, ""},
    {"unlimited", -1, 60, 0, 0, ""},
};

static relay_tier_def_t *tier_find(ctx_t *x, const char *name)
{
    for (size_t i = 0; i < x->n_tiers; i++)
        if (strcmp(x->tiers[i].name, name) == 0)
            return &x->tiers[i];
    return NULL;
}

static int tier_same(const relay_tier_def_t *a, const relay_tier_def_t *b)
{
    return a->requests == b->requests && a->period_s == b->period_s &&
           a->tokens_per_minute == b->tokens_per_minute && a->concurrent == b->concurrent;
}

/*
 * rate_limit.default describes the tier new keys get (api_keys.default_tier, "basic"): it fills
 * that tier when by_tier lacks it, replaces the built-in one, and loses to an explicit by_tier
 * entry.
 */
static int resolve_tiers(ctx_t *x)
{
    relay_config_t *c = x->c;
    int from_yaml = x->n_tiers > 0;
    if (!from_yaml) {
        memcpy(x->tiers, DEFAULT_TIERS, sizeof DEFAULT_TIERS);
        x->n_tiers = sizeof DEFAULT_TIERS / sizeof DEFAULT_TIERS[0];
    }
    const char *dname = c->relay.default_tier;
    relay_tier_def_t *d = tier_find(x, dname);
    if (x->have_default_def) {
        relay_tier_def_t def = x->default_def;
        relay_strlcpy(def.name, dname, sizeof def.name);
        if (!d && x->n_tiers >= CFG_MAX_TIERS)
            return fail_at(x, (unsigned long)x->default_def_line, "rate_limit.default",
                           "more than %d tiers", CFG_MAX_TIERS);
        if (!d)
            x->tiers[x->n_tiers++] = def;
        else if (!from_yaml)
            *d = def;
        else if (!tier_same(d, &def) &&
                 warn_at(x, (unsigned long)x->default_def_line, "rate_limit.default",
                         "differs from rate_limit.by_tier.%s, which is used", dname))
            return RELAY_ERR_NOMEM;
    } else if (!d && x->default_tier_line) {
        return fail_at(x, (unsigned long)x->default_tier_line, "api_keys.default_tier",
                       "no tier named %s in rate_limit.by_tier", dname);
    } else if (!d) {
        return fail_at(
            x, (unsigned long)x->by_tier_line, "rate_limit.by_tier",
            "no tier named %s (api_keys.default_tier); define it or set api_keys.default_tier",
            dname);
    }
    relay_tier_def_t *tiers = own_copy(c, x->tiers, x->n_tiers, sizeof *tiers);
    if (!tiers)
        return nomem(x);
    c->relay.tiers = tiers;
    c->relay.n_tiers = x->n_tiers;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Defaults to api_keys.warning_threshold and 1.0; sorted and without repeats either way. */
static void resolve_thresholds(ctx_t *x)
{
    relay_config_t *c = x->c;
    if (!x->have_thresholds) {
        c->alert_thresholds[0] = c->relay.warning_threshold;
        c->alert_thresholds[1] = 1.0;
        c->n_alert_thresholds = 2;
    }
    qsort(c->alert_thresholds, c->n_alert_thresholds, sizeof(double), cmp_double);
    size_t n = 0;
    for (size_t i = 0; i < c->n_alert_thresholds; i++)
        if (n == 0 || c->alert_thresholds[i] != c->alert_thresholds[n - 1])
            c->alert_thresholds[n++] = c->alert_thresholds[i];
    c->n_alert_thresholds = n;
}

static int resolve(ctx_t *x)
{
    relay_config_t *c = x->c;
    if (!x->have_listen && (x->have_app_host || x->have_app_port))
        snprintf(c->listen, sizeof c->listen, "%s:%d", x->have_app_host ? x->app_host : "127.0.0.1",
                 x->have_app_port ? x->app_port : 8000);
    if (x->app_debug && !x->have_log_level) {
        relay_strlcpy(c->log_level, "debug", sizeof c->log_level);
        c->relay.log_level = RELAY_LOG_DEBUG;
    }
    resolve_thresholds(x);
    int rc = resolve_upstreams(x);
    return rc ? rc : resolve_tiers(x);
}

/* ---- the YAML file ---- */

static int yaml_fail(ctx_t *x, yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return nomem(x);
    char what[200];
    snprintf(what, sizeof what, "invalid YAML: %s%s%s", p->problem ? p->problem : "syntax error",
             p->context ? " " : "", p->context ? p->context : "");
    return fail_at(x, (unsigned long)p->problem_mark.line + 1, "", "%s", what);
}

static int parse_yaml(ctx_t *x, const char *text, size_t len)
{
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p))
        return nomem(x);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &doc)) {
        int rc = yaml_fail(x, &p);
        yaml_parser_delete(&p);
        return rc;
    }
    x->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc = 0;
    if (root && !is_null(root) && root->type != YAML_MAPPING_NODE)
        rc = fail(x, root, "expected a mapping of sections at the top level");
    else if (root)
        rc = walk(x, root, ROOT, x->c);
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    x->doc = NULL;
    return rc;
}

static const char *pick_yaml_path(const relay_config_t *c, const char *yaml_path)
{
    int line;
    if (yaml_path)
        return *yaml_path ? yaml_path : NULL;
    const char *env = env_get(c, "RELAY_CONFIG", &line);
    if (env && *env)
        return env;
    return access("config.yaml", F_OK) == 0 ? "config.yaml" : NULL;
}

static int load_yaml(relay_config_t *c, const char *yaml_path, relay_error_t *err)
{
    ctx_t *x = calloc(1, sizeof *x);
    if (!x)
        return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
    x->c = c;
    x->err = err;
    const char *path = pick_yaml_path(c, yaml_path);
    int rc = 0;
    if (path) {
        char *text;
        size_t len;
        relay_strlcpy(c->source, path, sizeof c->source);
        x->file = c->source;
        rc = read_file(path, &text, &len, err);
        if (!rc) {
            rc = parse_yaml(x, text, len);
            free(text);
        }
    } else {
        x->file = "(defaults)";
    }
    if (!rc)
        rc = resolve(x);
    explicit_bzero(x->ups, sizeof x->ups); /* upstream keys */
    free(x);
    return rc;
}

/* ---- the environment ---- */

/* "environment: NAME: ..." or ".env:3: NAME: ..." when the value came from the .env file. */
static int env_fail(relay_config_t *c, relay_error_t *err, const char *name, int line,
                    const char *what)
{
    if (line)
        return CFG_ERR(err, RELAY_ERR_CONFIG, "%s:%d: %s: %s", c->env_source, line, name, what);
    return CFG_ERR(err, RELAY_ERR_CONFIG, "environment: %s: %s", name, what);
}

static int env_string(relay_config_t *c, const char *name, const char **dst)
{
    int line;
    const char *v = env_get(c, name, &line);
    if (!v || !*v)
        return 0;
    char *s = own_strdup(c, v);
    if (!s)
        return RELAY_ERR_NOMEM;
    *dst = s;
    return 0;
}

static int apply_env(relay_config_t *c, relay_error_t *err)
{
    static const struct {
        const char *name;
        size_t off;
    } plain[] = {
        {"UPSTREAM_API_KEY", OFF(relay.upstream_api_key)},
        {"ADMIN_USERNAME", OFF(relay.admin_username)},
        {"ADMIN_PASSWORD", OFF(relay.admin_password)},
        {"SECRET_KEY", OFF(relay.secret_key)},
        {"RELAY_DATA_DIR", OFF(relay.data_dir)},
    };
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        if (env_string(c, plain[i].name, (const char **)((char *)c + plain[i].off)))
            return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");

    int line;
    const char *v, *bad;
    if ((v = env_get(c, "UPSTREAM_API_URL", &line)) && *v) {
        if ((bad = check_http_url(v)))
            return env_fail(c, err, "UPSTREAM_API_URL", line, bad);
        if (!(c->relay.upstream_url = own_strdup(c, v)))
            return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
    }
    if ((v = env_get(c, "DATABASE_URL", &line)) && *v) {
        char *s = own_strdup(c, v);
        if (!s)
            return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
        if ((bad = norm_db_url(c, s, &c->relay.database_url)))
            return env_fail(c, err, "DATABASE_URL", line, bad);
    }
    if ((v = env_get(c, "REDIS_URL", &line)) && *v) {
        if ((bad = check_redis_url(v)))
            return env_fail(c, err, "REDIS_URL", line, bad);
        if (!(c->relay.redis_url = own_strdup(c, v)))
            return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
    }
    if ((v = env_get(c, "RELAY_LISTEN", &line)) && *v &&
        (bad = parse_listen(v, c->listen, sizeof c->listen)))
        return env_fail(c, err, "RELAY_LISTEN", line, bad);
    if ((v = env_get(c, "LOG_LEVEL", &line)) && *v &&
        (bad = parse_log_level(v, c->log_level, sizeof c->log_level, &c->relay.log_level)))
        return env_fail(c, err, "LOG_LEVEL", line, bad);
    return 0;
}

/* ---- load / free ---- */

static int set_defaults(relay_config_t *c)
{
    relay_options_init(&c->relay);
    relay_strlcpy(c->listen, "127.0.0.1:8000", sizeof c->listen);
    c->worker_threads = RELAY_DEFAULT_WORKER_THREADS;
    c->shutdown_grace_s = 30;
    c->header_timeout_ms = 30000;
    c->max_header_bytes = 65536;
    relay_strlcpy(c->log_level, "info", sizeof c->log_level);
    relay_strlcpy(c->log_format, "json", sizeof c->log_format);
    c->metrics_enabled = 1;
    c->console_enabled = 1;
    relay_strlcpy(c->metrics_path, "/metrics", sizeof c->metrics_path);
    relay_strlcpy(c->metrics_key_label, "name", sizeof c->metrics_key_label);
    relay_strlcpy(c->health_path, "/health", sizeof c->health_path);
    c->cors_max_age = 600;
    c->alert_webhook_timeout_ms = 5000;
    relay_strlcpy(c->app_name, "Claude API Relay", sizeof c->app_name);
    relay_strlcpy(c->upstream_name, "anthropic", sizeof c->upstream_name);
    relay_config_strlist_t *star[] = {&c->cors_origins, &c->cors_methods, &c->cors_headers};
    for (size_t i = 0; i < 3; i++) {
        char *s = own_strdup(c, "*");
        if (!s || strlist_add(star[i], s))
            return RELAY_ERR_NOMEM;
    }
    return 0;
}

int relay_config_load(relay_config_t **out, const char *yaml_path, const char *env_path,
                      relay_error_t *err)
{
    if (!out)
        return CFG_ERR(err, RELAY_ERR_INVALID, "relay_config_load: out is NULL");
    *out = NULL;
    relay_config_t *c = calloc(1, sizeof *c);
    if (!c || !(c->priv = calloc(1, sizeof *c->priv))) {
        free(c);
        return CFG_ERR(err, RELAY_ERR_NOMEM, "out of memory");
    }
    int rc = set_defaults(c);
    if (rc)
        rc = CFG_ERR(err, rc, "out of memory");
    if (!rc)
        rc = load_dotenv(c, env_path, err);
    if (!rc)
        rc = load_yaml(c, yaml_path, err);
    if (!rc)
        rc = apply_env(c, err);
    if (rc) {
        relay_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void relay_config_free(relay_config_t *c)
{
    if (!c)
        return;
    relay_config_strlist_t *lists[] = {&c->trusted_proxies, &c->metrics_allowed_ips,
                                       &c->cors_origins,    &c->cors_methods,
                                       &c->cors_headers,    &c->warnings};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        strlist_clear(lists[i]);
    if (c->relay.upstreams) /* they hold upstream keys */
        explicit_bzero((void *)c->relay.upstreams,
                       c->relay.n_upstreams * sizeof(relay_upstream_def_t));
    if (c->priv) {
        for (size_t i = 0; i < c->priv->n_owned; i++)
            free(c->priv->owned[i]);
        free(c->priv->owned);
        free(c->priv->env);
        free(c->priv);
    }
    free(c);
}
