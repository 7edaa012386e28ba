/* POST /v1/embeddings: validated, admitted by the rate limits at 4 bytes a token, and sent to
 * a worker serving the model (its /embed), whose answer gains the model's name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/forward.h"
#include "gateway/proxy_frame.h"
#include "gateway/validate.h"

/* The worker's answer, checked: as many vectors as inputs, in order, and a usage count. */
static json_t *answer(const json_t *w, const char *model, void *arg, int64_t *tokens)
{
    size_t n_inputs = (size_t)(uintptr_t)arg;
    const json_t *data = json_object_get(w, "data");
    const json_t *pt = json_object_get(json_object_get(w, "usage"), "prompt_tokens");
    if (!json_is_array(data) || json_array_size(data) != n_inputs || !json_is_integer(pt) ||
        json_integer_value(pt) < 0 || json_integer_value(pt) > GW_FRAME_MAX_COUNT)
        return NULL;
    size_t i;
    const json_t *item;
    json_array_foreach(data, i, item) {
        const json_t *index = json_object_get(item, "index"), *v = json_object_get(item, "embedding");
        if (!json_is_integer(index) || json_integer_value(index) != (json_int_t)i ||
            !(json_is_array(v) || json_is_string(v)))
            return NULL;
    }
    *tokens = json_integer_value(pt);
    return json_pack("{s:s, s:O, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model", model, "usage",
                     "prompt_tokens", (json_int_t)*tokens, "total_tokens", (json_int_t)*tokens);
}

void gw_embeddings(struct gw *g, http_request *req)
{
    static const char route[] = "/v1/embeddings";
    struct json_field_error err = {{0}, {0}};
    size_t len;
    const char *text = http_request_body(req, &len);
    json_t *root = json_parse_object(text, len, &err);
    char *model = NULL;
    json_t *upstream = NULL;
    int status = root ? gw_validate_embeddings(root, &model, &upstream, &err) : 400;
    json_decref(root);
    if (status) {
        gw_respond_error(g, req, route, 400, err.param, "%s", err.message);
        return;
    }
    /* The rate limits see the inputs as completions' prompts: 4 bytes a token, or the ids. */
    json_t *input = json_object_get(upstream, "input");
    bool single = json_is_string(input) || json_is_integer(json_array_get(input, 0));
    struct gw_params p = {.api = GW_API_EMBEDDING, .model = model, .n = 1, .base = json_object(),
                          .prompts = single ? json_pack("[O]", input) : json_incref(input)};
    p.n_prompts = json_array_size(p.prompts);
    struct gw_rl_ticket ticket = {0};
    char why[320];
    size_t key_len;
    const char *key = gw_auth_key_of(g->auth, http_request_header(req, "Authorization"), &key_len);
    bool admitted = gw_rl_admit(g->rl, key, key_len, &p, req, &ticket, why, sizeof why);
    size_t n_inputs = p.n_prompts;
    json_decref(p.prompts);
    json_decref(p.base);
    if (!admitted) {
        gw_metrics_rate_limited(g->metrics, ticket.by_tokens);
        free(model);
        json_decref(upstream);
        gw_respond_error(g, req, route, 429, NULL, "%s", why);
        return;
    }
    struct gw_forward_spec spec = {.route = route, .worker_path = "/embed", .model = model, .body = upstream,
                                   .answer = answer, .arg = (void *)(uintptr_t)n_inputs, .rl = ticket};
    gw_forward(g, req, &spec);
}
