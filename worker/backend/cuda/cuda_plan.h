/* The CUDA backend's choices, made in one place by plain functions of the batch, the model's
 * shape, the device and the options, with no CUDA call: which kernel takes each matrix product
 * (own gemv, the own Hopper kernel, cuBLAS) and the MLP, which decode-attention kernel and how
 * many key splits, whether the decode attention does qkv_post's work, whether a step replays a
 * CUDA graph, and the deterministic mode's versions of all of these. cuda_submit executes what
 * cuda_plan_step returns; tests/unit/backend/test_cuda_plan.c checks the choices on the CPU.
 * Why each choice is what it is, with the measurements: docs/performance.md. */
#ifndef SLUICE_BACKEND_CUDA_PLAN_H
#define SLUICE_BACKEND_CUDA_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/sk_shapes.h"
#include "worker/backend/backend.h"

/* Decode products of up to this many rows go to the Hopper kernel (beyond, cuBLAS wins). */
#define CUDA_HOPPER_MAX_ROWS 64
/* Rows a split-K product leaves parts for at most: every split of CUDA_HOPPER_MAX_ROWS rows. */
#define CUDA_PARTS_ROWS (SK_HOPPER_MAX_SPLITS * CUDA_HOPPER_MAX_ROWS)
/* Between 33 and CUDA_HOPPER_MAX_ROWS rows, products of fewer weights than this are "narrow":
 * cuBLAS beats the Hopper kernel on them, unless the product lets its dependents launch early. */
#define CUDA_NARROW_WEIGHTS ((int64_t)48 << 20)
/* Key ranges a decode attention splits a token's keys into at most. */
#define CUDA_MAX_SPLITS 32
/* The decode attention does qkv_post's work over this many rows (CUDA_FUSED_QKV_AUTO). */
#define CUDA_FUSED_QKV_ROWS 32
/* The qkv product lets qkv_post and the decode attention launch early over this many rows. */
#define CUDA_QKV_EARLY_ROWS 8
/* A decode batch of up to this many rows takes its whole MLP in one launch. */
#define CUDA_FUSED_MLP_ROWS 32

/* What the choices depend on besides the batch, fixed when the backend is made
 * (cuda_plan_config_init). */
struct cuda_plan_config {
    /* The model. */
    int hidden, inter, n_heads, n_kv_heads, head_dim, vocab;
    int lm_rows; /* lm_head's rows: the vocabulary, or a tensor-parallel rank's share of it */
    /* The backend's sizes. */
    int max_batch_tokens, max_batch_seqs;
    int bt_cap;        /* block-table ints per sequence */
    int num_kv_blocks; /* set once the KV cache is allocated */
    int64_t part_rows; /* (token, query head, split) rows the split attention's scratch holds */
    /* The device. */
    int n_sms;
    bool hopper; /* the own Hopper products are there (sm_90a, compute capability 9.0) */
    /* The choices the options and the device fix. */
    bool gemv;           /* own kernel for one-row products */
    bool prefill_mma;    /* tensor-core prefill attention (head_dim 64, 128 or 256) */
    bool graphs;         /* decode steps replay CUDA graphs */
    bool gu_interleaved; /* gate/up weights interleaved for the fused activation (with hopper) */
    bool split_parts;    /* Hopper products leave split-K parts to their reader */
    bool fused_mlp;      /* a small decode batch's MLP in one launch (with split_parts) */
    bool early_trigger;  /* products may let their dependents launch at their start */
    bool attn_early;     /* the decode attention may read settled keys before its wait */
    int fused_qkv_rows;  /* decode-only steps of more rows: the attention does qkv_post's work;
                            -1 never */
    /* FP8 weights on the device (cuda_plan_config_fp8): the layers' products take the FP8
     * kernels; fp8_blocks: their scales are per block, not per row; fp8_lt: cuBLASLt's FP8 GEMM
     * is there for this device and these shapes; fp8_mma: the tensor-core FP8 kernel may take
     * products (--cuda-options fp8_mma=0 turns it off); fp8_hopper: the Hopper weight stream
     * on e4m3 operands may (with hopper; fp8_hopper=0 turns it off). */
    bool fp8, fp8_blocks, fp8_lt, fp8_mma, fp8_hopper;
    /* GGUF block weights: the tensor-core kernel may take products (--cuda-options quant_mma=0
     * turns it off); quant_overlap: the block kernels launch as programmatic dependents and the
     * norm and SwiGLU write a block GEMV's int8 x (--cuda-options quant_overlap=1 turns it on). */
    bool quant_mma, quant_overlap;
    /* The family's layer (model_family.h). plain_mlp: gate/up biases or an activation other
     * than SiLU, which only the fp32 gate/up product and sk_glu take; seq_rope: rope frequencies
     * chosen per sequence and step (LongRoPE, dynamic NTK), which only qkv_post takes;
     * qk_norm_full: q/k norms over the whole projection (OLMo 2), taken by sk_qkv_norm_full
     * before qkv_post, so the decode attention cannot do qkv_post's work either. */
    float attn_scale, attn_softcap;
    bool plain_mlp, seq_rope, qk_norm_full;
    /* > 0: every layer slides over this many keys, so the blocks wholly before the window of a
     * sequence's first token in the step are never read, and may be freed (-1) by the engine. */
    int all_sliding_window;
    /* > 0: some layers (all_sliding_window: every one) slide over this many keys. */
    int sliding_window;
    /* --deterministic: a row's arithmetic does not depend on the batch. */
    bool deterministic;
    int det_split_len; /* the decode attention's fixed key range */
};

void cuda_plan_config_init(struct cuda_plan_config *c, const struct model_config *m, const struct cuda_options *o,
                           bool deterministic, bool hopper, int n_sms, int max_batch_tokens, int max_batch_seqs,
                           int bt_cap);

/* --- matrix products ------------------------------------------------------------------ */
enum cuda_product {
    CUDA_PRODUCT_CUBLAS,        /* cublasGemmEx's default algorithm, fp32 output */
    CUDA_PRODUCT_GEMV,          /* sk_gemv: one row */
    CUDA_PRODUCT_HOPPER,        /* sk_hopper_gemm: split-K sums added in clusters */
    CUDA_PRODUCT_HOPPER_SLICED, /* the same in slices of SK_HOPPER_MAX_ROWS rows (deterministic) */
    CUDA_PRODUCT_HOPPER_PARTS,  /* sk_hopper_gemm_parts: split-K sums left to the one reader */
    /* FP8 weights (cuda_fp8.c; a layer's matrices only, with cuda_plan_config.fp8): */
    CUDA_PRODUCT_FP8_GEMV,      /* sk_fp8_gemv, SK_FP8_GEMV_MAX_ROWS rows a launch */
    CUDA_PRODUCT_FP8_MMA,       /* sk_fp8_gemm_small: tensor cores, bf16 activations, 64 rows a launch */
    CUDA_PRODUCT_FP8_HOPPER,    /* activations quantized per token, sk_hopper_fp8_gemm (wgmma on e4m3) */
    CUDA_PRODUCT_FP8_LT,        /* activations quantized per token, cuBLASLt's FP8 GEMM, scales after */
    CUDA_PRODUCT_FP8_DEQUANT,   /* the weights dequantized to bf16 scratch, then cuBLAS */
};
struct cuda_product_plan {
    enum cuda_product kernel;
    bool early; /* HOPPER_PARTS: the next kernel may launch at this one's start */
};

/* Whether a product of this many rows runs on the Hopper kernel (and gate/up with its fused
 * activation, where the weights are interleaved for it). */
bool cuda_plan_on_hopper(const struct cuda_plan_config *c, int rows);
/* y[rows, n_out] = x[rows, k_in] w^T, added up whole. */
struct cuda_product_plan cuda_plan_product(const struct cuda_plan_config *c, int rows, int n_out, int k_in);
/* The same for a product whose one reader adds parts (o, down: the next RMSNorm; qkv: qkv_post or
 * the decode attention); early_dependents: the reader would launch at its start. */
struct cuda_product_plan cuda_plan_product_parts(const struct cuda_plan_config *c, int rows, int n_out, int k_in,
                                                 bool early_dependents);

/* FP8 weights: sets fp8, fp8_blocks and fp8_lt, and leaves gate and up apart (no interleaving
 * for the fused Hopper activation, which reads bf16 weights). */
void cuda_plan_config_fp8(struct cuda_plan_config *c, bool blocks, bool lt);
/* Rows up to which the FP8 gemv (CUDA cores, one FMA per weight and row) takes a product: past a
 * few rows its multiply-adds, not the weight bytes, bound it (an estimate from instruction
 * counts, not a measured crossover). */
#define CUDA_FP8_GEMV_ROWS 4
/* Rows up to which the tensor-core FP8 kernel (sk_fp8_gemm_small, 64 rows a launch, bf16
 * activations) takes a product with per-row scales, n_out a multiple of 32 and k_in of 16.
 * Where cuBLASLt's FP8 GEMM is there: 16, measured on Llama-3-8B's shape, whole decode steps
 * with and without --cuda-options fp8_mma=0 (docs/performance.md): the kernel wins at 8 and 16
 * rows, cuBLASLt from 32 (its bandwidth per weight byte falls as rows grow while cuBLASLt's
 * holds). Without cuBLASLt, up to 4 launches (4 reads of a byte a weight still beat the 5 bytes
 * dequantizing to bf16 moves; an estimate). */
#define CUDA_FP8_MMA_ROWS 16
#define CUDA_FP8_MMA_ROWS_NO_LT 256
/* Rows from which the Hopper weight stream on e4m3 operands (sk_hopper_fp8_gemm: the activations
 * quantized per token, by the kernel that writes them where it can, wgmma, scales in its
 * epilogue) takes a product with per-row scales and k_in a multiple of 16, up to
 * SK_HOPPER_MAX_ROWS. Whole decode steps of Llama-3-8B's shape on one H100 (docs/performance.md,
 * "FP8 weights"): at 4 rows 3.89 ms on the stream against 5.22 on the gemv; at 1 row the gemv
 * wins, 3.67 against 3.78. 2 and 3 rows are not measured (the gemv's time grows ~0.5 ms a row,
 * the stream's hardly). */
#define CUDA_FP8_HOPPER_MIN_ROWS 2
/* Rows up to which the gemv (8 rows a launch) takes what neither cuBLASLt nor the tensor-core
 * kernel can (block scales, other shapes), before the weights are dequantized to bf16 for
 * cuBLAS (5 bytes a weight moved). */
#define CUDA_FP8_GEMV_ROWS_NO_LT 32
/* A product of FP8 weights: under --deterministic the gemv at every size (its rows do not depend
 * on each other); else the Hopper weight stream from CUDA_FP8_HOPPER_MIN_ROWS to
 * SK_HOPPER_MAX_ROWS rows where it is there and the scales and shape suit it (per-row scales,
 * k_in a multiple of 16); below it, or without it up to CUDA_FP8_GEMV_ROWS rows, the gemv; then
 * the tensor-core kernel where the scales and shape suit it (up to CUDA_FP8_MMA_ROWS, or
 * CUDA_FP8_MMA_ROWS_NO_LT without cuBLASLt), then cuBLASLt where it is there and the shape suits
 * it (per-row scales, n_out and k_in multiples of 16), else the gemv up to
 * CUDA_FP8_GEMV_ROWS_NO_LT rows, else dequantized weights. */
struct cuda_product_plan cuda_plan_fp8_product(const struct cuda_plan_config *c, int rows, int n_out, int k_in);
bool cuda_plan_is_fp8(struct cuda_product_plan p);
/* Whether FP8 tensor t is e4m3 with one scale per output row: per channel, or one per tensor
 * (spread over the rows, which is exact), or a dummy (quantized per row at load). False for
 * block scales and for E5M2, which the products read as bf16. */
bool cuda_plan_fp8_row_scales(const struct tensor *t);

/* --- the MLP -------------------------------------------------------------------------- */
enum cuda_mlp {
    CUDA_MLP_FUSED,  /* sk_hopper_mlp: gate/up with its activation, then down's parts, one launch */
    CUDA_MLP_SWIGLU, /* sk_hopper_gemm_swiglu (gate/up with its activation, bf16), then down */
    CUDA_MLP_BF16,   /* cuBLAS gate/up in bf16, sk_silu_mul_bf16, then down */
    CUDA_MLP_FP32,   /* gate/up as the gate_up plan says, in fp32, sk_silu_mul(_interleaved) or sk_glu, then down */
};
struct cuda_mlp_plan {
    enum cuda_mlp kind;
    bool early;                       /* FUSED, SWIGLU: the next kernel may launch at its start */
    struct cuda_product_plan gate_up; /* FP32 */
    struct cuda_product_plan down;    /* all but FUSED */
};
struct cuda_mlp_plan cuda_plan_mlp(const struct cuda_plan_config *c, int rows);

/* --- GGUF block weights (cuda_qweights.c) --------------------------------------------- */
/* Where a product on weights kept in GGUF blocks goes, by its type and rows: the block GEMV
 * (sk_gemv_q: each weight byte read once per 8 rows, one CUDA-core multiply-add a weight and row)
 * for the fewest rows, the tensor-core kernel (sk_quant_mma: read once per 64 rows, dequantized
 * in registers) past them, and dequantized bf16 tiles with cuBLAS (4 more bytes a weight moved,
 * but Hopper's fastest GEMM) for prefill-sized batches. The crossovers are measured
 * (SLUICE_GPU_BENCH=1 build/tests/gpu/test_quant_mma_speed, Llama-3-8B's seven products of a
 * layer at 1 to 1024 rows; docs/performance.md has the table): cuda_plan_quant_gemv_rows gives
 * the GEMV's last row count by type, and: */
/* Rows up to which the tensor-core kernel takes a product; tiles and cuBLAS beyond (every type:
 * the kernel won at 64 rows, the tiles at 128). */
#define CUDA_QUANT_MMA_ROWS 64
/* Without the tensor-core kernel (--cuda-options quant_mma=0): the GEMV up to this many rows,
 * tiles beyond. */
#define CUDA_QUANT_GEMV_ROWS 16
/* A split-K range of the tensor-core kernel is at least this many stages of SK_QUANT_MMA_STAGE_K
 * weights; splits are made only while the tiles fill fewer than every SM, up to about two
 * blocks an SM. */
#define CUDA_QUANT_MMA_SPLIT_STAGES 2
/* The scratch buffer's size: tiles of whole rows, at most this many bytes of bf16; the
 * tensor-core kernel's split-K sums use it too (never both in one product). */
#define CUDA_QUANT_SCRATCH_BYTES ((size_t)64 << 20)
enum cuda_quant_path {
    CUDA_QUANT_PATH_GEMV,  /* sk_gemv_q (with the int8 scratch where the type has that path) */
    CUDA_QUANT_PATH_MMA,   /* sk_quant_mma with `splits` k ranges, their sums in the scratch */
    CUDA_QUANT_PATH_TILES, /* sk_dequant_bf16 tiles of cuda_plan_quant_tile_rows rows, cuBLAS */
};
struct cuda_quant_plan {
    enum cuda_quant_path path;
    int splits; /* MMA */
};
/* The path of a product of `rows` rows on an n_out x k_in matrix of GGUF type dtype (enum
 * dtype): the GEMV always in the deterministic mode (a row's sums then do not depend on the
 * batch); the tensor-core kernel only for the types it takes (all the block kernels'), with
 * k_in a whole number of blocks, and with quant_mma on. */
/* Rows up to which the block GEMV keeps a product of dtype (with the tensor-core kernel on). */
int cuda_plan_quant_gemv_rows(int dtype);
/* The split-K ranges the tensor-core kernel takes for a product of this shape (1: none). */
int cuda_plan_quant_mma_splits(const struct cuda_plan_config *c, int rows, int n_out, int k_in);
struct cuda_quant_plan cuda_plan_quant(const struct cuda_plan_config *c, int dtype, int rows, int n_out, int k_in);
/* Weight rows per dequantized tile of a product with k_in columns: as many as the scratch holds,
 * a multiple of 64 unless the whole product fits; at least 1. */
int cuda_plan_quant_tile_rows(int n_out, int k_in);

/* --- tensor parallelism's all-reduces (cuda_tp.c) ------------------------------------- */
enum cuda_all_reduce {
    CUDA_ALL_REDUCE_COMM,          /* the communicator: NCCL, or host memory (tp_nccl=0) */
    CUDA_ALL_REDUCE_ONESHOT,       /* sk_allreduce_oneshot, its sum left where the parts were */
    CUDA_ALL_REDUCE_ONESHOT_FUSED, /* sk_allreduce_oneshot, its sum added into the residual */
};
/* How an all-reduce of `bytes` (one rank's message, its parts added) over n_ranks goes: the
 * one-shot kernel where the ranks have it (oneshot: --cuda-options tp_oneshot=1), the message is
 * at most SK_ONESHOT_MAX_BYTES (a decode step's: 32 rows of a hidden size of 4096 in fp32) and
 * the ranks at most SK_ONESHOT_MAX_RANKS, and not under --deterministic (it adds in another
 * order than the communicator, and which of the two a step takes depends on its size, so a row's
 * bits would depend on its batch); fused with the residual add where nothing comes between the
 * sum and that add (residual_next: no bias, post-norm or residual multiplier on the sum). The
 * communicator otherwise. */
enum cuda_all_reduce cuda_plan_all_reduce(bool oneshot, bool deterministic, int n_ranks, size_t bytes,
                                          bool residual_next);

/* --- a step --------------------------------------------------------------------------- */
/* A chunk of at most this many tokens after at least this many keys takes the decode attention
 * (outside --deterministic). */
#define CUDA_PLAN_SHORT_CHUNK 16
#define CUDA_PLAN_LONG_CONTEXT 1024
/* Whether a sequence's new tokens go to the prefill attention (tiles of SK_PREFILL_TILE
 * queries) rather than the decode attention. */
bool cuda_plan_takes_tiles(const struct cuda_plan_config *c, const struct batch_seq *q);

struct cuda_step_plan {
    int n_tokens, n_seqs, n_rows; /* T, S, and R sampled rows */
    int n_tiles;                  /* prefill-attention tiles */
    bool all_dec;                 /* every token goes to the decode attention (no token list) */
    bool any_cut;                 /* a sampled row cuts by top-k or top-p: the logits get sorted */
    size_t n_hist;                /* history ints the sampler reads (penalties, logit bias, suppressed ids) */
    int n_masked;                 /* sampled rows with a token mask (batch_seq.allowed or mask_later) */
    int n_later;                  /* of them, masks that come after the submit (cuda_sample) */
    int n_lp;                     /* prompt logprob rows (batch_seq.lp_rows, all sequences) */
    int n_hid_rows, n_hid_seqs;   /* hidden states: tokens normed, sequences pooled */
    bool graph;                   /* replayed from (or captured as) a CUDA graph */
    int bt_stride;                /* block-table ints per sequence in the step's metadata */
    /* The decode attention: its parameters (token_list is the step's list when !all_dec, set by
     * whoever lays the metadata out), its kernel, and whether it does qkv_post's work. */
    struct sk_attn_params attn;
    /* The same for the sliding layers of a model that has both kinds (Gemma 2/3): a token there
     * reads at most the window's keys, and its splits divide those. */
    struct sk_attn_params attn_sliding;
    enum sk_attn_kernel attn_kernel;
    bool fused_qkv;
    int seq_rope_half; /* > 0: each sequence's rope frequencies (this many floats) go with the metadata */
    struct cuda_product_plan qkv, o, lm_head;
    struct cuda_mlp_plan mlp;
};

/* Checks the batch (sequences against the block tables and the KV cache, token ids against the
 * vocabulary or the rows of the step before, which sampled prev_rows; at most two steps queued,
 * queued of them already) and plans it. Returns 0, or -1 with the reason in err. */
int cuda_plan_step(const struct cuda_plan_config *c, const struct batch *batch, int queued, int prev_rows,
                   struct cuda_step_plan *p, char *err, size_t errlen);

/* Whether the CUDA backend computes this model: 0, or -1 with a message naming the architecture
 * and what it lacks (mixture-of-experts shapes beyond the expert kernels' limits,
 * cuda_moe_supported). Checked before anything else, so that no wrong numbers come out of a model
 * it does not know. */
int cuda_plan_model_supported(const struct model_config *m, char *err, size_t errlen);

#endif
