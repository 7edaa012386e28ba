/* sk_convert_to_bf16 (kernels/convert.cu) against the host's bf16 rounding on random inputs, the
 * output poisoned first: f32 sources round to nearest even, and f16 sources (values exact in both
 * formats) convert exactly; both must match bit for bit. */
#include "tests/gpu/gpu_test.h"

#include "kernels/sluice_kernels.h"

static void test_convert(void)
{
    printf("convert\n");
    const int64_t n = 100003;
    float *src = malloc(n * 4);
    uint16_t *out = malloc(n * 2), *half = malloc(n * 2);
    for (int64_t i = 0; i < n; i++) src[i] = gt_normal() * 3.0f;
    void *dsrc = gt_up(src, n * 4);
    uint16_t *dout = gt_dev(n * 2);
    GT_CUDA(sk_convert_to_bf16(dout, dsrc, SK_F32, n, 0));
    gt_down(out, dout, n * 2);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += out[i] != gt_f2bf(src[i]);
    GT_CHECK(bad == 0, "f32 -> bf16 rounds to nearest even (%lld mismatches of %lld)", (long long)bad, (long long)n);

    /* F16 source: values exactly representable in f16 and bf16 (small integers / 8). */
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(gt_int(512) - 256) / 8.0f;
        src[i] = v;
        /* f16 bits of v by hand: sign, exponent, 10-bit mantissa. */
        uint16_t h = 0;
        if (v != 0.0f) {
            float a = fabsf(v);
            int e = (int)floorf(log2f(a));
            int m = (int)((a / ldexpf(1.0f, e) - 1.0f) * 1024.0f + 0.5f);
            h = (uint16_t)(((v < 0) << 15) | ((e + 15) << 10) | m);
        }
        half[i] = h;
    }
    void *dhalf = gt_up(half, n * 2);
    GT_CUDA(cudaMemset(dout, 0xff, n * 2));
    GT_CUDA(sk_convert_to_bf16(dout, dhalf, SK_F16, n, 0));
    gt_down(out, dout, n * 2);
    bad = 0;
    for (int64_t i = 0; i < n; i++) bad += out[i] != gt_f2bf(src[i]);
    GT_CHECK(bad == 0, "f16 -> bf16 (%lld mismatches)", (long long)bad);
    cudaFree(dsrc), cudaFree(dhalf), cudaFree(dout);
    free(src), free(out), free(half);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_convert();
    return gt_finish();
}
