#include "controller/dispatch.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "common/hash.h"

int ctl_dispatch_method_parse(const char *name)
{
    if (!name) return -1;
    if (strcmp(name, "shortest_queue") == 0) return CTL_DISPATCH_SHORTEST_QUEUE;
    if (strcmp(name, "lottery") == 0) return CTL_DISPATCH_LOTTERY;
    if (strcmp(name, "cache_aware") == 0) return CTL_DISPATCH_CACHE_AWARE;
    return -1;
}

const char *ctl_dispatch_method_name(enum ctl_dispatch_method m)
{
    switch (m) {
    case CTL_DISPATCH_LOTTERY: return "lottery";
    case CTL_DISPATCH_CACHE_AWARE: return "cache_aware";
    default: return "shortest_queue";
    }
}

void ctl_rng_seed(struct ctl_rng *rng, uint64_t seed)
{
    rng->state = seed;
}

uint64_t ctl_rng_next(struct ctl_rng *rng)
{
    return hash_splitmix64(&rng->state);
}

double ctl_rng_uniform(struct ctl_rng *rng)
{
    return (double)(ctl_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* What the pickers may choose from: live workers the caller did not exclude. */
struct pick_filter {
    const ctl_registry *reg;
    double now;
    const char *const *exclude;
    size_t n_exclude;
};

static bool eligible(const struct pick_filter *f, const struct ctl_worker *w)
{
    if (!ctl_registry_is_live(f->reg, w, f->now)) return false;
    for (size_t i = 0; i < f->n_exclude; i++)
        if (strcmp(w->name, f->exclude[i]) == 0) return false;
    return true;
}

static struct ctl_worker *pick_lottery(const struct pick_filter *f, struct ctl_worker *const *ws,
                                       size_t n, struct ctl_rng *rng)
{
    double total = 0;
    struct ctl_worker *last = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!eligible(f, ws[i])) continue;
        total += ws[i]->speed;
        last = ws[i];
    }
    if (!last) return NULL;
    double x = ctl_rng_uniform(rng) * total;
    for (size_t i = 0; i < n; i++) {
        if (!eligible(f, ws[i])) continue;
        if (x < ws[i]->speed) return ws[i];
        x -= ws[i]->speed;
    }
    return last; /* rounding left x just above the last slice */
}

static struct ctl_worker *pick_shortest_queue(const struct pick_filter *f, struct ctl_worker *const *ws,
                                              size_t n, struct ctl_rng *rng)
{
    struct ctl_worker *best = NULL;
    double best_score = 0;
    uint64_t ties = 0;
    for (size_t i = 0; i < n; i++) {
        struct ctl_worker *w = ws[i];
        if (!eligible(f, w)) continue;
        double score = (double)w->queue_length / w->speed;
        if (!best || score < best_score) {
            best = w;
            best_score = score;
            ties = 1;
        } else if (score == best_score) {
            /* Reservoir sampling: each of k tied workers ends up chosen with probability 1/k. */
            ties++;
            if (ctl_rng_next(rng) % ties == 0) best = w;
        }
    }
    if (best) best->queue_length++;
    return best;
}

double ctl_dispatch_rendezvous(const char *prefix_key, const char *worker_name)
{
    /* FNV-1a over key, a separator and name, then splitmix64's finalizer: stable across
     * restarts, so a prefix keeps its worker when the controller restarts. */
    uint64_t h = hash_fnv1a_str(HASH_FNV1A_INIT, prefix_key);
    h = hash_fnv1a(h, "\xff", 1);
    h = hash_fnv1a_str(h, worker_name);
    return ((double)(hash_splitmix64(&h) >> 11) + 0.5) * 0x1.0p-53;
}

static struct ctl_worker *pick_cache_aware(const struct pick_filter *f, struct ctl_worker *const *ws, size_t n,
                                           struct ctl_rng *rng, const char *key)
{
    struct ctl_worker *best = NULL;
    double best_score = 0, least_load = 0;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        struct ctl_worker *w = ws[i];
        if (!eligible(f, w)) continue;
        /* Weighted rendezvous: -speed / ln(u) wins in proportion to speed. */
        double score = -w->speed / log(ctl_dispatch_rendezvous(key, w->name));
        double load = (double)w->queue_length / w->speed;
        if (!best || score > best_score) {
            best = w;
            best_score = score;
        }
        if (!any || load < least_load) least_load = load;
        any = true;
    }
    if (!best) return NULL;
    double load = (double)best->queue_length / best->speed;
    if (load > least_load + CTL_CACHE_AWARE_MAX_EXTRA && load > least_load * CTL_CACHE_AWARE_MAX_RATIO)
        return pick_shortest_queue(f, ws, n, rng);
    best->queue_length++;
    return best;
}

struct ctl_worker *ctl_dispatch_pick_keyed(ctl_registry *r, const char *model, enum ctl_dispatch_method m,
                                           struct ctl_rng *rng, const char *const *exclude, size_t n_exclude,
                                           const char *prefix_key)
{
    struct ctl_worker *const *ws;
    size_t n = ctl_registry_model_workers(r, model, &ws);
    if (n == 0) return NULL;
    struct pick_filter f = {.reg = r, .now = ctl_registry_now(r), .exclude = exclude, .n_exclude = n_exclude};
    if (m == CTL_DISPATCH_LOTTERY) return pick_lottery(&f, ws, n, rng);
    if (m == CTL_DISPATCH_CACHE_AWARE && prefix_key && *prefix_key) return pick_cache_aware(&f, ws, n, rng, prefix_key);
    return pick_shortest_queue(&f, ws, n, rng);
}

struct ctl_worker *ctl_dispatch_pick_excluding(ctl_registry *r, const char *model,
                                               enum ctl_dispatch_method m, struct ctl_rng *rng,
                                               const char *const *exclude, size_t n_exclude)
{
    return ctl_dispatch_pick_keyed(r, model, m, rng, exclude, n_exclude, NULL);
}

struct ctl_worker *ctl_dispatch_pick(ctl_registry *r, const char *model, enum ctl_dispatch_method m,
                                     struct ctl_rng *rng)
{
    return ctl_dispatch_pick_keyed(r, model, m, rng, NULL, 0, NULL);
}
