/* The CPU communicator: the ranks are threads of this process and exchange through shared
 * memory. Each collective posts the rank's buffer, meets the others at a barrier, works on
 * what they posted, and meets them again before anyone may touch those buffers.
 *
 * all_reduce_sum is a reduce-scatter then an all-gather: rank r adds up the r-th slice of the
 * elements over every rank's buffer, always in rank order, and writes the sums into every
 * buffer. Each element's sum is thus b0 + b1 + ... + b(n-1) in that order whichever thread
 * computes it, so the result is the same bits on every rank and in every run.
 *
 * Barriers wait with a deadline: a rank that never arrives (stopped, or looping) fails the
 * group when the first waiter's deadline passes, and comm_abort fails it at once; either way
 * every waiter wakes and returns an error. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/parallel/comm.h"
#include "worker/parallel/comm_internal.h"

struct cpu_group;

struct cpu_comm {
    struct comm base;
    struct cpu_group *g;
    float *tmp; /* this rank's slice of an all-reduce's sums */
    size_t tmp_cap;
};

struct cpu_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    double timeout_s;
    unsigned long generation; /* barriers passed */
    int arrived;              /* ranks at the current barrier */
    bool failed;
    char why[512];
    /* What each rank posted for the collective in progress. */
    const void *posted[COMM_MAX_RANKS];
    size_t count[COMM_MAX_RANKS];
    struct cpu_comm ranks[];
};

static void group_fail_locked(struct cpu_group *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void group_fail_locked(struct cpu_group *g, const char *fmt, ...)
{
    if (g->failed) return;
    g->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->why, sizeof g->why, fmt, ap);
    va_end(ap);
    pthread_cond_broadcast(&g->cv);
}

/* Waits until every rank has called this for the same barrier; -1 once the group fails. */
static int group_wait(struct cpu_comm *cc, const char *what)
{
    struct cpu_group *g = cc->g;
    pthread_mutex_lock(&g->mu);
    if (g->failed) {
        pthread_mutex_unlock(&g->mu);
        return comm_fail(&cc->base, "%s: the group has failed: %s", what, g->why);
    }
    unsigned long gen = g->generation;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = (double)(time_t)g->timeout_s;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((g->timeout_s - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    while (gen == g->generation && !g->failed) {
        int rc = pthread_cond_timedwait(&g->cv, &g->mu, &deadline);
        if (rc == ETIMEDOUT && gen == g->generation && !g->failed)
            group_fail_locked(g, "rank %d waited %.3g s at %s for %d other rank(s) that never came", cc->base.rank,
                              g->timeout_s, what, g->n - g->arrived);
    }
    bool passed = gen != g->generation;
    pthread_mutex_unlock(&g->mu);
    if (!passed) return comm_fail(&cc->base, "%s: the group has failed: %s", what, g->why);
    return 0;
}

/* Fails the whole group with this rank's message, so that no other rank waits for it. */
static int fail_group(struct cpu_comm *cc, const char *what, const char *why)
{
    struct cpu_group *g = cc->g;
    pthread_mutex_lock(&g->mu);
    group_fail_locked(g, "rank %d at %s: %s", cc->base.rank, what, why);
    pthread_mutex_unlock(&g->mu);
    return comm_fail(&cc->base, "%s: %s", what, why);
}

/* After the first barrier: every rank posted the same count (else the ranks are out of step). */
static int check_counts(struct cpu_comm *cc, const char *what)
{
    struct cpu_group *g = cc->g;
    for (int r = 1; r < g->n; r++) {
        if (g->count[r] != g->count[0]) {
            char why[160];
            snprintf(why, sizeof why, "rank 0 posted %zu elements, rank %d %zu", g->count[0], r, g->count[r]);
            return fail_group(cc, what, why);
        }
    }
    return 0;
}

static int f32_only(struct cpu_comm *cc, const char *what, enum comm_dtype dtype)
{
    if (dtype == COMM_F32) return 0;
    return fail_group(cc, what, "the CPU communicator sums and gathers float32 only");
}

static int cpu_all_reduce_sum(struct comm *c, void *buf, size_t count, enum comm_dtype dtype)
{
    struct cpu_comm *cc = (struct cpu_comm *)c;
    struct cpu_group *g = cc->g;
    const char *what = "all_reduce_sum";
    if (f32_only(cc, what, dtype)) return -1;
    if (g->n == 1) return g->failed ? comm_fail(c, "%s: the group has failed: %s", what, g->why) : 0;
    g->posted[c->rank] = buf;
    g->count[c->rank] = count;
    if (group_wait(cc, what) || check_counts(cc, what)) return -1;
    size_t lo = count * (size_t)c->rank / (size_t)g->n, hi = count * (size_t)(c->rank + 1) / (size_t)g->n;
    if (hi - lo > cc->tmp_cap) {
        float *t = realloc(cc->tmp, (hi - lo) * sizeof(float));
        if (!t) return fail_group(cc, what, "out of memory for the sums");
        cc->tmp = t;
        cc->tmp_cap = hi - lo;
    }
    for (size_t i = lo; i < hi; i++) {
        float s = ((const float *)g->posted[0])[i];
        for (int r = 1; r < g->n; r++) s += ((const float *)g->posted[r])[i];
        cc->tmp[i - lo] = s;
    }
    /* Every rank has read every buffer before any is overwritten, and every slice is written
     * before anyone returns. */
    if (group_wait(cc, what)) return -1;
    for (int r = 0; r < g->n; r++)
        if (hi > lo) memcpy((float *)g->posted[r] + lo, cc->tmp, (hi - lo) * sizeof(float));
    return group_wait(cc, what);
}

static int cpu_all_gather(struct comm *c, const void *send, void *recv, size_t count, enum comm_dtype dtype)
{
    struct cpu_comm *cc = (struct cpu_comm *)c;
    struct cpu_group *g = cc->g;
    const char *what = "all_gather";
    if (f32_only(cc, what, dtype)) return -1;
    g->posted[c->rank] = send;
    g->count[c->rank] = count;
    if (group_wait(cc, what) || check_counts(cc, what)) return -1;
    for (int r = 0; r < g->n; r++) {
        float *to = (float *)recv + (size_t)r * count;
        if (count && to != g->posted[r]) memcpy(to, g->posted[r], count * sizeof(float));
    }
    /* No rank reuses its send buffer before every rank has copied it. */
    return group_wait(cc, what);
}

static int cpu_barrier(struct comm *c) { return group_wait((struct cpu_comm *)c, "barrier"); }

static int cpu_sync(struct comm *c)
{
    struct cpu_group *g = ((struct cpu_comm *)c)->g;
    pthread_mutex_lock(&g->mu);
    int rc = g->failed ? comm_fail(c, "the group has failed: %s", g->why) : 0;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void cpu_abort(struct comm *c, const char *why)
{
    struct cpu_comm *cc = (struct cpu_comm *)c;
    pthread_mutex_lock(&cc->g->mu);
    group_fail_locked(cc->g, "rank %d aborted: %s", c->rank, why && *why ? why : "no reason given");
    pthread_mutex_unlock(&cc->g->mu);
}

static bool cpu_failed(const struct comm *c)
{
    struct cpu_group *g = ((const struct cpu_comm *)c)->g;
    pthread_mutex_lock(&g->mu);
    bool f = g->failed;
    pthread_mutex_unlock(&g->mu);
    return f;
}

static void cpu_destroy(struct comm **ranks, int n)
{
    struct cpu_group *g = ((struct cpu_comm *)ranks[0])->g;
    for (int r = 0; r < g->n; r++) free(g->ranks[r].tmp);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
    for (int r = 0; r < n; r++) ranks[r] = NULL;
}

static const struct comm_ops cpu_comm_ops = {
    .kind = "cpu",
    .all_reduce_sum = cpu_all_reduce_sum,
    .all_gather = cpu_all_gather,
    .barrier = cpu_barrier,
    .sync = cpu_sync,
    .abort = cpu_abort,
    .failed = cpu_failed,
    .destroy = cpu_destroy,
};

int comm_cpu_create(struct comm **ranks, int n, double timeout_s, char *err, size_t errlen)
{
    if (n < 1 || n > COMM_MAX_RANKS) {
        snprintf(err, errlen, "a communicator has 1 to %d ranks, not %d", COMM_MAX_RANKS, n);
        return -1;
    }
    struct cpu_group *g = calloc(1, sizeof *g + (size_t)n * sizeof(struct cpu_comm));
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0 || pthread_mutex_init(&g->mu, NULL) != 0) {
        if (rc == 0) pthread_cond_destroy(&g->cv);
        free(g);
        snprintf(err, errlen, "cannot create the communicator's lock");
        return -1;
    }
    g->n = n;
    g->timeout_s = timeout_s > 0 ? timeout_s : COMM_DEFAULT_TIMEOUT_S;
    for (int r = 0; r < n; r++) {
        g->ranks[r].base = (struct comm){.ops = &cpu_comm_ops, .rank = r, .size = n};
        g->ranks[r].g = g;
        ranks[r] = &g->ranks[r].base;
    }
    return 0;
}
