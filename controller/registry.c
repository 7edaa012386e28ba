#include "controller/registry.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "common/log.h"
#include "common/recent.h"
#include "common/strmap.h"

/* The workers that serve one model. */
struct ctl_model {
    struct ctl_worker **workers;
    size_t n, cap;
};

struct ctl_registry {
    double expiration;
    ctl_clock_fn clock;
    void *clock_arg;
    struct ctl_worker **workers; /* registration order */
    size_t n_workers, cap_workers;
    strmap *by_name;  /* name -> struct ctl_worker */
    strmap *by_model; /* model -> struct ctl_model */
    recent *gone;     /* models whose last worker left, and when */
    uint64_t expired;  /* workers removed for missing heartbeats, ever */
};

double ctl_clock_monotonic(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ctl_registry_init(ctl_registry **out, double expiration_s, ctl_clock_fn clock, void *clock_arg)
{
    ctl_registry *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->expiration = expiration_s;
    r->clock = clock ? clock : ctl_clock_monotonic;
    r->clock_arg = clock_arg;
    if (strmap_init(&r->by_name) != 0 || strmap_init(&r->by_model) != 0 || recent_init(&r->gone, CTL_RECENT_MODEL_MAX, CTL_RECENT_MODEL_S) != 0) {
        ctl_registry_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

static void worker_free(struct ctl_worker *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_models; i++) free(w->models[i]);
    free(w->models);
    free(w->name);
    free(w->address_body);
    free(w);
}

static void model_free_cb(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    struct ctl_model *m = value;
    free(m->workers);
    free(m);
}

void ctl_registry_free(ctl_registry *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_workers; i++) worker_free(r->workers[i]);
    free(r->workers);
    if (r->by_model) strmap_each(r->by_model, model_free_cb, NULL);
    strmap_free(r->by_model);
    strmap_free(r->by_name);
    recent_free(r->gone);
    free(r);
}

double ctl_registry_now(const ctl_registry *r)
{
    return r->clock(r->clock_arg);
}

double ctl_registry_expiration(const ctl_registry *r)
{
    return r->expiration;
}

bool ctl_registry_is_live(const ctl_registry *r, const struct ctl_worker *w, double now)
{
    return !w->check_heart_beat || now - w->last_heartbeat <= r->expiration;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, nc * elem);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

/* Takes the worker out of its models' lists (dropping lists that become empty), the name map
 * and the worker array, then frees it. */
static void worker_unlink(ctl_registry *r, struct ctl_worker *w)
{
    for (size_t i = 0; i < w->n_models; i++) {
        struct ctl_model *m = strmap_get(r->by_model, w->models[i]);
        if (!m) continue;
        for (size_t j = 0; j < m->n; j++) {
            if (m->workers[j] == w) {
                memmove(&m->workers[j], &m->workers[j + 1], (m->n - j - 1) * sizeof *m->workers);
                m->n--;
                break;
            }
        }
        if (m->n == 0) {
            strmap_remove(r->by_model, w->models[i]);
            free(m->workers);
            free(m);
            /* Out of memory only loses the memory, which is a hint. */
            (void)recent_note(r->gone, w->models[i], ctl_registry_now(r));
        }
    }
    strmap_remove(r->by_name, w->name);
    for (size_t i = 0; i < r->n_workers; i++) {
        if (r->workers[i] == w) {
            memmove(&r->workers[i], &r->workers[i + 1], (r->n_workers - i - 1) * sizeof *r->workers);
            r->n_workers--;
            break;
        }
    }
    worker_free(w);
}

static struct ctl_worker *worker_new(const char *name, bool check_heart_beat, bool multimodal,
                                     const struct ctl_worker_status *st, double now)
{
    struct ctl_worker *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->name = strdup(name);
    w->models = calloc(st->n_models ? st->n_models : 1, sizeof *w->models);
    if (!w->name || !w->models) goto fail;
    for (size_t i = 0; i < st->n_models; i++) {
        bool seen = false;
        for (size_t j = 0; j < w->n_models && !seen; j++) seen = strcmp(w->models[j], st->model_names[i]) == 0;
        if (seen) continue;
        if (!(w->models[w->n_models] = strdup(st->model_names[i]))) goto fail;
        w->n_models++;
    }
    w->speed = st->speed;
    w->queue_length = st->queue_length;
    w->queue_wait_s = -1;
    w->check_heart_beat = check_heart_beat;
    w->multimodal = multimodal;
    w->last_heartbeat = now;
    /* The name is escaped once here, so that dispatch answers with no JSON work. */
    json_t *body = json_pack("{s:s}", "address", name);
    w->address_body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!w->address_body) goto fail;
    w->address_body_len = strlen(w->address_body);
    return w;
fail:
    worker_free(w);
    return NULL;
}

int ctl_registry_register(ctl_registry *r, const char *name, bool check_heart_beat, bool multimodal,
                          const struct ctl_worker_status *st)
{
    struct ctl_worker *old = strmap_get(r->by_name, name);
    if (old) worker_unlink(r, old);
    struct ctl_worker *w = worker_new(name, check_heart_beat, multimodal, st, ctl_registry_now(r));
    if (!w) return -1;
    if (grow((void **)&r->workers, &r->cap_workers, r->n_workers + 1, sizeof *r->workers) != 0 ||
        strmap_put(r->by_name, name, w) != 0) {
        worker_free(w);
        return -1;
    }
    r->workers[r->n_workers++] = w;
    for (size_t i = 0; i < w->n_models; i++) {
        recent_forget(r->gone, w->models[i]);
        struct ctl_model *m = strmap_get(r->by_model, w->models[i]);
        if (!m) {
            m = calloc(1, sizeof *m);
            if (!m || strmap_put(r->by_model, w->models[i], m) != 0) {
                free(m);
                goto fail;
            }
        }
        if (grow((void **)&m->workers, &m->cap, m->n + 1, sizeof *m->workers) != 0) {
            /* worker_unlink drops the list if this left it empty. */
            goto fail;
        }
        m->workers[m->n++] = w;
    }
    return 0;
fail:
    worker_unlink(r, w);
    return -1;
}

bool ctl_registry_remove(ctl_registry *r, const char *name)
{
    struct ctl_worker *w = strmap_get(r->by_name, name);
    if (!w) return false;
    worker_unlink(r, w);
    return true;
}

bool ctl_registry_recently_served(const ctl_registry *r, const char *model)
{
    struct ctl_model *m = strmap_get(r->by_model, model);
    if (m && m->n > 0) return true;
    return recent_within(r->gone, model, ctl_registry_now(r));
}

bool ctl_registry_heartbeat(ctl_registry *r, const char *name, int64_t queue_length)
{
    struct ctl_worker *w = strmap_get(r->by_name, name);
    if (!w) return false;
    double now = ctl_registry_now(r);
    if (!ctl_registry_is_live(r, w, now)) {
        log_info("worker %s expired (no heartbeat for %.1f s); asking it to register again", name,
                 now - w->last_heartbeat);
        worker_unlink(r, w);
        r->expired++;
        return false;
    }
    w->queue_length = queue_length;
    w->last_heartbeat = now;
    return true;
}

void ctl_registry_queue_wait(ctl_registry *r, const char *name, double seconds)
{
    struct ctl_worker *w = strmap_get(r->by_name, name);
    if (w) w->queue_wait_s = seconds;
}

void ctl_registry_model_load(const ctl_registry *r, const char *model, struct ctl_model_load *out)
{
    memset(out, 0, sizeof *out);
    struct ctl_model *m = strmap_get(r->by_model, model);
    double now = ctl_registry_now(r);
    for (size_t i = 0; m && i < m->n; i++) {
        const struct ctl_worker *w = m->workers[i];
        if (!ctl_registry_is_live(r, w, now)) continue;
        out->workers++;
        out->queue_length += w->queue_length;
        if (w->queue_wait_s > out->queue_wait_s) out->queue_wait_s = w->queue_wait_s;
    }
}

size_t ctl_registry_sweep(ctl_registry *r)
{
    double now = ctl_registry_now(r);
    size_t removed = 0;
    for (size_t i = 0; i < r->n_workers;) {
        struct ctl_worker *w = r->workers[i];
        if (ctl_registry_is_live(r, w, now)) {
            i++;
            continue;
        }
        log_info("worker %s expired: no heartbeat for %.1f s", w->name, now - w->last_heartbeat);
        worker_unlink(r, w); /* shifts the array down: i now names the next worker */
        removed++;
    }
    r->expired += removed;
    return removed;
}

struct ctl_worker *ctl_registry_find(const ctl_registry *r, const char *name)
{
    return strmap_get(r->by_name, name);
}

uint64_t ctl_registry_expired_total(const ctl_registry *r)
{
    return r->expired;
}

size_t ctl_registry_count(const ctl_registry *r)
{
    return r->n_workers;
}

struct ctl_worker *ctl_registry_worker_at(const ctl_registry *r, size_t i)
{
    return i < r->n_workers ? r->workers[i] : NULL;
}

size_t ctl_registry_live_count(const ctl_registry *r)
{
    double now = ctl_registry_now(r);
    size_t n = 0;
    for (size_t i = 0; i < r->n_workers; i++) n += ctl_registry_is_live(r, r->workers[i], now);
    return n;
}

size_t ctl_registry_model_workers(const ctl_registry *r, const char *model, struct ctl_worker *const **out)
{
    struct ctl_model *m = strmap_get(r->by_model, model);
    if (!m) {
        *out = NULL;
        return 0;
    }
    *out = m->workers;
    return m->n;
}

struct live_models_ctx {
    const ctl_registry *r;
    double now;
    const char **names;
    size_t n;
    int which; /* -1 any worker, 0 language-only, 1 multimodal */
};

static void collect_live_model(const char *key, void *value, void *arg)
{
    struct live_models_ctx *c = arg;
    struct ctl_model *m = value;
    for (size_t i = 0; i < m->n; i++) {
        if (c->which >= 0 && (int)m->workers[i]->multimodal != c->which) continue;
        if (ctl_registry_is_live(c->r, m->workers[i], c->now)) {
            c->names[c->n++] = key;
            return;
        }
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

long ctl_registry_live_models(const ctl_registry *r, const char ***out)
{
    return ctl_registry_live_models_of(r, -1, out);
}

long ctl_registry_live_models_of(const ctl_registry *r, int which, const char ***out)
{
    size_t total = strmap_count(r->by_model);
    struct live_models_ctx c = {r, ctl_registry_now(r), malloc((total ? total : 1) * sizeof(char *)), 0, which};
    if (!c.names) return -1;
    strmap_each(r->by_model, collect_live_model, &c);
    qsort(c.names, c.n, sizeof *c.names, cmp_str);
    *out = c.names;
    return (long)c.n;
}
