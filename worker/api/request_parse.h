/* Generation requests (native /generate and FastChat's /worker_generate*) from JSON to an
 * engine request: the prompt rendered and tokenized, sampling validated, the context checked. */
#ifndef SLUICE_WORKER_REQUEST_PARSE_H
#define SLUICE_WORKER_REQUEST_PARSE_H

#include <jansson.h>
#include <stdbool.h>

#include "common/json_util.h"
#include "worker/api/request_struct.h"
#include "worker/engine/engine.h"

struct worker;

struct gen_params {
    struct engine_request *req; /* owned until submitted */
    bool echo;
    int logprobs;               /* -1: none */
    char *prompt_text;          /* the prompt as text (for echo), malloc'd */
    /* The first frame carries the prompt tokens' logprobs: asked as prompt_logprobs (vLLM's),
     * or by echo with logprobs (completions, FastChat), as req->prompt_logprobs says. */
    int32_t *prompt_ids;        /* the prompt's tokens, for those entries (malloc'd) */
    int32_t n_prompt_ids;
    struct gen_output_opts output; /* tool calls and reasoning to read out of the text */
};

/* Returns 0, or an HTTP status (400) with err filled. */
int gen_params_parse(struct worker *w, const json_t *body, struct gen_params *out,
                     struct json_field_error *err);
void gen_params_free(struct gen_params *p);

/* Prompt text -> ids, the way every endpoint does it. */
int worker_tokenize_prompt(struct worker *w, const json_t *body, int32_t **ids, size_t *n,
                           char **prompt_text, struct json_field_error *err);

/* vLLM's truncate_prompt_tokens (k >= 1, or -1 for the context length): keeps the last k
 * tokens of ids (and, when prompt_text is not NULL, its text decoded again). Returns 0, or
 * 400 with err filled. */
int worker_truncate_prompt(struct worker *w, const json_t *body, int32_t *ids, size_t *n, char **prompt_text,
                           struct json_field_error *err);

/* The 400 for a parameter the backend does not compute yet (never ignored). */
int worker_unsupported(struct worker *w, const char *param, const char *what, struct json_field_error *err);

#endif
