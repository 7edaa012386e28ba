// sk_embed: the first layer's input, each token's row of the embedding table in fp32, taking the
// token the previous step sampled where the engine queued the step before that token reached the
// host.
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

#include "kernels/launch_dims.cuh"

namespace
{

__global__ void embed_kernel(float *x, const __nv_bfloat16 *table, const int32_t *tokens,
                             const sk_sample_out *prev, int hidden)
{
    int t = blockIdx.x;
    const int32_t id = tokens[t] < 0 ? prev[-1 - tokens[t]].token : tokens[t];
    const __nv_bfloat16 *row = table + (int64_t)id * hidden;
    float *o = x + (int64_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = __bfloat162float(row[i]);
}

} // namespace

extern "C" cudaError_t sk_embed(float *x, const uint16_t *table, const int32_t *tokens, const sk_sample_out *prev,
                                int n_tokens, int hidden, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    embed_kernel<<<n_tokens, threads_for_row(hidden), 0, s>>>(x, (const __nv_bfloat16 *)table, tokens, prev, hidden);
    return cudaGetLastError();
}
