/* The worker's small endpoints: status for the controller, token counting, model details,
 * tokenize/detokenize, health and metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/api/request_parse.h"
#include "worker/api/worker.h"

json_t *worker_status_json(struct worker *w)
{
    json_t *names = json_array();
    for (int i = 0; i < w->n_model_names; i++) json_array_append_new(names, json_string(w->model_names[i]));
    /* The prefix cache's counters ride along (FastChat's controller ignores what it does not
     * know): a controller may route by them. In tokens, as on /metrics. */
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    json_t *pc = json_pack("{s:b, s:I, s:I, s:f, s:i}", "enabled", st.prefix_caching, "query_tokens",
                           (json_int_t)st.prefix_query_tokens, "hit_tokens", (json_int_t)st.prefix_hit_tokens,
                           "hit_rate", worker_prefix_hit_rate(&st), "cached_blocks", st.kv_blocks_cached);
    return json_pack("{s:o, s:f, s:i, s:o}", "model_names", names, "speed", w->opt.speed, "queue_length",
                     w->active, "prefix_cache", pc);
}

void api_worker_get_status(struct worker *w, http_request *req)
{
    http_respond_json(req, 200, worker_status_json(w));
}

static json_t *parse_body(http_request *req)
{
    size_t len;
    const char *body = http_request_body(req, &len);
    struct json_field_error err;
    json_t *root = json_parse_object(body, len, &err);
    if (!root) http_respond_error(req, 400, err.param, "%s", err.message);
    return root;
}

/* Parses the body and tokenizes its prompt, answering the error itself; true when ids are set. */
static bool tokenize_body(struct worker *w, http_request *req, int32_t **ids, size_t *n)
{
    json_t *root = parse_body(req);
    if (!root) return false;
    struct json_field_error err;
    char *text = NULL;
    int status = worker_tokenize_prompt(w, root, ids, n, &text, &err);
    json_decref(root);
    free(text);
    if (status) http_respond_error(req, status, err.param, "%s", err.message);
    return status == 0;
}

void api_count_token(struct worker *w, http_request *req)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (!tokenize_body(w, req, &ids, &n)) return;
    free(ids);
    http_respond_json(req, 200, json_pack("{s:i, s:i}", "count", (int)n, "error_code", 0));
}

void api_model_details(struct worker *w, http_request *req)
{
    http_respond_json(req, 200, json_pack("{s:i}", "context_length", w->max_model_len));
}

/* FastChat's openai_api_server asks this and builds prompts itself with the conversation;
 * chat_template (not FastChat's) carries the Jinja source for clients that can use it. The
 * answer renders the template several times and never changes: it is built once, on the first
 * request. */
void api_conv_template(struct worker *w, http_request *req)
{
    if (!w->fastchat_conv) {
        json_t *conv = chat_format_fastchat_conv(&w->chat, w->tok);
        if (!conv) {
            http_respond_error(req, 500, NULL, "the chat template could not be described as a FastChat conversation");
            return;
        }
        const char *tmpl = tok_chat_template(w->tok);
        json_object_set_new(conv, "chat_template", tmpl ? json_string(tmpl) : json_null());
        w->fastchat_conv = conv;
    }
    http_respond_json(req, 200, json_pack("{s:O}", "conv", w->fastchat_conv));
}

void api_tokenize(struct worker *w, http_request *req)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (!tokenize_body(w, req, &ids, &n)) return;
    json_t *tokens = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(tokens, json_integer(ids[i]));
    free(ids);
    http_respond_json(req, 200, json_pack("{s:o, s:i, s:i}", "tokens", tokens, "count", (int)n,
                                          "max_model_len", w->max_model_len));
}

void api_detokenize(struct worker *w, http_request *req)
{
    json_t *root = parse_body(req);
    if (!root) return;
    struct json_field_error err;
    json_t *tokens = NULL;
    if (json_get_array(root, "tokens", true, &tokens, &err) != JSON_FIELD_OK) {
        json_decref(root);
        http_respond_error(req, 400, err.param, "%s", err.message);
        return;
    }
    size_t n = json_array_size(tokens);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    int vocab = w->model->config.vocab_size;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(tokens, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
            free(ids);
            json_decref(root);
            http_respond_error(req, 400, "tokens", "'tokens' must hold integers in [0, %d)", vocab);
            return;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(root);
    char *text = NULL;
    size_t len = 0;
    tok_decode(w->tok, ids, n, false, &text, &len);
    free(ids);
    http_respond_json(req, 200, json_pack("{s:s%}", "prompt", text ? text : "", len));
    free(text);
}

void api_health(struct worker *w, http_request *req)
{
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    if (st.failed) {
        http_respond_json(req, 503, json_pack("{s:s, s:s}", "status", "error", "error", st.error));
        return;
    }
    http_respond_json(req, 200, json_pack("{s:s, s:s, s:i, s:i}", "status", "ok", "device",
                                          w->backend->name, "running", st.running, "waiting", st.waiting));
}

void api_metrics(struct worker *w, http_request *req)
{
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    size_t len = 0;
    char *text = worker_metrics_render(&w->metrics, &st, w->active, &len);
    if (!text) {
        http_respond_error(req, 500, NULL, "out of memory rendering metrics");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}
