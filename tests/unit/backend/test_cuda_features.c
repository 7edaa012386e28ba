/* The CUDA backend refuses at load every model feature it does not compute, naming it: each
 * family fixture of tests/fixtures/families, and a plain Llama passes. */
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
    expect("llama_llama3", NULL);
    expect("llama_bias_linear", "attention_bias");
    expect("llama_dynamic", "dynamic");
    expect("llama_yarn", "yarn");
    expect("phi3_longrope", "longrope");
    expect("mistral_sliding", "sliding_window");
    expect("gemma", "gelu_pytorch_tanh");
    expect("gemma2", "gelu_pytorch_tanh");
    expect("gemma3", "gelu_pytorch_tanh");
    expect("olmo2", "norms after attention");
    expect("granite", "attention_bias");
}
