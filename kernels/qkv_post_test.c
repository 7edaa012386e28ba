/* sk_qkv_post and sk_qkv_post_parts (kernels/qkv_post.cu), qkv's epilogue, against a double
 * reference on random inputs: bias, q/k norm, rope in both layouts and the cache writes at
 * scattered slots (q within 1e-3, the bf16 caches within 1e-2 relative error); the same from qkv in
 * split parts bit for bit; the refusals of part counts and strides it cannot take; and rope
 * frequencies chosen per sequence, which must give each token exactly what the static path gives
 * it with its sequence's table. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

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
    return gt_finish();
}
