// sk_qkv_post and sk_qkv_post_parts: the QKV product's epilogue per token, one warp per head:
// bias, the q/k RMSNorm, rotary embedding, q out in fp32 for attention, and k and v written into
// the paged KV cache in bf16, or e4m3 with p.kv_fp8 (kernels/kv_cache.cuh).
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

#include "kernels/bf16.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/pdl.cuh"
#include "kernels/qkv_head.cuh"
#include "kernels/row_sums.cuh"

namespace
{

// One warp per head of one token: q heads, then k heads, then v heads. qkv may be in n_parts
// parts (sk_qkv_post_parts). At most 64 registers, so that four blocks of 8 warps share an SM
// (latency, not arithmetic, bounds this kernel). FP8: the caches hold e4m3 codes.
template <bool FP8>
__global__ void __launch_bounds__(256, 4)
    qkv_post_kernel(const float *qkv, int n_parts, int64_t part_stride, const float *bias, const float *q_norm,
                    const float *k_norm, const float *inv_freq, const int32_t *pos, const int32_t *slot, float *q_out,
                    kv_elem_t<FP8> *k_cache, kv_elem_t<FP8> *v_cache, sk_qkv_params p, bool vec128)
{
    int t = blockIdx.x;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int d = p.head_dim, half = d / 2;
    int n_all = p.n_heads + 2 * p.n_kv_heads;
    const float *row = qkv + (int64_t)t * n_all * d;
    // Positions and slots are the step's inputs, not the product's output: read before the wait.
    float fpos = (float)pos[t];
    int64_t sl = slot[t];
    if (p.seq_freqs) inv_freq = p.seq_freqs + (int64_t)p.token_seq[t] * half;
    // The decode attention that follows waits for this kernel's output before reading it.
    pdl_let_dependents_launch();
    pdl_wait();
    int64_t blk = sl / SK_KV_BLOCK, off = sl % SK_KV_BLOCK;
    // Blocks (t, y) take heads y*nw + warp, y*nw + warp + nw*gridDim.y, ...: enough blocks for a
    // decode batch to fill the GPU.
    for (int h = blockIdx.y * nw + warp; h < n_all; h += nw * gridDim.y) {
        const float *src = row + (int64_t)h * d;
        const float *b = bias ? bias + (int64_t)h * d : nullptr;
        bool is_q = h < p.n_heads, is_k = !is_q && h < p.n_heads + p.n_kv_heads;
        if (vec128) {
            const int kvh = is_q ? 0 : is_k ? h - p.n_heads : h - p.n_heads - p.n_kv_heads;
            const int64_t at = ((blk * p.n_kv_heads + kvh) * SK_KV_BLOCK + off) * d;
            const float4 y = qkv_head128(src, n_parts, part_stride, b, is_q || is_k, is_q ? q_norm : k_norm, p.eps,
                                         p.interleaved, inv_freq, fpos, lane);
            if (is_q)
                reinterpret_cast<float4 *>(q_out + ((int64_t)t * p.n_heads + h) * d)[lane] = y;
            else
                kv_store4<FP8>((is_k ? k_cache : v_cache) + at, lane, y, is_k ? p.k_scale : p.v_scale);
            continue;
        }
        if (!is_q && !is_k) {
            int kvh = h - p.n_heads - p.n_kv_heads;
            kv_elem_t<FP8> *dst = v_cache + ((blk * p.n_kv_heads + kvh) * SK_KV_BLOCK + off) * d;
            for (int i = lane; i < d; i += 32)
                dst[i] = kv_from_f32<FP8>(sum_parts_at(src, n_parts, part_stride, i) + (b ? b[i] : 0.0f), p.v_scale);
            continue;
        }
        const float *nw_ = is_q ? q_norm : k_norm;
        float inv = 1.0f;
        if (nw_) {
            float ss = 0.0f;
            for (int i = lane; i < d; i += 32) {
                float v = sum_parts_at(src, n_parts, part_stride, i) + (b ? b[i] : 0.0f);
                ss += v * v;
            }
            ss = warp_sum(ss);
            inv = rsqrtf(ss / (float)d + p.eps);
        }
        float *qdst = nullptr;
        kv_elem_t<FP8> *kdst = nullptr;
        if (is_q)
            qdst = q_out + ((int64_t)t * p.n_heads + h) * d;
        else
            kdst = k_cache + ((blk * p.n_kv_heads + (h - p.n_heads)) * SK_KV_BLOCK + off) * d;
        for (int i = lane; i < half; i += 32) {
            int i0 = p.interleaved ? 2 * i : i, i1 = p.interleaved ? 2 * i + 1 : i + half;
            float x0 = sum_parts_at(src, n_parts, part_stride, i0) + (b ? b[i0] : 0.0f);
            float x1 = sum_parts_at(src, n_parts, part_stride, i1) + (b ? b[i1] : 0.0f);
            if (nw_) {
                x0 = nw_[i0] * (x0 * inv);
                x1 = nw_[i1] * (x1 * inv);
            }
            float sn, cs;
            sincosf(fpos * inv_freq[i], &sn, &cs);
            float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
            if (qdst) {
                qdst[i0] = y0;
                qdst[i1] = y1;
            } else {
                kdst[i0] = kv_from_f32<FP8>(y0, p.k_scale);
                kdst[i1] = kv_from_f32<FP8>(y1, p.k_scale);
            }
        }
    }
}

} // namespace

extern "C" cudaError_t sk_qkv_post_parts(const float *qkv, int n_parts, int64_t part_stride, const float *bias,
                                         const float *q_norm, const float *k_norm, const float *inv_freq,
                                         const int32_t *pos, const int32_t *slot, float *q_out, void *k_cache,
                                         void *v_cache, struct sk_qkv_params p, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (p.head_dim < 2 || p.head_dim % 2 || (p.kv_fp8 && !(p.k_scale > 0.0f && p.v_scale > 0.0f)))
        return cudaErrorInvalidValue;
    int n_all = p.n_heads + 2 * p.n_kv_heads;
    if (n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS || (n_parts > 1 && part_stride < (int64_t)n_all * p.head_dim))
        return cudaErrorInvalidValue;
    int warps = n_all < 8 ? n_all : 8;
    dim3 grid(p.n_tokens, (n_all + warps - 1) / warps);
    // head_dim 128 takes 16-byte accesses where every row they touch starts 16-byte aligned.
    const uintptr_t at = (uintptr_t)qkv | (uintptr_t)bias | (uintptr_t)q_norm | (uintptr_t)k_norm | (uintptr_t)q_out |
                         (uintptr_t)k_cache | (uintptr_t)v_cache;
    const bool vec128 = p.head_dim == 128 && !(at & 15) && (n_parts == 1 || part_stride % 4 == 0);
    if (p.kv_fp8)
        return launch_pdl(qkv_post_kernel<true>, grid, dim3(32 * warps), 0, s, qkv, n_parts, part_stride, bias, q_norm,
                          k_norm, inv_freq, pos, slot, q_out, (uint8_t *)k_cache, (uint8_t *)v_cache, p, vec128);
    return launch_pdl(qkv_post_kernel<false>, grid, dim3(32 * warps), 0, s, qkv, n_parts, part_stride, bias, q_norm,
                      k_norm, inv_freq, pos, slot, q_out, (__nv_bfloat16 *)k_cache, (__nv_bfloat16 *)v_cache, p,
                      vec128);
}

extern "C" cudaError_t sk_qkv_post(const float *qkv, const float *bias, const float *q_norm, const float *k_norm,
                                   const float *inv_freq, const int32_t *pos, const int32_t *slot, float *q_out,
                                   void *k_cache, void *v_cache, struct sk_qkv_params p, cudaStream_t s)
{
    return sk_qkv_post_parts(qkv, 1, 0, bias, q_norm, k_norm, inv_freq, pos, slot, q_out, k_cache, v_cache, p, s);
}
