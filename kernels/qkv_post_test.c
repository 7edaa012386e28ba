/* sk_qkv_post and sk_qkv_post_parts (kernels/qkv_post.cu), qkv's epilogue, against a double
 * reference on random inputs: bias, q/k norm, rope in both layouts and the cache writes at
 * scattered slots (q within 1e-3, the bf16 caches within 1e-2 relative error); the same from qkv in
 * split parts bit for bit; the refusals of part counts and strides it cannot take; and rope
 * frequencies chosen per sequence, which must give each token exactly what the static path gives
 * it with its sequence's table; and an FP8 cache's codes (--kv-cache-dtype fp8), which must be the
 * CPU's fp8_e4m3_from_f32(value / scale) bit for bit on every kind of value. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"
#include "worker/model/fp8.h"

#define BF_TOL 1e-2

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

/* Part counts and a part stride that sk_qkv_post_parts cannot take. */
static void test_qkv_post_parts_refusals(void)
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

/* Tokens of three sequences, each with its own frequencies: every token's q and k equal, bit for
 * bit, what the static path gives with its sequence's table alone. */
static void test_qkv_post_seq_freqs(int D)
{
    const int T = 12, nh = 4, nkv = 2, nall = nh + 2 * nkv, S = 3, half = D / 2;
    const size_t qkvn = (size_t)T * nall * D, cache_n = (size_t)4 * nkv * 16 * D;
    float *qkv = malloc(qkvn * 4), *freqs = malloc((size_t)S * half * 4);
    int32_t pos[12], slot[12], seq[12];
    for (size_t i = 0; i < qkvn; i++) qkv[i] = gt_normal();
    for (int s = 0; s < S; s++)
        for (int i = 0; i < half; i++) freqs[s * half + i] = (float)(pow(10000.0 * (1 + 3 * s), -2.0 * i / D));
    for (int t = 0; t < T; t++) pos[t] = 30 + 7 * t, slot[t] = t, seq[t] = (t * 5) % S;
    float *dqkv = gt_up(qkv, qkvn * 4), *dfreqs = gt_up(freqs, (size_t)S * half * 4);
    int32_t *dpos = gt_up(pos, sizeof pos), *dslot = gt_up(slot, sizeof slot), *dseq = gt_up(seq, sizeof seq);
    float *dq = gt_dev((size_t)T * nh * D * 4);
    uint16_t *dk = gt_dev(cache_n * 2), *dv = gt_dev(cache_n * 2);
    float *q_mixed = malloc((size_t)T * nh * D * 4), *q_alone = malloc((size_t)T * nh * D * 4);
    uint16_t *k_mixed = malloc(cache_n * 2), *k_alone = malloc(cache_n * 2);
    struct sk_qkv_params p = {.n_tokens = T, .n_heads = nh, .n_kv_heads = nkv, .head_dim = D, .eps = 1e-6f,
                              .seq_freqs = dfreqs, .token_seq = dseq};
    GT_CUDA(sk_qkv_post(dqkv, NULL, NULL, NULL, dfreqs + half /* ignored */, dpos, dslot, dq, dk, dv, p, 0));
    gt_down(q_mixed, dq, (size_t)T * nh * D * 4);
    gt_down(k_mixed, dk, cache_n * 2);
    int bad = 0, moved = 0;
    for (int s = 0; s < S; s++) {
        struct sk_qkv_params ps = p;
        ps.seq_freqs = NULL;
        GT_CUDA(sk_qkv_post(dqkv, NULL, NULL, NULL, dfreqs + (size_t)s * half, dpos, dslot, dq, dk, dv, ps, 0));
        gt_down(q_alone, dq, (size_t)T * nh * D * 4);
        gt_down(k_alone, dk, cache_n * 2);
        for (int t = 0; t < T; t++) {
            const size_t qa = (size_t)t * nh * D, ka = ((size_t)(slot[t] / 16) * nkv * 16 + slot[t] % 16) * D;
            const bool same_q = !memcmp(q_mixed + qa, q_alone + qa, (size_t)nh * D * 4);
            if (seq[t] == s) bad += !same_q || memcmp(k_mixed + ka, k_alone + ka, (size_t)D * 2);
            else moved += !same_q; /* another table rotates it differently */
        }
    }
    GT_CHECK(bad == 0 && moved > 0,
             "qkv_post D=%d with per-sequence rope frequencies: each token's q and k equal the static path's with its "
             "sequence's table (%d differ; %d of the other tables' rotations differ, as they must)", D, bad, moved);
    free(qkv), free(freqs), free(q_mixed), free(q_alone), free(k_mixed), free(k_alone);
    cudaFree(dqkv), cudaFree(dfreqs), cudaFree(dpos), cudaFree(dslot), cudaFree(dseq), cudaFree(dq), cudaFree(dk);
    cudaFree(dv);
}

/* The FP8 cache's codes: k and v written through qkv_post at position 0 (no rotation, no norm, no
 * bias: k and v reach the cache as given) must be fp8_e4m3_from_f32(x / scale) bit for bit, the
 * CPU's rounding (tests/unit/backend/test_cpu_kv_fp8.c checks it against a search over the
 * codes), over every code's value, the midpoints between neighbours (ties to even) and a step
 * either side of them, subnormals, values past 448 and, in v, infinities and NaN. head_dim 128
 * takes the 16-byte path, 8 and 80 the scalar one; a scale of 1 and one that is no power of two. */
static void test_qkv_post_fp8_codes(int D, float scale)
{
    float vals[2048];
    int n = 0;
    for (int c = 0; c < 127; c++) {
        const float a = fp8_e4m3_to_f32((uint8_t)c), b = c < 126 ? fp8_e4m3_to_f32((uint8_t)(c + 1)) : 480.0f;
        const float mid = (float)(((double)a + (double)b) / 2);
        const float xs[] = {a, mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int i = 0; i < 4; i++) {
            vals[n++] = xs[i] * scale;
            vals[n++] = -xs[i] * scale;
        }
    }
    const float far[] = {449.0f, 464.0f, 1e6f, 3e38f, 1e-30f, -1e-30f, 0.0f, -0.0f};
    for (int i = 0; i < 8; i++) vals[n++] = far[i];
    const int nh = 1, nkv = 1, nall = nh + 2 * nkv, T = (n + D - 1) / D, nblocks = (T + 15) / 16;
    const size_t qkvn = (size_t)T * nall * D, cache_n = (size_t)nblocks * nkv * 16 * D;
    float *qkv = calloc(qkvn, 4), *inv = malloc(D / 2 * 4);
    int32_t *pos = calloc(T, 4), *slot = malloc((size_t)T * 4);
    for (int i = 0; i < D / 2; i++) inv[i] = 0.5f;
    for (int t = 0; t < T; t++) slot[t] = t;
    /* Token t's k and v hold values t D .. t D + D - 1 (zeros past n); v also infinities and NaN.
     * k's -0 becomes +0 (its rotation by angle 0 adds a +0 product: -0 + +0 is +0). */
    for (int i = 0; i < T * D; i++) {
        const float x = i < n ? vals[i] : 0.0f;
        qkv[(size_t)(i / D) * nall * D + (size_t)nh * D + i % D] = x == 0.0f ? 0.0f : x;
        qkv[(size_t)(i / D) * nall * D + (size_t)(nh + nkv) * D + i % D] =
            i % 97 == 1 ? INFINITY : i % 97 == 2 ? -INFINITY : i % 97 == 3 ? NAN : x;
    }
    float *dqkv = gt_up(qkv, qkvn * 4), *dinv = gt_up(inv, D / 2 * 4), *dq = gt_dev((size_t)T * nh * D * 4);
    int32_t *dpos = gt_up(pos, (size_t)T * 4), *dslot = gt_up(slot, (size_t)T * 4);
    uint8_t *dk = gt_dev(cache_n), *dv = gt_dev(cache_n), *k = malloc(cache_n), *v = malloc(cache_n);
    struct sk_qkv_params p = {.n_tokens = T, .n_heads = nh, .n_kv_heads = nkv, .head_dim = D, .eps = 1e-6f,
                              .kv_fp8 = 1, .k_scale = scale, .v_scale = scale};
    GT_CUDA(sk_qkv_post(dqkv, NULL, NULL, NULL, dinv, dpos, dslot, dq, dk, dv, p, 0));
    gt_down(k, dk, cache_n);
    gt_down(v, dv, cache_n);
    int bad = 0;
    char first[160] = "";
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D; i++) {
            const size_t src = (size_t)t * nall * D, at = (size_t)t * D + i; /* slot t of block 0.. */
            const float xk = qkv[src + (size_t)nh * D + i], xv = qkv[src + (size_t)(nh + nkv) * D + i];
            /* v is its sum plus the bias or +0, as the kernel adds it: -0 is stored as +0. */
            const uint8_t wk = fp8_e4m3_from_f32(xk / scale), wv = fp8_e4m3_from_f32((xv + 0.0f) / scale);
            if (k[at] != wk || v[at] != wv) {
                if (!bad++)
                    snprintf(first, sizeof first, "; first: k %.9g -> 0x%02x (CPU 0x%02x), v %.9g -> 0x%02x (CPU 0x%02x)",
                             (double)xk, k[at], wk, (double)xv, v[at], wv);
            }
        }
    GT_CHECK(bad == 0, "qkv_post D=%d into an FP8 cache, scale %g: %d of %d codes differ from the CPU's rounding%s", D,
             (double)scale, bad, 2 * T * D, first);
    struct sk_qkv_params no_scale = p;
    no_scale.v_scale = 0.0f;
    GT_CHECK(sk_qkv_post(dqkv, NULL, NULL, NULL, dinv, dpos, dslot, dq, dk, dv, no_scale, 0) == cudaErrorInvalidValue,
             "qkv_post refuses an FP8 cache without a positive scale");
    free(qkv), free(inv), free(pos), free(slot), free(k), free(v);
    cudaFree(dqkv), cudaFree(dinv), cudaFree(dq), cudaFree(dpos), cudaFree(dslot), cudaFree(dk), cudaFree(dv);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    printf("qkv_post\n");
    test_qkv_post_case(32, 8, 128, 0, 0, 0);
    test_qkv_post_case(16, 4, 64, 1, 1, 0);
    test_qkv_post_case(8, 8, 128, 0, 1, 1);
    test_qkv_post_case(8, 4, 8, 0, 0, 1);
    test_qkv_post_case(6, 2, 80, 1, 0, 1);
    test_qkv_post_case(4, 2, 128, 1, 1, 1);
    test_qkv_post_parts_refusals();
    test_qkv_post_seq_freqs(64);
    test_qkv_post_seq_freqs(128);
    test_qkv_post_fp8_codes(128, 1.0f);
    test_qkv_post_fp8_codes(128, 0.3f);
    test_qkv_post_fp8_codes(8, 1.0f);
    test_qkv_post_fp8_codes(80, 0.3f);
    return gt_finish();
}
