/* fuzz_jwt: libFuzzer target; admin bearer tokens and Basic credentials from anywhere. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "relay/auth.h"

#define SECRET "fuzz-secret-key-0123456789abcdefghijkl"

/* Token checks read only the options: a bare relay_t with options is enough (as test_auth). */
static struct relay R;

/* The input is a token (refused unless it is an unexpired HS256 token signed with SECRET: the
 * seed corpus has some) and, after a NUL, an Authorization header for the Basic parser. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!R.opts.secret_key) {
        relay_options_init(&R.opts);
        R.opts.secret_key = SECRET;
    }
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    char sub[64];
    relay_error_t err = {0};
    int rc = relay_auth_verify_token(&R, buf, sub, sizeof sub, &err);
    if (rc == 0 && strnlen(sub, sizeof sub) >= sizeof sub)
        abort();
    if (rc != 0 && rc != RELAY_ERR_AUTH)
        abort(); /* every bad token is one plain 401 */
    size_t n = strlen(buf);
    if (n < size) {
        char user[RELAY_AUTH_USERNAME_MAX + 1], pass[RELAY_AUTH_PASSWORD_MAX + 1];
        if (relay_auth_parse_basic(buf + n + 1, user, sizeof user, pass, sizeof pass) == 0 &&
            (strnlen(user, sizeof user) >= sizeof user ||
             strnlen(pass, sizeof pass) >= sizeof pass))
            abort();
    }
    free(buf);
    return 0;
}
