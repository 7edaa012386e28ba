// sk_moe_gemm_fp8 (sluice_kernels.h, "mixture of experts"): sk_moe_gemm's grouped expert
// products with e4m3 weights, one byte a weight and a float32 scale per weight row, so that a
// step reads half the bytes of bf16 experts. The same rows, outputs, launch shapes and choice
// between the CUDA cores and the tensor cores as sk_moe_gemm (moe_grouped.cuh), so the backend
// swaps one for the other per product. The codes become numbers in registers (fp8_common.cuh),
// never in memory: on the CUDA cores as float32 times 2^-120, as in sk_fp8_gemv (2^120 and the
// row's scale multiply its sum once at the end); on the tensor cores as bf16, exactly, as in
// sk_fp8_gemm_small (each output times its row's scale at the end).
#include "kernels/fp8_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/moe_grouped.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

// e4m3 weights for grouped_rows: 16 a 16-byte load, as float32 times 2^-120, a scale a row.
struct E4m3Weights {
    static constexpr int kPerLoad = 16;
    static constexpr float kUnscale = kE4m3Unscale;
    const uint8_t *w;
    const float *s;
    __device__ const uint4 *row(int64_t i, int k_in) const { return reinterpret_cast<const uint4 *>(w + i * k_in); }
    __device__ void to_f32(const uint4 &v, float *out) const { e4m3x16_to_f32_scaled(v, out); }
    __device__ float scale(int64_t i) const { return __ldg(s + i); }
};

// kUnroll: 16-byte weight loads (16 codes) in flight per lane and weight row.
template <bool kSwiglu, int kRows, int kUnroll = (kRows <= kMoeFewRows ? 4 : 2)>
__global__ void __launch_bounds__(kMoeWarps * 32)
    grouped_fp8_kernel(const uint8_t *__restrict__ w, const float *__restrict__ scale,
                       const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows, float *__restrict__ y,
                       __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    grouped_rows<kSwiglu, kRows, kUnroll>(E4m3Weights{w, scale}, x, rows, y, act, n_out, k_in);
}

// ---- on the tensor cores -----------------------------------------------------------------------
// The tile and passes: moe_grouped.cuh. The codes come 16 a lane in one 16-byte load, so the k
// order inside a chunk of 64 columns is permuted as sk_fp8_gemm_small permutes it, the same for
// both operands (a dot product does not care): lane (g8, t4) holds columns kc + 16 t4 ..
// kc + 16 t4 + 15 of its weight row and of its two rows of x, and for the mma's k step s gives
// columns 4s, 4s + 1 as its fragments' k labels 2 t4, 2 t4 + 1 and columns 4s + 2, 4s + 3 as
// labels 2 t4 + 8, 2 t4 + 9. Every operand is then a register of a plain load: the weights' bf16
// pairs from e4m3x4_to_bf16x2 of word s, x's words 2s and 2s + 1 of its 16 columns. A last chunk
// narrower than 64 (k_in a multiple of 16) gives the lanes past its end zeros.
template <bool kSwiglu>
__global__ void __launch_bounds__(kMoeMmaWarps * 32)
    grouped_fp8_mma_kernel(const uint8_t *__restrict__ w, const float *__restrict__ scale,
                           const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows, float *__restrict__ y,
                           __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    constexpr int kFeat = kSwiglu ? 16 : 32; // output features per warp
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, t4 = lane & 3;
    const int f0 = (blockIdx.x * kMoeMmaWarps + warp) * kFeat;
    if (f0 >= n_out) return;
    int g, r0, r1;
    if (!block_group(rows, g, r0, r1)) return;
    // This lane's weight row in each n8 tile j (B's column g8), at its 16 columns of a chunk; and
    // the scales of its outputs, c[j][2h + e] at column 2 t4 + e of tile j: the row of lane
    // (2 t4 + e, t4)'s, whose column g8 is that feature.
    const uint8_t *wr[4];
    float sc[4][2];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        wr[j] = w + mma_weight_row<kSwiglu>(g, f0, j, g8, n_out) * k_in + 16 * t4;
#pragma unroll
        for (int e = 0; e < 2; e++) sc[j][e] = __ldg(scale + mma_weight_row<kSwiglu>(g, f0, j, 2 * t4 + e, n_out));
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int p0 = r0 + (int)blockIdx.z * 16; p0 < r1; p0 += (int)gridDim.z * 16) {
        int src_lo, src_hi;
        const int cnt = mma_pass_rows(rows, p0, r1, g8, src_lo, src_hi);
        const __nv_bfloat16 *xl = x + (int64_t)src_lo * k_in + 16 * t4, *xh = x + (int64_t)src_hi * k_in + 16 * t4;
        float c[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll 2
        for (int kc = 0; kc < k_in; kc += 64) {
            const bool in = kc + 16 * t4 < k_in;
            uint4 wv[4];
#pragma unroll
            for (int j = 0; j < 4; j++) wv[j] = in ? __ldg(reinterpret_cast<const uint4 *>(wr[j] + kc)) : zero;
            const uint4 *pl = reinterpret_cast<const uint4 *>(xl + kc), *ph = reinterpret_cast<const uint4 *>(xh + kc);
            const uint4 l0 = in ? __ldg(pl) : zero, l1 = in ? __ldg(pl + 1) : zero;
            const uint4 h0 = in ? __ldg(ph) : zero, h1 = in ? __ldg(ph + 1) : zero;
            const uint32_t xlw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
            const uint32_t xhw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
            for (int s = 0; s < 4; s++) {
                const uint32_t a[4] = {xlw[2 * s], xhw[2 * s], xlw[2 * s + 1], xhw[2 * s + 1]};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint32_t b0, b1;
                    e4m3x4_to_bf16x2(word(wv[j], s), b0, b1);
                    mma_k16(c[j], a, b0, b1);
                }
            }
        }
        mma_pass_store<kSwiglu>(c, sc, f0, g8, t4, p0, cnt, y, act, n_out);
    }
}

} // namespace

extern "C" cudaError_t sk_moe_gemm_fp8(const uint8_t *w, const float *scale, const uint16_t *x,
                                       const struct sk_moe_rows *rows, float *y, uint16_t *act, int n_out, int k_in,
                                       cudaStream_t s)
{
    if (rows->n_rows <= 0) return cudaSuccess;
    if (!scale || !moe_args_ok(*rows, w, x, y, act, n_out, k_in, 16)) return cudaErrorInvalidValue;
    const MoeLaunch l = moe_launch(*rows, n_out, k_in, act != nullptr);
    const auto *xb = reinterpret_cast<const __nv_bfloat16 *>(x);
    auto *ab = reinterpret_cast<__nv_bfloat16 *>(act);
    moe_dispatch(l, act != nullptr, [&](auto swiglu, auto pass) {
        constexpr bool kSw = decltype(swiglu)::value;
        constexpr int kPass = decltype(pass)::value;
        if constexpr (kPass == 0)
            grouped_fp8_mma_kernel<kSw><<<l.grid, kMoeMmaWarps * 32, 0, s>>>(w, scale, xb, *rows, y, ab, n_out, k_in);
        else
            grouped_fp8_kernel<kSw, kPass><<<l.grid, kMoeWarps * 32, 0, s>>>(w, scale, xb, *rows, y, ab, n_out, k_in);
    });
    return cudaGetLastError();
}
