/* limits: admission control per request — allowlists, rate-limit tiers, token quota reservations.
 */
#ifndef RELAY_LIMITS_H
#define RELAY_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/http.h"
#include "relay/relay.h"
#include "relay/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The request path calls, for every proxied request:
 *   authenticate (relay_keys_verify) → relay_limits_admit → forward → relay_limits_settle
 * and must call relay_limits_settle on every path once admit returned 0 (success, upstream error,
 * client disconnect, cut stream): that releases the concurrency slot and settles the quota
 * reservation. See docs/limits.md for the algorithms, the overshoot bound and the Redis mode.
 *
 * Thread safety: every call taking a relay_t may run concurrently with any other. Locks are
 * short and never held across Redis I/O. A relay_admission_t belongs to the one request that
 * filled it and must not be settled from two threads at once.
 * Ownership: nothing returned here needs freeing; the pointers in relay_admit_request_t are the
 * caller's and need only live for the call.
 */

/* What admit needs to know about one request. */
typedef struct relay_admit_request {
    const relay_key_record_t *key; /* from relay_keys_verify; required */
    const char *client_ip;         /* effective client address (see relay_limits_client_ip) */
    const char *origin;            /* Origin header or NULL */
    const char *referer;           /* Referer header or NULL (used when origin is NULL) */
    const char *model;             /* from the request body, or NULL (no model check then) */
    int64_t input_tokens_estimate; /* relay_tokens_count_request result */
    int64_t max_tokens;            /* from the body; 0 if absent */
    int consumes_quota;            /* 0 for count_tokens/models: no quota, no token rate */
} relay_admit_request_t;

/* Where an admission was taken (so settle goes to the same place). */
enum {
    RELAY_ADMIT_NONE = 0,   /* refused or never admitted: settle does nothing */
    RELAY_ADMIT_MEMORY = 1, /* in-process limiter */
    RELAY_ADMIT_REDIS = 2,  /* shared limiter in Redis */
};

/* Filled by admit (on success and on refusal), handed back to settle. Plain data, no pointers. */
typedef struct relay_admission {
    char id[37]; /* unique per admission */
    char key_id[37];
    char tier[64];           /* the tier applied */
    int backend;             /* RELAY_ADMIT_* */
    int settled;             /* set by settle: a second settle does nothing */
    int64_t reserved_tokens; /* quota reservation taken (billed units) */
    int64_t tpm_charged;     /* tokens charged to the per-minute window at admit */
    int64_t tpm_second;      /* the Unix second that charge went to */
    int has_slot;            /* holds a concurrency slot */
    char model[128];         /* the request's model: cost budgets match it again at settle */
    double cost_reserved;    /* USD reserved in the key's cost budgets (relay/budgets.h) */
    int budget_held;         /* cost_reserved is held in this instance's budget state */
    int budget_redis;        /* cost_reserved is held in Redis */

    /* The tier's request window after this decision (for anthropic-ratelimit-requests-*). */
    int64_t requests_limit;     /* -1: unlimited */
    int64_t requests_remaining; /* -1: unlimited */
    int64_t requests_reset_ms;  /* Unix ms when the oldest request in the window leaves it */
    int64_t tokens_limit;       /* tokens per minute; 0: none */
    int64_t tokens_remaining;

    /* On refusal. */
    int code;          /* the relay_err returned (0 when admitted) */
    int retry_after_s; /* >= 1 for RELAY_ERR_RATE_LIMITED, 0 otherwise */
    int64_t limit;     /* the limit that refused: requests, tokens/min, slots or token quota */
    int64_t remaining; /* what was left of it */
    int64_t reset_at;  /* Unix seconds when it frees up again (0: not by waiting) */
    char reason[32];   /* "quota" | "budget" | "requests" | "tokens" | "concurrency" | "ip" |
                          "origin" | "model" — for metrics (relay_rate_limited_total{reason}) */
} relay_admission_t;

/*
 * Checks the key's allowlists (IP, origin, model), its tier (requests per period, tokens per
 * minute, concurrent requests) and its token quota, and — only when all pass — takes a request
 * slot in the window, a concurrency slot and a quota reservation of
 *   input_tokens_estimate * weight_input + min(max_tokens, reservation_ceiling) * weight_output
 * atomically (one lock in process, one Lua script in Redis).
 * Returns 0 (admitted), or:
 *   RELAY_ERR_PERMISSION   reason ip | origin | model (logged as "limits.denied")
 *   RELAY_ERR_QUOTA        reason quota: used >= token_limit, or this request's reservation
 *                          cannot fit in what is left even with nothing else in flight
 *                          ("token quota exhausted: 1000000 of 1000000 tokens used")
 *   RELAY_ERR_RATE_LIMITED reason requests | tokens | concurrency, or quota when the reservation
 *                          fits the quota but not next to the reservations now in flight (these
 *                          settle soon, so a retry can succeed)
 * out is always filled; err (may be NULL) gets the message for the client (never a secret).
 */
RELAY_API int relay_limits_admit(relay_t *r, const relay_admit_request_t *req,
                                 relay_admission_t *out, relay_error_t *err);

/*
 * Settles the reservation to the billed tokens actually used (0 when the upstream charged
 * nothing), releases the concurrency slot and corrects the per-minute token window. Call it on
 * every path after a successful admit; idempotent (a second call, or a call on a refused
 * admission, does nothing).
 */
RELAY_API void relay_limits_settle(relay_t *r, relay_admission_t *adm, int64_t billed_tokens);

/*
 * relay_limits_settle plus the request's real cost in USD (relay_usage_cost), which replaces the
 * cost reserved in the key's budgets. relay_limits_settle alone charges the budgets an
 * approximation instead (the reserved cost scaled by billed / reserved tokens: 0 when nothing was
 * billed), so a host that knows the cost should call this one.
 */
RELAY_API void relay_limits_settle_cost(relay_t *r, relay_admission_t *adm, int64_t billed_tokens,
                                        double cost_usd);

/* The current view of a key for /api/usage/quota. */
typedef struct relay_quota_view {
    int64_t token_limit;     /* 0: unlimited */
    int64_t token_used;      /* live: the store's counter plus what settled since */
    int64_t token_reserved;  /* held by requests in flight */
    int64_t token_remaining; /* max(0, limit - used); -1 when unlimited */
    double usage_percentage; /* 0..100 (0 when unlimited) */
    int is_quota_exceeded;   /* limit > 0 && used >= limit */
    char tier[64];
    int64_t requests_limit;     /* -1: unlimited */
    int64_t requests_remaining; /* -1: unlimited */
    int64_t reset_at;           /* Unix seconds when the next request slot frees (now when free) */
} relay_quota_view_t;

/* Fills out for key (read-only: takes nothing). */
RELAY_API int relay_limits_quota(relay_t *r, const relay_key_record_t *key,
                                 relay_quota_view_t *out);

/*
 * The effective client address: peer, unless peer is one of `trusted` (addresses or CIDR
 * ranges); then the rightmost X-Forwarded-For entry that is not trusted (the leftmost when all
 * are), else X-Real-IP, else peer. Ports and [brackets] are stripped, IPv4-mapped IPv6 becomes
 * IPv4. out gets the normalised text (cap >= 46). RELAY_ERR_INVALID when peer is not an address.
 */
RELAY_API int relay_limits_client_ip(const char *peer, const char *xff, const char *x_real_ip,
                                     const char *const *trusted, size_t n_trusted, char *out,
                                     size_t cap);

/*
 * Allowlist matching, as admit applies it. `list` is the key's JSON array text (a comma-separated
 * list is accepted too); NULL, "" or an empty array allow everything. 1 allowed, 0 refused.
 *  - ip: IPv4/IPv6 addresses and CIDR ranges ("10.0.0.0/8", "2001:db8::/32").
 *  - origin: the host of origin (or of referer when origin is NULL), case-insensitive, against
 *    exact hosts or "*.example.com" (any subdomain, not example.com itself); "*" allows any
 *    present origin. With a list set, a request with neither header is refused.
 *  - model: exact names or a prefix ending in "*" ("claude-sonnet-4*"); NULL model passes.
 */
RELAY_API int relay_limits_ip_allowed(const char *list, const char *ip);
RELAY_API int relay_limits_origin_allowed(const char *list, const char *origin,
                                          const char *referer);
RELAY_API int relay_limits_model_allowed(const char *list, const char *model);

/* "disabled" (no redis_url) | "ok" | "down" (serving on in-process limits). Never NULL. */
RELAY_API const char *relay_limits_redis_status(relay_t *r);

/*
 * Billed tokens of one request: in*weight_input + out*weight_output +
 * cache_creation*weight_cache_creation + cache_read*weight_cache_read, rounded.
 */
RELAY_API int64_t relay_limits_billed_tokens(relay_t *r, int64_t in, int64_t out,
                                             int64_t cache_creation, int64_t cache_read);

/*
 * Adds the headers a refusal carries to resp (the host sets the body with
 * relay_http_response_error(resp, code, err.message)):
 *   RELAY_ERR_QUOTA        x-should-retry: false
 *   RELAY_ERR_RATE_LIMITED retry-after, anthropic-ratelimit-requests-limit/-remaining/-reset
 *                          (RFC 3339) and, for a token-rate refusal, -tokens-limit/-remaining
 */
RELAY_API void relay_limits_refusal_headers(const relay_admission_t *a, int code,
                                            relay_http_response_t *resp);

/* Counters for metrics and tests (monotonic since relay_new). */
typedef struct relay_limits_stats {
    uint64_t admitted;
    uint64_t refused_quota, refused_requests, refused_tokens, refused_concurrency,
        refused_permission;
    uint64_t refused_budget;     /* cost budgets (relay/budgets.h) */
    uint64_t redis_fallbacks;    /* admissions decided in process because Redis was down */
    uint64_t redis_errors;       /* failed Redis calls */
    uint64_t redis_settles_lost; /* settles that could not reach Redis (queue full) */
    int redis_up;                /* 1 ok, 0 down or disabled */
} relay_limits_stats_t;

RELAY_API void relay_limits_get_stats(relay_t *r, relay_limits_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
