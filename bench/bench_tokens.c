/* bench_tokens: speed of the token counter over a ~50 KB Messages body, next to a memchr baseline.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "relay/tokens.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A request like a coding agent sends: prose, code and a tool schema, about 50 KB. */
static char *make_body(size_t *len)
{
    static const char *const parts[] = {
        "Please review the following function and explain what it does, step by step. ",
        ("static int parse(const char *s, size_t n) { for (size_t i = 0; i < n; i++) "
         "{ if (s[i] == '\\\\n') return (int)i; } return -1; }\\n"),
        "The quick brown fox jumps over the lazy dog; 12 of 345 tests passed in 6.78 s. ",
        "日本語のテキストも少し含めます。",
    };
    relay_buf_t b;
    relay_buf_init(&b, 1 << 20);
    relay_buf_appends(&b, "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":8192,\"stream\":true,"
                          "\"system\":\"You are a careful coding assistant.\",\"messages\":[");
    for (int m = 0; m < 72; m++) {
        relay_buf_printf(&b, "%s{\"role\":\"%s\",\"content\":\"", m ? "," : "",
                         m % 2 ? "assistant" : "user");
        for (int k = 0; k < 8; k++)
            relay_buf_appends(&b, parts[(m + k) % 4]);
        relay_buf_appends(&b, "\"}");
    }
    relay_buf_appends(&b, "],\"tools\":[{\"name\":\"read_file\",\"description\":\"Reads a file\","
                          "\"input_schema\":{\"type\":\"object\",\"properties\":{\"path\":"
                          "{\"type\":\"string\"}},\"required\":[\"path\"]}}]}");
    *len = b.len;
    return relay_buf_detach(&b);
}

typedef struct run {
    double secs;
    long iters;
    int64_t tokens; /* of one pass */
} run_t;

/* Repeats one pass for about 0.5 s. */
static run_t timed(int64_t (*pass)(const relay_tokenizer_t *, const char *, size_t),
                   const relay_tokenizer_t *t, const char *s, size_t len)
{
    run_t r = {0, 0, 0};
    double start = now_s();
    do {
        r.tokens = pass(t, s, len);
        r.iters++;
        r.secs = now_s() - start;
    } while (r.secs < 0.5);
    return r;
}

static volatile size_t sink;

/* The baseline: one strlen and one memchr sweep over the same bytes, as cheap as a pass gets. */
static int64_t pass_memchr(const relay_tokenizer_t *t, const char *s, size_t len)
{
    (void)t;
    size_t n = strlen(s), spaces = 0;
    for (const char *p = s; (p = memchr(p, ' ', (size_t)(s + len - p))) != NULL; p++)
        spaces++;
    sink = n + spaces;
    return (int64_t)spaces;
}

static int64_t pass_text(const relay_tokenizer_t *t, const char *s, size_t len)
{
    return relay_tokens_count_text(t, s, len);
}

static int64_t pass_request(const relay_tokenizer_t *t, const char *s, size_t len)
{
    relay_request_info_t info;
    if (relay_tokens_count_request(t, s, len, &info) != 0)
        return -1;
    return info.input_tokens_estimate;
}

static void report(const char *name, run_t r, size_t len, int64_t tokens_for_rate)
{
    double per_pass = r.secs / (double)r.iters;
    printf("%-28s %9.1f us/pass %9.1f MB/s %12.0f tokens/s  (tokens %lld)\n", name, per_pass * 1e6,
           (double)len / per_pass / 1e6, (double)tokens_for_rate / per_pass, (long long)r.tokens);
}

int main(int argc, char **argv)
{
    size_t len;
    char *body = make_body(&len);
    printf("body: %zu bytes (usage: %s [vocab.tiktoken] adds the BPE counter)\n", len, argv[0]);

    run_t base = timed(pass_memchr, NULL, body, len);
    run_t heur = timed(pass_text, NULL, body, len);
    run_t req = timed(pass_request, NULL, body, len);
    /* The baseline counts no tokens: its rate is given in the heuristic's tokens for the same
     * bytes, so the columns compare directly. */
    report("baseline strlen+memchr", base, len, heur.tokens);
    report("heuristic count_text", heur, len, heur.tokens);
    report("heuristic count_request", req, len, req.tokens);
    printf("heuristic vs baseline: %.1fx slower\n",
           (heur.secs / (double)heur.iters) / (base.secs / (double)base.iters));

    if (argc > 1) {
        relay_tokenizer_t *t = NULL;
        relay_error_t err;
        if (relay_tokenizer_new(&t, argv[1], &err) != 0) {
            fprintf(stderr, "%s\n", err.message);
            free(body);
            return 1;
        }
        run_t bpe = timed(pass_text, t, body, len);
        run_t breq = timed(pass_request, t, body, len);
        report("bpe count_text", bpe, len, bpe.tokens);
        report("bpe count_request", breq, len, breq.tokens);
        printf("heuristic vs bpe on this body: %+.1f%%\n",
               100.0 * (double)(heur.tokens - bpe.tokens) / (double)bpe.tokens);
        relay_tokenizer_free(t);
    }
    free(body);
    return 0;
}
