/* GGUF block-quantized weights on the device, kept in the file's blocks (kernels/quant_*.cu):
 * small-batch matrix-vector products that dequantize in registers (quant_gemv.cu), tensor-core
 * products for larger batches that do too (quant_mma.cu), the dequantization of rows into bf16
 * for the largest batches' cuBLAS products (quant_dequant.cu) and embedding rows looked up in a
 * table of blocks (quant_embed.cu), over the block decoders of quant_blocks.cuh. Types are
 * numbered as enum dtype in worker/model/model.h (the kernels area does not include it); each
 * weight is computed exactly as worker/model/quant.c computes it (every product and sum rounded
 * on its own). */
#ifndef SLUICE_SK_QUANT_H
#define SLUICE_SK_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* enum dtype's numbers for the types these kernels take. */
enum {
    SK_Q4_0 = 3,
    SK_Q4_1 = 4,
    SK_Q5_0 = 5,
    SK_Q5_1 = 6,
    SK_Q8_0 = 7,
    SK_Q4_K = 10,
    SK_Q5_K = 11,
    SK_Q6_K = 12,
};

/* Rows of x the block GEMV's scratch holds in int8 (sk_gemv_q, x_ready). */
#define SK_GEMV_Q_X_ROWS 8

/* Whether the kernels take dtype (an enum dtype number). */
int sk_quant_supported(int dtype);

/* y[m * ldy + n] = sum_k x[m * ldx + k] * w[n, k] for m < rows, n < n_out: w is n_out rows of
 * k_in / block_elems blocks of dtype, x bf16, fp32 accumulation and output. One warp per output
 * feature (the int8 paths below: up to four, sharing each activation load); any number of rows
 * (taken 8 at a time, each weight byte read once per 8 rows).
 * Needs k_in a multiple of the block, ldx % 4 == 0 and w aligned as its blocks are in a
 * cudaMalloc'd buffer; returns cudaErrorInvalidValue otherwise.
 * scratch (16-byte aligned, sk_gemv_q_scratch_bytes(k_in) bytes, or NULL): with it, Q4_K, Q6_K
 * and Q8_0 take x in int8 (per 32 values a scale max|x| / 127, llama.cpp's q8_1) into dp4a products,
 * an error of a few 1e-3 relative for far fewer instructions a weight; other types ignore it.
 * x_ready: scratch already holds this x in int8, left by the call before on the same x (and
 * rows) or by sk_add_rmsnorm_parts_q8; it is used as it is when rows <= SK_GEMV_Q_X_ROWS (more
 * rows are quantized 8 at a time again).
 * pdl: launched as programmatic dependents (kernels/pdl.cuh): each kernel asks L2 for its first
 * weights and waits for the kernel before it only then (not yet measured on a GPU: the CUDA
 * backend's --cuda-options quant_overlap=1). Either way each kernel lets the one after it
 * launch early. */
cudaError_t sk_gemv_q(int dtype, const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int n_out,
                      int k_in, void *scratch, int x_ready, int pdl, cudaStream_t s);
/* The same for n_mats (1 to 3) matrices of dtype and k_in columns in one launch: matrix i's
 * n_out[i] rows give the next n_out[i] columns of y (q, k and v; gate and up). */
cudaError_t sk_gemv_q_n(int dtype, int n_mats, const void *const *w, const int *n_out, const uint16_t *x, int ldx,
                        float *y, int ldy, int rows, int k_in, void *scratch, int x_ready, int pdl, cudaStream_t s);
size_t sk_gemv_q_scratch_bytes(int k_in);
/* x's rows (1..8, ldx apart) in int8 into scratch as sk_gemv_q leaves them, for a call with
 * x_ready; a programmatic dependent. Needs k_in % 32 == 0 and scratch 16-byte aligned. */
cudaError_t sk_gemv_q_quantize_x(const uint16_t *x, int ldx, int rows, int k_in, void *scratch, cudaStream_t s);
/* sk_silu_mul (sluice_kernels.h) that also leaves its output rows (1..8) in int8 in scratch, bit
 * for bit as sk_gemv_q_quantize_x would: the down product after it takes x_ready. Needs inter %
 * 32 == 0, gu and out 16-byte aligned, scratch 16-byte aligned. */
cudaError_t sk_silu_mul_q8(uint16_t *out, void *scratch, const float *gu, int n_tokens, int inter, cudaStream_t s);
/* sk_add_rmsnorm_parts (sluice_kernels.h; rows NULL) that also leaves y's rows (1..8) in int8 in
 * scratch, bit for bit as sk_gemv_q_quantize_x would, in the same pass: the block GEMV after it
 * takes x_ready. Needs hidden % 32 == 0 and scratch 16-byte aligned. */
cudaError_t sk_add_rmsnorm_parts_q8(float *x, const float *delta, int n_parts, int64_t part_stride, const float *w,
                                    uint16_t *y, void *scratch, int n_rows, int hidden, float eps, cudaStream_t s);
/* Whether sk_gemv_q with a scratch takes dtype's activations in int8 (and leaves them there). */
int sk_gemv_q_int8(int dtype);

/* dst[n * k_in + k] = bf16(w[n, k]) for n < n_rows: the same weights as sk_gemv_q's, rounded to
 * nearest even. Same requirements. */
cudaError_t sk_dequant_bf16(int dtype, const void *w, uint16_t *dst, int n_rows, int k_in, cudaStream_t s);

/* The same product on the tensor cores for batches past a few rows (quant_mma.cu): mma.sync
 * m16n8k16 on bf16, each weight dequantized in registers to exactly sk_dequant_bf16's bf16, fp32
 * sums; the blocks stream through shared memory once per SK_QUANT_MMA_ROWS rows. Every type
 * sk_quant_supported takes; any rows, n_out and k_in a whole number of blocks.
 * splits: k cut into that many ranges of whole stages (SK_QUANT_MMA_STAGE_K weights; fewer when
 * k_in has fewer stages), 1 to SK_QUANT_MMA_MAX_SPLITS. With more than one, work holds the
 * ranges' sums (splits * rows * n_out floats) and counters (sk_quant_mma_counters(rows, n_out)
 * of them, zero before the launch and left zero after) says which block of a tile finishes
 * last: that block adds the ranges in their order, so the result does not depend on timing.
 * Needs w and x 16-byte aligned (w as cudaMalloc gives it: the blocks may have any size),
 * ldx % 8 == 0 and ldx >= k_in; returns cudaErrorInvalidValue otherwise. pdl: as sk_gemv_q's (the
 * first stages' weights on their way before the wait). */
int sk_quant_mma_supported(int dtype);
cudaError_t sk_quant_mma(int dtype, const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int n_out,
                         int k_in, int splits, float *work, unsigned *counters, int pdl, cudaStream_t s);
size_t sk_quant_mma_counters(int rows, int n_out);

/* x[t, :] = the dequantized row of table (vocabulary rows of hidden weights in dtype's blocks)
 * for token t, taken as sk_embed takes it (negative: the sampled token of row -1 - id of the
 * step before, in prev), table holding the rows of ids row0 .. row0 + n_rows - 1 as sk_embed's. */
struct sk_sample_out;
cudaError_t sk_embed_q(float *x, int dtype, const void *table, const int32_t *tokens, const struct sk_sample_out *prev,
                       int row0, int n_rows, int n_tokens, int hidden, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
