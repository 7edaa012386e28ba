// A row of bf16 values quantized per token to e4m3 for an FP8 product (the bits of the CPU's
// fp8_quantize_row): one scale, amax / 448 by IEEE division (1 for a row of zeros), and each
// value divided by it, rounded to nearest even and saturated. Shared by sk_fp8_quantize_rows and
// the kernels that write such a row and quantize it in the same pass (the residual add and
// RMSNorm, SwiGLU: sk_fp8.h), so every path gives the same codes. No fast math here: a
// reciprocal times the value would round differently. The row's largest |value| comes from
// row_sums.cuh's block_max.
#pragma once

#include <cstdint>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "kernels/bf16.cuh"

namespace
{

constexpr float kE4m3Max = 448.0f;

__device__ __forceinline__ float fp8_row_scale(float amax)
{
    return amax > 0.0f ? __fdiv_rn(amax, kE4m3Max) : 1.0f;
}

// The larger |value| of a pair of bf16 values (low half first), as float.
__device__ __forceinline__ float bf16_pair_amax(uint32_t pair)
{
    float lo, hi;
    bf16x2_to_f32(pair, lo, hi);
    return fmaxf(fabsf(lo), fabsf(hi));
}

__device__ __forceinline__ uint32_t e4m3_code(float v, float scale)
{
    return __nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3);
}

// Two pairs of bf16 values (four, lowest first) as four codes, lowest byte first.
__device__ __forceinline__ uint32_t e4m3_codes4(uint32_t pair0, uint32_t pair1, float scale)
{
    float v[4];
    bf16x2_to_f32(pair0, v[0], v[1]);
    bf16x2_to_f32(pair1, v[2], v[3]);
    return e4m3_code(v[0], scale) | e4m3_code(v[1], scale) << 8 | e4m3_code(v[2], scale) << 16 |
           e4m3_code(v[3], scale) << 24;
}

} // namespace
