/* sk_logits_finish (kernels/logits_finish.cu) against a double reference on random logits:
 * Granite's divisor, Gemma 2's soft-capping and both, within 1e-6 relative error, and most
 * logits changed (so that a kernel doing nothing fails). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

static void test_logits_finish(float divisor, float softcap)
{
    const int n = 3 * 1000 + 7;
    float *l = malloc(n * 4), *out = malloc(n * 4);
    double *ref = malloc(n * 8);
    for (int i = 0; i < n; i++) l[i] = 40.0f * gt_normal();
    float *dl = gt_up(l, n * 4);
    GT_CUDA(sk_logits_finish(dl, n, divisor, softcap, 0));
    gt_down(out, dl, n * 4);
    int changed = 0;
    for (int i = 0; i < n; i++) {
        double v = l[i];
        if (divisor != 0) v /= divisor;
        if (softcap > 0) v = softcap * tanh(v / softcap);
        ref[i] = v;
        changed += fabs(v - l[i]) > 1e-3 * fabs(l[i]);
    }
    const double err = gt_rel_err(out, ref, n);
    GT_CHECK(err < 1e-6 && changed > n / 2, "sk_logits_finish divisor %g softcap %g: rel err %.2e (%d of %d changed)",
             (double)divisor, (double)softcap, err, changed, n);
    free(l), free(out), free(ref);
    cudaFree(dl);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_logits_finish(8.0f, 0.0f);
    test_logits_finish(0.0f, 30.0f);
    test_logits_finish(2.5f, 30.0f);
    return gt_finish();
}
