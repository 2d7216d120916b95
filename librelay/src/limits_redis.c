/* limits_redis: the shared limiter in Redis — atomic Lua check-and-take, short timeouts, fallback.
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limits_internal.h"
#include "util.h"

#define POOL_MAX       16
#define PENDING_MAX    4096
#define PROBE_EVERY_MS 1000
#define QUOTA_TTL_MS                                                                               \
    86400000 /* an idle key's quota mirror goes; the store's counter seeds it again */

/*
 * KEYS: 1 request log (zset), 2 token buckets (hash second → tokens), 3 slots (zset by lease end),
 * 4 quota (hash: used), 5 reservations (zset "id:amount" by lease end).
 * ARGV: now_ms id req_limit period_ms tpm tpm_cost concurrent lease_ms consumes_quota token_limit
 *       reserve used_floor quota_ttl_ms take
 * Mirrors limits_decide/mem_take in limits.c: same checks, same order, all-or-nothing take.
 * used is seeded from used_floor (the store's counter) only when Redis has none: raising it to
 * the floor later would count twice a settle that reached Redis before the store.
 */
static const char ADMIT_LUA[] =
    "local now=tonumber(ARGV[1]) local id=ARGV[2]\n"
    "local req_limit=tonumber(ARGV[3]) local period=tonumber(ARGV[4])\n"
    "local tpm=tonumber(ARGV[5]) local tcost=tonumber(ARGV[6])\n"
    "local conc=tonumber(ARGV[7]) local lease=tonumber(ARGV[8]) local cq=tonumber(ARGV[9])\n"
    "local tlimit=tonumber(ARGV[10]) local reserve=tonumber(ARGV[11])\n"
    "local floor=tonumber(ARGV[12]) local qttl=tonumber(ARGV[13]) local take=tonumber(ARGV[14])\n"
    "local used=redis.call('HGET',KEYS[4],'used')\n"
    "if used then used=tonumber(used) else used=floor redis.call('HSET',KEYS[4],'used',used) end\n"
    "redis.call('ZREMRANGEBYSCORE',KEYS[5],'-inf',now)\n"
    "local reserved=0\n"
    "for _,m in ipairs(redis.call('ZRANGE',KEYS[5],0,-1)) do\n"
    "  reserved=reserved+(tonumber(string.match(m,':(%d+)$')) or 0) end\n"
    "local n_req,oldest=0,0\n"
    "if req_limit>=0 then\n"
    "  redis.call('ZREMRANGEBYSCORE',KEYS[1],'-inf',now-period)\n"
    "  n_req=redis.call('ZCARD',KEYS[1])\n"
    "  if n_req>0 then oldest=tonumber(redis.call('ZRANGE',KEYS[1],0,0,'WITHSCORES')[2]) end\n"
    "end\n"
    "local tsum,tretry=0,0 local now_s=math.floor(now/1000)\n"
    "if tpm>0 and cq==1 then\n"
    "  local h=redis.call('HGETALL',KEYS[2]) local b={}\n"
    "  for i=1,#h,2 do local s=tonumber(h[i]) local v=tonumber(h[i+1])\n"
    "    if s<now_s-60 then redis.call('HDEL',KEYS[2],h[i])\n"
    "    elseif s<=now_s then tsum=tsum+v b[s]=v end end\n"
    "  if tsum>=tpm then local left=tsum tretry=60000\n"
    "    for s=now_s-60,now_s do left=left-(b[s] or 0)\n"
    "      if left<tpm then tretry=(s+61)*1000-now break end end end\n"
    "end\n"
    "local slots=0\n"
    "if conc>0 then redis.call('ZREMRANGEBYSCORE',KEYS[3],'-inf',now) "
    "slots=redis.call('ZCARD',KEYS[3]) end\n"
    "local rem=-1 if req_limit>=0 then rem=req_limit-n_req end\n"
    "local reset=now if n_req>0 then reset=oldest+period end\n"
    "local reason,retry=0,0 local quota=(cq==1 and tlimit>0)\n"
    "if quota and (used>=tlimit or used+reserve>tlimit) then reason=5\n"
    "elseif req_limit>=0 and n_req>=req_limit then reason=1 retry=reset-now\n"
    "elseif tpm>0 and cq==1 and tsum>=tpm then reason=2 retry=tretry\n"
    "elseif conc>0 and slots>=conc then reason=3 retry=1000\n"
    "elseif quota and used+reserved+reserve>tlimit then reason=4 retry=1000 end\n"
    "if req_limit>=0 and rem<0 then rem=0 end\n"
    "if reason==0 and take==1 then\n"
    "  if req_limit>=0 then redis.call('ZADD',KEYS[1],now,id) "
    "redis.call('PEXPIRE',KEYS[1],period)\n"
    "    if n_req==0 then reset=now+period end rem=rem-1 end\n"
    "  if tpm>0 and cq==1 then redis.call('HINCRBY',KEYS[2],now_s,tcost)\n"
    "    redis.call('PEXPIRE',KEYS[2],62000) tsum=tsum+tcost end\n"
    "  if conc>0 then redis.call('ZADD',KEYS[3],now+lease,id) redis.call('PEXPIRE',KEYS[3],lease)\n"
    "    slots=slots+1 end\n"
    "  if cq==1 then if reserve>0 then redis.call('ZADD',KEYS[5],now+lease,id..':'..reserve)\n"
    "    redis.call('PEXPIRE',KEYS[5],lease) end reserved=reserved+reserve end\n"
    "end\n"
    "redis.call('PEXPIRE',KEYS[4],qttl)\n"
    "return {reason,retry,rem,reset,tsum,slots,used,reserved}\n";

/*
 * KEYS: 1 token buckets, 2 slots, 3 quota, 4 reservations.
 * ARGV: id reserved billed tpm_second tpm_delta quota_ttl_ms has_slot
 * A missing quota hash is left missing: the next admit seeds it from the store, which will count
 * this request too.
 */
static const char SETTLE_LUA[] =
    "if tonumber(ARGV[2])>0 then redis.call('ZREM',KEYS[4],ARGV[1]..':'..ARGV[2]) end\n"
    "if ARGV[7]=='1' then redis.call('ZREM',KEYS[2],ARGV[1]) end\n"
    "local billed=tonumber(ARGV[3])\n"
    "if billed>0 and redis.call('EXISTS',KEYS[3])==1 then "
    "redis.call('HINCRBY',KEYS[3],'used',billed) "
    "redis.call('PEXPIRE',KEYS[3],ARGV[6]) end\n"
    "local d=tonumber(ARGV[5])\n"
    "if d~=0 then local v=redis.call('HGET',KEYS[1],ARGV[4])\n"
    "  if v then local nv=tonumber(v)+d if nv<0 then nv=0 end "
    "redis.call('HSET',KEYS[1],ARGV[4],nv) end end\n"
    "return 1\n";

/*
 * Cost budgets. KEYS: per budget, its spend in this period (hash: spent) and its reservations
 * (zset "id:usd" by lease end; one per budget, not per period, so a settle after a period change
 * still finds its reservation). ARGV: now_ms lease_ms member estimate take, then per budget
 * limit seed ttl_s. Mirrors decide() in budgets.c: every budget's "full" check, then every
 * "busy" check, and only when all pass the reservation in each. seed is this instance's mirror
 * of the spend (the store's spend when it first looked, plus what it settled since) less the
 * costs whose own settle script has not returned yet: it never holds a cost that Redis has not
 * counted and may still count, so spent = max(Redis, seed) never counts a request twice, and a
 * settle that could not reach Redis, or Redis losing its data, is made good by the next admit.
 * Returns {verdict (0 ok, 1 full, 2 busy), index (1-based), spent_1, reserved_1, ...}.
 */
static const char BUDGET_ADMIT_LUA[] =
    "local now=tonumber(ARGV[1]) local lease=tonumber(ARGV[2]) local member=ARGV[3]\n"
    "local est=tonumber(ARGV[4]) local take=ARGV[5]=='1' local n=#KEYS/2 local eps=1e-9\n"
    "local sp={} local rs={}\n"
    "for i=1,n do local h=KEYS[2*i-1] local z=KEYS[2*i] local b=5+(i-1)*3\n"
    " local cur=tonumber(redis.call('HGET',h,'spent')) local sd=tonumber(ARGV[b+2]) or 0\n"
    " if not cur or sd>cur then redis.call('HSET',h,'spent',ARGV[b+2]) cur=sd\n"
    "  redis.call('EXPIRE',h,tonumber(ARGV[b+3])) end\n"
    " redis.call('ZREMRANGEBYSCORE',z,'-inf',now)\n"
    " sp[i]=cur rs[i]=0\n"
    " for _,m in ipairs(redis.call('ZRANGE',z,0,-1)) do\n"
    "  rs[i]=rs[i]+(tonumber(string.match(m,':([^:]*)$')) or 0) end end\n"
    "local out={0,0}\n"
    "for i=1,n do out[#out+1]=string.format('%.17g',sp[i]) out[#out+1]=string.format('%.17g',rs[i])"
    " end\n"
    "if not take then return out end\n"
    "for i=1,n do local l=tonumber(ARGV[5+(i-1)*3+1])\n"
    " if sp[i]>=l or sp[i]+est>l+eps then out[1]=1 out[2]=i return out end end\n"
    "for i=1,n do local l=tonumber(ARGV[5+(i-1)*3+1])\n"
    " if sp[i]+rs[i]+est>l+eps then out[1]=2 out[2]=i return out end end\n"
    "for i=1,n do local b=5+(i-1)*3 redis.call('ZADD',KEYS[2*i],now+lease,member)\n"
    " redis.call('PEXPIRE',KEYS[2*i],lease+60000) "
    "redis.call('EXPIRE',KEYS[2*i-1],tonumber(ARGV[b+3]))"
    " end\n"
    "return out\n";

/* KEYS as above (this period's). ARGV: member cost, then per budget seed ttl_s. */
static const char BUDGET_SETTLE_LUA[] =
    "local member=ARGV[1] local cost=tonumber(ARGV[2])\n"
    "for i=1,#KEYS/2 do local h=KEYS[2*i-1] local b=2+(i-1)*2\n"
    " redis.call('ZREM',KEYS[2*i],member)\n"
    " local cur=tonumber(redis.call('HGET',h,'spent'))\n"
    " if not cur or tonumber(ARGV[b+1])>cur then redis.call('HSET',h,'spent',ARGV[b+1]) end\n"
    " if cost>0 then redis.call('HINCRBYFLOAT',h,'spent',ARGV[2]) end\n"
    " redis.call('EXPIRE',h,tonumber(ARGV[b+2])) end\n"
    "return 1\n";

enum {
    SCRIPT_ADMIT = 0,
    SCRIPT_SETTLE = 1,
    SCRIPT_BUDGET_ADMIT = 2,
    SCRIPT_BUDGET_SETTLE = 3,
    N_SCRIPTS = 4
};
static const char *const SCRIPTS[N_SCRIPTS] = {ADMIT_LUA, SETTLE_LUA, BUDGET_ADMIT_LUA,
                                               BUDGET_SETTLE_LUA};

struct relay_limits_redis {
    relay_t *r;
    char host[256];
    int port;
    int db;
    char user[128];
    char password[256]; /* secret: sent in AUTH, never logged */
    int timeout_ms;

    pthread_mutex_t mu; /* guards everything below; never held across I/O */
    pthread_cond_t cond;
    int up, stop;
    redisContext *pool[POOL_MAX];
    int npool;
    char sha[N_SCRIPTS][41];
    limits_settle_op_t *pending; /* settles waiting for Redis to come back (ring) */
    size_t pend_head, pend_len;
    uint64_t errors, lost;
    int lose_replies; /* tests: admit replies to drop after the script ran */
    pthread_t prober;
    int prober_started;
};

/* ---- URL ---- */

static int parse_url(relay_limits_redis_t *rd, const char *url, relay_error_t *err)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0)
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "redis_url: expected redis://[[user]:password@]host[:port][/db]");
    p += 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ul = colon ? (size_t)(colon - p) : 0;
        const char *pw = colon ? colon + 1 : p;
        size_t pl = (size_t)(at - pw);
        if (ul >= sizeof rd->user || pl >= sizeof rd->password)
            return relay_error_set(err, RELAY_ERR_CONFIG, "redis_url: credentials too long");
        memcpy(rd->user, p, ul);
        rd->user[ul] = '\0';
        memcpy(rd->password, pw, pl);
        rd->password[pl] = '\0';
        p = at + 1;
    }
    size_t hl;
    const char *after;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (!end)
            return relay_error_set(err, RELAY_ERR_CONFIG, "redis_url: unterminated [host]");
        hl = (size_t)(end - p - 1);
        p++;
        after = end + 1;
    } else {
        hl = strcspn(p, ":/");
        after = p + hl;
    }
    if (hl == 0 || hl >= sizeof rd->host)
        return relay_error_set(err, RELAY_ERR_CONFIG, "redis_url: missing or overlong host");
    memcpy(rd->host, p, hl);
    rd->host[hl] = '\0';
    rd->port = 6379;
    if (*after == ':') {
        char *end;
        long port = strtol(after + 1, &end, 10);
        if (end == after + 1 || port <= 0 || port > 65535 || (*end && *end != '/'))
            return relay_error_set(err, RELAY_ERR_CONFIG, "redis_url: bad port");
        rd->port = (int)port;
        after = end;
    }
    if (*after == '/' && after[1]) {
        char *end;
        long db = strtol(after + 1, &end, 10);
        if (end == after + 1 || *end || db < 0 || db > 1000)
            return relay_error_set(err, RELAY_ERR_CONFIG, "redis_url: bad database number");
        rd->db = (int)db;
    }
    return 0;
}

/* ---- connections ---- */

static struct timeval tv_ms(int64_t ms)
{
    if (ms < 1)
        ms = 1;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                         .tv_usec = (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* A reply that is not an error, or NULL (the reply is freed then). */
static redisReply *ok_reply(redisReply *rep)
{
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

static int conn_setup(relay_limits_redis_t *rd, redisContext *c)
{
    redisReply *rep = NULL;
    if (rd->password[0] && rd->user[0])
        rep = ok_reply(redisCommand(c, "AUTH %s %s", rd->user, rd->password));
    else if (rd->password[0])
        rep = ok_reply(redisCommand(c, "AUTH %s", rd->password));
    if (rd->password[0] && !rep)
        return -1;
    freeReplyObject(rep);
    if (rd->db) {
        rep = ok_reply(redisCommand(c, "SELECT %d", rd->db));
        if (!rep)
            return -1;
        freeReplyObject(rep);
    }
    return 0;
}

/* A new connection whose connect and commands each give up after timeout_ms. NULL on failure. */
static redisContext *conn_open(relay_limits_redis_t *rd, int64_t timeout_ms, char *why, size_t cap)
{
    redisContext *c = redisConnectWithTimeout(rd->host, rd->port, tv_ms(timeout_ms));
    if (!c || c->err) {
        relay_strlcpy(why, c ? c->errstr : "out of memory", cap);
        redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv_ms(timeout_ms)) != REDIS_OK || conn_setup(rd, c) != 0) {
        relay_strlcpy(why, c->err ? c->errstr : "AUTH or SELECT refused", cap);
        redisFree(c);
        return NULL;
    }
    return c;
}

static void mark_down(relay_limits_redis_t *rd, const char *why)
{
    redisContext *drop[POOL_MAX];
    int n = 0, was_up;
    pthread_mutex_lock(&rd->mu);
    was_up = rd->up;
    rd->up = 0;
    rd->errors++;
    while (rd->npool)
        drop[n++] = rd->pool[--rd->npool]; /* they share the dead server's fate */
    pthread_mutex_unlock(&rd->mu);
    for (int i = 0; i < n; i++)
        redisFree(drop[i]);
    if (was_up) /* once per outage, not once per request */
        relay_log(
            rd->r, RELAY_LOG_WARN, "limits.redis_down", NULL,
            "Redis at %s:%d unreachable (%s); rate limits and quotas fall back to this process",
            rd->host, rd->port, why);
}

/* A pooled connection, or a new one while Redis is up. NULL when down: decide in memory. */
static redisContext *conn_get(relay_limits_redis_t *rd)
{
    pthread_mutex_lock(&rd->mu);
    if (!rd->up) {
        pthread_mutex_unlock(&rd->mu);
        return NULL;
    }
    redisContext *c = rd->npool ? rd->pool[--rd->npool] : NULL;
    pthread_mutex_unlock(&rd->mu);
    if (c)
        return c;
    char why[128];
    c = conn_open(rd, rd->timeout_ms, why, sizeof why);
    if (!c)
        mark_down(rd, why);
    return c;
}

static void conn_put(relay_limits_redis_t *rd, redisContext *c)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->up && rd->npool < POOL_MAX) {
        rd->pool[rd->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&rd->mu);
    redisFree(c);
}

/* Runs a script by SHA (EVAL when Redis lost it). NULL and c->err set on I/O failure. */
static redisReply *run_script(relay_limits_redis_t *rd, redisContext *c, int which, int argc,
                              const char **argv)
{
    char sha[41];
    pthread_mutex_lock(&rd->mu);
    memcpy(sha, rd->sha[which], sizeof sha);
    pthread_mutex_unlock(&rd->mu);
    redisReply *rep = NULL;
    if (sha[0]) {
        argv[0] = "EVALSHA";
        argv[1] = sha;
        rep = redisCommandArgv(c, argc, argv, NULL);
        if (!rep || rep->type != REDIS_REPLY_ERROR || strncmp(rep->str, "NOSCRIPT", 8) != 0)
            return rep;
        freeReplyObject(rep);
    }
    argv[0] = "EVAL";
    argv[1] = SCRIPTS[which];
    return redisCommandArgv(c, argc, argv, NULL);
}

/* Handles a failed call: I/O errors mean Redis is away; error replies only count. */
static void call_failed(relay_limits_redis_t *rd, redisContext *c, redisReply *rep)
{
    if (!rep) {
        char why[128];
        relay_strlcpy(why, c->errstr[0] ? c->errstr : "no reply", sizeof why);
        redisFree(c);
        mark_down(rd, why);
        return;
    }
    pthread_mutex_lock(&rd->mu);
    rd->errors++;
    pthread_mutex_unlock(&rd->mu);
    if (rep->type == REDIS_REPLY_ERROR)
        relay_log(rd->r, RELAY_LOG_WARN, "limits.redis_error", NULL, "Redis script failed: %.200s",
                  rep->str);
    freeReplyObject(rep);
    conn_put(rd, c);
}

/* ---- keys and arguments ---- */

typedef struct key_names {
    char k[5][80];
} key_names_t;

static void key_names(const char *key_id, key_names_t *kn)
{
    static const char *const suffix[5] = {"rw", "tw", "cc", "q", "qr"};
    /* The {hash tag} keeps one key's data in one cluster slot, as a script needs. */
    for (int i = 0; i < 5; i++)
        snprintf(kn->k[i], sizeof kn->k[i], "relay:{%s}:%s", key_id, suffix[i]);
}

static int64_t int_at(const redisReply *rep, size_t i)
{
    if (i >= rep->elements)
        return 0;
    const redisReply *e = rep->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

/* Tests: whether to drop this admit's reply, as a timeout after the script ran would. */
static int lose_reply(relay_limits_redis_t *rd)
{
    pthread_mutex_lock(&rd->mu);
    int lose = rd->lose_replies > 0;
    if (lose)
        rd->lose_replies--;
    pthread_mutex_unlock(&rd->mu);
    return lose;
}

static void pending_push(relay_limits_redis_t *rd, const limits_settle_op_t *op);

/*
 * An admit whose reply never came may still have run: Redis would then hold a slot and a
 * reservation for it until the lease ends (minutes), while the caller admits in memory. Queue
 * the settle that gives them back; it runs once Redis answers again, and does nothing if the
 * script never ran (the ZREMs match nothing). The request-window entry and the token bucket are
 * left: the request did happen, and a bucket decrement could not tell whether there is anything
 * of ours to take back.
 */
static void undo_admit(relay_limits_redis_t *rd, const limits_take_t *t)
{
    limits_settle_op_t op = {.reserved = t->consumes_quota ? t->reserve : 0,
                             .has_slot = t->concurrent > 0};
    if (!op.reserved && !op.has_slot)
        return;
    relay_strlcpy(op.key_id, t->key_id, sizeof op.key_id);
    relay_strlcpy(op.admission_id, t->admission_id, sizeof op.admission_id);
    pending_push(rd, &op);
}

/*
 * A connection for one call, or NULL when Redis is unreachable. Its timeout is what is left of
 * one timeout after connecting, so connect plus command stay within it.
 */
static redisContext *conn_for_call(relay_limits_redis_t *rd)
{
    int64_t started = relay_mono_ms();
    redisContext *c = conn_get(rd);
    if (c)
        redisSetTimeout(c, tv_ms(rd->timeout_ms - (relay_mono_ms() - started)));
    return c;
}

static int call_admit(relay_limits_redis_t *rd, const limits_take_t *t, int take,
                      limits_verdict_t *v)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    key_names_t kn;
    key_names(t->key_id, &kn);
    int64_t vals[13] = {
        t->now_ms,   t->req_limit,      t->period_ms,   t->tpm,     t->tpm_cost,   t->concurrent,
        t->lease_ms, t->consumes_quota, t->token_limit, t->reserve, t->used_floor, QUOTA_TTL_MS,
        take};
    char nums[13][24];
    for (int i = 0; i < 13; i++)
        snprintf(nums[i], sizeof nums[i], "%" PRId64, vals[i]);
    const char *argv[3 + 5 + 14];
    int argc = 0;
    argv[argc++] = "EVALSHA";
    argv[argc++] = "";
    argv[argc++] = "5";
    for (int i = 0; i < 5; i++)
        argv[argc++] = kn.k[i];
    argv[argc++] = nums[0];
    argv[argc++] = t->admission_id;
    for (int i = 1; i < 13; i++)
        argv[argc++] = nums[i];
    redisReply *rep = run_script(rd, c, SCRIPT_ADMIT, argc, argv);
    if (rep && take && lose_reply(rd)) {
        freeReplyObject(rep);
        rep = NULL;
    }
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 8) {
        int io = rep == NULL;
        call_failed(rd, c, rep); /* marks Redis down first: the undo waits for the next probe */
        if (io && take)
            undo_admit(rd, t);
        return -1;
    }
    memset(v, 0, sizeof *v);
    v->reason = (int)int_at(rep, 0);
    v->retry_after_ms = int_at(rep, 1);
    v->req_remaining = int_at(rep, 2);
    v->req_reset_ms = int_at(rep, 3);
    v->tpm_used = int_at(rep, 4);
    v->slots = int_at(rep, 5);
    v->used = int_at(rep, 6);
    v->reserved = int_at(rep, 7);
    freeReplyObject(rep);
    conn_put(rd, c);
    return 0;
}

int limits_redis_admit(relay_limits_redis_t *rd, const limits_take_t *t, limits_verdict_t *v)
{
    return call_admit(rd, t, 1, v);
}

int limits_redis_peek(relay_limits_redis_t *rd, const limits_take_t *t, limits_verdict_t *v)
{
    return call_admit(rd, t, 0, v);
}

/* Plain GET and SET for other modules' shared state (the upstream pool's sessions). */
int limits_redis_get(relay_limits_redis_t *rd, const char *key, char *out, size_t cap)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    const char *argv[] = {"GET", key};
    redisReply *rep = redisCommandArgv(c, 2, argv, NULL);
    if (!rep || (rep->type != REDIS_REPLY_STRING && rep->type != REDIS_REPLY_NIL)) {
        call_failed(rd, c, rep);
        return -1;
    }
    int found = rep->type == REDIS_REPLY_STRING && rep->len < cap;
    if (found)
        relay_strlcpy(out, rep->str, cap);
    freeReplyObject(rep);
    conn_put(rd, c);
    return found ? 0 : 1;
}

int limits_redis_set_ex(relay_limits_redis_t *rd, const char *key, const char *value,
                        int64_t ttl_ms)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms > 0 ? ttl_ms : 1);
    const char *argv[] = {"SET", key, value, "PX", ttl};
    redisReply *rep = redisCommandArgv(c, 5, argv, NULL);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        call_failed(rd, c, rep);
        return -1;
    }
    freeReplyObject(rep);
    conn_put(rd, c);
    return 0;
}

/* One settle against Redis. 0, or -1 when it did not reach Redis. */
static int call_settle(relay_limits_redis_t *rd, const limits_settle_op_t *op)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    key_names_t kn;
    key_names(op->key_id, &kn);
    char nums[6][24];
    int64_t vals[6] = {op->reserved,  op->billed,   op->tpm_second,
                       op->tpm_delta, QUOTA_TTL_MS, op->has_slot};
    for (int i = 0; i < 6; i++)
        snprintf(nums[i], sizeof nums[i], "%" PRId64, vals[i]);
    const char *argv[3 + 4 + 7] = {
        "EVALSHA",        "",      "4",     kn.k[1], kn.k[2], kn.k[3], kn.k[4],
        op->admission_id, nums[0], nums[1], nums[2], nums[3], nums[4], nums[5]};
    redisReply *rep = run_script(rd, c, SCRIPT_SETTLE, 14, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        int io = rep == NULL;
        call_failed(rd, c, rep);
        return io ? -1 : 0; /* a script error will not heal by retrying */
    }
    freeReplyObject(rep);
    conn_put(rd, c);
    return 0;
}

static void pending_push(relay_limits_redis_t *rd, const limits_settle_op_t *op)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->pend_len == PENDING_MAX) {
        rd->lost++; /* its slot and reservation end with their lease instead */
    } else {
        rd->pending[(rd->pend_head + rd->pend_len) % PENDING_MAX] = *op;
        rd->pend_len++;
    }
    pthread_mutex_unlock(&rd->mu);
}

void limits_redis_settle(relay_limits_redis_t *rd, const limits_settle_op_t *op)
{
    if (call_settle(rd, op) != 0)
        pending_push(rd, op);
}

/* Replays queued settles while Redis answers (prober thread). */
static void pending_replay(relay_limits_redis_t *rd)
{
    for (;;) {
        limits_settle_op_t op;
        pthread_mutex_lock(&rd->mu);
        int have = rd->pend_len > 0 && rd->up && !rd->stop;
        if (have) {
            op = rd->pending[rd->pend_head];
            rd->pend_head = (rd->pend_head + 1) % PENDING_MAX;
            rd->pend_len--;
        }
        pthread_mutex_unlock(&rd->mu);
        if (!have)
            return;
        if (call_settle(rd, &op) != 0) {
            pending_push(rd, &op);
            return;
        }
    }
}

/* ---- cost budgets ---- */

static double dbl_at(const redisReply *rep, size_t i)
{
    if (i >= rep->elements || rep->element[i]->type != REDIS_REPLY_STRING)
        return 0;
    return strtod(rep->element[i]->str, NULL);
}

/* The KEYS of op's budgets: hash and zset of each, under the key's hash tag. */
static void budget_keys(const limits_budget_op_t *op, char keys[][96], const char **argv)
{
    for (int i = 0; i < op->n; i++) {
        snprintf(keys[2 * i], 96, "relay:{%s}:b:%s:%" PRId64, op->key_id, op->b[i].bid,
                 op->b[i].start);
        snprintf(keys[2 * i + 1], 96, "relay:{%s}:br:%s", op->key_id, op->b[i].bid);
        argv[2 * i] = keys[2 * i];
        argv[2 * i + 1] = keys[2 * i + 1];
    }
}

int limits_redis_budget_admit(relay_limits_redis_t *rd, const limits_budget_op_t *op, int take,
                              limits_budget_verdict_t *v)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    enum { MAXB = LIMITS_MAX_BUDGETS };
    char keys[2 * MAXB][96], nums[5 + 3 * MAXB][32], nkeys[8];
    const char *argv[3 + 2 * MAXB + 5 + 3 * MAXB];
    int argc = 3;
    snprintf(nkeys, sizeof nkeys, "%d", 2 * op->n);
    argv[2] = nkeys;
    budget_keys(op, keys, argv + argc);
    argc += 2 * op->n;
    snprintf(nums[0], 32, "%" PRId64, op->now_ms);
    snprintf(nums[1], 32, "%" PRId64, op->lease_ms);
    snprintf(nums[3], 32, "%.17g", op->estimate);
    snprintf(nums[4], 32, "%d", take);
    const char *fixed[5] = {nums[0], nums[1], op->member, nums[3], nums[4]};
    for (int i = 0; i < 5; i++)
        argv[argc++] = fixed[i];
    for (int i = 0; i < op->n; i++) {
        snprintf(nums[5 + 3 * i], 32, "%.17g", op->b[i].limit);
        snprintf(nums[6 + 3 * i], 32, "%.17g", op->b[i].seed);
        snprintf(nums[7 + 3 * i], 32, "%" PRId64, op->b[i].ttl_s);
        for (int j = 0; j < 3; j++)
            argv[argc++] = nums[5 + 3 * i + j];
    }
    redisReply *rep = run_script(rd, c, SCRIPT_BUDGET_ADMIT, argc, argv);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 + 2 * (size_t)op->n) {
        call_failed(rd, c, rep); /* a lost reply's reservation ends with its lease */
        return -1;
    }
    v->verdict = (int)int_at(rep, 0);
    v->index = (int)int_at(rep, 1) - 1;
    for (int i = 0; i < op->n; i++) {
        v->spent[i] = dbl_at(rep, 2 + 2 * (size_t)i);
        v->reserved[i] = dbl_at(rep, 3 + 2 * (size_t)i);
    }
    freeReplyObject(rep);
    conn_put(rd, c);
    return 0;
}

int limits_redis_budget_settle(relay_limits_redis_t *rd, const limits_budget_op_t *op, double cost)
{
    redisContext *c = conn_for_call(rd);
    if (!c)
        return -1;
    enum { MAXB = LIMITS_MAX_BUDGETS };
    char keys[2 * MAXB][96], nums[1 + 2 * MAXB][32], nkeys[8];
    const char *argv[3 + 2 * MAXB + 2 + 2 * MAXB];
    int argc = 3;
    snprintf(nkeys, sizeof nkeys, "%d", 2 * op->n);
    argv[2] = nkeys;
    budget_keys(op, keys, argv + argc);
    argc += 2 * op->n;
    argv[argc++] = op->member;
    snprintf(nums[0], 32, "%.17g", cost);
    argv[argc++] = nums[0];
    for (int i = 0; i < op->n; i++) {
        snprintf(nums[1 + 2 * i], 32, "%.17g", op->b[i].seed);
        snprintf(nums[2 + 2 * i], 32, "%" PRId64, op->b[i].ttl_s);
        argv[argc++] = nums[1 + 2 * i];
        argv[argc++] = nums[2 + 2 * i];
    }
    redisReply *rep = run_script(rd, c, SCRIPT_BUDGET_SETTLE, argc, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        call_failed(rd, c, rep);
        pthread_mutex_lock(&rd->mu);
        rd->lost++; /* its reservation ends with the lease; its cost is in the store */
        pthread_mutex_unlock(&rd->mu);
        return -1;
    }
    freeReplyObject(rep);
    conn_put(rd, c);
    return 0;
}

/* ---- the prober: reconnects at most once a second while down, off the request path ---- */

static int load_scripts(relay_limits_redis_t *rd, redisContext *c)
{
    for (int i = 0; i < N_SCRIPTS; i++) {
        redisReply *rep = redisCommand(c, "SCRIPT LOAD %s", SCRIPTS[i]);
        if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != 40) {
            freeReplyObject(rep);
            return -1;
        }
        pthread_mutex_lock(&rd->mu);
        memcpy(rd->sha[i], rep->str, 41);
        pthread_mutex_unlock(&rd->mu);
        freeReplyObject(rep);
    }
    return 0;
}

/* One attempt to (re)connect. 0 when Redis is up afterwards. */
static int probe(relay_limits_redis_t *rd, int log_failure)
{
    char why[128] = "";
    redisContext *c = conn_open(rd, rd->timeout_ms, why, sizeof why);
    if (c && load_scripts(rd, c) != 0) {
        relay_strlcpy(why, c->err ? c->errstr : "SCRIPT LOAD refused", sizeof why);
        redisFree(c);
        c = NULL;
    }
    if (!c) {
        if (log_failure)
            relay_log(
                rd->r, RELAY_LOG_WARN, "limits.redis_down", NULL,
                "Redis at %s:%d unreachable (%s); rate limits and quotas fall back to this process",
                rd->host, rd->port, why);
        return -1;
    }
    pthread_mutex_lock(&rd->mu);
    int was_up = rd->up;
    rd->up = 1;
    if (rd->npool < POOL_MAX) {
        rd->pool[rd->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&rd->mu);
    redisFree(c);
    if (!was_up && !log_failure)
        relay_log(rd->r, RELAY_LOG_INFO, "limits.redis_up", NULL,
                  "Redis at %s:%d is back; limits are shared again", rd->host, rd->port);
    return 0;
}

static void *prober_main(void *arg)
{
    relay_limits_redis_t *rd = arg;
    pthread_mutex_lock(&rd->mu);
    while (!rd->stop) {
        struct timespec ts;
        relay_deadline_in(&ts, PROBE_EVERY_MS);
        pthread_cond_timedwait(&rd->cond, &rd->mu, &ts);
        if (rd->stop)
            break;
        int up = rd->up;
        pthread_mutex_unlock(&rd->mu);
        if (up || probe(rd, 0) == 0)
            pending_replay(rd);
        pthread_mutex_lock(&rd->mu);
    }
    pthread_mutex_unlock(&rd->mu);
    return NULL;
}

/* ---- lifecycle ---- */

int limits_redis_new(relay_limits_redis_t **out, relay_t *r, const char *url, int timeout_ms,
                     relay_error_t *err)
{
    *out = NULL;
    relay_limits_redis_t *rd = calloc(1, sizeof *rd);
    if (!rd)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    rd->pending = calloc(PENDING_MAX, sizeof *rd->pending);
    if (!rd->pending) {
        free(rd);
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    }
    rd->r = r;
    rd->timeout_ms = timeout_ms;
    pthread_mutex_init(&rd->mu, NULL);
    pthread_cond_init(&rd->cond, NULL);
    int rc = parse_url(rd, url, err);
    if (rc) {
        limits_redis_free(rd);
        return rc;
    }
    probe(rd, 1); /* down is not an error: requests are limited in process meanwhile */
    if (pthread_create(&rd->prober, NULL, prober_main, rd) != 0) {
        limits_redis_free(rd);
        return relay_error_set(err, RELAY_ERR_INTERNAL, "cannot start the Redis prober thread");
    }
    rd->prober_started = 1;
    *out = rd;
    return 0;
}

void limits_redis_free(relay_limits_redis_t *rd)
{
    if (!rd)
        return;
    if (rd->prober_started) {
        pthread_mutex_lock(&rd->mu);
        rd->stop = 1;
        pthread_cond_signal(&rd->cond);
        pthread_mutex_unlock(&rd->mu);
        pthread_join(rd->prober, NULL);
    }
    for (int i = 0; i < rd->npool; i++)
        redisFree(rd->pool[i]);
    memset(rd->password, 0, sizeof rd->password);
    pthread_cond_destroy(&rd->cond);
    pthread_mutex_destroy(&rd->mu);
    free(rd->pending);
    free(rd);
}

int limits_redis_is_up(relay_limits_redis_t *rd)
{
    pthread_mutex_lock(&rd->mu);
    int up = rd->up;
    pthread_mutex_unlock(&rd->mu);
    return up;
}

void limits_redis_lose_replies_for_tests(relay_limits_redis_t *rd, int n)
{
    pthread_mutex_lock(&rd->mu);
    rd->lose_replies = n;
    pthread_mutex_unlock(&rd->mu);
}

void limits_redis_stats(relay_limits_redis_t *rd, uint64_t *errors, uint64_t *lost)
{
    pthread_mutex_lock(&rd->mu);
    *errors = rd->errors;
    *lost = rd->lost;
    pthread_mutex_unlock(&rd->mu);
}
