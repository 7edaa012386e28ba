// What more than one mixture-of-experts kernel uses: the warp's sum, shared by moe_route.cu
// (the softmax's denominator) and the grouped products (moe_grouped.cuh: each row's product), so
// that they reduce in the same shuffle tree.
//
// In an anonymous namespace, as it was in the one file these kernels came from: each file that
// includes it keeps an internal copy, apart from other kernels' warp_sum (qkv_head.cuh's).
#pragma once

#include <cuda_runtime.h>

namespace
{

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

} // namespace
