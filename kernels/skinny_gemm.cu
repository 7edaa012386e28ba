// Skinny matrix products for decode batches (2..64 rows): y[M, N] = x[M, K] w[N, K]^T with bf16
// operands on the tensor cores (mma.sync m16n8k16, fp32 accumulation). Decode products are bound
// by reading the weights once, so the kernel is built around streaming w: each block owns BN
// output features and a range of K (split-K when there are too few feature tiles to fill the
// chip), and keeps STAGES - 1 tiles of BN x BK weights in flight through cp.async into swizzled
// shared memory, read back with ldmatrix. The activations are tiny and come from L2 with each
// tile. The 8 warps are laid out WN along the features by WK along K (each warp takes every
// WK-th 16-column step of a tile); the WK partial sums add up through shared memory at the end.
// Split-K partial sums go to a workspace; the last block of a feature tile to finish (a counter
// per tile) adds them in split order, so results do not depend on block timing.
//
// Measured on an H200 (PERF_NOTES.md): slower than cuBLAS at every Llama-3-8B decode shape, so
// the backend uses it only with SLUICE_CUDA_SKINNY=1.
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

namespace
{

constexpr int kThreads = 256; // 8 warps

__device__ __forceinline__ unsigned smem_addr(const void *p)
{
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte copy into shared memory; src_bytes 0 fills zeros (rows past M or N, K past the end).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_bf16(float *c, const unsigned *a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A tile row holds CPR chunks of 16 bytes; chunk c of row r sits at slot c ^ (r & 7), so the 8 rows
// an ldmatrix phase reads fall in different banks.
template <int CPR> __device__ __forceinline__ int swz(int row, int chunk) { return row * CPR + (chunk ^ (row & 7)); }

template <int MT, int BN, int BK, int WK, int STAGES> __host__ __device__ constexpr size_t smem_bytes()
{
    return (size_t)STAGES * (BN + 16 * MT) * BK * 2;
}

template <int MT, int BN, int BK, int WK, int STAGES>
__global__ void __launch_bounds__(kThreads)
    skinny_kernel(const __nv_bfloat16 *__restrict__ w, const __nv_bfloat16 *__restrict__ x, float *__restrict__ y,
                  float *__restrict__ ws, int *__restrict__ counters, int M, int N, int K, int iters_per_split)
{
    constexpr int kRows = 16 * MT;
    constexpr int CPR = BK / 8;           // 16-byte chunks per tile row
    constexpr int WN = 8 / WK;            // warps along the features
    constexpr int F = BN / WN;            // features per warp
    constexpr int NT = F / 8;             // 8-feature mma tiles per warp
    constexpr int KS = BK / 16 / WK;      // 16-column steps per warp and tile
    static_assert(F % 16 == 0 && KS >= 1 && BK % 64 == 0, "tile shape");
    static_assert(WK == 1 || (size_t)(WK - 1) * WN * MT * NT * 4 * 32 * 4 <= smem_bytes<MT, BN, BK, WK, STAGES>(),
                  "reduction buffer");
    extern __shared__ uint4 smem[];
    uint4 *sw = smem;                     // [STAGES][BN * CPR]
    uint4 *sx = smem + STAGES * BN * CPR; // [STAGES][kRows * CPR]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const int n0 = tile * BN;
    const int k_iters = (K + BK - 1) / BK;
    const int it0 = split * iters_per_split;
    const int it1 = min(k_iters, it0 + iters_per_split);
    const int n_iters = max(0, it1 - it0);

    auto load_stage = [&](int slot, int it) {
        const int k0 = it * BK;
        uint4 *dw = sw + slot * BN * CPR;
#pragma unroll
        for (int i = 0; i < BN * CPR / kThreads; i++) {
            const int idx = tid + i * kThreads, r = idx / CPR, c = idx % CPR;
            const int n = n0 + r, k = k0 + c * 8;
            const bool ok = n < N && k < K;
            const __nv_bfloat16 *src = ok ? w + (size_t)n * K + k : w;
            cp_async16(dw + swz<CPR>(r, c), src, ok ? 16 : 0);
        }
        uint4 *dx = sx + slot * kRows * CPR;
#pragma unroll
        for (int i = 0; i < (kRows * CPR + kThreads - 1) / kThreads; i++) {
            const int idx = tid + i * kThreads;
            if (idx < kRows * CPR) {
                const int r = idx / CPR, c = idx % CPR, k = k0 + c * 8;
                const bool ok = r < M && k < K;
                const __nv_bfloat16 *src = ok ? x + (size_t)r * K + k : x;
                cp_async16(dx + swz<CPR>(r, c), src, ok ? 16 : 0);
            }
        }
    };

    const int kw = warp % WK, wn = warp / WK;
    float acc[MT][NT][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < n_iters) load_stage(s, it0 + s);
        cp_async_commit();
    }

    // Per-lane ldmatrix rows: weights (features of this warp) and activations.
    const int b_row = wn * F + (lane & 7) + ((lane >> 4) << 3), b_chunk = (lane >> 3) & 1;
    const int a_row = (lane & 7) + (((lane >> 3) & 1) << 3), a_chunk = lane >> 4;

    for (int it = 0; it < n_iters; it++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nxt = it + STAGES - 1;
            if (nxt < n_iters) load_stage(nxt % STAGES, it0 + nxt);
            cp_async_commit();
        }
        const uint4 *tw = sw + (it % STAGES) * BN * CPR;
        const uint4 *tx = sx + (it % STAGES) * kRows * CPR;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const int kk = ks * WK + kw;
            unsigned b[NT / 2][4];
#pragma unroll
            for (int h = 0; h < NT / 2; h++) ldmatrix_x4(b[h], tw + swz<CPR>(b_row + h * 16, kk * 2 + b_chunk));
#pragma unroll
            for (int m = 0; m < MT; m++) {
                unsigned a[4];
                ldmatrix_x4(a, tx + swz<CPR>(m * 16 + a_row, kk * 2 + a_chunk));
#pragma unroll
                for (int h = 0; h < NT / 2; h++) {
                    mma_bf16(acc[m][2 * h], a, b[h][0], b[h][1]);
                    mma_bf16(acc[m][2 * h + 1], a, b[h][2], b[h][3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    if (WK > 1) {
        // Warps kw > 0 hand their sums to their kw = 0 partner through the idle pipeline buffers;
        // the partner adds them in kw order.
        __syncthreads();
        float *red = reinterpret_cast<float *>(smem);
        constexpr int kPer = MT * NT * 4 * 32;
        if (kw > 0) {
            float *mine = red + ((size_t)(kw - 1) * WN + wn) * kPer;
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) mine[((m * NT + j) * 4 + e) * 32 + lane] = acc[m][j][e];
        }
        __syncthreads();
        if (kw == 0) {
            for (int q = 1; q < WK; q++) {
                const float *theirs = red + ((size_t)(q - 1) * WN + wn) * kPer;
#pragma unroll
                for (int m = 0; m < MT; m++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) acc[m][j][e] += theirs[((m * NT + j) * 4 + e) * 32 + lane];
            }
        }
    }

    // Accumulator element e of tile (m, j): row m*16 + g + (e >= 2) * 8, feature wn*F + j*8 + t*2 + (e & 1).
    const int g = lane >> 2, t = lane & 3;
    const bool owner = kw == 0;
    if (splits == 1) {
        if (!owner) return;
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = m * 16 + g + ((e >> 1) << 3), n = n0 + wn * F + j * 8 + t * 2 + (e & 1);
                    if (r < M && n < N) y[(size_t)r * N + n] = acc[m][j][e];
                }
        return;
    }

    float *part = ws + ((size_t)tile * splits + split) * kRows * BN;
    if (owner) {
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = m * 16 + g + h * 8, c = wn * F + j * 8 + t * 2;
                    __stcg(reinterpret_cast<float2 *>(part + r * BN + c),
                           make_float2(acc[m][j][2 * h], acc[m][j][2 * h + 1]));
                }
    }
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (tid == 0) last = atomicAdd(&counters[tile], 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *base = ws + (size_t)tile * splits * kRows * BN;
    for (int i = tid; i < kRows * BN / 4; i += kThreads) {
        const int r = (i * 4) / BN, c = (i * 4) % BN;
        if (r >= M) break;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p = 0; p < splits; p++) {
            const float4 v = __ldcg(reinterpret_cast<const float4 *>(base + (size_t)p * kRows * BN) + i);
            s.x += v.x;
            s.y += v.y;
            s.z += v.z;
            s.w += v.w;
        }
        const float sv[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (n0 + c + q < N) y[(size_t)r * N + n0 + c + q] = sv[q];
    }
    if (tid == 0) counters[tile] = 0; // ready for the next launch (graph replays too)
}

// Tile shapes per variant: features per block, K per stage, warps along K, pipeline stages.
struct shape {
    int bn, bk;
};
shape variant_shape(int variant)
{
    switch (variant) {
    case 3: return {64, 128};
    case 4: return {64, 256};
    default: return {128, 64};
    }
}

template <int MT, int BN, int BK, int WK, int STAGES>
cudaError_t launch_one(const uint16_t *w, const uint16_t *x, float *y, int M, int N, int K, int splits, int per_split,
                       float *ws, int *counters, cudaStream_t s)
{
    // The shared-memory limit is raised once per instantiation and device, before its first launch.
    static unsigned long long attr_set = 0;
    constexpr size_t sm = smem_bytes<MT, BN, BK, WK, STAGES>();
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    const unsigned long long bit = 1ull << (dev & 63);
    if (!(__atomic_load_n(&attr_set, __ATOMIC_ACQUIRE) & bit)) {
        e = cudaFuncSetAttribute(skinny_kernel<MT, BN, BK, WK, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)sm);
        if (e != cudaSuccess) return e;
        __atomic_fetch_or(&attr_set, bit, __ATOMIC_RELEASE);
    }
    dim3 grid((N + BN - 1) / BN, splits);
    skinny_kernel<MT, BN, BK, WK, STAGES><<<grid, kThreads, sm, s>>>(
        (const __nv_bfloat16 *)w, (const __nv_bfloat16 *)x, y, ws, counters, M, N, K, per_split);
    return cudaGetLastError();
}

template <int MT>
cudaError_t launch(const uint16_t *w, const uint16_t *x, float *y, int M, int N, int K, int splits, int per_split,
                   float *ws, int *counters, int variant, cudaStream_t s)
{
    switch (variant) {
    case 1: return launch_one<MT, 128, 64, 1, 4>(w, x, y, M, N, K, splits, per_split, ws, counters, s);
    case 3: return launch_one<MT, 64, 128, 2, 4>(w, x, y, M, N, K, splits, per_split, ws, counters, s);
    case 4: return launch_one<MT, 64, 256, 4, 3>(w, x, y, M, N, K, splits, per_split, ws, counters, s);
    default: return launch_one<MT, 128, 64, 2, 4>(w, x, y, M, N, K, splits, per_split, ws, counters, s);
    }
}

} // namespace

extern "C" int sk_skinny_splits(int rows, int n_out, int k_in, int n_sms, size_t ws_floats, int n_counters)
{
    if (rows < 1 || rows > SK_SKINNY_MAX_ROWS || n_out < 1 || k_in < 1) return 0;
    const shape sh = variant_shape(SK_SKINNY_DEFAULT_VARIANT);
    const int tiles = (n_out + sh.bn - 1) / sh.bn, k_iters = (k_in + sh.bk - 1) / sh.bk;
    const int rows_pad = (rows + 15) / 16 * 16;
    // About two blocks fit on an SM at a time: pick the split count whose whole waves of blocks
    // take the least time, a block costing its K iterations plus about the pipeline's depth.
    const int slots = 2 * n_sms;
    int best = 1;
    double best_cost = 0;
    for (int sp = 1; sp <= k_iters; sp++) {
        const int per = (k_iters + sp - 1) / sp, real = (k_iters + per - 1) / per;
        if (real != sp) continue;
        if (sp > 1 && ((size_t)tiles * sp * rows_pad * sh.bn > ws_floats || tiles > n_counters)) break;
        const int waves = (tiles * sp + slots - 1) / slots;
        const double cost = (double)waves * (per + 4);
        if (sp == 1 || cost < best_cost * 0.98) {
            best = sp;
            best_cost = cost;
        }
    }
    return best;
}

extern "C" cudaError_t sk_skinny_gemm_variant(const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                                              int k_in, int splits, float *ws, size_t ws_floats, int *counters,
                                              int n_counters, int variant, cudaStream_t s)
{
    if (rows < 1 || rows > SK_SKINNY_MAX_ROWS || n_out < 1 || k_in < 8 || k_in % 8 || splits < 1 || variant < 1 ||
        variant > 4 || ((uintptr_t)w & 15) || ((uintptr_t)x & 15))
        return cudaErrorInvalidValue;
    const shape sh = variant_shape(variant);
    const int tiles = (n_out + sh.bn - 1) / sh.bn, k_iters = (k_in + sh.bk - 1) / sh.bk;
    const int rows_pad = (rows + 15) / 16 * 16;
    if (splits > k_iters) splits = k_iters;
    const int per = (k_iters + splits - 1) / splits;
    splits = (k_iters + per - 1) / per;
    if (splits > 1 && (!ws || !counters || tiles > n_counters || (size_t)tiles * splits * rows_pad * sh.bn > ws_floats))
        return cudaErrorInvalidValue;
    switch ((rows + 15) / 16) {
    case 1: return launch<1>(w, x, y, rows, n_out, k_in, splits, per, ws, counters, variant, s);
    case 2: return launch<2>(w, x, y, rows, n_out, k_in, splits, per, ws, counters, variant, s);
    case 3: return launch<3>(w, x, y, rows, n_out, k_in, splits, per, ws, counters, variant, s);
    default: return launch<4>(w, x, y, rows, n_out, k_in, splits, per, ws, counters, variant, s);
    }
}

extern "C" cudaError_t sk_skinny_gemm(const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in,
                                      int splits, float *ws, size_t ws_floats, int *counters, int n_counters,
                                      cudaStream_t s)
{
    return sk_skinny_gemm_variant(w, x, y, rows, n_out, k_in, splits, ws, ws_floats, counters, n_counters,
                                  SK_SKINNY_DEFAULT_VARIANT, s);
}
