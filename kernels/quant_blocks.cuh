// GGUF block types as the kernels of sk_quant.h decode them: shared by quant_gemv.cu (sk_gemv_q),
// quant_dequant.cu (sk_dequant_bf16) and quant_embed.cu (sk_embed_q), which take the same types.
//
// A block is cut into units: the few bytes of quants one lane decodes at a time (4 bytes of
// nibbles, 8 of Q8_0's bytes, ...), giving 8 or 16 weights in runs of 4 consecutive elements.
// The blocks (18, 22, 34, 210 bytes) are not 16-byte aligned, which rules out 16-byte loads;
// each unit's quants are one 4-byte load where the block layout keeps them 4-byte aligned (Q4_1,
// Q5_1, Q4_K, Q5_K), else two 2-byte loads. Scales are re-read per unit from L1. Weights are
// formed with the reference's rounding (__fmul_rn / __fadd_rn: no contraction), so
// sk_dequant_bf16 gives exactly the bf16 of worker/model/quant.c's floats and the products
// differ from the CPU's only in the order of their sums.
//
// In an anonymous namespace, as they were in the one file they came from: each file that
// includes this keeps its own internal copies, and the short names (add, mul, nib) stay out of
// every other file's way.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>

namespace
{

__device__ __forceinline__ uint32_t ld16(const uint8_t *p)
{
    return __ldg(reinterpret_cast<const unsigned short *>(p));
}
// 4 bytes at a 2-byte aligned address.
__device__ __forceinline__ uint32_t ld32_2(const uint8_t *p)
{
    return ld16(p) | ld16(p + 2) << 16;
}
__device__ __forceinline__ uint32_t ld32(const uint8_t *p)
{
    return __ldg(reinterpret_cast<const unsigned int *>(p));
}
__device__ __forceinline__ float h2f(uint32_t h)
{
    return __half2float(__ushort_as_half((unsigned short)(h & 0xffffu)));
}
__device__ __forceinline__ float mul(float a, float b)
{
    return __fmul_rn(a, b);
}
__device__ __forceinline__ float add(float a, float b)
{
    return __fadd_rn(a, b);
}
__device__ __forceinline__ float sub(float a, float b)
{
    return __fsub_rn(a, b);
}
// (float)v for |v| < 2^22, exactly, without the conversion unit (a quarter of the float rate):
// v added to the bits of 1.5 * 2^23, whose unit in the last place is 1, then 1.5 * 2^23 taken away.
__device__ __forceinline__ float i2f(int v)
{
    return __int_as_float(0x4B400000 + v) - 12582912.0f;
}
__device__ __forceinline__ int nib(uint32_t q, int j, int hi)
{
    return (int)((q >> (8 * j + 4 * hi)) & 15u);
}

// Each type: block elements BE, block bytes BB, units per block UPB, runs of 4 per unit RUNS,
// the alignment its loads need (ALIGN), and decode(block, unit, w, off): the unit's weights w[4r
// + j] for elements off[r] + j of the block.
struct Q4_0 {
    static constexpr int BE = 32, BB = 18, UPB = 4, RUNS = 2, ALIGN = 2;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const float d = h2f(ld16(b));
        const uint32_t q = ld32_2(b + 2 + 4 * u);
        off[0] = 4 * u;
        off[1] = 16 + 4 * u;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[j] = mul(i2f(nib(q, j, 0) - 8), d);
            w[4 + j] = mul(i2f(nib(q, j, 1) - 8), d);
        }
    }
};
struct Q4_1 {
    static constexpr int BE = 32, BB = 20, UPB = 4, RUNS = 2, ALIGN = 4;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const uint32_t dm = ld32(b);
        const float d = h2f(dm), m = h2f(dm >> 16);
        const uint32_t q = ld32(b + 4 + 4 * u);
        off[0] = 4 * u;
        off[1] = 16 + 4 * u;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[j] = add(mul(d, i2f(nib(q, j, 0))), m);
            w[4 + j] = add(mul(d, i2f(nib(q, j, 1))), m);
        }
    }
};
// Q5_0 / Q5_1: the 5-bit quants of elements i (byte j's low nibble) and i + 16 (its high one).
__device__ __forceinline__ void q5_pair(uint32_t q, uint32_t qh, int i, int j, int &lo, int &hi)
{
    lo = nib(q, j, 0) | (int)((qh >> i) & 1u) << 4;
    hi = nib(q, j, 1) | (int)((qh >> (i + 16)) & 1u) << 4;
}
// Q5_0 (d, high bits, nibbles: x = (q - 16) d) and Q5_1 (d, m, high bits, nibbles: x = q d + m).
template <bool kMin> struct Q5 {
    static constexpr int BE = 32, BB = kMin ? 24 : 22, UPB = 4, RUNS = 2, ALIGN = kMin ? 4 : 2;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const uint32_t dm = kMin ? ld32(b) : ld16(b);
        const float d = h2f(dm), m = kMin ? h2f(dm >> 16) : 0.0f;
        const int at = kMin ? 4 : 2; // the high bits; the nibbles after them
        const uint32_t qh = kMin ? ld32(b + at) : ld32_2(b + at),
                       q = kMin ? ld32(b + at + 4 + 4 * u) : ld32_2(b + at + 4 + 4 * u);
        off[0] = 4 * u;
        off[1] = 16 + 4 * u;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int lo, hi;
            q5_pair(q, qh, 4 * u + j, j, lo, hi);
            w[j] = kMin ? add(mul(d, i2f(lo)), m) : mul(d, i2f(lo - 16));
            w[4 + j] = kMin ? add(mul(d, i2f(hi)), m) : mul(d, i2f(hi - 16));
        }
    }
};
using Q5_0 = Q5<false>;
using Q5_1 = Q5<true>;
struct Q8_0 {
    static constexpr int BE = 32, BB = 34, UPB = 4, RUNS = 2, ALIGN = 2;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const float d = h2f(ld16(b));
        const uint32_t q0 = ld32_2(b + 2 + 8 * u), q1 = ld32_2(b + 6 + 8 * u);
        off[0] = 8 * u;
        off[1] = 8 * u + 4;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[j] = mul(i2f((int8_t)(q0 >> (8 * j))), d);
            w[4 + j] = mul(i2f((int8_t)(q1 >> (8 * j))), d);
        }
    }
};

// The 6-bit scale and minimum of sub-block j of Q4_K / Q5_K from the 12 scale bytes (three words).
__device__ __forceinline__ void scale_min_k4(const uint32_t *s, int j, int &sc, int &m)
{
    auto byte = [&](int i) { return (int)((s[i >> 2] >> (8 * (i & 3))) & 0xffu); };
    if (j < 4) {
        sc = byte(j) & 63;
        m = byte(j + 4) & 63;
    } else {
        sc = (byte(j + 4) & 0x0f) | ((byte(j - 4) >> 6) << 4);
        m = (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4);
    }
}

// Q4_K and Q5_K: unit u is 4 bytes of 32-byte chunk c = u / 8, at byte 4 (u % 8): elements
// 4 (u % 8) + j of sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles).
template <bool kFifthBit> struct QK45 {
    static constexpr int BE = 256, BB = kFifthBit ? 176 : 144, UPB = 32, RUNS = 2, ALIGN = 4;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const int c = u >> 3, v = u & 7;
        const uint32_t dd = ld32(b);
        const float d = h2f(dd), dmin = h2f(dd >> 16);
        const uint32_t s[3] = {ld32(b + 4), ld32(b + 8), ld32(b + 12)};
        const uint32_t q = ld32(b + (kFifthBit ? 48 : 16) + 32 * c + 4 * v);
        const uint32_t qh = kFifthBit ? ld32(b + 16 + 4 * v) : 0u;
        off[0] = 64 * c + 4 * v;
        off[1] = 64 * c + 32 + 4 * v;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int sb = 2 * c + h;
            int sc, m;
            scale_min_k4(s, sb, sc, m);
            const float dl = mul(d, i2f(sc)), ml = mul(dmin, i2f(m));
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int qv = nib(q, j, h);
                if (kFifthBit) qv |= (int)((qh >> (8 * j + sb)) & 1u) << 4;
                w[4 * h + j] = sub(mul(dl, i2f(qv)), ml);
            }
        }
    }
};
using Q4_K = QK45<false>;
using Q5_K = QK45<true>;

// Q6_K: unit u is elements 128 h + 32 k + 4 v + j (h = u / 8, v = u % 8, k and j < 4): low
// nibbles from ql[64h + 4v..] (k = 0, 2) and ql[64h + 32 + 4v..] (k = 1, 3), high pairs from
// qh[32h + 4v..] (bits 2k).
struct Q6_K {
    static constexpr int BE = 256, BB = 210, UPB = 16, RUNS = 4, ALIGN = 2;
    __device__ static void decode(const uint8_t *b, int u, float *w, int *off)
    {
        const int h = u >> 3, v = u & 7;
        const uint32_t ql0 = ld32_2(b + 64 * h + 4 * v), ql1 = ld32_2(b + 64 * h + 32 + 4 * v),
                       qh = ld32_2(b + 128 + 32 * h + 4 * v);
        const float d = h2f(ld16(b + 208));
        const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            off[k] = 128 * h + 32 * k + 4 * v;
            const float dl = mul(d, i2f(__ldg(sc + 8 * h + 2 * k + (v >> 2))));
            const uint32_t ql = (k & 1) ? ql1 : ql0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int lo = nib(ql, j, k >> 1), hi = (int)((qh >> (8 * j + 2 * k)) & 3u);
                w[4 * k + j] = mul(dl, i2f((lo | hi << 4) - 32));
            }
        }
    }
};

template <class Q> bool shape_ok(const void *w, int k_in)
{
    return k_in > 0 && k_in % Q::BE == 0 && (uintptr_t)w % Q::ALIGN == 0;
}

} // namespace
