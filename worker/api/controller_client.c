/* Registration with the controllers and heartbeats, from the loop: a long generation never
 * delays a heartbeat (the engine has its own thread), and a controller that is down only
 * means we retry at the next tick while serving on.
 *
 * With several controllers (--controller-address a,b: high availability) the worker registers
 * with each and beats to each on its own link, so one that hangs delays nobody else's
 * heartbeats. A controller that restarted has an empty registry: the worker's next heartbeat
 * gets {"exist": false} and registers again at once, and a heartbeat that could not reach the
 * controller makes the next tick register rather than beat, so a restarted controller knows
 * the worker within one heartbeat interval (plus a round trip) of coming back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/net_addr.h"
#include "worker/api/worker.h"

enum { MAX_CONTROLLERS = 8 };

struct controller_link {
    struct worker *w;
    char *url;
    bool registered;
    bool register_in_flight;
    bool heartbeat_in_flight;
    bool unregister_wanted;   /* asked while a registration was on its way */
    bool failing;             /* the last call failed: said once, not at every tick */
};

/* What went wrong with a call, for a log line: curl's words, or the HTTP status. */
static const char *call_failure(const struct http_call_result *res, char *buf, size_t cap)
{
    if (res->error) return res->error_text;
    snprintf(buf, cap, "HTTP %ld", res->status);
    return buf;
}

static void send_register(struct controller_link *l);
static void send_unregister(struct controller_link *l);

/* Returns 0, or -1 (logged) when the call could not start. */
static int post(struct controller_link *l, const char *path, json_t *body,
                void (*on_done)(http_call *, const struct http_call_result *, void *))
{
    struct worker *w = l->w;
    /* The client sends the internal token on every call (auth_client_token in serve.c). */
    struct http_call_opts opts = {
        .method = "POST", .url = l->url, .path = path, .json = body,
        .connect_timeout_ms = 1000, .timeout_ms = 3000, .on_done = on_done, .user = l,
    };
    int rc = http_client_request(w->client, &opts, NULL);
    if (rc != 0) log_warn("could not start a request to the controller at %s%s", l->url, path);
    json_decref(body);
    return rc == 0 ? 0 : -1;
}

static void on_registered(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct controller_link *l = user;
    struct worker *w = l->w;
    l->register_in_flight = false;
    if (l->unregister_wanted) {
        /* The drain began while this was on its way: now the unregister cannot overtake it. */
        l->unregister_wanted = false;
        send_unregister(l);
        return;
    }
    if (res->error == HTTP_CALL_OK && res->status == 200) {
        if (!l->registered) log_info("registered with the controller at %s as %s", l->url, w->address);
        l->registered = true;
        l->failing = false;
        return;
    }
    char why[32];
    bool first = !l->failing;
    l->failing = true;
    if (res->status == 401)
        log_error("the controller at %s refused registration (401): check --internal-token", l->url);
    else if (res->status == 403)
        log_error("the controller at %s refused registration (403): it has no internal token and serves loopback "
                  "callers only; give both --internal-token", l->url);
    else if (res->status == 400)
        log_error("the controller at %s refused registration (400): %.*s", l->url, (int)res->body_len,
                  res->body ? res->body : "");
    else if (first)
        log_warn("registration with %s failed (%s); retrying every %g s", l->url, call_failure(res, why, sizeof why),
                 w->opt.heartbeat_interval);
    else
        log_debug("registration with %s failed again (%s)", l->url, call_failure(res, why, sizeof why));
}

static void send_register(struct controller_link *l)
{
    struct worker *w = l->w;
    if (l->register_in_flight || w->draining) return;
    l->register_in_flight = true;
    json_t *body = json_pack("{s:s, s:b, s:o}", "worker_name", w->address, "check_heart_beat", 1,
                             "worker_status", worker_status_json(w));
    if (post(l, "/register_worker", body, on_registered) != 0) l->register_in_flight = false;
}

static void on_heartbeat(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct controller_link *l = user;
    struct worker *w = l->w;
    l->heartbeat_in_flight = false;
    if (res->error != HTTP_CALL_OK || res->status != 200) {
        char why[32];
        log_warn("heartbeat to %s failed (%s)", l->url, call_failure(res, why, sizeof why));
        l->failing = true;
        /* It may come back as a new process that knows nothing of us: the next tick registers
         * instead of beating, which saves the round trip of an {"exist": false}. */
        if (res->error != HTTP_CALL_OK) l->registered = false;
        return;
    }
    json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *exist = root ? json_object_get(root, "exist") : NULL;
    if (json_is_false(exist) && !w->draining) {
        /* The controller forgot us (it restarted, or expired us): register again now. */
        log_info("the controller at %s does not know this worker; registering again", l->url);
        l->registered = false;
        send_register(l);
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
         * lets the controllers expire it. */
        return;
    }
    double wait = api_queue_wait_s(w);
    for (int i = 0; i < w->n_links; i++) {
        struct controller_link *l = &w->links[i];
        if (!l->registered) {
            send_register(l);
            continue;
        }
        if (l->heartbeat_in_flight) continue;
        l->heartbeat_in_flight = true;
        /* queue_wait_s is ours (the autoscaling signal); FastChat's controller ignores it. */
        if (post(l, "/receive_heart_beat",
                 json_pack("{s:s, s:i, s:f}", "worker_name", w->address, "queue_length", w->active, "queue_wait_s", wait),
                 on_heartbeat) != 0)
            l->heartbeat_in_flight = false;
    }
}

static int parse_links(struct worker *w)
{
    char *urls[MAX_CONTROLLERS], err[300];
    size_t n = 0;
    if (net_url_list_parse(w->opt.controller_address, urls, MAX_CONTROLLERS, &n, err, sizeof err) != 0) {
        log_error("--controller-address: %s", err);
        return -1;
    }
    w->links = calloc(n, sizeof *w->links);
    if (!w->links) {
        log_error("out of memory");
        while (n > 0) free(urls[--n]);
        return -1;
    }
    for (size_t i = 0; i < n; i++) w->links[i] = (struct controller_link){.w = w, .url = urls[i]};
    w->n_links = (int)n;
    return 0;
}

int controller_client_start(struct worker *w)
{
    if (w->opt.no_register) return 0;
    if (parse_links(w) != 0) return -1;
    uv_timer_init(w->loop, &w->heartbeat_timer);
    w->heartbeat_timer_open = true;
    w->heartbeat_timer.data = w;
    uint64_t every = (uint64_t)(w->opt.heartbeat_interval * 1000.0);
    if (every < 50) every = 50;
    for (int i = 0; i < w->n_links; i++) send_register(&w->links[i]);
    return uv_timer_start(&w->heartbeat_timer, on_tick, every, every);
}

void controller_client_stop(struct worker *w)
{
    if (!w->heartbeat_timer_open) return;
    w->heartbeat_timer_open = false;
    uv_timer_stop(&w->heartbeat_timer);
    uv_close((uv_handle_t *)&w->heartbeat_timer, NULL);
}

void controller_client_free(struct worker *w)
{
    for (int i = 0; i < w->n_links; i++) free(w->links[i].url);
    free(w->links);
    w->links = NULL;
    w->n_links = 0;
}

static void on_unregistered(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct controller_link *l = user;
    char why[32];
    l->w->unregister_in_flight--;
    if (res->error == HTTP_CALL_OK && res->status == 200)
        log_info("unregistered from the controller at %s", l->url);
    else
        /* An older controller has no such endpoint (404): it expires us by heartbeat instead. */
        log_warn("could not unregister from %s (%s): it stops dispatching here once the heartbeats expire", l->url,
                 call_failure(res, why, sizeof why));
}

static void send_unregister(struct controller_link *l)
{
    if (post(l, "/unregister_worker", json_pack("{s:s}", "worker_name", l->w->address), on_unregistered) != 0)
        l->w->unregister_in_flight--;
}

void controller_client_unregister(struct worker *w)
{
    if (w->opt.no_register || w->unregister_in_flight) return;
    for (int i = 0; i < w->n_links; i++) {
        struct controller_link *l = &w->links[i];
        if (l->unregister_wanted) continue;
        l->registered = false;
        w->unregister_in_flight++;
        /* A registration still on its way could arrive after the unregister and undo it: then
         * the unregister goes when its answer comes (on_registered). */
        if (l->register_in_flight) l->unregister_wanted = true;
        else send_unregister(l);
    }
}
