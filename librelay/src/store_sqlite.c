/* store_sqlite: the SQLite store driver: a pool of WAL connections, one writer at a time. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "store_internal.h"
#include "util.h"

/* How long a caller waits for a free pooled connection before giving up. */
#define POOL_WAIT_S 30

/*
 * Prepared statements kept per connection: parsing and planning the usage writer's statements
 * on every call was a visible share of its CPU (perf: sqlite3Parser and its mallocs, which also
 * contended on malloc's locks with the request threads). A small cache, least recently used out.
 */
#define STMT_CACHE 48

/* $1..$MAX_PARAMS are bound through a map made at prepare time: looking each name up by text
 * on every call (snprintf, then SQLite's linear list of names) was 7% of the usage writer's
 * instructions per row (callgrind). Higher numbers still go by name. */
#define MAX_PARAMS 64

typedef struct stmt_slot {
    uint64_t hash;
    char *sql;
    sqlite3_stmt *st;
    uint64_t used;                  /* 0: empty */
    unsigned char pidx[MAX_PARAMS]; /* $k is bound at pidx[k-1] (0: not in the statement) */
} stmt_slot_t;

struct relay_store_conn {
    sqlite3 *db;
    int in_use;
    int in_write; /* holds the pool's write lock */
    struct sqlite_pool *pool;
    stmt_slot_t stmts[STMT_CACHE];
    uint64_t tick;
};

struct relay_sql_row {
    sqlite3_stmt *st;
};

typedef struct sqlite_pool {
    char *path;
    int busy_ms;
    int n;
    relay_store_conn_t *conns;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /*
     * SQLite allows one writer per file. Queuing our own writers on a mutex is fairer and much
     * faster than letting them spin in the busy handler; busy_timeout still covers other processes
     * (e.g. `relay-server migrate` while serving).
     */
    pthread_mutex_t write_mu;
} sqlite_pool_t;

static int map_error(sqlite3 *db, int rc, relay_error_t *err)
{
    int ext = db ? sqlite3_extended_errcode(db) : rc;
    int code = RELAY_ERR_STORE;
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
        code = RELAY_ERR_CONFLICT;
    else if ((ext & 0xff) == SQLITE_CONSTRAINT || ext == SQLITE_MISMATCH || ext == SQLITE_TOOBIG ||
             ext == SQLITE_RANGE)
        code = RELAY_ERR_INVALID;
    /* sqlite3_errmsg names tables, columns and constraints, never the bound values. An I/O
     * error or a full disk also says what the system said (EFBIG, ENOSPC, EIO...). */
    int sys = db && ((ext & 0xff) == SQLITE_IOERR || (ext & 0xff) == SQLITE_FULL)
                  ? sqlite3_system_errno(db)
                  : 0;
    return relay_error_set(err, code, "sqlite: %s%s%s%s",
                           db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), sys ? " (" : "",
                           sys ? strerror(sys) : "", sys ? ")" : "");
}

static int open_conn(sqlite_pool_t *p, relay_store_conn_t *c, relay_error_t *err)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(p->path, &c->db, flags, NULL);
    if (rc != SQLITE_OK) {
        relay_error_set(err, RELAY_ERR_STORE, "cannot open SQLite database %s: %s", p->path,
                        c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        sqlite3_close_v2(c->db);
        c->db = NULL;
        return RELAY_ERR_STORE;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, p->busy_ms);
    /* WAL lets readers run beside the writer; NORMAL sync is durable enough under WAL. */
    rc = sqlite3_exec(c->db,
                      "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        relay_error_set(err, RELAY_ERR_STORE, "cannot set up SQLite database %s: %s", p->path,
                        sqlite3_errmsg(c->db));
        sqlite3_close_v2(c->db);
        c->db = NULL;
        return RELAY_ERR_STORE;
    }
    return 0;
}

static int sq_acquire(relay_store_t *s, relay_store_conn_t **out, relay_error_t *err)
{
    sqlite_pool_t *p = s->impl;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += POOL_WAIT_S;
    relay_store_conn_t *c = NULL;
    pthread_mutex_lock(&p->mu);
    while (!c) {
        for (int i = 0; i < p->n && !c; i++)
            if (!p->conns[i].in_use)
                c = &p->conns[i];
        if (!c && pthread_cond_timedwait(&p->cv, &p->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (c)
        c->in_use = 1;
    pthread_mutex_unlock(&p->mu);
    if (!c)
        return relay_error_set(err, RELAY_ERR_STORE, "sqlite: no free connection in the pool");
    if (!c->db) {
        int rc = open_conn(p, c, err);
        if (rc) {
            s->drv->release(s, c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

static void sq_release(relay_store_t *s, relay_store_conn_t *c)
{
    sqlite_pool_t *p = s->impl;
    if (c->in_write) { /* a caller forgot to end its transaction: never leak the write lock */
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        c->in_write = 0;
        pthread_mutex_unlock(&p->write_mu);
    }
    pthread_mutex_lock(&p->mu);
    c->in_use = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static int sq_broken(relay_store_conn_t *c)
{
    (void)c;
    return 0; /* a file does not go away like a server */
}

static int sq_begin(relay_store_conn_t *c, relay_error_t *err)
{
    pthread_mutex_lock(&c->pool->write_mu);
    /* IMMEDIATE takes the write lock now, so the busy timeout applies instead of a deadlock error.
     */
    int rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        pthread_mutex_unlock(&c->pool->write_mu);
        return map_error(c->db, rc, err);
    }
    c->in_write = 1;
    return 0;
}

static int sq_end(relay_store_conn_t *c, int commit, relay_error_t *err)
{
    int ret = 0;
    if (commit) {
        int rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            ret = map_error(c->db, rc, err);
            commit = 0;
        }
    }
    if (!commit && sqlite3_get_autocommit(c->db) == 0)
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    if (c->in_write) {
        c->in_write = 0;
        pthread_mutex_unlock(&c->pool->write_mu);
    }
    return ret;
}

/* Where each $k of st is bound (at most MAX_PARAMS of them). */
static void map_params(sqlite3_stmt *st, unsigned char *pidx)
{
    memset(pidx, 0, MAX_PARAMS);
    int n = sqlite3_bind_parameter_count(st);
    for (int idx = 1; idx <= n && idx <= 255; idx++) {
        const char *name = sqlite3_bind_parameter_name(st, idx);
        char *end;
        long k = name && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
        if (k >= 1 && k <= MAX_PARAMS && *end == '\0')
            pidx[k - 1] = (unsigned char)idx;
    }
}

static int bind_params(sqlite3_stmt *st, const unsigned char *pidx, const relay_sql_val_t *params,
                       int nparams)
{
    char name[16];
    for (int i = 0; i < nparams; i++) {
        int idx;
        if (i < MAX_PARAMS) {
            idx = pidx[i];
        } else {
            snprintf(name, sizeof name, "$%d", i + 1);
            idx = sqlite3_bind_parameter_index(st, name);
        }
        if (idx == 0)
            continue; /* the statement does not use this one */
        const relay_sql_val_t *v = &params[i];
        int rc;
        switch (v->type) {
        case RELAY_SQL_INT:
            rc = sqlite3_bind_int64(st, idx, v->i);
            break;
        case RELAY_SQL_REAL:
            rc = sqlite3_bind_double(st, idx, v->d);
            break;
        case RELAY_SQL_TEXT:
            rc = sqlite3_bind_text(st, idx, v->s, -1, SQLITE_STATIC);
            break;
        default:
            rc = sqlite3_bind_null(st, idx);
            break;
        }
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static void stmts_clear(relay_store_conn_t *c)
{
    for (int i = 0; i < STMT_CACHE; i++) {
        sqlite3_finalize(c->stmts[i].st);
        free(c->stmts[i].sql);
        memset(&c->stmts[i], 0, sizeof c->stmts[i]);
    }
}

/* The connection's prepared statement for sql (prepared now on a miss). SQLite re-prepares a
 * cached statement by itself when a migration changes the schema under it. */
static int stmt_get(relay_store_conn_t *c, const char *sql, sqlite3_stmt **out,
                    const unsigned char **pidx)
{
    uint64_t h = relay_hash_str(sql);
    stmt_slot_t *victim = &c->stmts[0];
    for (int i = 0; i < STMT_CACHE; i++) {
        stmt_slot_t *e = &c->stmts[i];
        if (e->used && e->hash == h && !strcmp(e->sql, sql)) {
            e->used = ++c->tick;
            *out = e->st;
            *pidx = e->pidx;
            return SQLITE_OK;
        }
        if (e->used < victim->used)
            victim = e;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    char *copy = strdup(sql);
    if (!copy) {
        sqlite3_finalize(st);
        return SQLITE_NOMEM;
    }
    sqlite3_finalize(victim->st);
    free(victim->sql);
    *victim = (stmt_slot_t){.hash = h, .sql = copy, .st = st, .used = ++c->tick};
    map_params(st, victim->pidx);
    *out = st;
    *pidx = victim->pidx;
    return SQLITE_OK;
}

/* Done with a cached statement: reset for the next call (which also ends its read of the WAL)
 * and drop the bindings, which borrow the caller's text. */
static void stmt_put(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int sq_exec(relay_store_conn_t *c, const char *sql, const relay_sql_val_t *params,
                   int nparams, relay_sql_row_fn fn, void *ud, int64_t *changes, relay_error_t *err)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *pidx = NULL;
    int rc = stmt_get(c, sql, &st, &pidx);
    if (rc != SQLITE_OK)
        return map_error(c->db, rc, err);
    rc = bind_params(st, pidx, params, nparams);
    if (rc != SQLITE_OK) {
        int ret = map_error(c->db, rc, err);
        stmt_put(st);
        return ret;
    }
    struct relay_sql_row row = {st};
    int ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (fn && (ret = fn(ud, &row)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = map_error(c->db, rc, err);
    else if (ret == 0 && changes)
        *changes = sqlite3_changes64(c->db);
    stmt_put(st);
    return ret;
}

static int sq_exec_script(relay_store_conn_t *c, const char *sql, relay_error_t *err)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : map_error(c->db, rc, err);
}

static int64_t sq_col_int(const relay_sql_row_t *r, int col)
{
    return sqlite3_column_int64(r->st, col);
}

static double sq_col_real(const relay_sql_row_t *r, int col)
{
    return sqlite3_column_double(r->st, col);
}

static const char *sq_col_text(const relay_sql_row_t *r, int col)
{
    if (sqlite3_column_type(r->st, col) == SQLITE_NULL)
        return NULL;
    return (const char *)sqlite3_column_text(r->st, col);
}

static void sq_close(relay_store_t *s)
{
    sqlite_pool_t *p = s->impl;
    if (!p)
        return;
    for (int i = 0; i < p->n; i++) {
        stmts_clear(&p->conns[i]);
        sqlite3_close_v2(p->conns[i].db);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->write_mu);
    free(p->conns);
    free(p->path);
    free(p);
    s->impl = NULL;
}

static int sq_open(relay_store_t *s, const char *path, relay_error_t *err)
{
    sqlite_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    p->n = s->opts.pool_size;
    p->busy_ms = s->opts.busy_timeout_ms;
    p->path = strdup(path);
    p->conns = calloc((size_t)p->n, sizeof *p->conns);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_mutex_init(&p->write_mu, NULL);
    s->impl = p;
    if (!p->path || !p->conns) {
        sq_close(s);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < p->n; i++)
        p->conns[i].pool = p;
    /* Open one now so a bad path fails at open, and the file exists in WAL mode from the start. */
    int rc = open_conn(p, &p->conns[0], err);
    if (rc)
        sq_close(s);
    return rc;
}

const relay_store_driver_t relay_store_sqlite_driver = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .acquire = sq_acquire,
    .release = sq_release,
    .broken = sq_broken,
    .begin = sq_begin,
    .end = sq_end,
    .exec = sq_exec,
    .exec_script = sq_exec_script,
    .col_int = sq_col_int,
    .col_real = sq_col_real,
    .col_text = sq_col_text,
    .sql_table_exists = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
    /* BEGIN IMMEDIATE already excludes every other writer of the file. */
    .sql_migration_lock = NULL,
};
