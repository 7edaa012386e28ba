/* The controller's HTTP API (docs/PROTOCOL.md, FastChat's controller payloads). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/trace.h"
#include "common/utf8.h"
#include "controller/controller.h"
#include "controller/payload.h"

typedef void (*route_fn)(struct ctl *c, http_request *req);

static void respond_const(http_request *req, const char *body)
{
    http_respond(req, 200, "application/json", body, strlen(body));
}

static void respond_bad(http_request *req, const struct json_field_error *err)
{
    http_respond_error(req, 400, err->param, "%s", err->message);
}

/* Parses the body as a JSON object or answers 400 and returns NULL. */
static json_t *body_object(http_request *req)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    struct json_field_error err = {{0}, {0}};
    json_t *obj = json_parse_object(body, len, &err);
    if (!obj) respond_bad(req, &err);
    return obj;
}

void ctl_count_models(struct ctl *c, const struct ctl_worker_status *st)
{
    for (size_t i = 0; i < st->n_models; i++) {
        if (strmap_get(c->dispatch_counts, st->model_names[i])) continue;
        struct ctl_dispatch_counts *dc = calloc(1, sizeof *dc);
        if (!dc || strmap_put(c->dispatch_counts, st->model_names[i], dc) != 0) free(dc);
    }
}

static void on_register(struct ctl *c, http_request *req)
{
    json_t *body = body_object(req);
    if (!body) return;
    struct ctl_register_req r;
    struct json_field_error err = {{0}, {0}};
    char shown[200]; /* a name as messages quote it: cleaned and shortened */
    if (ctl_payload_register(body, &r, &err) != 0) {
        respond_bad(req, &err);
        goto out;
    }
    if (!r.has_status) {
        /* FastChat asks the worker itself; the answer waits for that call. */
        if (ctl_refresh_register(c, req, r.worker_name, r.check_heart_beat, r.multimodal) != 0)
            http_respond_error(req, 500, NULL, "could not start a status request to %s",
                               utf8_clip(shown, sizeof shown, r.worker_name, strlen(r.worker_name)));
        goto out;
    }
    bool known = ctl_registry_find(c->reg, r.worker_name) != NULL;
    if (ctl_registry_register(c->reg, r.worker_name, r.check_heart_beat, r.multimodal, &r.status) != 0) {
        http_respond_error(req, 500, NULL, "out of memory registering %s",
                           utf8_clip(shown, sizeof shown, r.worker_name, strlen(r.worker_name)));
        goto out;
    }
    ctl_count_models(c, &r.status);
    c->registrations++;
    log_info("%s worker %s: %zu model(s) starting with %s, speed %g, queue %lld",
             known ? "re-registered" : "registered", r.worker_name, r.status.n_models,
             r.status.model_names[0], r.status.speed, (long long)r.status.queue_length);
    respond_const(req, "{}");
out:
    ctl_worker_status_clear(&r.status);
    json_decref(body);
}

static void on_heartbeat(struct ctl *c, http_request *req)
{
    json_t *body = body_object(req);
    if (!body) return;
    char name[NET_BASE_URL_MAX];
    int64_t q;
    double wait;
    struct json_field_error err = {{0}, {0}};
    if (ctl_payload_heartbeat(body, name, &q, &err) != 0 || ctl_payload_queue_wait(body, &wait, &err) != 0) {
        respond_bad(req, &err);
    } else if (ctl_registry_heartbeat(c->reg, name, q)) {
        ctl_registry_queue_wait(c->reg, name, wait);
        c->heartbeats++;
        respond_const(req, "{\"exist\":true}");
    } else {
        c->heartbeats_unknown++;
        log_debug("heartbeat from unknown worker %s", name);
        respond_const(req, "{\"exist\":false}");
    }
    json_decref(body);
}

/* A worker that stops on purpose (sluice-worker's drain on SIGTERM) leaves at once instead of
 * being dispatched to until its heartbeats expire. FastChat's workers never call this. */
static void on_unregister(struct ctl *c, http_request *req)
{
    json_t *body = body_object(req);
    if (!body) return;
    char name[NET_BASE_URL_MAX];
    struct json_field_error err = {{0}, {0}};
    if (ctl_payload_worker_name(body, name, &err) != 0) {
        respond_bad(req, &err);
    } else {
        bool removed = ctl_registry_remove(c->reg, name);
        if (removed) log_info("worker %s unregistered", name);
        http_respond_json(req, 200, json_pack("{s:b}", "removed", removed));
    }
    json_decref(body);
}

/* The registry's model-name list (n < 0: it ran out of memory) as a JSON array, freeing the
 * list; NULL when out of memory. */
static json_t *names_json(const char **names, long n)
{
    if (n < 0) return NULL;
    json_t *arr = json_array();
    for (long i = 0; i < n; i++) json_array_append_new(arr, json_string(names[i]));
    free(names);
    return arr;
}

static void list_models_of(struct ctl *c, http_request *req, int which)
{
    const char **names;
    json_t *arr = names_json(names, ctl_registry_live_models_of(c->reg, which, &names));
    if (!arr) {
        http_respond_error(req, 500, NULL, "out of memory");
        return;
    }
    http_respond_json(req, 200, json_pack("{s:o}", "models", arr));
}

static void on_list_models(struct ctl *c, http_request *req)
{
    list_models_of(c, req, -1);
}

static void on_list_language_models(struct ctl *c, http_request *req)
{
    list_models_of(c, req, 0);
}

static void on_list_multimodal_models(struct ctl *c, http_request *req)
{
    list_models_of(c, req, 1);
}

/* The dispatch's span, when the gateway traces the request (its traceparent names its call). */
static void dispatch_span(http_request *req, const struct trace_span *span, const char *model, const char *worker)
{
    if (!trace_span_sampled(span)) return;
    const char *rid = http_request_header(req, "X-Request-Id");
    trace_span_log(span, "controller.get_worker_address",
                   json_pack("{s:s?, s:s, s:s}", "request_id", trace_request_id_valid(rid) ? rid : NULL, "model", model,
                             "worker", worker));
}

static void on_get_worker_address(struct ctl *c, http_request *req)
{
    struct trace_span span;
    trace_span_continue(&span, http_request_header(req, "traceparent"));
    json_t *body = body_object(req);
    if (!body) return;
    const char *model;
    struct json_field_error err = {{0}, {0}};
    const char *exclude[CTL_MAX_EXCLUDE], *prefix_key;
    size_t n_exclude = 0;
    if (ctl_payload_model(body, &model, &err) != 0 || ctl_payload_exclude(body, exclude, &n_exclude, &err) != 0 ||
        ctl_payload_prefix_key(body, &prefix_key, &err) != 0) {
        respond_bad(req, &err);
        json_decref(body);
        return;
    }
    struct ctl_worker *w =
        ctl_dispatch_pick_keyed(c->reg, model, c->cfg.method, &c->rng, exclude, n_exclude, prefix_key);
    struct ctl_dispatch_counts *dc = strmap_get(c->dispatch_counts, model);
    if (!dc) dc = &c->dispatch_unknown;
    if (w) {
        dc->ok++;
        log_debug("dispatch %s -> %s", model, w->name);
        dispatch_span(req, &span, model, w->name);
        http_respond(req, 200, "application/json", w->address_body, w->address_body_len);
    } else {
        dc->no_worker++;
        log_debug("dispatch %s: no live worker", model);
        dispatch_span(req, &span, model, "");
        /* recently_served tells a gateway "retry soon" (503) from "no such model" (404). */
        respond_const(req, ctl_registry_recently_served(c->reg, model) ? "{\"address\":\"\",\"recently_served\":true}"
                                                                       : "{\"address\":\"\"}");
    }
    json_decref(body);
}

static void on_refresh_all(struct ctl *c, http_request *req)
{
    if (ctl_refresh_all(c, req) != 0) http_respond_error(req, 500, NULL, "could not start the refresh");
}

/* The sum over live workers, as FastChat's controller reports when it is itself a worker of
 * another controller. Taken from the registry (kept current by heartbeats), not by calling
 * every worker: the answer must not wait on the slowest worker. */
static void on_worker_get_status(struct ctl *c, http_request *req)
{
    const char **names;
    json_t *arr = names_json(names, ctl_registry_live_models(c->reg, &names));
    if (!arr) {
        http_respond_error(req, 500, NULL, "out of memory");
        return;
    }
    double speed = 0, now = ctl_registry_now(c->reg);
    json_int_t queue = 0;
    for (size_t i = 0; i < ctl_registry_count(c->reg); i++) {
        struct ctl_worker *w = ctl_registry_worker_at(c->reg, i);
        if (!ctl_registry_is_live(c->reg, w, now)) continue;
        speed += w->speed;
        queue += w->queue_length;
    }
    http_respond_json(req, 200, json_pack("{s:o, s:f, s:I}", "model_names", arr, "speed", speed,
                                          "queue_length", queue));
}

static void on_test_connection(struct ctl *c, http_request *req)
{
    (void)c;
    /* FastChat (FastAPI) answers the JSON string "success". */
    respond_const(req, "\"success\"");
}

static void on_health(struct ctl *c, http_request *req)
{
    char body[64];
    int n = snprintf(body, sizeof body, "{\"status\":\"ok\",\"workers\":%zu}", ctl_registry_live_count(c->reg));
    http_respond(req, 200, "application/json", body, (size_t)n);
}

static void on_workers(struct ctl *c, http_request *req)
{
    json_t *arr = json_array();
    double now = ctl_registry_now(c->reg);
    for (size_t i = 0; i < ctl_registry_count(c->reg); i++) {
        struct ctl_worker *w = ctl_registry_worker_at(c->reg, i);
        if (!ctl_registry_is_live(c->reg, w, now)) continue;
        json_t *models = json_array();
        for (size_t j = 0; j < w->n_models; j++) json_array_append_new(models, json_string(w->models[j]));
        json_array_append_new(arr, json_pack("{s:s, s:o, s:f, s:I, s:f, s:b, s:b}", "name", w->name, "models",
                                             models, "speed", w->speed, "queue_length",
                                             (json_int_t)w->queue_length, "last_heartbeat_age_s",
                                             now - w->last_heartbeat, "check_heart_beat",
                                             w->check_heart_beat, "multimodal", w->multimodal));
    }
    http_respond_json(req, 200, json_pack("{s:o}", "workers", arr));
}

static void on_metrics(struct ctl *c, http_request *req)
{
    size_t len = 0;
    char *text = ctl_metrics_render(c, &len);
    if (!text) {
        http_respond_error(req, 500, NULL, "out of memory");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

struct route {
    const char *path;
    const char *method;
    route_fn fn;
    bool internal; /* needs the internal token, or a loopback caller when there is none */
};

static const struct route routes[] = {
    {"/get_worker_address", "POST", on_get_worker_address, true},
    {"/receive_heart_beat", "POST", on_heartbeat, true},
    {"/register_worker", "POST", on_register, true},
    {"/unregister_worker", "POST", on_unregister, true},
    {"/list_models", "POST", on_list_models, true},
    {"/list_language_models", "POST", on_list_language_models, true},
    {"/list_multimodal_models", "POST", on_list_multimodal_models, true},
    {"/refresh_all_workers", "POST", on_refresh_all, true},
    {"/worker_get_status", "POST", on_worker_get_status, true},
    {"/workers", "GET", on_workers, true},
    /* Liveness and metrics stay open for probes and scrapers: they name no worker address. */
    {"/test_connection", "GET", on_test_connection, false},
    {"/health", "GET", on_health, false},
    {"/metrics", "GET", on_metrics, false},
};

void ctl_handle(http_request *req, void *user)
{
    struct ctl *c = user;
    const char *path = http_request_path(req);
    const char *method = http_request_method(req);
    char shown[200]; /* the path as messages quote it: a client's bytes, cleaned and shortened */
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const struct route *r = &routes[i];
        if (strcmp(path, r->path) != 0) continue;
        if (strcmp(method, r->method) != 0) {
            http_response_header(req, "Allow", r->method);
            http_respond_error(req, 405, NULL, "%s %s is not allowed; use %s", method,
                               utf8_clip(shown, sizeof shown, path, strlen(path)), r->method);
            return;
        }
        struct auth_internal a = {.token = c->cfg.internal_token,
                                  .allow_unauthenticated = c->cfg.allow_unauthenticated_workers,
                                  .program = "sluice-controller"};
        if (r->internal && auth_internal_check(req, &a) != AUTH_OK) {
            c->unauthorized++;
            return;
        }
        r->fn(c, req);
        return;
    }
    http_respond_error(req, 404, NULL, "no route for %s %s", method, utf8_clip(shown, sizeof shown, path, strlen(path)));
}
