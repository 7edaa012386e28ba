/* One worker call for a request, routed through the controller (forward.h). */
#include "gateway/forward.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/net_addr.h"
#include "common/utf8.h"
#include "gateway/proxy_frame.h"
#include "gateway/route.h"

struct gw_fwd {
    struct gw_fwd *prev, *next; /* g->fwds */
    struct gw *g;
    http_request *req;
    struct gw_forward_spec spec;
    gw_route *lookup;
    gw_models_wait *models_wait;
    http_call *call;
    char *address;        /* the worker of the current attempt */
    int attempts;
    char request_id[TRACE_REQUEST_ID_SIZE];
    struct trace_span parent;
    int64_t tokens;       /* what the answer used, for the rate limits */
};

static void fwd_free(struct gw_fwd *f)
{
    struct gw *g = f->g;
    if (f->lookup) gw_route_cancel(f->lookup);
    if (f->models_wait) gw_models_wait_cancel(g->models, f->models_wait);
    if (f->call) http_call_cancel(f->call);
    gw_rl_settle(g->rl, &f->spec.rl, (double)f->tokens);
    if (f->prev) f->prev->next = f->next;
    else g->fwds = f->next;
    if (f->next) f->next->prev = f->prev;
    g->active--;
    free(f->spec.model);
    json_decref(f->spec.body);
    free(f->address);
    free(f);
}

static void fail(struct gw_fwd *f, int status, const char *param, const char *retry_after, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(struct gw_fwd *f, int status, const char *param, const char *retry_after, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    utf8_vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_request_on_close(f->req, NULL, NULL);
    if (retry_after) http_response_header(f->req, "Retry-After", retry_after);
    gw_respond_error(f->g, f->req, f->spec.route, status, param, "%s", msg);
    fwd_free(f);
}

static void on_client_gone(http_request *req, void *arg)
{
    struct gw_fwd *f = arg;
    struct gw_reqinfo *info = http_request_get_data(req);
    http_request_set_data(req, NULL);
    gw_metrics_request(f->g->metrics, f->spec.route, 499);
    gw_access_log(f->g, info, f->spec.route, 499, NULL);
    gw_reqinfo_free(info);
    fwd_free(f);
}

static void start_lookup(struct gw_fwd *f, const char *exclude);

static void on_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct gw_fwd *f = user;
    f->call = NULL;
    bool failed_early = res->error == HTTP_CALL_CONNECT || res->error == HTTP_CALL_TIMEOUT ||
                        res->error == HTTP_CALL_IO || (res->error == HTTP_CALL_OK && res->status >= 500);
    if (failed_early && f->attempts < 2) {
        log_info("%s: %s failed on %s (%s); asking for another worker", f->request_id, f->spec.route, f->address,
                 res->error ? http_call_error_describe(res->error) : "a 5xx answer");
        gw_metrics_retry(f->g->metrics);
        start_lookup(f, f->address);
        return;
    }
    if (res->error != HTTP_CALL_OK) {
        bool unreachable = res->error == HTTP_CALL_CONNECT || res->error == HTTP_CALL_TIMEOUT;
        fail(f, unreachable ? 503 : 502, NULL, unreachable ? "1" : NULL, "%s",
             unreachable ? "no worker for this model could be reached" : "the worker failed before answering");
        return;
    }
    json_t *answer = json_loadb(res->body ? res->body : "", res->body_len, 0, NULL);
    if (res->status != 200) {
        json_t *err = json_object_get(answer, "error");
        const char *m = json_string_value(json_object_get(err, "message"));
        const char *p = json_string_value(json_object_get(err, "param"));
        char msg[512], param[96];
        utf8_snprintf(msg, sizeof msg, "%s", m ? m : "the worker refused the request");
        utf8_snprintf(param, sizeof param, "%s", p ? p : "");
        json_decref(answer);
        int status = gw_frame_error_status(res->status);
        fail(f, status, param, status == 503 || status == 429 ? "1" : NULL, "%s", msg);
        return;
    }
    json_t *out = answer ? f->spec.answer(answer, f->spec.model, f->spec.arg, &f->tokens) : NULL;
    json_decref(answer);
    if (!out) {
        log_warn("%s: worker %s answered %s with something that is not the protocol's", f->request_id, f->address,
                 f->spec.worker_path);
        fail(f, 502, NULL, NULL, "the worker sent an invalid answer");
        return;
    }
    http_request_on_close(f->req, NULL, NULL);
    gw_respond_json(f->g, f->req, f->spec.route, 200, out);
    fwd_free(f);
}

static void start_call(struct gw_fwd *f, const char *address)
{
    struct gw *g = f->g;
    char url[NET_BASE_URL_MAX];
    const char *why = "";
    if (net_base_url_parse(address, url, sizeof url, &why) != 0) {
        log_warn("%s: the controller named '%.300s', which is not a worker address (%s)", f->request_id, address, why);
        fail(f, 502, NULL, NULL, "the controller named an invalid worker address");
        return;
    }
    free(f->address);
    f->address = strdup(url);
    f->attempts++;
    char rid_header[32 + TRACE_REQUEST_ID_SIZE];
    snprintf(rid_header, sizeof rid_header, "X-Request-Id: %s", f->request_id);
    const char *headers[2] = {rid_header, NULL};
    struct http_call_opts opts = {
        .method = "POST",
        .url = url,
        .path = f->spec.worker_path,
        .json = f->spec.body,
        .headers = headers,
        .connect_timeout_ms = g->cfg.worker_connect_timeout_ms,
        /* Many inputs take a while on a CPU worker: bounded by silence, as generations are. */
        .timeout_ms = 0,
        .idle_timeout_ms = g->cfg.worker_idle_timeout_ms,
        .on_done = on_done,
        .user = f,
    };
    if (http_client_request(g->client, &opts, &f->call) != 0) {
        f->call = NULL;
        fail(f, 503, NULL, "1", "the gateway could not call the worker");
    }
}

static void on_models(int rc, const json_t *names, void *user)
{
    struct gw_fwd *f = user;
    f->models_wait = NULL;
    bool listed = false;
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) listed |= !strcmp(json_string_value(v), f->spec.model);
    char model[160];
    utf8_clip(model, sizeof model, f->spec.model, strlen(f->spec.model));
    if (rc < 0) fail(f, 503, NULL, "1", "the controller could not be reached");
    else if (listed || gw_models_recently_served(f->g->models, f->spec.model))
        fail(f, 503, "model", "1", "no worker is serving the model '%s' right now; retry shortly", model);
    else fail(f, 404, "model", NULL, "The model '%s' does not exist", model);
}

static void on_route(int rc, const char *address, void *user)
{
    struct gw_fwd *f = user;
    f->lookup = NULL;
    char model[160];
    utf8_clip(model, sizeof model, f->spec.model, strlen(f->spec.model));
    if (rc < 0) {
        fail(f, 503, NULL, "1", "the controller could not be reached");
    } else if (f->attempts > 0 && (!*address || (f->address && !strcmp(address, f->address)))) {
        fail(f, 503, "model", "1", "the worker failed and no other worker serves this model");
    } else if (rc == GW_ROUTE_RECENT) {
        fail(f, 503, "model", "1", "no worker is serving the model '%s' right now; retry shortly", model);
    } else if (!*address) {
        gw_models_get(f->g->models, on_models, f, &f->models_wait);
    } else {
        gw_models_note_served(f->g->models, f->spec.model);
        start_call(f, address);
    }
}

static void start_lookup(struct gw_fwd *f, const char *exclude)
{
    struct gw_route_opts o = {
        .model = f->spec.model,
        .exclude = exclude,
        .request_id = f->request_id,
        .parent = trace_span_active(&f->parent) ? &f->parent : NULL,
        .timeout_ms = f->g->cfg.controller_timeout_ms,
    };
    if (gw_route_start(f->g->ctls, f->g->client, &o, on_route, f, &f->lookup) != 0) {
        f->lookup = NULL;
        fail(f, 503, NULL, "1", "the controller could not be reached");
    }
}

void gw_forward(struct gw *g, http_request *req, struct gw_forward_spec *spec)
{
    struct gw_fwd *f = calloc(1, sizeof *f);
    if (!f) {
        gw_rl_settle(g->rl, &spec->rl, 0);
        free(spec->model);
        json_decref(spec->body);
        http_response_header(req, "Retry-After", "1");
        gw_respond_error(g, req, spec->route, 503, NULL, "the gateway is out of memory; retry later");
        return;
    }
    f->g = g;
    f->req = req;
    f->spec = *spec;
    const struct gw_reqinfo *info = http_request_get_data(req);
    if (info) {
        snprintf(f->request_id, sizeof f->request_id, "%s", info->request_id);
        f->parent = info->span;
    }
    f->next = g->fwds;
    if (g->fwds) g->fwds->prev = f;
    g->fwds = f;
    g->active++;
    http_request_on_close(req, on_client_gone, f);
    start_lookup(f, NULL);
}

void gw_forward_abort_all(struct gw *g, const char *message)
{
    while (g->fwds) fail(g->fwds, 503, NULL, "1", "%s", message);
}
