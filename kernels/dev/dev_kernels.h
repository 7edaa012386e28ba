/* Kernel variants that lost a measurement and left the worker's build, kept beside their
 * benchmark (make kernels-dev). Nothing outside kernels/dev/ may include this header. */
#ifndef SLUICE_KERNELS_DEV_KERNELS_H
#define SLUICE_KERNELS_DEV_KERNELS_H

#include "kernels/sluice_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Decode attention on variant 1-7 (kernels/dev/attention_decode_variants.cu), with sk_attention's
 * parameters and results, over bf16 caches only; cudaErrorInvalidValue where
 * skdev_attention_decode_fits refuses (an FP8 cache among them). */
int skdev_attention_decode_fits(const struct sk_attn_params *p, int variant);
cudaError_t skdev_attention_decode(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                                   const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                   float *part_o, float *part_ml, uint16_t *out, struct sk_attn_params p, int variant,
                                   cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
