/* The decode-attention variants of kernels/dev/ beside the shipped kernels: each against the
 * double reference on the cases of kernels/attention_ref.h (the shipped kernels' cases), then timed
 * at the shapes that decided between them (docs/performance.md). Build with `make kernels-dev`, run
 * on a GPU:
 *   build/kernels-dev/bench_attention_decode             tests, then the benches
 *   build/kernels-dev/bench_attention_decode --profile   each variant launched once, for ncu
 * Variants: 0 per query head and 9 tensor-core streaming (shipped, sk_attention); 1-3 the
 * register kernel (1 was the default before the streaming kernels), 4-7 the SIMT streaming kernel
 * (4 two ring slots + PDL, 5 two slots, 6 three slots, 7 three slots + PDL). */
#include "kernels/attention_ref.h"
#include "kernels/dev/dev_kernels.h"
#include "tests/gpu/gpu_test.h"

static cudaError_t run_any(int v, const float *q, const void *k, const void *vc, const int32_t *bt,
                           const int32_t *seq, const int32_t *pos, float *po, float *pml, uint16_t *out,
                           struct sk_attn_params p, cudaStream_t s)
{
    if (v >= 1 && v <= 7) return skdev_attention_decode(q, k, vc, bt, seq, pos, po, pml, out, p, v, s);
    return attn_run_shipped(v, q, k, vc, bt, seq, pos, po, pml, out, p, s);
}

static int fits_any(int v, const struct sk_attn_params *p)
{
    return v >= 1 && v <= 7 ? skdev_attention_decode_fits(p, v) : attn_fits_shipped(v, p);
}

static void bench(const struct attn_runner *r)
{
    printf("bench decode attention, graph replays (variants: see the file's head)\n");
    /* Llama-3-8B at batch 64 over the engine bench's contexts (128 in + 128 out). */
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 2, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 1, 1, 2, 3, 4, 5, 6, 7, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 1, 1, 4, 9); /* run-to-run spread */
    BENCH_DECODE(r, 32, 8, 128, 64, 16, 1, 1, 4, 9);  /* fixed cost: one 16-key block per kv head */
    BENCH_DECODE(r, 32, 8, 128, 64, 128, 1, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 256, 2, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 256, 1, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 192, 1, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 256, 1, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 64, 64, 192, 1, 1, 4, 9);
    BENCH_DECODE(r, 32, 32, 128, 64, 192, 1, 0, 1, 4, 9); /* no grouping (32 kv heads) */
    BENCH_DECODE(r, 64, 8, 128, 64, 192, 1, 0, 1, 9);     /* 8 query heads per kv head */
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 4, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 2, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 1, 4, 9);
    /* Small batches, where the register kernel's few blocks lost to the per-head kernel. */
    BENCH_DECODE(r, 32, 8, 128, 1, 256, 2, 0, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 256, 2, 0, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 16, 192, 2, 0, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 16, 0, 1, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 8, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 16384, 32, 0, 1, 4, 9);
}

int main(int argc, char **argv)
{
    if (!gt_have_gpu()) return 0;
    static const int variants[] = {0, 1, 2, 3, 4, 5, 6, 7, 9};
    struct attn_runner r = {(int)(sizeof variants / sizeof variants[0]), variants, run_any, fits_any, 0};
    if (argc > 1 && !strcmp(argv[1], "--profile")) {
        r.profile = 1;
        BENCH_DECODE(&r, 32, 8, 128, 64, 192, 1, 1, 4, 9);
        BENCH_DECODE(&r, 32, 8, 128, 1, 16384, 32, 1, 4, 9);
        return gt_finish();
    }
    printf("attention variants against the double reference\n");
    attention_cases(&r);
    bench(&r);
    return gt_finish();
}
