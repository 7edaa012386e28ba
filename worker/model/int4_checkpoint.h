/* GPTQ and AWQ 4-bit Hugging Face checkpoints (the *-GPTQ and *-AWQ safetensors vLLM loads),
 * repacked at load into GGUF's Q4_1 blocks, which every backend already computes with.
 *
 * Both formats store a linear layer's weight as w = s * (q - z): a 4-bit q per weight, and an
 * fp16 scale s and a 4-bit zero z per (group of group_size input channels, output channel).
 * A Q4_1 block (32 consecutive input channels of one output row) stores w = d * q + m with fp16
 * d and m, so d = s and m = -s * z (rounded to fp16) hold the same weights up to the rounding of
 * m, for any group size that is a multiple of 32. The repacked tensor is exactly what a GGUF
 * Q4_1 tensor is in struct tensor (dtype DTYPE_Q4_1, [out, in], rows of whole blocks), owned by
 * the model instead of mapped from a file.
 *
 * GPTQ act-order layers (desc_act, a g_idx whose groups are not runs of 32 input channels) have
 * no such blocks: those are dequantized at load to the scales' float type (F16, else F32), as
 * vLLM's exllama kernel dequantizes them in fp16. */
#ifndef SLUICE_WORKER_MODEL_INT4_CHECKPOINT_H
#define SLUICE_WORKER_MODEL_INT4_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/model.h"

enum int4_method { INT4_NONE = 0, INT4_GPTQ, INT4_AWQ };

/* What config.json's quantization_config (or quantize_config.json) says about GPTQ/AWQ weights
 * (int4_config.c). */
struct int4_qconfig {
    enum int4_method method;
    int group_size;       /* input channels per group, a multiple of 32; 0 for -1: one group per row */
    bool desc_act;        /* GPTQ act-order: each input channel's group is read from g_idx */
    bool zeros_minus_one; /* GPTQ checkpoint_format "gptq" (v1): each zero stored as z - 1 */
};

/* Reads config.json's quantization_config, or where config.json has none, the settings file of
 * an older checkpoint beside it: AutoGPTQ's quantize_config.json (gptq unless its quant_method
 * or AWQ's zero_point says awq), else AutoAWQ's quant_config.json (awq), fields as
 * quantization_config's. Method INT4_NONE when there are none or they are of another method
 * (fp8.c reads those and refuses unknown ones). A gptq or awq config this loader cannot repack
 * (bits other than 4, a group size that is not -1 or a multiple of 32, AWQ's gemv packing,
 * GPTQ's marlin format, per-module overrides ...), or a settings file that is no JSON object, is
 * an error naming the file, the field and its value. */
int int4_qconfig_load(struct int4_qconfig *q, const char *config_path, char *err, size_t errlen);

/* A tensor of the checkpoint as the loader found it. */
struct int4_source {
    const char *dtype;    /* the safetensors dtype: "I32", "F16", "BF16", "F32" ... */
    int ndim;
    int64_t shape[4];
    const void *data;
    const char *file;
};
/* 0 and *out when the checkpoint has the named tensor, 1 when it has not. */
typedef int (*int4_find_fn)(void *ctx, const char *name, struct int4_source *out);

/* Binds the quantized linear layer whose plain weight would be named weight_name (X.weight: its
 * parts are X.qweight, X.qzeros, X.scales and, for act-order GPTQ, X.g_idx) into t: shape
 * [out, in], dtype Q4_1 (or F16/F32 for an act-order layer), data owned by src (a struct
 * model_source *). Returns 0, 1 when the checkpoint has no X.qweight (a layer left unquantized,
 * as modules_to_not_convert lists them), or -1 with a message naming the file and tensor. */
int int4_bind_linear(const struct int4_qconfig *q, const char *weight_name, int4_find_fn find, void *ctx, void *src,
                     struct tensor *t, char *err, size_t errlen);

#endif
