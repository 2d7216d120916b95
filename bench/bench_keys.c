/* bench_keys: cached key verification vs a first (bcrypt) verification vs unknown keys, and a
 * 32-thread burst on one cold key vs one warm key, in one run. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relay/keys.h"
#include "util.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

enum { BURST = 32 };

typedef struct burst {
    relay_t *r;
    const char *key;
    pthread_barrier_t *go;
    double ms; /* this thread's one verification */
    int rc;
} burst_t;

static void *burst_one(void *p)
{
    burst_t *b = p;
    relay_error_t err;
    pthread_barrier_wait(b->go);
    double t0 = now_ns();
    b->rc = relay_keys_verify(b->r, b->key, NULL, &err);
    b->ms = (now_ns() - t0) / 1e6;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* BURST threads released at once, each verifying key once; ms[] sorted on return. */
static int run_burst(relay_t *r, const char *key, double ms[BURST])
{
    pthread_t t[BURST];
    burst_t b[BURST];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, BURST);
    for (int i = 0; i < BURST; i++) {
        b[i] = (burst_t){r, key, &go, 0, 0};
        pthread_create(&t[i], NULL, burst_one, &b[i]);
    }
    int bad = 0;
    for (int i = 0; i < BURST; i++) {
        pthread_join(t[i], NULL);
        ms[i] = b[i].ms;
        bad += b[i].rc != 0;
    }
    pthread_barrier_destroy(&go);
    qsort(ms, BURST, sizeof *ms, cmp_double);
    return bad;
}

/* The burst's cold and warm figures side by side; returns the bcrypt runs of the cold burst. */
static uint64_t bench_burst(relay_t *r, const char *cold, const char *warm)
{
    double c[BURST], w[BURST];
    relay_keys_stats_t s0, s1;
    relay_keys_stats(r, &s0);
    int bad = run_burst(r, cold, c);
    relay_keys_stats(r, &s1);
    bad += run_burst(r, warm, w);
    printf("  burst: %d threads verify one key at once (p99 of %d = max)   failures %d\n", BURST,
           BURST, bad);
    printf("    cold key  p50 %9.3f ms  p99 %9.3f ms  max %9.3f ms  bcrypt calls %llu\n",
           c[BURST / 2], c[BURST - 1], c[BURST - 1],
           (unsigned long long)(s1.bcrypt_calls - s0.bcrypt_calls));
    printf("    warm key  p50 %9.3f ms  p99 %9.3f ms  max %9.3f ms\n", w[BURST / 2], w[BURST - 1],
           w[BURST - 1]);
    printf("    cold/warm p99 %.0fx (the warm key is a cache hit; one bcrypt is the floor)\n",
           c[BURST - 1] / w[BURST - 1]);
    return s1.bcrypt_calls - s0.bcrypt_calls;
}

/* BURST threads, each verifying a different new key: the bcrypts queue behind the bound. */
static void bench_distinct(relay_t *r, char keys[BURST][RELAY_KEY_MAX])
{
    pthread_t t[BURST];
    burst_t b[BURST];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, BURST);
    double t0 = now_ns();
    for (int i = 0; i < BURST; i++) {
        b[i] = (burst_t){r, keys[i], &go, 0, 0};
        pthread_create(&t[i], NULL, burst_one, &b[i]);
    }
    double ms[BURST], wall;
    int bad = 0;
    for (int i = 0; i < BURST; i++) {
        pthread_join(t[i], NULL);
        ms[i] = b[i].ms;
        bad += b[i].rc != 0;
    }
    wall = (now_ns() - t0) / 1e6;
    pthread_barrier_destroy(&go);
    qsort(ms, BURST, sizeof *ms, cmp_double);
    relay_keys_stats_t s;
    relay_keys_stats(r, &s);
    printf("  burst: %d threads verify %d distinct new keys   failures %d   wall %.0f ms\n", BURST,
           BURST, bad, wall);
    printf("    p50 %9.3f ms  max %9.3f ms  bcrypts at once: at most %llu (bound %d)\n",
           ms[BURST / 2], ms[BURST - 1], (unsigned long long)s.bcrypt_max_parallel, s.bcrypt_slots);
}

int main(int argc, char **argv)
{
    int cost = argc > 1 ? atoi(argv[1]) : 10; /* the default bcrypt cost */
    char dir[] = "/tmp/relay-bench-keys-XXXXXX", url[256];
    if (!mkdtemp(dir))
        return 1;
    snprintf(url, sizeof url, "%s/relay.db", dir);
    relay_options_t o;
    relay_options_init(&o);
    o.database_url = url;
    o.bcrypt_cost = cost;
    o.admin_password = "bench-admin-password";
    relay_t *r;
    relay_error_t err;
    if (relay_new(&r, &o, &err)) {
        fprintf(stderr, "relay_new: %s\n", err.message);
        return 1;
    }
    enum { FIRST = 5, CACHED = 200000, UNKNOWN = 2000 };
    char keys[FIRST][RELAY_KEY_MAX], cold[RELAY_KEY_MAX];
    static char distinct[BURST][RELAY_KEY_MAX];
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "bench";
    for (int i = 0; i < FIRST; i++)
        if (relay_keys_create(r, &p, keys[i], RELAY_KEY_MAX, NULL, &err)) {
            fprintf(stderr, "create: %s\n", err.message);
            return 1;
        }
    if (relay_keys_create(r, &p, cold, RELAY_KEY_MAX, NULL, &err)) {
        fprintf(stderr, "create: %s\n", err.message);
        return 1;
    }
    for (int i = 0; i < BURST; i++)
        if (relay_keys_create(r, &p, distinct[i], RELAY_KEY_MAX, NULL, &err)) {
            fprintf(stderr, "create: %s\n", err.message);
            return 1;
        }

    /* First sight: store lookup + bcrypt. */
    double t0 = now_ns();
    for (int i = 0; i < FIRST; i++)
        if (relay_keys_verify(r, keys[i], NULL, &err))
            return 1;
    double first = (now_ns() - t0) / FIRST;

    /* Cached: SHA-256 + table lookup + record copy. */
    t0 = now_ns();
    for (int i = 0; i < CACHED; i++)
        if (relay_keys_verify(r, keys[i % FIRST], NULL, &err))
            return 1;
    double cached = (now_ns() - t0) / CACHED;

    /* Unknown public ids: one indexed store lookup each, no bcrypt. */
    relay_keys_stats_t before, after;
    relay_keys_stats(r, &before);
    t0 = now_ns();
    for (int i = 0; i < UNKNOWN; i++) {
        char fake[RELAY_KEY_MAX], sec[64], pub[16];
        unsigned char rnd[32];
        relay_random_bytes(rnd, sizeof rnd);
        relay_base64url(rnd, 32, sec);
        relay_hex(rnd, 6, pub);
        snprintf(fake, sizeof fake, "sk-proxy-%s_%s", pub, sec);
        if (relay_keys_verify(r, fake, NULL, &err) != RELAY_ERR_AUTH)
            return 1;
    }
    double unknown = (now_ns() - t0) / UNKNOWN;
    relay_keys_stats(r, &after);

    printf("bench_keys (bcrypt cost %d, SQLite store)\n", cost);
    printf("  first verify (bcrypt)   %12.0f ns/op  (%d ops)\n", first, FIRST);
    printf("  cached verify           %12.0f ns/op  (%d ops)  %.0fx faster\n", cached, CACHED,
           first / cached);
    printf("  unknown key verify      %12.0f ns/op  (%d ops)  bcrypt calls: %llu\n", unknown,
           UNKNOWN, (unsigned long long)(after.bcrypt_calls - before.bcrypt_calls));
    bench_burst(r, cold, keys[0]);
    bench_distinct(r, distinct);
    relay_free(r);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 && after.bcrypt_calls == before.bcrypt_calls ? 0 : 1;
}
