/* quantization_config of GPTQ and AWQ checkpoints (int4_checkpoint.h), read as vLLM reads them
 * (vllm/model_executor/layers/quantization/gptq.py and awq.py: bits, group_size, desc_act;
 * w_bit, q_group_size, zero_point) plus the fields that change the packing: GPTQModel's
 * checkpoint_format (or format) "gptq_v2" stores zeros as they are where "gptq" (v1, AutoGPTQ's)
 * stores z - 1; AutoAWQ's version "gemv" and llm-awq's backend pack differently from "gemm". */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The message for a field whose value cannot be loaded: the file, the field, the value, why. */
static int refuse(const char *path, const char *field, json_t *v, const char *why, char *err, size_t errlen)
{
    char val[96];
    if (v) value_text(v, val, sizeof val);
    else snprintf(val, sizeof val, "missing");
    snprintf(err, errlen, "%s: quantization_config.%s is %s: %s", path, field, val, why);
    return -1;
}

static int read_bits_and_group(json_t *qc, struct int4_qconfig *q, const char *path, const char *const *bits_keys,
                               const char *const *group_keys, char *err, size_t errlen)
{
    const char *field = bits_keys[0];
    json_t *bits = get_any(qc, bits_keys, &field);
    if (!json_is_integer(bits) || json_integer_value(bits) != 4)
        return refuse(path, field, bits, "only 4-bit GPTQ and AWQ weights are read", err, errlen);
    field = group_keys[0];
    json_t *g = get_any(qc, group_keys, &field);
    json_int_t gs = json_is_integer(g) ? json_integer_value(g) : 0;
    /* A Q4_1 block is 32 input channels of one group: a group must be whole blocks. */
    if (!json_is_integer(g) || (gs != -1 && (gs <= 0 || gs % 32 != 0 || gs > (1 << 24))))
        return refuse(path, field, g,
                      "the group size must be -1 or a positive multiple of 32 (the GGUF Q4_1 blocks the weights are "
                      "repacked into hold 32 input channels)",
                      err, errlen);
    q->group_size = gs == -1 ? 0 : (int)gs;
    return 0;
}

static int read_gptq(json_t *qc, struct int4_qconfig *q, const char *path, char *err, size_t errlen)
{
    static const char *const bits[] = {"bits", NULL}, *const group[] = {"group_size", NULL};
    static const char *const fmt_keys[] = {"checkpoint_format", "format", NULL};
    if (read_bits_and_group(qc, q, path, bits, group, err, errlen)) return -1;
    json_t *v = json_object_get(qc, "desc_act");
    if (v && !json_is_null(v) && !json_is_boolean(v)) return refuse(path, "desc_act", v, "not a boolean", err, errlen);
    q->desc_act = json_is_true(v);
    const char *field = fmt_keys[0];
    v = get_any(qc, fmt_keys, &field);
    if (!v || (json_is_string(v) && !strcmp(json_string_value(v), "gptq"))) q->zeros_minus_one = true;
    else if (!json_is_string(v) || strcmp(json_string_value(v), "gptq_v2") != 0)
        return refuse(path, field, v, "GPTQ checkpoints are read in the formats \"gptq\" (v1) and \"gptq_v2\" only",
                      err, errlen);
    v = json_object_get(qc, "is_marlin_format");
    if (json_is_true(v)) return refuse(path, "is_marlin_format", v, "Marlin's packing is not read", err, errlen);
    v = json_object_get(qc, "pack_dtype");
    if (v && !json_is_null(v) && !(json_is_string(v) && !strcmp(json_string_value(v), "int32")))
        return refuse(path, "pack_dtype", v, "GPTQ weights are read packed in int32 only", err, errlen);
    /* GPTQModel's per-module overrides can give a layer other bits or groups than these. */
    v = json_object_get(qc, "dynamic");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return refuse(path, "dynamic", v, "per-module overrides are not read", err, errlen);
    return 0;
}

static int read_awq(json_t *qc, struct int4_qconfig *q, const char *path, char *err, size_t errlen)
{
    static const char *const bits[] = {"bits", "w_bit", NULL}, *const group[] = {"group_size", "q_group_size", NULL};
    if (read_bits_and_group(qc, q, path, bits, group, err, errlen)) return -1;
    json_t *v = json_object_get(qc, "zero_point");
    if (v && !json_is_null(v) && !json_is_true(v))
        return refuse(path, "zero_point", v, "AWQ checkpoints are read with zero points only", err, errlen);
    /* AutoAWQ writes "GEMM", transformers "gemm"; vLLM reads a config without one as gemm. */
    v = json_object_get(qc, "version");
    if (v && !json_is_null(v) && !(json_is_string(v) && equals_nocase(json_string_value(v), "gemm")))
        return refuse(path, "version", v, "AWQ is read in the gemm packing only (gemv and gemv_fast pack differently)",
                      err, errlen);
    v = json_object_get(qc, "backend");
    if (v && !json_is_null(v) && !(json_is_string(v) && equals_nocase(json_string_value(v), "autoawq")))
        return refuse(path, "backend", v, "AWQ is read as AutoAWQ packs it only (llm-awq packs as gemv_fast)", err,
                      errlen);
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
    const char *m = json_is_object(qc) ? json_string_value(json_object_get(qc, "quant_method")) : NULL;
    if (m && !strcmp(m, "gptq")) {
        q->method = INT4_GPTQ;
        rc = read_gptq(qc, q, config_path, err, errlen);
    } else if (m && !strcmp(m, "awq")) {
        q->method = INT4_AWQ;
        rc = read_awq(qc, q, config_path, err, errlen);
    }
    json_decref(root);
    return rc;
}
