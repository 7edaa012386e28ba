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
                   const char *model, const char *exclude, gw_route_cb cb, void *user,
                   gw_route **out)
{
    gw_route *r = calloc(1, sizeof *r);
    r->cb = cb;
    r->user = user;
    json_t *body = json_pack("{s:s}", "model", model);
    if (exclude && *exclude) json_object_set_new(body, "exclude", json_pack("[s]", exclude));
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
