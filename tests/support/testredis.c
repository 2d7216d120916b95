/* testredis: leases a logical Redis database per test process (see testredis.h). */
#include "testredis.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static char g_url[512];

/* FLUSHDB on database db of the server at host:port, with the URL's password when it has one. */
static int flush_db(const char *host, int port, const char *password, int db)
{
    redisContext *c = redisConnect(host, port);
    int ok = c && !c->err;
    if (ok && password && *password) {
        redisReply *r = redisCommand(c, "AUTH %s", password);
        ok = r && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    if (ok) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        ok = r && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    if (ok) {
        redisReply *r = redisCommand(c, "FLUSHDB");
        ok = r && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return ok;
}

const char *testredis_url(void)
{
    const char *base = getenv("RELAY_TEST_REDIS_URL");
    if (!base || !*base)
        return NULL;
    /* redis://[:password@]host:port[/db]: the scripts export it without a database. */
    char host[512] = "127.0.0.1", password[512] = "", rest[512];
    int port = 6379;
    const char *p = strncmp(base, "redis://", 8) ? base : base + 8;
    snprintf(rest, sizeof rest, "%s", p);
    char *slash = strchr(rest, '/');
    if (slash)
        *slash = '\0';
    char *at = strrchr(rest, '@');
    char *hostport = rest;
    if (at) {
        *at = '\0';
        snprintf(password, sizeof password, "%s", strchr(rest, ':') ? strchr(rest, ':') + 1 : rest);
        hostport = at + 1;
    }
    char *colon = strrchr(hostport, ':');
    if (colon) {
        *colon = '\0';
        port = atoi(colon + 1);
    }
    if (*hostport)
        snprintf(host, sizeof host, "%s", hostport);
    /* The directory relaytest.py's tempfile.gettempdir() picks, or the two would not see each
     * other's leases. */
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = getenv("TEMP");
    if (!tmp || !*tmp)
        tmp = getenv("TMP");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    for (int n = 1; n <= 15; n++) {
        char lock[4096];
        snprintf(lock, sizeof lock, "%s/relaytest-redis-db-%d.lock", tmp, n);
        int fd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0666);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd);
            continue;
        }
        /* fd stays open: the lease lasts as long as the process. */
        if (!flush_db(host, port, password, n)) {
            fprintf(stderr, "testredis: cannot flush database %d on %s\n", n, base);
            abort();
        }
        size_t blen = slash ? (size_t)(strchr(p, '/') - base) : strlen(base);
        snprintf(g_url, sizeof g_url, "%.*s/%d", (int)blen, base, n);
        return g_url;
    }
    fprintf(stderr, "testredis: all 15 test Redis databases are in use\n");
    abort();
}
