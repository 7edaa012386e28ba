/* The planner's choices for weights kept in GGUF blocks on CUDA (cuda_plan.h): which products take
 * the block GEMV, the tensor-core kernel (and with how many split-K ranges) or dequantized tiles,
 * as one function of the type, the rows and the shape; and the rows of a dequantized tile, which
 * must fit the one scratch buffer. */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/backend/cuda/cuda_plan.h"

static struct cuda_plan_config config_with(bool deterministic, bool no_quant_mma)
{
    struct model_config m;
    memset(&m, 0, sizeof m);
    m.hidden_size = 4096;
    m.intermediate_size = 14336;
    m.n_heads = 32;
    m.n_kv_heads = 8;
    m.head_dim = 128;
    m.vocab_size = 128256;
    struct cuda_options o;
    memset(&o, 0, sizeof o);
    o.no_quant_mma = no_quant_mma;
    struct cuda_plan_config c;
    cuda_plan_config_init(&c, &m, &o, deterministic, true, 132, 2048, 256, 64);
    return c;
}

static struct cuda_plan_config config(bool deterministic)
{
    return config_with(deterministic, false);
}

static const enum dtype kTypes[] = {DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
                                    DTYPE_Q8_0, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K};
#define N_TYPES (sizeof kTypes / sizeof kTypes[0])

Test(cuda_plan_quant, the_gemv_then_the_tensor_cores_then_tiles_by_rows)
{
    struct cuda_plan_config c = config(false);
    for (size_t i = 0; i < N_TYPES; i++) {
        const int t = kTypes[i], last = cuda_plan_quant_gemv_rows(t);
        cr_expect(last >= 1 && last < 16, "type %d: the GEMV's rows (%d) are a decode batch's few", t, last);
        cr_expect_eq(cuda_plan_quant(&c, t, 1, 4096, 4096).path, CUDA_QUANT_PATH_GEMV, "type %d, 1 row", t);
        cr_expect_eq(cuda_plan_quant(&c, t, last, 4096, 4096).path, CUDA_QUANT_PATH_GEMV, "type %d, %d rows", t, last);
        cr_expect_eq(cuda_plan_quant(&c, t, last + 1, 4096, 4096).path, CUDA_QUANT_PATH_MMA, "type %d, %d rows", t,
                     last + 1);
        cr_expect_eq(cuda_plan_quant(&c, t, 64, 14336, 4096).path, CUDA_QUANT_PATH_MMA, "type %d, 64 rows", t);
        cr_expect_eq(cuda_plan_quant(&c, t, 128, 14336, 4096).path, CUDA_QUANT_PATH_TILES, "type %d, 128 rows", t);
        cr_expect_eq(cuda_plan_quant(&c, t, CUDA_QUANT_MMA_ROWS, 4096, 14336).path, CUDA_QUANT_PATH_MMA);
        cr_expect_eq(cuda_plan_quant(&c, t, CUDA_QUANT_MMA_ROWS + 1, 4096, 4096).path, CUDA_QUANT_PATH_TILES);
        cr_expect_eq(cuda_plan_quant(&c, t, 2048, 4096, 4096).path, CUDA_QUANT_PATH_TILES, "prefill chunks on cuBLAS");
    }
}

Test(cuda_plan_quant, without_the_tensor_core_kernel_the_old_rule)
{
    struct cuda_plan_config c = config_with(false, true);
    for (size_t i = 0; i < N_TYPES; i++) {
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], CUDA_QUANT_GEMV_ROWS, 4096, 4096).path, CUDA_QUANT_PATH_GEMV);
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], CUDA_QUANT_GEMV_ROWS + 1, 4096, 4096).path,
                     CUDA_QUANT_PATH_TILES);
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], 64, 4096, 4096).path, CUDA_QUANT_PATH_TILES);
    }
}

Test(cuda_plan_quant, types_and_shapes_the_kernel_cannot_take_go_elsewhere)
{
    struct cuda_plan_config c = config(false);
    const enum dtype others[] = {DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_IQ4_NL, DTYPE_IQ4_XS, DTYPE_BF16, DTYPE_F16};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        cr_expect_neq(cuda_plan_quant(&c, others[i], 64, 4096, 4096).path, CUDA_QUANT_PATH_MMA, "type %d",
                      (int)others[i]);
    /* A row that is not whole blocks (the loader never keeps one, but the planner must not pass it). */
    cr_expect_neq(cuda_plan_quant(&c, DTYPE_Q4_K, 64, 4096, 4096 + 32).path, CUDA_QUANT_PATH_MMA);
    cr_expect_neq(cuda_plan_quant(&c, DTYPE_Q4_0, 64, 4096, 4096 + 16).path, CUDA_QUANT_PATH_MMA);
    /* Shapes that are not multiples of the kernel's tiles are its to take. */
    cr_expect_eq(cuda_plan_quant(&c, DTYPE_Q4_1, 40, 32, 64).path, CUDA_QUANT_PATH_MMA, "the int4 fixtures' k/v");
    cr_expect_eq(cuda_plan_quant(&c, DTYPE_Q4_0, 40, 67, 4096 + 32).path, CUDA_QUANT_PATH_MMA);
}

Test(cuda_plan_quant, the_deterministic_mode_always_takes_the_block_gemv)
{
    struct cuda_plan_config c = config(true);
    for (size_t i = 0; i < N_TYPES; i++) {
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], 1, 4096, 4096).path, CUDA_QUANT_PATH_GEMV);
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], 64, 4096, 4096).path, CUDA_QUANT_PATH_GEMV);
        cr_expect_eq(cuda_plan_quant(&c, kTypes[i], 2048, 4096, 4096).path, CUDA_QUANT_PATH_GEMV,
                     "a row's sums would depend on the batch through the other paths");
    }
}

/* The split-K ranges: only where the tiles leave SMs idle, never a range under
 * CUDA_QUANT_MMA_SPLIT_STAGES stages, never more than the kernel's maximum, the sums within the
 * scratch, and the count the kernel's even cut gives. */
Test(cuda_plan_quant, split_k_fills_the_sms_within_its_limits)
{
    struct cuda_plan_config c = config(false);
    const int shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096},
                             {32, 64},     {67, 4096 + 32}, {6144, 4096}};
    const int rows[] = {3, 9, 16, 32, 48, CUDA_QUANT_MMA_ROWS};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
            const int n = shapes[i][0], k = shapes[i][1], m = rows[r];
            const struct cuda_quant_plan p = cuda_plan_quant(&c, DTYPE_Q4_0, m, n, k);
            cr_assert_eq(p.path, CUDA_QUANT_PATH_MMA);
            const int64_t tiles = (int64_t)((m + SK_QUANT_MMA_ROWS - 1) / SK_QUANT_MMA_ROWS) *
                                  ((n + SK_QUANT_MMA_FEATURES - 1) / SK_QUANT_MMA_FEATURES);
            const int stages = (k + SK_QUANT_MMA_STAGE_K - 1) / SK_QUANT_MMA_STAGE_K;
            cr_expect(p.splits >= 1 && p.splits <= SK_QUANT_MMA_MAX_SPLITS, "%d x %d, %d rows: %d splits", n, k, m,
                      p.splits);
            if (tiles >= c.n_sms) cr_expect_eq(p.splits, 1, "%d x %d, %d rows: the tiles fill the SMs", n, k, m);
            if (p.splits > 1) {
                const int per = (stages + p.splits - 1) / p.splits;
                cr_expect(per >= CUDA_QUANT_MMA_SPLIT_STAGES, "%d x %d, %d rows: ranges of %d stages", n, k, m, per);
                cr_expect_eq((stages + per - 1) / per, p.splits, "%d x %d: the kernel's cut", n, k);
                cr_expect((size_t)p.splits * m * n * 4 <= CUDA_QUANT_SCRATCH_BYTES);
                cr_expect(tiles * (p.splits - 1) < 2 * (int64_t)c.n_sms, "%d x %d, %d rows: %d splits of %lld tiles",
                          n, k, m, p.splits, (long long)tiles);
            }
        }
    /* Llama-3-8B at 16 rows: q (64 tiles) and down (64 tiles, 56 stages) split; gate (224) not. */
    cr_expect_gt(cuda_plan_quant(&c, DTYPE_Q4_K, 16, 4096, 4096).splits, 1);
    cr_expect_gt(cuda_plan_quant(&c, DTYPE_Q4_K, 16, 4096, 14336).splits, 1);
    cr_expect_eq(cuda_plan_quant(&c, DTYPE_Q4_K, 16, 14336, 4096).splits, 1);
}

Test(cuda_plan_quant, tiles_fit_the_scratch_and_cover_the_product)
{
    const int shapes[][2] = {{4096, 4096},  {1024, 4096}, {28672, 4096}, {4096, 14336},
                             {128256, 4096}, {49152, 576}, {7, 256},      {100, 1 << 22}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int n = shapes[i][0], k = shapes[i][1], t = cuda_plan_quant_tile_rows(n, k);
        cr_expect(t >= 1 && t <= n, "shape %d x %d: tile of %d rows", n, k, t);
        cr_expect((size_t)t * k * 2 <= CUDA_QUANT_SCRATCH_BYTES || t == 1, "shape %d x %d: %d rows overflow", n, k, t);
        cr_expect(t == n || t % 64 == 0 || (size_t)64 * k * 2 > CUDA_QUANT_SCRATCH_BYTES,
                  "shape %d x %d: %d rows, not a multiple of 64", n, k, t);
    }
    cr_expect_eq(cuda_plan_quant_tile_rows(4096, 4096), 4096, "a 32 MiB matrix is one tile");
    cr_expect_eq(cuda_plan_quant_tile_rows(28672, 4096), 8192);
}
