/* test_tokens: the heuristic counter, Messages request estimates and exact BPE over a test vocab.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "relay/tokens.h"
#include "tokens_internal.h"

/* ---- helpers ---- */

static int64_t count(const relay_tokenizer_t *t, const char *s)
{
    return relay_tokens_count_text(t, s, strlen(s));
}

/* Standard base64 with padding, as tiktoken files write tokens. */
static void b64(const unsigned char *in, size_t n, char *out)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = A[(v >> 18) & 63];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = i + 1 < n ? A[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? A[v & 63] : '=';
    }
    out[o] = '\0';
}

static char *write_temp(const char *content)
{
    char *path = strdup("/tmp/relay_test_vocab_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(content);
    assert_int_equal(write(fd, content, n), (ssize_t)n);
    close(fd);
    return path;
}

/*
 * A test vocabulary: every byte as itself (ranks 0-255), then a few merges whose ranks make the
 * merge order matter: "ab" before "cd" before "abcd" before " ab" before "bc" before "  ".
 */
static const char *const MERGES[] = {"ab", "cd", "abcd", " ab", "bc", "  "};
#define N_MERGES (sizeof(MERGES) / sizeof(MERGES[0]))

static char *write_vocab(void)
{
    size_t cap = 64 * 300;
    char *text = malloc(cap), line[64], enc[32];
    text[0] = '\0';
    for (int i = 0; i < 256; i++) {
        unsigned char c = (unsigned char)i;
        b64(&c, 1, enc);
        snprintf(line, sizeof(line), "%s %d\n", enc, i);
        strcat(text, line);
    }
    for (size_t i = 0; i < N_MERGES; i++) {
        b64((const unsigned char *)MERGES[i], strlen(MERGES[i]), enc);
        snprintf(line, sizeof(line), "%s %zu\n", enc, 256 + i);
        strcat(text, line);
    }
    char *path = write_temp(text);
    free(text);
    return path;
}

static int group_setup(void **state)
{
    char *path = write_vocab();
    relay_tokenizer_t *t = NULL;
    relay_error_t err = {0};
    int rc = relay_tokenizer_new(&t, path, &err);
    unlink(path);
    free(path);
    if (rc) {
        fprintf(stderr, "vocab: %s\n", err.message);
        return -1;
    }
    *state = t;
    return 0;
}

static int group_teardown(void **state)
{
    relay_tokenizer_free(*state);
    return 0;
}

/* ---- heuristic ---- */

static void test_heuristic_empty(void **state)
{
    (void)state;
    assert_int_equal(relay_tokens_count_text(NULL, "", 0), 0);
    assert_int_equal(relay_tokens_count_text(NULL, NULL, 0), 0);
    assert_int_equal(count(NULL, " "), 1);
    assert_int_equal(count(NULL, "a"), 1);
}

/* Anthropic's published Claude tokenizer splits this pangram into 10 tokens. */
static void test_heuristic_english(void **state)
{
    (void)state;
    int64_t n = count(NULL, "The quick brown fox jumps over the lazy dog.");
    assert_in_range(n, 8, 13);
    /* Far from bytes/4 on short English words, which it should not be: 44 bytes / 4 = 11 is
     * close here, but a long identifier is not one token per 4 bytes. */
    assert_in_range(count(NULL, "relay_tokens_count_request"), 5, 12);
}

static const char MIXED[] = "Hello, world! int main(void) { return 42; }\n\n"
                            "  日本語のテキストです。Привет, мир. Καλημέρα κόσμε.\r\n"
                            "naïve café 1234567890 😀😀 -- ==== \t\tend";

/* Growing a text never lowers its count (checked at every code point boundary). */
static void test_heuristic_monotone(void **state)
{
    (void)state;
    size_t len = strlen(MIXED);
    int64_t prev = 0;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && ((unsigned char)MIXED[i] & 0xC0) == 0x80)
            continue;
        int64_t n = relay_tokens_count_text(NULL, MIXED, i);
        assert_true(n >= prev);
        prev = n;
    }
    assert_true(prev > 30);
    /* Repetition grows it roughly linearly. */
    char buf[8192] = "";
    int64_t last = 0;
    for (int k = 1; k <= 20; k++) {
        strcat(buf, MIXED);
        int64_t n = count(NULL, buf);
        assert_true(n > last);
        last = n;
    }
    int64_t one = count(NULL, MIXED);
    assert_in_range(last, 18 * one, 22 * one);
}

static void test_heuristic_cjk_heavier(void **state)
{
    (void)state;
    char ja[4096] = "", en[4096] = "";
    for (int i = 0; i < 40; i++) {
        strcat(ja, "日本語のテキストです。");      /* 11 code points */
        strcat(en, "This is some English text. "); /* 27 code points */
    }
    double ja_per_char = (double)count(NULL, ja) / (40 * 11);
    double en_per_char = (double)count(NULL, en) / (40 * 27);
    assert_true(ja_per_char > 2 * en_per_char);
    /* And denser than bytes/4 would say (33 bytes per sentence, so 8 tokens). */
    assert_true(count(NULL, ja) > 40 * 33 / 4);
}

/* ---- requests ---- */

static const char REQUEST[] =
    "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"stream\":true,"
    "\"system\":[{\"type\":\"text\",\"text\":\"You are a careful assistant that answers in "
    "English.\",\"cache_control\":{\"type\":\"ephemeral\"}}],"
    "\"messages\":["
    "{\"role\":\"user\",\"content\":\"What is the weather in Paris today?\"},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Let me check.\"},"
    "{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{\"city\":"
    "\"Paris\",\"unit\":\"celsius\"}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\","
    "\"content\":[{\"type\":\"text\",\"text\":\"18 degrees, light rain, wind 12 km/h\"}]}]}"
    "],"
    "\"tools\":[{\"name\":\"get_weather\",\"description\":\"Current weather for a city\","
    "\"input_schema\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},"
    "\"unit\":{\"type\":\"string\",\"enum\":[\"celsius\",\"fahrenheit\"]}},\"required\":"
    "[\"city\"]}}]%s}";

static relay_request_info_t request_info(const relay_tokenizer_t *t, const char *body)
{
    relay_request_info_t info;
    memset(&info, 0, sizeof(info));
    assert_int_equal(relay_tokens_count_request(t, body, strlen(body), &info), 0);
    return info;
}

static void test_request_fields(void **state)
{
    (void)state;
    char body[4096];
    snprintf(body, sizeof(body), REQUEST, "");
    relay_request_info_t info = request_info(NULL, body);
    assert_int_equal(info.max_tokens, 1024);
    assert_int_equal(info.stream, 1);
    assert_string_equal(info.model, "claude-sonnet-4-5");
    /* The tool-use system prompt (346) plus some 80-150 tokens of content. */
    assert_in_range(info.input_tokens_estimate, 346 + 60, 346 + 200);

    /* Forcing a tool uses the shorter tool prompt (313). */
    snprintf(body, sizeof(body), REQUEST, ",\"tool_choice\":{\"type\":\"any\"}");
    relay_request_info_t forced = request_info(NULL, body);
    assert_int_equal(info.input_tokens_estimate - forced.input_tokens_estimate, 346 - 313);

    /* No max_tokens, no stream flag. */
    const char *plain = "{\"model\":\"m\",\"messages\":[]}";
    relay_request_info_t p = request_info(NULL, plain);
    assert_int_equal(p.max_tokens, 0);
    assert_int_equal(p.stream, 0);
    assert_string_equal(p.model, "m");
}

/* Anthropic's count_tokens documentation answers 14 for this request. */
static void test_request_documented_example(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"claude-sonnet-4-5\",\"system\":\"You are a scientist\","
                       "\"messages\":[{\"role\":\"user\",\"content\":\"Hello, Claude\"}]}";
    relay_request_info_t info = request_info(NULL, body);
    assert_in_range(info.input_tokens_estimate, 10, 20);
}

static void test_request_grows_with_content(void **state)
{
    (void)state;
    char small[512], big[8192], text[6000] = "";
    for (int i = 0; i < 100; i++)
        strcat(text, "More words to count. ");
    snprintf(small, sizeof(small), "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
    snprintf(big, sizeof(big),
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
             "{\"role\":\"user\",\"content\":\"%s\"}]}",
             text);
    int64_t a = request_info(NULL, small).input_tokens_estimate;
    int64_t b = request_info(NULL, big).input_tokens_estimate;
    assert_in_range(b - a, 400, 700); /* 100 x 5 tokens, plus one message's overhead */
    /* An image costs a fixed amount, a thinking block its text. */
    const char *img = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\","
                      "\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":"
                      "\"iVBORw0KGgo=\"}}]}]}";
    assert_true(request_info(NULL, img).input_tokens_estimate >= 1600);
}

static void test_request_malformed(void **state)
{
    (void)state;
    const char *bad[] = {"{\"model\":", "[]", "", "null", "{\"a\":1}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        relay_request_info_t info, before;
        memset(&info, 0x5A, sizeof(info));
        before = info;
        assert_int_equal(relay_tokens_count_request(NULL, bad[i], strlen(bad[i]), &info),
                         RELAY_ERR_INVALID);
        assert_memory_equal(&info, &before, sizeof(info));
    }
    relay_request_info_t info;
    assert_int_equal(relay_tokens_count_request(NULL, NULL, 0, &info), RELAY_ERR_INVALID);
}

/* ---- the reader without jansson must agree with jansson ---- */

static int fast_info(const char *body, relay_request_info_t *fast, relay_request_info_t *slow)
{
    memset(fast, 0, sizeof *fast);
    memset(slow, 0, sizeof *slow);
    int answered = relay_tokens_count_request_fast(NULL, body, strlen(body), fast);
    int rc = relay_tokens_count_request_jansson(NULL, body, strlen(body), slow);
    if (answered) {
        assert_int_equal(rc, 0); /* never an answer where jansson refuses */
        assert_int_equal(fast->input_tokens_estimate, slow->input_tokens_estimate);
        assert_memory_equal(fast, slow, sizeof *fast);
    }
    return answered;
}

#define TOOLS                                                                                      \
    "\"tools\":[{\"name\":\"read_file\",\"description\":\"Reads a file.\\nReturns its text.\","    \
    "\"input_schema\":{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"},"        \
    "\"limit\":{\"type\":\"integer\",\"minimum\":1}},\"required\":[\"path\"]}},"                   \
    "{\"name\":\"bash\",\"input_schema\": { \"type\" : \"object\" , \"properties\" : {} }}]"

/* The shapes clients send: the walker answers them, with jansson's numbers. */
static void test_request_fast_answers(void **state)
{
    (void)state;
    const char *bodies[] = {
        "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":128000,\"stream\":true,"
        "\"system\":[{\"type\":\"text\",\"text\":\"You are Claude Code.\","
        "\"cache_control\":{\"type\":\"ephemeral\"}}],"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Fix the \\\"bug\\\"\\n\\tplease\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"Hmm.\","
        "\"signature\":\"abc\"},{\"type\":\"redacted_thinking\",\"data\":\"QUJDRA==\"},"
        "{\"type\":\"text\",\"text\":\"Reading it.\"},{\"type\":\"tool_use\",\"id\":\"t1\","
        "\"name\":\"read_file\",\"input\":{\"path\":\"a/b.c\",\"limit\":20,\"flags\":[true,"
        "false,null,-3]}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
        "\"tool_use_id\":\"t1\",\"content\":[{\"type\":\"text\",\"text\":\"int main(){}\"}]},"
        "{\"type\":\"tool_result\",\"tool_use_id\":\"t2\",\"content\":\"plain result\"}]}]," TOOLS
        ",\"tool_choice\":{\"type\":\"auto\"},"
        "\"metadata\":{\"user_id\":\"user_abc_account_def_session_0123\"}}",
        /* documents, images, unknown blocks and non-object elements are counted as JSON */
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\",\"source\":"
        "{\"type\":\"base64\",\"media_type\":\"application/pdf\",\"data\":\"JVBERi0xLjQK\"}},"
        "{\"type\":\"document\",\"source\":{\"type\":\"content\",\"content\":[{\"type\":"
        "\"text\",\"text\":\"inner\"}]}},{\"type\":\"document\",\"source\":{\"type\":\"text\","
        "\"data\":\"some text\"}},{\"type\":\"image\",\"source\":{}},{\"type\":\"search_result\","
        "\"title\":\"t\",\"n\":[1,2]},{\"no_type\":1},\"bare string\",42,[\"x\"],{\"type\":7}]}]}",
        /* duplicate keys: jansson keeps the last, and so must the walker */
        "{\"messages\":[{\"content\":\"first\"}],\"messages\":[{\"content\":\"second one\","
        "\"content\":\"third\"}],\"model\":\"a\",\"model\":\"b\",\"stream\":true,\"stream\":false}",
        "{\"tools\":[{\"name\":\"x\"}],\"tools\":[],\"tool_choice\":{\"type\":\"tool\"}}",
        "{\"tools\":[{\"name\":\"x\"},7,\"y\"],\"tool_choice\":{\"type\":\"any\"}}",
        /* odd values where the fields are expected */
        "{\"messages\":{},\"system\":7,\"tools\":{},\"max_tokens\":-5,\"metadata\":[],"
        "\"model\":{\"a\":1}}",
        "{\"max_tokens\":1.5,\"stream\":\"true\",\"metadata\":{\"user_id\":7}}",
        "{\"max_tokens\":-0,\"model\":\"\\u00e9t\\u00e9 \\ud83d\\ude00\"}",
        " {\"messages\":[{\"role\":\"user\",\"content\":\"caf\xc3\xa9 "
        "\xe6\x97\xa5\xe6\x9c\xac\"}]}\n",
        "{}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        relay_request_info_t fast, slow;
        if (!fast_info(bodies[i], &fast, &slow))
            fail_msg("body %zu went to jansson", i);
    }
}

/* What jansson would write differently, or read differently: the walker leaves it to jansson,
 * and the public call still answers as jansson does. */
static void test_request_fast_declines(void **state)
{
    (void)state;
    const char *bodies[] = {
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"maximum\":1.5}}]}",   /* a real */
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"minimum\":-0}}]}",    /* "-0" */
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"a\":1,\"a\":2}}]}",   /* duplicate */
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"p\":\"a\\/b\"}}]}",   /* \/ */
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"p\":\"\\u00e9\"}}]}", /* \u */
        "{\"tools\":[{\"name\":\"x\",\"input_schema\":{\"m\":1e3}}]}",         /* exponent */
        "{\"max_tokens\":1234567890123456789012}",                             /* too big */
        "{\"m\\u0065ssages\":[{\"content\":\"hidden key\"}]}",                 /* escaped key */
        "{\"messages\":[{\"content\":[{\"type\":\"t\\u0065xt\",\"text\":\"x\"}]}]}",
        "{\"messages\":[{\"content\":\"a\\u0000b\"}]}", /* NUL: jansson refuses */
        "{\"messages\":[{\"content\":\"\\ud800\"}]}",   /* a lone surrogate */
        "{\"messages\":[{\"content\":\"\xc0\xaf\"}]}",  /* overlong UTF-8 */
        "{\"model\":\"x\"} trailing",
        "[1,2]",
        "{\"index\":01}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        relay_request_info_t fast, slow, pub;
        if (fast_info(bodies[i], &fast, &slow))
            fail_msg("body %zu was answered without jansson", i);
        memset(&pub, 0, sizeof pub);
        int rc = relay_tokens_count_request(NULL, bodies[i], strlen(bodies[i]), &pub);
        if (rc == 0)
            assert_memory_equal(&pub, &slow, sizeof pub);
    }
    /* Deeper than the walker goes: jansson's answer. */
    char deep[512] = "{\"messages\":[{\"content\":[{\"type\":\"tool_use\",\"input\":";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "}]}]}");
    relay_request_info_t fast, slow;
    assert_false(fast_info(deep, &fast, &slow));
    assert_int_equal(relay_tokens_count_request(NULL, deep, strlen(deep), &fast), 0);
    assert_int_equal(fast.input_tokens_estimate, slow.input_tokens_estimate);
}

/* ---- BPE ---- */

static void assert_ids(const relay_tokenizer_t *t, const char *text, size_t len,
                       const int32_t *want, size_t n_want)
{
    int32_t ids[64];
    size_t n = 0;
    assert_int_equal(relay_tokens_encode(&n, ids, 64, t, text, len), 0);
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n_want * sizeof(*ids));
    assert_int_equal(relay_tokens_count_text(t, text, len), (int64_t)n_want);
}

#define ASSERT_IDS(t, text, ...)                                                                   \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        assert_ids(t, text, sizeof(text) - 1, want_, sizeof(want_) / sizeof(want_[0]));            \
    } while (0)

static void test_bpe_exact(void **state)
{
    const relay_tokenizer_t *t = *state;
    assert_true(relay_tokenizer_is_bpe(t));
    ASSERT_IDS(t, "abcd", 258);                   /* a whole piece in the vocabulary */
    ASSERT_IDS(t, "abc", 256, 'c');               /* "ab" (256) merges before "bc" (260) */
    ASSERT_IDS(t, "bcd", 'b', 257);               /* "cd" (257) merges before "bc" (260) */
    ASSERT_IDS(t, "abcab", 256, 'c', 256);        /* equal ranks: leftmost first */
    ASSERT_IDS(t, "xabcd", 'x', 258);             /* ab, then cd, then abcd */
    ASSERT_IDS(t, " ab ab", 259, 259);            /* the space leads the word's piece */
    ASSERT_IDS(t, "ab's", 256, '\'', 's');        /* contraction is its own piece */
    ASSERT_IDS(t, "x  \ny", 'x', 261, '\n', 'y'); /* \s+(?!\S): the last space stays apart */
    ASSERT_IDS(t, "x   ab", 'x', 261, 259);       /* ... and leads the next word */
    ASSERT_IDS(t, "12345", '1', '2', '3', '4', '5');
    ASSERT_IDS(t, "ab12", 256, '1', '2'); /* letters and digits are separate pieces */
    ASSERT_IDS(t, "a\xff", 'a', 0xff);    /* invalid UTF-8 is still counted by bytes */
}

static void test_bpe_capped_output(void **state)
{
    const relay_tokenizer_t *t = *state;
    int32_t ids[2] = {-7, -7};
    size_t n = 0;
    assert_int_equal(relay_tokens_encode(&n, ids, 1, t, "abc abc", 7), 0);
    assert_int_equal(n, 4); /* "abc" " abc" -> ab c, " ab" c */
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[1], -7);
    /* Long runs are bounded in work but still counted byte-exactly when nothing merges. */
    char *run = malloc(100001);
    memset(run, 'z', 100000);
    run[100000] = '\0';
    assert_int_equal(relay_tokens_count_text(t, run, 100000), 100000);
    free(run);
    /* The heuristic has no ids to give. */
    assert_int_equal(relay_tokens_encode(&n, ids, 2, NULL, "a", 1), RELAY_ERR_INVALID);
}

static void test_bpe_request(void **state)
{
    const relay_tokenizer_t *t = *state;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"abcd\"}],\"max_tokens\":5}";
    relay_request_info_t info = request_info(t, body);
    assert_int_equal(info.input_tokens_estimate, 3 + 4 + 1); /* base + message + one token */
    assert_int_equal(info.max_tokens, 5);
}

static void expect_vocab_error(const char *content, const char *want)
{
    char *path = write_temp(content);
    relay_tokenizer_t *t = (relay_tokenizer_t *)1;
    relay_error_t err = {0};
    assert_int_equal(relay_tokenizer_new(&t, path, &err), RELAY_ERR_CONFIG);
    assert_null(t);
    char expect[512];
    snprintf(expect, sizeof(expect), "%s%s", path, want);
    assert_string_equal(err.message, expect);
    unlink(path);
    free(path);
}

static void test_vocab_errors(void **state)
{
    (void)state;
    expect_vocab_error("YQ== 0\n!!!! 1\n", ":2: bad base64 token");
    expect_vocab_error("YQ==\n", ":1: expected \"base64token rank\"");
    expect_vocab_error("YQ== 0\n\nYg== x\n",
                       ":3: bad rank (expected an integer from 0 to 2147483647)");
    expect_vocab_error("YQ== 0\nYQ== 1\n", ":2: token listed twice");
    expect_vocab_error("YQ== -1\n", ":1: bad rank (expected an integer from 0 to 2147483647)");
    expect_vocab_error("\n\n", ": no tokens");

    relay_tokenizer_t *t = NULL;
    relay_error_t err = {0};
    assert_int_equal(relay_tokenizer_new(&t, "/nonexistent/vocab.tiktoken", &err),
                     RELAY_ERR_CONFIG);
    assert_non_null(strstr(err.message, "/nonexistent/vocab.tiktoken: cannot open"));

    /* NULL path: the heuristic, and it says so. */
    assert_int_equal(relay_tokenizer_new(&t, NULL, &err), 0);
    assert_false(relay_tokenizer_is_bpe(t));
    assert_int_equal(count(t, "The quick brown fox jumps over the lazy dog."),
                     count(NULL, "The quick brown fox jumps over the lazy dog."));
    relay_tokenizer_free(t);
    relay_tokenizer_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heuristic_empty),
        cmocka_unit_test(test_heuristic_english),
        cmocka_unit_test(test_heuristic_monotone),
        cmocka_unit_test(test_heuristic_cjk_heavier),
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_request_documented_example),
        cmocka_unit_test(test_request_grows_with_content),
        cmocka_unit_test(test_request_malformed),
        cmocka_unit_test(test_request_fast_answers),
        cmocka_unit_test(test_request_fast_declines),
        cmocka_unit_test(test_bpe_exact),
        cmocka_unit_test(test_bpe_capped_output),
        cmocka_unit_test(test_bpe_request),
        cmocka_unit_test(test_vocab_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
