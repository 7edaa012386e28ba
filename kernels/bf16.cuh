// bf16 values as raw words: unpacking loaded words into floats (a bf16 is the high half of a
// float), and packing two floats, rounded to nearest even, into one word to store.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>

__device__ __forceinline__ void bf16x2_to_f32(uint32_t w, float &lo, float &hi)
{
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}

// bf16(lo) in the low half, bf16(hi) in the high half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

// Eight bf16 values from one 16-byte load.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &raw, float *out)
{
    bf16x2_to_f32(raw.x, out[0], out[1]);
    bf16x2_to_f32(raw.y, out[2], out[3]);
    bf16x2_to_f32(raw.z, out[4], out[5]);
    bf16x2_to_f32(raw.w, out[6], out[7]);
}
