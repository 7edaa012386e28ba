/* FP8 weights (fp8.h): decoding, e4m3 rounding, per-row quantization (--quantization fp8) and
 * the scales of Hugging Face FP8 checkpoints: quant_method "fp8" (AutoFP8 / vLLM's per-tensor
 * weight_scale, or DeepSeek's and Qwen3-FP8's weight_scale_inv over weight_block_size blocks)
 * and compressed-tensors "float-quantized" (per-tensor, per-channel or block weight_scale). Both
 * names are multipliers: weight = fp8 * scale. Activation scales in the checkpoint (input_scale)
 * are not read: activations are quantized per token as they come. */
#include "worker/model/fp8.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/model_internal.h"
#include "worker/model/model_moe.h"

float fp8_e4m3_to_f32(uint8_t b)
{
    const float sign = (b & 0x80) ? -1.0f : 1.0f;
    const int exp = (b >> 3) & 0xf, man = b & 7;
    if (exp == 0xf && man == 7) return NAN;
    if (exp == 0) return sign * ldexpf((float)man, -9); /* subnormal: man * 2^-6 / 8 */
    return sign * ldexpf((float)(8 + man), exp - 7 - 3);
}

float fp8_e5m2_to_f32(uint8_t b)
{
    /* e5m2 is the top byte of an IEEE half. */
    return model_f16_to_f32((uint16_t)((uint16_t)b << 8));
}

uint8_t fp8_e4m3_from_f32(float f)
{
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (isnan(f)) return 0x7f;
    /* 464 is halfway between 448 and the 480 e4m3fn lacks: beyond, saturate. */
    if (a >= 464.0f) return sign | 0x7e;
    if (a < 0.015625f) {
        /* Subnormals and zero, in steps of 2^-9; 8 steps is the smallest normal, code 0x08. */
        return sign | (uint8_t)rintf(a * 512.0f);
    }
    int e;
    frexpf(a, &e); /* a = m 2^e, m in [0.5, 1): the exponent of a is e - 1 */
    int exp = e - 1;
    int q = (int)rintf(ldexpf(a, 3 - exp)); /* in [8, 16] */
    if (q == 16) {
        q = 8;
        exp++;
    }
    return sign | (uint8_t)((exp + 7) << 3) | (uint8_t)(q - 8);
}

float fp8_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

float fp8_quantize_row(const float *x, int64_t n, uint8_t *q)
{
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float scale = amax > 0.0f ? amax / FP8_E4M3_MAX : 1.0f;
    for (int64_t i = 0; i < n; i++) q[i] = fp8_e4m3_from_f32(x[i] / scale);
    return scale;
}

static int64_t cols_of(const struct tensor *t)
{
    return t->ndim == 2 ? t->shape[1] : tensor_numel(t);
}

float fp8_tensor_scale(const struct tensor *t, int64_t r, int64_t c)
{
    const int64_t cols = cols_of(t);
    const int64_t per_row = (cols + t->scale_cols - 1) / t->scale_cols;
    return t->scale[(r / t->scale_rows) * per_row + c / t->scale_cols];
}

void fp8_range_to_f32(const struct tensor *t, uint64_t seed, int64_t begin, int64_t end, float *dst)
{
    const int64_t cols = cols_of(t);
    if (!t->data) {
        /* Dummy: each row from the bf16 values the CUDA backend fills, with its own scale. */
        uint8_t *q = malloc((size_t)cols);
        float *row = calloc((size_t)cols + 1, sizeof *row);
        if (!q || !row) {
            for (int64_t i = begin; i < end; i++) dst[i - begin] = NAN;
        } else {
            for (int64_t r = begin / cols; r * cols < end; r++) {
                for (int64_t c = 0; c < cols; c++)
                    row[c] = fp8_round_bf16(model_dummy_value(seed, t->dummy_id, (uint64_t)(r * cols + c)));
                const float s = fp8_quantize_row(row, cols, q);
                for (int64_t c = 0; c < cols; c++) {
                    const int64_t i = r * cols + c;
                    if (i >= begin && i < end) dst[i - begin] = fp8_e4m3_to_f32(q[c]) * s;
                }
            }
        }
        free(q);
        free(row);
        return;
    }
    const uint8_t *p = t->data;
    for (int64_t i = begin; i < end; i++) {
        const float v = t->dtype == DTYPE_F8_E5M2 ? fp8_e5m2_to_f32(p[i]) : fp8_e4m3_to_f32(p[i]);
        dst[i - begin] = v * fp8_tensor_scale(t, i / cols, i % cols);
    }
}

/* --- quantization_config ------------------------------------------------------------------ */

static int read_block(json_t *v, struct fp8_qconfig *q, const char *path, const char *field, char *err, size_t errlen)
{
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
        !json_is_integer(json_array_get(v, 1)) || json_integer_value(json_array_get(v, 0)) <= 0 ||
        json_integer_value(json_array_get(v, 1)) <= 0) {
        snprintf(err, errlen, "%s: quantization_config.%s must be two positive integers", path, field);
        return -1;
    }
    q->block[0] = json_integer_value(json_array_get(v, 0));
    q->block[1] = json_integer_value(json_array_get(v, 1));
    return 0;
}

/* compressed-tensors: every config group's weights must be 8-bit floats. */
static int read_compressed_tensors(json_t *qc, struct fp8_qconfig *q, const char *path, char *err, size_t errlen)
{
    json_t *fmt = json_object_get(qc, "format");
    if (json_is_string(fmt) && strcmp(json_string_value(fmt), "float-quantized") != 0) {
        snprintf(err, errlen,
                 "%s: quantization_config.format is '%s'; of compressed-tensors only float-quantized (FP8) is read",
                 path, json_string_value(fmt));
        return -1;
    }
    json_t *groups = json_object_get(qc, "config_groups");
    if (!json_is_object(groups) || json_object_size(groups) == 0) {
        snprintf(err, errlen, "%s: quantization_config.config_groups is missing", path);
        return -1;
    }
    const char *key;
    json_t *g;
    json_object_foreach(groups, key, g) {
        json_t *w = json_object_get(g, "weights");
        json_t *bits = json_object_get(w, "num_bits"), *type = json_object_get(w, "type");
        if (!json_is_integer(bits) || json_integer_value(bits) != 8 || !json_is_string(type) ||
            strcmp(json_string_value(type), "float") != 0) {
            snprintf(err, errlen,
                     "%s: quantization_config.config_groups.%s.weights: only 8-bit float weights (FP8) are read", path,
                     key);
            return -1;
        }
        if (read_block(json_object_get(w, "block_structure"), q, path, "config_groups.*.weights.block_structure",
                       err, errlen))
            return -1;
    }
    q->fp8 = true;
    return 0;
}

int fp8_qconfig_load(struct fp8_qconfig *q, const char *config_path, char *err, size_t errlen)
{
    memset(q, 0, sizeof *q);
    json_error_t jerr;
    json_t *root = json_load_file(config_path, 0, &jerr);
    int rc = -1;
    if (!root) {
        snprintf(err, errlen, "%s: %s", config_path, jerr.text);
        return -1;
    }
    json_t *qc = json_object_get(root, "quantization_config");
    if (!qc || json_is_null(qc)) {
        rc = 0;
        goto out;
    }
    json_t *method = json_object_get(qc, "quant_method");
    const char *m = json_is_string(method) ? json_string_value(method) : "";
    if (!strcmp(m, "fp8")) {
        q->fp8 = true;
        rc = read_block(json_object_get(qc, "weight_block_size"), q, config_path, "weight_block_size", err, errlen);
    } else if (!strcmp(m, "compressed-tensors")) {
        rc = read_compressed_tensors(qc, q, config_path, err, errlen);
    } else if (!strcmp(m, "gptq") || !strcmp(m, "awq")) {
        rc = 0; /* 4-bit weights, not FP8: int4_config.c reads them */
    } else {
        snprintf(err, errlen, "%s: quantization_config.quant_method '%s' is not supported (fp8, FP8 "
                 "compressed-tensors, gptq and awq are)", config_path, m);
    }
out:
    json_decref(root);
    return rc;
}

int fp8_scale_attach(struct tensor *t, const struct fp8_qconfig *q, const void *sdata, enum dtype sdtype, int sndim,
                     const int64_t *sshape, void *src, const char *name, char *err, size_t errlen)
{
    const int64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = cols_of(t);
    int64_t n = 1;
    for (int i = 0; i < sndim; i++) n *= sshape[i];
    if (n == 1) {
        t->scale_rows = rows, t->scale_cols = cols;
    } else if (n == rows && (sndim == 1 || (sndim == 2 && sshape[1] == 1))) {
        t->scale_rows = 1, t->scale_cols = cols;
    } else if (q->block[0] > 0 && sndim == 2 && sshape[0] == (rows + q->block[0] - 1) / q->block[0] &&
               sshape[1] == (cols + q->block[1] - 1) / q->block[1]) {
        t->scale_rows = q->block[0], t->scale_cols = q->block[1];
    } else {
        snprintf(err, errlen,
                 "tensor '%s' [%lld, %lld]: its FP8 scale has %lld elements, neither one, one per row, nor one per "
                 "block of the config's weight_block_size [%lld, %lld]",
                 name, (long long)rows, (long long)cols, (long long)n, (long long)q->block[0], (long long)q->block[1]);
        return -1;
    }
    if (sdtype != DTYPE_F32 && sdtype != DTYPE_BF16 && sdtype != DTYPE_F16) {
        snprintf(err, errlen, "tensor '%s': FP8 scale of dtype %s (F32, BF16 or F16 expected)", name,
                 dtype_name(sdtype));
        return -1;
    }
    float *s = malloc((size_t)n * sizeof *s);
    if (!s || model_source_add_owned(src, s)) {
        snprintf(err, errlen, "out of memory for the scales of '%s'", name);
        return -1;
    }
    struct tensor st = {.dtype = sdtype, .ndim = 1, .shape = {n, 0}, .data = sdata};
    tensor_to_f32(&st, 0, false, s);
    for (int64_t i = 0; i < n; i++) {
        if (!(s[i] > 0.0f) || isinf(s[i])) {
            snprintf(err, errlen, "tensor '%s': FP8 scale %lld is %g, not a positive finite number", name,
                     (long long)i, (double)s[i]);
            return -1;
        }
    }
    t->scale = s;
    return 0;
}

/* --- --quantization -------------------------------------------------------------------------- */

int model_quantization_parse(const char *text, enum model_quantization *out, char *err, size_t errlen)
{
    if (!text || !*text || !strcmp(text, "none")) *out = MODEL_QUANT_NONE;
    else if (!strcmp(text, "fp8")) *out = MODEL_QUANT_FP8;
    else {
        snprintf(err, errlen, "--quantization must be none or fp8, not '%s'", text);
        return -1;
    }
    return 0;
}

/* Rows of t quantized into q and s. */
struct quant_job {
    const struct tensor *t;
    uint64_t seed;
    uint8_t *q;
    float *s;
    int64_t cols;
};

static int quant_rows(void *arg, int64_t r0, int64_t r1)
{
    const struct quant_job *j = arg;
    float *row = malloc((size_t)j->cols * sizeof *row);
    if (!row) return -1;
    for (int64_t r = r0; r < r1; r++) {
        tensor_range_to_f32(j->t, j->seed, false, r * j->cols, (r + 1) * j->cols, row);
        j->s[r] = fp8_quantize_row(row, j->cols, j->q + r * j->cols);
    }
    free(row);
    return 0;
}

static int quantize_matrix(struct model *m, struct tensor *t, const char *name, char *err, size_t errlen)
{
    /* FP8 already; or absent (a mixture-of-experts layer's dense MLP, whose experts are quantized
     * on their own: quantize_experts). */
    if (t->dtype == DTYPE_F8_E4M3 || t->dtype == DTYPE_F8_E5M2 || t->ndim != 2) return 0;
    const int64_t rows = t->shape[0], cols = t->shape[1];
    if (!t->data) {
        t->dtype = DTYPE_F8_E4M3;
        t->scale = NULL;
        t->scale_rows = 1, t->scale_cols = cols;
        return 0;
    }
    if (dtype_is_quantized(t->dtype)) {
        snprintf(err, errlen, "--quantization fp8: %s is %s; only F32, F16 and BF16 weights can be quantized", name,
                 dtype_name(t->dtype));
        return -1;
    }
    if (!m->source) {
        snprintf(err, errlen, "--quantization fp8: %s: the model has no loader state to own the FP8 copy", name);
        return -1;
    }
    uint8_t *q = malloc((size_t)(rows * cols));
    float *s = malloc((size_t)rows * sizeof *s);
    if (!q || !s) {
        free(q);
        free(s);
        snprintf(err, errlen, "--quantization fp8: out of memory for %s", name);
        return -1;
    }
    /* From here q and s belong to the model (add_owned frees what it cannot take). */
    if (model_source_add_owned(m->source, q) || model_source_add_owned(m->source, s)) {
        snprintf(err, errlen, "--quantization fp8: out of memory for %s", name);
        return -1;
    }
    /* Rows in parallel: an 8B checkpoint has 7e9 weights to round at load. */
    struct quant_job job = {.t = t, .seed = m->dummy_seed, .q = q, .s = s, .cols = cols};
    if (model_parallel_rows(rows, 64, quant_rows, &job)) {
        snprintf(err, errlen, "--quantization fp8: out of memory for %s", name);
        return -1;
    }
    t->dtype = DTYPE_F8_E4M3;
    t->data = q;
    t->scale = s;
    t->scale_rows = 1, t->scale_cols = cols;
    return 0;
}

/* A sparse layer's experts and its shared expert, each matrix per output channel as a dense
 * MLP's; the router and the shared expert's gate stay as they are (vLLM leaves both
 * unquantized: they choose and weigh the experts, and are small). */
static int quantize_experts(struct model *m, struct moe_weights *W, int l, char *err, size_t errlen)
{
    char name[64];
    snprintf(name, sizeof name, "layer %d experts", l);
    for (int e = 0; e < m->config.moe.n_experts; e++)
        if (quantize_matrix(m, &W->gate[e], name, err, errlen) || quantize_matrix(m, &W->up[e], name, err, errlen) ||
            quantize_matrix(m, &W->down[e], name, err, errlen))
            return -1;
    snprintf(name, sizeof name, "layer %d shared expert", l);
    struct tensor *shared[] = {&W->shared_gate_proj, &W->shared_up, &W->shared_down}; /* ndim 0 when none */
    for (size_t i = 0; i < sizeof shared / sizeof *shared; i++)
        if (quantize_matrix(m, shared[i], name, err, errlen)) return -1;
    return 0;
}

int model_quantize(struct model *m, enum model_quantization q, char *err, size_t errlen)
{
    if (q == MODEL_QUANT_NONE) return 0;
    for (int l = 0; l < m->config.n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        struct tensor *ts[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        char name[64];
        snprintf(name, sizeof name, "layer %d", l);
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
            if (quantize_matrix(m, ts[i], name, err, errlen)) return -1;
        if (L->moe && quantize_experts(m, L->moe, l, err, errlen)) return -1;
    }
    return 0;
}
