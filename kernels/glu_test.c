/* sk_glu (kernels/glu.cu) against a double reference on random inputs: SiLU and GELU-tanh, with
 * and without gate/up biases, every bf16 output within its rounding (a relative 2^-8) of the
 * reference. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

static double gelu_tanh(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void test_glu(int act, int with_bias, int T, int I)
{
    const size_t n = (size_t)T * 2 * I;
    float *gu = malloc(n * 4), *bias = malloc((size_t)2 * I * 4);
    uint16_t *out = malloc((size_t)T * I * 2);
    for (size_t i = 0; i < n; i++) gu[i] = 3.0f * gt_normal();
    for (int i = 0; i < 2 * I; i++) bias[i] = gt_normal();
    float *dgu = gt_up(gu, n * 4), *db = gt_up(bias, (size_t)2 * I * 4);
    uint16_t *dout = gt_dev((size_t)T * I * 2);
    GT_CUDA(sk_glu(dout, dgu, with_bias ? db : NULL, act, T, I, 0));
    gt_down(out, dout, (size_t)T * I * 2);
    int bad = 0;
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < I; j++) {
            double g = gu[(size_t)t * 2 * I + j] + (with_bias ? bias[j] : 0.0);
            double u = gu[(size_t)t * 2 * I + I + j] + (with_bias ? bias[I + j] : 0.0);
            double want = (act == SK_ACT_GELU_TANH ? gelu_tanh(g) : g / (1.0 + exp(-g))) * u;
            double got = gt_bf2f(out[(size_t)t * I + j]), err = fabs(got - want) / (fabs(want) + 1e-3);
            if (err > worst) worst = err;
            bad += !(err <= 1.0 / 256); /* bf16 rounding of the result, a half ulp being 2^-9 */
        }
    GT_CHECK(bad == 0, "sk_glu %s%s, %d x %d: every output within bf16 rounding of the double reference (%d off, "
             "worst rel %.2e)", act == SK_ACT_GELU_TANH ? "gelu_tanh" : "silu", with_bias ? " with biases" : "", T, I,
             bad, worst);
    free(gu), free(bias), free(out);
    cudaFree(dgu), cudaFree(db), cudaFree(dout);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    for (int act = 0; act < 2; act++)
        for (int bias = 0; bias < 2; bias++) test_glu(act == 0 ? SK_ACT_SILU : SK_ACT_GELU_TANH, bias, 7, 1000);
    return gt_finish();
}
