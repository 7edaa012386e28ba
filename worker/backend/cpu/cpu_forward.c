/* The CPU forward pass over the engine's ragged batch: embedding, per layer RMSNorm, fused
 * QKV (+bias), q/k norms, rope, K/V into the paged cache, causal grouped-query attention
 * through each sequence's block table, output projection, SwiGLU MLP; then the final norm and
 * lm_head for the rows that sample, and the sampler; then what a step asks besides (prompt
 * logprobs, hidden states for embeddings). Deterministic, and each row's arithmetic
 * is the same whatever shares its batch: this is the reference the CUDA backend is checked
 * against. Under tensor parallelism each rank runs this pass with its shard's dimensions, and
 * the cpu_tp_* steps sum and gather between the ranks (cpu_tp.h); alone they are plain steps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_family.h"
#include "worker/backend/cpu/cpu_internal.h"
#include "worker/backend/cpu/cpu_moe.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/backend/cpu/cpu_tp.h"
#include "worker/model/fp8.h"
#include "worker/sampler/sampler.h"

struct attn_job {
    struct cpu_backend *cb;
    const struct batch *batch;
    int layer;
};

/* One (row, head) pair per item: causal attention of the row's query over its sequence's
 * cached keys and values, positions 0 .. row_pos. */
static void attn_range(void *arg, int64_t begin, int64_t end, int tid)
{
    const struct attn_job *j = arg;
    struct cpu_backend *cb = j->cb;
    const struct model_config *c = &cb->c;
    int hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    float scale = model_attn_scale(c);
    float softcap = c->fam.attn_softcap;
    int32_t window = model_layer_sliding(&c->fam, j->layer) ? c->fam.sliding_window : 0;
    float *scores = cb->scores[tid];
    for (int64_t item = begin; item < end; item++) {
        int64_t r = item / c->n_heads;
        int head = (int)(item % c->n_heads), kvh = head / group;
        const struct batch_seq *s = &j->batch->seqs[cb->row_seq[r]];
        int32_t n_ctx = cb->row_pos[r] + 1;
        /* A sliding layer sees the last `window` positions, this one included. */
        int32_t first = window && n_ctx > window ? n_ctx - window : 0;
        const float *q = cb->qkv + r * cb->qkv_dim + head * hd;
        float max = -INFINITY;
        /* Block by block: a block's keys for one head are contiguous. */
        for (int32_t p0 = first - first % KV_BLOCK_SIZE; p0 < n_ctx; p0 += KV_BLOCK_SIZE) {
            const float *k = cpu_kv_block(&cb->kv, c, s->block_table[p0 / KV_BLOCK_SIZE], j->layer, 0, kvh, tid);
            int32_t n = n_ctx - p0 < KV_BLOCK_SIZE ? n_ctx - p0 : KV_BLOCK_SIZE;
            int32_t t = p0 < first ? first - p0 : 0;
            for (k += (size_t)t * hd; t < n; t++, k += hd) {
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += q[i] * k[i];
                d *= scale;
                if (softcap > 0) d = cpu_softcap(d, softcap);
                scores[p0 + t] = d;
                if (d > max) max = d;
            }
        }
        float sum = 0.0f;
        for (int32_t p = first; p < n_ctx; p++) {
            scores[p] = expf(scores[p] - max);
            sum += scores[p];
        }
        float *o = cb->att + r * cb->q_dim + head * hd;
        for (int d = 0; d < hd; d++) o[d] = 0.0f;
        for (int32_t p0 = first - first % KV_BLOCK_SIZE; p0 < n_ctx; p0 += KV_BLOCK_SIZE) {
            const float *v = cpu_kv_block(&cb->kv, c, s->block_table[p0 / KV_BLOCK_SIZE], j->layer, 1, kvh, tid);
            int32_t n = n_ctx - p0 < KV_BLOCK_SIZE ? n_ctx - p0 : KV_BLOCK_SIZE;
            int32_t t = p0 < first ? first - p0 : 0;
            for (v += (size_t)t * hd; t < n; t++, v += hd) {
                float w = scores[p0 + t];
                for (int d = 0; d < hd; d++) o[d] += w * v[d];
            }
        }
        float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++) o[d] *= inv;
    }
}

/* Per row: q/k norms (Qwen3), rope, and the new K and V into the cache. */
struct qkv_job {
    struct cpu_backend *cb;
    const struct batch *batch;
    int layer;
};

static void qkv_post_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct qkv_job *j = arg;
    struct cpu_backend *cb = j->cb;
    const struct model_config *c = &cb->c;
    const struct cpu_layer *L = &cb->layers[j->layer];
    int hd = c->head_dim, half = hd / 2;
    bool full_norm = c->fam.qk_norm_full, local = cb->rope_cos_local && model_layer_sliding(&c->fam, j->layer);
    for (int64_t r = begin; r < end; r++) {
        float *q = cb->qkv + r * cb->qkv_dim, *k = q + cb->q_dim, *v = k + cb->kv_dim;
        const float *cs = (local ? cb->rope_cos_local : cb->rope_cos) + r * half;
        const float *sn = (local ? cb->rope_sin_local : cb->rope_sin) + r * half;
        if (full_norm) { /* OLMo 2: over the whole projection, before the heads split */
            cpu_rmsnorm(q, L->q_norm, cb->q_dim, c->rms_eps, q);
            cpu_rmsnorm(k, L->k_norm, cb->kv_dim, c->rms_eps, k);
        }
        for (int h = 0; h < c->n_heads; h++) {
            if (L->q_norm && !full_norm) cpu_rmsnorm(q + h * hd, L->q_norm, hd, c->rms_eps, q + h * hd);
            cpu_rope_apply(q + h * hd, hd, cs, sn);
        }
        const struct batch_seq *s = &j->batch->seqs[cb->row_seq[r]];
        int32_t pos = cb->row_pos[r];
        int32_t block = s->block_table[pos / KV_BLOCK_SIZE];
        for (int h = 0; h < c->n_kv_heads; h++) {
            if (L->k_norm && !full_norm) cpu_rmsnorm(k + h * hd, L->k_norm, hd, c->rms_eps, k + h * hd);
            cpu_rope_apply(k + h * hd, hd, cs, sn);
            cpu_kv_put(&cb->kv, c, block, j->layer, 0, h, pos % KV_BLOCK_SIZE, k + h * hd);
            cpu_kv_put(&cb->kv, c, block, j->layer, 1, h, pos % KV_BLOCK_SIZE, v + h * hd);
        }
    }
}

struct rows_job {
    struct cpu_backend *cb;
    const float *norm;
    const float *src; /* rows of hidden_size: normalized into dst (which may be src) */
    float *dst;
};

static void rmsnorm_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct rows_job *j = arg;
    int64_t h = j->cb->c.hidden_size;
    for (int64_t r = begin; r < end; r++) cpu_rmsnorm(j->src + r * h, j->norm, h, j->cb->c.rms_eps, j->dst + r * h);
}

/* dst = norm(src) over T rows, or a copy when the family has no such norm (OLMo 2). */
static void norm_rows(struct cpu_backend *cb, const float *norm, const float *src, float *dst, int64_t T)
{
    if (!norm) {
        if (src != dst) memcpy(dst, src, (size_t)(T * cb->c.hidden_size) * sizeof(float));
        return;
    }
    struct rows_job rj = {.cb = cb, .norm = norm, .src = src, .dst = dst};
    cpu_pool_run(cb->pool, T, 64, rmsnorm_range, &rj);
}

/* x += out (times Granite's residual_multiplier), out first through its post-norm (Gemma 2/3,
 * OLMo 2). */
static void residual_add(struct cpu_backend *cb, const float *post_norm, float *out, int64_t T)
{
    norm_rows(cb, post_norm, out, out, T);
    float rs = cb->c.fam.residual_scale;
    int64_t n = T * cb->c.hidden_size;
    if (rs != 0)
        for (int64_t i = 0; i < n; i++) cb->x[i] += out[i] * rs;
    else
        for (int64_t i = 0; i < n; i++) cb->x[i] += out[i];
}

static void glu_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct rows_job *j = arg;
    int64_t inter = j->cb->c.intermediate_size;
    for (int64_t r = begin; r < end; r++) {
        const float *g = j->cb->gate_up + r * 2 * inter;
        cpu_glu(j->cb->c.fam.act, g, g + inter, j->cb->hidden + r * inter, inter);
    }
}

static int check_batch(struct cpu_backend *cb, const struct batch *batch, int *n_sample, int32_t *max_ctx)
{
    struct backend *b = &cb->base;
    if (batch->n_seqs < 1 || batch->n_seqs > b->max_batch_seqs || batch->n_tokens < 1 ||
        batch->n_tokens > b->max_batch_tokens || !batch->seqs || !batch->tokens) {
        snprintf(b->error, sizeof b->error, "batch of %d sequences and %d tokens exceeds this backend's %d and %d",
                 batch->n_seqs, batch->n_tokens, b->max_batch_seqs, b->max_batch_tokens);
        return -1;
    }
    int64_t total = 0;
    *n_sample = 0;
    *max_ctx = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int64_t end = (int64_t)q->start_pos + q->n_new;
        if (q->n_new < 1 || q->start_pos < 0 || !q->block_table || q->n_blocks < 0 ||
            end > (int64_t)q->n_blocks * KV_BLOCK_SIZE) {
            snprintf(b->error, sizeof b->error,
                     "sequence %d: %d new tokens at position %d do not fit its %d KV blocks", s, q->n_new,
                     q->start_pos, q->n_blocks);
            return -1;
        }
        /* A model whose every layer slides never reads blocks wholly before the window of the
         * step's first row: the engine may have freed them (-1). */
        const struct model_family *f = &cb->c.fam;
        int32_t first_block = kv_blocks_before_window(f->all_sliding ? f->sliding_window : 0, q->start_pos);
        for (int32_t i = first_block; i < (int32_t)((end + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE); i++) {
            if (q->block_table[i] < 0 || q->block_table[i] >= b->num_kv_blocks) {
                snprintf(b->error, sizeof b->error, "sequence %d: block %d is %d, outside the cache's %d blocks", s,
                         i, q->block_table[i], b->num_kv_blocks);
                return -1;
            }
        }
        if (q->sample && !q->sampling) {
            snprintf(b->error, sizeof b->error, "sequence %d samples without sampling parameters", s);
            return -1;
        }
        if (q->lp_rows > 0 && (q->lp_first < 0 || q->lp_rows > q->n_new - q->lp_first || !q->lp_targets ||
                               !q->lp_out || q->lp_top < 0 || q->lp_top > SAMPLER_MAX_TOP_LOGPROBS)) {
            snprintf(b->error, sizeof b->error, "sequence %d: prompt logprobs for rows %d..+%d of its %d", s,
                     q->lp_first, q->lp_rows, q->n_new);
            return -1;
        }
        for (int32_t i = 0; i < q->lp_rows; i++) {
            if (q->lp_targets[i] < 0 || q->lp_targets[i] >= cb->c.vocab_size) {
                snprintf(b->error, sizeof b->error, "sequence %d: prompt logprob target %d is outside the vocabulary",
                         s, q->lp_targets[i]);
                return -1;
            }
        }
        total += q->n_new;
        if (q->sample) (*n_sample)++;
        if (end > *max_ctx) *max_ctx = (int32_t)end;
    }
    if (total != batch->n_tokens) {
        snprintf(b->error, sizeof b->error, "batch n_tokens %d is not the sum of n_new %lld", batch->n_tokens,
                 (long long)total);
        return -1;
    }
    for (int32_t i = 0; i < batch->n_tokens; i++) {
        if (batch->tokens[i] < 0 || batch->tokens[i] >= cb->c.vocab_size) {
            snprintf(b->error, sizeof b->error, "token %d at row %d is outside the vocabulary of %d", batch->tokens[i],
                     i, cb->c.vocab_size);
            return -1;
        }
    }
    return 0;
}

/* Prompt logprobs of rows already through lm_head: one row of logits each. */
struct prompt_lp_job {
    struct cpu_backend *cb;
    const struct batch_seq *q;
    int32_t done; /* rows of q before this chunk */
    int bad;
};

static void prompt_lp_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    struct prompt_lp_job *j = arg;
    int vocab = j->cb->c.vocab_size;
    for (int64_t r = begin; r < end; r++) {
        int32_t i = j->done + (int32_t)r;
        if (sampler_prompt_logprob(j->cb->logits + r * vocab, vocab, j->q->lp_targets[i], j->q->lp_top,
                                   &j->q->lp_out[i]) != 0)
            j->bad = 1;
    }
}

/* What a step asks besides sampling, from the final hidden states in cb->x: the hidden states
 * themselves (embeddings) and the logprobs of prompt tokens. Both go through xs and logits,
 * max_batch_seqs rows at a time, after the sampled rows are done with them. */
static int forward_extras(struct cpu_backend *cb, const struct batch *batch)
{
    const struct model_config *c = &cb->c;
    const int64_t h = c->hidden_size;
    const int32_t chunk = cb->base.max_batch_seqs;
    int64_t row0 = 0;
    for (int s = 0; s < batch->n_seqs; row0 += batch->seqs[s].n_new, s++) {
        const struct batch_seq *q = &batch->seqs[s];
        if ((q->hidden_sum || q->hidden_last) && cpu_tp_leader(cb)) {
            for (int32_t i = q->hidden_sum ? 0 : q->n_new - 1; i < q->n_new; i++) {
                cpu_rmsnorm(cb->x + (row0 + i) * h, cb->final_norm, h, c->rms_eps, cb->xs);
                if (q->hidden_sum)
                    for (int64_t k = 0; k < h; k++) q->hidden_sum[k] += cb->xs[k];
                if (q->hidden_last && i == q->n_new - 1) memcpy(q->hidden_last, cb->xs, (size_t)h * sizeof(float));
            }
        }
        for (int32_t done = 0; done < q->lp_rows;) {
            int32_t n = q->lp_rows - done < chunk ? q->lp_rows - done : chunk;
            for (int32_t j = 0; j < n; j++)
                cpu_rmsnorm(cb->x + (row0 + q->lp_first + done + j) * h, cb->final_norm, h, c->rms_eps,
                            cb->xs + (int64_t)j * h);
            if (cpu_tp_lm_head(cb, cb->xs, n, cb->logits)) return -1;
            cpu_logits_finish(&c->fam, cb->logits, (int64_t)n * c->vocab_size);
            struct prompt_lp_job job = {.cb = cb, .q = q, .done = done, .bad = 0};
            if (cpu_tp_leader(cb)) cpu_pool_run(cb->pool, n, 4, prompt_lp_range, &job);
            if (job.bad) {
                snprintf(cb->base.error, sizeof cb->base.error, "prompt logprobs failed for sequence %d", s);
                return -1;
            }
            done += n;
        }
    }
    return 0;
}

/* cpu_options.fp8_act_rows: product's (0 qkv, 1 o, 2 gate/up, 3 down) input rows
 * rounded to bf16, then to e4m3 with a scale per row, as the CUDA backend's FP8 GEMM sees them (a
 * test's yardstick). */
static void fp8_round_activations(const struct cpu_backend *cb, int product, float *x, int64_t rows, int64_t n)
{
    if (cb->opt.fp8_act_rows[product] <= 0 || rows < cb->opt.fp8_act_rows[product]) return;
    uint8_t *q = malloc((size_t)n);
    if (!q) return;
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * n;
        for (int64_t k = 0; k < n; k++) xr[k] = fp8_round_bf16(xr[k]);
        const float s = fp8_quantize_row(xr, n, q);
        for (int64_t k = 0; k < n; k++) xr[k] = fp8_e4m3_to_f32(q[k]) * s;
    }
    free(q);
}

int cpu_backend_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    const struct model_config *c = &cb->c;
    int n_sample;
    int32_t max_ctx;
    if (check_batch(cb, batch, &n_sample, &max_ctx)) return -1;
    if (max_ctx > cb->scores_cap) {
        for (int i = 0; i < cpu_pool_size(cb->pool); i++) {
            float *p = realloc(cb->scores[i], (size_t)max_ctx * sizeof(float));
            if (!p) {
                snprintf(b->error, sizeof b->error, "out of memory for a %d-token context", max_ctx);
                return -1;
            }
            cb->scores[i] = p;
        }
        cb->scores_cap = max_ctx;
    }
    int64_t T = batch->n_tokens, h = c->hidden_size;
    int half = c->head_dim / 2;
    int32_t row = 0, ns = 0;
    const float embed_scale = c->fam.embed_scale;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        /* The length transformers' forward would see: the whole known sequence (a prefill's
         * whole prompt, however it is chunked). */
        int32_t seq_len = q->start_pos + q->n_new > q->n_history ? q->start_pos + q->n_new : q->n_history;
        const float *freqs = rope_step_freqs(&cb->rope, seq_len, cb->rope_scratch);
        for (int32_t i = 0; i < q->n_new; i++, row++) {
            cb->row_seq[row] = s;
            cb->row_pos[row] = q->start_pos + i;
            float *xr = cb->x + row * h;
            cpu_tp_embed_row(cb, batch->tokens[row], xr);
            if (embed_scale != 0)
                for (int64_t k = 0; k < h; k++) xr[k] *= embed_scale;
            rope_angles(&cb->rope, freqs, cb->row_pos[row], cb->rope_cos + (int64_t)row * half,
                            cb->rope_sin + (int64_t)row * half);
            if (cb->rope_cos_local)
                rope_angles(&cb->rope, cb->rope.inv_freq_local, cb->row_pos[row],
                                cb->rope_cos_local + (int64_t)row * half, cb->rope_sin_local + (int64_t)row * half);
        }
        if (q->sample) cb->sample_rows[ns++] = row - 1;
    }
    if (cpu_tp_all_reduce(cb, cb->x, T * h)) return -1;

    for (int l = 0; l < c->n_layers; l++) {
        const struct cpu_layer *L = &cb->layers[l];
        norm_rows(cb, L->attn_norm, cb->x, cb->xb, T);
        fp8_round_activations(cb, 0, cb->xb, T, h);
        cpu_matmul_w(cb->pool, cb->xb, T, &L->wqkv, L->bqkv, cb->qkv);
        struct qkv_job qj = {.cb = cb, .batch = batch, .layer = l};
        cpu_pool_run(cb->pool, T, 16, qkv_post_range, &qj);
        struct attn_job aj = {.cb = cb, .batch = batch, .layer = l};
        cpu_pool_run(cb->pool, T * c->n_heads, 4, attn_range, &aj);
        fp8_round_activations(cb, 1, cb->att, T, cb->q_dim);
        cpu_matmul_w(cb->pool, cb->att, T, &L->wo, L->bo, cb->tmp);
        if (cpu_tp_all_reduce(cb, cb->tmp, T * h)) return -1;
        residual_add(cb, L->post_attn_norm, cb->tmp, T);
        norm_rows(cb, L->ffn_norm, cb->x, cb->xb, T);
        if (cpu_moe_is_sparse(cb->moe, l)) {
            cpu_moe_forward(cb, l, T, cb->xb, cb->tmp);
        } else {
            fp8_round_activations(cb, 2, cb->xb, T, h);
            cpu_matmul_w(cb->pool, cb->xb, T, &L->w_gate_up, L->b_gate_up, cb->gate_up);
            struct rows_job gj = {.cb = cb};
            cpu_pool_run(cb->pool, T, 16, glu_range, &gj);
            fp8_round_activations(cb, 3, cb->hidden, T, c->intermediate_size);
            cpu_matmul_w(cb->pool, cb->hidden, T, &L->w_down, L->b_down, cb->tmp);
        }
        if (cpu_tp_all_reduce(cb, cb->tmp, T * h)) return -1;
        residual_add(cb, L->post_ffn_norm, cb->tmp, T);
    }
    if (n_sample == 0) return forward_extras(cb, batch);

    for (int i = 0; i < n_sample; i++)
        cpu_rmsnorm(cb->x + (int64_t)cb->sample_rows[i] * h, cb->final_norm, h, c->rms_eps, cb->xs + (int64_t)i * h);
    if (cpu_tp_lm_head(cb, cb->xs, n_sample, cb->logits)) return -1;
    /* A tensor-parallel rank other than the first has done its share: the first samples. */
    if (!cpu_tp_leader(cb)) return forward_extras(cb, batch);
    cpu_logits_finish(&c->fam, cb->logits, (int64_t)n_sample * c->vocab_size);
    if (batch->logits_out)
        memcpy(batch->logits_out, cb->logits, (size_t)n_sample * (size_t)c->vocab_size * sizeof(float));
    int k = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        if (!batch->seqs[s].sample) continue;
        if (sampler_sample(cb->logits + (int64_t)k * c->vocab_size, c->vocab_size, &batch->seqs[s],
                           cb->sampler_scratch, &results[k]) != 0) {
            snprintf(b->error, sizeof b->error, "sampling failed for sequence %d", s);
            return -1;
        }
        k++;
    }
    return forward_extras(cb, batch);
}
