/* Every top-level field of a request, looked up in one table: what the OpenAI API and vLLM
 * accept, per endpoint. A field we know but cannot honour (beam search, a suffix, client chat
 * templates...) is a 400 naming it, never ignored; a field nobody defines is ignored with a
 * warning in the log, once per name per process (as vLLM warns), so that a client's typo is
 * visible to the operator without breaking clients that send extensions. */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/strmap.h"
#include "common/utf8.h"
#include "gateway/validate.h"

enum {
    CHAT = 1 << GW_API_CHAT,
    CMPL = 1 << GW_API_COMPLETION,
    EMB = 1 << GW_API_EMBEDDING,
    TOK = 1 << GW_API_TOKENIZE,
    DETOK = 1 << GW_API_DETOKENIZE,
    GEN = CHAT | CMPL,
};

/* How a field that cannot be honoured reads when it asks nothing of us: absent, null, false,
 * an empty string, list or object, or the value it defaults to. */
enum refuse {
    OK = 0,          /* handled (validated where it is read), or changes nothing we answer */
    UNLESS_EMPTY,    /* refused unless null, false, "", [] or {} */
    UNLESS_ONE,      /* refused unless 1 (a factor or a count whose default is 1) */
    UNLESS_ZERO,     /* refused unless 0 */
    UNLESS_TEXT,     /* refused unless ["text"] (output modalities) */
};

struct field {
    const char *name;
    unsigned apis;
    enum refuse refuse;
    const char *why; /* the 400's message, for a refused field */
};

static const struct field fields[] = {
    /* OpenAI's, both generation endpoints. */
    {"model", GEN | EMB | TOK | DETOK, OK, NULL},
    {"stream", GEN, OK, NULL},
    {"stream_options", GEN, OK, NULL},
    {"n", GEN, OK, NULL},
    {"max_tokens", GEN, OK, NULL},
    {"temperature", GEN, OK, NULL},
    {"top_p", GEN, OK, NULL},
    {"stop", GEN, OK, NULL},
    {"seed", GEN, OK, NULL},
    {"presence_penalty", GEN, OK, NULL},
    {"frequency_penalty", GEN, OK, NULL},
    {"logit_bias", GEN, OK, NULL},
    {"logprobs", GEN, OK, NULL},
    {"user", GEN | EMB, OK, NULL},
    /* Chat's. tools, tool_choice, response_format and the reasoning fields belong to the chat
     * template, structured output and tool calling, which read them. */
    {"messages", CHAT | TOK, OK, NULL},
    {"max_completion_tokens", CHAT, OK, NULL},
    {"top_logprobs", CHAT, OK, NULL},
    {"tools", CHAT | TOK, OK, NULL},
    {"tool_choice", CHAT, OK, NULL},
    {"parallel_tool_calls", CHAT, OK, NULL},
    /* OpenAI's deprecated form of tools: refused until tool calling maps it onto tools. */
    {"functions", CHAT, UNLESS_EMPTY, "'functions' is not supported: use 'tools'"},
    {"function_call", CHAT, UNLESS_EMPTY, "'function_call' is not supported: use 'tool_choice'"},
    {"response_format", GEN, OK, NULL},
    {"reasoning_effort", CHAT, OK, NULL},
    {"include_reasoning", CHAT, OK, NULL},
    /* Bookkeeping that changes no output: stored completions, metadata, tiers, cache keys. */
    {"store", CHAT, OK, NULL},
    {"metadata", CHAT, OK, NULL},
    {"service_tier", GEN, OK, NULL},
    {"safety_identifier", GEN, OK, NULL},
    {"prompt_cache_key", GEN, OK, NULL},
    {"modalities", CHAT, UNLESS_TEXT, "only text output is supported ('modalities' must be [\"text\"])"},
    {"audio", CHAT, UNLESS_EMPTY, "audio output is not supported"},
    {"prediction", CHAT, UNLESS_EMPTY, "predicted outputs ('prediction') are not supported"},
    {"web_search_options", CHAT, UNLESS_EMPTY, "web search is not supported"},
    {"verbosity", CHAT, UNLESS_EMPTY, "'verbosity' is not supported"},
    /* Completions'. */
    {"prompt", CMPL | TOK, OK, NULL},
    {"echo", CMPL, OK, NULL},
    {"suffix", CMPL, UNLESS_EMPTY, "'suffix' (fill in the middle) is not supported"},
    {"best_of", GEN, OK, NULL},
    /* Embeddings'. */
    {"input", EMB, OK, NULL},
    {"encoding_format", EMB, OK, NULL},
    {"dimensions", EMB, OK, NULL},
    /* vLLM's sampling extensions. */
    {"top_k", GEN, OK, NULL},
    {"min_p", GEN, OK, NULL},
    {"repetition_penalty", GEN, OK, NULL},
    {"min_tokens", GEN, OK, NULL},
    {"stop_token_ids", GEN, OK, NULL},
    {"ignore_eos", GEN, OK, NULL},
    {"include_stop_str_in_output", GEN, OK, NULL},
    {"skip_special_tokens", GEN, OK, NULL},
    {"spaces_between_special_tokens", GEN, OK, NULL},
    {"truncate_prompt_tokens", GEN | EMB, OK, NULL},
    {"prompt_logprobs", GEN, OK, NULL},
    {"add_special_tokens", GEN | EMB | TOK, OK, NULL},
    {"cache_salt", GEN, OK, NULL},
    {"add_generation_prompt", CHAT | TOK, OK, NULL},
    {"chat_template_kwargs", CHAT | TOK, OK, NULL},
    /* vLLM's tokenize and detokenize. */
    {"tokens", DETOK, OK, NULL},
    {"return_token_strs", TOK, UNLESS_EMPTY, "'return_token_strs' is not supported"},
    {"guided_json", GEN, OK, NULL},
    {"guided_regex", GEN, OK, NULL},
    {"guided_choice", GEN, OK, NULL},
    {"guided_grammar", GEN, OK, NULL},
    {"guided_decoding_backend", GEN, OK, NULL},
    {"guided_whitespace_pattern", GEN, OK, NULL},
    {"structural_tag", GEN, OK, NULL},
    {"use_beam_search", GEN, UNLESS_EMPTY, "beam search ('use_beam_search') is not supported"},
    {"length_penalty", GEN, UNLESS_ONE, "'length_penalty' applies to beam search, which is not supported"},
    {"allowed_token_ids", GEN, UNLESS_EMPTY, "'allowed_token_ids' is not supported; use 'logit_bias'"},
    {"bad_words", GEN, UNLESS_EMPTY, "'bad_words' is not supported; use 'logit_bias'"},
    {"logits_processors", GEN, UNLESS_EMPTY, "custom logits processors are not supported"},
    {"return_tokens_as_token_ids", GEN, UNLESS_EMPTY, "'return_tokens_as_token_ids' is not supported"},
    {"return_token_ids", GEN, UNLESS_EMPTY, "'return_token_ids' is not supported"},
    {"prompt_embeds", CMPL, UNLESS_EMPTY, "'prompt_embeds' is not supported"},
    {"priority", GEN | EMB, UNLESS_ZERO, "request priorities are not supported ('priority' must be 0)"},
    {"echo", CHAT, UNLESS_EMPTY, "'echo' is not supported for chat"},
    {"continue_final_message", CHAT | TOK, UNLESS_EMPTY, "'continue_final_message' is not supported"},
    {"chat_template", CHAT | TOK, UNLESS_EMPTY, "a request's own 'chat_template' is not accepted: the worker's is used"},
    {"documents", CHAT, UNLESS_EMPTY, "'documents' are not supported"},
    {"mm_processor_kwargs", GEN | EMB, UNLESS_EMPTY, "multimodal inputs are not supported"},
    {"kv_transfer_params", GEN, UNLESS_EMPTY, "'kv_transfer_params' is not supported"},
    {"vllm_xargs", GEN, UNLESS_EMPTY, "'vllm_xargs' is not supported"},
    {"normalize", EMB, OK, NULL},
};

static bool is_empty(const json_t *v)
{
    return !v || json_is_null(v) || json_is_false(v) || (json_is_string(v) && json_string_length(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0) || (json_is_object(v) && json_object_size(v) == 0);
}

static bool refused(const struct field *f, const json_t *v)
{
    switch (f->refuse) {
    case OK: return false;
    case UNLESS_EMPTY: return !is_empty(v);
    case UNLESS_ONE: return !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 1.0);
    case UNLESS_ZERO: return !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0);
    case UNLESS_TEXT:
        return !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 1 &&
                                     json_is_string(json_array_get(v, 0)) &&
                                     !strcmp(json_string_value(json_array_get(v, 0)), "text"));
    }
    return false;
}

/* Names warned about so far: each once. A client sending ever new names stops the warnings at
 * this many (with one last line saying so) rather than grow the table or flood the log. */
#define MAX_WARNED 512
static strmap *warned;
static bool warned_full;

static void warn_unknown(const char *name, size_t len, const char *endpoint)
{
    char shown[80];
    utf8_clip(shown, sizeof shown, name, len);
    /* A client's bytes in the log: no control character may forge or break a line. */
    for (char *p = shown; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    if (warned_full || (!warned && strmap_init(&warned) != 0)) return;
    if (strmap_get(warned, shown)) return;
    if (strmap_count(warned) >= MAX_WARNED) {
        warned_full = true;
        log_warn("requests carry more than %d distinct unknown fields: no more warnings about them", MAX_WARNED);
        return;
    }
    if (strmap_put(warned, shown, (void *)1) != 0) return;
    log_warn("%s: ignoring the unknown field '%s' (warned once per field name)", endpoint, shown);
}

int gw_check_fields(const json_t *body, enum gw_api api, struct json_field_error *err)
{
    static const char *const endpoints[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize",
                                            "/detokenize"};
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        const struct field *f = NULL;
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && !f; i++)
            if ((fields[i].apis & (1u << api)) && !strcmp(fields[i].name, key)) f = &fields[i];
        if (!f) {
            warn_unknown(key, strlen(key), endpoints[api]);
            continue;
        }
        if (refused(f, v)) {
            json_field_fail(err, key, "%s", f->why);
            return 400;
        }
    }
    return 0;
}

bool gw_field_warned(const char *name)
{
    return warned && strmap_get(warned, name) != NULL;
}
