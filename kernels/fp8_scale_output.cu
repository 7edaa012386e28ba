// sk_fp8_scale_output (sk_fp8.h): the scales of a product of per-token quantized activations
// and per-row quantized weights applied to its fp32 or bf16 output (an FP8 GEMM's), a
// grid-stride loop over the elements.
#include "kernels/fp8_common.cuh"
#include "kernels/sk_fp8.h"

namespace
{

template <typename Acc>
__global__ void scale_output_kernel(float *y, const Acc *acc, const float *__restrict__ row_scale,
                                    const float *__restrict__ col_scale, int rows, int n_out)
{
    const int64_t n = (int64_t)rows * n_out;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int m = (int)(i / n_out), c = (int)(i % n_out);
        float a;
        if constexpr (sizeof(Acc) == 2) a = bf16_bits_to_f32(acc[i]);
        else a = acc[i];
        y[i] = a * (row_scale[m] * col_scale[c]);
    }
}

} // namespace

extern "C" cudaError_t sk_fp8_scale_output(float *y, const void *acc, int acc_bf16, const float *row_scale,
                                           const float *col_scale, int rows, int n_out, cudaStream_t s)
{
    if (rows < 1 || n_out < 1) return cudaErrorInvalidValue;
    const int g = grid_for((int64_t)rows * n_out);
    if (acc_bf16)
        scale_output_kernel<uint16_t>
            <<<g, 256, 0, s>>>(y, static_cast<const uint16_t *>(acc), row_scale, col_scale, rows, n_out);
    else
        scale_output_kernel<float><<<g, 256, 0, s>>>(y, static_cast<const float *>(acc), row_scale, col_scale, rows,
                                                     n_out);
    return cudaGetLastError();
}
