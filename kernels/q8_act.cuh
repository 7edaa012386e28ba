// The block GEMV's activations in int8 (quant_gemv.cu's dp4a kernels; llama.cpp's q8_1): per 32
// values of a row a scale sx = max|x| / 127, the values as round(x / sx), and sx times the sum of
// those quants (the K-quants' minimums need it). Kept in the GEMV's scratch: kQ8MaxRows rows of
// k_in quants, then each row's (sx, sx * sum) pairs. The GEMV's own quantizer (one value a lane)
// and the kernels that write a row and quantize it in the same pass (add_rmsnorm.cu: 4 values a
// lane, so a group spans 8 lanes; silu_mul.cu: 8 a lane, 4 lanes) take the arithmetic from here,
// so their bytes are the same.
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

} // namespace

#endif
