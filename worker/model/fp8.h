/* FP8 weights: the e4m3 and e5m2 formats as float32, e4m3 rounding, per-row quantization, and
 * what a Hugging Face checkpoint's quantization_config says about its FP8 scales. The CPU
 * backend, the CUDA loader and the tests share these, so every path decodes the same bytes to
 * the same floats. */
#ifndef SLUICE_WORKER_MODEL_FP8_H
#define SLUICE_WORKER_MODEL_FP8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/model.h"

/* The largest finite e4m3 (OCP "fn" variant: no infinities, 0x7f/0xff are NaN). */
#define FP8_E4M3_MAX 448.0f

float fp8_e4m3_to_f32(uint8_t b);
float fp8_e5m2_to_f32(uint8_t b);
/* Round to nearest even, saturating at +-448 (as torch's float8_e4m3fn cast of values within
 * range, and CUDA's __nv_cvt_float_to_fp8 with __NV_SATFINITE). */
uint8_t fp8_e4m3_from_f32(float f);
/* Quantizes n values to e4m3 with one scale, amax / 448 (1 for a row of zeros), so that
 * x ~ q * scale; returns the scale. The CUDA kernel (sk_fp8_quantize_rows) computes the same. */
float fp8_quantize_row(const float *x, int64_t n, uint8_t *q);
/* x rounded to bf16 (nearest even) and back: the values the CUDA backend fills dummy
 * matrices with, which a dummy FP8 row is quantized from. */
float fp8_round_bf16(float x);

/* The scale of element (r, c) of an FP8 tensor with a scale array. */
float fp8_tensor_scale(const struct tensor *t, int64_t r, int64_t c);
/* Elements [begin, end) of an FP8 tensor as float32 (a dummy one: whole rows only). */
void fp8_range_to_f32(const struct tensor *t, uint64_t seed, int64_t begin, int64_t end, float *dst);

/* The --quantization flag table entry (common/flags.h) both `sluice-worker` and `sluice-worker
 * bench` take; text (a const char **) is then given to model_quantization_parse. */
#define MODEL_QUANTIZATION_FLAG_SPEC(text)                                                                    \
    {"quantization", FLAG_STRING, (text), NULL, "none|fp8",                                                   \
     "fp8: quantize the layers' bf16/f16/f32 (or dummy) weights at load to e4m3 with a scale per output "      \
     "channel (CUDA computes with them in FP8; CPU dequantizes them). FP8 checkpoints load as FP8 either way", \
     0, 0}

/* A checkpoint's quantization_config as far as FP8 weights go. */
struct fp8_qconfig {
    bool fp8;             /* quant_method fp8, or compressed-tensors with float 8-bit weights */
    int64_t block[2];     /* weight_block_size / block_structure; 0 when none */
};
/* Reads config.json's quantization_config. A config without one, or of GPTQ or AWQ (which
 * int4_checkpoint.h reads), is fine (fp8 false); one of a kind this project does not read
 * (bitsandbytes, int8 compressed-tensors...) is an error naming it. */
int fp8_qconfig_load(struct fp8_qconfig *q, const char *config_path, char *err, size_t errlen);
/* Points t's scale at the float32 copy of a scale tensor (data of sdtype F32/BF16/F16, shape
 * sshape[0..sndim)) after checking that the shape is per tensor, per output channel or blocks
 * of q->block; the copy is owned by src (struct model_source *). name names t in messages. */
int fp8_scale_attach(struct tensor *t, const struct fp8_qconfig *q, const void *sdata, enum dtype sdtype, int sndim,
                     const int64_t *sshape, void *src, const char *name, char *err, size_t errlen);

#endif
