/* sk_hopper_gemm (kernels/hopper_gemm.cu: TMA + wgmma decode products, split-K within a cluster)
 * against a double reference on random bf16 inputs with poisoned outputs: ragged shapes (rows,
 * features and K not multiples of the tiles), forced and chosen split counts, the same bits on a
 * repeat and at every batch size, split parts left to the next kernel (sk_hopper_gemm_parts)
 * adding up to the same bits, the SwiGLU epilogue over weights that sk_gate_up_interleave
 * (silu_mul.cu) lays out, the fused MLP (sk_hopper_mlp, hopper_mlp.cu: in this program because it
 * is checked against the two products it fuses) equal to its two halves, the same stream on e4m3
 * operands (sk_hopper_fp8_gemm) against a double reference, refusals; then, with
 * SLUICE_GPU_BENCH=1, weight-streaming rates against cuBLAS at Llama-3-8B's decode shapes. */
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/product_bench.h"

#include "kernels/sluice_kernels.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/fp8.h"

#define BF_TOL 1e-2

static void reference(const uint16_t *x, const uint16_t *w, double *ref, int M, int N, int K)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)gt_bf2f(x[(size_t)m * K + k]) * gt_bf2f(w[(size_t)n * K + k]);
            ref[(size_t)m * N + n] = acc;
        }
}

static void test_case(struct sk_hopper_gemm *h, int M, int N, int K, int splits)
{
    uint16_t *w = malloc((size_t)N * K * 2), *x = malloc((size_t)M * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = gt_f2bf(gt_normal());
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, (size_t)N * K * 2), *dx = gt_up(x, (size_t)M * K * 2);
    float *dy = gt_dev((size_t)M * N * 4), *y = malloc((size_t)M * N * 4), *y2 = malloc((size_t)M * N * 4);
    double *ref = malloc((size_t)M * N * 8);
    reference(x, w, ref, M, N, K);
    cudaError_t e1 = sk_hopper_gemm(h, dw, dx, dy, M, N, K, splits, 0);
    gt_down(y, dy, (size_t)M * N * 4);
    GT_CUDA(cudaMemset(dy, 0xff, (size_t)M * N * 4));
    cudaError_t e2 = sk_hopper_gemm(h, dw, dx, dy, M, N, K, splits, 0);
    gt_down(y2, dy, (size_t)M * N * 4);
    /* Operands are exact bf16, so only fp32 accumulation rounding remains. */
    const double e = gt_rel_err(y, ref, (size_t)M * N);
    const int same = !memcmp(y, y2, (size_t)M * N * 4);
    GT_CHECK(e1 == cudaSuccess && e2 == cudaSuccess && e < 1e-5 && same,
             "hopper M=%d N=%d K=%d splits=%d: rel err %.1e, repeat %s (%s)", M, N, K,
             splits > 0 ? splits : sk_hopper_gemm_splits(h, N, K), e, same ? "identical" : "differs",
             cudaGetErrorString(e1 != cudaSuccess ? e1 : e2));
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    free(w);
    free(x);
    free(y);
    free(y2);
    free(ref);
}

/* Random e4m3 codes, never NaN (0x7f, 0xff). */
static void fp8_codes(uint8_t *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)gt_int(256);
        q[i] = (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b;
    }
}

/* sk_hopper_fp8_gemm against a double reference on the same codes and scales: every code times
 * code is exact in fp32, so what remains is the accumulation's rounding (Hopper's FP8 wgmma adds
 * with fewer bits than fp32, hence the looser bound than test_case's). Also: the same bits on a
 * repeat, and each row's bits the same when it is computed alone (batch invariance: a decode
 * step's rows must not depend on the batch). */
static void test_fp8_case(struct sk_hopper_gemm *h, int M, int N, int K, int splits)
{
    uint8_t *w = malloc((size_t)N * K), *x = malloc((size_t)M * K);
    float *ws = malloc((size_t)N * 4), *xs = malloc((size_t)M * 4);
    fp8_codes(w, (size_t)N * K);
    fp8_codes(x, (size_t)M * K);
    for (int n = 0; n < N; n++) ws[n] = ldexpf(1.0f + gt_uniform(), -8 + gt_int(6));
    for (int m = 0; m < M; m++) xs[m] = ldexpf(1.0f + gt_uniform(), -4 + gt_int(6));
    /* The codes' values once (the reference's inner loop would otherwise decode 2 M N K times). */
    float *wf = malloc((size_t)N * K * 4), *xf = malloc((size_t)M * K * 4);
    for (size_t i = 0; i < (size_t)N * K; i++) wf[i] = fp8_e4m3_to_f32(w[i]);
    for (size_t i = 0; i < (size_t)M * K; i++) xf[i] = fp8_e4m3_to_f32(x[i]);
    double *ref = malloc((size_t)M * N * 8);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            const float *wr = wf + (size_t)n * K, *xr = xf + (size_t)m * K;
            for (int k = 0; k < K; k++) acc += (double)wr[k] * xr[k];
            ref[(size_t)m * N + n] = acc * ws[n] * xs[m];
        }
    free(wf), free(xf);
    uint8_t *dw = gt_up(w, (size_t)N * K), *dx = gt_up(x, (size_t)M * K);
    float *dws = gt_up(ws, (size_t)N * 4), *dxs = gt_up(xs, (size_t)M * 4);
    float *dy = gt_dev((size_t)M * N * 4), *y = malloc((size_t)M * N * 4), *y2 = malloc((size_t)M * N * 4);
    GT_CUDA(cudaMemset(dy, 0xff, (size_t)M * N * 4));
    cudaError_t e1 = sk_hopper_fp8_gemm(h, dw, dws, dx, dxs, dy, M, N, K, splits, 0);
    gt_down(y, dy, (size_t)M * N * 4);
    GT_CUDA(cudaMemset(dy, 0xff, (size_t)M * N * 4));
    cudaError_t e2 = sk_hopper_fp8_gemm(h, dw, dws, dx, dxs, dy, M, N, K, splits, 0);
    gt_down(y2, dy, (size_t)M * N * 4);
    const double e = gt_rel_err(y, ref, (size_t)M * N);
    const int same = !memcmp(y, y2, (size_t)M * N * 4);
    /* The last row alone (a 16-row tile where the batch took a wider one). */
    GT_CUDA(cudaMemset(dy, 0xff, (size_t)N * 4));
    cudaError_t e3 = sk_hopper_fp8_gemm(h, dw, dws, dx + (size_t)(M - 1) * K, dxs + M - 1, dy, 1, N, K, splits, 0);
    gt_down(y2, dy, (size_t)N * 4);
    const int alone = !memcmp(y + (size_t)(M - 1) * N, y2, (size_t)N * 4);
    GT_CHECK(e1 == cudaSuccess && e2 == cudaSuccess && e3 == cudaSuccess && e < 2e-3 && same && alone,
             "hopper fp8 M=%d N=%d K=%d splits=%d: rel err %.1e, repeat %s, last row alone %s (%s)", M, N, K, splits,
             e, same ? "identical" : "differs", alone ? "identical" : "differs",
             cudaGetErrorString(e1 != cudaSuccess ? e1 : e2 != cudaSuccess ? e2 : e3));
    cudaFree(dw), cudaFree(dx), cudaFree(dws), cudaFree(dxs), cudaFree(dy);
    free(w), free(x), free(ws), free(xs), free(ref), free(y), free(y2);
}

/* sk_hopper_gemm_parts: as many parts as sk_hopper_gemm's splits, whose sum in split order from
 * zero (one part: the part itself) is sk_hopper_gemm's result bit for bit. */
static void test_parts(struct sk_hopper_gemm *h, int M, int N, int K)
{
    const size_t n = (size_t)M * N, cap = n * SK_HOPPER_MAX_SPLITS;
    uint16_t *w = malloc((size_t)N * K * 2), *x = malloc((size_t)M * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = gt_f2bf(gt_normal());
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, (size_t)N * K * 2), *dx = gt_up(x, (size_t)M * K * 2);
    float *dy = gt_dev(n * 4), *dp = gt_dev(cap * 4);
    float *y = malloc(n * 4), *parts = malloc(cap * 4), *sum = malloc(n * 4);
    GT_CUDA(cudaMemset(dp, 0xff, cap * 4));
    int n_parts = -1;
    cudaError_t e1 = sk_hopper_gemm(h, dw, dx, dy, M, N, K, 0, 0);
    cudaError_t e2 = sk_hopper_gemm_parts(h, dw, dx, dp, M, N, K, 0, &n_parts, 0, 0);
    gt_down(y, dy, n * 4);
    gt_down(parts, dp, cap * 4);
    const int P = n_parts;
    for (size_t i = 0; i < n && P >= 1; i++) {
        float v = P == 1 ? parts[i] : 0.0f;
        for (int j = 0; j < P && P > 1; j++) v += parts[j * n + i];
        sum[i] = v;
    }
    GT_CHECK(e1 == cudaSuccess && e2 == cudaSuccess && P == sk_hopper_gemm_splits(h, N, K) && !memcmp(sum, y, n * 4),
             "hopper parts M=%d N=%d K=%d: %d parts, their sum equals the cluster's result bit for bit (%s)", M, N, K,
             P, cudaGetErrorString(e1 != cudaSuccess ? e1 : e2));
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dp);
    free(w);
    free(x);
    free(y);
    free(parts);
    free(sum);
}

/* A row's result must not depend on how many rows share the launch (the split count depends on
 * the shape alone and each token is its own wgmma column), so that a sequence's greedy output is
 * the same whatever else is in the batch. */
static void test_batch_invariance(struct sk_hopper_gemm *h, int N, int K)
{
    const int M = SK_HOPPER_MAX_ROWS, sizes[] = {2, 5, 16, 17, 33, 64, 100, 128};
    uint16_t *w = malloc((size_t)N * K * 2), *x = malloc((size_t)M * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = gt_f2bf(gt_normal());
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, (size_t)N * K * 2), *dx = gt_up(x, (size_t)M * K * 2);
    float *dy = gt_dev((size_t)M * N * 4), *full = malloc((size_t)M * N * 4), *part = malloc((size_t)M * N * 4);
    cudaError_t err = sk_hopper_gemm(h, dw, dx, dy, M, N, K, 0, 0);
    gt_down(full, dy, (size_t)M * N * 4);
    int bad = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        GT_CUDA(cudaMemset(dy, 0xff, (size_t)M * N * 4));
        cudaError_t e = sk_hopper_gemm(h, dw, dx, dy, sizes[i], N, K, 0, 0);
        if (e != cudaSuccess) err = e;
        gt_down(part, dy, (size_t)sizes[i] * N * 4);
        bad += memcmp(part, full, (size_t)sizes[i] * N * 4) != 0;
    }
    GT_CHECK(err == cudaSuccess && bad == 0,
             "hopper N=%d K=%d: rows 2..128 give the same bits as the full batch (%d sizes differ)", N, K, bad);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    free(w);
    free(x);
    free(full);
    free(part);
}

/* The fused MLP input: a [gate; up] pair interleaved on the device by sk_gate_up_interleave, then
 * sk_hopper_gemm_swiglu (bf16 silu(gate) * up) and, for the other products' path, cuBLAS-style fp32
 * gate/up rows through sk_silu_mul_interleaved, both against a double reference. */
static void test_swiglu(struct sk_hopper_gemm *h, int M, int I, int K)
{
    const size_t wn = (size_t)2 * I * K;
    uint16_t *w = malloc(wn * 2), *x = malloc((size_t)M * K * 2), *act = malloc((size_t)M * I * 2);
    uint16_t *wi = malloc(wn * 2);
    for (size_t i = 0; i < wn; i++) w[i] = gt_f2bf(gt_normal() * 0.05f);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, wn * 2), *dwi = gt_dev(wn * 2), *dx = gt_up(x, (size_t)M * K * 2);
    uint16_t *dact = gt_dev((size_t)M * I * 2);
    GT_CUDA(sk_gate_up_interleave(dwi, dw, I, K, 0));
    gt_down(wi, dwi, wn * 2);
    int moved = 0;
    for (int j = 0; j < I; j++) {
        const int blk = j / SK_GATE_UP_BLOCK, off = j % SK_GATE_UP_BLOCK;
        const size_t g = (size_t)(2 * blk * SK_GATE_UP_BLOCK + off), u = g + SK_GATE_UP_BLOCK;
        moved += memcmp(wi + g * K, w + (size_t)j * K, (size_t)K * 2) != 0;
        moved += memcmp(wi + u * K, w + ((size_t)I + j) * K, (size_t)K * 2) != 0;
    }
    GT_CHECK(moved == 0, "gate/up interleave I=%d K=%d puts every row in its block (%d misplaced)", I, K, moved);

    double *ref = malloc((size_t)M * I * 8);
    for (int m = 0; m < M; m++)
        for (int j = 0; j < I; j++) {
            double g = 0, u = 0;
            for (int k = 0; k < K; k++) {
                const double xv = gt_bf2f(x[(size_t)m * K + k]);
                g += xv * gt_bf2f(w[(size_t)j * K + k]);
                u += xv * gt_bf2f(w[((size_t)I + j) * K + k]);
            }
            ref[(size_t)m * I + j] = g / (1.0 + exp(-g)) * u;
        }
    cudaError_t e = sk_hopper_gemm_swiglu(h, dwi, dx, dact, M, I, K, 0, 0);
    gt_down(act, dact, (size_t)M * I * 2);
    float *out = malloc((size_t)M * I * 4);
    for (size_t i = 0; i < (size_t)M * I; i++) out[i] = gt_bf2f(act[i]);
    double err = gt_rel_err(out, ref, (size_t)M * I);
    GT_CHECK(e == cudaSuccess && err < BF_TOL, "hopper swiglu M=%d I=%d K=%d: rel err %.1e (%s)", M, I, K, err,
             cudaGetErrorString(e));

    /* The same from fp32 interleaved gate/up rows (what a cuBLAS product on dwi gives). */
    float *gu = malloc((size_t)M * 2 * I * 4);
    for (int m = 0; m < M; m++)
        for (int r = 0; r < 2 * I; r++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)gt_bf2f(x[(size_t)m * K + k]) * gt_bf2f(wi[(size_t)r * K + k]);
            gu[(size_t)m * 2 * I + r] = (float)acc;
        }
    float *dgu = gt_up(gu, (size_t)M * 2 * I * 4);
    GT_CUDA(cudaMemset(dact, 0xff, (size_t)M * I * 2));
    e = sk_silu_mul_interleaved(dact, dgu, M, I, 0);
    gt_down(act, dact, (size_t)M * I * 2);
    for (size_t i = 0; i < (size_t)M * I; i++) out[i] = gt_bf2f(act[i]);
    err = gt_rel_err(out, ref, (size_t)M * I);
    GT_CHECK(e == cudaSuccess && err < BF_TOL, "silu_mul interleaved M=%d I=%d: rel err %.1e", M, I, err);
    GT_CHECK(sk_hopper_gemm_swiglu(h, dwi, dx, dact, M, I + 32, K, 0, 0) == cudaErrorInvalidValue &&
                 sk_silu_mul_interleaved(dact, dgu, M, I + 32, 0) == cudaErrorInvalidValue,
             "swiglu paths refuse an intermediate size that is not a multiple of %d", SK_GATE_UP_BLOCK);
    GT_CHECK(sk_hopper_gemm_swiglu(h, dwi, dx, dact + 1, M, I, K, 0, 0) == cudaErrorInvalidValue,
             "hopper swiglu refuses an output that is not 16-byte aligned");
    cudaFree(dw);
    cudaFree(dwi);
    cudaFree(dx);
    cudaFree(dact);
    cudaFree(dgu);
    free(w);
    free(wi);
    free(x);
    free(act);
    free(ref);
    free(out);
    free(gu);
}

/* sk_hopper_mlp against its two halves launched apart (sk_hopper_gemm_swiglu, then
 * sk_hopper_gemm_parts on the activation): act and every part bit for bit, on each of `repeats`
 * launches in a row (the counters each launch leaves for the next must be zero again). */
static void test_mlp(struct sk_hopper_gemm *h, int M, int H, int I, int repeats)
{
    const size_t wn = (size_t)2 * I * H, dn = (size_t)H * I, an = (size_t)M * I, pn = (size_t)M * H * SK_HOPPER_MAX_SPLITS;
    uint16_t *w = malloc(wn * 2), *wd = malloc(dn * 2), *x = malloc((size_t)M * H * 2);
    for (size_t i = 0; i < wn; i++) w[i] = gt_f2bf(gt_normal() * 0.05f);
    for (size_t i = 0; i < dn; i++) wd[i] = gt_f2bf(gt_normal() * 0.05f);
    for (size_t i = 0; i < (size_t)M * H; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, wn * 2), *dwd = gt_up(wd, dn * 2), *dx = gt_up(x, (size_t)M * H * 2);
    uint16_t *act_ref = gt_dev(an * 2), *act = gt_dev(an * 2);
    float *parts_ref = gt_dev(pn * 4), *parts = gt_dev(pn * 4);
    uint16_t *ha = malloc(an * 2), *ha_ref = malloc(an * 2);
    float *hp = malloc(pn * 4), *hp_ref = malloc(pn * 4);
    GT_CUDA(cudaMemset(parts_ref, 0xff, pn * 4));
    int n_ref = -1;
    cudaError_t e = sk_hopper_gemm_swiglu(h, dw, dx, act_ref, M, I, H, 0, 0);
    if (e == cudaSuccess) e = sk_hopper_gemm_parts(h, dwd, act_ref, parts_ref, M, H, I, 0, &n_ref, 0, 0);
    gt_down(ha_ref, act_ref, an * 2);
    gt_down(hp_ref, parts_ref, pn * 4);
    int bad = 0, n_parts = -1;
    for (int r = 0; r < repeats; r++) {
        GT_CUDA(cudaMemset(act, 0xff, an * 2));
        GT_CUDA(cudaMemset(parts, 0xff, pn * 4));
        cudaError_t er = sk_hopper_mlp(h, dw, dwd, dx, act, parts, M, H, I, &n_parts, 0, 0);
        if (er != cudaSuccess) e = er;
        gt_down(ha, act, an * 2);
        gt_down(hp, parts, pn * 4);
        bad += n_parts != n_ref || memcmp(ha, ha_ref, an * 2) || memcmp(hp, hp_ref, (size_t)n_ref * M * H * 4);
    }
    GT_CHECK(e == cudaSuccess && n_ref >= 1 && bad == 0,
             "hopper mlp M=%d H=%d I=%d: activation and %d down parts equal the two launches' bit for bit "
             "(%d of %d launches differ; %s)",
             M, H, I, n_ref, bad, repeats, cudaGetErrorString(e));
    cudaFree(dw);
    cudaFree(dwd);
    cudaFree(dx);
    cudaFree(act_ref);
    cudaFree(act);
    cudaFree(parts_ref);
    cudaFree(parts);
    free(w);
    free(wd);
    free(x);
    free(ha);
    free(ha_ref);
    free(hp);
    free(hp_ref);
}

/* Weight-streaming rate of cuBLAS (the backend's default product) and of sk_hopper_gemm over
 * rotating weight copies (more than L2), so the weights come from memory as in a step. */
struct bench_ctx {
    struct cuda_backend *b;
    struct sk_hopper_gemm *h;
    int splits; /* for sk_hopper_gemm; 0 picks */
};

static void run_cuda_gemm(const struct product_bench *pb, int i, void *p)
{
    struct bench_ctx *c = p;
    cuda_gemm(c->b, product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in);
}

static void run_hopper(const struct product_bench *pb, int i, void *p)
{
    struct bench_ctx *c = p;
    GT_CUDA(sk_hopper_gemm(c->h, product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in, c->splits,
                           c->b->stream));
}

static void run_hopper_parts(const struct product_bench *pb, int i, void *p)
{
    struct bench_ctx *c = p;
    int n_parts;
    GT_CUDA(sk_hopper_gemm_parts(c->h, product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in, c->splits,
                                 &n_parts, 0, c->b->stream));
}

static void bench_case(struct cuda_backend *b, struct sk_hopper_gemm *h, int rows, int N, int K)
{
    const int iters = 40;
    struct product_bench pb;
    product_bench_init(&pb, rows, N, K);
    struct bench_ctx c = {b, h, 0};
    const float ms[2] = {product_bench_ms(&pb, b->stream, iters, run_cuda_gemm, &c),
                         product_bench_ms(&pb, b->stream, iters, run_hopper, &c)};
    const size_t wn = pb.wn;
    printf("  bench hopper rows=%3d N=%6d K=%5d splits=%2d: cublas %7.1f us %5.0f GB/s | hopper %7.1f us %5.0f GB/s "
           "(%.2fx)\n",
           rows, N, K, sk_hopper_gemm_splits(h, N, K), ms[0] * 1e3, wn * 2 / (ms[0] * 1e6), ms[1] * 1e3,
           wn * 2 / (ms[1] * 1e6), ms[0] / ms[1]);
    const char *sweep = getenv("SLUICE_HOPPER_SWEEP");
    if (sweep && !strcmp(sweep, "1") && N <= 8192 && rows >= 16 && rows <= 64) {
        printf("    splits sweep (GB/s), sums in clusters:");
        for (c.splits = 1; c.splits <= SK_HOPPER_MAX_SPLITS; c.splits++)
            printf(" %d:%.0f", c.splits, wn * 2 / (product_bench_ms(&pb, b->stream, iters, run_hopper, &c) * 1e6));
        printf("\n    splits sweep (GB/s), parts left:     ");
        for (c.splits = 1; c.splits <= SK_HOPPER_MAX_SPLITS; c.splits++)
            printf(" %d:%.0f", c.splits,
                   wn * 2 / (product_bench_ms(&pb, b->stream, iters, run_hopper_parts, &c) * 1e6));
        printf("\n");
    }
    product_bench_free(&pb);
}

static void bench(struct sk_hopper_gemm *h)
{
    printf("bench at decode shapes (Llama-3-8B): cuBLAS vs hopper\n");
    struct cuda_backend b;
    if (!bare_backend_open(&b)) return;
    const int shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
    const int rows[] = {2, 16, 32, 64, 128};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) bench_case(&b, h, rows[r], shapes[i][0], shapes[i][1]);
    bare_backend_close(&b);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    int major = 0, minor = 0;
    GT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    GT_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
    struct sk_hopper_gemm *h = NULL;
    cudaError_t ce = sk_hopper_gemm_create(&h);
    if (major != 9 || minor != 0) {
        GT_CHECK(ce == cudaErrorNotSupported && !h, "hopper refused on compute capability %d.%d", major, minor);
        return gt_finish();
    }
    GT_CHECK(ce == cudaSuccess && h, "hopper handle on compute capability 9.0 (%s)", cudaGetErrorString(ce));
    if (!h) return gt_finish();
    printf("hopper gemm (TMA + wgmma, rows <= %d)\n", SK_HOPPER_MAX_ROWS);
    test_case(h, 64, 512, 1024, 1);
    test_case(h, 64, 512, 1024, 4);
    test_case(h, 2, 256, 512, 1);
    test_case(h, 7, 300, 520, 3);
    test_case(h, 16, 128, 64, 1);
    test_case(h, 17, 1000, 768, 2);
    test_case(h, 33, 172, 64, 1);
    test_case(h, 48, 64, 176, 1);
    test_case(h, 63, 200, 2048, 5);
    test_case(h, 64, 130, 8, 1);
    test_case(h, 40, 96, 4104, 7);
    test_case(h, 65, 257, 4104, 8);
    test_case(h, 100, 384, 1024, 0);
    test_case(h, 128, 1000, 1024, 3);
    test_case(h, 128, 4096, 4096, 0);
    test_case(h, 64, 4096, 14336, 0);
    test_parts(h, 64, 4096, 14336);
    test_parts(h, 64, 4096, 4096);
    test_parts(h, 17, 1000, 768);
    test_parts(h, 5, 2048, 64);
    test_swiglu(h, 5, 192, 256);
    test_swiglu(h, 64, 640, 520);
    test_swiglu(h, 100, 128, 1024);
    printf("hopper fused mlp (gate/up + SwiGLU, then down, one launch)\n");
    test_mlp(h, 64, 4096, 14336, 3);
    test_mlp(h, 2, 4096, 14336, 1);
    test_mlp(h, 17, 1000, 640, 2);
    test_mlp(h, 33, 256, 1344, 1);
    test_mlp(h, 128, 512, 128, 2);
    test_mlp(h, 5, 64, 64, 1);
    printf("hopper gemm on e4m3 operands (FP8 weights, activations quantized per token)\n");
    test_fp8_case(h, 64, 512, 1024, 1);
    test_fp8_case(h, 64, 512, 1024, 4);
    test_fp8_case(h, 5, 256, 512, 1);
    /* From 2 rows the planner gives the stream every FP8 decode product (one row too, where the
     * gemv is off); the last row alone then is a one-row launch. */
    test_fp8_case(h, 1, 256, 512, 2);
    test_fp8_case(h, 2, 300, 528, 3);
    test_fp8_case(h, 3, 6144, 4096, 0);
    test_fp8_case(h, 4, 4096, 14336, 0);
    test_fp8_case(h, 7, 300, 528, 3);
    test_fp8_case(h, 17, 1000, 768, 2);
    test_fp8_case(h, 33, 172, 64, 1);
    test_fp8_case(h, 63, 200, 2048, 5);
    test_fp8_case(h, 40, 96, 4112, 7);
    test_fp8_case(h, 100, 384, 1024, 0);
    test_fp8_case(h, 128, 1000, 1024, 3);
    test_fp8_case(h, 64, 6144, 4096, 0);
    test_fp8_case(h, 64, 4096, 14336, 0);
    test_fp8_case(h, 16, 28672, 4096, 0);
    /* With one cache slot the weights' and x's maps of every launch share it: each launch must
     * still get both (a shared map made the weight stages wait forever: the serving hang). */
    sk_hopper_gemm_set_map_slots(h, 1);
    printf("hopper gemm through a one-slot tensor-map cache\n");
    test_case(h, 17, 1000, 768, 2);
    test_case(h, 64, 4096, 4096, 0);
    test_swiglu(h, 5, 192, 256);
    test_mlp(h, 17, 1000, 640, 2);
    test_fp8_case(h, 17, 1000, 768, 2);
    sk_hopper_gemm_set_map_slots(h, 4096);
    printf("hopper gemm batch invariance and refusals\n");
    test_batch_invariance(h, 4096, 4096);
    test_batch_invariance(h, 1000, 2056);
    uint16_t *d = gt_dev(1 << 20);
    float *f = gt_dev(1 << 20);
    GT_CHECK(sk_hopper_gemm(h, d, d, f, SK_HOPPER_MAX_ROWS + 1, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper refuses %d rows", SK_HOPPER_MAX_ROWS + 1);
    GT_CHECK(sk_hopper_gemm(h, d, d, f, 8, 64, 172, 0, 0) == cudaErrorInvalidValue, "hopper refuses K %% 8 != 0");
    GT_CHECK(sk_hopper_gemm(h, d + 1, d, f, 8, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper refuses unaligned weights");
    GT_CHECK(sk_hopper_gemm(h, d, d, f, 8, 64, 1024, SK_HOPPER_MAX_SPLITS + 1, 0) == cudaErrorInvalidValue,
             "hopper refuses %d splits", SK_HOPPER_MAX_SPLITS + 1);
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d, f, (uint8_t *)d, f, f, 8, 64, 72, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses K %% 16 != 0");
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d, NULL, (uint8_t *)d, f, f, 8, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses no weight scales");
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d + 8, f, (uint8_t *)d, f, f, 8, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses unaligned weights");
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d, f, (uint8_t *)d, f, f, 8, 64, 72, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses K %% 16 != 0");
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d, NULL, (uint8_t *)d, f, f, 8, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses no weight scales");
    GT_CHECK(sk_hopper_fp8_gemm(h, (uint8_t *)d + 8, f, (uint8_t *)d, f, f, 8, 64, 64, 0, 0) == cudaErrorInvalidValue,
             "hopper fp8 refuses unaligned weights");
    int n_parts = -1;
    GT_CHECK(sk_hopper_mlp(h, d, d, d, d, f, 8, 64, 96, &n_parts, 0, 0) == cudaErrorInvalidValue && n_parts == 0,
             "hopper mlp refuses an intermediate size that is not a multiple of 64");
    GT_CHECK(sk_hopper_mlp(h, d, d, d, d + 1, f, 8, 64, 128, &n_parts, 0, 0) == cudaErrorInvalidValue,
             "hopper mlp refuses an activation that is not 16-byte aligned");
    (void)cudaGetLastError();
    cudaFree(d);
    cudaFree(f);
    const char *be = getenv("SLUICE_GPU_BENCH");
    if (be && !strcmp(be, "1")) bench(h);
    sk_hopper_gemm_destroy(h);
    return gt_finish();
}
