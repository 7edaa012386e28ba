/* Validation of OpenAI request bodies into what the gateway sends upstream.
 *
 * A validated request holds the model, the streaming options, how many choices to run and,
 * for each choice, everything needed to build the worker's POST /generate body. Bad input
 * returns 400 with err naming the field, so the handler answers in OpenAI's shape. */
#ifndef SLUICE_GATEWAY_VALIDATE_H
#define SLUICE_GATEWAY_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/json_util.h"

/* The endpoints whose bodies are validated here: the two generation APIs (what struct
 * gw_params holds), then those gw_check_fields also knows. */
enum gw_api { GW_API_CHAT = 0, GW_API_COMPLETION = 1, GW_API_EMBEDDING = 2, GW_API_TOKENIZE = 3, GW_API_DETOKENIZE = 4 };

enum { GW_MAX_N = 128, GW_MAX_STOPS = 4, GW_MAX_LOGPROBS = 20, GW_MAX_STOP_TOKEN_IDS = 16,
       GW_MAX_EMBEDDING_INPUTS = 2048 };

struct gw_params {
    enum gw_api api;
    char *model;
    bool stream;
    bool include_usage;  /* stream_options.include_usage */
    int n;               /* choices per prompt */
    size_t n_prompts;    /* 1 for chat; completions may carry a list of prompts */
    json_t *prompts;     /* completions: array of prompts (string or token-id array) */
    json_t *base;        /* the /generate fields shared by every choice (chat: with messages) */
    bool has_seed;
    int64_t seed;
    int logprobs;        /* -1: none; otherwise alternatives per token */
    bool echo;           /* completions */
    int prompt_logprobs; /* vLLM's prompt_logprobs: -1 none; otherwise alternatives per token */
};

/* Both return 0, or 400 with err filled. On error *out is left freed. */
int gw_validate_chat(const json_t *body, struct gw_params *out, struct json_field_error *err);
int gw_validate_completion(const json_t *body, struct gw_params *out, struct json_field_error *err);
void gw_params_free(struct gw_params *p);

/* Fields shared by both APIs (sampling, stop, stream options); used by the two above. */
int gw_validate_common(const json_t *body, struct gw_params *out, struct json_field_error *err);

/* Every top-level field against what the endpoint knows (validate_fields.c): a field known
 * but not honoured (beam search, a suffix...) is 400 naming it; an unknown one is ignored with
 * a warning in the log, once per name per process. Returns 0 or 400 with err filled. */
int gw_check_fields(const json_t *body, enum gw_api api, struct json_field_error *err);
/* Whether an unknown field of that name was warned about (tests). */
bool gw_field_warned(const char *name);

/* POST /v1/embeddings: model, input (a string, strings, token ids or token-id lists),
 * encoding_format, dimensions, truncate_prompt_tokens; into the worker's /embed body (a new
 * reference in *upstream) and the model name (malloc'd). Returns 0 or 400 with err filled. */
int gw_validate_embeddings(const json_t *body, char **model, json_t **upstream, struct json_field_error *err);

/* gateway/validate_tools.c: chat's tools, tool_choice and parallel_tool_calls; both APIs'
 * response_format, guided_json, guided_regex, guided_choice, guided_grammar and
 * structured_outputs (at most one of them). Checked, then copied into base. */
int gw_validate_tools(const json_t *body, json_t *base, struct json_field_error *err);
int gw_validate_structured(const json_t *body, json_t *base, struct json_field_error *err);

size_t gw_params_choice_count(const struct gw_params *p);
/* The POST /generate body for choice i (index = prompt * n + j): base fields, the prompt,
 * and seed + j when seeded. A new reference. */
json_t *gw_params_upstream_body(const struct gw_params *p, size_t choice);

#endif
