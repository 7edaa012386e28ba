/* sk_add_rmsnorm and sk_add_rmsnorm_parts (kernels/add_rmsnorm.cu) against CPU references on
 * random inputs, outputs poisoned first: the norm at the widths that take each path, with and
 * without a residual, all rows or gathered ones (bf16 output within 1e-2 relative error, the
 * residual stored back exactly); a split product's parts added by the norm, bit for bit the norm
 * of their sum; the refusals of part counts and strides it cannot take; and the parts added
 * without a norm (OLMo 2's layers), x their exact sum and y its bf16; the norm that also leaves y
 * in the block GEMV's int8 (sk_add_rmsnorm_parts_q8) against the plain norm and a CPU
 * quantization of its y, bit for bit, and the GEMV's own quantizer against the same. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

#define BF_TOL 1e-2

/* RMSNorm at the widths that take each path: the register-held rows (hidden % 4 == 0, up to
 * 16384), the generic loop beyond or otherwise, with and without a residual, all rows or
 * gathered ones. The output rows are poisoned first. */
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

/* sk_add_rmsnorm_parts with no norm weights (OLMo 2's layers): x += the parts, y = bf16(x). */
static void test_add_no_norm(int n_parts, int T, int H)
{
    const size_t n = (size_t)T * H;
    float *x = malloc(n * 4), *parts = malloc(n * n_parts * 4), *xo = malloc(n * 4);
    uint16_t *y = malloc(n * 2);
    for (size_t i = 0; i < n; i++) x[i] = gt_normal();
    for (size_t i = 0; i < n * n_parts; i++) parts[i] = gt_normal();
    float *dx = gt_up(x, n * 4), *dp = gt_up(parts, n * n_parts * 4);
    uint16_t *dy = gt_dev(n * 2);
    GT_CUDA(sk_add_rmsnorm_parts(dx, dp, n_parts, (int64_t)n, NULL, NULL, dy, T, H, 1e-6f, 0));
    gt_down(xo, dx, n * 4);
    gt_down(y, dy, n * 2);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float v = 0.0f;
        for (int j = 0; j < n_parts; j++) v += parts[(size_t)j * n + i];
        v = x[i] + v; /* the residual plus the parts' sum, as the norm kernels add them */
        bad += xo[i] != v || fabsf(gt_bf2f(y[i]) - v) > fabsf(v) / 256.0f;
    }
    GT_CHECK(bad == 0, "sk_add_rmsnorm_parts without a norm, %d part(s), %d x %d: x is the sum and y its bf16 (%d off)",
             n_parts, T, H, bad);
    free(x), free(parts), free(xo), free(y);
    cudaFree(dx), cudaFree(dp), cudaFree(dy);
}

/* The block GEMV's int8 form of bf16 rows (kernels/q8_act.cuh) computed here: per 32 values
 * sx = max|v| / 127, quants round-half-even of v / sx, and the pair (sx, sx * their sum). */
static void cpu_q8(const uint16_t *y, int rows, int H, int8_t *q, float *pairs)
{
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < H / 32; g++) {
            const uint16_t *v = y + (size_t)r * H + 32 * g;
            float amax = 0.0f;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(gt_bf2f(v[i])));
            const float sx = amax / 127.0f;
            int sum = 0;
            for (int i = 0; i < 32; i++) {
                const int qi = amax > 0.0f ? (int)nearbyintf(gt_bf2f(v[i]) / sx) : 0;
                q[(size_t)r * H + 32 * g + i] = (int8_t)qi;
                sum += qi;
            }
            pairs[2 * ((size_t)r * (H / 32) + g)] = sx;
            pairs[2 * ((size_t)r * (H / 32) + g) + 1] = sx * (float)sum;
        }
}

/* sk_add_rmsnorm_parts_q8 over T rows of H in P parts: x and y as the plain norm leaves them, the
 * scratch's quants and pairs as cpu_q8 gives them from that y and as sk_gemv_q_quantize_x leaves
 * them. Rows held in registers, in parts, and the wide or many-part rows of the generic kernel. */
static void test_norm_q8(int T, int H, int P)
{
    const size_t n = (size_t)T * H, nq = (size_t)T * H, np = (size_t)T * (H / 32) * 2;
    float *x = malloc(n * 4), *parts = malloc(n * P * 4), *w = malloc(H * 4);
    float *xa = malloc(n * 4), *xb = malloc(n * 4), *pa = malloc(np * 4), *pb = malloc(np * 4), *pc = malloc(np * 4);
    uint16_t *ya = malloc(n * 2), *yb = malloc(n * 2);
    int8_t *qa = malloc(nq), *qb = malloc(nq), *qc = malloc(nq);
    for (size_t i = 0; i < n; i++) x[i] = gt_normal();
    for (size_t i = 0; i < n * P; i++) parts[i] = gt_normal();
    for (int i = 0; i < H; i++) w[i] = 1.0f + 0.1f * gt_normal();
    if (H >= 64) /* a group of zeros: its scale 0 and its quants 0 */
        for (int i = 0; i < 32; i++) x[32 + i] = 0.0f, w[32 + i] = 0.0f;
    const size_t sbytes = sk_gemv_q_scratch_bytes(H);
    float *dx = gt_dev(n * 4), *dparts = gt_up(parts, n * P * 4), *dw = gt_up(w, H * 4);
    uint16_t *dy = gt_dev(n * 2);
    unsigned char *ds = gt_dev(sbytes);
    const size_t pairs_at = (size_t)SK_GEMV_Q_X_ROWS * H;
    /* The plain norm, then the GEMV's quantizer on its y. */
    GT_CUDA(cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice));
    GT_CUDA(sk_add_rmsnorm_parts(dx, dparts, P, (int64_t)n, NULL, dw, dy, T, H, 1e-6f, 0));
    GT_CUDA(cudaMemset(ds, 0x5a, sbytes));
    GT_CUDA(sk_gemv_q_quantize_x(dy, H, T, H, ds, 0));
    gt_down(xa, dx, n * 4);
    gt_down(ya, dy, n * 2);
    gt_down(qa, ds, nq);
    gt_down(pa, ds + pairs_at, np * 4);
    /* The fused norm, outputs poisoned first. */
    GT_CUDA(cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice));
    GT_CUDA(cudaMemset(dy, 0xff, n * 2));
    GT_CUDA(cudaMemset(ds, 0x5a, sbytes));
    GT_CUDA(sk_add_rmsnorm_parts_q8(dx, dparts, P, (int64_t)n, dw, dy, ds, T, H, 1e-6f, 0));
    gt_down(xb, dx, n * 4);
    gt_down(yb, dy, n * 2);
    gt_down(qb, ds, nq);
    gt_down(pb, ds + pairs_at, np * 4);
    cpu_q8(ya, T, H, qc, pc);
    int nonzero = 0;
    for (size_t i = 0; i < nq; i++) nonzero += qc[i] != 0;
    GT_CHECK(!memcmp(xa, xb, n * 4) && !memcmp(ya, yb, n * 2),
             "q8 norm [%d x %d], %d part(s): x and y as the plain norm's, bit for bit", T, H, P);
    GT_CHECK(!memcmp(qb, qc, nq) && !memcmp(pb, pc, np * 4) && nonzero > (int)(nq / 2),
             "q8 norm [%d x %d], %d part(s): quants and pairs as the CPU's from y, bit for bit (%d of %zu nonzero)",
             T, H, P, nonzero, nq);
    GT_CHECK(!memcmp(qa, qc, nq) && !memcmp(pa, pc, np * 4),
             "sk_gemv_q_quantize_x [%d x %d]: quants and pairs as the CPU's, bit for bit", T, H);
    free(x), free(parts), free(w), free(xa), free(xb), free(pa), free(pb), free(pc);
    free(ya), free(yb), free(qa), free(qb), free(qc);
    cudaFree(dx), cudaFree(dparts), cudaFree(dw), cudaFree(dy), cudaFree(ds);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_rmsnorm_widths();
    test_rmsnorm_parts();
    test_add_no_norm(1, 5, 96);
    test_add_no_norm(4, 7, 4096);
    printf("add_rmsnorm with the block GEMV's int8 x\n");
    test_norm_q8(1, 4096, 1);
    test_norm_q8(8, 4096, 1);
    test_norm_q8(1, 4096, 3);   /* parts, in registers */
    test_norm_q8(3, 5120, 2);   /* parts too wide for registers: the generic kernel and the quantizer */
    test_norm_q8(2, 32, 1);     /* one group, one warp */
    test_norm_q8(2, 16384, 1);  /* 1024 threads */
    test_norm_q8(2, 20480, 1);  /* past the registers: the generic kernel and the quantizer */
    {
        float *d = gt_dev(1 << 20);
        uint16_t *dy = gt_dev(1 << 16);
        GT_CHECK(sk_add_rmsnorm_parts_q8(d, d, 1, 64, d, dy, (char *)d + 8, 2, 64, 1e-6f, 0) == cudaErrorInvalidValue &&
                     sk_add_rmsnorm_parts_q8(d, d, 1, 48, d, dy, d, 2, 48, 1e-6f, 0) == cudaErrorInvalidValue &&
                     sk_add_rmsnorm_parts_q8(d, d, 1, 64, d, dy, d, SK_GEMV_Q_X_ROWS + 1, 64, 1e-6f, 0) ==
                         cudaErrorInvalidValue,
                 "sk_add_rmsnorm_parts_q8 refuses a misaligned scratch, a width not a multiple of 32, more than "
                 "%d rows",
                 SK_GEMV_Q_X_ROWS);
        cudaFree(d), cudaFree(dy);
    }
    return gt_finish();
}
