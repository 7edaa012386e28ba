// A sublayer's output made ready for the residual stream, for the families whose o_proj or down
// has a bias, whose sublayers end in an RMSNorm of their own (Gemma 2/3's post norms) or whose
// residual adds are scaled (Granite's residual_multiplier). The common Llama layer needs none of
// it, so this is a launch of its own rather than more branches in the norm every model runs.
#include "kernels/row_sums.cuh"
#include "kernels/sluice_kernels.h"

namespace
{

// One row per block. Each thread rewrites only the elements it read, so out may be delta's
// first part.
__global__ void residual_addend_kernel(float *out, const float *delta, int n_parts, int64_t part_stride,
                                       const float *bias, const float *norm, float scale, int hidden, float eps)
{
    __shared__ float sh[32];
    const int64_t r = blockIdx.x;
    const float *dr = delta + r * hidden;
    float *o = out + r * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = sum_parts_at(dr, n_parts, part_stride, i) + (bias ? bias[i] : 0.0f);
        o[i] = v;
        ss += v * v;
    }
    if (norm) {
        // As transformers' RMSNorm: the row times rsqrt(mean(v^2) + eps), then the weight.
        const float inv = rsqrtf(block_sum(ss, sh) / (float)hidden + eps);
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = norm[i] * (o[i] * inv) * scale;
    } else if (scale != 1.0f) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] *= scale;
    }
}

} // namespace

extern "C" cudaError_t sk_residual_addend(float *out, const float *delta, int n_parts, int64_t part_stride,
                                          const float *bias, const float *norm, float scale, int n_rows, int hidden,
                                          float eps, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    if (n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS || (n_parts > 1 && part_stride < (int64_t)n_rows * hidden))
        return cudaErrorInvalidValue;
    const int threads = hidden >= 1024 ? 1024 : (hidden + 31) / 32 * 32;
    residual_addend_kernel<<<n_rows, threads, 0, s>>>(out, delta, n_parts, part_stride, bias, norm,
                                                      scale == 0.0f ? 1.0f : scale, hidden, eps);
    return cudaGetLastError();
}
