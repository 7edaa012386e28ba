// sk_embed_q (kernels/sk_quant.h): token embeddings looked up in a table kept in GGUF blocks
// (quant_blocks.cuh), one block of threads per token dequantizing its row into fp32, the same
// weights sk_dequant_bf16 rounds to bf16.
#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"

#include "kernels/quant_blocks.cuh"

namespace
{

// Token t's embedding row, dequantized into x[t]: the token id as sk_embed takes it (negative:
// the sampled token of row -1 - id of the step before).
template <class Q>
__global__ void __launch_bounds__(256)
    embed_q_kernel(float *__restrict__ x, const uint8_t *__restrict__ table, const int32_t *__restrict__ tokens,
                   const sk_sample_out *__restrict__ prev, int row0, int n_rows, int hidden)
{
    const int t = blockIdx.x;
    const int32_t id = (tokens[t] < 0 ? prev[-1 - tokens[t]].token : tokens[t]) - row0;
    const int nb = hidden / Q::BE;
    float *o = x + (size_t)t * hidden;
    if (id < 0 || id >= n_rows) { /* another rank's token (sk_embed) */
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = 0.0f;
        return;
    }
    const uint8_t *row = table + (size_t)id * nb * Q::BB;
    for (int unit = threadIdx.x; unit < nb * Q::UPB; unit += blockDim.x) {
        const int blk = unit / Q::UPB;
        float wv[4 * Q::RUNS];
        int off[Q::RUNS];
        Q::decode(row + (size_t)blk * Q::BB, unit - blk * Q::UPB, wv, off);
#pragma unroll
        for (int g = 0; g < Q::RUNS; g++)
#pragma unroll
            for (int j = 0; j < 4; j++) o[blk * Q::BE + off[g] + j] = wv[4 * g + j];
    }
}

template <class Q>
cudaError_t embed_type(float *x, const void *table, const int32_t *tokens, const sk_sample_out *prev, int row0,
                       int n_rows, int n_tokens, int hidden, cudaStream_t s)
{
    if (!shape_ok<Q>(table, hidden) || n_tokens < 0) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    embed_q_kernel<Q><<<n_tokens, 128, 0, s>>>(x, static_cast<const uint8_t *>(table), tokens, prev, row0, n_rows,
                                                     hidden);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_embed_q(float *x, int dtype, const void *table, const int32_t *tokens,
                                  const struct sk_sample_out *prev, int row0, int n_rows, int n_tokens, int hidden,
                                  cudaStream_t s)
{
    switch (dtype) {
    case SK_Q4_0: return embed_type<Q4_0>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q4_1: return embed_type<Q4_1>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q5_0: return embed_type<Q5_0>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q5_1: return embed_type<Q5_1>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q8_0: return embed_type<Q8_0>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q4_K: return embed_type<Q4_K>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q5_K: return embed_type<Q5_K>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    case SK_Q6_K: return embed_type<Q6_K>(x, table, tokens, prev, row0, n_rows, n_tokens, hidden, s);
    default: return cudaErrorInvalidValue;
    }
}
