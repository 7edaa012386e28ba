/* The CUDA backend refuses at load every model feature it does not compute, naming it; the
 * families' additions unless --cuda-options families=1 (not yet checked on a GPU), with which it
 * takes every family fixture of tests/fixtures/families but OLMo 2 (tests/gpu/test_families.c
 * checks its answers on them). */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "worker/backend/cuda/cuda_features.h"
#include "worker/model/model.h"

static void expect(const char *fixture, bool families, const char *feature)
{
    char path[512], err[1024] = "";
    snprintf(path, sizeof path, "tests/fixtures/families/%s", fixture);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s: %s", fixture, err);
    int rc = cuda_config_supported(&m->config, families, err, sizeof err);
    if (!feature) {
        cr_expect_eq(rc, 0, "%s refused: %s", fixture, err);
    } else {
        cr_expect_lt(rc, 0, "%s accepted", fixture);
        cr_expect(strstr(err, feature) != NULL, "%s: message lacks '%s': %s", fixture, feature, err);
        cr_expect(strstr(err, m->config.arch_name) != NULL, "%s: message lacks the architecture: %s", fixture, err);
    }
    model_free(m);
}

Test(cuda_features, refuses_what_the_gpu_does_not_compute)
{
    expect("llama_llama3", false, NULL);
    expect("llama_bias_linear", false, "attention_bias");
    expect("llama_dynamic", false, "dynamic");
    expect("llama_yarn", false, "yarn");
    expect("phi3_longrope", false, "longrope");
    expect("mistral_sliding", false, "sliding_window");
    expect("gemma", false, "gelu_pytorch_tanh");
    expect("gemma2", false, "gelu_pytorch_tanh");
    expect("gemma3", false, "gelu_pytorch_tanh");
    expect("granite", false, "attention_bias");
    expect("gemma2", false, "families=1");
    expect("olmo2", false, "norms after attention");
    expect("olmo2", true, "norms after attention");
}

Test(cuda_features, families_take_the_fixtures_it_computes)
{
    const char *fixtures[] = {"llama_llama3", "llama_bias_linear", "llama_dynamic", "llama_yarn", "phi3_longrope",
                              "mistral_sliding", "gemma", "gemma2", "gemma3", "gemma3_mm", "granite"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) expect(fixtures[i], true, NULL);
}
