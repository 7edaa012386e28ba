// A row of bf16 values quantized per token to e4m3 for an FP8 product (the bits of the CPU's
// fp8_quantize_row): one scale, amax / 448 by IEEE division (1 for a row of zeros), and each
// value divided by it, rounded to nearest even and saturated. Shared by sk_fp8_quantize_rows and
// the kernels that write such a row and quantize it in the same pass (the residual add and
// RMSNorm, SwiGLU: sk_fp8.h), so every path gives the same codes. No fast math here: a
// reciprocal times the value would round differently.
#pragma once

#include <cstdint>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace
{

constexpr float kE4m3Max = 448.0f;

__device__ __forceinline__ float fp8_row_scale(float amax)
{
    return amax > 0.0f ? __fdiv_rn(amax, kE4m3Max) : 1.0f;
}

__device__ __forceinline__ float bf16_lo(uint32_t pair)
{
    return __uint_as_float(pair << 16);
}

__device__ __forceinline__ float bf16_hi(uint32_t pair)
{
    return __uint_as_float(pair & 0xffff0000u);
}

// The larger |value| of a pair of bf16 values (low half first), as float.
__device__ __forceinline__ float bf16_pair_amax(uint32_t pair)
{
    return fmaxf(fabsf(bf16_lo(pair)), fabsf(bf16_hi(pair)));
}

__device__ __forceinline__ uint32_t e4m3_code(float v, float scale)
{
    return __nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3);
}

// Two pairs of bf16 values (four, lowest first) as four codes, lowest byte first.
__device__ __forceinline__ uint32_t e4m3_codes4(uint32_t pair0, uint32_t pair1, float scale)
{
    return e4m3_code(bf16_lo(pair0), scale) | e4m3_code(bf16_hi(pair0), scale) << 8 |
           e4m3_code(bf16_lo(pair1), scale) << 16 | e4m3_code(bf16_hi(pair1), scale) << 24;
}

// The largest of the block's values (blockDim.x a multiple of 32, at most 1024), for every
// thread. sh holds 32 floats; a call may follow another reduction over the same sh.
__device__ __forceinline__ float block_amax(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

} // namespace
