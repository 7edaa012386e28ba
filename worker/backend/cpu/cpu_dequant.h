/* Dequantization of GGUF block rows for the CPU matmul: AVX2 where the processor has it,
 * worker/model/quant.c's reference otherwise, chosen once per process. Both give the same bits
 * (tests/unit/backend/test_cpu_quant.c), so the choice never changes a result. */
#ifndef SLUICE_WORKER_CPU_DEQUANT_H
#define SLUICE_WORKER_CPU_DEQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/model/model.h"

typedef void cpu_dequant_fn(const void *src, float *dst, int64_t n);

/* The row dequantizer for quantized dtype d: n weights (a multiple of the block) from src. */
cpu_dequant_fn *cpu_dequant_for(enum dtype d);

/* Dot products of nx (1..4) float32 rows x[k] with one quantized weight row of n weights
 * (wrow: its blocks), without writing the row out: bit for bit what cpu_ops.c's AVX2 dot
 * computes over the row dequantized, the same fused multiply-adds in the same order. NULL for
 * every type where the processor lacks AVX2, FMA or F16C. */
typedef void cpu_qdot_fn(const float *const *x, int nx, const void *wrow, int64_t n, float *out);
cpu_qdot_fn *cpu_qdot_for(enum dtype d);

/* Whether cpu_dequant_for gives the vector kernels (for the tests and the log). */
bool cpu_dequant_vectorized(void);

/* The vector kernel for d even where cpu_dequant_for would give the reference (NULL when d
 * has none, or the processor lacks AVX2): for the tests that compare the two. */
cpu_dequant_fn *cpu_dequant_vector_for(enum dtype d);

#endif
