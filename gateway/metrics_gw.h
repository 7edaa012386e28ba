/* The gateway's Prometheus metrics: requests by route and status, time to first token,
 * inter-token latency, end-to-end latency, prompt and completion tokens. Loop thread only. */
#ifndef SLUICE_GATEWAY_METRICS_GW_H
#define SLUICE_GATEWAY_METRICS_GW_H

#include <stdbool.h>
#include <stdint.h>

typedef struct gw_metrics gw_metrics;

gw_metrics *gw_metrics_new(void);
void gw_metrics_free(gw_metrics *m);
/* route is one of the gateway's paths; anything else is counted as "other". */
void gw_metrics_request(gw_metrics *m, const char *route, int status);
void gw_metrics_ttft(gw_metrics *m, double seconds);
void gw_metrics_itl(gw_metrics *m, double seconds);
void gw_metrics_e2e(gw_metrics *m, double seconds);
void gw_metrics_tokens(gw_metrics *m, int64_t prompt, int64_t completion);
void gw_metrics_retry(gw_metrics *m);
/* Requests refused 429 by a rate limit (by "requests" or "tokens"). */
void gw_metrics_rate_limited(gw_metrics *m, bool by_tokens);
/* A controller's health (1 up, 0 failed: asked only after the others), and the calls that
 * moved on from a failed controller so far (gateway/controllers.h). */
void gw_metrics_controller(gw_metrics *m, const char *url, bool up);
void gw_metrics_failovers(gw_metrics *m, uint64_t total);
/* Prometheus text exposition; malloc'd. */
char *gw_metrics_render(const gw_metrics *m, unsigned active_requests);

#endif
