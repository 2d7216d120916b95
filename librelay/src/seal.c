/* seal: AES-256-GCM with an HKDF-SHA256 key from SECRET_KEY, for secrets stored in the
 * database. */
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <string.h>

#include "relay/relay.h"
#include "seal.h"
#include "util.h"

#define NONCE_LEN 12
#define TAG_LEN   16
#define KEY_LEN   32
#define MAX_PLAIN 1024

/* The sealing key: HKDF-SHA256(SECRET_KEY, salt, info). A fixed salt is fine here: the input is
 * already a secret, and the info names the use, so this key differs from the JWT signing one. */
static int derive(const char *secret, unsigned char key[KEY_LEN])
{
    static const char salt[] = "relay-seal-v1";
    static const char info[] = "upstream api keys";
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t len = KEY_LEN;
    int ok =
        pc && EVP_PKEY_derive_init(pc) > 0 && EVP_PKEY_CTX_set_hkdf_md(pc, EVP_sha256()) > 0 &&
        EVP_PKEY_CTX_set1_hkdf_salt(pc, (const unsigned char *)salt, sizeof salt - 1) > 0 &&
        EVP_PKEY_CTX_set1_hkdf_key(pc, (const unsigned char *)secret, (int)strlen(secret)) > 0 &&
        EVP_PKEY_CTX_add1_hkdf_info(pc, (const unsigned char *)info, sizeof info - 1) > 0 &&
        EVP_PKEY_derive(pc, key, &len) > 0 && len == KEY_LEN;
    EVP_PKEY_CTX_free(pc);
    return ok ? 0 : RELAY_ERR_INTERNAL;
}

/* AES-256-GCM one way or the other; returns the output length or -1 (a tag that does not match
 * included). */
static int gcm(int enc, const unsigned char key[KEY_LEN], const unsigned char *nonce,
               const char *aad, const unsigned char *in, int n, unsigned char *out,
               unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;
    int ok = c && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) > 0 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) > 0 &&
             EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) > 0 &&
             EVP_CipherUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) > 0 &&
             EVP_CipherUpdate(c, out, &len, in, n) > 0;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) > 0;
    ok = ok && EVP_CipherFinal_ex(c, out + len, &fin) > 0;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) > 0;
    EVP_CIPHER_CTX_free(c);
    return ok ? len + fin : -1;
}

int relay_seal(const char *secret, const char *context, const char *plain, char *out, size_t cap)
{
    size_t n = strlen(plain);
    if (n > MAX_PLAIN || cap < RELAY_SEAL_LEN(n))
        return RELAY_ERR_TOO_LARGE;
    unsigned char key[KEY_LEN], buf[NONCE_LEN + MAX_PLAIN + TAG_LEN];
    int rc = derive(secret, key);
    if (!rc && relay_random_bytes(buf, NONCE_LEN) != 0)
        rc = RELAY_ERR_INTERNAL;
    if (!rc && gcm(1, key, buf, context, (const unsigned char *)plain, (int)n, buf + NONCE_LEN,
                   buf + NONCE_LEN + n) != (int)n)
        rc = RELAY_ERR_INTERNAL;
    if (!rc) {
        memcpy(out, "v1:", 3);
        relay_base64url(buf, NONCE_LEN + n + TAG_LEN, out + 3);
    }
    explicit_bzero(key, sizeof key);
    explicit_bzero(buf, sizeof buf);
    return rc;
}

int relay_unseal(const char *secret, const char *context, const char *sealed, char *out, size_t cap)
{
    unsigned char key[KEY_LEN], buf[NONCE_LEN + MAX_PLAIN + TAG_LEN];
    if (strncmp(sealed, "v1:", 3) != 0)
        return RELAY_ERR_AUTH;
    size_t len = 0;
    int n = relay_base64_decode(sealed + 3, strlen(sealed + 3), buf, sizeof buf, &len) == 0
                ? (int)len - NONCE_LEN - TAG_LEN
                : -1;
    if (n < 0 || (size_t)n >= cap)
        return n < 0 ? RELAY_ERR_AUTH : RELAY_ERR_TOO_LARGE;
    int rc = derive(secret, key);
    if (!rc && gcm(0, key, buf, context, buf + NONCE_LEN, n, (unsigned char *)out,
                   buf + NONCE_LEN + n) != n)
        rc = RELAY_ERR_AUTH;
    if (rc)
        explicit_bzero(out, cap);
    else
        out[n] = '\0';
    explicit_bzero(key, sizeof key);
    return rc;
}
