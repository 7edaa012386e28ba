// FP8 (e4m3) weights (sk_fp8.h): row quantization, dequantization, the decode gemv and the scales
// of an FP8 GEMM's output. Conversions use the hardware's cvt (sm_89 and later) through
// cuda_fp8.h; every rounding is to nearest even, as the CPU's fp8.c does.
#include "kernels/bf16.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/prefetch_l2.cuh"
#include "kernels/sk_fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace
{

constexpr float kE4m3Max = 448.0f;
constexpr int kQuantThreads = 256;

__device__ __forceinline__ float e4m3_to_f32(uint8_t b)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
    return __half2float(__half(h));
}

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t v)
{
    return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(uint8_t *__restrict__ q, float *__restrict__ scale, const uint16_t *__restrict__ x, int cols)
{
    const int r = blockIdx.x;
    const uint16_t *row = x + (size_t)r * cols;
    float amax = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(bf16_bits_to_f32(row[c])));
    __shared__ float warp_max[kQuantThreads / 32];
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = 0.0f;
    for (int w = 0; w < kQuantThreads / 32; w++) amax = fmaxf(amax, warp_max[w]);
    // IEEE division (no fast math here), so the scale and the codes are the CPU's bit for bit.
    const float s = amax > 0.0f ? __fdiv_rn(amax, kE4m3Max) : 1.0f;
    if (threadIdx.x == 0) scale[r] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        q[(size_t)r * cols + c] = __nv_cvt_float_to_fp8(__fdiv_rn(bf16_bits_to_f32(row[c]), s), __NV_SATFINITE,
                                                        __NV_E4M3);
}

__global__ void dequant_kernel(uint16_t *__restrict__ dst, const uint8_t *__restrict__ q,
                               const float *__restrict__ scale, int scale_rows, int scale_cols, int rows, int cols)
{
    const int64_t n = (int64_t)rows * cols;
    const int per_row = (cols + scale_cols - 1) / scale_cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        const float v = e4m3_to_f32(q[i]) * scale[(size_t)(r / scale_rows) * per_row + c / scale_cols];
        __nv_bfloat16 b = __float2bfloat16_rn(v);
        dst[i] = *reinterpret_cast<uint16_t *>(&b);
    }
}

constexpr int kUnroll = 4;
constexpr int kWarpsPerBlock = 8;

// Four e4m3 codes (low byte first) as float32 times 2^-120: the sign bit and the 7 bits of
// exponent and mantissa moved into a float32's places, with no conversion instruction (the gemv
// would otherwise spend more time converting than loading). Exact for every finite code: the
// exponent biases differ by 120, and subnormal codes land on float32 subnormals of the same
// value times 2^-120.
__device__ __forceinline__ void e4m3x4_to_f32_scaled(uint32_t w, float *out)
{
    out[0] = __uint_as_float(((w << 24) & 0x80000000u) | ((w << 20) & 0x07f00000u));
    out[1] = __uint_as_float(((w << 16) & 0x80000000u) | ((w << 12) & 0x07f00000u));
    out[2] = __uint_as_float(((w << 8) & 0x80000000u) | ((w << 4) & 0x07f00000u));
    out[3] = __uint_as_float((w & 0x80000000u) | ((w >> 4) & 0x07f00000u));
}
constexpr float kE4m3Unscale = 0x1p120f; // undoes e4m3x4_to_f32_scaled's 2^-120
constexpr float kE4m3UnscaleHalf = 0x1p60f;

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
                e4m3x4_to_f32_scaled(wv[r][u].x, wf[r]);
                e4m3x4_to_f32_scaled(wv[r][u].y, wf[r] + 4);
                e4m3x4_to_f32_scaled(wv[r][u].z, wf[r] + 8);
                e4m3x4_to_f32_scaled(wv[r][u].w, wf[r] + 12);
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

template <typename Acc>
__global__ void scale_output_kernel(float *y, const Acc *acc, const float *__restrict__ row_scale,
                                    const float *__restrict__ col_scale, int rows, int n_out)
{
    const int64_t n = (int64_t)rows * n_out;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int m = (int)(i / n_out), c = (int)(i % n_out);
        float a;
        if constexpr (sizeof(Acc) == 2) a = bf16_bits_to_f32(acc[i]);
        else a = acc[i];
        y[i] = a * (row_scale[m] * col_scale[c]);
    }
}

int grid_for(int64_t n)
{
    int64_t g = (n + 255) / 256;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}

} // namespace

extern "C" cudaError_t sk_fp8_quantize_rows(uint8_t *q, float *scale, const uint16_t *x, int rows, int cols,
                                            cudaStream_t s)
{
    if (rows < 0 || cols < 1) return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    quantize_rows_kernel<<<rows, kQuantThreads, 0, s>>>(q, scale, x, cols);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_fp8_dequant_bf16(uint16_t *dst, const uint8_t *q, const float *scale, int scale_rows,
                                           int scale_cols, int rows, int cols, cudaStream_t s)
{
    if (rows < 1 || cols < 1 || scale_rows < 1 || scale_cols < 1) return cudaErrorInvalidValue;
    dequant_kernel<<<grid_for((int64_t)rows * cols), 256, 0, s>>>(dst, q, scale, scale_rows, scale_cols, rows, cols);
    return cudaGetLastError();
}

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

extern "C" cudaError_t sk_fp8_scale_output(float *y, const void *acc, int acc_bf16, const float *row_scale,
                                           const float *col_scale, int rows, int n_out, cudaStream_t s)
{
    if (rows < 1 || n_out < 1) return cudaErrorInvalidValue;
    const int g = grid_for((int64_t)rows * n_out);
    if (acc_bf16)
        scale_output_kernel<uint16_t>
            <<<g, 256, 0, s>>>(y, static_cast<const uint16_t *>(acc), row_scale, col_scale, rows, n_out);
    else
        scale_output_kernel<float><<<g, 256, 0, s>>>(y, static_cast<const float *>(acc), row_scale, col_scale, rows,
                                                     n_out);
    return cudaGetLastError();
}
