/* FP8 checkpoints (worker/model/fp8.c): e4m3/e5m2 decoding of every code against torch, the
 * three scale layouts Hugging Face publishes (per tensor, per channel, DeepSeek's blocks)
 * dequantized exactly as torch does, --quantization fp8 byte for byte as torch's per-row
 * quantization, and configs that must be refused. Fixtures: tests/fixtures/fp8 (README.md). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/model/fp8_fixture.h"
#include "worker/model/fp8.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"
#include "worker/model/model_moe.h"

static struct model *load(const char *variant)
{
    char path[256], err[1024] = "";
    snprintf(path, sizeof path, FP8_FIXTURE_DIR "/%s", variant);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s", path, err);
    return m;
}

Test(fp8, every_code_decodes_as_torch)
{
    int64_t n4 = 0, n5 = 0;
    float *t4 = fp8_fixture_read("e4m3_table", &n4), *t5 = fp8_fixture_read("e5m2_table", &n5);
    cr_assert(t4 && t5 && n4 == 256 && n5 == 256, "expected.safetensors lacks the code tables");
    for (int i = 0; i < 256; i++) {
        float a = fp8_e4m3_to_f32((uint8_t)i), b = fp8_e5m2_to_f32((uint8_t)i);
        cr_expect(isnan(t4[i]) ? isnan(a) : a == t4[i], "e4m3 0x%02x decodes to %g, torch says %g", i, (double)a,
                  (double)t4[i]);
        cr_expect(isnan(t5[i]) ? isnan(b) : b == t5[i], "e5m2 0x%02x decodes to %g, torch says %g", i, (double)b,
                  (double)t5[i]);
        if (!isnan(t4[i]))
            cr_expect_eq(fp8_e4m3_from_f32(t4[i]), (uint8_t)i, "e4m3 of %g is 0x%02x, not 0x%02x", (double)t4[i],
                         fp8_e4m3_from_f32(t4[i]), i);
    }
    /* Halfway cases round to even; beyond the largest finite, saturate. */
    cr_expect_eq(fp8_e4m3_from_f32(1.0625f), 0x38, "1.0625 lies between 1 and 1.125: to even, 1.0");
    cr_expect_eq(fp8_e4m3_from_f32(1.1875f), 0x3a, "1.1875 lies between 1.125 and 1.25: to even, 1.25");
    cr_expect_eq(fp8_e4m3_from_f32(1000.0f), 0x7e);
    cr_expect_eq(fp8_e4m3_from_f32(-1000.0f), 0xfe);
    free(t4);
    free(t5);
}

static void expect_dequantized(const char *variant)
{
    struct model *m = load(variant);
    const struct tensor *ts[2] = {&m->layers[0].wq, &m->layers[1].w_down};
    const char *names[2] = {"wq0", "wd1"};
    for (int k = 0; k < 2; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s.%s", variant, names[k]);
        int64_t n = 0;
        float *want = fp8_fixture_read(key, &n);
        cr_assert(want, "expected.safetensors lacks %s", key);
        cr_assert_eq(ts[k]->dtype, DTYPE_F8_E4M3, "%s: %s loaded as %s", variant, names[k], dtype_name(ts[k]->dtype));
        cr_assert_eq(tensor_numel(ts[k]), n);
        float *got = malloc((size_t)n * sizeof *got);
        tensor_to_f32(ts[k], 0, false, got);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            if (got[i] != want[i] && bad++ < 5)
                cr_expect_fail("%s: element %lld (row %lld, col %lld) is %.9g, torch says %.9g", key, (long long)i,
                               (long long)(i / ts[k]->shape[1]), (long long)(i % ts[k]->shape[1]), (double)got[i],
                               (double)want[i]);
        }
        cr_expect_eq(bad, 0, "%s: %d of %lld elements differ", key, bad, (long long)n);
        free(got);
        free(want);
    }
    /* Embeddings, norms and lm_head stay as the checkpoint has them. */
    cr_expect_eq(m->tok_embed.dtype, DTYPE_F32);
    cr_expect_eq(m->lm_head.dtype, DTYPE_F32);
    model_free(m);
}

Test(fp8, per_tensor_scales_dequantize_as_torch) { expect_dequantized("tensor"); }
Test(fp8, compressed_tensors_channel_scales_dequantize_as_torch) { expect_dequantized("channel"); }
Test(fp8, block_scales_dequantize_as_torch) { expect_dequantized("block"); }

Test(fp8, quantization_flag_matches_torch_per_row)
{
    struct model *m = load("ref");
    char err[512] = "";
    cr_assert_eq(model_quantize(m, MODEL_QUANT_FP8, err, sizeof err), 0, "%s", err);
    const struct tensor *ts[2] = {&m->layers[0].wq, &m->layers[1].w_down};
    const char *names[2] = {"wq0", "wd1"};
    for (int k = 0; k < 2; k++) {
        char key[64];
        int64_t nq = 0, ns = 0;
        snprintf(key, sizeof key, "rowquant.%s.q", names[k]);
        uint8_t *q = fp8_fixture_read(key, &nq);
        snprintf(key, sizeof key, "rowquant.%s.scale", names[k]);
        float *s = fp8_fixture_read(key, &ns);
        cr_assert(q && s);
        const struct tensor *t = ts[k];
        cr_assert_eq(t->dtype, DTYPE_F8_E4M3);
        cr_assert_eq(ns, t->shape[0]);
        cr_assert_eq(t->scale_rows, 1);
        cr_assert_eq(t->scale_cols, t->shape[1]);
        for (int64_t r = 0; r < ns; r++)
            cr_expect_eq(t->scale[r], s[r], "%s: row %lld's scale is %.9g, torch says %.9g", names[k], (long long)r,
                         (double)t->scale[r], (double)s[r]);
        const uint8_t *got = t->data;
        int bad = 0;
        for (int64_t i = 0; i < nq; i++)
            if (got[i] != q[i] && bad++ < 5)
                cr_expect_fail("%s: weight %lld is 0x%02x, torch says 0x%02x", names[k], (long long)i, got[i], q[i]);
        cr_expect_eq(bad, 0);
        free(q);
        free(s);
    }
    cr_expect_eq(m->tok_embed.dtype, DTYPE_F32, "embeddings are not quantized");
    cr_expect_eq(m->layers[0].attn_norm.dtype, DTYPE_F32, "norms are not quantized");
    model_free(m);
}

Test(fp8, quantization_of_dummy_weights_is_per_row_of_their_bf16_values)
{
    char err[512] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, FP8_FIXTURE_DIR "/ref", MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    cr_assert_eq(model_quantize(m, MODEL_QUANT_FP8, err, sizeof err), 0, "%s", err);
    const struct tensor *t = &m->layers[0].w_up;
    cr_assert_eq(t->dtype, DTYPE_F8_E4M3);
    const int64_t cols = t->shape[1];
    float *row = malloc((size_t)cols * sizeof *row), *got = malloc((size_t)cols * sizeof *got);
    uint8_t *q = malloc((size_t)cols);
    for (int64_t r = 0; r < t->shape[0]; r += 7) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = fp8_round_bf16(model_dummy_value(m->dummy_seed, t->dummy_id, (uint64_t)(r * cols + c)));
        float s = fp8_quantize_row(row, cols, q);
        tensor_range_to_f32(t, m->dummy_seed, false, r * cols, (r + 1) * cols, got);
        for (int64_t c = 0; c < cols; c++) {
            cr_expect_eq(got[c], fp8_e4m3_to_f32(q[c]) * s, "row %lld col %lld", (long long)r, (long long)c);
            cr_expect(fabsf(got[c] - row[c]) <= fabsf(row[c]) / 16 + s / 512,
                      "row %lld col %lld: %g quantized to %g, beyond e4m3's rounding", (long long)r, (long long)c,
                      (double)row[c], (double)got[c]);
        }
    }
    free(row);
    free(got);
    free(q);
    model_free(m);
}

/* Every row of q (quantized by --quantization fp8) as fp8_quantize_row quantizes src's row. */
static void expect_rows_quantized(const struct tensor *q, const struct tensor *src, uint64_t seed, const char *what)
{
    cr_assert_eq(q->dtype, DTYPE_F8_E4M3, "%s is %s", what, dtype_name(q->dtype));
    cr_assert(q->scale_rows == 1 && q->scale_cols == q->shape[1], "%s: a scale per row", what);
    const int64_t rows = q->shape[0], cols = q->shape[1];
    float *row = malloc((size_t)cols * sizeof *row);
    uint8_t *want = malloc((size_t)cols);
    int bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        tensor_range_to_f32(src, seed, false, r * cols, (r + 1) * cols, row);
        const float s = fp8_quantize_row(row, cols, want);
        bad += s != q->scale[r] || memcmp(want, (const uint8_t *)q->data + r * cols, (size_t)cols) != 0;
    }
    cr_expect_eq(bad, 0, "%s: %d of %lld rows differ from fp8_quantize_row", what, bad, (long long)rows);
    free(row);
    free(want);
}

/* t (of a model quantized with --quantization fp8) as src (the same checkpoint, not quantized). */
static void expect_kept(const struct tensor *t, const struct tensor *src, const char *what)
{
    cr_assert(t->dtype == src->dtype && t->dtype != DTYPE_F8_E4M3, "%s is %s", what, dtype_name(t->dtype));
    cr_expect(memcmp(t->data, src->data, tensor_row_bytes(t) * (size_t)t->shape[0]) == 0, "%s changed", what);
}

/* A mixture-of-experts model: each expert's and the shared expert's matrices per row as a dense
 * MLP's; the routers and the shared expert's gate stay as they were (vLLM leaves them). */
Test(fp8, quantization_of_experts_per_row_routers_kept)
{
    const char *path = "tests/fixtures/families/qwen2_moe";
    char err[512] = "";
    struct model *m = NULL, *src = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s (run from the repository root)",
                 path, err);
    cr_assert_eq(model_load(&src, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    cr_assert_eq(model_quantize(m, MODEL_QUANT_FP8, err, sizeof err), 0, "%s", err);
    int sparse = 0;
    for (int l = 0; l < m->config.n_layers; l++) {
        const struct moe_weights *W = m->layers[l].moe, *S = src->layers[l].moe;
        if (!W) continue;
        sparse++;
        expect_kept(&W->router, &S->router, "a router");
        expect_kept(&W->shared_expert_gate, &S->shared_expert_gate, "the shared expert's gate");
        for (int e = 0; e < m->config.moe.n_experts; e++) {
            expect_rows_quantized(&W->gate[e], &S->gate[e], m->dummy_seed, "an expert's gate");
            expect_rows_quantized(&W->up[e], &S->up[e], m->dummy_seed, "an expert's up");
            expect_rows_quantized(&W->down[e], &S->down[e], m->dummy_seed, "an expert's down");
        }
        expect_rows_quantized(&W->shared_gate_proj, &S->shared_gate_proj, m->dummy_seed, "the shared gate_proj");
        expect_rows_quantized(&W->shared_up, &S->shared_up, m->dummy_seed, "the shared up");
        expect_rows_quantized(&W->shared_down, &S->shared_down, m->dummy_seed, "the shared down");
    }
    cr_expect_eq(sparse, 2, "qwen2_moe has two sparse layers (layer 1 is dense)");
    expect_rows_quantized(&m->layers[1].w_up, &src->layers[1].w_up, m->dummy_seed, "the dense layer's up");
    model_free(m);
    model_free(src);
}

static void expect_config_refused(const char *qcfg, const char *needle)
{
    char dir[] = "/tmp/sluice-fp8-XXXXXX", path[128], err[512] = "";
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"hidden_size\": 64, \"quantization_config\": %s}", qcfg);
    fclose(f);
    struct fp8_qconfig q;
    cr_expect_neq(fp8_qconfig_load(&q, path, err, sizeof err), 0, "%s was accepted", qcfg);
    cr_expect(strstr(err, needle) && strstr(err, path), "message '%s' names neither '%s' nor the file", err, needle);
    unlink(path);
    rmdir(dir);
}

Test(fp8, other_quantization_configs_are_refused_by_name)
{
    expect_config_refused("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}", "bitsandbytes");
    expect_config_refused("{\"quant_method\": \"fp8\", \"weight_block_size\": [128]}", "weight_block_size");
    expect_config_refused("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\"}",
                          "pack-quantized");
    expect_config_refused("{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", "
                          "\"config_groups\": {\"g\": {\"weights\": {\"num_bits\": 4, \"type\": \"int\"}}}}",
                          "8-bit float");
}

Test(fp8, gguf_block_types_cannot_be_quantized_again)
{
    struct tensor t = {.dtype = DTYPE_Q8_0, .ndim = 2, .shape = {2, 32}, .data = "x"};
    struct layer_weights L = {.wq = t};
    struct model m = {.config = {.n_layers = 1}, .layers = &L};
    char err[256] = "";
    cr_expect_neq(model_quantize(&m, MODEL_QUANT_FP8, err, sizeof err), 0);
    cr_expect(strstr(err, "Q8_0"), "%s", err);
}

Test(fp8, quantization_flag_text)
{
    enum model_quantization q;
    char err[256];
    cr_expect_eq(model_quantization_parse("fp8", &q, err, sizeof err), 0);
    cr_expect_eq(q, MODEL_QUANT_FP8);
    cr_expect_eq(model_quantization_parse("none", &q, err, sizeof err), 0);
    cr_expect_eq(q, MODEL_QUANT_NONE);
    cr_expect_neq(model_quantization_parse("int4", &q, err, sizeof err), 0);
    cr_expect(strstr(err, "int4"));
}

Test(fp8, quantization_of_a_tall_matrix_in_threads_equals_row_by_row)
{
    /* Enough rows for every thread's share (rows are split only from 64 a thread). */
    enum { ROWS = 64 * 40 + 7, COLS = 48 };
    float *w = malloc(sizeof(float) * ROWS * COLS), *row = malloc(sizeof(float) * COLS);
    for (int i = 0; i < ROWS * COLS; i++) w[i] = model_dummy_value(7, 1, (uint64_t)i) * (float)(1 + i % 97);
    struct layer_weights L = {0};
    struct tensor tpl = {.dtype = DTYPE_F32, .ndim = 2, .shape = {ROWS, COLS}, .data = w};
    L.wq = L.wk = L.wv = L.wo = L.w_gate = L.w_up = L.w_down = tpl;
    struct model m = {.config = {.n_layers = 1}, .layers = &L, .source = calloc(1, sizeof(struct model_source))};
    char err[256] = "";
    cr_assert_eq(model_quantize(&m, MODEL_QUANT_FP8, err, sizeof err), 0, "%s", err);
    uint8_t q[COLS];
    int bad = 0;
    for (int r = 0; r < ROWS; r++) {
        memcpy(row, w + (size_t)r * COLS, sizeof(float) * COLS);
        float s = fp8_quantize_row(row, COLS, q);
        if (s != L.w_down.scale[r] || memcmp(q, (const uint8_t *)L.w_down.data + (size_t)r * COLS, COLS)) bad++;
    }
    cr_expect_eq(bad, 0, "%d of %d rows differ from fp8_quantize_row", bad, ROWS);
    model_source_free(m.source);
    free(w);
    free(row);
}

static void expect_refused(const char *variant, const char *needle1, const char *needle2)
{
    char path[256], err[1024] = "";
    snprintf(path, sizeof path, FP8_FIXTURE_DIR "/%s", variant);
    struct model *m = NULL;
    cr_expect_neq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s loaded", variant);
    cr_expect(strstr(err, needle1) && strstr(err, needle2) && strstr(err, "model.safetensors"),
              "%s: the message '%s' names neither '%s', '%s' nor the file", variant, err, needle1, needle2);
    model_free(m);
}

Test(fp8, a_matrix_without_its_scale_is_refused_by_name)
{
    expect_refused("broken_missing_scale", "'model.layers.1.mlp.up_proj.weight'", "weight_scale_inv");
}

Test(fp8, a_scale_of_another_shape_is_refused_by_name)
{
    expect_refused("broken_scale_shape", "model.layers.0.self_attn.k_proj.weight_scale", "3 elements");
}
