// sk_moe_combine (sluice_kernels.h, "mixture of experts"): each token's expert outputs weighted
// and added in ascending expert order (as transformers adds them), plus the shared expert's,
// one block per token. Its grid is the token count alone, so a decode step that runs it can be
// captured in a CUDA graph.
#include "kernels/sluice_kernels.h"

namespace
{

__global__ void combine_kernel(const float *__restrict__ y_exp, const int32_t *__restrict__ choice,
                               const float *__restrict__ weight, const int32_t *__restrict__ pos, int top_k,
                               const float *__restrict__ shared_y, const float *__restrict__ shared_gate,
                               float *__restrict__ out, int hidden)
{
    const int t = blockIdx.x;
    __shared__ int32_t src[SK_MOE_MAX_TOP_K];
    __shared__ float wt[SK_MOE_MAX_TOP_K];
    if (threadIdx.x == 0) {
        // The token's choices in ascending expert order (transformers adds its experts so), by
        // the key expert * top_k + slot, which stays a strict order even for a repeated expert.
        int64_t last = -1;
        for (int r = 0; r < top_k; r++) {
            int best = 0;
            int64_t best_key = INT64_MAX;
            for (int q = 0; q < top_k; q++) {
                int64_t key = (int64_t)choice[(int64_t)t * top_k + q] * top_k + q;
                if (key > last && key < best_key) best = q, best_key = key;
            }
            last = best_key;
            src[r] = pos[(int64_t)t * top_k + best];
            wt[r] = weight[(int64_t)t * top_k + best];
        }
    }
    __syncthreads();
    const float sg = shared_y ? 1.0f / (1.0f + expf(-shared_gate[t])) : 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float o = 0.0f;
        for (int r = 0; r < top_k; r++) o += y_exp[(int64_t)src[r] * hidden + i] * wt[r];
        if (shared_y) o += sg * shared_y[(int64_t)t * hidden + i];
        out[(int64_t)t * hidden + i] = o;
    }
}

} // namespace

extern "C" cudaError_t sk_moe_combine(const float *y_exp, const int32_t *choice, const float *weight,
                                      const int32_t *pos, int top_k, const float *shared_y, const float *shared_gate,
                                      float *out, int n_tokens, int hidden, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    if (top_k < 1 || top_k > SK_MOE_MAX_TOP_K) return cudaErrorInvalidValue;
    combine_kernel<<<n_tokens, 256, 0, s>>>(y_exp, choice, weight, pos, top_k, shared_y, shared_gate, out, hidden);
    return cudaGetLastError();
}
