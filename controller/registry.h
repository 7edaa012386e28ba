/* The controller's registry of workers: who serves which model, how fast, how busy, and when
 * each was last heard from. Pure logic with an injectable clock, so expiry is testable without
 * sleeping; the HTTP side (api.c) only translates requests into these calls.
 *
 * A worker registered with check_heart_beat expires when no heartbeat arrived for longer than
 * the expiration: from then on it is never dispatched to, listed or counted, and the next
 * sweep (or a heartbeat from it) removes it. */
#ifndef SLUICE_CONTROLLER_REGISTRY_H
#define SLUICE_CONTROLLER_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ctl_registry ctl_registry;

/* Seconds on a clock that never goes backwards. */
typedef double (*ctl_clock_fn)(void *arg);
double ctl_clock_monotonic(void *arg);

/* What a worker says about itself (FastChat's worker_status). */
struct ctl_worker_status {
    const char **model_names; /* borrowed strings */
    size_t n_models;
    double speed;             /* > 0 */
    int64_t queue_length;     /* >= 0 */
};

/* A registered worker; read-only outside registry.c and dispatch.c. */
struct ctl_worker {
    char *name;               /* base URL: "http://127.0.0.1:21002" */
    char **models;            /* distinct, in the order given */
    size_t n_models;
    double speed;
    int64_t queue_length;     /* last reported, plus dispatches since (shortest_queue) */
    double queue_wait_s;      /* the oldest waiting request's age, last reported; -1: never */
    bool check_heart_beat;
    bool multimodal;
    double last_heartbeat;    /* clock seconds */
    char *address_body;       /* {"address":"<name>"}: the /get_worker_address answer, made once */
    size_t address_body_len;
};

/* How long, and for how many names at most, the registry remembers a model whose last worker
 * went (expired, unregistered, replaced): a gateway then answers 503 "try again" for it, not
 * 404 "no such model", while its workers restart. */
#define CTL_RECENT_MODEL_S 600.0
#define CTL_RECENT_MODEL_MAX 1024

/* clock NULL uses ctl_clock_monotonic. */
int ctl_registry_init(ctl_registry **out, double expiration_s, ctl_clock_fn clock, void *clock_arg);
void ctl_registry_free(ctl_registry *r);
double ctl_registry_now(const ctl_registry *r);
double ctl_registry_expiration(const ctl_registry *r);

/* Adds the worker or replaces what was known about it; its heartbeat clock restarts. */
int ctl_registry_register(ctl_registry *r, const char *name, bool check_heart_beat, bool multimodal,
                          const struct ctl_worker_status *st);
/* Returns true when the worker was known. */
bool ctl_registry_remove(ctl_registry *r, const char *name);
/* Whether a worker serves the model now (live or not yet expired and swept), or the last one
 * left within CTL_RECENT_MODEL_S. */
bool ctl_registry_recently_served(const ctl_registry *r, const char *model);
/* Records a heartbeat. Returns false for an unknown worker, and for an expired one (which is
 * removed), so that the worker registers again with fresh status. */
bool ctl_registry_heartbeat(ctl_registry *r, const char *name, int64_t queue_length);
/* A heartbeat's optional queue_wait_s (seconds the oldest waiting request has waited): kept
 * with the worker, for the autoscaling signal. */
void ctl_registry_queue_wait(ctl_registry *r, const char *name, double seconds);

/* A model's load over its live workers, for autoscaling (an HPA on the controller's metrics):
 * how many serve it, the sum of their queue lengths, and the longest queue wait any of them
 * reported (0 when none reports one; FastChat's workers do not). */
struct ctl_model_load {
    size_t workers;
    int64_t queue_length;
    double queue_wait_s;
};
void ctl_registry_model_load(const ctl_registry *r, const char *model, struct ctl_model_load *out);

/* Removes every expired worker; returns how many. */
size_t ctl_registry_sweep(ctl_registry *r);
/* Workers removed for missing heartbeats since init (by sweeps and by late heartbeats). */
uint64_t ctl_registry_expired_total(const ctl_registry *r);

struct ctl_worker *ctl_registry_find(const ctl_registry *r, const char *name);
bool ctl_registry_is_live(const ctl_registry *r, const struct ctl_worker *w, double now);
/* Every registered worker (live or not yet swept), in registration order. */
size_t ctl_registry_count(const ctl_registry *r);
struct ctl_worker *ctl_registry_worker_at(const ctl_registry *r, size_t i);
size_t ctl_registry_live_count(const ctl_registry *r);
/* The workers registered for a model (live or not); *out stays valid until the next change. */
size_t ctl_registry_model_workers(const ctl_registry *r, const char *model, struct ctl_worker *const **out);
/* Sorted distinct names of the models that have a live worker. *out is malloc'd (free it);
 * the strings are borrowed until the next change. Returns the count, or -1 out of memory. */
long ctl_registry_live_models(const ctl_registry *r, const char ***out);
/* The same, counting only workers registered as multimodal (which 1) or not (which 0). */
long ctl_registry_live_models_of(const ctl_registry *r, int which, const char ***out);

#endif
