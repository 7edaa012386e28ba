#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/metrics_gw.h"

Test(metrics, counts_routes_statuses_and_histograms)
{
    gw_metrics *m = gw_metrics_new();
    gw_metrics_request(m, "/v1/completions", 200);
    gw_metrics_request(m, "/v1/completions", 200);
    gw_metrics_request(m, "/v1/completions", 429);
    gw_metrics_request(m, "/nowhere", 404);
    gw_metrics_ttft(m, 0.003);
    gw_metrics_ttft(m, 0.2);
    gw_metrics_itl(m, 1000.0);
    gw_metrics_tokens(m, 5, 7);
    gw_metrics_tokens(m, -1, 1);
    char *t = gw_metrics_render(m, 3);
    cr_expect(strstr(t, "sluice_gateway_requests_total{route=\"/v1/completions\",status=\"200\"} 2\n"), "%s", t);
    cr_expect(strstr(t, "sluice_gateway_requests_total{route=\"/v1/completions\",status=\"429\"} 1\n"));
    cr_expect(strstr(t, "sluice_gateway_requests_total{route=\"other\",status=\"404\"} 1\n"));
    cr_expect(strstr(t, "sluice_gateway_active_requests 3\n"));
    cr_expect(strstr(t, "sluice_gateway_time_to_first_token_seconds_bucket{le=\"0.0025\"} 0\n"));
    cr_expect(strstr(t, "sluice_gateway_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
    cr_expect(strstr(t, "sluice_gateway_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"));
    cr_expect(strstr(t, "sluice_gateway_time_to_first_token_seconds_count 2\n"));
    cr_expect(strstr(t, "sluice_gateway_inter_token_latency_seconds_bucket{le=\"120\"} 0\n"));
    cr_expect(strstr(t, "sluice_gateway_inter_token_latency_seconds_bucket{le=\"+Inf\"} 1\n"));
    cr_expect(strstr(t, "sluice_gateway_prompt_tokens_total 5\n"));
    cr_expect(strstr(t, "sluice_gateway_completion_tokens_total 8\n"));
    cr_expect(strstr(t, "# TYPE sluice_gateway_e2e_request_latency_seconds histogram\n"));
    free(t);
    gw_metrics_free(m);
}
