/* Tensor parallelism on the CPU backend: --tensor-parallel-size N runs N CPU backends in one
 * process, each holding its rank's shard of the weights (worker/parallel/tp_shard.h) and its
 * own KV heads, each on its own thread, and joins them with the CPU communicator
 * (worker/parallel/comm.h). Every rank runs the same forward pass (cpu_forward.c) with its
 * shard's dimensions; the steps below are where the ranks meet. Private to worker/backend/. */
#ifndef SLUICE_WORKER_CPU_TP_H
#define SLUICE_WORKER_CPU_TP_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/backend/cpu/cpu_internal.h"
#include "worker/parallel/comm.h"

struct cpu_tp_rank {
    struct comm *comm;
    int rank, size;
    int64_t vocab_begin, vocab_end; /* this rank's rows of the embedding and lm_head */
    int64_t vocab_per_rank;         /* every rank's share, padded: the gather's width */
    float *local;                   /* [max_batch_seqs][vocab_end - vocab_begin] logits */
    float *send;                    /* [max_batch_seqs][vocab_per_rank] */
    float *gathered;                /* [size][max_batch_seqs][vocab_per_rank] */
};

/* The backend for opt->tensor_parallel_size > 1 ranks (backend_cpu_create hands it over). */
int cpu_tp_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                  size_t errlen);

/* The embedding row of token into dst: on a rank, zeros unless the token is one of its rows
 * (cpu_tp_all_reduce then sums the ranks' rows into the embedding). */
void cpu_tp_embed_row(struct cpu_backend *cb, int32_t token, float *dst);
/* Sums x (n floats) over the ranks, in rank order; nothing alone. -1 with b->error set. */
int cpu_tp_all_reduce(struct cpu_backend *cb, float *x, int64_t n);
/* logits[r][0 .. vocab) = lm_head(xs[r]) for n_rows rows: on a rank, its share of the
 * vocabulary, then gathered from every rank, so every rank has all the logits. */
int cpu_tp_lm_head(struct cpu_backend *cb, const float *xs, int64_t n_rows, float *logits);
/* Whether this backend samples and writes what a step hands back (alone, or rank 0). */
static inline bool cpu_tp_leader(const struct cpu_backend *cb) { return !cb->tp || cb->tp->rank == 0; }

#endif
