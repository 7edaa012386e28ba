/* Registration with the controller and heartbeats, from the loop: a long generation never
 * delays a heartbeat (the engine has its own thread), and a controller that is down only
 * means we retry at the next tick while serving on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/api/worker.h"

static void send_register(struct worker *w);

static void post(struct worker *w, const char *path, json_t *body,
                 void (*on_done)(http_call *, const struct http_call_result *, void *))
{
    /* The client sends the internal token on every call (auth_client_token in serve.c). */
    struct http_call_opts opts = {
        .method = "POST", .url = w->opt.controller_address, .path = path, .json = body,
        .connect_timeout_ms = 1000, .timeout_ms = 3000, .on_done = on_done, .user = w,
    };
    if (http_client_request(w->client, &opts, NULL) != 0) {
        log_warn("could not start a request to the controller at %s%s", w->opt.controller_address, path);
        w->register_in_flight = w->heartbeat_in_flight = w->unregister_in_flight = false;
    }
    json_decref(body);
}

static void send_unregister(struct worker *w);

static void on_registered(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct worker *w = user;
    w->register_in_flight = false;
    if (w->unregister_in_flight) {
        /* The drain began while this was on its way: now the unregister cannot overtake it. */
        send_unregister(w);
        return;
    }
    if (res->error == HTTP_CALL_OK && res->status == 200) {
        if (!w->registered) log_info("registered with the controller at %s as %s", w->opt.controller_address, w->address);
        w->registered = true;
        return;
    }
    if (res->status == 401)
        log_error("the controller refused registration (401): check --internal-token");
    else if (res->status == 403)
        log_error("the controller refused registration (403): it has no internal token and serves loopback callers "
                  "only; give both --internal-token");
    else if (res->status == 400)
        log_error("the controller refused registration (400): %.*s", (int)res->body_len, res->body ? res->body : "");
    else
        log_warn("registration with %s failed (%s%ld); retrying every %.0f s",
                 w->opt.controller_address, res->error ? res->error_text : "HTTP ", res->error ? 0 : res->status,
                 w->opt.heartbeat_interval);
}

static void send_register(struct worker *w)
{
    if (w->register_in_flight || w->draining) return;
    w->register_in_flight = true;
    json_t *body = json_pack("{s:s, s:b, s:o}", "worker_name", w->address, "check_heart_beat", 1,
                             "worker_status", worker_status_json(w));
    post(w, "/register_worker", body, on_registered);
}

static void on_heartbeat(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct worker *w = user;
    w->heartbeat_in_flight = false;
    if (res->error != HTTP_CALL_OK || res->status != 200) {
        log_warn("heartbeat to %s failed (%s%ld)", w->opt.controller_address,
                 res->error ? res->error_text : "HTTP ", res->error ? 0 : res->status);
        return;
    }
    json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *exist = root ? json_object_get(root, "exist") : NULL;
    if (json_is_false(exist) && !w->draining) {
        /* The controller forgot us (it restarted, or expired us): register again now. */
        log_info("the controller does not know this worker; registering again");
        w->registered = false;
        send_register(w);
    }
    json_decref(root);
}

static void on_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    if (st.failed) {
        /* A worker that can only answer 503 must stop attracting requests: falling silent
         * lets the controller expire it. */
        return;
    }
    if (!w->registered) {
        send_register(w);
        return;
    }
    if (w->heartbeat_in_flight) return;
    w->heartbeat_in_flight = true;
    post(w, "/receive_heart_beat",
         json_pack("{s:s, s:i}", "worker_name", w->address, "queue_length", w->active), on_heartbeat);
}

int controller_client_start(struct worker *w)
{
    if (w->opt.no_register) return 0;
    uv_timer_init(w->loop, &w->heartbeat_timer);
    w->heartbeat_timer_open = true;
    w->heartbeat_timer.data = w;
    uint64_t every = (uint64_t)(w->opt.heartbeat_interval * 1000.0);
    if (every < 50) every = 50;
    send_register(w);
    return uv_timer_start(&w->heartbeat_timer, on_tick, every, every);
}

void controller_client_stop(struct worker *w)
{
    if (!w->heartbeat_timer_open) return;
    w->heartbeat_timer_open = false;
    uv_timer_stop(&w->heartbeat_timer);
    uv_close((uv_handle_t *)&w->heartbeat_timer, NULL);
}

static void on_unregistered(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct worker *w = user;
    w->unregister_in_flight = false;
    if (res->error == HTTP_CALL_OK && res->status == 200)
        log_info("unregistered from the controller at %s", w->opt.controller_address);
    else
        /* An older controller has no such endpoint (404): it expires us by heartbeat instead. */
        log_warn("could not unregister from %s (%s%ld): it stops dispatching here once the heartbeats expire",
                 w->opt.controller_address, res->error ? res->error_text : "HTTP ", res->error ? 0 : res->status);
}

static void send_unregister(struct worker *w)
{
    post(w, "/unregister_worker", json_pack("{s:s}", "worker_name", w->address), on_unregistered);
}

void controller_client_unregister(struct worker *w)
{
    if (w->opt.no_register || w->unregister_in_flight) return;
    w->unregister_in_flight = true;
    w->registered = false;
    /* A registration still on its way could arrive after the unregister and undo it: then the
     * unregister goes when its answer comes (on_registered). */
    if (!w->register_in_flight) send_unregister(w);
}
