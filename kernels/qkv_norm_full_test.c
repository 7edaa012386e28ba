/* sk_qkv_norm_full (kernels/qkv_norm_full.cu), OLMo 2's q/k norms over the whole projection,
 * against a double reference on random inputs: the product's parts plus a bias, normed in place
 * in the first part, v only summed (within 1e-5 relative error). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

/* OLMo 2's q/k norms over the whole projection, from the product's parts plus a bias, in place in
 * the first part; v only summed. */
static void test_qkv_norm_full(int n_parts, int with_bias, int T, int nh, int nkv, int D)
{
    const int qd = nh * D, kd = nkv * D, W = qd + 2 * kd;
    const size_t n = (size_t)T * W;
    float *parts = malloc(n * n_parts * 4), *bias = malloc((size_t)W * 4), *qn = malloc((size_t)qd * 4);
    float *kn = malloc((size_t)kd * 4), *out = malloc(n * 4);
    double *ref = malloc(n * 8);
    for (size_t i = 0; i < n * n_parts; i++) parts[i] = gt_normal();
    for (int i = 0; i < W; i++) bias[i] = 0.5f * gt_normal();
    for (int i = 0; i < qd; i++) qn[i] = 1.0f + 0.3f * gt_normal();
    for (int i = 0; i < kd; i++) kn[i] = 1.0f + 0.3f * gt_normal();
    float *dp = gt_up(parts, n * n_parts * 4), *db = gt_up(bias, (size_t)W * 4), *dqn = gt_up(qn, (size_t)qd * 4);
    float *dkn = gt_up(kn, (size_t)kd * 4);
    GT_CUDA(sk_qkv_norm_full(dp, n_parts, (int64_t)n, with_bias ? db : NULL, dqn, dkn, T, qd, kd, 1e-6f, 0));
    gt_down(out, dp, n * 4);
    for (int t = 0; t < T; t++) {
        double ssq = 0, ssk = 0, *r = ref + (size_t)t * W;
        for (int i = 0; i < W; i++) {
            float v = 0.0f; /* the parts added in order in float, as the kernel adds them */
            for (int j = 0; j < n_parts; j++) v += parts[(size_t)j * n + (size_t)t * W + i];
            r[i] = (double)v + (with_bias ? bias[i] : 0.0);
            if (i < qd) ssq += r[i] * r[i];
            else if (i < qd + kd) ssk += r[i] * r[i];
        }
        const double iq = 1.0 / sqrt(ssq / qd + 1e-6), ik = 1.0 / sqrt(ssk / kd + 1e-6);
        for (int i = 0; i < qd; i++) r[i] *= qn[i] * iq;
        for (int i = qd; i < qd + kd; i++) r[i] *= kn[i - qd] * ik;
    }
    const double err = gt_rel_err(out, ref, n);
    GT_CHECK(err < 1e-5, "sk_qkv_norm_full %d part(s)%s, %d tokens of %d+%d+%d heads of %d: rel err %.2e vs double",
             n_parts, with_bias ? ", bias" : "", T, nh, nkv, nkv, D, err);
    free(parts), free(bias), free(qn), free(kn), free(out), free(ref);
    cudaFree(dp), cudaFree(db), cudaFree(dqn), cudaFree(dkn);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_qkv_norm_full(1, 0, 5, 4, 2, 16);
    test_qkv_norm_full(3, 1, 9, 32, 8, 128);
    return gt_finish();
}
