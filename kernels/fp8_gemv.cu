// sk_fp8_gemv (sk_fp8.h): the decode gemv on e4m3 weights, reading one byte a weight, bf16
// activations and fp32 sums for up to SK_FP8_GEMV_MAX_ROWS rows. The codes become floats by
// moving their bits (no conversion instruction), and the grid's last warps prefetch the next
// product's weights into L2 (prefetch_l2.cuh). The conversion: fp8_common.cuh.
#include "kernels/bf16.cuh"
#include "kernels/fp8_common.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/prefetch_l2.cuh"
#include "kernels/sk_fp8.h"

#include <cuda_bf16.h>

namespace
{

constexpr int kUnroll = 4;
constexpr int kWarpsPerBlock = 8;

// Each warp takes kRowsPerWarp output features, so that every activation load serves that many
// weight loads (with one feature a warp, a batch of 4 or more rows would be bound by loading the
// activations); each lane keeps kUnroll 16-byte loads (16 weights each) of each of its rows in
// flight. kBlocked: the scale changes every scale_cols columns (a 16-weight load lies within one
// block), applied to each load's partial sum; otherwise one scale for the row, applied once at
// the end.
constexpr int kRowsPerWarp = 2;

template <int M, bool kBlocked>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    fp8_gemv_kernel(const uint8_t *__restrict__ w, const float *__restrict__ scale, int scale_rows, int scale_cols,
                    const __nv_bfloat16 *__restrict__ x, float *__restrict__ y, int n_out, int k_in,
                    const void *prefetch, size_t prefetch_bytes)
{
    const int n0 = (blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5)) * kRowsPerWarp, lane = threadIdx.x & 31;
    if (n0 >= n_out) {
        prefetch_l2_share(prefetch, prefetch_bytes, kWarpsPerBlock);
        return;
    }
    const int nvec = k_in / 16, per_row = (k_in + scale_cols - 1) / scale_cols;
    const uint4 *wr[kRowsPerWarp];
    const float *srow[kRowsPerWarp];
    bool valid[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
        valid[r] = n0 + r < n_out;
        const int n = valid[r] ? n0 + r : n0;
        wr[r] = reinterpret_cast<const uint4 *>(w + (size_t)n * k_in);
        srow[r] = scale + (size_t)(n / scale_rows) * per_row;
    }
    float acc[kRowsPerWarp][M];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[r][m] = 0.0f;
    for (int base = lane; base < nvec; base += 32 * kUnroll) {
        uint4 wv[kRowsPerWarp][kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            const int i = base + u * 32;
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; r++)
                wv[r][u] = i < nvec && valid[r] ? load_stream(wr[r] + i) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            const int i = base + u * 32;
            if (i >= nvec) break;
            float wf[kRowsPerWarp][16], s[kRowsPerWarp];
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; r++) {
                e4m3x16_to_f32_scaled(wv[r][u], wf[r]);
                // Blocks: half of the 2^120 with the block's scale here, half at the end, so that
                // neither product leaves float32's normal range.
                s[r] = kBlocked ? __ldg(srow[r] + (i * 16) / scale_cols) * kE4m3UnscaleHalf : 1.0f;
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                const uint4 *xr = reinterpret_cast<const uint4 *>(x + (size_t)m * k_in) + 2 * i;
                float xf[16];
                bf16x8_to_f32(__ldg(xr), xf);
                bf16x8_to_f32(__ldg(xr + 1), xf + 8);
#pragma unroll
                for (int r = 0; r < kRowsPerWarp; r++) {
                    float part = 0.0f;
#pragma unroll
                    for (int j = 0; j < 16; j++) part += wf[r][j] * xf[j];
                    acc[r][m] += kBlocked ? part * s[r] : part;
                }
            }
        }
    }
    prefetch_l2_share(prefetch, prefetch_bytes, kWarpsPerBlock);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
        const float row_scale = kBlocked ? kE4m3UnscaleHalf : __ldg(srow[r]);
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[r][m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            // Per row: the sum (its codes times 2^-120) back to scale first, then the row's scale.
            if (lane == 0 && valid[r])
                y[(size_t)m * n_out + n0 + r] = kBlocked ? v * row_scale : v * kE4m3Unscale * row_scale;
        }
    }
}

template <int M>
cudaError_t launch_gemv(const uint8_t *w, const float *scale, int sr, int sc, const uint16_t *x, float *y, int n_out,
                        int k_in, const void *pf, size_t pf_bytes, cudaStream_t s)
{
    const int warps = (n_out + kRowsPerWarp - 1) / kRowsPerWarp, blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const __nv_bfloat16 *xb = reinterpret_cast<const __nv_bfloat16 *>(x);
    if (sc >= k_in)
        fp8_gemv_kernel<M, false><<<blocks, kWarpsPerBlock * 32, 0, s>>>(w, scale, sr, sc, xb, y, n_out, k_in, pf, pf_bytes);
    else
        fp8_gemv_kernel<M, true><<<blocks, kWarpsPerBlock * 32, 0, s>>>(w, scale, sr, sc, xb, y, n_out, k_in, pf, pf_bytes);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_fp8_gemv(const uint8_t *w, const float *scale, int scale_rows, int scale_cols,
                                   const uint16_t *x, float *y, int rows, int n_out, int k_in, const void *prefetch,
                                   size_t prefetch_bytes, cudaStream_t s)
{
    if (rows < 1 || rows > SK_FP8_GEMV_MAX_ROWS || n_out < 1 || k_in < 16 || k_in % 16 || scale_rows < 1 ||
        scale_cols < 1 || (scale_cols < k_in && scale_cols % 16) || ((uintptr_t)w & 15) || ((uintptr_t)x & 15) ||
        ((uintptr_t)prefetch & 15))
        return cudaErrorInvalidValue;
    switch (rows) {
    case 1: return launch_gemv<1>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 2: return launch_gemv<2>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 3: return launch_gemv<3>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 4: return launch_gemv<4>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 5: return launch_gemv<5>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 6: return launch_gemv<6>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    case 7: return launch_gemv<7>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    default: return launch_gemv<8>(w, scale, scale_rows, scale_cols, x, y, n_out, k_in, prefetch, prefetch_bytes, s);
    }
}
