// sk_fp8_quantize_rows (sk_fp8.h): rows of bf16 quantized to e4m3 with one scale each (amax /
// 448), one block per row. Conversions use the hardware's cvt (sm_89 and later) through
// cuda_fp8.h; every rounding is to nearest even, as the CPU's fp8.c does. A programmatic
// dependent (pdl.cuh) that lets its reader launch at once: the product after it streams its
// weights meanwhile.
#include "kernels/fp8_common.cuh"
#include "kernels/pdl.cuh"
#include "kernels/sk_fp8.h"

#include <cuda_fp8.h>

namespace
{

constexpr float kE4m3Max = 448.0f;
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(uint8_t *__restrict__ q, float *__restrict__ scale, const uint16_t *__restrict__ x, int cols)
{
    pdl_let_dependents_launch();
    pdl_wait();
    const int r = blockIdx.x;
    const uint16_t *row = x + (size_t)r * cols;
    float amax = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(bf16_bits_to_f32(row[c])));
    __shared__ float warp_max[kQuantThreads / 32];
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = 0.0f;
    for (int w = 0; w < kQuantThreads / 32; w++) amax = fmaxf(amax, warp_max[w]);
    // IEEE division (no fast math here), so the scale and the codes are the CPU's bit for bit.
    const float s = amax > 0.0f ? __fdiv_rn(amax, kE4m3Max) : 1.0f;
    if (threadIdx.x == 0) scale[r] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        q[(size_t)r * cols + c] = __nv_cvt_float_to_fp8(__fdiv_rn(bf16_bits_to_f32(row[c]), s), __NV_SATFINITE,
                                                        __NV_E4M3);
}

} // namespace

extern "C" cudaError_t sk_fp8_quantize_rows(uint8_t *q, float *scale, const uint16_t *x, int rows, int cols,
                                            cudaStream_t s)
{
    if (rows < 0 || cols < 1) return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    return launch_pdl(quantize_rows_kernel, dim3(rows), dim3(kQuantThreads), 0, s, q, scale, x, cols);
}
