// The block GEMV's activations in int8 (quant_gemv.cu's dp4a kernels; llama.cpp's q8_1): per 32
// values of a row a scale sx = max|x| / 127, the values as round(x / sx), and sx times the sum of
// those quants (the K-quants' minimums need it). Kept in the GEMV's scratch: kQ8MaxRows rows of
// k_in quants, then each row's (sx, sx * sum) pairs. The GEMV's own quantizer (one value a lane)
// and the kernels that write a row and quantize it in the same pass (add_rmsnorm.cu: 4 values a
// lane, so a group spans 8 lanes; silu_mul.cu: 8 a lane, 4 lanes) take the arithmetic from here,
// so their bytes are the same (q8_quantize).
#ifndef SLUICE_KERNELS_Q8_ACT_CUH
#define SLUICE_KERNELS_Q8_ACT_CUH

#include <stdint.h>

#include "kernels/sk_quant.h"

namespace
{

constexpr int kQ8Group = 32;                 // activations per int8 scale
constexpr int kQ8MaxRows = SK_GEMV_Q_X_ROWS; // rows the scratch holds: the GEMV takes batch rows 8 at a time

// The scratch's quants and pairs for rows of k_in.
__host__ __device__ inline int8_t *q8_quants(void *scratch)
{
    return static_cast<int8_t *>(scratch);
}
__host__ __device__ inline float2 *q8_pairs(void *scratch, int k_in)
{
    return reinterpret_cast<float2 *>(static_cast<int8_t *>(scratch) + (size_t)kQ8MaxRows * k_in);
}

// A group's scale from its largest magnitude, and a value's quant.
__device__ __forceinline__ float q8_scale(float amax)
{
    return amax / 127.0f;
}
__device__ __forceinline__ int q8_quant(float v, float amax, float sx)
{
    return amax > 0.0f ? __float2int_rn(v / sx) : 0;
}

// The max and the sum over the WIDTH lanes (a power of two, at most 32, aligned) that hold one
// group; mask: the lanes that call it together (the whole warp, or at least the group's lanes).
template <int WIDTH> __device__ __forceinline__ float group_max(float v, unsigned mask = 0xffffffffu)
{
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(mask, v, o));
    return v;
}
template <int WIDTH> __device__ __forceinline__ int group_sum(int v, unsigned mask = 0xffffffffu)
{
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
    return v;
}

// A lane's share of a group in int8: its N quants, 4 a word (the first in the low byte), and the
// group's (sx, sx * sum of its quants).
template <int N> struct q8_run {
    uint32_t q[(N + 3) / 4];
    float2 pair;
};

// The int8 form of a group of 32 held N values a lane by WIDTH lanes (32 / N); every lane of
// mask calls it together. The one quantization every writer of the format goes through.
template <int WIDTH, int N>
__device__ __forceinline__ q8_run<N> q8_quantize(const float (&f)[N], unsigned mask = 0xffffffffu)
{
    static_assert(WIDTH * N == kQ8Group, "a group is 32 values");
    float amax = fabsf(f[0]);
#pragma unroll
    for (int k = 1; k < N; k++) amax = fmaxf(amax, fabsf(f[k]));
    amax = group_max<WIDTH>(amax, mask);
    const float sx = q8_scale(amax);
    q8_run<N> r = {};
    int sum = 0;
#pragma unroll
    for (int k = 0; k < N; k++) {
        const int qk = q8_quant(f[k], amax, sx);
        sum += qk;
        r.q[k / 4] |= (uint32_t)(uint8_t)qk << (8 * (k % 4));
    }
    r.pair = make_float2(sx, sx * (float)group_sum<WIDTH>(sum, mask));
    return r;
}

} // namespace

#endif
