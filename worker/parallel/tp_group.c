/* tp_group.h: a run is posted under the mutex as a new run number; each rank thread wakes,
 * runs the function outside the lock, and counts itself done. Rank 0 runs it on the caller's
 * thread meanwhile, then waits for the count with a deadline on the monotonic clock. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "worker/parallel/comm.h"
#include "worker/parallel/tp_group.h"

struct rank_thread {
    struct tp_group *g;
    int rank;
    pthread_t thread;
    bool started;
    bool busy;              /* inside a run's function */
    unsigned long finished; /* the last run it finished */
    int rc;                 /* that run's */
};

struct tp_group {
    int n;
    double timeout_s;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    unsigned long run; /* runs posted */
    int n_done;        /* ranks 1..n-1 done with the current run */
    tp_rank_fn fn;
    void *arg;
    bool stop;
    bool broken;
    int stuck_rank; /* the rank that broke the group */
    struct rank_thread threads[COMM_MAX_RANKS];
};

static void *rank_main(void *p)
{
    struct rank_thread *rt = p;
    struct tp_group *g = rt->g;
    unsigned long seen = 0;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (g->run == seen && !g->stop) pthread_cond_wait(&g->work, &g->mu);
        if (g->stop) break;
        seen = g->run;
        tp_rank_fn fn = g->fn;
        void *arg = g->arg;
        rt->busy = true;
        pthread_mutex_unlock(&g->mu);
        int rc = fn(arg, rt->rank);
        pthread_mutex_lock(&g->mu);
        rt->rc = rc;
        rt->busy = false;
        rt->finished = seen;
        g->n_done++;
        pthread_cond_signal(&g->done);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int tp_group_start(struct tp_group **out, int n, double timeout_s, char *err, size_t errlen)
{
    *out = NULL;
    if (n < 1 || n > COMM_MAX_RANKS) {
        snprintf(err, errlen, "tensor parallel ranks: %d is not in 1..%d", n, COMM_MAX_RANKS);
        return -1;
    }
    struct tp_group *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->n = n;
    g->timeout_s = timeout_s > 0 ? timeout_s : COMM_DEFAULT_TIMEOUT_S;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* tp_group_run's deadline */
    int ok = pthread_mutex_init(&g->mu, NULL) == 0;
    if (ok && pthread_cond_init(&g->work, NULL) != 0) {
        pthread_mutex_destroy(&g->mu);
        ok = 0;
    }
    if (ok && pthread_cond_init(&g->done, &ca) != 0) {
        pthread_cond_destroy(&g->work);
        pthread_mutex_destroy(&g->mu);
        ok = 0;
    }
    pthread_condattr_destroy(&ca);
    if (!ok) {
        free(g);
        snprintf(err, errlen, "cannot make the tensor parallel ranks' locks");
        return -1;
    }
    for (int r = 1; r < n; r++) {
        g->threads[r] = (struct rank_thread){.g = g, .rank = r};
        if (pthread_create(&g->threads[r].thread, NULL, rank_main, &g->threads[r]) != 0) {
            tp_group_stop(g);
            snprintf(err, errlen, "cannot start the tensor parallel ranks' threads");
            return -1;
        }
        g->threads[r].started = true;
    }
    *out = g;
    return 0;
}

int tp_group_run(struct tp_group *g, tp_rank_fn fn, void *arg, struct tp_run_result *res)
{
    *res = (struct tp_run_result){.failed_rank = -1, .stuck_rank = -1};
    pthread_mutex_lock(&g->mu);
    if (g->broken) {
        res->stuck_rank = g->stuck_rank;
        pthread_mutex_unlock(&g->mu);
        return -1;
    }
    g->fn = fn;
    g->arg = arg;
    g->n_done = 0;
    g->run++;
    pthread_cond_broadcast(&g->work);
    pthread_mutex_unlock(&g->mu);

    const int rc0 = fn(arg, 0);

    /* The others finish within the timeout of rank 0, unless one is stuck outside any collective. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)g->timeout_s + 1;
    pthread_mutex_lock(&g->mu);
    while (g->n_done < g->n - 1) {
        if (pthread_cond_timedwait(&g->done, &g->mu, &deadline) == ETIMEDOUT && g->n_done < g->n - 1) {
            g->broken = true;
            break;
        }
    }
    if (rc0 != 0) res->failed_rank = 0;
    for (int r = 1; r < g->n; r++) {
        const struct rank_thread *rt = &g->threads[r];
        if (rt->finished != g->run) {
            if (res->stuck_rank < 0) res->stuck_rank = g->stuck_rank = r;
        } else if (rt->rc != 0 && res->failed_rank < 0) {
            res->failed_rank = r;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return res->failed_rank >= 0 || res->stuck_rank >= 0 ? -1 : 0;
}

bool tp_group_broken(const struct tp_group *g)
{
    pthread_mutex_lock((pthread_mutex_t *)&g->mu);
    bool broken = g->broken;
    pthread_mutex_unlock((pthread_mutex_t *)&g->mu);
    return broken;
}

bool tp_group_stop(struct tp_group *g)
{
    if (!g) return true;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_broadcast(&g->work);
    bool busy[COMM_MAX_RANKS] = {false};
    for (int r = 1; r < g->n; r++) busy[r] = g->threads[r].busy;
    pthread_mutex_unlock(&g->mu);
    bool clean = true;
    for (int r = 1; r < g->n; r++) {
        if (!g->threads[r].started) continue;
        if (busy[r]) {
            /* Stuck in a run: it still reads the group, which is left to the process's exit. */
            pthread_detach(g->threads[r].thread);
            clean = false;
        } else {
            pthread_join(g->threads[r].thread, NULL);
        }
    }
    if (!clean) return false;
    pthread_cond_destroy(&g->work);
    pthread_cond_destroy(&g->done);
    pthread_mutex_destroy(&g->mu);
    free(g);
    return true;
}
