// sk_qkv_norm_full: OLMo 2's q/k RMSNorm, taken over the whole q (and the whole k) projection of a
// token rather than per head, so it needs the row's sum of squares before any head can be rotated.
// It runs between the qkv product and sk_qkv_post: the product's parts and bias are added into the
// first part, q and k normalized there, and qkv_post then takes one part with no bias and no
// norms. The common layer norms per head inside qkv_post and never launches this.
#include "kernels/launch_dims.cuh"
#include "kernels/row_sums.cuh"
#include "kernels/sluice_kernels.h"

namespace
{

// One token's row per block. Each thread rewrites only the elements it read, so the first part is
// both an input and the output.
__global__ void qkv_norm_full_kernel(float *qkv, int n_parts, int64_t part_stride, const float *bias,
                                     const float *q_norm, const float *k_norm, int q_dim, int kv_dim, float eps)
{
    __shared__ float sh[32];
    const int width = q_dim + 2 * kv_dim;
    float *row = qkv + (int64_t)blockIdx.x * width;
    float ssq = 0.0f, ssk = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const float v = sum_parts_at(row, n_parts, part_stride, i) + (bias ? bias[i] : 0.0f);
        row[i] = v;
        if (i < q_dim) ssq += v * v;
        else if (i < q_dim + kv_dim) ssk += v * v;
    }
    // As transformers' RMSNorm: the row times rsqrt(mean(v^2) + eps), then the weight.
    const float inv_q = rsqrtf(block_sum(ssq, sh) / (float)q_dim + eps);
    const float inv_k = rsqrtf(block_sum(ssk, sh) / (float)kv_dim + eps);
    for (int i = threadIdx.x; i < q_dim + kv_dim; i += blockDim.x)
        row[i] = i < q_dim ? q_norm[i] * (row[i] * inv_q) : k_norm[i - q_dim] * (row[i] * inv_k);
}

} // namespace

extern "C" cudaError_t sk_qkv_norm_full(float *qkv, int n_parts, int64_t part_stride, const float *bias,
                                        const float *q_norm, const float *k_norm, int n_tokens, int q_dim, int kv_dim,
                                        float eps, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    const int64_t width = (int64_t)q_dim + 2 * (int64_t)kv_dim;
    if (!q_norm || !k_norm || q_dim < 1 || kv_dim < 1 || n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS ||
        (n_parts > 1 && part_stride < n_tokens * width))
        return cudaErrorInvalidValue;
    qkv_norm_full_kernel<<<n_tokens, threads_for_row((int)width), 0, s>>>(qkv, n_parts, part_stride, bias, q_norm, k_norm, q_dim, kv_dim,
                                                      eps);
    return cudaGetLastError();
}
