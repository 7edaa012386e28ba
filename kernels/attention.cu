// Paged causal attention for the ragged batch (prefill chunks and decode tokens alike).
//
// One block of 4 warps per (query head, query token, key split). A warp handles KPW = 32/G keys
// at a time: G lanes share one key, each lane holding E consecutive elements of the head (16-byte
// loads on the vector paths), so a key's dot product needs log2(G) shuffles. Each lane group keeps
// its own online softmax (running max m, sum l, unnormalized output); the groups are merged in
// shared memory at the end. With n_splits > 1 (long contexts, few queries: flash-decoding) each
// split writes its partial (o, m, l) and a second kernel merges the splits.
#include "kernels/attention_common.cuh"
#include "kernels/bf16.cuh"

#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>

namespace
{

constexpr int kWarps = 4;
constexpr int kUnroll = 1; // 4 measured no faster for decode and 40% slower for prefill (H200)

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *out)
{
    bf16x8_to_f32(*reinterpret_cast<const uint4 *>(p), out);
}

template <int E, int G, bool VEC>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const float *q, const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                     const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos, float *part_o,
                     float *part_ml, __nv_bfloat16 *out, sk_attn_params p)
{
    constexpr int KPW = 32 / G;
    extern __shared__ float smem[]; // kWarps * KPW groups of (m, l, o[d])
    const int h = blockIdx.x, ti = blockIdx.y, split = blockIdx.z;
    const AttnBlockKeys keys = attn_block_keys(p, pos, ti, split);
    const int t = keys.t, k_begin = keys.k_begin, k_end = keys.k_end;
    const int d = p.head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane % G, grp = lane / G;
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    const int32_t *bt = block_tables + (int64_t)token_seq[t] * p.bt_stride;

    float qv[E], acc[E];
    const float *qrow = q + ((int64_t)t * p.n_heads + h) * d;
#pragma unroll
    for (int i = 0; i < E; i++) {
        int di = g * E + i;
        qv[i] = (VEC || di < d) ? qrow[di] * p.scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int64_t head_stride = (int64_t)SK_KV_BLOCK * d;

    // Each step a lane group takes kUnroll keys, spaced kWarps * KPW apart, and issues all their
    // loads before the first use, so several loads per lane are in flight.
    for (int base = k_begin + warp * KPW; base < k_end; base += kWarps * KPW * kUnroll) {
        float kf[kUnroll][E], vf[kUnroll][E];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            int j = base + u * kWarps * KPW + grp;
            if (j < k_end) {
                int64_t blk = bt[j / SK_KV_BLOCK];
                int64_t off = (blk * p.n_kv_heads + kvh) * head_stride + (int64_t)(j % SK_KV_BLOCK) * d + g * E;
                if (VEC) {
                    load8(k_cache + off, kf[u]);
                    load8(v_cache + off, vf[u]);
                } else {
#pragma unroll
                    for (int i = 0; i < E; i++) {
                        bool in = g * E + i < d;
                        kf[u][i] = in ? __bfloat162float(k_cache[off + i]) : 0.0f;
                        vf[u][i] = in ? __bfloat162float(v_cache[off + i]) : 0.0f;
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            int j = base + u * kWarps * KPW + grp;
            bool valid = j < k_end;
            float s = 0.0f;
            if (valid) {
#pragma unroll
                for (int i = 0; i < E; i++) s += qv[i] * kf[u][i];
            }
#pragma unroll
            for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (valid) {
                float m_new = fmaxf(m, s);
                float corr = __expf(m - m_new), pj = __expf(s - m_new);
                l = l * corr + pj;
#pragma unroll
                for (int i = 0; i < E; i++) acc[i] = acc[i] * corr + pj * vf[u][i];
                m = m_new;
            }
        }
    }

    // Merge the kWarps * KPW lane groups.
    const int n_groups = kWarps * KPW, stride = d + 2;
    float *mine = smem + (warp * KPW + grp) * stride;
    if (g == 0) {
        mine[0] = m;
        mine[1] = l;
    }
#pragma unroll
    for (int i = 0; i < E; i++) {
        int di = g * E + i;
        if (VEC || di < d) mine[2 + di] = acc[i];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int k = 0; k < n_groups; k++) mx = fmaxf(mx, smem[k * stride]);
    float lt = 0.0f;
    for (int k = 0; k < n_groups; k++) {
        float mk = smem[k * stride];
        if (mk != -INFINITY) lt += smem[k * stride + 1] * __expf(mk - mx);
    }
    for (int di = threadIdx.x; di < d; di += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < n_groups; k++) {
            float mk = smem[k * stride];
            if (mk != -INFINITY) o += smem[k * stride + 2 + di] * __expf(mk - mx);
        }
        attn_store_head(p, out, part_o, part_ml, t, ti, h, split, di, o, mx, lt);
    }
}

// Decode-oriented variant for grouped-query attention: one block per (kv head, query token, key
// split) serves all QG query heads that share the kv head, so each key and value is read once
// per token instead of once per query head. A lane group of GS = D / 8 lanes holds one key (8
// elements per lane, 16-byte loads); each group takes U keys per step, loading them all before the
// first use. The block-table entries of the block's key range are staged in shared memory first,
// so a key's load does not wait on a table load. Otherwise the same online softmax and merge as
// attention_kernel.
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

__global__ void merge_splits_kernel(const float *part_o, const float *part_ml, __nv_bfloat16 *out, sk_attn_params p)
{
    const int h = blockIdx.x, ti = blockIdx.y, d = p.head_dim;
    const int t = p.token_list ? p.token_list[ti] : ti;
    const int64_t row = (int64_t)ti * p.n_heads + h, orow = (int64_t)t * p.n_heads + h;
    const float *ml = part_ml + row * p.n_splits * 2;
    float mx = -INFINITY;
    for (int s = 0; s < p.n_splits; s++) mx = fmaxf(mx, ml[2 * s]);
    float lt = 0.0f;
    for (int s = 0; s < p.n_splits; s++)
        if (ml[2 * s] != -INFINITY) lt += ml[2 * s + 1] * __expf(ml[2 * s] - mx);
    for (int di = threadIdx.x; di < d; di += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < p.n_splits; s++)
            if (ml[2 * s] != -INFINITY) o += part_o[(row * p.n_splits + s) * d + di] * __expf(ml[2 * s] - mx);
        out[orow * d + di] = __float2bfloat16_rn(o / lt);
    }
}

template <int E, int G, bool VEC>
cudaError_t launch(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *ts,
                   const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    dim3 grid(p.n_heads, p.n_tokens, p.n_splits);
    size_t sh = (size_t)kWarps * (32 / G) * (p.head_dim + 2) * sizeof(float);
    if (sh > 48 * 1024) {
        cudaError_t e =
            cudaFuncSetAttribute(attention_kernel<E, G, VEC>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sh);
        if (e != cudaSuccess) return e;
    }
    attention_kernel<E, G, VEC><<<grid, kWarps * 32, sh, s>>>(q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, bt,
                                                              ts, pos, po, pml, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
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

// Variants (see sk_attention_mode): 1: 2 keys per group and step; 2: the same with the block
// table staged in shared memory; 3: staged, 4 keys per step (2 with 8 query heads per kv head).
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

} // namespace

// Grouped-query variants (SLUICE_CUDA_ATTN_GQA): 0 off, 1-3 attention_gqa_kernel (see
// launch_gqa_d); the SIMT streaming kernel with 2 slots per warp launched as a programmatic
// dependent (4), the same launched plainly (5), 3 slots plainly (6) and as a dependent (7); the
// tensor-core streaming kernel with 2 (8) or 3 (9) slots, as a dependent. Variants 4-9 take shapes
// attention_decode_fits refuses to attention_gqa_kernel variant 1.
constexpr int kGqaDefault = 9, kGqaMax = 9;

extern "C" int sk_attention_default_gqa(void)
{
    // Read once: SLUICE_CUDA_ATTN_GQA picks the variant (0 turns the grouped kernels off).
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("SLUICE_CUDA_ATTN_GQA");
        int m = e && *e ? atoi(e) : kGqaDefault;
        mode = m < 0 || m > kGqaMax ? kGqaDefault : m;
    }
    return mode;
}

// Whether the default variant runs a streaming kernel (4-9) for p.
extern "C" int sk_attention_decode_fits(const struct sk_attn_params *p)
{
    const int mode = sk_attention_default_gqa();
    return mode >= 4 && attention_decode_fits(*p, mode >= 8) ? 1 : 0;
}

// With n_splits > 1, the splits' partial results into out (merge_splits_kernel).
static cudaError_t merge_splits(const float *part_o, const float *part_ml, uint16_t *out, const sk_attn_params &p,
                                cudaStream_t s)
{
    if (p.n_splits == 1) return cudaSuccess;
    dim3 grid(p.n_heads, p.n_tokens);
    int threads = p.head_dim < 32 ? 32 : (p.head_dim + 31) / 32 * 32;
    merge_splits_kernel<<<grid, threads, 0, s>>>(part_o, part_ml, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

extern "C" int sk_attention_gqa_fits(const struct sk_attn_params *p)
{
    const int qg = p->n_kv_heads > 0 ? p->n_heads / p->n_kv_heads : 0;
    return (p->head_dim == 64 || p->head_dim == 128) && (qg == 1 || qg == 2 || qg == 4 || qg == 8);
}

extern "C" cudaError_t sk_attention(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                                    const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                    float *part_o, float *part_ml, uint16_t *out, struct sk_attn_params p,
                                    cudaStream_t s)
{
    return sk_attention_mode(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p,
                             sk_attention_default_gqa(), s);
}

extern "C" cudaError_t sk_attention_mode(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                                         const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                         float *part_o, float *part_ml, uint16_t *out, struct sk_attn_params p,
                                         int use_gqa, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (p.head_dim < 1 || p.head_dim > SK_MAX_HEAD_DIM || p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads ||
        p.n_splits < 1 || p.n_tokens > 65535 || p.n_splits > 65535 ||
        (p.n_splits > 1 && (p.split_len < 0 || !part_o || !part_ml)))
        return cudaErrorInvalidValue;
    cudaError_t e;
    if (use_gqa >= 4 && attention_decode_fits(p, use_gqa >= 8)) {
        const bool mma = use_gqa >= 8;
        const int stages = use_gqa == 6 || use_gqa == 7 || use_gqa == 9 ? 3 : 2;
        e = attention_decode_launch(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p,
                                    stages, use_gqa != 5 && use_gqa != 6, mma, s);
        goto merge;
    }
    if (use_gqa >= 4) use_gqa = 1;
    if (use_gqa && sk_attention_gqa_fits(&p)) {
        if (p.head_dim == 64)
            e = launch_gqa_d<8>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, use_gqa, s);
        else
            e = launch_gqa_d<16>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, use_gqa,
                                 s);
        goto merge;
    }
    // The vector paths need 16-byte aligned rows: head_dim a multiple of 8 does it.
    switch (p.head_dim) {
    case 8:
        e = launch<8, 1, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    case 16:
        e = launch<8, 2, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    case 32:
        e = launch<8, 4, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    case 64:
        e = launch<8, 8, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    case 128:
        e = launch<8, 16, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    case 256:
        e = launch<8, 32, true>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        break;
    default:
        if (p.head_dim <= 32)
            e = launch<1, 32, false>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        else if (p.head_dim <= 64)
            e = launch<2, 32, false>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        else if (p.head_dim <= 128)
            e = launch<4, 32, false>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        else
            e = launch<8, 32, false>(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
    }
merge:
    return e != cudaSuccess ? e : merge_splits(part_o, part_ml, out, p, s);
}

extern "C" int sk_attention_decode_qkv_fits(const struct sk_attn_params *p)
{
    return p->head_dim == 128 && p->settled_keys && sk_attention_default_gqa() >= 8 && attention_decode_fits(*p, true)
               ? 1
               : 0;
}

extern "C" cudaError_t sk_attention_decode_qkv(const struct sk_qkv_src *src, uint16_t *k_cache, uint16_t *v_cache,
                                               const int32_t *block_tables, const int32_t *token_seq,
                                               const int32_t *pos, float *part_o, float *part_ml, uint16_t *out,
                                               struct sk_attn_params p, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (!sk_attention_decode_qkv_fits(&p) || p.n_tokens > 65535 || p.n_splits < 1 || p.n_splits > 65535 ||
        (p.n_splits > 1 && (p.split_len < 0 || !part_o || !part_ml)))
        return cudaErrorInvalidValue;
    // The qkv product's rows as qkv_head128 reads them: 16-byte accesses, parts of whole rows.
    const int64_t width = (int64_t)(p.n_heads + 2 * p.n_kv_heads) * p.head_dim;
    if (!src || !src->qkv || !src->slot || !src->inv_freq || src->n_parts < 1 || src->n_parts > SK_HOPPER_MAX_SPLITS ||
        (((uintptr_t)src->qkv | (uintptr_t)src->bias | (uintptr_t)src->q_norm | (uintptr_t)src->k_norm) & 15) ||
        (src->n_parts > 1 && (src->part_stride % 4 || src->part_stride < width)))
        return cudaErrorInvalidValue;
    const cudaError_t e = attention_decode_qkv_launch(*src, k_cache, v_cache, block_tables, token_seq, pos, part_o,
                                                      part_ml, out, p, s);
    return e != cudaSuccess ? e : merge_splits(part_o, part_ml, out, p, s);
}
