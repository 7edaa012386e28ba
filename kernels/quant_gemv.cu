// sk_gemv_q and sk_gemv_q_n (kernels/sk_quant.h): small-batch products on GGUF block weights,
// dequantized in registers (the block types: quant_blocks.cuh). Every type has a path with fp32
// weights and bf16 activations; Q4_K, Q6_K and Q8_0, given a scratch, one with int8 activations
// and dp4a products (below).
//
// Lane l of a warp takes units l, l + 32, ... of its row, so a warp's loads of one step cover
// whole consecutive blocks: the reads of a row are coalesced although the blocks are not
// 16-byte aligned.
//
// Every kernel here may launch as a programmatic dependent of the one before it (pdl.cuh; the
// callers' pdl) and lets its own dependent launch at once. Before it waits for the activations,
// each warp asks L2 for the first bytes of its weight rows (warp_prefetch_rows): at batch 1 a
// product of a Q4 layer takes a few microseconds, about what its launch and its first loads'
// latency cost after the norm or the activation before it ends, and both then overlap that
// kernel. Launched the ordinary way, the wait returns at once.
#include "kernels/sk_quant.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/bf16.cuh"
#include "kernels/pdl.cuh"
#include "kernels/q8_act.cuh"
#include "kernels/quant_blocks.cuh"

namespace
{

constexpr int kWarpsPerBlock = 4; // output features per thread block
constexpr int kUnroll = 4;        // units in flight per lane
constexpr int kMaxRows = kQ8MaxRows; // batch rows per launch (the int8 scratch's)
constexpr int QK_K = 256;         // elements of a K-quant block

// Up to three matrices of one type and row length whose rows follow each other in the output
// (q, k, v; gate, up), so that one launch takes them all: matrix i has rows end[i - 1]..end[i].
struct Mats {
    const uint8_t *w[3];
    int end[3];
};
__device__ __forceinline__ const uint8_t *mat_row(const Mats &m, int n, size_t row_bytes)
{
    if (n < m.end[0]) return m.w[0] + (size_t)n * row_bytes;
    if (n < m.end[1]) return m.w[1] + (size_t)(n - m.end[0]) * row_bytes;
    return m.w[2] + (size_t)(n - m.end[1]) * row_bytes;
}

// Bytes of each weight row a warp asks L2 for before its wait: 32 lines of 128 bytes, one a lane
// (a whole row of 4096 Q4_K weights is 18 of them).
constexpr int kPrefetchRowBytes = 32 * 128;

// Lane l prefetches line l of the first kPrefetchRowBytes of each of the R rows into L2 (no
// register waits for it), then the warp waits for the kernel before it.
template <int R>
__device__ __forceinline__ void warp_prefetch_rows_then_wait(const uint8_t *const (&rows)[R], size_t row_bytes,
                                                             int lane)
{
    const size_t off = (size_t)lane * 128;
    if (off < row_bytes && off < (size_t)kPrefetchRowBytes) {
#pragma unroll
        for (int r = 0; r < R; r++) asm volatile("prefetch.global.L2 [%0];" ::"l"(rows[r] + off));
    }
    pdl_wait();
}

// The warp's sums of each row into y[m * ldy + n].
template <int M> __device__ __forceinline__ void store_rows(float *acc, float *y, int ldy, int n, int lane)
{
#pragma unroll
    for (int m = 0; m < M; m++) {
        float r = acc[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
        if (lane == 0) y[(size_t)m * ldy + n] = r;
    }
}

template <class Q, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_q_kernel(const Mats w, const __nv_bfloat16 *__restrict__ x, int ldx, float *__restrict__ y, int ldy, int k_in)
{
    pdl_let_dependents_launch();
    const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (n >= w.end[2]) return;
    const int nb = k_in / Q::BE, units = nb * Q::UPB;
    const uint8_t *const rows[1] = {mat_row(w, n, (size_t)nb * Q::BB)};
    const uint8_t *row = rows[0];
    warp_prefetch_rows_then_wait<1>(rows, (size_t)nb * Q::BB, lane);
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.0f;
    for (int base = lane; base < units; base += 32 * kUnroll) {
#pragma unroll
        for (int r = 0; r < kUnroll; r++) {
            const int unit = base + 32 * r;
            if (unit >= units) break;
            const int blk = unit / Q::UPB;
            float wv[4 * Q::RUNS];
            int off[Q::RUNS];
            Q::decode(row + (size_t)blk * Q::BB, unit - blk * Q::UPB, wv, off);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const __nv_bfloat16 *xm = x + (size_t)m * ldx + (size_t)blk * Q::BE;
#pragma unroll
                for (int g = 0; g < Q::RUNS; g++) {
                    const uint2 xv = __ldg(reinterpret_cast<const uint2 *>(xm + off[g]));
                    float x0, x1, x2, x3;
                    bf16x2_to_f32(xv.x, x0, x1);
                    bf16x2_to_f32(xv.y, x2, x3);
                    acc[m] = fmaf(wv[4 * g], x0, acc[m]);
                    acc[m] = fmaf(wv[4 * g + 1], x1, acc[m]);
                    acc[m] = fmaf(wv[4 * g + 2], x2, acc[m]);
                    acc[m] = fmaf(wv[4 * g + 3], x3, acc[m]);
                }
            }
        }
    }
    store_rows<M>(acc, y, ldy, n, lane);
}

// --- Q4_K with int8 activations -------------------------------------------------------------
// Converting Q4_K's nibbles to floats one by one costs more instructions than the memory time
// of their bytes; with the activations in int8 (per 32 of them a scale sx = max|x| / 127 and
// sx times the sum of their quants, as llama.cpp's q8_1) four nibbles times four activations are
// one dp4a. A lane takes 16 bytes of a block's nibbles (one 16-byte load; Q4_K's 144-byte blocks
// keep them aligned): 16 weights of sub-block 2c and 16 of 2c + 1; eight lanes cover a block, a
// warp four consecutive blocks a step. A sub-block's minimum, times the sum of its 32
// activations, is counted by the first of its two lanes.

constexpr int kXBlock = kQ8Group; // activations per int8 scale (q8_act.cuh)

// One warp a group of 32 (one value a lane).
__global__ void __launch_bounds__(256) quantize_x_kernel(const __nv_bfloat16 *__restrict__ x, int ldx, int k_in,
                                                         int rows, int8_t *__restrict__ xq, float2 *__restrict__ xd)
{
    pdl_let_dependents_launch();
    pdl_wait();
    const int nxb = k_in / kXBlock, lane = threadIdx.x & 31;
    const int64_t gb = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (gb >= (int64_t)rows * nxb) return;
    const int r = (int)(gb / nxb), xb = (int)(gb - (int64_t)r * nxb);
    const float v[1] = {__bfloat162float(x[(size_t)r * ldx + (size_t)xb * kXBlock + lane])};
    const q8_run<1> q = q8_quantize<32>(v);
    xq[(size_t)r * k_in + (size_t)xb * kXBlock + lane] = (int8_t)(q.q[0] & 0xffu);
    if (lane == 0) xd[(size_t)r * nxb + xb] = q.pair;
}

// Output rows a warp of the dp4a kernels takes at m batch rows. Each row's step reads a few bytes
// of its weights and, per batch row, the matching int8 activations and their scales from L1:
// with one row a warp those reads are two to three times the weights' bytes per batch row, so
// that at eight batch rows the L1 and the dp4a rather than the memory set the time. Four rows a
// warp apply each activation load to four rows (a quarter of those reads); at batch 1 one row a
// warp keeps the most warps for the short rows, whose reads are then all in flight at once.
constexpr int dp4a_rows_per_warp(int m)
{
    return m == 1 ? 1 : m == 2 ? 2 : 4;
}

// The first of the R output rows of this warp, and each row's bytes at offset off of the row
// (rows past the end read the last row, so that loads stay in bounds, and are not stored). Asks
// L2 for the rows' first bytes and returns once the kernel before this one has finished.
template <int R>
__device__ __forceinline__ int warp_rows(const Mats &w, size_t row_bytes, int off, const uint8_t *(&rows)[R])
{
    const int n0 = (blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5)) * R;
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = mat_row(w, n0 + r < w.end[2] ? n0 + r : w.end[2] - 1, row_bytes);
    warp_prefetch_rows_then_wait<R>(rows, row_bytes, threadIdx.x & 31);
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] += off;
    return n0;
}

// The warp's sums acc[m][r] into y[m * ldy + n0 + r] for the rows that exist.
template <int M, int R>
__device__ __forceinline__ void store_warp_rows(float (&acc)[M][R], float *y, int ldy, int n0, int end, int lane)
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        float col[M];
#pragma unroll
        for (int m = 0; m < M; m++) col[m] = acc[m][r];
        if (n0 + r < end) store_rows<M>(col, y, ldy, n0 + r, lane);
    }
}

// A lane's share of a Q4_K block: 16 bytes of nibbles (16 weights of sub-block 2c, low nibbles,
// and 16 of 2c + 1, high) with their sub-blocks' scales (dl) and minimums (ml: 0 on the second
// lane of a pair, whose first lane counts them).
struct Q4kLane {
    int lo[4], hi[4];
    float dl0, dl1, ml0, ml1;
};

// The masks that take sub-blocks 2c and 2c + 1's 6-bit scales and minimums out of the scale
// words (llama.cpp's way): for c < 2 the low 6 bits of bytes 2c, 2c + 1 (scales) and 4 + 2c, 5 + 2c
// (minimums); for c >= 2 the nibbles of bytes 4 + 2c, 5 + 2c with the top 2 bits of bytes
// 2c - 4, 2c - 3 (scales) and 2c, 2c + 1 (minimums). Lane constants, so that the decoding in the
// loop is masks and shifts, without a branch or indexed registers.
struct Q4kMasks {
    int sh;          // 0 or 16: the half of each scale word holding the pair
    uint32_t low6;   // 0x3f3f for c < 2
    uint32_t top2;   // 0x3030 for c >= 2: bits 6-7 of a byte moved to 4-5
    uint32_t nibble; // 0x0f0f for c >= 2
};
__device__ __forceinline__ Q4kMasks q4k_masks(int c)
{
    return Q4kMasks{16 * (c & 1), c < 2 ? 0x3f3fu : 0u, c < 2 ? 0u : 0x3030u, c < 2 ? 0u : 0x0f0fu};
}

// hdr: the block's first 16 bytes (d, dmin, 12 scale bytes), one load.
__device__ __forceinline__ void q4k_lane(const uint4 hdr, const uint4 q, const Q4kMasks &k, int hf, Q4kLane &o)
{
    const uint32_t a = hdr.y >> k.sh, b = hdr.z >> k.sh, e = hdr.w >> k.sh;
    // low byte: sub-block 2c, high byte: 2c + 1
    const uint32_t scp = (a & k.low6) | ((a >> 2) & k.top2) | (e & k.nibble);
    const uint32_t mp = (b & k.low6) | ((b >> 2) & k.top2) | ((e >> 4) & k.nibble);
    const float d = h2f(hdr.x), dmin = h2f(hdr.x >> 16);
    o.dl0 = d * i2f((int)(scp & 0xffu));
    o.dl1 = d * i2f((int)(scp >> 8));
    o.ml0 = hf ? 0.0f : dmin * i2f((int)(mp & 0xffu));
    o.ml1 = hf ? 0.0f : dmin * i2f((int)(mp >> 8));
    const uint32_t qs[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        o.lo[i] = (int)(qs[i] & 0x0F0F0F0Fu);
        o.hi[i] = (int)((qs[i] >> 4) & 0x0F0F0F0Fu);
    }
}

// R consecutive output rows per warp (dp4a_rows_per_warp), M batch rows. Eight lanes a block, a
// warp four consecutive blocks of each of its rows a step; a step's weight loads (two 16-byte
// loads a row) come first, then each batch row's activations once for the R rows.
template <int M, int R>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_q4k_dp4a_kernel(const Mats w, const int8_t *__restrict__ xq, const float4 *__restrict__ xd4,
                         float *__restrict__ y, int ldy, int k_in)
{
    pdl_let_dependents_launch();
    const int lane = threadIdx.x & 31, nb = k_in / Q4_K::BE, nxb4 = k_in / (2 * kXBlock);
    const int bi = lane >> 3, v = lane & 7, c = v >> 1, hf = v & 1;
    const uint8_t *rows[R];
    const int n0 = warp_rows<R>(w, (size_t)nb * Q4_K::BB, 16 + 32 * c + 16 * hf, rows);
    if (n0 >= w.end[2]) return;
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[m][r] = 0.0f;
    const int8_t *xl = xq + 64 * c + 16 * hf;
    const Q4kMasks masks = q4k_masks(c);
#pragma unroll(R == 1 ? 4 : 2)
    for (int blk = bi; blk < nb; blk += 4) {
        Q4kLane wl[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint8_t *qp = rows[r] + (size_t)blk * Q4_K::BB;
            const uint4 q = __ldg(reinterpret_cast<const uint4 *>(qp));
            const uint4 hdr = __ldg(reinterpret_cast<const uint4 *>(qp - (16 + 32 * c + 16 * hf)));
            q4k_lane(hdr, q, masks, hf, wl[r]);
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            const int8_t *xm = xl + (size_t)m * k_in + (size_t)blk * Q4_K::BE;
            const int4 x0 = __ldg(reinterpret_cast<const int4 *>(xm)), x1 = __ldg(reinterpret_cast<const int4 *>(xm + 32));
            const float4 xs = __ldg(xd4 + (size_t)m * nxb4 + blk * 4 + c); // sub-blocks 2c, 2c + 1
#pragma unroll
            for (int r = 0; r < R; r++) {
                int s0 = __dp4a(wl[r].lo[0], x0.x, 0);
                s0 = __dp4a(wl[r].lo[1], x0.y, s0);
                s0 = __dp4a(wl[r].lo[2], x0.z, s0);
                s0 = __dp4a(wl[r].lo[3], x0.w, s0);
                int s1 = __dp4a(wl[r].hi[0], x1.x, 0);
                s1 = __dp4a(wl[r].hi[1], x1.y, s1);
                s1 = __dp4a(wl[r].hi[2], x1.z, s1);
                s1 = __dp4a(wl[r].hi[3], x1.w, s1);
                acc[m][r] += wl[r].dl0 * xs.x * i2f(s0) + wl[r].dl1 * xs.z * i2f(s1) -
                             (wl[r].ml0 * xs.y + wl[r].ml1 * xs.w);
            }
        }
    }
    store_warp_rows<M, R>(acc, y, ldy, n0, w.end[2], lane);
}


// Q8_0 with int8 activations: its quants are int8 already and its blocks of 32 are the
// activations' blocks. A lane takes 8 quant bytes of each of the warp's R rows (two 4-byte values
// from 2-byte aligned loads), four lanes a block, a warp eight consecutive blocks a step; each
// batch row's activations (8 bytes and a scale) are loaded once for the R rows.
template <int M, int R>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_q8_0_dp4a_kernel(const Mats w, const int8_t *__restrict__ xq, const float2 *__restrict__ xd,
                          float *__restrict__ y, int ldy, int k_in)
{
    pdl_let_dependents_launch();
    const int lane = threadIdx.x & 31, nb = k_in / Q8_0::BE, bi = lane >> 2, v = lane & 3;
    const uint8_t *rows[R];
    const int n0 = warp_rows<R>(w, (size_t)nb * Q8_0::BB, 2 + 8 * v, rows);
    if (n0 >= w.end[2]) return;
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[m][r] = 0.0f;
#pragma unroll 2
    for (int blk = bi; blk < nb; blk += 8) {
        float d[R];
        int q0[R], q1[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint8_t *qp = rows[r] + (size_t)blk * Q8_0::BB;
            d[r] = h2f(ld16(qp - (2 + 8 * v)));
            q0[r] = (int)ld32_2(qp);
            q1[r] = (int)ld32_2(qp + 4);
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            const int2 xv =
                __ldg(reinterpret_cast<const int2 *>(xq + (size_t)m * k_in + (size_t)blk * Q8_0::BE + 8 * v));
            const float sx = __ldg(xd + (size_t)m * nb + blk).x;
#pragma unroll
            for (int r = 0; r < R; r++) acc[m][r] += d[r] * sx * i2f(__dp4a(q1[r], xv.y, __dp4a(q0[r], xv.x, 0)));
        }
    }
    store_warp_rows<M, R>(acc, y, ldy, n0, w.end[2], lane);
}

// Q6_K with int8 activations: a lane takes elements 128h + 32k + 4v + j of a block (k, j < 4:
// four runs of four, h and v from the lane), its quants (0..63) packed four to a word from the
// low nibbles and high pairs, each run one dp4a less 32 times the run's activation sum (another
// dp4a, once for the R rows); 2-byte aligned loads (210-byte blocks). Sixteen lanes a block, a
// warp two blocks of each of its R rows a step.
template <int M, int R>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_q6k_dp4a_kernel(const Mats w, const int8_t *__restrict__ xq, const float2 *__restrict__ xd,
                         float *__restrict__ y, int ldy, int k_in)
{
    pdl_let_dependents_launch();
    const int lane = threadIdx.x & 31, nb = k_in / Q6_K::BE, nxb = k_in / kXBlock;
    const int bi = lane >> 4, h = (lane >> 3) & 1, v = lane & 7;
    const uint8_t *rows[R];
    const int n0 = warp_rows<R>(w, (size_t)nb * Q6_K::BB, 0, rows);
    if (n0 >= w.end[2]) return;
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[m][r] = 0.0f;
#pragma unroll 2
    for (int blk = bi; blk < nb; blk += 2) {
        int q[R][4];
        float dl[R][4];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint8_t *bp = rows[r] + (size_t)blk * Q6_K::BB;
            const uint32_t ql0 = ld32_2(bp + 64 * h + 4 * v), ql1 = ld32_2(bp + 64 * h + 32 + 4 * v),
                           qh = ld32_2(bp + 128 + 32 * h + 4 * v);
            const float d = h2f(ld16(bp + 208));
            const int8_t *sc = reinterpret_cast<const int8_t *>(bp + 192 + 8 * h + (v >> 2));
#pragma unroll
            for (int k = 0; k < 4; k++) {
                q[r][k] = (int)(((((k & 1) ? ql1 : ql0) >> (4 * (k >> 1))) & 0x0F0F0F0Fu) |
                                (((qh >> (2 * k)) & 0x03030303u) << 4));
                dl[r][k] = d * i2f(__ldg(sc + 2 * k));
            }
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            const int8_t *xm = xq + (size_t)m * k_in + (size_t)blk * Q6_K::BE + 128 * h + 4 * v;
            // the scales of sub-blocks 4h .. 4h + 3: two 16-byte loads
            const float4 *xdm = reinterpret_cast<const float4 *>(xd + (size_t)m * nxb + (size_t)blk * 8 + 4 * h);
            const float4 xs01 = __ldg(xdm), xs23 = __ldg(xdm + 1);
            const float sx[4] = {xs01.x, xs01.z, xs23.x, xs23.z};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int xv = __ldg(reinterpret_cast<const int *>(xm + 32 * k));
                const int xsum32 = 32 * __dp4a(0x01010101, xv, 0);
#pragma unroll
                for (int r = 0; r < R; r++) acc[m][r] += dl[r][k] * sx[k] * i2f(__dp4a(q[r][k], xv, 0) - xsum32);
            }
        }
    }
    store_warp_rows<M, R>(acc, y, ldy, n0, w.end[2], lane);
}

// Q4_K, Q6_K or Q8_0 with int8 activations for M batch rows: the kernel and its grid for the rows
// per warp.
template <int M>
cudaError_t launch_dp4a(int dtype, const Mats &w, const int8_t *xq, const float2 *xd, float *y, int ldy, int k_in,
                        bool pdl, cudaStream_t s)
{
    constexpr int R = dp4a_rows_per_warp(M);
    const dim3 grid((w.end[2] + kWarpsPerBlock * R - 1) / (kWarpsPerBlock * R)), block(kWarpsPerBlock * 32);
    if (dtype == SK_Q4_K)
        return launch_maybe_pdl(pdl, gemv_q4k_dp4a_kernel<M, R>, grid, block, 0, s, w, xq,
                                reinterpret_cast<const float4 *>(xd), y, ldy, k_in);
    if (dtype == SK_Q6_K)
        return launch_maybe_pdl(pdl, gemv_q6k_dp4a_kernel<M, R>, grid, block, 0, s, w, xq, xd, y, ldy, k_in);
    return launch_maybe_pdl(pdl, gemv_q8_0_dp4a_kernel<M, R>, grid, block, 0, s, w, xq, xd, y, ldy, k_in);
}

// m (<= kMaxRows) rows of x in int8 into xq, xd.
cudaError_t quantize_x(const uint16_t *x, int ldx, int m, int k_in, int8_t *xq, float2 *xd, bool pdl, cudaStream_t s)
{
    const int64_t xblocks = (int64_t)m * (k_in / kXBlock);
    return launch_maybe_pdl(pdl, quantize_x_kernel, dim3((unsigned)((xblocks + 7) / 8)), dim3(256), 0, s,
                            reinterpret_cast<const __nv_bfloat16 *>(x), ldx, k_in, m, xq, xd);
}

// Q4_K, Q6_K or Q8_0 with int8 activations, 8 rows at a time: quantize them into scratch (unless x_ready),
// then the product (the next chunk's quantization waits for it: same stream).
cudaError_t gemv_dp4a(int dtype, const Mats &w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int k_in,
                      void *scratch, bool x_ready, bool pdl, cudaStream_t s)
{
    const bool q4k = dtype == SK_Q4_K, q6k = dtype == SK_Q6_K;
    if (k_in % (q4k || q6k ? QK_K : Q8_0::BE) || (uintptr_t)scratch % 16 || ldx < k_in) return cudaErrorInvalidValue;
    for (int i = 0; i < 3; i++)
        if ((uintptr_t)w.w[i] % (q4k ? 16 : 2)) return cudaErrorInvalidValue;
    int8_t *xq = q8_quants(scratch);
    float2 *xd = q8_pairs(scratch, k_in);
    for (int m0 = 0; m0 < rows; m0 += kMaxRows) {
        const int m = rows - m0 < kMaxRows ? rows - m0 : kMaxRows;
        cudaError_t e = cudaSuccess;
        if (!x_ready || rows > kMaxRows) e = quantize_x(x + (size_t)m0 * ldx, ldx, m, k_in, xq, xd, pdl, s);
        if (e != cudaSuccess) return e;
        float *ym = y + (size_t)m0 * ldy;
        switch (m) {
        case 1: e = launch_dp4a<1>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 2: e = launch_dp4a<2>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 3: e = launch_dp4a<3>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 4: e = launch_dp4a<4>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 5: e = launch_dp4a<5>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 6: e = launch_dp4a<6>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        case 7: e = launch_dp4a<7>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        default: e = launch_dp4a<8>(dtype, w, xq, xd, ym, ldy, k_in, pdl, s); break;
        }
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

// The other types (and these two without a scratch): weights dequantized to fp32 in registers.
template <class Q>
cudaError_t gemv_type(const Mats &w, const uint16_t *x, int ldx, float *y, int ldy, int rows, int k_in, bool pdl,
                      cudaStream_t s)
{
    for (int i = 0; i < 3; i++)
        if (!shape_ok<Q>(w.w[i], k_in)) return cudaErrorInvalidValue;
    if (ldx % 4 || (uintptr_t)x % 8 || ldx < k_in) return cudaErrorInvalidValue;
    const dim3 grid((w.end[2] + kWarpsPerBlock - 1) / kWarpsPerBlock), block(kWarpsPerBlock * 32);
    for (int m0 = 0; m0 < rows; m0 += kMaxRows) {
        const int m = rows - m0 < kMaxRows ? rows - m0 : kMaxRows;
        const __nv_bfloat16 *xm = reinterpret_cast<const __nv_bfloat16 *>(x) + (size_t)m0 * ldx;
        float *ym = y + (size_t)m0 * ldy;
        void (*kernel)(const Mats, const __nv_bfloat16 *, int, float *, int, int);
        switch (m) {
        case 1: kernel = gemv_q_kernel<Q, 1>; break;
        case 2: kernel = gemv_q_kernel<Q, 2>; break;
        case 3: kernel = gemv_q_kernel<Q, 3>; break;
        case 4: kernel = gemv_q_kernel<Q, 4>; break;
        case 5: kernel = gemv_q_kernel<Q, 5>; break;
        case 6: kernel = gemv_q_kernel<Q, 6>; break;
        case 7: kernel = gemv_q_kernel<Q, 7>; break;
        default: kernel = gemv_q_kernel<Q, 8>; break;
        }
        cudaError_t e = launch_maybe_pdl(pdl, kernel, grid, block, 0, s, w, xm, ldx, ym, ldy, k_in);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

} // namespace

// The types of every launcher in sk_quant.h (the gemv's, sk_dequant_bf16's and sk_embed_q's: the
// decoders of quant_blocks.cuh); kept beside the gemv, which the CUDA backend asks about first.
extern "C" int sk_quant_supported(int dtype)
{
    switch (dtype) {
    case SK_Q4_0:
    case SK_Q4_1:
    case SK_Q5_0:
    case SK_Q5_1:
    case SK_Q8_0:
    case SK_Q4_K:
    case SK_Q5_K:
    case SK_Q6_K: return 1;
    default: return 0;
    }
}

extern "C" size_t sk_gemv_q_scratch_bytes(int k_in)
{
    return k_in > 0 ? (size_t)kMaxRows * ((size_t)k_in + (size_t)(k_in / kXBlock) * sizeof(float2)) : 0;
}

extern "C" cudaError_t sk_gemv_q_quantize_x(const uint16_t *x, int ldx, int rows, int k_in, void *scratch,
                                            cudaStream_t s)
{
    if (rows < 1 || rows > kMaxRows || k_in < kXBlock || k_in % kXBlock || ldx < k_in || (uintptr_t)scratch % 16)
        return cudaErrorInvalidValue;
    return quantize_x(x, ldx, rows, k_in, q8_quants(scratch), q8_pairs(scratch, k_in), true, s);
}

extern "C" int sk_gemv_q_int8(int dtype)
{
    return dtype == SK_Q4_K || dtype == SK_Q6_K || dtype == SK_Q8_0;
}

extern "C" cudaError_t sk_gemv_q_n(int dtype, int n_mats, const void *const *w, const int *n_out, const uint16_t *x,
                                   int ldx, float *y, int ldy, int rows, int k_in, void *scratch, int x_ready,
                                   int pdl, cudaStream_t s)
{
    if (n_mats < 1 || n_mats > 3 || rows < 0 || k_in < 1) return cudaErrorInvalidValue;
    Mats m;
    int end = 0;
    for (int i = 0; i < 3; i++) {
        const int k = i < n_mats ? i : n_mats - 1;
        if (i < n_mats) {
            if (n_out[i] < 1 || (int64_t)end + n_out[i] > INT32_MAX) return cudaErrorInvalidValue;
            end += n_out[i];
        }
        m.w[i] = static_cast<const uint8_t *>(w[k]);
        m.end[i] = end;
    }
    if (rows == 0) return cudaSuccess;
    if (sk_gemv_q_int8(dtype) && scratch)
        return gemv_dp4a(dtype, m, x, ldx, y, ldy, rows, k_in, scratch, x_ready, pdl != 0, s);
    switch (dtype) {
    case SK_Q4_0: return gemv_type<Q4_0>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q4_1: return gemv_type<Q4_1>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q5_0: return gemv_type<Q5_0>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q5_1: return gemv_type<Q5_1>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q8_0: return gemv_type<Q8_0>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q4_K: return gemv_type<Q4_K>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q5_K: return gemv_type<Q5_K>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    case SK_Q6_K: return gemv_type<Q6_K>(m, x, ldx, y, ldy, rows, k_in, pdl != 0, s);
    default: return cudaErrorInvalidValue;
    }
}

extern "C" cudaError_t sk_gemv_q(int dtype, const void *w, const uint16_t *x, int ldx, float *y, int ldy, int rows,
                                 int n_out, int k_in, void *scratch, int x_ready, int pdl, cudaStream_t s)
{
    return sk_gemv_q_n(dtype, 1, &w, &n_out, x, ldx, y, ldy, rows, k_in, scratch, x_ready, pdl, s);
}
