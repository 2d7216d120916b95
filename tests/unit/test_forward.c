/* test_forward: which thread a request's transfer runs on, read from its body by relay_forward()
 * (relay_forward_body_asks_stream: a scan, not a parse; a streaming request must never be
 * missed on a plain body, and text that merely mentions "stream" must not count). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "forward_internal.h"

static int asks(const char *body)
{
    return relay_forward_body_asks_stream(body, strlen(body));
}

static void test_stream_true_in_every_spacing(void **state)
{
    (void)state;
    assert_int_equal(asks("{\"stream\":true}"), 1);
    assert_int_equal(asks("{\"model\":\"m\",\"stream\": true,\"max_tokens\":5}"), 1);
    assert_int_equal(asks("{\n  \"stream\" :\n\ttrue\n}"), 1);
    /* Claude Code's shape: the flag after a long messages array. */
    assert_int_equal(asks("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                          "\"max_tokens\":128000,\"stream\":true}"),
                     1);
}

static void test_not_a_stream(void **state)
{
    (void)state;
    assert_int_equal(asks("{\"stream\":false}"), 0);
    assert_int_equal(asks("{\"model\":\"m\",\"max_tokens\":5}"), 0);
    assert_int_equal(asks(""), 0);
    assert_int_equal(relay_forward_body_asks_stream(NULL, 0), 0);
    assert_int_equal(asks("{\"stream\":tru"), 0); /* cut short */
    assert_int_equal(asks("{\"stream\""), 0);
    assert_int_equal(asks("{\"streams\":true}"), 0); /* another key */
    /* Text that mentions the flag: the quotes inside a JSON string are escaped. */
    assert_int_equal(asks("{\"messages\":[{\"role\":\"user\",\"content\":"
                          "\"set \\\"stream\\\": true please\"}]}"),
                     0);
    /* A string value "stream" is not the key (no colon after it). */
    assert_int_equal(asks("{\"mode\":\"stream\",\"x\":true}"), 0);
}

static void test_length_is_respected(void **state)
{
    (void)state;
    const char *b = "{\"stream\":true}";
    /* The flag lies past the length given: not read. */
    assert_int_equal(relay_forward_body_asks_stream(b, 12), 0);
    assert_int_equal(relay_forward_body_asks_stream(b, strlen(b)), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_true_in_every_spacing),
        cmocka_unit_test(test_not_a_stream),
        cmocka_unit_test(test_length_is_respected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
