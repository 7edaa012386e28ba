// Matrix-vector products for decode batches of up to 8 rows: the weights stream through once at
// close to the memory rate. One warp per output feature; each lane keeps kUnroll 16-byte loads
// of the weight row in flight before using them.
#include "kernels/bf16.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

constexpr int kUnroll = 4;
constexpr int kWarpsPerBlock = 8;

template <int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, float *__restrict__ y,
                int n_out, int k_in)
{
    const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (n >= n_out) return;
    const int nvec = k_in / 8;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)n * k_in);
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.0f;
    for (int base = lane; base < nvec; base += 32 * kUnroll) {
        uint4 wv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            int i = base + u * 32;
            wv[u] = i < nvec ? load_stream(wr + i) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            int i = base + u * 32;
            if (i >= nvec) break;
            float wf[8];
            bf16x8_to_f32(wv[u], wf);
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xf[8];
                bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(x + (size_t)m * k_in) + i), xf);
#pragma unroll
                for (int j = 0; j < 8; j++) acc[m] += wf[j] * xf[j];
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        float v = acc[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[(size_t)m * n_out + n] = v;
    }
}

template <int M> cudaError_t launch(const uint16_t *w, const uint16_t *x, float *y, int n_out, int k_in, cudaStream_t s)
{
    int blocks = (n_out + kWarpsPerBlock - 1) / kWarpsPerBlock;
    gemv_kernel<M>
        <<<blocks, kWarpsPerBlock * 32, 0, s>>>((const __nv_bfloat16 *)w, (const __nv_bfloat16 *)x, y, n_out, k_in);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_gemv(const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in,
                               cudaStream_t s)
{
    if (rows < 1 || rows > SK_GEMV_MAX_ROWS || n_out < 1 || k_in < 8 || k_in % 8 || ((uintptr_t)w & 15) ||
        ((uintptr_t)x & 15))
        return cudaErrorInvalidValue;
    switch (rows) {
    case 1: return launch<1>(w, x, y, n_out, k_in, s);
    case 2: return launch<2>(w, x, y, n_out, k_in, s);
    case 3: return launch<3>(w, x, y, n_out, k_in, s);
    case 4: return launch<4>(w, x, y, n_out, k_in, s);
    case 5: return launch<5>(w, x, y, n_out, k_in, s);
    case 6: return launch<6>(w, x, y, n_out, k_in, s);
    case 7: return launch<7>(w, x, y, n_out, k_in, s);
    default: return launch<8>(w, x, y, n_out, k_in, s);
    }
}
