/* The CPU backend on FP8 checkpoints (dequantized at load): the last position's logits of the
 * fixture's prompt against Hugging Face's LlamaForCausalLM run with the same dequantized
 * weights, for each scale layout, and the f32 model quantized with --quantization fp8 within
 * the error e4m3 weights cause. Fixtures: tests/fixtures/fp8 (README.md). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/model/fp8_fixture.h"
#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define VOCAB 128

/* The fixture prompt's last-position logits from the CPU backend. */
static void last_logits_act(struct model *m, const int32_t *tokens, int n, float *out, int act_rows)
{
    struct backend_options opt = {.kv_blocks = 4, .max_batch_tokens = 64, .max_batch_seqs = 1, .cpu.n_threads = 1,
                                  .cpu.fp8_act_rows = {act_rows, act_rows, act_rows, act_rows}};
    struct backend *b = NULL;
    char err[512] = "";
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    int32_t table[4] = {0, 1, 2, 3};
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    struct batch_seq seq = {.n_new = n, .start_pos = 0, .block_table = table, .n_blocks = 4, .sample = true,
                            .sampling = &greedy, .history = tokens, .n_history = n};
    struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = n, .tokens = tokens, .logits_out = out};
    struct sample_result res;
    cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
    backend_free(b);
}

static void last_logits(struct model *m, const int32_t *tokens, int n, float *out)
{
    last_logits_act(m, tokens, n, out, 0);
}

static void expect_logits(const char *variant, bool quantize, float bound)
{
    char path[256], key[64], err[512] = "";
    snprintf(path, sizeof path, FP8_FIXTURE_DIR "/%s", variant);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    if (quantize) cr_assert_eq(model_quantize(m, MODEL_QUANT_FP8, err, sizeof err), 0, "%s", err);
    cr_assert_eq(m->config.vocab_size, VOCAB);
    int64_t nt = 0, nl = 0;
    int32_t *tokens = fp8_fixture_read("tokens", &nt);
    snprintf(key, sizeof key, "%s.logits", variant);
    float *want = fp8_fixture_read(key, &nl);
    cr_assert(tokens && want && nl == nt * VOCAB, "expected.safetensors lacks %s", key);
    float got[VOCAB];
    last_logits(m, tokens, (int)nt, got);
    const float *w = want + (nt - 1) * VOCAB;
    float worst = 0.0f;
    int at = 0;
    for (int v = 0; v < VOCAB; v++)
        if (fabsf(got[v] - w[v]) > worst) worst = fabsf(got[v] - w[v]), at = v;
    cr_expect(worst <= bound, "%s%s: logit %d is %g, Hugging Face says %g (bound %g)", variant,
              quantize ? " --quantization fp8" : "", at, (double)got[at], (double)w[at], (double)bound);
    free(tokens);
    free(want);
    model_free(m);
}

/* The same dequantized weights in float32 on both sides: only summation order differs. */
Test(cpu_fp8, per_tensor_checkpoint_matches_transformers) { expect_logits("tensor", false, 1e-4f); }
Test(cpu_fp8, channel_checkpoint_matches_transformers) { expect_logits("channel", false, 1e-4f); }
Test(cpu_fp8, block_checkpoint_matches_transformers) { expect_logits("block", false, 1e-4f); }
/* The unquantized model against its own float32 logits first (the harness is right), then
 * quantized per row at load: e4m3 keeps 3 mantissa bits (relative error up to 1/16 a weight,
 * about 1/50 on average); over two layers of this model the logits (spread about +-1) move by
 * a few hundredths. 0.15 is several times what the fixture shows and far below what a wrong
 * scale or a transposed matrix gives (errors of the logits' own size). */
Test(cpu_fp8, f32_checkpoint_matches_transformers) { expect_logits("ref", false, 1e-4f); }
Test(cpu_fp8, f32_checkpoint_quantized_at_load_stays_close) { expect_logits("ref", true, 0.15f); }

/* The yardstick for CUDA's cuBLASLt FP8 path (backend_options.cpu.fp8_act_rows): in a step of
 * at least that many tokens the products' inputs are rounded to e4m3 per token, which moves the
 * logits by about e4m3's relative rounding (a few percent, bound 0.15 as above) but not to zero;
 * in a smaller step nothing changes, bit for bit. */
Test(cpu_fp8, e4m3_activation_yardstick)
{
    char err[512] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, FP8_FIXTURE_DIR "/channel", MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    int64_t nt = 0;
    int32_t *tokens = fp8_fixture_read("tokens", &nt);
    cr_assert(tokens && nt > 1);
    float plain[VOCAB], rounded[VOCAB], above[VOCAB];
    last_logits(m, tokens, (int)nt, plain);
    last_logits_act(m, tokens, (int)nt, rounded, (int)nt);
    last_logits_act(m, tokens, (int)nt, above, (int)nt + 1);
    float worst = 0.0f;
    for (int v = 0; v < VOCAB; v++) worst = fmaxf(worst, fabsf(rounded[v] - plain[v]));
    cr_expect(worst > 0.0f && worst <= 0.15f, "e4m3 activations move the logits by %g (expected (0, 0.15])",
              (double)worst);
    cr_expect(memcmp(above, plain, sizeof plain) == 0, "a step under cpu_options.fp8_act_rows is untouched");
    free(tokens);
    model_free(m);
}
