#include "gateway/controllers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

struct gw_ctl {
    char *url;
    bool healthy;
    http_call *probe;
    struct gw_ctls *owner;
    size_t index;
};

struct gw_ctls {
    struct gw_ctl ctl[GW_CTLS_MAX];
    size_t n;
    uint64_t failovers;
    http_client *client;
    long probe_timeout_ms;
    uv_timer_t timer;
    bool timer_open;
};

int gw_ctls_init(gw_ctls **out, const char *csv, char *err, size_t cap)
{
    *out = NULL;
    gw_ctls *s = calloc(1, sizeof *s);
    if (!s) return snprintf(err, cap, "out of memory"), -1;
    for (const char *p = csv ? csv : ""; ; ) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '/')) len--;
        if (!len) {
            snprintf(err, cap, "--controller-address: an empty address in '%.200s'", csv ? csv : "");
            goto fail;
        }
        if (s->n == GW_CTLS_MAX) {
            snprintf(err, cap, "--controller-address: at most %d controllers", GW_CTLS_MAX);
            goto fail;
        }
        if (!(s->ctl[s->n].url = strndup(p, len))) {
            snprintf(err, cap, "out of memory");
            goto fail;
        }
        s->ctl[s->n].healthy = true;
        s->ctl[s->n].owner = s;
        s->ctl[s->n].index = s->n;
        s->n++;
        if (!comma) break;
        p = comma + 1;
    }
    *out = s;
    return 0;
fail:
    gw_ctls_free(s);
    return -1;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void gw_ctls_free(gw_ctls *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        if (s->ctl[i].probe) http_call_cancel(s->ctl[i].probe);
        free(s->ctl[i].url);
    }
    if (s->timer_open) {
        /* The timer is inside s: s is freed once libuv has closed it. */
        s->timer.data = s;
        uv_close((uv_handle_t *)&s->timer, on_timer_closed);
        return;
    }
    free(s);
}

size_t gw_ctls_count(const gw_ctls *s)
{
    return s->n;
}

const char *gw_ctls_url(const gw_ctls *s, size_t i)
{
    return i < s->n ? s->ctl[i].url : "";
}

bool gw_ctls_healthy(const gw_ctls *s, size_t i)
{
    return i < s->n && s->ctl[i].healthy;
}

size_t gw_ctls_order(const gw_ctls *s, size_t order[GW_CTLS_MAX])
{
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->ctl[i].healthy) order[k++] = i;
    for (size_t i = 0; i < s->n; i++)
        if (!s->ctl[i].healthy) order[k++] = i;
    return k;
}

void gw_ctls_report(gw_ctls *s, size_t i, bool ok)
{
    if (i >= s->n || s->ctl[i].healthy == ok) return;
    s->ctl[i].healthy = ok;
    if (ok) log_info("controller %s answers again", s->ctl[i].url);
    else if (s->n > 1) log_warn("controller %s failed: asking the others first until it answers again", s->ctl[i].url);
}

uint64_t gw_ctls_failovers(const gw_ctls *s)
{
    return s->failovers;
}

/* --- probes -------------------------------------------------------------------------------- */

static void on_probe_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct gw_ctl *c = user;
    c->probe = NULL;
    gw_ctls_report(c->owner, c->index, res->error == HTTP_CALL_OK && res->status == 200);
}

static void on_probe_tick(uv_timer_t *t)
{
    gw_ctls *s = t->data;
    for (size_t i = 0; i < s->n; i++) {
        struct gw_ctl *c = &s->ctl[i];
        if (c->probe) continue;
        struct http_call_opts opts = {
            .method = "GET", .url = c->url, .path = "/health", .connect_timeout_ms = s->probe_timeout_ms,
            .timeout_ms = s->probe_timeout_ms, .on_done = on_probe_done, .user = c,
        };
        if (http_client_request(s->client, &opts, &c->probe) != 0) c->probe = NULL;
    }
}

int gw_ctls_start_probes(gw_ctls *s, uv_loop_t *loop, http_client *client, long timeout_ms)
{
    s->client = client;
    s->probe_timeout_ms = timeout_ms;
    if (uv_timer_init(loop, &s->timer) != 0) return -1;
    s->timer.data = s;
    s->timer_open = true;
    return uv_timer_start(&s->timer, on_probe_tick, GW_CTLS_PROBE_MS, GW_CTLS_PROBE_MS);
}

/* --- calls with failover ------------------------------------------------------------------- */

struct gw_ctl_call {
    gw_ctls *s;
    http_client *client;
    struct gw_ctl_call_opts o;
    json_t *json;
    char *request_id;
    struct trace_span parent, span;
    size_t order[GW_CTLS_MAX], n, pos, current;
    bool healthy_at_start[GW_CTLS_MAX];
    bool healthy_only; /* after a GW_CTL_NEXT answer */
    http_call *call;
    bool in_judge, cancelled;
};

static void call_free(gw_ctl_call *c)
{
    json_decref(c->json);
    free(c->request_id);
    free(c);
}

static void on_call_done(http_call *call, const struct http_call_result *res, void *user);

/* Starts the next try; -1 when none is left or none could start. */
static int start_next(gw_ctl_call *c, bool after_failure)
{
    while (c->pos < c->n) {
        size_t i = c->order[c->pos++];
        if (c->healthy_only && !c->healthy_at_start[i]) continue;
        char rid[32 + TRACE_REQUEST_ID_SIZE], tp[32 + TRACE_TRACEPARENT_SIZE];
        const char *headers[3] = {NULL, NULL, NULL};
        size_t nh = 0;
        if (c->request_id) {
            snprintf(rid, sizeof rid, "X-Request-Id: %s", c->request_id);
            headers[nh++] = rid;
        }
        trace_span_child(&c->span, &c->parent);
        if (trace_span_active(&c->span)) {
            char v[TRACE_TRACEPARENT_SIZE];
            trace_span_header(&c->span, v);
            snprintf(tp, sizeof tp, "traceparent: %s", v);
            headers[nh++] = tp;
        }
        struct http_call_opts opts = {
            .method = c->o.method,
            .url = c->s->ctl[i].url,
            .path = c->o.path,
            .json = c->json,
            .body = c->json ? NULL : "{}",
            .body_len = c->json ? 0 : 2,
            .headers = headers,
            .connect_timeout_ms = c->o.timeout_ms,
            .timeout_ms = c->o.timeout_ms,
            .on_done = on_call_done,
            .user = c,
        };
        c->current = i;
        if (http_client_request(c->client, &opts, &c->call) == 0) {
            if (after_failure) c->s->failovers++;
            return 0;
        }
        c->call = NULL;
        gw_ctls_report(c->s, i, false);
        after_failure = true;
    }
    return -1;
}

static void on_call_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    gw_ctl_call *c = user;
    c->call = NULL;
    size_t i = c->current;
    trace_span_log(&c->span, c->o.span_name ? c->o.span_name : "controller.call",
                   json_pack("{s:s, s:I, s:s?}", "controller", c->s->ctl[i].url, "status", (json_int_t)res->status,
                             "error", res->error ? http_call_error_describe(res->error) : NULL));
    c->in_judge = true;
    int verdict = c->o.judge(i, res, c->o.user);
    c->in_judge = false;
    if (c->cancelled) {
        call_free(c);
        return;
    }
    gw_ctls_report(c->s, i, verdict != GW_CTL_FAILED);
    if (verdict == GW_CTL_FAILED)
        log_warn("controller %s failed a %s call (%s, status %ld)%s", c->s->ctl[i].url, c->o.path,
                 res->error ? res->error_text : "bad answer", res->status,
                 c->pos < c->n ? ": asking the next one" : "");
    if (verdict == GW_CTL_NEXT) c->healthy_only = true;
    if (verdict == GW_CTL_DONE || start_next(c, verdict == GW_CTL_FAILED) != 0) {
        c->o.end(verdict == GW_CTL_DONE, c->o.user);
        call_free(c);
    }
}

int gw_ctls_call(gw_ctls *s, http_client *client, const struct gw_ctl_call_opts *o, gw_ctl_call **out)
{
    *out = NULL;
    gw_ctl_call *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->s = s;
    c->client = client;
    c->o = *o;
    c->json = o->json ? json_incref((json_t *)o->json) : NULL;
    c->request_id = o->request_id ? strdup(o->request_id) : NULL;
    if (o->parent) c->parent = *o->parent;
    c->n = gw_ctls_order(s, c->order);
    for (size_t i = 0; i < s->n; i++) c->healthy_at_start[i] = s->ctl[i].healthy;
    if (start_next(c, false) != 0) {
        call_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void gw_ctl_call_cancel(gw_ctl_call *c)
{
    if (!c) return;
    if (c->call) http_call_cancel(c->call);
    c->call = NULL;
    if (c->in_judge) {
        c->cancelled = true;
        return;
    }
    call_free(c);
}
