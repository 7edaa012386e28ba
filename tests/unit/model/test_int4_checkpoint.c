/* GPTQ and AWQ checkpoints repacked at load into Q4_1 blocks (worker/model/int4_checkpoint.c),
 * on the fixtures of tests/fixtures/int4 (README.md there): every repacked matrix, dequantized
 * by worker/model/quant.c, against the same model dequantized by numpy (w = s (q - z), exact in
 * float32), a Mixtral's experts among them; settings read from quantize_config.json or
 * quant_config.json as from config.json; and every configuration or tensor the loader cannot
 * repack refused with a message naming the file, the field or tensor and its value. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/model.h"
#include "worker/model/model_internal.h"
#include "worker/model/model_moe.h"

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

/* Calls fn on each pair of linear layers of a and b (the same architecture): q, k, v, o and the
 * dense MLP's, or each expert's. */
typedef void (*pair_fn)(const char *what, const struct tensor *x, const struct tensor *y, void *ctx);

static void each_linear(const char *name, const struct model *a, const struct model *b, pair_fn fn, void *ctx)
{
    cr_assert_eq(a->config.n_layers, b->config.n_layers);
    char what[128];
    for (int l = 0; l < a->config.n_layers; l++) {
        const struct layer_weights *x = &a->layers[l], *y = &b->layers[l];
        const struct tensor *tx[] = {&x->wq, &x->wk, &x->wv, &x->wo, &x->w_gate, &x->w_up, &x->w_down};
        const struct tensor *ty[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w_gate, &y->w_up, &y->w_down};
        static const char *names[] = {"q", "k", "v", "o", "gate", "up", "down"};
        for (int i = 0; i < 7; i++) {
            snprintf(what, sizeof what, "%s layer %d %s", name, l, names[i]);
            cr_assert_eq(tx[i]->ndim, ty[i]->ndim, "%s", what);
            if (ty[i]->ndim) fn(what, tx[i], ty[i], ctx);
        }
        cr_assert_eq(!x->moe, !y->moe, "%s layer %d: one is sparse, the other not", name, l);
        for (int e = 0; y->moe && e < b->config.moe.n_experts; e++) {
            const struct tensor *ex[] = {&x->moe->gate[e], &x->moe->up[e], &x->moe->down[e]};
            const struct tensor *ey[] = {&y->moe->gate[e], &y->moe->up[e], &y->moe->down[e]};
            for (int i = 0; i < 3; i++) {
                snprintf(what, sizeof what, "%s layer %d expert %d %s", name, l, e, names[4 + i]);
                fn(what, ex[i], ey[i], ctx);
            }
        }
    }
}

static size_t tensor_bytes(const struct tensor *t)
{
    return t->ndim == 2 ? (size_t)t->shape[0] * tensor_row_bytes(t) : tensor_row_bytes(t);
}

/* The same dtype, shape and bytes. */
static void expect_same_bytes(const char *what, const struct tensor *x, const struct tensor *y, void *ctx)
{
    (void)ctx;
    cr_assert(x->dtype == y->dtype && x->ndim == y->ndim && x->shape[0] == y->shape[0] && x->shape[1] == y->shape[1],
              "%s: %s, not %s, or another shape", what, dtype_name(x->dtype), dtype_name(y->dtype));
    cr_assert(!memcmp(x->data, y->data, tensor_bytes(y)), "%s: other values", what);
}

/* The tensors that stay as the file has them: embeddings, norms, routers. */
static void expect_same_unquantized(const char *name, const struct model *a, const struct model *b)
{
    char what[128];
    expect_same_bytes("tok_embed", &a->tok_embed, &b->tok_embed, NULL);
    expect_same_bytes("lm_head", &a->lm_head, &b->lm_head, NULL);
    expect_same_bytes("final_norm", &a->final_norm, &b->final_norm, NULL);
    for (int l = 0; l < b->config.n_layers; l++) {
        snprintf(what, sizeof what, "%s layer %d norm", name, l);
        expect_same_bytes(what, &a->layers[l].attn_norm, &b->layers[l].attn_norm, NULL);
        expect_same_bytes(what, &a->layers[l].ffn_norm, &b->layers[l].ffn_norm, NULL);
        snprintf(what, sizeof what, "%s layer %d router", name, l);
        if (b->layers[l].moe) expect_same_bytes(what, &a->layers[l].moe->router, &b->layers[l].moe->router, NULL);
    }
}

struct compare_ctx {
    enum dtype dt;
    struct stats *st;
};

static void compare_pair(const char *what, const struct tensor *x, const struct tensor *y, void *ctx)
{
    const struct compare_ctx *c = ctx;
    compare(what, x, y, c->dt, c->st);
}

static void compare_model(const char *name, const char *ref_name, enum dtype dt, struct stats *st)
{
    struct model *q = load(name), *r = load(ref_name);
    /* The unquantized tensors are the file's own. */
    cr_assert_eq(q->tok_embed.dtype, DTYPE_F16);
    expect_same_unquantized(name, q, r);
    struct compare_ctx c = {dt, st};
    each_linear(name, q, r, compare_pair, &c);
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

/* Mixtral's attention and experts quantized to nearest with 6-bit scales (the twin exact in
 * fp16, m = -s z exact): every expert of every layer repacked exactly, the router as it was. */
Test(int4, mixtral_experts_repack_exactly)
{
    struct stats st = {0};
    compare_model("gptq_mixtral", "ref_mixtral", DTYPE_Q4_1, &st);
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

/* edit (a JSON object) merged into o, then the keys it sets to null removed. */
static void edit_object(json_t *o, const char *edit)
{
    json_t *e = json_loads(edit, 0, NULL), *v;
    cr_assert(e && json_is_object(o), "bad edit %s", edit);
    json_object_update(o, e);
    json_decref(e);
    const char *k;
    void *next;
    json_object_foreach_safe(o, next, k, v) if (json_is_null(v)) json_object_del(o, k);
}

/* Fixture base copied into dir (a new temporary directory): a link to its weights and its
 * config.json with edit applied to the quantization_config ("-": removed), or, given file, that
 * moved out of config.json into a file of that name and edit applied there (raw, when given,
 * written to that file as it is instead). */
static void copy_fixture(char *dir, const char *base, const char *edit, const char *file, const char *raw)
{
    char path[256], src[512];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, FIX "/%s/config.json", base);
    json_t *cfg = json_load_file(path, 0, NULL);
    cr_assert(cfg, "%s", path);
    json_t *qc = json_incref(json_object_get(cfg, "quantization_config"));
    if (file || !strcmp(edit, "-")) json_object_del(cfg, "quantization_config");
    if (file && raw) {
        snprintf(path, sizeof path, "%s/%s", dir, file);
        FILE *f = fopen(path, "w");
        cr_assert(f && fputs(raw, f) >= 0 && fclose(f) == 0, "%s", path);
    } else if (file) {
        edit_object(qc, edit);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        cr_assert_eq(json_dump_file(qc, path, JSON_INDENT(2)), 0);
    } else if (strcmp(edit, "-") != 0) {
        edit_object(qc, edit);
    }
    json_decref(qc);
    snprintf(path, sizeof path, "%s/config.json", dir);
    cr_assert_eq(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    char *cwd = getcwd(NULL, 0);
    snprintf(src, sizeof src, "%s/" FIX "/%s/model.safetensors", cwd, base);
    free(cwd);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(symlink(src, path), 0);
}

static void remove_copy(const char *dir)
{
    static const char *names[] = {"config.json", "model.safetensors", "quantize_config.json", "quant_config.json"};
    char path[256];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    cr_expect_eq(rmdir(dir), 0, "%s", dir);
}

/* Loading such a copy must fail naming each needle. */
static void expect_copy_refused(const char *base, const char *edit, const char *file, const char *raw,
                                const char *needle1, const char *needle2)
{
    char dir[] = "/tmp/sluice-int4-XXXXXX", err[1024] = "";
    copy_fixture(dir, base, edit, file, raw);
    struct model *m = NULL;
    int rc = model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err);
    const char *what = raw ? raw : edit;
    cr_expect_lt(rc, 0, "%s with %s loaded", base, what);
    if (rc == 0) model_free(m);
    cr_expect(strstr(err, needle1) && (!needle2 || strstr(err, needle2)), "%s with %s: message '%s' lacks '%s' or '%s'",
              base, what, err, needle1, needle2 ? needle2 : "");
    cr_log_info("refused: %s", err);
    remove_copy(dir);
}

static void expect_refused(const char *base, const char *edit, const char *needle1, const char *needle2)
{
    expect_copy_refused(base, edit, NULL, NULL, needle1, needle2);
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

/* --- settings in a file of their own ----------------------------------------------------- */

/* Fixture base with its quantization_config moved into file (beside a config.json without one)
 * and edited so: the same model, tensor by tensor and byte by byte. */
static void expect_same_from_file(const char *base, const char *file, const char *edit)
{
    char dir[] = "/tmp/sluice-int4-XXXXXX", err[1024] = "";
    copy_fixture(dir, base, edit, file, NULL);
    struct model *want = load(base), *got = NULL;
    cr_assert_eq(model_load(&got, dir, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s from %s %s: %s", base, file, edit,
                 err);
    char name[128];
    snprintf(name, sizeof name, "%s from %s", base, file);
    expect_same_unquantized(name, got, want);
    each_linear(name, got, want, expect_same_bytes, NULL);
    cr_expect(got->repacked_from && !strcmp(got->repacked_from, want->repacked_from), "%s: repacked from %s, not %s",
              name, got->repacked_from ? got->repacked_from : "nothing", want->repacked_from);
    model_free(got);
    model_free(want);
    remove_copy(dir);
}

/* As AutoGPTQ before 0.8 wrote quantize_config.json (BaseQuantizeConfig.to_dict: no quant_method,
 * no format, which mean gptq and v1), as AutoGPTQ 0.8 writes it (quant_method, "format"), and as
 * AutoAWQ writes quant_config.json (AwqConfig.to_dict: w_bit, q_group_size, zero_point, version
 * "GEMM", no quant_method), or an AWQ checkpoint names it quantize_config.json (vLLM's awq.py
 * reads both names), told from GPTQ's by its zero_point. */
Test(int4, settings_beside_config_json_load_the_same_model)
{
    const char *old_gptq = "{\"quant_method\": null, \"checkpoint_format\": null, \"model_name_or_path\": null, "
                           "\"model_file_base_name\": \"model\"}";
    expect_same_from_file("gptq_g32_asym", "quantize_config.json", old_gptq);
    expect_same_from_file("gptq_act_order", "quantize_config.json", old_gptq);
    expect_same_from_file("gptq_g128_sym", "quantize_config.json", old_gptq);
    expect_same_from_file("gptq_mixtral", "quantize_config.json", old_gptq);
    expect_same_from_file("gptq_v2_g32_asym", "quantize_config.json",
                          "{\"checkpoint_format\": null, \"format\": \"gptq_v2\", \"lm_head\": false, "
                          "\"meta\": {\"quantizer\": \"autogptq:0.8.0.dev1\"}}");
    const char *autoawq = "{\"quant_method\": null, \"bits\": null, \"group_size\": null, \"w_bit\": 4, "
                          "\"q_group_size\": 32, \"version\": \"GEMM\", \"modules_to_not_convert\": null}";
    expect_same_from_file("awq_g32", "quant_config.json", autoawq);
    expect_same_from_file("awq_g32", "quantize_config.json", autoawq);
}

Test(int4, a_bad_settings_file_is_refused_naming_it)
{
    const char *g = "gptq_g32_asym", *q = "quantize_config.json";
    expect_copy_refused(g, NULL, q, "{\"bits\": 4, \"group_size\": ", "quantize_config.json: ", NULL);
    expect_copy_refused(g, NULL, q, "[4, 32]", "quantize_config.json: not a JSON object", NULL);
    expect_copy_refused(g, "{\"bits\": 8}", q, NULL, "quantize_config.json: bits is 8", "4-bit");
    expect_copy_refused(g, "{\"group_size\": 48}", q, NULL, "quantize_config.json: group_size is 48", NULL);
    expect_copy_refused(g, "{\"quant_method\": \"bitblas\"}", q, NULL, "quantize_config.json: quant_method is bitblas",
                        NULL);
    expect_copy_refused(g, "{\"checkpoint_format\": null, \"is_marlin_format\": true}", q, NULL,
                        "quantize_config.json: is_marlin_format is true", NULL);
    expect_copy_refused("awq_g32", "{\"quant_method\": null, \"version\": \"GEMV\"}", "quant_config.json", NULL,
                        "quant_config.json: version is GEMV", NULL);
}
