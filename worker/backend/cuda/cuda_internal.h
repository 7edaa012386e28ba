/* Private parts of the CUDA backend: its state, grouped by the file that owns each part, and the
 * checking macros that turn every failed CUDA or cuBLAS call into a message (statement, file,
 * line) in b->base.error and a jump to the function's one cleanup label, `fail`, with rc set
 * negative.
 *
 * The files: cuda_backend.c (life cycle, workspace, KV cache, warm-up), cuda_weights.c,
 * cuda_plan.c (every choice, plain C), cuda_gemm.c (the products as planned), cuda_step.c
 * (submit and collect: the step's metadata, the steps in flight), cuda_forward.c (a step's kernels
 * on the stream), cuda_graph.c (captured steps), cuda_prof.c (--cuda-profile) and
 * cuda_watchdog.c (the bounded wait for a step). */
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

#include "kernels/sk_allreduce.h"
#include "kernels/sluice_kernels.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_plan.h"
#include "worker/model/rope.h"

/* cuda_qweights.c: a matrix kept in its GGUF blocks (dtype an enum dtype that sk_quant_supported
 * takes), n_out rows of k_in weights. */
struct cuda_qmat {
    int dtype;
    void *w;
    int n_out, k_in;
};
struct cuda_qlayer {
    struct cuda_qmat q, k, v, o, gate, up, down;
};

/* cuda_weights.c: the model on the device. */
struct cuda_layer {
    uint16_t *wqkv, *wo, *wgu, *wd; /* bf16, fused [q;k;v] and [gate;up] rows; NULL when q is set */
    struct cuda_qlayer *q;          /* NULL unless the layer's matrices stay in GGUF blocks */
    float *attn_norm, *ffn_norm;
    float *q_norm, *k_norm; /* NULL unless Qwen3 */
    float *bqkv;            /* NULL unless Qwen2 */
    /* model_family.h's additions, NULL where the family has none: the o and down biases, gate
     * and up's ([gate | up]), and the norms after attention and the MLP (Gemma 2/3). */
    float *bo, *b_gu, *b_down;
    float *post_attn_norm, *post_ffn_norm;
};
struct cuda_weights {
    uint16_t *tok_embed, *lm_head; /* lm_head == tok_embed when tied */
    float *final_norm;
    float *inv_freq; /* head_dim / 2 rotary frequencies, scaling applied */
    float *inv_freq_local; /* Gemma 3's sliding layers; NULL when they rotate as the others */
    struct rope rope;      /* the host's tables, for frequencies chosen per sequence (cuda_step.c) */
    struct cuda_layer *layers;
    size_t bytes;
    /* cuda_qweights.c: tok_embed and lm_head in GGUF blocks (w NULL unless; tok_embed and lm_head
     * are then NULL), the bf16
     * scratch the larger products dequantize tiles into, the bytes of blocks on the device and
     * the layers kept in blocks. */
    struct cuda_qmat tok_embed_q, lm_head_q; /* tied: the same blocks */
    uint16_t *q_scratch;
    void *q_xscratch; /* the block GEMV's int8 activations (sk_gemv_q_scratch_bytes) */
    unsigned *q_counters; /* sk_quant_mma's split-K counters, zero between launches */
    size_t q_bytes;
    int q_layers;
    /* Load time: a dummy FP8 matrix's bf16 values before they are quantized per row
     * (cuda_fp8_put_rows), grown as needed; freed when the load ends (cuda_fp8_load_done). */
    uint16_t *fp8_fill;
    size_t fp8_fill_elems;
};

/* cuda_gemm.c: the libraries and kernels the products run on. */
#define CUBLAS_WS_BYTES ((size_t)32 << 20)
struct cuda_products {
    cublasHandle_t cublas;
    void *cublas_ws;
    struct sk_hopper_gemm *hopper; /* TMA + wgmma products; NULL off Hopper or with hopper=0 */
};

/* cuda_backend.c: the paged KV cache, per layer K then V, each layer_elems values: bf16, or with
 * --kv-cache-dtype fp8 e4m3 codes (one byte) of value / the layer's scale, scales[2 l] for K and
 * scales[2 l + 1] for V (host memory: they go to the kernels as parameters). */
struct cuda_kv {
    unsigned char *cache;
    size_t layer_elems;
    bool fp8;
    float *scales;
};
/* The bytes of one layer's K (or V) cache. */
static inline size_t cuda_kv_layer_bytes(const struct cuda_kv *kv)
{
    return kv->layer_elems * (kv->fp8 ? 1 : 2);
}

/* cuda_backend.c: activations for up to max_batch_tokens tokens and max_batch_seqs sampled rows.
 * delta and big also hold the split parts of a decode batch's products (CUDA_PARTS_ROWS rows). */
struct cuda_workspace {
    float *x, *delta, *big, *q, *part_o, *part_ml, *logits, *work, *sorted_w;
    size_t big_floats;
    uint16_t *y;
    int32_t *counts, *ids_in, *offsets, *sorted_ids;
    void *sort_temp;
    size_t sort_temp_bytes;
    size_t bytes;
};

/* A step's arrays in device memory (cuda_step.c lays them out). */
struct cuda_step_meta {
    struct sk_sample_row *rows;
    int32_t *tokens, *pos, *seq, *slot, *sample_tok, *bt;
    int32_t *tiles; /* prefill tiles: (first token, count, sequence) */
    int32_t *dec;   /* tokens for the decode attention, when not all are */
    /* cuda_extras.c: prompt logprob rows (token, next prompt token, top alternatives) and the
     * tokens whose hidden states are pooled, with each pooled sequence's (first row, rows, 0). */
    int32_t *lp_tok, *lp_target, *lp_ntop, *hid_tok, *hid_seg;
    /* Each sequence's rope frequencies, where they depend on its length (plan.seq_rope_half). */
    float *seq_freqs;
};

/* cuda_step.c: per-step metadata, built in pinned memory and sent in one copy, and the steps in
 * flight. Two steps may be queued (backend_submit): each copies its sampled tokens into its half
 * of out_host (max_batch_seqs rows each, by submit count modulo 2) and marks done. */
struct cuda_steps {
    size_t meta_bytes;
    unsigned char *meta_host, *meta_dev;
    cudaEvent_t meta_sent;
    int32_t *hist_host, *hist_dev;
    size_t hist_cap;
    /* Token masks of the step's constrained rows (batch_seq.allowed), mask_words each, packed in
     * the order of those rows: only they are sent. The device buffer is fixed (max_batch_seqs
     * rows), so a captured graph reads each step's masks from it. */
    uint32_t *mask_host, *mask_dev;
    int mask_words;
    cudaEvent_t mask_sent; /* after the last copy out of mask_host */
    /* Late masks go over on a stream of their own while the model runs: after step_start (the
     * step's first work on b->stream, so every sampler before it has read mask_dev), and the
     * sampler waits for mask_sent. */
    cudaStream_t mask_stream;
    cudaEvent_t step_start;
    /* A step whose masks come after its submit (batch_seq.mask_later): submit enqueues its
     * model, cuda_sample its masks' copy, the sampler and the rest. Until then it is not counted
     * as submitted, and no other step may be submitted. later_at: the k-th late mask's row in
     * mask_host; delta_parts: the model's last delta, for the extras after the sampler. */
    struct {
        bool waiting;
        struct cuda_step_plan plan;
        struct cuda_step_meta dev;
        int *later_at;
        int delta_parts;
        float *logits_out;
        double t_start;
    } pend;
    struct sk_sample_out *out_dev, *out_host;
    cudaEvent_t done[2];
    int rows[2];
    uint64_t submitted, collected;
    uint64_t fused_qkv_steps; /* steps whose decode attention did qkv_post's work */
};

/* cuda_extras.c: prompt logprobs and hidden states (embeddings) of eager steps. The device
 * writes them into lp_dev and hid_dev; submit copies them into the step's half of the pinned
 * buffers, and collect hands them to where the batch said (dst, recorded per half). Allocated
 * on first use. */
struct cuda_extras_dst {
    struct prompt_logprob *lp; /* n rows from row at of the half */
    float *sum, *last;         /* pooled sequence at of the half */
    int32_t n, at;
};
struct cuda_extras {
    struct sk_prompt_lp *lp_dev, *lp_host; /* max_batch_tokens rows; host: two halves */
    float *hid_dev, *hid_host;             /* max_batch_seqs x (sum, last) rows; host: two halves */
    struct cuda_extras_dst *dst[2];        /* max_batch_seqs x 2 per half */
    int n_dst[2];
};

/* What cuda_forward_enqueue runs: the plan (attention's token_list set) and the metadata. */
struct cuda_step_args {
    const struct cuda_step_plan *plan;
    struct cuda_step_meta dev;
    float *logits_out; /* tests: the sampled rows' logits are copied here */
    bool model_only;   /* the model up to the logits: the sampler waits for late masks */
};

/* cuda_graph.c: captured decode steps, replayed while the batch keeps its shape. */
#define CUDA_GRAPH_CACHE 32
struct cuda_graph_entry {
    int n_seqs, bt_stride;
    bool any_cut;
    bool model_only; /* captured without the sampler (cuda_step_args.model_only) */
    const void *hist;
    cudaGraphExec_t exec;
    uint64_t last_used;
};
struct cuda_graphs {
    struct cuda_graph_entry entries[CUDA_GRAPH_CACHE];
    int n;
    uint64_t clock;
    uint64_t captures, replays;
};

/* cuda_watchdog.c: a step not done after timeout_s is a stuck GPU; then nothing more is asked
 * of the device, not even at cleanup. */
struct cuda_watchdog {
    double timeout_s;
    bool stuck;
};

struct cuda_prof; /* cuda_prof.c: --cuda-profile */
struct cuda_fp8;  /* cuda_fp8.c: FP8 weights */
struct cuda_moe;  /* cuda_moe.c: the experts and their scratch; NULL for a dense model */
struct comm;      /* worker/parallel/comm.h */

/* cuda_tp.c: the backend's place in tensor parallelism. Alone (no flag) comm is NULL and the
 * backend holds the whole vocabulary; --tensor-parallel-size 1 makes an NCCL communicator of
 * one GPU; a rank of a larger group (cuda_tp_group.c) holds its shard and borrows the group's. */
struct cuda_tp {
    struct comm *comm;
    bool owns_comm;
    bool host;             /* the collectives go through host memory (the CPU communicator) */
    int rank, size;
    int vocab_begin;       /* this rank's rows of the embedding and lm_head: vocab_begin .. + vocab_rows - 1 */
    int vocab_rows;
    int vocab_per_rank;    /* every rank's share, padded: the logits gather's width */
    float *gathered;       /* device: [size][max_batch_seqs][vocab_per_rank], ranks of a group only */
    float *host_buf;       /* pinned staging for host collectives */
    size_t host_floats;
    /* cuda_tp_oneshot.c, --cuda-options tp_oneshot=1: the one-shot all-reduce's group (NULL:
     * none), owned by this backend with --tensor-parallel-size 1, else by the group's backend,
     * and this rank's view of it. */
    struct sk_oneshot_group *oneshot_group;
    bool owns_oneshot;
    struct sk_oneshot_peers oneshot;
};

struct cuda_backend {
    struct backend base;
    int device;
    struct cuda_options opt;      /* as created with (backend_options.cuda) */
    struct cuda_plan_config plan; /* the choices fixed at creation */
    cudaStream_t stream;
    struct cuda_products gemm;
    struct cuda_weights w;
    struct cuda_kv kv;
    struct cuda_workspace ws;
    struct cuda_steps steps;
    struct cuda_graphs graphs;
    struct cuda_extras extras;
    struct cuda_watchdog watchdog;
    struct cuda_prof *prof; /* NULL unless --cuda-profile */
    struct cuda_fp8 *fp8;   /* NULL unless the layers' weights are FP8 on the device */
    struct cuda_moe *moe;
    struct cuda_tp tp;
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

/* cuda_weights.c */
int cuda_weights_load(struct cuda_backend *b, const struct model *m);
void cuda_weights_free(struct cuda_backend *b);

/* cuda_qweights.c. Keeps layer lw's matrices in their GGUF blocks when every one of them is of a
 * type the block kernels take (cl->q set; else cl->q stays NULL and nothing is allocated). */
int cuda_qlayer_load(struct cuda_backend *b, const struct layer_weights *lw, struct cuda_layer *cl);
/* The same for an untied lm_head (b->w.lm_head_q), and for tok_embed (b->w.tok_embed_q; tied:
 * lm_head_q too, the same blocks). */
int cuda_qlm_head_load(struct cuda_backend *b, const struct tensor *t);
int cuda_qembed_load(struct cuda_backend *b, const struct tensor *t, bool tied);
/* The scratch buffer, once any matrix stayed in blocks; logs the bytes. */
int cuda_qweights_finish(struct cuda_backend *b);
void cuda_qweights_free(struct cuda_backend *b);
/* y[r * ldy + n] = x[r, :] m[n, :] for r < rows, n < m->n_out, fp32 out; x bf16 with m->k_in
 * columns. Small batches on the block GEMV, larger ones on the tensor-core kernel, the largest on
 * dequantized tiles and cuBLAS (cuda_plan_quant). */
int cuda_qproduct(struct cuda_backend *b, const struct cuda_qmat *m, const uint16_t *x, float *y, int ldy, int rows);
/* The same on the path p says, whatever the planner would choose (tests and benchmarks compare
 * the paths with it). */
int cuda_qproduct_on(struct cuda_backend *b, const struct cuda_qmat *m, const uint16_t *x, float *y, int ldy, int rows,
                     struct cuda_quant_plan p);
/* A layer's products in blocks: q, k, v side by side in qkv[rows, q + k + v]; the MLP from
 * ws.y (normalized) to ws.delta. x_int8: the block GEMV's scratch holds x (ws.y) in int8
 * already, left there by the norm (cuda_qlayer_int8_input said it may). */
int cuda_qlayer_qkv(struct cuda_backend *b, const struct cuda_qlayer *q, const uint16_t *x, float *qkv, int rows,
                    bool x_int8);
int cuda_qlayer_mlp(struct cuda_backend *b, const struct cuda_qlayer *q, const float *b_gu, int rows, bool x_int8);
/* Whether the products on one x that begin with m (q; gate) begin with the block GEMV reading x
 * in int8 from its scratch, at this many rows, with --cuda-options quant_overlap=1: then the
 * kernel that writes x leaves it there too (sk_add_rmsnorm_parts_q8, sk_silu_mul_q8), one launch
 * fewer. */
bool cuda_qlayer_int8_input(const struct cuda_backend *b, const struct cuda_qmat *m, int rows);

/* cuda_weights.c's loader, for cuda_moe.c: writes tensor t (numel elements) as bf16 at dst. */
struct loader;
int cuda_weights_put_matrix(struct loader *ld, uint16_t *dst, const struct tensor *t, int64_t numel,
                            const char *name);

/* cuda_moe.c: the mixture-of-experts layers. cuda_moe_load_layer uploads sparse layer l's router,
 * experts (stacked: [n_experts, 2 inter, hidden] gate then up rows, [n_experts, hidden, inter]
 * down) and shared expert, making b->moe at the first: the router and the shared expert's gate in
 * bf16; each stack of experts (gate/up, down) and each shared-expert matrix in e4m3 with a scale
 * a row where sk_moe_gemm_fp8 takes all of it (cuda_moe_fp8_takes), else in bf16 (FP8 tensors
 * dequantized). cuda_moe_load_done logs what the experts weigh on the device;
 * cuda_moe_workspace_alloc makes the scratch; cuda_moe_enqueue runs the layer's MLP over the T
 * rows of b->ws.y into b->ws.delta (one part). cuda_moe_expert_bytes: the bytes of the experts and
 * shared experts on the device (routers and shared gates not counted), *fp8 of them in e4m3 with
 * their scales. */
int cuda_moe_load_layer(struct cuda_backend *b, struct loader *ld, const struct model *m, int l);
void cuda_moe_load_done(const struct cuda_backend *b);
size_t cuda_moe_expert_bytes(const struct cuda_backend *b, size_t *fp8);
int cuda_moe_workspace_alloc(struct cuda_backend *b);
bool cuda_moe_is_sparse(const struct cuda_backend *b, int l);
int cuda_moe_enqueue(struct cuda_backend *b, int l, int T, int *delta_parts);
void cuda_moe_free(struct cuda_backend *b);

/* cuda_gemm.c. cuda_gemm_init makes the handles (the Hopper kernel's only where the device and
 * the build have it, and not with hopper=0); cuda_plan_config_init needs to know that. */
int cuda_gemm_init(struct cuda_backend *b);
void cuda_gemm_free(struct cuda_backend *b);
/* y[rows, n_out] (fp32) = x[rows, k_in] (bf16) * w[n_out, k_in]^T (bf16), fp32 accumulation, on
 * the kernel p names; *n_parts (may be NULL unless p is HOPPER_PARTS): the parts y was left in,
 * rows * n_out floats apart (y then holds CUDA_PARTS_ROWS rows of n_out). */
int cuda_product(struct cuda_backend *b, struct cuda_product_plan p, const uint16_t *w, const uint16_t *x, float *y,
                 int rows, int n_out, int k_in, int *n_parts);
/* Gate/up with the activation fused, act[rows, inter] in bf16 (sk_hopper_gemm_swiglu), on the
 * Hopper kernel in slices of its rows at most; early: the next kernel may launch at the last
 * slice's start. */
int cuda_gemm_swiglu(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *act, int rows, int inter,
                     int k_in, bool early);
/* The same product written in bf16, always by cuBLAS: for prefill's gate/up, whose fp32 rows
 * (2 x intermediate wide) would cost SiLU twice the reads. */
int cuda_gemm_bf16(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *y, int rows, int n_out,
                   int k_in);

/* cuda_fp8.c: FP8 weights, a layer's four products kept in e4m3 with their scales.
 * cuda_fp8_init (after the plan's config, before the weights) decides whether the model's
 * layers are FP8 in a layout the device takes; if so it makes b->fp8 and tells the planner
 * (cuda_plan_config_fp8). cuda_weights_load then loads each layer's matrices with
 * cuda_fp8_load_layer instead of as bf16, and cuda_forward_enqueue runs the FP8 plans with
 * cuda_fp8_product (y fp32, as cuda_product). */
enum cuda_fp8_matrix { CUDA_FP8_QKV, CUDA_FP8_O, CUDA_FP8_GATE_UP, CUDA_FP8_DOWN, CUDA_FP8_MATRICES };
int cuda_fp8_init(struct cuda_backend *b, const struct model *m);
/* A layer's products (a sparse layer's: qkv and o; its experts are cuda_moe.c's). */
int cuda_fp8_load_layer(struct cuda_backend *b, const struct model *m, int layer);
/* Frees the load's scratch (b->w.fp8_fill); for a model without FP8 weights too. */
void cuda_fp8_load_done(struct cuda_backend *b);
/* FP8 tensor t (2-D, e4m3 with a scale per row or per tensor, or a dummy: cuda_plan_fp8_row_scales)
 * as its codes at q (rows x cols bytes) and a float32 scale per row at scale, on the device (a
 * dummy's rows quantized there from model_dummy_value's bf16 values, as every backend does). */
int cuda_fp8_put_rows(struct cuda_backend *b, uint8_t *q, float *scale, const struct tensor *t, uint64_t seed);
/* The per-token e4m3 codes and scales of a product's activations, where its FP8 plan reads them
 * (the Hopper stream, cuBLASLt; q NULL for other plans): the kernel that writes the activations
 * may quantize them into these in the same pass (sk_add_rmsnorm_parts_fp8, sk_silu_mul_fp8),
 * and cuda_fp8_product is then told x_coded, so it does not quantize x again. */
struct cuda_fp8_codes {
    uint8_t *q;
    float *scale;
};
struct cuda_fp8_codes cuda_fp8_codes_for(const struct cuda_backend *b, struct cuda_product_plan p);
int cuda_fp8_product(struct cuda_backend *b, struct cuda_product_plan p, int layer, enum cuda_fp8_matrix which,
                     const uint16_t *x, bool x_coded, float *y, int rows, int n_out, int k_in);
void cuda_fp8_free(struct cuda_backend *b);
/* An FP8 tensor (numel elements) written as bf16 at dst: for the FP8 tensors the FP8 products do
 * not take (cuda_weights.c's put_matrix). */
int cuda_fp8_put_bf16(struct cuda_backend *b, uint16_t *dst, const struct tensor *t, uint64_t seed);

/* cuda_step.c: the backend's submit and collect (backend_ops). */
int cuda_submit(struct backend *base, const struct batch *batch);
int cuda_collect(struct backend *base, struct sample_result *results);
int cuda_sample(struct backend *base, const uint32_t *const *masks, int32_t n_masks);
/* The step buffers (metadata, sampled output, events) for the backend's sizes; freed by
 * cuda_steps_free. */
int cuda_steps_alloc(struct cuda_backend *b);
void cuda_steps_free(struct cuda_backend *b);

/* cuda_forward.c: the model and the sampler for one step, enqueued on b->stream (also while a
 * graph is being captured). */
int cuda_forward_enqueue(struct cuda_backend *b, const struct cuda_step_args *a);
/* The family's finish of rows rows of logits (Granite's divisor, Gemma 2's final soft-capping),
 * before anything reads them; nothing for the others. */
int cuda_logits_finish(struct cuda_backend *b, float *logits, int rows);
/* The part of cuda_forward_enqueue after the logits: the sampler, then the extras (which read
 * the model's last delta in delta_parts parts); enqueued by cuda_sample for a model_only step. */
int cuda_sample_enqueue(struct cuda_backend *b, const struct cuda_step_args *a, int delta_parts);

/* cuda_extras.c. ensure: the buffers, on the first step that needs them. fill: the step's rows
 * into the pinned metadata hm, and where their results go, for the step in half slot. enqueue:
 * after the model (its residual x + delta's delta_parts parts, part_stride apart), the final
 * norm's hidden states pooled and the prompt positions' logprobs, then their copy into half
 * slot. collect: hands half slot's results over once its step is done. */
int cuda_extras_ensure(struct cuda_backend *b);
void cuda_extras_fill(struct cuda_backend *b, const struct batch *batch, const struct cuda_step_meta *hm, int slot);
int cuda_extras_enqueue(struct cuda_backend *b, const struct cuda_step_args *a, int delta_parts, int64_t part_stride);
int cuda_extras_copy(struct cuda_backend *b, const struct cuda_step_plan *p, int slot);
void cuda_extras_collect(struct cuda_backend *b, int slot);
void cuda_extras_free(struct cuda_backend *b);

/* cuda_graph.c: replays the captured step for a's shape, capturing it first when new. */
int cuda_graph_run(struct cuda_backend *b, const struct cuda_step_args *a);
void cuda_graphs_free(struct cuda_backend *b);

/* cuda_watchdog.c: waits for ev at most watchdog.timeout_s; past it the GPU is stuck (the
 * backend's error says so, and cleanup leaves the device alone). */
int cuda_watchdog_wait(struct cuda_backend *b, cudaEvent_t ev);
double cuda_now_s(void);

/* cuda_tp.c: the tensor-parallel communicator and the step's collectives on b->stream; each
 * does nothing without a communicator. cuda_tp_init: rank is NULL for a backend of its own
 * (--tensor-parallel-size 1 makes its NCCL communicator of one GPU, and with tp_oneshot=1 a
 * one-shot group of one rank), or a group's rank, whose communicator and one-shot group (NULL:
 * none) come later (cuda_tp_attach). cuda_tp_check reports an asynchronous NCCL error, or a
 * one-shot all-reduce that gave up, after a step. */
int cuda_tp_init(struct cuda_backend *b, const struct backend_options *opt, const struct cuda_tp *rank);
void cuda_tp_attach(struct cuda_backend *b, struct comm *comm, struct sk_oneshot_group *oneshot);
void cuda_tp_free(struct cuda_backend *b);
/* The embedding's all-reduce: the ranks' shares of the rows summed (nothing on one rank). */
int cuda_tp_all_reduce_embed(struct cuda_backend *b, float *x, size_t n);
/* A sublayer's sum over the ranks: b->ws.delta, rows rows of the hidden size in *delta_parts
 * parts part_stride floats apart, the o or down product's partial output. The communicator sums
 * each part in place; the one-shot kernel (cuda_plan_all_reduce) adds the parts first and leaves
 * the sum in one part (*delta_parts = 1), or, where residual_next (the residual add comes next,
 * with nothing between), adds it into the residual b->ws.x itself: *delta_parts = 0, and the
 * readers of x + delta take delta as NULL (cuda_delta). */
int cuda_tp_sum_delta(struct cuda_backend *b, int *delta_parts, int64_t part_stride, int rows, bool residual_next);
/* Where lm_head writes its rows of the logits: logits itself alone, a staging buffer on a rank. */
float *cuda_tp_lm_head_out(struct cuda_backend *b, float *logits);
/* logits[r][0 .. vocab) for rows rows: on a rank, every rank's share (from lm_out) gathered. */
int cuda_tp_gather_logits(struct cuda_backend *b, const float *lm_out, float *logits, int rows);
int cuda_tp_check(struct cuda_backend *b);
/* The delta that the residual's readers add, in delta_parts parts: NULL once it is in the
 * residual (cuda_tp_sum_delta). */
static inline const float *cuda_delta(const struct cuda_backend *b, int delta_parts)
{
    return delta_parts ? b->ws.delta : NULL;
}

/* cuda_tp_oneshot.c: the one-shot all-reduce of tensor parallelism (kernels/sk_allreduce.h).
 * create: the group of n ranks on devices (several ranks may share one), for tp_oneshot=1; -1
 * with err naming why where it cannot be (two GPUs without peer access). launch: out = residual
 * (NULL: none) + the ranks' sums of partial's n_parts parts, count floats, on b->stream. check:
 * -1 with the backend's error set once the group has failed (a rank timed out or was aborted). */
int cuda_tp_oneshot_create(struct sk_oneshot_group **out, int n, const int *devices, double step_timeout_s,
                           char *err, size_t errlen);
int cuda_tp_oneshot(struct cuda_backend *b, float *out, const float *residual, const float *partial, int n_parts,
                    int64_t part_stride, size_t count);
int cuda_tp_oneshot_check(struct cuda_backend *b);

/* cuda_backend.c: the count of visible GPUs into n_dev; -1 with err set when there is none or
 * device is not one of them. */
int cuda_visible_devices(int device, int *n_dev, char *err, size_t errlen);
/* cuda_backend.c: a rank of a tensor-parallel group (cuda_tp_group.c) on its shard; the group
 * attaches the communicator and runs the warm-up. */
int cuda_backend_create_rank(struct backend **out, const struct model *shard, const struct backend_options *opt,
                             const struct cuda_tp *rank, char *err, size_t errlen);
/* cuda_backend.c: the first prefill and decode step, through base (a backend or a group). */
int cuda_warm_up(struct backend *base, int bt_cap);
/* cuda_tp_group.c: the backend of --tensor-parallel-size N > 1. */
int cuda_tp_group_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                         size_t errlen);

/* cuda_prof.c: per-phase device times of eager steps, by step shape, printed when freed. */
enum cuda_prof_phase {
    CUDA_PROF_EMBED,
    CUDA_PROF_NORM,
    CUDA_PROF_QKV,
    CUDA_PROF_QKV_POST,
    CUDA_PROF_ATTN,
    CUDA_PROF_O,
    CUDA_PROF_GATE_UP,
    CUDA_PROF_SILU,
    CUDA_PROF_DOWN,
    CUDA_PROF_MLP,
    CUDA_PROF_LM_HEAD,
    CUDA_PROF_SAMPLE,
    CUDA_PROF_COPY,
    CUDA_PROF_PHASES
};
int cuda_prof_create(struct cuda_backend *b);
/* Prints the report and frees the profile. */
void cuda_prof_free(struct cuda_backend *b);
/* A step begins: its marks start over. */
void cuda_prof_begin(struct cuda_backend *b);
/* Marks the end of a phase on the stream; nothing without a profile. */
void cuda_prof_mark(struct cuda_backend *b, enum cuda_prof_phase phase);
/* After the step's synchronization: adds each phase's time to the step's shape (a decode batch
 * of n: n; other steps of T tokens: -T). */
void cuda_prof_collect(struct cuda_backend *b, int shape, double wall_ms);

#endif
