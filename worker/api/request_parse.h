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
    struct gen_output_opts output; /* tool calls and reasoning to read out of the text */
};

/* Returns 0, or an HTTP status (400) with err filled. */
int gen_params_parse(struct worker *w, const json_t *body, struct gen_params *out,
                     struct json_field_error *err);
void gen_params_free(struct gen_params *p);

/* Prompt text -> ids, the way every endpoint does it. */
int worker_tokenize_prompt(struct worker *w, const json_t *body, int32_t **ids, size_t *n,
                           char **prompt_text, struct json_field_error *err);

#endif
