// sk_fp8_dequant_bf16 (sk_fp8.h): an e4m3 matrix and its scales (per row or per block)
// dequantized into bf16, a grid-stride loop over the elements. Conversions use the hardware's
// cvt (sm_89 and later) through cuda_fp8.h; every rounding is to nearest even, as the CPU's
// fp8.c does.
#include "kernels/fp8_common.cuh"
#include "kernels/sk_fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace
{

__device__ __forceinline__ float e4m3_to_f32(uint8_t b)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
    return __half2float(__half(h));
}

__global__ void dequant_kernel(uint16_t *__restrict__ dst, const uint8_t *__restrict__ q,
                               const float *__restrict__ scale, int scale_rows, int scale_cols, int rows, int cols)
{
    const int64_t n = (int64_t)rows * cols;
    const int per_row = (cols + scale_cols - 1) / scale_cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        const float v = e4m3_to_f32(q[i]) * scale[(size_t)(r / scale_rows) * per_row + c / scale_cols];
        __nv_bfloat16 b = __float2bfloat16_rn(v);
        dst[i] = *reinterpret_cast<uint16_t *>(&b);
    }
}

} // namespace

extern "C" cudaError_t sk_fp8_dequant_bf16(uint16_t *dst, const uint8_t *q, const float *scale, int scale_rows,
                                           int scale_cols, int rows, int cols, cudaStream_t s)
{
    if (rows < 1 || cols < 1 || scale_rows < 1 || scale_cols < 1) return cudaErrorInvalidValue;
    dequant_kernel<<<grid_for((int64_t)rows * cols), 256, 0, s>>>(dst, q, scale, scale_rows, scale_cols, rows, cols);
    return cudaGetLastError();
}
