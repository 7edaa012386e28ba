// Prefill attention on the tensor cores, in the manner of FlashAttention-2. A block of 4 warps
// owns one query head and one tile of up to 64 consecutive query tokens of one sequence; warp w
// owns query rows 16w..16w+15 and keeps all of their state in registers: Q as mma A fragments,
// the scores of one 64-key tile, the running maxima and sums, and the output accumulators.
// K and V tiles of 64 keys are gathered from the paged cache with cp.async into two stages of
// shared memory, the next tile in flight while this one is used. Per key tile and warp:
//   S = Q K^T with mma.m16n8k16 (K fragments by ldmatrix);
//   the causal mask where the tile reaches past the warp's first query;
//   the online softmax in the log2 domain (log2(e) is folded into Q's scale), row maxima shared
//     by the 4 lanes of a row through shuffles;
//   P rounded to bf16 straight from the score accumulators, which are laid out as the A
//     fragments of P V need (no trip through shared memory);
//   O += P V with mma.m16n8k16 (V fragments by transposed ldmatrix).
// The previous version (WMMA, with S, P and O kept in shared memory and plain loads) was several
// times slower; docs/performance.md has the comparison.
// Soft-capping and a sliding window are compiled into a second instance of the kernel (EXT), so
// that the common one keeps its registers: with a window the key tiles start at the window of the
// block's first query (no key or block-table entry before it is read), a warp skips the tiles
// wholly before its rows' windows, and each row masks the keys before its own.
// An FP8 cache (--kv-cache-dtype fp8) is a third parameter (FP8). Its tiles are gathered as
// e4m3 codes with cp.async into two stages of their own, half the bytes, and once a tile has
// landed the block converts it into one bf16 tile, where the loop above reads it as it reads a
// bf16 cache's: the gather stays asynchronous (no registers hold a tile in flight, which this
// kernel's register budget has no room for), and conversion costs a pass over shared memory per
// tile, little beside the tile's 64 x 64 x D multiply-adds per warp. K's scale goes into q's, V's
// onto the output.
// head_dim 256 (Gemma 2 and 3) would need 64 registers a thread for Q's fragments and 128 for the
// output's: with the scores that is past the 255 a thread has. Its instance (QS) keeps Q in shared
// memory instead, each warp its own 16 rows, and loads a k-step's fragments with ldmatrix where
// they are used, as FlashAttention-2 does at this size; its key tiles are 32 keys (kTileKeys), so
// that two stages of K and V and the Q tile (99 KB) leave room for two blocks an SM, which its
// registers allow too (at most 255 a thread under __launch_bounds__(128, 2)).
#include "kernels/attention_common.cuh"
#include "kernels/bf16.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/mma.cuh"
#include "kernels/smem_limit.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>
#include <math.h>

namespace
{

constexpr int kBQ = SK_PREFILL_TILE; // query rows per block
constexpr int kWarps = 4;
static_assert(kBQ == 16 * kWarps, "each warp owns 16 query rows");
// Q in shared memory rather than in registers (head_dim 256: above), and keys per tile.
template <int D> constexpr bool kQShared = D > 128;
template <int D> constexpr int kTileKeys = kQShared<D> ? 32 : 64;

template <int D, bool FP8 = false> struct PrefillSmem {
    // Rows of D bf16 padded by 16 bytes: the 8 row addresses of an ldmatrix then fall on 8
    // different 4-bank groups.
    static constexpr int ld = D + 8;
    static constexpr int tile = kTileKeys<D> * ld; // elements of one K (or V) tile
    // Two stages of K and V in bf16; FP8: one K and V tile in bf16, then two stages of K and V
    // codes (D bytes a key, unpadded) from raw_at on.
    static constexpr int raw_tile = kTileKeys<D> * D;
    static constexpr int raw_at = 2 * tile * 2;
    static constexpr int kv_bytes = FP8 ? raw_at + 2 * 2 * raw_tile : 2 * 2 * tile * 2;
    // kQShared: then the block's kBQ rows of Q in bf16, padded as K's.
    static constexpr int q_at = kv_bytes;
    static constexpr int bytes = kv_bytes + (kQShared<D> ? kBQ * ld * 2 : 0);
};

// Resident blocks per SM: 3 at D = 128 (168 registers; 2 blocks at the 174 it would take
// otherwise ran slower: docs/performance.md), 4 at D = 64, 2 at D = 256 (shared memory: above).
template <int D> constexpr int kMinBlocks = D == 64 ? 4 : D == 128 ? 3 : 2;

// EXT: p.softcap and p.window are honoured (otherwise both must be 0). FP8: the caches hold e4m3
// codes.
template <int D, bool EXT, bool FP8>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks<D>)
    prefill_kernel(const float *q, const kv_elem_t<FP8> *k_cache, const kv_elem_t<FP8> *v_cache,
                   const int32_t *block_tables, const int32_t *tiles, const int32_t *pos, __nv_bfloat16 *out,
                   sk_attn_params p)
{
    using L = PrefillSmem<D, FP8>;
    constexpr bool QS = kQShared<D>;
    constexpr int kBK = kTileKeys<D>; // keys per tile
    constexpr int KS = D / 16;  // k-steps of Q K^T
    constexpr int NT = kBK / 8; // 8-key column tiles of S
    constexpr int OT = D / 8;   // 8-wide column tiles of O
    constexpr int VPR = D / 8;  // 16-byte pieces per K or V row
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *stages = reinterpret_cast<__nv_bfloat16 *>(smem); // stage s: K, then V

    const int h = blockIdx.x, tile = blockIdx.y;
    const int t0 = tiles[3 * tile], n = tiles[3 * tile + 1], seq = tiles[3 * tile + 2];
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3; // mma fragment coordinates
    const int p0 = pos[t0];
    const int n_keys = p0 + n; // keys 0 .. the last query's position
    const int k0 = EXT ? attn_first_key(p, p0) : 0; // the first query's first key
    const int32_t *bt = block_tables + (int64_t)seq * p.bt_stride;
    const int64_t head_stride = (int64_t)SK_KV_BLOCK * D;

    // Keys past n_keys are zero-filled: their cache slots may hold anything, NaN included, and
    // P V multiplies them (by zero weights, which NaN would survive).
    auto load_tile = [&](int kt, int stage) {
        if constexpr (FP8) {
            // Codes, zero-filled likewise (code 0 is 0).
            uint8_t *ks = smem + L::raw_at + 2 * stage * L::raw_tile, *vs = ks + L::raw_tile;
            for (int i = threadIdx.x; i < kBK * D / 16; i += kWarps * 32) {
                const int r = i / (D / 16), c = (i % (D / 16)) * 16, j = kt + r;
                const bool live = j < n_keys;
                const int64_t off = live ? ((int64_t)bt[j / SK_KV_BLOCK] * p.n_kv_heads + kvh) * head_stride +
                                               (int64_t)(j % SK_KV_BLOCK) * D + c
                                         : 0;
                cp_async16_or_zero(ks + r * D + c, k_cache + off, live);
                cp_async16_or_zero(vs + r * D + c, v_cache + off, live);
            }
        } else {
            __nv_bfloat16 *ks = stages + 2 * stage * L::tile, *vs = ks + L::tile;
            for (int i = threadIdx.x; i < kBK * VPR; i += kWarps * 32) {
                const int r = i / VPR, c = (i % VPR) * 8, j = kt + r;
                const bool live = j < n_keys;
                const int64_t off = live ? ((int64_t)bt[j / SK_KV_BLOCK] * p.n_kv_heads + kvh) * head_stride +
                                               (int64_t)(j % SK_KV_BLOCK) * D + c
                                         : 0;
                cp_async16_or_zero(ks + r * L::ld + c, k_cache + off, live);
                cp_async16_or_zero(vs + r * L::ld + c, v_cache + off, live);
            }
        }
        cp_async_commit();
    };
    // FP8: the landed stage's codes into the bf16 tile, 8 a thread at a time (unrolled as far as
    // the registers of the loop around it leave room).
    [[maybe_unused]] auto convert_tile = [&](int stage) {
        const uint8_t *raw = smem + L::raw_at + 2 * stage * L::raw_tile;
#pragma unroll(D >= 128 ? 1 : 2)
        for (int i = threadIdx.x; i < 2 * kBK * D / 8; i += kWarps * 32) {
            const int kv = i / (kBK * D / 8), r = (i / (D / 8)) % kBK, c = (i % (D / 8)) * 8;
            const uint2 w = *reinterpret_cast<const uint2 *>(raw + kv * L::raw_tile + r * D + c);
            *reinterpret_cast<uint4 *>(stages + kv * L::tile + r * L::ld + c) = kv_e4m3x8_to_bf16x8(w);
        }
    };
    const int n_tiles = (n_keys + kBK - 1) / kBK; // the common kernel's tiles (k0 is 0 there)
    load_tile(k0, 0);

    // This lane's two query rows; rows past n repeat the last one (computed, never written).
    const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
    const int qpos_lo = p0 + min(r_lo, n - 1), qpos_hi = p0 + min(r_hi, n - 1);
    const bool warp_live = warp * 16 < n;
    const int warp_first = p0 + warp * 16, warp_last = p0 + min(warp * 16 + 15, n - 1);
    // QS: the warp's rows of Q in shared memory, its lane's ldmatrix address for the A fragment of
    // k-step 0 (matrices: rows 0-7 and 8-15 of dimensions 0-7, then of 8-15).
    [[maybe_unused]] const __nv_bfloat16 *q_frag =
        reinterpret_cast<const __nv_bfloat16 *>(smem + L::q_at) +
        (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::ld + (lane >> 4) * 8;
    uint32_t qa[QS ? 1 : KS][4];
    {
        // Scores in log2 units; soft-capped, divided by the cap (attn_tanh's argument).
        const float sscale = FP8 ? p.scale * p.k_scale : p.scale;
        const float qs = EXT && p.softcap > 0 ? sscale / p.softcap : sscale * 1.4426950408889634f;
        if constexpr (QS) {
            // Rows past n repeat the last one, as below; only this warp reads its rows.
            __nv_bfloat16 *qw = reinterpret_cast<__nv_bfloat16 *>(smem + L::q_at) + warp * 16 * L::ld;
#pragma unroll 4
            for (int i = lane; i < 16 * D / 4; i += 32) {
                const int r = i / (D / 4), c = (i % (D / 4)) * 4;
                const float4 v = *reinterpret_cast<const float4 *>(
                    q + ((int64_t)(t0 + min(warp * 16 + r, n - 1)) * p.n_heads + h) * D + c);
                *reinterpret_cast<uint2 *>(qw + r * L::ld + c) =
                    make_uint2(pack_bf16(v.x * qs, v.y * qs), pack_bf16(v.z * qs, v.w * qs));
            }
            __syncwarp();
        }
        const float *qlo = q + ((int64_t)(t0 + min(r_lo, n - 1)) * p.n_heads + h) * D;
        const float *qhi = q + ((int64_t)(t0 + min(r_hi, n - 1)) * p.n_heads + h) * D;
#pragma unroll
        for (int ks = 0; !QS && ks < KS; ks++) {
            const int c = ks * 16 + 2 * tq;
            const float2 a = *reinterpret_cast<const float2 *>(qlo + c), b = *reinterpret_cast<const float2 *>(qhi + c);
            const float2 e = *reinterpret_cast<const float2 *>(qlo + c + 8),
                         f = *reinterpret_cast<const float2 *>(qhi + c + 8);
            qa[ks][0] = pack_bf16(a.x * qs, a.y * qs);
            qa[ks][1] = pack_bf16(b.x * qs, b.y * qs);
            qa[ks][2] = pack_bf16(e.x * qs, e.y * qs);
            qa[ks][3] = pack_bf16(f.x * qs, f.y * qs);
        }
    }

    float o[OT][4];
#pragma unroll
    for (int i = 0; i < OT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    // Running maxima (log2 units) and this lane's share of the row sums (the 4 lanes of a row
    // add theirs at the end; they apply the same corrections, so the shares stay consistent).
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

    // Tile it holds keys kt = k0 + 64 it ... The common kernel counts tiles, EXT keys: each form is
    // the one ptxas fits in its kernel's registers without spilling.
    for (int it = 0, k_it = k0; EXT ? k_it < n_keys : it < n_tiles; it++, k_it += kBK) {
        const int kt = EXT ? k_it : it * kBK;
        if (EXT ? kt + kBK < n_keys : it + 1 < n_tiles)
            load_tile(kt + kBK, (it + 1) & 1);
        else
            cp_async_commit(); // an empty group keeps "all but the newest" meaning this tile
        cp_async_wait<1>();
        __syncthreads();
        if constexpr (FP8) {
            convert_tile(it & 1);
            __syncthreads();
        }
        const __nv_bfloat16 *ks = stages + (FP8 ? 0 : 2 * (it & 1) * L::tile), *vs = ks + L::tile;
        // A tile wholly past the warp's last query adds nothing to its rows, nor one wholly before
        // the window of its first.
        if (warp_live && kt <= warp_last && !(EXT && p.window > 0 && kt + p.window + (kBK - 1) <= warp_first)) {
            float s[NT][4];
            if constexpr (QS) {
                // Two k-steps of Q's fragments at a time, each used for every column tile.
#pragma unroll
                for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
                for (int k2 = 0; k2 < KS; k2 += 2) {
                    uint32_t a[2][4];
                    ldsm_x4(q_frag + k2 * 16, a[0][0], a[0][1], a[0][2], a[0][3]);
                    ldsm_x4(q_frag + k2 * 16 + 16, a[1][0], a[1][1], a[1][2], a[1][3]);
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        uint32_t b0, b1, b2, b3;
                        ldsm_x4(ks + (nt * 8 + (lane & 7)) * L::ld + k2 * 16 + (lane >> 3) * 8, b0, b1, b2, b3);
                        mma_k16(s[nt], a[0], b0, b1);
                        mma_k16(s[nt], a[1], b2, b3);
                    }
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
                    for (int k2 = 0; k2 < KS; k2 += 2) {
                        uint32_t b0, b1, b2, b3;
                        ldsm_x4(ks + (nt * 8 + (lane & 7)) * L::ld + k2 * 16 + (lane >> 3) * 8, b0, b1, b2, b3);
                        mma_k16(s[nt], qa[k2], b0, b1);
                        mma_k16(s[nt], qa[k2 + 1], b2, b3);
                    }
                }
            }
            if (EXT && p.softcap > 0) {
                const float cap = p.softcap * 1.4426950408889634f; // in log2 units
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) s[nt][i] = cap * attn_tanh(s[nt][i]);
            }
            // Keys before a row's window (where the tile starts before the last row's).
            if (EXT && p.window > 0 && kt + p.window <= warp_last) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int jw = kt + nt * 8 + 2 * tq + p.window; // key j is before row r's window
                    if (jw <= qpos_lo) s[nt][0] = -INFINITY;     // where j + window <= r's position
                    if (jw + 1 <= qpos_lo) s[nt][1] = -INFINITY;
                    if (jw <= qpos_hi) s[nt][2] = -INFINITY;
                    if (jw + 1 <= qpos_hi) s[nt][3] = -INFINITY;
                }
            }
            // Keys past a row's position (the causal limit; zero-filled keys lie past every row).
            if (kt + kBK - 1 > warp_first) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int j = kt + nt * 8 + 2 * tq;
                    if (j > qpos_lo) s[nt][0] = -INFINITY;
                    if (j + 1 > qpos_lo) s[nt][1] = -INFINITY;
                    if (j > qpos_hi) s[nt][2] = -INFINITY;
                    if (j + 1 > qpos_hi) s[nt][3] = -INFINITY;
                }
            }
            // Without a window key 0 is in the first tile and no row's limit is below it, so the
            // maxima are finite from the first tile on. With one, a row's window may start past
            // the tile: its maximum stays -inf, and its weights (all 0) are taken against 0 (b_*).
            float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
                mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
            }
#pragma unroll
            for (int x = 1; x <= 2; x <<= 1) {
                mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
                mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
            }
            const float b_lo = EXT && mx_lo == -INFINITY ? 0.0f : mx_lo;
            const float b_hi = EXT && mx_hi == -INFINITY ? 0.0f : mx_hi;
            const float corr_lo = exp2f(m_lo - b_lo), corr_hi = exp2f(m_hi - b_hi);
            m_lo = mx_lo;
            m_hi = mx_hi;
            // P as bf16 A fragments: k-step kk covers column tiles 2kk (a0, a1) and 2kk + 1 (a2, a3).
            // The sums add the rounded weights, the ones P V multiplies.
            uint32_t pa[NT / 2][4];
            float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint32_t lo = pack_bf16(exp2f(s[nt][0] - b_lo), exp2f(s[nt][1] - b_lo));
                const uint32_t hi = pack_bf16(exp2f(s[nt][2] - b_hi), exp2f(s[nt][3] - b_hi));
                float a, b;
                bf16x2_to_f32(lo, a, b);
                sum_lo += a + b;
                bf16x2_to_f32(hi, a, b);
                sum_hi += a + b;
                pa[nt / 2][(nt & 1) * 2] = lo;
                pa[nt / 2][(nt & 1) * 2 + 1] = hi;
            }
            l_lo = l_lo * corr_lo + sum_lo;
            l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
            for (int od = 0; od < OT; od++) {
                o[od][0] *= corr_lo;
                o[od][1] *= corr_lo;
                o[od][2] *= corr_hi;
                o[od][3] *= corr_hi;
            }
            // O += P V: one transposed ldmatrix gives the B fragments of two 8-wide column tiles
            // for 16 keys (matrices: keys 0-7 and 8-15 of columns od, then of od + 1).
#pragma unroll
            for (int kk = 0; kk < NT / 2; kk++) {
#pragma unroll
                for (int od = 0; od < OT; od += 2) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::ld + od * 8 + (lane >> 4) * 8,
                              b0, b1, b2, b3);
                    mma_k16(o[od], pa[kk], b0, b1);
                    mma_k16(o[od + 1], pa[kk], b2, b3);
                }
            }
        }
        __syncthreads(); // the next iteration's copy overwrites this stage
    }
    cp_async_wait<0>();

#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, x);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, x);
    }
    const float inv_lo = (FP8 ? p.v_scale : 1.0f) / l_lo, inv_hi = (FP8 ? p.v_scale : 1.0f) / l_hi;
    __nv_bfloat16 *olo = out + ((int64_t)(t0 + r_lo) * p.n_heads + h) * D;
    __nv_bfloat16 *ohi = out + ((int64_t)(t0 + r_hi) * p.n_heads + h) * D;
#pragma unroll
    for (int od = 0; od < OT; od++) {
        const int c = od * 8 + 2 * tq;
        if (r_lo < n) *reinterpret_cast<uint32_t *>(olo + c) = pack_bf16(o[od][0] * inv_lo, o[od][1] * inv_lo);
        if (r_hi < n) *reinterpret_cast<uint32_t *>(ohi + c) = pack_bf16(o[od][2] * inv_hi, o[od][3] * inv_hi);
    }
}

template <int D, bool EXT, bool FP8>
cudaError_t launch(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *tiles, int n_tiles,
                   const int32_t *pos, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    using L = PrefillSmem<D, FP8>;
    const cudaError_t e = raise_smem_limit_once<prefill_kernel<D, EXT, FP8>>(L::bytes);
    if (e != cudaSuccess) return e;
    dim3 grid(p.n_heads, n_tiles);
    prefill_kernel<D, EXT, FP8><<<grid, kWarps * 32, L::bytes, s>>>(
        q, (const kv_elem_t<FP8> *)k, (const kv_elem_t<FP8> *)v, bt, tiles, pos, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

template <int D, bool FP8>
cudaError_t launch_ext(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *tiles,
                       int n_tiles, const int32_t *pos, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    if (p.softcap > 0 || p.window > 0) return launch<D, true, FP8>(q, k, v, bt, tiles, n_tiles, pos, out, p, s);
    return launch<D, false, FP8>(q, k, v, bt, tiles, n_tiles, pos, out, p, s);
}

template <int D>
cudaError_t launch_d(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *tiles,
                     int n_tiles, const int32_t *pos, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    if (p.kv_fp8) return launch_ext<D, true>(q, k, v, bt, tiles, n_tiles, pos, out, p, s);
    return launch_ext<D, false>(q, k, v, bt, tiles, n_tiles, pos, out, p, s);
}

} // namespace

extern "C" cudaError_t sk_attention_prefill(const float *q, const void *k_cache, const void *v_cache,
                                            const int32_t *block_tables, const int32_t *tiles, int n_tiles,
                                            const int32_t *pos, uint16_t *out, struct sk_attn_params p, cudaStream_t s)
{
    if (n_tiles <= 0) return cudaSuccess;
    if (p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads || n_tiles > 65535 ||
        (p.kv_fp8 && !(p.k_scale > 0.0f && p.v_scale > 0.0f)))
        return cudaErrorInvalidValue;
    if (p.head_dim == 64) return launch_d<64>(q, k_cache, v_cache, block_tables, tiles, n_tiles, pos, out, p, s);
    if (p.head_dim == 128) return launch_d<128>(q, k_cache, v_cache, block_tables, tiles, n_tiles, pos, out, p, s);
    if (p.head_dim == 256) return launch_d<256>(q, k_cache, v_cache, block_tables, tiles, n_tiles, pos, out, p, s);
    return cudaErrorInvalidValue;
}
