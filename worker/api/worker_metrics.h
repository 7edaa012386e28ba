/* The worker's Prometheus metrics (common/metrics.h), kept as series pointers so that the
 * request path updates them without lookups. Gauges that mirror the engine are refreshed
 * when /metrics is read. */
#ifndef SLUICE_WORKER_METRICS_H
#define SLUICE_WORKER_METRICS_H

#include "common/metrics.h"
#include "worker/engine/engine.h"

struct worker_metrics {
    metrics *registry;
    metrics_series *running, *waiting, *active, *kv_total, *kv_free;
    metrics_series *requests, *rejected, *aborted;
    metrics_series *prompt_tokens, *generation_tokens, *steps, *overlapped_steps, *preemptions;
    metrics_series *prefix_queries, *prefix_hits, *prefix_hit_rate, *kv_cached;
    metrics_series *time_to_first_token, *request_latency;
    metrics_series *grammar_masks, *grammar_mask_seconds;
};

int worker_metrics_init(struct worker_metrics *wm);
void worker_metrics_free(struct worker_metrics *wm);
/* Prefix cache hits over queries, in tokens; 0 before any query. */
static inline double worker_prefix_hit_rate(const struct engine_stats *st)
{
    return st->prefix_query_tokens ? (double)st->prefix_hit_tokens / (double)st->prefix_query_tokens : 0.0;
}

/* Copies the engine's gauges in and renders the page (malloc'd). */
char *worker_metrics_render(struct worker_metrics *wm, const struct engine_stats *st, int active,
                            size_t *len);

#endif
