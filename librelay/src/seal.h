/* seal: small secrets kept in the database (upstream API keys), sealed with AES-256-GCM
 * (OpenSSL libcrypto) under a key derived from SECRET_KEY by HKDF-SHA256. */
#ifndef RELAY_SEAL_H
#define RELAY_SEAL_H

#include <stddef.h>

/* Room for the sealed form of a secret of n bytes. */
#define RELAY_SEAL_LEN(n) (3 + 4 * (((n) + 28 + 2) / 3) + 1)

/*
 * Seals plain under secret, bound to context (the row's id: a sealed value copied to another row
 * does not open). out gets "v1:<base64url(nonce | ciphertext | tag)>". 0, RELAY_ERR_TOO_LARGE
 * when cap is too small, RELAY_ERR_INTERNAL when libcrypto fails.
 */
int relay_seal(const char *secret, const char *context, const char *plain, char *out, size_t cap);
/* Opens what relay_seal made with the same secret and context into out (NUL-terminated).
 * RELAY_ERR_AUTH when it does not open (another secret, another context, altered). */
int relay_unseal(const char *secret, const char *context, const char *sealed, char *out,
                 size_t cap);

#endif
