#include "gateway/models_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "common/log.h"
#include "common/recent.h"

struct gw_models_wait {
    struct gw_models_wait *next;
    gw_models_cb cb;
    void *user;
};

struct gw_models {
    http_client *client;
    gw_ctls *ctls;
    long timeout_ms, ttl_ms;
    json_t *names;        /* cached list, NULL when none */
    uint64_t fetched_ms;  /* uv_hrtime of the cached list */
    recent *seen;         /* names listed or routed lately, on the now_s() clock */
    double unix_offset;   /* wall clock minus now_s() at init: a first-seen time as unix time */
    gw_ctl_call *call;    /* the refresh in flight */
    json_t *fetched;      /* what the refresh got, until it ends */
    gw_models_wait *waiters;
};

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

int gw_models_init(gw_models **out, http_client *client, gw_ctls *ctls, long timeout_ms, long ttl_ms)
{
    *out = NULL;
    gw_models *m = calloc(1, sizeof *m);
    if (!m || recent_init(&m->seen, GW_MODELS_RECENT_MAX, GW_MODELS_RECENT_S) != 0) {
        free(m);
        return -1;
    }
    m->client = client;
    m->ctls = ctls;
    m->timeout_ms = timeout_ms;
    m->ttl_ms = ttl_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->unix_offset = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - now_s();
    *out = m;
    return 0;
}

void gw_models_free(gw_models *m)
{
    if (!m) return;
    if (m->call) gw_ctl_call_cancel(m->call);
    json_decref(m->fetched);
    while (m->waiters) {
        gw_models_wait *w = m->waiters;
        m->waiters = w->next;
        free(w);
    }
    json_decref(m->names);
    recent_free(m->seen);
    free(m);
}

static json_t *parse_names(const struct http_call_result *res)
{
    if (res->error != HTTP_CALL_OK || res->status != 200) return NULL;
    json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *models = json_object_get(root, "models");
    json_t *names = NULL;
    if (json_is_array(models)) {
        names = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(models, i, v) {
            if (json_is_string(v)) json_array_append(names, v);
        }
    }
    json_decref(root);
    return names;
}

static int judge_list(size_t ctl, const struct http_call_result *res, void *user)
{
    gw_models *m = user;
    json_t *names = parse_names(res);
    (void)ctl;
    if (!names) return GW_CTL_FAILED; /* logged by the call */
    json_decref(m->fetched);
    m->fetched = names;
    return GW_CTL_DONE;
}

static void on_list_end(bool done, void *user)
{
    (void)done;
    gw_models *m = user;
    m->call = NULL;
    json_t *names = m->fetched;
    m->fetched = NULL;
    if (names) {
        json_decref(m->names);
        m->names = names;
        m->fetched_ms = now_ms();
        size_t i;
        json_t *v;
        json_array_foreach(names, i, v) gw_models_note_served(m, json_string_value(v));
    }
    /* Waiters are detached first: a callback may start a new get. */
    gw_models_wait *w = m->waiters;
    m->waiters = NULL;
    json_t *hold = json_incref(m->names);
    while (w) {
        gw_models_wait *next = w->next;
        w->cb(names ? 0 : -1, names ? hold : NULL, w->user);
        free(w);
        w = next;
    }
    json_decref(hold);
}

void gw_models_get(gw_models *m, gw_models_cb cb, void *user, gw_models_wait **wait)
{
    *wait = NULL;
    if (m->names && now_ms() - m->fetched_ms < (uint64_t)m->ttl_ms) {
        cb(0, m->names, user);
        return;
    }
    gw_models_wait *w = calloc(1, sizeof *w);
    w->cb = cb;
    w->user = user;
    w->next = m->waiters;
    m->waiters = w;
    *wait = w;
    if (m->call) return;
    struct gw_ctl_call_opts opts = {
        .method = "POST",
        .path = "/list_models",
        .timeout_ms = m->timeout_ms,
        /* No span: one refresh serves every request waiting for it, so it has no one parent. */
        .judge = judge_list,
        .end = on_list_end,
        .user = m,
    };
    if (gw_ctls_call(m->ctls, m->client, &opts, &m->call) != 0) {
        m->call = NULL;
        *wait = NULL; /* answered below, before returning */
        on_list_end(false, m);
    }
}

void gw_models_wait_cancel(gw_models *m, gw_models_wait *wait)
{
    for (gw_models_wait **p = &m->waiters; *p; p = &(*p)->next) {
        if (*p == wait) {
            *p = wait->next;
            free(wait);
            return;
        }
    }
}

void gw_models_note_served(gw_models *m, const char *name)
{
    (void)recent_note(m->seen, name, now_s()); /* out of memory loses only the hint */
}

bool gw_models_recently_served(const gw_models *m, const char *name)
{
    return recent_within(m->seen, name, now_s());
}

int64_t gw_models_created(const gw_models *m, const char *name)
{
    double first;
    return recent_first(m->seen, name, &first) ? (int64_t)(first + m->unix_offset) : (int64_t)time(NULL);
}
