// FP8 (e4m3) weights times bf16 activations for decode batches of 5 to 64 rows on the tensor
// cores (sk_fp8.h, sk_fp8_gemm_small): the weights stream through once, converted to bf16 in
// registers, and mma.sync m16n8k16 applies each to every row of the batch; the activations stay
// bf16 (no per-token quantization). The CUDA-core gemv (fp8_gemv.cu) is bound by its
// multiply-adds beyond a few rows: each weight costs a conversion plus one FMA per row, while
// the tensor core does 2048 multiply-adds an instruction.
//
// Work split: a block owns 32 output features (two 16-row tiles of the weights) and all of k_in;
// its 8 warps take interleaved chunks of 64 columns (the last one may be narrower) and add their sums in shared memory at the
// end (a fixed tree, so each output's sum has the same order every run). Each lane loads 16
// consecutive bytes of 4 weight rows a chunk (8 rows x 64 bytes a warp instruction, whole
// sectors) and keeps the next two chunks' loads in flight while it computes the current one.
//
// The k order inside a chunk is permuted, the same for both operands (a dot product does not
// care): lane (g = lane / 4, t = lane % 4) holds weight columns kc + 16t .. kc + 16t + 15 and, for
// the mma's k step s, gives bytes 4s, 4s + 1 as its fragment's k labels 2t, 2t + 1 and bytes
// 4s + 2, 4s + 3 as labels 2t + 8, 2t + 9; its activation fragment takes the same four columns,
// so both are plain register reads with no shuffle.
#include "kernels/fp8_common.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/prefetch_l2.cuh"
#include "kernels/sk_fp8.h"

#include <cuda_bf16.h>

namespace
{

constexpr int kWarps = 8;
constexpr int kFeatures = 32; // per block: two m16 tiles
constexpr int kChunk = 64;    // columns of one warp step: 4 mma k steps of 16
constexpr int kMaxTiles = SK_FP8_GEMM_SMALL_MAX_ROWS / 8;

__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// NT: tiles of 8 batch rows (rows <= 8 NT). Rows past `rows` read the last row (valid memory)
// and are not stored.
template <int NT>
__global__ void __launch_bounds__(kWarps * 32)
    fp8_gemm_small_kernel(const uint8_t *__restrict__ w, const float *__restrict__ scale,
                          const __nv_bfloat16 *__restrict__ x, float *__restrict__ y, int rows, int n_out, int k_in,
                          const void *prefetch, size_t prefetch_bytes)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int f0 = blockIdx.x * kFeatures;
    // The lane's weight rows: g, g + 8 (tile 0), g + 16, g + 24 (tile 1).
    const uint8_t *wr[4];
#pragma unroll
    for (int r = 0; r < 4; r++) wr[r] = w + (size_t)(f0 + g + 8 * r) * k_in + 16 * t;
    const __nv_bfloat16 *xr[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int m = nt * 8 + g < rows ? nt * 8 + g : rows - 1;
        xr[nt] = x + (size_t)m * k_in + 16 * t;
    }
    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mt][nt][j] = 0.0f;

    // A last chunk narrower than 64 columns (k_in a multiple of 16): the lanes past its end take
    // zero weights and activations.
    const int nchunks = (k_in + kChunk - 1) / kChunk;
    // Two chunks ahead in flight per warp (8 KB a block) besides the one being computed: the
    // bytes in flight an SM needs to keep its share of the memory bandwidth busy.
    uint4 wn[2][4];
#pragma unroll
    for (int d = 0; d < 2; d++) {
        const int cd = warp + d * kWarps;
        const bool in = cd < nchunks && cd * kChunk + 16 * t < k_in;
#pragma unroll
        for (int r = 0; r < 4; r++)
            wn[d][r] = in ? load_stream(reinterpret_cast<const uint4 *>(wr[r] + (size_t)cd * kChunk))
                          : make_uint4(0, 0, 0, 0);
    }
    for (int c = warp; c < nchunks; c += kWarps) {
        uint4 wc[4];
#pragma unroll
        for (int r = 0; r < 4; r++) wc[r] = wn[0][r], wn[0][r] = wn[1][r];
        const int cn = c + 2 * kWarps;
        if (cn < nchunks) {
            const bool in = cn * kChunk + 16 * t < k_in;
#pragma unroll
            for (int r = 0; r < 4; r++)
                wn[1][r] = in ? load_stream(reinterpret_cast<const uint4 *>(wr[r] + (size_t)cn * kChunk))
                              : make_uint4(0, 0, 0, 0);
        }
        const bool in = c * kChunk + 16 * t < k_in;
        // A fragments of the 4 k steps: a[s][mt][0..3] = {row g lo, row g+8 lo, row g hi, row g+8 hi}.
        uint32_t a[4][2][4];
#pragma unroll
        for (int s = 0; s < 4; s++) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const uint32_t q0 = word(wc[2 * mt], s), q1 = word(wc[2 * mt + 1], s);
                e4m3x4_to_bf16x2(q0, a[s][mt][0], a[s][mt][2]);
                e4m3x4_to_bf16x2(q1, a[s][mt][1], a[s][mt][3]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const uint4 *xp = reinterpret_cast<const uint4 *>(xr[nt] + (size_t)c * kChunk);
            const uint4 x0 = in ? __ldg(xp) : make_uint4(0, 0, 0, 0), x1 = in ? __ldg(xp + 1) : make_uint4(0, 0, 0, 0);
            const uint32_t xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int s = 0; s < 4; s++) {
#pragma unroll
                for (int mt = 0; mt < 2; mt++) mma_bf16(acc[mt][nt], a[s][mt], xb[2 * s], xb[2 * s + 1]);
            }
        }
    }

    prefetch_l2_share(prefetch, prefetch_bytes, kWarps);

    // The warps' sums added in a fixed tree: 4..7 into 0..3, 2..3 into 0..1, 1 into 0.
    constexpr int kVals = 2 * NT * 4;
    __shared__ float red[4][2 * kMaxTiles * 4][32];
#pragma unroll
    for (int half = 4; half >= 1; half >>= 1) {
        if (warp >= half && warp < 2 * half) {
#pragma unroll
            for (int i = 0; i < kVals; i++) red[warp - half][i][lane] = (&acc[0][0][0])[i];
        }
        __syncthreads();
        if (warp < half) {
#pragma unroll
            for (int i = 0; i < kVals; i++) (&acc[0][0][0])[i] += red[warp][i][lane];
        }
        __syncthreads();
    }
    if (warp != 0) return;
    // C fragment: c0, c1 at feature row g, batch rows 2t, 2t + 1; c2, c3 at feature row g + 8.
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const int fa = f0 + mt * 16 + g, fb = fa + 8;
        const float sa = __ldg(scale + fa), sb = __ldg(scale + fb);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int m = nt * 8 + 2 * t + j;
                if (m < rows) {
                    y[(size_t)m * n_out + fa] = acc[mt][nt][j] * sa;
                    y[(size_t)m * n_out + fb] = acc[mt][nt][2 + j] * sb;
                }
            }
        }
    }
}

template <int NT>
cudaError_t launch(const uint8_t *w, const float *scale, const uint16_t *x, float *y, int rows, int n_out, int k_in,
                   const void *pf, size_t pf_bytes, cudaStream_t s)
{
    fp8_gemm_small_kernel<NT><<<n_out / kFeatures, kWarps * 32, 0, s>>>(
        w, scale, reinterpret_cast<const __nv_bfloat16 *>(x), y, rows, n_out, k_in, pf, pf_bytes);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_fp8_gemm_small(const uint8_t *w, const float *scale, const uint16_t *x, float *y, int rows,
                                         int n_out, int k_in, const void *prefetch, size_t prefetch_bytes,
                                         cudaStream_t s)
{
    if (rows < 1 || rows > SK_FP8_GEMM_SMALL_MAX_ROWS || n_out < kFeatures || n_out % kFeatures || k_in < 16 || k_in % 16 || ((uintptr_t)w & 15) || ((uintptr_t)x & 15) ||
        ((uintptr_t)prefetch & 15))
        return cudaErrorInvalidValue;
    switch ((rows + 7) / 8) {
    case 1: return launch<1>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 2: return launch<2>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 3: return launch<3>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 4: return launch<4>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 5: return launch<5>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 6: return launch<6>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    case 7: return launch<7>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    default: return launch<8>(w, scale, x, y, rows, n_out, k_in, prefetch, prefetch_bytes, s);
    }
}
