/* Private parts of the CUDA backend: its state, and the checking macros that turn every failed
 * CUDA or cuBLAS call into a message (statement, file, line) in b->base.error and a jump to the
 * function's one cleanup label, `fail`, with rc set negative. */
#ifndef SLUICE_BACKEND_CUDA_INTERNAL_H
#define SLUICE_BACKEND_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "worker/engine/backend.h"

struct cuda_layer {
    uint16_t *wqkv, *wo, *wgu, *wd; /* bf16, fused [q;k;v] and [gate;up] rows */
    float *attn_norm, *ffn_norm;
    float *q_norm, *k_norm; /* NULL unless Qwen3 */
    float *bqkv;            /* NULL unless Qwen2 */
};

/* A captured decode step, replayed while the batch keeps its shape. */
#define CUDA_GRAPH_CACHE 32
struct cuda_graph_entry {
    int n_seqs, bt_stride;
    bool any_cut;
    const void *hist;
    cudaGraphExec_t exec;
    uint64_t last_used;
};

#define CUBLAS_WS_BYTES ((size_t)32 << 20)
/* Products of up to this many rows go to the Hopper kernel: measured on an H200 at Llama-3-8B's
 * shapes, it beats cuBLAS through 64 rows and loses at 128 on the narrow products. */
#define CUDA_HOPPER_MAX_ROWS 64
/* Key ranges a decode attention splits a token's keys into at most (part_o holds that many rows
 * per query head and sampled row). */
#define CUDA_MAX_SPLITS 32
/* Rows that delta and big hold at least: every split part of a decode product (cuda_gemm_parts). */
#define CUDA_PARTS_ROWS (SK_HOPPER_MAX_SPLITS * CUDA_HOPPER_MAX_ROWS)

/* --cuda-profile: per-phase device times of eager (graph-free) steps, logged at exit. */
#define CUDA_PROF_EVENTS 640
#define CUDA_PROF_CATS 13
#define CUDA_PROF_SHAPES 8
struct cuda_prof {
    cudaEvent_t ev[CUDA_PROF_EVENTS];
    int cat[CUDA_PROF_EVENTS];
    int n_ev;
    int shape[CUDA_PROF_SHAPES]; /* decode batch size; -T for other steps */
    int steps[CUDA_PROF_SHAPES];
    double ms[CUDA_PROF_SHAPES][CUDA_PROF_CATS];
    double wall_ms[CUDA_PROF_SHAPES];
    int n_shapes;
};

struct cuda_backend {
    struct backend base;
    int device;
    struct cuda_options opt; /* as created with (backend_options.cuda) */
    int n_sms;
    bool use_gemv;        /* own kernel for one-row products */
    struct sk_hopper_gemm *hopper; /* TMA + wgmma products of 2..CUDA_HOPPER_MAX_ROWS rows; NULL off
                                      Hopper or with hopper=0 */
    bool gu_interleaved;           /* wgu rows in sk_gate_up_interleave's layout (with hopper) */
    bool split_parts;              /* qkv, o and down leave split-K parts to their reader
                                      (cuda_gemm_parts); split_parts=0: not */
    bool fused_mlp;                /* with split_parts, a decode batch's MLP in one launch
                                      (cuda_mlp_fused); fused_mlp=0: not */
    bool early_trigger;            /* gate/up, the fused MLP and qkv let their dependents launch
                                      at their start; early_trigger=0: not */
    bool use_prefill_mma; /* tensor-core prefill attention (head_dim 64, 128) */
    bool attn_early;      /* decode attention may read settled keys before qkv_post ends */
    int fused_qkv_rows;   /* decode-only steps of more tokens than this: the decode attention
                             does qkv_post's work (sk_attention_decode_qkv); -1 never.
                             fused_qkv=off: -1, =all: 0 (tests), else 32; it
                             needs settled keys, so never without attn_early */
    uint64_t fused_qkv_steps; /* steps submitted that way */
    /* --deterministic (backend_options): every product on the Hopper kernel whatever its rows,
     * the fused decode attention off, and decode attention split into ranges of a fixed
     * det_split_len keys, merged even when one range holds them all (cuda_forward.c). */
    bool deterministic;
    int det_split_len;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;
    struct cuda_prof *prof; /* NULL unless --cuda-profile */

    uint16_t *tok_embed, *lm_head; /* lm_head == tok_embed when tied */
    float *final_norm;
    float *inv_freq; /* head_dim / 2 rotary frequencies, scaling applied */
    struct cuda_layer *layers;
    size_t weight_bytes;

    uint16_t *kv; /* per layer: K then V, each kv_layer_elems */
    size_t kv_layer_elems;

    /* Activations for up to max_batch_tokens tokens and max_batch_seqs sampled rows. */
    float *x, *delta, *big, *q, *part_o, *part_ml, *logits, *work, *sorted_w;
    uint16_t *y;
    int32_t *counts, *ids_in, *offsets, *sorted_ids;
    void *sort_temp;
    size_t sort_temp_bytes;
    int64_t part_rows; /* (token, head, split) rows part_o holds */
    size_t workspace_bytes;

    /* Per-step metadata: built in pinned memory, sent in one copy. */
    int bt_cap; /* block-table ints per sequence */
    size_t meta_bytes;
    unsigned char *meta_host, *meta_dev;
    cudaEvent_t meta_sent;
    int32_t *hist_host, *hist_dev;
    size_t hist_cap;
    struct sk_sample_out *out_dev;
    /* Two steps may be queued (backend_submit): each copies its sampled tokens into its half of
     * out_host (max_batch_seqs rows each, by submit count modulo 2) and marks step_done. */
    struct sk_sample_out *out_host;
    cudaEvent_t step_done[2];
    int slot_rows[2];
    uint64_t submitted, collected;
    /* A step not done after this long is a stuck GPU (--cuda-step-timeout, default 60). */
    double step_timeout_s;
    bool stuck; /* then nothing more is asked of the device, not even at cleanup */

    bool use_graphs; /* --enforce-eager turns them off */
    struct cuda_graph_entry graphs[CUDA_GRAPH_CACHE];
    int n_graphs;
    uint64_t graph_clock;
    uint64_t graph_captures, graph_replays;
};

void cuda_report(struct cuda_backend *b, const char *what, const char *msg, const char *file, int line);

#define CUDA_CHECK(b, stmt)                                                                                            \
    do {                                                                                                               \
        cudaError_t e_ = (stmt);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            cuda_report((b), #stmt, cudaGetErrorString(e_), __FILE__, __LINE__);                                       \
            rc = -1;                                                                                                   \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

#define CUBLAS_CHECK(b, stmt)                                                                                          \
    do {                                                                                                               \
        cublasStatus_t s_ = (stmt);                                                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                             \
            cuda_report((b), #stmt, cublasGetStatusString(s_), __FILE__, __LINE__);                                    \
            rc = -1;                                                                                                   \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

/* Fails with a message (not a CUDA error): bad input or a size that does not fit. */
#define CUDA_FAIL(b, ...)                                                                                              \
    do {                                                                                                               \
        snprintf((b)->base.error, sizeof(b)->base.error, __VA_ARGS__);                                                 \
        rc = -1;                                                                                                       \
        goto fail;                                                                                                     \
    } while (0)

int cuda_weights_load(struct cuda_backend *b, const struct model *m);
void cuda_weights_free(struct cuda_backend *b);
int cuda_gemm_init(struct cuda_backend *b, const struct model_config *c);
void cuda_gemm_free(struct cuda_backend *b);
/* Whether a product of this many rows runs on the Hopper kernel (and the MLP's gate/up product
 * with its activation fused, when the weights are interleaved for it). */
bool cuda_gemm_on_hopper(const struct cuda_backend *b, int rows);
/* y[rows, n_out] (fp32) = x[rows, k_in] (bf16) * w[n_out, k_in]^T (bf16), fp32 accumulation. */
int cuda_gemm(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in);
/* Gate/up with the activation fused, act[rows, inter] in bf16 (sk_hopper_gemm_swiglu), on the
 * Hopper kernel in slices of its rows at most: for every batch the Hopper path takes
 * (cuda_gemm_on_hopper) when the weights are interleaved (gu_interleaved). */
int cuda_gemm_swiglu(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *act, int rows, int inter,
                     int k_in, bool early_dependents);
/* The same for a product whose one reader adds parts (o and down: the next RMSNorm; qkv:
 * qkv_post): its output may be left in *n_parts parts of rows * n_out floats (on the Hopper
 * kernel, the split-K sums; see sk_hopper_gemm_parts). y holds CUDA_PARTS_ROWS rows of n_out.
 * early_dependents: the next kernel may launch while this one runs (on the Hopper kernel). */
int cuda_gemm_parts(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                    int k_in, int *n_parts, bool early_dependents);
/* Whether a batch of rows takes its whole MLP in one launch (sk_hopper_mlp: gate/up with the
 * activation, then down's split parts, which the norm after it adds). */
bool cuda_mlp_fused(const struct cuda_backend *b, int rows, int hidden, int inter);
/* The same product written in bf16, always by cuBLAS: for prefill's gate/up, whose fp32 rows
 * (2 x intermediate wide) would cost SiLU twice the reads. */
int cuda_gemm_bf16(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *y, int rows, int n_out,
                   int k_in);
int cuda_submit(struct backend *base, const struct batch *batch);
int cuda_collect(struct backend *base, struct sample_result *results);
void cuda_prof_report(struct cuda_backend *b);

#endif
