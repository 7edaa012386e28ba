/* POST /v1/embeddings: OpenAI's input shapes and options into the worker's /embed body. */
#include <string.h>

#include "gateway/validate.h"

/* A 400 naming the field. */
static int bad(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
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

static int check_input(const json_t *input, struct json_field_error *err)
{
    static const char shapes[] = "'input' must be a non-empty string, a list of them, a list of token ids or a list of "
                                 "token-id lists";
    if (!input || json_is_null(input)) return bad(err, "input", "'input' is a required field");
    if (json_is_string(input)) return json_string_length(input) ? 0 : bad(err, "input", shapes);
    if (!json_is_array(input) || json_array_size(input) == 0) return bad(err, "input", shapes);
    const json_t *first = json_array_get(input, 0);
    if (json_is_integer(first)) return is_token_list(input) ? 0 : bad(err, "input", shapes);
    if (json_array_size(input) > GW_MAX_EMBEDDING_INPUTS)
        return bad(err, "input", "'input' may hold at most 2048 inputs");
    size_t i;
    json_t *v;
    json_array_foreach(input, i, v) {
        bool ok = json_is_string(first) ? json_is_string(v) && json_string_length(v) > 0 : is_token_list(v);
        if (!ok) return bad(err, "input", shapes);
    }
    return 0;
}

int gw_validate_embeddings(const json_t *body, char **model, json_t **upstream, struct json_field_error *err)
{
    *model = NULL;
    *upstream = NULL;
    if (gw_check_fields(body, GW_API_EMBEDDING, err)) return 400;
    const char *name = NULL;
    if (json_get_string(body, "model", true, &name, err) != JSON_FIELD_OK) return 400;
    if (!*name) return bad(err, "model", "'model' must not be empty");
    json_t *input = json_object_get(body, "input");
    if (check_input(input, err)) return 400;
    const char *format = "float", *user = NULL;
    if (json_get_string(body, "encoding_format", false, &format, err) == JSON_FIELD_INVALID) return 400;
    if (strcmp(format, "float") && strcmp(format, "base64"))
        return bad(err, "encoding_format", "'encoding_format' must be 'float' or 'base64'");
    if (json_get_string(body, "user", false, &user, err) == JSON_FIELD_INVALID) return 400;
    int64_t v = 0;
    int rc_dims = json_get_int(body, "dimensions", false, 1, INT32_MAX, &v, err);
    if (rc_dims == JSON_FIELD_INVALID) return 400;
    int rc_trunc = json_get_int(body, "truncate_prompt_tokens", false, -1, INT32_MAX, &v, err);
    if (rc_trunc == JSON_FIELD_INVALID) return 400;
    if (rc_trunc == JSON_FIELD_OK && v == 0)
        return bad(err, "truncate_prompt_tokens", "'truncate_prompt_tokens' must be -1 (the context length) or >= 1");
    bool normalize = true, add_special = true;
    int rc_special = json_get_bool(body, "add_special_tokens", false, &add_special, err);
    if (rc_special == JSON_FIELD_INVALID || json_get_bool(body, "normalize", false, &normalize, err) == JSON_FIELD_INVALID)
        return 400;
    if (!normalize) return bad(err, "normalize", "embeddings are always L2-normalised ('normalize' must be true)");
    json_t *up = json_pack("{s:O, s:s}", "input", input, "encoding_format", format);
    if (!up) return bad(err, NULL, "out of memory");
    if (rc_dims == JSON_FIELD_OK) json_object_set(up, "dimensions", json_object_get(body, "dimensions"));
    if (rc_trunc == JSON_FIELD_OK)
        json_object_set(up, "truncate_prompt_tokens", json_object_get(body, "truncate_prompt_tokens"));
    if (rc_special == JSON_FIELD_OK) json_object_set_new(up, "add_special_tokens", json_boolean(add_special));
    *model = strdup(name);
    *upstream = up;
    return 0;
}
