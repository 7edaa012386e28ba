/* Tensor parallelism's sharding plan (Megatron-LM's): which part of each weight a rank holds,
 * computed from the model's configuration alone, so that every backend shards alike.
 *
 *   q, k, v (and their biases), gate, up   column-parallel: rank r holds a block of their
 *                                          output rows (whole heads for q/k/v)
 *   o_proj, down                           row-parallel: rank r holds the matching block of
 *                                          their input columns; the ranks' partial outputs are
 *                                          summed (one all-reduce after attention, one after
 *                                          the MLP)
 *   embedding, lm_head                     vocabulary-parallel: rank r holds a block of rows
 *                                          (tokens); the embedding's rows elsewhere are zero
 *                                          and summed, the logits gathered
 *   norms, q/k norms                       replicated
 *   o_proj's and down's biases             rank 0 only: added once to the sum
 *   q/k/v, gate and up biases              split like their rows
 *
 * Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) is sharded the same way inside each
 * expert: every rank holds every expert's block of intermediate channels (gate/up rows, down
 * columns), and of the shared expert's; the router and the shared expert's gate are replicated,
 * so every rank routes every token alike and the MLP's one all-reduce sums the experts too.
 *
 * KV heads are split like the query heads when there are at least as many as ranks; with
 * fewer (kv_heads < N) each rank holds the one KV head its query heads read, so each KV head
 * is replicated on N / kv_heads ranks. A configuration that does not split evenly (query heads,
 * KV heads, intermediate size) is refused with a message naming the field. */
#ifndef SLUICE_WORKER_PARALLEL_TP_PLAN_H
#define SLUICE_WORKER_PARALLEL_TP_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/model.h"
#include "worker/parallel/comm.h"

/* Half-open ranges [begin, end). */
struct tp_range {
    int64_t begin, end;
};

struct tp_rank {
    int rank;
    struct tp_range q_heads;   /* query heads */
    struct tp_range kv_heads;  /* KV heads */
    struct tp_range inter;     /* intermediate (MLP) channels */
    struct tp_range vocab;     /* tokens: rows of the embedding and lm_head */
    struct tp_range expert_inter, shared_inter; /* each expert's channels, the shared expert's */
};

/* What one weight is split along; TP_FIRST_RANK: rank 0 holds it whole, the others nothing. */
enum tp_split { TP_REPLICATED = 0, TP_ROWS, TP_COLS, TP_FIRST_RANK };

enum tp_weight {
    TP_W_Q, TP_W_K, TP_W_V, TP_W_O, TP_W_GATE, TP_W_UP, TP_W_DOWN,
    TP_W_BQ, TP_W_BK, TP_W_BV,     /* Qwen2's q/k/v biases: vectors split like their rows */
    TP_W_BO, TP_W_B_DOWN,          /* row-parallel outputs' biases (model_family.h) */
    TP_W_B_GATE, TP_W_B_UP,
    TP_W_EMBED, TP_W_LM_HEAD,
    TP_W_NORM,                     /* every norm: attention, MLP (before and after), final, q/k */
    TP_W_ROUTER, TP_W_EXPERT_GATE, TP_W_EXPERT_UP, TP_W_EXPERT_DOWN,
    TP_W_SHARED_GATE, TP_W_SHARED_UP, TP_W_SHARED_DOWN, TP_W_SHARED_EXPERT_GATE,
    TP_W_COUNT
};

struct tp_plan {
    int n_ranks;
    int heads_per_rank, kv_heads_per_rank, inter_per_rank;
    int expert_inter_per_rank, shared_inter_per_rank; /* 0 for a dense model */
    /* Each rank's share of the vocabulary, rounded up: the last rank's may be shorter, and the
     * gathered logits are vocab_per_rank wide per rank. */
    int vocab_per_rank;
    int kv_replicas;               /* ranks holding each KV head: 1, or N / kv_heads */
    struct tp_rank ranks[COMM_MAX_RANKS];
};

/* Fills the plan of config c over n ranks; -1 with a message in err when it does not shard. */
int tp_plan_make(struct tp_plan *p, const struct model_config *c, int n, char *err, size_t errlen);

/* How weight w is split, and which of its rows (TP_ROWS; elements of a vector) or columns
 * (TP_COLS) rank r holds; range is {0, 0} for TP_REPLICATED (the rank holds it all) and
 * TP_FIRST_RANK. */
enum tp_split tp_plan_part(const struct tp_plan *p, const struct model_config *c, enum tp_weight w, int r,
                           struct tp_range *range);

/* The configuration rank r computes with: its heads, KV heads and intermediate sizes (dense,
 * expert, shared expert); hidden size, head_dim, vocab_size and the experts stay the model's. */
void tp_plan_rank_config(const struct tp_plan *p, const struct model_config *c, int r, struct model_config *out);

/* Bytes of the weights rank r holds, in the checkpoint's dtypes (GGUF blocks as blocks);
 * a tied lm_head counts once. */
size_t tp_plan_rank_bytes(const struct tp_plan *p, const struct model *m, int r);

/* Whether the model's lm_head is its embedding (tied, by config or by sharing the data). */
bool tp_lm_head_tied(const struct model *m);

/* Bytes of columns [begin, end) of every row of a matrix as a shard holds them: in its dtype, or
 * (a block type cut inside its blocks) as float32. */
size_t tp_cols_bytes(const struct tensor *t, struct tp_range cols);
/* Whether columns [begin, end) of a block-quantized matrix fall on block boundaries. */
bool tp_cols_on_blocks(const struct tensor *t, struct tp_range cols);
/* FP8 tensors' parts are held as float32: their scales index the whole tensor. */
static inline bool tp_is_fp8(enum dtype d) { return d == DTYPE_F8_E4M3 || d == DTYPE_F8_E5M2; }

#endif
