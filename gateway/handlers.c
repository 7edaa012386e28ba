/* Request dispatch: CORS, health, metrics, auth, the model list, the two generation routes,
 * embeddings, tokenize and detokenize. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/jsonlog.h"
#include "common/log.h"
#include "common/utf8.h"
#include "gateway/chat_page.h"
#include "gateway/gateway.h"
#include "gateway/validate.h"

double gw_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

void gw_reqinfo_free(struct gw_reqinfo *info)
{
    free(info);
}

void gw_access_log(struct gw *g, const struct gw_reqinfo *info, const char *route, int status, json_t *extra)
{
    (void)g;
    if (!info || !strcmp(route, "/health") || !strcmp(route, "/metrics") || !jsonlog_enabled()) {
        json_decref(extra);
        return;
    }
    double ms = (double)(uv_hrtime() - info->start_ns) / 1e6;
    json_t *line = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:s, s:s}", "type", "access", "request_id",
                             info->request_id, "method", info->method, "path", info->path, "route", route, "status",
                             status, "duration_ms", ms, "client", info->peer, "trace_id", info->span.trace_id);
    if (line && extra) json_object_update(line, extra);
    json_decref(extra);
    jsonlog_write(line);
    trace_span_log(&info->span, "gateway.request",
                   json_pack("{s:s, s:s, s:i}", "request_id", info->request_id, "route", route, "status", status));
}

/* The request's info, detached (the request is about to be answered). */
static struct gw_reqinfo *take_info(http_request *req)
{
    struct gw_reqinfo *info = http_request_get_data(req);
    http_request_set_data(req, NULL);
    return info;
}

void gw_respond_error(struct gw *g, http_request *req, const char *route, int status,
                      const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    utf8_vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gw_metrics_request(g->metrics, route, status);
    struct gw_reqinfo *info = take_info(req);
    http_respond_error(req, status, param && *param ? param : NULL, "%s", msg);
    gw_access_log(g, info, route, status, json_pack("{s:s}", "error", msg));
    gw_reqinfo_free(info);
}

void gw_respond_json(struct gw *g, http_request *req, const char *route, int status, json_t *body)
{
    gw_metrics_request(g->metrics, route, status);
    struct gw_reqinfo *info = take_info(req);
    http_respond_json(req, status, body);
    gw_access_log(g, info, route, status, NULL);
    gw_reqinfo_free(info);
}

/* An answer sent with http_respond directly (the chat page, the metrics). */
static void respond_raw(struct gw *g, http_request *req, const char *route, int status, const char *type,
                        const char *body, size_t len)
{
    gw_metrics_request(g->metrics, route, status);
    struct gw_reqinfo *info = take_info(req);
    http_respond(req, status, type, body, len);
    gw_access_log(g, info, route, status, NULL);
    gw_reqinfo_free(info);
}

/* --- GET /v1/models and /v1/models/{id} ----------------------------------------------------- */

struct models_req {
    struct gw *g;
    http_request *req;
    gw_models_wait *wait;
    char *id; /* NULL for the list */
};

static json_t *model_object(struct gw *g, const char *name)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", name, "object", "model", "created",
                     (json_int_t)gw_models_created(g->models, name), "owned_by", "sluice");
}

static void on_models(int rc, const json_t *names, void *user)
{
    struct models_req *m = user;
    struct gw *g = m->g;
    if (rc < 0) {
        http_response_header(m->req, "Retry-After", "1");
        gw_respond_error(g, m->req, "/v1/models", 503, NULL, "the controller could not be reached");
    } else if (m->id) {
        json_t *found = NULL;
        size_t i;
        json_t *v;
        json_array_foreach(names, i, v) {
            if (!strcmp(json_string_value(v), m->id)) found = model_object(g, m->id);
        }
        if (found)
            gw_respond_json(g, m->req, "/v1/models", 200, found);
        else {
            char id[200];
            gw_respond_error(g, m->req, "/v1/models", 404, "model", "The model '%s' does not exist",
                             utf8_clip(id, sizeof id, m->id, strlen(m->id)));
        }
    } else {
        json_t *data = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(names, i, v) json_array_append_new(data, model_object(g, json_string_value(v)));
        gw_respond_json(g, m->req, "/v1/models", 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    free(m->id);
    free(m);
}

static void on_models_client_gone(http_request *req, void *arg)
{
    struct models_req *m = arg;
    struct gw_reqinfo *info = take_info(req);
    gw_access_log(m->g, info, "/v1/models", 499, NULL);
    gw_reqinfo_free(info);
    if (m->wait) gw_models_wait_cancel(m->g->models, m->wait);
    free(m->id);
    free(m);
}

static void handle_models(struct gw *g, http_request *req, const char *id)
{
    struct models_req *m = calloc(1, sizeof *m);
    m->g = g;
    m->req = req;
    m->id = id ? strdup(id) : NULL;
    gw_models_wait *wait = NULL;
    /* on_close is set only when the answer has to wait: a fresh cache answers inside get. */
    gw_models_get(g->models, on_models, m, &wait);
    if (wait) {
        m->wait = wait;
        http_request_on_close(req, on_models_client_gone, m);
    }
}

/* --- dispatch -------------------------------------------------------------------------------- */

static const char *route_name(const char *path)
{
    if (!strcmp(path, "/v1/chat/completions")) return "/v1/chat/completions";
    if (!strcmp(path, "/v1/completions")) return "/v1/completions";
    if (!strcmp(path, "/v1/embeddings")) return "/v1/embeddings";
    if (!strcmp(path, "/tokenize")) return "/tokenize";
    if (!strcmp(path, "/detokenize")) return "/detokenize";
    if (!strncmp(path, "/v1/models", 10)) return "/v1/models";
    if (!strcmp(path, "/health")) return "/health";
    if (!strcmp(path, "/metrics")) return "/metrics";
    return "other";
}

/* The request's id, trace and start, attached to it; the id goes back in X-Request-Id on
 * whatever answer it gets. */
static void begin_request(http_request *req, const char *method, const char *path)
{
    struct gw_reqinfo *info = calloc(1, sizeof *info);
    http_request_set_data(req, info);
    if (!info) return;
    info->start_ns = uv_hrtime();
    trace_request_id_take(http_request_header(req, "X-Request-Id"), info->request_id);
    if (!trace_span_continue(&info->span, http_request_header(req, "traceparent"))) trace_span_root(&info->span);
    snprintf(info->peer, sizeof info->peer, "%s", http_request_peer(req));
    snprintf(info->method, sizeof info->method, "%s", method);
    utf8_clip(info->path, sizeof info->path, path, strlen(path));
    http_response_header(req, "X-Request-Id", info->request_id);
}

void gw_handle(http_request *req, void *user)
{
    struct gw *g = user;
    const char *method = http_request_method(req);
    const char *path = http_request_path(req);
    const char *route = route_name(path);
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    char shown[200]; /* the path as messages quote it: a client's bytes, cleaned and shortened */
    begin_request(req, method, path);
    /* Before authentication: a browser's preflight carries no credentials. */
    if (gw_cors_handle(g, req, route)) return;

    if (!strcmp(route, "/health")) {
        /* A draining gateway is alive but must not be sent more work. */
        gw_respond_json(g, req, route, g->draining ? 503 : 200,
                        json_pack("{s:s}", "status", g->draining ? "draining" : "ok"));
        return;
    }
    if (get && (!strcmp(path, "/") || !strcmp(path, "/chat"))) {
        size_t n;
        const char *html = gw_chat_page(&n);
        respond_raw(g, req, "other", 200, "text/html; charset=utf-8", html, n);
        return;
    }
    if (!strcmp(route, "/metrics")) {
        for (size_t i = 0; i < gw_ctls_count(g->ctls); i++)
            gw_metrics_controller(g->metrics, gw_ctls_url(g->ctls, i), gw_ctls_healthy(g->ctls, i));
        gw_metrics_failovers(g->metrics, gw_ctls_failovers(g->ctls));
        char *text = gw_metrics_render(g->metrics, g->active);
        respond_raw(g, req, route, 200, "text/plain; version=0.0.4", text, strlen(text));
        free(text);
        return;
    }
    /* The API: /v1/ and vLLM's /tokenize and /detokenize, which cost a worker's time too. */
    bool api = !strncmp(path, "/v1/", 4) || !strcmp(route, "/tokenize") || !strcmp(route, "/detokenize");
    if (api && !gw_auth_check(g->auth, http_request_header(req, "Authorization"))) {
        http_response_header(req, "WWW-Authenticate", "Bearer");
        gw_respond_error(g, req, route, 401, NULL,
                         "Incorrect or missing API key: send 'Authorization: Bearer <key>'");
        return;
    }
    if (g->draining && api) {
        /* Only requests that came before the signal are served now; a client retries
         * elsewhere (the listener is closed, so its next connection goes to another gateway). */
        http_response_header(req, "Retry-After", "1");
        gw_respond_error(g, req, route, 503, NULL, "the gateway is shutting down; retry the request");
        return;
    }
    if (!strcmp(route, "/v1/models")) {
        const char *id = path[10] == '/' && path[11] ? path + 11 : NULL;
        if (path[10] && !id) {
            gw_respond_error(g, req, route, 404, NULL, "no route for %s", utf8_clip(shown, sizeof shown, path, strlen(path)));
        } else if (!get) {
            gw_respond_error(g, req, route, 405, NULL, "use GET for %s", utf8_clip(shown, sizeof shown, path, strlen(path)));
        } else {
            handle_models(g, req, id);
        }
        return;
    }
    if (!strcmp(route, "/v1/chat/completions") || !strcmp(route, "/v1/completions")) {
        if (!post) {
            gw_respond_error(g, req, route, 405, NULL, "use POST for %s", route);
            return;
        }
        gw_generate(g, req, route, !strcmp(route, "/v1/chat/completions") ? GW_API_CHAT : GW_API_COMPLETION);
        return;
    }
    if (!strcmp(route, "/v1/embeddings") || !strcmp(route, "/tokenize") || !strcmp(route, "/detokenize")) {
        if (!post) {
            http_response_header(req, "Allow", "POST");
            gw_respond_error(g, req, route, 405, NULL, "use POST for %s", route);
        } else if (route[1] == 'v') {
            gw_embeddings(g, req);
        } else {
            gw_tokenize(g, req, route[1] == 'd');
        }
        return;
    }
    gw_respond_error(g, req, route, 404, NULL, "no route for %s", utf8_clip(shown, sizeof shown, path, strlen(path)));
}
