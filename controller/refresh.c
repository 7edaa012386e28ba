/* Asking workers for their status (POST <worker>/worker_get_status) on the loop, for
 * /register_worker without worker_status and for /refresh_all_workers. A request waits for
 * its calls; a client that leaves early only loses the answer, the registry is still updated. */
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/net_addr.h"
#include "controller/controller.h"
#include "controller/payload.h"

struct ctl_fetch {
    struct ctl_op *op;
    char *name;
    http_call *call;
    bool done;
};

struct ctl_op {
    struct ctl *c;
    struct ctl_op *prev, *next; /* in c->ops */
    http_request *req;          /* NULL once answered or its client left */
    bool is_register;           /* else a refresh of every worker */
    bool check_heart_beat, multimodal;
    bool ok;                    /* a register: the worker answered and was registered */
    size_t pending;             /* calls not done yet, plus one while starting them */
    size_t n_fetch;
    struct ctl_fetch fetch[];
};

static void op_free(struct ctl_op *op)
{
    struct ctl *c = op->c;
    if (op->prev) op->prev->next = op->next;
    else c->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    for (size_t i = 0; i < op->n_fetch; i++) free(op->fetch[i].name);
    free(op);
}

static void on_req_closed(http_request *req, void *arg)
{
    (void)req;
    struct ctl_op *op = arg;
    op->req = NULL;
}

static void op_finish(struct ctl_op *op)
{
    bool ok = !op->is_register || op->ok;
    const char *name = op->n_fetch ? op->fetch[0].name : "";
    if (op->req) {
        if (ok) http_respond(op->req, 200, "application/json", "{}", 2);
        else http_respond_error(op->req, 502, "worker_name", "could not get the status of worker %s", name);
        op->req = NULL;
    }
    op_free(op);
}

/* One call ended: ok with a status, or failed. */
static void fetch_done(struct ctl_fetch *f, const struct ctl_worker_status *st)
{
    struct ctl_op *op = f->op;
    struct ctl *c = op->c;
    f->done = true;
    f->call = NULL;
    if (op->is_register) {
        bool ok = false;
        if (st) {
            ok = ctl_registry_register(c->reg, f->name, op->check_heart_beat, op->multimodal, st) == 0;
            if (ok) {
                ctl_count_models(c, st);
                c->registrations++;
                log_info("registered worker %s from its status: %zu model(s) starting with %s", f->name,
                         st->n_models, st->model_names[0]);
            }
        } else {
            log_warn("not registering %s: its /worker_get_status failed", f->name);
        }
        op->ok = ok;
        if (--op->pending == 0) op_finish(op);
        return;
    }
    /* Refresh: a worker removed or re-registered meanwhile keeps what it has now. */
    struct ctl_worker *w = ctl_registry_find(c->reg, f->name);
    if (w) {
        if (st) {
            bool check = w->check_heart_beat, mm = w->multimodal;
            if (ctl_registry_register(c->reg, f->name, check, mm, st) == 0) ctl_count_models(c, st);
        } else {
            log_info("removing worker %s: its /worker_get_status failed", f->name);
            ctl_registry_remove(c->reg, f->name);
            c->refresh_removed++;
        }
    }
    if (--op->pending == 0) op_finish(op);
}

static void on_call_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct ctl_fetch *f = user;
    struct ctl_worker_status st;
    bool ok = false;
    if (res->error == HTTP_CALL_OK && res->status == 200) {
        struct json_field_error err = {{0}, {0}};
        json_t *obj = json_parse_object(res->body, res->body_len, &err);
        if (obj && ctl_payload_status(obj, NULL, &st, &err) == 0) {
            ok = true;
            fetch_done(f, &st);
            ctl_worker_status_clear(&st);
        } else {
            log_warn("worker %s: bad /worker_get_status answer: %s", f->name, err.message);
        }
        json_decref(obj);
    } else {
        log_warn("worker %s: /worker_get_status failed: %s (HTTP %ld)", f->name,
                 res->error ? res->error_text : "", res->status);
    }
    if (!ok) fetch_done(f, NULL);
}

static struct ctl_op *op_new(struct ctl *c, http_request *req, size_t n)
{
    struct ctl_op *op = calloc(1, sizeof *op + n * sizeof op->fetch[0]);
    if (!op) return NULL;
    op->c = c;
    op->req = req;
    op->n_fetch = n;
    op->pending = 1;
    op->next = c->ops;
    if (c->ops) c->ops->prev = op;
    c->ops = op;
    for (size_t i = 0; i < n; i++) op->fetch[i].op = op;
    return op;
}

static void op_start(struct ctl_op *op)
{
    struct ctl *c = op->c;
    if (op->req) http_request_on_close(op->req, on_req_closed, op);
    op->pending += op->n_fetch;
    for (size_t i = 0; i < op->n_fetch; i++) {
        struct ctl_fetch *f = &op->fetch[i];
        /* Registration admits only base URLs; checked again here so that no path through the
         * registry can make the controller fetch anything else. */
        char url[NET_BASE_URL_MAX];
        const char *why = "";
        if (net_base_url_parse(f->name, url, sizeof url, &why) != 0) {
            log_warn("not asking %s for its status: not a worker address: %s", f->name, why);
            fetch_done(f, NULL);
            continue;
        }
        struct http_call_opts o = {
            .method = "POST",
            .url = url,
            .path = "/worker_get_status",
            .body = "{}",
            .body_len = 2,
            .connect_timeout_ms = c->cfg.status_timeout_ms,
            .timeout_ms = c->cfg.status_timeout_ms,
            .on_done = on_call_done,
            .user = f,
        };
        http_call *call = NULL;
        int rc = http_client_request(c->client, &o, &call);
        if (rc == 0 && !f->done) f->call = call;
        if (rc != 0) fetch_done(f, NULL);
    }
    /* Drop the starting guard: with every call already done (or none), answer now. */
    if (--op->pending == 0) op_finish(op);
}

int ctl_refresh_register(struct ctl *c, http_request *req, const char *worker_name, bool check_heart_beat,
                         bool multimodal)
{
    struct ctl_op *op = op_new(c, req, 1);
    if (!op) return -1;
    op->is_register = true;
    op->check_heart_beat = check_heart_beat;
    op->multimodal = multimodal;
    if (!(op->fetch[0].name = strdup(worker_name))) {
        op_free(op);
        return -1;
    }
    op_start(op);
    return 0;
}

int ctl_refresh_all(struct ctl *c, http_request *req)
{
    size_t n = ctl_registry_count(c->reg);
    struct ctl_op *op = op_new(c, req, n);
    if (!op) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!(op->fetch[i].name = strdup(ctl_registry_worker_at(c->reg, i)->name))) {
            op_free(op);
            return -1;
        }
    }
    log_info("refreshing %zu worker(s)", n);
    op_start(op);
    return 0;
}

void ctl_refresh_cancel_all(struct ctl *c)
{
    while (c->ops) {
        struct ctl_op *op = c->ops;
        for (size_t i = 0; i < op->n_fetch; i++)
            if (op->fetch[i].call) http_call_cancel(op->fetch[i].call);
        /* Answering detaches the request, so its close callback never sees the freed op. */
        if (op->req) http_respond_error(op->req, 503, NULL, "the controller is shutting down");
        op->req = NULL;
        op_free(op);
    }
}
