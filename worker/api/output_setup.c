/* Start-up of structured output and output parsing (gen_output.h): runs before the loop does,
 * so building the grammar vocabulary (tens of milliseconds at 150k tokens) and rendering the
 * template's probe delay nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "worker/api/gen_output.h"
#include "worker/api/worker.h"

/* Compiled grammars kept for reuse: each holds its positions' classification. */
#define GRAMMAR_CACHE_ENTRIES 64

/* Whether text is one special token of this tokenizer (so decoding with skip_special drops it). */
static bool is_special_token(const struct tokenizer *tok, const char *text)
{
    int32_t *ids = NULL;
    size_t n = 0;
    bool special = tok_encode(tok, text, strlen(text), false, &ids, &n) == 0 && n == 1 && tok_is_special(tok, ids[0]);
    free(ids);
    return special;
}

static bool any_special(const struct tokenizer *tok, const char *const *markers)
{
    for (; *markers; markers++)
        if (is_special_token(tok, *markers)) return true;
    return false;
}

/* The family the chat template writes calls in: its rendering of a turn that calls a tool. */
static bool detect_family(struct worker *w, enum tool_family *out)
{
    json_t *tools = tool_family_probe_tools();
    bool found = false;
    for (int attempt = 0; attempt < 2 && !found; attempt++) {
        json_t *messages = tool_family_probe_messages(attempt == 1);
        char *text = NULL;
        struct json_field_error err = {{0}, {0}};
        if (chat_format_render(&w->chat, messages, tools, NULL, false, &text, &err) == 0)
            found = tool_family_detect(text, TOOL_FAMILY_PROBE_NAME, out) == 0;
        free(text);
        json_decref(messages);
    }
    json_decref(tools);
    return found;
}

int worker_output_setup(struct worker *w, char *err, size_t errlen)
{
    struct gen_struct_env *env = &w->output_env;
    memset(env, 0, sizeof *env);
    env->backend = w->backend->name;
    const char *tp = w->opt.tool_call_parser;
    if (tp && *tp && strcmp(tp, "auto") != 0) {
        if (tool_family_from_name(tp, &env->tool_family) != 0) {
            snprintf(err, errlen,
                     "--tool-call-parser must be auto, json, llama3_json, hermes (qwen), mistral or deepseek_v3, not '%s'",
                     tp);
            return -1;
        }
        log_info("tool calls: %s (--tool-call-parser)", tool_family_name(env->tool_family));
    } else if (detect_family(w, &env->tool_family)) {
        log_info("tool calls: %s (as the chat template writes them)", tool_family_name(env->tool_family));
    } else {
        env->tool_family = TOOL_FAMILY_JSON;
        log_info("tool calls: json (the chat template shows no tool-call syntax; --tool-call-parser chooses another)");
    }
    const char *rp = w->opt.reasoning_parser;
    if (rp && *rp && reasoning_family_from_name(rp, &env->reasoning) != 0) {
        snprintf(err, errlen, "--reasoning-parser must be qwen3, deepseek_r1 or none, not '%s'", rp);
        return -1;
    }
    env->tool_keep_special = any_special(w->tok, tool_family_markers(env->tool_family));
    env->reasoning_keep_special = env->reasoning != REASONING_NONE && any_special(w->tok, reasoning_markers());

    if (!w->backend->supports_token_mask) {
        log_info("structured output: not on the %s backend yet (requests that ask for it get 400)", w->backend->name);
        return 0;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int32_t stops[MODEL_MAX_EOS];
    const struct model_config *cfg = &w->model->config;
    for (int i = 0; i < cfg->n_eos; i++) stops[i] = cfg->eos_ids[i];
    char gerr[256] = "";
    if (grammar_vocab_from_tokenizer(&w->grammar_vocab, w->tok, stops, (size_t)cfg->n_eos, gerr, sizeof gerr) != 0 ||
        grammar_cache_new(&w->grammar_cache, w->grammar_vocab, GRAMMAR_CACHE_ENTRIES) != 0) {
        snprintf(err, errlen, "cannot build the structured-output vocabulary: %s", gerr[0] ? gerr : "out of memory");
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    env->cache = w->grammar_cache;
    log_info("structured output: %d tokens' bytes indexed in %.0f ms", grammar_vocab_size(w->grammar_vocab),
             (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    return 0;
}

void worker_output_free(struct worker *w)
{
    grammar_cache_free(w->grammar_cache);
    grammar_vocab_free(w->grammar_vocab);
    w->grammar_cache = NULL;
    w->grammar_vocab = NULL;
}
