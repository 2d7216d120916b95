/* tokens_internal: the request estimate's fixed costs and its two readers, which tests and fuzz
 * targets hold to each other. */
#ifndef RELAY_TOKENS_INTERNAL_H
#define RELAY_TOKENS_INTERNAL_H

#include "relay/tokens.h"

/*
 * Fixed costs, documented in docs/tokens.md: Anthropic adds a tool-use system prompt when tools
 * are present (346 tokens with tool_choice auto/none, 313 with any/tool, for current models), an
 * image costs about width*height/750 tokens with at most ~1.15 megapixels kept, so ~1600 at most.
 */
#define REQ_BASE_TOKENS       3
#define REQ_MESSAGE_TOKENS    4
#define REQ_TOOL_TOKENS       8
#define REQ_TOOL_PROMPT_AUTO  346
#define REQ_TOOL_PROMPT_FORCE 313
#define REQ_IMAGE_TOKENS      1600
#define REQ_PDF_BYTES_PER_TOK 20

/* The reader without jansson: 1 when it answered (*out filled exactly as the jansson reader
 * would fill it), 0 when the body must go to jansson (which may then find it invalid). */
int relay_tokens_count_request_fast(const relay_tokenizer_t *t, const char *body, size_t len,
                                    relay_request_info_t *out);
/* relay_tokens_count_request through jansson alone. */
int relay_tokens_count_request_jansson(const relay_tokenizer_t *t, const char *body, size_t len,
                                       relay_request_info_t *out);

#endif
