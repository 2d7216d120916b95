/* test_http_framing: relay_http_check_framing, the request-smuggling check every host runs first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "relay/http.h"

/* Checks the headers given as name, value pairs (NULL-terminated) on HTTP/version. */
static int check(const char *version, const char **why, const char *const *kv)
{
    relay_http_header_t h[16];
    size_t n = 0;
    for (; kv[2 * n]; n++) {
        h[n].name = kv[2 * n];
        h[n].value = kv[2 * n + 1];
    }
    relay_http_request_t req = {
        .method = "POST", .path = "/v1/messages", .headers = h, .n_headers = n};
    return relay_http_check_framing(&req, version, why);
}

#define ACCEPT(...)                                                                                \
    do {                                                                                           \
        const char *kv_[] = {__VA_ARGS__, NULL}, *why_;                                            \
        if (check("1.1", &why_, kv_) != 0)                                                         \
            fail_msg("refused (%s): %s", why_, kv_[0]);                                            \
    } while (0)
#define REFUSE(version, reason, ...)                                                               \
    do {                                                                                           \
        const char *kv_[] = {__VA_ARGS__, NULL}, *why_;                                            \
        assert_int_equal(check(version, &why_, kv_), RELAY_ERR_INVALID);                           \
        assert_non_null(strstr(why_, reason));                                                     \
    } while (0)

static void test_ordinary_requests_pass(void **state)
{
    (void)state;
    ACCEPT("Host", "x", "Content-Length", "12", "Content-Type", "application/json");
    ACCEPT("Host", "x", "Transfer-Encoding", "chunked");
    ACCEPT("Host", "x", "Transfer-Encoding", " Chunked ");
    ACCEPT("Content-Length", "4", "content-length", "4"); /* RFC 9112 6.3: same value twice */
    ACCEPT("X-Odd_Name.1~", "caf\xc3\xa9\twith tab", "Empty", "");
    const char *none[] = {NULL}, *why;
    assert_int_equal(check(NULL, &why, none), 0);
    assert_null(why);
}

static void test_conflicting_lengths_refused(void **state)
{
    (void)state;
    REFUSE("1.1", "together", "Content-Length", "4", "Transfer-Encoding", "chunked");
    REFUSE("1.1", "together", "Transfer-Encoding", "chunked", "content-length", "0");
    REFUSE("1.1", "two different", "Content-Length", "4", "Content-Length", "5");
    REFUSE("1.1", "two different", "Content-Length", "4", "Content-Length", "04");
    REFUSE("1.1", "not a number", "Content-Length", "4, 4");
    REFUSE("1.1", "not a number", "Content-Length", "+4");
    REFUSE("1.1", "not a number", "Content-Length", "-1");
    REFUSE("1.1", "not a number", "Content-Length", "");
    REFUSE("1.1", "not a number", "Content-Length", "1234567890123456789");
    REFUSE("1.1", "not a number", "Content-Length", "4 4");
}

static void test_transfer_encodings_refused(void **state)
{
    (void)state;
    REFUSE("1.1", "other than chunked", "Transfer-Encoding", "gzip");
    REFUSE("1.1", "other than chunked", "Transfer-Encoding", "gzip, chunked");
    REFUSE("1.1", "other than chunked", "Transfer-Encoding", "chunked, identity");
    REFUSE("1.1", "other than chunked", "Transfer-Encoding", "xchunked");
    REFUSE("1.1", "other than chunked", "Transfer-Encoding", "chunked", "Transfer-Encoding",
           "chunked");
    REFUSE("1.0", "HTTP/1.0", "Transfer-Encoding", "chunked");
}

static void test_bad_names_and_values_refused(void **state)
{
    (void)state;
    REFUSE("1.1", "not a token", "X/A", "v");
    REFUSE("1.1", "not a token", "X A", "v");
    REFUSE("1.1", "not a token", "", "v");
    REFUSE("1.1", "not a token", "Transfer-Encoding ", "chunked");
    REFUSE("1.1", "not a token", "X-\xc3\xa9", "v");
    REFUSE("1.1", "control character", "X-A", "a\rb");
    REFUSE("1.1", "control character", "X-A", "a\nb");
    REFUSE("1.1", "control character", "X-A",
           "a\x01"
           "b");
    REFUSE("1.1", "control character", "X-A", "a\x7f");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordinary_requests_pass),
        cmocka_unit_test(test_conflicting_lengths_refused),
        cmocka_unit_test(test_transfer_encodings_refused),
        cmocka_unit_test(test_bad_names_and_values_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
