/* What a chat model writes besides its answer: tool calls in its family's syntax, and reasoning
 * between <think> tags. Streaming parsers turn generated text into OpenAI's pieces (content,
 * tool-call deltas, reasoning), and a grammar builder turns a request's tools into the GBNF
 * that makes the model call them (tool_choice "required" or a named function).
 *
 * Parsers take text as it is generated, in pieces of any size (a marker such as <tool_call>
 * may arrive split over several pieces), and give back what is final so far: text that might
 * still turn out to be part of a marker or of a tool call is held back until it is known, so
 * the pieces they give concatenate to the same result whatever the split.
 *
 * Families (vLLM's --tool-call-parser names):
 *   json         the output is a {"name", "arguments"} object, or an array of them
 *   llama3_json  Llama 3.x: [<|python_tag|>]{"name": ..., "parameters": ...}, calls separated
 *                by ';', at the start of the output
 *   hermes       Hermes 2 Pro, Qwen 2.5 and 3: <tool_call>\n{"name", "arguments"}\n</tool_call>
 *                anywhere in the output, content around them
 *   mistral      [TOOL_CALLS][{"name", "arguments"}, ...], or (newer tokenizers)
 *                [TOOL_CALLS]name[ARGS]{...}
 *   deepseek_v3  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name\n```json\n{...}
 *                \n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
 * Where a call has no marker (json, llama3_json without <|python_tag|>), text is a call only
 * when it is an object whose name is one of the request's tools; otherwise it is content. */
#ifndef SLUICE_WORKER_TOOLS_H
#define SLUICE_WORKER_TOOLS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/strbuf.h"

enum tool_family {
    TOOL_FAMILY_JSON = 0,
    TOOL_FAMILY_LLAMA3_JSON,
    TOOL_FAMILY_HERMES,
    TOOL_FAMILY_MISTRAL,
    TOOL_FAMILY_DEEPSEEK_V3,
    TOOL_FAMILY_COUNT
};

/* "json", "llama3_json", "hermes", "mistral", "deepseek_v3". */
const char *tool_family_name(enum tool_family f);
/* One of the names above (also "qwen" and "qwen3" for hermes); returns 0 or -1. */
int tool_family_from_name(const char *name, enum tool_family *out);
/* The family whose syntax a chat template writes, read off the template's rendering of an
 * assistant turn that calls the tool `name` (tool_family_probe_*): 0 and *out set, or -1
 * when the text shows no syntax we know. */
int tool_family_detect(const char *rendered, const char *name, enum tool_family *out);
/* The probe: tools and messages to render, for tool_family_detect (new references). Templates
 * differ in what an assistant turn that only calls tools holds: content_null chooses null
 * (DeepSeek's template tests for it) or "" (Qwen's reads it as a string). */
#define TOOL_FAMILY_PROBE_NAME "sluice_probe_function"
json_t *tool_family_probe_tools(void);
json_t *tool_family_probe_messages(bool content_null);
/* The texts the family's parser reads that a tokenizer may keep as special tokens (and so
 * drop from decoded text unless asked to keep them): NULL-terminated. */
const char *const *tool_family_markers(enum tool_family f);

/* ---- tool-call parsing --------------------------------------------------------------------- */

/* What a push gives back: content text to append, and the tool-call deltas in OpenAI's
 * streaming form, appended to calls (created on first use):
 *   {"index": i, "id": "call_...", "type": "function", "function": {"name": n, "arguments": ""}}
 * when call i starts (its name known), then {"index": i, "function": {"arguments": "..."}}
 * with each new piece of its arguments (JSON text). Arguments given as a JSON string are
 * passed decoded; a call without arguments gets "{}". */
struct tool_parse_out {
    struct strbuf content;
    json_t *calls;
};
void tool_parse_out_free(struct tool_parse_out *o);

struct tool_parser;

/* names: the request's tool names (an array of strings; NULL accepts any), which a call
 * without a marker must use. forced: the output is calls only, from its first character,
 * without the family's opening marker when that is a special token (a grammar made by
 * tool_grammar_gbnf wrote it). Returns NULL when out of memory. */
struct tool_parser *tool_parser_new(enum tool_family f, const json_t *names, bool forced);
void tool_parser_free(struct tool_parser *p);
/* Returns 0, or -1 when out of memory. */
int tool_parser_push(struct tool_parser *p, const char *text, size_t len, struct tool_parse_out *out);
/* The output ended: what was held back is given (as content where it did not become a call). */
int tool_parser_finish(struct tool_parser *p, struct tool_parse_out *out);
/* Calls started so far. */
int tool_parser_calls(const struct tool_parser *p);

/* ---- forcing calls with a grammar ---------------------------------------------------------- */

/* The GBNF of calls in the family's syntax: exactly one call when !parallel, else one or more;
 * of any tool in tools (an array of OpenAI tools, already checked: each has function.name), or
 * only of the one named only. Each call's arguments follow its function's parameters (a JSON
 * Schema; absent: no arguments, "{}"). A schema the grammar engine cannot take is refused when
 * the function is strict (returns -1, err says why and *bad the tool's index); otherwise the
 * keywords it cannot enforce are dropped (minimum, format, pattern...: the arguments still
 * have the declared shape and types), and where even that fails any JSON object is allowed.
 * Returns 0 and a malloc'd grammar, or -1 (out of memory: *bad is -1). */
int tool_grammar_gbnf(enum tool_family f, const json_t *tools, const char *only, bool parallel, char **gbnf,
                      int *bad, char *err, size_t errlen);
/* A copy of a JSON Schema with only what worker/grammar's JSON Schema front end takes (for a
 * non-strict function's parameters). A new reference. */
json_t *tool_schema_loosen(const json_t *schema);
/* Copies GBNF text with every rule name prefixed by prefix (literals, character classes and
 * comments untouched), so that several grammars' rules can live in one. Returns 0 or -1. */
int tool_gbnf_prefix(const char *gbnf, const char *prefix, struct strbuf *out);
/* Whether name is a function name OpenAI takes: 1 to 64 of a-z A-Z 0-9 _ -. */
bool tool_name_valid(const char *name);

/* ---- reasoning ---------------------------------------------------------------------------- */

enum reasoning_family {
    REASONING_NONE = 0,
    REASONING_QWEN3,       /* <think>...</think> when the output opens with <think> */
    REASONING_DEEPSEEK_R1, /* reasoning from the start (the prompt opened <think>) up to </think> */
};
const char *reasoning_family_name(enum reasoning_family f); /* "qwen3", "deepseek_r1", "none" */
int reasoning_family_from_name(const char *name, enum reasoning_family *out);
/* "<think>", "</think>", NULL */
const char *const *reasoning_markers(void);

struct reasoning_parser;
/* from_start: the output starts inside the reasoning (DeepSeek R1's templates open <think> in
 * the prompt); otherwise reasoning is there only when the output opens with <think>. */
struct reasoning_parser *reasoning_parser_new(bool from_start);
void reasoning_parser_free(struct reasoning_parser *p);
/* Appends what is final to reasoning and to content. Returns 0 or -1 (out of memory). */
int reasoning_parser_push(struct reasoning_parser *p, const char *text, size_t len, struct strbuf *reasoning,
                          struct strbuf *content);
int reasoning_parser_finish(struct reasoning_parser *p, struct strbuf *reasoning, struct strbuf *content);

#endif
