/* OpenAI response and stream-chunk objects, built from the worker's ndjson frames.
 *
 * Chat and completions differ in their object names, in where text goes (delta/message vs
 * text) and in the shape of logprobs; everything else is shared. */
#ifndef SLUICE_GATEWAY_FORMAT_OPENAI_H
#define SLUICE_GATEWAY_FORMAT_OPENAI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/validate.h"

/* "chatcmpl-" or "cmpl-" followed by 24 random alphanumerics; out must hold 40 bytes. */
void gw_format_id(enum gw_api api, char *out, size_t cap);

/* The chunk envelope: {"id","object","created","model","choices":[]}; with_usage adds
 * "usage": null as OpenAI does on every chunk when include_usage is set. */
json_t *gw_chunk_new(enum gw_api api, const char *id, int64_t created, const char *model,
                     int with_usage);
/* One choice of a stream chunk. Chat: delta {"role"?, "content"?}; completions: "text".
 * text may be NULL (a finish chunk: chat's delta is then {}). logprobs and finish may be NULL;
 * logprobs is stolen. */
json_t *gw_chunk_choice(enum gw_api api, size_t index, const char *role, const char *text,
                        size_t text_len, json_t *logprobs, const char *finish);

/* Adds to a chat chunk choice's delta what a frame had besides content: "reasoning_content"
 * (when reasoning_len > 0) and "tool_calls" (the frame's deltas, when not NULL: each
 * {"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}, copied with only those keys). */
void gw_chat_delta_extras(json_t *choice, const char *reasoning, size_t reasoning_len, const json_t *tool_calls);

/* Tool calls of a non-streamed answer: frames' deltas merged by index (acc is an array this
 * keeps, in order of first appearance: id, type and name from a call's first delta, its
 * arguments concatenated), and the final "tool_calls" array made from it (a new reference). */
void gw_tool_calls_merge(json_t *acc, const json_t *deltas);
json_t *gw_tool_calls_final(const json_t *acc);

json_t *gw_usage_json(int64_t prompt_tokens, int64_t completion_tokens);

/* Chat logprobs {"content":[{"token","logprob","bytes","top_logprobs":[..]}],"refusal":null}
 * from a frame's "logprobs" array. */
json_t *gw_chat_logprobs(const json_t *frame_logprobs);

/* Completions logprobs {"tokens","token_logprobs","top_logprobs","text_offset"}; *offset is the
 * running character offset of the choice's text and moves past each token. An entry whose
 * logprob is null (an echoed prompt's first token) has null for its logprob and its top. */
json_t *gw_completion_logprobs_new(void);
void gw_completion_logprobs_append(json_t *acc, const json_t *frame_logprobs, int64_t *offset);

/* vLLM's prompt_logprobs from a frame's "prompt_logprobs" array: null for the first token,
 * then per token {"<id>": {"logprob", "rank", "decoded_token"}, ...} for it and its
 * alternatives (ranked 1, 2, ... in order). */
json_t *gw_prompt_logprobs(const json_t *frame_prompt_logprobs);

/* Non-streamed response envelope with its choices array, and one of its choices (text and
 * logprobs stolen when non-NULL). */
json_t *gw_response_new(enum gw_api api, const char *id, int64_t created, const char *model);
json_t *gw_response_choice(enum gw_api api, size_t index, const char *text, size_t text_len,
                           json_t *logprobs, const char *finish);
/* Chat's choice with what the worker read out of the text: reasoning (reasoning_content,
 * when reasoning_len > 0) and tool calls (when tool_calls, from gw_tool_calls_final, holds
 * any; content is then null when empty, as OpenAI sends it). tool_calls is stolen. */
json_t *gw_chat_response_choice(size_t index, const char *text, size_t text_len, const char *reasoning,
                                size_t reasoning_len, json_t *tool_calls, json_t *logprobs, const char *finish);

/* Characters (not bytes) in a UTF-8 string, as text_offset counts them. */
int64_t gw_utf8_length(const char *s, size_t len);

#endif
