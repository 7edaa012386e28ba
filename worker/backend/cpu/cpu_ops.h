/* The CPU backend's kernels: float32, deterministic, and independent of how rows are grouped
 * into a batch, so a sequence gives the same logits alone or beside others. */
#ifndef SLUICE_WORKER_CPU_OPS_H
#define SLUICE_WORKER_CPU_OPS_H

#include <stdint.h>

#include "worker/backend/cpu/cpu_pool.h"
#include "worker/model/model.h"

/* out[t][o] = dot(x[t], w[o]) (+ bias[o]) for t < n_rows, o < n_out; x rows are n_in long. */
void cpu_matmul(struct cpu_pool *pool, const float *x, int64_t n_rows, int64_t n_in, const float *w,
                const float *bias, int64_t n_out, float *out);

/* out = x / rms(x) * weight over n elements (out may equal x). */
void cpu_rmsnorm(const float *x, const float *weight, int64_t n, float eps, float *out);

/* The rope's inverse frequencies (head_dim / 2 floats) with the config's scaling applied. */
void cpu_rope_inv_freq(const struct model_config *c, float *inv_freq);

/* Rotates one head of head_dim floats in Hugging Face's rotate-half layout with the angles'
 * cosines and sines (head_dim / 2 each). */
void cpu_rope_apply(float *v, int head_dim, const float *cos_t, const float *sin_t);

#endif
