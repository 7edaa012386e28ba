/* What the kernels take, in plain C (no CUDA headers): their limits, the attention's parameters,
 * and which shapes each attention kernel serves. The CUDA backend's planner
 * (worker/backend/cuda/cuda_plan.c) decides with these same rules, and its unit test runs them in
 * a build without nvcc; sluice_kernels.h includes this header. */
#ifndef SLUICE_KERNELS_SK_SHAPES_H
#define SLUICE_KERNELS_SK_SHAPES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SK_KV_BLOCK 16
#define SK_MAX_HEAD_DIM 256
#define SK_MAX_TOP 20
/* sk_gemv's rows at most. */
#define SK_GEMV_MAX_ROWS 8
/* The Hopper products' rows per launch at most, and their split-K count at most. */
#define SK_HOPPER_MAX_ROWS 128
#define SK_HOPPER_MAX_SPLITS 8
/* The tensor-core product of GGUF block weights (kernels/quant_mma.cu, sk_quant_mma): output
 * features a block, batch rows a block (more rows take more blocks side by side), weights a
 * pipeline stage along k, and split-K ranges at most. The planner's split count
 * (cuda_plan_quant) is made from these. */
#define SK_QUANT_MMA_FEATURES 64
#define SK_QUANT_MMA_ROWS 64
#define SK_QUANT_MMA_STAGE_K 256
#define SK_QUANT_MMA_MAX_SPLITS 16
/* Rows of gate and of up interleaved together (sk_gate_up_interleave's layout). */
#define SK_GATE_UP_BLOCK 64
/* Query tokens of one sequence per prefill-attention tile. */
#define SK_PREFILL_TILE 64
/* Mixture of experts (kernels/moe_*.cu): experts a router chooses among, and experts it chooses
 * per token, at most. */
#define SK_MOE_MAX_EXPERTS 256
#define SK_MOE_MAX_TOP_K 16
/* The one-shot all-reduce (kernels/allreduce_oneshot.cu, sk_allreduce.h): ranks of a group at
 * most (the GPUs of one NVLink host; a GPU's peer mappings are limited too), and bytes of one
 * rank's message at most. Past that its latency advantage is gone (every rank reads every
 * peer's whole message) and the caller takes the communicator. */
#define SK_ONESHOT_MAX_RANKS 8
#define SK_ONESHOT_MAX_BYTES (512 * 1024)

struct sk_attn_params {
    int n_tokens;
    int n_heads;
    int n_kv_heads;
    int head_dim;  /* 1..SK_MAX_HEAD_DIM; 8, 16, 32, 64, 128, 256 take vector paths */
    int bt_stride; /* ints per row of block_tables */
    float scale;
    int n_splits;              /* >= 1: keys split into n_splits ranges, merged after */
    int split_len;             /* > 0: ranges of this many keys (a multiple of SK_KV_BLOCK); 0: each
                           token's keys cut into n_splits equal ranges (rounded to 16) */
    const int32_t *token_list; /* NULL: tokens 0..n_tokens-1; else the n_tokens query tokens */
    int settled_keys;          /* 1: no kernel of this step writes a query token's keys before its own
                                  position (every token is its sequence's only one in the step), so a
                                  kernel launched as a programmatic dependent may read them before
                                  the previous kernel ends */
    float softcap;             /* > 0: each score s (q.k * scale) becomes softcap * tanh(s / softcap)
                                  before the softmax (Gemma 2); 0: none */
    int window;                /* > 0: a query at position p sees keys max(0, p - window + 1) .. p
                                  only (a sliding window, its own key included), and no kernel reads
                                  a block-table entry, or the cache, of a block wholly before the
                                  window of every query it serves (the engine frees those: -1);
                                  0: keys 0 .. p */
    int kv_fp8;                /* 1: the caches hold e4m3 codes (one byte a value) of K / k_scale and
                                  V / v_scale (--kv-cache-dtype fp8); 0: bf16 */
    float k_scale, v_scale;    /* kv_fp8: the layer's scales */
};

/* The decode attention's kernels (sk_attention). */
enum sk_attn_kernel {
    /* One block per (query head, token, split): any head layout and head_dim, any number of
     * query tokens per sequence. */
    SK_ATTN_PER_HEAD = 0,
    /* The tensor-core streaming kernel: one block per (kv head, token, split) serves the query
     * heads of its kv head, so each key and value is read once per token; only for the shapes
     * sk_attention_decode_fits takes. */
    SK_ATTN_DECODE_STREAM = 1,
};

/* Whether the streaming kernel takes p: head_dim 64, 128 or 256 and 1, 2, 4 or 8 query heads per
 * kv head. */
static inline int sk_attention_decode_fits(const struct sk_attn_params *p)
{
    if (p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads) return 0;
    const int qg = p->n_heads / p->n_kv_heads;
    return (p->head_dim == 64 || p->head_dim == 128 || p->head_dim == 256) &&
           (qg == 1 || qg == 2 || qg == 4 || qg == 8);
}

/* The streaming kernel's blocks resident on one SM, about: two at head_dim 256 (a block's rings
 * take 96 KB of shared memory over bf16 caches, and ~190 registers a thread allow two either way),
 * about four below (the number the planner's split rule was measured with). */
static inline int sk_attention_decode_blocks_per_sm(int head_dim)
{
    return head_dim > 128 ? 2 : 4;
}

/* Whether sk_attention_prefill takes head_dim. */
static inline int sk_attention_prefill_fits(int head_dim)
{
    return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

/* Whether sk_attention_decode_qkv takes p: the streaming kernel's shapes at head_dim 128, with
 * p->settled_keys set. */
static inline int sk_attention_decode_qkv_fits(const struct sk_attn_params *p)
{
    return p->head_dim == 128 && p->settled_keys && sk_attention_decode_fits(p);
}

#ifdef __cplusplus
}
#endif

#endif
