/* The tensor-core product of GGUF block weights (kernels/quant_mma.cu, sk_quant_mma) against
 * worker/model/quant.c, the bit-exact reference, on random blocks of every type it takes:
 * - x the identity (rows = k_in): y = the weights exactly, whatever the order of the sums, so each
 *   weight must be bit for bit bf16(quant.c's float), the bits sk_dequant_bf16 gives the tile
 *   path, which is checked beside it;
 * - random x at 1 to 300 rows (multiples of 8 and 16 and not), shapes whose n_out and k_in are not
 *   multiples of the kernel's tiles and stages (and whose rows start anywhere in a 16-byte word),
 *   split-K off and on: every output within the fp32 accumulation bound of fp64 sums of the bf16
 *   weights times x, written at a column offset inside wider rows of y without touching the
 *   columns around them; split-K twice in a row the same bits (its counters left zero);
 * - what it cannot take refused.
 * Each line says what it checked and by how much it passed. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "kernels/sk_quant.h"
#include "kernels/sk_shapes.h"
#include "worker/model/model.h"


/* The split-K scratch and counters, enough for every call here. */
static float *g_work;
static unsigned *g_counters;
#define WORK_FLOATS ((size_t)16 << 20)
#define MAX_COUNTERS 4096

/* The weights of a matrix: blocks on the device, quant.c's floats, and their bf16 as floats. */
struct mat {
    enum dtype dt;
    int n_out, k_in;
    void *dw;
    float *w, *wb;
};

static void mat_init(struct mat *m, const struct gt_block_type *ty, int n_out, int k_in)
{
    m->dt = ty->dt;
    m->n_out = n_out;
    m->k_in = k_in;
    const int64_t n = (int64_t)n_out * k_in;
    void *blocks = gt_random_blocks(m->dt, ty->at, ty->n, n);
    m->w = malloc((size_t)n * 4);
    m->wb = malloc((size_t)n * 4);
    model_dequant(m->dt, blocks, m->w, n);
    for (int64_t i = 0; i < n; i++) m->wb[i] = gt_round_bf(m->w[i]);
    m->dw = gt_up(blocks, (size_t)(n / dtype_block_elems(m->dt)) * dtype_block_bytes(m->dt));
    free(blocks);
}

static void mat_free(struct mat *m)
{
    free(m->w), free(m->wb);
    cudaFree(m->dw);
}

/* x = the identity (k_in rows): y[r, n] = bf16 weight (n, r), exactly. Compared bit for bit with
 * bf16(quant.c) and with sk_dequant_bf16's bits; split-K on (the other ranges add zeros). A weight
 * of -0 comes out +0: the sums start from +0, and -0 + +0 is +0. */
static void check_identity(const struct mat *m, int splits)
{
    const int k = m->k_in, n_out = m->n_out;
    uint16_t *x = calloc((size_t)k * k, 2);
    for (int i = 0; i < k; i++) x[(size_t)i * k + i] = 0x3f80; /* 1.0 */
    uint16_t *dx = gt_up(x, (size_t)k * k * 2), *dq = gt_dev((size_t)n_out * k * 2);
    float *dy = gt_dev((size_t)k * n_out * 4);
    GT_CUDA(sk_quant_mma((int)m->dt, m->dw, dx, k, dy, n_out, k, n_out, k, splits, g_work, g_counters, 1, 0));
    GT_CUDA(sk_dequant_bf16((int)m->dt, m->dw, dq, n_out, k, 0));
    float *hy = malloc((size_t)k * n_out * 4);
    uint16_t *hq = malloc((size_t)n_out * k * 2);
    gt_down(hy, dy, (size_t)k * n_out * 4);
    gt_down(hq, dq, (size_t)n_out * k * 2);
    int64_t bad = 0, bad_tile = 0, first = -1;
    for (int n = 0; n < n_out; n++)
        for (int r = 0; r < k; r++) {
            const float got = hy[(size_t)r * n_out + n], want = m->wb[(size_t)n * k + r];
            const uint16_t tile = hq[(size_t)n * k + r];
            const bool zeros = got == 0.0f && want == 0.0f; /* +0 and -0 */
            if (!zeros && memcmp(&got, &want, 4) && bad++ == 0) first = (int64_t)n * k + r;
            bad_tile += zeros ? (tile & 0x7fff) != 0 : gt_f2bf(got) != tile || gt_round_bf(got) != got;
        }
    GT_CHECK(bad == 0 && bad_tile == 0,
             "%s %d x %d, x = identity, %d split(s): every weight bit for bit bf16(quant.c) (%lld of %lld differ) and "
             "sk_dequant_bf16's bits (%lld differ)",
             dtype_name(m->dt), n_out, k, splits, (long long)bad, (long long)n_out * k, (long long)bad_tile);
    if (first >= 0)
        printf("        first at row %lld col %lld (block element %lld): got %a, want %a (quant.c %a)\n",
               (long long)(first / k), (long long)(first % k), (long long)(first % k % dtype_block_elems(m->dt)),
               hy[(size_t)(first % k) * n_out + first / k], m->wb[first], m->w[first]);
    free(x), free(hy), free(hq);
    cudaFree(dx), cudaFree(dq), cudaFree(dy);
}

/* sk_quant_mma at `rows` rows of random x, y[r, col0 + n] in rows of ldy floats: every output
 * within |y - ref| <= 2 k_in eps sum_k |w x| + tiny (ref: fp64 sums of the bf16 weights times x;
 * a wrong weight or a lost term is off by the order of the terms themselves). Returns the
 * output's bits (malloc'd) for the caller's comparisons. */
static float *check_rows(const struct mat *m, int rows, int splits)
{
    const int k = m->k_in, n_out = m->n_out, col0 = 5, ldy = n_out + 9;
    const int64_t nx = (int64_t)rows * k;
    uint16_t *x = malloc((size_t)nx * 2);
    float *xf = malloc((size_t)nx * 4);
    for (int64_t i = 0; i < nx; i++) x[i] = gt_f2bf(gt_normal()), xf[i] = gt_bf2f(x[i]);
    uint16_t *dx = gt_up(x, (size_t)nx * 2);
    float *dy = gt_dev((size_t)rows * ldy * 4); /* poisoned: NaN */
    GT_CUDA(sk_quant_mma((int)m->dt, m->dw, dx, k, dy + col0, ldy, rows, n_out, k, splits, g_work, g_counters, 1, 0));
    float *hy = malloc((size_t)rows * ldy * 4), *got = malloc((size_t)rows * n_out * 4);
    gt_down(hy, dy, (size_t)rows * ldy * 4);
    int64_t touched = 0, outside = 0;
    double worst = 0; /* |y - ref| / (k eps sum|w x|) */
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < ldy; j++) {
            const float v = hy[(size_t)r * ldy + j];
            if (j < col0 || j >= col0 + n_out) {
                touched += !isnan(v);
                continue;
            }
            const int n = j - col0;
            got[(size_t)r * n_out + n] = v;
            double ref = 0, mag = 0;
            const float *wr = m->wb + (size_t)n * k, *xr = xf + (size_t)r * k;
            for (int i = 0; i < k; i++) ref += (double)wr[i] * xr[i], mag += fabs((double)wr[i] * xr[i]);
            const double unit = (double)k * 0x1p-24 * mag + 1e-30, e = fabs((double)v - ref) / unit;
            if (!(e <= 2.0)) outside++;
            if (!(e <= worst)) worst = e;
        }
    GT_CHECK(touched == 0 && outside == 0,
             "%s %4d x %4d, %3d rows, %d split(s): %lld of %lld outputs past 2 k eps sum|w x| of fp64 sums (worst "
             "%.3f of that unit); %lld values written outside the output columns",
             dtype_name(m->dt), n_out, k, rows, splits, (long long)outside, (long long)rows * n_out, worst,
             (long long)touched);
    free(x), free(xf), free(hy);
    cudaFree(dx), cudaFree(dy);
    return got;
}

/* check_rows with split-K off, then on: `splits` ranges, twice, the same bits both times. */
static void check_split_pair(const struct mat *m, int rows, int splits)
{
    free(check_rows(m, rows, 1));
    const uint64_t seed = gt_rng_state;
    float *a = check_rows(m, rows, splits);
    gt_rng_state = seed; /* the same x */
    float *b = check_rows(m, rows, splits);
    int64_t differ = 0;
    for (int64_t i = 0; i < (int64_t)rows * m->n_out; i++) differ += memcmp(a + i, b + i, 4) != 0;
    GT_CHECK(differ == 0, "%s %d x %d, %d rows, %d splits: two launches give the same bits (%lld differ)",
             dtype_name(m->dt), m->n_out, m->k_in, rows, splits, (long long)differ);
    free(a), free(b);
}

static void test_type(const struct gt_block_type *ty)
{
    const enum dtype dt = ty->dt;
    const int be = (int)dtype_block_elems(dt);
    printf("%s\n", dtype_name(dt));
    GT_CHECK(sk_quant_mma_supported((int)dt), "%s is taken by the tensor-core kernel", dtype_name(dt));

    /* Exactness: 67 rows (not a multiple of 64), 768 weights (three stages; Q6_K's 630-byte rows
     * start anywhere in a 16-byte word); the 32-weight types also at 96 (a short stage). */
    struct mat m;
    mat_init(&m, ty, 67, 768);
    check_identity(&m, 1);
    check_identity(&m, 3);
    /* Every row count from 1 to 300 that changes the kernel's tiling, split-K on at some. */
    static const int row_counts[] = {1,  2,  3,  5,  7,  8,  9,  15,  16,  17,  24,  31,  32,  33,
                                     47, 63, 64, 65, 96, 100, 127, 128, 129, 192, 200, 255, 256, 300};
    for (size_t i = 0; i < sizeof row_counts / sizeof row_counts[0]; i++) free(check_rows(&m, row_counts[i], 1));
    check_split_pair(&m, 16, 2);
    check_split_pair(&m, 65, 3);
    mat_free(&m);

    if (be == 32) {
        mat_init(&m, ty, 45, 96); /* a stage of three blocks; Q4_0's 54-byte rows */
        check_identity(&m, 1);
        free(check_rows(&m, 17, 1));
        mat_free(&m);
        mat_init(&m, ty, 29, 2080); /* 65 blocks: eight stages and one block */
        for (int r = 1; r <= 64; r *= 4) check_split_pair(&m, r + 1, 4);
        mat_free(&m);
    }
    /* Long rows (21 K-quant blocks, 168 of 32), a product of several row tiles, splits up to the
     * kernel's maximum. */
    mat_init(&m, ty, 130, 5376);
    check_split_pair(&m, 9, SK_QUANT_MMA_MAX_SPLITS);
    check_split_pair(&m, 40, 7);
    check_split_pair(&m, 150, 5);
    mat_free(&m);

    /* What it cannot take. */
    mat_init(&m, ty, 16, 2 * be);
    uint16_t *dx = gt_dev((size_t)16 * 4 * be * 2);
    float *dy = gt_dev((size_t)16 * 16 * 4);
    GT_CHECK(sk_quant_mma((int)dt, m.dw, dx, 2 * be, dy, 16, 16, 16, 2 * be - 16, 1, NULL, NULL, 0, 0) ==
                 cudaErrorInvalidValue,
             "%s: a row length not a whole number of blocks is refused", dtype_name(dt));
    GT_CHECK(sk_quant_mma((int)dt, (char *)m.dw + 2, dx, 2 * be, dy, 16, 16, 16, 2 * be, 1, NULL, NULL, 0, 0) ==
                 cudaErrorInvalidValue,
             "%s: weights not 16-byte aligned are refused", dtype_name(dt));
    GT_CHECK(sk_quant_mma((int)dt, m.dw, dx + 4, 2 * be, dy, 16, 16, 16, 2 * be, 1, NULL, NULL, 0, 0) ==
                 cudaErrorInvalidValue,
             "%s: activations not 16-byte aligned are refused", dtype_name(dt));
    GT_CHECK(sk_quant_mma((int)dt, m.dw, dx, 2 * be, dy, 16, 16, 16, 2 * be, 2, NULL, NULL, 0, 0) ==
                     cudaErrorInvalidValue &&
                 sk_quant_mma((int)dt, m.dw, dx, 2 * be, dy, 16, 16, 16, 2 * be, SK_QUANT_MMA_MAX_SPLITS + 1, g_work,
                              g_counters, 0, 0) == cudaErrorInvalidValue,
             "%s: split-K without its scratch, or past its maximum, is refused", dtype_name(dt));
    GT_CHECK(sk_quant_mma((int)dt, m.dw, dx, 2 * be, dy, 16, 0, 16, 2 * be, 1, NULL, NULL, 0, 0) == cudaSuccess,
             "%s: no rows, nothing to do", dtype_name(dt));
    (void)cudaGetLastError();
    cudaFree(dx), cudaFree(dy);
    mat_free(&m);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    g_work = gt_dev(WORK_FLOATS * 4);
    g_counters = gt_dev(MAX_COUNTERS * sizeof(unsigned));
    GT_CUDA(cudaMemset(g_counters, 0, MAX_COUNTERS * sizeof(unsigned)));
    GT_CHECK(sk_quant_mma_counters(300, 130) <= MAX_COUNTERS, "the test's counters suffice");
    int n_types;
    const struct gt_block_type *types = gt_block_types(&n_types);
    for (int t = 0; t < n_types; t++) test_type(&types[t]);
    unsigned *hc = malloc(MAX_COUNTERS * sizeof(unsigned));
    gt_down(hc, g_counters, MAX_COUNTERS * sizeof(unsigned));
    int nonzero = 0;
    for (int i = 0; i < MAX_COUNTERS; i++) nonzero += hc[i] != 0;
    GT_CHECK(nonzero == 0, "split-K leaves its counters zero (%d are not)", nonzero);
    free(hc);
    printf("unsupported types\n");
    GT_CHECK(!sk_quant_mma_supported(DTYPE_Q2_K) && !sk_quant_mma_supported(DTYPE_IQ4_XS) &&
                 !sk_quant_mma_supported(DTYPE_BF16),
             "Q2_K, IQ4_XS and BF16 are not taken by the tensor-core kernel");
    uint16_t *dx = gt_dev(64 * 256 * 2);
    float *dy = gt_dev(64 * 64 * 4);
    GT_CHECK(sk_quant_mma(DTYPE_Q2_K, dx, dx, 256, dy, 64, 16, 16, 256, 1, NULL, NULL, 0, 0) == cudaErrorInvalidValue,
             "a Q2_K product is refused");
    cudaFree(dx), cudaFree(dy);
    cudaFree(g_work), cudaFree(g_counters);
    return gt_finish();
}
