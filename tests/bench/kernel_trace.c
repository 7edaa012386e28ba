/* Kernel timeline of a CUDA program, graph replays included, through CUPTI's activity records.
 * Loaded by the CUDA driver as an injection library:
 *
 *   CUDA_INJECTION64_PATH=build/lib/libsluice_kernel_trace.so sluice-worker bench ...
 *
 * At exit it prints, for every CUDA graph replayed at least SLUICE_TRACE_MIN_REPLAYS times (the
 * decode steps of one batch shape): the mean span of a replay and, per kernel, how much of that
 * span it alone accounts for ("own" time: the part of its run that no earlier kernel of the
 * replay overlaps). Own times add up to the span minus the idle gaps, so they say where a step's
 * time goes with the overlap that programmatic dependent launches buy already taken out, which
 * per-kernel events (--cuda-profile, eager) cannot show.
 *
 * Why CUPTI and not Nsight Systems: the toolkit ships libcupti, the lent GPU machine has Nsight
 * Compute but not Nsight Systems, and this is all the timeline we need. */
#include <cupti.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_BUF_BYTES (8u << 20)
#define TRACE_MAX_RECORDS (4u << 20) /* 128 MB reserved, touched only as records come */
#define TRACE_MAX_NAMES 256
#define TRACE_BETWEEN_MAX_NS 2000000ull /* longer: not the next step of the same run */

struct trace_rec {
    uint64_t start, end;
    uint32_t graph, corr;
    int name; /* index into names */
};

/* CUPTI may hand buffers over from its own thread. */
static pthread_mutex_t recs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct trace_rec *recs;
static size_t n_recs, n_dropped;
static char *names[TRACE_MAX_NAMES], *raw_names[TRACE_MAX_NAMES];
static int n_names;

/* The C++ runtime's demangler (libstdc++), for readable kernel names. */
char *__cxa_demangle(const char *mangled, char *buf, size_t *len, int *status);

/* "void (anonymous namespace)::hopper_gemm_kernel<64, true>(CUtensorMap, ...)" ->
 * "hopper_gemm_kernel<64, true>": no namespace, return type or parameters. */
static char *short_name(const char *mangled)
{
    int status = -1;
    char *d = __cxa_demangle(mangled, NULL, NULL, &status);
    if (status != 0 || !d) return strdup(mangled);
    const char *anon = "(anonymous namespace)::";
    for (char *at; (at = strstr(d, anon));) memmove(at, at + strlen(anon), strlen(at + strlen(anon)) + 1);
    if (!strncmp(d, "void ", 5)) memmove(d, d + 5, strlen(d + 5) + 1);
    char *paren = strchr(d, '(');
    if (paren && paren != d) *paren = '\0';
    return d;
}

static int name_index(const char *name)
{
    if (!name) name = "?";
    for (int i = 0; i < n_names; i++)
        if (!strcmp(raw_names[i], name)) return i;
    if (n_names == TRACE_MAX_NAMES) return TRACE_MAX_NAMES - 1;
    raw_names[n_names] = strdup(name);
    names[n_names] = short_name(name);
    return n_names++;
}

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
    *buf = aligned_alloc(8, TRACE_BUF_BYTES);
    *size = *buf ? TRACE_BUF_BYTES : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid)
{
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *a = NULL;
    pthread_mutex_lock(&recs_lock);
    while (cuptiActivityGetNextRecord(buf, valid, &a) == CUPTI_SUCCESS) {
        if (a->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)a;
        if (!recs || n_recs == TRACE_MAX_RECORDS) {
            n_dropped++;
            continue;
        }
        recs[n_recs++] = (struct trace_rec){k->start, k->end, k->graphId, k->correlationId, name_index(k->name)};
    }
    pthread_mutex_unlock(&recs_lock);
    free(buf);
}

static int by_graph_corr_start(const void *pa, const void *pb)
{
    const struct trace_rec *a = pa, *b = pb;
    if (a->graph != b->graph) return a->graph < b->graph ? -1 : 1;
    if (a->corr != b->corr) return a->corr < b->corr ? -1 : 1;
    return a->start < b->start ? -1 : a->start > b->start;
}

struct kernel_sum {
    double own_ns, dur_ns;
    long count;
};

/* One graph's replays [lo, hi) of recs (sorted by replay, then start). */
static void report_graph(size_t lo, size_t hi, long replays)
{
    struct kernel_sum sum[TRACE_MAX_NAMES] = {{0}};
    double span_ns = 0, gap_ns = 0, between_ns = 0;
    long kernels = 0, n_between = 0;
    uint64_t prev_end = 0;
    for (size_t i = lo; i < hi;) {
        size_t j = i;
        uint64_t max_end = recs[i].start;
        /* From the previous replay's last kernel to this one's first: the host's part of a step
         * (results, scheduling, the next launch) when replays follow each other. */
        if (prev_end && recs[i].start > prev_end && recs[i].start - prev_end < TRACE_BETWEEN_MAX_NS) {
            between_ns += (double)(recs[i].start - prev_end);
            n_between++;
        }
        while (j < hi && recs[j].corr == recs[i].corr) {
            const struct trace_rec *r = &recs[j];
            if (r->start > max_end) gap_ns += (double)(r->start - max_end);
            const uint64_t from = r->start > max_end ? r->start : max_end;
            sum[r->name].own_ns += r->end > from ? (double)(r->end - from) : 0.0;
            sum[r->name].dur_ns += (double)(r->end - r->start);
            sum[r->name].count++;
            if (r->end > max_end) max_end = r->end;
            j++;
        }
        span_ns += (double)(max_end - recs[i].start);
        kernels += (long)(j - i);
        prev_end = max_end;
        i = j;
    }
    fprintf(stderr, "kernel trace: graph %u, %ld replays, %.1f kernels each: span %.1f us/replay, idle %.1f us\n",
            recs[lo].graph, replays, (double)kernels / replays, span_ns / replays / 1e3, gap_ns / replays / 1e3);
    if (n_between)
        fprintf(stderr, "kernel trace: between consecutive replays %.1f us (mean of %ld)\n", between_ns / n_between / 1e3,
                n_between);
    fprintf(stderr, "kernel trace:   %10s %10s %8s  kernel\n", "own us", "run us", "count");
    for (;;) {
        int best = -1;
        for (int k = 0; k < n_names; k++)
            if (sum[k].count && (best < 0 || sum[k].own_ns > sum[best].own_ns)) best = k;
        if (best < 0) break;
        fprintf(stderr, "kernel trace:   %10.1f %10.1f %8.1f  %.100s\n", sum[best].own_ns / replays / 1e3,
                sum[best].dur_ns / replays / 1e3, (double)sum[best].count / replays, names[best]);
        sum[best].count = 0;
    }
}

static void report(void)
{
    cuptiActivityFlushAll(1);
    pthread_mutex_lock(&recs_lock);
    const char *env = getenv("SLUICE_TRACE_MIN_REPLAYS");
    const long min_replays = env ? atol(env) : 20;
    qsort(recs, n_recs, sizeof *recs, by_graph_corr_start);
    for (size_t i = 0; i < n_recs;) {
        size_t j = i;
        long replays = 0;
        while (j < n_recs && recs[j].graph == recs[i].graph) {
            if (j == i || recs[j].corr != recs[j - 1].corr) replays++;
            j++;
        }
        if (recs[i].graph && replays >= min_replays) report_graph(i, j, replays);
        i = j;
    }
    if (n_dropped) fprintf(stderr, "kernel trace: %zu records dropped (buffer full)\n", n_dropped);
    pthread_mutex_unlock(&recs_lock);
}

/* Called by the CUDA driver when CUDA_INJECTION64_PATH names this library. */
int InitializeInjection(void)
{
    recs = calloc(TRACE_MAX_RECORDS, sizeof *recs);
    if (!recs) return 0;
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
        fprintf(stderr, "kernel trace: CUPTI refused the kernel activity records\n");
        return 0;
    }
    atexit(report);
    return 1;
}
