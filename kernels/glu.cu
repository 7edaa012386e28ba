// The gated activation of the families whose MLP the fused SwiGLU paths do not take: biases on
// gate and up (mlp_bias) and GELU (Gemma's GeGLU). Reads the gate/up product in fp32, as the
// product leaves it, and writes the down product's bf16 input.
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

__device__ __forceinline__ float gate_act(float g, int act)
{
    if (act == SK_ACT_GELU_TANH) {
        // torch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
        const float beta = 0.7978845608028654f, kappa = 0.044715f;
        return 0.5f * g * (1.0f + tanhf(beta * (g + kappa * (g * g * g))));
    }
    return g / (1.0f + expf(-g));
}

__global__ void glu_kernel(__nv_bfloat16 *out, const float *gu, const float *bias, int act, int inter, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / inter;
        const int j = (int)(i % inter);
        float g = gu[t * 2 * inter + j], u = gu[t * 2 * inter + inter + j];
        if (bias) g += bias[j], u += bias[inter + j];
        out[i] = __float2bfloat16_rn(gate_act(g, act) * u);
    }
}

} // namespace

extern "C" cudaError_t sk_glu(uint16_t *out, const float *gu, const float *bias, int act, int n_tokens, int inter,
                              cudaStream_t s)
{
    const int64_t n = (int64_t)n_tokens * inter;
    if (n <= 0) return cudaSuccess;
    if (act != SK_ACT_SILU && act != SK_ACT_GELU_TANH) return cudaErrorInvalidValue;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    glu_kernel<<<(int)blocks, 256, 0, s>>>((__nv_bfloat16 *)out, gu, bias, act, inter, n);
    return cudaGetLastError();
}
