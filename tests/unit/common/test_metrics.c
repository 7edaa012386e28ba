#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

/* Criterion ignores LeakSanitizer's report at exit, so every test asks for one itself. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() \
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaked memory (LeakSanitizer report above)")
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

/* Ends a test: frees the registry, then nothing may be left. */
static void release(metrics *m)
{
    metrics_free(m);
    ASSERT_NO_LEAKS();
}

static char *render(metrics *m)
{
    size_t len = 0;
    char *text = metrics_render(m, &len);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len);
    return text;
}

Test(metrics, empty_registry_renders_empty_text)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    char *text = render(m);
    cr_assert_str_eq(text, "");
    free(text);
    release(m);
}

Test(metrics, counter_and_gauge_without_labels)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_family *c = metrics_counter_new(m, "sluice_requests_total", "Requests served.", NULL);
    metrics_family *g = metrics_gauge_new(m, "sluice_queue_length", "Queued requests.", NULL);
    cr_assert_not_null(c);
    cr_assert_not_null(g);

    char *text = render(m);
    cr_assert_str_eq(text, "# HELP sluice_requests_total Requests served.\n"
                           "# TYPE sluice_requests_total counter\n"
                           "sluice_requests_total 0\n"
                           "# HELP sluice_queue_length Queued requests.\n"
                           "# TYPE sluice_queue_length gauge\n"
                           "sluice_queue_length 0\n");
    free(text);

    metrics_counter_add(c, NULL, 1);
    metrics_counter_add(c, NULL, 2);
    metrics_counter_add(c, NULL, -5); /* counters never go down */
    metrics_gauge_set(g, NULL, 7);
    metrics_gauge_add(g, NULL, -2.5);
    metrics_gauge_set(c, NULL, 100); /* wrong kind: ignored */
    text = render(m);
    cr_assert_not_null(strstr(text, "\nsluice_requests_total 3\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\nsluice_queue_length 4.5\n"), "%s", text);
    free(text);
    cr_assert_eq(metrics_series_value(metrics_series_get(c, NULL)), 3);
    release(m);
}

Test(metrics, labels_make_series_in_creation_order_and_are_escaped)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_family *f = metrics_counter_new(m, "http_requests_total", "Requests by route\\status.\nSecond line",
                                            (const char *[]){"route", "status", NULL});
    cr_assert_not_null(f);
    char *text = render(m);
    cr_assert_str_eq(text, "# HELP http_requests_total Requests by route\\\\status.\\nSecond line\n"
                           "# TYPE http_requests_total counter\n");
    free(text);

    metrics_counter_add(f, (const char *[]){"/v1/models", "200"}, 1);
    metrics_counter_add(f, (const char *[]){"/v1/chat/completions", "429"}, 1);
    metrics_counter_add(f, (const char *[]){"/v1/models", "200"}, 1);
    metrics_counter_add(f, (const char *[]){"say \"hi\"\\\n", "500"}, 1);
    metrics_counter_add(f, (const char *[]){NULL, "500"}, 1); /* missing value: dropped */
    metrics_counter_add(f, NULL, 1);                          /* dropped */
    text = render(m);
    cr_assert_str_eq(text, "# HELP http_requests_total Requests by route\\\\status.\\nSecond line\n"
                           "# TYPE http_requests_total counter\n"
                           "http_requests_total{route=\"/v1/models\",status=\"200\"} 2\n"
                           "http_requests_total{route=\"/v1/chat/completions\",status=\"429\"} 1\n"
                           "http_requests_total{route=\"say \\\"hi\\\"\\\\\\n\",status=\"500\"} 1\n");
    free(text);

    /* A kept series pointer updates the same line. */
    metrics_series *s = metrics_series_get(f, (const char *[]){"/v1/models", "200"});
    cr_assert_eq(s, metrics_series_get(f, (const char *[]){"/v1/models", "200"}));
    metrics_series_add(s, 40);
    cr_assert_eq(metrics_series_value(s), 42);
    release(m);
}

Test(metrics, histogram_buckets_are_cumulative)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    const double bounds[] = {0.1, 0.5, 1};
    metrics_family *h = metrics_histogram_new(m, "ttft_seconds", "Time to first token.",
                                              (const char *[]){"model", NULL}, bounds, 3);
    cr_assert_not_null(h);
    const char *model[] = {"llama"};
    metrics_histogram_observe(h, model, 0.05);
    metrics_histogram_observe(h, model, 0.1); /* le is inclusive */
    metrics_histogram_observe(h, model, 0.3);
    metrics_histogram_observe(h, model, 7);
    metrics_histogram_observe(h, model, NAN); /* ignored */
    char *text = render(m);
    cr_assert_str_eq(text, "# HELP ttft_seconds Time to first token.\n"
                           "# TYPE ttft_seconds histogram\n"
                           "ttft_seconds_bucket{model=\"llama\",le=\"0.1\"} 2\n"
                           "ttft_seconds_bucket{model=\"llama\",le=\"0.5\"} 3\n"
                           "ttft_seconds_bucket{model=\"llama\",le=\"1\"} 3\n"
                           "ttft_seconds_bucket{model=\"llama\",le=\"+Inf\"} 4\n"
                           "ttft_seconds_sum{model=\"llama\"} 7.45\n"
                           "ttft_seconds_count{model=\"llama\"} 4\n");
    free(text);
    cr_assert_eq(metrics_series_value(metrics_series_get(h, model)), 4);
    release(m);
}

Test(metrics, histogram_default_latency_buckets)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_family *h = metrics_histogram_new(m, "e2e_seconds", "End to end.", NULL, NULL, 0);
    cr_assert_not_null(h);
    metrics_histogram_observe(h, NULL, 0.002);
    metrics_histogram_observe(h, NULL, 100);
    char *text = render(m);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_bucket{le=\"0.001\"} 0\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_bucket{le=\"0.0025\"} 1\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_bucket{le=\"60\"} 1\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_bucket{le=\"+Inf\"} 2\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_sum 100.002\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\ne2e_seconds_count 2\n"), "%s", text);
    size_t lines = 0;
    for (const char *p = text; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 2 + metrics_latency_buckets_len + 1 + 2);
    free(text);
    release(m);
}

Test(metrics, numbers_render_exactly)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_family *g = metrics_gauge_new(m, "g", "", (const char *[]){"k", NULL});
    metrics_gauge_set(g, (const char *[]){"a"}, 0.1);
    metrics_gauge_set(g, (const char *[]){"b"}, 1e21);
    metrics_gauge_set(g, (const char *[]){"c"}, -3);
    metrics_gauge_set(g, (const char *[]){"d"}, INFINITY);
    metrics_gauge_set(g, (const char *[]){"e"}, NAN);
    metrics_gauge_set(g, (const char *[]){"f"}, 1.0 / 3);
    metrics_gauge_set(g, (const char *[]){"g"}, 123456789012.0);
    char *text = render(m);
    cr_assert_str_eq(text, "# HELP g \n# TYPE g gauge\n"
                           "g{k=\"a\"} 0.1\n"
                           "g{k=\"b\"} 1e+21\n"
                           "g{k=\"c\"} -3\n"
                           "g{k=\"d\"} +Inf\n"
                           "g{k=\"e\"} NaN\n"
                           "g{k=\"f\"} 0.33333333333333331\n"
                           "g{k=\"g\"} 123456789012\n");
    free(text);
    release(m);
}

Test(metrics, bad_definitions_are_refused)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    cr_assert_null(metrics_counter_new(m, "", "h", NULL));
    cr_assert_null(metrics_counter_new(m, "9lives", "h", NULL));
    cr_assert_null(metrics_counter_new(m, "has-dash", "h", NULL));
    cr_assert_null(metrics_counter_new(m, NULL, "h", NULL));
    cr_assert_null(metrics_counter_new(m, "x", "h", (const char *[]){"le", NULL}));
    cr_assert_null(metrics_counter_new(m, "x", "h", (const char *[]){"a:b", NULL}));
    cr_assert_null(metrics_counter_new(m, "x", "h", (const char *[]){"a", "a", NULL}));
    const double unsorted[] = {1, 0.5};
    cr_assert_null(metrics_histogram_new(m, "x", "h", NULL, unsorted, 2));
    const double inf[] = {1, INFINITY};
    cr_assert_null(metrics_histogram_new(m, "x", "h", NULL, inf, 2));
    cr_assert_not_null(metrics_counter_new(m, "ns:x_total", "h", NULL));
    cr_assert_null(metrics_gauge_new(m, "ns:x_total", "h", NULL), "duplicate name");
    /* Updates through NULL handles do nothing rather than crash. */
    metrics_counter_add(NULL, NULL, 1);
    metrics_series_add(NULL, 1);
    metrics_series_observe(NULL, 1);
    cr_assert_eq(metrics_series_value(NULL), 0);
    metrics_free(NULL);
    release(m);
}

Test(metrics, series_per_family_are_capped)
{
    metrics *m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_family *f = metrics_counter_new(m, "by_model_total", "h", (const char *[]){"model", NULL});
    char name[32];
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(name, sizeof name, "m%d", i);
        metrics_counter_add(f, (const char *[]){name}, 1);
    }
    cr_assert_null(metrics_series_get(f, (const char *[]){"new one"}));
    cr_assert_not_null(metrics_series_get(f, (const char *[]){"m0"}), "existing series still work");
    char *text = render(m);
    size_t lines = 0;
    for (const char *p = text; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 2 + METRICS_MAX_SERIES);
    free(text);
    release(m);
}
