/* POST /v1/completions: the four prompt shapes, logprobs as an int, echo. */
#include <stdio.h>
#include <string.h>

#include "gateway/validate.h"

/* A 400 about the prompt. */
static int bad(struct json_field_error *err, const char *msg)
{
    json_field_fail(err, "prompt", "%s", msg);
    return 400;
}

static bool is_token_list(const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0) return false;
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t) {
        if (!json_is_integer(t) || json_integer_value(t) < 0) return false;
    }
    return true;
}

/* prompt: a string, a list of strings, a list of token ids, or a list of token-id lists.
 * Each becomes one entry of out->prompts. */
static int check_prompt(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    json_t *prompt = json_object_get(body, "prompt");
    if (!prompt || json_is_null(prompt)) return bad(err, "'prompt' is a required field");
    out->prompts = json_array();
    if (json_is_string(prompt)) {
        json_array_append(out->prompts, prompt);
    } else if (json_is_array(prompt)) {
        if (json_array_size(prompt) == 0) return bad(err, "'prompt' must not be empty");
        json_t *first = json_array_get(prompt, 0);
        if (json_is_integer(first)) {
            if (!is_token_list(prompt))
                return bad(err, "a token-id 'prompt' must hold only non-negative integers");
            json_array_append(out->prompts, prompt);
        } else {
            size_t i;
            json_t *p;
            json_array_foreach(prompt, i, p) {
                if (json_is_string(p) && json_is_string(first)) {
                    json_array_append(out->prompts, p);
                } else if (json_is_array(p) && json_is_array(first)) {
                    if (!is_token_list(p))
                        return bad(err, "each token-id list in 'prompt' must be a non-empty list of non-negative integers");
                    json_array_append(out->prompts, p);
                } else {
                    return bad(err, "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists");
                }
            }
        }
    } else {
        return bad(err, "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists");
    }
    out->n_prompts = json_array_size(out->prompts);
    if (out->n_prompts * (size_t)out->n > GW_MAX_N) {
        json_field_fail(err, "n", "%zu prompts times n=%d makes more than %d choices", out->n_prompts, out->n, GW_MAX_N);
        return 400;
    }
    return 0;
}

static int check_extras(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    int64_t lp = 0;
    /* Some clients send logprobs: false or null for "none". */
    json_t *v = json_object_get(body, "logprobs");
    if (json_is_false(v)) {
        out->logprobs = -1;
    } else {
        int rc = json_get_int(body, "logprobs", false, 0, GW_MAX_LOGPROBS, &lp, err);
        if (rc == JSON_FIELD_INVALID) return 400;
        out->logprobs = rc == JSON_FIELD_OK ? (int)lp : -1;
    }
    if (out->logprobs >= 0) json_object_set_new(out->base, "logprobs", json_integer(out->logprobs));
    if (json_get_bool(body, "echo", false, &out->echo, err) == JSON_FIELD_INVALID) return 400;
    if (out->echo) json_object_set_new(out->base, "echo", json_true());
    /* suffix, best_of and the rest are refused in validate_fields.c and validate_common.c. */
    return 0;
}

int gw_validate_completion(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    memset(out, 0, sizeof *out);
    out->api = GW_API_COMPLETION;
    out->logprobs = -1;
    out->base = json_object();
    if (gw_check_fields(body, GW_API_COMPLETION, err) || gw_validate_common(body, out, err) ||
        check_prompt(body, out, err) || check_extras(body, out, err) ||
        gw_validate_structured(body, out->base, err)) {
        gw_params_free(out);
        return 400;
    }
    return 0;
}
