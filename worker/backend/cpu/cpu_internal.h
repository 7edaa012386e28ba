/* The CPU backend's state, shared by its setup (cpu_backend.c) and its forward pass
 * (cpu_forward.c). Private to worker/backend/. */
#ifndef SLUICE_WORKER_CPU_INTERNAL_H
#define SLUICE_WORKER_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_kv.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/model/rope.h"

/* Matrices as cpu_weight: float32, or a GGUF file's blocks read in place (cpu_ops.h). Norms and
 * biases are always float32. */
struct cpu_layer {
    float *attn_norm, *bqkv, *q_norm, *k_norm, *ffn_norm;
    struct cpu_weight wqkv, wo, w_gate_up, w_down; /* w_gate_up, w_down empty in a sparse layer */
    /* model_family.h: NULL when the family has none (attn_norm and ffn_norm too, for OLMo 2). */
    float *bo, *b_gate_up, *b_down, *post_attn_norm, *post_ffn_norm;
};

struct cpu_moe;
struct cpu_tp_rank; /* cpu_tp.h */

struct cpu_backend {
    struct backend base;
    /* A tensor-parallel rank's place in its group (cpu_tp.c); NULL on a backend of its own. */
    struct cpu_tp_rank *tp;
    struct cpu_pool *pool;
    struct model_config c;
    int q_dim, kv_dim, qkv_dim;
    struct cpu_weight tok_embed, lm_head;     /* lm_head owns nothing when tied to tok_embed */
    float *final_norm;
    struct cpu_layer *layers;
    struct cpu_moe *moe;                      /* the sparse layers' experts (cpu_moe.c); NULL when dense */
    /* Quantized q and k read through this map (rope de-interleaving, cpu_backend.c). */
    int32_t *rope_row_map;
    struct cpu_options opt;                   /* as created with (backend_options.cpu) */
    struct rope rope;                         /* every rope variant (worker/model/rope.h) */
    struct cpu_kv kv;                         /* the paged KV cache (cpu_kv.h) */
    /* Activations, sized for max_batch_tokens rows. */
    float *x, *xb, *qkv, *att, *gate_up, *hidden, *tmp, *rope_cos, *rope_sin;
    float *rope_cos_local, *rope_sin_local;   /* Gemma 3's sliding layers; NULL otherwise */
    float *rope_scratch;                      /* one sequence's dynamic frequencies */
    int32_t *row_seq, *row_pos;
    /* Per sampled row. */
    float *xs, *logits;
    int32_t *sample_rows;
    float *sampler_scratch;
    /* Attention scores, one buffer per pool thread, grown to the longest context seen. */
    float **scores;
    int64_t scores_cap;
};

/* Loads n_parts tensors stacked by rows as one matrix of rows n_in long (cpu_backend.c). */
int cpu_load_weight(struct cpu_backend *cb, const struct model *m, struct cpu_weight *w, int64_t n_in,
                    const struct tensor *const *parts, int n_parts);

int cpu_backend_forward(struct backend *b, const struct batch *batch, struct sample_result *results);

#endif
