// One head of one token's qkv row, head_dim 128, by one warp: what qkv_post does to it (bias,
// q/k norm, rotary embedding), shared by qkv_post_kernel and the decode attention that takes
// qkv_post's work for its own token (attention_decode_gqa.cu).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void add4(float4 &a, const float4 b)
{
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
}

// Elements i..i+3 of a row in n_parts parts (16-byte aligned), added in split order from zero
// (as the norm and qkv_post's general loop add them), four parts' loads in flight at a time (all
// eight would cost qkv_post its occupancy in prefill, where there is one part).
__device__ __forceinline__ float4 sum_parts_at4(const float *d, int n_parts, int64_t part_stride, int64_t i)
{
    if (n_parts == 1) return *reinterpret_cast<const float4 *>(d + i);
    float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int j0 = 0; j0 < n_parts; j0 += 4) {
        float4 v[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (j0 + j < n_parts) v[j] = *reinterpret_cast<const float4 *>(d + (j0 + j) * part_stride + i);
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (j0 + j < n_parts) add4(s, v[j]);
    }
    return s;
}

// The pieces of one head of head_dim 128 by one warp, lane l holding elements 4l..4l+3. They come
// apart so that a caller can fetch what does not depend on the product (bias, norm weights, the
// rotation's cos and sin) before it waits for the product, and have several heads' loads in
// flight at once. The general loop in qkv_post_kernel takes elements lane, lane + 32, ... one pair
// at a time, its next loads issued only after the last pair's math, so few loads were in flight
// and long prefills ran it far below the copy rate (docs/performance.md). Element by element the
// arithmetic here is the loop's; only the norm's sum of squares is taken in another order (its
// last bit may differ).

// Lane l's four elements of a per-head vector (bias, norm weights); zeros for none.
__device__ __forceinline__ float4 head128_at(const float *v, int lane)
{
    return v ? reinterpret_cast<const float4 *>(v)[lane] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// The sum of the head's parts (one 16-byte load per part) plus its bias.
__device__ __forceinline__ float4 qkv_head128_sum(const float *src, int n_parts, int64_t part_stride, float4 bias,
                                                  int lane)
{
    const float4 s = sum_parts_at4(src, n_parts, part_stride, 4 * lane);
    return make_float4(s.x + bias.x, s.y + bias.y, s.z + bias.z, s.w + bias.w);
}

// cos and sin of lane l's four rotation angles, fpos * inv_freq: rotate-half pairs element i with
// i + 64, interleaved ones (2i, 2i + 1).
struct Rope128 {
    float cs[4], sn[4];
};
__device__ __forceinline__ Rope128 qkv_rope128(const float *inv_freq, float fpos, bool interleaved, int lane)
{
    Rope128 r;
    const int i = 4 * lane;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        if (interleaved && (c & 1)) { // the pair's angle, taken for element c - 1
            r.sn[c] = r.sn[c - 1];
            r.cs[c] = r.cs[c - 1];
            continue;
        }
        sincosf(fpos * inv_freq[interleaved ? (i + c) / 2 : (i + c) & 63], &r.sn[c], &r.cs[c]);
    }
    return r;
}

// q or k from qkv_head128_sum's e: the head's RMSNorm with weights w (when norm), then the rotation.
// Rotate-half pairs element i of lane l < 16 with i + 64 of lane l + 16 (one shuffle); interleaved
// pairs sit in the lane.
__device__ __forceinline__ float4 qkv_head128_rotate(float4 v, bool norm, float4 w, float eps, bool interleaved,
                                                     const Rope128 &r, int lane)
{
    float e[4] = {v.x, v.y, v.z, v.w};
    if (norm) {
        float ss = e[0] * e[0] + e[1] * e[1] + e[2] * e[2] + e[3] * e[3];
        ss = warp_sum(ss);
        const float inv = rsqrtf(ss / 128.0f + eps);
        e[0] = w.x * (e[0] * inv);
        e[1] = w.y * (e[1] * inv);
        e[2] = w.z * (e[2] * inv);
        e[3] = w.w * (e[3] * inv);
    }
    float y[4];
    if (interleaved) {
#pragma unroll
        for (int c = 0; c < 4; c += 2) {
            y[c] = e[c] * r.cs[c] - e[c + 1] * r.sn[c];
            y[c + 1] = e[c + 1] * r.cs[c] + e[c] * r.sn[c];
        }
    } else {
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float o = __shfl_xor_sync(0xffffffffu, e[c], 16);
            y[c] = lane < 16 ? e[c] * r.cs[c] - o * r.sn[c] : e[c] * r.cs[c] + o * r.sn[c];
        }
    }
    return make_float4(y[0], y[1], y[2], y[3]);
}

// One head, all of it: v (not rotate) is its parts' sum plus bias; q and k go on through the norm
// (nw not null) and the rotation.
__device__ __forceinline__ float4 qkv_head128(const float *src, int n_parts, int64_t part_stride, const float *b,
                                              bool rotate, const float *nw, float eps, bool interleaved,
                                              const float *inv_freq, float fpos, int lane)
{
    const float4 e = qkv_head128_sum(src, n_parts, part_stride, head128_at(b, lane), lane);
    if (!rotate) return e;
    return qkv_head128_rotate(e, nw != nullptr, head128_at(nw, lane), eps, interleaved,
                              qkv_rope128(inv_freq, fpos, interleaved, lane), lane);
}
