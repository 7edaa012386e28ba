// Decode attention for grouped-query models, streamed through shared memory.
//
// One block of 4 warps per (kv head, query token, key split) serves the QG query heads that share
// the kv head. The block's key range is cut into chunks of 8 keys; in the paged cache a chunk of
// one kv head is a contiguous run (8 * D bf16 for K, the same for V). Warp w takes chunks w, w + 4,
// ... through its own ring of NS slots, so each warp keeps NS chunks (NS * 4 KB at D = 128) in
// flight and never waits for the other warps until the final merge. Softmax is online per warp
// (log2 domain); the 4 warps' partial results are merged in shared memory at the end, or written
// as split partials for attention_merge_splits (attention.cu). The arithmetic runs on the tensor
// cores (attention_decode_mma_kernel, described above it); a SIMT kernel with the same schedule
// lost to it and is in kernels/dev/ with its benchmark (docs/performance.md). A sliding window
// moves the block's key range (attn_block_keys) to start at or after the window's first key; the
// chunks start at the 8-aligned key below it, inside the same cache block, and the keys before the
// range are masked like those past its end. Soft-capping goes on the scores before the masks, in
// a second instance of the kernel (CAP): in the loop it costs registers the common one keeps.
// An FP8 cache (--kv-cache-dtype fp8) takes a third parameter (FP8), described above Fp8Chunk.
// head_dim 64, 128 and 256. At 256 a chunk is 4 KB of K and 4 KB of V, a block's rings 96 KB, so
// two blocks share an SM where four do at 128: the same bytes in flight per SM.
#include "kernels/attention_common.cuh"
#include "kernels/bf16.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/mma.cuh"
#include "kernels/pdl.cuh"
#include "kernels/qkv_head.cuh"
#include "kernels/smem_limit.cuh"

#include <cuda_bf16.h>
#include <math.h>

namespace
{

constexpr int kWarps = 4;
constexpr int kChunk = 8;       // keys per warp step
constexpr int kBtCap = 1024;    // block-table entries staged in shared memory (16384 keys)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// A block's keys [k_begin, k_end) go to its warps in chunks of kChunk, in turn: chunk `it` of
// `warp` starts at key k_begin + (warp + kWarps * it) * kChunk. k_begin is a multiple of kChunk, so
// that a chunk lies in one cache block.
struct WarpChunks {
    int k_begin, warp, count;
    __device__ WarpChunks(int k_begin_, int k_end, int warp_) : k_begin(k_begin_), warp(warp_)
    {
        const int n = k_end > k_begin ? (k_end - k_begin + kChunk - 1) / kChunk : 0;
        count = n > warp ? (n - warp + kWarps - 1) / kWarps : 0;
    }
    __device__ int first_key(int it) const { return k_begin + (warp + kWarps * it) * kChunk; }
    // The offset of key j's row of kv head kvh in the K (or V) cache.
    __device__ static int64_t cache_offset(const AttnRangeTable &table, int j, int kvh, int n_kv_heads, int d)
    {
        return (table.block_of(j) * n_kv_heads + kvh) * ((int64_t)SK_KV_BLOCK * d) + (int64_t)(j % SK_KV_BLOCK) * d;
    }
};

// The schedule on the tensor cores. A SIMT version (kernels/dev/) spent ~700 instructions per
// 8-key chunk and warp and was bound by issue and latency, not by memory; here a chunk costs ~120:
//   S[16 x 8 keys] = Q K^T with mma.m16n8k16: rows 0-7 hold the query heads' bf16 high parts,
//     rows 8-15 their low parts (q - bf16(q)), so fp32-accurate scores come out of one product
//     (row g + row g + 8) and no row of the m16 tile is wasted on padding;
//   O^T[D x 8] += V^T P^T with mma.m16n8k8: columns 0..QG-1 take P's bf16 high parts and, when
//     2 * QG <= 8, columns QG..2QG-1 its low parts, summed at the end.
// The scores land in exactly the layout P^T needs as the second operand, so no shuffles move them.
// Chunks are brought in with cp.async 16-byte copies into an XOR-swizzled layout (16-byte piece c
// of key row r at c ^ r) so that ldmatrix reads of 8 keys at once are free of bank conflicts.
//
// FUSED (sk_attention_decode_qkv): the block also does qkv_post's work for its token. Its warps
// make the QG query heads from the qkv product's parts into shared memory, and the block whose
// range ends at the token's own key makes that key's k and v, writes them to the cache and merges
// them in as a fifth record (score q.k, weight 1, value v) beside the warps' four. So no key the
// block reads from the cache is written in this step, and every chunk may go out before the wait.
template <int D, int QG, int NS, bool FUSED, bool FP8 = false> struct MmaSmem {
    static constexpr int row_bytes = D * (FP8 ? 1 : 2);
    static constexpr int chunk_bytes = kChunk * row_bytes;      // one chunk of K (or V)
    static constexpr int ring_bytes = NS * 2 * chunk_bytes;     // one warp's ring
    static constexpr int bt_at = kWarps * ring_bytes;
    // FUSED: q[QG][D], the own key's k[D] and v[D] (as the cache holds them), its scores[8].
    static constexpr int own_at = bt_at + kBtCap * 4;
    static constexpr int own_q = 0, own_k = QG * D, own_v = own_k + D, own_s = own_v + D; // floats
    static constexpr int bytes = own_at + (FUSED ? (own_s + 8) * 4 : 0);
    // A warp's merge record: O^T columns [8][D], then m[8], l[8].
    static_assert((8 * D + 16) * 4 <= ring_bytes, "a warp's merge record must fit in its ring");
};

// What a FUSED kernel reads of the qkv product, and the caches it writes the own keys to (bf16
// or e4m3 codes, as the instance's FP8 says).
struct OwnQkv {
    sk_qkv_src src;
    void *k_cache, *v_cache;
};

// FP8: an e4m3 chunk (8 keys of D codes, K or V) in a ring slot, and how the tensor cores' bf16
// fragments are made from it. Converting codes costs more instructions than the loads, so each is
// converted once, in registers, where its fragment is needed: no bf16 copy goes through shared
// memory, and no ldmatrix (whose 8x8 tiles of 16-bit elements do not fit bytes) reads the slot.
// The fragments then hold the codes in an order of our choosing, which the other operand follows:
//   Q K^T sums over dimensions, so any order of them in the k-steps gives the same scores if q's
//     fragments follow it: lane (g, tq) takes key g's dimensions tq D/4 .. tq D/4 + D/4 - 1 (one or
//     two 16-byte loads), k-step s its 4 codes at 4s, which sit where the B fragment's k rows 2tq,
//     2tq + 1, 2tq + 8, 2tq + 9 are; q's A fragment takes the same 4 dimensions (one float4);
//   V^T P^T's rows are dimensions, so the output's rows come in an order of our choosing too: lane
//     (g, tq) holds dimensions g D/8 .. g D/8 + D/8 - 1 of keys 2tq and 2tq + 1 (one 8- or 16-byte
//     load each), m-tile i's rows g and g + 8 being dimensions g D/8 + 2i and + 1, and the merge
//     record puts them back in place.
// The slot's 16-byte pieces are XOR-swizzled within each 128-byte line (piece_at) so that
// both kinds of loads, and the cp.async copies in, are free of bank conflicts at D = 64, 128 and
// 256.
template <int D> struct Fp8Chunk {
    static constexpr int pieces = D / 16;      // 16-byte pieces per key row
    // The byte offset in a slot of piece c of key row r.
    __device__ static int piece_at(int r, int c)
    {
        if constexpr (D == 256) {
            // A row is two lines. Eight lanes of a score load take pieces 4tq + h of rows 2k and
            // 2k + 1 (both lines), of a V load pieces 2g + half (g = 2k', 2k' + 1) of rows 2tq (or
            // 2tq + 1): XOR the place in the line with the line's half of the row and with r's low
            // bits swapped, and either set falls on 8 different places.
            const int f = (c >> 3) ^ ((r & 1) << 1 | (r >> 1 & 1) | (r & 4));
            return (r * pieces + (c & 8) + ((c & 7) ^ f)) << 4;
        } else {
            constexpr int rows_per_line = 128 / D; // key rows in one 128-byte line of banks
            const int u = r * pieces + c;
            return ((u & ~7) | ((u ^ (r & ~(rows_per_line - 1))) & 7)) << 4;
        }
    }
    // Byte b (a multiple of the load's width, within a piece) of key row r.
    __device__ static int byte_at(int r, int b) { return piece_at(r, b >> 4) + (b & 15); }
};

// A FUSED block's share of qkv_post: heads item = warp, warp + kWarps, ... of its QG query heads,
// then (when it holds the token's own key) its kv head's k and v. What does not come from the
// product is fetched before the wait (load_inputs), the parts of every head of the warp after it,
// all in flight at once (make).
template <int D, int QG, int NS, bool FP8> struct OwnHeads {
    using L = MmaSmem<D, QG, NS, true, FP8>;
    static constexpr int kMaxItems = (QG + 2 + kWarps - 1) / kWarps;
    int n_items, head[kMaxItems];
    float4 bias[kMaxItems], norm_w[kMaxItems];
    Rope128 rope;
    int64_t cache_at; // the own key's row in the K (and V) cache, when has_own

    __device__ __forceinline__ void load_inputs(const OwnQkv &own, int t, int kvh, int own_key, bool has_own,
                                                const sk_attn_params &p)
    {
        static_assert(D == 128, "qkv_head128 takes head_dim 128");
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const sk_qkv_src &src = own.src;
        n_items = 0;
#pragma unroll
        for (int j = 0; j < kMaxItems; j++) {
            const int item = warp + j * kWarps;
            if (item >= QG + (has_own ? 2 : 0)) break;
            n_items++;
            head[j] = item < QG ? kvh * QG + item : item == QG ? p.n_heads + kvh : p.n_heads + p.n_kv_heads + kvh;
            bias[j] = head128_at(src.bias ? src.bias + (int64_t)head[j] * D : nullptr, lane);
            norm_w[j] = head128_at(item < QG ? src.q_norm : item == QG ? src.k_norm : nullptr, lane);
        }
        rope = qkv_rope128(src.inv_freq, (float)own_key, src.interleaved, lane);
        if (has_own) {
            const int64_t sl = src.slot[t];
            cache_at = ((sl / SK_KV_BLOCK * p.n_kv_heads + kvh) * SK_KV_BLOCK + sl % SK_KV_BLOCK) * D;
        }
    }

    // After the wait: q into shared memory, k and v into the caches and shared memory (as the
    // cache holds them: FP8, the codes' values without the scale, as the chunks are read), then
    // the own key's scores in log2 units (CAP: soft-capped).
    template <bool CAP>
    __device__ __forceinline__ void make(const OwnQkv &own, float *sh, int t, bool has_own, const sk_attn_params &p)
    {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const sk_qkv_src &src = own.src;
        const float *row = src.qkv + (int64_t)t * (p.n_heads + 2 * p.n_kv_heads) * D;
        float4 e[kMaxItems];
#pragma unroll
        for (int j = 0; j < kMaxItems; j++)
            if (j < n_items) e[j] = qkv_head128_sum(row + (int64_t)head[j] * D, src.n_parts, src.part_stride, bias[j], lane);
#pragma unroll
        for (int j = 0; j < kMaxItems; j++) {
            if (j >= n_items) break;
            const int item = warp + j * kWarps;
            if (item < QG) {
                reinterpret_cast<float4 *>(sh + L::own_q + item * D)[lane] =
                    qkv_head128_rotate(e[j], src.q_norm != nullptr, norm_w[j], src.eps, src.interleaved, rope, lane);
                continue;
            }
            const bool is_k = item == QG;
            const float4 y = is_k ? qkv_head128_rotate(e[j], src.k_norm != nullptr, norm_w[j], src.eps,
                                                       src.interleaved, rope, lane)
                                  : e[j];
            float4 c;
            if constexpr (FP8) {
                const uint32_t w = kv_e4m3x4(y, is_k ? p.k_scale : p.v_scale);
                reinterpret_cast<uint32_t *>(static_cast<uint8_t *>(is_k ? own.k_cache : own.v_cache) + cache_at)[lane] =
                    w;
                c = kv_e4m3x4_to_f32(w);
            } else {
                const uint2 w = make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
                reinterpret_cast<uint2 *>(static_cast<__nv_bfloat16 *>(is_k ? own.k_cache : own.v_cache) +
                                          cache_at)[lane] = w;
                bf16x2_to_f32(w.x, c.x, c.y);
                bf16x2_to_f32(w.y, c.z, c.w);
            }
            reinterpret_cast<float4 *>(sh + (is_k ? L::own_k : L::own_v))[lane] = c;
        }
        __syncthreads();
        if (!has_own) return;
        const float sscale = FP8 ? p.scale * p.k_scale : p.scale;
        for (int h = warp; h < QG; h += kWarps) {
            const float4 a = reinterpret_cast<const float4 *>(sh + L::own_q + h * D)[lane];
            const float4 b = reinterpret_cast<const float4 *>(sh + L::own_k)[lane];
            const float dot = warp_sum(a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w);
            const float s =
                CAP ? p.softcap * kLog2e * attn_tanh(dot * (sscale / p.softcap)) : dot * (sscale * kLog2e);
            if (lane == 0) sh[L::own_s + h] = s; // read in the merge, after its barrier
        }
    }
};

// CAP: the scores are soft-capped (p.softcap > 0; otherwise it must be 0). FP8: the caches hold
// e4m3 codes (Fp8Chunk).
template <int D, int QG, int NS, bool FUSED, bool CAP, bool FP8>
__global__ void __launch_bounds__(kWarps * 32)
    attention_decode_mma_kernel(const float *q, const kv_elem_t<FP8> *k_cache, const kv_elem_t<FP8> *v_cache,
                                const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                float *part_o, float *part_ml, __nv_bfloat16 *out, sk_attn_params p, OwnQkv own)
{
    static_assert(QG == 1 || QG == 2 || QG == 4 || QG == 8, "1 to 8 query heads per kv head");
    using L = MmaSmem<D, QG, NS, FUSED, FP8>;
    using C8 = Fp8Chunk<D>;
    constexpr int KS = D / 16;     // k-steps of the score product, m-tiles of the output
    constexpr int PIECES = D / 8;  // 16-byte pieces per key row
    constexpr bool LO = 2 * QG <= 8; // P's low parts get their own output columns
    extern __shared__ __align__(128) unsigned char smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3; // mma fragment coordinates
    const int kvh = blockIdx.x, ti = blockIdx.y, split = blockIdx.z;
    const AttnBlockKeys keys = attn_block_keys(p, pos, ti, split);
    const int t = keys.t, k_begin = keys.k_begin, own_key = pos[t];
    // FUSED: the own key is merged from shared memory, so the chunks stop before it.
    const bool has_own = FUSED && k_begin <= own_key && own_key < keys.k_end;
    const int k_end = has_own ? own_key : keys.k_end;
    // The chunks start at the multiple of kChunk at or below k_begin (a sliding window's or a
    // split's range may start anywhere): the keys before k_begin there are in k_begin's cache
    // block, and masked. An empty range has no chunks.
    const int c_begin = k_end > k_begin ? k_begin & ~(kChunk - 1) : k_end;
    const int n_range = k_end - k_begin;
    unsigned char *ring = smem + warp * L::ring_bytes;
    float *own_sh = reinterpret_cast<float *>(smem + L::own_at);
    const AttnRangeTable table = attn_stage_table(block_tables + (int64_t)token_seq[t] * p.bt_stride,
                                                  reinterpret_cast<int32_t *>(smem + L::bt_at), kBtCap, c_begin, k_end);
    const WarpChunks chunks(c_begin, k_end, warp);
    // Every lane copies its share of the warp's it-th chunk (K and V) into slot it % NS.
    auto issue = [&](int it) {
        const int64_t off = WarpChunks::cache_offset(table, chunks.first_key(it), kvh, p.n_kv_heads, D);
        unsigned char *slot = ring + (it % NS) * 2 * L::chunk_bytes;
        if constexpr (FP8) {
#pragma unroll
            for (int i = 0; i < kChunk * C8::pieces / 32; i++) {
                const int pc = lane + 32 * i, r = pc / C8::pieces, c = pc % C8::pieces;
                const int at = C8::piece_at(r, c);
                cp_async16(slot + at, k_cache + off + r * D + c * 16);
                cp_async16(slot + L::chunk_bytes + at, v_cache + off + r * D + c * 16);
            }
        } else {
#pragma unroll
            for (int i = 0; i < kChunk * PIECES / 32; i++) {
                const int pc = lane + 32 * i, r = pc / PIECES, c = pc % PIECES;
                const int at = r * L::row_bytes + ((c ^ r) << 4);
                cp_async16(slot + at, k_cache + off + r * D + c * 8);
                cp_async16(slot + L::chunk_bytes + at, v_cache + off + r * D + c * 8);
            }
        }
    };
    __syncthreads();
    // Keys before the token's own were written by earlier steps (settled_keys): their first
    // chunks are on the way while the previous kernel (qkv_post; FUSED: qkv) still runs. The chunk
    // holding the token's own key, which qkv_post writes, waits for it (FUSED: the chunks end
    // before that key). Chunks go out in order, one commit group each, either way.
    int it0 = 0;
    if (FUSED || p.settled_keys)
        for (; it0 < NS && it0 < chunks.count && (FUSED || chunks.first_key(it0) + kChunk <= own_key); it0++) {
            issue(it0);
            cp_async_commit();
        }
    [[maybe_unused]] OwnHeads<D, QG, NS, FP8> heads;
    if constexpr (FUSED) heads.load_inputs(own, t, kvh, own_key, has_own, p);
    pdl_wait(); // q and this step's keys are written by the kernels before this one
    if constexpr (FUSED) heads.template make<CAP>(own, own_sh, t, has_own, p);
    for (int it = it0; it < NS; it++) {
        if (it < chunks.count) issue(it);
        cp_async_commit();
    }

    // Q fragments (rows g: bf16 high parts, rows g + 8: low parts), pre-scaled to log2 units;
    // CAP: divided by the cap instead, the scores then being attn_tanh's arguments. FP8: K's scale
    // goes in too, and the dimensions in Fp8Chunk's order.
    uint32_t qa[KS][4];
    {
        const float sscale = FP8 ? p.scale * p.k_scale : p.scale;
        const float qs = CAP ? sscale / p.softcap : sscale * kLog2e;
        const float *qrow = FUSED ? own_sh + L::own_q + (g < QG ? g : 0) * D
                                  : q + ((int64_t)t * p.n_heads + kvh * QG + (g < QG ? g : 0)) * D;
#pragma unroll
        for (int s = 0; FP8 && s < KS; s++) {
            float4 v = *reinterpret_cast<const float4 *>(qrow + tq * (D / 4) + 4 * s);
            v.x = g < QG ? v.x * qs : 0.0f;
            v.y = g < QG ? v.y * qs : 0.0f;
            v.z = g < QG ? v.z * qs : 0.0f;
            v.w = g < QG ? v.w * qs : 0.0f;
            const uint32_t h0 = pack_bf16(v.x, v.y), h1 = pack_bf16(v.z, v.w);
            const __nv_bfloat162 b0 = *reinterpret_cast<const __nv_bfloat162 *>(&h0);
            const __nv_bfloat162 b1 = *reinterpret_cast<const __nv_bfloat162 *>(&h1);
            qa[s][0] = h0;
            qa[s][1] = pack_bf16(v.x - __low2float(b0), v.y - __high2float(b0));
            qa[s][2] = h1;
            qa[s][3] = pack_bf16(v.z - __low2float(b1), v.w - __high2float(b1));
        }
#pragma unroll
        for (int s = 0; !FP8 && s < KS; s++) {
#pragma unroll
            for (int half = 0; half < 2; half++) {
                float2 v = *reinterpret_cast<const float2 *>(qrow + 16 * s + 8 * half + 2 * tq);
                v.x = g < QG ? v.x * qs : 0.0f;
                v.y = g < QG ? v.y * qs : 0.0f;
                const uint32_t hi = pack_bf16(v.x, v.y);
                const __nv_bfloat162 h2 = *reinterpret_cast<const __nv_bfloat162 *>(&hi);
                const uint32_t lo = pack_bf16(v.x - __low2float(h2), v.y - __high2float(h2));
                qa[s][2 * half] = hi;
                qa[s][2 * half + 1] = lo;
            }
        }
    }

    float m = -INFINITY, lsum = 0.0f; // head g's running max and this lane's share of the sum
    float acc[KS][4];                  // O^T m-tile i: dims 16i + g (+8), columns 2tq, 2tq + 1
#pragma unroll
    for (int i = 0; i < KS; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    // This lane's ldmatrix row address (bf16): key r8, matrix mat.
    [[maybe_unused]] const int r8 = lane & 7, mat = lane >> 3;

    for (int it = 0; it < chunks.count; it++) {
        const int j0 = chunks.first_key(it);
        cp_async_wait<NS - 1>();
        __syncwarp();
        const unsigned char *ks = ring + (it % NS) * 2 * L::chunk_bytes;
        const unsigned char *vs = ks + L::chunk_bytes;

        // Scores: 8 keys (columns) for head g (rows g and g + 8).
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if constexpr (FP8) {
            // Key g's D/4 codes from tq D/4 on, 4 a k-step.
#pragma unroll
            for (int h = 0; h < D / 64; h++) {
                const uint4 w = *reinterpret_cast<const uint4 *>(ks + C8::byte_at(g, tq * (D / 4) + 16 * h));
                const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    uint32_t b0, b1;
                    e4m3x4_to_bf16x2(words[e], b0, b1);
                    mma_k16(sc, qa[4 * h + e], b0, b1);
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < KS / 2; j++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(ks + r8 * L::row_bytes + (((4 * j + mat) ^ r8) << 4), b0, b1, b2, b3);
                mma_k16(sc, qa[2 * j], b0, b1);
                mma_k16(sc, qa[2 * j + 1], b2, b3);
            }
        }
        // Keys 2tq and 2tq + 1 of the chunk count if they lie in [k_begin, k_end).
        const int rel = j0 + 2 * tq - k_begin;
        const bool in0 = (unsigned)rel < (unsigned)n_range, in1 = (unsigned)(rel + 1) < (unsigned)n_range;
        float s0 = sc[0] + sc[2], s1 = sc[1] + sc[3];
        if (CAP) {
            s0 = p.softcap * kLog2e * attn_tanh(s0);
            s1 = p.softcap * kLog2e * attn_tanh(s1);
        }
        s0 = in0 ? s0 : -INFINITY;
        s1 = in1 ? s1 : -INFINITY;

        // Online softmax of head g over the chunk (the quad's 4 lanes hold its 8 keys).
        float cm = fmaxf(s0, s1);
        cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 1));
        cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 2));
        const float mn = fmaxf(m, cm);
        const float corr = exp2f(m - mn);
        m = mn;
        const float p0 = exp2f(s0 - mn), p1 = exp2f(s1 - mn);
        lsum = lsum * corr + p0 + p1;
        const uint32_t phi = pack_bf16(p0, p1);
        const __nv_bfloat162 ph2 = *reinterpret_cast<const __nv_bfloat162 *>(&phi);
        const uint32_t plo = pack_bf16(p0 - __low2float(ph2), p1 - __high2float(ph2));
        // Column g of P^T: head g's high parts, or head g - QG's low parts, or nothing.
        const uint32_t plo_from = __shfl_sync(0xffffffffu, plo, g >= QG ? lane - 4 * QG : lane);
        const uint32_t pb = g < QG ? phi : (LO && g < 2 * QG ? plo_from : 0u);
        // This lane's output columns 2tq, 2tq + 1 belong to heads (2tq) % QG and (2tq + 1) % QG.
        const float corr0 = __shfl_sync(0xffffffffu, corr, 4 * ((2 * tq) % QG));
        const float corr1 = __shfl_sync(0xffffffffu, corr, 4 * ((2 * tq + 1) % QG));
#pragma unroll
        for (int i = 0; i < KS; i++) {
            acc[i][0] *= corr0;
            acc[i][1] *= corr1;
            acc[i][2] *= corr0;
            acc[i][3] *= corr1;
        }

        // O^T += V^T P^T: V^T fragments by transposed ldmatrix (keys 2tq, 2tq + 1 in each register).
        // Keys outside the range may hold anything (NaN included): their halves are zeroed.
        const uint32_t vmask = (in0 ? 0x0000ffffu : 0u) | (in1 ? 0xffff0000u : 0u);
        if constexpr (FP8) {
            // Keys 2tq (x, the low halves) and 2tq + 1 (y): D/8 codes each from g D/8 on, 4 a word,
            // word w's interleaved into m-tiles 2w and 2w + 1 (their rows g, g + 8: codes 0, 1 and
            // 2, 3 of the word).
            constexpr int NW = D / 32;
            uint32_t x[NW], y[NW];
            if constexpr (NW == 8) {
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const uint4 a = *reinterpret_cast<const uint4 *>(vs + C8::byte_at(2 * tq, g * (D / 8) + 16 * half));
                    const uint4 b =
                        *reinterpret_cast<const uint4 *>(vs + C8::byte_at(2 * tq + 1, g * (D / 8) + 16 * half));
                    x[4 * half] = a.x, x[4 * half + 1] = a.y, x[4 * half + 2] = a.z, x[4 * half + 3] = a.w;
                    y[4 * half] = b.x, y[4 * half + 1] = b.y, y[4 * half + 2] = b.z, y[4 * half + 3] = b.w;
                }
            } else if constexpr (NW == 4) {
                const uint4 a = *reinterpret_cast<const uint4 *>(vs + C8::byte_at(2 * tq, g * (D / 8)));
                const uint4 b = *reinterpret_cast<const uint4 *>(vs + C8::byte_at(2 * tq + 1, g * (D / 8)));
                x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
                y[0] = b.x, y[1] = b.y, y[2] = b.z, y[3] = b.w;
            } else {
                const uint2 a = *reinterpret_cast<const uint2 *>(vs + C8::byte_at(2 * tq, g * (D / 8)));
                const uint2 b = *reinterpret_cast<const uint2 *>(vs + C8::byte_at(2 * tq + 1, g * (D / 8)));
                x[0] = a.x, x[1] = a.y;
                y[0] = b.x, y[1] = b.y;
            }
#pragma unroll
            for (int w = 0; w < NW; w++) {
                uint32_t a0, a1;
                e4m3x4_to_bf16x2(__byte_perm(x[w], y[w], 0x5140), a0, a1);
                mma_k8(acc[2 * w], a0 & vmask, a1 & vmask, pb);
                e4m3x4_to_bf16x2(__byte_perm(x[w], y[w], 0x7362), a0, a1);
                mma_k8(acc[2 * w + 1], a0 & vmask, a1 & vmask, pb);
            }
        } else {
#pragma unroll
            for (int j = 0; j < KS / 2; j++) {
                uint32_t a0, a1, a2, a3;
                ldsm_x4_t(vs + r8 * L::row_bytes + (((4 * j + mat) ^ r8) << 4), a0, a1, a2, a3);
                mma_k8(acc[2 * j], a0 & vmask, a1 & vmask, pb);
                mma_k8(acc[2 * j + 1], a2 & vmask, a3 & vmask, pb);
            }
        }
        __syncwarp();
        if (it + NS < chunks.count) issue(it + NS);
        cp_async_commit();
    }
    cp_async_wait<0>();
    __syncwarp();

    pdl_let_dependents_launch();
    // Merge the warps through their drained rings: O^T columns [8][D], then m[8], l[8].
    float *rec = reinterpret_cast<float *>(ring);
#pragma unroll
    for (int i = 0; i < KS; i++) {
        if constexpr (FP8) {
            // m-tile i's rows g and g + 8 are dimensions g D/8 + 2i and + 1 (Fp8Chunk).
            const int d0 = g * (D / 8) + 2 * i;
            *reinterpret_cast<float2 *>(rec + (2 * tq) * D + d0) = make_float2(acc[i][0], acc[i][2]);
            *reinterpret_cast<float2 *>(rec + (2 * tq + 1) * D + d0) = make_float2(acc[i][1], acc[i][3]);
        } else {
            rec[(2 * tq) * D + 16 * i + g] = acc[i][0];
            rec[(2 * tq + 1) * D + 16 * i + g] = acc[i][1];
            rec[(2 * tq) * D + 16 * i + g + 8] = acc[i][2];
            rec[(2 * tq + 1) * D + 16 * i + g + 8] = acc[i][3];
        }
    }
    float l = lsum + __shfl_xor_sync(0xffffffffu, lsum, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (tq == 0) {
        rec[8 * D + g] = m;
        rec[8 * D + 8 + g] = l;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < QG * D; idx += blockDim.x) {
        const int h = idx / D, di = idx % D;
        float mw[kWarps], mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            mw[w] = reinterpret_cast<const float *>(smem + w * L::ring_bytes)[8 * D + h];
            mx = fmaxf(mx, mw[w]);
        }
        const float s_own = has_own ? own_sh[L::own_s + h] : -INFINITY;
        mx = fmaxf(mx, s_own);
        float lt = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            if (mw[w] != -INFINITY) {
                const float *r = reinterpret_cast<const float *>(smem + w * L::ring_bytes);
                const float c = exp2f(mw[w] - mx);
                lt += r[8 * D + 8 + h] * c;
                o += (r[h * D + di] + (LO ? r[(h + QG) * D + di] : 0.0f)) * c;
            }
        }
        if (has_own) {
            const float c = exp2f(s_own - mx);
            lt += c;
            o += own_sh[L::own_v + di] * c;
        }
        attn_store_head(p, out, part_o, part_ml, t, ti, kvh * QG + h, split, di, FP8 ? o * p.v_scale : o, mx * kLn2,
                        lt);
    }
}

// Ring slots per warp: three keep a chunk's copies far enough ahead of its use; two were a
// little slower (docs/performance.md).
constexpr int kStages = 3;

// FUSED: the kernel doing qkv_post's work for its token (head_dim 128 only).
template <int D, int QG, bool FUSED, bool CAP, bool FP8>
cudaError_t launch(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                   const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, const OwnQkv &own,
                   cudaStream_t s)
{
    if constexpr (FUSED && D != 128) {
        return cudaErrorInvalidValue;
    } else {
        const dim3 grid(p.n_kv_heads, p.n_tokens, p.n_splits), block(kWarps * 32);
        constexpr int sh = MmaSmem<D, QG, kStages, FUSED, FP8>::bytes;
        constexpr auto kernel = attention_decode_mma_kernel<D, QG, kStages, FUSED, CAP, FP8>;
        const cudaError_t e = raise_smem_limit_once<kernel>(sh);
        if (e != cudaSuccess) return e;
        return launch_pdl(kernel, grid, block, sh, s, q, (const kv_elem_t<FP8> *)k, (const kv_elem_t<FP8> *)v, bt, ts,
                          pos, po, pml, (__nv_bfloat16 *)out, p, own);
    }
}

template <int D, int QG, bool FUSED, bool FP8>
cudaError_t launch_cap(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                       const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                       const OwnQkv &own, cudaStream_t s)
{
    if (p.softcap > 0) return launch<D, QG, FUSED, true, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    return launch<D, QG, FUSED, false, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
}

template <int D, bool FUSED, bool FP8>
cudaError_t launch_q(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                     const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                     const OwnQkv &own, cudaStream_t s)
{
    switch (p.n_heads / p.n_kv_heads) {
    case 1: return launch_cap<D, 1, FUSED, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    case 2: return launch_cap<D, 2, FUSED, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    case 4: return launch_cap<D, 4, FUSED, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    case 8: return launch_cap<D, 8, FUSED, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    default: return cudaErrorInvalidValue;
    }
}

template <int D, bool FUSED>
cudaError_t launch_kv(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                      const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                      const OwnQkv &own, cudaStream_t s)
{
    if (p.kv_fp8) return launch_q<D, FUSED, true>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
    return launch_q<D, FUSED, false>(q, k, v, bt, ts, pos, po, pml, out, p, own, s);
}

} // namespace

cudaError_t attention_decode_launch(const float *q, const void *k, const void *v, const int32_t *bt,
                                    const int32_t *ts, const int32_t *pos, float *po, float *pml, uint16_t *out,
                                    const sk_attn_params &p, cudaStream_t s)
{
    const OwnQkv none = {};
    if (p.head_dim == 64) return launch_kv<64, false>(q, k, v, bt, ts, pos, po, pml, out, p, none, s);
    if (p.head_dim == 256) return launch_kv<256, false>(q, k, v, bt, ts, pos, po, pml, out, p, none, s);
    return launch_kv<128, false>(q, k, v, bt, ts, pos, po, pml, out, p, none, s);
}

cudaError_t attention_decode_qkv_launch(const sk_qkv_src &src, void *k, void *v, const int32_t *bt,
                                        const int32_t *ts, const int32_t *pos, float *po, float *pml, uint16_t *out,
                                        const sk_attn_params &p, cudaStream_t s)
{
    const OwnQkv own = {src, k, v};
    return launch_kv<128, true>(nullptr, k, v, bt, ts, pos, po, pml, out, p, own, s);
}
