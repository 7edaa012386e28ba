/* POST /v1/chat/completions: messages and chat's logprobs / top_logprobs. */
#include <stdio.h>
#include <string.h>

#include "common/utf8.h"
#include "gateway/validate.h"

/* A 400 naming the field. */
static int bad(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
    return 400;
}

static bool role_known(const char *role)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer", "function"};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (!strcmp(role, roles[i])) return true;
    return false;
}

static int check_content(const json_t *content, bool may_be_null, struct json_field_error *err)
{
    if (json_is_string(content)) return 0;
    if (!content || json_is_null(content))
        return may_be_null ? 0 : bad(err, "messages", "each message needs 'content'");
    if (!json_is_array(content))
        return bad(err, "messages", "'content' must be a string or an array of content parts");
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type) return bad(err, "messages", "each content part must be an object with a 'type'");
        if (strcmp(type, "text") != 0)
            return bad(err, "messages", "only content parts of type 'text' are supported");
        if (!json_is_string(json_object_get(part, "text")))
            return bad(err, "messages", "a text content part needs a 'text' string");
    }
    return 0;
}

static int check_messages(const json_t *body, json_t *base, struct json_field_error *err)
{
    json_t *messages = NULL;
    if (json_get_array(body, "messages", true, &messages, err) != JSON_FIELD_OK) return 400;
    if (json_array_size(messages) == 0) return bad(err, "messages", "'messages' must not be empty");
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg) {
        if (!json_is_object(msg))
            return bad(err, "messages", "each message must be an object with 'role' and 'content'");
        const char *role = json_string_value(json_object_get(msg, "role"));
        if (!role) return bad(err, "messages", "each message needs a 'role' string");
        if (!role_known(role)) {
            char shown[64];
            json_field_fail(err, "messages", "unknown message role '%s'",
                            utf8_clip(shown, sizeof shown, role, json_string_length(json_object_get(msg, "role"))));
            return 400;
        }
        /* An assistant turn that only called tools has null content. */
        if (check_content(json_object_get(msg, "content"), !strcmp(role, "assistant"), err)) return 400;
    }
    json_object_set(base, "messages", messages);
    return 0;
}

static int check_logprobs(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    bool want = false;
    if (json_get_bool(body, "logprobs", false, &want, err) == JSON_FIELD_INVALID) return 400;
    int64_t top = 0;
    int rc = json_get_int(body, "top_logprobs", false, 0, GW_MAX_LOGPROBS, &top, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (rc == JSON_FIELD_OK && !want)
        return bad(err, "top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    out->logprobs = want ? (int)top : -1;
    if (want) json_object_set_new(out->base, "logprobs", json_integer(top));
    return 0;
}

/* What the worker's chat template takes besides messages: vLLM's chat_template_kwargs
 * (enable_thinking...) and add_generation_prompt, passed through when well-typed; tools are
 * gw_validate_tools's. */
static int check_template_inputs(const json_t *body, json_t *base, struct json_field_error *err)
{
    json_t *kwargs = NULL;
    bool add_generation_prompt = true;
    if (json_get_object(body, "chat_template_kwargs", false, &kwargs, err) == JSON_FIELD_INVALID) return 400;
    int rc = json_get_bool(body, "add_generation_prompt", false, &add_generation_prompt, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (kwargs) json_object_set(base, "chat_template_kwargs", kwargs);
    if (rc == JSON_FIELD_OK) json_object_set_new(base, "add_generation_prompt", json_boolean(add_generation_prompt));
    return 0;
}

int gw_validate_chat(const json_t *body, struct gw_params *out, struct json_field_error *err)
{
    memset(out, 0, sizeof *out);
    out->api = GW_API_CHAT;
    out->n_prompts = 1;
    out->logprobs = -1;
    out->base = json_object();
    if (gw_check_fields(body, GW_API_CHAT, err) || gw_validate_common(body, out, err) ||
        check_messages(body, out->base, err) || check_template_inputs(body, out->base, err) ||
        gw_validate_tools(body, out->base, err) || gw_validate_structured(body, out->base, err) ||
        check_logprobs(body, out, err)) {
        gw_params_free(out);
        return 400;
    }
    return 0;
}
