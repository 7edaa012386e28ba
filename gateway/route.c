#include "gateway/route.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/json_util.h"
#include "common/log.h"

struct gw_route {
    gw_ctl_call *call;
    gw_route_cb cb;
    void *user;
    char *address;       /* the first worker named */
    bool answered;       /* some controller answered */
    bool recent;         /* some controller said the model was served lately */
};

/* A controller that names no worker may be one that restarted and has not heard from every
 * worker yet: another healthy one is asked before the answer stands. */
static int judge_route(size_t ctl, const struct http_call_result *res, void *user)
{
    (void)ctl;
    gw_route *r = user;
    if (res->error == HTTP_CALL_OK && res->status == 200) {
        json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
        const char *a = json_string_value(json_object_get(root, "address"));
        int verdict = GW_CTL_FAILED;
        if (a) {
            r->answered = true;
            /* Checked and normalised where it is used (proxy.c's choice_start). */
            if (*a) {
                r->address = strdup(a);
                verdict = GW_CTL_DONE;
            } else {
                r->recent |= json_is_true(json_object_get(root, "recently_served"));
                verdict = GW_CTL_NEXT;
            }
        }
        json_decref(root);
        if (verdict != GW_CTL_FAILED) return verdict;
    }
    if (res->status == 401 || res->status == 403)
        log_error("controller: get_worker_address refused (HTTP %ld): start the gateway with the controller's "
                  "--internal-token", res->status);
    return GW_CTL_FAILED;
}

static void on_route_end(bool done, void *user)
{
    gw_route *r = user;
    int rc = -1;
    if (done && r->address) rc = 0;
    else if (r->answered) rc = r->recent ? GW_ROUTE_RECENT : 0;
    r->cb(rc, rc == 0 && r->address ? r->address : "", r->user);
    free(r->address);
    free(r);
}

int gw_route_start(gw_ctls *ctls, http_client *client, const struct gw_route_opts *o, gw_route_cb cb, void *user,
                   gw_route **out)
{
    *out = NULL;
    gw_route *r = calloc(1, sizeof *r);
    json_t *body = json_pack("{s:s}", "model", o->model);
    if (!r || !body) {
        free(r);
        json_decref(body);
        return -1;
    }
    r->cb = cb;
    r->user = user;
    if (o->exclude && *o->exclude) json_object_set_new(body, "exclude", json_pack("[s]", o->exclude));
    if (o->prefix_key && *o->prefix_key) json_object_set_new(body, "prefix_key", json_string(o->prefix_key));
    struct gw_ctl_call_opts opts = {
        .method = "POST",
        .path = "/get_worker_address",
        .json = body,
        .timeout_ms = o->timeout_ms,
        .request_id = o->request_id,
        .parent = o->parent,
        .span_name = "gateway.get_worker_address",
        .judge = judge_route,
        .end = on_route_end,
        .user = r,
    };
    int rc = gw_ctls_call(ctls, client, &opts, &r->call);
    json_decref(body);
    if (rc != 0) {
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void gw_route_cancel(gw_route *r)
{
    if (!r) return;
    gw_ctl_call_cancel(r->call);
    free(r->address);
    free(r);
}

struct prefix_hash {
    uint64_t h;
    size_t left;
};

static void prefix_hash_add(struct prefix_hash *ph, const char *s, size_t n)
{
    if (n > ph->left) n = ph->left;
    ph->h = hash_fnv1a(ph->h, s, n);
    ph->left -= n;
}

/* json_dump_callback's sink: stops the dump once the prefix is hashed. */
static int prefix_hash_sink(const char *buf, size_t size, void *data)
{
    struct prefix_hash *ph = data;
    prefix_hash_add(ph, buf, size);
    return ph->left ? 0 : -1;
}

const char *gw_route_prefix_key(const struct gw_params *p, char out[GW_PREFIX_KEY_SIZE])
{
    struct prefix_hash ph = {HASH_FNV1A_INIT, GW_PREFIX_KEY_PROMPT_BYTES};
    if (p->api == GW_API_CHAT) {
        const json_t *messages = json_object_get(p->base, "messages");
        if (!json_array_size(messages)) return NULL;
        ph.left = GW_PREFIX_KEY_CHAT_BYTES;
        size_t i;
        json_t *m;
        json_array_foreach(messages, i, m) {
            /* -1 when the dump is cut short: the key is complete. */
            if (json_dump_callback(m, prefix_hash_sink, &ph, JSON_COMPACT) != 0 || !ph.left) break;
            const char *role = json_string_value(json_object_get(m, "role"));
            if (role && !strcmp(role, "user")) break;
        }
    } else {
        const json_t *prompt = json_array_get(p->prompts, 0);
        if (!prompt) return NULL;
        if (json_is_string(prompt)) prefix_hash_add(&ph, json_string_value(prompt), json_string_length(prompt));
        else (void)json_dump_callback(prompt, prefix_hash_sink, &ph, JSON_COMPACT);
    }
    snprintf(out, GW_PREFIX_KEY_SIZE, "%016llx", (unsigned long long)hash_mix64(ph.h));
    return out;
}
