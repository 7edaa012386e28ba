#include "worker/api/request_parse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "worker/api/worker.h"

/* A 400 naming the field. */
static int invalid(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
    return 400;
}

/* A number in [lo, hi], or (lo, hi] with open_lo, when present; returns 0 or 400. */
static int get_number(const json_t *body, const char *key, double lo, double hi, bool open_lo, double *out,
                      struct json_field_error *err)
{
    return json_get_number_range(body, key, false, lo, hi, open_lo, out, err) == JSON_FIELD_INVALID ? 400 : 0;
}

/* Exactly one of prompt, prompt_token_ids or messages. */
int worker_tokenize_prompt(struct worker *w, const json_t *body, int32_t **ids, size_t *n,
                           char **prompt_text, struct json_field_error *err)
{
    json_t *prompt = json_object_get(body, "prompt");
    json_t *token_ids = json_object_get(body, "prompt_token_ids");
    json_t *messages = json_object_get(body, "messages");
    int given = (prompt && !json_is_null(prompt)) + (token_ids && !json_is_null(token_ids)) +
                (messages && !json_is_null(messages));
    *prompt_text = NULL;
    if (given != 1)
        return invalid(err, "prompt", "give exactly one of 'prompt', 'prompt_token_ids' or 'messages'");

    if (token_ids && !json_is_null(token_ids)) {
        if (!json_is_array(token_ids) || json_array_size(token_ids) == 0)
            return invalid(err, "prompt_token_ids", "'prompt_token_ids' must be a non-empty array of token ids");
        size_t count = json_array_size(token_ids);
        int32_t *out = malloc(count * sizeof *out);
        int vocab = w->model->config.vocab_size;
        for (size_t i = 0; i < count; i++) {
            json_t *v = json_array_get(token_ids, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
                free(out);
                json_field_fail(err, "prompt_token_ids", "'prompt_token_ids' must hold integers in [0, %d)", vocab);
                return 400;
            }
            out[i] = (int32_t)json_integer_value(v);
        }
        char *text = NULL;
        size_t text_len = 0;
        tok_decode(w->tok, out, count, false, &text, &text_len);
        *prompt_text = text;
        *ids = out;
        *n = count;
        return 0;
    }

    bool add_special = true;
    char *text = NULL;
    if (messages && !json_is_null(messages)) {
        bool add_generation_prompt = true;
        if (json_get_bool(body, "add_generation_prompt", false, &add_generation_prompt, err) ==
            JSON_FIELD_INVALID)
            return 400;
        json_t *tools = json_object_get(body, "tools");
        json_t *kwargs = json_object_get(body, "chat_template_kwargs");
        if (tools && !json_is_null(tools) && !json_is_array(tools))
            return invalid(err, "tools", "'tools' must be an array");
        if (kwargs && !json_is_null(kwargs) && !json_is_object(kwargs))
            return invalid(err, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
        int rc = chat_format_render(&w->chat, messages, json_is_array(tools) ? tools : NULL,
                                    json_is_object(kwargs) ? kwargs : NULL, add_generation_prompt, &text, err);
        if (rc != 0) return rc;
        add_special = w->chat.add_special_tokens;
    } else {
        if (!json_is_string(prompt)) return invalid(err, "prompt", "'prompt' must be a string");
        text = strdup(json_string_value(prompt));
    }
    if (json_get_bool(body, "add_special_tokens", false, &add_special, err) == JSON_FIELD_INVALID) {
        free(text);
        return 400;
    }
    if (tok_encode(w->tok, text, strlen(text), add_special, ids, n) != 0) {
        free(text);
        return invalid(err, "prompt", "the prompt could not be tokenized");
    }
    *prompt_text = text;
    return 0;
}

int worker_unsupported(struct worker *w, const char *param, const char *what, struct json_field_error *err)
{
    json_field_fail(err, param, "%s not supported on the %s backend yet", what, w->backend->name);
    return 400;
}

int worker_truncate_prompt(struct worker *w, const json_t *body, int32_t *ids, size_t *n, char **prompt_text,
                           struct json_field_error *err)
{
    int64_t keep = 0;
    int rc = json_get_int(body, "truncate_prompt_tokens", false, -1, INT32_MAX, &keep, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc != JSON_FIELD_OK) return 0;
    if (keep == 0)
        return invalid(err, "truncate_prompt_tokens", "'truncate_prompt_tokens' must be -1 (the context length) or >= 1");
    if (keep > w->max_model_len) {
        json_field_fail(err, "truncate_prompt_tokens", "'truncate_prompt_tokens' (%lld) is more than this model's "
                        "context length (%d)", (long long)keep, w->max_model_len);
        return 400;
    }
    if (keep < 0) keep = w->max_model_len;
    if ((int64_t)*n <= keep) return 0;
    /* The prompt's end is kept, as vLLM keeps it: the question comes last. */
    memmove(ids, ids + (*n - (size_t)keep), (size_t)keep * sizeof *ids);
    *n = (size_t)keep;
    if (prompt_text) {
        char *text = NULL;
        size_t len = 0;
        tok_decode(w->tok, ids, *n, false, &text, &len);
        free(*prompt_text);
        *prompt_text = text;
    }
    return 0;
}

/* OpenAI's logit_bias into the request: ids as decimal strings (the last of "7" and "07"
 * wins), biases in [-100, 100]. */
static int parse_logit_bias(struct worker *w, const json_t *body, int64_t vocab, struct engine_request *r,
                            struct json_field_error *err)
{
    int rc = json_check_logit_bias(body, "logit_bias", vocab, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    json_t *obj = json_object_get(body, "logit_bias");
    if (rc != JSON_FIELD_OK || json_object_size(obj) == 0) return 0;
    if (!w->backend->supports_logit_bias) return worker_unsupported(w, "logit_bias", "logit_bias is", err);
    size_t n = json_object_size(obj);
    r->bias_ids = malloc(n * sizeof *r->bias_ids);
    r->bias_values = malloc(n * sizeof *r->bias_values);
    if (!r->bias_ids || !r->bias_values) return invalid(err, "logit_bias", "out of memory reading 'logit_bias'");
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int32_t id = (int32_t)strtol(key, NULL, 10);
        int32_t at = 0;
        while (at < r->n_bias && r->bias_ids[at] != id) at++;
        if (at == r->n_bias) r->n_bias++;
        r->bias_ids[at] = id;
        r->bias_values[at] = (float)json_number_value(v);
    }
    return 0;
}

static int parse_stops(const json_t *body, int64_t vocab, struct engine_request *r, struct json_field_error *err)
{
    json_t *stop = json_object_get(body, "stop");
    if (stop && json_is_string(stop)) {
        if (json_string_length(stop) > 0) r->stop[r->n_stop++] = strdup(json_string_value(stop));
    } else if (stop && json_is_array(stop)) {
        if (json_array_size(stop) > ENGINE_MAX_STOPS)
            return invalid(err, "stop", "'stop' may hold at most 16 strings");
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s) {
            if (!json_is_string(s)) return invalid(err, "stop", "'stop' must be a string or an array of strings");
            if (json_string_length(s) > 0) r->stop[r->n_stop++] = strdup(json_string_value(s));
        }
    } else if (stop && !json_is_null(stop)) {
        return invalid(err, "stop", "'stop' must be a string or an array of strings");
    }
    /* An id outside the vocabulary can never be sampled: a caller who sent one made a
     * mistake worth telling, not a stop that silently never fires. */
    int rc = json_check_token_ids(body, "stop_token_ids", ENGINE_MAX_STOPS, vocab, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(body, "stop_token_ids"), i, v)
            r->stop_ids[r->n_stop_ids++] = (int32_t)json_integer_value(v);
    }
    return 0;
}

int gen_params_parse(struct worker *w, const json_t *body, struct gen_params *out,
                     struct json_field_error *err)
{
    memset(out, 0, sizeof *out);
    out->logprobs = -1;
    struct engine_request *r = calloc(1, sizeof *r);
    out->req = r;
    r->skip_special = true;
    struct sampling_params *s = &r->sampling;
    double temperature = 1.0, top_p = 1.0, min_p = 0.0, rep = 1.0, presence = 0.0, frequency = 0.0;
    int64_t top_k = -1, max_tokens = -1, seed = 0, logprobs = -1;

#define NUM(key, lo, hi, open_lo, dst) \
    if (get_number(body, key, lo, hi, open_lo, &dst, err)) return 400
    NUM("temperature", 0.0, 2.0, false, temperature);
    NUM("top_p", 0.0, 1.0, true, top_p);
    NUM("min_p", 0.0, 1.0, false, min_p);
    NUM("repetition_penalty", 0.0, 2.0, true, rep);
    NUM("presence_penalty", -2.0, 2.0, false, presence);
    NUM("frequency_penalty", -2.0, 2.0, false, frequency);
#undef NUM
    if (json_get_int(body, "top_k", false, -1, 1 << 20, &top_k, err) == JSON_FIELD_INVALID) return 400;
    /* FastChat's name first, then OpenAI's: whichever the caller used. */
    if (json_get_int(body, "max_new_tokens", false, 1, INT32_MAX, &max_tokens, err) == JSON_FIELD_INVALID)
        return 400;
    if (json_get_int(body, "max_tokens", false, 1, INT32_MAX, &max_tokens, err) == JSON_FIELD_INVALID)
        return 400;
    int rc = json_get_int(body, "seed", false, INT64_MIN, INT64_MAX, &seed, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    r->has_seed = rc == JSON_FIELD_OK;
    if (json_get_int(body, "logprobs", false, 0, SAMPLER_MAX_TOP_LOGPROBS, &logprobs, err) == JSON_FIELD_INVALID)
        return 400;
    if (json_get_bool(body, "ignore_eos", false, &r->ignore_eos, err) == JSON_FIELD_INVALID) return 400;
    if (json_get_bool(body, "echo", false, &out->echo, err) == JSON_FIELD_INVALID) return 400;
    if (json_get_bool(body, "skip_special_tokens", false, &r->skip_special, err) == JSON_FIELD_INVALID)
        return 400;
    /* Our detokenizer is Hugging Face's fast one, which puts no spaces between special tokens
     * either way: so is vLLM's output with such tokenizers, whatever this says. */
    bool spaces_between_special = true;
    if (json_get_bool(body, "spaces_between_special_tokens", false, &spaces_between_special, err) ==
        JSON_FIELD_INVALID)
        return 400;
    if (json_get_bool(body, "include_stop_str_in_output", false, &r->include_stop_str, err) == JSON_FIELD_INVALID)
        return 400;
    int64_t vocab = w->model->config.vocab_size;
    if (parse_stops(body, vocab, r, err)) return 400;
    if (parse_logit_bias(w, body, vocab, r, err)) return 400;
    int64_t min_tokens = 0;
    if (json_get_int(body, "min_tokens", false, 0, INT32_MAX, &min_tokens, err) == JSON_FIELD_INVALID) return 400;
    /* Only what min_tokens holds back needs the sampler's help: with ignore_eos and no stop
     * token ids it changes nothing. */
    if (min_tokens > 0 && !w->backend->supports_suppress && (!r->ignore_eos || r->n_stop_ids > 0))
        return worker_unsupported(w, "min_tokens", "min_tokens is", err);
    r->min_tokens = (int32_t)min_tokens;
    int64_t prompt_top = -1;
    if (json_get_int(body, "prompt_logprobs", false, 0, SAMPLER_MAX_TOP_LOGPROBS, &prompt_top, err) ==
        JSON_FIELD_INVALID)
        return 400;
    const char *salt = NULL;
    int rc_salt = json_get_string(body, "cache_salt", false, &salt, err);
    if (rc_salt == JSON_FIELD_INVALID) return 400;
    /* Only requests with the same salt share cached blocks (a tenant's prefixes stay its own). */
    if (rc_salt == JSON_FIELD_OK && *salt) r->cache_salt = hash_mix64(hash_fnv1a_str(HASH_FNV1A_INIT, salt)) | 1;

    s->temperature = (float)temperature;
    s->top_p = (float)top_p;
    s->top_k = (int)top_k;
    s->min_p = (float)min_p;
    s->repetition_penalty = (float)rep;
    s->presence_penalty = (float)presence;
    s->frequency_penalty = (float)frequency;
    s->seed = (uint64_t)seed;
    s->logprobs = (int)logprobs;
    out->logprobs = (int)logprobs;
    /* Echo with logprobs gives the prompt's tokens their logprobs too (the first one null), as
     * OpenAI's completions and FastChat's worker do; prompt_logprobs asks them outright. */
    if (prompt_top >= 0 || (out->echo && logprobs >= 0)) {
        if (!w->backend->supports_prompt_logprobs)
            return prompt_top >= 0 ? worker_unsupported(w, "prompt_logprobs", "prompt_logprobs are", err)
                                   : worker_unsupported(w, "echo", "echo with logprobs (the prompt's logprobs) is", err);
        r->prompt_logprobs = true;
        r->prompt_top_logprobs = (int32_t)(prompt_top > logprobs ? prompt_top : logprobs);
    }

    /* response_format, guided_*, tools: the grammar and how the output is read (request_struct.c). */
    if (gen_struct_parse(&w->output_env, body, r, &out->output, err)) return 400;

    size_t n = 0;
    int status = worker_tokenize_prompt(w, body, &r->prompt, &n, &out->prompt_text, err);
    if (status) return status;
    status = worker_truncate_prompt(w, body, r->prompt, &n, &out->prompt_text, err);
    if (status) return status;
    r->n_prompt = (int32_t)n;
    const char *prompt_param = json_object_get(body, "messages") ? "messages"
                             : json_object_get(body, "prompt_token_ids") ? "prompt_token_ids" : "prompt";
    if (r->n_prompt < 1)
        return invalid(err, prompt_param, "the prompt is empty: it must hold at least one token");
    int ctx = w->max_model_len;
    if (r->n_prompt >= ctx) {
        json_field_fail(err, prompt_param, "This model's maximum context length is %d tokens. However, your prompt has %d "
                 "tokens, which leaves no room for the completion. Please shorten the prompt.",
                 ctx, r->n_prompt);
        return 400;
    }
    if (max_tokens < 0) {
        max_tokens = ctx - r->n_prompt;
    } else if (r->n_prompt + max_tokens > ctx) {
        json_field_fail(err, "max_tokens", "This model's maximum context length is %d tokens. However, you requested %lld "
                 "tokens (%d in the prompt, %lld for the completion). Please reduce the prompt "
                 "or max_tokens.",
                 ctx, (long long)(r->n_prompt + max_tokens), r->n_prompt, (long long)max_tokens);
        return 400;
    }
    r->max_tokens = (int32_t)max_tokens;
    if (r->min_tokens > r->max_tokens) {
        json_field_fail(err, "min_tokens", "'min_tokens' (%d) must not be more than max_tokens (%d)", r->min_tokens,
                        r->max_tokens);
        return 400;
    }
    if (r->prompt_logprobs) {
        out->prompt_ids = malloc((size_t)r->n_prompt * sizeof *out->prompt_ids);
        if (!out->prompt_ids) return invalid(err, NULL, "out of memory");
        memcpy(out->prompt_ids, r->prompt, (size_t)r->n_prompt * sizeof *out->prompt_ids);
        out->n_prompt_ids = r->n_prompt;
    }
    return 0;
}

void gen_params_free(struct gen_params *p)
{
    if (p->req) engine_request_free(p->req);
    free(p->prompt_text);
    free(p->prompt_ids);
    gen_output_opts_free(&p->output);
    memset(p, 0, sizeof *p);
}
