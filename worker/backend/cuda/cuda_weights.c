/* Weights onto the GPU: matrices as bf16 (F32/F16 converted on the device, GGUF block
 * quantizations dequantized to float32 on the host by worker/model/quant.c first, dummy tensors
 * filled there with model_dummy_value's arithmetic), norms, biases and rotary frequencies as
 * fp32. Matrices that stay in another form load through their own files: FP8 layers' in e4m3
 * (cuda_fp8.c), GGUF blocks the block kernels take (cuda_qweights.c), mixture-of-experts
 * layers' experts (cuda_moe.c, FP8 ones in e4m3 too). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/cuda/cuda_internal.h"

#define STAGING_BYTES ((size_t)64 << 20)

struct loader {
    struct cuda_backend *b;
    const struct model *m;
    void *staging;
    float *host;          /* STAGING_BYTES of host memory for dequantized chunks, made when needed */
};

static int alloc_dev(struct cuda_backend *b, void **p, size_t bytes)
{
    int rc = 0;
    CUDA_CHECK(b, cudaMalloc(p, bytes));
    b->w.bytes += bytes;
fail:
    return rc;
}

/* Writes tensor t (numel elements expected) as bf16 at dst. */
static int put_matrix(struct loader *ld, uint16_t *dst, const struct tensor *t, int64_t numel, const char *name)
{
    struct cuda_backend *b = ld->b;
    int rc = 0;
    if (tensor_numel(t) != numel)
        CUDA_FAIL(b, "cuda: tensor %s has %lld elements, expected %lld", name, (long long)tensor_numel(t),
                  (long long)numel);
    /* FP8 outside the layers' FP8 products (embeddings, or a layout those do not take). */
    if (t->dtype == DTYPE_F8_E4M3 || t->dtype == DTYPE_F8_E5M2)
        return cuda_fp8_put_bf16(b, dst, t, ld->m->dummy_seed);
    if (!t->data) {
        CUDA_CHECK(b, sk_fill_dummy_bf16(dst, ld->m->dummy_seed, t->dummy_id, 0, numel, 0, b->stream));
    } else if (t->dtype == DTYPE_BF16) {
        CUDA_CHECK(b, cudaMemcpyAsync(dst, t->data, (size_t)numel * 2, cudaMemcpyHostToDevice, b->stream));
    } else if (dtype_is_quantized(t->dtype)) {
        /* Whole blocks per chunk: float32 on the host, then converted as F32 tensors are. */
        int64_t be = dtype_block_elems(t->dtype), per = (int64_t)(STAGING_BYTES / 4) / be * be;
        if (!ld->host && !(ld->host = malloc(STAGING_BYTES))) CUDA_FAIL(b, "cuda: out of host memory for %s", name);
        for (int64_t at = 0; at < numel; at += per) {
            int64_t n = numel - at < per ? numel - at : per;
            model_dequant(t->dtype, (const unsigned char *)t->data + (size_t)(at / be) * dtype_block_bytes(t->dtype),
                          ld->host, n);
            CUDA_CHECK(b, cudaMemcpyAsync(ld->staging, ld->host, (size_t)n * 4, cudaMemcpyHostToDevice, b->stream));
            CUDA_CHECK(b, sk_convert_to_bf16(dst + at, ld->staging, SK_F32, n, b->stream));
            /* The staging buffer and the host chunk are reused by the next chunk. */
            CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
        }
    } else {
        size_t esz = t->dtype == DTYPE_F32 ? 4 : 2;
        int64_t per = (int64_t)(STAGING_BYTES / esz);
        for (int64_t at = 0; at < numel; at += per) {
            int64_t n = numel - at < per ? numel - at : per;
            CUDA_CHECK(b, cudaMemcpyAsync(ld->staging, (const unsigned char *)t->data + (size_t)at * esz,
                                          (size_t)n * esz, cudaMemcpyHostToDevice, b->stream));
            CUDA_CHECK(
                b, sk_convert_to_bf16(dst + at, ld->staging, t->dtype == DTYPE_F32 ? SK_F32 : SK_F16, n, b->stream));
            /* The staging buffer is reused by the next chunk. */
            CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
        }
    }
    /* Pageable sources: the copy must end before the mmap can go away. */
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

int cuda_weights_put_matrix(struct loader *ld, uint16_t *dst, const struct tensor *t, int64_t numel,
                            const char *name)
{
    return put_matrix(ld, dst, t, numel, name);
}

/* Layer lw's matrices as bf16: fused [q;k;v] and, with mlp, [gate;up] (interleaved through
 * gu_plain when the planner wants it) and down; a sparse layer's experts load apart
 * (cuda_moe.c). */
static int put_layer_matrices(struct loader *ld, struct cuda_layer *cl, const struct layer_weights *lw,
                              uint16_t *gu_plain, const char *name, bool mlp)
{
    struct cuda_backend *b = ld->b;
    const struct model_config *c = &ld->m->config;
    const int64_t H = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    const int64_t qd = (int64_t)c->n_heads * D, kvd = (int64_t)c->n_kv_heads * D;
    const bool interleave = b->plan.gu_interleaved;
    int rc = 0;
    if ((rc = alloc_dev(b, (void **)&cl->wqkv, (size_t)((qd + 2 * kvd) * H) * 2)) < 0) goto fail;
    if ((rc = put_matrix(ld, cl->wqkv, &lw->wq, qd * H, name)) < 0) goto fail;
    if ((rc = put_matrix(ld, cl->wqkv + qd * H, &lw->wk, kvd * H, name)) < 0) goto fail;
    if ((rc = put_matrix(ld, cl->wqkv + (qd + kvd) * H, &lw->wv, kvd * H, name)) < 0) goto fail;
    if ((rc = alloc_dev(b, (void **)&cl->wo, (size_t)(H * qd) * 2)) < 0) goto fail;
    if ((rc = put_matrix(ld, cl->wo, &lw->wo, H * qd, name)) < 0) goto fail;
    if (!mlp) return 0;
    if ((rc = alloc_dev(b, (void **)&cl->wgu, (size_t)(2 * I * H) * 2)) < 0) goto fail;
    uint16_t *gu = interleave ? gu_plain : cl->wgu;
    if ((rc = put_matrix(ld, gu, &lw->w_gate, I * H, name)) < 0) goto fail;
    if ((rc = put_matrix(ld, gu + I * H, &lw->w_up, I * H, name)) < 0) goto fail;
    if (interleave) CUDA_CHECK(b, sk_gate_up_interleave(cl->wgu, gu_plain, (int)I, (int)H, b->stream));
    if ((rc = alloc_dev(b, (void **)&cl->wd, (size_t)(H * I) * 2)) < 0) goto fail;
    if ((rc = put_matrix(ld, cl->wd, &lw->w_down, H * I, name)) < 0) goto fail;
fail:
    return rc;
}

/* Writes vector t (n floats) as fp32 at dst on the device. */
static int put_vector_at(struct loader *ld, float *dst, const struct tensor *t, int64_t n, bool is_norm,
                         const char *name)
{
    struct cuda_backend *b = ld->b;
    int rc = 0;
    float *host = NULL;
    if (tensor_numel(t) != n)
        CUDA_FAIL(b, "cuda: tensor %s has %lld elements, expected %lld", name, (long long)tensor_numel(t),
                  (long long)n);
    host = malloc((size_t)n * sizeof *host);
    if (!host) CUDA_FAIL(b, "cuda: out of host memory for %s", name);
    tensor_to_f32(t, ld->m->dummy_seed, is_norm, host);
    /* Gemma's norms scale by (1 + w), which transformers adds in float32 as here. */
    if (is_norm && ld->m->config.fam.norm_plus_one)
        for (int64_t i = 0; i < n; i++) host[i] = 1.0f + host[i];
    CUDA_CHECK(b, cudaMemcpy(dst, host, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
fail:
    free(host);
    return rc;
}

static int put_vector(struct loader *ld, float **dst, const struct tensor *t, int64_t n, bool is_norm, const char *name)
{
    int rc = alloc_dev(ld->b, (void **)dst, (size_t)n * sizeof(float));
    return rc < 0 ? rc : put_vector_at(ld, *dst, t, n, is_norm, name);
}

/* A layer's vectors of model_family.h, where the family has them (absent tensors have ndim 0):
 * the o, gate/up and down biases and the norms after attention and the MLP. */
static int put_family_vectors(struct loader *ld, struct cuda_layer *cl, const struct layer_weights *lw,
                              const char *name)
{
    const struct model_config *c = &ld->m->config;
    const int64_t H = c->hidden_size, I = c->intermediate_size;
    int rc = 0;
    if (lw->bo.ndim && (rc = put_vector(ld, &cl->bo, &lw->bo, H, false, name)) < 0) goto fail;
    if (lw->b_gate.ndim) {
        if ((rc = alloc_dev(ld->b, (void **)&cl->b_gu, (size_t)(2 * I) * sizeof(float))) < 0) goto fail;
        if ((rc = put_vector_at(ld, cl->b_gu, &lw->b_gate, I, false, name)) < 0) goto fail;
        if ((rc = put_vector_at(ld, cl->b_gu + I, &lw->b_up, I, false, name)) < 0) goto fail;
    }
    if (lw->b_down.ndim && (rc = put_vector(ld, &cl->b_down, &lw->b_down, H, false, name)) < 0) goto fail;
    if (lw->post_attn_norm.ndim &&
        (rc = put_vector(ld, &cl->post_attn_norm, &lw->post_attn_norm, H, true, name)) < 0)
        goto fail;
    if (lw->post_ffn_norm.ndim && (rc = put_vector(ld, &cl->post_ffn_norm, &lw->post_ffn_norm, H, true, name)) < 0)
        goto fail;
fail:
    return rc;
}

/* The rope's tables (worker/model/rope.h): the static frequencies and Gemma 3's local ones on
 * the device; those chosen per sequence go with each step's metadata (cuda_step.c). */
static int put_rope(struct cuda_backend *b, const struct model_config *c)
{
    const size_t bytes = (size_t)(c->head_dim / 2) * sizeof(float);
    int rc = 0;
    if (rope_init(&b->w.rope, c) < 0) CUDA_FAIL(b, "cuda: out of host memory for the rope tables");
    if ((rc = alloc_dev(b, (void **)&b->w.inv_freq, bytes)) < 0) goto fail;
    CUDA_CHECK(b, cudaMemcpy(b->w.inv_freq, b->w.rope.inv_freq, bytes, cudaMemcpyHostToDevice));
    if (b->w.rope.inv_freq_local) {
        if ((rc = alloc_dev(b, (void **)&b->w.inv_freq_local, bytes)) < 0) goto fail;
        CUDA_CHECK(b, cudaMemcpy(b->w.inv_freq_local, b->w.rope.inv_freq_local, bytes, cudaMemcpyHostToDevice));
    }
fail:
    return rc;
}

int cuda_weights_load(struct cuda_backend *b, const struct model *m)
{
    const struct model_config *c = &m->config;
    struct loader ld = {.b = b, .m = m, .staging = NULL, .host = NULL};
    int rc = 0;
    const int64_t H = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    /* V: the embedding's and lm_head's rows (a tensor-parallel rank's share of the vocabulary). */
    const int64_t qd = (int64_t)c->n_heads * D, kvd = (int64_t)c->n_kv_heads * D, V = b->tp.vocab_rows;
    uint16_t *gu_plain = NULL;

    CUDA_CHECK(b, cudaMalloc(&ld.staging, STAGING_BYTES));
    /* With the Hopper products, each layer's [gate; up] pair is loaded plain, then interleaved in
     * blocks of SK_GATE_UP_BLOCK rows so that one launch yields silu(gate) * up
     * (sk_hopper_gemm_swiglu; the planner decides, cuda_plan_config_init). */
    const bool interleave = b->plan.gu_interleaved;
    if (interleave) CUDA_CHECK(b, cudaMalloc((void **)&gu_plain, (size_t)(2 * I * H) * 2));
    bool tied = c->tie_embeddings || (m->lm_head.data && m->lm_head.data == m->tok_embed.data) ||
                tensor_numel(&m->lm_head) == 0;
    /* Kept in its GGUF blocks where the block kernels take its type (cuda_qweights.c). */
    if ((rc = cuda_qembed_load(b, &m->tok_embed, tied)) < 0) goto fail;
    if (!b->w.tok_embed_q.w) {
        if ((rc = alloc_dev(b, (void **)&b->w.tok_embed, (size_t)(V * H) * 2)) < 0) goto fail;
        if ((rc = put_matrix(&ld, b->w.tok_embed, &m->tok_embed, V * H, "tok_embed")) < 0) goto fail;
    }
    if (tied) {
        b->w.lm_head = b->w.tok_embed;
    } else {
        if ((rc = cuda_qlm_head_load(b, &m->lm_head)) < 0) goto fail;
        if (!b->w.lm_head_q.w) {
            if ((rc = alloc_dev(b, (void **)&b->w.lm_head, (size_t)(V * H) * 2)) < 0) goto fail;
            if ((rc = put_matrix(&ld, b->w.lm_head, &m->lm_head, V * H, "lm_head")) < 0) goto fail;
        }
    }
    if ((rc = put_vector(&ld, &b->w.final_norm, &m->final_norm, H, true, "final_norm")) < 0) goto fail;

    b->w.layers = calloc((size_t)c->n_layers, sizeof *b->w.layers);
    if (!b->w.layers) CUDA_FAIL(b, "cuda: out of host memory");
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *lw = &m->layers[l];
        struct cuda_layer *cl = &b->w.layers[l];
        char name[64];
        snprintf(name, sizeof name, "layer %d", l);
        /* The layer's products: FP8 ones in e4m3 (cuda_fp8.c; a sparse layer's attention only);
         * else GGUF blocks the block kernels take stay blocks (cuda_qweights.c), the rest bf16. A
         * sparse layer's experts replace its dense MLP (cuda_moe.c, e4m3 where they are FP8). */
        if (b->fp8) {
            if ((rc = cuda_fp8_load_layer(b, m, l)) < 0) goto fail;
        } else if (lw->moe) {
            if ((rc = put_layer_matrices(&ld, cl, lw, gu_plain, name, false)) < 0) goto fail;
        } else {
            if ((rc = cuda_qlayer_load(b, lw, cl)) < 0) goto fail;
            if (!cl->q && (rc = put_layer_matrices(&ld, cl, lw, gu_plain, name, true)) < 0) goto fail;
        }
        if (lw->moe && (rc = cuda_moe_load_layer(b, &ld, m, l)) < 0) goto fail;
        /* OLMo 2 has no norm before its sublayers (NULL: the norm kernel only adds) and norms q
         * and k over the whole projection rather than per head. */
        if (lw->attn_norm.ndim && (rc = put_vector(&ld, &cl->attn_norm, &lw->attn_norm, H, true, name)) < 0)
            goto fail;
        if (lw->ffn_norm.ndim && (rc = put_vector(&ld, &cl->ffn_norm, &lw->ffn_norm, H, true, name)) < 0) goto fail;
        if (c->qk_norm) {
            const int64_t qn = c->fam.qk_norm_full ? qd : D, kn = c->fam.qk_norm_full ? kvd : D;
            if ((rc = put_vector(&ld, &cl->q_norm, &lw->q_norm, qn, true, name)) < 0) goto fail;
            if ((rc = put_vector(&ld, &cl->k_norm, &lw->k_norm, kn, true, name)) < 0) goto fail;
        }
        if (c->qkv_bias) {
            if ((rc = alloc_dev(b, (void **)&cl->bqkv, (size_t)(qd + 2 * kvd) * sizeof(float))) < 0) goto fail;
            if ((rc = put_vector_at(&ld, cl->bqkv, &lw->bq, qd, false, name)) < 0) goto fail;
            if ((rc = put_vector_at(&ld, cl->bqkv + qd, &lw->bk, kvd, false, name)) < 0) goto fail;
            if ((rc = put_vector_at(&ld, cl->bqkv + qd + kvd, &lw->bv, kvd, false, name)) < 0) goto fail;
        }
        if ((rc = put_family_vectors(&ld, cl, lw, name)) < 0) goto fail;
    }
    cuda_moe_load_done(b);
    if ((rc = put_rope(b, c)) < 0) goto fail;
    if ((rc = cuda_qweights_finish(b)) < 0) goto fail;
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    cuda_fp8_load_done(b);
    if (ld.staging) cudaFree(ld.staging);
    free(ld.host);
    if (gu_plain) cudaFree(gu_plain);
    return rc;
}

void cuda_weights_free(struct cuda_backend *b)
{
    cuda_fp8_free(b);
    cuda_qweights_free(b);
    if (b->w.lm_head && b->w.lm_head != b->w.tok_embed) cudaFree(b->w.lm_head);
    cudaFree(b->w.tok_embed);
    cudaFree(b->w.final_norm);
    cudaFree(b->w.inv_freq);
    cudaFree(b->w.inv_freq_local);
    rope_free(&b->w.rope);
    if (b->w.layers) {
        for (int l = 0; l < b->base.config.n_layers; l++) {
            struct cuda_layer *cl = &b->w.layers[l];
            cudaFree(cl->wqkv);
            cudaFree(cl->wo);
            cudaFree(cl->wgu);
            cudaFree(cl->wd);
            cudaFree(cl->attn_norm);
            cudaFree(cl->ffn_norm);
            cudaFree(cl->q_norm);
            cudaFree(cl->k_norm);
            cudaFree(cl->bqkv);
            cudaFree(cl->bo);
            cudaFree(cl->b_gu);
            cudaFree(cl->b_down);
            cudaFree(cl->post_attn_norm);
            cudaFree(cl->post_ffn_norm);
        }
        free(b->w.layers);
    }
    b->w.layers = NULL;
}
