#include "worker/api/worker_metrics.h"

#include <string.h>

static metrics_series *gauge(metrics *m, const char *name, const char *help)
{
    return metrics_series_get(metrics_gauge_new(m, name, help, NULL), NULL);
}

static metrics_series *counter(metrics *m, const char *name, const char *help)
{
    return metrics_series_get(metrics_counter_new(m, name, help, NULL), NULL);
}

int worker_metrics_init(struct worker_metrics *wm)
{
    memset(wm, 0, sizeof *wm);
    if (metrics_init(&wm->registry) != 0) return -1;
    metrics *m = wm->registry;
    wm->running = gauge(m, "sluice_worker_requests_running", "Sequences the engine is generating.");
    wm->waiting = gauge(m, "sluice_worker_requests_waiting", "Sequences waiting for admission.");
    wm->active = gauge(m, "sluice_worker_requests_active", "Requests accepted and not finished.");
    wm->kv_total = gauge(m, "sluice_worker_kv_blocks_capacity", "KV cache blocks in all.");
    wm->kv_free = gauge(m, "sluice_worker_kv_blocks_free", "KV cache blocks free.");
    wm->requests = counter(m, "sluice_worker_requests_total", "Generation requests accepted.");
    wm->rejected = counter(m, "sluice_worker_requests_rejected_total", "Generation requests rejected.");
    wm->aborted = counter(m, "sluice_worker_requests_aborted_total", "Requests whose client went away.");
    wm->prompt_tokens = counter(m, "sluice_worker_prompt_tokens_total", "Prompt tokens accepted.");
    wm->generation_tokens = counter(m, "sluice_worker_generation_tokens_total", "Tokens generated.");
    wm->steps = counter(m, "sluice_worker_engine_steps_total", "Engine steps.");
    wm->overlapped_steps = counter(m, "sluice_worker_engine_overlapped_steps_total",
                                   "Engine steps queued on the device behind the step before it.");
    wm->preemptions = counter(m, "sluice_worker_preemptions_total", "Sequences preempted for KV space.");
    /* As vLLM's prefix_cache_queries / prefix_cache_hits: in tokens, over every admission. */
    wm->prefix_queries = counter(m, "sluice_worker_prefix_cache_queries_total",
                                 "Prompt tokens looked up in the prefix cache (each admission of a sequence).");
    wm->prefix_hits = counter(m, "sluice_worker_prefix_cache_hits_total",
                              "Prompt tokens found in the prefix cache, not computed again.");
    wm->prefix_hit_rate = gauge(m, "sluice_worker_prefix_cache_hit_rate",
                                "Prefix cache hits over queries since the start, in tokens (0 before any query).");
    wm->kv_cached = gauge(m, "sluice_worker_kv_blocks_cached", "KV cache blocks holding reusable prompt prefixes.");
    wm->grammar_masks = counter(m, "sluice_worker_grammar_masks_total",
                                "Structured output: token masks made (one per constrained sequence a step).");
    wm->grammar_mask_seconds = counter(m, "sluice_worker_grammar_mask_seconds_total",
                                       "Structured output: host time spent making token masks.");
    wm->time_to_first_token = metrics_series_get(
        metrics_histogram_new(m, "sluice_worker_time_to_first_token_seconds",
                              "From accepting a request to its first token.", NULL, NULL, 0),
        NULL);
    wm->request_latency = metrics_series_get(
        metrics_histogram_new(m, "sluice_worker_request_duration_seconds",
                              "From accepting a request to its last token.", NULL, NULL, 0),
        NULL);
    return wm->request_latency ? 0 : -1;
}

void worker_metrics_free(struct worker_metrics *wm)
{
    metrics_free(wm->registry);
    memset(wm, 0, sizeof *wm);
}

char *worker_metrics_render(struct worker_metrics *wm, const struct engine_stats *st, int active,
                            size_t *len)
{
    metrics_series_set(wm->running, st->running);
    metrics_series_set(wm->waiting, st->waiting);
    metrics_series_set(wm->active, active);
    metrics_series_set(wm->kv_total, st->kv_blocks_total);
    metrics_series_set(wm->kv_free, st->kv_blocks_free);
    /* The engine counts steps and preemptions on its own thread: mirror the totals. */
    metrics_series_add(wm->steps, (double)st->steps - metrics_series_value(wm->steps));
    metrics_series_add(wm->overlapped_steps,
                       (double)st->overlapped_steps - metrics_series_value(wm->overlapped_steps));
    metrics_series_add(wm->preemptions, (double)st->preemptions - metrics_series_value(wm->preemptions));
    metrics_series_add(wm->prefix_queries,
                       (double)st->prefix_query_tokens - metrics_series_value(wm->prefix_queries));
    metrics_series_add(wm->prefix_hits, (double)st->prefix_hit_tokens - metrics_series_value(wm->prefix_hits));
    metrics_series_set(wm->prefix_hit_rate, worker_prefix_hit_rate(st));
    metrics_series_set(wm->kv_cached, st->kv_blocks_cached);
    metrics_series_add(wm->grammar_masks, (double)st->grammar_masks - metrics_series_value(wm->grammar_masks));
    metrics_series_add(wm->grammar_mask_seconds,
                       st->grammar_mask_seconds - metrics_series_value(wm->grammar_mask_seconds));
    return metrics_render(wm->registry, len);
}
