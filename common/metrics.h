/* Metrics in the Prometheus text exposition format (version 0.0.4), for GET /metrics.
 *
 * A registry holds families (one metric name each: counter, gauge or histogram) in the order
 * they were created; a family holds one series per distinct set of label values, created on
 * first use. Values are doubles; histograms have fixed upper bounds chosen at creation.
 * Everything runs on the loop thread only: there is no locking.
 *
 *     metrics *m;
 *     metrics_init(&m);
 *     metrics_family *req = metrics_counter_new(m, "sluice_requests_total", "Requests served.",
 *                                               (const char *[]){"route", "status", NULL});
 *     metrics_family *lat = metrics_histogram_new(m, "sluice_latency_seconds", "Latency.",
 *                                                 NULL, NULL, 0);   // default latency buckets
 *     metrics_counter_add(req, (const char *[]){"/v1/models", "200"}, 1);
 *     metrics_histogram_observe(lat, NULL, 0.012);
 *     char *text = metrics_render(m, NULL);   // serve as text/plain; version=0.0.4
 *     free(text);
 *     metrics_free(m);
 *
 * Label values are given as an array with exactly as many entries as the family has label
 * names (NULL for a family without labels). Where a path is hot, look the series up once with
 * metrics_series_get and keep the pointer: it stays valid until metrics_free. Misuse (a wrong
 * kind of update, a negative counter increment) is ignored rather than fatal, because a
 * server must not die over a metric. */
#ifndef SLUICE_COMMON_METRICS_H
#define SLUICE_COMMON_METRICS_H

#include <stddef.h>

typedef struct metrics metrics;
typedef struct metrics_family metrics_family;
typedef struct metrics_series metrics_series;

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

/* A family stops creating series past this many (label values from the outside world, such
 * as model names, must not grow memory without bound); updates to new ones are dropped. */
#define METRICS_MAX_SERIES 4096

/* Upper bounds, in seconds, used when a histogram is created with buckets NULL: 1 ms to 60 s. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_buckets_len;

int metrics_init(metrics **out);
void metrics_free(metrics *m);

/* Create a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*
 * ("le" is reserved); label_names is a NULL-terminated array or NULL. help and the names are
 * copied. Returns NULL on a bad or duplicate name, or out of memory. A family without labels
 * shows 0 from the start. */
metrics_family *metrics_counter_new(metrics *m, const char *name, const char *help,
                                    const char *const *label_names);
metrics_family *metrics_gauge_new(metrics *m, const char *name, const char *help,
                                  const char *const *label_names);
/* buckets: strictly increasing finite upper bounds (+Inf is implicit); NULL (n_buckets 0)
 * takes metrics_latency_buckets. */
metrics_family *metrics_histogram_new(metrics *m, const char *name, const char *help,
                                      const char *const *label_names, const double *buckets,
                                      size_t n_buckets);

/* The series for these label values, created on first use (values are copied). NULL when the
 * family is NULL, a value is NULL, or the family is full. */
metrics_series *metrics_series_get(metrics_family *f, const char *const *label_values);
/* Counter: adds v >= 0. Gauge: adds v (may be negative). */
void metrics_series_add(metrics_series *s, double v);
/* Gauge only. */
void metrics_series_set(metrics_series *s, double v);
/* Histogram only: counts v in the first bucket whose bound is >= v; NaN is ignored. */
void metrics_series_observe(metrics_series *s, double v);

/* Shorthands: metrics_series_get then the update. */
void metrics_counter_add(metrics_family *f, const char *const *label_values, double v);
void metrics_gauge_set(metrics_family *f, const char *const *label_values, double v);
void metrics_gauge_add(metrics_family *f, const char *const *label_values, double v);
void metrics_histogram_observe(metrics_family *f, const char *const *label_values, double v);

/* Reads a series back (tests, and code that reports the same numbers elsewhere): the value
 * of a counter or gauge, the number of observations of a histogram. */
double metrics_series_value(const metrics_series *s);

/* Every family in creation order, series in creation order, as Prometheus text with # HELP
 * and # TYPE lines. Returns a malloc'd NUL-terminated string (length in *len when len is not
 * NULL), or NULL when out of memory. */
char *metrics_render(const metrics *m, size_t *len);

#endif
