// sk_convert_to_bf16: a checkpoint's f32, f16 or bf16 tensor, uploaded as it is stored, converted
// on the GPU into the bf16 the products read (rounded to nearest even).
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/launch_dims.cuh"

namespace
{

__global__ void convert_kernel(__nv_bfloat16 *dst, const void *src, int dtype, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v;
        if (dtype == SK_F32)
            v = ((const float *)src)[i];
        else if (dtype == SK_F16)
            v = __half2float(((const __half *)src)[i]);
        else
            v = __bfloat162float(((const __nv_bfloat16 *)src)[i]);
        dst[i] = __float2bfloat16_rn(v);
    }
}

} // namespace

extern "C" cudaError_t sk_convert_to_bf16(uint16_t *dst, const void *src, int src_dtype, int64_t n, cudaStream_t s)
{
    if (n <= 0) return cudaSuccess;
    convert_kernel<<<grid_for(n, 256), 256, 0, s>>>((__nv_bfloat16 *)dst, src, src_dtype, n);
    return cudaGetLastError();
}
