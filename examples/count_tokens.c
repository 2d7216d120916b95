/* count_tokens: estimates the input tokens of a Messages request body, as the relay does. */
/*
 * Usage: count_tokens [--vocab FILE] BODY_FILE|-
 *        count_tokens [--vocab FILE] --text TEXT_FILE|-
 * No relay_t is needed: the token counter stands alone (a heuristic, or real BPE with a
 * tiktoken-format vocabulary). Prints one line a script can parse:
 *   input_tokens=42 max_tokens=1024 model=claude-sonnet-4-5 stream=0 method=heuristic
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <relay/relay.h>
#include <relay/tokens.h>

/* Bodies up to 32 MiB, the relay's own default limit. */
#define INPUT_MAX ((size_t)32 << 20)

/* Reads at most INPUT_MAX bytes of path ("-": stdin) into a malloc'd buffer. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap || cap >= INPUT_MAX)
            break;
        size_t ncap = cap * 2 > INPUT_MAX ? INPUT_MAX : cap * 2;
        char *nb = realloc(buf, ncap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
        } else {
            buf = nb;
            cap = ncap;
        }
    }
    int failed = !buf || ferror(f) || (n == cap && fgetc(f) != EOF);
    if (f != stdin)
        fclose(f);
    if (failed) {
        fprintf(stderr, "count_tokens: %s: unreadable or larger than %zu bytes\n", path,
                (size_t)INPUT_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int count(const relay_tokenizer_t *t, const char *path, int text_mode)
{
    size_t len = 0;
    char *in = read_all(path, &len);
    if (!in)
        return 1;
    const char *method = relay_tokenizer_is_bpe(t) ? "bpe" : "heuristic";
    int rc = 0;
    if (text_mode) {
        printf("tokens=%lld method=%s\n", (long long)relay_tokens_count_text(t, in, len), method);
    } else {
        relay_request_info_t info;
        rc = relay_tokens_count_request(t, in, len, &info);
        if (rc == 0)
            printf("input_tokens=%lld max_tokens=%lld model=%s stream=%d method=%s\n",
                   (long long)info.input_tokens_estimate, (long long)info.max_tokens,
                   info.model[0] ? info.model : "-", info.stream, method);
        else
            fprintf(stderr, "count_tokens: %s: %s (not a JSON object)\n", path, relay_strerror(rc));
    }
    free(in);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *vocab = NULL, *path = NULL;
    int text_mode = 0, bad = argc < 2;
    for (int i = 1; i < argc && !bad; i++) {
        if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc)
            vocab = argv[++i];
        else if (strcmp(argv[i], "--text") == 0)
            text_mode = 1;
        else if (!path)
            path = argv[i];
        else
            bad = 1; /* one input per run */
    }
    if (bad || !path) {
        fprintf(stderr, "usage: count_tokens [--vocab FILE] [--text] FILE|-\n");
        return 2;
    }
    relay_tokenizer_t *t = NULL;
    relay_error_t err = {0};
    if (vocab && relay_tokenizer_new(&t, vocab, &err) != 0) {
        fprintf(stderr, "count_tokens: %s\n", err.message);
        return 1;
    }
    int rc = count(t, path, text_mode);
    relay_tokenizer_free(t);
    return rc;
}
