/* vLLM's POST /tokenize ({model, prompt | messages, add_special_tokens, ...} -> {count,
 * max_model_len, tokens}) and POST /detokenize ({model, tokens} -> {prompt}), answered by a
 * worker serving the model with its own tokenizer and chat template. */
#include <stdlib.h>
#include <string.h>

#include "gateway/forward.h"
#include "gateway/proxy_frame.h"
#include "gateway/validate.h"

static bool ids_ok(const json_t *ids)
{
    if (!json_is_array(ids)) return false;
    size_t i;
    const json_t *v;
    json_array_foreach(ids, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > GW_FRAME_MAX_COUNT)
            return false;
    }
    return true;
}

static json_t *tokenize_answer(const json_t *w, const char *model, void *arg, int64_t *tokens)
{
    (void)model, (void)arg;
    const json_t *ids = json_object_get(w, "tokens"), *count = json_object_get(w, "count");
    const json_t *max_len = json_object_get(w, "max_model_len");
    if (!ids_ok(ids) || !json_is_integer(count) || json_integer_value(count) != (json_int_t)json_array_size(ids) ||
        !json_is_integer(max_len) || json_integer_value(max_len) < 1)
        return NULL;
    *tokens = 0;
    return json_pack("{s:O, s:O, s:O}", "count", count, "max_model_len", max_len, "tokens", ids);
}

static json_t *detokenize_answer(const json_t *w, const char *model, void *arg, int64_t *tokens)
{
    (void)model, (void)arg;
    const json_t *prompt = json_object_get(w, "prompt");
    if (!json_is_string(prompt)) return NULL;
    *tokens = 0;
    return json_pack("{s:O}", "prompt", prompt);
}

/* The worker's body: the fields it reads, checked for their types here and for the rest
 * (token ids in the vocabulary, the messages through the chat template) by the worker. */
static int validate(const json_t *body, bool detokenize, char **model, json_t **upstream,
                    struct json_field_error *err)
{
    if (gw_check_fields(body, detokenize ? GW_API_DETOKENIZE : GW_API_TOKENIZE, err)) return 400;
    const char *name = NULL;
    if (json_get_string(body, "model", true, &name, err) != JSON_FIELD_OK) return 400;
    if (!*name) return json_field_fail(err, "model", "'model' must not be empty"), 400;
    json_t *up = json_object();
    if (detokenize) {
        json_t *ids = NULL;
        if (json_get_array(body, "tokens", true, &ids, err) != JSON_FIELD_OK || !ids_ok(ids)) {
            json_decref(up);
            return json_field_fail(err, "tokens", "'tokens' must be a list of token ids (integers >= 0)"), 400;
        }
        json_object_set(up, "tokens", ids);
    } else {
        json_t *prompt = json_object_get(body, "prompt"), *messages = json_object_get(body, "messages");
        bool has_prompt = prompt && !json_is_null(prompt), has_messages = messages && !json_is_null(messages);
        const char *msg = NULL;
        if (has_prompt == has_messages) msg = "give exactly one of 'prompt' and 'messages'";
        else if (has_prompt && !json_is_string(prompt)) msg = "'prompt' must be a string";
        else if (has_messages && (!json_is_array(messages) || json_array_size(messages) == 0))
            msg = "'messages' must be a non-empty list of messages";
        if (msg) {
            json_decref(up);
            return json_field_fail(err, has_messages ? "messages" : "prompt", "%s", msg), 400;
        }
        json_object_set(up, has_prompt ? "prompt" : "messages", has_prompt ? prompt : messages);
        static const struct {
            const char *key;
            int type;
        } extras[] = {{"add_special_tokens", JSON_TRUE}, {"add_generation_prompt", JSON_TRUE},
                      {"chat_template_kwargs", JSON_OBJECT}, {"tools", JSON_ARRAY}};
        for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++) {
            json_t *v = json_object_get(body, extras[i].key);
            if (!v || json_is_null(v)) continue;
            bool ok = extras[i].type == JSON_TRUE ? json_is_boolean(v) : (int)json_typeof(v) == extras[i].type;
            if (!ok) {
                json_decref(up);
                return json_field_fail(err, extras[i].key, "'%s' must be %s", extras[i].key,
                                       extras[i].type == JSON_TRUE ? "a boolean"
                                       : extras[i].type == JSON_OBJECT ? "an object" : "a list"), 400;
            }
            if (has_prompt && i > 0) continue; /* chat's alone */
            json_object_set(up, extras[i].key, v);
        }
    }
    *model = strdup(name);
    *upstream = up;
    return 0;
}

void gw_tokenize(struct gw *g, http_request *req, bool detokenize)
{
    const char *route = detokenize ? "/detokenize" : "/tokenize";
    struct json_field_error err = {{0}, {0}};
    size_t len;
    const char *text = http_request_body(req, &len);
    json_t *root = json_parse_object(text, len, &err);
    char *model = NULL;
    json_t *upstream = NULL;
    int status = root ? validate(root, detokenize, &model, &upstream, &err) : 400;
    json_decref(root);
    if (status) {
        gw_respond_error(g, req, route, 400, err.param, "%s", err.message);
        return;
    }
    struct gw_forward_spec spec = {.route = route, .worker_path = route, .model = model, .body = upstream,
                                   .answer = detokenize ? detokenize_answer : tokenize_answer};
    gw_forward(g, req, &spec);
}
