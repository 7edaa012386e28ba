/* The CPU backend's pieces for the families of model_family.h: the gated MLP's activation,
 * soft-capping, and what happens to logits after lm_head. Float32, as transformers computes. */
#ifndef SLUICE_WORKER_CPU_FAMILY_H
#define SLUICE_WORKER_CPU_FAMILY_H

#include <math.h>
#include <stdint.h>

#include "worker/model/model_family.h"

/* o[i] = act(g[i]) * u[i]: SiLU (Llama) or GELU with the tanh approximation (Gemma). */
void cpu_glu(enum model_act act, const float *g, const float *u, float *o, int64_t n);

/* cap * tanh(x / cap), as transformers computes it: divide, tanh, multiply. */
static inline float cpu_softcap(float x, float cap)
{
    return tanhf(x / cap) * cap;
}

/* Granite's logits_scaling, then Gemma 2's final soft-capping, over n logits in place. */
void cpu_logits_finish(const struct model_family *f, float *logits, int64_t n);

#endif
