// Pieces every paged attention kernel shares (attention.cu, attention_decode_gqa.cu,
// attention_prefill.cu and the variants in kernels/dev/): the sliding window's first key and the
// score soft-cap, the key range of a decode block's split, its block-table entries (staged in
// shared memory when they fit), and where a query head's result goes (normalized output, or a
// split's partial for attention_merge_splits). Internal to kernels/: the public entry points are
// in sluice_kernels.h.
#ifndef SLUICE_KERNELS_ATTENTION_COMMON_CUH
#define SLUICE_KERNELS_ATTENTION_COMMON_CUH

#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

// The first key a query at position qpos sees: the start of its sliding window, or key 0.
__device__ __forceinline__ int attn_first_key(const sk_attn_params &p, int qpos)
{
    return p.window > 0 ? max(0, qpos - p.window + 1) : 0;
}

// tanh(x) = 1 - 2 / (1 + e^2x), an ex2 and a fast reciprocal: soft-capping takes a score s to
// cap * tanh(s / cap), so the softmax sees tanh's absolute error times cap (about cap * 1e-7).
// +-inf give +-1 (so masks go on after the cap). The kernels scale q by scale / cap, so that the
// product q.k is the argument itself.
__device__ __forceinline__ float attn_tanh(float x)
{
    return fmaf(-2.0f, __fdividef(1.0f, 1.0f + exp2f(x * 2.8853900817779268f)), 1.0f); // 2 log2(e)
}

// What one block of a decode-attention launch works on: token t (launch index ti, or the ti-th
// listed token) and keys [k_begin, k_end) of split `split`. The token sees keys first .. pos
// (first > 0 with a sliding window): all of them without splits; else fixed ranges of split_len
// keys from `first` on, or those keys cut into n_splits equal ranges (multiples of SK_KV_BLOCK
// long). With a window k_begin need not be block-aligned, and the ranges of the last splits may be
// empty (k_begin >= k_end): such a split adds nothing to the merge.
struct AttnBlockKeys {
    int t, k_begin, k_end;
};

__device__ __forceinline__ AttnBlockKeys attn_block_keys(const sk_attn_params &p, const int32_t *pos, int ti, int split)
{
    AttnBlockKeys r;
    r.t = p.token_list ? p.token_list[ti] : ti;
    const int n_keys = pos[r.t] + 1, first = attn_first_key(p, n_keys - 1);
    r.k_begin = first;
    r.k_end = n_keys;
    if (p.n_splits > 1) {
        const int len = p.split_len > 0 ? p.split_len
                                        : ((n_keys - first + p.n_splits - 1) / p.n_splits + SK_KV_BLOCK - 1) /
                                              SK_KV_BLOCK * SK_KV_BLOCK;
        r.k_begin = first + split * len;
        r.k_end = min(r.k_begin + len, n_keys);
    }
    return r;
}

// The block-table entries of a key range, read through shared memory when the block staged them
// there (so that a key's load does not wait on a table load) and from the table otherwise.
struct AttnRangeTable {
    const int32_t *bt;  // the sequence's block table
    const int32_t *sbt; // its entries blk0.. in shared memory, when staged
    int blk0;
    bool staged;
    // The cache block holding key j of the range.
    __device__ __forceinline__ int64_t block_of(int j) const
    {
        return staged ? sbt[j / SK_KV_BLOCK - blk0] : bt[j / SK_KV_BLOCK];
    }
};

// Stages the entries of keys [begin, end) into sbt (room for cap entries) when they fit; every
// thread of the block takes part, and the caller synchronizes before reading them.
__device__ __forceinline__ AttnRangeTable attn_stage_table(const int32_t *bt, int32_t *sbt, int cap, int begin,
                                                           int end)
{
    AttnRangeTable r;
    r.bt = bt;
    r.sbt = sbt;
    r.blk0 = begin / SK_KV_BLOCK;
    const int n_blk = end > begin ? (end - 1) / SK_KV_BLOCK + 1 - r.blk0 : 0;
    r.staged = sbt && n_blk <= cap;
    if (r.staged)
        for (int i = threadIdx.x; i < n_blk; i += blockDim.x) sbt[i] = bt[r.blk0 + i];
    return r;
}

// Query head qh of token t (index ti in the launch), dimension di: o / l as bf16 without splits;
// else the split's unnormalized o, and (m, l) from the thread with di == 0. m is in natural-log
// units, as attention_merge_splits expects.
__device__ __forceinline__ void attn_store_head(const sk_attn_params &p, __nv_bfloat16 *out, float *part_o,
                                                float *part_ml, int t, int ti, int qh, int split, int di, float o,
                                                float m, float l)
{
    const int d = p.head_dim;
    if (p.n_splits == 1) {
        out[((int64_t)t * p.n_heads + qh) * d + di] = __float2bfloat16_rn(o / l);
        return;
    }
    const int64_t row = ((int64_t)ti * p.n_heads + qh) * p.n_splits + split;
    part_o[row * d + di] = o;
    if (di == 0) {
        part_ml[row * 2] = m;
        part_ml[row * 2 + 1] = l;
    }
}

// The tensor-core streaming decode kernel (attention_decode_gqa.cu), reached through sk_attention
// for the shapes sk_attention_decode_fits takes: 3 ring slots per warp, launched as a programmatic
// dependent of the previous kernel in the stream.
cudaError_t attention_decode_launch(const float *q, const void *k, const void *v, const int32_t *bt,
                                    const int32_t *ts, const int32_t *pos, float *po, float *pml, uint16_t *out,
                                    const sk_attn_params &p, cudaStream_t s);
// The same kernel doing qkv_post's work for its token (sk_attention_decode_qkv, which checks src
// and p).
cudaError_t attention_decode_qkv_launch(const sk_qkv_src &src, void *k, void *v, const int32_t *bt,
                                        const int32_t *ts, const int32_t *pos, float *po, float *pml, uint16_t *out,
                                        const sk_attn_params &p, cudaStream_t s);
// With p.n_splits > 1, the splits' partial results (part_o, part_ml) into out; nothing otherwise
// (attention.cu).
cudaError_t attention_merge_splits(const float *part_o, const float *part_ml, uint16_t *out, const sk_attn_params &p,
                                   cudaStream_t s);

#endif
