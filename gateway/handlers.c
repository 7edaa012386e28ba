/* Request dispatch: health, metrics, auth, the model list, and the two generation routes. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/utf8.h"
#include "gateway/chat_page.h"
#include "gateway/gateway.h"
#include "gateway/validate.h"

double gw_now(void)
{
    return (double)uv_hrtime() / 1e9;
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
    http_respond_error(req, status, param && *param ? param : NULL, "%s", msg);
}

void gw_respond_json(struct gw *g, http_request *req, const char *route, int status, json_t *body)
{
    gw_metrics_request(g->metrics, route, status);
    http_respond_json(req, status, body);
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
    (void)req;
    struct models_req *m = arg;
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
    if (!strncmp(path, "/v1/models", 10)) return "/v1/models";
    if (!strcmp(path, "/health")) return "/health";
    if (!strcmp(path, "/metrics")) return "/metrics";
    return "other";
}

void gw_handle(http_request *req, void *user)
{
    struct gw *g = user;
    const char *method = http_request_method(req);
    const char *path = http_request_path(req);
    const char *route = route_name(path);
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    char shown[200]; /* the path as messages quote it: a client's bytes, cleaned and shortened */

    if (!strcmp(route, "/health")) {
        /* A draining gateway is alive but must not be sent more work. */
        gw_respond_json(g, req, route, g->draining ? 503 : 200,
                        json_pack("{s:s}", "status", g->draining ? "draining" : "ok"));
        return;
    }
    if (get && (!strcmp(path, "/") || !strcmp(path, "/chat"))) {
        size_t n;
        const char *html = gw_chat_page(&n);
        gw_metrics_request(g->metrics, "other", 200);
        http_respond(req, 200, "text/html; charset=utf-8", html, n);
        return;
    }
    if (!strcmp(route, "/metrics")) {
        char *text = gw_metrics_render(g->metrics, g->active);
        gw_metrics_request(g->metrics, route, 200);
        http_respond(req, 200, "text/plain; version=0.0.4", text, strlen(text));
        free(text);
        return;
    }
    if (!strncmp(path, "/v1/", 4) && !gw_auth_check(g->auth, http_request_header(req, "Authorization"))) {
        http_response_header(req, "WWW-Authenticate", "Bearer");
        gw_respond_error(g, req, route, 401, NULL,
                         "Incorrect or missing API key: send 'Authorization: Bearer <key>'");
        return;
    }
    if (g->draining && !strncmp(path, "/v1/", 4)) {
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
    gw_respond_error(g, req, route, 404, NULL, "no route for %s", utf8_clip(shown, sizeof shown, path, strlen(path)));
}
