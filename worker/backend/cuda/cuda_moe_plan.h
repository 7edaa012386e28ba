/* The CUDA backend's mixture-of-experts sizes, in plain C (no CUDA call; unit-tested without a
 * GPU in tests/unit/backend/test_cuda_moe_plan.c): which MoE shapes the kernels take, which
 * expert matrices the FP8 product takes, how many tokens one pass of the MoE kernels handles,
 * the scratch that pass needs, and the bytes of expert weights a step reads (for the
 * benchmark's roofline). The kernels: kernels/moe_*.cu;
 * the host side: cuda_moe.c. */
#ifndef SLUICE_BACKEND_CUDA_MOE_PLAN_H
#define SLUICE_BACKEND_CUDA_MOE_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/model.h"

/* Tokens the MoE kernels take in one pass at most: the scratch below is for this many, and a
 * longer step (prefill) goes through in passes. */
#define CUDA_MOE_CHUNK 1024

/* Whether the MoE kernels take this model's experts: 0, or -1 with a message naming the
 * architecture and the limit (experts, top-k, rows not a multiple of 8). 0 for a dense model. */
int cuda_moe_supported(const struct model_config *m, char *err, size_t errlen);

/* Elements of each scratch array for passes of up to `chunk` tokens. */
struct cuda_moe_sizes {
    int chunk;         /* tokens per pass: min(CUDA_MOE_CHUNK, max_batch_tokens) */
    int64_t pairs;     /* chunk * top_k (token, choice) pairs */
    int64_t logits;    /* chunk * n_experts router logits (fp32) */
    int64_t act;       /* pairs * expert_intermediate (bf16) */
    int64_t y_exp;     /* pairs * hidden (fp32) */
    int64_t shared_act, shared_y; /* chunk * shared_intermediate (bf16), chunk * hidden (fp32); 0: none */
    size_t bytes;      /* all of it, with the sort's arrays */
};
struct cuda_moe_sizes cuda_moe_sizes(const struct model_config *m, int max_batch_tokens);

/* Whether the FP8 expert product (sk_moe_gemm_fp8) takes the n tensors of ts (an array: the
 * experts' gate, up or down, or one shared-expert matrix) as rows of a product of k_in columns:
 * every one e4m3 with a scale per row or per tensor (cuda_plan_fp8_row_scales) and k_in a
 * multiple of 16 (the kernel's 16-byte loads of codes). Otherwise the backend keeps them in bf16
 * (FP8 ones dequantized at load). */
bool cuda_moe_fp8_takes(const struct tensor *ts, int n, int64_t k_in);

/* Bytes of weights one sparse layer reads in a step where n_distinct experts were chosen: the
 * router (bf16), the chosen experts' gate, up and down, and the shared expert and its gate
 * (bf16). fp8: the experts and the shared expert in e4m3, a byte a weight and a float32 scale a
 * row; else bf16. */
double cuda_moe_layer_bytes(const struct model_config *m, int n_distinct, bool fp8);
/* The number of distinct values among n expert ids (each < n_experts <= SK_MOE_MAX_EXPERTS). */
int cuda_moe_distinct(const int32_t *choice, int64_t n, int n_experts);

#endif
