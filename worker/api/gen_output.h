/* Reading a chat generation's text as it streams: reasoning split off first (--reasoning-parser),
 * then tool calls parsed out of what remains (the model's family, --tool-call-parser), so that
 * the native /generate frames carry content, reasoning_content and tool_calls deltas
 * (docs/PROTOCOL.md). */
#ifndef SLUICE_WORKER_GEN_OUTPUT_H
#define SLUICE_WORKER_GEN_OUTPUT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/strbuf.h"
#include "worker/api/request_struct.h"

struct worker;
struct gen_output;

/* What one event's text became. */
struct gen_output_piece {
    struct strbuf content;
    struct strbuf reasoning;
    json_t *tool_calls; /* OpenAI streaming deltas (tools.h), NULL when none */
};
void gen_output_piece_free(struct gen_output_piece *p);

/* NULL when there is nothing to read (no tools, no reasoning): the text is all content.
 * *failed is set when it could not be made (out of memory). */
struct gen_output *gen_output_new(const struct gen_output_opts *o, bool *failed);
void gen_output_free(struct gen_output *g);
/* Reads the next text (whole UTF-8 characters); final: the generation ended, give everything.
 * Returns 0, or -1 when out of memory. */
int gen_output_push(struct gen_output *g, const char *text, size_t len, bool final, struct gen_output_piece *out);
/* Tool calls made so far. */
int gen_output_calls(const struct gen_output *g);

/* worker/api/output_setup.c: at start-up, after the model, tokenizer, chat template and
 * backend are loaded: the tool-call family (--tool-call-parser, or the one the chat template
 * writes), --reasoning-parser, whether their markers are special tokens, and, where the
 * backend applies token masks, the grammar vocabulary and compile cache. Returns 0, or -1
 * with err set. */
int worker_output_setup(struct worker *w, char *err, size_t errlen);
void worker_output_free(struct worker *w);

#endif
