// Decode products on Hopper's own path: y[M, N] = x[M, K] w[N, K]^T for 2..128 rows, bf16 operands,
// fp32 accumulation and output. A decode product is bound by reading the weights once, so the
// kernel is a weight stream: each block owns BM = 128 output features and a range of K (split-K
// when the feature tiles alone would leave SMs idle). One producer warp moves 128 x 64 weight
// tiles, and another the matching 64-column slices of x, into shared memory with the bulk tensor
// copy engine (TMA, 128-byte swizzle), each stage completing on an mbarrier: weights many stages
// deep (they come from device memory), x a few (it comes from L2). One consumer warpgroup
// multiplies with wgmma. The weights are the wgmma's A operand (two m64 halves) and the tokens
// its N dimension (16, 32, 64 or 128, padded by the copy engine's zero fill), so small batches
// waste no weight traffic.
//
// The blocks that split one tile's K form a thread block cluster: each leaves its partial sums in
// its own shared memory, and after a cluster barrier every block adds a share of the tile's
// values over all the blocks' memories (distributed shared memory), in split order. No partial
// sum touches device memory, and the result does not depend on block timing. Or, where the one
// kernel that reads the product can add them (sk_hopper_gemm_parts: the RMSNorm after the o and
// down products, qkv_post after qkv), each split writes its partial sums as a part of its own,
// and the blocks need no cluster, no barrier across blocks and no reduction before they exit.
// The split count depends on the shape alone, not on the number of rows, and the parts are added
// in split order either way, so a row's result is the same at every batch size and on both paths.
//
// wgmma and setmaxnreg need the sm_90a target: the Makefile builds this file for it (with
// SK_HOPPER_BUILT defined) when CUDA_ARCH is sm_90; otherwise sk_hopper_gemm_create answers
// cudaErrorNotSupported and the backend keeps cuBLAS.
#include "kernels/mbarrier.cuh"
#include "kernels/pdl.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>
#include <stdlib.h>
#include <string.h>

namespace
{

constexpr int BM = 128;                 // output features per block (two wgmma m64 halves)
constexpr int BK = 64;                  // K per stage: 64 bf16 = one 128-byte swizzle row
constexpr int W_BYTES = BM * BK * 2;    // 16 KB of weights per stage
constexpr int kConsumers = 128;         // the warpgroup that issues wgmma
constexpr int kThreads = kConsumers + 64; // + a producer warp for the weights, one for x
constexpr int kMapSlots = 4096;         // tensor maps cached by (pointer, shape, box)

// Shared memory per block, so that two blocks share an SM (one finishing while the other streams).
constexpr int kSmemBudget = 110 * 1024;
template <int NT> __host__ __device__ constexpr int x_bytes() { return NT * BK * 2; }
// x comes from L2 (every feature tile reads it), so a few stages of it suffice; the rest of the
// budget holds weight stages, which come from device memory and need many bytes in flight.
__host__ __device__ constexpr int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
template <int NT> __host__ __device__ constexpr int x_stages()
{
    return clamp_int(24 * 1024 / x_bytes<NT>(), 2, 4); // about 24 KB of x
}
template <int NT> __host__ __device__ constexpr int w_stages()
{
    return (kSmemBudget - 1024 - x_stages<NT>() * x_bytes<NT>()) / W_BYTES;
}
// The epilogue stages a tile in the ring: token rows of 128 fp32 results or 64 bf16 activations,
// padded by 16 bytes so that the fragments' stores spread over all banks.
constexpr int kOutStride = BM + 4;
constexpr int kActStride = 64 + 8;
template <int NT> __host__ __device__ constexpr bool epilogue_fits()
{
    return NT * kOutStride * 4 <= w_stages<NT>() * W_BYTES + x_stages<NT>() * x_bytes<NT>();
}
static_assert(epilogue_fits<16>() && epilogue_fits<32>() && epilogue_fits<64>() && epilogue_fits<128>(),
              "the epilogue's tile must fit in the ring");
template <int NT> __host__ __device__ constexpr size_t smem_bytes()
{
    return 1024 /* alignment slack */ + (size_t)w_stages<NT>() * W_BYTES + (size_t)x_stages<NT>() * x_bytes<NT>() +
           16 * (w_stages<NT>() + x_stages<NT>());
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// A 2-D tile (c0 along the contiguous dimension, c1 along rows) into shared memory, completing on bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar,
                                            uint64_t policy)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "l"(policy)
                 : "memory");
}

// The wgmma descriptor of a K-major tile in shared memory written by the copy engine with the
// 128-byte swizzle: rows of 128 bytes, 8-row groups 1024 bytes apart (the stride byte offset);
// the leading byte offset is unused for this layout. Advancing 16 elements along K adds 32 bytes
// (2 in the address field), since the swizzle is a function of the address bits.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

// Keeps the compiler from moving accumulator reads and writes across the asynchronous products.
template <int N> __device__ __forceinline__ void fence_regs(float *r)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

template <int NT> struct wgmma_op;
template <> struct wgmma_op<16> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_op<32> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_op<64> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_op<128> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(a), "l"(b), "r"(1));
    }
};

// Outputs f..f+3 of one token row: one 16-byte store when the row allows it.
__device__ __forceinline__ void store_out4(float *row, int f, int n_out, bool vec, float4 v)
{
    if (vec && f + 3 < n_out) {
        *reinterpret_cast<float4 *>(row + f) = v;
        return;
    }
    const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int q = 0; q < 4; q++)
        if (f + q < n_out) row[f + q] = e[q];
}

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// With SWIGLU the weights are a gate/up pair interleaved in blocks of 64 rows (tile j: gate rows
// 64j.., then up rows 64j..), splits is 1, and the block writes silu(gate) * up in bf16 to
// act[rows][n_out / 2] instead of y: the MLP's activation never goes through device memory in fp32.
template <int NT, bool SWIGLU>
__global__ void __launch_bounds__(kThreads) hopper_gemm_kernel(const __grid_constant__ CUtensorMap tw,
                                                               const __grid_constant__ CUtensorMap tx, float *y,
                                                               __nv_bfloat16 *act, int rows, int n_out, int k_blocks,
                                                               int per_split, int64_t part_stride)
{
    constexpr int SW = w_stages<NT>(), SX = x_stages<NT>(), XB = x_bytes<NT>(), R = NT / 2;
    extern __shared__ unsigned char smem_raw[];
    // The 128-byte swizzle pattern repeats every 1024 bytes: tiles start on such a boundary.
    const uint32_t base = (smem_u32(smem_raw) + 1023) & ~1023u;
    const uint32_t sw = base, sx = base + SW * W_BYTES, bars = sx + SX * XB;
    const uint32_t full_w = bars, empty_w = full_w + 8 * SW, full_x = empty_w + 8 * SW, empty_x = full_x + 8 * SX;
    // Split-K: the cluster is the blocks of this tile, one per split, rank = split; with
    // part_stride, split s writes part s at y + s * part_stride instead, and there is no cluster.
    const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const bool reduce_in_cluster = splits > 1 && part_stride == 0;
    const int kb0 = split * per_split, kb1 = min(kb0 + per_split, k_blocks), n_kb = kb1 - kb0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    if (threadIdx.x == kConsumers) {
        // The tensor maps live in parameter memory: fetch them while the barriers are set up.
        asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&tw)) : "memory");
        asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&tx)) : "memory");
    }
    if (threadIdx.x == 0) {
        for (int s = 0; s < SW; s++) {
            mbar_init(full_w + 8 * s, 1);
            mbar_init(empty_w + 8 * s, 4); // one arrival per consumer warp
        }
        for (int s = 0; s < SX; s++) {
            mbar_init(full_x + 8 * s, 1);
            mbar_init(empty_x + 8 * s, 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    float acc[2][R];
    if (warp >= 4) {
        // Producers, one stream each. The weights are read once, so they should not push anything
        // out of L2; the slice of x is read by every feature tile, so it should stay.
        if (lane == 0) {
            const bool weights = warp == 4;
            const int S = weights ? SW : SX, bytes = weights ? W_BYTES : XB;
            const uint32_t ring = weights ? sw : sx, full = weights ? full_w : full_x;
            const uint32_t empty = weights ? empty_w : empty_x;
            uint64_t policy;
            if (weights)
                asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
            else
                asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
            // Launched as a programmatic dependent (PDL), the block may start while the kernel
            // before it still runs: the weights do not depend on it, so their first stages are
            // on the way already; x is its output, read only after the wait.
            if (!weights) pdl_wait();
            for (int i = 0; i < n_kb; i++) {
                const int s = i % S;
                if (i >= S) mbar_wait(empty + 8 * s, (i / S - 1) & 1);
                mbar_expect_tx(full + 8 * s, bytes);
                tma_load_2d(ring + s * bytes, weights ? &tw : &tx, (kb0 + i) * BK, weights ? tile * BM : 0,
                            full + 8 * s, policy);
            }
        }
        __syncwarp();
        if (!reduce_in_cluster) return;
    } else {
        // Consumers: acc[h] holds features h*64 + 16*warp + lane/4 (+8) of this tile, every token.
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int r = 0; r < R; r++) acc[h][r] = 0.0f;
        for (int i = 0; i < n_kb; i++) {
            const int s = i % SW, t = i % SX;
            mbar_wait(full_w + 8 * s, (i / SW) & 1);
            mbar_wait(full_x + 8 * t, (i / SX) & 1);
            const uint64_t da = smem_desc(sw + s * W_BYTES), db = smem_desc(sx + t * XB);
            fence_regs<R>(acc[0]);
            fence_regs<R>(acc[1]);
            asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
            for (int k = 0; k < BK / 16; k++) {
                wgmma_op<NT>::run(acc[0], da + 2 * k, db + 2 * k);
                wgmma_op<NT>::run(acc[1], da + (64 * 128 >> 4) + 2 * k, db + 2 * k);
            }
            asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
            // Keep this stage's products in flight; the previous stage's are done, so its buffers go back.
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
            fence_regs<R>(acc[0]);
            fence_regs<R>(acc[1]);
            if (i > 0 && lane == 0) {
                mbar_arrive(empty_w + 8 * ((i - 1) % SW));
                mbar_arrive(empty_x + 8 * ((i - 1) % SX));
            }
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        fence_regs<R>(acc[0]);
        fence_regs<R>(acc[1]);
    }

    // The results leave through shared memory (the ring, idle now), so that device memory gets
    // whole 16-byte pieces of token rows, where a store straight from the wgmma fragments touches
    // 4 token rows with 8 to 32 bytes each; split, the reduction covers only the real rows. At
    // 64 rows that made each product 0.5-1 us shorter (H200): the epilogue is a tail during which
    // nothing streams (PERF_NOTES.md).
    // Fragment value (h, r) of consumer thread c: feature h*64 + 16*(c/32) + (c%32)/4 +
    // 8*((r/2)%2), token 8*(r/4) + 2*(c%4) + r%2.
    const int f_frag = 16 * warp + lane / 4, t_frag = 2 * (lane % 4);
    unsigned char *stage = smem_raw + (base - smem_u32(smem_raw));
    if (warp < 4) asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); // the ring is read
    if (SWIGLU) {
        __nv_bfloat16 *sa = reinterpret_cast<__nv_bfloat16 *>(stage);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float g = acc[0][r], u = acc[1][r];
            sa[(t_frag + 8 * (r / 4) + r % 2) * kActStride + f_frag + 8 * ((r / 2) % 2)] =
                __float2bfloat16_rn(g / (1.0f + __expf(-g)) * u);
        }
        asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory");
        // Tile j holds outputs 64j..64j+63 of every token: 8 pieces of 16 bytes per token row.
        const int inter = n_out / 2;
        for (int i = threadIdx.x; i < rows * 8; i += kConsumers) {
            const int t = i / 8, q = i % 8;
            *reinterpret_cast<uint4 *>(act + (size_t)t * inter + tile * 64 + q * 8) =
                *reinterpret_cast<const uint4 *>(sa + t * kActStride + q * 8);
        }
        return;
    }
    float *sy = reinterpret_cast<float *>(stage);
    if (warp < 4) {
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int r = 0; r < R; r++)
                sy[(t_frag + 8 * (r / 4) + r % 2) * kOutStride + h * 64 + f_frag + 8 * ((r / 2) % 2)] = acc[h][r];
    }
    const bool vec = n_out % 4 == 0 && !(reinterpret_cast<uintptr_t>(y) & 15);
    if (!reduce_in_cluster) {
        float *out = y + split * part_stride;
        asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory");
        for (int i = threadIdx.x; i < rows * 32; i += kConsumers)
            store_out4(out + (size_t)(i / 32) * n_out, tile * BM + 4 * (i % 32), n_out, vec,
                       *reinterpret_cast<const float4 *>(sy + (i / 32) * kOutStride + 4 * (i % 32)));
        return;
    }
    // Split-K: block `split` adds its share of the tile's real rows over the cluster's blocks
    // (distributed shared memory), in split order, with every block's loads in flight at once.
    cluster_sync();
    if (warp < 4) {
        constexpr int U = 2;
        const int n4 = rows * 32, chunk = (n4 + splits - 1) / splits;
        const int lo = split * chunk, hi = min(n4, lo + chunk);
        uint32_t remote[SK_HOPPER_MAX_SPLITS];
#pragma unroll
        for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
            if (j < splits) asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote[j]) : "r"(base), "r"(j));
        for (int i0 = lo + threadIdx.x; i0 < hi; i0 += kConsumers * U) {
            float4 v[U][SK_HOPPER_MAX_SPLITS];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++) {
                    const int i = i0 + u * kConsumers;
                    const uint32_t at = remote[j] + 4 * ((i / 32) * kOutStride + 4 * (i % 32));
                    if (j < splits && i < hi)
                        asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                                     : "=f"(v[u][j].x), "=f"(v[u][j].y), "=f"(v[u][j].z), "=f"(v[u][j].w)
                                     : "r"(at));
                }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int i = i0 + u * kConsumers;
                if (i >= hi) break;
                float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
                for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
                    if (j < splits) {
                        sum.x += v[u][j].x;
                        sum.y += v[u][j].y;
                        sum.z += v[u][j].z;
                        sum.w += v[u][j].w;
                    }
                store_out4(y + (size_t)(i / 32) * n_out, tile * BM + 4 * (i % 32), n_out, vec, sum);
            }
        }
    }
    // No block may leave while another still reads its shared memory.
    cluster_sync();
}
#else
// Built without sm_90a: never launched (sk_hopper_gemm_create refuses).
template <int NT, bool SWIGLU>
__global__ void hopper_gemm_kernel(const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap, float *,
                                   __nv_bfloat16 *, int, int, int, int, int64_t)
{
}
#endif

struct map_slot {
    const void *ptr;
    uint64_t inner, outer;
    uint32_t box_rows;
    bool used;
    CUtensorMap map;
};

} // namespace

struct sk_hopper_gemm {
    PFN_cuTensorMapEncodeTiled_v12000 encode;
    int clusters[SK_HOPPER_MAX_SPLITS + 1]; // clusters of s blocks resident at once, by s
    map_slot *maps;
    int n_slots; // kMapSlots, or fewer in tests (sk_hopper_gemm_set_map_slots)
};

namespace
{

// The tensor map of a row-major bf16 matrix [outer][inner] read in boxes of 64 x box_rows,
// cached: the weights' maps are made once, x's once per batch size. The map is copied out:
// the weights' and x's maps of one launch may hash to the same slot, and a pointer into the
// cache would then give the kernel x's map for the weights too (its weight stages would wait
// forever for bytes that never come: the GPU hangs).
bool tensor_map(struct sk_hopper_gemm *h, const void *ptr, uint64_t inner, uint64_t outer, uint32_t box_rows,
                CUtensorMap *out)
{
    uint64_t key = (uint64_t)(uintptr_t)ptr ^ (inner * 0x9E3779B97F4A7C15ull) ^ (outer * 0xBF58476D1CE4E5B9ull) ^
                   ((uint64_t)box_rows << 40);
    key ^= key >> 29;
    map_slot *e = &h->maps[key % (uint64_t)h->n_slots];
    if (e->used && e->ptr == ptr && e->inner == inner && e->outer == outer && e->box_rows == box_rows) {
        *out = e->map;
        return true;
    }
    const cuuint64_t dims[2] = {inner, outer}, strides[1] = {inner * 2};
    const cuuint32_t box[2] = {BK, box_rows}, elem[2] = {1, 1};
    CUresult r = h->encode(&e->map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(ptr), dims, strides, box,
                           elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        e->used = false;
        return false;
    }
    e->ptr = ptr;
    e->inner = inner;
    e->outer = outer;
    e->box_rows = box_rows;
    e->used = true;
    *out = e->map;
    return true;
}

// part_stride 0: split-K sums added within clusters; else part s of the sums at y + s * part_stride.
template <int NT, bool SWIGLU>
cudaError_t launch(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, uint16_t *act, int rows,
                   int n_out, int k_in, int splits, int64_t part_stride, cudaStream_t s)
{
    CUtensorMap mw, mx;
    if (!tensor_map(h, w, (uint64_t)k_in, (uint64_t)n_out, BM, &mw) ||
        !tensor_map(h, x, (uint64_t)k_in, (uint64_t)rows, NT, &mx))
        return cudaErrorInvalidValue;
    const int k_blocks = (k_in + BK - 1) / BK, per = (k_blocks + splits - 1) / splits;
    splits = (k_blocks + per - 1) / per;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((n_out + BM - 1) / BM, splits);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = smem_bytes<NT>();
    cfg.stream = s;
    cudaLaunchAttribute attrs[2];
    attrs[0].id = cudaLaunchAttributeClusterDimension;
    attrs[0].val.clusterDim.x = 1;
    attrs[0].val.clusterDim.y = part_stride ? 1 : splits;
    attrs[0].val.clusterDim.z = 1;
    attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attrs;
    cfg.numAttrs = pdl_allowed(true) ? 2 : 1;
    cudaError_t e = cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<NT, SWIGLU>, mw, mx, y, (__nv_bfloat16 *)act, rows, n_out,
                                       k_blocks, per, part_stride);
    return e != cudaSuccess ? e : cudaGetLastError();
}

template <int NT> cudaError_t allow_smem()
{
    cudaError_t e = cudaFuncSetAttribute(hopper_gemm_kernel<NT, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem_bytes<NT>());
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(hopper_gemm_kernel<NT, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem_bytes<NT>());
    return e;
}

// The launch for the token tile that holds `rows` (16, 32, 64 or 128 wide).
template <bool SWIGLU>
cudaError_t launch_rows(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, uint16_t *act,
                        int rows, int n_out, int k_in, int splits, int64_t part_stride, cudaStream_t s)
{
    if (rows <= 16) return launch<16, SWIGLU>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, s);
    if (rows <= 32) return launch<32, SWIGLU>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, s);
    if (rows <= 64) return launch<64, SWIGLU>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, s);
    return launch<128, SWIGLU>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, s);
}

// Conditions every launch needs: the TMA maps want 16-byte aligned rows and bases.
bool shape_ok(const struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, int rows, int k_in)
{
    return h && rows >= 1 && rows <= SK_HOPPER_MAX_ROWS && k_in >= 8 && k_in % 8 == 0 && !((uintptr_t)w & 15) &&
           !((uintptr_t)x & 15);
}

} // namespace

extern "C" cudaError_t sk_hopper_gemm_create(struct sk_hopper_gemm **out)
{
    *out = NULL;
#ifndef SK_HOPPER_BUILT
    return cudaErrorNotSupported;
#else
    int dev = 0, major = 0, minor = 0;
    cudaError_t e;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess) return e;
    if (major != 9 || minor != 0) return cudaErrorNotSupported; // sm_90a code runs on sm_90 only
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if ((e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q)) !=
        cudaSuccess)
        return e;
    if (q != cudaDriverEntryPointSuccess || !fn) return cudaErrorNotSupported;
    if ((e = allow_smem<16>()) != cudaSuccess || (e = allow_smem<32>()) != cudaSuccess ||
        (e = allow_smem<64>()) != cudaSuccess || (e = allow_smem<128>()) != cudaSuccess)
        return e;
    struct sk_hopper_gemm *h = (struct sk_hopper_gemm *)calloc(1, sizeof *h);
    if (!h) return cudaErrorMemoryAllocation;
    h->encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    h->maps = (map_slot *)calloc(kMapSlots, sizeof *h->maps);
    h->n_slots = kMapSlots;
    if (!h->maps) {
        free(h);
        return cudaErrorMemoryAllocation;
    }
    // A cluster's blocks must sit in one GPC at once, so how many clusters fit depends on their
    // size in a way only the occupancy calculator knows (every tile width takes about the same
    // shared memory, so one width stands for all).
    for (int sp = 1; sp <= SK_HOPPER_MAX_SPLITS && e == cudaSuccess; sp++) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(1, sp);
        cfg.blockDim = dim3(kThreads);
        cfg.dynamicSmemBytes = smem_bytes<64>();
        cudaLaunchAttribute a;
        a.id = cudaLaunchAttributeClusterDimension;
        a.val.clusterDim.x = 1;
        a.val.clusterDim.y = sp;
        a.val.clusterDim.z = 1;
        cfg.attrs = &a;
        cfg.numAttrs = 1;
        e = cudaOccupancyMaxActiveClusters(&h->clusters[sp], hopper_gemm_kernel<64, false>, &cfg);
        if (e == cudaSuccess && h->clusters[sp] < 1) e = cudaErrorNotSupported;
    }
    if (e != cudaSuccess) {
        sk_hopper_gemm_destroy(h);
        return e;
    }
    *out = h;
    return cudaSuccess;
#endif
}

extern "C" void sk_hopper_gemm_destroy(struct sk_hopper_gemm *h)
{
    if (!h) return;
    free(h->maps);
    free(h);
}

extern "C" void sk_hopper_gemm_set_map_slots(struct sk_hopper_gemm *h, int n)
{
    h->n_slots = n < 1 ? 1 : n > kMapSlots ? kMapSlots : n;
    for (int i = 0; i < kMapSlots; i++) h->maps[i].used = false;
}

extern "C" int sk_hopper_gemm_splits(const struct sk_hopper_gemm *h, int n_out, int k_in)
{
    const int tiles = (n_out + BM - 1) / BM, k_blocks = (k_in + BK - 1) / BK;
    // Pick the split count whose waves of clusters (one cluster per feature tile) take the least
    // time: a block costs its K blocks plus a fixed part (launch, pipeline fill, the epilogue),
    // measured on an H200 to be worth about 8 K blocks; the cluster reduction a few more.
    int best = 1;
    double best_cost = 0;
    for (int sp = 1; sp <= k_blocks && sp <= SK_HOPPER_MAX_SPLITS; sp++) {
        const int per = (k_blocks + sp - 1) / sp, real = (k_blocks + per - 1) / per;
        if (real != sp) continue;
        const int waves = (tiles + h->clusters[sp] - 1) / h->clusters[sp];
        const double cost = (double)waves * (per + 8) + (sp > 1 ? 3 : 0);
        if (sp == 1 || cost < best_cost * 0.98) {
            best = sp;
            best_cost = cost;
        }
    }
    return best;
}

extern "C" cudaError_t sk_hopper_gemm(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, int rows,
                                      int n_out, int k_in, int splits, cudaStream_t s)
{
    if (!shape_ok(h, w, x, rows, k_in) || n_out < 1) return cudaErrorInvalidValue;
    if (splits <= 0) splits = sk_hopper_gemm_splits(h, n_out, k_in);
    const int k_blocks = (k_in + BK - 1) / BK;
    if (splits > k_blocks) splits = k_blocks;
    if (splits > SK_HOPPER_MAX_SPLITS) return cudaErrorInvalidValue;
    return launch_rows<false>(h, w, x, y, NULL, rows, n_out, k_in, splits, 0, s);
}

extern "C" cudaError_t sk_hopper_gemm_parts(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y,
                                            int rows, int n_out, int k_in, int *n_parts, cudaStream_t s)
{
    *n_parts = 0;
    if (!shape_ok(h, w, x, rows, k_in) || n_out < 1) return cudaErrorInvalidValue;
    // The split count of sk_hopper_gemm, so that both paths add the same partial sums (it
    // answers only counts that K divides into exactly).
    const int splits = sk_hopper_gemm_splits(h, n_out, k_in);
    cudaError_t e = launch_rows<false>(h, w, x, y, NULL, rows, n_out, k_in, splits, (int64_t)rows * n_out, s);
    if (e == cudaSuccess) *n_parts = splits;
    return e;
}

extern "C" cudaError_t sk_hopper_gemm_swiglu(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x,
                                             uint16_t *act, int rows, int inter, int k_in, cudaStream_t s)
{
    if (!shape_ok(h, w, x, rows, k_in) || inter < 64 || inter % 64 || ((uintptr_t)act & 15)) return cudaErrorInvalidValue;
    return launch_rows<true>(h, w, x, NULL, act, rows, 2 * inter, k_in, 1, 0, s);
}
