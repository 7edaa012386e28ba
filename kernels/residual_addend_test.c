/* sk_residual_addend (kernels/residual_addend.cu) against a double reference on random inputs, in
 * place: split parts added in order, a bias, a post-norm and a scale (within 1e-5 relative
 * error), and the embeddings' scaling alone. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

static void test_residual_addend(int n_parts, int with_bias, int with_norm, float scale, int T, int H)
{
    const size_t n = (size_t)T * H;
    float *parts = malloc(n * n_parts * 4), *bias = malloc((size_t)H * 4), *w = malloc((size_t)H * 4);
    float *out = malloc(n * 4);
    for (size_t i = 0; i < n * n_parts; i++) parts[i] = gt_normal();
    for (int i = 0; i < H; i++) bias[i] = 0.5f * gt_normal(), w[i] = 1.0f + 0.3f * gt_normal();
    float *dp = gt_up(parts, n * n_parts * 4), *db = gt_up(bias, (size_t)H * 4), *dw = gt_up(w, (size_t)H * 4);
    /* In place: out is the first part. */
    GT_CUDA(sk_residual_addend(dp, dp, n_parts, (int64_t)n, with_bias ? db : NULL, with_norm ? dw : NULL, scale, T, H,
                               1e-6f, 0));
    gt_down(out, dp, n * 4);
    double *ref = malloc(n * 8);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) {
            float v = 0.0f; /* the parts added in order in float, as the kernel adds them */
            for (int j = 0; j < n_parts; j++) v += parts[(size_t)j * n + (size_t)t * H + i];
            double x = (double)v + (with_bias ? bias[i] : 0.0);
            ref[(size_t)t * H + i] = x;
            ss += x * x;
        }
        const double inv = with_norm ? 1.0 / sqrt(ss / H + 1e-6) : 1.0;
        for (int i = 0; i < H; i++)
            ref[(size_t)t * H + i] *= (with_norm ? w[i] * inv : 1.0) * (scale == 0.0f ? 1.0 : scale);
    }
    const double err = gt_rel_err(out, ref, n);
    GT_CHECK(err < 1e-5, "sk_residual_addend %d part(s)%s%s, scale %g, %d x %d, in place: rel err %.2e vs double",
             n_parts, with_bias ? ", bias" : "", with_norm ? ", norm" : "", (double)scale, T, H, err);
    free(parts), free(bias), free(w), free(out), free(ref);
    cudaFree(dp), cudaFree(db), cudaFree(dw);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_residual_addend(1, 1, 0, 0.0f, 5, 48);
    test_residual_addend(3, 0, 1, 0.0f, 9, 3584);
    test_residual_addend(2, 1, 1, 0.22f, 4, 4096);
    test_residual_addend(1, 0, 0, 59.87f, 3, 3584); /* the embeddings' scaling */
    return gt_finish();
}
