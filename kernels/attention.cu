// Paged causal attention for the ragged batch (prefill chunks and decode tokens alike), and
// sk_attention's choice between this kernel and the streaming decode kernel
// (attention_decode_gqa.cu), which the backend's planner makes.
//
// One block of 4 warps per (query head, query token, key split). A warp handles KPW = 32/G keys
// at a time: G lanes share one key, each lane holding E consecutive elements of the head (16-byte
// loads on the vector paths), so a key's dot product needs log2(G) shuffles. Each lane group keeps
// its own online softmax (running max m, sum l, unnormalized output); the groups are merged in
// shared memory at the end. With n_splits > 1 (long contexts, few queries: flash-decoding) each
// split writes its partial (o, m, l) and a second kernel merges the splits. A sliding window only
// moves the block's key range (attn_block_keys), so no key before it is read, nor its block-table
// entry. Soft-capping is compiled into a second instance of the kernel (CAP), since in the loop
// it costs registers. An FP8 cache (--kv-cache-dtype fp8) is a third parameter (FP8): its codes
// are loaded 8 to a lane (an 8-byte load) where bf16 takes 16 bytes, K's scale folded into q's
// and V's applied to the output (kernels/kv_cache.cuh).
#include "kernels/attention_common.cuh"
#include "kernels/bf16.cuh"
#include "kernels/kv_cache.cuh"

#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>

namespace
{

constexpr int kWarps = 4;
// Keys per lane group and step. Four, with all their loads issued first, made decode no faster
// and prefill much slower: the loads' registers cost more than their latency.
constexpr int kUnroll = 1;

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *out)
{
    bf16x8_to_f32(*reinterpret_cast<const uint4 *>(p), out);
}

__device__ __forceinline__ void load8(const uint8_t *p, float *out)
{
    kv_e4m3x8_to_f32(*reinterpret_cast<const uint2 *>(p), out);
}

__device__ __forceinline__ float load1(const __nv_bfloat16 *p)
{
    return __bfloat162float(*p);
}

__device__ __forceinline__ float load1(const uint8_t *p)
{
    return kv_e4m3_to_f32(*p);
}

// CAP: the scores are soft-capped (p.softcap > 0; otherwise it must be 0). FP8: the caches hold
// e4m3 codes.
template <int E, int G, bool VEC, bool CAP, bool FP8>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const float *q, const kv_elem_t<FP8> *k_cache, const kv_elem_t<FP8> *v_cache,
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
    // Scores in natural units; soft-capped, divided by the cap (attn_tanh's argument).
    const float kscale = FP8 ? p.scale * p.k_scale : p.scale;
    const float qs = CAP ? kscale / p.softcap : kscale;
    const float *qrow = q + ((int64_t)t * p.n_heads + h) * d;
#pragma unroll
    for (int i = 0; i < E; i++) {
        int di = g * E + i;
        qv[i] = (VEC || di < d) ? qrow[di] * qs : 0.0f;
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
                        kf[u][i] = in ? load1(k_cache + off + i) : 0.0f;
                        vf[u][i] = in ? load1(v_cache + off + i) : 0.0f;
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
                if (CAP) s = p.softcap * attn_tanh(s);
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
        attn_store_head(p, out, part_o, part_ml, t, ti, h, split, di, FP8 ? o * p.v_scale : o, mx, lt);
    }
}

// Splits whose key range was empty (past a sliding window's keys) left m = -inf and add nothing;
// the split holding the token's own key never is empty.
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

template <int E, int G, bool VEC, bool CAP, bool FP8>
cudaError_t launch_k(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                     const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    dim3 grid(p.n_heads, p.n_tokens, p.n_splits);
    size_t sh = (size_t)kWarps * (32 / G) * (p.head_dim + 2) * sizeof(float);
    if (sh > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_kernel<E, G, VEC, CAP, FP8>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sh);
        if (e != cudaSuccess) return e;
    }
    attention_kernel<E, G, VEC, CAP, FP8><<<grid, kWarps * 32, sh, s>>>(
        q, (const kv_elem_t<FP8> *)k, (const kv_elem_t<FP8> *)v, bt, ts, pos, po, pml, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

template <int E, int G, bool VEC, bool FP8>
cudaError_t launch_cap(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                       const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p,
                       cudaStream_t s)
{
    if (p.softcap > 0) return launch_k<E, G, VEC, true, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    return launch_k<E, G, VEC, false, FP8>(q, k, v, bt, ts, pos, po, pml, out, p, s);
}

template <int E, int G, bool VEC>
cudaError_t launch(const float *q, const void *k, const void *v, const int32_t *bt, const int32_t *ts,
                   const int32_t *pos, float *po, float *pml, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    if (p.kv_fp8) return launch_cap<E, G, VEC, true>(q, k, v, bt, ts, pos, po, pml, out, p, s);
    return launch_cap<E, G, VEC, false>(q, k, v, bt, ts, pos, po, pml, out, p, s);
}

} // namespace

cudaError_t attention_merge_splits(const float *part_o, const float *part_ml, uint16_t *out, const sk_attn_params &p,
                                   cudaStream_t s)
{
    if (p.n_splits == 1) return cudaSuccess;
    dim3 grid(p.n_heads, p.n_tokens);
    int threads = p.head_dim < 32 ? 32 : (p.head_dim + 31) / 32 * 32;
    merge_splits_kernel<<<grid, threads, 0, s>>>(part_o, part_ml, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_attention(const float *q, const void *k_cache, const void *v_cache,
                                    const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                    float *part_o, float *part_ml, uint16_t *out, struct sk_attn_params p,
                                    enum sk_attn_kernel kernel, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (p.head_dim < 1 || p.head_dim > SK_MAX_HEAD_DIM || p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads ||
        p.n_splits < 1 || p.n_tokens > 65535 || p.n_splits > 65535 ||
        (p.n_splits > 1 && (p.split_len < 0 || !part_o || !part_ml)) ||
        (p.kv_fp8 && !(p.k_scale > 0.0f && p.v_scale > 0.0f)))
        return cudaErrorInvalidValue;
    cudaError_t e;
    if (kernel == SK_ATTN_DECODE_STREAM) {
        if (!sk_attention_decode_fits(&p)) return cudaErrorInvalidValue;
        e = attention_decode_launch(q, k_cache, v_cache, block_tables, token_seq, pos, part_o, part_ml, out, p, s);
        return e != cudaSuccess ? e : attention_merge_splits(part_o, part_ml, out, p, s);
    }
    if (kernel != SK_ATTN_PER_HEAD) return cudaErrorInvalidValue;
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
    return e != cudaSuccess ? e : attention_merge_splits(part_o, part_ml, out, p, s);
}

extern "C" cudaError_t sk_attention_decode_qkv(const struct sk_qkv_src *src, void *k_cache, void *v_cache,
                                               const int32_t *block_tables, const int32_t *token_seq,
                                               const int32_t *pos, float *part_o, float *part_ml, uint16_t *out,
                                               struct sk_attn_params p, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (!sk_attention_decode_qkv_fits(&p) || p.n_tokens > 65535 || p.n_splits < 1 || p.n_splits > 65535 ||
        (p.n_splits > 1 && (p.split_len < 0 || !part_o || !part_ml)) ||
        (p.kv_fp8 && !(p.k_scale > 0.0f && p.v_scale > 0.0f)))
        return cudaErrorInvalidValue;
    // The qkv product's rows as qkv_head128 reads them: 16-byte accesses, parts of whole rows.
    const int64_t width = (int64_t)(p.n_heads + 2 * p.n_kv_heads) * p.head_dim;
    if (!src || !src->qkv || !src->slot || !src->inv_freq || src->n_parts < 1 || src->n_parts > SK_HOPPER_MAX_SPLITS ||
        (((uintptr_t)src->qkv | (uintptr_t)src->bias | (uintptr_t)src->q_norm | (uintptr_t)src->k_norm) & 15) ||
        (src->n_parts > 1 && (src->part_stride % 4 || src->part_stride < width)))
        return cudaErrorInvalidValue;
    const cudaError_t e = attention_decode_qkv_launch(*src, k_cache, v_cache, block_tables, token_seq, pos, part_o,
                                                      part_ml, out, p, s);
    return e != cudaSuccess ? e : attention_merge_splits(part_o, part_ml, out, p, s);
}
