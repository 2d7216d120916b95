/* auth: the admin password hash, login with per-IP lockout, and pinned-HS256 JWT issue/verify. */
#include "relay/auth.h"

#include <crypt.h>
#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "util.h"

#define PASSWORD_SETTING   "admin_password_hash"
#define FAIL_TABLE_MAX     4096
#define GENERATED_PW_BYTES 18 /* 144 bits, 24 base64url characters */
#define IAT_SKEW_S         60 /* tolerated clock difference between relay processes */
#define LOGIN_FAIL_MSG     "invalid username or password"

/* Failed logins of one client address, or of the admin username (ip "u:<name>": an address
 * never starts with 'u', see safe_ip). */
typedef struct fail_entry {
    char ip[64];
    int count;
    int in_flight; /* attempts past the lockout check whose outcome is not yet counted */
    int64_t window_start, locked_until, last_seen;
} fail_entry_t;

struct relay_auth_state {
    pthread_mutex_t mu;
    fail_entry_t fails[FAIL_TABLE_MAX];
    size_t nfails;
    char generated[64]; /* the generated password until the host takes it */
};

/* ---- password hashing ---- */

int relay_auth_hash_password(char *out, size_t cap, const char *password, int cost)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    if (!password || cost < 4 || cost > 31)
        return RELAY_ERR_INVALID;
    /* NULL random bytes: libxcrypt reads the salt from the operating system's random source. */
    if (!crypt_gensalt_rn("$2b$", (unsigned long)cost, NULL, 0, salt, sizeof salt))
        return RELAY_ERR_INTERNAL;
    struct crypt_data *cd = calloc(1, sizeof *cd); /* 32 KiB: too big for a worker's stack */
    if (!cd)
        return RELAY_ERR_NOMEM;
    const char *h = crypt_rn(password, salt, cd, sizeof *cd);
    int rc = 0;
    if (!h || h[0] == '*')
        rc = RELAY_ERR_INTERNAL;
    else if (strlen(h) >= cap)
        rc = RELAY_ERR_INVALID;
    else
        relay_strlcpy(out, h, cap);
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return rc;
}

int relay_auth_check_password(const char *password, const char *hash)
{
    if (!password || !hash || !hash[0])
        return 0;
    struct crypt_data *cd = calloc(1, sizeof *cd);
    if (!cd)
        return 0;
    const char *h = crypt_rn(password, hash, cd, sizeof *cd);
    int ok = h && h[0] != '*' && relay_ct_streq(h, hash);
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return ok;
}

/* ---- lifecycle ---- */

static int store_password_hash(relay_t *r, const char *password, relay_error_t *err)
{
    char hash[128];
    int rc = relay_auth_hash_password(hash, sizeof hash, password, r->opts.bcrypt_cost);
    if (rc)
        return relay_error_set(err, rc, "cannot hash the admin password");
    rc = relay_store_setting_set(r->store, PASSWORD_SETTING, hash);
    if (rc)
        return relay_error_set(err, rc, "cannot store the admin password hash: %s",
                               relay_strerror(rc));
    return 0;
}

/* No password configured and none stored: make one the host shows the operator once. */
static int generate_password(relay_t *r, relay_error_t *err)
{
    uint8_t raw[GENERATED_PW_BYTES];
    if (relay_random_bytes(raw, sizeof raw) != 0)
        return relay_error_set(err, RELAY_ERR_IO, "cannot read random bytes");
    relay_base64url(raw, sizeof raw, r->auth->generated);
    explicit_bzero(raw, sizeof raw);
    int rc = store_password_hash(r, r->auth->generated, err);
    if (rc)
        explicit_bzero(r->auth->generated, sizeof r->auth->generated);
    else
        relay_log(r, RELAY_LOG_WARN, "auth.password_generated", NULL,
                  "no admin password configured: generated one (the host shows it once)");
    return rc;
}

static int setup_password(relay_t *r, relay_error_t *err)
{
    char stored[256] = "";
    int rc = relay_store_setting_get(r->store, PASSWORD_SETTING, stored, sizeof stored);
    if (rc && rc != RELAY_ERR_NOT_FOUND)
        return relay_error_set(err, rc, "cannot read the admin password hash: %s",
                               relay_strerror(rc));
    const char *pw = r->opts.admin_password;
    if (pw && *pw) {
        if (strlen(pw) > RELAY_AUTH_PASSWORD_MAX)
            return relay_error_set(err, RELAY_ERR_CONFIG, "admin.password: at most %d bytes",
                                   RELAY_AUTH_PASSWORD_MAX);
        if (stored[0] && relay_auth_check_password(pw, stored))
            return 0;
        return store_password_hash(r, pw, err);
    }
    return stored[0] ? 0 : generate_password(r, err);
}

int relay_auth_start(relay_t *r, relay_error_t *err)
{
    r->auth = calloc(1, sizeof *r->auth);
    if (!r->auth)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->auth->mu, NULL);
    if (!r->opts.secret_key || !*r->opts.secret_key)
        relay_log(r, RELAY_LOG_WARN, "auth.no_secret_key", NULL,
                  "SECRET_KEY is not set: admin login is disabled until it is");
    return setup_password(r, err);
}

void relay_auth_stop(relay_t *r)
{
    if (!r->auth)
        return;
    explicit_bzero(r->auth->generated, sizeof r->auth->generated);
    pthread_mutex_destroy(&r->auth->mu);
    free(r->auth);
    r->auth = NULL;
}

int relay_auth_take_generated_password(relay_t *r, char *buf, size_t cap)
{
    struct relay_auth_state *st = r->auth;
    if (!st)
        return 0;
    int taken = 0;
    pthread_mutex_lock(&st->mu);
    size_t n = strlen(st->generated);
    if (n && cap > n) {
        memcpy(buf, st->generated, n + 1);
        explicit_bzero(st->generated, sizeof st->generated);
        taken = 1;
    }
    pthread_mutex_unlock(&st->mu);
    return taken;
}

/* ---- JWT ---- */

static int secret_missing(relay_t *r, relay_error_t *err)
{
    if (r->opts.secret_key && *r->opts.secret_key)
        return 0;
    return relay_error_set(err, RELAY_ERR_UNAVAILABLE,
                           "admin login is disabled: SECRET_KEY must be set to sign admin tokens");
}

int relay_auth_issue_token(relay_t *r, const char *sub, int lifetime_s, char **token_out,
                           relay_error_t *err)
{
    *token_out = NULL;
    int rc = secret_missing(r, err);
    if (rc)
        return rc;
    if (lifetime_s <= 0)
        lifetime_s = r->opts.jwt_lifetime_s > 0 ? r->opts.jwt_lifetime_s : 1800;
    jwt_t *j = NULL;
    int64_t now = relay_now();
    const char *key = r->opts.secret_key;
    if (jwt_new(&j) || jwt_add_grant(j, "sub", sub) || jwt_add_grant_int(j, "iat", (long)now) ||
        jwt_add_grant_int(j, "exp", (long)(now + lifetime_s)) ||
        jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)key, (int)strlen(key))) {
        jwt_free(j);
        return relay_error_set(err, RELAY_ERR_INTERNAL, "cannot build the token");
    }
    char *t = jwt_encode_str(j);
    jwt_free(j);
    if (!t)
        return relay_error_set(err, RELAY_ERR_NOMEM, "cannot encode the token");
    /* Copied so the caller frees with relay_free_string whatever allocator libjwt was given. */
    *token_out = strdup(t);
    free(t);
    return *token_out ? 0 : relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
}

/*
 * Pins the algorithm before libjwt sees the token: the header must say exactly "HS256". Checking
 * it ourselves means a library that would accept "none" or another HMAC never gets the chance.
 */
static int header_is_hs256(const char *token)
{
    const char *dot = strchr(token, '.');
    if (!dot || !strchr(dot + 1, '.') || strchr(strchr(dot + 1, '.') + 1, '.'))
        return 0;
    uint8_t hdr[1024];
    size_t n;
    if ((size_t)(dot - token) > 1300 ||
        relay_base64_decode(token, (size_t)(dot - token), hdr, sizeof hdr, &n))
        return 0;
    json_t *h = json_loadb((const char *)hdr, n, 0, NULL);
    json_t *alg = json_object_get(h, "alg");
    int ok =
        json_is_object(h) && json_is_string(alg) && strcmp(json_string_value(alg), "HS256") == 0;
    json_decref(h);
    return ok;
}

/* A numeric claim; -1 when absent or not a number. */
static long claim_int(jwt_t *j, const char *name)
{
    errno = 0;
    long v = jwt_get_grant_int(j, name);
    return errno ? -1 : v;
}

int relay_auth_verify_token(relay_t *r, const char *token, char *subject_out, size_t cap,
                            relay_error_t *err)
{
    if (subject_out && cap)
        subject_out[0] = '\0';
    int rc = secret_missing(r, err);
    if (rc)
        return rc;
    if (!token || strnlen(token, RELAY_AUTH_TOKEN_MAX + 1) > RELAY_AUTH_TOKEN_MAX ||
        !header_is_hs256(token))
        return relay_error_set(err, RELAY_ERR_AUTH, "invalid token");
    jwt_t *j = NULL;
    const char *key = r->opts.secret_key;
    if (jwt_decode(&j, token, (const unsigned char *)key, (int)strlen(key)) != 0 || !j ||
        jwt_get_alg(j) != JWT_ALG_HS256) {
        jwt_free(j);
        return relay_error_set(err, RELAY_ERR_AUTH, "invalid token");
    }
    long now = (long)relay_now(), iat = claim_int(j, "iat"), exp = claim_int(j, "exp");
    const char *sub = jwt_get_grant(j, "sub");
    if (iat < 0 || exp < 0 || iat > now + IAT_SKEW_S || !sub)
        rc = relay_error_set(err, RELAY_ERR_AUTH, "invalid token");
    else if (exp <= now)
        rc = relay_error_set(err, RELAY_ERR_AUTH, "token expired");
    else if (!r->opts.admin_username || strcmp(sub, r->opts.admin_username) != 0)
        rc = relay_error_set(err, RELAY_ERR_AUTH, "invalid token");
    else if (subject_out && cap)
        relay_strlcpy(subject_out, sub, cap);
    jwt_free(j);
    return rc;
}

/* ---- login ---- */

/*
 * The entry for ip, creating it (evicting the least recently seen without attempts in flight when
 * full; NULL when there is none). Under st->mu.
 */
static fail_entry_t *fail_entry(struct relay_auth_state *st, const char *ip, int create)
{
    fail_entry_t *oldest = NULL;
    for (size_t i = 0; i < st->nfails; i++) {
        if (strcmp(st->fails[i].ip, ip) == 0)
            return &st->fails[i];
        if (!st->fails[i].in_flight && (!oldest || st->fails[i].last_seen < oldest->last_seen))
            oldest = &st->fails[i];
    }
    if (!create)
        return NULL;
    fail_entry_t *e = st->nfails < FAIL_TABLE_MAX ? &st->fails[st->nfails++] : oldest;
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    relay_strlcpy(e->ip, ip, sizeof e->ip);
    return e;
}

#define USER_KEY_PREFIX "u:"

static int max_failures(relay_t *r, const char *key)
{
    int n = strncmp(key, USER_KEY_PREFIX, 2) == 0 ? r->opts.login_max_failures_per_user
                                                  : r->opts.login_max_failures;
    return n > 0 ? n : 1;
}

/* Failures of e that still count: none after a served cool-down or once the window is over. */
static int live_failures(relay_t *r, const fail_entry_t *e, int64_t now)
{
    if (e->locked_until || now - e->window_start >= r->opts.login_window_s)
        return 0;
    return e->count;
}

/*
 * Starts one attempt from ip: 0 when it may check the password, else the seconds to wait.
 * Attempts in flight count as failures until their outcome is known, in the same critical section
 * as the check: parallel attempts cannot all pass it and outrun login_max_failures.
 * Every 0 is followed by exactly one record_failure, clear_failures or attempt_end.
 */
static int64_t attempt_begin(relay_t *r, const char *ip)
{
    struct relay_auth_state *st = r->auth;
    int64_t now = relay_now(), left = 0;
    pthread_mutex_lock(&st->mu);
    fail_entry_t *e = fail_entry(st, ip, 1);
    if (!e)
        left = 1; /* the table is all attempts in flight */
    else if (e->locked_until > now)
        left = e->locked_until - now;
    else if (live_failures(r, e, now) + e->in_flight >= max_failures(r, ip))
        left = 1; /* the attempts in flight may lock ip out: known within a bcrypt */
    if (e && !left) {
        e->in_flight++;
        e->last_seen = now;
    }
    pthread_mutex_unlock(&st->mu);
    return left;
}

/* Ends an attempt whose outcome was neither success nor failure (the store failed). */
static void attempt_end(relay_t *r, const char *ip)
{
    struct relay_auth_state *st = r->auth;
    pthread_mutex_lock(&st->mu);
    fail_entry_t *e = fail_entry(st, ip, 0);
    if (e && e->in_flight > 0)
        e->in_flight--;
    pthread_mutex_unlock(&st->mu);
}

/* Counts a failure and ends the attempt; returns 1 when it locks ip out. */
static int record_failure(relay_t *r, const char *ip)
{
    struct relay_auth_state *st = r->auth;
    int64_t now = relay_now();
    int locked = 0, count;
    pthread_mutex_lock(&st->mu);
    fail_entry_t *e = fail_entry(st, ip, 0); /* kept since attempt_begin: in flight */
    if (!e) {
        pthread_mutex_unlock(&st->mu);
        return 0;
    }
    if (e->in_flight > 0)
        e->in_flight--;
    if (e->locked_until > now) { /* already locked: nothing more to count */
        pthread_mutex_unlock(&st->mu);
        return 1;
    }
    if (e->locked_until || e->count == 0 || now - e->window_start >= r->opts.login_window_s) {
        e->count = 0; /* a served cool-down or an old window starts a fresh count */
        e->window_start = now;
        e->locked_until = 0;
    }
    e->count++;
    e->last_seen = now;
    count = e->count;
    if (e->count >= max_failures(r, ip)) {
        e->locked_until = now + r->opts.login_cooldown_s;
        locked = 1;
    }
    pthread_mutex_unlock(&st->mu);
    /* One line per failed attempt (the address's); the username's count speaks only when it
     * locks the username. */
    char fields[160];
    int user = strncmp(ip, USER_KEY_PREFIX, 2) == 0;
    snprintf(fields, sizeof fields, "{\"%s\":\"%.64s\",\"failures\":%d}",
             user ? "username" : "client_ip", user ? ip + 2 : ip, count);
    if (user && locked)
        relay_log(r, RELAY_LOG_WARN, "auth.login_user_locked", fields,
                  "admin username locked out (failed logins from any address)");
    else if (!user)
        relay_log(r, RELAY_LOG_WARN, locked ? "auth.login_locked" : "auth.login_failed", fields,
                  locked ? "admin login failed; client locked out" : "admin login failed");
    return locked;
}

/* A success: ends the attempt and forgets ip's failures (the entry stays while others are in
 * flight, to count them). */
static void clear_failures(relay_t *r, const char *ip)
{
    struct relay_auth_state *st = r->auth;
    pthread_mutex_lock(&st->mu);
    fail_entry_t *e = fail_entry(st, ip, 0);
    if (e && e->in_flight > 1) {
        e->in_flight--;
        e->count = 0;
        e->locked_until = 0;
    } else if (e) {
        *e = st->fails[--st->nfails];
    }
    pthread_mutex_unlock(&st->mu);
}

/* Ends an attempt with the credential check's outcome: < 0 the store failed, 0 wrong, 1 right. */
static void finish_attempt(relay_t *r, const char *key, int outcome)
{
    if (outcome < 0)
        attempt_end(r, key);
    else if (outcome == 0)
        record_failure(r, key);
    else
        clear_failures(r, key);
}

/* The per-user lockout key of username: only the configured admin name (the one user there is)
 * is counted, so made-up names cannot fill the table. 1 when counted. */
static int user_key(relay_t *r, const char *username, char out[64])
{
    const char *admin = r->opts.admin_username ? r->opts.admin_username : "admin";
    if (r->opts.login_max_failures_per_user <= 0 || !username || strlen(admin) > 60 ||
        !relay_ct_streq(username, admin))
        return 0;
    snprintf(out, 64, "%s%s", USER_KEY_PREFIX, admin);
    return 1;
}

/* Client addresses go into the log's JSON by hand: keep only characters an address can have. */
static void safe_ip(const char *in, char out[64])
{
    size_t o = 0;
    for (; in && *in && o < 63; in++)
        if ((*in >= '0' && *in <= '9') || (*in >= 'a' && *in <= 'f') ||
            (*in >= 'A' && *in <= 'F') || *in == '.' || *in == ':')
            out[o++] = *in;
    out[o] = '\0';
    if (!o)
        relay_strlcpy(out, "unknown", 64);
}

/* The credential check: every path costs one bcrypt, so timing says nothing about the username. */
static int credentials_ok(relay_t *r, const char *username, const char *password,
                          relay_error_t *err)
{
    char stored[256];
    int rc = relay_store_setting_get(r->store, PASSWORD_SETTING, stored, sizeof stored);
    if (rc == RELAY_ERR_NOT_FOUND)
        stored[0] = '\0';
    else if (rc)
        return relay_error_set(err, rc, "cannot read the admin credential: %s", relay_strerror(rc));
    int user_ok =
        username && strlen(username) <= RELAY_AUTH_USERNAME_MAX &&
        relay_ct_streq(username, r->opts.admin_username ? r->opts.admin_username : "admin");
    int pw_ok =
        password && strlen(password) <= RELAY_AUTH_PASSWORD_MAX &&
        relay_auth_check_password(password, stored[0] ? stored : "$2b$04$......................");
    return user_ok && pw_ok && stored[0] ? 1 : 0;
}

int relay_auth_login(relay_t *r, const char *username, const char *password, const char *client_ip,
                     char **token_out, int *expires_in_out, relay_error_t *err)
{
    *token_out = NULL;
    *expires_in_out = 0;
    int rc = secret_missing(r, err);
    if (rc)
        return rc;
    char ip[64], user[64] = "";
    safe_ip(client_ip, ip);
    int64_t left = attempt_begin(r, ip);
    if (left == 0 && user_key(r, username, user) && (left = attempt_begin(r, user)) > 0)
        attempt_end(r, ip);
    if (left > 0)
        return relay_error_set(err, RELAY_ERR_LOGIN_LOCKED,
                               "too many failed login attempts; try again in %lld seconds",
                               (long long)left);
    rc = credentials_ok(r, username, password, err);
    finish_attempt(r, ip, rc);
    if (user[0])
        finish_attempt(r, user, rc);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return relay_error_set(err, RELAY_ERR_AUTH, LOGIN_FAIL_MSG);
    int life = r->opts.jwt_lifetime_s > 0 ? r->opts.jwt_lifetime_s : 1800;
    rc = relay_auth_issue_token(r, r->opts.admin_username ? r->opts.admin_username : "admin", life,
                                token_out, err);
    if (!rc)
        *expires_in_out = life;
    return rc;
}

int relay_auth_parse_basic(const char *authorization, char *user, size_t ucap, char *pass,
                           size_t pcap)
{
    if (!authorization || strncasecmp(authorization, "Basic ", 6) != 0 || !ucap || !pcap)
        return RELAY_ERR_AUTH;
    const char *b = authorization + 6;
    while (*b == ' ')
        b++;
    size_t n = strlen(b);
    while (n && b[n - 1] == ' ')
        n--;
    uint8_t dec[RELAY_AUTH_USERNAME_MAX + RELAY_AUTH_PASSWORD_MAX + 2];
    size_t dl;
    if (n == 0 || n > 4 * (sizeof dec / 3 + 1) ||
        relay_base64_decode(b, n, dec, sizeof dec - 1, &dl))
        return RELAY_ERR_AUTH;
    dec[dl] = 0;
    uint8_t *colon = memchr(dec, ':', dl);
    int rc = RELAY_ERR_AUTH;
    if (colon && !memchr(dec, 0, dl) && (size_t)(colon - dec) < ucap &&
        dl - (size_t)(colon - dec) - 1 < pcap) {
        *colon = 0;
        relay_strlcpy(user, (const char *)dec, ucap);
        relay_strlcpy(pass, (const char *)colon + 1, pcap);
        rc = 0;
    }
    explicit_bzero(dec, sizeof dec);
    return rc;
}
