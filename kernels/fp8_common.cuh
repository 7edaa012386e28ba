// What more than one FP8 kernel file uses: bf16 bits as a float, shared by fp8_quantize.cu (the
// rows it quantizes) and fp8_scale_output.cu (a bf16 GEMM output); the grid of a grid-stride loop
// over n elements, shared by fp8_dequant.cu and fp8_scale_output.cu; and the two ways the
// products turn e4m3 codes into numbers in registers: as float32 times 2^-120 for the CUDA-core
// sums (fp8_gemv.cu, moe_gemm_fp8.cu) and as bf16 for the tensor cores (fp8_mma.cu,
// moe_gemm_fp8.cu).
//
// In an anonymous namespace, as they were in the one file these kernels came from: each file
// that includes this keeps internal copies (grid_for inline, so a file that does not call it
// has no unused function).
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace
{

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t v)
{
    return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

inline int grid_for(int64_t n)
{
    int64_t g = (n + 255) / 256;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}

// Four e4m3 codes (low byte first) as float32 times 2^-120: the sign bit and the 7 bits of
// exponent and mantissa moved into a float32's places, with no conversion instruction (a gemv
// would otherwise spend more time converting than loading). Exact for every finite code: the
// exponent biases differ by 120, and subnormal codes land on float32 subnormals of the same
// value times 2^-120. kE4m3Unscale undoes the 2^-120 (on a sum, once).
__device__ __forceinline__ void e4m3x4_to_f32_scaled(uint32_t w, float *out)
{
    out[0] = __uint_as_float(((w << 24) & 0x80000000u) | ((w << 20) & 0x07f00000u));
    out[1] = __uint_as_float(((w << 16) & 0x80000000u) | ((w << 12) & 0x07f00000u));
    out[2] = __uint_as_float(((w << 8) & 0x80000000u) | ((w << 4) & 0x07f00000u));
    out[3] = __uint_as_float((w & 0x80000000u) | ((w >> 4) & 0x07f00000u));
}
constexpr float kE4m3Unscale = 0x1p120f;
constexpr float kE4m3UnscaleHalf = 0x1p60f;

// Sixteen codes (one 16-byte load) the same way.
__device__ __forceinline__ void e4m3x16_to_f32_scaled(const uint4 &v, float *out)
{
    e4m3x4_to_f32_scaled(v.x, out);
    e4m3x4_to_f32_scaled(v.y, out + 4);
    e4m3x4_to_f32_scaled(v.z, out + 8);
    e4m3x4_to_f32_scaled(v.w, out + 12);
}

// Four e4m3 codes (low byte first) as two bf16x2 registers {b0, b1} and {b2, b3}, exact: each
// code's sign, exponent and mantissa moved into a bf16's places gives its value times 2^-120
// (the exponent biases differ by 120; subnormal codes land on bf16 subnormals), and a bf16
// multiplication by 2^120 (a power of two, so exact) restores it.
__device__ __forceinline__ void e4m3x4_to_bf16x2(uint32_t q, uint32_t &lo, uint32_t &hi)
{
    const uint32_t u0 = __byte_perm(q, 0, 0x1404); // b1 << 24 | b0 << 8
    const uint32_t u1 = __byte_perm(q, 0, 0x3424); // b3 << 24 | b2 << 8
    const uint32_t v0 = (u0 & 0x80008000u) | ((u0 >> 4) & 0x07f007f0u);
    const uint32_t v1 = (u1 & 0x80008000u) | ((u1 >> 4) & 0x07f007f0u);
    const __nv_bfloat162 two120 = __halves2bfloat162(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));
    const __nv_bfloat162 r0 = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&v0), two120);
    const __nv_bfloat162 r1 = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&v1), two120);
    lo = *reinterpret_cast<const uint32_t *>(&r0);
    hi = *reinterpret_cast<const uint32_t *>(&r1);
}

// Word s (0..3) of a 16-byte load: the codes of the tensor cores' k step s (fp8_mma.cu's order).
__device__ __forceinline__ uint32_t word(const uint4 &v, int s)
{
    return s == 0 ? v.x : s == 1 ? v.y : s == 2 ? v.z : v.w;
}

} // namespace
