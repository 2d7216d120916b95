/* migrations: the SQL of migrations/<backend>/ compiled into the library by CMake. */
#ifndef RELAY_MIGRATIONS_H
#define RELAY_MIGRATIONS_H
#include <stddef.h>

typedef struct relay_migration_src {
    const char *backend; /* "sqlite" or "postgresql" (the folder name) */
    int version;
    const char *name;
    const char *up_sql;
    const char *down_sql;
} relay_migration_src_t;

/* Sorted by backend, then version; terminated by an all-NULL entry. */
extern const relay_migration_src_t relay_migrations_embedded[];
extern const size_t relay_migrations_embedded_count;

#endif
