/* The CPU backend's mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE): per token the
 * router's top-k experts (cpu_router.h), the tokens grouped by expert so that each chosen expert
 * multiplies its tokens in one pass and unchosen experts are not read, the weighted sum in
 * expert order as transformers adds it, and Qwen2-MoE's sigmoid-gated shared expert. Experts
 * are cpu_weight like the dense matrices: float32, or a GGUF file's blocks read in place. */
#ifndef SLUICE_WORKER_CPU_MOE_H
#define SLUICE_WORKER_CPU_MOE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/backend/cpu/cpu_internal.h"
#include "worker/model/model.h"

struct cpu_moe;

/* Loads every sparse layer's router and experts into cb->moe (left NULL for a dense model). */
int cpu_moe_create(struct cpu_backend *cb, const struct model *m, char *err, size_t errlen);
void cpu_moe_free(struct cpu_moe *moe);
/* Bytes of the experts' weights, and of those in GGUF blocks. */
size_t cpu_moe_bytes(const struct cpu_moe *moe, size_t *quantized);
bool cpu_moe_is_sparse(const struct cpu_moe *moe, int layer);
/* out[t] = the layer's MoE MLP of x[t] for t < n_rows (rows of hidden_size). */
void cpu_moe_forward(struct cpu_backend *cb, int layer, int64_t n_rows, const float *x, float *out);

#endif
