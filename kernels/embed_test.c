/* sk_embed (kernels/embed.cu) and what a layer does with its rows next, against CPU references on
 * random inputs: the embedding gather exact, rows of the previous step's sampler output included
 * (negative tokens, as a queued decode step gives them); sk_add_rmsnorm over the gathered rows,
 * the residual stored back exactly and the bf16 output within 1e-2 relative error, all rows and
 * gathered ones; then sk_silu_mul at Llama's intermediate width. The norm's and SiLU's other paths
 * are checked in add_rmsnorm_test.c and silu_mul_test.c. */
#include "tests/gpu/gpu_test.h"

#include "kernels/sluice_kernels.h"

#define BF_TOL 1e-2

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
    long bad = 0;
    /* A tensor-parallel rank's share of the rows: its ids' rows, zeros for the others', and the
     * shares' sum is the whole table's rows. */
    const int half = V / 2;
    float *sum = calloc((size_t)T * H, 4);
    for (int part = 0; part < 2; part++) {
        const int row0 = part ? half : 0, n_rows = part ? V - half : half;
        GT_CUDA(sk_embed(dx, dtable + (size_t)row0 * H, dtok, dprev, row0, n_rows, T, H, 0));
        gt_down(x, dx, (size_t)T * H * 4);
        for (int t = 0; t < T; t++) {
            const int mine = id[t] >= row0 && id[t] < row0 + n_rows;
            for (int i = 0; i < H; i++) {
                bad += x[(size_t)t * H + i] != (mine ? gt_bf2f(table[(size_t)id[t] * H + i]) : 0.0f);
                sum[(size_t)t * H + i] += x[(size_t)t * H + i];
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H; i++) bad += sum[(size_t)t * H + i] != gt_bf2f(table[(size_t)id[t] * H + i]);
    GT_CHECK(bad == 0, "a rank's share of the rows: its tokens' rows, zeros for the others', summing to the whole "
                       "(%ld mismatches)", bad);
    free(sum);
    GT_CUDA(sk_embed(dx, dtable, dtok, dprev, 0, V, T, H, 0));
    gt_down(x, dx, (size_t)T * H * 4);
    bad = 0;
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

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_embed_norm_silu();
    return gt_finish();
}
