/* store: opening by URL, the migration runner, and every query both backends share. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/store.h"
#include "buf.h"
#include "migrations.h"
#include "store_internal.h"
#include "util.h"

#define V_NULL    ((relay_sql_val_t){.type = RELAY_SQL_NULL})
#define V_INT(x)  ((relay_sql_val_t){.type = RELAY_SQL_INT, .i = (int64_t)(x)})
#define V_REAL(x) ((relay_sql_val_t){.type = RELAY_SQL_REAL, .d = (x)})
/* Text, or NULL when the pointer is NULL. */
#define V_TEXT(x) ((relay_sql_val_t){.type = (x) ? RELAY_SQL_TEXT : RELAY_SQL_NULL, .s = (x)})
/* Text that is never NULL (literals, local arrays). */
#define V_STR(x) ((relay_sql_val_t){.type = RELAY_SQL_TEXT, .s = (x)})
/* Text, or NULL when the string is empty (optional fixed-size fields). */
#define V_OPT(x) ((relay_sql_val_t){.type = (x)[0] ? RELAY_SQL_TEXT : RELAY_SQL_NULL, .s = (x)})
/* Timestamps: 0 stands for SQL NULL. */
#define V_TS(x) ((x) ? V_INT(x) : V_NULL)

#define DEFAULT_POOL        8
#define MAX_POOL            1024
#define DEFAULT_BUSY_MS     5000
#define DEFAULT_PRUNE_BATCH 1000

/* ---------------------------------------------------------------- small helpers */

/* A growable array of fixed-size items, for result sets. */
typedef struct vec {
    void *items;
    size_t n, cap, size;
} vec_t;

static void *vec_push(vec_t *v)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        void *p = realloc(v->items, cap * v->size);
        if (!p)
            return NULL;
        v->items = p;
        v->cap = cap;
    }
    void *slot = (char *)v->items + v->n++ * v->size;
    memset(slot, 0, v->size);
    return slot;
}

/* Lower-cases a UUID into out; -1 when id is not one (so it cannot match any row). */
static int norm_id(char out[37], const char *id)
{
    if (!id || !relay_is_uuid(id))
        return -1;
    for (int i = 0; i < 36; i++)
        out[i] = (char)tolower((unsigned char)id[i]);
    out[36] = '\0';
    return 0;
}

static void copy_text(char *dst, size_t cap, const char *src)
{
    relay_strlcpy(dst, src ? src : "", cap);
}

static int is_day(const char *d)
{
    if (!d || strlen(d) != 10 || d[4] != '-' || d[7] != '-')
        return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)d[i]))
            return 0;
    return 1;
}

/* Runs one statement whose single row holds one integer (count(*) and the like). */
typedef struct one_int {
    int64_t v;
    int seen;
} one_int_t;

static int one_int_row(void *ud, const relay_sql_row_t *row);

static int query_int(relay_store_t *s, relay_store_conn_t *c, const char *sql,
                     const relay_sql_val_t *p, int np, int64_t *out, relay_error_t *err)
{
    one_int_t r = {0, 0};
    void *args[2] = {(void *)s->drv, &r};
    int rc = s->drv->exec(c, sql, p, np, one_int_row, args, NULL, err);
    *out = r.v;
    return rc;
}

static int one_int_row(void *ud, const relay_sql_row_t *row)
{
    void **args = ud;
    const relay_store_driver_t *drv = args[0];
    one_int_t *r = args[1];
    r->v = drv->col_int(row, 0);
    r->seen = 1;
    return 0;
}

/*
 * The shape every paged list shares: the count of table's rows matching where into *total, and,
 * unless LIMIT is 0, one page of cols from them, newest first (ties by id, so pages never overlap),
 * each row to fn. p holds the np parameters of where, then LIMIT and OFFSET.
 */
static int query_page(relay_store_t *s, relay_store_conn_t *c, const char *cols, const char *table,
                      const char *where, const relay_sql_val_t *p, int np, relay_sql_row_fn fn,
                      void *ud, int64_t *total, relay_error_t *err)
{
    relay_buf_t sql;
    relay_buf_init(&sql, 4096);
    int rc = relay_buf_printf(&sql, "SELECT count(*) FROM %s WHERE %s", table, where);
    rc = rc ? rc : query_int(s, c, relay_buf_str(&sql), p, np, total, err);
    if (!rc && p[np].i > 0) {
        relay_buf_reset(&sql);
        rc = relay_buf_printf(&sql,
                              "SELECT %s FROM %s WHERE %s "
                              "ORDER BY created_at DESC, id DESC LIMIT $%d OFFSET $%d",
                              cols, table, where, np + 1, np + 2);
        rc = rc ? rc : s->drv->exec(c, relay_buf_str(&sql), p, np + 2, fn, ud, NULL, err);
    }
    relay_buf_free(&sql);
    return rc;
}

/* ---------------------------------------------------------------- running an operation */

typedef int (*store_op_fn)(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err);

enum { OP_READ = 0, OP_WRITE = 1 };

/*
 * Runs op on a pooled connection, inside a transaction for writes. When the connection turns out
 * dead (the server restarted under an idle pooled connection), the call is redone once on a fresh
 * connection if that is safe: a read, or a write whose BEGIN never reached the server. Read ops
 * must reset their outputs at their start, since they may run twice.
 */
static int run(relay_store_t *s, store_op_fn op, void *arg, int mode, relay_error_t *err)
{
    for (int attempt = 0;; attempt++) {
        relay_store_conn_t *c;
        int rc = s->drv->acquire(s, &c, err);
        if (rc)
            return rc;
        int began = 0;
        if (mode == OP_WRITE) {
            rc = s->drv->begin(c, err);
            began = rc == 0;
        }
        if (rc == 0)
            rc = op(s, c, arg, err);
        if (began) {
            int end_rc = s->drv->end(c, rc == 0, err);
            if (rc == 0)
                rc = end_rc;
        }
        int retry = rc == RELAY_ERR_STORE && attempt == 0 && s->drv->broken(c) &&
                    (mode == OP_READ || !began);
        s->drv->release(s, c);
        if (!retry)
            return rc;
    }
}

/* ---------------------------------------------------------------- open / close */

static int pick_driver(const char *url, const relay_store_driver_t **drv, const char **target)
{
    if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0) {
        *drv = &relay_store_pg_driver;
        *target = url;
        return 0;
    }
    *drv = &relay_store_sqlite_driver;
    if (strncmp(url, "sqlite://", 9) == 0)
        *target = url + 9; /* sqlite:///abs → /abs, sqlite://rel → rel */
    else if (strncmp(url, "sqlite:", 7) == 0)
        *target = url + 7;
    else
        *target = url;
    return **target ? 0 : -1;
}

int relay_store_open(relay_store_t **out, const char *url, const relay_store_options_t *opts,
                     relay_error_t *err)
{
    if (!out)
        return relay_error_set(err, RELAY_ERR_INVALID, "store: no output handle");
    *out = NULL;
    const relay_store_driver_t *drv;
    const char *target;
    if (!url || !*url || pick_driver(url, &drv, &target) != 0)
        return relay_error_set(err, RELAY_ERR_CONFIG, "store: empty database URL or path");
    relay_store_t *s = calloc(1, sizeof *s);
    if (!s)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    s->drv = drv;
    s->opts.pool_size = opts && opts->pool_size > 0 ? opts->pool_size : DEFAULT_POOL;
    if (s->opts.pool_size > MAX_POOL)
        s->opts.pool_size = MAX_POOL;
    s->opts.busy_timeout_ms =
        opts && opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : DEFAULT_BUSY_MS;
    int rc = drv->open(s, target, err);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void relay_store_free(relay_store_t *s)
{
    if (!s)
        return;
    s->drv->close(s);
    free(s);
}

const char *relay_store_backend(const relay_store_t *s)
{
    return s ? s->drv->name : "none";
}

static int op_ping(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    int64_t one;
    (void)arg;
    return query_int(s, c, "SELECT 1", NULL, 0, &one, err);
}

int relay_store_ping(relay_store_t *s)
{
    if (!s)
        return RELAY_ERR_STORE;
    return run(s, op_ping, NULL, OP_READ, NULL) == 0 ? 0 : RELAY_ERR_STORE;
}

int relay_store_probe_write(relay_store_t *s, relay_error_t *err)
{
    if (!s)
        return relay_error_set(err, RELAY_ERR_STORE, "no store");
    return run(s, op_ping, NULL, OP_WRITE, err);
}

/* ---------------------------------------------------------------- migrations */

static int cmp_mig(const void *a, const void *b)
{
    const relay_migration_src_t *x = *(const relay_migration_src_t *const *)a;
    const relay_migration_src_t *y = *(const relay_migration_src_t *const *)b;
    return (x->version > y->version) - (x->version < y->version);
}

/* The embedded migrations of this backend, by version. Free the array with free(). */
static int known_migrations(const relay_store_t *s, const relay_migration_src_t ***out, size_t *n)
{
    *n = 0;
    *out = calloc(relay_migrations_embedded_count + 1, sizeof **out);
    if (!*out)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; i < relay_migrations_embedded_count; i++)
        if (strcmp(relay_migrations_embedded[i].backend, s->drv->name) == 0)
            (*out)[(*n)++] = &relay_migrations_embedded[i];
    qsort(*out, *n, sizeof **out, cmp_mig);
    return 0;
}

static const char SQL_MIGRATIONS_TABLE[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                           "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                           "applied_at BIGINT NOT NULL)";

static int lock_migrations(relay_store_t *s, relay_store_conn_t *c, relay_error_t *err)
{
    if (!s->drv->sql_migration_lock)
        return 0;
    return s->drv->exec(c, s->drv->sql_migration_lock, NULL, 0, NULL, NULL, NULL, err);
}

static int op_ensure_table(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    (void)arg;
    int rc = lock_migrations(s, c, err);
    return rc ? rc : s->drv->exec(c, SQL_MIGRATIONS_TABLE, NULL, 0, NULL, NULL, NULL, err);
}

/* What is applied, read into a vec of relay_migration_info_t (version, applied_at). */
typedef struct applied_set {
    vec_t v;
    int table_exists;
} applied_set_t;

static int applied_row(void *ud, const relay_sql_row_t *row)
{
    void **args = ud;
    const relay_store_driver_t *drv = args[0];
    applied_set_t *a = args[1];
    relay_migration_info_t *m = vec_push(&a->v);
    if (!m)
        return RELAY_ERR_NOMEM;
    m->version = (int)drv->col_int(row, 0);
    m->applied_at = drv->col_int(row, 1);
    m->applied = 1;
    return 0;
}

static int op_read_applied(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    applied_set_t *a = arg;
    a->v.n = 0;
    int64_t exists;
    relay_sql_val_t p[] = {V_STR("schema_migrations")};
    int rc = query_int(s, c, s->drv->sql_table_exists, p, 1, &exists, err);
    a->table_exists = exists > 0;
    if (rc || !a->table_exists)
        return rc;
    void *args[2] = {(void *)s->drv, a};
    return s->drv->exec(c, "SELECT version, applied_at FROM schema_migrations ORDER BY version",
                        NULL, 0, applied_row, args, NULL, err);
}

static int read_applied(relay_store_t *s, applied_set_t *a, relay_error_t *err)
{
    memset(a, 0, sizeof *a);
    a->v.size = sizeof(relay_migration_info_t);
    return run(s, op_read_applied, a, OP_READ, err);
}

static const relay_migration_info_t *find_applied(const applied_set_t *a, int version)
{
    const relay_migration_info_t *m = a->v.items;
    for (size_t i = 0; i < a->v.n; i++)
        if (m[i].version == version)
            return &m[i];
    return NULL;
}

typedef struct mig_step {
    const relay_migration_src_t *m;
    int up;
} mig_step_t;

/* Applies or reverts one migration; 1 when another process already did it. */
static int op_mig_step(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const mig_step_t *st = arg;
    int rc = lock_migrations(s, c, err);
    if (rc)
        return rc;
    int64_t count;
    relay_sql_val_t p[] = {V_INT(st->m->version), V_TEXT(st->m->name), V_INT(relay_now())};
    rc = query_int(s, c, "SELECT count(*) FROM schema_migrations WHERE version = $1", p, 1, &count,
                   err);
    if (rc)
        return rc;
    if ((count > 0) == st->up)
        return 1; /* nothing to do; run() rolls back the empty transaction */
    rc = s->drv->exec_script(c, st->up ? st->m->up_sql : st->m->down_sql, err);
    if (rc)
        return rc;
    if (st->up)
        return s->drv->exec(c,
                            "INSERT INTO schema_migrations (version, name, applied_at) "
                            "VALUES ($1, $2, $3)",
                            p, 3, NULL, NULL, NULL, err);
    return s->drv->exec(c, "DELETE FROM schema_migrations WHERE version = $1", p, 1, NULL, NULL,
                        NULL, err);
}

static int mig_step(relay_store_t *s, const relay_migration_src_t *m, int up, relay_error_t *err)
{
    mig_step_t st = {m, up};
    relay_error_t e = {0};
    int rc = run(s, op_mig_step, &st, OP_WRITE, &e);
    if (rc < 0)
        return relay_error_set(err, rc, "migration %04d_%s (%s) failed: %s", m->version, m->name,
                               up ? "up" : "down", e.message);
    return rc;
}

int relay_store_migrate_up(relay_store_t *s, int *applied, relay_error_t *err)
{
    if (applied)
        *applied = 0;
    const relay_migration_src_t **list;
    size_t n;
    if (known_migrations(s, &list, &n))
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    int rc = run(s, op_ensure_table, NULL, OP_WRITE, err);
    for (size_t i = 0; i < n && rc >= 0; i++) {
        rc = mig_step(s, list[i], 1, err);
        if (rc == 0 && applied)
            (*applied)++;
    }
    free(list);
    return rc < 0 ? rc : 0;
}

static const relay_migration_src_t *find_known(const relay_migration_src_t **list, size_t n, int v)
{
    for (size_t i = 0; i < n; i++)
        if (list[i]->version == v)
            return list[i];
    return NULL;
}

int relay_store_migrate_down(relay_store_t *s, int steps, int *rolled_back, relay_error_t *err)
{
    if (rolled_back)
        *rolled_back = 0;
    if (steps <= 0)
        steps = 1;
    const relay_migration_src_t **list;
    size_t n;
    applied_set_t a;
    if (known_migrations(s, &list, &n))
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    int rc = read_applied(s, &a, err);
    const relay_migration_info_t *done = a.v.items;
    /* Newest first: applied versions are sorted ascending. */
    for (size_t i = a.v.n; rc >= 0 && i > 0 && steps > 0; i--, steps--) {
        const relay_migration_src_t *m = find_known(list, n, done[i - 1].version);
        if (!m) {
            rc = relay_error_set(err, RELAY_ERR_CONFIG,
                                 "migration %d is applied but unknown to this build; use the build "
                                 "that applied it to roll it back",
                                 done[i - 1].version);
            break;
        }
        rc = mig_step(s, m, 0, err);
        if (rc == 0 && rolled_back)
            (*rolled_back)++;
    }
    free(a.v.items);
    free(list);
    return rc < 0 ? rc : 0;
}

int relay_store_migrate_status(relay_store_t *s, relay_migration_info_t **out, size_t *n,
                               relay_error_t *err)
{
    *out = NULL;
    *n = 0;
    const relay_migration_src_t **list;
    size_t nk;
    applied_set_t a;
    if (known_migrations(s, &list, &nk))
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    int rc = read_applied(s, &a, err);
    relay_migration_info_t *info = rc ? NULL : calloc(nk + 1, sizeof *info);
    if (!rc && !info)
        rc = relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < nk; i++) {
        info[i].version = list[i]->version;
        relay_strlcpy(info[i].name, list[i]->name, sizeof info[i].name);
        const relay_migration_info_t *ap = find_applied(&a, list[i]->version);
        info[i].applied = ap != NULL;
        info[i].applied_at = ap ? ap->applied_at : 0;
    }
    if (!rc) {
        *out = info;
        *n = nk;
    }
    free(a.v.items);
    free(list);
    return rc;
}

int relay_store_check_schema(relay_store_t *s, relay_error_t *err)
{
    relay_migration_info_t *info;
    size_t n;
    int rc = relay_store_migrate_status(s, &info, &n, err);
    if (rc)
        return rc;
    size_t pending = 0;
    const relay_migration_info_t *first = NULL;
    for (size_t i = 0; i < n; i++)
        if (!info[i].applied && pending++ == 0)
            first = &info[i];
    if (pending)
        rc = relay_error_set(err, RELAY_ERR_CONFIG,
                             "database schema is not up to date: %zu pending migration(s), first "
                             "%04d_%s; run `relay-server migrate up`",
                             pending, first->version, first->name);
    free(info);
    return rc;
}

/* ---------------------------------------------------------------- key records */

void relay_key_record_clear(relay_key_record_t *rec)
{
    if (!rec)
        return;
    free(rec->name);
    free(rec->description);
    free(rec->allowed_ips);
    free(rec->allowed_origins);
    free(rec->allowed_models);
    free(rec->metadata);
    free(rec->cost_limits);
    memset(rec, 0, sizeof *rec);
}

int relay_key_record_copy(relay_key_record_t *dst, const relay_key_record_t *src)
{
    *dst = *src;
    dst->name = relay_strdup0(src->name);
    dst->description = relay_strdup0(src->description);
    dst->allowed_ips = relay_strdup0(src->allowed_ips);
    dst->allowed_origins = relay_strdup0(src->allowed_origins);
    dst->allowed_models = relay_strdup0(src->allowed_models);
    dst->metadata = relay_strdup0(src->metadata);
    dst->cost_limits = relay_strdup0(src->cost_limits);
    if ((src->cost_limits && !dst->cost_limits) || (src->name && !dst->name) ||
        (src->description && !dst->description) || (src->allowed_ips && !dst->allowed_ips) ||
        (src->allowed_origins && !dst->allowed_origins) ||
        (src->allowed_models && !dst->allowed_models) || (src->metadata && !dst->metadata)) {
        relay_key_record_clear(dst);
        return RELAY_ERR_NOMEM;
    }
    return 0;
}

void relay_key_records_free(relay_key_record_t *recs, size_t n)
{
    if (!recs)
        return;
    for (size_t i = 0; i < n; i++)
        relay_key_record_clear(&recs[i]);
    free(recs);
}

/* ---------------------------------------------------------------- api_keys */

#define KEY_COLS                                                                                   \
    "id, name, description, key_prefix, key_hash, token_limit, token_used, request_count, "        \
    "error_count, rate_limit_tier, is_active, is_deleted, allowed_ips, allowed_origins, "          \
    "allowed_models, metadata, expires_at, created_at, updated_at, last_used_at, deleted_at, "     \
    "cost_limits, upstream_group"

static int dup_col(const relay_store_driver_t *d, const relay_sql_row_t *row, int col, char **out)
{
    const char *t = d->col_text(row, col);
    *out = t ? strdup(t) : NULL;
    return t && !*out ? RELAY_ERR_NOMEM : 0;
}

static int read_key(const relay_store_driver_t *d, const relay_sql_row_t *row,
                    relay_key_record_t *k)
{
    memset(k, 0, sizeof *k);
    copy_text(k->id, sizeof k->id, d->col_text(row, 0));
    copy_text(k->key_prefix, sizeof k->key_prefix, d->col_text(row, 3));
    copy_text(k->key_hash, sizeof k->key_hash, d->col_text(row, 4));
    k->token_limit = d->col_int(row, 5);
    k->token_used = d->col_int(row, 6);
    k->request_count = d->col_int(row, 7);
    k->error_count = d->col_int(row, 8);
    copy_text(k->rate_limit_tier, sizeof k->rate_limit_tier, d->col_text(row, 9));
    k->is_active = (int)d->col_int(row, 10);
    k->is_deleted = (int)d->col_int(row, 11);
    k->expires_at = d->col_int(row, 16);
    k->created_at = d->col_int(row, 17);
    k->updated_at = d->col_int(row, 18);
    k->last_used_at = d->col_int(row, 19);
    k->deleted_at = d->col_int(row, 20);
    copy_text(k->upstream_group, sizeof k->upstream_group, d->col_text(row, 22));
    int rc = dup_col(d, row, 1, &k->name);
    rc = rc ? rc : dup_col(d, row, 2, &k->description);
    rc = rc ? rc : dup_col(d, row, 12, &k->allowed_ips);
    rc = rc ? rc : dup_col(d, row, 13, &k->allowed_origins);
    rc = rc ? rc : dup_col(d, row, 14, &k->allowed_models);
    rc = rc ? rc : dup_col(d, row, 15, &k->metadata);
    rc = rc ? rc : dup_col(d, row, 21, &k->cost_limits);
    if (rc)
        relay_key_record_clear(k);
    return rc;
}

typedef struct key_one {
    const relay_store_driver_t *drv;
    relay_key_record_t *out;
    int found;
    const char *sql;
    relay_sql_val_t param;
} key_one_t;

static int key_one_row(void *ud, const relay_sql_row_t *row)
{
    key_one_t *q = ud;
    relay_key_record_clear(q->out); /* a retried read must not leak the first attempt's strings */
    int rc = read_key(q->drv, row, q->out);
    q->found = rc == 0;
    return rc;
}

static int op_key_one(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    key_one_t *q = arg;
    q->found = 0;
    return s->drv->exec(c, q->sql, &q->param, 1, key_one_row, q, NULL, err);
}

static int key_fetch(relay_store_t *s, const char *sql, const char *value, relay_key_record_t *out)
{
    key_one_t q = {s->drv, out, 0, sql, V_TEXT(value)};
    int rc = run(s, op_key_one, &q, OP_READ, NULL);
    if (rc)
        return rc;
    return q.found ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_store_key_get(relay_store_t *s, const char *id, relay_key_record_t *out)
{
    char nid[37];
    if (!s || !out)
        return RELAY_ERR_INVALID;
    memset(out, 0, sizeof *out);
    if (norm_id(nid, id))
        return RELAY_ERR_NOT_FOUND;
    return key_fetch(s, "SELECT " KEY_COLS " FROM api_keys WHERE id = $1", nid, out);
}

int relay_store_key_get_by_prefix(relay_store_t *s, const char *key_prefix, relay_key_record_t *out)
{
    if (!s || !out || !key_prefix)
        return RELAY_ERR_INVALID;
    memset(out, 0, sizeof *out);
    return key_fetch(s, "SELECT " KEY_COLS " FROM api_keys WHERE key_prefix = $1", key_prefix, out);
}

typedef struct key_write {
    const relay_key_record_t *rec;
    const char *id;
    int64_t now;
} key_write_t;

static int op_key_insert(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const key_write_t *w = arg;
    const relay_key_record_t *k = w->rec;
    int64_t created = k->created_at ? k->created_at : w->now;
    relay_sql_val_t p[] = {
        V_TEXT(w->id),
        V_TEXT(k->name),
        V_TEXT(k->description),
        V_TEXT(k->key_prefix),
        V_TEXT(k->key_hash),
        V_INT(k->token_limit),
        V_INT(k->token_used),
        V_INT(k->request_count),
        V_INT(k->error_count),
        V_TEXT(k->rate_limit_tier),
        V_INT(!!k->is_active),
        V_INT(!!k->is_deleted),
        V_TEXT(k->allowed_ips),
        V_TEXT(k->allowed_origins),
        V_TEXT(k->allowed_models),
        V_TEXT(k->metadata),
        V_TS(k->expires_at),
        V_INT(created),
        V_INT(k->updated_at ? k->updated_at : created),
        V_TS(k->last_used_at),
        V_TS(k->deleted_at),
        V_TEXT(k->cost_limits),
        V_OPT(k->upstream_group),
    };
    return s->drv->exec(c,
                        "INSERT INTO api_keys (" KEY_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, "
                        "$8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, "
                        "$23)",
                        p, 23, NULL, NULL, NULL, err);
}

/* The checks both backends would make differently (or not at all), made once here. */
static int key_valid(const relay_key_record_t *k, char nid[37])
{
    if (!k || norm_id(nid, k->id) || !k->name || !k->key_prefix[0] || !k->key_hash[0] ||
        !k->rate_limit_tier[0])
        return RELAY_ERR_INVALID;
    return 0;
}

int relay_store_key_insert(relay_store_t *s, const relay_key_record_t *rec)
{
    char nid[37];
    if (!s || key_valid(rec, nid))
        return RELAY_ERR_INVALID;
    key_write_t w = {rec, nid, relay_now()};
    return run(s, op_key_insert, &w, OP_WRITE, NULL);
}

static int op_key_update(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const key_write_t *w = arg;
    const relay_key_record_t *k = w->rec;
    relay_sql_val_t p[] = {
        V_TEXT(w->id),
        V_TEXT(k->name),
        V_TEXT(k->description),
        V_TEXT(k->key_prefix),
        V_TEXT(k->key_hash),
        V_INT(k->token_limit),
        V_TEXT(k->rate_limit_tier),
        V_INT(!!k->is_active),
        V_INT(!!k->is_deleted),
        V_TEXT(k->allowed_ips),
        V_TEXT(k->allowed_origins),
        V_TEXT(k->allowed_models),
        V_TEXT(k->metadata),
        V_TS(k->expires_at),
        V_INT(k->updated_at ? k->updated_at : w->now),
        V_TS(k->deleted_at),
        V_TEXT(k->cost_limits),
        V_OPT(k->upstream_group),
    };
    int64_t changed = 0;
    int rc =
        s->drv->exec(c,
                     "UPDATE api_keys SET name = $2, description = $3, key_prefix = $4, "
                     "key_hash = $5, token_limit = $6, rate_limit_tier = $7, is_active = $8, "
                     "is_deleted = $9, allowed_ips = $10, allowed_origins = $11, "
                     "allowed_models = $12, metadata = $13, expires_at = $14, updated_at = $15, "
                     "deleted_at = $16, cost_limits = $17, upstream_group = $18 WHERE id = $1",
                     p, 18, NULL, NULL, &changed, err);
    return rc ? rc : changed ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_store_key_update(relay_store_t *s, const relay_key_record_t *rec)
{
    char nid[37];
    if (!s || !rec)
        return RELAY_ERR_INVALID;
    if (norm_id(nid, rec->id))
        return RELAY_ERR_NOT_FOUND;
    if (key_valid(rec, nid))
        return RELAY_ERR_INVALID;
    key_write_t w = {rec, nid, relay_now()};
    return run(s, op_key_update, &w, OP_WRITE, NULL);
}

static int op_key_delete(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    relay_sql_val_t p[] = {V_TEXT((const char *)arg)};
    int64_t changed = 0;
    int rc = s->drv->exec(c, "DELETE FROM usage_logs WHERE api_key_id = $1", p, 1, NULL, NULL, NULL,
                          err);
    if (!rc)
        rc = s->drv->exec(c, "DELETE FROM usage_daily WHERE api_key_id = $1", p, 1, NULL, NULL,
                          NULL, err);
    if (!rc)
        rc = s->drv->exec(c, "DELETE FROM api_keys WHERE id = $1", p, 1, NULL, NULL, &changed, err);
    return rc ? rc : changed ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_store_key_delete_hard(relay_store_t *s, const char *id)
{
    char nid[37];
    if (!s)
        return RELAY_ERR_INVALID;
    if (norm_id(nid, id))
        return RELAY_ERR_NOT_FOUND;
    return run(s, op_key_delete, nid, OP_WRITE, NULL);
}

typedef struct key_list {
    const char *where;
    relay_sql_val_t p[3];
    int np; /* parameters of the WHERE clause; LIMIT and OFFSET follow */
    vec_t v;
    int64_t total;
    const relay_store_driver_t *drv;
} key_list_t;

static int key_list_row(void *ud, const relay_sql_row_t *row)
{
    key_list_t *q = ud;
    relay_key_record_t *k = vec_push(&q->v);
    return k ? read_key(q->drv, row, k) : RELAY_ERR_NOMEM;
}

static int op_key_list(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    key_list_t *q = arg;
    for (size_t i = 0; i < q->v.n; i++) /* a retried read starts over */
        relay_key_record_clear(&((relay_key_record_t *)q->v.items)[i]);
    q->v.n = 0;
    return query_page(s, c, KEY_COLS, "api_keys", q->where, q->p, q->np, key_list_row, q, &q->total,
                      err);
}

int relay_store_key_list(relay_store_t *s, relay_key_filter filter, int64_t now, int64_t skip,
                         int64_t limit, relay_key_record_t **out, size_t *n, int64_t *total)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    if (total)
        *total = 0;
    key_list_t q = {.drv = s->drv, .v = {.size = sizeof(relay_key_record_t)}};
    switch (filter) {
    case RELAY_KEYS_ALL:
        q.where = "is_deleted = 0";
        break;
    case RELAY_KEYS_ACTIVE:
        q.where = "is_deleted = 0 AND is_active = 1 AND (expires_at IS NULL OR expires_at > $1)";
        q.p[q.np++] = V_INT(now);
        break;
    case RELAY_KEYS_DISABLED:
        q.where = "is_deleted = 0 AND is_active = 0";
        break;
    case RELAY_KEYS_EXPIRED:
        q.where = "is_deleted = 0 AND expires_at IS NOT NULL AND expires_at <= $1";
        q.p[q.np++] = V_INT(now);
        break;
    default:
        return RELAY_ERR_INVALID;
    }
    q.p[q.np] = V_INT(limit > 0 ? limit : 0); /* limit 0: only the total */
    q.p[q.np + 1] = V_INT(skip > 0 ? skip : 0);
    int rc = run(s, op_key_list, &q, OP_READ, NULL);
    if (rc) {
        relay_key_records_free(q.v.items, q.v.n);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    if (total)
        *total = q.total;
    return 0;
}

/* ---------------------------------------------------------------- usage */

/* Per-key counter deltas of one batch. */
typedef struct key_delta {
    char id[37];
    int64_t billed, requests, errors, last_used;
    int exists;
} key_delta_t;

/* Per key and UTC day totals of one batch. */
typedef struct day_delta {
    size_t key; /* index into the key deltas */
    char day[11];
    int64_t requests, tokens, prompt, completion, cache_creation, cache_read, errors;
    double cost;
} day_delta_t;

typedef struct usage_batch {
    const relay_usage_row_t *rows;
    size_t n;
    char (*ids)[37]; /* each row's normalised key id ("" for none) */
    int64_t *created;
    key_delta_t *keys;
    size_t nkeys;
    day_delta_t *days;
    size_t ndays;
} usage_batch_t;

static size_t key_slot(usage_batch_t *b, const char *id)
{
    for (size_t i = 0; i < b->nkeys; i++)
        if (strcmp(b->keys[i].id, id) == 0)
            return i;
    memcpy(b->keys[b->nkeys].id, id, 37);
    return b->nkeys++;
}

static day_delta_t *day_slot(usage_batch_t *b, size_t key, const char *day)
{
    for (size_t i = 0; i < b->ndays; i++)
        if (b->days[i].key == key && strcmp(b->days[i].day, day) == 0)
            return &b->days[i];
    day_delta_t *d = &b->days[b->ndays++];
    d->key = key;
    relay_strlcpy(d->day, day, sizeof d->day);
    return d;
}

/* Checks the rows and sums them per key and per key-day, before any SQL runs. */
static int usage_aggregate(usage_batch_t *b, int64_t now)
{
    for (size_t i = 0; i < b->n; i++) {
        const relay_usage_row_t *r = &b->rows[i];
        if (!r->api_key_id[0])
            b->ids[i][0] = '\0'; /* a request that never had a key: logged, counted nowhere */
        else if (norm_id(b->ids[i], r->api_key_id))
            return RELAY_ERR_INVALID;
        if (r->billed_tokens < 0)
            return RELAY_ERR_INVALID;
        b->created[i] = r->created_at ? r->created_at : now;
        if (!b->ids[i][0])
            continue;
        key_delta_t *k = &b->keys[key_slot(b, b->ids[i])];
        k->billed += r->billed_tokens;
        k->requests++;
        k->errors += !!r->is_error;
        if (b->created[i] > k->last_used)
            k->last_used = b->created[i];
        char day[11];
        relay_utc_day(b->created[i], day, sizeof day);
        day_delta_t *d = day_slot(b, (size_t)(k - b->keys), day);
        d->requests++;
        d->tokens += r->total_tokens;
        d->prompt += r->prompt_tokens;
        d->completion += r->completion_tokens;
        d->cache_creation += r->cache_creation_tokens;
        d->cache_read += r->cache_read_tokens;
        d->errors += !!r->is_error;
        d->cost += r->total_cost;
    }
    return 0;
}

#define USAGE_COLS                                                                                 \
    "api_key_id, request_id, request_method, request_path, request_size, response_status, "        \
    "response_size, response_time_ms, time_to_first_byte_ms, prompt_tokens, completion_tokens, "   \
    "cache_creation_tokens, cache_creation_5m_tokens, cache_creation_1h_tokens, "                  \
    "cache_read_tokens, total_tokens, total_cost, model, is_error, stream, estimated, attempts, "  \
    "error_message, error_code, client_ip, user_agent, created_at, upstream"

static int insert_log(relay_store_t *s, relay_store_conn_t *c, const relay_usage_row_t *r,
                      const char *id, int64_t created, relay_error_t *err)
{
    relay_sql_val_t p[] = {
        V_OPT(id),
        V_OPT(r->request_id),
        V_TEXT(r->request_method),
        V_TEXT(r->request_path),
        V_INT(r->request_size),
        V_INT(r->response_status),
        V_INT(r->response_size),
        V_INT(r->response_time_ms),
        V_INT(r->time_to_first_byte_ms),
        V_INT(r->prompt_tokens),
        V_INT(r->completion_tokens),
        V_INT(r->cache_creation_tokens),
        V_INT(r->cache_creation_5m_tokens),
        V_INT(r->cache_creation_1h_tokens),
        V_INT(r->cache_read_tokens),
        V_INT(r->total_tokens),
        V_REAL(r->total_cost),
        V_OPT(r->model),
        V_INT(!!r->is_error),
        V_INT(!!r->stream),
        V_INT(!!r->estimated),
        V_INT(r->attempts),
        V_OPT(r->error_message),
        V_OPT(r->error_code),
        V_OPT(r->client_ip),
        V_OPT(r->user_agent),
        V_INT(created),
        V_OPT(r->upstream),
        V_OPT(r->row_uid),
    };
    return s->drv->exec(c,
                        "INSERT INTO usage_logs (" USAGE_COLS ", row_uid) VALUES ($1, $2, $3, $4, "
                        "$5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, "
                        "$20, $21, $22, $23, $24, $25, $26, $27, $28, $29)",
                        p, 29, NULL, NULL, NULL, err);
}

static int update_key_counters(relay_store_t *s, relay_store_conn_t *c, key_delta_t *k,
                               relay_error_t *err)
{
    relay_sql_val_t p[] = {V_TEXT(k->id), V_INT(k->billed), V_INT(k->requests), V_INT(k->errors),
                           V_INT(k->last_used)};
    int64_t changed = 0;
    int rc = s->drv->exec(c,
                          "UPDATE api_keys SET token_used = token_used + $2, "
                          "request_count = request_count + $3, error_count = error_count + $4, "
                          "last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $5 "
                          "THEN $5 ELSE last_used_at END WHERE id = $1",
                          p, 5, NULL, NULL, &changed, err);
    k->exists = changed > 0;
    return rc;
}

static int upsert_daily(relay_store_t *s, relay_store_conn_t *c, const char *id,
                        const day_delta_t *d, relay_error_t *err)
{
    relay_sql_val_t p[] = {
        V_TEXT(id),       V_TEXT(d->day),       V_INT(d->requests),       V_INT(d->tokens),
        V_INT(d->prompt), V_INT(d->completion), V_INT(d->cache_creation), V_INT(d->cache_read),
        V_INT(d->errors), V_REAL(d->cost)};
    return s->drv->exec(
        c,
        "INSERT INTO usage_daily (api_key_id, day, requests, tokens, prompt_tokens, "
        "completion_tokens, cache_creation_tokens, cache_read_tokens, errors, cost) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (api_key_id, day) DO UPDATE "
        "SET requests = usage_daily.requests + excluded.requests, "
        "tokens = usage_daily.tokens + excluded.tokens, "
        "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
        "cache_creation_tokens = usage_daily.cache_creation_tokens + "
        "excluded.cache_creation_tokens, "
        "cache_read_tokens = usage_daily.cache_read_tokens + excluded.cache_read_tokens, "
        "errors = usage_daily.errors + excluded.errors, cost = usage_daily.cost + excluded.cost",
        p, 10, NULL, NULL, NULL, err);
}

static int op_usage_write(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    usage_batch_t *b = arg;
    int rc = 0;
    for (size_t i = 0; i < b->n && !rc; i++)
        rc = insert_log(s, c, &b->rows[i], b->ids[i], b->created[i], err);
    for (size_t i = 0; i < b->nkeys && !rc; i++)
        rc = update_key_counters(s, c, &b->keys[i], err);
    /* Daily rows only for keys that exist: usage_daily references api_keys. */
    for (size_t i = 0; i < b->ndays && !rc; i++)
        if (b->keys[b->days[i].key].exists)
            rc = upsert_daily(s, c, b->keys[b->days[i].key].id, &b->days[i], err);
    return rc;
}

int relay_store_usage_write(relay_store_t *s, const relay_usage_row_t *rows, size_t n)
{
    return relay_store_usage_write_err(s, rows, n, NULL);
}

int relay_store_usage_write_err(relay_store_t *s, const relay_usage_row_t *rows, size_t n,
                                relay_error_t *err)
{
    if (!s || (n && !rows))
        return RELAY_ERR_INVALID;
    if (n == 0)
        return 0;
    usage_batch_t b = {.rows = rows, .n = n};
    b.ids = calloc(n, sizeof *b.ids);
    b.created = calloc(n, sizeof *b.created);
    b.keys = calloc(n, sizeof *b.keys);
    b.days = calloc(n, sizeof *b.days);
    int rc = RELAY_ERR_NOMEM;
    if (b.ids && b.created && b.keys && b.days) {
        rc = usage_aggregate(&b, relay_now());
        if (!rc)
            rc = run(s, op_usage_write, &b, OP_WRITE, err);
    }
    free(b.ids);
    free(b.created);
    free(b.keys);
    free(b.days);
    return rc;
}

typedef struct usage_query {
    relay_buf_t where;
    relay_sql_val_t p[10]; /* up to 6 conditions, then limit and offset */
    int np;
    vec_t v;
    int64_t total;
    const relay_store_driver_t *drv;
} usage_query_t;

static int usage_row(void *ud, const relay_sql_row_t *row)
{
    usage_query_t *q = ud;
    const relay_store_driver_t *d = q->drv;
    relay_usage_row_t *r = vec_push(&q->v);
    if (!r)
        return RELAY_ERR_NOMEM;
    r->id = d->col_int(row, 0);
    copy_text(r->api_key_id, sizeof r->api_key_id, d->col_text(row, 1));
    copy_text(r->request_id, sizeof r->request_id, d->col_text(row, 2));
    copy_text(r->request_method, sizeof r->request_method, d->col_text(row, 3));
    copy_text(r->request_path, sizeof r->request_path, d->col_text(row, 4));
    r->request_size = d->col_int(row, 5);
    r->response_status = (int)d->col_int(row, 6);
    r->response_size = d->col_int(row, 7);
    r->response_time_ms = d->col_int(row, 8);
    r->time_to_first_byte_ms = d->col_int(row, 9);
    r->prompt_tokens = d->col_int(row, 10);
    r->completion_tokens = d->col_int(row, 11);
    r->cache_creation_tokens = d->col_int(row, 12);
    r->cache_creation_5m_tokens = d->col_int(row, 13);
    r->cache_creation_1h_tokens = d->col_int(row, 14);
    r->cache_read_tokens = d->col_int(row, 15);
    r->total_tokens = d->col_int(row, 16);
    r->total_cost = d->col_real(row, 17);
    copy_text(r->model, sizeof r->model, d->col_text(row, 18));
    r->is_error = (int)d->col_int(row, 19);
    r->stream = (int)d->col_int(row, 20);
    r->estimated = (int)d->col_int(row, 21);
    r->attempts = (int)d->col_int(row, 22);
    copy_text(r->error_message, sizeof r->error_message, d->col_text(row, 23));
    copy_text(r->error_code, sizeof r->error_code, d->col_text(row, 24));
    copy_text(r->client_ip, sizeof r->client_ip, d->col_text(row, 25));
    copy_text(r->user_agent, sizeof r->user_agent, d->col_text(row, 26));
    r->created_at = d->col_int(row, 27);
    copy_text(r->upstream, sizeof r->upstream, d->col_text(row, 28));
    return 0;
}

static int op_usage_logs(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    usage_query_t *q = arg;
    q->v.n = 0;
    return query_page(s, c, "id, " USAGE_COLS, "usage_logs", relay_buf_str(&q->where), q->p, q->np,
                      usage_row, q, &q->total, err);
}

/* Appends "AND <col> <op> $N" and its parameter. */
static int add_cond(usage_query_t *q, const char *cond, relay_sql_val_t v)
{
    q->p[q->np++] = v;
    return relay_buf_printf(&q->where, " AND %s $%d", cond, q->np);
}

int relay_store_usage_logs(relay_store_t *s, const relay_usage_query_t *qin,
                           relay_usage_row_t **out, size_t *n, int64_t *total)
{
    if (!s || !qin || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    if (total)
        *total = 0;
    char nid[37];
    if (qin->api_key_id && norm_id(nid, qin->api_key_id))
        return 0; /* not a UUID: matches nothing */
    usage_query_t q = {.drv = s->drv, .v = {.size = sizeof(relay_usage_row_t)}};
    relay_buf_init(&q.where, 1024);
    int rc = relay_buf_appends(&q.where, "1 = 1");
    if (!rc && qin->api_key_id)
        rc = add_cond(&q, "api_key_id =", V_STR(nid));
    if (!rc && qin->start)
        rc = add_cond(&q, "created_at >=", V_INT(qin->start));
    if (!rc && qin->end)
        rc = add_cond(&q, "created_at <", V_INT(qin->end));
    if (!rc && qin->model)
        rc = add_cond(&q, "model =", V_TEXT(qin->model));
    if (!rc && qin->status)
        rc = add_cond(&q, "response_status =", V_INT(qin->status));
    if (!rc && qin->is_error == 1)
        rc = add_cond(&q, "is_error =", V_INT(1));
    q.p[q.np] = V_INT(qin->limit > 0 ? qin->limit : 0);
    q.p[q.np + 1] = V_INT(qin->skip > 0 ? qin->skip : 0);
    if (!rc)
        rc = run(s, op_usage_logs, &q, OP_READ, NULL);
    relay_buf_free(&q.where);
    if (rc) {
        free(q.v.items);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    if (total)
        *total = q.total;
    return 0;
}

static int daily_row(void *ud, const relay_sql_row_t *row)
{
    usage_query_t *q = ud;
    const relay_store_driver_t *d = q->drv;
    relay_usage_daily_t *r = vec_push(&q->v);
    if (!r)
        return RELAY_ERR_NOMEM;
    copy_text(r->day, sizeof r->day, d->col_text(row, 0));
    r->requests = d->col_int(row, 1);
    r->tokens = d->col_int(row, 2);
    r->prompt_tokens = d->col_int(row, 3);
    r->completion_tokens = d->col_int(row, 4);
    r->cache_creation_tokens = d->col_int(row, 5);
    r->cache_read_tokens = d->col_int(row, 6);
    r->errors = d->col_int(row, 7);
    r->cost = d->col_real(row, 8);
    return 0;
}

static int op_usage_daily(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    usage_query_t *q = arg;
    q->v.n = 0;
    relay_buf_t sql;
    relay_buf_init(&sql, 4096);
    /* SUM over one row is that row, so one query serves a key and the all-keys total alike. */
    int rc = relay_buf_printf(&sql,
                              "SELECT day, SUM(requests), SUM(tokens), SUM(prompt_tokens), "
                              "SUM(completion_tokens), SUM(cache_creation_tokens), "
                              "SUM(cache_read_tokens), SUM(errors), SUM(cost) FROM usage_daily "
                              "WHERE %s GROUP BY day ORDER BY day DESC",
                              relay_buf_str(&q->where));
    rc = rc ? rc : s->drv->exec(c, relay_buf_str(&sql), q->p, q->np, daily_row, q, NULL, err);
    relay_buf_free(&sql);
    return rc;
}

int relay_store_usage_daily(relay_store_t *s, const char *api_key_id, const char *from_day,
                            const char *to_day, relay_usage_daily_t **out, size_t *n)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    if ((from_day && !is_day(from_day)) || (to_day && !is_day(to_day)))
        return RELAY_ERR_INVALID;
    char nid[37];
    if (api_key_id && norm_id(nid, api_key_id))
        return 0;
    usage_query_t q = {.drv = s->drv, .v = {.size = sizeof(relay_usage_daily_t)}};
    relay_buf_init(&q.where, 1024);
    int rc = relay_buf_appends(&q.where, "1 = 1");
    if (!rc && api_key_id)
        rc = add_cond(&q, "api_key_id =", V_STR(nid));
    if (!rc && from_day)
        rc = add_cond(&q, "day >=", V_TEXT(from_day));
    if (!rc && to_day)
        rc = add_cond(&q, "day <=", V_TEXT(to_day));
    if (!rc)
        rc = run(s, op_usage_daily, &q, OP_READ, NULL);
    relay_buf_free(&q.where);
    if (rc) {
        free(q.v.items);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    return 0;
}

typedef struct model_cost_q {
    relay_sql_val_t p[3];
    int np;
    const char *sql;
    vec_t v;
    const relay_store_driver_t *drv;
} model_cost_q_t;

static int model_cost_row(void *ud, const relay_sql_row_t *row)
{
    model_cost_q_t *q = ud;
    relay_model_cost_t *m = vec_push(&q->v);
    if (!m)
        return RELAY_ERR_NOMEM;
    copy_text(m->model, sizeof m->model, q->drv->col_text(row, 0));
    m->cost = q->drv->col_real(row, 1);
    return 0;
}

static int op_model_cost(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    model_cost_q_t *q = arg;
    q->v.n = 0;
    return s->drv->exec(c, q->sql, q->p, q->np, model_cost_row, q, NULL, err);
}

int relay_store_usage_cost_by_model(relay_store_t *s, const char *api_key_id, int64_t since,
                                    int64_t until, relay_model_cost_t **out, size_t *n)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    char nid[37];
    if (!api_key_id || norm_id(nid, api_key_id))
        return 0;
    /* COALESCE: a NULL model groups as "", which no budget pattern matches but "" budgets do. */
    model_cost_q_t q = {.drv = s->drv, .v = {.size = sizeof(relay_model_cost_t)}};
    q.p[q.np++] = V_STR(nid);
    q.p[q.np++] = V_INT(since);
    q.p[q.np++] = V_INT(until > 0 ? until : INT64_MAX);
    q.sql = "SELECT COALESCE(model, ''), SUM(total_cost) FROM usage_logs WHERE api_key_id = $1 "
            "AND created_at >= $2 AND created_at < $3 GROUP BY COALESCE(model, '')";
    int rc = run(s, op_model_cost, &q, OP_READ, NULL);
    if (rc) {
        free(q.v.items);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    return 0;
}

typedef struct prune {
    int64_t before, batch, deleted;
} prune_t;

static int op_usage_prune(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    prune_t *pr = arg;
    relay_sql_val_t p[] = {V_INT(pr->before), V_INT(pr->batch)};
    /* Bounded batches keep each transaction (and SQLite's write lock) short. */
    return s->drv->exec(c,
                        "DELETE FROM usage_logs WHERE id IN (SELECT id FROM usage_logs "
                        "WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                        p, 2, NULL, NULL, &pr->deleted, err);
}

int relay_store_usage_prune(relay_store_t *s, int64_t before, int batch, int64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (!s)
        return RELAY_ERR_INVALID;
    prune_t pr = {before, batch > 0 ? batch : DEFAULT_PRUNE_BATCH, 0};
    int rc = run(s, op_usage_prune, &pr, OP_WRITE, NULL);
    if (!rc && deleted)
        *deleted = pr.deleted;
    return rc;
}

/* ---------------------------------------------------------------- rate_limit_tiers */

typedef struct tier_list {
    vec_t v;
    const relay_store_driver_t *drv;
} tier_list_t;

static int tier_row(void *ud, const relay_sql_row_t *row)
{
    tier_list_t *q = ud;
    relay_tier_def_t *t = vec_push(&q->v);
    if (!t)
        return RELAY_ERR_NOMEM;
    copy_text(t->name, sizeof t->name, q->drv->col_text(row, 0));
    t->requests = q->drv->col_int(row, 1);
    t->period_s = q->drv->col_int(row, 2);
    t->tokens_per_minute = q->drv->col_int(row, 3);
    t->concurrent = q->drv->col_int(row, 4);
    copy_text(t->cost_limits, sizeof t->cost_limits, q->drv->col_text(row, 5));
    return 0;
}

static int op_tier_list(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    tier_list_t *q = arg;
    q->v.n = 0;
    return s->drv->exec(c,
                        "SELECT name, requests, period_s, tokens_per_minute, concurrent, "
                        "cost_limits FROM rate_limit_tiers ORDER BY name",
                        NULL, 0, tier_row, q, NULL, err);
}

int relay_store_tier_list(relay_store_t *s, relay_tier_def_t **out, size_t *n)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    tier_list_t q = {.v = {.size = sizeof(relay_tier_def_t)}, .drv = s->drv};
    int rc = run(s, op_tier_list, &q, OP_READ, NULL);
    if (rc) {
        free(q.v.items);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    return 0;
}

static int op_tier_upsert(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const relay_tier_def_t *t = arg;
    relay_sql_val_t p[] = {
        V_TEXT(t->name),      V_INT(t->requests), V_INT(t->period_s),   V_INT(t->tokens_per_minute),
        V_INT(t->concurrent), V_INT(relay_now()), V_OPT(t->cost_limits)};
    return s->drv->exec(
        c,
        "INSERT INTO rate_limit_tiers (name, requests, period_s, tokens_per_minute, "
        "concurrent, created_at, updated_at, cost_limits) VALUES ($1, $2, $3, $4, $5, $6, $6, "
        "$7) ON CONFLICT (name) DO UPDATE SET requests = excluded.requests, "
        "period_s = excluded.period_s, tokens_per_minute = excluded.tokens_per_minute, "
        "concurrent = excluded.concurrent, updated_at = excluded.updated_at, "
        "cost_limits = excluded.cost_limits",
        p, 7, NULL, NULL, NULL, err);
}

int relay_store_tier_upsert(relay_store_t *s, const relay_tier_def_t *tier)
{
    if (!s || !tier || !tier->name[0] || memchr(tier->name, '\0', sizeof tier->name) == NULL)
        return RELAY_ERR_INVALID;
    return run(s, op_tier_upsert, (void *)tier, OP_WRITE, NULL);
}

static int op_tier_delete(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    relay_sql_val_t p[] = {V_TEXT((const char *)arg)};
    int64_t changed = 0;
    int rc = s->drv->exec(c, "DELETE FROM rate_limit_tiers WHERE name = $1", p, 1, NULL, NULL,
                          &changed, err);
    return rc ? rc : changed ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_store_tier_delete(relay_store_t *s, const char *name)
{
    if (!s || !name)
        return RELAY_ERR_INVALID;
    return run(s, op_tier_delete, (void *)name, OP_WRITE, NULL);
}

/* ---------------------------------------------------------------- upstreams */

#define UPSTREAM_COLS                                                                              \
    "id, name, url, api_key_sealed, key_last4, weight, priority, models, max_concurrency, "        \
    "timeout, max_retries, upstream_group, is_disabled, created_at, updated_at"

typedef struct upstream_list {
    vec_t v;
    const relay_store_driver_t *drv;
} upstream_list_t;

/* models: a JSON array of patterns, read without jansson's help (the store does not link it
 * into this file): the patterns' own characters never need escaping. */
static void models_from_json(relay_upstream_def_t *d, const char *t)
{
    d->n_models = 0;
    for (const char *p = t ? strchr(t, '"') : NULL; p && d->n_models < RELAY_UPSTREAM_MAX_MODELS;) {
        const char *e = strchr(p + 1, '"');
        if (!e)
            break;
        size_t n = (size_t)(e - p - 1);
        if (n && n < sizeof d->models[0]) {
            memcpy(d->models[d->n_models], p + 1, n);
            d->models[d->n_models++][n] = '\0';
        }
        p = strchr(e + 1, '"');
    }
}

static void models_to_json(const relay_upstream_def_t *d, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < d->n_models && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", i ? "," : "", d->models[i]);
    if (n < cap)
        snprintf(out + n, cap - n, "]");
}

static int upstream_row(void *ud, const relay_sql_row_t *row)
{
    upstream_list_t *q = ud;
    const relay_store_driver_t *d = q->drv;
    relay_upstream_record_t *u = vec_push(&q->v);
    if (!u)
        return RELAY_ERR_NOMEM;
    copy_text(u->id, sizeof u->id, d->col_text(row, 0));
    copy_text(u->def.name, sizeof u->def.name, d->col_text(row, 1));
    copy_text(u->def.url, sizeof u->def.url, d->col_text(row, 2));
    copy_text(u->api_key_sealed, sizeof u->api_key_sealed, d->col_text(row, 3));
    copy_text(u->key_last4, sizeof u->key_last4, d->col_text(row, 4));
    u->def.weight = (int)d->col_int(row, 5);
    u->def.priority = (int)d->col_int(row, 6);
    models_from_json(&u->def, d->col_text(row, 7));
    u->def.max_concurrency = (int)d->col_int(row, 8);
    u->def.timeout_s = d->col_real(row, 9);
    u->def.max_retries = (int)d->col_int(row, 10);
    copy_text(u->def.group, sizeof u->def.group, d->col_text(row, 11));
    u->is_disabled = (int)d->col_int(row, 12);
    u->created_at = d->col_int(row, 13);
    u->updated_at = d->col_int(row, 14);
    return 0;
}

static int op_upstream_list(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    upstream_list_t *q = arg;
    q->v.n = 0;
    return s->drv->exec(c, "SELECT " UPSTREAM_COLS " FROM upstreams ORDER BY name", NULL, 0,
                        upstream_row, q, NULL, err);
}

int relay_store_upstream_list(relay_store_t *s, relay_upstream_record_t **out, size_t *n)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    upstream_list_t q = {.v = {.size = sizeof(relay_upstream_record_t)}, .drv = s->drv};
    int rc = run(s, op_upstream_list, &q, OP_READ, NULL);
    if (rc) {
        free(q.v.items);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    return 0;
}

typedef struct upstream_write {
    const relay_upstream_record_t *rec;
    char id[37];
    int update;
} upstream_write_t;

static int op_upstream_write(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const upstream_write_t *w = arg;
    const relay_upstream_record_t *u = w->rec;
    char models[RELAY_UPSTREAM_MAX_MODELS * 70 + 4];
    models_to_json(&u->def, models, sizeof models);
    int64_t now = relay_now();
    relay_sql_val_t p[] = {V_TEXT(w->id),
                           V_TEXT(u->def.name),
                           V_TEXT(u->def.url),
                           V_TEXT(u->api_key_sealed),
                           V_TEXT(u->key_last4),
                           V_INT(u->def.weight),
                           V_INT(u->def.priority),
                           V_STR(models),
                           V_INT(u->def.max_concurrency),
                           V_REAL(u->def.timeout_s),
                           V_INT(u->def.max_retries),
                           V_OPT(u->def.group),
                           V_INT(!!u->is_disabled),
                           V_INT(u->created_at ? u->created_at : now),
                           V_INT(u->updated_at ? u->updated_at : now)};
    if (!w->update)
        return s->drv->exec(c,
                            "INSERT INTO upstreams (" UPSTREAM_COLS ") VALUES ($1, $2, $3, $4, $5, "
                            "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                            p, 15, NULL, NULL, NULL, err);
    int64_t changed = 0;
    int rc = s->drv->exec(c,
                          "UPDATE upstreams SET name = $2, url = $3, api_key_sealed = $4, "
                          "key_last4 = $5, weight = $6, priority = $7, models = $8, "
                          "max_concurrency = $9, timeout = $10, max_retries = $11, "
                          "upstream_group = $12, is_disabled = $13, updated_at = $15 "
                          "WHERE id = $1 AND created_at <= $14",
                          p, 15, NULL, NULL, &changed, err);
    return rc ? rc : changed ? 0 : RELAY_ERR_NOT_FOUND;
}

static int upstream_write(relay_store_t *s, const relay_upstream_record_t *rec, int update)
{
    upstream_write_t w = {.rec = rec, .update = update};
    if (!s || !rec || norm_id(w.id, rec->id) || !rec->def.name[0] || !rec->def.url[0] ||
        !rec->api_key_sealed[0])
        return RELAY_ERR_INVALID;
    return run(s, op_upstream_write, &w, OP_WRITE, NULL);
}

int relay_store_upstream_insert(relay_store_t *s, const relay_upstream_record_t *rec)
{
    return upstream_write(s, rec, 0);
}

int relay_store_upstream_update(relay_store_t *s, const relay_upstream_record_t *rec)
{
    return upstream_write(s, rec, 1);
}

static int op_upstream_delete(relay_store_t *s, relay_store_conn_t *c, void *arg,
                              relay_error_t *err)
{
    relay_sql_val_t p[] = {V_TEXT((const char *)arg)};
    int64_t changed = 0;
    int rc =
        s->drv->exec(c, "DELETE FROM upstreams WHERE id = $1", p, 1, NULL, NULL, &changed, err);
    return rc ? rc : changed ? 0 : RELAY_ERR_NOT_FOUND;
}

int relay_store_upstream_delete(relay_store_t *s, const char *id)
{
    char nid[37];
    if (!s || !id || norm_id(nid, id))
        return RELAY_ERR_INVALID;
    return run(s, op_upstream_delete, nid, OP_WRITE, NULL);
}

/* ---------------------------------------------------------------- audit_log */

static int op_audit_insert(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    const relay_audit_entry_t *e = arg;
    relay_sql_val_t p[] = {V_TEXT(e->action),  V_OPT(e->target),
                           V_OPT(e->actor),    V_OPT(e->client_ip),
                           V_TEXT(e->details), V_INT(e->created_at ? e->created_at : relay_now())};
    return s->drv->exec(c,
                        "INSERT INTO audit_log (action, target, actor, client_ip, details, "
                        "created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                        p, 6, NULL, NULL, NULL, err);
}

int relay_store_audit_insert(relay_store_t *s, const relay_audit_entry_t *e)
{
    if (!s || !e || !e->action[0])
        return RELAY_ERR_INVALID;
    return run(s, op_audit_insert, (void *)e, OP_WRITE, NULL);
}

typedef struct audit_list {
    relay_sql_val_t p[2];
    vec_t v;
    int64_t total;
    const relay_store_driver_t *drv;
} audit_list_t;

static int audit_row(void *ud, const relay_sql_row_t *row)
{
    audit_list_t *q = ud;
    const relay_store_driver_t *d = q->drv;
    relay_audit_entry_t *e = vec_push(&q->v);
    if (!e)
        return RELAY_ERR_NOMEM;
    e->id = d->col_int(row, 0);
    copy_text(e->action, sizeof e->action, d->col_text(row, 1));
    copy_text(e->target, sizeof e->target, d->col_text(row, 2));
    copy_text(e->actor, sizeof e->actor, d->col_text(row, 3));
    copy_text(e->client_ip, sizeof e->client_ip, d->col_text(row, 4));
    e->created_at = d->col_int(row, 6);
    return dup_col(d, row, 5, &e->details);
}

static int op_audit_list(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    audit_list_t *q = arg;
    relay_audit_entry_t *items = q->v.items;
    for (size_t i = 0; i < q->v.n; i++) /* a retried read starts over */
        free(items[i].details);
    q->v.n = 0;
    return query_page(s, c, "id, action, target, actor, client_ip, details, created_at",
                      "audit_log", "1 = 1", q->p, 0, audit_row, q, &q->total, err);
}

int relay_store_audit_list(relay_store_t *s, int64_t skip, int64_t limit, relay_audit_entry_t **out,
                           size_t *n, int64_t *total)
{
    if (!s || !out || !n)
        return RELAY_ERR_INVALID;
    *out = NULL;
    *n = 0;
    if (total)
        *total = 0;
    audit_list_t q = {.p = {V_INT(limit > 0 ? limit : 0), V_INT(skip > 0 ? skip : 0)},
                      .v = {.size = sizeof(relay_audit_entry_t)},
                      .drv = s->drv};
    int rc = run(s, op_audit_list, &q, OP_READ, NULL);
    if (rc) {
        relay_audit_entries_free(q.v.items, q.v.n);
        return rc;
    }
    *out = q.v.items;
    *n = q.v.n;
    if (total)
        *total = q.total;
    return 0;
}

void relay_audit_entries_free(relay_audit_entry_t *e, size_t n)
{
    if (!e)
        return;
    for (size_t i = 0; i < n; i++)
        free(e[i].details);
    free(e);
}

/* ---------------------------------------------------------------- settings */

typedef struct setting {
    const char *name, *value;
    char *buf;
    size_t cap;
    int found, too_long;
    const relay_store_driver_t *drv;
} setting_t;

static int setting_row(void *ud, const relay_sql_row_t *row)
{
    setting_t *q = ud;
    const char *v = q->drv->col_text(row, 0);
    size_t len = v ? strlen(v) : 0;
    q->found = 1;
    q->too_long = len >= q->cap;
    if (!q->too_long)
        memcpy(q->buf, v ? v : "", len + 1);
    return 0;
}

static int op_setting_get(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    setting_t *q = arg;
    relay_sql_val_t p[] = {V_TEXT(q->name)};
    q->found = 0;
    return s->drv->exec(c, "SELECT value FROM settings WHERE name = $1", p, 1, setting_row, q, NULL,
                        err);
}

int relay_store_setting_get(relay_store_t *s, const char *name, char *buf, size_t cap)
{
    if (!s || !name || !buf || cap == 0)
        return RELAY_ERR_INVALID;
    buf[0] = '\0';
    setting_t q = {.name = name, .buf = buf, .cap = cap, .drv = s->drv};
    int rc = run(s, op_setting_get, &q, OP_READ, NULL);
    if (rc)
        return rc;
    if (!q.found)
        return RELAY_ERR_NOT_FOUND;
    /* A cut-off hash or secret would be wrong in a way nobody notices; refuse instead. */
    return q.too_long ? RELAY_ERR_TOO_LARGE : 0;
}

static int op_setting_set(relay_store_t *s, relay_store_conn_t *c, void *arg, relay_error_t *err)
{
    setting_t *q = arg;
    relay_sql_val_t p[] = {V_TEXT(q->name), V_TEXT(q->value), V_INT(relay_now())};
    return s->drv->exec(c,
                        "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                        "updated_at = excluded.updated_at",
                        p, 3, NULL, NULL, NULL, err);
}

int relay_store_setting_set(relay_store_t *s, const char *name, const char *value)
{
    if (!s || !name || !*name || !value)
        return RELAY_ERR_INVALID;
    setting_t q = {.name = name, .value = value};
    return run(s, op_setting_set, &q, OP_WRITE, NULL);
}
