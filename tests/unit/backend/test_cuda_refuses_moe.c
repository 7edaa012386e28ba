/* The CUDA backend refuses mixture-of-experts models at load, naming the architecture, before
 * it looks for a GPU: it has no expert kernels, and must not compute a dense MLP in their place. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_plan.h"
#include "worker/model/model.h"

static const char *fixtures[] = {"mixtral", "qwen2_moe", "qwen3_moe"};
static const char *archs[] = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"};

Test(cuda_refuses_moe, plan_names_the_architecture)
{
    for (int i = 0; i < 3; i++) {
        char path[256], err[512] = "";
        snprintf(path, sizeof path, "tests/fixtures/families/%s/config.json", fixtures[i]);
        struct model_config c;
        cr_assert_eq(model_config_from_json(&c, path, err, sizeof err), 0, "%s", err);
        cr_assert_lt(cuda_plan_model_supported(&c, err, sizeof err), 0);
        cr_assert(strstr(err, archs[i]) && strstr(err, "mixture-of-experts") && strstr(err, "--device cpu"), "%s", err);
    }
    struct model_config dense = {.hidden_size = 64};
    cr_assert_eq(cuda_plan_model_supported(&dense, NULL, 0), 0);
}

Test(cuda_refuses_moe, backend_create_refuses_before_looking_for_a_gpu)
{
    char err[512] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, "tests/fixtures/families/qwen3_moe/config.json", MODEL_LOAD_DUMMY, err, sizeof err), 0,
                 "%s", err);
    struct backend *b = (struct backend *)1;
    struct backend_options opt = {0};
    cr_assert_lt(backend_cuda_create(&b, m, &opt, err, sizeof err), 0);
    cr_assert_null(b);
#ifdef SLUICE_HAVE_CUDA
    cr_assert(strstr(err, "Qwen3MoeForCausalLM is a mixture-of-experts model (8 experts, top 2)"), "%s", err);
#endif
    model_free(m);
}
