/* keys_admin: manages proxy keys in a relay data directory without any server running. */
/*
 * Usage: keys_admin DATA_DIR create NAME [TOKEN_LIMIT]   prints the key once, then its id
 *        keys_admin DATA_DIR list                        one line per key
 *        keys_admin DATA_DIR disable ID
 *        keys_admin DATA_DIR verify < KEYFILE            the key on stdin, never in argv
 * Every run opens the same SQLite store (DATA_DIR/relay.db), so what one run does the next
 * sees. verify exits 0 for a valid key and 3 when the relay refuses it, printing the reason
 * ("API key is disabled").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <relay/keys.h>
#include <relay/relay.h>

static int cmd_create(relay_t *r, const char *name, const char *limit)
{
    relay_key_params_t p;
    relay_key_params_init(&p);
    p.name = name;
    if (limit) {
        char *end;
        p.token_limit = strtoll(limit, &end, 10);
        if (*end || p.token_limit < 0) {
            fprintf(stderr, "keys_admin: TOKEN_LIMIT must be a number >= 0\n");
            return 2;
        }
    }
    char key[RELAY_KEY_MAX];
    relay_key_record_t rec = {0};
    relay_error_t err = {0};
    int rc = relay_keys_create(r, &p, key, sizeof key, &rec, &err);
    if (rc) {
        fprintf(stderr, "keys_admin: create: %s\n", err.message);
        return 1;
    }
    /* The only time the full key exists: hand it to its owner now. */
    printf("key=%s\nid=%s\nlimit=%lld tier=%s\n", key, rec.id, (long long)rec.token_limit,
           rec.rate_limit_tier);
    memset(key, 0, sizeof key);
    relay_key_record_clear(&rec);
    return 0;
}

static int cmd_list(relay_t *r)
{
    relay_key_record_t *recs = NULL;
    size_t n = 0;
    int64_t total = 0;
    relay_error_t err = {0};
    if (relay_keys_list(r, RELAY_KEYS_ALL, 0, 1000, &recs, &n, &total, &err) != 0) {
        fprintf(stderr, "keys_admin: list: %s\n", err.message);
        return 1;
    }
    printf("total=%lld\n", (long long)total);
    for (size_t i = 0; i < n; i++)
        printf("%s %s active=%d used=%lld/%lld prefix=%s\n", recs[i].id, recs[i].name,
               recs[i].is_active, (long long)recs[i].token_used, (long long)recs[i].token_limit,
               recs[i].key_prefix);
    relay_key_records_free(recs, n);
    return 0;
}

static int cmd_disable(relay_t *r, const char *id)
{
    relay_error_t err = {0};
    if (relay_keys_disable(r, id, &err) != 0) {
        fprintf(stderr, "keys_admin: disable: %s\n", err.message);
        return 1;
    }
    printf("disabled=%s\n", id);
    return 0;
}

static int cmd_verify(relay_t *r)
{
    char key[RELAY_KEY_MAX];
    if (!fgets(key, sizeof key, stdin)) {
        fprintf(stderr, "keys_admin: verify: no key on stdin\n");
        return 2;
    }
    key[strcspn(key, "\r\n")] = '\0';
    relay_key_record_t rec = {0};
    relay_error_t err = {0};
    int rc = relay_keys_verify(r, key, &rec, &err);
    memset(key, 0, sizeof key);
    if (rc) {
        /* err.message is safe to show: librelay never puts a key into it. */
        printf("refused code=%d status=%d type=%s message=%s\n", rc, relay_err_http_status(rc),
               relay_err_type(rc), err.message);
        return 3;
    }
    printf("valid id=%s name=%s tier=%s\n", rec.id, rec.name, rec.rate_limit_tier);
    relay_key_record_clear(&rec);
    return 0;
}

static int run(relay_t *r, int argc, char **argv)
{
    const char *cmd = argv[2];
    if (strcmp(cmd, "create") == 0 && (argc == 4 || argc == 5))
        return cmd_create(r, argv[3], argc == 5 ? argv[4] : NULL);
    if (strcmp(cmd, "list") == 0 && argc == 3)
        return cmd_list(r);
    if (strcmp(cmd, "disable") == 0 && argc == 4)
        return cmd_disable(r, argv[3]);
    if (strcmp(cmd, "verify") == 0 && argc == 3)
        return cmd_verify(r);
    fprintf(stderr,
            "usage: keys_admin DATA_DIR create NAME [LIMIT] | list | disable ID | verify\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr,
                "usage: keys_admin DATA_DIR create NAME [LIMIT] | list | disable ID | verify\n");
        return 2;
    }
    relay_options_t opts;
    relay_options_init(&opts);
    opts.data_dir = argv[1];
    relay_t *r = NULL;
    relay_error_t err = {0};
    if (relay_new(&r, &opts, &err) != 0) {
        fprintf(stderr, "keys_admin: %s\n", err.message);
        return 1;
    }
    int rc = run(r, argc, argv);
    relay_free(r);
    return rc;
}
