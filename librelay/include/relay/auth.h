/* auth: admin authentication — the stored admin password hash, login with lockout, HS256 JWTs. */
#ifndef RELAY_AUTH_H
#define RELAY_AUTH_H

#include <stddef.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The admin password lives only as a libxcrypt bcrypt hash in the store setting
 * "admin_password_hash". At relay_new: a configured admin_password that does not match the stored
 * hash replaces it; with no password configured and none stored, a strong random one is generated,
 * its hash stored, and the plaintext handed to the host once (relay_auth_take_generated_password).
 * Tokens are HS256 JWTs signed with relay_options_t.secret_key (claims sub, iat, exp); the
 * algorithm is pinned: a token whose header names any other algorithm, "none" included, is refused.
 *
 * Thread safety: every call may run concurrently on one relay_t (the lockout table has its own
 * lock; bcrypt runs outside it). Strings handed out are the caller's, freed with relay_free_string.
 */

/* Longest accepted token, username and password (bytes). */
#define RELAY_AUTH_TOKEN_MAX    4096
#define RELAY_AUTH_USERNAME_MAX 128
#define RELAY_AUTH_PASSWORD_MAX 256

/*
 * 1 and buf filled with the password generated at this relay_t's start, the first time only
 * (the buffer inside librelay is wiped); 0 otherwise (nothing generated, already taken, or cap too
 * small). cap of 64 is enough.
 */
RELAY_API int relay_auth_take_generated_password(relay_t *r, char *buf, size_t cap);

/*
 * Checks username and password (constant-time username compare, bcrypt password check) for
 * client_ip (may be NULL: counted as "unknown"). On success *token_out is a JWT (free with
 * relay_free_string) valid for *expires_in_out seconds.
 * RELAY_ERR_AUTH "invalid username or password"; RELAY_ERR_LOGIN_LOCKED after more than
 * login_max_failures failures from one IP within login_window_s, until login_cooldown_s passes,
 * and while that IP's attempts still being checked could use up the failures it has left (so
 * parallel attempts get no more guesses than sequential ones);
 * RELAY_ERR_UNAVAILABLE when no secret_key (SECRET_KEY) is configured.
 */
RELAY_API int relay_auth_login(relay_t *r, const char *username, const char *password,
                               const char *client_ip, char **token_out, int *expires_in_out,
                               relay_error_t *err);

/*
 * Verifies a token: HS256 only, valid signature, iat not in the future, exp not passed
 * (RELAY_ERR_AUTH "token expired"), sub equal to the admin username. subject_out (may be NULL)
 * receives sub. Every failure is RELAY_ERR_AUTH (RELAY_ERR_UNAVAILABLE without a secret_key).
 */
RELAY_API int relay_auth_verify_token(relay_t *r, const char *token, char *subject_out, size_t cap,
                                      relay_error_t *err);

/*
 * Issues a token for sub without a password check (for hosts and tests that authenticated the
 * admin otherwise). lifetime_s <= 0 uses jwt_lifetime_s. Free *token_out with relay_free_string.
 */
RELAY_API int relay_auth_issue_token(relay_t *r, const char *sub, int lifetime_s, char **token_out,
                                     relay_error_t *err);

/*
 * Splits an "Authorization: Basic <base64>" value into user and password (NUL-terminated).
 * RELAY_ERR_AUTH when it is not Basic, not base64, has no ':' or does not fit the buffers.
 */
RELAY_API int relay_auth_parse_basic(const char *authorization, char *user, size_t ucap, char *pass,
                                     size_t pcap);

/* A bcrypt ("$2b$", cost 4..31) hash of password into out (cap >= 64). Thread-safe (crypt_rn). */
RELAY_API int relay_auth_hash_password(char *out, size_t cap, const char *password, int cost);
/* 1 when password matches the libxcrypt hash, else 0. Constant-time compare of the results. */
RELAY_API int relay_auth_check_password(const char *password, const char *hash);

#ifdef __cplusplus
}
#endif
#endif
