/* The CPU backend's setup: float32 weights (q/k/v and gate/up fused), the paged KV cache in
 * host memory, and buffers for the largest batch. The forward pass is in cpu_forward.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_internal.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/sampler/sampler.h"

/* Converting weights in parallel matters for dummy models, whose every element is a hash. */
struct convert_job {
    const struct tensor *t;
    uint64_t seed;
    bool is_norm;
    float *dst;
};

static void convert_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct convert_job *j = arg;
    const struct tensor *t = j->t;
    if (t->data && t->dtype == DTYPE_F32) {
        memcpy(j->dst + begin, (const float *)t->data + begin, (size_t)(end - begin) * sizeof(float));
        return;
    }
    for (int64_t i = begin; i < end; i++) j->dst[i] = tensor_get_f32(t, j->seed, j->is_norm, (uint64_t)i);
}

static void convert_into(struct cpu_backend *cb, const struct model *m, const struct tensor *t, bool is_norm,
                         float *dst)
{
    struct convert_job j = {.t = t, .seed = m->dummy_seed, .is_norm = is_norm, .dst = dst};
    cpu_pool_run(cb->pool, tensor_numel(t), 1 << 16, convert_range, &j);
}

static float *convert(struct cpu_backend *cb, const struct model *m, const struct tensor *t, bool is_norm)
{
    float *dst = malloc((size_t)tensor_numel(t) * sizeof(float));
    if (dst) convert_into(cb, m, t, is_norm, dst);
    return dst;
}

/* Meta's interleaved rope layout rotates pairs (2i, 2i+1); reordering each head's rows to
 * (0, 2, 4, ..., 1, 3, 5, ...) turns it into Hugging Face's rotate-half layout, which this
 * backend computes in. The q and k vectors then equal Hugging Face's exactly, so a GGUF file
 * and its Hugging Face twin give identical logits. */
static int deinterleave_rows(float *w, int n_heads, int head_dim, int64_t row_len)
{
    int half = head_dim / 2;
    size_t head_floats = (size_t)head_dim * (size_t)row_len;
    float *tmp = malloc(head_floats * sizeof(float));
    if (!tmp) return -1;
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * head_floats;
        memcpy(tmp, head, head_floats * sizeof(float));
        for (int i = 0; i < half; i++) {
            memcpy(head + (size_t)i * row_len, tmp + (size_t)(2 * i) * row_len, (size_t)row_len * sizeof(float));
            memcpy(head + (size_t)(i + half) * row_len, tmp + (size_t)(2 * i + 1) * row_len,
                   (size_t)row_len * sizeof(float));
        }
    }
    free(tmp);
    return 0;
}

static void cpu_free(struct backend *b)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    if (!cb) return;
    if (cb->layers) {
        for (int l = 0; l < cb->c.n_layers; l++) {
            struct cpu_layer *L = &cb->layers[l];
            free(L->attn_norm), free(L->wqkv), free(L->bqkv), free(L->q_norm), free(L->k_norm);
            free(L->wo), free(L->ffn_norm), free(L->w_gate_up), free(L->w_down);
        }
    }
    free(cb->layers);
    if (cb->lm_head != cb->tok_embed) free(cb->lm_head);
    free(cb->tok_embed), free(cb->final_norm), free(cb->inv_freq), free(cb->kv);
    free(cb->x), free(cb->xb), free(cb->qkv), free(cb->att), free(cb->gate_up), free(cb->hidden), free(cb->tmp);
    free(cb->rope_cos), free(cb->rope_sin), free(cb->row_seq), free(cb->row_pos);
    free(cb->xs), free(cb->logits), free(cb->sample_rows), free(cb->sampler_scratch);
    if (cb->scores && cb->pool)
        for (int i = 0; i < cpu_pool_size(cb->pool); i++) free(cb->scores[i]);
    free(cb->scores);
    cpu_pool_free(cb->pool);
    free(cb);
}

static int load_layer(struct cpu_backend *cb, const struct model *m, int l)
{
    const struct layer_weights *W = &m->layers[l];
    struct cpu_layer *L = &cb->layers[l];
    const struct model_config *c = &cb->c;
    int64_t h = c->hidden_size, inter = c->intermediate_size;
    L->attn_norm = convert(cb, m, &W->attn_norm, true);
    L->ffn_norm = convert(cb, m, &W->ffn_norm, true);
    L->wo = convert(cb, m, &W->wo, false);
    L->w_down = convert(cb, m, &W->w_down, false);
    /* q, k and v as one [q_dim + 2 kv_dim, hidden] matrix, gate and up as one
     * [2 intermediate, hidden]: one pass over the batch each instead of three and two. */
    L->wqkv = malloc((size_t)cb->qkv_dim * (size_t)h * sizeof(float));
    L->w_gate_up = malloc((size_t)(2 * inter * h) * sizeof(float));
    if (!L->attn_norm || !L->ffn_norm || !L->wo || !L->w_down || !L->wqkv || !L->w_gate_up) return -1;
    convert_into(cb, m, &W->wq, false, L->wqkv);
    convert_into(cb, m, &W->wk, false, L->wqkv + (size_t)cb->q_dim * h);
    convert_into(cb, m, &W->wv, false, L->wqkv + (size_t)(cb->q_dim + cb->kv_dim) * h);
    convert_into(cb, m, &W->w_gate, false, L->w_gate_up);
    convert_into(cb, m, &W->w_up, false, L->w_gate_up + (size_t)(inter * h));
    if (c->qkv_bias) {
        L->bqkv = malloc((size_t)cb->qkv_dim * sizeof(float));
        if (!L->bqkv) return -1;
        convert_into(cb, m, &W->bq, false, L->bqkv);
        convert_into(cb, m, &W->bk, false, L->bqkv + cb->q_dim);
        convert_into(cb, m, &W->bv, false, L->bqkv + cb->q_dim + cb->kv_dim);
    }
    if (c->qk_norm) {
        L->q_norm = convert(cb, m, &W->q_norm, true);
        L->k_norm = convert(cb, m, &W->k_norm, true);
        if (!L->q_norm || !L->k_norm) return -1;
    }
    if (c->rope_interleaved) {
        if (deinterleave_rows(L->wqkv, c->n_heads, c->head_dim, h) ||
            deinterleave_rows(L->wqkv + (size_t)cb->q_dim * h, c->n_kv_heads, c->head_dim, h))
            return -1;
        if (L->bqkv && (deinterleave_rows(L->bqkv, c->n_heads, c->head_dim, 1) ||
                        deinterleave_rows(L->bqkv + cb->q_dim, c->n_kv_heads, c->head_dim, 1)))
            return -1;
        if (L->q_norm && (deinterleave_rows(L->q_norm, 1, c->head_dim, 1) ||
                          deinterleave_rows(L->k_norm, 1, c->head_dim, 1)))
            return -1;
    }
    return 0;
}

static const struct backend_ops cpu_ops = {.forward = cpu_backend_forward, .free = cpu_free};

#define ALLOC(p, n) ((p) = calloc((size_t)(n), sizeof *(p)))

int backend_cpu_create(struct backend **out, const struct model *m, const struct backend_options *opt,
                       char *err, size_t errlen)
{
    *out = NULL;
    struct cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cb->base.ops = &cpu_ops;
    cb->base.name = "cpu";
    cb->base.config = m->config;
    cb->c = m->config;
    const struct model_config *c = &cb->c;
    cb->q_dim = c->n_heads * c->head_dim;
    cb->kv_dim = c->n_kv_heads * c->head_dim;
    cb->qkv_dim = cb->q_dim + 2 * cb->kv_dim;
    int64_t h = c->hidden_size;

    long n_threads = opt && opt->n_threads > 0 ? opt->n_threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    if (cpu_pool_init(&cb->pool, (int)n_threads)) {
        snprintf(err, errlen, "cannot start %ld CPU threads", n_threads);
        goto fail;
    }
    int32_t max_tokens = opt && opt->max_batch_tokens > 0 ? opt->max_batch_tokens : 2048;
    int32_t max_seqs = opt && opt->max_batch_seqs > 0 ? opt->max_batch_seqs : 256;
    if (max_seqs > max_tokens) max_seqs = max_tokens;
    cb->base.max_batch_tokens = max_tokens;
    cb->base.max_batch_seqs = max_seqs;
    /* The host sampler applies batch_seq.allowed, the logit bias and the suppressed tokens, and
     * the forward pass hands out prompt logprobs and hidden states (cpu_forward.c). */
    cb->base.supports_token_mask = true;
    cb->base.supports_logit_bias = true;
    cb->base.supports_suppress = true;
    cb->base.supports_prompt_logprobs = true;
    cb->base.supports_hidden_states = true;

    cb->block_floats = (size_t)c->n_layers * 2 * (size_t)cb->kv_dim * KV_BLOCK_SIZE;
    int64_t blocks = opt && opt->kv_blocks > 0 ? opt->kv_blocks : 0;
    if (!blocks) {
        /* Room for four full contexts, within 4 GiB of host memory. */
        blocks = ((int64_t)c->max_position * 4 + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        int64_t cap = (int64_t)(4ull << 30) / (int64_t)(cb->block_floats * sizeof(float));
        if (blocks > cap) blocks = cap > 0 ? cap : 1;
    }
    if (blocks > INT32_MAX) blocks = INT32_MAX;
    cb->base.num_kv_blocks = (int32_t)blocks;
    cb->kv = calloc((size_t)blocks * cb->block_floats, sizeof(float));
    if (!cb->kv) {
        snprintf(err, errlen, "cannot allocate the KV cache: %lld blocks of %zu bytes", (long long)blocks,
                 cb->block_floats * sizeof(float));
        goto fail;
    }

    cb->tok_embed = convert(cb, m, &m->tok_embed, false);
    cb->final_norm = convert(cb, m, &m->final_norm, true);
    bool tied = c->tie_embeddings || (m->lm_head.data && m->lm_head.data == m->tok_embed.data) ||
                (!m->lm_head.data && m->lm_head.dummy_id == m->tok_embed.dummy_id);
    cb->lm_head = tied ? cb->tok_embed : convert(cb, m, &m->lm_head, false);
    ALLOC(cb->layers, c->n_layers);
    ALLOC(cb->inv_freq, c->head_dim / 2);
    if (!cb->tok_embed || !cb->final_norm || !cb->lm_head || !cb->layers || !cb->inv_freq) goto oom;
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(cb, m, l)) goto oom;
    cpu_rope_inv_freq(c, cb->inv_freq);

    ALLOC(cb->x, max_tokens * h);
    ALLOC(cb->xb, max_tokens * h);
    ALLOC(cb->tmp, max_tokens * h);
    ALLOC(cb->qkv, (int64_t)max_tokens * cb->qkv_dim);
    ALLOC(cb->att, (int64_t)max_tokens * cb->q_dim);
    ALLOC(cb->gate_up, (int64_t)max_tokens * 2 * c->intermediate_size);
    ALLOC(cb->hidden, (int64_t)max_tokens * c->intermediate_size);
    ALLOC(cb->rope_cos, (int64_t)max_tokens * (c->head_dim / 2));
    ALLOC(cb->rope_sin, (int64_t)max_tokens * (c->head_dim / 2));
    ALLOC(cb->row_seq, max_tokens);
    ALLOC(cb->row_pos, max_tokens);
    ALLOC(cb->xs, (int64_t)max_seqs * h);
    ALLOC(cb->logits, (int64_t)max_seqs * c->vocab_size);
    ALLOC(cb->sample_rows, max_seqs);
    ALLOC(cb->sampler_scratch, sampler_scratch_floats(c->vocab_size));
    ALLOC(cb->scores, cpu_pool_size(cb->pool));
    if (!cb->x || !cb->xb || !cb->tmp || !cb->qkv || !cb->att || !cb->gate_up || !cb->hidden || !cb->rope_cos ||
        !cb->rope_sin || !cb->row_seq || !cb->row_pos || !cb->xs || !cb->logits || !cb->sample_rows ||
        !cb->sampler_scratch || !cb->scores)
        goto oom;
    *out = &cb->base;
    return 0;
oom:
    snprintf(err, errlen, "out of memory converting the weights to float32 (%lld-token batches)",
             (long long)max_tokens);
fail:
    cpu_free(&cb->base);
    return -1;
}

