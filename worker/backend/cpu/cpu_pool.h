/* A persistent pthread pool for the CPU backend: one parallel-for at a time, the calling
 * thread working alongside the pool's threads. */
#ifndef SLUICE_WORKER_CPU_POOL_H
#define SLUICE_WORKER_CPU_POOL_H

#include <stdint.h>

struct cpu_pool;

/* fn processes items [begin, end) on thread tid (0 .. cpu_pool_size() - 1). */
typedef void (*cpu_pool_fn)(void *arg, int64_t begin, int64_t end, int tid);

int cpu_pool_init(struct cpu_pool **out, int n_threads);
void cpu_pool_free(struct cpu_pool *p);
int cpu_pool_size(const struct cpu_pool *p);

/* Runs fn over [0, n_items) in chunks of at least min_chunk items and returns when all are
 * done. Small jobs (n_items <= min_chunk) run on the caller alone: waking threads costs more
 * than they would save. */
void cpu_pool_run(struct cpu_pool *p, int64_t n_items, int64_t min_chunk, cpu_pool_fn fn, void *arg);

#endif
