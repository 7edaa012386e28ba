/* The GGUF block kernels (kernels/quant_dequant.cu, quant_gemv.cu and quant_embed.cu: one
 * program, as each type's random blocks serve all three) against worker/model/quant.c, the
 * bit-exact reference, on random blocks of every type they take: sk_dequant_bf16 must give
 * exactly the bf16 of quant.c's floats, and sk_gemv_q the fp32 product of quant.c's floats with x
 * (sums in another order only; on the int8-activation path of Q4_K, Q6_K and Q8_0, with x as that
 * path rounds it) for 1 to 13 rows, written at a column offset inside wider rows of y without
 * touching the columns around them; several matrices in one launch (sk_gemv_q_n) as one;
 * embedding rows (sk_embed_q) bit for bit. Shapes the kernels cannot take must be refused. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"
#include "worker/model/model.h"


/* x in int8 as the Q4_K dp4a path has it (per 32 values, sx = max|x| / 127 and round(x / sx)),
 * back in float: the activations that path multiplies. */
static void int8_activations(const uint16_t *x, float *out, int64_t n)
{
    for (int64_t b = 0; b < n; b += 32) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(gt_bf2f(x[b + i])));
        const float sx = amax / 127.0f;
        for (int i = 0; i < 32; i++) out[b + i] = amax > 0 ? sx * (float)lrintf(gt_bf2f(x[b + i]) / sx) : 0.0f;
    }
}

/* ref[r, j] = sum_k w[j, k] xf[r, k] in fp64. */
static void reference(const float *w, const float *xf, double *ref, int rows, int n_out, int k_in)
{
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < n_out; j++) {
            double s = 0;
            for (int k = 0; k < k_in; k++) s += (double)w[(int64_t)j * k_in + k] * xf[(int64_t)r * k_in + k];
            ref[(size_t)r * n_out + j] = s;
        }
}

/* sk_gemv_q at several row counts, y[r, col0 + j] in rows of ldy floats, the rest of each row left
 * alone; with scratch (Q4_K, Q6_K, Q8_0) the int8-activation path, checked against its own activations. */
static void check_products(enum dtype dt, const float *w, const void *dw, int n_out, int k_in, void *scratch)
{
    static const int row_counts[] = {1, 2, 3, 4, 5, 8, 13};
    const int col0 = 3, ldy = n_out + 7;
    const char *path = scratch ? "int8 activations, dp4a" : "bf16 activations";
    for (size_t rc = 0; rc < sizeof row_counts / sizeof row_counts[0]; rc++) {
        const int rows = row_counts[rc];
        const int64_t nx = (int64_t)rows * k_in;
        uint16_t *x = malloc((size_t)nx * 2);
        float *xf = malloc((size_t)nx * 4), *xi = malloc((size_t)nx * 4);
        for (int64_t i = 0; i < nx; i++) x[i] = gt_f2bf(gt_normal()), xf[i] = gt_bf2f(x[i]);
        int8_activations(x, xi, nx);
        double *ref = malloc((size_t)rows * n_out * sizeof *ref), *ref_x = malloc((size_t)rows * n_out * sizeof *ref);
        reference(w, scratch ? xi : xf, ref, rows, n_out, k_in);
        reference(w, xf, ref_x, rows, n_out, k_in);
        uint16_t *dx = gt_up(x, (size_t)nx * 2);
        float *dy = gt_dev((size_t)rows * ldy * 4); /* poisoned: NaN */
        GT_CUDA(sk_gemv_q((int)dt, dw, dx, k_in, dy + col0, ldy, rows, n_out, k_in, scratch, 0, 1, 0));
        float *hy = malloc((size_t)rows * ldy * 4), *got = malloc((size_t)rows * n_out * 4);
        gt_down(hy, dy, (size_t)rows * ldy * 4);
        int touched = 0;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < ldy; j++) {
                const float v = hy[(size_t)r * ldy + j];
                if (j >= col0 && j < col0 + n_out)
                    got[(size_t)r * n_out + j - col0] = v;
                else if (!isnan(v))
                    touched++;
            }
        double err = gt_rel_err(got, ref, (size_t)rows * n_out), worst_row = 0;
        int worst_at = 0;
        for (int r = 0; r < rows; r++) {
            double e = gt_rel_err(got + (size_t)r * n_out, ref + (size_t)r * n_out, (size_t)n_out);
            if (!(e <= worst_row)) worst_row = e, worst_at = r;
        }
        const double err_x = gt_rel_err(got, ref_x, (size_t)rows * n_out);
        int reuse_differs = 0;
        if (scratch && rows <= 8) {
            /* Again with x taken as already in the scratch (x_ready): the same bits. */
            float *dy2 = gt_dev((size_t)rows * ldy * 4), *hy2 = malloc((size_t)rows * ldy * 4);
            GT_CUDA(sk_gemv_q((int)dt, dw, dx, k_in, dy2 + col0, ldy, rows, n_out, k_in, scratch, 1, 1, 0));
            gt_down(hy2, dy2, (size_t)rows * ldy * 4);
            for (int r = 0; r < rows; r++)
                reuse_differs +=
                    memcmp(hy + (size_t)r * ldy + col0, hy2 + (size_t)r * ldy + col0, (size_t)n_out * 4) != 0;
            free(hy2);
            cudaFree(dy2);
        }
        GT_CHECK(err < 1e-4 && worst_row < 1e-4 && err_x < (scratch ? 2e-2 : 1e-4) && touched == 0 && !reuse_differs,
                 "sk_gemv_q (%s), %2d rows: rel err %.2e vs fp64 sums of quant.c's weights times the activations "
                 "it multiplies (worst row %d: %.2e), %.2e vs the bf16 activations; %d values written outside the "
                 "output columns; %d rows differ when the int8 activations are reused",
                 path, rows, err, worst_at, worst_row, err_x, touched, reuse_differs);
        free(x), free(xf), free(xi), free(ref), free(ref_x), free(hy), free(got);
        cudaFree(dx), cudaFree(dy);
    }
}

/* Three parts of the matrix as three matrices in one sk_gemv_q_n launch: the same bits as the
 * whole matrix in one sk_gemv_q. */
static void check_parts(enum dtype dt, const void *dw, int n_out, int k_in, void *scratch)
{
    const int rows = 3;
    const size_t row_bytes = (size_t)(k_in / dtype_block_elems(dt)) * dtype_block_bytes(dt);
    uint16_t *x = malloc((size_t)rows * k_in * 2);
    for (int64_t i = 0; i < (int64_t)rows * k_in; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dx = gt_up(x, (size_t)rows * k_in * 2);
    float *whole = gt_dev((size_t)rows * n_out * 4), *parts = gt_dev((size_t)rows * n_out * 4);
    const int n[3] = {20, 25, n_out - 45};
    const void *w[3] = {dw, (const unsigned char *)dw + 20 * row_bytes, (const unsigned char *)dw + 45 * row_bytes};
    GT_CUDA(sk_gemv_q((int)dt, dw, dx, k_in, whole, n_out, rows, n_out, k_in, scratch, 0, 1, 0));
    GT_CUDA(sk_gemv_q_n((int)dt, 3, w, n, dx, k_in, parts, n_out, rows, k_in, scratch, 0, 1, 0));
    float *a = malloc((size_t)rows * n_out * 4), *b = malloc((size_t)rows * n_out * 4);
    gt_down(a, whole, (size_t)rows * n_out * 4);
    gt_down(b, parts, (size_t)rows * n_out * 4);
    int differ = 0;
    for (int i = 0; i < rows * n_out; i++) differ += memcmp(a + i, b + i, 4) != 0;
    GT_CHECK(differ == 0,
             "sk_gemv_q_n (%s), rows of three matrices (20, 25, %d) in one launch: %d of %d values differ "
             "from the whole matrix's",
             scratch ? "int8 activations" : "bf16 activations", n_out - 45, differ, rows * n_out);
    free(x), free(a), free(b);
    cudaFree(dx), cudaFree(whole), cudaFree(parts);
}

/* sk_embed_q: rows of the matrix as embeddings, bit for bit quant.c's floats; a negative token
 * takes the sampled token of the step before. */
static void check_embed(enum dtype dt, const float *w, const void *dw, int n_rows, int hidden)
{
    int32_t tokens[5] = {0, n_rows - 1, 7, -2, 3};
    struct sk_sample_out prev[2];
    memset(prev, 0, sizeof prev);
    prev[1].token = 11; /* token -2 is row 1's sample */
    const int want[5] = {0, n_rows - 1, 7, 11, 3};
    int32_t *dt_tok = gt_up(tokens, sizeof tokens);
    struct sk_sample_out *dprev = gt_up(prev, sizeof prev);
    float *dx = gt_dev((size_t)5 * hidden * 4), *hx = malloc((size_t)5 * hidden * 4);
    GT_CUDA(sk_embed_q(dx, (int)dt, dw, dt_tok, dprev, 0, n_rows, 5, hidden, 0));
    gt_down(hx, dx, (size_t)5 * hidden * 4);
    int bad = 0;
    for (int t = 0; t < 5; t++)
        bad += memcmp(hx + (size_t)t * hidden, w + (size_t)want[t] * hidden, (size_t)hidden * 4) != 0;
    GT_CHECK(bad == 0,
             "sk_embed_q: %d of 5 rows differ from quant.c's (a negative token takes the step before's sample)", bad);
    /* A tensor-parallel rank holding rows 4 .. n_rows - 1: tokens 0 and 3 are another rank's. */
    const size_t row_bytes = (size_t)(hidden / dtype_block_elems(dt)) * dtype_block_bytes(dt);
    GT_CUDA(sk_embed_q(dx, (int)dt, (const uint8_t *)dw + 4 * row_bytes, dt_tok, dprev, 4, n_rows - 4, 5, hidden, 0));
    gt_down(hx, dx, (size_t)5 * hidden * 4);
    bad = 0;
    for (int t = 0; t < 5; t++)
        for (int i = 0; i < hidden; i++)
            bad += hx[(size_t)t * hidden + i] != (want[t] >= 4 ? w[(size_t)want[t] * hidden + i] : 0.0f);
    GT_CHECK(bad == 0, "sk_embed_q on a rank's rows: theirs exact, zeros for another rank's tokens (%d differ)", bad);
    free(hx);
    cudaFree(dt_tok), cudaFree(dprev), cudaFree(dx);
}

static void test_type(const struct gt_block_type *ty, int n_out, int k_in)
{
    const enum dtype dt = ty->dt;
    const char *name = dtype_name(dt);
    const int64_t n = (int64_t)n_out * k_in;
    printf("%s: %d x %d\n", name, n_out, k_in);
    GT_CHECK(sk_quant_supported((int)dt), "%s is taken by the block kernels", name);
    void *blocks = gt_random_blocks(dt, ty->at, ty->n, n);
    const size_t bytes = (size_t)(n / dtype_block_elems(dt)) * dtype_block_bytes(dt);
    float *w = malloc((size_t)n * 4);
    model_dequant(dt, blocks, w, n);
    void *dw = gt_up(blocks, bytes);

    /* Dequantization: bit for bit. */
    uint16_t *dq = gt_dev((size_t)n * 2), *hq = malloc((size_t)n * 2);
    GT_CUDA(sk_dequant_bf16((int)dt, dw, dq, n_out, k_in, 0));
    gt_down(hq, dq, (size_t)n * 2);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++)
        if (hq[i] != gt_f2bf(w[i]) && bad++ == 0) first = i;
    GT_CHECK(bad == 0, "sk_dequant_bf16 equals bf16(quant.c) bit for bit: %lld of %lld differ", (long long)bad,
             (long long)n);
    if (first >= 0)
        printf("        first at row %lld col %lld (block %lld, element %lld): got %a, want %a (%a before rounding)\n",
               (long long)(first / k_in), (long long)(first % k_in), (long long)(first / dtype_block_elems(dt)),
               (long long)(first % dtype_block_elems(dt)), gt_bf2f(hq[first]), gt_bf2f(gt_f2bf(w[first])), w[first]);

    check_products(dt, w, dw, n_out, k_in, NULL);
    check_parts(dt, dw, n_out, k_in, NULL);
    check_embed(dt, w, dw, n_out, k_in);
    if (sk_gemv_q_int8((int)dt)) {
        void *scratch = gt_dev(sk_gemv_q_scratch_bytes(k_in));
        check_products(dt, w, dw, n_out, k_in, scratch);
        check_parts(dt, dw, n_out, k_in, scratch);
        cudaFree(scratch);
    }

    /* What the kernels cannot take. */
    const int be = (int)dtype_block_elems(dt);
    GT_CHECK(sk_gemv_q((int)dt, dw, dq, k_in, (float *)dq, n_out, 1, n_out, k_in + be / 2, NULL, 0, 0, 0) ==
                 cudaErrorInvalidValue,
             "a row length not a whole number of blocks is refused");
    GT_CHECK(sk_dequant_bf16((int)dt, (unsigned char *)dw + 1, dq, 1, be, 0) == cudaErrorInvalidValue,
             "misaligned blocks are refused");
    (void)cudaGetLastError();
    free(blocks), free(w), free(hq);
    cudaFree(dw), cudaFree(dq);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    int n_types;
    const struct gt_block_type *types = gt_block_types(&n_types);
    for (int t = 0; t < n_types; t++) {
        test_type(&types[t], 67, 512);  /* rows not a multiple of the warps per block */
        test_type(&types[t], 130, 768); /* three K-quant blocks a row */
        test_type(&types[t], 50, 5376); /* 21 K-quant blocks a row: the unrolled loops and their remainders */
    }
    printf("unsupported types\n");
    GT_CHECK(!sk_quant_supported(DTYPE_Q2_K) && !sk_quant_supported(DTYPE_IQ4_XS) && !sk_quant_supported(DTYPE_BF16),
             "Q2_K, IQ4_XS and BF16 are not taken by the block kernels (they load as bf16)");
    return gt_finish();
}
