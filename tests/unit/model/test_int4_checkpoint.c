/* GPTQ and AWQ checkpoints repacked at load into Q4_1 blocks (worker/model/int4_checkpoint.c),
 * on the fixtures of tests/fixtures/int4 (README.md there): every repacked matrix, dequantized
 * by worker/model/quant.c, against the same model dequantized by numpy (w = s (q - z), exact in
 * float32), and every configuration or tensor the loader cannot repack refused with a message
 * naming the field or tensor and its value. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/model.h"
#include "worker/model/model_internal.h"

#define FIX "tests/fixtures/int4"

static struct model *load(const char *name)
{
    char path[256], err[1024] = "";
    snprintf(path, sizeof path, FIX "/%s", name);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s", name, err);
    return m;
}

/* Half a unit in the last place of fp16 at |x|: how far rounding -s z to fp16 can move m. */
static double half_ulp16(double x)
{
    x = fabs(x);
    if (x < ldexp(1, -14)) return ldexp(1, -25);
    int e;
    frexp(x, &e); /* x = f 2^e, f in [0.5, 1) */
    return ldexp(1, e - 1 - 10 - 1);
}

struct stats {
    double worst;      /* the largest |repacked - numpy| */
    long inexact;      /* weights that differ at all */
};

/* Matrix got (repacked) against want (the numpy dequantization). A Q4_1 weight is d q + m with
 * d = s exactly (fp16 scales) and d q exact in float32, so it differs from s (q - z) only by the
 * rounding of m = -s z to fp16, at most half its ulp, and by float32's rounding of the sum
 * (2^-24 relative). A dequantized (act-order) F16 matrix is s (q - z) rounded once to fp16. */
static void compare(const char *what, const struct tensor *got, const struct tensor *want, enum dtype dt,
                    struct stats *st)
{
    cr_assert_eq(got->dtype, dt, "%s is %s, not %s", what, dtype_name(got->dtype), dtype_name(dt));
    cr_assert(got->ndim == 2 && got->shape[0] == want->shape[0] && got->shape[1] == want->shape[1], "%s: shape", what);
    int64_t n = tensor_numel(want);
    float *g = malloc((size_t)n * sizeof *g), *w = malloc((size_t)n * sizeof *w);
    tensor_to_f32(got, 0, false, g);
    tensor_to_f32(want, 0, false, w);
    for (int64_t i = 0; i < n; i++) {
        double bound = 0;
        if (dt == DTYPE_Q4_1) {
            uint16_t m;
            memcpy(&m, (const unsigned char *)got->data + (size_t)(i / 32) * 20 + 2, 2);
            bound = half_ulp16(model_f16_to_f32(m)) + ldexp(fabs((double)w[i]), -24);
        } else if (dt == DTYPE_F16) {
            bound = half_ulp16(w[i]);
        }
        double e = fabs((double)g[i] - (double)w[i]);
        cr_assert(e <= bound, "%s weight (%lld, %lld): %.9g, numpy's %.9g (bound %.3g)", what,
                  (long long)(i / want->shape[1]), (long long)(i % want->shape[1]), (double)g[i], (double)w[i],
                  bound);
        st->worst = fmax(st->worst, e);
        st->inexact += e > 0;
    }
    free(g), free(w);
}

static void compare_model(const char *name, const char *ref_name, enum dtype dt, struct stats *st)
{
    struct model *q = load(name), *r = load(ref_name);
    cr_assert_eq(q->config.n_layers, r->config.n_layers);
    /* The unquantized tensors are the file's own. */
    cr_assert_eq(q->tok_embed.dtype, DTYPE_F16);
    cr_assert(!memcmp(q->tok_embed.data, r->tok_embed.data, (size_t)tensor_numel(&r->tok_embed) * 2));
    cr_assert(!memcmp(q->final_norm.data, r->final_norm.data, (size_t)tensor_numel(&r->final_norm) * 2));
    for (int l = 0; l < q->config.n_layers; l++) {
        const struct layer_weights *a = &q->layers[l], *b = &r->layers[l];
        const struct tensor *ga[] = {&a->wq, &a->wk, &a->wv, &a->wo, &a->w_gate, &a->w_up, &a->w_down};
        const struct tensor *gb[] = {&b->wq, &b->wk, &b->wv, &b->wo, &b->w_gate, &b->w_up, &b->w_down};
        static const char *names[] = {"q", "k", "v", "o", "gate", "up", "down"};
        for (int i = 0; i < 7; i++) {
            char what[96];
            snprintf(what, sizeof what, "%s layer %d %s", name, l, names[i]);
            compare(what, ga[i], gb[i], dt, st);
        }
    }
    model_free(q);
    model_free(r);
}

/* Zeros 0..15 with full fp16 scales: m = -s z is rounded, so some weights differ, each within
 * the bound; v1 with its zeros of 0 written as GPTQModel writes them, v2, AWQ's order, and
 * Phi-3's fused qkv_proj and gate_up_proj split back into q, k, v, gate and up. */
Test(int4, asymmetric_checkpoints_repack_within_the_rounding_of_m)
{
    static const char *variants[] = {"gptq_g32_asym", "gptq_v2_g32_asym", "awq_g32", "gptq_phi3_fused"};
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        struct stats st = {0};
        compare_model(variants[v], "ref_base", DTYPE_Q4_1, &st);
        cr_log_info("%s: %ld weights differ from numpy's, by %.3g at most", variants[v], st.inexact, st.worst);
        cr_expect_gt(st.inexact, 0, "%s: no m was rounded; the fixture does not test the bound", variants[v]);
    }
}

/* A symmetric zero of 8: m = -8 s is exact, and so is every weight. Groups of 128: the 64-input
 * layers have one group of 64, down_proj one of 128, four blocks of the same scale. */
Test(int4, symmetric_group_128_repacks_exactly)
{
    struct stats st = {0};
    compare_model("gptq_g128_sym", "ref_g128_sym", DTYPE_Q4_1, &st);
    cr_expect_eq(st.inexact, 0, "%ld weights differ (by %g at most)", st.inexact, st.worst);
}

/* desc_act with g_idx scattering each group over the inputs: no Q4_1 block has one scale, so
 * the layers are dequantized to fp16, s (q - z) rounded once (exact for this fixture's scales). */
Test(int4, act_order_layers_are_dequantized_to_fp16)
{
    struct stats st = {0};
    compare_model("gptq_act_order", "ref_act_order", DTYPE_F16, &st);
    cr_expect_eq(st.inexact, 0, "%ld weights differ (by %g at most)", st.inexact, st.worst);
}

/* --- refusals --------------------------------------------------------------------------- */

/* A copy of fixture base's config.json with edit applied to its quantization_config (a JSON
 * object merged in; "-" as the whole edit removes it), beside a link to its weights; loading
 * it must fail naming each needle. */
static void expect_refused(const char *base, const char *edit, const char *needle1, const char *needle2)
{
    char dir[] = "/tmp/sluice-int4-XXXXXX", path[256], src[512], err[1024] = "";
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, FIX "/%s/config.json", base);
    json_t *cfg = json_load_file(path, 0, NULL);
    cr_assert(cfg, "%s", path);
    if (!strcmp(edit, "-")) {
        json_object_del(cfg, "quantization_config");
    } else {
        json_t *e = json_loads(edit, 0, NULL);
        cr_assert(e, "bad edit %s", edit);
        json_object_update(json_object_get(cfg, "quantization_config"), e);
        json_decref(e);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    cr_assert_eq(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    char *cwd = getcwd(NULL, 0);
    snprintf(src, sizeof src, "%s/" FIX "/%s/model.safetensors", cwd, base);
    free(cwd);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(symlink(src, path), 0);
    struct model *m = NULL;
    int rc = model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err);
    cr_expect_lt(rc, 0, "%s with %s loaded", base, edit);
    if (rc == 0) model_free(m);
    cr_expect(strstr(err, needle1) && (!needle2 || strstr(err, needle2)), "%s with %s: message '%s' lacks '%s' or '%s'",
              base, edit, err, needle1, needle2 ? needle2 : "");
    cr_log_info("refused: %s", err);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

Test(int4, unsupported_configs_are_refused_naming_field_and_value)
{
    const char *g = "gptq_g32_asym", *a = "awq_g32";
    expect_refused(g, "{\"bits\": 8}", "quantization_config.bits is 8", "config.json");
    expect_refused(g, "{\"bits\": 3}", "quantization_config.bits is 3", NULL);
    expect_refused(a, "{\"bits\": null, \"w_bit\": 2}", "quantization_config.w_bit is 2", NULL);
    expect_refused(g, "{\"group_size\": 48}", "quantization_config.group_size is 48", "multiple of 32");
    expect_refused(g, "{\"group_size\": 0}", "quantization_config.group_size is 0", NULL);
    expect_refused(a, "{\"group_size\": 16}", "quantization_config.group_size is 16", NULL);
    expect_refused(g, "{\"quant_method\": \"hqq\"}", "quant_method 'hqq'", NULL);
    expect_refused(a, "{\"version\": \"gemv\"}", "quantization_config.version is gemv", NULL);
    expect_refused(a, "{\"version\": \"gemv_fast\"}", "quantization_config.version is gemv_fast", NULL);
    expect_refused(a, "{\"zero_point\": false}", "quantization_config.zero_point is false", NULL);
    expect_refused(a, "{\"backend\": \"llm-awq\"}", "quantization_config.backend is llm-awq", NULL);
    expect_refused(g, "{\"checkpoint_format\": \"marlin\"}", "quantization_config.checkpoint_format is marlin", NULL);
    expect_refused(g, "{\"checkpoint_format\": null, \"format\": \"bitblas\"}", "quantization_config.format is bitblas",
                   NULL);
    expect_refused(g, "{\"pack_dtype\": \"int16\"}", "quantization_config.pack_dtype is int16", NULL);
    expect_refused(g, "{\"dynamic\": {\"-:.*down_proj\": {}}}", "quantization_config.dynamic", NULL);
}

Test(int4, tensors_that_do_not_fit_the_config_are_refused_naming_them)
{
    /* Groups of 64 over scales made for 32. */
    expect_refused("gptq_g32_asym", "{\"group_size\": 64}", "model.layers.0.self_attn.q_proj.qzeros", "group_size 64");
    /* Act-order without the g_idx it needs (the v2 fixture has none). */
    expect_refused("gptq_v2_g32_asym", "{\"desc_act\": true}", "model.layers.0.self_attn.q_proj.g_idx", "desc_act");
    /* GPTQ's tensors read as AWQ's: a qweight [8, 64] is 8 inputs. */
    expect_refused("gptq_g32_asym", "{\"quant_method\": \"awq\", \"version\": \"gemm\"}",
                   "model.layers.0.self_attn.q_proj.qweight", "multiples of 32");
    /* Quantized weights and no quantization_config: say so rather than "missing". */
    expect_refused("gptq_g32_asym", "-", "model.layers.0.self_attn.q_proj.qweight", "quantization_config");
}

/* The fp16 rounding m goes through: every finite half back to itself, halfway cases to even,
 * overflow to infinity, subnormals. */
Test(int4, f32_to_f16_rounds_to_nearest_even)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        float f = model_f16_to_f32((uint16_t)h);
        cr_assert_eq(model_f32_to_f16(f), h, "half 0x%04x (%g)", h, (double)f);
        if ((h & 0x7fff) == 0x7bff) continue;
        /* Halfway to the next half up in magnitude: to whichever is even. */
        float next = model_f16_to_f32((uint16_t)(h + 1)), mid = (float)(((double)f + (double)next) / 2);
        cr_assert_eq(model_f32_to_f16(mid), (h & 1) ? h + 1 : h, "midpoint above 0x%04x", h);
    }
    cr_expect_eq(model_f32_to_f16(65519.0f), 0x7bff);
    cr_expect_eq(model_f32_to_f16(65520.0f), 0x7c00);
    cr_expect_eq(model_f32_to_f16(-1e9f), 0xfc00);
    cr_expect_eq(model_f32_to_f16(ldexpf(1, -26)), 0);
    cr_expect_eq(model_f32_to_f16(ldexpf(3, -26)), 1);
}
