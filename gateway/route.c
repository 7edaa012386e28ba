#include "gateway/route.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/log.h"

struct gw_route {
    http_call *call;
    gw_route_cb cb;
    void *user;
};

static void on_route_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    gw_route *r = user;
    int rc = -1;
    char *address = NULL;
    if (res->error == HTTP_CALL_OK && res->status == 200) {
        json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
        const char *a = json_string_value(json_object_get(root, "address"));
        /* Checked and normalised where it is used (proxy.c's choice_start). */
        if (a) {
            address = strdup(a);
            rc = !*address && json_is_true(json_object_get(root, "recently_served")) ? GW_ROUTE_RECENT : 0;
        }
        json_decref(root);
    }
    if (rc < 0 && (res->status == 401 || res->status == 403))
        log_error("controller: get_worker_address refused (HTTP %ld): start the gateway with the controller's "
                  "--internal-token", res->status);
    else if (rc < 0)
        log_warn("controller: get_worker_address failed: %s (status %ld)", res->error ? res->error_text : "bad answer",
                 res->status);
    r->cb(rc, address ? address : "", r->user);
    free(address);
    free(r);
}

int gw_route_start(http_client *client, const char *controller_url, long timeout_ms,
                   const char *model, const char *exclude, const char *prefix_key, gw_route_cb cb,
                   void *user, gw_route **out)
{
    gw_route *r = calloc(1, sizeof *r);
    r->cb = cb;
    r->user = user;
    json_t *body = json_pack("{s:s}", "model", model);
    if (exclude && *exclude) json_object_set_new(body, "exclude", json_pack("[s]", exclude));
    if (prefix_key && *prefix_key) json_object_set_new(body, "prefix_key", json_string(prefix_key));
    struct http_call_opts opts = {
        .method = "POST",
        .url = controller_url,
        .path = "/get_worker_address",
        .json = body,
        .connect_timeout_ms = timeout_ms,
        .timeout_ms = timeout_ms,
        .on_done = on_route_done,
        .user = r,
    };
    int rc = http_client_request(client, &opts, &r->call);
    json_decref(body);
    if (rc != 0) {
        free(r);
        *out = NULL;
        return rc;
    }
    *out = r;
    return 0;
}

void gw_route_cancel(gw_route *r)
{
    if (!r) return;
    http_call_cancel(r->call);
    free(r);
}

struct prefix_hash {
    uint64_t h;
    size_t left;
};

static void prefix_hash_add(struct prefix_hash *ph, const char *s, size_t n)
{
    if (n > ph->left) n = ph->left;
    for (size_t i = 0; i < n; i++) ph->h = (ph->h ^ (unsigned char)s[i]) * 0x100000001b3ull;
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
    struct prefix_hash ph = {0xcbf29ce484222325ull, GW_PREFIX_KEY_PROMPT_BYTES};
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
    uint64_t h = ph.h;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    snprintf(out, GW_PREFIX_KEY_SIZE, "%016llx", (unsigned long long)h);
    return out;
}
