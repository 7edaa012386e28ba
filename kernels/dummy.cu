// Random weights for --load-format dummy, computed on the GPU from the hash in
// worker/model/dummy_hash.h with the exact arithmetic of model_dummy_value() (worker/model/model.c),
// so CPU and CUDA backends see the same model.
#include "kernels/sluice_kernels.h"
#include "worker/model/dummy_hash.h"

#include <cuda_bf16.h>

namespace
{

__device__ __forceinline__ float dummy_value(uint64_t seed, uint64_t id, uint64_t index, int is_norm)
{
    float u = __fmul_rn((float)(dummy_hash(seed, id, index) >> 40), 1.0f / 16777216.0f);
    // Rounded separately, never fused, to match the C code bit for bit.
    float v = __fmul_rn(__fsub_rn(__fmul_rn(2.0f, u), 1.0f), MODEL_DUMMY_SCALE);
    return is_norm ? __fadd_rn(1.0f, v) : v;
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v)
{
    return v;
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void dummy_kernel(T *dst, uint64_t seed, uint64_t id, uint64_t index0, int64_t n, int is_norm)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = from_float<T>(dummy_value(seed, id, index0 + (uint64_t)i, is_norm));
}

int dummy_grid(int64_t n)
{
    int64_t g = (n + 255) / 256;
    return g > 65535 * 8 ? 65535 * 8 : (g < 1 ? 1 : (int)g);
}

} // namespace

extern "C" cudaError_t sk_fill_dummy_bf16(uint16_t *dst, uint64_t seed, uint64_t id, uint64_t index0, int64_t n,
                                          int is_norm, cudaStream_t s)
{
    if (n <= 0) return cudaSuccess;
    dummy_kernel<__nv_bfloat16><<<dummy_grid(n), 256, 0, s>>>((__nv_bfloat16 *)dst, seed, id, index0, n, is_norm);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_fill_dummy_f32(float *dst, uint64_t seed, uint64_t id, uint64_t index0, int64_t n,
                                         int is_norm, cudaStream_t s)
{
    if (n <= 0) return cudaSuccess;
    dummy_kernel<float><<<dummy_grid(n), 256, 0, s>>>(dst, seed, id, index0, n, is_norm);
    return cudaGetLastError();
}
