// Sums over a row that the per-row kernels share (kernels/add_rmsnorm.cu, kernels/qkv_post.cu,
// kernels/residual_addend.cu): a block-wide sum, and one element of a product left in split-K
// parts.
#ifndef SLUICE_KERNELS_ROW_SUMS_CUH
#define SLUICE_KERNELS_ROW_SUMS_CUH

#include <stdint.h>

#include "kernels/qkv_head.cuh"
#include "kernels/sk_shapes.h"

namespace
{

// Block-wide sum for blockDim.x a multiple of 32 (at most 1024); every thread gets the total.
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
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
