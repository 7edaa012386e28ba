/* A generation request's structured output and tools: response_format (and vLLM's guided_*
 * and structured_outputs), tools, tool_choice and parallel_tool_calls, read into the grammar
 * the engine constrains the output with and into how the output is read back (tool calls,
 * reasoning; worker/api/gen_output.c). */
#ifndef SLUICE_WORKER_REQUEST_STRUCT_H
#define SLUICE_WORKER_REQUEST_STRUCT_H

#include <jansson.h>
#include <stdbool.h>

#include "common/json_util.h"
#include "worker/engine/engine.h"
#include "worker/grammar/grammar.h"
#include "worker/tools/tools.h"

/* What the worker was started with (worker/api/output_setup.c). */
struct gen_struct_env {
    struct grammar_cache *cache; /* NULL: the backend cannot apply token masks */
    const char *backend;         /* its name, for the refusal */
    enum tool_family tool_family;
    bool tool_keep_special;      /* the family's markers are special tokens: keep them in the text */
    enum reasoning_family reasoning;
    bool reasoning_keep_special;
};

/* How a request's output is read back. */
struct gen_output_opts {
    bool tools;                  /* tool calls are parsed out of the text */
    bool tools_forced;           /* a grammar makes the output calls only */
    enum tool_family tool_family;
    json_t *tool_names;          /* the request's function names (owned) */
    bool reasoning;              /* <think> is split off */
    bool reasoning_from_start;
};

/* Reads the fields into r (r->grammar, r->skip_special) and out. Returns 0, or 400 with err
 * naming the field: malformed, two constraints at once, a schema or grammar that does not
 * compile, or any constraint on a backend without token masks (before generation starts). */
int gen_struct_parse(const struct gen_struct_env *env, const json_t *body, struct engine_request *r,
                     struct gen_output_opts *out, struct json_field_error *err);
void gen_output_opts_free(struct gen_output_opts *o);

#endif
