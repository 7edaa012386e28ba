// Decode-attention variants that lost to the shipped kernels, kept with their benchmark
// (kernels/dev/bench_attention_decode.c, built by `make kernels-dev`; docs/performance.md has the
// numbers). The worker never runs them. Variants (skdev_attention_decode):
//   1-3  the register kernel, the default before the streaming kernels: 1 two keys per lane group
//        and step, 2 the same with the block table staged in shared memory, 3 staged with four
//        keys per step;
//   4-7  the SIMT streaming kernel: 2 ring slots per warp as a programmatic dependent (4), the
//        same launched plainly (5), 3 slots plainly (6) and as a dependent (7).
// The shipped tensor-core streaming kernel (sk_attention's SK_ATTN_DECODE_STREAM) has the
// schedule of 4-7 with three slots, as a dependent.
#include "kernels/attention_common.cuh"
#include "kernels/bf16.cuh"
#include "kernels/dev/dev_kernels.h"
#include "kernels/mbarrier.cuh"
#include "kernels/pdl.cuh"
#include "kernels/smem_limit.cuh"

#include <cuda_bf16.h>
#include <math.h>

namespace
{

constexpr int kWarps = 4;
constexpr int kChunk = 8;    // keys per bulk copy and per warp step
constexpr int kBtCap = 1024; // block-table entries staged in shared memory (16384 keys)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *out)
{
    bf16x8_to_f32(*reinterpret_cast<const uint4 *>(p), out);
}

// The register kernel (variants 1-3): one block per (kv head, query token, key split) serves all
// QG query heads that share the kv head, so each key and value is read once
// per token instead of once per query head. A lane group of GS = D / 8 lanes holds one key (8
// elements per lane, 16-byte loads); each group takes U keys per step, loading them all before the
// first use. The block-table entries of the block's key range are staged in shared memory first,
// so a key's load does not wait on a table load (STAGE). Otherwise the same online softmax and
// merge as the shipped per-head kernel (attention.cu).
constexpr int kBtCache = 256; // table entries staged: ranges of up to 4096 keys

template <int GS, int QG, int U, bool STAGE>
__global__ void __launch_bounds__(kWarps * 32)
    attention_gqa_kernel(const float *q, const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                         const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos, float *part_o,
                         float *part_ml, __nv_bfloat16 *out, sk_attn_params p)
{
    constexpr int E = 8, D = GS * E, KPW = 32 / GS, NG = kWarps * KPW;
    extern __shared__ float smem[]; // NG groups of QG * (m, l, o[D]), then kBtCache table entries
    const int kvh = blockIdx.x, ti = blockIdx.y, split = blockIdx.z;
    const AttnBlockKeys keys = attn_block_keys(p, pos, ti, split);
    const int t = keys.t, k_begin = keys.k_begin, k_end = keys.k_end;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane % GS, grp = lane / GS;
    constexpr int stride = D + 2;
    const AttnRangeTable table =
        attn_stage_table(block_tables + (int64_t)token_seq[t] * p.bt_stride,
                         STAGE ? reinterpret_cast<int32_t *>(smem + NG * QG * stride) : nullptr, kBtCache, k_begin,
                         k_end);
    __syncthreads();

    float qv[QG][E], acc[QG][E], m[QG], l[QG];
#pragma unroll
    for (int h = 0; h < QG; h++) {
        const float4 *qrow =
            reinterpret_cast<const float4 *>(q + ((int64_t)t * p.n_heads + kvh * QG + h) * D + g * E);
        float4 a = qrow[0], b = qrow[1];
        qv[h][0] = a.x * p.scale;
        qv[h][1] = a.y * p.scale;
        qv[h][2] = a.z * p.scale;
        qv[h][3] = a.w * p.scale;
        qv[h][4] = b.x * p.scale;
        qv[h][5] = b.y * p.scale;
        qv[h][6] = b.z * p.scale;
        qv[h][7] = b.w * p.scale;
#pragma unroll
        for (int i = 0; i < E; i++) acc[h][i] = 0.0f;
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }
    const int64_t head_stride = (int64_t)SK_KV_BLOCK * D;

    // base is uniform across the warp (the shuffles below need every lane); j is the group's key.
    for (int base = k_begin + warp * KPW; base < k_end; base += NG * U) {
        float kf[U][E], vf[U][E];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int j = base + u * NG + grp;
            if (j < k_end) {
                int64_t blk = table.block_of(j);
                int64_t off = (blk * p.n_kv_heads + kvh) * head_stride + (int64_t)(j % SK_KV_BLOCK) * D + g * E;
                load8(k_cache + off, kf[u]);
                load8(v_cache + off, vf[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int j = base + u * NG + grp;
            bool valid = j < k_end;
            float s[QG];
#pragma unroll
            for (int h = 0; h < QG; h++) {
                s[h] = 0.0f;
                if (valid) {
#pragma unroll
                    for (int i = 0; i < E; i++) s[h] += qv[h][i] * kf[u][i];
                }
            }
#pragma unroll
            for (int o = GS / 2; o > 0; o >>= 1)
#pragma unroll
                for (int h = 0; h < QG; h++) s[h] += __shfl_xor_sync(0xffffffffu, s[h], o);
            if (valid) {
#pragma unroll
                for (int h = 0; h < QG; h++) {
                    float m_new = fmaxf(m[h], s[h]);
                    float corr = __expf(m[h] - m_new), pj = __expf(s[h] - m_new);
                    l[h] = l[h] * corr + pj;
#pragma unroll
                    for (int i = 0; i < E; i++) acc[h][i] = acc[h][i] * corr + pj * vf[u][i];
                    m[h] = m_new;
                }
            }
        }
    }

    // Merge the NG lane groups, per query head.
    float *mine = smem + (warp * KPW + grp) * QG * stride;
#pragma unroll
    for (int h = 0; h < QG; h++) {
        if (g == 0) {
            mine[h * stride] = m[h];
            mine[h * stride + 1] = l[h];
        }
#pragma unroll
        for (int i = 0; i < E; i++) mine[h * stride + 2 + g * E + i] = acc[h][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < QG * D; idx += blockDim.x) {
        const int h = idx / D, di = idx % D;
        float mx = -INFINITY;
        for (int k = 0; k < NG; k++) mx = fmaxf(mx, smem[(k * QG + h) * stride]);
        float lt = 0.0f, o = 0.0f;
        for (int k = 0; k < NG; k++) {
            const float *gk = smem + (k * QG + h) * stride;
            if (gk[0] != -INFINITY) {
                float c = __expf(gk[0] - mx);
                lt += gk[1] * c;
                o += gk[2 + di] * c;
            }
        }
        attn_store_head(p, out, part_o, part_ml, t, ti, kvh * QG + h, split, di, o, mx, lt);
    }
}


template <int GS, int QG, int U, bool STAGE>
cudaError_t launch_gqa(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                       const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                       cudaStream_t s)
{
    dim3 grid(p.n_kv_heads, p.n_tokens, p.n_splits);
    size_t sh = (size_t)kWarps * (32 / GS) * QG * (GS * 8 + 2) * sizeof(float) + kBtCache * sizeof(int32_t);
    if (sh > 48 * 1024) {
        cudaError_t e =
            cudaFuncSetAttribute(attention_gqa_kernel<GS, QG, U, STAGE>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sh);
        if (e != cudaSuccess) return e;
    }
    attention_gqa_kernel<GS, QG, U, STAGE><<<grid, kWarps * 32, sh, s>>>(
        q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, bt, ts, pos, po, pml, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

template <int GS, int U, bool STAGE>
cudaError_t launch_gqa_q(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                         const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                         cudaStream_t s)
{
    switch (p.n_heads / p.n_kv_heads) {
    case 1: return launch_gqa<GS, 1, U, STAGE>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    case 2: return launch_gqa<GS, 2, U, STAGE>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    case 4: return launch_gqa<GS, 4, U, STAGE>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    default: return launch_gqa<GS, 8, (U > 2 ? 2 : U), STAGE>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    }
}

// 1: 2 keys per group and step; 2: the same with the block table staged in shared memory;
// 3: staged, 4 keys per step (2 with 8 query heads per kv head).
template <int GS>
cudaError_t launch_gqa_d(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                         const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, int mode,
                         cudaStream_t s)
{
    switch (mode) {
    case 2: return launch_gqa_q<GS, 2, true>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    case 3: return launch_gqa_q<GS, 4, true>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    default: return launch_gqa_q<GS, 2, false>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    }
}


// A block's keys [k_begin, k_end) go to its warps in chunks of kChunk, in turn: chunk `it` of
// `warp` starts at key k_begin + (warp + kWarps * it) * kChunk (as in attention_decode_gqa.cu).
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

__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
}

template <int D, int QG, int NS> struct DecodeSmem {
    static constexpr int chunk_bytes = kChunk * D * 2;          // one chunk of K (or V)
    static constexpr int ring_bytes = NS * 2 * chunk_bytes;     // one warp's ring of K+V slots
    static constexpr int bars_at = kWarps * ring_bytes;         // kWarps * NS mbarriers
    static constexpr int probs_at = bars_at + kWarps * NS * 8;  // per warp kChunk * QG floats
    static constexpr int bt_at = probs_at + kWarps * kChunk * QG * 4;
    static constexpr int bytes = bt_at + kBtCap * 4;
    static_assert(QG * (D + 2) * 4 <= ring_bytes, "a warp's merge record must fit in its ring");
};

// The SIMT streaming kernel (variants 4-7): the shipped kernel's schedule (attention_decode_gqa.cu),
// each chunk brought in by one cp.async.bulk completing on an mbarrier; 8 lanes share a key for
// the scores and every lane owns D / 32 output dimensions per query head. At ~700 instructions per
// chunk and warp it is bound by issue and latency, not by memory.
template <int D, int QG, int NS>
__global__ void __launch_bounds__(kWarps * 32)
    attention_decode_kernel(const float *q, const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                            const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                            float *part_o, float *part_ml, __nv_bfloat16 *out, sk_attn_params p)
{
    using L = DecodeSmem<D, QG, NS>;
    constexpr int PIECES = D / 64; // 16-byte pieces of a key per lane (8 lanes per key)
    constexpr int DL = PIECES * 8; // key elements per lane
    constexpr int DV = D / 32;     // output elements per lane and query head
    extern __shared__ __align__(128) unsigned char ring_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = lane >> 3, dp = lane & 7;
    const int kvh = blockIdx.x, ti = blockIdx.y, split = blockIdx.z;
    const AttnBlockKeys keys = attn_block_keys(p, pos, ti, split);
    const int t = keys.t, k_begin = keys.k_begin, k_end = keys.k_end;
    unsigned char *ring = ring_smem + warp * L::ring_bytes;
    uint64_t *bars = reinterpret_cast<uint64_t *>(ring_smem + L::bars_at) + warp * NS;
    float *probs = reinterpret_cast<float *>(ring_smem + L::probs_at) + warp * kChunk * QG;
    const AttnRangeTable table = attn_stage_table(block_tables + (int64_t)token_seq[t] * p.bt_stride,
                                                  reinterpret_cast<int32_t *>(ring_smem + L::bt_at), kBtCap, k_begin, k_end);
    if (lane == 0) {
        for (int s = 0; s < NS; s++) mbar_init(smem_u32(&bars[s]), 1);
        // The copy engine (async proxy) must see the initialised barriers.
        asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
    }

    const WarpChunks chunks(k_begin, k_end, warp);
    // Lane 0 starts the copy of the warp's it-th chunk into slot it % NS.
    auto issue = [&](int it) {
        const int64_t off = WarpChunks::cache_offset(table, chunks.first_key(it), kvh, p.n_kv_heads, D);
        unsigned char *slot = ring + (it % NS) * 2 * L::chunk_bytes;
        uint64_t *bar = &bars[it % NS];
        mbar_expect_tx(smem_u32(bar), 2 * L::chunk_bytes);
        bulk_load(slot, k_cache + off, L::chunk_bytes, bar);
        bulk_load(slot + L::chunk_bytes, v_cache + off, L::chunk_bytes, bar);
    };
    __syncthreads();
    // Launched as a programmatic dependent (PDL), the block gets here while the previous kernel
    // may still run: q and this step's keys (written by it) are read only after the wait.
    pdl_wait();
    if (lane == 0)
        for (int it = 0; it < NS && it < chunks.count; it++) issue(it);
    // The query rows, pre-scaled so that scores come out in log2 units (exp2 below).
    float qv[QG][DL];
    const float qs = p.scale * kLog2e;
#pragma unroll
    for (int h = 0; h < QG; h++) {
        const float *qrow = q + ((int64_t)t * p.n_heads + kvh * QG + h) * D;
#pragma unroll
        for (int i = 0; i < PIECES; i++) {
            const float4 *src = reinterpret_cast<const float4 *>(qrow + (dp + 8 * i) * 8);
            float4 a = src[0], b = src[1];
            qv[h][i * 8 + 0] = a.x * qs;
            qv[h][i * 8 + 1] = a.y * qs;
            qv[h][i * 8 + 2] = a.z * qs;
            qv[h][i * 8 + 3] = a.w * qs;
            qv[h][i * 8 + 4] = b.x * qs;
            qv[h][i * 8 + 5] = b.y * qs;
            qv[h][i * 8 + 6] = b.z * qs;
            qv[h][i * 8 + 7] = b.w * qs;
        }
    }

    float m[QG], lsum[QG], acc[QG][DV];
#pragma unroll
    for (int h = 0; h < QG; h++) {
        m[h] = -INFINITY;
        lsum[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < DV; e++) acc[h][e] = 0.0f;
    }

    for (int it = 0; it < chunks.count; it++) {
        const int j0 = chunks.first_key(it);
        mbar_wait(smem_u32(&bars[it % NS]), (it / NS) & 1);
        const unsigned char *ks = ring + (it % NS) * 2 * L::chunk_bytes;
        const unsigned char *vs = ks + L::chunk_bytes;

        // Scores of keys grp and grp + 4: 8 lanes each take 16-byte pieces dp, dp + 8, ... of the
        // key (a quarter warp reads 128 contiguous bytes: no bank conflicts).
        float s[2][QG];
#pragma unroll
        for (int sub = 0; sub < 2; sub++) {
            const int kc = grp + 4 * sub;
#pragma unroll
            for (int h = 0; h < QG; h++) s[sub][h] = 0.0f;
#pragma unroll
            for (int i = 0; i < PIECES; i++) {
                uint4 raw = *reinterpret_cast<const uint4 *>(ks + kc * D * 2 + (dp + 8 * i) * 16);
                float kf[8];
                bf16x8_to_f32(raw, kf);
#pragma unroll
                for (int h = 0; h < QG; h++)
#pragma unroll
                    for (int e = 0; e < 8; e++) s[sub][h] = fmaf(qv[h][i * 8 + e], kf[e], s[sub][h]);
            }
#pragma unroll
            for (int o = 1; o < 8; o <<= 1)
#pragma unroll
                for (int h = 0; h < QG; h++) s[sub][h] += __shfl_xor_sync(0xffffffffu, s[sub][h], o);
            if (j0 + kc >= k_end)
#pragma unroll
                for (int h = 0; h < QG; h++) s[sub][h] = -INFINITY;
        }

        // Online softmax over the chunk: the warp's running max moves to the chunk's max.
        float corr[QG];
#pragma unroll
        for (int h = 0; h < QG; h++) {
            float cm = fmaxf(s[0][h], s[1][h]);
            cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 8));
            cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 16));
            const float mn = fmaxf(m[h], cm);
            corr[h] = exp2f(m[h] - mn);
            m[h] = mn;
            s[0][h] = exp2f(s[0][h] - mn);
            s[1][h] = exp2f(s[1][h] - mn);
            lsum[h] = lsum[h] * corr[h] + s[0][h] + s[1][h]; // this lane group's keys only
        }
        if (dp == 0)
#pragma unroll
            for (int h = 0; h < QG; h++) {
                probs[grp * QG + h] = s[0][h];
                probs[(grp + 4) * QG + h] = s[1][h];
            }
        __syncwarp();

#pragma unroll
        for (int h = 0; h < QG; h++)
#pragma unroll
            for (int e = 0; e < DV; e++) acc[h][e] *= corr[h];
        const int n_valid = k_end - j0;
#pragma unroll
        for (int kc = 0; kc < kChunk; kc++) {
            if (kc < n_valid) { // a chunk's tail past the range may hold anything (NaN included)
                float vf[DV];
                if constexpr (DV == 4) {
                    uint2 raw = *reinterpret_cast<const uint2 *>(vs + (kc * D + lane * DV) * 2);
                    bf16x2_to_f32(raw.x, vf[0], vf[1]);
                    bf16x2_to_f32(raw.y, vf[2], vf[3]);
                } else {
                    static_assert(DV == 2, "head_dim 64 or 128");
                    uint32_t raw = *reinterpret_cast<const uint32_t *>(vs + (kc * D + lane * DV) * 2);
                    bf16x2_to_f32(raw, vf[0], vf[1]);
                }
                float pk[QG];
#pragma unroll
                for (int h = 0; h < QG; h++) pk[h] = probs[kc * QG + h];
#pragma unroll
                for (int h = 0; h < QG; h++)
#pragma unroll
                    for (int e = 0; e < DV; e++) acc[h][e] = fmaf(pk[h], vf[e], acc[h][e]);
            }
        }
        // Every lane is done with the slot and the probabilities: refill the slot.
        __syncwarp();
        if (lane == 0 && it + NS < chunks.count) issue(it + NS);
    }

    // All of this block's loads are done: the next kernel in the stream may start launching.
    pdl_let_dependents_launch();
    // Merge the warps: each writes (m, l, o) per query head into its own (drained) ring.
    float *rec = reinterpret_cast<float *>(ring);
    constexpr int stride = D + 2;
#pragma unroll
    for (int h = 0; h < QG; h++) {
        float l = lsum[h] + __shfl_xor_sync(0xffffffffu, lsum[h], 8);
        l += __shfl_xor_sync(0xffffffffu, l, 16);
        if (lane == 0) {
            rec[h * stride] = m[h];
            rec[h * stride + 1] = l;
        }
#pragma unroll
        for (int e = 0; e < DV; e++) rec[h * stride + 2 + lane * DV + e] = acc[h][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < QG * D; idx += blockDim.x) {
        const int h = idx / D, di = idx % D;
        float mw[kWarps], mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            mw[w] = reinterpret_cast<const float *>(ring_smem + w * L::ring_bytes)[h * stride];
            mx = fmaxf(mx, mw[w]);
        }
        float lt = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            if (mw[w] != -INFINITY) {
                const float *r = reinterpret_cast<const float *>(ring_smem + w * L::ring_bytes) + h * stride;
                const float c = exp2f(mw[w] - mx);
                lt += r[1] * c;
                o += r[2 + di] * c;
            }
        }
        // The running maxima are in log2 units; attention_merge_splits works in natural-log ones.
        attn_store_head(p, out, part_o, part_ml, t, ti, kvh * QG + h, split, di, o, mx * kLn2, lt);
    }
}

template <int D, int QG, int NS>
cudaError_t launch_simt(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                        const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, bool pdl,
                        cudaStream_t s)
{
    const dim3 grid(p.n_kv_heads, p.n_tokens, p.n_splits), block(kWarps * 32);
    constexpr int sh = DecodeSmem<D, QG, NS>::bytes;
    constexpr auto kernel = attention_decode_kernel<D, QG, NS>;
    const cudaError_t e = raise_smem_limit_once<kernel>(sh);
    if (e != cudaSuccess) return e;
    return launch_maybe_pdl(pdl, kernel, grid, block, sh, s, q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v,
                            bt, ts, pos, po, pml, (__nv_bfloat16 *)out, p);
}

template <int D, int NS>
cudaError_t launch_simt_q(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                          const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, bool pdl,
                          cudaStream_t s)
{
    switch (p.n_heads / p.n_kv_heads) {
    case 1: return launch_simt<D, 1, NS>(q, k, v, bt, ts, pos, po, pml, out, p, pdl, s);
    case 2: return launch_simt<D, 2, NS>(q, k, v, bt, ts, pos, po, pml, out, p, pdl, s);
    case 4: return launch_simt<D, 4, NS>(q, k, v, bt, ts, pos, po, pml, out, p, pdl, s);
    case 8:
        if constexpr (D == 64) return launch_simt<D, 8, NS>(q, k, v, bt, ts, pos, po, pml, out, p, pdl, s);
        return cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" int skdev_attention_decode_fits(const struct sk_attn_params *p, int variant)
{
    // Lab variants read bf16 caches only: an FP8 cache (kv_fp8) is refused.
    if (p->kv_fp8 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads || (p->head_dim != 64 && p->head_dim != 128))
        return 0;
    const int qg = p->n_heads / p->n_kv_heads;
    if (variant >= 1 && variant <= 3) return qg == 1 || qg == 2 || qg == 4 || qg == 8;
    // The SIMT kernel keeps QG * D / 8 query floats per lane: 8 heads only at head_dim 64.
    if (variant >= 4 && variant <= 7) return qg == 1 || qg == 2 || qg == 4 || (qg == 8 && p->head_dim == 64);
    return 0;
}

extern "C" cudaError_t skdev_attention_decode(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                                              const int32_t *block_tables, const int32_t *token_seq,
                                              const int32_t *pos, float *part_o, float *part_ml, uint16_t *out,
                                              struct sk_attn_params p, int variant, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (!skdev_attention_decode_fits(&p, variant) || p.n_splits < 1 || p.n_tokens > 65535 || p.n_splits > 65535 ||
        (p.n_splits > 1 && (p.split_len < 0 || !part_o || !part_ml)))
        return cudaErrorInvalidValue;
    cudaError_t e;
    if (variant <= 3) {
        if (p.head_dim == 64)
            e = launch_gqa_d<8>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, variant, s);
        else
            e = launch_gqa_d<16>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, variant,
                                 s);
    } else {
        const bool three = variant == 6 || variant == 7, pdl = variant == 4 || variant == 7;
        if (p.head_dim == 64)
            e = three ? launch_simt_q<64, 3>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p,
                                             pdl, s)
                      : launch_simt_q<64, 2>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p,
                                             pdl, s);
        else
            e = three ? launch_simt_q<128, 3>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out,
                                              p, pdl, s)
                      : launch_simt_q<128, 2>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out,
                                              p, pdl, s);
    }
    return e != cudaSuccess ? e : attention_merge_splits(part_o, part_ml, out, p, s);
}
