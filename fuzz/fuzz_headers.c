/* fuzz_headers: libFuzzer target; the header and query values a client controls. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/http.h"
#include "relay/limits.h"

/*
 * The input is split at NUL bytes into: peer, X-Forwarded-For, X-Real-IP, an allowlist, an
 * Origin and a query string. Each goes through the function that parses it on the request path,
 * and as header fields through the request-smuggling check.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *part[6] = {"", "", "", "", "", ""};
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < 6; i++) {
        if (i == size || buf[i] == '\0') {
            buf[i] = '\0';
            part[n++] = buf + start;
            start = i + 1;
        }
    }
    const char *trusted[] = {"127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32"};
    char ip[64];
    if (relay_limits_client_ip(part[0], part[1], part[2], trusted, 4, ip, sizeof ip) == 0 &&
        strlen(ip) >= sizeof ip)
        abort();
    relay_limits_ip_allowed(part[3], part[0]);
    relay_limits_origin_allowed(part[3], part[4], part[4]);
    relay_limits_model_allowed(part[3], part[4]);
    relay_http_request_t req = {.query = part[5]};
    char val[128];
    relay_http_query_param(&req, part[4], val, sizeof val);
    /* The framing check over fields made of the same parts. */
    relay_http_header_t h[] = {
        {"Content-Length", part[1]}, {"Transfer-Encoding", part[2]}, {part[4], part[5]}};
    const char *why = NULL;
    req.headers = h;
    for (size_t k = 1; k <= 3; k++) {
        req.n_headers = k;
        if (relay_http_check_framing(&req, part[3], &why) != 0 && !why)
            abort(); /* a refusal always has its reason */
    }
    free(buf);
    return 0;
}
