/* sk_silu_mul, sk_silu_mul_bf16 and sk_silu_mul_interleaved (kernels/silu_mul.cu) against a
 * double reference on random inputs, outputs poisoned first: bf16 outputs within 1e-2 relative
 * error over every input kind and layout. sk_gate_up_interleave, which lays out the weights that
 * the interleaved form reads, is checked with the Hopper products that read them
 * (hopper_gemm_test.c). sk_silu_mul_q8 against sk_silu_mul then sk_gemv_q_quantize_x, bit for bit. */
#include "tests/gpu/gpu_test.h"

#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"

#include <string.h>

#define BF_TOL 1e-2

/* SiLU-and-multiply over every input kind and layout: fp32 or bf16 gate/up rows (bf16: what
 * prefill's cuBLAS product writes), gate then up or interleaved in blocks of SK_GATE_UP_BLOCK,
 * and widths that take the 8-wide path (I % 8 == 0) or the one-at-a-time one. */
static void test_silu_variants(int T, int I)
{
    const size_t n = (size_t)T * 2 * I;
    float *gu = malloc(n * 4);
    uint16_t *gub = malloc(n * 2), *out = malloc((size_t)T * I * 2);
    for (size_t i = 0; i < n; i++) {
        gub[i] = gt_f2bf(gt_normal() * 2.0f);
        gu[i] = gt_bf2f(gub[i]); /* the same values in both kinds, so one reference serves */
    }
    double *ref = malloc((size_t)T * I * 8);
    float *got = malloc((size_t)T * I * 4);
    for (int layout = 0; layout < 2; layout++) {
        if (layout && I % SK_GATE_UP_BLOCK) continue;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < I; j++) {
                const size_t gi = layout ? (size_t)2 * (j / SK_GATE_UP_BLOCK) * SK_GATE_UP_BLOCK + j % SK_GATE_UP_BLOCK
                                         : (size_t)j;
                const size_t ui = layout ? gi + SK_GATE_UP_BLOCK : (size_t)I + j;
                const double g = gu[(size_t)t * 2 * I + gi], u = gu[(size_t)t * 2 * I + ui];
                ref[(size_t)t * I + j] = g / (1.0 + exp(-g)) * u;
            }
        float *dgu = gt_up(gu, n * 4);
        uint16_t *dgub = gt_up(gub, n * 2), *dout = gt_dev((size_t)T * I * 2);
        for (int kind = 0; kind < 2; kind++) {
            GT_CUDA(cudaMemset(dout, 0xff, (size_t)T * I * 2));
            cudaError_t e = kind ? sk_silu_mul_bf16(dout, dgub, T, I, layout, 0)
                                 : layout ? sk_silu_mul_interleaved(dout, dgu, T, I, 0) : sk_silu_mul(dout, dgu, T, I, 0);
            gt_down(out, dout, (size_t)T * I * 2);
            for (size_t i = 0; i < (size_t)T * I; i++) got[i] = gt_bf2f(out[i]);
            const double err = gt_rel_err(got, ref, (size_t)T * I);
            GT_CHECK(e == cudaSuccess && err < BF_TOL, "silu_mul %s %s T=%d I=%d: rel err %.2e (%s)",
                     kind ? "bf16" : "fp32", layout ? "interleaved" : "gate|up", T, I, err, cudaGetErrorString(e));
        }
        cudaFree(dgu);
        cudaFree(dgub);
        cudaFree(dout);
    }
    free(gu);
    free(gub);
    free(out);
    free(ref);
    free(got);
}

/* SwiGLU that also leaves its rows in the block GEMV's int8 (the down product's x): the same
 * activation as sk_silu_mul and the same scratch bytes as the GEMV's own quantizer on it; the
 * quants not all zero, and the refusals. */
static void test_silu_q8(int T, int I)
{
    const size_t n = (size_t)T * 2 * I, sb = sk_gemv_q_scratch_bytes(I);
    float *gu = malloc(n * 4);
    for (size_t i = 0; i < n; i++) gu[i] = gt_normal() * 2.0f;
    float *dgu = gt_up(gu, n * 4);
    uint16_t *d1 = gt_dev((size_t)T * I * 2), *d2 = gt_dev((size_t)T * I * 2);
    unsigned char *s1 = gt_dev(sb), *s2 = gt_dev(sb);
    uint16_t *a1 = malloc((size_t)T * I * 2), *a2 = malloc((size_t)T * I * 2);
    unsigned char *h1 = malloc(sb), *h2 = malloc(sb);
    GT_CUDA(cudaMemset(s1, 0x5a, sb));
    GT_CUDA(cudaMemset(s2, 0x5a, sb));
    GT_CUDA(cudaMemset(d2, 0xff, (size_t)T * I * 2));
    GT_CUDA(sk_silu_mul(d1, dgu, T, I, 0));
    GT_CUDA(sk_gemv_q_quantize_x(d1, I, T, I, s1, 0));
    GT_CUDA(sk_silu_mul_q8(d2, s2, dgu, T, I, 0));
    gt_down(a1, d1, (size_t)T * I * 2);
    gt_down(a2, d2, (size_t)T * I * 2);
    gt_down(h1, s1, sb);
    gt_down(h2, s2, sb);
    int nonzero = 0;
    for (size_t i = 0; i < (size_t)T * I; i++) nonzero += h2[i] != 0;
    GT_CHECK(!memcmp(a1, a2, (size_t)T * I * 2) && !memcmp(h1, h2, sb) && nonzero > T * I / 2,
             "silu_mul_q8 T=%d I=%d: activation and int8 scratch as sk_silu_mul then the GEMV's quantizer (%d nonzero)",
             T, I, nonzero);
    free(gu), free(a1), free(a2), free(h1), free(h2);
    cudaFree(dgu), cudaFree(d1), cudaFree(d2), cudaFree(s1), cudaFree(s2);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    printf("silu_mul\n");
    test_silu_variants(37, 11008);
    test_silu_variants(5, 172);
    test_silu_variants(3, 640);
    test_silu_q8(1, 14336);
    test_silu_q8(8, 14336);
    test_silu_q8(3, 96); /* fewer threads than a warp's worth of groups */
    {
        float *d = gt_dev(1 << 20);
        GT_CHECK(sk_silu_mul_q8((uint16_t *)d, d, d, 9, 64, 0) == cudaErrorInvalidValue &&
                     sk_silu_mul_q8((uint16_t *)d, d, d, 2, 48, 0) == cudaErrorInvalidValue &&
                     sk_silu_mul_q8((uint16_t *)d, (char *)d + 8, d, 2, 64, 0) == cudaErrorInvalidValue,
                 "silu_mul_q8 refuses more than %d rows, a width not a multiple of 32, a misaligned scratch",
                 SK_GEMV_Q_X_ROWS);
        cudaFree(d);
    }
    return gt_finish();
}
