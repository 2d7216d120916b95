/* store_pg: the PostgreSQL store driver: a libpq connection pool that heals after restarts. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "store_internal.h"
#include "util.h"

/* How long a caller waits for a free pooled connection before giving up. */
#define POOL_WAIT_S 30
/* Advisory lock key that serialises migrations across processes ("relay" in ASCII). */
#define MIGRATION_LOCK_SQL "SELECT pg_advisory_xact_lock(491496043641)"

struct relay_store_conn {
    PGconn *pg;
    int in_use;
    struct pg_pool *pool;
};

struct relay_sql_row {
    PGresult *res;
    int row;
};

typedef struct pg_pool {
    char *url;
    char connect_timeout[16]; /* seconds, as libpq wants it */
    int n;
    relay_store_conn_t *conns;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pg_pool_t;

/* libpq messages end in a newline and may span lines; keep the first line only. */
static void first_line(char *dst, size_t cap, const char *src)
{
    relay_strlcpy(dst, src ? src : "unknown error", cap);
    dst[strcspn(dst, "\r\n")] = '\0';
}

/* NOTICEs ("relation already exists, skipping") would go to stderr; the host owns the logs. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static int connect_conn(pg_pool_t *p, relay_store_conn_t *c, relay_error_t *err)
{
    /* The URL comes last so a connect_timeout written in it wins over the store's default. */
    const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *const vals[] = {p->connect_timeout, "relay", p->url, NULL};
    c->pg = PQconnectdbParams(keys, vals, 1);
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK) {
        PQsetNoticeProcessor(c->pg, ignore_notice, NULL);
        return 0;
    }
    char msg[200];
    first_line(msg, sizeof msg, c->pg ? PQerrorMessage(c->pg) : "out of memory");
    PQfinish(c->pg);
    c->pg = NULL;
    /* libpq's message names host and port, never the password; the URL itself is not repeated. */
    return relay_error_set(err, RELAY_ERR_STORE, "postgresql: cannot connect: %s", msg);
}

/*
 * An idle pooled connection should have nothing to read. Anything readable (the server's
 * "terminating connection" notice, or EOF) means the server restarted or dropped it, which
 * PQstatus alone only learns on the next failed query.
 */
static int idle_conn_dead(PGconn *pg)
{
    if (PQstatus(pg) != CONNECTION_OK || PQtransactionStatus(pg) != PQTRANS_IDLE)
        return 1;
    struct pollfd pfd = {.fd = PQsocket(pg), .events = POLLIN};
    if (pfd.fd < 0)
        return 1;
    return poll(&pfd, 1, 0) != 0;
}

static int pg_acquire(relay_store_t *s, relay_store_conn_t **out, relay_error_t *err)
{
    pg_pool_t *p = s->impl;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += POOL_WAIT_S;
    relay_store_conn_t *c = NULL;
    pthread_mutex_lock(&p->mu);
    while (!c) {
        /* Prefer a live connection so a restart costs one reconnect, not one per caller. */
        for (int i = 0; i < p->n && !c; i++)
            if (!p->conns[i].in_use && p->conns[i].pg)
                c = &p->conns[i];
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
        return relay_error_set(err, RELAY_ERR_STORE, "postgresql: no free connection in the pool");
    /* Connecting is I/O: done with the slot reserved but without the pool lock held. */
    if (c->pg && idle_conn_dead(c->pg)) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (!c->pg) {
        int rc = connect_conn(p, c, err);
        if (rc) {
            s->drv->release(s, c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

static void pg_release(relay_store_t *s, relay_store_conn_t *c)
{
    pg_pool_t *p = s->impl;
    /* A dead connection, or one left inside a transaction, is dropped and redone on next use. */
    if (c->pg && (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) != PQTRANS_IDLE)) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    pthread_mutex_lock(&p->mu);
    c->in_use = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static int pg_broken(relay_store_conn_t *c)
{
    return !c->pg || PQstatus(c->pg) != CONNECTION_OK;
}

/*
 * Maps a failed result to a relay_err. Messages use the primary text or the constraint name only:
 * DETAIL and some primary texts ("invalid input syntax ...: \"value\"") quote the bound values.
 */
static int map_error(relay_store_conn_t *c, PGresult *res, relay_error_t *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    char msg[200];
    if (state && strcmp(state, "23505") == 0)
        return relay_error_set(err, RELAY_ERR_CONFLICT, "postgresql: unique constraint %s violated",
                               constraint ? constraint : "?");
    if (state && strncmp(state, "23", 2) == 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "postgresql: constraint %s violated (%s)",
                               constraint ? constraint : "?", state);
    if (state && strncmp(state, "22", 2) == 0)
        return relay_error_set(err, RELAY_ERR_INVALID, "postgresql: invalid value (SQLSTATE %s)",
                               state);
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    first_line(msg, sizeof msg, primary ? primary : PQerrorMessage(c->pg));
    return relay_error_set(err, RELAY_ERR_STORE, "postgresql: %s", msg);
}

static int pg_exec(relay_store_conn_t *c, const char *sql, const relay_sql_val_t *params,
                   int nparams, relay_sql_row_fn fn, void *ud, int64_t *changes, relay_error_t *err)
{
    if (nparams > RELAY_SQL_MAX_PARAMS)
        return relay_error_set(err, RELAY_ERR_INTERNAL, "too many SQL parameters");
    /* Every parameter goes as text; the server infers its type from where it is used. */
    char nums[RELAY_SQL_MAX_PARAMS][32];
    const char *vals[RELAY_SQL_MAX_PARAMS] = {0};
    for (int i = 0; i < nparams; i++) {
        const relay_sql_val_t *v = &params[i];
        vals[i] = nums[i];
        if (v->type == RELAY_SQL_INT)
            snprintf(nums[i], sizeof nums[i], "%" PRId64, v->i);
        else if (v->type == RELAY_SQL_REAL)
            snprintf(nums[i], sizeof nums[i], "%.17g", v->d);
        else if (v->type == RELAY_SQL_TEXT)
            vals[i] = v->s;
        else
            vals[i] = NULL;
    }
    PGresult *res = PQexecParams(c->pg, sql, nparams, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int ret = 0;
    if (st == PGRES_TUPLES_OK) {
        int rows = PQntuples(res);
        for (int i = 0; i < rows && fn && ret == 0; i++) {
            struct relay_sql_row row = {res, i};
            ret = fn(ud, &row);
        }
    } else if (st == PGRES_COMMAND_OK) {
        if (changes)
            *changes = strtoll(PQcmdTuples(res), NULL, 10);
    } else {
        ret = map_error(c, res, err);
    }
    PQclear(res);
    return ret;
}

/*
 * The migration files are fixed text compiled into the library, with several statements and no
 * parameters, which PQexecParams cannot run; this is the one place PQexec is used.
 */
static int pg_exec_script(relay_store_conn_t *c, const char *sql, relay_error_t *err)
{
    PGresult *res = PQexec(c->pg, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int ret = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        ret = map_error(c, res, err);
    PQclear(res);
    return ret;
}

static int pg_begin(relay_store_conn_t *c, relay_error_t *err)
{
    return pg_exec(c, "BEGIN", NULL, 0, NULL, NULL, NULL, err);
}

static int pg_end(relay_store_conn_t *c, int commit, relay_error_t *err)
{
    if (commit)
        return pg_exec(c, "COMMIT", NULL, 0, NULL, NULL, NULL, err);
    if (PQstatus(c->pg) == CONNECTION_OK)
        pg_exec(c, "ROLLBACK", NULL, 0, NULL, NULL, NULL, NULL);
    return 0;
}

static int64_t pg_col_int(const relay_sql_row_t *r, int col)
{
    if (PQgetisnull(r->res, r->row, col))
        return 0;
    return strtoll(PQgetvalue(r->res, r->row, col), NULL, 10);
}

static double pg_col_real(const relay_sql_row_t *r, int col)
{
    if (PQgetisnull(r->res, r->row, col))
        return 0;
    return strtod(PQgetvalue(r->res, r->row, col), NULL);
}

static const char *pg_col_text(const relay_sql_row_t *r, int col)
{
    if (PQgetisnull(r->res, r->row, col))
        return NULL;
    return PQgetvalue(r->res, r->row, col);
}

static void pg_close(relay_store_t *s)
{
    pg_pool_t *p = s->impl;
    if (!p)
        return;
    for (int i = 0; i < p->n && p->conns; i++)
        PQfinish(p->conns[i].pg);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->conns);
    free(p->url);
    free(p);
    s->impl = NULL;
}

static int pg_open(relay_store_t *s, const char *url, relay_error_t *err)
{
    pg_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    p->n = s->opts.pool_size;
    /* libpq counts whole seconds and treats anything below 2 as 2. */
    int secs = (s->opts.busy_timeout_ms + 999) / 1000;
    snprintf(p->connect_timeout, sizeof p->connect_timeout, "%d", secs < 2 ? 2 : secs);
    p->url = strdup(url);
    p->conns = calloc((size_t)p->n, sizeof *p->conns);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    s->impl = p;
    if (!p->url || !p->conns) {
        pg_close(s);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < p->n; i++)
        p->conns[i].pool = p;
    /* Connect one now so a wrong URL or a server that is down fails at open, not at first use. */
    int rc = connect_conn(p, &p->conns[0], err);
    if (rc)
        pg_close(s);
    return rc;
}

const relay_store_driver_t relay_store_pg_driver = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .acquire = pg_acquire,
    .release = pg_release,
    .broken = pg_broken,
    .begin = pg_begin,
    .end = pg_end,
    .exec = pg_exec,
    .exec_script = pg_exec_script,
    .col_int = pg_col_int,
    .col_real = pg_col_real,
    .col_text = pg_col_text,
    .sql_table_exists = "SELECT count(*) FROM pg_catalog.pg_tables "
                        "WHERE schemaname = current_schema() AND tablename = $1",
    .sql_migration_lock = MIGRATION_LOCK_SQL,
};
