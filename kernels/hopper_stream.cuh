// The parts of Hopper's decode products that the plain product (hopper_gemm.cu) and the fused MLP
// (hopper_mlp.cu) share. A block streams the weights of one tile of BM = 128 output features over
// a range of K through a ring of shared-memory stages: one producer warp moves 128 x 64 weight
// tiles (128 x 128 for e4m3 weights: a stage is 128-byte rows either way), another the matching
// slices of x, with the bulk tensor copy engine (TMA, 128-byte swizzle), each stage completing
// on an mbarrier; one consumer warpgroup multiplies with
// wgmma, the weights as its A operand (two m64 halves) and the tokens as its N dimension (16, 32,
// 64 or 128, padded by the copy engine's zero fill), so small batches waste no weight traffic.
// The results leave through the ring's shared memory (an epilogue stage), so that device memory
// gets whole 16-byte pieces of token rows.
//
// Device code needs the sm_90a target (wgmma): it exists where
// __CUDA_ARCH_FEAT_SM90_ALL is defined; the host side (the handle, its tensor maps) always.
#ifndef SLUICE_KERNELS_HOPPER_STREAM_CUH
#define SLUICE_KERNELS_HOPPER_STREAM_CUH

#include "kernels/mbarrier.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

namespace hopper
{

constexpr int BM = 128;                 // output features per block (two wgmma m64 halves)
constexpr int BK = 64;                  // K per stage: 64 bf16 = one 128-byte swizzle row
// Elements of K a stage holds: BK bf16, or twice as many e4m3 bytes (the same 128-byte rows).
__host__ __device__ constexpr int stage_elems(bool e4m3)
{
    return e4m3 ? 2 * BK : BK;
}
constexpr int W_BYTES = BM * BK * 2;    // 16 KB of weights per stage
constexpr int kConsumers = 128;         // the warpgroup that issues wgmma
constexpr int kThreads = kConsumers + 64; // + a producer warp for the weights, one for x

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

template <int NT> struct wgmma_op; // bf16 operands, k16
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

// The same products on e4m3 operands (FP8 weights and per-token quantized activations): k32
// per instruction, so that a 32-byte step along a 128-byte swizzle row is one instruction, as for
// bf16; FP8 wgmma takes K-major operands only (no transpose flags).
template <int NT> struct wgmma_e4m3_op;
template <> struct wgmma_e4m3_op<16> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_e4m3_op<32> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_e4m3_op<64> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1;\n}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(1));
    }
};

template <> struct wgmma_e4m3_op<128> {
    static __device__ __forceinline__ void run(float *d, uint64_t a, uint64_t b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}"
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


// A kernel's tensor maps live in parameter memory: one thread fetches each while the block sets
// up its barriers.
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap &map)
{
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
}

// The ring in shared memory: weight stages, x stages, and each stage's full and empty barriers.
struct ring {
    unsigned char *stage; // the ring's first byte, generic address (the epilogue's tile)
    uint32_t sw, sx, full_w, empty_w, full_x, empty_x;
};

// Lays the ring out in dynamic shared memory (aligned to 1024 bytes: the 128-byte swizzle pattern
// repeats there) and has thread 0 set up its barriers; the caller synchronizes the block after.
template <int NT> __device__ __forceinline__ ring ring_init(unsigned char *smem_raw)
{
    constexpr int SW = w_stages<NT>(), SX = x_stages<NT>();
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023) & ~1023u;
    ring g;
    g.stage = smem_raw + (base - raw);
    g.sw = base;
    g.sx = base + SW * W_BYTES;
    g.full_w = g.sx + SX * x_bytes<NT>();
    g.empty_w = g.full_w + 8 * SW;
    g.full_x = g.empty_w + 8 * SW;
    g.empty_x = g.full_x + 8 * SX;
    if (threadIdx.x == 0) {
        for (int s = 0; s < SW; s++) {
            mbar_init(g.full_w + 8 * s, 1);
            mbar_init(g.empty_w + 8 * s, 4); // one arrival per consumer warp
        }
        for (int s = 0; s < SX; s++) {
            mbar_init(g.full_x + 8 * s, 1);
            mbar_init(g.empty_x + 8 * s, 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    return g;
}

// One producer's stream (its warp's lane 0): K blocks kb0 .. kb0 + n_kb (stage_elems(e4m3)
// elements each) of rows row0.. of map into
// the weight ring (weights) or the x ring. The weights are read once, so they should not push
// anything out of L2; the slice of x is read by every feature tile, so it should stay.
template <int NT>
__device__ __forceinline__ void produce(const ring &g, bool weights, const CUtensorMap *map, int kb0, int n_kb, int row0,
                                        bool e4m3 = false)
{
    const int S = weights ? w_stages<NT>() : x_stages<NT>(), bytes = weights ? W_BYTES : x_bytes<NT>();
    const uint32_t ring = weights ? g.sw : g.sx, full = weights ? g.full_w : g.full_x;
    const uint32_t empty = weights ? g.empty_w : g.empty_x;
    uint64_t policy;
    if (weights)
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    else
        asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
    for (int i = 0; i < n_kb; i++) {
        const int s = i % S;
        if (i >= S) mbar_wait(empty + 8 * s, (i / S - 1) & 1);
        mbar_expect_tx(full + 8 * s, bytes);
        tma_load_2d(ring + s * bytes, map, (kb0 + i) * stage_elems(e4m3), row0, full + 8 * s, policy);
    }
}

// The consumer warpgroup's products over n_kb stages: acc[h] holds features h*64 + 16*warp +
// lane/4 (+8) of the tile, every token. A stage is 128 bytes of K: 64 bf16 or 128 e4m3 (Op),
// four 32-byte instructions either way.
template <int NT, class Op = wgmma_op<NT>>
__device__ __forceinline__ void consume(const ring &g, float (&acc)[2][NT / 2], int n_kb)
{
    constexpr int SW = w_stages<NT>(), SX = x_stages<NT>(), XB = x_bytes<NT>(), R = NT / 2;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[h][r] = 0.0f;
    for (int i = 0; i < n_kb; i++) {
        const int s = i % SW, t = i % SX;
        mbar_wait(g.full_w + 8 * s, (i / SW) & 1);
        mbar_wait(g.full_x + 8 * t, (i / SX) & 1);
        const uint64_t da = smem_desc(g.sw + s * W_BYTES), db = smem_desc(g.sx + t * XB);
        fence_regs<R>(acc[0]);
        fence_regs<R>(acc[1]);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int k = 0; k < BK / 16; k++) {
            Op::run(acc[0], da + 2 * k, db + 2 * k);
            Op::run(acc[1], da + (64 * 128 >> 4) + 2 * k, db + 2 * k);
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        // Keep this stage's products in flight; the previous stage's are done, so its buffers go back.
        asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        fence_regs<R>(acc[0]);
        fence_regs<R>(acc[1]);
        if (i > 0 && lane == 0) {
            mbar_arrive(g.empty_w + 8 * ((i - 1) % SW));
            mbar_arrive(g.empty_x + 8 * ((i - 1) % SX));
        }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    fence_regs<R>(acc[0]);
    fence_regs<R>(acc[1]);
}

// A barrier over the consumer warpgroup alone (the producers may have left).
__device__ __forceinline__ void consumers_sync()
{
    asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory");
}

// The epilogues, run by the consumer warpgroup once every stage is read (consumers_sync after
// consume). Fragment value (h, r) of consumer thread c: feature h*64 + 16*(c/32) + (c%32)/4 +
// 8*((r/2)%2) of the tile, token 8*(r/4) + 2*(c%4) + r%2.
__device__ __forceinline__ int frag_feature(int h, int r)
{
    return h * 64 + 16 * (threadIdx.x / 32) + (threadIdx.x % 32) / 4 + 8 * ((r / 2) % 2);
}
__device__ __forceinline__ int frag_token(int r)
{
    return 8 * (r / 4) + 2 * (threadIdx.x % 4) + r % 2;
}

//
// With the weights a gate/up pair interleaved in blocks of 64 rows (tile j: gate rows 64j.., then
// up rows 64j..), silu(gate) * up in bf16 to act[rows][inter], outputs 64 * tile ..: the MLP's
// activation never goes through device memory in fp32.
template <int NT>
__device__ __forceinline__ void store_act_tile(const ring &g, const float (&acc)[2][NT / 2], __nv_bfloat16 *act,
                                               int rows, int inter, int tile)
{
    __nv_bfloat16 *sa = reinterpret_cast<__nv_bfloat16 *>(g.stage);
#pragma unroll
    for (int r = 0; r < NT / 2; r++) {
        const float gate = acc[0][r], up = acc[1][r];
        sa[frag_token(r) * kActStride + frag_feature(0, r)] = __float2bfloat16_rn(gate / (1.0f + __expf(-gate)) * up);
    }
    consumers_sync();
    // 8 pieces of 16 bytes per token row.
    for (int i = threadIdx.x; i < rows * 8; i += kConsumers) {
        const int t = i / 8, q = i % 8;
        *reinterpret_cast<uint4 *>(act + (size_t)t * inter + tile * 64 + q * 8) =
            *reinterpret_cast<const uint4 *>(sa + t * kActStride + q * 8);
    }
}

// The fp32 tile into the ring, token rows of kOutStride floats; read after a consumers_sync.
template <int NT> __device__ __forceinline__ float *stage_out_tile(const ring &g, const float (&acc)[2][NT / 2])
{
    float *sy = reinterpret_cast<float *>(g.stage);
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int r = 0; r < NT / 2; r++) sy[frag_token(r) * kOutStride + frag_feature(h, r)] = acc[h][r];
    return sy;
}

// The staged tile's real rows to out[rows][n_out], outputs tile * BM ...
__device__ __forceinline__ void store_out_tile(const float *sy, float *out, int rows, int n_out, int tile)
{
    const bool vec = n_out % 4 == 0 && !(reinterpret_cast<uintptr_t>(out) & 15);
    for (int i = threadIdx.x; i < rows * 32; i += kConsumers)
        store_out4(out + (size_t)(i / 32) * n_out, tile * BM + 4 * (i % 32), n_out, vec,
                   *reinterpret_cast<const float4 *>(sy + (i / 32) * kOutStride + 4 * (i % 32)));
}
#endif // __CUDA_ARCH_FEAT_SM90_ALL

constexpr int kMapSlots = 4096; // tensor maps cached by (pointer, shape, box)

struct map_slot {
    const void *ptr;
    uint64_t inner, outer;
    uint32_t box_rows;
    bool bytes; // e4m3 (boxes of 128 bytes), else bf16
    bool used;
    CUtensorMap map;
};

// The tensor map of a row-major bf16 matrix [outer][inner] read in boxes of 64 x box_rows (bytes:
// of e4m3 bytes, boxes of 128 x box_rows: the same 128-byte rows), from the handle's cache
// (hopper_gemm.cu).
bool tensor_map(struct sk_hopper_gemm *h, const void *ptr, uint64_t inner, uint64_t outer, uint32_t box_rows,
                CUtensorMap *out, bool bytes = false);

// The fused MLP's counters per launch (hopper_mlp.cu): ticket, blocks done, one count per split.
constexpr int kMlpSync = 2 + SK_HOPPER_MAX_SPLITS;

// Lets the fused MLP's kernels use the ring's shared memory (hopper_mlp.cu).
cudaError_t mlp_allow_smem();

// Conditions every launch needs: the TMA maps want 16-byte aligned rows and bases.
inline bool shape_ok(const struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, int rows, int k_in)
{
    return h && rows >= 1 && rows <= SK_HOPPER_MAX_ROWS && k_in >= 8 && k_in % 8 == 0 && !((uintptr_t)w & 15) &&
           !((uintptr_t)x & 15);
}

} // namespace hopper

struct sk_hopper_gemm {
    PFN_cuTensorMapEncodeTiled_v12000 encode;
    int clusters[SK_HOPPER_MAX_SPLITS + 1]; // clusters of s blocks resident at once, by s
    hopper::map_slot *maps;
    int n_slots;      // kMapSlots, or fewer in tests (sk_hopper_gemm_set_map_slots)
    int *mlp_sync;    // two sets of kMlpSync counters for the fused MLP (hopper_mlp.cu)
    unsigned mlp_launches;
};

#endif
