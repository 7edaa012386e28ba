/* sk_moe_gemm_fp8 (kernels/moe_gemm_fp8.cu) against double sums of the same e4m3 weights times
 * their scales (decoded by worker/model/fp8.c, as every backend decodes them), on random inputs:
 * dense and grouped, gate/up with SiLU in bf16 and down in fp32, on the CUDA cores (few rows a
 * group, and every row count when invariant) and on the tensor cores (many), partial tiles of
 * features, a last chunk of columns narrower than 64, scales per row and per tensor, rows of
 * subnormal codes and of zeros. The rows, the bounds and the rule for which kernel takes which
 * rows are sk_moe_gemm's (tests/gpu/moe_ref.h; the bf16 product's test is tests/gpu/test_moe.c).
 * Arguments the kernel cannot take are refused. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/moe_ref.h"
#include "worker/model/fp8.h"

/* rows x cols random weights as e4m3 codes q and a scale per row s (amax / 448, fp8.c's rule;
 * per_tensor: one for the whole matrix, on every row), and wf the values they stand for. Row 1
 * (where there is one): one large weight among ones 2^14 times smaller, whose codes are
 * subnormal or near it; row 2: zeros. */
static void random_fp8_rows(int64_t rows, int cols, bool per_tensor, uint8_t *q, float *s, float *wf)
{
    float *v = malloc((size_t)rows * cols * 4);
    for (int64_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            float x = 0.1f * gt_uniform();
            if (r % 64 == 1 && c > 0) x = ldexpf(x, -14);
            if (r % 64 == 2) x = 0.0f;
            v[r * cols + c] = x;
        }
    if (per_tensor) {
        float amax = 0;
        for (int64_t i = 0; i < rows * cols; i++) amax = fmaxf(amax, fabsf(v[i]));
        const float sc = amax > 0 ? amax / FP8_E4M3_MAX : 1.0f;
        for (int64_t i = 0; i < rows * cols; i++) q[i] = fp8_e4m3_from_f32(v[i] / sc);
        for (int64_t r = 0; r < rows; r++) s[r] = sc;
    } else {
        for (int64_t r = 0; r < rows; r++) s[r] = fp8_quantize_row(v + r * cols, cols, q + r * cols);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) wf[r * cols + c] = fp8_e4m3_to_f32(q[r * cols + c]) * s[r];
    free(v);
}

static void test_gemm_fp8(struct moe_case c, bool per_tensor)
{
    struct moe_rows_ref r;
    moe_rows_ref_size(&r, &c);
    const int64_t wr = (int64_t)r.groups * r.wrows;
    const size_t wn = (size_t)wr * c.k_in, xn = (size_t)r.x_rows * c.k_in, yn = (size_t)r.n_rows * c.n_out;
    uint8_t *q = malloc(wn);
    float *s = malloc((size_t)wr * 4), *wf = malloc(wn * 4), *y = malloc(yn * 4);
    uint16_t *x = malloc(xn * 2), *act = malloc(yn * 2);
    random_fp8_rows(wr, c.k_in, per_tensor, q, s, wf);
    for (size_t i = 0; i < xn; i++) x[i] = gt_f2bf(gt_normal());
    moe_rows_ref_route(&r, &c);
    uint8_t *d_q = gt_up(q, wn);
    float *d_s = gt_up(s, (size_t)wr * 4), *d_y = gt_dev(yn * 4);
    uint16_t *d_x = gt_up(x, xn * 2), *d_act = gt_dev(yn * 2);
    GT_CUDA(sk_moe_gemm_fp8(d_q, d_s, d_x, &r.rows, c.swiglu ? NULL : d_y, c.swiglu ? d_act : NULL, c.n_out, c.k_in,
                            0));
    if (c.swiglu) gt_down(act, d_act, yn * 2);
    else gt_down(y, d_y, yn * 4);
    int worst_row;
    const double worst = moe_ref_worst(&c, &r, wf, x, y, act, &worst_row);
    char what[160];
    snprintf(what, sizeof what, "%s, scales per %s", c.what, per_tensor ? "tensor" : "row");
    c.what = what;
    moe_ref_check("sk_moe_gemm_fp8", &c, &r, worst, worst_row);
    cudaFree(d_q), cudaFree(d_s), cudaFree(d_y), cudaFree(d_x), cudaFree(d_act);
    moe_rows_ref_free(&r);
    free(q), free(s), free(wf), free(y), free(x), free(act);
}

/* Columns not a multiple of 16, no scales, misaligned weights, both outputs or neither. */
static void test_refusals(void)
{
    uint8_t *q = gt_dev(4096);
    float *s = gt_dev(256), *y = gt_dev(4096);
    uint16_t *x = gt_dev(4096), *act = gt_dev(4096);
    const struct sk_moe_rows dense = {.n_rows = 2};
    const cudaError_t k24 = sk_moe_gemm_fp8(q, s, x, &dense, y, NULL, 8, 24, 0);
    const cudaError_t no_scale = sk_moe_gemm_fp8(q, NULL, x, &dense, y, NULL, 8, 32, 0);
    const cudaError_t misaligned = sk_moe_gemm_fp8(q + 8, s, x, &dense, y, NULL, 8, 32, 0);
    const cudaError_t both = sk_moe_gemm_fp8(q, s, x, &dense, y, act, 8, 32, 0);
    const cudaError_t neither = sk_moe_gemm_fp8(q, s, x, &dense, NULL, NULL, 8, 32, 0);
    GT_CHECK(k24 == cudaErrorInvalidValue && no_scale == cudaErrorInvalidValue &&
                 misaligned == cudaErrorInvalidValue && both == cudaErrorInvalidValue &&
                 neither == cudaErrorInvalidValue,
             "sk_moe_gemm_fp8 refuses k_in 24, no scales, misaligned weights, both outputs and neither (%s, %s, %s, "
             "%s, %s)",
             cudaGetErrorName(k24), cudaGetErrorName(no_scale), cudaGetErrorName(misaligned), cudaGetErrorName(both),
             cudaGetErrorName(neither));
    cudaFree(q), cudaFree(s), cudaFree(y), cudaFree(x), cudaFree(act);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_gemm_fp8((struct moe_case){"router-like, one row", 1, 0, 1, false, false, 8, 4096, 0}, false);
    for (int inv = 0; inv < 2; inv++) {
        test_gemm_fp8((struct moe_case){"dense", 37, 0, 1, false, false, 40, 64, inv}, false);
        test_gemm_fp8((struct moe_case){"dense swiglu", 20, 0, 1, true, false, 24, 64, inv}, false);
        test_gemm_fp8((struct moe_case){"gate/up by token", 300, 4, 2, true, true, 32, 64, inv}, false);
        test_gemm_fp8((struct moe_case){"down by pair", 300, 4, 2, false, false, 64, 32, inv}, false);
        test_gemm_fp8((struct moe_case){"down by pair", 300, 4, 2, false, false, 64, 32, inv}, true);
        test_gemm_fp8((struct moe_case){"gate/up, partial tiles", 200, 3, 2, true, true, 40, 48, inv}, false);
        test_gemm_fp8((struct moe_case){"down, partial tiles", 200, 3, 2, false, false, 72, 48, inv}, false);
        test_gemm_fp8((struct moe_case){"gate/up, k 80", 150, 2, 1, true, true, 24, 80, inv}, true);
        test_gemm_fp8((struct moe_case){"gate/up, Mixtral-like", 64, 8, 2, true, true, 256, 4096, inv}, false);
        test_gemm_fp8((struct moe_case){"down, Mixtral-like", 64, 8, 2, false, false, 4096, 256, inv}, false);
        test_gemm_fp8((struct moe_case){"gate/up, 60 experts", 64, 60, 4, true, true, 16, 128, inv}, false);
        test_gemm_fp8((struct moe_case){"down, 128 experts", 9, 128, 8, false, false, 256, 768, inv}, false);
    }
    test_refusals();
    return gt_finish();
}
