/* The CPU backend's setup: weights (q/k/v and gate/up fused) as float32 or, for a GGUF file's
 * block quantizations, as the file's blocks read in place, dequantized row by row as the matmul
 * reaches them (cpu_ops.h); the paged KV cache in host memory; and buffers for the largest
 * batch. The forward pass is in cpu_forward.c.
 *
 * Why dequantize to float32 rather than quantize activations to 8 bits as llama.cpp does: a
 * quantized row then computes exactly what its float32 twin (dequantized at load) computes, so
 * a Q4 file's logits equal those of the dequantize-at-load path bit for bit, Hugging Face's
 * (which dequantizes to float32) within float rounding, and stay batch-invariant; memory and
 * bandwidth are the file's, and the float32 dot products stay the one tested kernel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_internal.h"
#include "worker/backend/cpu/cpu_moe.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/backend/cpu/cpu_tp.h"
#include "worker/sampler/sampler.h"

/* Converting weights in parallel matters for dummy models, whose every element is a hash.
 * Whole rows at a time, so that a quantized tensor splits on block boundaries. */
struct convert_job {
    const struct tensor *t;
    uint64_t seed;
    bool is_norm;
    int64_t cols;
    float *dst;
};

static void convert_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct convert_job *j = arg;
    tensor_range_to_f32(j->t, j->seed, j->is_norm, begin * j->cols, end * j->cols, j->dst + begin * j->cols);
}

static void convert_into(struct cpu_backend *cb, const struct model *m, const struct tensor *t, bool is_norm,
                         float *dst)
{
    int64_t cols = t->ndim == 2 ? t->shape[1] : tensor_numel(t), rows = t->ndim == 2 ? t->shape[0] : 1;
    struct convert_job j = {.t = t, .seed = m->dummy_seed, .is_norm = is_norm, .cols = cols, .dst = dst};
    int64_t chunk = (1 << 16) / (cols > 0 ? cols : 1);
    cpu_pool_run(cb->pool, rows, chunk > 0 ? chunk : 1, convert_range, &j);
}

static float *convert(struct cpu_backend *cb, const struct model *m, const struct tensor *t, bool is_norm)
{
    float *dst = malloc((size_t)tensor_numel(t) * sizeof(float));
    if (dst) convert_into(cb, m, t, is_norm, dst);
    return dst;
}

/* Whether a matrix stays in its GGUF blocks: quantized, read from a file, rows short enough
 * for the matmul's buffer, and float32 weights not asked for. */
static bool keep_quantized(const struct cpu_backend *cb, const struct tensor *t)
{
    return t->data && dtype_is_quantized(t->dtype) && !cb->opt.f32_weights && t->ndim == 2 &&
           t->shape[1] <= CPU_MATMUL_MAX_QROW;
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
            free(L->attn_norm), free(L->bqkv), free(L->q_norm), free(L->k_norm), free(L->ffn_norm);
            free(L->bo), free(L->b_gate_up), free(L->b_down), free(L->post_attn_norm), free(L->post_ffn_norm);
            cpu_weight_free(&L->wqkv), cpu_weight_free(&L->wo), cpu_weight_free(&L->w_gate_up);
            cpu_weight_free(&L->w_down);
        }
    }
    free(cb->layers);
    cpu_moe_free(cb->moe);
    cpu_weight_free(&cb->lm_head);
    cpu_weight_free(&cb->tok_embed);
    free(cb->final_norm), free(cb->rope_row_map);
    cpu_kv_free(&cb->kv);
    rope_free(&cb->rope);
    free(cb->rope_cos_local), free(cb->rope_sin_local), free(cb->rope_scratch);
    free(cb->x), free(cb->xb), free(cb->qkv), free(cb->att), free(cb->gate_up), free(cb->hidden), free(cb->tmp);
    free(cb->rope_cos), free(cb->rope_sin), free(cb->row_seq), free(cb->row_pos);
    free(cb->xs), free(cb->logits), free(cb->sample_rows), free(cb->sampler_scratch);
    if (cb->scores && cb->pool)
        for (int i = 0; i < cpu_pool_size(cb->pool); i++) free(cb->scores[i]);
    free(cb->scores);
    cpu_pool_free(cb->pool);
    free(cb);
}

/* Matrix parts that rope may need de-interleaved: which heads, or none. */
struct part_spec {
    const struct tensor *t;
    int rope_heads; /* 0: not q or k */
};

/* One matrix of up to three stacked tensors (q/k/v, gate/up, or one). When any of them stays in
 * its GGUF blocks, each part is its own: the quantized ones read in place, the others converted
 * to float32, and q and k of an interleaved-rope model read through rope_row_map. Otherwise
 * the parts are converted into one float32 buffer, q and k rows reordered in it. */
static int load_matrix(struct cpu_backend *cb, const struct model *m, struct cpu_weight *w, int64_t n_in,
                       const struct part_spec *parts, int n_parts)
{
    const struct model_config *c = &cb->c;
    bool any_kept = false;
    int64_t rows = 0;
    for (int i = 0; i < n_parts; i++) {
        any_kept |= keep_quantized(cb, parts[i].t);
        rows += parts[i].t->shape[0];
    }
    cpu_weight_init(w, n_in);
    if (!any_kept) {
        float *buf = malloc((size_t)rows * (size_t)n_in * sizeof(float));
        if (!buf) return -1;
        if (cpu_weight_add(w, DTYPE_F32, buf, rows, NULL, buf)) return -1;
        size_t at = 0;
        for (int i = 0; i < n_parts; i++) {
            convert_into(cb, m, parts[i].t, false, buf + at);
            if (c->rope_interleaved && parts[i].rope_heads &&
                deinterleave_rows(buf + at, parts[i].rope_heads, c->head_dim, n_in))
                return -1;
            at += (size_t)parts[i].t->shape[0] * (size_t)n_in;
        }
        return 0;
    }
    for (int i = 0; i < n_parts; i++) {
        const struct tensor *t = parts[i].t;
        const int32_t *map = c->rope_interleaved && parts[i].rope_heads ? cb->rope_row_map : NULL;
        int rc;
        if (keep_quantized(cb, t)) {
            rc = cpu_weight_add(w, t->dtype, t->data, t->shape[0], map, NULL);
        } else {
            float *f = convert(cb, m, t, false);
            rc = f ? cpu_weight_add(w, DTYPE_F32, f, t->shape[0], map, f) : -1;
        }
        if (rc) return -1;
    }
    return 0;
}

/* A norm's weights as the forward multiplies by them: Gemma's (1 + w) added here, as
 * transformers adds it in float32 before multiplying. NULL for an absent tensor. */
static float *load_norm(struct cpu_backend *cb, const struct model *m, const struct tensor *t, bool *bad)
{
    if (t->ndim == 0) return NULL;
    float *v = convert(cb, m, t, true);
    if (!v) {
        *bad = true;
        return NULL;
    }
    if (cb->c.fam.norm_plus_one)
        for (int64_t i = 0; i < tensor_numel(t); i++) v[i] = 1.0f + v[i];
    return v;
}

/* Norms and the biases of model_family.h (absent ones stay NULL). */
static int load_family_vectors(struct cpu_backend *cb, const struct model *m, const struct layer_weights *W,
                               struct cpu_layer *L)
{
    bool bad = false;
    L->attn_norm = load_norm(cb, m, &W->attn_norm, &bad);
    L->ffn_norm = load_norm(cb, m, &W->ffn_norm, &bad);
    L->post_attn_norm = load_norm(cb, m, &W->post_attn_norm, &bad);
    L->post_ffn_norm = load_norm(cb, m, &W->post_ffn_norm, &bad);
    L->q_norm = load_norm(cb, m, &W->q_norm, &bad);
    L->k_norm = load_norm(cb, m, &W->k_norm, &bad);
    if (bad) return -1;
    int64_t inter = cb->c.intermediate_size;
    if (W->bo.ndim && !(L->bo = convert(cb, m, &W->bo, false))) return -1;
    if (W->b_down.ndim && !(L->b_down = convert(cb, m, &W->b_down, false))) return -1;
    if (W->b_gate.ndim) {
        if (!(L->b_gate_up = malloc((size_t)(2 * inter) * sizeof(float)))) return -1;
        convert_into(cb, m, &W->b_gate, false, L->b_gate_up);
        convert_into(cb, m, &W->b_up, false, L->b_gate_up + inter);
    }
    return 0;
}

int cpu_load_weight(struct cpu_backend *cb, const struct model *m, struct cpu_weight *w, int64_t n_in,
                    const struct tensor *const *parts, int n_parts)
{
    struct part_spec specs[CPU_WEIGHT_MAX_PARTS];
    if (n_parts < 1 || n_parts > CPU_WEIGHT_MAX_PARTS) return -1;
    for (int i = 0; i < n_parts; i++) specs[i] = (struct part_spec){parts[i], 0};
    return load_matrix(cb, m, w, n_in, specs, n_parts);
}

static int load_layer(struct cpu_backend *cb, const struct model *m, int l)
{
    const struct layer_weights *W = &m->layers[l];
    struct cpu_layer *L = &cb->layers[l];
    const struct model_config *c = &cb->c;
    int64_t h = c->hidden_size, inter = c->intermediate_size;
    if (load_family_vectors(cb, m, W, L)) return -1;
    /* q, k and v as one [q_dim + 2 kv_dim, hidden] matrix, gate and up as one
     * [2 intermediate, hidden]: one pass over the batch each instead of three and two. */
    struct part_spec qkv[3] = {{&W->wq, c->n_heads}, {&W->wk, c->n_kv_heads}, {&W->wv, 0}};
    struct part_spec gu[2] = {{&W->w_gate, 0}, {&W->w_up, 0}}, wo = {&W->wo, 0}, down = {&W->w_down, 0};
    if (load_matrix(cb, m, &L->wqkv, h, qkv, 3) || load_matrix(cb, m, &L->wo, cb->q_dim, &wo, 1))
        return -1;
    /* A sparse layer's experts are cpu_moe.c's. */
    if (!W->moe && (load_matrix(cb, m, &L->w_gate_up, h, gu, 2) || load_matrix(cb, m, &L->w_down, inter, &down, 1)))
        return -1;
    if (c->qkv_bias) {
        L->bqkv = malloc((size_t)cb->qkv_dim * sizeof(float));
        if (!L->bqkv) return -1;
        convert_into(cb, m, &W->bq, false, L->bqkv);
        convert_into(cb, m, &W->bk, false, L->bqkv + cb->q_dim);
        convert_into(cb, m, &W->bv, false, L->bqkv + cb->q_dim + cb->kv_dim);
    }

    if (c->rope_interleaved) {
        if (L->bqkv && (deinterleave_rows(L->bqkv, c->n_heads, c->head_dim, 1) ||
                        deinterleave_rows(L->bqkv + cb->q_dim, c->n_kv_heads, c->head_dim, 1)))
            return -1;
        if (L->q_norm && (deinterleave_rows(L->q_norm, 1, c->head_dim, 1) ||
                          deinterleave_rows(L->k_norm, 1, c->head_dim, 1)))
            return -1;
    }
    return 0;
}

/* Bytes of the weights as this backend holds them, and of those in GGUF blocks. */
static size_t weight_bytes(const struct cpu_backend *cb, size_t *quantized)
{
    const struct model_config *c = &cb->c;
    size_t q = 0, part, all = cpu_weight_bytes(&cb->tok_embed, &q);
    if (cb->lm_head.parts[0].owned || cb->lm_head.parts[0].data != cb->tok_embed.parts[0].data) {
        all += cpu_weight_bytes(&cb->lm_head, &part);
        q += part;
    }
    size_t vec = (size_t)c->hidden_size * (2 * (size_t)c->n_layers + 1);
    for (int l = 0; l < c->n_layers; l++) {
        const struct cpu_layer *L = &cb->layers[l];
        const struct cpu_weight *ws[4] = {&L->wqkv, &L->wo, &L->w_gate_up, &L->w_down};
        for (int i = 0; i < 4; i++) {
            all += cpu_weight_bytes(ws[i], &part);
            q += part;
        }
        if (L->bqkv) vec += (size_t)cb->qkv_dim;
        if (L->q_norm) vec += (size_t)(c->fam.qk_norm_full ? cb->qkv_dim - cb->kv_dim : 2 * c->head_dim);
        if (L->bo) vec += (size_t)c->hidden_size;
        if (L->b_gate_up) vec += 2 * (size_t)c->intermediate_size + (size_t)c->hidden_size;
        if (L->post_attn_norm) vec += 2 * (size_t)c->hidden_size;
    }
    all += cpu_moe_bytes(cb->moe, &part);
    *quantized = q + part;
    return all + vec * sizeof(float);
}

static const struct backend_ops cpu_ops = {.forward = cpu_backend_forward, .free = cpu_free};

#define ALLOC(p, n) ((p) = calloc((size_t)(n), sizeof *(p)))

int backend_cpu_create(struct backend **out, const struct model *m, const struct backend_options *opt,
                       char *err, size_t errlen)
{
    *out = NULL;
    if (opt && opt->tensor_parallel_size > 1) return cpu_tp_create(out, m, opt, err, errlen);
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

    long n_threads = opt && opt->cpu.n_threads > 0 ? opt->cpu.n_threads : sysconf(_SC_NPROCESSORS_ONLN);
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

    int64_t blocks = opt && opt->kv_blocks > 0 ? opt->kv_blocks : 0;
    if (cpu_kv_init(&cb->kv, m, c, opt ? opt->kv_dtype : KV_CACHE_AUTO, &blocks, cpu_pool_size(cb->pool), err,
                    errlen))
        goto fail;
    cb->base.num_kv_blocks = (int32_t)blocks;

    if (opt) cb->opt = opt->cpu;
    ALLOC(cb->rope_row_map, cb->q_dim);
    if (!cb->rope_row_map) goto oom;
    for (int hh = 0; hh < c->n_heads; hh++)
        for (int i = 0; i < c->head_dim / 2; i++) {
            cb->rope_row_map[hh * c->head_dim + i] = hh * c->head_dim + 2 * i;
            cb->rope_row_map[hh * c->head_dim + c->head_dim / 2 + i] = hh * c->head_dim + 2 * i + 1;
        }
    struct part_spec emb = {&m->tok_embed, 0}, head = {&m->lm_head, 0};
    if (load_matrix(cb, m, &cb->tok_embed, h, &emb, 1)) goto oom;
    bool tied = c->tie_embeddings || (m->lm_head.data && m->lm_head.data == m->tok_embed.data) ||
                (!m->lm_head.data && m->lm_head.dummy_id == m->tok_embed.dummy_id);
    if (tied) {
        /* The same rows, owned by tok_embed alone. */
        cb->lm_head = cb->tok_embed;
        for (int i = 0; i < cb->lm_head.n_parts; i++) cb->lm_head.parts[i].owned = NULL;
    } else if (load_matrix(cb, m, &cb->lm_head, h, &head, 1)) {
        goto oom;
    }
    bool bad_norm = false;
    cb->final_norm = load_norm(cb, m, &m->final_norm, &bad_norm);
    ALLOC(cb->layers, c->n_layers);
    if (!cb->final_norm || !cb->layers || rope_init(&cb->rope, c)) goto oom;
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(cb, m, l)) goto oom;
    if (cpu_moe_create(cb, m, err, errlen)) goto fail;

    ALLOC(cb->x, max_tokens * h);
    ALLOC(cb->xb, max_tokens * h);
    ALLOC(cb->tmp, max_tokens * h);
    ALLOC(cb->qkv, (int64_t)max_tokens * cb->qkv_dim);
    ALLOC(cb->att, (int64_t)max_tokens * cb->q_dim);
    ALLOC(cb->gate_up, (int64_t)max_tokens * 2 * c->intermediate_size);
    ALLOC(cb->hidden, (int64_t)max_tokens * c->intermediate_size);
    ALLOC(cb->rope_cos, (int64_t)max_tokens * (c->head_dim / 2));
    ALLOC(cb->rope_sin, (int64_t)max_tokens * (c->head_dim / 2));
    ALLOC(cb->rope_scratch, c->head_dim / 2);
    if (cb->rope.inv_freq_local) {
        ALLOC(cb->rope_cos_local, (int64_t)max_tokens * (c->head_dim / 2));
        ALLOC(cb->rope_sin_local, (int64_t)max_tokens * (c->head_dim / 2));
        if (!cb->rope_cos_local || !cb->rope_sin_local) goto oom;
    }
    ALLOC(cb->row_seq, max_tokens);
    ALLOC(cb->row_pos, max_tokens);
    ALLOC(cb->xs, (int64_t)max_seqs * h);
    ALLOC(cb->logits, (int64_t)max_seqs * c->vocab_size);
    ALLOC(cb->sample_rows, max_seqs);
    ALLOC(cb->sampler_scratch, sampler_scratch_floats(c->vocab_size));
    ALLOC(cb->scores, cpu_pool_size(cb->pool));
    if (!cb->x || !cb->xb || !cb->tmp || !cb->qkv || !cb->att || !cb->gate_up || !cb->hidden || !cb->rope_cos ||
        !cb->rope_sin || !cb->rope_scratch || !cb->row_seq || !cb->row_pos || !cb->xs || !cb->logits || !cb->sample_rows ||
        !cb->sampler_scratch || !cb->scores)
        goto oom;
    size_t quantized, weights = weight_bytes(cb, &quantized);
    size_t kv_bytes = (size_t)blocks * cb->kv.block_bytes;
    /* A GPTQ/AWQ checkpoint's blocks were made at load and live in memory (int4_checkpoint.h). */
    char blocks_from[64] = "GGUF blocks read in place from the file";
    if (m->repacked_from)
        snprintf(blocks_from, sizeof blocks_from, "Q4_1 blocks repacked from %s at load", m->repacked_from);
    log_info("cpu: weights %zu bytes (%.1f MiB, %.1f MiB of it %s%s), "
             "KV cache %s %zu bytes (%.1f MiB, %lld blocks of %d tokens)",
             weights, (double)weights / (1 << 20), (double)quantized / (1 << 20), blocks_from,
             quantized && !cpu_dequant_vectorized() ? ", dequantized without AVX2" : "", cpu_kv_dtype_name(&cb->kv),
             kv_bytes, (double)kv_bytes / (1 << 20), (long long)blocks, KV_BLOCK_SIZE);
    *out = &cb->base;
    return 0;
oom:
    snprintf(err, errlen, "out of memory loading the weights (%lld-token batches)", (long long)max_tokens);
fail:
    cpu_free(&cb->base);
    return -1;
}

