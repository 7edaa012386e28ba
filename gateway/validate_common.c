/* Fields both OpenAI endpoints share: model, sampling, stop, n, seed, streaming options. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/validate.h"

/* A 400 naming the field. */
static int bad(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
    return 400;
}

/* Copies a present, validated field into the upstream body. */
static void pass(json_t *base, const json_t *body, const char *key, const char *as)
{
    json_t *v = json_object_get(body, key);
    if (v && !json_is_null(v)) json_object_set(base, as ? as : key, v);
}

static int check_number(const json_t *body, const char *key, double lo, double hi, bool open_lo,
                        json_t *base, struct json_field_error *err)
{
    double d = 0;
    int rc = json_get_number_range(body, key, false, lo, hi, open_lo, &d, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc != JSON_FIELD_OK) return 0;
    pass(base, body, key, NULL);
    return 0;
}

static int check_stop(const json_t *body, json_t *base, struct json_field_error *err)
{
    json_t *stop = json_object_get(body, "stop");
    if (!stop || json_is_null(stop)) return 0;
    if (json_is_string(stop)) {
        json_object_set(base, "stop", stop);
        return 0;
    }
    if (!json_is_array(stop)) return bad(err, "stop", "'stop' must be a string or an array of strings");
    if (json_array_size(stop) > GW_MAX_STOPS)
        return bad(err, "stop", "'stop' may hold at most 4 sequences");
    size_t i;
    json_t *s;
    json_array_foreach(stop, i, s) {
        if (!json_is_string(s)) return bad(err, "stop", "'stop' must be a string or an array of strings");
    }
    json_object_set(base, "stop", stop);
    return 0;
}

static int check_stream(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    if (json_get_bool(body, "stream", false, &out->stream, err) == JSON_FIELD_INVALID) return 400;
    json_t *opts = NULL;
    int rc = json_get_object(body, "stream_options", false, &opts, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) {
        if (!out->stream)
            return bad(err, "stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (json_get_bool(opts, "include_usage", false, &out->include_usage, err) == JSON_FIELD_INVALID) {
            snprintf(err->param, sizeof err->param, "stream_options.include_usage");
            return 400;
        }
    }
    return 0;
}

int gw_validate_common(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    const char *model = NULL;
    if (json_get_string(body, "model", true, &model, err) != JSON_FIELD_OK) return 400;
    if (!*model) return bad(err, "model", "'model' must not be empty");
    out->model = strdup(model);
    json_t *base = out->base;

    int64_t v = 0;
    int rc = json_get_int(body, "n", false, 1, GW_MAX_N, &v, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    out->n = rc == JSON_FIELD_OK ? (int)v : 1;

    /* Chat's newer name wins over the older one when both are given, as OpenAI documents. */
    const char *max_keys[] = {"max_tokens", "max_completion_tokens"};
    for (int k = 0; k < 2; k++) {
        rc = json_get_int(body, max_keys[k], false, 1, INT32_MAX, &v, err);
        if (rc == JSON_FIELD_INVALID) return 400;
        if (rc == JSON_FIELD_OK) json_object_set_new(base, "max_tokens", json_integer(v));
    }

    if (check_number(body, "temperature", 0.0, 2.0, false, base, err)) return 400;
    if (check_number(body, "top_p", 0.0, 1.0, true, base, err)) return 400;
    if (check_number(body, "presence_penalty", -2.0, 2.0, false, base, err)) return 400;
    if (check_number(body, "frequency_penalty", -2.0, 2.0, false, base, err)) return 400;
    if (check_number(body, "min_p", 0.0, 1.0, false, base, err)) return 400;
    if (check_number(body, "repetition_penalty", 0.0, 2.0, true, base, err)) return 400;

    rc = json_get_int(body, "top_k", false, -1, 1 << 20, &v, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) pass(base, body, "top_k", NULL);

    rc = json_get_int(body, "seed", false, INT64_MIN, INT64_MAX, &out->seed, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    out->has_seed = rc == JSON_FIELD_OK;

    bool b;
    if (json_get_bool(body, "ignore_eos", false, &b, err) == JSON_FIELD_INVALID) return 400;
    pass(base, body, "ignore_eos", NULL);
    const char *user;
    if (json_get_string(body, "user", false, &user, err) == JSON_FIELD_INVALID) return 400;

    /* vLLM's: passed on when well-typed; the worker checks them against the model and its
     * backend (a backend that cannot honour one answers 400 naming it). */
    rc = json_get_int(body, "min_tokens", false, 0, INT32_MAX, &v, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) pass(base, body, "min_tokens", NULL);
    rc = json_get_int(body, "truncate_prompt_tokens", false, -1, INT32_MAX, &v, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK && v == 0)
        return bad(err, "truncate_prompt_tokens", "'truncate_prompt_tokens' must be -1 (the context length) or >= 1");
    if (rc == JSON_FIELD_OK) pass(base, body, "truncate_prompt_tokens", NULL);
    rc = json_get_int(body, "prompt_logprobs", false, 0, GW_MAX_LOGPROBS, &v, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    out->prompt_logprobs = rc == JSON_FIELD_OK ? (int)v : -1;
    if (rc == JSON_FIELD_OK) pass(base, body, "prompt_logprobs", NULL);
    static const char *const flags[] = {"include_stop_str_in_output", "skip_special_tokens",
                                        "spaces_between_special_tokens", "add_special_tokens"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (json_get_bool(body, flags[i], false, &b, err) == JSON_FIELD_INVALID) return 400;
        pass(base, body, flags[i], NULL);
    }
    const char *salt;
    if (json_get_string(body, "cache_salt", false, &salt, err) == JSON_FIELD_INVALID) return 400;
    pass(base, body, "cache_salt", NULL);
    int64_t best_of = 0;
    rc = json_get_int(body, "best_of", false, 1, GW_MAX_N, &best_of, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK && best_of != out->n)
        return bad(err, "best_of", "'best_of' other than n is not supported (it needs the choices ranked by their "
                   "logprobs, which is not done)");

    if (check_stop(body, base, err)) return 400;
    /* Token ids: the shape and sign here; whether an id is in the model's vocabulary only the
     * worker knows, and its 400 (naming the same field) comes back to the client as is. */
    rc = json_check_token_ids(body, "stop_token_ids", GW_MAX_STOP_TOKEN_IDS, 0, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) pass(base, body, "stop_token_ids", NULL);
    rc = json_check_logit_bias(body, "logit_bias", 0, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK) pass(base, body, "logit_bias", NULL);
    if (check_stream(body, out, err)) return 400;
    return 0;
}

void gw_params_free(struct gw_params *p)
{
    free(p->model);
    json_decref(p->prompts);
    json_decref(p->base);
    memset(p, 0, sizeof *p);
}

size_t gw_params_choice_count(const struct gw_params *p)
{
    return p->n_prompts * (size_t)p->n;
}

json_t *gw_params_upstream_body(const struct gw_params *p, size_t choice)
{
    json_t *body = json_deep_copy(p->base);
    size_t prompt = choice / (size_t)p->n, j = choice % (size_t)p->n;
    if (p->api == GW_API_COMPLETION) {
        json_t *pr = json_array_get(p->prompts, prompt);
        json_object_set(body, json_is_string(pr) ? "prompt" : "prompt_token_ids", pr);
    }
    if (p->has_seed)
        json_object_set_new(body, "seed", json_integer((json_int_t)((uint64_t)p->seed + j)));
    return body;
}
