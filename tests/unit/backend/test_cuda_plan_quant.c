/* The planner's choices for weights kept in GGUF blocks on CUDA (cuda_plan.h): which batches take
 * the block GEMV, and the rows of a dequantized tile, which must fit the one scratch buffer. */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/backend/cuda/cuda_plan.h"

static struct cuda_plan_config config(bool deterministic)
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
    struct cuda_plan_config c;
    cuda_plan_config_init(&c, &m, &o, deterministic, true, 132, 2048, 256, 64);
    return c;
}

Test(cuda_plan_quant, small_batches_take_the_block_gemv_large_ones_the_scratch)
{
    struct cuda_plan_config c = config(false);
    cr_expect(cuda_plan_quant_gemv(&c, 1));
    cr_expect(cuda_plan_quant_gemv(&c, CUDA_QUANT_GEMV_ROWS));
    cr_expect(!cuda_plan_quant_gemv(&c, CUDA_QUANT_GEMV_ROWS + 1));
    cr_expect(!cuda_plan_quant_gemv(&c, 2048));
}

Test(cuda_plan_quant, the_deterministic_mode_always_takes_the_block_gemv)
{
    struct cuda_plan_config c = config(true);
    cr_expect(cuda_plan_quant_gemv(&c, 1));
    cr_expect(cuda_plan_quant_gemv(&c, 2048), "a row's sums would depend on the batch through the scratch path");
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
