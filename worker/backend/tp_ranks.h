/* What a tensor-parallel backend holds whatever its device (cpu/cpu_tp.c, cuda/cuda_tp_group.c):
 * the sharding plan, one backend per rank on its shard, their communicators and their threads;
 * running a step's half on every rank and saying which rank failed; freeing it all. */
#ifndef SLUICE_WORKER_BACKEND_TP_RANKS_H
#define SLUICE_WORKER_BACKEND_TP_RANKS_H

#include <stdbool.h>
#include <stddef.h>

#include "worker/backend/backend.h"
#include "worker/parallel/comm.h"
#include "worker/parallel/tp_group.h"
#include "worker/parallel/tp_plan.h"

struct tp_ranks {
    int n;
    double timeout_s; /* the communicator's, and how long the others get after rank 0 */
    struct tp_plan plan;
    struct comm *comms[COMM_MAX_RANKS];
    struct model *shards[COMM_MAX_RANKS];
    struct backend *ranks[COMM_MAX_RANKS];
    struct tp_group *threads;
};

/* fn(arg, r) on every rank at once (tp_group_run). On failure, writes into error (a backend's)
 * which rank failed and its error, or which never finished (then the group is broken and the
 * communicator aborted), and returns -1. */
int tp_ranks_run(struct tp_ranks *t, tp_rank_fn fn, void *arg, char *error, size_t errlen);
/* "query heads 0-3, KV heads 0-1, intermediate 0-63, vocabulary 0-127; 1.2 MiB of the
 * checkpoint's weights": what rank r of model m holds, for the log. */
void tp_ranks_describe_rank(const struct tp_ranks *t, const struct model *m, int r, char *buf, size_t len);
/* "tensor parallel over 2 ranks (4 query heads, ... each)", for the log. */
void tp_ranks_describe(const struct tp_ranks *t, char *buf, size_t len);
/* The sizes and abilities a tensor-parallel backend takes from its rank 0. */
void tp_ranks_take_limits(struct backend *dst, const struct backend *rank0);
/* Stops the threads and frees the ranks' backends, shards and communicators. Returns false, and
 * frees nothing, when a rank is stuck in a step (its memory is left to the process's exit). */
bool tp_ranks_free(struct tp_ranks *t, const char *backend_name);

#endif
