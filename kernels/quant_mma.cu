// sk_quant_mma (kernels/sk_quant.h): GGUF block weights times bf16 activations on the tensor cores,
// for batches past what the block GEMV (quant_gemv.cu) does well and short of where dequantized
// tiles and cuBLAS (quant_dequant.cu) win: issue 21's "Marlin-style" kernel, GPTQ/AWQ int4 (Q4_1
// blocks at load) included. The blocks stay as the file has them; the kernel reads each weight
// byte once per SK_QUANT_MMA_ROWS batch rows, where the tile path writes and reads back 4 bytes of
// bf16 a weight besides.
//
// Work split. A block owns 64 output features (four m16 tiles of weight rows: the weights are
// mma.sync's A operand, so a batch of 8 rows is one n8 tile of B and nothing is wasted on short
// batches), a tile of up to 64 batch rows (NT n8 tiles; more rows take more blocks, side by side
// in blockIdx.x so that they share the weights through L2), and a range of k in whole stages of
// 256 weights (split-K: blockIdx.z). Eight warps: warp w takes m16 tile w % 4 and every other
// 32-weight group of a stage (w / 4 the parity), so that each weight is dequantized once per
// block; the two warps of a tile add their sums in shared memory at the end, always in the same
// order.
//
// Pipeline. Each stage's weight bytes (64 rows of 8 blocks of 32 weights, or one block of 256)
// and its x tile (rows x 256 bf16) stream into shared memory with cp.async, 3 or 4 stages deep. The
// blocks (18 to 210 bytes) leave a row's bytes anywhere in a 16-byte word, so each row copies
// the 16-byte words covering its bytes (at most one word more than the bytes; none when rows
// are whole words, as in real models) and the decoders read at that row's offset, 2 bytes at a
// time (every block field is 2-byte aligned). The slots' row pitches are odd multiples of 16
// bytes (x: 8 words mod 32 banks), so that the fragment reads of a warp fall in distinct banks.
//
// Fragments. Lane (g, t) of mma m16n8k16 holds A's rows g, g + 8 at k labels 2t, 2t + 1 (a0,
// a1) and 2t + 8, 2t + 9 (a2, a3), and B's column g at the same labels. A dot product does not
// care about the order of k, so the labels are permuted, the same way for both operands: in the
// k16 step over weights k0 .. k0 + 15, lane t takes weights k0 + 4t .. k0 + 4t + 3 (labels 2t,
// 2t + 1, 2t + 8, 2t + 9 in that order). Each lane then decodes runs of 4 consecutive weights of
// its two rows, and its x fragment is one 8-byte read. A 32-weight group is two k16 steps,
// decoded together: its quants are one 32-bit value a row (Q4_0/Q4_1: the low and high nibbles
// of 4 bytes; Q8_0: two), its scales once.
//
// Exactness. Each weight is computed as worker/model/quant.c computes it (every product and sum
// rounded on its own, quant_blocks.cuh's mul/add/sub) and rounded to bf16 to nearest even, the
// bits sk_dequant_bf16 writes for the tile path; the quants become floats by moving their bits
// into a float's mantissa (bytes_f32), which is exact. Sums are fp32 (the tensor cores'), so a
// product differs from the tile path's cuBLAS only in the order of its sums.
//
// Launch. As a programmatic dependent of the kernel before it where the caller asks (pdl.cuh:
// sk_quant_mma's pdl), the first stages' weights streaming in before the wait for x; either way
// its own dependent may launch at once.
//
// Split-K. With several k ranges, each block writes its sums to a workspace and counts itself
// done on its tile's counter; the last block of a tile adds the ranges' sums in range order and
// resets the counter. One launch (a graph node like any), and bits that do not depend on which
// block finished first.
#include "kernels/sk_quant.h"
#include "kernels/sk_shapes.h"

#include <cuda_bf16.h>
#include <utility>

#include "kernels/bf16.cuh"
#include "kernels/mma.cuh"
#include "kernels/pdl.cuh"
#include "kernels/quant_blocks.cuh"
#include "kernels/smem_limit.cuh"

namespace
{

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kFeat = SK_QUANT_MMA_FEATURES;  // four m16 tiles
constexpr int kRowTile = SK_QUANT_MMA_ROWS;   // eight n8 tiles at most
constexpr int kStageK = SK_QUANT_MMA_STAGE_K; // weights of a row a stage
constexpr int kGroups = kStageK / 32;         // 32-weight groups a stage
constexpr int kXRow = 2 * kStageK + 32;       // bytes of an x row in a slot: 8 banks apart
static_assert(kFeat == 64 && kRowTile == 64 && kGroups == 8, "the warp layout assumes these");

// 2 and 4 bytes of shared memory at 2-byte aligned addresses.
__device__ __forceinline__ uint32_t lds16(const uint8_t *p)
{
    return *reinterpret_cast<const uint16_t *>(p);
}
__device__ __forceinline__ uint32_t lds32(const uint8_t *p)
{
    return lds16(p) | lds16(p + 2) << 16;
}

// The four bytes of v (each 0..255) as floats less bias, exactly: each byte moved into the low
// bits of 1.5 * 2^23 (whose unit in the last place is 1) by one byte permute, then 1.5 * 2^23 +
// bias taken away; the same values as quant_blocks.cuh's i2f(q - bias).
template <int kBias> __device__ __forceinline__ void bytes_f32(uint32_t v, float *w)
{
    constexpr float base = 12582912.0f + (float)kBias;
#pragma unroll
    for (int j = 0; j < 4; j++) w[j] = __int_as_float((int)__byte_perm(v, 0x4B400000u, 0x7640u | j)) - base;
}

// Bit e of the 4-bit x at bit 8e + 4 (the fifth bit of byte e's quant).
__device__ __forceinline__ uint32_t spread4(uint32_t x)
{
    return ((x * 0x00204081u) & 0x01010101u) << 4;
}

// Each type: block elements BE and bytes BB, and group<GI>(b, t, w): of group GI (32 weights,
// 0 .. BE / 32 - 1) of the block at b (shared memory), weights 32 GI + 4t + j into w[j] and
// 32 GI + 16 + 4t + j into w[4 + j], j < 4: the runs of lane t's two k16 steps.
struct M4_0 {
    static constexpr int BE = 32, BB = 18;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        const float d = h2f(lds16(b));
        const uint32_t q = lds32(b + 2 + 4 * t);
        bytes_f32<8>(q & 0x0F0F0F0Fu, w);
        bytes_f32<8>((q >> 4) & 0x0F0F0F0Fu, w + 4);
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = mul(w[j], d);
    }
};
struct M4_1 {
    static constexpr int BE = 32, BB = 20;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        const float d = h2f(lds16(b)), m = h2f(lds16(b + 2));
        const uint32_t q = lds32(b + 4 + 4 * t);
        bytes_f32<0>(q & 0x0F0F0F0Fu, w);
        bytes_f32<0>((q >> 4) & 0x0F0F0F0Fu, w + 4);
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = add(mul(d, w[j]), m);
    }
};
// Q5_0 (x = (q - 16) d) and Q5_1 (x = q d + m): element e's fifth bit is bit e of the 32-bit qh.
template <bool kMin> struct M5 {
    static constexpr int BE = 32, BB = kMin ? 24 : 22;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        constexpr int at = kMin ? 4 : 2; // the high bits; the nibbles after them
        const float d = h2f(lds16(b)), m = kMin ? h2f(lds16(b + 2)) : 0.0f;
        const uint32_t qh = lds32(b + at), q = lds32(b + at + 4 + 4 * t);
        const uint32_t lo = (q & 0x0F0F0F0Fu) | spread4((qh >> (4 * t)) & 15u),
                       hi = ((q >> 4) & 0x0F0F0F0Fu) | spread4((qh >> (16 + 4 * t)) & 15u);
        bytes_f32<kMin ? 0 : 16>(lo, w);
        bytes_f32<kMin ? 0 : 16>(hi, w + 4);
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = kMin ? add(mul(d, w[j]), m) : mul(d, w[j]);
    }
};
struct M8_0 {
    static constexpr int BE = 32, BB = 34;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        const float d = h2f(lds16(b));
        // int8 quants as bytes q + 128, less 128
        bytes_f32<128>(lds32(b + 2 + 4 * t) ^ 0x80808080u, w);
        bytes_f32<128>(lds32(b + 18 + 4 * t) ^ 0x80808080u, w + 4);
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = mul(w[j], d);
    }
};
// Q4_K and Q5_K: group GI is sub-block GI, in 32-byte chunk GI / 2 of the nibbles (low nibbles
// for even GI, high for odd), its fifth bits (Q5_K) bit GI of the 32 qh bytes.
template <bool kFifthBit> struct MK45 {
    static constexpr int BE = 256, BB = kFifthBit ? 176 : 144;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        constexpr int c = GI / 2, h = GI % 2, qs = kFifthBit ? 48 : 16;
        const float d = h2f(lds16(b)), dmin = h2f(lds16(b + 2));
        const uint32_t s[3] = {lds32(b + 4), lds32(b + 8), lds32(b + 12)};
        int sc, mn;
        scale_min_k4(s, GI, sc, mn);
        const float dl = mul(d, i2f(sc)), ml = mul(dmin, i2f(mn));
#pragma unroll
        for (int r = 0; r < 2; r++) {
            uint32_t v = (lds32(b + qs + 32 * c + 16 * r + 4 * t) >> (4 * h)) & 0x0F0F0F0Fu;
            if (kFifthBit) v |= ((lds32(b + 16 + 16 * r + 4 * t) >> GI) & 0x01010101u) << 4;
            bytes_f32<0>(v, w + 4 * r);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = sub(mul(dl, w[j]), ml);
    }
};
// Q6_K: group GI is weights 128 h + 32 k + l (h = GI / 4, k = GI % 4, l < 32): low nibbles of
// ql[64 h + 32 (k % 2) + l] (high ones for k >= 2), high pairs bits 2k of qh[32 h + l], scale
// sc[8 h + 2 k + l / 16].
struct M6_K {
    static constexpr int BE = 256, BB = 210;
    template <int GI> __device__ static void group(const uint8_t *b, int t, float (&w)[8])
    {
        constexpr int h = GI / 4, k = GI % 4;
        const float d = h2f(lds16(b + 208));
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int l = 16 * r + 4 * t;
            const uint32_t ql = lds32(b + 64 * h + 32 * (k % 2) + l), qh = lds32(b + 128 + 32 * h + l);
            bytes_f32<32>(((ql >> (4 * (k / 2))) & 0x0F0F0F0Fu) | (((qh >> (2 * k)) & 0x03030303u) << 4), w + 4 * r);
            const float dl = mul(d, i2f((int8_t)b[192 + 8 * h + 2 * k + r]));
#pragma unroll
            for (int j = 0; j < 4; j++) w[4 * r + j] = mul(dl, w[4 * r + j]);
        }
    }
};

// A slot's layout: a weight row's bytes (the 16-byte words covering a stage's bytes starting
// anywhere in a word, rounded up to an odd number of words for the bank spread), then x's rows;
// the stages in flight: four up to 16 rows and three at 32 (two blocks an SM either way, in
// 228 KB), three at 64 (one block an SM).
template <class Q, int NT> struct Layout {
    static constexpr int kWWords0 = (kStageK / Q::BE * Q::BB + 15 + 15) / 16;
    static constexpr int kWRow = 16 * (kWWords0 % 2 ? kWWords0 : kWWords0 + 1);
    static constexpr int kSlot = kFeat * kWRow + NT * 8 * kXRow;
    static constexpr int kStages = NT <= 2 ? 4 : 3;
    static constexpr int kBytes = kStages * kSlot;
    static_assert(kBytes <= 227 * 1024, "a block's shared memory on sm_90");
};

// cp.async of the first n (0..16) bytes of the 16-byte word at src, the rest of dst zeroed.
__device__ __forceinline__ void cp_async16_n(void *dst, const void *src, int n)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n) : "memory");
}

template <typename F, int... I> __device__ __forceinline__ void unroll_each(F &&f, std::integer_sequence<int, I...>)
{
    (f(std::integral_constant<int, I>{}), ...);
}

// Warp (mt, KH)'s share of a stage in slot (sw: weights, sx: x): groups KH, KH + 2, ... of the
// stage's nblk blocks; wa, wb: the warp's two weight rows (g, g + 8 of its m16 tile) at their
// offsets in their words.
template <class Q, int NT, int KH>
__device__ __forceinline__ void stage_mma(const uint8_t *wa, const uint8_t *wb, const uint8_t *sx, int nblk, int t,
                                          float (&acc)[NT][4])
{
    constexpr int kGpb = Q::BE / 32; // groups a block
    unroll_each(
        [&](auto i) {
            constexpr int gam = 2 * decltype(i)::value + KH, blk = gam / kGpb, gi = gam % kGpb;
            if (blk >= nblk) return; // the last stage of a row of 32-weight blocks may be short
            float va[8], vb[8];
            Q::template group<gi>(wa + blk * Q::BB, t, va);
            Q::template group<gi>(wb + blk * Q::BB, t, vb);
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const uint32_t a[4] = {pack_bf16(va[4 * s], va[4 * s + 1]), pack_bf16(vb[4 * s], vb[4 * s + 1]),
                                       pack_bf16(va[4 * s + 2], va[4 * s + 3]), pack_bf16(vb[4 * s + 2], vb[4 * s + 3])};
                const uint8_t *xp = sx + 2 * (32 * gam + 16 * s + 4 * t);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint2 bx = *reinterpret_cast<const uint2 *>(xp + nt * 8 * kXRow);
                    mma_k16(acc[nt], a, bx.x, bx.y);
                }
            }
        },
        std::make_integer_sequence<int, kGroups / 2>{});
}

// w_bytes: the matrix's bytes (its last row's covering word may reach past them: not read).
template <class Q, int NT>
__global__ void __launch_bounds__(kThreads)
    quant_mma_kernel(const uint8_t *__restrict__ w, size_t w_bytes, const __nv_bfloat16 *__restrict__ x, int ldx,
                     float *__restrict__ y, int ldy, int rows, int n_out, int k_in, int per_split,
                     float *__restrict__ work, unsigned *__restrict__ counters)
{
    pdl_let_dependents_launch();
    extern __shared__ __align__(16) uint8_t smem[];
    using L = Layout<Q, NT>;
    constexpr int kBps = kStageK / Q::BE, kWRow = L::kWRow, kWWords = kWRow / 16;
    constexpr int kSlot = L::kSlot, kStages = L::kStages, kTileRows = NT * 8;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int mt = warp & 3, kh = warp >> 2;
    const int r0 = blockIdx.x * kTileRows, f0 = blockIdx.y * kFeat;
    const int nb = k_in / Q::BE, n_stages = (nb + kBps - 1) / kBps;
    const size_t row_bytes = (size_t)nb * Q::BB;
    const int st0 = blockIdx.z * per_split, my = min(st0 + per_split, n_stages) - st0;

    // Stage st into slot: the words covering each weight row's bytes, and x's rows of the tile.
    auto load_w = [&](int st, int slot) {
        uint8_t *sw = smem + slot * kSlot;
        const int blk0 = st * kBps, nblk = min(kBps, nb - blk0);
        const size_t len = (size_t)nblk * Q::BB;
        for (int i = tid; i < kFeat * kWWords; i += kThreads) {
            const int r = i / kWWords, c = i - r * kWWords;
            if (f0 + r >= n_out) continue;
            const size_t a = (size_t)(f0 + r) * row_bytes + (size_t)blk0 * Q::BB, at = (a & ~(size_t)15) + 16 * c;
            if (at >= a + len) continue;
            const size_t left = w_bytes - at;
            cp_async16_n(sw + r * kWRow + 16 * c, w + at, left < 16 ? (int)left : 16);
        }
    };
    auto load_x = [&](int st, int slot) {
        uint8_t *sx = smem + slot * kSlot + kFeat * kWRow;
        const int blk0 = st * kBps, nblk = min(kBps, nb - blk0);
        const int k0 = blk0 * Q::BE, kl = nblk * Q::BE;
        for (int i = tid; i < kTileRows * (kStageK / 8); i += kThreads) {
            const int r = i / (kStageK / 8), c = i % (kStageK / 8);
            if (r0 + r >= rows || 8 * c >= kl) continue;
            cp_async16(sx + r * kXRow + 16 * c, x + (size_t)(r0 + r) * ldx + k0 + 8 * c);
        }
    };

    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    // The warp's weight rows and where their bytes start in a word (plus the stage's start).
    const int fa = f0 + 16 * mt + g;
    const int off_a = (int)(((size_t)fa * row_bytes) & 15), off_b = (int)(((size_t)(fa + 8) * row_bytes) & 15);

    // The first stages' weights go out before the wait for the kernel that writes x (a
    // programmatic dependent, pdl.cuh); they join the first stage's group, so every wait below
    // still covers its stage's weights.
#pragma unroll
    for (int i = 0; i < kStages - 1; i++)
        if (i < my) load_w(st0 + i, i);
    pdl_wait();
#pragma unroll
    for (int i = 0; i < kStages - 1; i++) {
        if (i < my) load_x(st0 + i, i);
        cp_async_commit();
    }
    for (int it = 0; it < my; it++) {
        cp_async_wait<kStages - 2>();
        __syncthreads(); // the slot loaded; and every warp done with the one the next load takes
        if (it + kStages - 1 < my) {
            load_w(st0 + it + kStages - 1, (it + kStages - 1) % kStages);
            load_x(st0 + it + kStages - 1, (it + kStages - 1) % kStages);
        }
        cp_async_commit();
        const int st = st0 + it, nblk = min(kBps, nb - st * kBps);
        const int so = (st * kBps * Q::BB) & 15;
        const uint8_t *sw = smem + (it % kStages) * kSlot;
        const uint8_t *wa = sw + (16 * mt + g) * kWRow + ((off_a + so) & 15),
                      *wb = sw + (16 * mt + g + 8) * kWRow + ((off_b + so) & 15);
        const uint8_t *sx = sw + kFeat * kWRow + g * kXRow;
        if (kh) stage_mma<Q, NT, 1>(wa, wb, sx, nblk, t, acc);
        else stage_mma<Q, NT, 0>(wa, wb, sx, nblk, t, acc);
    }
    cp_async_wait<0>();
    __syncthreads();

    // The odd groups' sums into the even groups' warps, always in this order.
    float *red = reinterpret_cast<float *>(smem);
    if (kh) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) red[((mt * NT + nt) * 4 + j) * 32 + lane] = acc[nt][j];
    }
    __syncthreads();
    const bool split = gridDim.z > 1;
    if (!kh) {
        float *out = split ? work + (size_t)blockIdx.z * rows * n_out : y;
        const int ld = split ? n_out : ldy;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                // c0, c1: weight row g, batch rows 2t, 2t + 1 of the n8 tile; c2, c3: row g + 8.
                const int f = fa + 8 * (j >> 1), r = r0 + nt * 8 + 2 * t + (j & 1);
                if (f < n_out && r < rows) out[(size_t)r * ld + f] = acc[nt][j] + red[((mt * NT + nt) * 4 + j) * 32 + lane];
            }
    }
    if (!split) return;

    // The last block of the tile to finish adds the ranges' sums, in range order.
    __shared__ unsigned last;
    __threadfence();
    __syncthreads();
    unsigned *counter = counters + blockIdx.x + (size_t)gridDim.x * blockIdx.y;
    if (tid == 0) last = atomicAdd(counter, 1u) == gridDim.z - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int n_rows = min(kTileRows, rows - r0), n_feat = min(kFeat, n_out - f0);
    for (int i = tid; i < n_rows * kFeat; i += kThreads) {
        const int r = r0 + i / kFeat, f = f0 + i % kFeat;
        if (f - f0 >= n_feat) continue;
        const float *p = work + (size_t)r * n_out + f;
        float s = __ldcg(p);
        for (int z = 1; z < (int)gridDim.z; z++) s += __ldcg(p + (size_t)z * rows * n_out);
        y[(size_t)r * ldy + f] = s;
    }
    if (tid == 0) *counter = 0;
}

template <class Q, int NT>
cudaError_t launch(const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int n_out, int k_in,
                   int splits, float *work, unsigned *counters, bool pdl, cudaStream_t s)
{
    constexpr int kBytes = Layout<Q, NT>::kBytes;
    cudaError_t e = raise_smem_limit_once<quant_mma_kernel<Q, NT>>(kBytes);
    if (e != cudaSuccess) return e;
    const int nb = k_in / Q::BE, n_stages = (nb + kStageK / Q::BE - 1) / (kStageK / Q::BE);
    const int per = (n_stages + splits - 1) / splits;
    const dim3 grid((rows + NT * 8 - 1) / (NT * 8), (n_out + kFeat - 1) / kFeat, (n_stages + per - 1) / per);
    if (grid.y > 65535) return cudaErrorInvalidValue;
    return launch_maybe_pdl(pdl, quant_mma_kernel<Q, NT>, grid, dim3(kThreads), kBytes, s,
                            static_cast<const uint8_t *>(w), (size_t)n_out * nb * Q::BB,
                            reinterpret_cast<const __nv_bfloat16 *>(x), ldx, y, ldy, rows, n_out, k_in, per, work,
                            counters);
}

template <class Q>
cudaError_t mma_type(const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int n_out, int k_in,
                     int splits, float *work, unsigned *counters, bool pdl, cudaStream_t s)
{
    if (k_in <= 0 || k_in % Q::BE || ldx < k_in || ldx % 8 || n_out < 1 || ldy < 1 || rows < 0 || splits < 1 ||
        splits > SK_QUANT_MMA_MAX_SPLITS || ((uintptr_t)w | (uintptr_t)x) % 16 || (splits > 1 && (!work || !counters)))
        return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    if (rows <= 8) return launch<Q, 1>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, pdl, s);
    if (rows <= 16) return launch<Q, 2>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, pdl, s);
    if (rows <= 32) return launch<Q, 4>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, pdl, s);
    return launch<Q, 8>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, pdl, s);
}

} // namespace

extern "C" int sk_quant_mma_supported(int dtype)
{
    return sk_quant_supported(dtype);
}

extern "C" size_t sk_quant_mma_counters(int rows, int n_out)
{
    if (rows < 1 || n_out < 1) return 0;
    return (size_t)((rows + kRowTile - 1) / kRowTile) * (size_t)((n_out + kFeat - 1) / kFeat);
}

extern "C" cudaError_t sk_quant_mma(int dtype, const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows,
                                    int n_out, int k_in, int splits, float *work, unsigned *counters, int pdl,
                                    cudaStream_t s)
{
    const bool p = pdl != 0;
    switch (dtype) {
    case SK_Q4_0: return mma_type<M4_0>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q4_1: return mma_type<M4_1>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q5_0: return mma_type<M5<false>>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q5_1: return mma_type<M5<true>>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q8_0: return mma_type<M8_0>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q4_K: return mma_type<MK45<false>>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q5_K: return mma_type<MK45<true>>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    case SK_Q6_K: return mma_type<M6_K>(w, x, ldx, y, ldy, rows, n_out, k_in, splits, work, counters, p, s);
    default: return cudaErrorInvalidValue;
    }
}
