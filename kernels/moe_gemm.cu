// sk_moe_gemm (sluice_kernels.h, "mixture of experts"): the grouped expert products of bf16
// weights, on the CUDA cores (any row count; the one kept under --deterministic) and on the
// tensor cores (groups of many rows). The rows, the launch shapes and the CUDA-core kernel's
// body are moe_grouped.cuh's, shared with sk_moe_gemm_fp8 (moe_gemm_fp8.cu).
#include "kernels/mma.cuh"
#include "kernels/moe_grouped.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

// bf16 weights for grouped_rows: 8 a 16-byte load, the values as they are.
struct Bf16Weights {
    static constexpr int kPerLoad = 8;
    static constexpr float kUnscale = 1.0f;
    const __nv_bfloat16 *w;
    __device__ const uint4 *row(int64_t i, int k_in) const { return reinterpret_cast<const uint4 *>(w + i * k_in); }
    __device__ void to_f32(const uint4 &v, float *out) const { bf16x8_to_f32(v, out); }
    __device__ float scale(int64_t) const { return 1.0f; }
};

// kUnroll: 16-byte weight loads in flight per lane and weight row.
template <bool kSwiglu, int kRows, int kUnroll = (kRows <= kMoeFewRows ? 4 : 2)>
__global__ void __launch_bounds__(kMoeWarps * 32)
    grouped_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows,
                   float *__restrict__ y, __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    grouped_rows<kSwiglu, kRows, kUnroll>(Bf16Weights{w}, x, rows, y, act, n_out, k_in);
}

// ---- the grouped product on the tensor cores ---------------------------------------------------
// For groups of many rows (prefill; decode batches with many tokens per expert), where the
// CUDA-core product runs out of arithmetic; the tile and passes: moe_grouped.cuh. The fragments
// are loaded straight from global memory (32-bit words; the tile's rows share the warp's sectors
// and the block's warps share x through L1).
template <bool kSwiglu>
__global__ void __launch_bounds__(kMoeMmaWarps * 32)
    grouped_mma_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows,
                       float *__restrict__ y, __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    constexpr int kFeat = kSwiglu ? 16 : 32; // output features per warp
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, t4 = lane & 3;
    const int f0 = (blockIdx.x * kMoeMmaWarps + warp) * kFeat;
    if (f0 >= n_out) return;
    int g, r0, r1;
    if (!block_group(rows, g, r0, r1)) return;
    // This lane's weight row in each n8 tile j (B's column g8), at its word t4; bf16: no scales.
    const uint32_t *wr[4];
    const float sc[4][2] = {{1.0f, 1.0f}, {1.0f, 1.0f}, {1.0f, 1.0f}, {1.0f, 1.0f}};
#pragma unroll
    for (int j = 0; j < 4; j++)
        wr[j] = reinterpret_cast<const uint32_t *>(w + mma_weight_row<kSwiglu>(g, f0, j, g8, n_out) * k_in) + t4;
    const uint32_t *x32 = reinterpret_cast<const uint32_t *>(x);
    const int kw = k_in / 2; // 32-bit words per row
    for (int p0 = r0 + (int)blockIdx.z * 16; p0 < r1; p0 += (int)gridDim.z * 16) {
        int src_lo, src_hi;
        const int cnt = mma_pass_rows(rows, p0, r1, g8, src_lo, src_hi);
        const uint32_t *xl = x32 + (int64_t)src_lo * kw + t4, *xh = x32 + (int64_t)src_hi * kw + t4;
        float c[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll 2
        for (int kk = 0; kk < kw; kk += 8) { // 16 bf16 per step
            const uint32_t a[4] = {__ldg(xl + kk), __ldg(xh + kk), __ldg(xl + kk + 4), __ldg(xh + kk + 4)};
#pragma unroll
            for (int j = 0; j < 4; j++) mma_k16(c[j], a, __ldg(wr[j] + kk), __ldg(wr[j] + kk + 4));
        }
        mma_pass_store<kSwiglu>(c, sc, f0, g8, t4, p0, cnt, y, act, n_out);
    }
}

} // namespace

extern "C" cudaError_t sk_moe_gemm(const uint16_t *w, const uint16_t *x, const struct sk_moe_rows *rows, float *y,
                                   uint16_t *act, int n_out, int k_in, cudaStream_t s)
{
    if (rows->n_rows <= 0) return cudaSuccess;
    if (!moe_args_ok(*rows, w, x, y, act, n_out, k_in, 8)) return cudaErrorInvalidValue;
    const MoeLaunch l = moe_launch(*rows, n_out, k_in, act != nullptr);
    const auto *wb = reinterpret_cast<const __nv_bfloat16 *>(w);
    const auto *xb = reinterpret_cast<const __nv_bfloat16 *>(x);
    auto *ab = reinterpret_cast<__nv_bfloat16 *>(act);
    moe_dispatch(l, act != nullptr, [&](auto swiglu, auto pass) {
        constexpr bool kSw = decltype(swiglu)::value;
        constexpr int kPass = decltype(pass)::value;
        if constexpr (kPass == 0)
            grouped_mma_kernel<kSw><<<l.grid, kMoeMmaWarps * 32, 0, s>>>(wb, xb, *rows, y, ab, n_out, k_in);
        else
            grouped_kernel<kSw, kPass><<<l.grid, kMoeWarps * 32, 0, s>>>(wb, xb, *rows, y, ab, n_out, k_in);
    });
    return cudaGetLastError();
}
