// The paged KV cache's element types, for the kernels that write it (qkv_post.cu, the decode
// attention doing qkv_post's work) and those that read it (attention.cu, attention_decode_gqa.cu,
// attention_prefill.cu): bf16, or with --kv-cache-dtype fp8 e4m3 codes of value / scale, one
// scale per layer for K and one for V (sk_attn_params and sk_qkv_params' kv_fp8, k_scale,
// v_scale). Each kernel takes the type as a template parameter, so that its bf16 instance is the
// code it was. Readers leave the scales out of the codes' values: K's goes into the score scale,
// V's onto the output, once, where the bf16 instances multiply by nothing.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <type_traits>

#include "kernels/bf16.cuh"
#include "kernels/fp8_common.cuh"

template <bool FP8> using kv_elem_t = std::conditional_t<FP8, uint8_t, __nv_bfloat16>;

// x / scale as an e4m3 code, rounded to nearest even and saturated at +-448: the bits
// worker/model/fp8.c's fp8_e4m3_from_f32 gives on the CPU (the CPU backend's FP8 cache).
__device__ __forceinline__ uint8_t kv_e4m3(float x, float scale)
{
    return (uint8_t)__nv_cvt_float_to_fp8(__fdiv_rn(x, scale), __NV_SATFINITE, __NV_E4M3);
}

// One value as the cache stores it (scale: FP8's, unused for bf16).
template <bool FP8> __device__ __forceinline__ kv_elem_t<FP8> kv_from_f32(float x, float scale)
{
    if constexpr (FP8)
        return kv_e4m3(x, scale);
    else
        return __float2bfloat16_rn(x);
}

// Four values (y.x in the low byte) as e4m3 codes of value / scale.
__device__ __forceinline__ uint32_t kv_e4m3x4(float4 y, float scale)
{
    return (uint32_t)kv_e4m3(y.x, scale) | (uint32_t)kv_e4m3(y.y, scale) << 8 | (uint32_t)kv_e4m3(y.z, scale) << 16 |
           (uint32_t)kv_e4m3(y.w, scale) << 24;
}

// Four consecutive values of a row (y.x first) as the cache stores them, as one word per lane:
// lane's elements 4 lane .. 4 lane + 3 of row.
template <bool FP8>
__device__ __forceinline__ void kv_store4(kv_elem_t<FP8> *row, int lane, float4 y, float scale)
{
    if constexpr (FP8) {
        reinterpret_cast<uint32_t *>(row)[lane] = kv_e4m3x4(y, scale);
    } else {
        reinterpret_cast<uint2 *>(row)[lane] = make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
    }
}

// The value of one e4m3 code, exactly (the scale left out): its bits moved into a float32's
// places give the value times 2^-120 (fp8_common.cuh), undone by an exact multiplication. Every
// code reads as a finite number, NaN's 0x7f and 0xff as +-480: slots a kernel masks may hold them.
__device__ __forceinline__ float kv_e4m3_to_f32(uint8_t b)
{
    const uint32_t w = b;
    return __uint_as_float(((w << 24) & 0x80000000u) | ((w << 20) & 0x07f00000u)) * kE4m3Unscale;
}

// Four codes (low byte first) as floats, the same way.
__device__ __forceinline__ float4 kv_e4m3x4_to_f32(uint32_t w)
{
    float f[4];
    e4m3x4_to_f32_scaled(w, f);
    return make_float4(f[0] * kE4m3Unscale, f[1] * kE4m3Unscale, f[2] * kE4m3Unscale, f[3] * kE4m3Unscale);
}

// Eight codes (one 8-byte load, low byte first) as floats, the same way.
__device__ __forceinline__ void kv_e4m3x8_to_f32(const uint2 &w, float *out)
{
    e4m3x4_to_f32_scaled(w.x, out);
    e4m3x4_to_f32_scaled(w.y, out + 4);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] *= kE4m3Unscale;
}

// Eight codes as eight bf16 values in one 16-byte word (low element first), exactly: what the
// tensor-core kernels' bf16 fragments take.
__device__ __forceinline__ uint4 kv_e4m3x8_to_bf16x8(const uint2 &w)
{
    uint4 r;
    e4m3x4_to_bf16x2(w.x, r.x, r.y);
    e4m3x4_to_bf16x2(w.y, r.z, r.w);
    return r;
}
