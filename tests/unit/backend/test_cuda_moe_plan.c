/* The CUDA backend's mixture-of-experts planning (cuda_moe_plan.h), on the CPU: which shapes the
 * expert kernels take (the fixtures' and the benchmark configs' do; beyond the kernels' limits
 * the backend refuses at load, naming the architecture and the limit), the scratch of one pass,
 * and the bytes a step's chosen experts weigh. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_moe_plan.h"
#include "worker/backend/cuda/cuda_plan.h"
#include "worker/model/model.h"

static struct model_config load(const char *path)
{
    struct model_config c;
    char err[512] = "";
    cr_assert_eq(model_config_from_json(&c, path, err, sizeof err), 0, "%s: %s", path, err);
    return c;
}

Test(cuda_moe_plan, takes_the_fixtures_and_the_bench_shapes)
{
    const char *paths[] = {"tests/fixtures/families/mixtral/config.json",
                           "tests/fixtures/families/mixtral_stacked/config.json",
                           "tests/fixtures/families/qwen2_moe/config.json",
                           "tests/fixtures/families/qwen2_moe_step2/config.json",
                           "tests/fixtures/families/qwen3_moe/config.json",
                           "tests/bench/configs/mixtral-8x7b-2layers/config.json",
                           "tests/bench/configs/qwen3-30b-a3b-4layers/config.json"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct model_config c = load(paths[i]);
        char err[512] = "";
        cr_assert_gt(c.moe.n_experts, 0, "%s", paths[i]);
        cr_assert_eq(cuda_plan_model_supported(&c, err, sizeof err), 0, "%s: %s", paths[i], err);
    }
    struct model_config dense = {.hidden_size = 64};
    cr_assert_eq(cuda_plan_model_supported(&dense, NULL, 0), 0);
}

Test(cuda_moe_plan, refuses_beyond_the_kernels_naming_the_architecture)
{
    struct model_config base = load("tests/fixtures/families/qwen3_moe/config.json");
    char err[512];
    struct model_config c = base;
    c.moe.n_experts = 512;
    cr_assert_lt(cuda_plan_model_supported(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "Qwen3MoeForCausalLM") && strstr(err, "512 experts") && strstr(err, "--device cpu"), "%s",
              err);
    c = base;
    c.moe.top_k = 17;
    cr_assert_lt(cuda_plan_model_supported(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "top 17") && strstr(err, "top-k"), "%s", err);
    c = base;
    c.moe.expert_intermediate = 20;
    cr_assert_lt(cuda_plan_model_supported(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "expert intermediate 20") && strstr(err, "multiples of 8"), "%s", err);
    c = base;
    c.moe.shared_intermediate = 12;
    cr_assert_lt(cuda_plan_model_supported(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "shared 12"), "%s", err);
}

Test(cuda_moe_plan, scratch_of_one_pass)
{
    struct model_config c = load("tests/fixtures/families/qwen2_moe/config.json");
    /* 8 experts, top 2, hidden 64, expert intermediate 16, shared 32. */
    struct cuda_moe_sizes s = cuda_moe_sizes(&c, 8192);
    cr_assert_eq(s.chunk, CUDA_MOE_CHUNK);
    cr_assert_eq(s.pairs, (int64_t)CUDA_MOE_CHUNK * 2);
    cr_assert_eq(s.logits, (int64_t)CUDA_MOE_CHUNK * 8);
    cr_assert_eq(s.act, s.pairs * 16);
    cr_assert_eq(s.y_exp, s.pairs * 64);
    cr_assert_eq(s.shared_act, (int64_t)CUDA_MOE_CHUNK * 32);
    cr_assert_eq(s.shared_y, (int64_t)CUDA_MOE_CHUNK * 64);
    size_t want = 4 * (size_t)(s.logits + s.pairs + s.y_exp + s.shared_y + s.chunk) + 4 * (size_t)(3 * s.pairs + 18) +
                  2 * (size_t)(s.act + s.shared_act);
    cr_assert_eq(s.bytes, want);
    /* A smaller batch bound: the pass is the whole batch. */
    s = cuda_moe_sizes(&c, 100);
    cr_assert_eq(s.chunk, 100);
    cr_assert_eq(s.pairs, 200);
    struct model_config m = load("tests/fixtures/families/mixtral/config.json");
    s = cuda_moe_sizes(&m, 4);
    cr_assert_eq(s.shared_act, 0);
    cr_assert_eq(s.shared_y, 0);
}

Test(cuda_moe_plan, bytes_of_the_chosen_experts)
{
    struct model_config c = load("tests/bench/configs/mixtral-8x7b-2layers/config.json");
    /* Mixtral 8x7B: router 8 x 4096, experts 3 x 14336 x 4096, bf16. */
    double router = 2.0 * 8 * 4096, expert = 2.0 * 3 * 14336.0 * 4096;
    cr_assert_float_eq(cuda_moe_layer_bytes(&c, 2, false), router + 2 * expert, 1.0);
    cr_assert_float_eq(cuda_moe_layer_bytes(&c, 8, false), router + 8 * expert, 1.0);
    /* In e4m3: a byte a weight and a float32 scale for each of an expert's 2 x 14336 + 4096 rows;
     * the router stays bf16. */
    double expert8 = 3 * 14336.0 * 4096 + 4.0 * (2 * 14336 + 4096);
    cr_assert_float_eq(cuda_moe_layer_bytes(&c, 2, true), router + 2 * expert8, 1.0);
    struct model_config q = load("tests/fixtures/families/qwen2_moe/config.json");
    /* The shared expert (32) and its gate count every step. */
    double want = 2.0 * (8 * 64 + 3 * 3 * 16 * 64 + 3 * 32 * 64 + 64);
    cr_assert_float_eq(cuda_moe_layer_bytes(&q, 3, false), want, 1e-6);
    want = 2.0 * (8 * 64 + 64) + 3 * (3 * 16 * 64 + 4 * (2 * 16 + 64)) + 3 * 32 * 64 + 4 * (2 * 32 + 64);
    cr_assert_float_eq(cuda_moe_layer_bytes(&q, 3, true), want, 1e-6);
    const int32_t choice[] = {3, 1, 3, 7, 1, 0, 3, 300, -1};
    cr_assert_eq(cuda_moe_distinct(choice, 7, 8), 4);
    cr_assert_eq(cuda_moe_distinct(choice, 9, 8), 4); /* out-of-range ids are not experts */
    cr_assert_eq(cuda_moe_distinct(choice, 0, 8), 0);
}

/* Which expert matrices the FP8 expert product takes (else they load as bf16): e4m3 with a scale
 * per row or per tensor (or dummies, quantized per row at load), columns a multiple of 16. */
Test(cuda_moe_plan, fp8_experts_the_kernel_takes)
{
    static const float s[1] = {1.0f};
    struct tensor rows[3];
    for (int i = 0; i < 3; i++)
        rows[i] = (struct tensor){.dtype = DTYPE_F8_E4M3, .ndim = 2, .shape = {32, 64}, .data = "x", .scale = s,
                                  .scale_rows = 1, .scale_cols = 64};
    cr_expect(cuda_moe_fp8_takes(rows, 3, 64), "per-row scales");
    cr_expect_not(cuda_moe_fp8_takes(rows, 3, 48), "a width other than the product's");
    cr_expect_not(cuda_moe_fp8_takes(rows, 0, 64), "no tensors");
    struct tensor t = rows[1];
    t.scale_rows = 32, t.scale_cols = 64; /* one scale for the tensor */
    rows[1] = t;
    cr_expect(cuda_moe_fp8_takes(rows, 3, 64), "a per-tensor scale among per-row ones");
    rows[1].data = NULL, rows[1].scale = NULL, rows[1].scale_rows = 1; /* a dummy, as --quantization fp8 leaves it */
    cr_expect(cuda_moe_fp8_takes(rows, 3, 64), "a dummy");
    rows[2].scale_rows = 16, rows[2].scale_cols = 16; /* blocks */
    cr_expect_not(cuda_moe_fp8_takes(rows, 3, 64), "block scales");
    cr_expect(cuda_moe_fp8_takes(rows, 2, 64), "the first two alone");
    rows[0].dtype = DTYPE_BF16;
    cr_expect_not(cuda_moe_fp8_takes(rows, 2, 64), "a bf16 tensor");
    struct tensor e5 = {.dtype = DTYPE_F8_E5M2, .ndim = 2, .shape = {32, 64}, .scale_rows = 1, .scale_cols = 64};
    cr_expect_not(cuda_moe_fp8_takes(&e5, 1, 64), "E5M2");
    struct tensor narrow = {.dtype = DTYPE_F8_E4M3, .ndim = 2, .shape = {64, 24}, .scale_rows = 1, .scale_cols = 24};
    cr_expect_not(cuda_moe_fp8_takes(&narrow, 1, 24), "24 columns: the kernel loads 16 codes at a time");
}
