// sk_embed: the first layer's input, each token's row of the embedding table in fp32, taking the
// token the previous step sampled where the engine queued the step before that token reached the
// host. A tensor-parallel rank's table holds its share of the vocabulary, ids row0 .. row0 +
// n_rows - 1; the other ids' rows are zeros there, and the ranks' sum is the embedding.
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

#include "kernels/launch_dims.cuh"

namespace
{

__global__ void embed_kernel(float *x, const __nv_bfloat16 *table, const int32_t *tokens,
                             const sk_sample_out *prev, int row0, int n_rows, int hidden)
{
    int t = blockIdx.x;
    const int32_t id = (tokens[t] < 0 ? prev[-1 - tokens[t]].token : tokens[t]) - row0;
    float *o = x + (int64_t)t * hidden;
    if (id < 0 || id >= n_rows) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = 0.0f;
        return;
    }
    const __nv_bfloat16 *row = table + (int64_t)id * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = __bfloat162float(row[i]);
}

} // namespace

extern "C" cudaError_t sk_embed(float *x, const uint16_t *table, const int32_t *tokens, const sk_sample_out *prev,
                                int row0, int n_rows, int n_tokens, int hidden, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    embed_kernel<<<n_tokens, threads_for_row(hidden), 0, s>>>(x, (const __nv_bfloat16 *)table, tokens, prev, row0,
                                                               n_rows, hidden);
    return cudaGetLastError();
}
