/* sluice's CUDA kernels behind plain C launchers. Each launcher enqueues its work on the given
 * stream and returns the launch's cudaError_t (cudaGetLastError right after the launch), so the
 * caller checks every launch. bf16 data travel as uint16_t (the raw bits) on the C side.
 *
 * Paged KV cache layout, per layer and for K and V alike: [block][kv_head][KV_BLOCK_SIZE][head_dim]
 * bf16, or with kv_fp8 (--kv-cache-dtype fp8) e4m3 codes of value / the layer's k_scale or v_scale,
 * so one block of one head is a contiguous run that a warp reads in one sweep. A token's slot is
 * block_id * 16 + (position % 16). The launchers take the caches as void pointers for that. */
#ifndef SLUICE_KERNELS_H
#define SLUICE_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#include "kernels/sk_shapes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Source dtypes, the same numbering as enum dtype in worker/model/model.h. */
enum { SK_F32 = 0, SK_F16 = 1, SK_BF16 = 2 };

/* --- weights (kernels/convert.cu, kernels/dummy.cu) --------------------------------- */
cudaError_t sk_convert_to_bf16(uint16_t *dst, const void *src, int src_dtype, int64_t n, cudaStream_t s);
/* model_dummy_value(seed, id, index0 + i) for i < n (plus 1 when is_norm), as bf16. */
cudaError_t sk_fill_dummy_bf16(uint16_t *dst, uint64_t seed, uint64_t id, uint64_t index0, int64_t n, int is_norm,
                               cudaStream_t s);
cudaError_t sk_fill_dummy_f32(float *dst, uint64_t seed, uint64_t id, uint64_t index0, int64_t n, int is_norm,
                              cudaStream_t s);

/* --- per-token layers (kernels/<op>.cu: embed, add_rmsnorm, silu_mul, qkv_post, ...) --- */
struct sk_sample_out;
/* x[t, :] = float(table[id, :]) for id = tokens[t], or, where tokens[t] < 0, the token the
 * previous step sampled for row -1 - tokens[t]: prev[-1 - tokens[t]].token (the engine queues a
 * decode step before its input tokens reach the host; prev may be NULL when none is < 0). table
 * holds the rows of ids row0 .. row0 + n_rows - 1 (0 and the vocabulary, or a tensor-parallel
 * rank's share of it); any other id's x[t] is zeros. */
cudaError_t sk_embed(float *x, const uint16_t *table, const int32_t *tokens, const struct sk_sample_out *prev,
                     int row0, int n_rows, int n_tokens, int hidden, cudaStream_t s);
/* For each output row r (source row t = rows ? rows[r] : r): v = x[t] + (delta ? delta[t] : 0);
 * when rows is NULL x[t] = v is stored back (the residual stream); y[r] = bf16(w * v *
 * rsqrt(mean(v^2) + eps)), or bf16(v) when w is NULL (OLMo 2's layers, which norm only after). */
cudaError_t sk_add_rmsnorm(float *x, const float *delta, const int32_t *rows, const float *w, uint16_t *y, int n_rows,
                           int hidden, float eps, cudaStream_t s);
/* The same with delta in n_parts parts (part j of row t at delta + j * part_stride + t * hidden),
 * added in order j = 0, 1, ... before the residual: a split product's sums (sk_hopper_gemm_parts).
 * part_stride: at least n_rows * hidden, or (gathered rows) the source's rows * hidden. */
cudaError_t sk_add_rmsnorm_parts(float *x, const float *delta, int n_parts, int64_t part_stride, const int32_t *rows,
                                 const float *w, uint16_t *y, int n_rows, int hidden, float eps, cudaStream_t s);
/* out[t, i] = bf16(silu(gu[t, i]) * gu[t, inter + i]) for gu = [gate | up] rows of 2*inter. */
cudaError_t sk_silu_mul(uint16_t *out, const float *gu, int n_tokens, int inter, cudaStream_t s);
/* The same over rows of gate and up interleaved in blocks of SK_GATE_UP_BLOCK (the layout of a
 * gate/up weight pair made by sk_gate_up_interleave, for sk_hopper_gemm_swiglu): needs
 * inter % SK_GATE_UP_BLOCK == 0. */
cudaError_t sk_silu_mul_interleaved(uint16_t *out, const float *gu, int n_tokens, int inter, cudaStream_t s);
/* Either of the two from bf16 gate/up rows (a product written in bf16, as prefill's is). */
cudaError_t sk_silu_mul_bf16(uint16_t *out, const uint16_t *gu, int n_tokens, int inter, int interleaved,
                             cudaStream_t s);
/* Rearranges a [gate; up] bf16 weight pair (2 * inter rows of k_in) from src into dst (not
 * overlapping) in blocks of SK_GATE_UP_BLOCK rows: gate block j, then up block j. */
cudaError_t sk_gate_up_interleave(uint16_t *dst, const uint16_t *src, int inter, int k_in, cudaStream_t s);

/* The gated activations of sk_glu (model_family.h's enum model_act, in the same order). */
enum { SK_ACT_SILU = 0, SK_ACT_GELU_TANH = 1 };
/* out[t, i] = bf16(act(gate + bias[i]) * (up + bias[inter + i])) for gu = [gate | up] rows of
 * 2 * inter fp32 (bias NULL: none): the MLP's activation where the fused SwiGLU paths do not
 * apply (mlp_bias, GeGLU). */
cudaError_t sk_glu(uint16_t *out, const float *gu, const float *bias, int act, int n_tokens, int inter,
                   cudaStream_t s);
/* A sublayer's output made ready for the residual add, per row t < n_rows of hidden floats:
 * out[t] = scale * norm(v), v = delta's n_parts parts added in order (as sk_add_rmsnorm_parts
 * adds them) plus bias; norm(v) = norm_w * v * rsqrt(mean(v^2) + eps), or v when norm_w is NULL;
 * bias NULL: none; scale 0 counts as 1. out may be delta (its first part). With one part and
 * neither bias nor norm, it scales rows in place (the families' scaled embeddings). */
cudaError_t sk_residual_addend(float *out, const float *delta, int n_parts, int64_t part_stride, const float *bias,
                               const float *norm_w, float scale, int n_rows, int hidden, float eps, cudaStream_t s);
/* logits[i] /= divisor (0: not), then logits[i] = softcap * tanh(logits[i] / softcap) (0: not),
 * for i < n. */
cudaError_t sk_logits_finish(float *logits, int64_t n, float divisor, float softcap, cudaStream_t s);

struct sk_qkv_params {
    int n_tokens;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    float eps;       /* q/k norm */
    int interleaved; /* rope pairs (2i, 2i+1) instead of (i, i + d/2) */
    /* Rope frequencies that depend on the sequence's length (LongRoPE, dynamic NTK): token t
     * rotates by seq_freqs[token_seq[t] * head_dim / 2 + i] instead of inv_freq[i]; NULL: not. */
    const float *seq_freqs;
    const int32_t *token_seq;
    int kv_fp8;              /* the caches are e4m3 (sk_attn_params' kv_fp8), k and v written as */
    float k_scale, v_scale;  /* e4m3(k / k_scale), e4m3(v / v_scale): kernels/kv_cache.cuh */
};
/* qkv: [T, (n_heads + 2 n_kv) * head_dim] fp32 (q heads, then k, then v). Adds bias (if not
 * NULL), applies the per-head RMSNorm of q and k (if q_norm/k_norm not NULL), rotates q and k
 * by pos[t] * inv_freq[i] (head_dim/2 frequencies), writes q to q_out [T, n_heads, head_dim]
 * fp32 and k, v into the caches at slot[t] (bf16, or e4m3 with p.kv_fp8). */
cudaError_t sk_qkv_post(const float *qkv, const float *bias, const float *q_norm, const float *k_norm,
                        const float *inv_freq, const int32_t *pos, const int32_t *slot, float *q_out, void *k_cache,
                        void *v_cache, struct sk_qkv_params p, cudaStream_t s);
/* The same with qkv in n_parts parts (part j of token t at qkv + j * part_stride + t * width),
 * added in order j = 0, 1, ...: the qkv product's split-K sums (sk_hopper_gemm_parts). */
cudaError_t sk_qkv_post_parts(const float *qkv, int n_parts, int64_t part_stride, const float *bias,
                              const float *q_norm, const float *k_norm, const float *inv_freq, const int32_t *pos,
                              const int32_t *slot, float *q_out, void *k_cache, void *v_cache,
                              struct sk_qkv_params p, cudaStream_t s);

/* OLMo 2's q/k norms over the whole projection, per token t < n_tokens of a row [q | k | v]
 * (q_dim, kv_dim, kv_dim floats) in n_parts parts as sk_qkv_post_parts takes it: the parts are
 * added in order plus bias (NULL: none) into the first part, then q = q_norm * q * rsqrt(mean(q^2)
 * + eps) and k likewise with k_norm over kv_dim. sk_qkv_post then takes the first part alone, with
 * no bias and no norms. */
cudaError_t sk_qkv_norm_full(float *qkv, int n_parts, int64_t part_stride, const float *bias, const float *q_norm,
                             const float *k_norm, int n_tokens, int q_dim, int kv_dim, float eps, cudaStream_t s);

/* --- small-batch matrix-vector products --------------------------------------------- */
/* y[m, n] = sum_k x[m, k] * w[n, k] for m < rows: bf16 operands, fp32 accumulation and output.
 * For decode, where cuBLAS's general kernels leave bandwidth unused: one warp per output
 * feature, 16-byte streaming loads of w, several in flight. Needs rows <= SK_GEMV_MAX_ROWS,
 * k_in % 8 == 0 and 16-byte aligned w and x; returns cudaErrorInvalidValue otherwise. */
cudaError_t sk_gemv(const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in, cudaStream_t s);

/* Decode products of 2..SK_HOPPER_MAX_ROWS rows on Hopper's own path (kernels/hopper_gemm.cu):
 * y[m, n] = sum_k x[m, k] * w[n, k], bf16 operands, fp32 accumulation and output, weights
 * streamed once through the bulk tensor copy engine into wgmma, split-K partial sums added
 * within a thread block cluster. The handle caches tensor maps keyed by pointer and shape; it is
 * not thread-safe. sk_hopper_gemm_create answers cudaErrorNotSupported unless the build has
 * sm_90a code and the current device is compute capability 9.0. splits <= 0 picks the split
 * count for the shape (sk_hopper_gemm_splits, which depends on n_out and k_in only, so a row's
 * result does not depend on the batch size). Needs k_in % 8 == 0, 16-byte aligned w and x and
 * splits <= SK_HOPPER_MAX_SPLITS; returns cudaErrorInvalidValue otherwise. */
struct sk_hopper_gemm;
cudaError_t sk_hopper_gemm_create(struct sk_hopper_gemm **out);
void sk_hopper_gemm_destroy(struct sk_hopper_gemm *h);
int sk_hopper_gemm_splits(const struct sk_hopper_gemm *h, int n_out, int k_in);
/* Tests: the tensor-map cache's size (1: every lookup evicts the map before it). */
void sk_hopper_gemm_set_map_slots(struct sk_hopper_gemm *h, int n);
cudaError_t sk_hopper_gemm(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, int rows,
                           int n_out, int k_in, int splits, cudaStream_t s);
/* The same product whose partial sums are not added: part s (of *n_parts) is written to
 * y + s * rows * n_out, for a next kernel that adds them in split order (sk_add_rmsnorm_parts);
 * their sum is sk_hopper_gemm's y with the same splits bit for bit (splits <= 0: the count of
 * sk_hopper_gemm_splits). y must hold SK_HOPPER_MAX_SPLITS * rows * n_out floats. early_dependents:
 * the next kernel on s, if launched as a programmatic dependent, may launch once all of this
 * one's blocks run (not when they end), to do what precedes its wait meanwhile (kernels/pdl.cuh). */
cudaError_t sk_hopper_gemm_parts(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, int rows,
                                 int n_out, int k_in, int splits, int *n_parts, int early_dependents,
                                 cudaStream_t s);
/* The whole MLP of a decode batch in one launch: act = silu(gate) * up as sk_hopper_gemm_swiglu
 * (w_gu interleaved, 2 * inter rows of hidden), then the down product of act (w_down: hidden rows
 * of inter) left in *n_parts split parts in y as sk_hopper_gemm_parts; act and y hold the same bits
 * as those two launches give. Down's blocks start while gate/up's still run, each waiting only for
 * the activations of its K range. Needs both halves' conditions. Launches on one handle must be
 * stream-ordered (they share the handle's counters, two sets taken in turn). early_dependents as
 * for sk_hopper_gemm_parts. */
cudaError_t sk_hopper_mlp(struct sk_hopper_gemm *h, const uint16_t *w_gu, const uint16_t *w_down, const uint16_t *x,
                          uint16_t *act, float *y, int rows, int hidden, int inter, int *n_parts, int early_dependents,
                          cudaStream_t s);
/* The MLP's first half in one launch: w is [gate; up] interleaved in blocks of 64 rows
 * (sk_gate_up_interleave's layout, 2 * inter rows), and act[m, j] = silu(gate_j) * up_j in bf16.
 * Needs inter % 64 == 0 and a 16-byte aligned act besides sk_hopper_gemm's conditions.
 * early_dependents as for sk_hopper_gemm_parts. */
cudaError_t sk_hopper_gemm_swiglu(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, uint16_t *act,
                                  int rows, int inter, int k_in, int early_dependents, cudaStream_t s);
/* The same weight stream on FP8 operands: y[m, n] = w_scale[n] * x_scale[m] * sum_k w[n, k] x[m, k]
 * with w [n_out, k_in] and x [rows, k_in] e4m3 codes (x quantized per token, sk_fp8_quantize_rows),
 * each code times code exact in fp32 and the sums fp32, for 1..SK_HOPPER_MAX_ROWS rows; split-K
 * sums added within clusters (splits <= 0: sk_hopper_gemm_splits's count for the bf16 product of
 * k_in / 2, which streams the same bytes). Needs k_in % 16 == 0 and 16-byte aligned w and x. A
 * programmatic dependent: reads x and x_scale only after the kernel before it, and lets the
 * kernel after it launch at once. */
cudaError_t sk_hopper_fp8_gemm(struct sk_hopper_gemm *h, const uint8_t *w, const float *w_scale, const uint8_t *x,
                               const float *x_scale, float *y, int rows, int n_out, int k_in, int splits,
                               cudaStream_t s);

/* --- attention ------------------------------------------------------------------------ */
/* Causal attention of each query token t (sequence token_seq[t], position pos[t]) over keys
 * 0..pos[t] of its sequence (with p.window, the last p.window of them: entries of block_tables
 * wholly before every query's window are never read; with p.softcap, soft-capped scores), read
 * from the paged cache through block_tables[seq], on the given kernel (struct sk_attn_params and
 * enum sk_attn_kernel: kernels/sk_shapes.h). The current chunk's keys must already be in the
 * cache (sk_qkv_post puts them there). q: [T, n_heads, d] fp32; out: [T, n_heads * d] bf16.
 * part_o (T * n_heads * n_splits * d floats) and part_ml (T * n_heads * n_splits * 2 floats) are
 * scratch used when n_splits > 1.
 * SK_ATTN_DECODE_STREAM launches as a programmatic dependent of the previous kernel and pulls
 * each warp's keys through a shared-memory ring (kernels/attention_decode_gqa.cu); it answers
 * cudaErrorInvalidValue for a p that sk_attention_decode_fits refuses. */
cudaError_t sk_attention(const float *q, const void *k_cache, const void *v_cache, const int32_t *block_tables,
                         const int32_t *token_seq, const int32_t *pos, float *part_o, float *part_ml, uint16_t *out,
                         struct sk_attn_params p, enum sk_attn_kernel kernel, cudaStream_t s);

/* sk_qkv_post_parts' inputs, for the decode attention that does its work. */
struct sk_qkv_src {
    const float *qkv; /* the qkv product in n_parts parts, as sk_qkv_post_parts takes it */
    int n_parts;
    int64_t part_stride;
    const float *bias, *q_norm, *k_norm, *inv_freq; /* as for sk_qkv_post (NULL: none) */
    const int32_t *slot;                            /* each token's cache slot */
    float eps;
    int interleaved;
};
/* sk_qkv_post_parts and sk_attention's streaming kernel in one, for query tokens that are each their
 * sequence's only one in the step (settled_keys): each block computes its query heads from the
 * qkv parts (row t of the product for token t), and the block holding the token's own key also
 * its k and v, which it writes to the caches at src->slot[t] and adds to its result itself
 * instead of reading them back. Every other key comes from the cache, and all of those may be
 * read before the previous kernel (the qkv product) ends. Only the listed tokens' k and v are
 * written. cudaErrorInvalidValue where sk_attention_decode_qkv_fits refuses p. */
cudaError_t sk_attention_decode_qkv(const struct sk_qkv_src *src, void *k_cache, void *v_cache,
                                    const int32_t *block_tables, const int32_t *token_seq, const int32_t *pos,
                                    float *part_o, float *part_ml, uint16_t *out, struct sk_attn_params p,
                                    cudaStream_t s);

/* Prefill attention on the tensor cores (mma.sync bf16, fp32 accumulation), FlashAttention-2
 * style: a block takes 64 consecutive query tokens of one sequence for one head and walks 64-key
 * tiles of the paged cache up to the causal limit with an online softmax. tiles holds n_tiles triples
 * (first token, count <= SK_PREFILL_TILE, sequence); other parameters as for sk_attention (n_splits
 * and token_list unused). head_dim 64, 128 or 256 only (sk_attention_prefill_fits):
 * cudaErrorInvalidValue otherwise. */
cudaError_t sk_attention_prefill(const float *q, const void *k_cache, const void *v_cache,
                                 const int32_t *block_tables, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                 uint16_t *out, struct sk_attn_params p, cudaStream_t s);

/* --- sampling (kernels/sample.cu) ----------------------------------------------------- */
/* One sampled row's parameters, as worker/sampler/sampler.h defines them. */
struct sk_sample_row {
    float temperature, top_p, min_p;
    float rep_penalty, presence, frequency;
    int32_t top_k, n_logprobs;
    uint64_t seed, n_generated;
    int32_t hist_off, n_history, n_output;
    /* Structured output: the row's allowed-token bitmask starts at word mask_off of masks (bit
     * id % 32 of word id / 32, (vocab + 31) / 32 words); -1: no mask. */
    int32_t mask_off;
    /* logit_bias: n_bias token ids at history[bias_off], their biases (float bits) right after
     * them; min_tokens: n_supp suppressed ids at history[supp_off]. Offsets are from history's
     * start, not hist_off. */
    int32_t bias_off, n_bias, supp_off, n_supp;
};
struct sk_sample_out {
    int32_t token;
    float logprob;
    float lse; /* log-sum-exp of the raw logits, kept for sk_sample_finish */
    int32_t n_top;
    /* Set by sk_sample_prepare when a mask leaves the token no choice (no allowed token with a
     * finite logit: the lowest allowed id; none allowed at all: -1): sk_sample_finish keeps it. */
    int32_t fixed;
    int32_t top_ids[SK_MAX_TOP];
    float top_logprobs[SK_MAX_TOP];
};
/* Step 1 of sampling for rows rows of logits [rows, vocab]: logprobs and top logprobs from the
 * raw logits, penalties, logit bias, suppressed tokens and the mask (sampler.h steps 2 and 2b)
 * into work, then greedy rows get their token; other rows get work = expf(l/T - max) (the
 * weights). counts: rows*vocab ints of scratch. history (penalties, biases, suppressed ids) and
 * masks may be NULL when no row uses them. */
cudaError_t sk_sample_prepare(const float *logits, const struct sk_sample_row *rows, const int32_t *history,
                              const uint32_t *masks, float *work, int32_t *counts, struct sk_sample_out *out,
                              int n_rows, int vocab, cudaStream_t s);
/* Sorts each row of work (descending, stable: equal weights keep ascending ids) into sorted_w and
 * sorted_ids, for top-k/top-p. ids_in: iota rows; offsets: n_rows + 1 row starts. */
cudaError_t sk_sort_temp_bytes(int max_rows, int vocab, size_t *bytes);
cudaError_t sk_sample_sort(void *temp, size_t temp_bytes, const float *work, const int32_t *ids_in,
                           const int32_t *offsets, float *sorted_w, int32_t *sorted_ids, int n_rows, int vocab,
                           cudaStream_t s);
/* sk_sample_sort's fixed inputs for rows rows of n: dst[r * n + i] = i (ids_in, the iota rows). */
cudaError_t sk_fill_iota_rows(int32_t *dst, int rows, int n, cudaStream_t s);
/* offsets[r] = r * n for r <= rows: the segment bounds of rows packed n apart. */
cudaError_t sk_fill_row_offsets(int32_t *offsets, int rows, int n, cudaStream_t s);
/* Step 2: for non-greedy rows, top-k/top-p (through sorted_w/sorted_ids when sorted != 0), min-p
 * and the seeded draw; fills out->token and out->logprob. */
cudaError_t sk_sample_finish(const float *logits, const float *work, const float *sorted_w, const int32_t *sorted_ids,
                             int sorted, const struct sk_sample_row *rows, struct sk_sample_out *out, int n_rows,
                             int vocab, cudaStream_t s);

/* --- mixture of experts (kernels/moe_*.cu: one file per launcher) ---------------------- */
/* Per token t < n_tokens, from its router logits [n_tokens, n_experts] fp32: the softmax, the
 * top_k experts by probability (largest first; equal probabilities: the lower expert id first)
 * into choice[t * top_k + r], and their probabilities into weight[...], divided by their sum when
 * renormalise. n_experts <= SK_MOE_MAX_EXPERTS, top_k <= SK_MOE_MAX_TOP_K. */
cudaError_t sk_moe_route(const float *logits, int n_tokens, int n_experts, int top_k, int renormalise,
                         int32_t *choice, float *weight, cudaStream_t s);
/* Counting sort of the n_pairs choices (pair i = token i / top_k) by expert, stable (pair order
 * within an expert), in one block: order[p] = the pair at sorted position p, pos[i] = the sorted
 * position of pair i, seg[e]..seg[e + 1] the positions of expert e (n_experts + 1 ints), active
 * the experts with a pair in ascending order and active[n_experts] their count. */
cudaError_t sk_moe_sort(const int32_t *choice, int n_pairs, int n_experts, int32_t *order, int32_t *pos,
                        int32_t *seg, int32_t *active, cudaStream_t s);
/* The rows of a grouped product. seg NULL: one group (weights w) of n_rows rows, row r's input
 * x[r]. Otherwise group e = expert e (weights w + e * its rows * k_in) holds rows seg[e] ..
 * seg[e + 1] of n_rows, active as sk_moe_sort leaves it, and row r's input is
 * x[order[r] / top_k] (order NULL: x[r]). */
struct sk_moe_rows {
    const int32_t *seg, *active, *order;
    int n_groups, n_rows, top_k;
    int invariant; /* 1: the CUDA-core product at every row count (--deterministic) */
};
/* For every row r of rows and feature n < n_out, over k_in (% 8 == 0; w and x 16-byte aligned):
 * with y: y[r, n] = x_r . w_g[n] (fp32); with act (bf16, y NULL): w_g is [gate (n_out rows); up
 * (n_out rows)] and act[r, n] = silu(x_r . gate_n) * (x_r . up_n). A warp streams two weight rows
 * (gate and up, or two features) once per pass over 4 of its group's rows (few rows per group, as
 * in decode) or 16; a row's sums do not depend on the other rows or the pass. Products of more
 * than 8 rows per group on an even spread (dense: more than 8 rows; k_in % 16 == 0) run on the
 * tensor cores instead (mma.sync, fp32 sums), unless rows->invariant: their rows' sums differ
 * from the CUDA cores' in the last bits. The grid depends on the shapes only (no counts from the
 * host). */
cudaError_t sk_moe_gemm(const uint16_t *w, const uint16_t *x, const struct sk_moe_rows *rows, float *y,
                        uint16_t *act, int n_out, int k_in, cudaStream_t s);
/* The same products with e4m3 weights (kernels/moe_gemm_fp8.cu): w_g's rows are e4m3 codes (one
 * byte a weight, the same rows as sk_moe_gemm's bf16), and weight row i of group g (gate and up
 * rows counted as sk_moe_gemm stacks them) is worth its codes times scale[g * rows_per_group + i]
 * (float32; a per-tensor scale is that scale on every row). The codes are converted in registers;
 * fp32 sums, and the same rows, outputs and choice between CUDA cores and tensor cores as
 * sk_moe_gemm (the tensor cores see the codes as bf16, exactly). Needs k_in % 16 == 0 and w and
 * x 16-byte aligned; returns cudaErrorInvalidValue otherwise. */
cudaError_t sk_moe_gemm_fp8(const uint8_t *w, const float *scale, const uint16_t *x, const struct sk_moe_rows *rows,
                            float *y, uint16_t *act, int n_out, int k_in, cudaStream_t s);
/* out[t] = sum over t's choices in ascending expert order of weight * y_exp[pos[pair]], plus
 * sigmoid(shared_gate[t]) * shared_y[t] when shared_y is not NULL; rows of hidden floats. */
cudaError_t sk_moe_combine(const float *y_exp, const int32_t *choice, const float *weight, const int32_t *pos,
                           int top_k, const float *shared_y, const float *shared_gate, float *out, int n_tokens,
                           int hidden, cudaStream_t s);

/* --- prompt logprobs and hidden states (kernels/prompt_outputs.cu) ---------------------- */
/* One prompt position's logprob, laid out as worker/backend/backend.h's struct prompt_logprob. */
struct sk_prompt_lp {
    int32_t token;
    float logprob;
    int32_t rank;
    int32_t n_top;
    int32_t top_ids[SK_MAX_TOP];
    float top_logprobs[SK_MAX_TOP];
};
/* For rows rows of logits [rows, vocab]: out[r] = the logprob of targets[r] (in the vocabulary),
 * 1 + the ids whose logit is larger, and the n_tops[r] (0..SK_MAX_TOP) largest logits as
 * logprobs, ties to the lower id (worker/sampler/sampler.h, sampler_prompt_logprob). */
cudaError_t sk_prompt_logprobs(const float *logits, const int32_t *targets, const int32_t *n_tops,
                               struct sk_prompt_lp *out, int n_rows, int vocab, cudaStream_t s);
/* out[r, :] = w * v * rsqrt(mean(v^2) + eps) in fp32, v = x[rows[r]] + delta's n_parts parts of
 * that row (as sk_add_rmsnorm_parts adds them; delta may be NULL): the model's final norm for
 * embeddings. */
cudaError_t sk_final_hidden(const float *x, const float *delta, int n_parts, int64_t part_stride,
                            const int32_t *rows, const float *w, float *out, int n_rows, int hidden, float eps,
                            cudaStream_t s);
/* For each sequence s with segs[3s] = its first row of h and segs[3s + 1] = its row count:
 * out[2s, :] = the sum of those rows, out[2s + 1, :] = the last of them (zeros when none). */
cudaError_t sk_pool_hidden(const float *h, const int32_t *segs, float *out, int n_seqs, int hidden, cudaStream_t s);

/* --- test hooks ------------------------------------------------------------------------ */
/* For tests only: copies bytes from src to dst delay_us after it starts, while letting the next
 * kernel on s, when launched as a programmatic dependent, start at once (kernels/test_hooks.cu). */
cudaError_t sk_test_late_copy(void *dst, const void *src, size_t bytes, int delay_us, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
