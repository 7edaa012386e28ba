/* One step's kernels on the stream, as the plan says (cuda_plan.h): the layers' norms, products,
 * qkv_post and attention, the MLP, then the final norm, lm_head and the sampler. The same code
 * runs eagerly and while a CUDA graph is being captured (cuda_graph.c). Kernels launch as
 * programmatic dependents of the one before them and fetch what does not depend on it (weights,
 * block tables) before they wait; the plan says which products let theirs launch early. */
#include "kernels/sk_fp8.h"
#include "kernels/sk_quant.h"
#include "worker/backend/cuda/cuda_internal.h"

/* A product of layer l's weights w16 (bf16) or, when the plan names an FP8 kernel, of its FP8
 * copy (cuda_fp8.c), which leaves y whole; x_coded: the kernel before it left x's FP8 codes too
 * (cuda_fp8_codes_for). */
static int layer_product(struct cuda_backend *b, struct cuda_product_plan p, int l, enum cuda_fp8_matrix which,
                         const uint16_t *w16, const uint16_t *x, bool x_coded, float *y, int rows, int n_out,
                         int k_in, int *n_parts)
{
    if (!cuda_plan_is_fp8(p)) return cuda_product(b, p, w16, x, y, rows, n_out, k_in, n_parts);
    if (n_parts) *n_parts = 1;
    return cuda_fp8_product(b, p, l, which, x, x_coded, y, rows, n_out, k_in);
}

/* The residual add and the norm into ws->y ahead of a sublayer whose first product reads codes
 * (codes.q; cuda_fp8_codes_for), or the block GEMV's int8 x (q8; cuda_qlayer_int8_input), or
 * neither: y is quantized so in the same pass. */
static int add_norm(struct cuda_backend *b, const float *delta, int n_parts, int64_t part_stride, const float *w,
                    int T, struct cuda_fp8_codes codes, bool q8)
{
    const struct model_config *c = &b->base.config;
    int rc = 0;
    if (codes.q)
        CUDA_CHECK(b, sk_add_rmsnorm_parts_fp8(b->ws.x, delta, n_parts, part_stride, w, b->ws.y, codes.q, codes.scale,
                                               T, c->hidden_size, c->rms_eps, b->stream));
    else if (q8)
        CUDA_CHECK(b, sk_add_rmsnorm_parts_q8(b->ws.x, delta, n_parts, part_stride, w, b->ws.y, b->w.q_xscratch, T,
                                              c->hidden_size, c->rms_eps, b->stream));
    else
        CUDA_CHECK(b, sk_add_rmsnorm_parts(b->ws.x, delta, n_parts, part_stride, NULL, w, b->ws.y, T, c->hidden_size,
                                           c->rms_eps, b->stream));
    cuda_prof_mark(b, CUDA_PROF_NORM);
fail:
    return rc;
}

/* The codes the MLP's first product reads (an FP8 gate/up on the Hopper stream or cuBLASLt),
 * which the norm before it may write. */
static struct cuda_fp8_codes mlp_input_codes(const struct cuda_backend *b, const struct cuda_mlp_plan *mp)
{
    return mp->kind == CUDA_MLP_FP32 ? cuda_fp8_codes_for(b, mp->gate_up) : (struct cuda_fp8_codes){0};
}

/* The MLP of layer w over the T rows of b->ws.y (its input, normalized; x_coded: with its codes,
 * mlp_input_codes): delta, the residual's next addend, is left in *delta_parts parts. big's
 * memory is idle by then and holds gate/up. */
static int enqueue_mlp(struct cuda_backend *b, int l, const struct cuda_layer *w, const struct cuda_mlp_plan *mp,
                       int T, bool x_coded, int *delta_parts)
{
    const int H = b->base.config.hidden_size, I = b->base.config.intermediate_size;
    struct cuda_workspace *ws = &b->ws;
    int rc = 0;
    const uint16_t *act = ws->y;
    struct cuda_fp8_codes act_codes = {0};
    switch (mp->kind) {
    case CUDA_MLP_FUSED:
        /* Gate/up, the activation and down's parts, in one launch; the norm after it launches
         * early and reads its weights meanwhile. */
        CUDA_CHECK(b, sk_hopper_mlp(b->gemm.hopper, w->wgu, w->wd, ws->y, (uint16_t *)ws->big, ws->delta, T, H, I,
                                    delta_parts, mp->early, b->stream));
        cuda_prof_mark(b, CUDA_PROF_MLP);
        return 0;
    case CUDA_MLP_SWIGLU:
        /* One launch for gate/up and the activation, as bf16; its only reader, the down
         * product, streams its weights while it runs. */
        act = (const uint16_t *)ws->big;
        if ((rc = cuda_gemm_swiglu(b, w->wgu, ws->y, (uint16_t *)ws->big, T, I, H, mp->early)) < 0) goto fail;
        cuda_prof_mark(b, CUDA_PROF_GATE_UP);
        break;
    case CUDA_MLP_BF16:
        if ((rc = cuda_gemm_bf16(b, w->wgu, ws->y, (uint16_t *)ws->big, T, 2 * I, H)) < 0) goto fail;
        cuda_prof_mark(b, CUDA_PROF_GATE_UP);
        CUDA_CHECK(b, sk_silu_mul_bf16(ws->y, (const uint16_t *)ws->big, T, I, b->plan.gu_interleaved, b->stream));
        cuda_prof_mark(b, CUDA_PROF_SILU);
        break;
    case CUDA_MLP_FP32:
        if ((rc = layer_product(b, mp->gate_up, l, CUDA_FP8_GATE_UP, w->wgu, ws->y, x_coded, ws->big, T, 2 * I, H,
                                NULL)) < 0)
            goto fail;
        cuda_prof_mark(b, CUDA_PROF_GATE_UP);
        if (!b->plan.plain_mlp) act_codes = cuda_fp8_codes_for(b, mp->down); /* sk_glu writes no codes */
        if (b->plan.plain_mlp)
            CUDA_CHECK(b, sk_glu(ws->y, ws->big, w->b_gu, (int)b->base.config.fam.act, T, I, b->stream));
        else if (act_codes.q) /* SwiGLU and the down product's codes in one pass */
            CUDA_CHECK(b, sk_silu_mul_fp8(ws->y, act_codes.q, act_codes.scale, ws->big, T, I, b->plan.gu_interleaved,
                                          b->stream));
        else if (b->plan.gu_interleaved)
            CUDA_CHECK(b, sk_silu_mul_interleaved(ws->y, ws->big, T, I, b->stream));
        else
            CUDA_CHECK(b, sk_silu_mul(ws->y, ws->big, T, I, b->stream));
        cuda_prof_mark(b, CUDA_PROF_SILU);
        break;
    }
    if ((rc = layer_product(b, mp->down, l, CUDA_FP8_DOWN, w->wd, act, act_codes.q != NULL, ws->delta, T, H, I,
                            delta_parts)) < 0)
        goto fail;
    cuda_prof_mark(b, CUDA_PROF_DOWN);
fail:
    return rc;
}

/* Whether anything follows a sublayer's product before the residual add: its bias, its own norm
 * (Gemma 2/3), Granite's residual multiplier. */
static bool has_addend(const struct cuda_backend *b, const float *bias, const float *post_norm)
{
    return bias || post_norm || b->base.config.fam.residual_scale != 0;
}

/* The sublayer's output summed over the ranks, then what has_addend names, where the family has
 * any of it (sk_residual_addend), which leaves delta whole (one part). With nothing between, the
 * sum may go into the residual at once (cuda_tp_sum_delta; *delta_parts is then 0). */
static int sublayer_out(struct cuda_backend *b, const float *bias, const float *post_norm, int T, int64_t part_stride,
                        int *delta_parts)
{
    const struct model_config *c = &b->base.config;
    const bool addend = has_addend(b, bias, post_norm);
    int rc = 0;
    if ((rc = cuda_tp_sum_delta(b, delta_parts, part_stride, T, !addend)) < 0) goto fail;
    if (!addend) return 0;
    CUDA_CHECK(b, sk_residual_addend(b->ws.delta, b->ws.delta, *delta_parts, part_stride, bias, post_norm,
                                     c->fam.residual_scale, T, c->hidden_size, c->rms_eps, b->stream));
    *delta_parts = 1;
fail:
    return rc;
}

/* The logits' last touch (Granite's divisor, Gemma 2's soft-capping), where the family has it. */
int cuda_logits_finish(struct cuda_backend *b, float *logits, int rows)
{
    const struct model_family *f = &b->base.config.fam;
    int rc = 0;
    CUDA_CHECK(b, sk_logits_finish(logits, (int64_t)rows * b->base.config.vocab_size, f->logits_divisor,
                                   f->final_softcap, b->stream));
fail:
    return rc;
}

int cuda_forward_enqueue(struct cuda_backend *b, const struct cuda_step_args *a)
{
    const struct model_config *c = &b->base.config;
    const struct cuda_step_plan *p = a->plan;
    const struct cuda_step_meta *dm = &a->dev;
    struct cuda_workspace *ws = &b->ws;
    const int T = p->n_tokens, R = p->n_rows;
    const int H = c->hidden_size, D = c->head_dim, V = c->vocab_size;
    const int nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * D, qkvd = (nh + 2 * nkv) * D;
    const struct sk_qkv_params qp = {.n_tokens = T,
                                     .n_heads = nh,
                                     .n_kv_heads = nkv,
                                     .head_dim = D,
                                     .eps = c->rms_eps,
                                     .interleaved = c->rope_interleaved,
                                     .seq_freqs = p->seq_rope_half ? dm->seq_freqs : NULL,
                                     .token_seq = dm->seq};
    /* delta, the residual's next addend, is left by the o and down products in delta_parts parts
     * of T rows each, which the norm after them adds; qkv in qkv_parts, which qkv_post adds. */
    const int64_t part_stride = (int64_t)T * H;
    int delta_parts = 1, qkv_parts = 1;
    int rc = 0;
    /* A tensor-parallel rank holds a share of the rows (zeros for the others' tokens), summed. */
    const int row0 = b->tp.vocab_begin, n_rows = b->tp.vocab_rows;
    if (b->w.tok_embed_q.w)
        CUDA_CHECK(b, sk_embed_q(ws->x, b->w.tok_embed_q.dtype, b->w.tok_embed_q.w, dm->tokens, b->steps.out_dev, row0,
                                 n_rows, T, H, b->stream));
    else
        CUDA_CHECK(b, sk_embed(ws->x, b->w.tok_embed, dm->tokens, b->steps.out_dev, row0, n_rows, T, H, b->stream));
    if ((rc = cuda_tp_all_reduce_embed(b, ws->x, (size_t)T * (size_t)H)) < 0) goto fail;
    if (c->fam.embed_scale != 0)
        CUDA_CHECK(b, sk_residual_addend(ws->x, ws->x, 1, 0, NULL, NULL, c->fam.embed_scale, T, H, c->rms_eps,
                                         b->stream));
    cuda_prof_mark(b, CUDA_PROF_EMBED);
    const size_t kv_layer = cuda_kv_layer_bytes(&b->kv);
    /* Where the layers' first products read FP8 codes, the norms before them write them (the
     * plans are the step's, so these are too). */
    const struct cuda_fp8_codes qkv_codes_step = cuda_fp8_codes_for(b, p->qkv);
    const struct cuda_fp8_codes mlp_codes_step = mlp_input_codes(b, &p->mlp);
    for (int l = 0; l < c->n_layers; l++) {
        const struct cuda_layer *w = &b->w.layers[l];
        unsigned char *kc = b->kv.cache + (size_t)l * 2 * kv_layer, *vc = kc + kv_layer;
        /* A sliding layer sees its window only, and Gemma 3's rotate with their own theta. */
        const bool sliding = model_layer_sliding(&c->fam, l);
        struct sk_attn_params ap = sliding ? p->attn_sliding : p->attn;
        ap.window = sliding ? c->fam.sliding_window : 0;
        /* An FP8 cache's layer scales go to every kernel that writes or reads it. */
        struct sk_qkv_params qpl = qp;
        if (b->kv.fp8) {
            ap.kv_fp8 = qpl.kv_fp8 = 1;
            ap.k_scale = qpl.k_scale = b->kv.scales[2 * l];
            ap.v_scale = qpl.v_scale = b->kv.scales[2 * l + 1];
        }
        const float *inv_freq = sliding && b->w.inv_freq_local ? b->w.inv_freq_local : b->w.inv_freq;
        const struct cuda_fp8_codes qkv_codes = w->q ? (struct cuda_fp8_codes){0} : qkv_codes_step;
        const bool qkv_q8 = w->q && cuda_qlayer_int8_input(b, &w->q->q, T);
        if ((rc = add_norm(b, l ? cuda_delta(b, delta_parts) : NULL, delta_parts, part_stride, w->attn_norm, T,
                           qkv_codes, qkv_q8)) < 0)
            goto fail;
        if (w->q) {
            qkv_parts = 1;
            if ((rc = cuda_qlayer_qkv(b, w->q, ws->y, ws->big, T, qkv_q8)) < 0) goto fail;
        } else if ((rc = layer_product(b, p->qkv, l, CUDA_FP8_QKV, w->wqkv, ws->y, qkv_codes.q != NULL, ws->big, T,
                                       qkvd, H, &qkv_parts)) < 0) {
            goto fail;
        }
        cuda_prof_mark(b, CUDA_PROF_QKV);
        const float *bqkv = w->bqkv, *q_norm = w->q_norm, *k_norm = w->k_norm;
        if (c->fam.qk_norm_full) { /* OLMo 2: normed whole, into the first part, before qkv_post */
            CUDA_CHECK(b, sk_qkv_norm_full(ws->big, qkv_parts, (int64_t)T * qkvd, bqkv, q_norm, k_norm, T, qd,
                                           nkv * D, c->rms_eps, b->stream));
            qkv_parts = 1;
            bqkv = q_norm = k_norm = NULL;
        }
        if (p->fused_qkv) {
            const struct sk_qkv_src src = {.qkv = ws->big,
                                           .n_parts = qkv_parts,
                                           .part_stride = (int64_t)T * qkvd,
                                           .bias = w->bqkv,
                                           .q_norm = w->q_norm,
                                           .k_norm = w->k_norm,
                                           .inv_freq = inv_freq,
                                           .slot = dm->slot,
                                           .eps = qp.eps,
                                           .interleaved = qp.interleaved};
            CUDA_CHECK(b, sk_attention_decode_qkv(&src, kc, vc, dm->bt, dm->seq, dm->pos, ws->part_o, ws->part_ml,
                                                  ws->y, ap, b->stream));
        } else {
            CUDA_CHECK(b, sk_qkv_post_parts(ws->big, qkv_parts, (int64_t)T * qkvd, bqkv, q_norm, k_norm, inv_freq,
                                            dm->pos, dm->slot, ws->q, kc, vc, qpl, b->stream));
            cuda_prof_mark(b, CUDA_PROF_QKV_POST);
            if (p->n_tiles)
                CUDA_CHECK(b, sk_attention_prefill(ws->q, kc, vc, dm->bt, dm->tiles, p->n_tiles, dm->pos, ws->y, ap,
                                                   b->stream));
            if (p->attn.n_tokens)
                CUDA_CHECK(b, sk_attention(ws->q, kc, vc, dm->bt, dm->seq, dm->pos, ws->part_o, ws->part_ml, ws->y,
                                           ap, p->attn_kernel, b->stream));
        }
        cuda_prof_mark(b, CUDA_PROF_ATTN);
        if (w->q) {
            delta_parts = 1;
            if ((rc = cuda_qproduct(b, &w->q->o, ws->y, ws->delta, H, T)) < 0) goto fail;
        } else if ((rc = layer_product(b, p->o, l, CUDA_FP8_O, w->wo, ws->y, false, ws->delta, T, H, qd,
                                       &delta_parts)) < 0) {
            goto fail;
        }
        cuda_prof_mark(b, CUDA_PROF_O);
        if ((rc = sublayer_out(b, w->bo, w->post_attn_norm, T, part_stride, &delta_parts)) < 0) goto fail;
        const bool sparse = cuda_moe_is_sparse(b, l);
        const struct cuda_fp8_codes mlp_codes = sparse || w->q ? (struct cuda_fp8_codes){0} : mlp_codes_step;
        const bool mlp_q8 = !sparse && w->q && cuda_qlayer_int8_input(b, &w->q->gate, T);
        if ((rc = add_norm(b, cuda_delta(b, delta_parts), delta_parts, part_stride, w->ffn_norm, T, mlp_codes,
                           mlp_q8)) < 0)
            goto fail;
        if (sparse) {
            if ((rc = cuda_moe_enqueue(b, l, T, &delta_parts)) < 0) goto fail;
        } else if (w->q) {
            delta_parts = 1;
            if ((rc = cuda_qlayer_mlp(b, w->q, w->b_gu, T, mlp_q8)) < 0) goto fail;
        } else if ((rc = enqueue_mlp(b, l, w, &p->mlp, T, mlp_codes.q != NULL, &delta_parts)) < 0) {
            goto fail;
        }
        if ((rc = sublayer_out(b, w->b_down, w->post_ffn_norm, T, part_stride, &delta_parts)) < 0) goto fail;
    }
    if (R > 0) {
        CUDA_CHECK(b, sk_add_rmsnorm_parts(ws->x, cuda_delta(b, delta_parts), delta_parts, part_stride, dm->sample_tok,
                                           b->w.final_norm, ws->y, R, H, c->rms_eps, b->stream));
        cuda_prof_mark(b, CUDA_PROF_NORM);
        /* A tensor-parallel rank computes its share of the vocabulary, then gathers the rest. */
        float *lm_out = cuda_tp_lm_head_out(b, ws->logits);
        if (b->w.lm_head_q.w)
            rc = cuda_qproduct(b, &b->w.lm_head_q, ws->y, lm_out, b->tp.vocab_rows, R);
        else
            rc = cuda_product(b, p->lm_head, b->w.lm_head, ws->y, lm_out, R, b->tp.vocab_rows, H, NULL);
        if (rc < 0) goto fail;
        cuda_prof_mark(b, CUDA_PROF_LM_HEAD);
        if ((rc = cuda_tp_gather_logits(b, lm_out, ws->logits, R)) < 0) goto fail;
        if ((rc = cuda_logits_finish(b, ws->logits, R)) < 0) goto fail;
        if (a->logits_out)
            CUDA_CHECK(
                b, cudaMemcpyAsync(a->logits_out, ws->logits, (size_t)R * V * 4, cudaMemcpyDeviceToHost, b->stream));
    }
    /* Kept for cuda_sample when the sampler waits: only eager steps have extras, and they set it. */
    b->steps.pend.delta_parts = delta_parts;
    if (!a->model_only) rc = cuda_sample_enqueue(b, a, delta_parts);
fail:
    return rc;
}

int cuda_sample_enqueue(struct cuda_backend *b, const struct cuda_step_args *a, int delta_parts)
{
    const struct cuda_step_plan *p = a->plan;
    const struct cuda_step_meta *dm = &a->dev;
    struct cuda_workspace *ws = &b->ws;
    const int R = p->n_rows, V = b->base.config.vocab_size;
    int rc = 0;
    if (R > 0) {
        CUDA_CHECK(b, sk_sample_prepare(ws->logits, dm->rows, b->steps.hist_dev, b->steps.mask_dev, ws->work,
                                        ws->counts, b->steps.out_dev, R, V, b->stream));
        if (p->any_cut)
            CUDA_CHECK(b, sk_sample_sort(ws->sort_temp, ws->sort_temp_bytes, ws->work, ws->ids_in, ws->offsets,
                                         ws->sorted_w, ws->sorted_ids, R, V, b->stream));
        CUDA_CHECK(b, sk_sample_finish(ws->logits, ws->work, ws->sorted_w, ws->sorted_ids, p->any_cut, dm->rows,
                                       b->steps.out_dev, R, V, b->stream));
        cuda_prof_mark(b, CUDA_PROF_SAMPLE);
    }
    if (p->n_lp || p->n_hid_seqs)
        rc = cuda_extras_enqueue(b, a, delta_parts, (int64_t)p->n_tokens * b->base.config.hidden_size);
fail:
    return rc;
}
