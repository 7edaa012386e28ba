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
    cr_assert_float_eq(cuda_moe_layer_bytes(&c, 2), router + 2 * expert, 1.0);
    cr_assert_float_eq(cuda_moe_layer_bytes(&c, 8), router + 8 * expert, 1.0);
    struct model_config q = load("tests/fixtures/families/qwen2_moe/config.json");
    /* The shared expert (32) and its gate count every step. */
    double want = 2.0 * (8 * 64 + 3 * 3 * 16 * 64 + 3 * 32 * 64 + 64);
    cr_assert_float_eq(cuda_moe_layer_bytes(&q, 3), want, 1e-6);
    const int32_t choice[] = {3, 1, 3, 7, 1, 0, 3, 300, -1};
    cr_assert_eq(cuda_moe_distinct(choice, 7, 8), 4);
    cr_assert_eq(cuda_moe_distinct(choice, 9, 8), 4); /* out-of-range ids are not experts */
    cr_assert_eq(cuda_moe_distinct(choice, 0, 8), 0);
}
