/* Prometheus text exposition: a registry of families, each a list of labelled series.
 * Lookups are linear scans over a family's series; hot paths keep the series pointer. */
#include "common/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1,      2.5,   5,    10,    30,   60};
const size_t metrics_latency_buckets_len = sizeof metrics_latency_buckets / sizeof(double);

struct metrics_series {
    metrics_family *family;
    char **values;
    double value;      /* counter, gauge; the sum for a histogram */
    uint64_t count;    /* histogram observations */
    uint64_t *buckets; /* histogram: observations per bucket, not cumulative */
};

struct metrics_family {
    enum metrics_type type;
    char *name, *help;
    char **labels;
    size_t n_labels;
    double *bounds;
    size_t n_bounds;
    metrics_series **series;
    size_t n_series, cap_series;
    metrics_family *next;
};

struct metrics {
    metrics_family *head, *tail;
};

int metrics_init(metrics **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -1;
}

static void free_strings(char **v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void series_free(metrics_series *s, size_t n_labels)
{
    free_strings(s->values, n_labels);
    free(s->buckets);
    free(s);
}

static void family_free(metrics_family *f)
{
    for (size_t i = 0; i < f->n_series; i++) series_free(f->series[i], f->n_labels);
    free(f->series);
    free_strings(f->labels, f->n_labels);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(metrics *m)
{
    if (!m) return;
    while (m->head) {
        metrics_family *f = m->head;
        m->head = f->next;
        family_free(f);
    }
    free(m);
}

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s) return false;
    for (size_t i = 0; s[i]; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
                  (colon && ch == ':') || (i > 0 && ch >= '0' && ch <= '9');
        if (!ok) return false;
    }
    return true;
}

static char **copy_strings(const char *const *src, size_t n)
{
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = strdup(src[i]);
        if (!v[i]) {
            free_strings(v, i);
            return NULL;
        }
    }
    return v;
}

static metrics_family *family_new(metrics *m, enum metrics_type type, const char *name,
                                  const char *help, const char *const *label_names,
                                  const double *bounds, size_t n_bounds)
{
    if (!m || !valid_name(name, true)) return NULL;
    for (metrics_family *f = m->head; f; f = f->next) {
        if (strcmp(f->name, name) == 0) return NULL;
    }
    size_t n_labels = 0;
    while (label_names && label_names[n_labels]) {
        const char *l = label_names[n_labels];
        if (!valid_name(l, false) || strcmp(l, "le") == 0) return NULL;
        for (size_t j = 0; j < n_labels; j++) {
            if (strcmp(label_names[j], l) == 0) return NULL;
        }
        n_labels++;
    }
    for (size_t i = 0; i < n_bounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) return NULL;
    }

    metrics_family *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->type = type;
    f->n_labels = n_labels;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->labels = copy_strings(label_names, n_labels);
    if (!f->name || !f->help || !f->labels) goto fail;
    if (type == METRICS_HISTOGRAM) {
        f->n_bounds = n_bounds;
        f->bounds = malloc((n_bounds ? n_bounds : 1) * sizeof *f->bounds);
        if (!f->bounds) goto fail;
        if (n_bounds) memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
    }
    /* An unlabelled family has exactly one series: make it now so it renders as 0. */
    if (n_labels == 0 && !metrics_series_get(f, NULL)) goto fail;
    if (m->tail) m->tail->next = f;
    else m->head = f;
    m->tail = f;
    return f;
fail:
    family_free(f);
    return NULL;
}

metrics_family *metrics_counter_new(metrics *m, const char *name, const char *help,
                                    const char *const *label_names)
{
    return family_new(m, METRICS_COUNTER, name, help, label_names, NULL, 0);
}

metrics_family *metrics_gauge_new(metrics *m, const char *name, const char *help,
                                  const char *const *label_names)
{
    return family_new(m, METRICS_GAUGE, name, help, label_names, NULL, 0);
}

metrics_family *metrics_histogram_new(metrics *m, const char *name, const char *help,
                                      const char *const *label_names, const double *buckets,
                                      size_t n_buckets)
{
    if (!buckets) {
        buckets = metrics_latency_buckets;
        n_buckets = metrics_latency_buckets_len;
    }
    return family_new(m, METRICS_HISTOGRAM, name, help, label_names, buckets, n_buckets);
}

/* --- series ------------------------------------------------------------------------------ */

metrics_series *metrics_series_get(metrics_family *f, const char *const *values)
{
    if (!f) return NULL;
    if (f->n_labels && !values) return NULL;
    for (size_t i = 0; i < f->n_labels; i++) {
        if (!values[i]) return NULL;
    }
    for (size_t i = 0; i < f->n_series; i++) {
        metrics_series *s = f->series[i];
        size_t j = 0;
        while (j < f->n_labels && strcmp(s->values[j], values[j]) == 0) j++;
        if (j == f->n_labels) return s;
    }
    if (f->n_series >= METRICS_MAX_SERIES) return NULL;
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 4;
        metrics_series **grown = realloc(f->series, cap * sizeof *grown);
        if (!grown) return NULL;
        f->series = grown;
        f->cap_series = cap;
    }
    metrics_series *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->family = f;
    s->values = copy_strings(values, f->n_labels);
    if (!s->values) goto fail;
    if (f->type == METRICS_HISTOGRAM) {
        s->buckets = calloc(f->n_bounds + 1, sizeof *s->buckets);
        if (!s->buckets) goto fail;
    }
    f->series[f->n_series++] = s;
    return s;
fail:
    series_free(s, f->n_labels);
    return NULL;
}

void metrics_series_add(metrics_series *s, double v)
{
    if (!s || isnan(v)) return;
    if (s->family->type == METRICS_GAUGE || (s->family->type == METRICS_COUNTER && v >= 0))
        s->value += v;
}

void metrics_series_set(metrics_series *s, double v)
{
    if (s && s->family->type == METRICS_GAUGE) s->value = v;
}

void metrics_series_observe(metrics_series *s, double v)
{
    if (!s || s->family->type != METRICS_HISTOGRAM || isnan(v)) return;
    const metrics_family *f = s->family;
    size_t i = 0;
    while (i < f->n_bounds && v > f->bounds[i]) i++;
    s->buckets[i]++;
    s->count++;
    s->value += v;
}

double metrics_series_value(const metrics_series *s)
{
    if (!s) return 0;
    return s->family->type == METRICS_HISTOGRAM ? (double)s->count : s->value;
}

void metrics_counter_add(metrics_family *f, const char *const *values, double v)
{
    if (f && f->type == METRICS_COUNTER) metrics_series_add(metrics_series_get(f, values), v);
}

void metrics_gauge_set(metrics_family *f, const char *const *values, double v)
{
    if (f && f->type == METRICS_GAUGE) metrics_series_set(metrics_series_get(f, values), v);
}

void metrics_gauge_add(metrics_family *f, const char *const *values, double v)
{
    if (f && f->type == METRICS_GAUGE) metrics_series_add(metrics_series_get(f, values), v);
}

void metrics_histogram_observe(metrics_family *f, const char *const *values, double v)
{
    if (f && f->type == METRICS_HISTOGRAM) metrics_series_observe(metrics_series_get(f, values), v);
}

/* --- rendering --------------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void buf_put(struct buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* Label values escape backslash, double quote and newline; help text only the first and last. */
static void buf_escaped(struct buf *b, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\') buf_put(b, "\\\\", 2);
        else if (*s == '\n') buf_put(b, "\\n", 2);
        else if (quote && *s == '"') buf_put(b, "\\\"", 2);
        else buf_put(b, s, 1);
    }
}

/* The shortest of %.15g and %.17g that reads back as the same double, so 0.1 stays "0.1". */
static void format_number(char out[32], double v)
{
    if (isnan(v)) {
        strcpy(out, "NaN");
    } else if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, 32, "%.15g", v);
        if (strtod(out, NULL) != v) snprintf(out, 32, "%.17g", v);
    }
}

static void buf_number(struct buf *b, double v)
{
    char num[32];
    format_number(num, v);
    buf_str(b, num);
}

/* name{labels[,le="bound"]} value */
static void put_sample(struct buf *b, const metrics_family *f, const char *suffix,
                       const metrics_series *s, const char *le, double v)
{
    buf_str(b, f->name);
    buf_str(b, suffix);
    if (f->n_labels || le) {
        buf_put(b, "{", 1);
        for (size_t i = 0; i < f->n_labels; i++) {
            if (i) buf_put(b, ",", 1);
            buf_str(b, f->labels[i]);
            buf_put(b, "=\"", 2);
            buf_escaped(b, s->values[i], true);
            buf_put(b, "\"", 1);
        }
        if (le) {
            if (f->n_labels) buf_put(b, ",", 1);
            buf_put(b, "le=\"", 4);
            buf_str(b, le);
            buf_put(b, "\"", 1);
        }
        buf_put(b, "}", 1);
    }
    buf_put(b, " ", 1);
    buf_number(b, v);
    buf_put(b, "\n", 1);
}

static const char *type_name(enum metrics_type t)
{
    switch (t) {
    case METRICS_COUNTER: return "counter";
    case METRICS_GAUGE: return "gauge";
    default: return "histogram";
    }
}

char *metrics_render(const metrics *m, size_t *len)
{
    struct buf b = {0};
    buf_reserve(&b, 0);
    if (b.p) b.p[0] = '\0';
    for (const metrics_family *f = m ? m->head : NULL; f; f = f->next) {
        buf_str(&b, "# HELP ");
        buf_str(&b, f->name);
        buf_put(&b, " ", 1);
        buf_escaped(&b, f->help, false);
        buf_str(&b, "\n# TYPE ");
        buf_str(&b, f->name);
        buf_put(&b, " ", 1);
        buf_str(&b, type_name(f->type));
        buf_put(&b, "\n", 1);
        for (size_t i = 0; i < f->n_series; i++) {
            const metrics_series *s = f->series[i];
            if (f->type != METRICS_HISTOGRAM) {
                put_sample(&b, f, "", s, NULL, s->value);
                continue;
            }
            uint64_t cumulative = 0;
            char le[32];
            for (size_t k = 0; k < f->n_bounds; k++) {
                cumulative += s->buckets[k];
                format_number(le, f->bounds[k]);
                put_sample(&b, f, "_bucket", s, le, (double)cumulative);
            }
            put_sample(&b, f, "_bucket", s, "+Inf", (double)s->count);
            put_sample(&b, f, "_sum", s, NULL, s->value);
            put_sample(&b, f, "_count", s, NULL, (double)s->count);
        }
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}
