/* The kernels of one mixture-of-experts layer in the order cuda_moe_enqueue runs them (router,
 * top-k, sort, gate/up with SiLU, down, combine; no shared expert), over device buffers of one
 * shape: for the GPU tests that check the pipeline's invariance and time it against the
 * bandwidth roofline. The experts in bf16, or in e4m3 (sk_moe_gemm_fp8) once moe_pipe_to_fp8
 * has quantized them. */
#ifndef SLUICE_TESTS_GPU_MOE_PIPE_H
#define SLUICE_TESTS_GPU_MOE_PIPE_H

#include "tests/gpu/gpu_test.h"

#include "kernels/sk_fp8.h"
#include "kernels/sluice_kernels.h"

struct moe_pipe {
    int E, k, H, I, max_tokens;
    uint16_t *router, *gu, *down; /* [E, H], [E, 2I, H], [E, H, I] bf16 */
    uint8_t *gu_q, *down_q;       /* the experts in e4m3 (NULL: bf16), a scale a row: */
    float *gu_s, *down_s;
    float *logits, *weight, *y_exp;
    int32_t *choice, *order, *pos, *seg, *active;
    uint16_t *act;
};

/* Buffers for up to max_tokens tokens; the weights are left to the caller. */
static inline void moe_pipe_alloc(struct moe_pipe *p, int E, int k, int H, int I, int max_tokens)
{
    memset(p, 0, sizeof *p);
    p->E = E, p->k = k, p->H = H, p->I = I, p->max_tokens = max_tokens;
    const size_t n = (size_t)max_tokens;
    p->router = gt_dev((size_t)E * H * 2);
    p->gu = gt_dev((size_t)E * 2 * I * H * 2);
    p->down = gt_dev((size_t)E * H * I * 2);
    p->logits = gt_dev(n * E * 4);
    p->weight = gt_dev(n * k * 4);
    p->y_exp = gt_dev(n * k * H * 4);
    p->choice = gt_dev(n * k * 4);
    p->order = gt_dev(n * k * 4);
    p->pos = gt_dev(n * k * 4);
    p->seg = gt_dev((size_t)(E + 1) * 4);
    p->active = gt_dev((size_t)(E + 1) * 4);
    p->act = gt_dev(n * k * I * 2);
}

/* From here on the experts are the bf16 ones quantized per row to e4m3 (sk_fp8_quantize_rows,
 * as --quantization fp8 quantizes them). */
static inline void moe_pipe_to_fp8(struct moe_pipe *p, cudaStream_t s)
{
    const int rows_gu = p->E * 2 * p->I, rows_down = p->E * p->H;
    p->gu_q = gt_dev((size_t)rows_gu * p->H);
    p->down_q = gt_dev((size_t)rows_down * p->I);
    p->gu_s = gt_dev((size_t)rows_gu * 4);
    p->down_s = gt_dev((size_t)rows_down * 4);
    GT_CUDA(sk_fp8_quantize_rows(p->gu_q, p->gu_s, p->gu, rows_gu, p->H, s));
    GT_CUDA(sk_fp8_quantize_rows(p->down_q, p->down_s, p->down, rows_down, p->I, s));
    GT_CUDA(cudaStreamSynchronize(s));
}

static inline void moe_pipe_free(struct moe_pipe *p)
{
    void *d[] = {p->router, p->gu,    p->down,   p->logits, p->weight, p->y_exp, p->choice, p->order,
                 p->pos,    p->seg,   p->active, p->act,    p->gu_q,   p->down_q, p->gu_s,  p->down_s};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cudaFree(d[i]);
}

/* out [n, H] fp32 = the layer's MoE MLP of x [n, H] bf16 (renormalised top-k), on s. experts_only:
 * only the two grouped products (after a full run has left the routing in place); invariant as
 * in struct sk_moe_rows. */
static inline void moe_pipe_run(const struct moe_pipe *p, const uint16_t *x, int n, float *out, int experts_only,
                                int invariant, cudaStream_t s)
{
    const struct sk_moe_rows dense = {.n_rows = n, .invariant = invariant};
    const struct sk_moe_rows by_token = {.seg = p->seg, .active = p->active, .order = p->order, .n_groups = p->E,
                                         .n_rows = n * p->k, .top_k = p->k, .invariant = invariant};
    struct sk_moe_rows by_pair = by_token;
    by_pair.order = NULL;
    if (!experts_only) {
        GT_CUDA(sk_moe_gemm(p->router, x, &dense, p->logits, NULL, p->E, p->H, s));
        GT_CUDA(sk_moe_route(p->logits, n, p->E, p->k, 1, p->choice, p->weight, s));
        GT_CUDA(sk_moe_sort(p->choice, n * p->k, p->E, p->order, p->pos, p->seg, p->active, s));
    }
    if (p->gu_q) {
        GT_CUDA(sk_moe_gemm_fp8(p->gu_q, p->gu_s, x, &by_token, NULL, p->act, p->I, p->H, s));
        GT_CUDA(sk_moe_gemm_fp8(p->down_q, p->down_s, p->act, &by_pair, p->y_exp, NULL, p->H, p->I, s));
    } else {
        GT_CUDA(sk_moe_gemm(p->gu, x, &by_token, NULL, p->act, p->I, p->H, s));
        GT_CUDA(sk_moe_gemm(p->down, p->act, &by_pair, p->y_exp, NULL, p->H, p->I, s));
    }
    if (!experts_only)
        GT_CUDA(sk_moe_combine(p->y_exp, p->choice, p->weight, p->pos, p->k, NULL, NULL, out, n, p->H, s));
}

#endif
