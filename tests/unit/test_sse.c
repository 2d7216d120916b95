/* test_sse: the SSE/usage parser on realistic Claude streams, every chunking, faults and garbage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "relay/sse.h"
#include "sse_internal.h"

/* A stream as Anthropic sends it, with prompt caching (5m/1h split) and a cumulative
 * message_delta that restates the input and cache fields. */
static const char *const STREAM_EVENTS[] = {
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\","
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-"
    "20250929\","
    "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,"
    "\"cache_creation_input_tokens\":1200,\"cache_read_input_tokens\":3000,"
    "\"cache_creation\":{\"ephemeral_5m_input_tokens\":800,\"ephemeral_1h_input_tokens\":400},"
    "\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\", w\\u00f6rld\"}}\n\n",
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"!\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n"
    "data: "
    "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
    "\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":1200,"
    "\"cache_read_input_tokens\":3000,\"output_tokens\":57}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
};
#define N_EVENTS      (sizeof(STREAM_EVENTS) / sizeof(STREAM_EVENTS[0]))
#define EXPECTED_TEXT "Hello, w\xC3\xB6rld!"

/* The stream with each "\n" replaced by eol ("\n", "\r\n" or "\r"); the caller frees it. */
static char *stream_with(const char *eol, size_t *len)
{
    relay_buf_t b;
    relay_buf_init(&b, 1 << 20);
    for (size_t i = 0; i < N_EVENTS; i++) {
        for (const char *s = STREAM_EVENTS[i]; *s; s++) {
            if (*s == '\n')
                assert_int_equal(relay_buf_appends(&b, eol), 0);
            else
                assert_int_equal(relay_buf_append(&b, s, 1), 0);
        }
    }
    *len = b.len;
    return relay_buf_detach(&b);
}

static void assert_full_usage(const relay_usage_t *u)
{
    assert_int_equal(u->input_tokens, 25);
    assert_int_equal(u->output_tokens, 57);
    assert_int_equal(u->cache_creation_input_tokens, 1200);
    assert_int_equal(u->cache_creation_5m_tokens, 800);
    assert_int_equal(u->cache_creation_1h_tokens, 400);
    assert_int_equal(u->cache_read_input_tokens, 3000);
    assert_true(u->has_usage);
    assert_true(u->has_final);
    assert_true(u->saw_message_stop);
    assert_false(u->saw_error);
    assert_string_equal(u->model, "claude-sonnet-4-5-20250929");
    assert_string_equal(u->message_id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_string_equal(u->stop_reason, "end_turn");
    assert_int_equal(u->events, N_EVENTS);
}

static relay_sse_t *new_parser(size_t cap)
{
    relay_sse_t *p = NULL;
    assert_int_equal(relay_sse_new(&p, cap), 0);
    assert_non_null(p);
    return p;
}

static void assert_text(const relay_sse_t *p, const char *want)
{
    size_t len = 0, total = 0;
    const char *text = relay_sse_output_text(p, &len, &total);
    assert_int_equal(len, strlen(want));
    assert_int_equal(total, strlen(want));
    assert_memory_equal(text, want, len);
}

static void test_whole_stream(void **state)
{
    (void)state;
    size_t len;
    char *s = stream_with("\n", &len);
    relay_sse_t *p = new_parser(0);
    assert_int_equal(relay_sse_feed(p, s, len), 0);
    assert_full_usage(relay_sse_usage(p));
    assert_text(p, EXPECTED_TEXT);
    relay_sse_free(p);
    free(s);
}

/* Two chunks split at every offset, then one byte at a time: all must equal the whole feed. */
static void check_every_split(const char *eol)
{
    size_t len;
    char *s = stream_with(eol, &len);
    relay_sse_t *ref = new_parser(0);
    assert_int_equal(relay_sse_feed(ref, s, len), 0);
    assert_full_usage(relay_sse_usage(ref));
    for (size_t cut = 0; cut <= len; cut++) {
        relay_sse_t *p = new_parser(0);
        assert_int_equal(relay_sse_feed(p, s, cut), 0);
        assert_int_equal(relay_sse_feed(p, s + cut, len - cut), 0);
        assert_memory_equal(relay_sse_usage(p), relay_sse_usage(ref), sizeof(relay_usage_t));
        assert_text(p, EXPECTED_TEXT);
        relay_sse_free(p);
    }
    relay_sse_t *p = new_parser(0);
    for (size_t i = 0; i < len; i++)
        assert_int_equal(relay_sse_feed(p, s + i, 1), 0);
    assert_memory_equal(relay_sse_usage(p), relay_sse_usage(ref), sizeof(relay_usage_t));
    assert_text(p, EXPECTED_TEXT);
    relay_sse_free(p);
    relay_sse_free(ref);
    free(s);
}

static void test_every_split_lf(void **state)
{
    (void)state;
    check_every_split("\n");
}

static void test_every_split_crlf(void **state)
{
    (void)state;
    check_every_split("\r\n");
}

static void test_every_split_cr(void **state)
{
    (void)state;
    check_every_split("\r");
}

static void feed_str(relay_sse_t *p, const char *s)
{
    assert_int_equal(relay_sse_feed(p, s, strlen(s)), 0);
}

static void test_error_after_200(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(0);
    for (size_t i = 0; i < 4; i++)
        feed_str(p, STREAM_EVENTS[i]);
    feed_str(p, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
                "\"message\":\"Overloaded\"}}\n\n");
    const relay_usage_t *u = relay_sse_usage(p);
    assert_true(u->saw_error);
    assert_string_equal(u->error_type, "overloaded_error");
    assert_string_equal(u->error_message, "Overloaded");
    assert_false(u->saw_message_stop);
    assert_false(u->has_final);
    assert_int_equal(u->input_tokens, 25); /* what message_start said is kept for billing */
    assert_int_equal(u->cache_read_input_tokens, 3000);
    assert_int_equal(u->output_tokens, 1);
    assert_int_equal(u->events, 5);
    assert_text(p, "Hello");
    relay_sse_free(p);
}

static void test_cut_stream(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(0);
    for (size_t i = 0; i < 5; i++)
        feed_str(p, STREAM_EVENTS[i]);
    /* The upstream goes away in the middle of the next event: it must not count. */
    const char *half = STREAM_EVENTS[5];
    assert_int_equal(relay_sse_feed(p, half, strlen(half) / 2), 0);
    const relay_usage_t *u = relay_sse_usage(p);
    assert_false(u->saw_message_stop);
    assert_false(u->has_final);
    assert_false(u->saw_error);
    assert_true(u->has_usage);
    assert_int_equal(u->input_tokens, 25);
    assert_int_equal(u->cache_creation_input_tokens, 1200);
    assert_int_equal(u->output_tokens, 1);
    assert_int_equal(u->events, 5);
    assert_text(p, "Hello, w\xC3\xB6rld");
    relay_sse_free(p);
}

/* message_delta usage is cumulative: each field present replaces, absent ones stay. */
static void test_delta_replaces(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(0);
    feed_str(
        p,
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\","
        "\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n");
    feed_str(p, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},"
                "\"usage\":{\"input_tokens\":30,\"output_tokens\":7}}\n\n");
    const relay_usage_t *u = relay_sse_usage(p);
    assert_int_equal(u->input_tokens, 30);
    assert_int_equal(u->cache_read_input_tokens, 5);
    assert_int_equal(u->output_tokens, 7);
    assert_true(u->has_final);
    feed_str(p, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},"
                "\"usage\":{\"output_tokens\":9,\"cache_read_input_tokens\":null}}\n\n");
    assert_int_equal(u->input_tokens, 30);
    assert_int_equal(u->output_tokens, 9);
    assert_int_equal(u->cache_read_input_tokens, 5);
    relay_sse_free(p);
}

/* No `event:` line (type from JSON), comments, multi-line data, "data:" without a space, BOM,
 * unknown fields, thinking and tool input deltas. */
static void test_format_variants(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(0);
    feed_str(p, "\xEF\xBB\xBF: a comment\nid: 7\nretry: 100\n"
                "data: {\"type\":\"message_start\",\n"
                "data:\"message\":{\"usage\":{\"input_tokens\":11}}}\n\n");
    feed_str(p, ":keepalive\n\n");
    feed_str(p, "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                "\"thinking_delta\",\"thinking\":\"hmm \"}}\n\n");
    feed_str(p, "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
                "\"signature_delta\",\"signature\":\"abc\"}}\n\n");
    feed_str(p, "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":"
                "\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n");
    feed_str(p, "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},"
                "\"usage\":{\"output_tokens\":3}}\n\n");
    feed_str(p, "data: {\"type\":\"message_stop\"}\n\n");
    const relay_usage_t *u = relay_sse_usage(p);
    assert_int_equal(u->input_tokens, 11);
    assert_int_equal(u->output_tokens, 3);
    assert_string_equal(u->stop_reason, "tool_use");
    assert_true(u->saw_message_stop);
    assert_int_equal(u->events, 6); /* the comment-only block is no event */
    assert_text(p, "hmm {\"city\":");
    relay_sse_free(p);
}

static void test_oversized_event(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(1024);
    assert_true(strlen(STREAM_EVENTS[0]) < 1024);
    feed_str(p, STREAM_EVENTS[0]);
    char big[4096];
    int n = snprintf(big, sizeof(big),
                     "event: content_block_delta\ndata: {\"type\":"
                     "\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
                     "\"text\":\"");
    memset(big + n, 'x', 3000);
    strcpy(big + n + 3000, "\"}}\n\n");
    assert_int_equal(relay_sse_feed(p, big, strlen(big)), RELAY_ERR_TOO_LARGE);
    /* The parser skipped exactly that event and goes on. */
    assert_int_equal(relay_sse_feed(p, STREAM_EVENTS[7], strlen(STREAM_EVENTS[7])), 0);
    feed_str(p, STREAM_EVENTS[8]);
    const relay_usage_t *u = relay_sse_usage(p);
    assert_int_equal(u->input_tokens, 25);
    assert_int_equal(u->output_tokens, 57);
    assert_true(u->saw_message_stop);
    assert_int_equal(u->events, 3);
    assert_text(p, "");
    relay_sse_free(p);

    /* Fed a byte at a time, the same event is refused once and the rest parses the same. */
    p = new_parser(1024);
    int too_large = 0;
    for (size_t i = 0; big[i]; i++) {
        int rc = relay_sse_feed(p, big + i, 1);
        assert_true(rc == 0 || rc == RELAY_ERR_TOO_LARGE);
        too_large += rc == RELAY_ERR_TOO_LARGE;
    }
    assert_int_equal(too_large, 1);
    feed_str(p, STREAM_EVENTS[8]);
    assert_true(relay_sse_usage(p)->saw_message_stop);
    assert_int_equal(relay_sse_usage(p)->events, 1);
    relay_sse_free(p);
}

/* A line with no blank line after it grows the event too: also bounded. */
static void test_endless_line(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(4096);
    char chunk[1000];
    memset(chunk, 'a', sizeof(chunk));
    int refused = 0;
    for (int i = 0; i < 100; i++)
        refused += relay_sse_feed(p, chunk, sizeof(chunk)) == RELAY_ERR_TOO_LARGE;
    assert_int_equal(refused, 1);
    feed_str(p, "\n\n");
    feed_str(p, STREAM_EVENTS[8]);
    assert_true(relay_sse_usage(p)->saw_message_stop);
    relay_sse_free(p);
}

static void test_garbage(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(1024);
    uint32_t x = 12345;
    unsigned char junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (unsigned char)(x >> 16);
    }
    for (size_t off = 0; off < sizeof(junk);) {
        size_t n = 1 + (junk[off] % 97);
        if (n > sizeof(junk) - off)
            n = sizeof(junk) - off;
        int rc = relay_sse_feed(p, junk + off, n);
        assert_true(rc == 0 || rc == RELAY_ERR_TOO_LARGE);
        off += n;
    }
    /* Well-formed SSE with wrong JSON changes nothing. */
    feed_str(p, "\n\n");
    relay_usage_t before = *relay_sse_usage(p);
    feed_str(p, "data: {not json\n\n");
    feed_str(p, "event: message_delta\ndata: [1,2,3]\n\n");
    feed_str(p, "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"12\","
                "\"input_tokens\":-5,\"cache_creation\":7}}\n\n");
    feed_str(p, "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
                "\"text\":42}}\n\n");
    feed_str(p, "data: {\"type\":7}\n\ndata: null\n\n");
    const relay_usage_t *u = relay_sse_usage(p);
    assert_int_equal(u->output_tokens, before.output_tokens);
    assert_int_equal(u->input_tokens, before.input_tokens);
    assert_int_equal(u->has_final, before.has_final);
    assert_int_equal(u->events, before.events + 6);
    /* And it still reads a real stream afterwards. */
    for (size_t i = 0; i < N_EVENTS; i++)
        feed_str(p, STREAM_EVENTS[i]);
    assert_int_equal(u->output_tokens, 57);
    assert_int_equal(u->cache_creation_1h_tokens, 400);
    assert_true(u->saw_message_stop);
    relay_sse_free(p);
}

static void test_output_cap(void **state)
{
    (void)state;
    relay_sse_t *p = new_parser(0);
    size_t piece = 60000;
    char *ev = malloc(piece + 200);
    int n =
        sprintf(ev, "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
                    "\"text\":\"");
    /* Three-byte characters: the cap (2^20) falls inside one, so the parser must cut before it. */
    for (size_t i = 0; i < piece; i += 3)
        memcpy(ev + n + i, "\xE2\x82\xAC", 3);
    strcpy(ev + n + piece, "\"}}\n\n");
    int rounds = (int)(RELAY_SSE_OUTPUT_CAP / piece) + 3;
    for (int i = 0; i < rounds; i++)
        assert_int_equal(relay_sse_feed(p, ev, strlen(ev)), 0);
    size_t len, total;
    const char *text = relay_sse_output_text(p, &len, &total);
    assert_int_equal(total, (size_t)rounds * piece);
    assert_true(len <= RELAY_SSE_OUTPUT_CAP);
    assert_true(len > RELAY_SSE_OUTPUT_CAP - 4);
    assert_int_equal(len % 3, 0);
    assert_int_equal((unsigned char)text[len - 1], 0xAC);
    assert_int_equal(text[len], '\0');
    relay_sse_free(p);
    free(ev);
}

static void test_json_body(void **state)
{
    (void)state;
    const char *body =
        "{\"id\":\"msg_013Zva2CMHLNnXjNJJKqJ2EF\",\"type\":\"message\",\"role\":\"assistant\","
        "\"model\":\"claude-opus-4-1-20250805\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}],"
        "\"stop_reason\":\"max_tokens\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":2095,"
        "\"cache_creation_input_tokens\":2051,\"cache_read_input_tokens\":0,\"cache_creation\":"
        "{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":2051},\"output_tokens\":"
        "503}}";
    relay_usage_t u;
    memset(&u, 0x55, sizeof(u));
    assert_int_equal(relay_usage_parse_json(&u, body, strlen(body)), 0);
    assert_int_equal(u.input_tokens, 2095);
    assert_int_equal(u.output_tokens, 503);
    assert_int_equal(u.cache_creation_input_tokens, 2051);
    assert_int_equal(u.cache_creation_5m_tokens, 0);
    assert_int_equal(u.cache_creation_1h_tokens, 2051);
    assert_int_equal(u.cache_read_input_tokens, 0);
    assert_true(u.has_usage);
    assert_true(u.has_final);
    assert_false(u.saw_error);
    assert_string_equal(u.model, "claude-opus-4-1-20250805");
    assert_string_equal(u.message_id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    assert_string_equal(u.stop_reason, "max_tokens");
    assert_int_equal(u.events, 0);
}

static void test_json_error_body(void **state)
{
    (void)state;
    const char *body = "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
                       "\"Number of request tokens has exceeded your per-minute rate limit\"},"
                       "\"request_id\":\"req_011CSHoEeqs5C35K2UUqR7Fy\"}";
    relay_usage_t u;
    assert_int_equal(relay_usage_parse_json(&u, body, strlen(body)), 0);
    assert_true(u.saw_error);
    assert_string_equal(u.error_type, "rate_limit_error");
    assert_string_equal(u.error_message,
                        "Number of request tokens has exceeded your per-minute rate limit");
    assert_false(u.has_usage);
    assert_false(u.has_final);
    assert_int_equal(u.input_tokens, 0);
}

static void test_json_malformed(void **state)
{
    (void)state;
    relay_usage_t u;
    const char *bad[] = {"{\"usage\":{\"input_tokens\":5}", "[1,2]", "", "garbage", "\"str\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&u, 0x55, sizeof(u));
        assert_int_equal(relay_usage_parse_json(&u, bad[i], strlen(bad[i])), RELAY_ERR_INVALID);
        assert_int_equal(u.input_tokens, 0);
        assert_false(u.has_usage);
    }
    assert_int_equal(relay_usage_parse_json(&u, NULL, 0), RELAY_ERR_INVALID);
    /* A body with a NUL inside is not JSON either, and nothing past len is read. */
    assert_int_equal(relay_usage_parse_json(&u, "{}\0{", 4), RELAY_ERR_INVALID);
    assert_int_equal(relay_usage_parse_json(&u, "{}xyz", 2), 0);
}

/* Output text of one content_block_delta event whose data is json, named or not by event:. */
static void delta_text(const char *json, int named, char *out, size_t cap)
{
    relay_sse_t *p = new_parser(0);
    char ev[2048];
    snprintf(ev, sizeof ev, "%sdata: %s\n\n", named ? "event: content_block_delta\n" : "", json);
    assert_int_equal(relay_sse_feed(p, ev, strlen(ev)), 0);
    size_t len = 0;
    const char *t = relay_sse_output_text(p, &len, NULL);
    assert_true(len < cap);
    memcpy(out, t, len);
    out[len] = '\0';
    relay_sse_free(p);
}

/*
 * Named deltas take a short path without jansson; events without event: always go through
 * jansson. The two must agree on every shape: escapes, surrogates, key orders, thinking and
 * tool-input deltas, and the malformed ones jansson refuses (no text at all).
 */
static void test_fast_delta_agrees_with_jansson(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"Hi\"}}",
        "{\"delta\":{\"text\":\"a\\nb\\\"c\\\\d\\/"
        "e\\tf\",\"type\":\"text_delta\"},\"index\":3,\"type\":\"content_block_delta\"}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"\\u00e9\\u4e2d\\ud83d\\ude00\"}}",
        "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"thinking_delta\","
        "\"thinking\":\"hmm\"}}",
        "{\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{\\\"a\\\":1\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\","
        "\"signature\":\"x\"}}",
        " { \"type\" : \"content_block_delta\" , \"index\" : 0 , \"delta\" : { \"type\" : "
        "\"text_delta\" , \"text\" : \"sp\" } } ",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"x\"}} trailing",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"\\ud83d\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"\\q\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"u\\u0000v\"}}",
        /* An index that is not JSON ("01", "1-"): jansson refuses the event. */
        "{\"type\":\"content_block_delta\",\"index\":01,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"zero-one\"}}",
        "{\"type\":\"content_block_delta\",\"index\":-1,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"minus\"}}",
        /* Raw bytes that are not UTF-8 (jansson refuses the event) and raw UTF-8 (it keeps it). */
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"a\xc3(b\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"x\",\"extra\":[1,{\"a\":null}]}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"unterminated}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
        "\"dup\"},\"delta\":{}}",
        "[1,2]",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char fast[1024], slow[1024];
        delta_text(cases[i], 1, fast, sizeof fast);
        delta_text(cases[i], 0, slow, sizeof slow);
        if (strcmp(fast, slow))
            fail_msg("case %zu: fast \"%s\" != jansson \"%s\"", i, fast, slow);
    }
    char t[64];
    delta_text(cases[2], 1, t, sizeof t);
    assert_string_equal(t, "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80");
    delta_text(cases[1], 1, t, sizeof t);
    assert_string_equal(t, "a\nb\"c\\d/e\tf");
}

/* The JSON body's fast reader: on every body, the same answer as jansson (via
 * relay_usage_parse_json), and for the shapes Anthropic sends, an answer of its own. */
static void test_fast_json_agrees_with_jansson(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int fast; /* the fast reader must answer this one itself */
    } cases[] = {
        {"{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-"
         "4-5\","
         "\"content\":[{\"type\":\"text\",\"text\":\"Hello \\\"there\\\" \\u00e9\\ud83d\\ude00\"}],"
         "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,"
         "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":7,\"cache_creation\":{"
         "\"ephemeral_5m_input_tokens\":60,\"ephemeral_1h_input_tokens\":40},\"output_tokens\":9,"
         "\"service_tier\":\"standard\"}}",
         1},
        {" {\n \"type\" : \"message\" , \"usage\" : { \"output_tokens\" : 0 } }\n\t", 1},
        {"{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}"
         "}",
         1},
        {"{\"type\":\"error\",\"error\":\"not an object\"}", 1},
        {"{\"type\":\"error\"}", 1},
        {"{}", 1},
        {"{\"usage\":{\"input_tokens\":1},\"usage\":{\"output_tokens\":2}}", 1}, /* last wins */
        {"{\"usage\":{\"input_tokens\":1},\"usage\":5}", 1},
        {"{\"model\":\"a\",\"model\":7}", 1},
        {"{\"usage\":{\"input_tokens\":-3,\"output_tokens\":1.0,\"cache_read_input_tokens\":-0}}",
         1},
        {"{\"usage\":{\"input_tokens\":null,\"output_tokens\":\"5\"}}", 1},
        {"{\"usage\":{\"cache_creation\":{\"ephemeral_5m_input_tokens\":1},"
         "\"cache_creation\":{\"ephemeral_1h_input_tokens\":2}}}",
         1},
        {"{\"content\":[[[{\"a\":[true,false,null,1,-2.5,0,\"x\"]}]]],\"usage\":{\"output_tokens\":"
         "3}}",
         1},
        {"{\"model\":\"caf\xc3\xa9\",\"x\":\"\xe2\x82\xac\xf0\x9f\x98\x80\"}", 1},
        {"{\"model\":\"a\\/b\\n\"}", 1},
        {"{\"model\":\"\\u00e9\"}", 1},
        /* Left to jansson (and answered the same through relay_usage_parse_json). */
        {"{\"usage\":{\"input_tokens\":1e3}}", 0},
        {"{\"usage\":{\"input_tokens\":123456789012345678901234}}", 0},
        {"{\"model\":\"a\\u0000b\"}", 0},
        {"{\"model\":\"\\ud800\"}", 0},
        {"{\"model\":\"\xc0\xaf\"}", 0},
        {"{\"model\":\"\xed\xa0\x80\"}", 0},
        {"{\"type\":\"\\u0065rror\",\"error\":{\"type\":\"x\"}}", 0},
        {"[1,2]", 0},
        {"{\"a\":01}", 0},
        {"{\"a\":1,}", 0},
        {"{\"a\" 1}", 0},
        {"{\"a\":tru}", 0},
        {"{\"a\":\"x\ty\"}", 0},
        {"{\"a\":1}x", 0},
        {"{\"a\":-}", 0},
        {"{\"a\":1.}", 0},
        {"", 0},
        {"\xef\xbb\xbf{}", 0},
        {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *b = cases[i].body;
        size_t n = strlen(b);
        relay_usage_t got, want, fast;
        int rc = relay_usage_parse_json(&got, b, n);
        int rc_want = relay_usage_parse_json_jansson(&want, b, n);
        if (rc != rc_want || memcmp(&got, &want, sizeof got) != 0)
            fail_msg("case %zu: the fast reader disagrees with jansson: %s", i, b);
        memset(&fast, 0, sizeof fast);
        if (relay_usage_parse_json_fast(&fast, b, n) != cases[i].fast)
            fail_msg("case %zu: fast reader %s: %s", i, cases[i].fast ? "declined" : "answered", b);
    }
    /* A deep document, and a long text the fast reader passes over. */
    char deep[200], big[70000];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    relay_usage_t a, b;
    assert_int_equal(relay_usage_parse_json_fast(&a, deep, sizeof deep), 0);
    int off = snprintf(big, sizeof big, "{\"content\":[{\"type\":\"text\",\"text\":\"");
    for (int i = 0; i < 60000; i++)
        big[off++] = "ab c"[i % 4];
    off += snprintf(big + off, sizeof big - (size_t)off, "\"}],\"usage\":{\"output_tokens\":42}}");
    memset(&a, 0, sizeof a);
    assert_int_equal(relay_usage_parse_json_fast(&a, big, (size_t)off), 1);
    assert_int_equal(a.output_tokens, 42);
    assert_int_equal(relay_usage_parse_json_jansson(&b, big, (size_t)off), 0);
    assert_memory_equal(&a, &b, sizeof a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_stream),
        cmocka_unit_test(test_every_split_lf),
        cmocka_unit_test(test_every_split_crlf),
        cmocka_unit_test(test_every_split_cr),
        cmocka_unit_test(test_error_after_200),
        cmocka_unit_test(test_cut_stream),
        cmocka_unit_test(test_delta_replaces),
        cmocka_unit_test(test_format_variants),
        cmocka_unit_test(test_oversized_event),
        cmocka_unit_test(test_endless_line),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_output_cap),
        cmocka_unit_test(test_json_body),
        cmocka_unit_test(test_json_error_body),
        cmocka_unit_test(test_json_malformed),
        cmocka_unit_test(test_fast_delta_agrees_with_jansson),
        cmocka_unit_test(test_fast_json_agrees_with_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
