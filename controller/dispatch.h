/* Choosing a worker for a model, as FastChat's controller does.
 *
 * lottery: worker i with probability speed_i / sum(speed) over the model's live workers.
 * shortest_queue: the live worker with the least queue_length / speed, ties broken uniformly
 * at random; the chosen worker's queue_length grows by one until its next heartbeat reports
 * the truth, so a burst of requests between heartbeats spreads instead of piling on one.
 * cache_aware (as SGLang's router does it): requests whose prompts start the same way go to
 * the same worker, which holds their prefix in its KV cache. The gateway cannot tokenize, so
 * it sends a key of the prompt's text prefix (/get_worker_address's "prefix_key"); the worker
 * is the key's rendezvous choice among the model's live workers: the highest score of a hash
 * of (key, worker name), weighted by speed. Keys spread evenly, and when a worker joins or
 * leaves only the keys it wins or held move. When the chosen worker's load (queue_length /
 * speed) exceeds the least load by more than CTL_CACHE_AWARE_MAX_EXTRA and by more than
 * CTL_CACHE_AWARE_MAX_RATIO times, the request goes to the shortest queue instead, so a hot
 * prefix does not pile on one worker. Without a key it is shortest_queue. Either way the
 * chosen worker's queue_length grows by one until its next heartbeat. */
#ifndef SLUICE_CONTROLLER_DISPATCH_H
#define SLUICE_CONTROLLER_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "controller/registry.h"

enum ctl_dispatch_method { CTL_DISPATCH_SHORTEST_QUEUE = 0, CTL_DISPATCH_LOTTERY = 1, CTL_DISPATCH_CACHE_AWARE = 2 };

#define CTL_CACHE_AWARE_MAX_EXTRA 16.0
#define CTL_CACHE_AWARE_MAX_RATIO 1.5

/* Returns the method, or -1 for an unknown name. */
int ctl_dispatch_method_parse(const char *name);
const char *ctl_dispatch_method_name(enum ctl_dispatch_method m);

/* splitmix64: small, fast, and good enough to draw workers; seeded for reproducible tests. */
struct ctl_rng {
    uint64_t state;
};
void ctl_rng_seed(struct ctl_rng *rng, uint64_t seed);
uint64_t ctl_rng_next(struct ctl_rng *rng);
double ctl_rng_uniform(struct ctl_rng *rng); /* [0, 1) */

/* The chosen live worker, or NULL when none serves the model. */
/* The same, never choosing a worker named in exclude (the gateway retrying elsewhere after a
 * worker failed it); NULL when every live worker is excluded. */
struct ctl_worker *ctl_dispatch_pick_excluding(ctl_registry *r, const char *model,
                                               enum ctl_dispatch_method m, struct ctl_rng *rng,
                                               const char *const *exclude, size_t n_exclude);
struct ctl_worker *ctl_dispatch_pick(ctl_registry *r, const char *model, enum ctl_dispatch_method m,
                                     struct ctl_rng *rng);
/* The same with the request's prefix key (NULL or "": none), which only cache_aware reads. */
struct ctl_worker *ctl_dispatch_pick_keyed(ctl_registry *r, const char *model, enum ctl_dispatch_method m,
                                           struct ctl_rng *rng, const char *const *exclude, size_t n_exclude,
                                           const char *prefix_key);
/* A worker's rendezvous score for a key (before weighting by speed): a uniform draw in (0, 1)
 * that depends only on the two strings. */
double ctl_dispatch_rendezvous(const char *prefix_key, const char *worker_name);

#endif
