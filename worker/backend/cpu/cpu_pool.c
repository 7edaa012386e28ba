#include "worker/backend/cpu/cpu_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

struct cpu_pool {
    int n;                      /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    uint64_t generation;        /* bumped for each job, under mu */
    int pending;                /* pool threads still inside the current job */
    bool stop;
    /* The current job, written under mu before generation changes. */
    cpu_pool_fn fn;
    void *arg;
    int64_t n_items, chunk;
    atomic_int_fast64_t next;
};

struct worker_arg {
    struct cpu_pool *p;
    int tid;
};

static void take_chunks(struct cpu_pool *p, int tid)
{
    for (;;) {
        int64_t begin = atomic_fetch_add(&p->next, p->chunk);
        if (begin >= p->n_items) return;
        int64_t end = begin + p->chunk < p->n_items ? begin + p->chunk : p->n_items;
        p->fn(p->arg, begin, end, tid);
    }
}

static void *worker_main(void *a)
{
    struct worker_arg *wa = a;
    struct cpu_pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        take_chunks(p, tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int cpu_pool_init(struct cpu_pool **out, int n_threads)
{
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    struct cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) goto fail;
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) goto fail;
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto fail;
        }
        p->n++;
    }
    *out = p;
    return 0;
fail:
    cpu_pool_free(p);
    return -1;
}

void cpu_pool_free(struct cpu_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->threads);
    free(p);
}

int cpu_pool_size(const struct cpu_pool *p)
{
    return p->n;
}

void cpu_pool_run(struct cpu_pool *p, int64_t n_items, int64_t min_chunk, cpu_pool_fn fn, void *arg)
{
    if (n_items <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    if (p->n == 1 || n_items <= min_chunk) {
        fn(arg, 0, n_items, 0);
        return;
    }
    /* About four chunks per thread balances uneven rows without much contention. */
    int64_t chunk = (n_items + 4 * p->n - 1) / (4 * p->n);
    if (chunk < min_chunk) chunk = min_chunk;
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_items = n_items;
    p->chunk = chunk;
    atomic_store(&p->next, 0);
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    take_chunks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
