/* FP8 (e4m3) weights on the GPU behind plain C launchers (kernels/fp8_*.cu, one file each):
 * quantizing rows with one scale each (fp8_quantize.cu), dequantizing to bf16 (fp8_dequant.cu),
 * the decode gemv that reads one byte a weight (fp8_gemv.cu), and the scales applied to an FP8
 * GEMM's output (fp8_scale_output.cu). A matrix is [rows, cols] row-major, e4m3 codes, with
 * float32 scales: element (r, c) is e4m3(q) * scale[(r / scale_rows) * ceil(cols / scale_cols) +
 * c / scale_cols] (per output row: scale_rows 1 and scale_cols cols; DeepSeek's blocks: 128,
 * 128), as struct tensor describes it (worker/model/model.h). */
#ifndef SLUICE_KERNELS_SK_FP8_H
#define SLUICE_KERNELS_SK_FP8_H

#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Each of rows rows of x (bf16, cols apart): scale[r] = amax / 448 (1 for a row of zeros), q =
 * e4m3(x / scale[r]) rounded to nearest even, as fp8_quantize_row (worker/model/fp8.c). For
 * --quantization fp8 of dummy weights and for activations before an FP8 GEMM (one scale per
 * token). */
cudaError_t sk_fp8_quantize_rows(uint8_t *q, float *scale, const uint16_t *x, int rows, int cols, cudaStream_t s);
/* The kernels that write an FP8 product's activations, quantizing each row in the same pass into
 * q (codes, cols apart) and q_scale, with sk_fp8_quantize_rows' bits; the bf16 rows are written
 * too. Where a row does not suit the single pass, sk_fp8_quantize_rows runs after.
 * sk_add_rmsnorm_parts_fp8: sk_add_rmsnorm_parts (sluice_kernels.h) with rows NULL, y quantized
 * (kernels/add_rmsnorm.cu). sk_silu_mul_fp8: sk_silu_mul or, interleaved, sk_silu_mul_interleaved,
 * out quantized (kernels/silu_mul.cu). */
cudaError_t sk_add_rmsnorm_parts_fp8(float *x, const float *delta, int n_parts, int64_t part_stride, const float *w,
                                     uint16_t *y, uint8_t *q, float *q_scale, int n_rows, int hidden, float eps,
                                     cudaStream_t s);
cudaError_t sk_silu_mul_fp8(uint16_t *out, uint8_t *q, float *q_scale, const float *gu, int n_tokens, int inter,
                            int interleaved, cudaStream_t s);
/* dst (bf16) = the matrix's values, rounded to nearest even. */
cudaError_t sk_fp8_dequant_bf16(uint16_t *dst, const uint8_t *q, const float *scale, int scale_rows, int scale_cols,
                                int rows, int cols, cudaStream_t s);
/* y[m, n] (fp32, n_out apart) = sum_k x[m, k] (bf16, k_in apart) * w[n, k] for m < rows <=
 * SK_FP8_GEMV_MAX_ROWS, fp32 accumulation. Needs k_in a multiple of 16, w and x 16-byte aligned,
 * and scale_cols either k_in (per row) or a multiple of 16. prefetch (NULL: none; 16-byte
 * aligned): the grid's last warps ask for its first prefetch_bytes to be brought into L2 once
 * they are done (the next product's weights; kernels/prefetch_l2.cuh). */
#define SK_FP8_GEMV_MAX_ROWS 8
cudaError_t sk_fp8_gemv(const uint8_t *w, const float *scale, int scale_rows, int scale_cols, const uint16_t *x,
                        float *y, int rows, int n_out, int k_in, const void *prefetch, size_t prefetch_bytes,
                        cudaStream_t s);
/* The same product for rows <= SK_FP8_GEMM_SMALL_MAX_ROWS on the tensor cores (kernels/fp8_mma.cu):
 * the weights converted to bf16 in registers (exactly), bf16 activations, fp32 sums, one scale
 * per output row (scale[n]). Weights read once for all rows. Needs n_out a multiple of 32, k_in
 * a multiple of 16, w and x 16-byte aligned; prefetch as sk_fp8_gemv's. */
#define SK_FP8_GEMM_SMALL_MAX_ROWS 64
cudaError_t sk_fp8_gemm_small(const uint8_t *w, const float *scale, const uint16_t *x, float *y, int rows, int n_out,
                              int k_in, const void *prefetch, size_t prefetch_bytes, cudaStream_t s);
/* y[m, n] (fp32, n_out apart) = acc[m, n] * row_scale[m] * col_scale[n], acc fp32 (acc_bf16 0)
 * or bf16 (1); y may be acc when both are fp32. The scales of a product of per-token quantized
 * activations and per-row quantized weights. */
cudaError_t sk_fp8_scale_output(float *y, const void *acc, int acc_bf16, const float *row_scale,
                                const float *col_scale, int rows, int n_out, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
