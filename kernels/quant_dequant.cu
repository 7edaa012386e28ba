// sk_dequant_bf16 (kernels/sk_quant.h): GGUF block weights (quant_blocks.cuh) dequantized into
// bf16 rows, for the larger batches' bf16 products. Each thread decodes one unit at a time,
// exactly as sk_gemv_q's products form the weights, and stores its runs of 4 as 8-byte words.
#include "kernels/sk_quant.h"

#include <cuda_bf16.h>

#include "kernels/bf16.cuh"
#include "kernels/quant_blocks.cuh"

namespace
{

template <class Q>
__global__ void __launch_bounds__(256)
    dequant_kernel(const uint8_t *__restrict__ w, __nv_bfloat16 *__restrict__ dst, int64_t units)
{
    for (int64_t unit = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; unit < units;
         unit += (int64_t)gridDim.x * blockDim.x) {
        const int64_t blk = unit / Q::UPB;
        float wv[4 * Q::RUNS];
        int off[Q::RUNS];
        Q::decode(w + blk * Q::BB, (int)(unit - blk * Q::UPB), wv, off);
#pragma unroll
        for (int g = 0; g < Q::RUNS; g++) {
            uint2 o;
            o.x = pack_bf16(wv[4 * g], wv[4 * g + 1]);
            o.y = pack_bf16(wv[4 * g + 2], wv[4 * g + 3]);
            *reinterpret_cast<uint2 *>(dst + blk * Q::BE + off[g]) = o;
        }
    }
}

template <class Q> cudaError_t dequant_type(const void *w, uint16_t *dst, int n_rows, int k_in, cudaStream_t s)
{
    if (!shape_ok<Q>(w, k_in) || n_rows < 0 || (uintptr_t)dst % 8) return cudaErrorInvalidValue;
    const int64_t units = (int64_t)n_rows * (k_in / Q::BE) * Q::UPB;
    if (units == 0) return cudaSuccess;
    const int64_t want = (units + 255) / 256;
    const int grid = want < 65536 ? (int)want : 65536;
    dequant_kernel<Q>
        <<<grid, 256, 0, s>>>(static_cast<const uint8_t *>(w), reinterpret_cast<__nv_bfloat16 *>(dst), units);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_dequant_bf16(int dtype, const void *w, uint16_t *dst, int n_rows, int k_in, cudaStream_t s)
{
    switch (dtype) {
    case SK_Q4_0: return dequant_type<Q4_0>(w, dst, n_rows, k_in, s);
    case SK_Q4_1: return dequant_type<Q4_1>(w, dst, n_rows, k_in, s);
    case SK_Q5_0: return dequant_type<Q5_0>(w, dst, n_rows, k_in, s);
    case SK_Q5_1: return dequant_type<Q5_1>(w, dst, n_rows, k_in, s);
    case SK_Q8_0: return dequant_type<Q8_0>(w, dst, n_rows, k_in, s);
    case SK_Q4_K: return dequant_type<Q4_K>(w, dst, n_rows, k_in, s);
    case SK_Q5_K: return dequant_type<Q5_K>(w, dst, n_rows, k_in, s);
    case SK_Q6_K: return dequant_type<Q6_K>(w, dst, n_rows, k_in, s);
    default: return cudaErrorInvalidValue;
    }
}
