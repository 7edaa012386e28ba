// The families' last touch on the logits before anything reads them: Granite's logits_scaling
// (a divisor) and Gemma 2's final soft-capping, in that order, as transformers applies them.
#include "kernels/sluice_kernels.h"

namespace
{

__global__ void logits_finish_kernel(float *logits, int64_t n, float divisor, float softcap)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = logits[i];
        if (divisor != 0.0f) v /= divisor;
        if (softcap > 0.0f) v = tanhf(v / softcap) * softcap;
        logits[i] = v;
    }
}

} // namespace

extern "C" cudaError_t sk_logits_finish(float *logits, int64_t n, float divisor, float softcap, cudaStream_t s)
{
    if (n <= 0 || (divisor == 0.0f && softcap <= 0.0f)) return cudaSuccess;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    logits_finish_kernel<<<(int)blocks, 256, 0, s>>>(logits, n, divisor, softcap);
    return cudaGetLastError();
}
