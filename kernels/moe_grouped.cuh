// What the two grouped expert products share, moe_gemm.cu (bf16 weights, sk_moe_gemm) and
// moe_gemm_fp8.cu (e4m3 weights, sk_moe_gemm_fp8), so that they take the same rows the same way:
// the checks of their arguments, a block's group and rows, the launch shape for a product's rows
// (which kernel, how many blocks), the CUDA-core kernel's body (over a weight type that says how
// a 16-byte load of weights becomes floats and what scales a row), and the tensor-core kernel's
// rows and outputs around its own inner loop.
//
// Every grid depends on the step's row count and the model's shape only, never on a count on the
// host, so a decode step that runs them can be captured in a CUDA graph. Every row's arithmetic
// is fixed by the row alone (one warp per output feature, each lane's K range summed in order,
// then the same shuffle tree), never by which block or pass it falls in, so a token's result does
// not depend on what shares its batch or its expert.
//
// In an anonymous namespace, as moe_common.cuh: each of the two files keeps its own copy.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <type_traits>

#include "kernels/bf16.cuh"
#include "kernels/load_stream.cuh"
#include "kernels/moe_common.cuh"
#include "kernels/sluice_kernels.h"

namespace
{

// The CUDA-core kernels: kMoeWarps warps a block, each on one feature's gate and up rows
// (swiglu) or two features; passes of kMoeFewRows rows where the groups' rows are few (decode:
// fewer registers, so more warps and more loads in flight), else kMoeManyRows. The tensor-core
// ones: kMoeMmaWarps warps a block, 16 features a warp (swiglu) or 32, passes of 16 rows.
constexpr int kMoeWarps = 8, kMoeFewRows = 4, kMoeManyRows = 16, kMoeMmaWarps = 4;

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

// Row r's input row: x[order[r] / top_k], or x[r].
__device__ __forceinline__ int row_source(const sk_moe_rows &rows, int r)
{
    return rows.order ? rows.order[r] / rows.top_k : r;
}

// Whether the rows and outputs are ones a grouped product takes (sluice_kernels.h): exactly one
// of y and act, whole 16-byte loads of w and x (k_step: the weights in one), a group table within
// the router's limit.
inline bool moe_args_ok(const sk_moe_rows &rows, const void *w, const void *x, const void *y, const void *act,
                        int n_out, int k_in, int k_step)
{
    return k_in % k_step == 0 && n_out >= 1 && (!y) != (!act) && ((uintptr_t)w | (uintptr_t)x) % 16 == 0 &&
           (!rows.seg || (rows.n_groups >= 1 && rows.n_groups <= SK_MOE_MAX_EXPERTS && rows.active)) &&
           (!rows.order || rows.top_k >= 1);
}

// How a grouped product of these rows launches. Grouped: a block per active group at most
// (min(groups, rows) of them can be), and as many row passes side by side as an even spread of
// the rows over them would fill four times. Dense: one pass per block. Passes of kMoeFewRows
// wherever an even spread gives at most that (both CUDA-core variants sum a row in the same
// order); groups of more than 8 rows on an even spread (dense: more than 8 rows) go to the
// tensor cores, unless invariant (their sums differ from the CUDA cores' in the last bits).
struct MoeLaunch {
    bool mma, few;
    dim3 grid;
};
inline MoeLaunch moe_launch(const sk_moe_rows &rows, int n_out, int k_in, bool swiglu)
{
    MoeLaunch l;
    const int slots = rows.seg ? (rows.n_groups < rows.n_rows ? rows.n_groups : rows.n_rows) : 1;
    l.few = rows.n_rows <= slots * kMoeFewRows;
    l.mma = !l.few && rows.n_rows > slots * kMoeManyRows / 2 && !rows.invariant && k_in % 16 == 0;
    int z, feat; // row passes side by side, output features per block
    if (l.mma) {
        feat = (swiglu ? 16 : 32) * kMoeMmaWarps;
        z = (rows.n_rows + slots * 64 - 1) / (slots * 64);
    } else {
        const int pass = l.few ? kMoeFewRows : kMoeManyRows, per = rows.seg ? slots * pass * 4 : pass;
        feat = swiglu ? kMoeWarps : 2 * kMoeWarps;
        z = (rows.n_rows + per - 1) / per;
    }
    l.grid = dim3((n_out + feat - 1) / feat, slots, z < 65535 ? z : 65535);
    return l;
}

// Calls launch(swiglu, pass) for the kernel l names, with std::integral_constant arguments so
// that a generic lambda can instantiate its kernel templates from them: swiglu (bool), and pass
// the CUDA-core kernel's rows a pass (kMoeFewRows or kMoeManyRows) or 0 for the tensor cores.
template <typename F> void moe_dispatch(const MoeLaunch &l, bool swiglu, F &&launch)
{
    using Yes = std::true_type;
    using No = std::false_type;
    using Mma = std::integral_constant<int, 0>;
    using Few = std::integral_constant<int, kMoeFewRows>;
    using Many = std::integral_constant<int, kMoeManyRows>;
    if (l.mma) swiglu ? launch(Yes{}, Mma{}) : launch(No{}, Mma{});
    else if (l.few) swiglu ? launch(Yes{}, Few{}) : launch(No{}, Few{});
    else swiglu ? launch(Yes{}, Many{}) : launch(No{}, Many{});
}

// ---- the CUDA-core kernel's body ----------------------------------------------------------------
// Block (x, y, z): of group active[y] (the one group when dense), its rows in passes of kRows
// taken z, z + gridDim.z, ...; each warp streams two weight rows against the same loads of x.
// Swiglu: the group's weights are [gate (n_out rows); up (n_out rows)], a warp takes feature n's
// gate and up rows (kMoeWarps features per block) and act gets bf16(silu(gate) * up). Otherwise
// a warp takes features n and n + kMoeWarps (2 kMoeWarps per block) and y gets the fp32
// products. Either way every feature's sum runs in the same order.
//
// W, the weights: W::kPerLoad of them in a 16-byte load, W::row(i, k_in) the 16-byte loads of
// weight row i (counted over all groups), W::to_f32 a load as floats, and a row's sum times
// W::kUnscale times W::scale(i) the product (for bf16: 1 and 1, which change nothing).
// kUnroll: 16-byte weight loads in flight per lane and weight row.
template <bool kSwiglu, int kRows, int kUnroll, typename W>
__device__ __forceinline__ void grouped_rows(const W &wt, const __nv_bfloat16 *__restrict__ x, const sk_moe_rows &rows,
                                             float *__restrict__ y, __nv_bfloat16 *__restrict__ act, int n_out,
                                             int k_in)
{
    constexpr int kXLoads = W::kPerLoad / 8; // 16-byte loads of x per load of weights
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (kSwiglu ? kMoeWarps : 2 * kMoeWarps) + warp;
    const int n2 = kSwiglu ? n : n + kMoeWarps; // plain: the warp's second feature
    const bool has2 = kSwiglu || n2 < n_out;
    int g, r0, r1;
    if (!block_group(rows, g, r0, r1)) return;
    if (n >= n_out) return;
    const int nvec = k_in / W::kPerLoad, xvec = k_in / 8;
    const int64_t wrows = kSwiglu ? 2 * (int64_t)n_out : n_out;
    const int64_t row_g = (int64_t)g * wrows + n, row_u = (int64_t)g * wrows + (kSwiglu ? n_out + n : (has2 ? n2 : n));
    const uint4 *wg = wt.row(row_g, k_in), *wu = wt.row(row_u, k_in);
    const float sg = wt.scale(row_g), su = wt.scale(row_u);
    const uint4 *x4 = reinterpret_cast<const uint4 *>(x);
    for (int p0 = r0 + (int)blockIdx.z * kRows; p0 < r1; p0 += (int)gridDim.z * kRows) {
        const int cnt = r1 - p0 < kRows ? r1 - p0 : kRows;
        int src[kRows]; // each row's input row
#pragma unroll
        for (int m = 0; m < kRows; m++) src[m] = row_source(rows, p0 + (m < cnt ? m : 0));
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
                float fg[W::kPerLoad], fu[W::kPerLoad];
                wt.to_f32(vg[u], fg);
                wt.to_f32(vu[u], fu);
#pragma unroll
                for (int m = 0; m < kRows; m++) {
                    if (m >= cnt) break;
                    float xf[W::kPerLoad];
#pragma unroll
                    for (int q = 0; q < kXLoads; q++)
                        bf16x8_to_f32(__ldg(x4 + (int64_t)src[m] * xvec + (int64_t)i * kXLoads + q), xf + 8 * q);
#pragma unroll
                    for (int j = 0; j < W::kPerLoad; j++) {
                        ag[m] += fg[j] * xf[j];
                        au[m] += fu[j] * xf[j];
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < kRows; m++) {
            if (m >= cnt) break;
            // The sums back to scale first (W::kUnscale, a power of two), then the rows' scales.
            const float a = warp_sum(ag[m]) * W::kUnscale * sg, u = warp_sum(au[m]) * W::kUnscale * su;
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

// ---- the tensor-core kernels' rows and outputs ---------------------------------------------------
// Block (x, y, z): kMoeMmaWarps warps side by side over features, all on the same rows of group
// active[y] in passes of 16 taken z, z + gridDim.z, ...; a warp's tile is 16 rows x 32 weight
// rows (mma.sync m16n8k16, bf16 in, fp32 sums), the rows of x as A and the weight rows as B.
// Swiglu: weight rows 0-15 are features f0..f0+15's gate rows and 16-31 the same features' up
// rows, so one lane holds both halves of an output; plain: 32 features. A row's sums depend only
// on the row, but differ in their last bits from the CUDA-core kernel's.

// Weight row (counted over all groups) of this lane's column g8 in n8 tile j of the warp's
// features from f0, clamped into the matrix; its scale's row is the same.
template <bool kSwiglu> __device__ __forceinline__ int64_t mma_weight_row(int g, int f0, int j, int g8, int n_out)
{
    const int64_t wrows = kSwiglu ? 2 * (int64_t)n_out : n_out;
    int f = kSwiglu ? f0 + (j & 1) * 8 + g8 : f0 + j * 8 + g8;
    if (f >= n_out) f = n_out - 1;
    return (int64_t)g * wrows + (kSwiglu && j >= 2 ? n_out + f : f);
}

// A pass's count of rows (at most 16) and the input rows of this lane's A rows g8 and g8 + 8
// (past the count: the pass's first row, never stored).
__device__ __forceinline__ int mma_pass_rows(const sk_moe_rows &rows, int p0, int r1, int g8, int &src_lo,
                                             int &src_hi)
{
    const int cnt = r1 - p0 < 16 ? r1 - p0 : 16;
    src_lo = row_source(rows, p0 + (g8 < cnt ? g8 : 0));
    src_hi = row_source(rows, p0 + (g8 + 8 < cnt ? g8 + 8 : 0));
    return cnt;
}

// A pass's outputs from the accumulators: c[j] holds rows g8 (0, 1) and g8 + 8 (2, 3), columns
// 2 t4 and 2 t4 + 1 of tile j, each times sc[j][column] (the weight row's scale; 1 for bf16).
template <bool kSwiglu>
__device__ __forceinline__ void mma_pass_store(const float (&c)[4][4], const float (&sc)[4][2], int f0, int g8,
                                               int t4, int p0, int cnt, float *__restrict__ y,
                                               __nv_bfloat16 *__restrict__ act, int n_out)
{
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
                    const float gv = c[j][2 * h + e] * sc[j][e], uv = c[j + 2][2 * h + e] * sc[j + 2][e];
                    if (f < n_out)
                        act[(int64_t)(p0 + r) * n_out + f] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * uv);
                }
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int f = f0 + j * 8 + 2 * t4 + e;
                    if (f < n_out) y[(int64_t)(p0 + r) * n_out + f] = c[j][2 * h + e] * sc[j][e];
                }
            }
        }
    }
}

} // namespace
