/* Each kernel against a CPU reference on random inputs, outputs poisoned first. bf16 outputs
 * pass at ||out - ref|| / ||ref|| < 1e-2 (METHOD.md's bound for bf16 operands); exact kernels
 * (gathers, conversions, dummy weights, the sampler's choices) must match exactly. */
#include "tests/gpu/attention_cases.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/product_bench.h"

#include "kernels/sluice_kernels.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"
#include "worker/sampler/sampler.h"

#define BF_TOL 1e-2

static void test_convert_and_dummy(void)
{
    printf("convert / dummy\n");
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
    cudaFree(dsrc);
    cudaFree(dhalf);
    cudaFree(dout);
    cudaFree(df);
    free(src);
    free(out);
    free(half);
    free(f);
}

static void test_embed_norm_silu(void)
{
    printf("embed / add_rmsnorm / silu_mul\n");
    const int V = 1000, H = 4096, T = 37, I = 11008;
    uint16_t *table = malloc((size_t)V * H * 2);
    for (size_t i = 0; i < (size_t)V * H; i++) table[i] = gt_f2bf(gt_normal());
    /* Every third token is a row of the previous step's sampler output, as a queued decode step
     * gives them. */
    struct sk_sample_out prev[5];
    memset(prev, 0, sizeof prev);
    for (int r = 0; r < 5; r++) prev[r].token = gt_int(V);
    int32_t tok[T], id[T];
    for (int t = 0; t < T; t++) {
        id[t] = t % 3 ? gt_int(V) : prev[t % 5].token;
        tok[t] = t % 3 ? id[t] : -1 - t % 5;
    }
    uint16_t *dtable = gt_up(table, (size_t)V * H * 2);
    int32_t *dtok = gt_up(tok, sizeof tok);
    struct sk_sample_out *dprev = gt_up(prev, sizeof prev);
    float *dx = gt_dev((size_t)T * H * 4), *x = malloc((size_t)T * H * 4);
    GT_CUDA(sk_embed(dx, dtable, dtok, dprev, T, H, 0));
    gt_down(x, dx, (size_t)T * H * 4);
    long bad = 0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H; i++) bad += x[(size_t)t * H + i] != gt_bf2f(table[(size_t)id[t] * H + i]);
    GT_CHECK(bad == 0, "embedding gather exact, previous step's tokens included (%ld mismatches)", bad);
    cudaFree(dprev);

    float *delta = malloc((size_t)T * H * 4), *w = malloc(H * 4);
    for (size_t i = 0; i < (size_t)T * H; i++) delta[i] = gt_normal();
    for (int i = 0; i < H; i++) w[i] = 1.0f + 0.1f * gt_normal();
    float *ddelta = gt_up(delta, (size_t)T * H * 4), *dw = gt_up(w, H * 4);
    uint16_t *dy = gt_dev((size_t)T * H * 2), *y = malloc((size_t)T * H * 2);
    const float eps = 1e-5f;
    GT_CUDA(sk_add_rmsnorm(dx, ddelta, NULL, dw, dy, T, H, eps, 0));
    float *xo = malloc((size_t)T * H * 4);
    gt_down(xo, dx, (size_t)T * H * 4);
    gt_down(y, dy, (size_t)T * H * 2);
    double *ref = malloc((size_t)T * H * sizeof(double));
    float *yf = malloc((size_t)T * H * 4);
    bad = 0;
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) {
            float v = x[(size_t)t * H + i] + delta[(size_t)t * H + i];
            bad += xo[(size_t)t * H + i] != v;
            ss += (double)v * v;
        }
        double inv = 1.0 / sqrt(ss / H + eps);
        for (int i = 0; i < H; i++) {
            ref[(size_t)t * H + i] = w[i] * ((double)x[(size_t)t * H + i] + delta[(size_t)t * H + i]) * inv;
            yf[(size_t)t * H + i] = gt_bf2f(y[(size_t)t * H + i]);
        }
    }
    double e = gt_rel_err(yf, ref, (size_t)T * H);
    GT_CHECK(bad == 0, "residual add stored back exactly (%ld mismatches)", bad);
    GT_CHECK(e < BF_TOL, "rmsnorm rel err %.2e (T=%d H=%d)", e, T, H);

    /* Gathered rows, as for the sampled rows before lm_head. */
    int32_t rows[3] = {36, 0, 17};
    int32_t *drows = gt_up(rows, sizeof rows);
    GT_CUDA(cudaMemset(dy, 0xff, (size_t)T * H * 2));
    GT_CUDA(sk_add_rmsnorm(dx, ddelta, drows, dw, dy, 3, H, eps, 0));
    gt_down(y, dy, (size_t)3 * H * 2);
    for (int r = 0; r < 3; r++) {
        int t = rows[r];
        double ss = 0;
        for (int i = 0; i < H; i++) {
            double v = (double)(xo[(size_t)t * H + i] + delta[(size_t)t * H + i]);
            ss += v * v;
        }
        double inv = 1.0 / sqrt(ss / H + eps);
        for (int i = 0; i < H; i++) {
            ref[(size_t)r * H + i] = w[i] * (double)(xo[(size_t)t * H + i] + delta[(size_t)t * H + i]) * inv;
            yf[(size_t)r * H + i] = gt_bf2f(y[(size_t)r * H + i]);
        }
    }
    e = gt_rel_err(yf, ref, (size_t)3 * H);
    GT_CHECK(e < BF_TOL, "rmsnorm over gathered rows rel err %.2e", e);

    float *gu = malloc((size_t)T * 2 * I * 4);
    for (size_t i = 0; i < (size_t)T * 2 * I; i++) gu[i] = gt_normal() * 2.0f;
    float *dgu = gt_up(gu, (size_t)T * 2 * I * 4);
    uint16_t *dh = gt_dev((size_t)T * I * 2), *hh = malloc((size_t)T * I * 2);
    GT_CUDA(sk_silu_mul(dh, dgu, T, I, 0));
    gt_down(hh, dh, (size_t)T * I * 2);
    double *href = malloc((size_t)T * I * sizeof(double));
    float *hf = malloc((size_t)T * I * 4);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < I; i++) {
            double g = gu[(size_t)t * 2 * I + i], u = gu[(size_t)t * 2 * I + I + i];
            href[(size_t)t * I + i] = g / (1.0 + exp(-g)) * u;
            hf[(size_t)t * I + i] = gt_bf2f(hh[(size_t)t * I + i]);
        }
    e = gt_rel_err(hf, href, (size_t)T * I);
    GT_CHECK(e < BF_TOL, "silu_mul rel err %.2e", e);

    cudaFree(dtable);
    cudaFree(dtok);
    cudaFree(dx);
    cudaFree(ddelta);
    cudaFree(dw);
    cudaFree(dy);
    cudaFree(drows);
    cudaFree(dgu);
    cudaFree(dh);
    free(table);
    free(x);
    free(delta);
    free(w);
    free(y);
    free(xo);
    free(ref);
    free(yf);
    free(gu);
    free(hh);
    free(href);
    free(hf);
}

/* RMSNorm at the widths that take each path: the register-held rows (hidden % 4 == 0, up to
 * 16384), the generic loop beyond or otherwise, with and without a residual, all rows or
 * gathered ones. The output rows are poisoned first. */
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

static void test_rmsnorm_widths(void)
{
    printf("add_rmsnorm widths\n");
    const int widths[] = {4, 6, 64, 896, 4098, 5120, 16384, 16388};
    const int T = 5;
    const float eps = 1e-6f;
    for (size_t c = 0; c < sizeof widths / sizeof *widths; c++) {
        const int H = widths[c];
        const size_t n = (size_t)T * H;
        float *x = malloc(n * 4), *delta = malloc(n * 4), *w = malloc(H * 4), *xo = malloc(n * 4), *yf = malloc(n * 4);
        uint16_t *y = malloc(n * 2);
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) {
            x[i] = gt_normal();
            delta[i] = gt_normal();
        }
        for (int i = 0; i < H; i++) w[i] = 1.0f + 0.1f * gt_normal();
        float *dx = gt_up(x, n * 4), *ddelta = gt_up(delta, n * 4), *dw = gt_up(w, H * 4);
        uint16_t *dy = gt_dev(n * 2);
        int32_t rows[2] = {T - 1, 1};
        int32_t *drows = gt_up(rows, sizeof rows);
        for (int mode = 0; mode < 3; mode++) {
            /* 0: residual added and stored; 1: no residual; 2: gathered rows, residual not stored. */
            const int nr = mode == 2 ? 2 : T;
            GT_CUDA(cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice));
            GT_CUDA(cudaMemset(dy, 0xff, n * 2));
            GT_CUDA(sk_add_rmsnorm(dx, mode == 1 ? NULL : ddelta, mode == 2 ? drows : NULL, dw, dy, nr, H, eps, 0));
            GT_CUDA(cudaDeviceSynchronize());
            gt_down(xo, dx, n * 4);
            gt_down(y, dy, (size_t)nr * H * 2);
            long bad = 0;
            for (int r = 0; r < nr; r++) {
                const int t = mode == 2 ? rows[r] : r;
                double ss = 0;
                for (int i = 0; i < H; i++) {
                    const float v = mode == 1 ? x[(size_t)t * H + i] : x[(size_t)t * H + i] + delta[(size_t)t * H + i];
                    bad += xo[(size_t)t * H + i] != (mode == 0 ? v : x[(size_t)t * H + i]);
                    ss += (double)v * v;
                }
                const double inv = 1.0 / sqrt(ss / H + eps);
                for (int i = 0; i < H; i++) {
                    const float v = mode == 1 ? x[(size_t)t * H + i] : x[(size_t)t * H + i] + delta[(size_t)t * H + i];
                    ref[(size_t)r * H + i] = w[i] * (double)v * inv;
                    yf[(size_t)r * H + i] = gt_bf2f(y[(size_t)r * H + i]);
                }
            }
            const double e = gt_rel_err(yf, ref, (size_t)nr * H);
            GT_CHECK(bad == 0 && e < BF_TOL, "H=%d mode %d: rel err %.2e, %ld residual mismatches", H, mode, e, bad);
        }
        cudaFree(dx);
        cudaFree(ddelta);
        cudaFree(dw);
        cudaFree(dy);
        cudaFree(drows);
        free(x);
        free(delta);
        free(w);
        free(xo);
        free(yf);
        free(y);
        free(ref);
    }
}

/* A split product's parts (sk_hopper_gemm_parts) added by the norm: the same bits, residual and
 * output, as the norm over the parts summed beforehand in split order from zero (as the product's
 * cluster reduction sums them). Widths on the vector kernel and, past its thread limit for parts
 * (5120) or off its shape (4098), on the general one. */
static void test_rmsnorm_parts(void)
{
    printf("add_rmsnorm over split parts\n");
    const int widths[] = {64, 4096, 4098, 5120}, counts[] = {1, 3, 8};
    const int T = 6;
    const float eps = 1e-6f;
    for (size_t c = 0; c < sizeof widths / sizeof *widths; c++)
        for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
            const int H = widths[c], P = counts[k];
            const size_t n = (size_t)T * H;
            float *x = malloc(n * 4), *parts = malloc(n * P * 4), *sum = malloc(n * 4), *w = malloc(H * 4);
            float *xa = malloc(n * 4), *xb = malloc(n * 4);
            uint16_t *ya = malloc(n * 2), *yb = malloc(n * 2);
            for (size_t i = 0; i < n; i++) x[i] = gt_normal();
            for (size_t i = 0; i < n * P; i++) parts[i] = gt_normal();
            for (size_t i = 0; i < n; i++) {
                float v = P == 1 ? parts[i] : 0.0f;
                for (int j = 0; j < P && P > 1; j++) v += parts[j * n + i];
                sum[i] = v;
            }
            for (int i = 0; i < H; i++) w[i] = 1.0f + 0.1f * gt_normal();
            float *dx = gt_dev(n * 4), *dparts = gt_up(parts, n * P * 4), *dsum = gt_up(sum, n * 4);
            float *dw = gt_up(w, H * 4);
            uint16_t *dy = gt_dev(n * 2);
            int32_t rows[3] = {T - 1, 0, 2};
            int32_t *drows = gt_up(rows, sizeof rows);
            for (int gathered = 0; gathered < 2; gathered++) {
                const int nr = gathered ? 3 : T;
                const int32_t *rr = gathered ? drows : NULL;
                GT_CUDA(cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice));
                GT_CUDA(cudaMemset(dy, 0xff, n * 2));
                GT_CUDA(sk_add_rmsnorm_parts(dx, dparts, P, (int64_t)n, rr, dw, dy, nr, H, eps, 0));
                gt_down(xa, dx, n * 4);
                gt_down(ya, dy, (size_t)nr * H * 2);
                GT_CUDA(cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice));
                GT_CUDA(cudaMemset(dy, 0xff, n * 2));
                GT_CUDA(sk_add_rmsnorm(dx, dsum, rr, dw, dy, nr, H, eps, 0));
                gt_down(xb, dx, n * 4);
                gt_down(yb, dy, (size_t)nr * H * 2);
                const int same = !memcmp(xa, xb, n * 4) && !memcmp(ya, yb, (size_t)nr * H * 2);
                GT_CHECK(same, "H=%d, %d parts%s: residual and output equal the pre-summed delta's bit for bit", H, P,
                         gathered ? ", gathered rows" : "");
            }
            cudaFree(dx);
            cudaFree(dparts);
            cudaFree(dsum);
            cudaFree(dw);
            cudaFree(dy);
            cudaFree(drows);
            free(x);
            free(parts);
            free(sum);
            free(w);
            free(xa);
            free(xb);
            free(ya);
            free(yb);
        }
    float *d = gt_dev(1 << 16);
    uint16_t *dy = gt_dev(1 << 16);
    GT_CHECK(sk_add_rmsnorm_parts(d, d, 0, 64, NULL, d, dy, 2, 64, 1e-6f, 0) == cudaErrorInvalidValue &&
                 sk_add_rmsnorm_parts(d, d, SK_HOPPER_MAX_SPLITS + 1, 64, NULL, d, dy, 2, 64, 1e-6f, 0) ==
                     cudaErrorInvalidValue &&
                 sk_add_rmsnorm_parts(d, d, 2, 32, NULL, d, dy, 2, 64, 1e-6f, 0) == cudaErrorInvalidValue,
             "add_rmsnorm_parts refuses 0 or %d parts and parts that overlap a row", SK_HOPPER_MAX_SPLITS + 1);
    cudaFree(d);
    cudaFree(dy);
}

/* qkv epilogue: bias, q/k norm, rope (both layouts), cache writes at scattered slots; and the
 * same from qkv in split parts (sk_qkv_post_parts), bit for bit. */
static void test_qkv_post_case(int nh, int nkv, int D, int interleaved, int bias, int qknorm)
{
    const int T = 21, nall = nh + 2 * nkv, nblocks = 8, P = 3;
    const float eps = 1e-6f;
    size_t qkvn = (size_t)T * nall * D;
    float *qkv = malloc(qkvn * 4), *b = malloc((size_t)nall * D * 4), *qn = malloc(D * 4), *kn = malloc(D * 4);
    float *parts = malloc(qkvn * P * 4);
    float *inv = malloc(D / 2 * 4);
    int32_t pos[T], slot[T];
    /* qkv is its parts' sum in split order from zero, as a split product's reader adds them. */
    for (size_t i = 0; i < qkvn * P; i++) parts[i] = gt_normal();
    for (size_t i = 0; i < qkvn; i++) {
        float v = 0.0f;
        for (int j = 0; j < P; j++) v += parts[j * qkvn + i];
        qkv[i] = v;
    }
    for (int i = 0; i < nall * D; i++) b[i] = 0.5f * gt_normal();
    for (int i = 0; i < D; i++) {
        qn[i] = 1.0f + 0.2f * gt_normal();
        kn[i] = 1.0f + 0.2f * gt_normal();
    }
    for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(500000.0, 2.0 * i / D));
    /* Distinct slots in a permuted order. */
    int32_t perm[8 * 16];
    gt_shuffled_ids(perm, nblocks * 16, 0);
    for (int t = 0; t < T; t++) {
        pos[t] = gt_int(40000);
        slot[t] = perm[t];
    }
    float *dqkv = gt_up(qkv, qkvn * 4), *db = gt_up(b, (size_t)nall * D * 4), *dqn = gt_up(qn, D * 4),
          *dkn = gt_up(kn, D * 4), *dinv = gt_up(inv, D / 2 * 4);
    int32_t *dpos = gt_up(pos, sizeof pos), *dslot = gt_up(slot, sizeof slot);
    size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    float *dq = gt_dev((size_t)T * nh * D * 4);
    uint16_t *dk = gt_dev(cache_n * 2), *dv = gt_dev(cache_n * 2);
    struct sk_qkv_params p = {
        .n_tokens = T, .n_heads = nh, .n_kv_heads = nkv, .head_dim = D, .eps = eps, .interleaved = interleaved};
    GT_CUDA(cudaMemset(dk, 0, cache_n * 2));
    GT_CUDA(cudaMemset(dv, 0, cache_n * 2));
    GT_CUDA(sk_qkv_post(dqkv, bias ? db : NULL, qknorm ? dqn : NULL, qknorm ? dkn : NULL, dinv, dpos, dslot, dq, dk, dv,
                        p, 0));
    float *q = malloc((size_t)T * nh * D * 4), *q2 = malloc((size_t)T * nh * D * 4);
    uint16_t *k = malloc(cache_n * 2), *v = malloc(cache_n * 2), *k2 = malloc(cache_n * 2), *v2 = malloc(cache_n * 2);
    gt_down(q, dq, (size_t)T * nh * D * 4);
    gt_down(k, dk, cache_n * 2);
    gt_down(v, dv, cache_n * 2);
    float *dparts = gt_up(parts, qkvn * P * 4);
    GT_CUDA(cudaMemset(dk, 0, cache_n * 2));
    GT_CUDA(cudaMemset(dv, 0, cache_n * 2));
    GT_CUDA(cudaMemset(dq, 0xff, (size_t)T * nh * D * 4));
    GT_CUDA(sk_qkv_post_parts(dparts, P, (int64_t)qkvn, bias ? db : NULL, qknorm ? dqn : NULL, qknorm ? dkn : NULL,
                              dinv, dpos, dslot, dq, dk, dv, p, 0));
    gt_down(q2, dq, (size_t)T * nh * D * 4);
    gt_down(k2, dk, cache_n * 2);
    gt_down(v2, dv, cache_n * 2);
    GT_CHECK(!memcmp(q, q2, (size_t)T * nh * D * 4) && !memcmp(k, k2, cache_n * 2) && !memcmp(v, v2, cache_n * 2),
             "qkv_post nh=%d nkv=%d D=%d from %d split parts: q, k and v equal the summed input's bit for bit", nh, nkv,
             D, P);
    cudaFree(dparts);
    free(parts);
    free(q2);
    free(k2);
    free(v2);

    size_t nq = (size_t)T * nh * D, nk = (size_t)T * nkv * D;
    double *rq = malloc(nq * 8), *rk = malloc(nk * 8), *rv = malloc(nk * 8);
    float *gk = malloc(nk * 4), *gv = malloc(nk * 4);
    double *tmp = malloc(D * 8);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < nall; h++) {
            const float *src = qkv + ((size_t)t * nall + h) * D;
            for (int i = 0; i < D; i++) tmp[i] = (double)src[i] + (bias ? b[h * D + i] : 0.0);
            int is_v = h >= nh + nkv;
            int64_t blk = slot[t] / 16, off = slot[t] % 16;
            if (is_v) {
                int kvh = h - nh - nkv;
                size_t at = ((size_t)(blk * nkv + kvh) * 16 + off) * D;
                for (int i = 0; i < D; i++) {
                    rv[((size_t)t * nkv + kvh) * D + i] = tmp[i];
                    gv[((size_t)t * nkv + kvh) * D + i] = gt_bf2f(v[at + i]);
                }
                continue;
            }
            if (qknorm) {
                double ss = 0;
                for (int i = 0; i < D; i++) ss += tmp[i] * tmp[i];
                double r = 1.0 / sqrt(ss / D + eps);
                const float *nw = h < nh ? qn : kn;
                for (int i = 0; i < D; i++) tmp[i] = nw[i] * tmp[i] * r;
            }
            double outv[SK_MAX_HEAD_DIM];
            for (int i = 0; i < D / 2; i++) {
                int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + D / 2;
                double a = (double)pos[t] * (double)inv[i];
                outv[i0] = tmp[i0] * cos(a) - tmp[i1] * sin(a);
                outv[i1] = tmp[i1] * cos(a) + tmp[i0] * sin(a);
            }
            if (h < nh) {
                for (int i = 0; i < D; i++) rq[((size_t)t * nh + h) * D + i] = outv[i];
            } else {
                int kvh = h - nh;
                size_t at = ((size_t)(blk * nkv + kvh) * 16 + off) * D;
                for (int i = 0; i < D; i++) {
                    rk[((size_t)t * nkv + kvh) * D + i] = outv[i];
                    gk[((size_t)t * nkv + kvh) * D + i] = gt_bf2f(k[at + i]);
                }
            }
        }
    }
    double eq = gt_rel_err(q, rq, nq), ek = gt_rel_err(gk, rk, nk), ev = gt_rel_err(gv, rv, nk);
    /* q stays fp32; positions up to 40000 make the angle's own fp32 rounding the limit. */
    GT_CHECK(eq < 1e-3 && ek < BF_TOL && ev < BF_TOL,
             "qkv_post nh=%d nkv=%d D=%d interleaved=%d bias=%d qknorm=%d: q %.2e k %.2e v %.2e", nh, nkv, D,
             interleaved, bias, qknorm, eq, ek, ev);
    cudaFree(dqkv);
    cudaFree(db);
    cudaFree(dqn);
    cudaFree(dkn);
    cudaFree(dinv);
    cudaFree(dpos);
    cudaFree(dslot);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    free(qkv);
    free(b);
    free(qn);
    free(kn);
    free(inv);
    free(q);
    free(k);
    free(v);
    free(rq);
    free(rk);
    free(rv);
    free(gk);
    free(gv);
    free(tmp);
}

/* The shipped decode-attention kernels: the per-head kernel (variant 0) and the tensor-core
 * streaming kernel (9). */
static const int shipped_variants[] = {0, 9};
static const struct attn_runner shipped = {2, shipped_variants, attn_run_shipped, attn_fits_shipped, 0};

/* Times prefill attention over one sequence of n tokens: tensor-core tiles against the streaming
 * decode kernel, which takes prefill tokens where the tiles are off (--cuda-options
 * prefill_mma=0). softcap and window as in sk_attn_params (the tiles' second kernel). */
static void bench_prefill_attention(int nh, int nkv, int D, int n, float softcap, int window)
{
    const int nblocks = (n + 15) / 16;
    size_t cache_n = (size_t)nblocks * nkv * 16 * D, qn = (size_t)n * nh * D;
    uint16_t *dk = gt_dev(cache_n * 2), *dv = gt_dev(cache_n * 2), *dout = gt_dev(qn * 2);
    float *dq = gt_dev(qn * 4);
    GT_CUDA(sk_fill_dummy_bf16(dk, 1, 1, 0, (int64_t)cache_n, 0, 0));
    GT_CUDA(sk_fill_dummy_bf16(dv, 1, 2, 0, (int64_t)cache_n, 0, 0));
    GT_CUDA(sk_fill_dummy_f32(dq, 1, 3, 0, (int64_t)qn, 0, 0));
    int32_t *bt = malloc(nblocks * 4), *pos = malloc(n * 4), *seq = calloc(n, 4), *tiles = malloc((n / 64 + 1) * 12);
    for (int i = 0; i < nblocks; i++) bt[i] = i;
    for (int i = 0; i < n; i++) pos[i] = i;
    int nt = 0;
    for (int i = 0; i < n; i += 64, nt++) {
        tiles[3 * nt] = i;
        tiles[3 * nt + 1] = n - i < 64 ? n - i : 64;
        tiles[3 * nt + 2] = 0;
    }
    int32_t *dbt = gt_up(bt, nblocks * 4), *dpos = gt_up(pos, n * 4), *dseq = gt_up(seq, n * 4),
            *dtiles = gt_up(tiles, nt * 12);
    struct sk_attn_params p = {.n_tokens = n,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = nblocks,
                               .scale = 0.08f,
                               .n_splits = 1,
                               .softcap = softcap,
                               .window = window};
    cudaEvent_t a, b;
    GT_CUDA(cudaEventCreate(&a));
    GT_CUDA(cudaEventCreate(&b));
    float ms[2];
    for (int v = 0; v < 2; v++) {
        for (int i = 0; i < 4; i++) {
            if (i == 1) GT_CUDA(cudaEventRecord(a, 0));
            if (v == 0)
                GT_CUDA(sk_attention_prefill(dq, dk, dv, dbt, dtiles, nt, dpos, dout, p, 0));
            else
                GT_CUDA(sk_attention(dq, dk, dv, dbt, dseq, dpos, NULL, NULL, dout, p, SK_ATTN_DECODE_STREAM, 0));
        }
        GT_CUDA(cudaEventRecord(b, 0));
        GT_CUDA(cudaEventSynchronize(b));
        GT_CUDA(cudaEventElapsedTime(&ms[v], a, b));
        ms[v] /= 3;
    }
    double keys = 0;
    for (int i = 0; i < n; i++) keys += window > 0 && i + 1 > window ? window : i + 1;
    double flop = 4.0 * keys * D * nh;
    printf("  bench prefill attention nh=%d nkv=%d D=%d n=%d softcap=%g window=%d: tensor cores %.2f ms (%.0f "
           "TFLOP/s), decode kernel %.2f ms\n",
           nh, nkv, D, n, softcap, window, ms[0], flop / (ms[0] * 1e9), ms[1]);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dbt);
    cudaFree(dpos);
    cudaFree(dseq);
    cudaFree(dtiles);
    free(bt);
    free(pos);
    free(seq);
    free(tiles);
}

/* Decode attention launched as a programmatic dependent of a kernel that writes the cache late
 * (sk_test_late_copy, 300 us after it starts), as qkv_post writes each token's own key. With
 * settled_keys, the tensor-core kernel reads the keys before each token's own before its wait.
 * own: the late kernel rewrites each token's own key and value, which every variant must see
 * new. !own: it rewrites key 3 of each sequence, a settled one: with settled_keys the
 * streaming kernel (variant 9, a programmatic dependent) must have read it early (old values: the
 * early reads happen), everything else must see it new. The rewritten values weigh enough that old and new
 * results differ far beyond the tolerance. */
static void test_attention_settled(int nh, int nkv, int D, int n_splits, int own)
{
    enum { S = 24 };
    const int stride = 4, nblocks = S * stride + 3;
    int32_t bt[S * stride], tseq[S], tpos[S];
    gt_shuffled_ids(bt, S * stride, 3);
    const int edges[] = {8, 9, 15, 16, 23, 24, 31, 32, 63};
    for (int s = 0; s < S; s++) {
        tseq[s] = s;
        tpos[s] = s < (int)(sizeof edges / sizeof edges[0]) ? edges[s] : 8 + gt_int(56);
    }
    const size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    uint16_t *kv_old = malloc(cache_n * 4), *kv_new = malloc(cache_n * 4);
    for (size_t i = 0; i < 2 * cache_n; i++) kv_old[i] = kv_new[i] = gt_f2bf(gt_normal());
    for (int s = 0; s < S; s++) {
        const int j = own ? tpos[s] : 3;
        for (int h = 0; h < nkv; h++) {
            const size_t at = ((size_t)(bt[s * stride + j / 16] * nkv + h) * 16 + j % 16) * D;
            for (int i = 0; i < D; i++) {
                kv_new[at + i] = gt_f2bf(gt_normal());
                kv_new[cache_n + at + i] = gt_f2bf(8.0f);
            }
        }
    }
    const size_t qn = (size_t)S * nh * D;
    float *q = malloc(qn * 4), *outf = malloc(qn * 4);
    for (size_t i = 0; i < qn; i++) q[i] = gt_normal();
    const float scale = 1.0f / sqrtf((float)D);
    double *ref_old = malloc(qn * 8), *ref_new = malloc(qn * 8);
    attention_ref(q, kv_old, kv_old + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, ref_old);
    attention_ref(q, kv_new, kv_new + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, ref_new);

    uint16_t *dkv = gt_dev(cache_n * 4), *dkv_new = gt_up(kv_new, cache_n * 4), *dout = gt_dev(qn * 2);
    float *dq = gt_up(q, qn * 4), *dpo = gt_dev(qn * n_splits * 4), *dml = gt_dev((size_t)S * nh * n_splits * 8);
    int32_t *dbt = gt_up(bt, sizeof bt), *dseq = gt_up(tseq, sizeof tseq), *dpos = gt_up(tpos, sizeof tpos);
    uint16_t *out = malloc(qn * 2);
    cudaStream_t st;
    GT_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* Kernels start early only as programmatic dependents: sm_90 and later. */
    int dev = 0, major = 0;
    GT_CUDA(cudaGetDevice(&dev));
    GT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    const int pdl_on = major >= 9;
    for (int settled = 0; settled < 2; settled++)
        for (int mi = 0; mi < shipped.n; mi++) {
            const int v = shipped.variants[mi];
            struct sk_attn_params p = {.n_tokens = S,
                                       .n_heads = nh,
                                       .n_kv_heads = nkv,
                                       .head_dim = D,
                                       .bt_stride = stride,
                                       .scale = scale,
                                       .n_splits = n_splits,
                                       .settled_keys = settled};
            GT_CUDA(cudaMemcpy(dkv, kv_old, cache_n * 4, cudaMemcpyHostToDevice));
            GT_CUDA(cudaMemset(dout, 0xff, qn * 2));
            GT_CUDA(sk_test_late_copy(dkv, dkv_new, cache_n * 4, 300, st));
            GT_CUDA(attn_run_shipped(v, dq, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, p, st));
            GT_CUDA(cudaStreamSynchronize(st));
            gt_down(out, dout, qn * 2);
            for (size_t i = 0; i < qn; i++) outf[i] = gt_bf2f(out[i]);
            const int early = !own && settled && v == 9 && pdl_on;
            const double err = gt_rel_err(outf, early ? ref_old : ref_new, qn);
            const double other = gt_rel_err(outf, early ? ref_new : ref_old, qn);
            GT_CHECK(err < BF_TOL && other > 10 * BF_TOL,
                     "attention after a late cache write (%s rewritten), variant %d, settled_keys %d, nh=%d nkv=%d "
                     "D=%d splits=%d: sees the %s values (rel err %.1e, against the %s ones %.1e)",
                     own ? "own keys" : "key 3", v, settled, nh, nkv, D, n_splits, early ? "old" : "new", err,
                     early ? "new" : "old", other);
        }
    GT_CUDA(cudaStreamDestroy(st));
    cudaFree(dkv);
    cudaFree(dkv_new);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dpo);
    cudaFree(dml);
    cudaFree(dbt);
    cudaFree(dseq);
    cudaFree(dpos);
    free(kv_old);
    free(kv_new);
    free(q);
    free(outf);
    free(out);
    free(ref_old);
    free(ref_new);
}

/* sk_attention_decode_qkv against sk_qkv_post_parts followed by sk_attention's streaming kernel
 * (variant 9): one decode token per sequence, contexts across chunk, block and split edges, the
 * qkv product in n_parts parts. The caches must come out bit for bit as qkv_post leaves them (the
 * same arithmetic, and no other slot written), and the output within bf16 bounds of the double
 * reference over those caches. The own slots start as NaN, so a kernel that read its own key
 * from the cache instead of merging it itself would fail; the parts arrive through
 * sk_test_late_copy 300 us after the kernel may start, so one that read them before its wait
 * would see zeros. o (NULL: none) soft-caps and slides a window as in attention_seqs_opt, blocks
 * before each token's window dropped, and the case must tell the options apart. */
static void test_attention_decode_qkv(int nh, int nkv, int n_splits, int n_parts, int bias, int qknorm,
                                      int interleaved, const struct attn_opts *o)
{
    const float softcap = o ? o->softcap : 0.0f;
    const int window = o ? o->window : 0;
    enum { S = 40, D = 128 };
    const int nall = nh + 2 * nkv, stride = 40, nblocks = S * stride + 3;
    const int edges[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 127, 128, 191, 255, 256, 383};
    int32_t *bt = malloc((size_t)S * stride * 4), tseq[S], tpos[S], slot[S];
    gt_shuffled_ids(bt, S * stride, 3);
    for (int s = 0; s < S; s++) {
        tseq[s] = s;
        tpos[s] = s < (int)(sizeof edges / sizeof edges[0]) ? edges[s] : gt_int(stride * 16);
        slot[s] = bt[s * stride + tpos[s] / 16] * 16 + tpos[s] % 16;
    }
    const size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    uint16_t *kv = malloc(cache_n * 4);
    for (size_t i = 0; i < 2 * cache_n; i++) kv[i] = gt_f2bf(gt_normal());
    /* Own slots and everything after them: NaN, as in a live cache. */
    for (int s = 0; s < S; s++)
        for (int j = tpos[s]; j < (tpos[s] + 16) / 16 * 16; j++)
            for (int h = 0; h < nkv; h++) {
                const size_t at = ((size_t)(bt[s * stride + j / 16] * nkv + h) * 16 + j % 16) * D;
                for (int i = 0; i < D; i++) kv[at + i] = kv[cache_n + at + i] = 0x7fc0;
            }
    int32_t *bt_full = malloc((size_t)S * stride * 4);
    memcpy(bt_full, bt, (size_t)S * stride * 4);
    if (window > 0)
        for (int s = 0; s < S; s++)
            attention_drop_before_window(bt + s * stride, kv, kv + cache_n, s, tpos[s], window, nkv, D);
    const int64_t width = (int64_t)nall * D, part_stride = S * width + 64;
    const size_t parts_n = (size_t)part_stride * n_parts;
    float *parts = malloc(parts_n * 4), *b = malloc((size_t)width * 4), *qn = malloc(D * 4), *kn = malloc(D * 4),
          *inv = malloc(D / 2 * 4);
    for (size_t i = 0; i < parts_n; i++) parts[i] = gt_normal();
    for (int i = 0; i < width; i++) b[i] = 0.5f * gt_normal();
    for (int i = 0; i < D; i++) {
        qn[i] = 1.0f + 0.2f * gt_normal();
        kn[i] = 1.0f + 0.2f * gt_normal();
    }
    for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(500000.0, 2.0 * i / D));
    float *dparts = gt_up(parts, parts_n * 4), *dlive = gt_dev(parts_n * 4), *db = gt_up(b, (size_t)width * 4),
          *dqn = gt_up(qn, D * 4), *dkn = gt_up(kn, D * 4), *dinv = gt_up(inv, D / 2 * 4);
    int32_t *dbt = gt_up(bt, (size_t)S * stride * 4), *dseq = gt_up(tseq, sizeof tseq),
            *dpos = gt_up(tpos, sizeof tpos), *dslot = gt_up(slot, sizeof slot);
    const size_t qsz = (size_t)S * nh * D;
    uint16_t *dkv = gt_up(kv, cache_n * 4), *dout = gt_dev(qsz * 2);
    float *dq = gt_dev(qsz * 4), *dpo = gt_dev(qsz * n_splits * 4), *dml = gt_dev((size_t)S * nh * n_splits * 8);
    const float scale = (o && o->scale_mult > 0 ? o->scale_mult : 1.0f) / sqrtf((float)D);
    struct sk_attn_params p = {.n_tokens = S,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = stride,
                               .scale = scale,
                               .n_splits = n_splits,
                               .settled_keys = 1,
                               .softcap = softcap,
                               .window = window};
    GT_CHECK(sk_attention_decode_qkv_fits(&p), "sk_attention_decode_qkv takes nh=%d nkv=%d D=128 settled", nh, nkv);

    /* qkv_post, then the tensor-core decode attention. */
    const struct sk_qkv_params qp = {
        .n_tokens = S, .n_heads = nh, .n_kv_heads = nkv, .head_dim = D, .eps = 1e-6f, .interleaved = interleaved};
    GT_CUDA(sk_qkv_post_parts(dparts, n_parts, part_stride, bias ? db : NULL, qknorm ? dqn : NULL, qknorm ? dkn : NULL,
                              dinv, dpos, dslot, dq, dkv, dkv + cache_n, qp, 0));
    GT_CUDA(cudaMemset(dout, 0xff, qsz * 2));
    GT_CUDA(sk_attention(dq, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, p, SK_ATTN_DECODE_STREAM, 0));
    uint16_t *kv_a = malloc(cache_n * 4), *out = malloc(qsz * 2);
    float *q = malloc(qsz * 4), *out_a = malloc(qsz * 4), *out_b = malloc(qsz * 4);
    gt_down(kv_a, dkv, cache_n * 4);
    gt_down(q, dq, qsz * 4);
    gt_down(out, dout, qsz * 2);
    for (size_t i = 0; i < qsz; i++) out_a[i] = gt_bf2f(out[i]);

    /* The same in one kernel, its parts arriving late. */
    cudaStream_t st;
    GT_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    GT_CUDA(cudaMemcpy(dkv, kv, cache_n * 4, cudaMemcpyHostToDevice));
    GT_CUDA(cudaMemset(dlive, 0, parts_n * 4));
    GT_CUDA(cudaMemset(dout, 0xff, qsz * 2));
    GT_CUDA(sk_test_late_copy(dlive, dparts, parts_n * 4, 300, st));
    const struct sk_qkv_src src = {dlive,   n_parts, part_stride,   bias ? db : NULL, qknorm ? dqn : NULL,
                                   qknorm ? dkn : NULL, dinv, dslot, 1e-6f, interleaved};
    GT_CUDA(sk_attention_decode_qkv(&src, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, p, st));
    GT_CUDA(cudaStreamSynchronize(st));
    uint16_t *kv_b = malloc(cache_n * 4);
    gt_down(kv_b, dkv, cache_n * 4);
    gt_down(out, dout, qsz * 2);
    for (size_t i = 0; i < qsz; i++) out_b[i] = gt_bf2f(out[i]);

    double *ref = malloc(qsz * 8);
    attention_ref_opt(q, kv_a, kv_a + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, softcap, window, ref);
    const double ea = gt_rel_err(out_a, ref, qsz), eb = gt_rel_err(out_b, ref, qsz);
    char opts[64] = "";
    if (o) snprintf(opts, sizeof opts, " softcap=%g window=%d", softcap, window);
    GT_CHECK(!memcmp(kv_a, kv_b, cache_n * 4) && eb < BF_TOL && ea < BF_TOL,
             "attention with qkv_post's work nh=%d nkv=%d splits=%d parts=%d bias=%d qknorm=%d interleaved=%d%s: "
             "caches %s qkv_post's, rel err %.1e (qkv_post + attention %.1e)",
             nh, nkv, n_splits, n_parts, bias, qknorm, interleaved, opts,
             memcmp(kv_a, kv_b, cache_n * 4) ? "differ from" : "equal", eb, ea);
    if (o) {
        /* Without the window over the whole table, the NaN keys before it read as 0. */
        double *alt = malloc(qsz * 8), dw = INFINITY, dc = INFINITY;
        if (window > 0) {
            uint16_t *kv_z = malloc(cache_n * 4);
            for (size_t i = 0; i < 2 * cache_n; i++) kv_z[i] = kv_a[i] == 0x7fc0 ? 0 : kv_a[i];
            attention_ref_opt(q, kv_z, kv_z + cache_n, bt_full, stride, tseq, tpos, S, nh, nkv, D, scale, softcap, 0,
                              alt);
            dw = attention_ref_diff(alt, ref, qsz);
            free(kv_z);
        }
        if (softcap > 0) {
            attention_ref_opt(q, kv_a, kv_a + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, 0.0f, window, alt);
            dc = attention_ref_diff(alt, ref, qsz);
        }
        GT_CHECK(dw > 3 * BF_TOL && dc > 3 * BF_TOL,
                 "attention with qkv_post's work%s: the case tells the options apart (the reference without the "
                 "window moves by %.1e, without the cap by %.1e)",
                 opts, dw, dc);
        free(alt);
    }
    /* Refusals: head_dim 64, keys not settled. */
    struct sk_attn_params p64 = p, unsettled = p;
    p64.head_dim = 64;
    unsettled.settled_keys = 0;
    GT_CHECK(!sk_attention_decode_qkv_fits(&p64) &&
                 sk_attention_decode_qkv(&src, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, p64, st) ==
                     cudaErrorInvalidValue &&
                 sk_attention_decode_qkv(&src, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, unsettled, st) ==
                     cudaErrorInvalidValue,
             "sk_attention_decode_qkv refuses head_dim 64 and unsettled keys");
    GT_CUDA(cudaStreamDestroy(st));
    void *dev[] = {dparts, dlive, db, dqn, dkn, dinv, dbt, dseq, dpos, dslot, dkv, dout, dq, dpo, dml};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    void *host[] = {bt, bt_full, kv, parts, b, qn, kn, inv, kv_a, kv_b, out, q, out_a, out_b, ref};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* qkv_post's work inside the decode attention. */
static void test_attention_decode_qkv_shapes(void)
{
    test_attention_decode_qkv(32, 8, 1, 3, 0, 0, 0, NULL);
    test_attention_decode_qkv(32, 8, 2, 1, 1, 0, 0, NULL);
    test_attention_decode_qkv(16, 8, 1, 7, 0, 1, 1, NULL);
    test_attention_decode_qkv(64, 8, 3, 2, 1, 1, 0, NULL);
    test_attention_decode_qkv(8, 8, 1, 1, 0, 0, 1, NULL);
    test_attention_decode_qkv(16, 2, 2, 4, 1, 0, 1, NULL);
}

/* Soft-capping and sliding windows there: caps of 50 (on q-normed heads with the scale 16 times
 * larger, so that the cap matters) and 2, windows of 16, 24 and 100, 1 to 8 query heads per kv
 * head, with and without splits. */
static void test_attention_decode_qkv_windows(void)
{
    const struct attn_opts w16 = {0, 16, 0}, w100 = {0, 100, 0}, c50 = {50, 0, 16}, w24c50 = {50, 24, 16},
                           w16c2 = {2, 16, 0}, w100c2 = {2, 100, 0};
    test_attention_decode_qkv(32, 8, 2, 3, 0, 1, 0, &w24c50);
    test_attention_decode_qkv(64, 8, 3, 2, 1, 0, 0, &w100c2);
    test_attention_decode_qkv(16, 8, 1, 1, 0, 1, 1, &w16);
    test_attention_decode_qkv(8, 8, 4, 1, 0, 0, 1, &w16c2);
    test_attention_decode_qkv(32, 8, 1, 2, 1, 1, 0, &c50);
    test_attention_decode_qkv(16, 2, 2, 4, 1, 0, 1, &w100);
}

static void test_attention(void)
{
    printf("attention\n");
    attention_cases(&shipped);
    attention_window_cases(&shipped);
    /* Keys read before the previous kernel ends (settled_keys). */
    test_attention_settled(32, 8, 128, 1, 1);
    test_attention_settled(32, 8, 128, 1, 0);
    test_attention_settled(32, 8, 128, 2, 1);
    test_attention_settled(16, 8, 64, 1, 1);
    test_attention_settled(16, 8, 64, 2, 0);
    test_attention_decode_qkv_shapes();
    test_attention_decode_qkv_windows();
}

/* The shipped kernels at the shapes the backend meets (Llama-3-8B unless noted); the variants that
 * lost to them are timed beside them by kernels/dev/bench_attention_decode.c. */
static void bench_attention(const struct attn_runner *r)
{
    printf("bench decode attention, graph replays (variant 0: per query head; 9: tensor-core streaming)\n");
    /* Batch 64 over the engine bench's contexts (128 in + 128 out). */
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 1, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 2, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 16, 1, 9); /* fixed cost: one 16-key block per kv head */
    BENCH_DECODE(r, 32, 8, 128, 64, 128, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 256, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 192, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 256, 1, 9);
    BENCH_DECODE(r, 32, 8, 64, 64, 192, 1, 9);
    BENCH_DECODE(r, 32, 32, 128, 64, 192, 1, 0, 9); /* no grouping (32 kv heads) */
    BENCH_DECODE(r, 64, 8, 128, 64, 192, 1, 0, 9);  /* 8 query heads per kv head */
    /* Split choices at longer contexts. */
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 2, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 1, 9);
    /* Small batches. */
    BENCH_DECODE(r, 32, 8, 128, 1, 256, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 256, 8, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 256, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 256, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 16, 192, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 16, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 8, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 16384, 32, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 4096, 32, 0, 9);
}

/* cuda_gemm: bf16 operands, fp32 accumulation, against a double reference. */
static void test_gemm_case(struct cuda_backend *b, int M, int N, int K)
{
    uint16_t *w = malloc((size_t)N * K * 2), *x = malloc((size_t)M * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = gt_f2bf(gt_normal());
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, (size_t)N * K * 2), *dx = gt_up(x, (size_t)M * K * 2);
    float *dy = gt_dev((size_t)M * N * 4), *y = malloc((size_t)M * N * 4);
    int rc = b->plan.gemv && M > 1 && M <= SK_GEMV_MAX_ROWS && K % 8 == 0
                 ? (sk_gemv(dw, dx, dy, M, N, K, b->stream) == cudaSuccess ? 0 : -1)
                 : cuda_gemm(b, dw, dx, dy, M, N, K);
    gt_down(y, dy, (size_t)M * N * 4);
    double *ref = malloc((size_t)M * N * 8);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)gt_bf2f(x[(size_t)m * K + k]) * gt_bf2f(w[(size_t)n * K + k]);
            ref[(size_t)m * N + n] = s;
        }
    double e = gt_rel_err(y, ref, (size_t)M * N);
    /* Operands are exact bf16; only fp32 accumulation rounding remains. */
    GT_CHECK(rc == 0 && e < 1e-4, "gemm M=%d N=%d K=%d rel err %.2e %s", M, N, K, e, rc ? b->base.error : "");
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    free(w);
    free(x);
    free(y);
    free(ref);
}

/* Times one product over rotating weight copies (more than L2) and prints GB/s of weights. */
static void run_cuda_gemm(const struct product_bench *pb, int i, void *b)
{
    cuda_gemm(b, product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in);
}

static void run_gemv(const struct product_bench *pb, int i, void *b)
{
    GT_CUDA(sk_gemv(product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in,
                    ((struct cuda_backend *)b)->stream));
}

static void bench_gemm(struct cuda_backend *b, int rows, int N, int K)
{
    const int iters = 20;
    struct product_bench pb;
    product_bench_init(&pb, rows, N, K);
    b->plan.gemv = false;
    const float ms[2] = {product_bench_ms(&pb, b->stream, iters, run_cuda_gemm, b),
                         product_bench_ms(&pb, b->stream, iters, run_gemv, b)};
    b->plan.gemv = true;
    const size_t wn = pb.wn;
    printf("  bench gemm rows=%d N=%d K=%d: cublas %.1f us (%.0f GB/s), gemv %.1f us (%.0f GB/s)\n", rows, N, K,
           ms[0] * 1e3, wn * 2 / (ms[0] * 1e6), ms[1] * 1e3, wn * 2 / (ms[1] * 1e6));
    product_bench_free(&pb);
}

static void test_gemm(void)
{
    printf("gemm (cuBLAS bf16, fp32 compute)\n");
    struct cuda_backend b;
    if (!bare_backend_open(&b)) return;
    test_gemm_case(&b, 1, 4096, 4096);
    test_gemm_case(&b, 37, 1000, 768);
    test_gemm_case(&b, 5, 172, 64);
    test_gemm_case(&b, 130, 344, 8);
    printf("gemv (own kernel, rows <= 8)\n");
    b.plan.gemv = true;
    for (int m = 1; m <= 8; m++) test_gemm_case(&b, m, m < 4 ? 4096 : 1000, m < 4 ? 4096 : 768);
    test_gemm_case(&b, 3, 6144, 4096);
    test_gemm_case(&b, 2, 5, 64);
    test_gemm_case(&b, 1, 344, 8);
    /* Shapes it does not take go to cuBLAS. */
    test_gemm_case(&b, 2, 172, 172);
    test_gemm_case(&b, 9, 100, 64);
    GT_CHECK(sk_gemv(NULL, NULL, NULL, 9, 10, 64, 0) == cudaErrorInvalidValue, "gemv refuses 9 rows");
    (void)cudaGetLastError();
    printf("bench gemm at decode shapes (Llama-3-8B), cuBLAS vs own gemv\n");
    int shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int rows = 1; rows <= 8; rows *= 8) bench_gemm(&b, rows, shapes[i][0], shapes[i][1]);
    bare_backend_close(&b);
}

/* Sampling: the GPU kernels against sampler_sample (the CPU reference) row by row. */
static void test_sampling(int V)
{
    printf("sampling V=%d\n", V);
    struct sampling_params sps[] = {
        {.temperature = 0.0f, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .logprobs = 5},
        {.temperature = 0.0f,
         .top_p = 1,
         .top_k = 0,
         .repetition_penalty = 1.3f,
         .presence_penalty = 0.5f,
         .frequency_penalty = 0.7f,
         .logprobs = 20},
        {.temperature = 1.0f, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .seed = 1, .logprobs = -1},
        {.temperature = 0.7f, .top_p = 0.9f, .top_k = 0, .repetition_penalty = 1, .seed = 2, .logprobs = 0},
        {.temperature = 1.3f, .top_p = 1, .top_k = 40, .repetition_penalty = 1, .seed = 3, .logprobs = 3},
        {.temperature = 0.9f,
         .top_p = 0.5f,
         .top_k = 100,
         .min_p = 0.05f,
         .repetition_penalty = 1.1f,
         .seed = 4,
         .logprobs = 1},
        {.temperature = 1.0f,
         .top_p = 1,
         .top_k = 0,
         .min_p = 0.1f,
         .repetition_penalty = 1,
         .presence_penalty = -0.5f,
         .seed = 5,
         .logprobs = -1},
        {.temperature = 2.0f,
         .top_p = 0.99f,
         .top_k = 0,
         .repetition_penalty = 0.8f,
         .frequency_penalty = 1.0f,
         .seed = 6,
         .logprobs = 2},
        {.temperature = 1.0f, .top_p = 0.95f, .top_k = 1, .repetition_penalty = 1, .seed = 7, .logprobs = -1},
    };
    const int R0 = sizeof sps / sizeof sps[0], rounds = 8, R = R0 * rounds;
    float *logits = malloc((size_t)R * V * 4);
    for (size_t i = 0; i < (size_t)R * V; i++) logits[i] = gt_normal() * 3.0f;
    /* Ties: a few rows with repeated maxima. */
    for (int r = 0; r < R; r += 5) {
        logits[(size_t)r * V + 7] = 20.0f;
        logits[(size_t)r * V + 3] = 20.0f;
    }
    const int NH = 300;
    int32_t *hist = malloc((size_t)R * NH * 4);
    for (int i = 0; i < R * NH; i++) hist[i] = gt_int(V < 50 ? V : 50) * (V / 50 > 0 ? V / 50 : 1);
    struct sk_sample_row *rows = calloc(R, sizeof *rows);
    struct batch_seq *seqs = calloc(R, sizeof *seqs);
    struct sampling_params *rsp = calloc(R, sizeof *rsp);
    for (int r = 0; r < R; r++) {
        rsp[r] = sps[r % R0];
        rsp[r].seed = rsp[r].seed * 1000003ull + (uint64_t)r;
        struct sk_sample_row *w = &rows[r];
        w->temperature = rsp[r].temperature;
        w->top_p = rsp[r].top_p;
        w->min_p = rsp[r].min_p;
        w->rep_penalty = rsp[r].repetition_penalty;
        w->presence = rsp[r].presence_penalty;
        w->frequency = rsp[r].frequency_penalty;
        w->top_k = rsp[r].top_k;
        w->n_logprobs = rsp[r].logprobs;
        w->seed = rsp[r].seed;
        w->n_generated = (uint64_t)r * 3;
        w->hist_off = r * NH;
        w->n_history = NH - r % 7;
        w->n_output = 100 + r % 50;
        w->mask_off = -1;
        seqs[r].sample = true;
        seqs[r].sampling = &rsp[r];
        seqs[r].n_generated = w->n_generated;
        seqs[r].history = hist + r * NH;
        seqs[r].n_history = w->n_history;
        seqs[r].n_output = w->n_output;
    }
    float *dlog = gt_up(logits, (size_t)R * V * 4), *dwork = gt_dev((size_t)R * V * 4),
          *dsw = gt_dev((size_t)R * V * 4);
    int32_t *dhist = gt_up(hist, (size_t)R * NH * 4), *dcounts = gt_dev((size_t)R * V * 4),
            *dids = gt_dev((size_t)R * V * 4), *dsid = gt_dev((size_t)R * V * 4), *doff = gt_dev((R + 1) * 4);
    struct sk_sample_row *drows = gt_up(rows, R * sizeof *rows);
    struct sk_sample_out *dout = gt_dev(R * sizeof *dout), *out = malloc(R * sizeof *out);
    size_t tb = 0;
    GT_CUDA(sk_sort_temp_bytes(R, V, &tb));
    void *dtemp = gt_dev(tb);
    GT_CUDA(sk_fill_iota_rows(dids, R, V, 0));
    GT_CUDA(sk_fill_row_offsets(doff, R, V, 0));
    GT_CUDA(sk_sample_prepare(dlog, drows, dhist, NULL, dwork, dcounts, dout, R, V, 0));
    GT_CUDA(sk_sample_sort(dtemp, tb, dwork, dids, doff, dsw, dsid, R, V, 0));
    GT_CUDA(sk_sample_finish(dlog, dwork, dsw, dsid, 1, drows, dout, R, V, 0));
    gt_down(out, dout, R * sizeof *out);

    /* Penalized logits (greedy rows with penalties keep them in work; those without take the raw
     * argmax and leave work alone) against sampler_penalize. */
    float *work = malloc((size_t)R * V * 4), *scratch = malloc(sampler_scratch_floats(V) * 4);
    gt_down(work, dwork, (size_t)R * V * 4);
    long pen_bad = 0, pen_rows = 0;
    for (int r = 0; r < R; r++) {
        if (rsp[r].temperature > SAMPLER_GREEDY_EPS || !sampling_uses_history(&rsp[r])) continue;
        sampler_penalize(logits + (size_t)r * V, V, &seqs[r], scratch);
        pen_bad += memcmp(scratch, work + (size_t)r * V, (size_t)V * 4) != 0;
        pen_rows++;
    }
    GT_CHECK(pen_bad == 0 && pen_rows > 0, "penalties match sampler_penalize bit for bit (%ld of %ld rows differ)",
             pen_bad, pen_rows);

    int tok_bad = 0, top_bad = 0;
    double lp_err = 0;
    for (int r = 0; r < R; r++) {
        struct sample_result ref;
        memset(&ref, 0, sizeof ref);
        sampler_sample(logits + (size_t)r * V, V, &seqs[r], scratch, &ref);
        if (ref.token != out[r].token) {
            tok_bad++;
            printf("    row %d (T=%.2f p=%.2f k=%d minp=%.2f): cpu %d gpu %d\n", r, rsp[r].temperature, rsp[r].top_p,
                   rsp[r].top_k, rsp[r].min_p, ref.token, out[r].token);
        }
        double d = fabs((double)ref.logprob - out[r].logprob);
        if (d > lp_err) lp_err = d;
        if (ref.n_top != out[r].n_top) top_bad++;
        for (int k = 0; k < ref.n_top && k < out[r].n_top; k++) {
            if (ref.top_ids[k] != out[r].top_ids[k]) top_bad++;
            d = fabs((double)ref.top_logprobs[k] - out[r].top_logprobs[k]);
            if (d > lp_err) lp_err = d;
        }
    }
    GT_CHECK(tok_bad == 0, "sampled tokens equal the CPU sampler's (%d of %d rows differ)", tok_bad, R);
    GT_CHECK(top_bad == 0, "top logprob ids equal (%d differences)", top_bad);
    GT_CHECK(lp_err < 1e-4, "logprobs within 1e-4 (max diff %.2e)", lp_err);

    cudaFree(dlog);
    cudaFree(dwork);
    cudaFree(dsw);
    cudaFree(dhist);
    cudaFree(dcounts);
    cudaFree(dids);
    cudaFree(dsid);
    cudaFree(doff);
    cudaFree(drows);
    cudaFree(dout);
    cudaFree(dtemp);
    free(logits);
    free(hist);
    free(rows);
    free(seqs);
    free(rsp);
    free(out);
    free(work);
    free(scratch);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    /* SLUICE_GPU_ONLY=attention: the attention tests and decode-attention benches alone;
     * =attention_qkv: sk_attention_decode_qkv's tests alone (e.g. under compute-sanitizer);
     * =attention_window: the soft-capping and sliding-window cases alone (likewise). */
    const char *only = getenv("SLUICE_GPU_ONLY");
    const int all = !(only && !strcmp(only, "attention"));
    if (only && !strcmp(only, "attention_qkv")) {
        test_attention_decode_qkv_shapes();
        test_attention_decode_qkv_windows();
        return gt_finish();
    }
    if (only && !strcmp(only, "attention_window")) {
        attention_window_cases(&shipped);
        test_attention_decode_qkv_windows();
        return gt_finish();
    }
    const char *prof = getenv("SLUICE_ATTN_PROFILE");
    if (prof && *prof && *prof != '0') {
        struct attn_runner once = shipped;
        once.profile = 1;
        BENCH_DECODE(&once, 32, 8, 128, 64, 192, 1, 0, 9);
        BENCH_DECODE(&once, 32, 8, 128, 1, 16384, 32, 0, 9);
        return gt_finish();
    }
    if (all) {
        test_convert_and_dummy();
        test_embed_norm_silu();
        test_rmsnorm_widths();
        test_rmsnorm_parts();
        printf("silu_mul\n");
        test_silu_variants(37, 11008);
        test_silu_variants(5, 172);
        test_silu_variants(3, 640);
        printf("qkv_post\n");
        test_qkv_post_case(32, 8, 128, 0, 0, 0);
        test_qkv_post_case(16, 4, 64, 1, 1, 0);
        test_qkv_post_case(8, 8, 128, 0, 1, 1);
        test_qkv_post_case(8, 4, 8, 0, 0, 1);
        test_qkv_post_case(6, 2, 80, 1, 0, 1);
        test_qkv_post_case(4, 2, 128, 1, 1, 1);
        {
            struct sk_qkv_params p = {.n_tokens = 1, .n_heads = 2, .n_kv_heads = 1, .head_dim = 8, .eps = 1e-6f};
            float *d = gt_dev(1 << 12);
            GT_CHECK(sk_qkv_post_parts(d, 0, 32, NULL, NULL, NULL, d, NULL, NULL, d, NULL, NULL, p, 0) ==
                             cudaErrorInvalidValue &&
                         sk_qkv_post_parts(d, SK_HOPPER_MAX_SPLITS + 1, 32, NULL, NULL, NULL, d, NULL, NULL, d, NULL,
                                           NULL, p, 0) == cudaErrorInvalidValue &&
                         sk_qkv_post_parts(d, 2, 31, NULL, NULL, NULL, d, NULL, NULL, d, NULL, NULL, p, 0) ==
                             cudaErrorInvalidValue,
                     "qkv_post_parts refuses 0 or %d parts and parts that overlap a token", SK_HOPPER_MAX_SPLITS + 1);
            cudaFree(d);
        }
    }
    test_attention();
    if (all) {
        test_gemm();
        test_sampling(1000);
        test_sampling(1001); /* rows not a multiple of 4 floats: the scalar loop */
        test_sampling(32000);
        test_sampling(151936);
    }
    printf("bench\n");
    if (all) {
        bench_prefill_attention(32, 8, 128, 2048, 0, 0);
        bench_prefill_attention(32, 8, 128, 8192, 0, 0);
        bench_prefill_attention(32, 8, 64, 2048, 0, 0);
        bench_prefill_attention(32, 8, 128, 8192, 0, 4096); /* Mistral's window */
        bench_prefill_attention(32, 8, 128, 2048, 50, 0);   /* a cap alone */
    }
    if (!getenv("SLUICE_ATTN_NOBENCH")) bench_attention(&shipped); /* e.g. under compute-sanitizer */
    return gt_finish();
}
