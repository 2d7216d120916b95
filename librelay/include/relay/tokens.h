/* tokens: counts the tokens of a text or a Messages request, by heuristic or by real BPE. */
#ifndef RELAY_TOKENS_H
#define RELAY_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "relay/relay.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A token counter. Without a vocabulary it is a heuristic (see docs/tokens.md for the method and
 * its measured error); with a tiktoken-format vocabulary it runs byte-level BPE after the GPT-2
 * pre-tokenisation pattern, which is what Anthropic's published (legacy) Claude tokenizer uses.
 * Thread safety: read-only after relay_tokenizer_new, so any number of threads may count with one
 * tokenizer at once; relay_tokenizer_free must run alone.
 */
typedef struct relay_tokenizer relay_tokenizer_t;

/* Longest line accepted in a vocabulary file. */
#define RELAY_TOKENS_MAX_LINE 4096

/*
 * vocab_path NULL: the built-in heuristic. Else a tiktoken-format file, one "base64token rank"
 * line each (blank lines ignored): real BPE, merging by rank. Errors name the file and line
 * ("vocab.tiktoken:12: bad base64"). *out is freed with relay_tokenizer_free.
 */
RELAY_API int relay_tokenizer_new(relay_tokenizer_t **out, const char *vocab_path,
                                  relay_error_t *err);
/* Accepts NULL. */
RELAY_API void relay_tokenizer_free(relay_tokenizer_t *t);
/* 1 when t counts with a vocabulary (BPE), 0 for the heuristic (t NULL included). */
RELAY_API int relay_tokenizer_is_bpe(const relay_tokenizer_t *t);

/* Tokens of text (UTF-8; invalid bytes count too). t NULL: the heuristic. Never negative. */
RELAY_API int64_t relay_tokens_count_text(const relay_tokenizer_t *t, const char *text, size_t len);

/*
 * BPE only: the token ranks of text into ids (at most cap of them; a byte missing from the
 * vocabulary gives -1). *n gets the number of tokens, which may exceed cap (then only the first
 * cap are written). RELAY_ERR_INVALID when t has no vocabulary.
 */
RELAY_API int relay_tokens_encode(size_t *n, int32_t *ids, size_t cap, const relay_tokenizer_t *t,
                                  const char *text, size_t len);

/* What a Messages request body says about its cost. */
typedef struct relay_request_info {
    int64_t input_tokens_estimate;
    int64_t max_tokens; /* 0 when absent */
    int stream;
    char model[128];
    char user_id[256]; /* metadata.user_id ("" when absent; longer ones are cut) */
} relay_request_info_t;

/*
 * Estimates the input tokens of a Messages request body (system, messages' text / tool_use /
 * tool_result / thinking content, images at a fixed cost, tools' names, descriptions and schemas,
 * plus per-message and tool-use overheads) and reports max_tokens, model and the stream flag.
 * RELAY_ERR_INVALID when body is not a JSON object (*out then untouched).
 */
RELAY_API int relay_tokens_count_request(const relay_tokenizer_t *t, const char *body, size_t len,
                                         relay_request_info_t *out);

#ifdef __cplusplus
}
#endif
#endif
