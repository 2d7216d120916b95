/* bench_keys: cached key verification vs a first (bcrypt) verification vs unknown keys, in one run.
 */
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
    char keys[FIRST][RELAY_KEY_MAX];
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = "bench";
    for (int i = 0; i < FIRST; i++)
        if (relay_keys_create(r, &p, keys[i], RELAY_KEY_MAX, NULL, &err)) {
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
    relay_free(r);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 && after.bcrypt_calls == before.bcrypt_calls ? 0 : 1;
}
