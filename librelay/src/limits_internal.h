/* limits_internal: what limits.c and limits_redis.c share — one check-and-take, two backends. */
#ifndef RELAY_LIMITS_INTERNAL_H
#define RELAY_LIMITS_INTERNAL_H

#include <stdint.h>

#include "internal.h"
#include "relay/limits.h"

/* Module hooks (modules.h). */
int relay_limits_start(relay_t *r, relay_error_t *err);
void relay_limits_stop(relay_t *r);

/* Tests replace the wall clock (Unix ms) to cross window edges without sleeping. NULL restores. */
void relay_limits_set_clock_for_tests(relay_t *r, int64_t (*now_ms)(void *ud), void *ud);
/* The limits' clock (the test clock when set): budgets use it too, so periods move with it. */
int64_t relay_limits_now_ms(relay_t *r);

/* Why a check-and-take refused; the order is the order the checks run in both backends. */
enum {
    LIMIT_OK = 0,
    LIMIT_REQUESTS = 1,    /* requests per period */
    LIMIT_TOKENS = 2,      /* tokens per minute */
    LIMIT_CONCURRENCY = 3, /* concurrent requests */
    LIMIT_QUOTA_BUSY = 4,  /* fits the quota, but not next to the reservations in flight */
    LIMIT_QUOTA = 5,       /* exhausted, or this request alone cannot fit */
};

/* The token window: one bucket per second, 61 of them so a whole minute is always covered. */
#define LIMITS_TPM_BUCKETS 61

/* One atomic check-and-take, the same for memory and Redis. */
typedef struct limits_take {
    const char *key_id;
    const char *admission_id;
    int64_t now_ms;
    int64_t req_limit; /* < 0: unlimited */
    int64_t period_ms;
    int64_t tpm;        /* 0: none */
    int64_t tpm_cost;   /* tokens charged to this second's bucket */
    int64_t concurrent; /* 0: none */
    int64_t lease_ms;   /* Redis: how long a slot/reservation survives a lost settle */
    int consumes_quota;
    int64_t token_limit; /* 0: unlimited */
    int64_t reserve;
    int64_t used_floor; /* the store's token_used (and this instance's mirror): used never below */
} limits_take_t;

typedef struct limits_verdict {
    int reason; /* LIMIT_* */
    int64_t retry_after_ms;
    int64_t req_remaining; /* -1: unlimited */
    int64_t req_reset_ms;
    int64_t tpm_used; /* in the minute window, after the take */
    int64_t slots;    /* in use, after the take */
    int64_t used, reserved;
} limits_verdict_t;

/* The settle of one Redis admission (also queued while Redis is away). */
typedef struct limits_settle_op {
    char key_id[37];
    char admission_id[37];
    int64_t reserved, billed;
    int64_t tpm_second, tpm_delta;
    int has_slot;
} limits_settle_op_t;

typedef struct relay_limits_redis relay_limits_redis_t;

/*
 * Parses url ("redis://[[user]:password@]host[:port][/db]"), tries one connection (a failure
 * only means "down": the prober keeps trying every second) and starts the prober thread.
 * RELAY_ERR_CONFIG for a URL it cannot use. The password is kept, never logged.
 */
int limits_redis_new(relay_limits_redis_t **out, relay_t *r, const char *url, int timeout_ms,
                     relay_error_t *err);
void limits_redis_free(relay_limits_redis_t *rd);
int limits_redis_is_up(relay_limits_redis_t *rd);
/* 0 and v filled; < 0 when Redis could not answer in time (the caller decides in memory). */
int limits_redis_admit(relay_limits_redis_t *rd, const limits_take_t *t, limits_verdict_t *v);
/* Applies op now, or queues it for when Redis is back. */
void limits_redis_settle(relay_limits_redis_t *rd, const limits_settle_op_t *op);
/* GET key into out: 0 found, 1 absent (or longer than cap), -1 Redis did not answer. */
int limits_redis_get(relay_limits_redis_t *rd, const char *key, char *out, size_t cap);
/* SET key value PX ttl_ms: 0, or -1 when Redis did not answer. */
int limits_redis_set_ex(relay_limits_redis_t *rd, const char *key, const char *value,
                        int64_t ttl_ms);
/* Reads used/reserved and the request window without taking anything. */
int limits_redis_peek(relay_limits_redis_t *rd, const limits_take_t *t, limits_verdict_t *v);
void limits_redis_stats(relay_limits_redis_t *rd, uint64_t *errors, uint64_t *lost);
/* Cost budgets in Redis (budgets.c builds the op; see BUDGET_ADMIT_LUA). */
#define LIMITS_MAX_BUDGETS 36
typedef struct limits_budget_op {
    char key_id[37];
    char member[96]; /* "<admission id>:<reserved usd>" */
    int64_t now_ms, lease_ms;
    double estimate;
    int n;
    struct {
        char bid[17];  /* hash of the budget's period and models */
        int64_t start; /* its period */
        double limit, seed;
        int64_t ttl_s;
    } b[LIMITS_MAX_BUDGETS];
} limits_budget_op_t;

typedef struct limits_budget_verdict {
    int verdict; /* 0 reserved, 1 full, 2 busy */
    int index;   /* the budget that refused */
    double spent[LIMITS_MAX_BUDGETS], reserved[LIMITS_MAX_BUDGETS];
} limits_budget_verdict_t;

/* 0 and v filled (take 0: read only); < 0 when Redis could not answer. */
int limits_redis_budget_admit(relay_limits_redis_t *rd, const limits_budget_op_t *op, int take,
                              limits_budget_verdict_t *v);
/* Replaces op.member's reservation with cost. < 0 when it did not reach Redis (not queued). */
int limits_redis_budget_settle(relay_limits_redis_t *rd, const limits_budget_op_t *op, double cost);
/* The shared limiter when configured and up, else NULL; with lease_ms for its reservations. */
relay_limits_redis_t *relay_limits_redis_up(relay_t *r, int64_t *lease_ms);
/* Counts a budget decision taken in process because Redis did not answer. */
void relay_limits_count_budget_fallback(relay_t *r);

/* Tests: the next n admits drop Redis's reply after the script ran, as a timeout would. */
void limits_redis_lose_replies_for_tests(relay_limits_redis_t *rd, int n);
void relay_limits_lose_redis_replies_for_tests(relay_t *r, int n);

#endif
