/* What a CUDA step hands out besides sampled tokens: prompt logprobs (prompt_logprobs, echo
 * with logprobs) and final hidden states (embeddings), as the CPU backend does (backend.h's
 * batch_seq.lp_* and hidden_*). Only eager steps carry them (cuda_plan_step keeps such steps out
 * of graphs). After the model, the prompt positions are normed and run through lm_head in
 * groups of max_batch_seqs rows (the logits buffer's size) and sk_prompt_logprobs reduces each
 * row on the device, so only the results cross to the host, never a row of logits; the hidden
 * states are normed in fp32 and pooled per sequence (sum and last) on the device. */
#include "worker/backend/cuda/cuda_internal.h"

int cuda_extras_ensure(struct cuda_backend *b)
{
    struct cuda_extras *x = &b->extras;
    const size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    const size_t H = (size_t)b->base.config.hidden_size;
    int rc = 0;
    if (x->lp_dev) return 0;
    CUDA_CHECK(b, cudaMalloc((void **)&x->lp_dev, T * sizeof *x->lp_dev));
    CUDA_CHECK(b, cudaHostAlloc((void **)&x->lp_host, 2 * T * sizeof *x->lp_host, cudaHostAllocDefault));
    CUDA_CHECK(b, cudaMalloc((void **)&x->hid_dev, S * 2 * H * 4));
    CUDA_CHECK(b, cudaHostAlloc((void **)&x->hid_host, 2 * S * 2 * H * 4, cudaHostAllocDefault));
    b->ws.bytes += T * sizeof *x->lp_dev + S * 2 * H * 4;
    for (int i = 0; i < 2; i++)
        if (!(x->dst[i] = calloc(2 * S, sizeof *x->dst[i]))) CUDA_FAIL(b, "cuda: out of host memory");
fail:
    if (rc < 0) cuda_extras_free(b);
    return rc;
}

void cuda_extras_free(struct cuda_backend *b)
{
    struct cuda_extras *x = &b->extras;
    if (x->lp_dev) cudaFree(x->lp_dev);
    if (x->lp_host) cudaFreeHost(x->lp_host);
    if (x->hid_dev) cudaFree(x->hid_dev);
    if (x->hid_host) cudaFreeHost(x->hid_host);
    for (int i = 0; i < 2; i++) free(x->dst[i]);
    memset(x, 0, sizeof *x);
}

void cuda_extras_fill(struct cuda_backend *b, const struct batch *batch, const struct cuda_step_meta *hm, int slot)
{
    struct cuda_extras *x = &b->extras;
    struct cuda_extras_dst *dst = x->dst[slot];
    int n = 0, lp_at = 0, hid_at = 0, seq_at = 0;
    for (int s = 0, t0 = 0; s < batch->n_seqs; t0 += batch->seqs[s].n_new, s++) {
        const struct batch_seq *q = &batch->seqs[s];
        if (q->lp_rows > 0) {
            dst[n++] = (struct cuda_extras_dst){.lp = q->lp_out, .n = q->lp_rows, .at = lp_at};
            for (int i = 0; i < q->lp_rows; i++, lp_at++) {
                hm->lp_tok[lp_at] = t0 + q->lp_first + i;
                hm->lp_target[lp_at] = q->lp_targets[i];
                hm->lp_ntop[lp_at] = q->lp_top;
            }
        }
        if ((q->hidden_sum || q->hidden_last) && q->n_new > 0) {
            /* A mean needs every token's state, the last token only its own. */
            const int first = q->hidden_sum ? 0 : q->n_new - 1;
            hm->hid_seg[3 * seq_at] = hid_at;
            hm->hid_seg[3 * seq_at + 1] = q->n_new - first;
            hm->hid_seg[3 * seq_at + 2] = 0;
            for (int i = first; i < q->n_new; i++) hm->hid_tok[hid_at++] = t0 + i;
            dst[n++] = (struct cuda_extras_dst){.sum = q->hidden_sum, .last = q->hidden_last, .at = seq_at++};
        }
    }
    x->n_dst[slot] = n;
}

int cuda_extras_enqueue(struct cuda_backend *b, const struct cuda_step_args *a, int delta_parts, int64_t part_stride)
{
    const struct model_config *c = &b->base.config;
    const struct cuda_step_plan *p = a->plan;
    const struct cuda_step_meta *dm = &a->dev;
    struct cuda_workspace *ws = &b->ws;
    const int H = c->hidden_size, V = c->vocab_size, S = b->base.max_batch_seqs;
    const float *delta = cuda_delta(b, delta_parts);
    int rc = 0;
    if (p->n_hid_seqs) {
        /* big (gate/up's room) is idle once the layers are done. */
        if ((size_t)p->n_hid_rows * H > ws->big_floats)
            CUDA_FAIL(b, "cuda: %d hidden states of %d floats exceed the workspace", p->n_hid_rows, H);
        CUDA_CHECK(b, sk_final_hidden(ws->x, delta, delta_parts, part_stride, dm->hid_tok, b->w.final_norm, ws->big,
                                      p->n_hid_rows, H, c->rms_eps, b->stream));
        CUDA_CHECK(b, sk_pool_hidden(ws->big, dm->hid_seg, b->extras.hid_dev, p->n_hid_seqs, H, b->stream));
    }
    /* The sampler is done with the logits (stream order): its rows are free for these. */
    for (int c0 = 0; c0 < p->n_lp; c0 += S) {
        const int n = p->n_lp - c0 < S ? p->n_lp - c0 : S;
        CUDA_CHECK(b, sk_add_rmsnorm_parts(ws->x, delta, delta_parts, part_stride, dm->lp_tok + c0, b->w.final_norm,
                                           ws->y, n, H, c->rms_eps, b->stream));
        if (b->w.lm_head_q.w) /* kept in GGUF blocks (cuda_qweights.c) */
            rc = cuda_qproduct(b, &b->w.lm_head_q, ws->y, ws->logits, V, n);
        else
            rc = cuda_product(b, cuda_plan_product(&b->plan, n, V, H), b->w.lm_head, ws->y, ws->logits, n, V, H, NULL);
        if (rc < 0 || (rc = cuda_logits_finish(b, ws->logits, n)) < 0) goto fail;
        CUDA_CHECK(b, sk_prompt_logprobs(ws->logits, dm->lp_target + c0, dm->lp_ntop + c0, b->extras.lp_dev + c0, n,
                                         V, b->stream));
    }
fail:
    return rc;
}

int cuda_extras_copy(struct cuda_backend *b, const struct cuda_step_plan *p, int slot)
{
    struct cuda_extras *x = &b->extras;
    const size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    const size_t H = (size_t)b->base.config.hidden_size;
    int rc = 0;
    if (p->n_lp)
        CUDA_CHECK(b, cudaMemcpyAsync(x->lp_host + (size_t)slot * T, x->lp_dev, (size_t)p->n_lp * sizeof *x->lp_dev,
                                      cudaMemcpyDeviceToHost, b->stream));
    if (p->n_hid_seqs)
        CUDA_CHECK(b, cudaMemcpyAsync(x->hid_host + (size_t)slot * S * 2 * H, x->hid_dev,
                                      (size_t)p->n_hid_seqs * 2 * H * 4, cudaMemcpyDeviceToHost, b->stream));
fail:
    return rc;
}

void cuda_extras_collect(struct cuda_backend *b, int slot)
{
    struct cuda_extras *x = &b->extras;
    const size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    const size_t H = (size_t)b->base.config.hidden_size;
    for (int d = 0; d < x->n_dst[slot]; d++) {
        const struct cuda_extras_dst *e = &x->dst[slot][d];
        if (e->lp) {
            const struct sk_prompt_lp *src = x->lp_host + (size_t)slot * T + e->at;
            for (int i = 0; i < e->n; i++) {
                struct prompt_logprob *o = &e->lp[i];
                o->token = src[i].token;
                o->logprob = src[i].logprob;
                o->rank = src[i].rank;
                o->n_top = src[i].n_top;
                for (int k = 0; k < src[i].n_top && k < SAMPLER_MAX_TOP_LOGPROBS; k++) {
                    o->top_ids[k] = src[i].top_ids[k];
                    o->top_logprobs[k] = src[i].top_logprobs[k];
                }
            }
            continue;
        }
        const float *h = x->hid_host + (size_t)slot * S * 2 * H + (size_t)e->at * 2 * H;
        if (e->sum)
            for (size_t k = 0; k < H; k++) e->sum[k] += h[k];
        if (e->last) memcpy(e->last, h + H, H * 4);
    }
    x->n_dst[slot] = 0;
}
