/* The planner's FP8 choices (cuda_plan_fp8_product, cuda_plan_config_fp8), on the CPU: which
 * kernel (gemv, Hopper stream, tensor-core kernel, cuBLASLt, dequantized weights) takes each of a layer's
 * products at each batch size for FP8 weights with per-row or block scales, with and without
 * cuBLASLt, and what stays as it was (lm_head in bf16). */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/backend/cuda/cuda_plan.h"

static struct cuda_plan_config config(int hidden, int inter, bool det, bool blocks, bool lt)
{
    const struct model_config m = {.hidden_size = hidden, .intermediate_size = inter, .n_heads = 32,
                                   .n_kv_heads = 8, .head_dim = hidden / 32, .vocab_size = 128256,
                                   .max_position = 8192, .n_layers = 2};
    const struct cuda_options o = {0};
    struct cuda_plan_config c;
    cuda_plan_config_init(&c, &m, &o, det, true, 132, 8192, 256, m.max_position / 16 + 2);
    cr_assert(c.gu_interleaved, "the bf16 model interleaves gate/up on Hopper");
    cuda_plan_config_fp8(&c, blocks, lt);
    c.num_kv_blocks = 100000;
    return c;
}

static struct cuda_step_plan plan(const struct cuda_plan_config *c, int n)
{
    static struct batch_seq seqs[256];
    static int32_t blocks[256][16], tokens[256];
    static const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    for (int s = 0; s < n; s++) {
        seqs[s] = (struct batch_seq){.n_new = 1, .start_pos = 191, .block_table = blocks[s], .n_blocks = 12,
                                     .sample = true, .sampling = &greedy};
        for (int k = 0; k < 12; k++) blocks[s][k] = k;
        tokens[s] = 1;
    }
    struct batch b = {.n_seqs = n, .seqs = seqs, .n_tokens = n, .tokens = tokens};
    struct cuda_step_plan p;
    char err[256];
    cr_assert_eq(cuda_plan_step(c, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    return p;
}

static void expect_layer(const struct cuda_step_plan *p, enum cuda_product k, int n)
{
    cr_expect_eq(p->qkv.kernel, k, "batch %d: qkv takes kernel %d, expected %d", n, p->qkv.kernel, k);
    cr_expect_eq(p->o.kernel, k, "batch %d: o takes kernel %d, expected %d", n, p->o.kernel, k);
    cr_expect_eq(p->mlp.kind, CUDA_MLP_FP32, "batch %d: the MLP must be gate/up, SiLU, down (no fused kinds)", n);
    cr_expect_eq(p->mlp.gate_up.kernel, k, "batch %d: gate/up takes kernel %d, expected %d", n, p->mlp.gate_up.kernel, k);
    cr_expect_eq(p->mlp.down.kernel, k, "batch %d: down takes kernel %d, expected %d", n, p->mlp.down.kernel, k);
    cr_expect(cuda_plan_is_fp8(p->qkv) && !cuda_plan_is_fp8(p->lm_head), "lm_head stays bf16");
}

Test(cuda_plan_fp8, llama3_8b_per_row_scales_with_cublaslt)
{
    struct cuda_plan_config c = config(4096, 14336, false, false, true);
    cr_expect_not(c.gu_interleaved, "FP8 gate/up rows stay apart");
    cr_assert_eq(CUDA_FP8_GEMV_ROWS, 4, "without the stream, the gemv up to 4 rows");
    cr_assert_eq(CUDA_FP8_MMA_ROWS, 16, "and the tensor-core kernel up to 16");
    /* One row: the gemv. Decode batches past it: the Hopper weight stream on e4m3, weights read
     * once, up to its 128 rows; cuBLASLt beyond. */
    cr_assert_eq(CUDA_FP8_HOPPER_MIN_ROWS, 2, "the Hopper stream from 2 rows");
    expect_layer((struct cuda_step_plan[]){plan(&c, 1)}, CUDA_PRODUCT_FP8_GEMV, 1);
    const int mid[] = {2, 4, 5, 8, 9, 16, 17, 64, 65, 128};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        expect_layer((struct cuda_step_plan[]){plan(&c, mid[i])}, CUDA_PRODUCT_FP8_HOPPER, mid[i]);
    cr_expect_eq(cuda_plan_fp8_product(&c, 129, 4096, 4096).kernel, CUDA_PRODUCT_FP8_LT);
    cr_expect_eq(cuda_plan_fp8_product(&c, 1024, 4096, 14336).kernel, CUDA_PRODUCT_FP8_LT);
    /* The bf16 lm_head keeps its own choices: the gemv at one row. */
    cr_expect_eq(plan(&c, 1).lm_head.kernel, CUDA_PRODUCT_GEMV);
}

/* --cuda-options fp8_hopper=0 (or a GPU without the Hopper products): the tensor-core kernel up to
 * 16 rows, bf16 activations, weights read once; from 17 rows cuBLASLt, which was faster there. */
Test(cuda_plan_fp8, without_the_hopper_stream)
{
    struct cuda_plan_config c = config(4096, 14336, false, false, true);
    c.fp8_hopper = false;
    cr_assert_eq(CUDA_FP8_MMA_ROWS, 16, "the tensor-core kernel up to 16 rows");
    for (int n = 1; n <= 4; n++) expect_layer((struct cuda_step_plan[]){plan(&c, n)}, CUDA_PRODUCT_FP8_GEMV, n);
    const int mid[] = {5, 8, 9, 16};
    for (int i = 0; i < 4; i++) expect_layer((struct cuda_step_plan[]){plan(&c, mid[i])}, CUDA_PRODUCT_FP8_MMA, mid[i]);
    const int big[] = {17, 32, 33, 64, 65, 128, 256};
    for (int i = 0; i < 7; i++) expect_layer((struct cuda_step_plan[]){plan(&c, big[i])}, CUDA_PRODUCT_FP8_LT, big[i]);
    /* The option's own switch: off Hopper the config never has the stream. */
    const struct model_config m = {.hidden_size = 4096, .intermediate_size = 14336, .n_heads = 32, .n_kv_heads = 8,
                                   .head_dim = 128, .vocab_size = 128256, .max_position = 8192, .n_layers = 2};
    struct cuda_options o = {0};
    cuda_plan_config_init(&c, &m, &o, false, false, 132, 8192, 256, 514);
    cr_expect_not(c.fp8_hopper, "no Hopper products, no FP8 stream");
    o.no_fp8_hopper = true;
    cuda_plan_config_init(&c, &m, &o, false, true, 132, 8192, 256, 514);
    cr_expect_not(c.fp8_hopper, "fp8_hopper=0 turns it off");

}

Test(cuda_plan_fp8, without_cublaslt_or_with_blocks_large_batches_dequantize)
{
    /* Per-row scales without cuBLASLt: the tensor-core kernel, 64 rows a launch, up to 256 rows
     * (4 reads of a byte a weight still beat the 5 bytes dequantizing moves), then dequantized. */
    cr_assert_eq(CUDA_FP8_MMA_ROWS_NO_LT, 256);
    struct cuda_plan_config c = config(4096, 14336, false, false, false);
    expect_layer((struct cuda_step_plan[]){plan(&c, 1)}, CUDA_PRODUCT_FP8_GEMV, 1);
    expect_layer((struct cuda_step_plan[]){plan(&c, 2)}, CUDA_PRODUCT_FP8_HOPPER, 2);
    expect_layer((struct cuda_step_plan[]){plan(&c, 5)}, CUDA_PRODUCT_FP8_HOPPER, 5);
    expect_layer((struct cuda_step_plan[]){plan(&c, 128)}, CUDA_PRODUCT_FP8_HOPPER, 128);
    expect_layer((struct cuda_step_plan[]){plan(&c, 129)}, CUDA_PRODUCT_FP8_MMA, 129);
    expect_layer((struct cuda_step_plan[]){plan(&c, 256)}, CUDA_PRODUCT_FP8_MMA, 256);
    c.fp8_hopper = false;
    expect_layer((struct cuda_step_plan[]){plan(&c, 5)}, CUDA_PRODUCT_FP8_MMA, 5);
    expect_layer((struct cuda_step_plan[]){plan(&c, 64)}, CUDA_PRODUCT_FP8_MMA, 64);
    cr_expect_eq(cuda_plan_fp8_product(&c, 257, 4096, 4096).kernel, CUDA_PRODUCT_FP8_DEQUANT);
    /* Block scales (the tensor-core kernel takes one scale a row): the gemv, 8 rows a launch, up
     * to 32 rows, then dequantized. */
    cr_assert_eq(CUDA_FP8_GEMV_ROWS_NO_LT, 32);
    c = config(4096, 14336, false, true, true);
    expect_layer((struct cuda_step_plan[]){plan(&c, 8)}, CUDA_PRODUCT_FP8_GEMV, 8);
    expect_layer((struct cuda_step_plan[]){plan(&c, 32)}, CUDA_PRODUCT_FP8_GEMV, 32);
    expect_layer((struct cuda_step_plan[]){plan(&c, 33)}, CUDA_PRODUCT_FP8_DEQUANT, 33);
    expect_layer((struct cuda_step_plan[]){plan(&c, 64)}, CUDA_PRODUCT_FP8_DEQUANT, 64);
}

Test(cuda_plan_fp8, shapes_the_kernels_cannot_take)
{
    /* k_in not a multiple of 16 (stories260K's 172): no gemv, no Hopper stream, no tensor-core
     * kernel, no cuBLASLt; n_out not a multiple of 32: no tensor-core kernel; nor of 16: no
     * cuBLASLt; the Hopper stream takes any n_out. */
    struct cuda_plan_config c = config(4096, 14336, false, false, true);
    cr_expect_eq(cuda_plan_fp8_product(&c, 1, 64, 172).kernel, CUDA_PRODUCT_FP8_DEQUANT);
    cr_expect_eq(cuda_plan_fp8_product(&c, 64, 64, 172).kernel, CUDA_PRODUCT_FP8_DEQUANT);
    cr_expect_eq(cuda_plan_fp8_product(&c, 1, 344, 64).kernel, CUDA_PRODUCT_FP8_GEMV);
    cr_expect_eq(cuda_plan_fp8_product(&c, 64, 344, 64).kernel, CUDA_PRODUCT_FP8_HOPPER, "any n_out: the Hopper stream");
    cr_expect_eq(cuda_plan_fp8_product(&c, 200, 336, 64).kernel, CUDA_PRODUCT_FP8_LT, "336 = 16 x 21: cuBLASLt");
    cr_expect_eq(cuda_plan_fp8_product(&c, 129, 344, 64).kernel, CUDA_PRODUCT_FP8_DEQUANT);
    c.fp8_hopper = false;
    cr_expect_eq(cuda_plan_fp8_product(&c, 32, 344, 64).kernel, CUDA_PRODUCT_FP8_GEMV, "no cuBLASLt: gemv to 32");
    cr_expect_eq(cuda_plan_fp8_product(&c, 64, 344, 64).kernel, CUDA_PRODUCT_FP8_DEQUANT);
    cr_expect_eq(cuda_plan_fp8_product(&c, 64, 336, 64).kernel, CUDA_PRODUCT_FP8_LT, "336 = 16 x 21: cuBLASLt only");
    cr_expect_eq(cuda_plan_fp8_product(&c, 16, 352, 96).kernel, CUDA_PRODUCT_FP8_MMA, "k_in 96: a narrower last chunk");
    cr_expect_eq(cuda_plan_fp8_product(&c, 17, 352, 64).kernel, CUDA_PRODUCT_FP8_LT);
}

Test(cuda_plan_fp8, deterministic_takes_the_gemv_at_every_size)
{
    /* A row's sums in the gemv do not depend on the other rows: batch-invariant. */
    struct cuda_plan_config c = config(4096, 14336, true, false, true);
    const int sizes[] = {1, 8, 9, 64, 1024};
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(cuda_plan_fp8_product(&c, sizes[i], 6144, 4096).kernel, CUDA_PRODUCT_FP8_GEMV, "rows %d",
                     sizes[i]);
        cr_expect_eq(cuda_plan_fp8_product(&c, sizes[i], 28672, 4096).kernel, CUDA_PRODUCT_FP8_GEMV,
                     "gate/up, rows %d", sizes[i]);
    }
}

Test(cuda_plan_fp8, bf16_models_are_untouched)
{
    const struct model_config m = {.hidden_size = 4096, .intermediate_size = 14336, .n_heads = 32, .n_kv_heads = 8,
                                   .head_dim = 128, .vocab_size = 128256, .max_position = 8192, .n_layers = 2};
    const struct cuda_options o = {0};
    struct cuda_plan_config c;
    cuda_plan_config_init(&c, &m, &o, false, true, 132, 8192, 256, 514);
    c.num_kv_blocks = 100000;
    cr_expect_not(c.fp8);
    struct cuda_step_plan p = plan(&c, 1);
    cr_expect_not(cuda_plan_is_fp8(p.qkv) || cuda_plan_is_fp8(p.o) || cuda_plan_is_fp8(p.mlp.down));
}

/* --cuda-options fp8_mma=0: no tensor-core FP8 kernel; cuBLASLt takes every batch past the gemv
 * (to time the two against each other), and without cuBLASLt the gemv, then dequantized weights. */
Test(cuda_plan_fp8, without_the_tensor_core_kernel)
{
    struct cuda_plan_config c = config(4096, 14336, false, false, true);
    c.fp8_mma = false;
    c.fp8_hopper = false;
    expect_layer((struct cuda_step_plan[]){plan(&c, 4)}, CUDA_PRODUCT_FP8_GEMV, 4);
    const int past[] = {5, 16, 64, 65};
    for (size_t i = 0; i < sizeof past / sizeof past[0]; i++)
        expect_layer((struct cuda_step_plan[]){plan(&c, past[i])}, CUDA_PRODUCT_FP8_LT, past[i]);
    c = config(4096, 14336, false, false, false);
    c.fp8_mma = false;
    c.fp8_hopper = false;
    expect_layer((struct cuda_step_plan[]){plan(&c, CUDA_FP8_GEMV_ROWS_NO_LT)}, CUDA_PRODUCT_FP8_GEMV,
                 CUDA_FP8_GEMV_ROWS_NO_LT);
    expect_layer((struct cuda_step_plan[]){plan(&c, CUDA_FP8_GEMV_ROWS_NO_LT + 1)}, CUDA_PRODUCT_FP8_DEQUANT,
                 CUDA_FP8_GEMV_ROWS_NO_LT + 1);
}

/* The scales the per-row FP8 loaders take (cuda_fp8_put_rows: the dense products with per-row
 * scales, and the experts' sk_moe_gemm_fp8): per output row, per tensor and dummies, not blocks
 * nor E5M2. */
Test(cuda_plan_fp8, row_scales)
{
    struct tensor t = {.dtype = DTYPE_F8_E4M3, .ndim = 2, .shape = {256, 512}, .scale_rows = 1, .scale_cols = 512};
    cr_expect(cuda_plan_fp8_row_scales(&t), "per row");
    t.scale_rows = 256;
    cr_expect(cuda_plan_fp8_row_scales(&t), "per tensor");
    t.scale_rows = 128, t.scale_cols = 128;
    cr_expect_not(cuda_plan_fp8_row_scales(&t), "128 x 128 blocks");
    t.scale_rows = 1, t.scale_cols = 128;
    cr_expect_not(cuda_plan_fp8_row_scales(&t), "1 x 128 groups");
    t.scale_cols = 512, t.dtype = DTYPE_F8_E5M2;
    cr_expect_not(cuda_plan_fp8_row_scales(&t), "E5M2");
    t.dtype = DTYPE_BF16;
    cr_expect_not(cuda_plan_fp8_row_scales(&t), "bf16");
}
