/* store_internal: the driver vtable behind relay_store_t (SQLite, PostgreSQL), SQL values. */
#ifndef RELAY_STORE_INTERNAL_H
#define RELAY_STORE_INTERNAL_H

#include <stdint.h>

#include "relay/store.h"

/*
 * The queries live once, in store.c, written in the SQL both engines accept ($N placeholders,
 * ON CONFLICT upserts, LIMIT/OFFSET, 0/1 flags), so the two backends cannot disagree. A driver
 * only supplies connections, transactions and a way to run one parameterised statement.
 */

#define RELAY_SQL_MAX_PARAMS 40

typedef enum relay_sql_type {
    RELAY_SQL_NULL = 0,
    RELAY_SQL_INT,
    RELAY_SQL_REAL,
    RELAY_SQL_TEXT,
} relay_sql_type;

/* One bound parameter ($1 is params[0]). Text is borrowed for the duration of the call. */
typedef struct relay_sql_val {
    relay_sql_type type;
    int64_t i;
    double d;
    const char *s;
} relay_sql_val_t;

/* A connection checked out of a driver's pool; its layout belongs to the driver. */
typedef struct relay_store_conn relay_store_conn_t;
/* The current row of a result; valid only inside the row callback. */
typedef struct relay_sql_row relay_sql_row_t;

/* Called once per result row; a non-zero return stops the statement and is returned by exec. */
typedef int (*relay_sql_row_fn)(void *ud, const relay_sql_row_t *row);

typedef struct relay_store_driver {
    const char *name; /* relay_store_backend() and the migrations/ folder name */
    /* Opens the pool for target (a file path or a libpq URL); sets s->impl. */
    int (*open)(relay_store_t *s, const char *target, relay_error_t *err);
    void (*close)(relay_store_t *s);
    /* Checks a connection out, (re)connecting when it is missing or broken. */
    int (*acquire)(relay_store_t *s, relay_store_conn_t **out, relay_error_t *err);
    void (*release)(relay_store_t *s, relay_store_conn_t *c);
    /* Did the connection die (server gone)? Decides whether a failed call may be retried. */
    int (*broken)(relay_store_conn_t *c);
    /* A write transaction: begin, then end with commit = 1 (COMMIT) or 0 (ROLLBACK). */
    int (*begin)(relay_store_conn_t *c, relay_error_t *err);
    int (*end)(relay_store_conn_t *c, int commit, relay_error_t *err);
    /*
     * One statement with parameters. Rows go to fn (may be NULL); *changes (may be NULL) gets the
     * rows a write touched. Errors: RELAY_ERR_CONFLICT (unique), RELAY_ERR_INVALID (other
     * constraint or bad value), RELAY_ERR_STORE (anything else).
     */
    int (*exec)(relay_store_conn_t *c, const char *sql, const relay_sql_val_t *params, int nparams,
                relay_sql_row_fn fn, void *ud, int64_t *changes, relay_error_t *err);
    /* Several statements without parameters: the embedded migration files only. */
    int (*exec_script)(relay_store_conn_t *c, const char *sql, relay_error_t *err);
    int64_t (*col_int)(const relay_sql_row_t *r, int col);
    double (*col_real)(const relay_sql_row_t *r, int col);
    const char *(*col_text)(const relay_sql_row_t *r, int col); /* NULL for SQL NULL */
    /* count(*) of tables named $1 in the current schema. */
    const char *sql_table_exists;
    /* Run first in every migration transaction so two processes never migrate at once (or NULL). */
    const char *sql_migration_lock;
} relay_store_driver_t;

struct relay_store {
    const relay_store_driver_t *drv;
    void *impl;
    relay_store_options_t opts;
};

extern const relay_store_driver_t relay_store_sqlite_driver;
extern const relay_store_driver_t relay_store_pg_driver;

#endif
