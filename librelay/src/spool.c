/* spool: the usage rows the database has not stored yet, in a file that survives a crash. */
#include "spool_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "util.h"

#define SPOOL_NAME    "usage.spool"
#define SEALED_NAME   "usage.spool.1"
#define LOCK_NAME     "usage.spool.lock"
#define ROTATE_MAX    (4u << 20)
#define SPOOL_VERSION 1

struct relay_spool {
    pthread_mutex_t mu;
    int fd, lock_fd, dir_fd;
    char path[4096], sealed[4096];
    size_t max_bytes, rotate_at, active_bytes, sealed_bytes;
    int have_sealed, dirty;
    uint64_t last_seq, sealed_last_seq; /* the writer's sequence numbers of the newest rows */
    relay_spool_stats_t st;
};

/* ---- one row as one JSON line: named fields, so a newer relay still reads an older spool ---- */
enum { F_I64, F_INT, F_DBL, F_STR };

typedef struct field {
    const char *name;
    int kind;
    size_t off, cap;
} field_t;

#define FS(n, k)                                                                                   \
    {                                                                                              \
#n, k, offsetof(relay_usage_row_t, n), sizeof(((relay_usage_row_t *)0)->n)                 \
    }
static const field_t FIELDS[] = {
    FS(row_uid, F_STR),
    FS(api_key_id, F_STR),
    FS(request_id, F_STR),
    FS(request_method, F_STR),
    FS(request_path, F_STR),
    FS(request_size, F_I64),
    FS(response_size, F_I64),
    FS(response_status, F_INT),
    FS(response_time_ms, F_I64),
    FS(time_to_first_byte_ms, F_I64),
    FS(prompt_tokens, F_I64),
    FS(completion_tokens, F_I64),
    FS(cache_creation_tokens, F_I64),
    FS(cache_creation_5m_tokens, F_I64),
    FS(cache_creation_1h_tokens, F_I64),
    FS(cache_read_tokens, F_I64),
    FS(total_tokens, F_I64),
    FS(billed_tokens, F_I64),
    FS(total_cost, F_DBL),
    FS(model, F_STR),
    FS(is_error, F_INT),
    FS(stream, F_INT),
    FS(estimated, F_INT),
    FS(attempts, F_INT),
    FS(error_message, F_STR),
    FS(error_code, F_STR),
    FS(client_ip, F_STR),
    FS(user_agent, F_STR),
    FS(created_at, F_I64),
};
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])

/* n in decimal, without printf (sixty printf calls a row were most of what was left). */
static int append_i64(relay_buf_t *b, int64_t n)
{
    char tmp[24];
    size_t i = sizeof tmp;
    uint64_t u = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    do
        tmp[--i] = (char)('0' + u % 10);
    while (u /= 10);
    if (n < 0)
        tmp[--i] = '-';
    return relay_buf_append(b, tmp + i, sizeof tmp - i);
}

/* One ,"name":value pair. */
static int field_write(relay_buf_t *b, const relay_usage_row_t *row, const field_t *f)
{
    const char *p = (const char *)row + f->off;
    int rc = relay_buf_append(b, ",\"", 2);
    if (!rc)
        rc = relay_buf_appends(b, f->name);
    if (!rc)
        rc = relay_buf_append(b, "\":", 2);
    if (rc)
        return rc;
    switch (f->kind) {
    case F_I64:
        return append_i64(b, *(const int64_t *)(const void *)p);
    case F_INT:
        return append_i64(b, *(const int *)(const void *)p);
    case F_DBL: {
        double d = *(const double *)(const void *)p;
        /* %.17g reads back to the same double; a NaN or infinity is not JSON: 0. */
        return relay_buf_printf(b, "%.17g", isfinite(d) ? d : 0.0);
    }
    default:
        return relay_buf_json_string(b, p, strnlen(p, f->cap));
    }
}

/* The row's line, newline included. Written directly (the jansson object and json_dumps cost
 * ~107k instructions a row, a fifth of a request's; callgrind), read back with jansson (decode),
 * which the unit test holds it to. */
char *relay_spool_encode(const relay_usage_row_t *row, size_t *len)
{
    relay_buf_t b;
    relay_buf_init(&b, 1u << 20);
    int rc = relay_buf_append(&b, "{\"v\":", 5);
    if (!rc)
        rc = append_i64(&b, SPOOL_VERSION);
    for (size_t i = 0; !rc && i < N_FIELDS; i++)
        rc = field_write(&b, row, &FIELDS[i]);
    if (!rc)
        rc = relay_buf_append(&b, "}\n", 2);
    if (rc) {
        relay_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return relay_buf_detach(&b);
}

static void field_set(relay_usage_row_t *row, const field_t *f, json_t *v)
{
    char *p = (char *)row + f->off;
    if (f->kind == F_I64 && json_is_integer(v))
        *(int64_t *)(void *)p = json_integer_value(v);
    else if (f->kind == F_INT && json_is_integer(v))
        *(int *)(void *)p = (int)json_integer_value(v);
    else if (f->kind == F_DBL && json_is_number(v))
        *(double *)(void *)p = json_number_value(v);
    else if (f->kind == F_STR && json_is_string(v))
        relay_strlcpy(p, json_string_value(v), f->cap);
}

/* 0 with row filled from one line (no newline), -1 when it is not a whole row. */
static int decode(const char *line, size_t len, relay_usage_row_t *row)
{
    json_t *o = json_loadb(line, len, 0, NULL);
    json_t *v = json_object_get(o, "v");
    int ok = json_is_integer(v) && json_integer_value(v) == SPOOL_VERSION &&
             json_is_string(json_object_get(o, "row_uid"));
    memset(row, 0, sizeof *row);
    for (size_t i = 0; ok && i < N_FIELDS; i++)
        field_set(row, &FIELDS[i], json_object_get(o, FIELDS[i].name));
    json_decref(o);
    return ok && row->row_uid[0] ? 0 : -1;
}

/* ---- files ---- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int open_active(relay_spool_t *sp)
{
    sp->fd = open(sp->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    return sp->fd >= 0 ? 0 : -1;
}

int relay_spool_open(relay_spool_t **out, const char *dir, size_t max_bytes, relay_error_t *err)
{
    *out = NULL;
    relay_spool_t *sp = calloc(1, sizeof *sp);
    if (!sp)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    sp->fd = sp->lock_fd = sp->dir_fd = -1;
    sp->max_bytes = max_bytes;
    sp->rotate_at = max_bytes / 4 < ROTATE_MAX ? max_bytes / 4 : ROTATE_MAX;
    char lock[4096];
    if ((size_t)snprintf(sp->path, sizeof sp->path, "%s/" SPOOL_NAME, dir) >= sizeof sp->path ||
        (size_t)snprintf(sp->sealed, sizeof sp->sealed, "%s/" SEALED_NAME, dir) >=
            sizeof sp->sealed ||
        (size_t)snprintf(lock, sizeof lock, "%s/" LOCK_NAME, dir) >= sizeof lock) {
        free(sp);
        return relay_error_set(err, RELAY_ERR_CONFIG, "data directory path too long");
    }
    pthread_mutex_init(&sp->mu, NULL);
    int rc = 0;
    mkdir(dir, 0700);
    sp->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sp->lock_fd < 0)
        rc = relay_error_set(err, RELAY_ERR_IO, "cannot open %s: %s", lock, strerror(errno));
    else if (flock(sp->lock_fd, LOCK_EX | LOCK_NB) != 0)
        rc = relay_error_set(err, RELAY_ERR_CONFLICT,
                             "%s is held by another relay process on this data directory", lock);
    if (!rc && open_active(sp) != 0)
        rc = relay_error_set(err, RELAY_ERR_IO, "cannot open %s: %s", sp->path, strerror(errno));
    if (!rc)
        sp->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rc) {
        relay_spool_close(sp);
        return rc;
    }
    *out = sp;
    return 0;
}

void relay_spool_close(relay_spool_t *sp)
{
    if (!sp)
        return;
    if (sp->fd >= 0) {
        fdatasync(sp->fd);
        close(sp->fd);
    }
    if (sp->dir_fd >= 0)
        close(sp->dir_fd);
    if (sp->lock_fd >= 0)
        close(sp->lock_fd); /* releases the flock */
    pthread_mutex_destroy(&sp->mu);
    free(sp);
}

/* ---- replay ---- */

/* The whole file (NULL when absent or empty). Not capped by max_bytes: a spool written under a
 * larger bound is still read whole, never cut into a "torn" last row. */
static char *slurp(const char *path, size_t *len)
{
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat stt;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &stt) != 0 || stt.st_size <= 0) {
        close(fd);
        return NULL;
    }
    size_t want = (size_t)stt.st_size;
    char *buf = malloc(want + 1);
    while (buf && *len < want) {
        ssize_t n = read(fd, buf + *len, want - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        *len += (size_t)n;
    }
    close(fd);
    return buf;
}

/* Hands every whole line of buf to fn; returns the offset just past the last whole line. */
static size_t replay_buf(relay_spool_t *sp, const char *buf, size_t len,
                         uint64_t (*fn)(void *, const relay_usage_row_t *), void *ud, size_t *n)
{
    size_t pos = 0, good = 0;
    relay_usage_row_t row;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl)
            break; /* the last line was cut by the crash: dropped */
        size_t l = (size_t)(nl - (buf + pos));
        if (decode(buf + pos, l, &row) == 0) {
            uint64_t seq = fn(ud, &row);
            if (seq)
                sp->last_seq = seq;
            sp->st.replayed++;
            (*n)++;
        } else {
            sp->st.torn++;
        }
        pos += l + 1;
        good = pos;
    }
    if (good < len)
        sp->st.torn++;
    explicit_bzero(&row, sizeof row);
    return good;
}

size_t relay_spool_replay(relay_spool_t *sp, uint64_t (*fn)(void *ud, const relay_usage_row_t *),
                          void *ud)
{
    size_t n = 0, len;
    pthread_mutex_lock(&sp->mu);
    char *buf = slurp(sp->sealed, &len);
    if (buf) {
        sp->sealed_bytes = replay_buf(sp, buf, len, fn, ud, &n);
        sp->have_sealed = 1;
        sp->sealed_last_seq = sp->last_seq;
        free(buf);
    }
    buf = slurp(sp->path, &len);
    if (buf) {
        sp->active_bytes = replay_buf(sp, buf, len, fn, ud, &n);
        if (sp->active_bytes < len && ftruncate(sp->fd, (off_t)sp->active_bytes) != 0)
            sp->st.errors++; /* the torn tail stays; replay skips it again */
        free(buf);
    }
    sp->st.bytes = sp->active_bytes + sp->sealed_bytes;
    pthread_mutex_unlock(&sp->mu);
    return n;
}

/* ---- append, sync, trim ---- */

int relay_spool_append_line(relay_spool_t *sp, char *line, size_t len, uint64_t seq, int *errno_out)
{
    int rc = 0;
    pthread_mutex_lock(&sp->mu);
    if (sp->fd < 0) {
        rc = RELAY_ERR_IO;
        *errno_out = EBADF;
        sp->st.errors++;
    } else if (sp->active_bytes + sp->sealed_bytes + len > sp->max_bytes) {
        rc = RELAY_ERR_TOO_LARGE;
        sp->st.full++;
    } else if (write_all(sp->fd, line, len) != 0) {
        *errno_out = errno;
        /* Half a row must not stay: cut the file back to where this row began. */
        if (ftruncate(sp->fd, (off_t)sp->active_bytes) != 0) {
            close(sp->fd); /* cannot cut it: stop appending rather than leave a torn line */
            sp->fd = -1;
        }
        rc = RELAY_ERR_IO;
        sp->st.errors++;
    } else {
        sp->active_bytes += len;
        sp->last_seq = seq;
        sp->dirty = 1;
        sp->st.appended++;
    }
    sp->st.bytes = sp->active_bytes + sp->sealed_bytes;
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

void relay_spool_line_free(char *line, size_t len)
{
    if (!line)
        return;
    explicit_bzero(line, len);
    free(line);
}

int relay_spool_append(relay_spool_t *sp, const relay_usage_row_t *row, uint64_t seq,
                       int *errno_out)
{
    size_t len;
    char *line = relay_spool_encode(row, &len);
    if (!line)
        return RELAY_ERR_NOMEM;
    int rc = relay_spool_append_line(sp, line, len, seq, errno_out);
    relay_spool_line_free(line, len);
    return rc;
}

int relay_spool_sync(relay_spool_t *sp)
{
    pthread_mutex_lock(&sp->mu);
    int fd = sp->dirty && sp->fd >= 0 ? dup(sp->fd) : -1;
    sp->dirty = 0;
    pthread_mutex_unlock(&sp->mu);
    if (fd < 0)
        return 0;
    int rc = fdatasync(fd) == 0 ? 0 : RELAY_ERR_IO; /* outside the lock: appends go on */
    close(fd);
    if (rc) {
        pthread_mutex_lock(&sp->mu);
        sp->st.errors++;
        pthread_mutex_unlock(&sp->mu);
    }
    return rc;
}

/* The active file becomes the sealed one and a new one starts. Lock held. Returns the sealed
 * file's descriptor, for rotated() to make durable once the lock is released (-1: none). */
static int rotate(relay_spool_t *sp)
{
    if (rename(sp->path, sp->sealed) != 0) {
        sp->st.errors++;
        return -1;
    }
    int old = sp->fd;
    sp->have_sealed = 1;
    sp->sealed_bytes = sp->active_bytes;
    sp->sealed_last_seq = sp->last_seq;
    sp->active_bytes = 0;
    if (open_active(sp) != 0)
        sp->st.errors++;
    return old;
}

/*
 * The sealed file's data and its rename reach the disk outside the lock: rotate() used to
 * fdatasync under it, and every request thread appending a row (holding the usage queue's
 * lock too) waited for that disk flush, milliseconds each time the spool passed rotate_at.
 * A crash before this finishes leaves what any not yet synced append leaves: whole lines
 * replayed, a torn last one ignored.
 */
static void rotated(relay_spool_t *sp, int old)
{
    int bad = fdatasync(old) != 0;
    close(old);
    if (sp->dir_fd >= 0)
        bad |= fsync(sp->dir_fd) != 0;
    if (bad) {
        pthread_mutex_lock(&sp->mu);
        sp->st.errors++;
        pthread_mutex_unlock(&sp->mu);
    }
}

void relay_spool_written(relay_spool_t *sp, uint64_t seq_written, int all)
{
    int old = -1;
    pthread_mutex_lock(&sp->mu);
    if (sp->have_sealed && seq_written >= sp->sealed_last_seq) {
        if (unlink(sp->sealed) != 0 && errno != ENOENT)
            sp->st.errors++;
        sp->have_sealed = 0;
        sp->sealed_bytes = 0;
    }
    if (all && seq_written >= sp->last_seq && sp->active_bytes && sp->fd >= 0) {
        if (ftruncate(sp->fd, 0) == 0)
            sp->active_bytes = 0;
        else
            sp->st.errors++;
    } else if (!sp->have_sealed && sp->fd >= 0 && sp->active_bytes >= sp->rotate_at) {
        old = rotate(sp);
    }
    sp->st.bytes = sp->active_bytes + sp->sealed_bytes;
    pthread_mutex_unlock(&sp->mu);
    if (old >= 0)
        rotated(sp, old);
}

void relay_spool_get_stats(relay_spool_t *sp, relay_spool_stats_t *out)
{
    pthread_mutex_lock(&sp->mu);
    *out = sp->st;
    pthread_mutex_unlock(&sp->mu);
}
