// sk_moe_gemm (sluice_kernels.h, "mixture of experts"): the grouped expert products, on the CUDA
// cores (any row count; the one kept under --deterministic) and on the tensor cores (groups of
// many rows). Nothing here needs a count on the host: every grid is sized from the step's row
// count and the model's shape, so a decode step that runs them can be captured in a CUDA graph.
//
// Every row's arithmetic is fixed by the row alone (one warp per output feature, each lane's
// K range summed in order, then the same shuffle tree), never by which block or chunk it falls
// in, so a token's result does not depend on what shares its batch or its expert.
#include "kernels/bf16.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/mma.cuh"
#include "kernels/moe_common.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

constexpr int kWarps = 8; // output features per block in sk_moe_gemm
// Rows a warp carries through one pass over its weight rows: 4 where the groups' rows are few
// (decode: fewer registers, so more warps and more loads in flight), else 16.
constexpr int kFewRows = 4, kManyRows = 16;

// ---- the grouped product -------------------------------------------------------------------
// Block y's group (active[y]; the one group when dense) and its rows r0..r1; false when y is past
// the active groups.
__device__ __forceinline__ bool block_group(const sk_moe_rows &rows, int &g, int &r0, int &r1)
{
    g = 0, r0 = 0, r1 = rows.n_rows;
    if (!rows.seg) return true;
    if ((int)blockIdx.y >= rows.active[rows.n_groups]) return false;
    g = rows.active[blockIdx.y];
    r0 = rows.seg[g];
    r1 = rows.seg[g + 1];
    return true;
}

// Block (x, y, z): of group active[y] (the one group when dense), its rows in passes of kRows
// taken z, z + gridDim.z, ...; each warp streams two weight rows against the same loads of x.
// Swiglu: the group's weights are [gate (n_out rows); up (n_out rows)], a warp takes feature n's
// gate and up rows (kWarps features per block) and act gets bf16(silu(gate) * up). Otherwise a
// warp takes features n and n + kWarps (2 kWarps per block) and y gets the fp32 products. Either
// way every feature's sum runs in the same order.

// kUnroll: 16-byte weight loads in flight per lane and weight row.
template <bool kSwiglu, int kRows, int kUnroll = (kRows <= kFewRows ? 4 : 2)>
__global__ void __launch_bounds__(kWarps * 32)
    grouped_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows,
                   float *__restrict__ y, __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (kSwiglu ? kWarps : 2 * kWarps) + warp;
    const int n2 = kSwiglu ? n : n + kWarps; // plain: the warp's second feature
    const bool has2 = kSwiglu || n2 < n_out;
    int g, r0, r1;
    if (!block_group(rows, g, r0, r1)) return;
    if (n >= n_out) return;
    const int nvec = k_in / 8;
    const int64_t wrows = kSwiglu ? 2 * (int64_t)n_out : n_out;
    const uint4 *wg = reinterpret_cast<const uint4 *>(w + ((int64_t)g * wrows + n) * k_in);
    const int64_t row_u = kSwiglu ? n_out + n : (has2 ? n2 : n);
    const uint4 *wu = reinterpret_cast<const uint4 *>(w + ((int64_t)g * wrows + row_u) * k_in);
    for (int p0 = r0 + (int)blockIdx.z * kRows; p0 < r1; p0 += (int)gridDim.z * kRows) {
        const int cnt = r1 - p0 < kRows ? r1 - p0 : kRows;
        int src[kRows]; // each row's input row
#pragma unroll
        for (int m = 0; m < kRows; m++) {
            int r = p0 + (m < cnt ? m : 0);
            src[m] = rows.order ? rows.order[r] / rows.top_k : r;
        }
        const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
        float ag[kRows], au[kRows];
#pragma unroll
        for (int m = 0; m < kRows; m++) ag[m] = au[m] = 0.0f;
        for (int base = lane; base < nvec; base += 32 * kUnroll) {
            uint4 vg[kUnroll], vu[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int i = base + u * 32;
                vg[u] = i < nvec ? load_stream(wg + i) : make_uint4(0, 0, 0, 0);
                vu[u] = i < nvec ? load_stream(wu + i) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int i = base + u * 32;
                if (i >= nvec) break;
                float fg[8], fu[8];
                bf16x8_to_f32(vg[u], fg);
                bf16x8_to_f32(vu[u], fu);
#pragma unroll
                for (int m = 0; m < kRows; m++) {
                    if (m >= cnt) break;
                    float xf[8];
                    bf16x8_to_f32(__ldg(x4 + (int64_t)src[m] * nvec + i), xf);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        ag[m] += fg[j] * xf[j];
                        au[m] += fu[j] * xf[j];
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < kRows; m++) {
            if (m >= cnt) break;
            const float a = warp_sum(ag[m]), u = warp_sum(au[m]);
            if (lane != 0) continue;
            if (kSwiglu) {
                act[(int64_t)(p0 + m) * n_out + n] = __float2bfloat16_rn(a / (1.0f + expf(-a)) * u);
            } else {
                y[(int64_t)(p0 + m) * n_out + n] = a;
                if (has2) y[(int64_t)(p0 + m) * n_out + n2] = u;
            }
        }
    }
}

// ---- the grouped product on the tensor cores ---------------------------------------------------
// For groups of many rows (prefill; decode batches with many tokens per expert), where the
// CUDA-core product above runs out of arithmetic. Block (x, y, z): kMmaWarps warps side by side
// over features, all on the same rows of group active[y] in passes of 16 taken z, z + gridDim.z,
// ...; a warp's tile is 16 rows x 32 weight rows (mma.sync m16n8k16, bf16 in, fp32 sums), its
// fragments loaded straight from global memory (32-bit words; the tile's rows share the warp's
// sectors and the block's warps share x through L1). Swiglu: weight rows 0-15 are features
// f..f+15's gate rows and 16-31 the same features' up rows, so one lane holds both halves of an
// output; plain: 32 features. A row's sums depend only on the row, but differ in their last bits
// from the CUDA-core product's: sk_moe_rows.invariant keeps every row count on that one.
constexpr int kMmaWarps = 4;

template <bool kSwiglu>
__global__ void __launch_bounds__(kMmaWarps * 32)
    grouped_mma_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, sk_moe_rows rows,
                       float *__restrict__ y, __nv_bfloat16 *__restrict__ act, int n_out, int k_in)
{
    constexpr int kFeat = kSwiglu ? 16 : 32; // output features per warp
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, t4 = lane & 3;
    const int f0 = (blockIdx.x * kMmaWarps + warp) * kFeat;
    if (f0 >= n_out) return;
    int g, r0, r1;
    if (!block_group(rows, g, r0, r1)) return;
    const int64_t wrows = kSwiglu ? 2 * (int64_t)n_out : n_out;
    // This lane's weight row in each n8 tile j (B's column g8), clamped into the matrix.
    const uint32_t *wr[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int f = kSwiglu ? f0 + (j & 1) * 8 + g8 : f0 + j * 8 + g8;
        if (f >= n_out) f = n_out - 1;
        const int64_t row = kSwiglu && j >= 2 ? n_out + f : f;
        wr[j] = reinterpret_cast<const uint32_t *>(w + ((int64_t)g * wrows + row) * k_in) + t4;
    }
    const uint32_t *x32 = reinterpret_cast<const uint32_t *>(x);
    const int kw = k_in / 2; // 32-bit words per row
    for (int p0 = r0 + (int)blockIdx.z * 16; p0 < r1; p0 += (int)gridDim.z * 16) {
        const int cnt = r1 - p0 < 16 ? r1 - p0 : 16;
        const int lo = g8 < cnt ? g8 : 0, hi = g8 + 8 < cnt ? g8 + 8 : 0;
        const int src_lo = rows.order ? rows.order[p0 + lo] / rows.top_k : p0 + lo;
        const int src_hi = rows.order ? rows.order[p0 + hi] / rows.top_k : p0 + hi;
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
        // c[j]: rows g8 (0, 1) and g8 + 8 (2, 3), columns 2 t4 and 2 t4 + 1 of tile j.
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = g8 + 8 * h;
            if (r >= cnt) continue;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (kSwiglu) {
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        const int f = f0 + j * 8 + 2 * t4 + e;
                        const float gv = c[j][2 * h + e], uv = c[j + 2][2 * h + e];
                        if (f < n_out)
                            act[(int64_t)(p0 + r) * n_out + f] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * uv);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int f = f0 + j * 8 + 2 * t4 + e;
                        if (f < n_out) y[(int64_t)(p0 + r) * n_out + f] = c[j][2 * h + e];
                    }
                }
            }
        }
    }
}

} // namespace

extern "C" cudaError_t sk_moe_gemm(const uint16_t *w, const uint16_t *x, const struct sk_moe_rows *rows, float *y,
                                   uint16_t *act, int n_out, int k_in, cudaStream_t s)
{
    if (rows->n_rows <= 0) return cudaSuccess;
    if (k_in % 8 || n_out < 1 || (!y) == (!act) || ((uintptr_t)w | (uintptr_t)x) % 16 ||
        (rows->seg && (rows->n_groups < 1 || rows->n_groups > SK_MOE_MAX_EXPERTS || !rows->active)) ||
        (rows->order && rows->top_k < 1))
        return cudaErrorInvalidValue;
    // Grouped: a block per active group at most (min(groups, rows) of them can be), and as many
    // row passes side by side as an even spread of the rows over them would fill four times.
    // Dense: one pass per block. Passes of 4 rows wherever an even spread gives at most that
    // (both variants sum a row in the same order). Everything here depends on the shape only,
    // never on the counts.
    const int slots = rows->seg ? (rows->n_groups < rows->n_rows ? rows->n_groups : rows->n_rows) : 1;
    const bool few = rows->n_rows <= slots * kFewRows;
    const auto *wb = reinterpret_cast<const __nv_bfloat16 *>(w);
    const auto *xb = reinterpret_cast<const __nv_bfloat16 *>(x);
    auto *ab = reinterpret_cast<__nv_bfloat16 *>(act);
    if (!few && rows->n_rows > slots * kManyRows / 2 && !rows->invariant && k_in % 16 == 0) {
        // Groups of many rows (dense: more than 8): the tensor cores, passes of 16 rows, four side
        // by side per group on an even spread.
        const int feat = (act ? 16 : 32) * kMmaWarps;
        int zm = (rows->n_rows + slots * 64 - 1) / (slots * 64);
        if (zm > 65535) zm = 65535;
        const dim3 grid((n_out + feat - 1) / feat, slots, zm);
        if (act) grouped_mma_kernel<true><<<grid, kMmaWarps * 32, 0, s>>>(wb, xb, *rows, nullptr, ab, n_out, k_in);
        else grouped_mma_kernel<false><<<grid, kMmaWarps * 32, 0, s>>>(wb, xb, *rows, y, nullptr, n_out, k_in);
        return cudaGetLastError();
    }
    const int pass = few ? kFewRows : kManyRows;
    const int per = rows->seg ? slots * pass * 4 : pass;
    int z = (rows->n_rows + per - 1) / per;
    if (z > 65535) z = 65535;
    const int per_block = act ? kWarps : 2 * kWarps; // features
    const dim3 grid((n_out + per_block - 1) / per_block, slots, z);
    if (act && few)
        grouped_kernel<true, kFewRows><<<grid, kWarps * 32, 0, s>>>(wb, xb, *rows, nullptr, ab, n_out, k_in);
    else if (act)
        grouped_kernel<true, kManyRows><<<grid, kWarps * 32, 0, s>>>(wb, xb, *rows, nullptr, ab, n_out, k_in);
    else if (few)
        grouped_kernel<false, kFewRows><<<grid, kWarps * 32, 0, s>>>(wb, xb, *rows, y, nullptr, n_out, k_in);
    else
        grouped_kernel<false, kManyRows><<<grid, kWarps * 32, 0, s>>>(wb, xb, *rows, y, nullptr, n_out, k_in);
    return cudaGetLastError();
}
