/* The kernels of the families' additions against CPU references: sk_glu (SiLU and GELU-tanh,
 * with and without gate/up biases), sk_residual_addend (split parts, bias, post-norm and scale,
 * in place; and the embeddings' scaling), sk_logits_finish (Granite's divisor, Gemma 2's
 * soft-capping), and qkv_post with rope frequencies chosen per sequence, which must give each
 * token exactly what the static path gives it with its sequence's table. */
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

static void test_residual_addend(int n_parts, int with_bias, int with_norm, float scale, int T, int H)
{
    const size_t n = (size_t)T * H;
    float *parts = malloc(n * n_parts * 4), *bias = malloc((size_t)H * 4), *w = malloc((size_t)H * 4);
    float *out = malloc(n * 4);
    for (size_t i = 0; i < n * n_parts; i++) parts[i] = gt_normal();
    for (int i = 0; i < H; i++) bias[i] = 0.5f * gt_normal(), w[i] = 1.0f + 0.3f * gt_normal();
    float *dp = gt_up(parts, n * n_parts * 4), *db = gt_up(bias, (size_t)H * 4), *dw = gt_up(w, (size_t)H * 4);
    /* In place: out is the first part. */
    GT_CUDA(sk_residual_addend(dp, dp, n_parts, (int64_t)n, with_bias ? db : NULL, with_norm ? dw : NULL, scale, T, H,
                               1e-6f, 0));
    gt_down(out, dp, n * 4);
    double *ref = malloc(n * 8);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) {
            float v = 0.0f; /* the parts added in order in float, as the kernel adds them */
            for (int j = 0; j < n_parts; j++) v += parts[(size_t)j * n + (size_t)t * H + i];
            double x = (double)v + (with_bias ? bias[i] : 0.0);
            ref[(size_t)t * H + i] = x;
            ss += x * x;
        }
        const double inv = with_norm ? 1.0 / sqrt(ss / H + 1e-6) : 1.0;
        for (int i = 0; i < H; i++)
            ref[(size_t)t * H + i] *= (with_norm ? w[i] * inv : 1.0) * (scale == 0.0f ? 1.0 : scale);
    }
    const double err = gt_rel_err(out, ref, n);
    GT_CHECK(err < 1e-5, "sk_residual_addend %d part(s)%s%s, scale %g, %d x %d, in place: rel err %.2e vs double",
             n_parts, with_bias ? ", bias" : "", with_norm ? ", norm" : "", (double)scale, T, H, err);
    free(parts), free(bias), free(w), free(out), free(ref);
    cudaFree(dp), cudaFree(db), cudaFree(dw);
}

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
    for (int act = 0; act < 2; act++)
        for (int bias = 0; bias < 2; bias++) test_glu(act == 0 ? SK_ACT_SILU : SK_ACT_GELU_TANH, bias, 7, 1000);
    test_residual_addend(1, 1, 0, 0.0f, 5, 48);
    test_residual_addend(3, 0, 1, 0.0f, 9, 3584);
    test_residual_addend(2, 1, 1, 0.22f, 4, 4096);
    test_residual_addend(1, 0, 0, 59.87f, 3, 3584); /* the embeddings' scaling */
    test_logits_finish(8.0f, 0.0f);
    test_logits_finish(0.0f, 30.0f);
    test_logits_finish(2.5f, 30.0f);
    test_qkv_post_seq_freqs(64);
    test_qkv_post_seq_freqs(128);
    return gt_finish();
}
