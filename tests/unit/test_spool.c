/* test_spool: the usage spool file: append, replay in order, torn tails, the bound, rotation,
 * trimming once rows are stored, the lock against a second opener, and RLIMIT_FSIZE. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pthread.h>
#include <sys/wait.h>

#include "spool_internal.h"
#include "usage_internal.h"
#include "util.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/relay-spool-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static relay_usage_row_t row_n(int i)
{
    relay_usage_row_t r;
    memset(&r, 0, sizeof r);
    snprintf(r.row_uid, sizeof r.row_uid, "%032d", i);
    snprintf(r.api_key_id, sizeof r.api_key_id, "key-%d", i % 3);
    snprintf(r.model, sizeof r.model, "claude-\"quoted\"\n-%d", i);
    r.prompt_tokens = 100 + i;
    r.completion_tokens = 7;
    r.total_cost = 0.1 * i;
    r.stream = i & 1;
    r.response_status = 200;
    r.created_at = 1700000000 + i;
    return r;
}

typedef struct got {
    relay_usage_row_t rows[64];
    size_t n;
} got_t;

static uint64_t collect(void *ud, const relay_usage_row_t *row)
{
    got_t *g = ud;
    if (g->n < 64)
        g->rows[g->n] = *row;
    return ++g->n;
}

static off_t file_size(const char *name)
{
    char p[128];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 ? st.st_size : -1;
}

static void test_rows_come_back_in_order_and_whole(void **state)
{
    (void)state;
    relay_spool_t *sp;
    relay_error_t err = {0};
    int e;
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    for (int i = 1; i <= 10; i++) {
        relay_usage_row_t r = row_n(i);
        assert_int_equal(relay_spool_append(sp, &r, (uint64_t)i, &e), 0);
    }
    assert_int_equal(relay_spool_sync(sp), 0);
    relay_spool_close(sp); /* a crash: nothing was marked stored */

    /* A crash mid-append leaves half a line: it is skipped and cut off. */
    char p[128];
    snprintf(p, sizeof p, "%s/usage.spool", dir);
    int fd = open(p, O_WRONLY | O_APPEND);
    assert_true(write(fd, "{\"v\":1,\"row_uid\":\"abc", 21) == 21);
    close(fd);
    off_t before = file_size("usage.spool");

    got_t g = {.n = 0};
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    assert_int_equal(relay_spool_replay(sp, collect, &g), 10);
    assert_int_equal(g.n, 10);
    for (int i = 1; i <= 10; i++) {
        relay_usage_row_t want = row_n(i);
        assert_memory_equal(&g.rows[i - 1], &want, sizeof want);
    }
    relay_spool_stats_t st;
    relay_spool_get_stats(sp, &st);
    assert_int_equal(st.replayed, 10);
    assert_int_equal(st.torn, 1);
    assert_int_equal(file_size("usage.spool"), before - 21);

    /* Stored: emptied. */
    relay_spool_written(sp, 10, 1);
    assert_int_equal(file_size("usage.spool"), 0);
    relay_spool_close(sp);
}

/* The line is written by hand, read back by jansson: every value a row can hold must survive
 * (escapes, UTF-8, the extremes of each number), and bytes that are not UTF-8 must not cost the
 * row (they come back as U+FFFD). */
static void test_odd_values_round_trip(void **state)
{
    (void)state;
    relay_spool_t *sp;
    relay_error_t err = {0};
    int e;
    relay_usage_row_t a = row_n(1), b = row_n(2);
    /* Every ASCII byte but NUL, in a field that comes from a client header. */
    for (int c = 1; c < 128 && c < (int)sizeof a.user_agent; c++)
        a.user_agent[c - 1] = (char)c;
    snprintf(a.error_message, sizeof a.error_message, "%s",
             "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\ \"q\" \t\r\n");
    a.prompt_tokens = INT64_MAX;
    a.completion_tokens = INT64_MIN;
    a.response_status = -1;
    a.total_cost = 1.0 / 3.0;
    /* Not UTF-8: a lone continuation byte, a cut sequence, an overlong form, a surrogate. */
    snprintf(b.user_agent, sizeof b.user_agent, "%s", "x\x80y\xc3z\xc0\xafw\xed\xa0\x80v");
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    assert_int_equal(relay_spool_append(sp, &a, 1, &e), 0);
    assert_int_equal(relay_spool_append(sp, &b, 2, &e), 0);
    relay_spool_close(sp);

    got_t g = {.n = 0};
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    assert_int_equal(relay_spool_replay(sp, collect, &g), 2);
    assert_memory_equal(&g.rows[0], &a, sizeof a);
    assert_string_equal(g.rows[1].user_agent, "x\xef\xbf\xbdy\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbdw"
                                              "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdv");
    assert_string_equal(g.rows[1].row_uid, b.row_uid);
    assert_int_equal(g.rows[1].prompt_tokens, b.prompt_tokens);
    relay_spool_written(sp, 2, 1);
    relay_spool_close(sp);
}

static void test_second_opener_is_refused(void **state)
{
    (void)state;
    relay_spool_t *a, *b;
    relay_error_t err = {0};
    assert_int_equal(relay_spool_open(&a, dir, 1 << 20, &err), 0);
    assert_int_equal(relay_spool_open(&b, dir, 1 << 20, &err), RELAY_ERR_CONFLICT);
    assert_null(b);
    relay_spool_close(a);
    assert_int_equal(relay_spool_open(&b, dir, 1 << 20, &err), 0);
    relay_spool_close(b);
}

static void test_bound_rotation_and_trim(void **state)
{
    (void)state;
    relay_spool_t *sp;
    relay_error_t err = {0};
    int e, i, full = 0;
    assert_int_equal(relay_spool_open(&sp, dir, 8192, &err), 0); /* rotates at 2 KiB */
    uint64_t seq = 0;
    for (i = 0; i < 100 && !full; i++) {
        relay_usage_row_t r = row_n(i);
        int rc = relay_spool_append(sp, &r, ++seq, &e);
        if (rc == RELAY_ERR_TOO_LARGE)
            full = 1;
        else
            assert_int_equal(rc, 0);
        if (seq == 5)
            relay_spool_written(sp, 0, 0); /* nothing stored yet: may seal the file */
    }
    assert_true(full);
    relay_spool_stats_t st;
    relay_spool_get_stats(sp, &st);
    assert_true(st.bytes <= 8192);
    assert_int_equal(st.full, 1);
    off_t sealed = file_size("usage.spool.1"); /* rows 1-5, sealed at rotation */
    assert_true(sealed > 0);
    /* Rows 1-5 stored: their file goes (and the active one, past 2 KiB, is sealed in turn). */
    uint64_t bytes = st.bytes;
    relay_spool_written(sp, 5, 0);
    relay_spool_get_stats(sp, &st);
    assert_int_equal(st.bytes, bytes - (uint64_t)sealed);
    assert_int_equal(file_size("usage.spool.1"), (off_t)st.bytes);
    assert_int_equal(file_size("usage.spool"), 0);
    /* Everything stored: both emptied. */
    relay_spool_written(sp, seq, 1);
    assert_int_equal(file_size("usage.spool.1"), -1);
    assert_int_equal(file_size("usage.spool"), 0);
    relay_spool_close(sp);
}

static void test_file_size_limit_leaves_no_half_row(void **state)
{
    (void)state;
    relay_spool_t *sp;
    relay_error_t err = {0};
    int e = 0;
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    relay_usage_row_t r = row_n(1);
    assert_int_equal(relay_spool_append(sp, &r, 1, &e), 0);
    off_t one = file_size("usage.spool");
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)one + (rlim_t)one / 2; /* room for half a row more */
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    r = row_n(2);
    int rc = relay_spool_append(sp, &r, 2, &e);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, RELAY_ERR_IO);
    assert_int_equal(e, EFBIG);
    assert_int_equal(file_size("usage.spool"), one); /* cut back to the whole first row */
    r = row_n(3);
    assert_int_equal(relay_spool_append(sp, &r, 3, &e), 0);
    relay_spool_close(sp);
    got_t g = {.n = 0};
    assert_int_equal(relay_spool_open(&sp, dir, 1 << 20, &err), 0);
    assert_int_equal(relay_spool_replay(sp, collect, &g), 2);
    assert_string_equal(g.rows[1].row_uid, row_n(3).row_uid);
    relay_spool_stats_t st;
    relay_spool_get_stats(sp, &st);
    assert_int_equal(st.torn, 0);
    relay_spool_close(sp);
}

/* ---- row ids ---- */
static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

/* Ids come from a per-thread pool: each byte once, refilled past its end, never all zero. */
static void test_id_bytes_distinct(void **state)
{
    (void)state;
    enum { N = 4096 };
    static uint8_t ids[N][16];
    for (int i = 0; i < N; i++)
        assert_int_equal(relay_random_id_bytes(ids[i], 16), 0);
    qsort(ids, N, 16, cmp16);
    static const uint8_t zero[16];
    assert_memory_not_equal(ids[0], zero, 16);
    for (int i = 1; i < N; i++)
        assert_memory_not_equal(ids[i - 1], ids[i], 16);
    /* odd sizes across the refill */
    uint8_t a[200], b[200];
    assert_int_equal(relay_random_id_bytes(a, sizeof a), 0);
    assert_int_equal(relay_random_id_bytes(b, sizeof b), 0);
    assert_memory_not_equal(a, b, sizeof a);
}

static void *draw16(void *out)
{
    relay_random_id_bytes(out, 16);
    return NULL;
}

/* Another thread, or a forked child, does not repeat what this thread's pool would give next. */
static void test_id_bytes_threads_and_fork(void **state)
{
    (void)state;
    uint8_t mine[16], theirs[16];
    assert_int_equal(relay_random_id_bytes(mine, 16), 0); /* this thread's pool is filled */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, draw16, theirs), 0);
    pthread_join(t, NULL);
    assert_int_equal(relay_random_id_bytes(mine, 16), 0);
    assert_memory_not_equal(mine, theirs, 16);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint8_t c[16];
        int ok = relay_random_id_bytes(c, 16) == 0 && write(fds[1], c, 16) == 16;
        _exit(ok ? 0 : 1);
    }
    uint8_t child[16], parent[16];
    assert_int_equal(read(fds[0], child, 16), 16);
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fds[0]);
    close(fds[1]);
    assert_int_equal(relay_random_id_bytes(parent, 16), 0);
    assert_memory_not_equal(child, parent, 16); /* the child did not reuse the parent's pool */
}

/* A row_uid is 32 hex digits: the milliseconds first (so ids sort by time), then random. */
static void test_row_uid_sorts_by_time(void **state)
{
    (void)state;
    char a[33], b[33], c[33];
    int64_t ms = 1764672000123; /* 2025-12-02T10:40:00.123Z */
    assert_int_equal(relay_usage_new_row_uid(ms, a), 0);
    assert_int_equal(relay_usage_new_row_uid(ms, b), 0);
    assert_int_equal(relay_usage_new_row_uid(ms + 1, c), 0);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    char want[13];
    snprintf(want, sizeof want, "%012llx", (unsigned long long)ms);
    assert_memory_equal(a, want, 12);
    assert_memory_equal(b, want, 12);
    assert_string_not_equal(a, b);
    assert_true(strcmp(a, c) < 0 && strcmp(b, c) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_bytes_distinct),
        cmocka_unit_test(test_id_bytes_threads_and_fork),
        cmocka_unit_test(test_row_uid_sorts_by_time),
        cmocka_unit_test_setup_teardown(test_rows_come_back_in_order_and_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(test_odd_values_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_opener_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound_rotation_and_trim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_size_limit_leaves_no_half_row, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
