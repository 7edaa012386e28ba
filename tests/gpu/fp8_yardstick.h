/* The CPU yardstick for the CUDA backend's FP8 products (tests/gpu/test_fp8.c, and the MoE
 * fixtures with --quantization fp8 in tests/gpu/test_moe.c): where CUDA's plan gives a step to
 * cuBLASLt's FP8 GEMM or the Hopper stream on e4m3, which quantize the activations per token to
 * e4m3, the CPU backend can
 * round its own activations the same way in the same steps (backend_options.cpu.fp8_act_rows),
 * so that the two compute the same thing up to float rounding. */
#ifndef SLUICE_TESTS_GPU_FP8_YARDSTICK_H
#define SLUICE_TESTS_GPU_FP8_YARDSTICK_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"

/* The CPU yardstick's steps (backend_options.cpu.fp8_act_rows): for each layer product, steps of
 * at least rows[i] tokens have e4m3 activations (0: none). */
struct act_rows {
    int32_t rows[4];
    bool any; /* some product has them */
    bool ok;  /* the CUDA plan is one the yardstick can mirror */
};

/* Which steps the CUDA backend b gives a kernel that quantizes the activations per token
 * (cuBLASLt's FP8 GEMM, the Hopper stream on e4m3): for each layer product, every step from some
 * number of tokens on and none smaller, or none at all (those kernels off or not there, a shape
 * they do not take), up to max_tokens (the largest step the caller runs); anything else the
 * yardstick cannot mirror (not ok): a shape that only the Hopper stream takes quantizes up to
 * its 128 rows and is dequantized past them, which a run of larger steps would meet. A
 * mixture-of-experts layer's experts never quantize their activations (sk_moe_gemm_fp8 takes
 * bf16 ones), and the CPU rounds only a dense MLP's (products 2 and 3). */
static inline bool quantizes_activations(struct cuda_product_plan p)
{
    return p.kernel == CUDA_PRODUCT_FP8_LT || p.kernel == CUDA_PRODUCT_FP8_HOPPER;
}

static inline struct act_rows quantized_act_rows(const struct backend *b, const struct model_config *c,
                                                 int max_tokens)
{
    struct act_rows a = {.ok = true};
    if (!b) return a;
    const struct cuda_backend *cb = (const struct cuda_backend *)b;
    const struct cuda_plan_config *p = &cb->plan;
    if (!cb->fp8 || !p->fp8) return a;
    const int H = c->hidden_size, I = c->intermediate_size, qd = c->n_heads * c->head_dim;
    const int qkvd = qd + 2 * c->n_kv_heads * c->head_dim;
    const int shapes[4][2] = {{qkvd, H}, {H, qd}, {2 * I, H}, {H, I}};
    for (int i = 0; i < 4; i++) {
        int first = 0;
        for (int t = 1; t <= max_tokens; t++) {
            const bool q = quantizes_activations(cuda_plan_fp8_product(p, t, shapes[i][0], shapes[i][1]));
            if (q && !first) first = t;
            else if (!q && first) a.ok = false;
        }
        if (first) a.rows[i] = first, a.any = true;
    }
    return a;
}

#endif
