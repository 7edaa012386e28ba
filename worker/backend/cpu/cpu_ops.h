/* The CPU backend's kernels: float32, deterministic, and independent of how rows are grouped
 * into a batch, so a sequence gives the same logits alone or beside others. */
#ifndef SLUICE_WORKER_CPU_OPS_H
#define SLUICE_WORKER_CPU_OPS_H

#include <stdint.h>

#include "worker/backend/cpu/cpu_dequant.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/model/model.h"

/* A weight matrix as the matmul reads it: n_out rows of n_in weights, in up to
 * CPU_WEIGHT_MAX_PARTS parts stacked by rows (fused q/k/v and gate/up, whose parts may each
 * have their own type). A part is float32 or a GGUF block type kept as the file has it; a
 * quantized row is dequantized into a small float32 buffer as the matmul reaches it, so a row's
 * arithmetic is exactly that of its float32 twin (dequantized at load) and independent of the
 * batch. A part's row_map, when set, names the stored row each of its rows reads: the rope's
 * de-interleaving of q and k without copying the file's rows. */
#define CPU_WEIGHT_MAX_PARTS 3
/* The longest quantized row the matmul dequantizes (weights); a longer one must be float32. */
#define CPU_MATMUL_MAX_QROW 32768

struct cpu_weight_part {
    enum dtype dtype;          /* DTYPE_F32 or a quantized type */
    const void *data;          /* stored row r at data + r * row_bytes */
    size_t row_bytes;
    int64_t n_rows;
    const int32_t *row_map;    /* NULL, or the stored row each of the part's n_rows rows reads */
    void *owned;               /* freed by cpu_weight_free; NULL when data belongs to the model */
    cpu_dequant_fn *dequant;   /* quantized parts: this process's row dequantizer */
    cpu_qdot_fn *qdot;         /* and its dot products in registers (AVX2), or NULL */
};

struct cpu_weight {
    int64_t n_out, n_in;
    int n_parts;
    struct cpu_weight_part parts[CPU_WEIGHT_MAX_PARTS];
};

/* An empty weight whose rows will be n_in long. */
void cpu_weight_init(struct cpu_weight *w, int64_t n_in);
/* Appends n_rows rows of dtype at data (owned: freed with the weight, or NULL); -1 when the
 * weight has all its parts or a quantized row would be longer than CPU_MATMUL_MAX_QROW (owned
 * is then freed). */
int cpu_weight_add(struct cpu_weight *w, enum dtype dtype, const void *data, int64_t n_rows, const int32_t *row_map,
                   void *owned);
void cpu_weight_free(struct cpu_weight *w);
/* Bytes of the weight's rows, and of those in quantized parts. */
size_t cpu_weight_bytes(const struct cpu_weight *w, size_t *quantized);
/* Row r as float32 into dst (n_in floats): the embedding lookup. */
void cpu_weight_row(const struct cpu_weight *w, int64_t r, float *dst);

/* out[t][o] = dot(x[t], w[o]) (+ bias[o]) for t < n_rows, o < w->n_out; x rows are w->n_in long. */
void cpu_matmul_w(struct cpu_pool *pool, const float *x, int64_t n_rows, const struct cpu_weight *w,
                  const float *bias, float *out);

/* The same for a plain float32 matrix w of n_out rows of n_in. */
void cpu_matmul(struct cpu_pool *pool, const float *x, int64_t n_rows, int64_t n_in, const float *w,
                const float *bias, int64_t n_out, float *out);

/* out = x / rms(x) * weight over n elements (out may equal x). */
void cpu_rmsnorm(const float *x, const float *weight, int64_t n, float eps, float *out);

/* Rotates one head of head_dim floats in Hugging Face's rotate-half layout with the angles'
 * cosines and sines (head_dim / 2 each). */
void cpu_rope_apply(float *v, int head_dim, const float *cos_t, const float *sin_t);

#endif
