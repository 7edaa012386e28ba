/* The CUDA backend's choices (cuda_plan.h). Plain C with no CUDA call: built without nvcc too,
 * for its unit test. The reasons and the measurements behind each rule: docs/performance.md. */
#include "worker/backend/cuda/cuda_plan.h"
#include "worker/backend/cuda/cuda_moe_plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void cuda_plan_config_init(struct cuda_plan_config *c, const struct model_config *m, const struct cuda_options *o,
                           bool deterministic, bool hopper, int n_sms, int max_batch_tokens, int max_batch_seqs,
                           int bt_cap)
{
    memset(c, 0, sizeof *c);
    c->hidden = m->hidden_size;
    c->inter = m->intermediate_size;
    c->n_heads = m->n_heads;
    c->n_kv_heads = m->n_kv_heads;
    c->head_dim = m->head_dim;
    c->vocab = m->vocab_size;
    c->lm_rows = m->vocab_size;
    c->max_batch_tokens = max_batch_tokens;
    c->max_batch_seqs = max_batch_seqs;
    c->bt_cap = bt_cap;
    c->part_rows = (int64_t)max_batch_seqs * m->n_heads * CUDA_MAX_SPLITS;
    c->n_sms = n_sms;
    c->hopper = hopper;
    c->gemv = !o->no_gemv;
    c->fp8_mma = !o->no_fp8_mma;
    c->fp8_hopper = hopper && !o->no_fp8_hopper;
    c->quant_mma = !o->no_quant_mma;
    c->quant_overlap = o->quant_overlap;
    /* An FP8 cache takes the same instances (their FP8 parameter), head_dim 256 included. */
    c->prefill_mma = !o->no_prefill_mma && sk_attention_prefill_fits(m->head_dim);
    /* Timing each phase (the profile) needs eager steps. */
    c->graphs = !o->enforce_eager && !o->profile;
    c->gu_interleaved = hopper && m->intermediate_size % SK_GATE_UP_BLOCK == 0;
    c->split_parts = hopper && !o->no_split_parts;
    c->fused_mlp = c->split_parts && !o->no_fused_mlp;
    c->early_trigger = !o->no_early_trigger;
    /* Without attn_early no step's keys are settled, which the fused qkv kernel needs too
     * (sk_attention_decode_qkv_fits). */
    c->attn_early = !o->no_attn_early;
    c->fused_qkv_rows = o->fused_qkv == CUDA_FUSED_QKV_OFF   ? -1
                        : o->fused_qkv == CUDA_FUSED_QKV_ALL ? 0
                                                             : CUDA_FUSED_QKV_ROWS;
    c->attn_scale = model_attn_scale(m);
    /* YaRN's and LongRoPE's factor multiplies cos and sin, so q.k by its square: the scores take
     * it here instead (the same softmax; the cache keeps unscaled keys). */
    const float af = m->fam.rope_attn_factor > 0 ? m->fam.rope_attn_factor : 1.0f;
    c->attn_scale *= af * af;
    c->attn_softcap = m->fam.attn_softcap;
    c->plain_mlp = m->fam.mlp_bias || m->fam.act != MODEL_ACT_SILU;
    if (c->plain_mlp) c->gu_interleaved = false;
    c->seq_rope = m->rope_scaling.type == ROPE_SCALING_LONGROPE || m->rope_scaling.type == ROPE_SCALING_DYNAMIC;
    c->qk_norm_full = m->fam.qk_norm_full;
    /* The fused qkv decode attention reads the static rope table and norms per head: models with
     * per-sequence frequencies or whole-projection norms never take it. */
    if (c->seq_rope || c->qk_norm_full) c->fused_qkv_rows = -1;
    c->all_sliding_window = m->fam.all_sliding ? m->fam.sliding_window : 0;
    c->sliding_window = m->fam.sliding_window;
    c->deterministic = deterministic;
    if (deterministic) {
        /* The fused decode attention takes only pure decode steps: a token in a mixed step would
         * take the other path, whose sums are not the same bits. */
        c->fused_qkv_rows = -1;
        /* Ranges of a fixed length, so a token's split depends on its own position alone; long
         * enough that the longest context needs at most CUDA_MAX_SPLITS of them (part_o's rows). */
        const int ctx = bt_cap * KV_BLOCK_SIZE; /* the longest block table a step may carry */
        const int len = (ctx + CUDA_MAX_SPLITS - 1) / CUDA_MAX_SPLITS;
        c->det_split_len = len < 256 ? 256 : (len + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
    }
}

bool cuda_plan_on_hopper(const struct cuda_plan_config *c, int rows)
{
    /* The deterministic mode gives every product to the Hopper kernel, in slices of
     * SK_HOPPER_MAX_ROWS rows: its split count depends on the shape alone and a row's sums do not
     * depend on the other rows of its tile, so a row's result is the same at every batch size. */
    return c->hopper && (c->deterministic || (rows >= 2 && rows <= CUDA_HOPPER_MAX_ROWS));
}

/* Whether the Hopper kernel takes a product of more than one row; early: the product lets its
 * dependents launch early. At 33-64 rows cuBLAS beats it on the narrow products (Llama-3-8B's qkv
 * and o), unless the product letting its dependents launch early makes the whole step shorter
 * (qkv, which cuBLAS cannot do that for). */
static bool hopper_takes(const struct cuda_plan_config *c, int rows, int n_out, int k_in, bool early)
{
    const bool narrow = rows > 32 && (int64_t)n_out * k_in < CUDA_NARROW_WEIGHTS && !early && !c->deterministic;
    return cuda_plan_on_hopper(c, rows) && k_in % 8 == 0 && !narrow;
}

struct cuda_product_plan cuda_plan_product(const struct cuda_plan_config *c, int rows, int n_out, int k_in)
{
    struct cuda_product_plan p = {.kernel = CUDA_PRODUCT_CUBLAS, .early = false};
    if (c->deterministic)
        p.kernel = CUDA_PRODUCT_HOPPER_SLICED;
    else if (c->gemv && rows == 1 && k_in % 8 == 0) /* the own gemv beats cuBLAS at one row only */
        p.kernel = CUDA_PRODUCT_GEMV;
    else if (hopper_takes(c, rows, n_out, k_in, false))
        p.kernel = CUDA_PRODUCT_HOPPER;
    return p;
}

struct cuda_product_plan cuda_plan_product_parts(const struct cuda_plan_config *c, int rows, int n_out, int k_in,
                                                 bool early_dependents)
{
    const bool early = early_dependents && c->early_trigger;
    /* Parts of at most CUDA_HOPPER_MAX_ROWS rows (the room the workspace has for them); larger
     * products (deterministic mode) add their parts within clusters, the same sums bit for bit. */
    if (c->split_parts && hopper_takes(c, rows, n_out, k_in, early) && rows <= CUDA_HOPPER_MAX_ROWS)
        return (struct cuda_product_plan){.kernel = CUDA_PRODUCT_HOPPER_PARTS, .early = early};
    return cuda_plan_product(c, rows, n_out, k_in);
}

void cuda_plan_config_fp8(struct cuda_plan_config *c, bool blocks, bool lt)
{
    c->fp8 = true;
    c->fp8_blocks = blocks;
    c->fp8_lt = lt;
    c->gu_interleaved = false;
}

struct cuda_product_plan cuda_plan_fp8_product(const struct cuda_plan_config *c, int rows, int n_out, int k_in)
{
    struct cuda_product_plan p = {.kernel = CUDA_PRODUCT_FP8_DEQUANT, .early = false};
    const bool lt = c->fp8_lt && !c->fp8_blocks && n_out % 16 == 0 && k_in % 16 == 0;
    const bool mma = !c->fp8_blocks && c->fp8_mma && n_out % 32 == 0 && k_in % 16 == 0;
    const bool gemv = k_in % 16 == 0;
    const bool hopper = c->fp8_hopper && !c->fp8_blocks && k_in % 16 == 0 && rows >= CUDA_FP8_HOPPER_MIN_ROWS &&
                        rows <= SK_HOPPER_MAX_ROWS;
    if (gemv && (c->deterministic || (rows <= CUDA_FP8_GEMV_ROWS && !hopper))) p.kernel = CUDA_PRODUCT_FP8_GEMV;
    else if (hopper) p.kernel = CUDA_PRODUCT_FP8_HOPPER;
    else if (mma && rows <= (lt ? CUDA_FP8_MMA_ROWS : CUDA_FP8_MMA_ROWS_NO_LT)) p.kernel = CUDA_PRODUCT_FP8_MMA;
    else if (lt) p.kernel = CUDA_PRODUCT_FP8_LT;
    else if (gemv && rows <= CUDA_FP8_GEMV_ROWS_NO_LT) p.kernel = CUDA_PRODUCT_FP8_GEMV;
    return p;
}

bool cuda_plan_fp8_row_scales(const struct tensor *t)
{
    if (t->dtype != DTYPE_F8_E4M3 || t->ndim != 2) return false;
    return t->scale_cols >= t->shape[1] && (t->scale_rows == 1 || t->scale_rows >= t->shape[0]);
}

bool cuda_plan_is_fp8(struct cuda_product_plan p)
{
    return p.kernel == CUDA_PRODUCT_FP8_GEMV || p.kernel == CUDA_PRODUCT_FP8_MMA ||
           p.kernel == CUDA_PRODUCT_FP8_HOPPER || p.kernel == CUDA_PRODUCT_FP8_LT || p.kernel == CUDA_PRODUCT_FP8_DEQUANT;
}

struct cuda_mlp_plan cuda_plan_mlp(const struct cuda_plan_config *c, int rows)
{
    struct cuda_mlp_plan p = {.kind = CUDA_MLP_FP32};
    if (c->fp8) {
        /* gate/up in fp32 and its own activation: the fused kinds read bf16 weights. */
        p.gate_up = cuda_plan_fp8_product(c, rows, 2 * c->inter, c->hidden);
        p.down = cuda_plan_fp8_product(c, rows, c->hidden, c->inter);
        return p;
    }
    if (c->plain_mlp) {
        /* Biases and the activation apply between gate/up and down (sk_glu). */
        p.gate_up = cuda_plan_product(c, rows, 2 * c->inter, c->hidden);
        p.down = cuda_plan_product_parts(c, rows, c->hidden, c->inter, false);
        return p;
    }
    p.down = cuda_plan_product_parts(c, rows, c->hidden, c->inter, false);
    if (c->fused_mlp && c->gu_interleaved && rows <= CUDA_FUSED_MLP_ROWS &&
        hopper_takes(c, rows, c->hidden, c->inter, false)) {
        /* Over 32 rows the down work runs slower inside the fused kernel than as its own launch. */
        p.kind = CUDA_MLP_FUSED;
        p.early = c->early_trigger;
    } else if (c->gu_interleaved && cuda_plan_on_hopper(c, rows)) {
        /* Its only reader, the down product, streams its weights while it runs. */
        p.kind = CUDA_MLP_SWIGLU;
        p.early = c->early_trigger;
    } else if (rows >= 2 && !c->deterministic) {
        /* Prefill (and batches off Hopper): gate/up in bf16, as transformers keeps it, so SiLU
         * reads half the bytes. */
        p.kind = CUDA_MLP_BF16;
    } else {
        p.gate_up = cuda_plan_product(c, rows, 2 * c->inter, c->hidden);
    }
    return p;
}

/* Whether the tensor-core kernel (sk_quant_mma_supported) takes dtype. The kernels' header needs
 * CUDA's; this says the same in plain C. */
static bool quant_mma_type(int dtype)
{
    switch (dtype) {
    case DTYPE_Q4_0:
    case DTYPE_Q4_1:
    case DTYPE_Q5_0:
    case DTYPE_Q5_1:
    case DTYPE_Q8_0:
    case DTYPE_Q4_K:
    case DTYPE_Q5_K:
    case DTYPE_Q6_K: return true;
    default: return false;
    }
}

int cuda_plan_quant_gemv_rows(int dtype)
{
    switch (dtype) {
    /* The GEMV takes these with int8 activations and dp4a: a few instructions a weight, so its
     * pass of 8 rows costs about its bytes. */
    case DTYPE_Q4_K:
    case DTYPE_Q8_0: return 8;
    case DTYPE_Q6_K: return 4; /* the tensor-core kernel won from 8 rows */
    /* Dequantized to fp32 in the GEMV: a multiply-add a weight and row on top of about the
     * tensor-core kernel's dequantization, which won from 4 rows. */
    case DTYPE_Q5_K: return 1; /* and from 2 rows (at 1 row the two were even) */
    default: return 2;
    }
}

/* Split-K ranges for the tensor-core kernel: none while its tiles (rows of SK_QUANT_MMA_ROWS by
 * SK_QUANT_MMA_FEATURES features) fill every SM; otherwise enough for about two blocks an SM,
 * each range at least CUDA_QUANT_MMA_SPLIT_STAGES stages, their sums within the scratch. Then
 * evened out as the kernel cuts them (ceil(stages / per-range)), so the count is the launch's. */
int cuda_plan_quant_mma_splits(const struct cuda_plan_config *c, int rows, int n_out, int k_in)
{
    const int64_t tiles = (int64_t)((rows + SK_QUANT_MMA_ROWS - 1) / SK_QUANT_MMA_ROWS) *
                          ((n_out + SK_QUANT_MMA_FEATURES - 1) / SK_QUANT_MMA_FEATURES);
    const int stages = (k_in + SK_QUANT_MMA_STAGE_K - 1) / SK_QUANT_MMA_STAGE_K;
    if (c->n_sms <= 0 || tiles >= c->n_sms) return 1;
    int64_t splits = (2 * (int64_t)c->n_sms + tiles - 1) / tiles;
    const int64_t by_stages = stages / CUDA_QUANT_MMA_SPLIT_STAGES,
                  by_scratch = (int64_t)(CUDA_QUANT_SCRATCH_BYTES / 4) / ((int64_t)rows * n_out);
    if (splits > by_stages) splits = by_stages;
    if (splits > by_scratch) splits = by_scratch;
    if (splits > SK_QUANT_MMA_MAX_SPLITS) splits = SK_QUANT_MMA_MAX_SPLITS;
    if (splits < 2) return 1;
    const int per = (int)((stages + splits - 1) / splits);
    return (stages + per - 1) / per;
}

struct cuda_quant_plan cuda_plan_quant(const struct cuda_plan_config *c, int dtype, int rows, int n_out, int k_in)
{
    struct cuda_quant_plan p = {.path = CUDA_QUANT_PATH_GEMV, .splits = 1};
    if (c->deterministic || rows <= 0) return p;
    const bool mma = c->quant_mma && quant_mma_type(dtype) && n_out > 0 && k_in > 0 &&
                     k_in % dtype_block_elems((enum dtype)dtype) == 0;
    if (!mma) {
        if (rows > CUDA_QUANT_GEMV_ROWS) p.path = CUDA_QUANT_PATH_TILES;
        return p;
    }
    if (rows <= cuda_plan_quant_gemv_rows(dtype)) return p;
    if (rows > CUDA_QUANT_MMA_ROWS) {
        p.path = CUDA_QUANT_PATH_TILES;
        return p;
    }
    p.path = CUDA_QUANT_PATH_MMA;
    p.splits = cuda_plan_quant_mma_splits(c, rows, n_out, k_in);
    return p;
}

int cuda_plan_quant_tile_rows(int n_out, int k_in)
{
    const int64_t fit = k_in > 0 ? (int64_t)(CUDA_QUANT_SCRATCH_BYTES / 2) / k_in : 1;
    if (fit >= n_out) return n_out < 1 ? 1 : n_out;
    return fit >= 64 ? (int)(fit / 64 * 64) : fit < 1 ? 1 : (int)fit;
}

bool cuda_plan_takes_tiles(const struct cuda_plan_config *c, const struct batch_seq *q)
{
    /* Under --deterministic every prompt chunk, even of one token, so that a prompt token is
     * computed the same way however the prompt was cut into chunks (or mapped from the prefix
     * cache), and every other chunk of two or more. Otherwise a short chunk over a long context
     * (the rest of a prompt after a prefix-cache hit: at most a block) takes the decode attention:
     * a tile of queries walks the keys in one block per head, where the decode attention splits
     * them over the GPU (docs/performance.md). */
    if (!c->prefill_mma) return false;
    if (c->deterministic) return q->n_new >= 2 || (q->prompt && q->n_new == 1);
    return q->n_new >= 2 && !(q->n_new <= CUDA_PLAN_SHORT_CHUNK && q->start_pos >= CUDA_PLAN_LONG_CONTEXT);
}

static int plan_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int plan_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* The decode attention's key splits (flash-decoding), so that a few queries still fill the GPU;
 * ctx_bound: the longest context the step's block-table width allows (graphs) or holds. */
static void plan_splits(const struct cuda_plan_config *c, struct sk_attn_params *ap, bool stream, int64_t ctx_bound)
{
    const int64_t n_dec = ap->n_tokens;
    if (n_dec <= 0) return;
    const int64_t cap = c->part_rows / (n_dec * c->n_heads); /* part_o holds rows per query head */
    if (c->deterministic) {
        /* Ranges of det_split_len keys, so that a token's ranges follow from its own position,
         * and always the merge, even where one range holds every key: the unsplit kernel's
         * normalization is not the merge's, and which one a token got would depend on its batch. */
        int64_t n = (ctx_bound + c->det_split_len - 1) / c->det_split_len;
        ap->split_len = c->det_split_len;
        if (n > cap) {
            /* Only a prefill through the decode attention (head_dim not 64, 128 or 256) of more
             * tokens than --max-num-seqs gets here; its ranges then follow the batch. With no
             * room for two ranges a token (cap 0) it keeps one. */
            n = cap;
            if (n > 0)
                ap->split_len = (int)((ctx_bound + n - 1) / n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
        }
        ap->n_splits = n >= 2 ? (int)n : cap >= 2 ? 2 : 1;
        return;
    }
    if (ctx_bound < 256) return;
    const int64_t blocks = n_dec * (stream ? c->n_kv_heads : c->n_heads);
    int64_t n;
    if (stream) {
        /* About 4 of its blocks are resident per SM (2 at head_dim 256): split only up to one full
         * wave (a second wave plus the merge costs more than it saves), and keep ranges under ~1024
         * keys so that one long context does not become the step's tail. */
        const int64_t fill = sk_attention_decode_blocks_per_sm(c->head_dim) * (int64_t)c->n_sms / blocks,
                      by_1024 = (ctx_bound + 1023) / 1024;
        n = fill > by_1024 ? fill : by_1024;
    } else {
        /* Enough blocks to fill the GPU, and ranges of ~256 keys on the longest context. */
        const int64_t fill = (8 * (int64_t)c->n_sms + blocks - 1) / blocks, by_256 = (ctx_bound + 255) / 256;
        n = fill > by_256 ? fill : by_256;
    }
    /* Never ranges under ~128 keys. */
    const int64_t by_128 = (ctx_bound + 127) / 128;
    if (n > by_128) n = by_128;
    if (n > cap) n = cap;
    if (n > CUDA_MAX_SPLITS) n = CUDA_MAX_SPLITS;
    if (n > 1) ap->n_splits = (int)n;
}

int cuda_plan_step(const struct cuda_plan_config *c, const struct batch *batch, int queued, int prev_rows,
                   struct cuda_step_plan *p, char *err, size_t errlen)
{
    const int T = batch->n_tokens, S = batch->n_seqs, V = c->vocab;
    int bt_stride = 1, max_ctx = 0, n_dec = 0, total = 0;
    bool dec_single = true; /* every decode-attention token its sequence's only one */
    memset(p, 0, sizeof *p);
    if (S < 0 || S > c->max_batch_seqs || T < 0 || T > c->max_batch_tokens)
        return plan_fail(err, errlen, "cuda: batch of %d tokens / %d sequences exceeds %d / %d", T, S,
                         c->max_batch_tokens, c->max_batch_seqs);
    for (int s = 0; s < S; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        const int ctx = q->start_pos + q->n_new, need = (ctx + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        if (q->n_new < 0 || q->start_pos < 0 || need > q->n_blocks || need > c->bt_cap || (q->sample && !q->sampling) ||
            (q->sample && q->n_new < 1))
            return plan_fail(err, errlen,
                             "cuda: sequence %d of the batch is inconsistent (start %d, %d new, %d blocks)", s,
                             q->start_pos, q->n_new, q->n_blocks);
        if (q->lp_rows > 0) {
            if (q->lp_first < 0 || q->lp_first + q->lp_rows > q->n_new || !q->lp_targets || !q->lp_out ||
                q->lp_top < 0 || q->lp_top > SAMPLER_MAX_TOP_LOGPROBS)
                return plan_fail(err, errlen,
                                 "cuda: sequence %d asks for prompt logprobs of rows %d..%d of its %d new tokens (top "
                                 "%d)",
                                 s, q->lp_first, q->lp_first + q->lp_rows, q->n_new, q->lp_top);
            for (int i = 0; i < q->lp_rows; i++)
                if (q->lp_targets[i] < 0 || q->lp_targets[i] >= V)
                    return plan_fail(err, errlen, "cuda: prompt logprob target %d of sequence %d is not in the "
                                     "vocabulary (%d)", q->lp_targets[i], s, V);
            p->n_lp += q->lp_rows;
        }
        if ((q->hidden_sum || q->hidden_last) && q->n_new > 0) {
            p->n_hid_rows += q->hidden_sum ? q->n_new : 1;
            p->n_hid_seqs++;
        }
        if (q->sample && ((q->n_suppress > 0 && !q->suppress) ||
                          (q->sampling->n_bias > 0 && (!q->sampling->bias_ids || !q->sampling->bias_values))))
            return plan_fail(err, errlen, "cuda: sequence %d has suppressed tokens or a logit bias without ids", s);
        for (int i = kv_blocks_before_window(c->all_sliding_window, q->start_pos); i < need; i++)
            if (q->block_table[i] < 0 || q->block_table[i] >= c->num_kv_blocks)
                return plan_fail(err, errlen, "cuda: block id %d out of range (%d blocks)", q->block_table[i],
                                 c->num_kv_blocks);
        if (need > bt_stride) bt_stride = need;
        if (ctx > max_ctx) max_ctx = ctx;
        if (cuda_plan_takes_tiles(c, q)) {
            p->n_tiles += (q->n_new + SK_PREFILL_TILE - 1) / SK_PREFILL_TILE;
        } else {
            n_dec += q->n_new;
            if (q->n_new > 1) dec_single = false;
        }
        total += q->n_new;
        if (!q->sample) continue;
        p->n_rows++;
        const struct sampling_params *sp = q->sampling;
        if (sampling_uses_history(sp) && q->history && q->n_history > 0) p->n_hist += (size_t)q->n_history;
        /* The logit bias (ids, then the values' bits) and the suppressed ids ride with the history. */
        if (sp->n_bias > 0) p->n_hist += 2 * (size_t)sp->n_bias;
        if (q->n_suppress > 0) p->n_hist += (size_t)q->n_suppress;
        if (q->allowed || q->mask_later) p->n_masked++;
        if (q->mask_later) p->n_later++;
        if (sp->temperature > 1e-5f && ((sp->top_k > 0 && sp->top_k < V) || (sp->top_p > 0.0f && sp->top_p < 1.0f)))
            p->any_cut = true;
    }
    if (total != T) return plan_fail(err, errlen, "cuda: sequences carry %d tokens, batch says %d", total, T);
    if (queued >= 2) return plan_fail(err, errlen, "cuda: two steps are queued already");
    /* What BACKEND_TOKEN_FROM_PREV may name: the rows the last submitted step sampled. */
    for (int t = 0; t < T; t++) {
        const int32_t tok = batch->tokens[t];
        if (tok >= V || (tok < 0 && BACKEND_TOKEN_PREV_ROW(tok) >= prev_rows))
            return plan_fail(err, errlen,
                             "cuda: token %d at row %d is neither in the vocabulary (%d) nor one of the %d rows the "
                             "previous step sampled",
                             tok, t, V, prev_rows);
    }
    p->n_tokens = T;
    p->n_seqs = S;
    p->all_dec = n_dec == T;

    /* A pure decode step (one token per sequence, every one sampled) is replayed from a CUDA
     * graph of its shape; its block-table width is rounded up to a power of two so the shape
     * changes rarely as contexts grow. */
    p->graph = c->graphs && T > 0 && T == S && p->n_rows == S && p->n_tiles == 0 && !batch->logits_out &&
               p->n_lp == 0 && p->n_hid_seqs == 0;
    if (p->graph) {
        int w = 4;
        while (w < bt_stride) w *= 2;
        bt_stride = w < c->bt_cap ? w : c->bt_cap;
    }
    p->bt_stride = bt_stride;

    p->attn = (struct sk_attn_params){.n_tokens = n_dec,
                                      .n_heads = c->n_heads,
                                      .n_kv_heads = c->n_kv_heads,
                                      .head_dim = c->head_dim,
                                      .bt_stride = bt_stride,
                                      .scale = c->attn_scale,
                                      .softcap = c->attn_softcap,
                                      .n_splits = 1,
                                      .split_len = 0,
                                      .token_list = NULL,
                                      /* A sequence's earlier keys are written only by earlier
                                       * steps when it brings one token (shared blocks are full
                                       * ones). */
                                      .settled_keys = c->attn_early && dec_single};
    /* The streaming kernel beat the per-query-head kernel at every batch size measured (1-256):
     * it takes every shape it fits. */
    const bool stream = sk_attention_decode_fits(&p->attn);
    p->attn_kernel = stream ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD;
    /* Every token a decode token, its sequence's only one, and more than fused_qkv_rows of them:
     * no qkv_post, the decode attention does its work (a graph's batch size decides, so graphs
     * need no key for it). At fewer rows the attention's start no longer hides behind
     * qkv_post's work, and the two kernels win. */
    p->fused_qkv =
        c->fused_qkv_rows >= 0 && n_dec > c->fused_qkv_rows && p->all_dec && sk_attention_decode_qkv_fits(&p->attn);
    p->seq_rope_half = c->seq_rope ? c->head_dim / 2 : 0;
    /* The bound comes from the block-table width under a graph, so a captured step keeps its
     * grid while the width holds. In a sliding layer a token reads at most the window's keys
     * however long its context, and its splits divide those (attn_block_keys); the
     * deterministic ranges keep their fixed length either way. */
    int64_t ctx_bound = p->graph ? (int64_t)bt_stride * KV_BLOCK_SIZE : max_ctx;
    const bool window_bounds = c->sliding_window > 0 && !c->deterministic && ctx_bound > c->sliding_window;
    p->attn_sliding = p->attn;
    plan_splits(c, &p->attn_sliding, stream, window_bounds ? c->sliding_window : ctx_bound);
    if (c->all_sliding_window > 0)
        p->attn = p->attn_sliding;
    else
        plan_splits(c, &p->attn, stream, ctx_bound);

    const int H = c->hidden, qd = c->n_heads * c->head_dim, qkvd = (c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    /* qkv_post and the decode attention launch while qkv streams, and the attention's settled keys
     * with it; at up to CUDA_QKV_EARLY_ROWS rows that lost a little. */
    p->qkv = c->fp8 ? cuda_plan_fp8_product(c, T, qkvd, H)
                    : cuda_plan_product_parts(c, T, qkvd, H, T > CUDA_QKV_EARLY_ROWS);
    p->o = c->fp8 ? cuda_plan_fp8_product(c, T, H, qd) : cuda_plan_product_parts(c, T, H, qd, false);
    p->mlp = cuda_plan_mlp(c, T);
    p->lm_head = cuda_plan_product(c, p->n_rows, c->lm_rows, H);
    return 0;
}

enum cuda_all_reduce cuda_plan_all_reduce(bool oneshot, bool deterministic, int n_ranks, size_t bytes,
                                          bool residual_next)
{
    if (!oneshot || deterministic || n_ranks < 1 || n_ranks > SK_ONESHOT_MAX_RANKS || bytes > SK_ONESHOT_MAX_BYTES)
        return CUDA_ALL_REDUCE_COMM;
    return residual_next ? CUDA_ALL_REDUCE_ONESHOT_FUSED : CUDA_ALL_REDUCE_ONESHOT;
}

int cuda_plan_model_supported(const struct model_config *m, char *err, size_t errlen)
{
    /* Mixture-of-experts layers: cuda_moe.c computes them, within the kernels' limits. */
    return cuda_moe_supported(m, err, errlen);
}
