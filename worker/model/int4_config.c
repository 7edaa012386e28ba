/* quantization_config of GPTQ and AWQ checkpoints (int4_checkpoint.h), read as vLLM reads them
 * (vllm/model_executor/layers/quantization/gptq.py and awq.py: bits, group_size, desc_act;
 * w_bit, q_group_size, zero_point) plus the fields that change the packing: GPTQModel's
 * checkpoint_format (or format) "gptq_v2" stores zeros as they are where "gptq" (v1, AutoGPTQ's)
 * stores z - 1; AutoAWQ's version "gemv" and llm-awq's backend pack differently from "gemm".
 * Older checkpoints keep the same fields in quantize_config.json or quant_config.json beside
 * config.json (read_separate_file). */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/int4_checkpoint.h"

/* The first of keys that the object has, or NULL; *used names it. */
static json_t *get_any(json_t *qc, const char *const *keys, const char **used)
{
    for (; *keys; keys++) {
        json_t *v = json_object_get(qc, *keys);
        if (v && !json_is_null(v)) {
            *used = *keys;
            return v;
        }
    }
    return NULL;
}

static bool equals_nocase(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
    return *a == *b;
}

/* A field's value as text for messages: strings bare, anything else as JSON. */
static void value_text(json_t *v, char *buf, size_t n)
{
    if (json_is_string(v)) {
        snprintf(buf, n, "%s", json_string_value(v));
        return;
    }
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%s", s ? s : "?");
    free(s);
}

/* Where the settings were read, for messages: config.json's quantization_config object, or a
 * file of their own whose fields sit at its top. */
struct where {
    const char *path;
    const char *prefix; /* "quantization_config." or "" */
};

/* The message for a field whose value cannot be loaded: the file, the field, the value, why. */
static int refuse(const struct where *w, const char *field, json_t *v, const char *why, char *err, size_t errlen)
{
    char val[96];
    if (v) value_text(v, val, sizeof val);
    else snprintf(val, sizeof val, "missing");
    snprintf(err, errlen, "%s: %s%s is %s: %s", w->path, w->prefix, field, val, why);
    return -1;
}

static int read_bits_and_group(json_t *qc, struct int4_qconfig *q, const struct where *w, const char *const *bits_keys,
                               const char *const *group_keys, char *err, size_t errlen)
{
    const char *field = bits_keys[0];
    json_t *bits = get_any(qc, bits_keys, &field);
    if (!json_is_integer(bits) || json_integer_value(bits) != 4)
        return refuse(w, field, bits, "only 4-bit GPTQ and AWQ weights are read", err, errlen);
    field = group_keys[0];
    json_t *g = get_any(qc, group_keys, &field);
    json_int_t gs = json_is_integer(g) ? json_integer_value(g) : 0;
    /* A Q4_1 block is 32 input channels of one group: a group must be whole blocks. */
    if (!json_is_integer(g) || (gs != -1 && (gs <= 0 || gs % 32 != 0 || gs > (1 << 24))))
        return refuse(w, field, g,
                      "the group size must be -1 or a positive multiple of 32 (the GGUF Q4_1 blocks the weights are "
                      "repacked into hold 32 input channels)",
                      err, errlen);
    q->group_size = gs == -1 ? 0 : (int)gs;
    return 0;
}

static int read_gptq(json_t *qc, struct int4_qconfig *q, const struct where *w, char *err, size_t errlen)
{
    static const char *const bits[] = {"bits", NULL}, *const group[] = {"group_size", NULL};
    static const char *const fmt_keys[] = {"checkpoint_format", "format", NULL};
    if (read_bits_and_group(qc, q, w, bits, group, err, errlen)) return -1;
    json_t *v = json_object_get(qc, "desc_act");
    if (v && !json_is_null(v) && !json_is_boolean(v)) return refuse(w, "desc_act", v, "not a boolean", err, errlen);
    q->desc_act = json_is_true(v);
    const char *field = fmt_keys[0];
    v = get_any(qc, fmt_keys, &field);
    if (!v || (json_is_string(v) && !strcmp(json_string_value(v), "gptq"))) q->zeros_minus_one = true;
    else if (!json_is_string(v) || strcmp(json_string_value(v), "gptq_v2") != 0)
        return refuse(w, field, v, "GPTQ checkpoints are read in the formats \"gptq\" (v1) and \"gptq_v2\" only",
                      err, errlen);
    v = json_object_get(qc, "is_marlin_format");
    if (json_is_true(v)) return refuse(w, "is_marlin_format", v, "Marlin's packing is not read", err, errlen);
    v = json_object_get(qc, "pack_dtype");
    if (v && !json_is_null(v) && !(json_is_string(v) && !strcmp(json_string_value(v), "int32")))
        return refuse(w, "pack_dtype", v, "GPTQ weights are read packed in int32 only", err, errlen);
    /* GPTQModel's per-module overrides can give a layer other bits or groups than these. */
    v = json_object_get(qc, "dynamic");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return refuse(w, "dynamic", v, "per-module overrides are not read", err, errlen);
    return 0;
}

static int read_awq(json_t *qc, struct int4_qconfig *q, const struct where *w, char *err, size_t errlen)
{
    static const char *const bits[] = {"bits", "w_bit", NULL}, *const group[] = {"group_size", "q_group_size", NULL};
    if (read_bits_and_group(qc, q, w, bits, group, err, errlen)) return -1;
    json_t *v = json_object_get(qc, "zero_point");
    if (v && !json_is_null(v) && !json_is_true(v))
        return refuse(w, "zero_point", v, "AWQ checkpoints are read with zero points only", err, errlen);
    /* AutoAWQ writes "GEMM", transformers "gemm"; vLLM reads a config without one as gemm. */
    v = json_object_get(qc, "version");
    if (v && !json_is_null(v) && !(json_is_string(v) && equals_nocase(json_string_value(v), "gemm")))
        return refuse(w, "version", v, "AWQ is read in the gemm packing only (gemv and gemv_fast pack differently)",
                      err, errlen);
    v = json_object_get(qc, "backend");
    if (v && !json_is_null(v) && !(json_is_string(v) && equals_nocase(json_string_value(v), "autoawq")))
        return refuse(w, "backend", v, "AWQ is read as AutoAWQ packs it only (llm-awq packs as gemv_fast)", err,
                      errlen);
    return 0;
}

/* The settings of method m (a quant_method) from object qc. */
static int read_method(json_t *qc, enum int4_method m, struct int4_qconfig *q, const struct where *w, char *err,
                       size_t errlen)
{
    q->method = m;
    if (m == INT4_GPTQ) return read_gptq(qc, q, w, err, errlen);
    if (m == INT4_AWQ) return read_awq(qc, q, w, err, errlen);
    return 0;
}

static enum int4_method method_named(const char *m)
{
    return !m ? INT4_NONE : equals_nocase(m, "gptq") ? INT4_GPTQ : equals_nocase(m, "awq") ? INT4_AWQ : INT4_NONE;
}

/* Checkpoints older than transformers' quantization_config keep their settings in a file of
 * their own beside config.json, read in AutoGPTQ's order (auto_gptq/quantization/config.py,
 * BaseQuantizeConfig.from_pretrained): AutoGPTQ's quantize_config.json (no quant_method before
 * AutoGPTQ 0.8; it then means gptq), then AutoAWQ's quant_config.json (awq/models/_config.py:
 * zero_point, q_group_size, w_bit, version "GEMM", no quant_method). vLLM reads the same files
 * (get_config_filenames of gptq.py and awq.py); AWQ's may be named quantize_config.json too, and
 * is told from GPTQ's by AWQ's zero_point, which GPTQ's settings never have (they have sym). */
static int read_separate_file(struct int4_qconfig *q, const char *config_path, char *err, size_t errlen)
{
    static const char *const names[] = {"quantize_config.json", "quant_config.json"};
    const char *slash = strrchr(config_path, '/');
    const int dir_len = slash ? (int)(slash - config_path) : 1;
    const char *dir = slash ? config_path : ".";
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%.*s/%s", dir_len, dir, names[i]);
        if (access(path, F_OK) != 0) continue;
        json_error_t jerr;
        json_t *qc = json_load_file(path, 0, &jerr);
        if (!qc) {
            snprintf(err, errlen, "%s: %s", path, jerr.text);
            return -1;
        }
        const struct where w = {path, ""};
        int rc = -1;
        json_t *m = json_object_get(qc, "quant_method");
        enum int4_method method = i == 1 || json_object_get(qc, "zero_point") ? INT4_AWQ : INT4_GPTQ;
        if (!json_is_object(qc)) {
            snprintf(err, errlen, "%s: not a JSON object (GPTQ or AWQ settings expected)", path);
        } else if (m && !json_is_null(m) && !(method = method_named(json_string_value(m)))) {
            refuse(&w, "quant_method", m, "only GPTQ and AWQ settings are read from this file", err, errlen);
        } else {
            rc = read_method(qc, method, q, &w, err, errlen);
        }
        json_decref(qc);
        return rc;
    }
    return 0;
}

int int4_qconfig_load(struct int4_qconfig *q, const char *config_path, char *err, size_t errlen)
{
    memset(q, 0, sizeof *q);
    json_error_t jerr;
    json_t *root = json_load_file(config_path, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s: %s", config_path, jerr.text);
        return -1;
    }
    int rc = 0;
    json_t *qc = json_object_get(root, "quantization_config");
    if (!qc || json_is_null(qc)) {
        rc = read_separate_file(q, config_path, err, errlen);
    } else if (json_is_object(qc)) {
        /* Another method's (fp8.c reads those and refuses unknown ones) is none of this file's. */
        const char *m = json_string_value(json_object_get(qc, "quant_method"));
        const struct where w = {config_path, "quantization_config."};
        if (m && (!strcmp(m, "gptq") || !strcmp(m, "awq"))) rc = read_method(qc, method_named(m), q, &w, err, errlen);
    }
    json_decref(root);
    return rc;
}
