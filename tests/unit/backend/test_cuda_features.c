/* The CUDA backend refuses at load every model feature it does not compute, naming it, and
 * takes every family fixture of tests/fixtures/families that it computes (tests/gpu/
 * test_families.c checks its answers on them). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "worker/backend/cuda/cuda_features.h"
#include "worker/model/model.h"

static void expect(const char *fixture, const char *feature)
{
    char path[512], err[1024] = "";
    snprintf(path, sizeof path, "tests/fixtures/families/%s", fixture);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s: %s", fixture, err);
    int rc = cuda_config_supported(&m->config, err, sizeof err);
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
    expect("olmo2", "norms after attention");
}

Test(cuda_features, takes_the_families_it_computes)
{
    const char *fixtures[] = {"llama_llama3", "llama_bias_linear", "llama_dynamic", "llama_yarn", "phi3_longrope",
                              "mistral_sliding", "gemma", "gemma2", "gemma3", "gemma3_mm", "granite"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) expect(fixtures[i], NULL);
}
