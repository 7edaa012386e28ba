/* The dummy weights (kernels/dummy.cu: sk_fill_dummy_f32, norm weights included, and
 * sk_fill_dummy_bf16) against worker/model's model_dummy_value, the CPU reference that the CPU
 * backend's dummy load uses: bit for bit, so that both backends run the same random model. */
#include "tests/gpu/gpu_test.h"

#include "kernels/sluice_kernels.h"
#include "worker/model/model.h"

static void test_dummy(void)
{
    printf("dummy\n");
    const int64_t n = 100003;
    uint16_t *out = malloc(n * 2);
    uint16_t *dout = gt_dev(n * 2);
    int64_t bad = 0;
    const uint64_t seed = 0xfeedbeefull, id = 17;
    float *f = malloc(n * 4);
    float *df = gt_dev(n * 4);
    for (int is_norm = 0; is_norm < 2; is_norm++) {
        GT_CUDA(sk_fill_dummy_f32(df, seed, id, 5, n, is_norm, 0));
        gt_down(f, df, n * 4);
        bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float want = model_dummy_value(seed, id, 5 + (uint64_t)i) + (is_norm ? 1.0f : 0.0f);
            bad += memcmp(&f[i], &want, 4) != 0;
        }
        GT_CHECK(bad == 0, "dummy f32 (norm %d) equals model_dummy_value bit for bit (%lld mismatches)", is_norm,
                 (long long)bad);
    }
    GT_CUDA(cudaMemset(dout, 0xff, n * 2));
    GT_CUDA(sk_fill_dummy_bf16(dout, seed, id, 0, n, 0, 0));
    gt_down(out, dout, n * 2);
    bad = 0;
    for (int64_t i = 0; i < n; i++) bad += out[i] != gt_f2bf(model_dummy_value(seed, id, (uint64_t)i));
    GT_CHECK(bad == 0, "dummy bf16 (%lld mismatches)", (long long)bad);
    cudaFree(dout), cudaFree(df);
    free(out), free(f);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_dummy();
    return gt_finish();
}
