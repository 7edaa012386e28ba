/* The gateway's metric families, kept in a common/metrics.h registry. */
#include "gateway/metrics_gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

static const char *const routes[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                                     "/tokenize", "/detokenize", "/health", "/metrics", "other"};
enum { N_ROUTES = sizeof routes / sizeof routes[0] };

/* Seconds: from 1 ms (a cached token) to 2 minutes (a long generation). */
static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0, 120.0};
enum { N_BOUNDS = sizeof bounds / sizeof bounds[0] };

struct gw_metrics {
    metrics *reg;
    metrics_family *requests, *active, *limited, *controller_up;
    metrics_series *ttft, *itl, *e2e, *prompt, *completion, *retries, *failovers;
    uint64_t failovers_seen;
};

static metrics_series *histogram(metrics *reg, const char *name, const char *help)
{
    return metrics_series_get(metrics_histogram_new(reg, name, help, NULL, bounds, N_BOUNDS), NULL);
}

static metrics_series *counter(metrics *reg, const char *name, const char *help)
{
    return metrics_series_get(metrics_counter_new(reg, name, help, NULL), NULL);
}

gw_metrics *gw_metrics_new(void)
{
    gw_metrics *m = calloc(1, sizeof *m);
    if (!m || metrics_init(&m->reg) != 0) {
        free(m);
        return NULL;
    }
    m->requests = metrics_counter_new(m->reg, "sluice_gateway_requests_total",
                                      "HTTP requests answered, by route and status.",
                                      (const char *[]){"route", "status", NULL});
    m->active = metrics_gauge_new(m->reg, "sluice_gateway_active_requests",
                                  "Generation requests in flight.", NULL);
    m->ttft = histogram(m->reg, "sluice_gateway_time_to_first_token_seconds",
                        "Time from request to the first generated token.");
    m->itl = histogram(m->reg, "sluice_gateway_inter_token_latency_seconds",
                       "Time between successive tokens of one choice.");
    m->e2e = histogram(m->reg, "sluice_gateway_e2e_request_latency_seconds",
                       "Time from request to its last byte.");
    m->prompt = counter(m->reg, "sluice_gateway_prompt_tokens_total", "Prompt tokens processed.");
    m->completion = counter(m->reg, "sluice_gateway_completion_tokens_total", "Tokens generated.");
    m->retries = counter(m->reg, "sluice_gateway_upstream_retries_total",
                         "Choices retried on another worker after failing before their first token.");
    m->limited = metrics_counter_new(m->reg, "sluice_gateway_rate_limited_total",
                                     "Requests refused 429 by a per-key rate limit, by the limit (requests or tokens).",
                                     (const char *[]){"limit", NULL});
    metrics_series_get(m->limited, (const char *[]){"requests"});
    metrics_series_get(m->limited, (const char *[]){"tokens"});
    m->controller_up = metrics_gauge_new(m->reg, "sluice_gateway_controller_up",
                                         "1 while the controller answers, 0 once a call to it failed (until a probe "
                                         "finds it back).",
                                         (const char *[]){"controller", NULL});
    m->failovers = counter(m->reg, "sluice_gateway_controller_failovers_total",
                           "Controller calls that moved on to another controller after one failed.");
    return m;
}

void gw_metrics_free(gw_metrics *m)
{
    if (!m) return;
    metrics_free(m->reg);
    free(m);
}

void gw_metrics_request(gw_metrics *m, const char *route, int status)
{
    size_t r = 0;
    /* Only known routes become label values, so random paths cannot grow the registry. */
    while (r < N_ROUTES - 1 && strcmp(routes[r], route) != 0) r++;
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    metrics_counter_add(m->requests, (const char *[]){routes[r], code}, 1);
}

void gw_metrics_ttft(gw_metrics *m, double s) { metrics_series_observe(m->ttft, s); }
void gw_metrics_itl(gw_metrics *m, double s) { metrics_series_observe(m->itl, s); }
void gw_metrics_e2e(gw_metrics *m, double s) { metrics_series_observe(m->e2e, s); }
void gw_metrics_retry(gw_metrics *m) { metrics_series_add(m->retries, 1); }

void gw_metrics_rate_limited(gw_metrics *m, bool by_tokens)
{
    metrics_counter_add(m->limited, (const char *[]){by_tokens ? "tokens" : "requests"}, 1);
}

void gw_metrics_controller(gw_metrics *m, const char *url, bool up)
{
    metrics_gauge_set(m->controller_up, (const char *[]){url}, up ? 1 : 0);
}

void gw_metrics_failovers(gw_metrics *m, uint64_t total)
{
    if (total > m->failovers_seen) metrics_series_add(m->failovers, (double)(total - m->failovers_seen));
    m->failovers_seen = total;
}

void gw_metrics_tokens(gw_metrics *m, int64_t prompt, int64_t completion)
{
    if (prompt > 0) metrics_series_add(m->prompt, (double)prompt);
    if (completion > 0) metrics_series_add(m->completion, (double)completion);
}

char *gw_metrics_render(const gw_metrics *m, unsigned active)
{
    metrics_gauge_set(m->active, NULL, (double)active);
    return metrics_render(m->reg, NULL);
}
