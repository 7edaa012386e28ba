// Sums over a row that the per-row kernels share (kernels/add_rmsnorm.cu, kernels/qkv_post.cu,
// kernels/residual_addend.cu): a block-wide sum (and max, for the FP8 kernels' amax:
// fp8_quantize.cu, silu_mul.cu), and one element of a product left in split-K parts.
#ifndef SLUICE_KERNELS_ROW_SUMS_CUH
#define SLUICE_KERNELS_ROW_SUMS_CUH

#include <stdint.h>

#include "kernels/sk_shapes.h"

namespace
{

// A block-wide reduction by op for blockDim.x a multiple of 32 (at most 1024), every thread
// getting the result: each warp's by shuffles, then the warps' in the first 32 threads of sh
// (lanes past the warps take 0, so op's identity must be 0). It syncs before writing sh, so a
// call may follow another over the same sh.
template <typename Op> __device__ __forceinline__ float block_reduce(float v, float *sh, Op op)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

struct reduce_add {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct reduce_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The block's total.
__device__ float block_sum(float v, float *sh)
{
    return block_reduce(v, sh, reduce_add{});
}

// The block's largest value, of values >= 0 (|x|: a row's amax).
__device__ __forceinline__ float block_max(float v, float *sh)
{
    return block_reduce(v, sh, reduce_max{});
}

// One element of a product left in parts: its only part, or its parts added in split order
// starting from zero, exactly as the Hopper product's cluster reduction adds them
// (sk_hopper_gemm_parts), so that both paths give the same bits. All loads in flight at once.
__device__ __forceinline__ float sum_parts_at(const float *d, int n_parts, int64_t part_stride, int64_t i)
{
    if (n_parts == 1) return d[i];
    float v[SK_HOPPER_MAX_SPLITS];
#pragma unroll
    for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
        if (j < n_parts) v[j] = d[j * part_stride + i];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
        if (j < n_parts) sum += v[j];
    return sum;
}

} // namespace

#endif
