/* A step of the CUDA backend, in two halves (backend_submit, backend_collect). Submit plans the
 * batch (cuda_plan_step), lays its metadata out in pinned memory and sends it in one copy, then
 * enqueues the step (replaying a CUDA graph where the plan says so) and the copy of its sampled
 * tokens; it returns without waiting, so the next step may be queued behind this one and the GPU
 * does not wait for the host in between. Collect waits for the oldest queued step, bounded by the
 * watchdog, and hands over its tokens.
 *
 * A step with late masks (batch_seq.mask_later: structured output, whose masks follow the
 * tokens the step before samples) is submitted in two parts: submit enqueues the model (its own
 * graph, without the sampler), and cuda_sample, once the engine has the masks, their copy, the
 * sampler and the rest. Everything is on one stream, so the next step's metadata copy and model
 * come after this step's sampler, which reads the metadata, the masks and the logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/cuda/cuda_internal.h"

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* The most metadata a step may need: sampled rows, five ints a token, a sampled token's row,
 * the block tables, the prefill tiles, prompt logprob rows (three ints) and hidden-state tokens
 * (one int) of at most every token, three ints a pooled sequence, each sequence's rope
 * frequencies where they depend on its length, and alignment. */
static size_t meta_size(const struct cuda_backend *b)
{
    size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    size_t freqs = b->plan.seq_rope ? S * (size_t)(b->base.config.head_dim / 2) * 4 : 0;
    return S * sizeof(struct sk_sample_row) + 5 * T * 4 + S * 4 + S * (size_t)b->plan.bt_cap * 4 +
           (T / SK_PREFILL_TILE + S + 1) * 3 * 4 + 4 * T * 4 + 3 * S * 4 + freqs + 14 * 16;
}

/* Lays the step's arrays out in base (host or device) for T tokens, S sequences, R sampled rows
 * and the plan's prompt logprob rows and hidden states. */
static size_t meta_layout(unsigned char *base, int T, int S, int R, int bt_stride, int n_tiles, int n_dec,
                          const struct cuda_step_plan *p, struct cuda_step_meta *m)
{
    size_t at = 0;
    m->rows = (struct sk_sample_row *)(base + at);
    at = align16(at + (size_t)R * sizeof(struct sk_sample_row));
    m->tokens = (int32_t *)(base + at);
    at = align16(at + (size_t)T * 4);
    m->pos = (int32_t *)(base + at);
    at = align16(at + (size_t)T * 4);
    m->seq = (int32_t *)(base + at);
    at = align16(at + (size_t)T * 4);
    m->slot = (int32_t *)(base + at);
    at = align16(at + (size_t)T * 4);
    m->sample_tok = (int32_t *)(base + at);
    at = align16(at + (size_t)R * 4);
    m->bt = (int32_t *)(base + at);
    at = align16(at + (size_t)S * bt_stride * 4);
    m->tiles = (int32_t *)(base + at);
    at = align16(at + (size_t)n_tiles * 3 * 4);
    m->dec = (int32_t *)(base + at);
    at = align16(at + (size_t)n_dec * 4);
    m->lp_tok = (int32_t *)(base + at);
    at = align16(at + (size_t)p->n_lp * 4);
    m->lp_target = (int32_t *)(base + at);
    at = align16(at + (size_t)p->n_lp * 4);
    m->lp_ntop = (int32_t *)(base + at);
    at = align16(at + (size_t)p->n_lp * 4);
    m->hid_tok = (int32_t *)(base + at);
    at = align16(at + (size_t)p->n_hid_rows * 4);
    m->hid_seg = (int32_t *)(base + at);
    at = align16(at + (size_t)p->n_hid_seqs * 3 * 4);
    m->seq_freqs = (float *)(base + at);
    at = align16(at + (size_t)S * (size_t)p->seq_rope_half * 4);
    return at;
}

int cuda_steps_alloc(struct cuda_backend *b)
{
    struct cuda_steps *st = &b->steps;
    const size_t S = (size_t)b->base.max_batch_seqs;
    int rc = 0;
    st->meta_bytes = meta_size(b);
    CUDA_CHECK(b, cudaMalloc((void **)&st->meta_dev, st->meta_bytes));
    b->ws.bytes += st->meta_bytes;
    CUDA_CHECK(b, cudaHostAlloc((void **)&st->meta_host, st->meta_bytes, cudaHostAllocDefault));
    CUDA_CHECK(b, cudaMalloc((void **)&st->out_dev, S * sizeof(struct sk_sample_out)));
    b->ws.bytes += S * sizeof(struct sk_sample_out);
    CUDA_CHECK(b, cudaHostAlloc((void **)&st->out_host, 2 * S * sizeof(struct sk_sample_out), cudaHostAllocDefault));
    st->mask_words = (b->base.config.vocab_size + 31) / 32;
    CUDA_CHECK(b, cudaMalloc((void **)&st->mask_dev, S * (size_t)st->mask_words * 4));
    b->ws.bytes += S * (size_t)st->mask_words * 4;
    CUDA_CHECK(b, cudaHostAlloc((void **)&st->mask_host, S * (size_t)st->mask_words * 4, cudaHostAllocDefault));
    CUDA_CHECK(b, cudaEventCreateWithFlags(&st->meta_sent, cudaEventDisableTiming));
    CUDA_CHECK(b, cudaEventCreateWithFlags(&st->mask_sent, cudaEventDisableTiming));
    CUDA_CHECK(b, cudaEventCreateWithFlags(&st->step_start, cudaEventDisableTiming));
    CUDA_CHECK(b, cudaStreamCreateWithFlags(&st->mask_stream, cudaStreamNonBlocking));
    if (!(st->pend.later_at = calloc(S, sizeof *st->pend.later_at)))
        CUDA_FAIL(b, "cuda: out of memory for %zu late mask rows", S);
    for (int i = 0; i < 2; i++) CUDA_CHECK(b, cudaEventCreateWithFlags(&st->done[i], cudaEventDisableTiming));
    CUDA_CHECK(b, cudaEventRecord(st->meta_sent, b->stream));
    CUDA_CHECK(b, cudaEventRecord(st->mask_sent, b->stream));
fail:
    return rc;
}

void cuda_steps_free(struct cuda_backend *b)
{
    struct cuda_steps *st = &b->steps;
    if (st->meta_dev) cudaFree(st->meta_dev);
    if (st->hist_dev) cudaFree(st->hist_dev);
    if (st->out_dev) cudaFree(st->out_dev);
    if (st->mask_dev) cudaFree(st->mask_dev);
    if (st->mask_host) cudaFreeHost(st->mask_host);
    if (st->meta_host) cudaFreeHost(st->meta_host);
    if (st->hist_host) cudaFreeHost(st->hist_host);
    if (st->out_host) cudaFreeHost(st->out_host);
    if (st->meta_sent) cudaEventDestroy(st->meta_sent);
    if (st->mask_sent) cudaEventDestroy(st->mask_sent);
    if (st->step_start) cudaEventDestroy(st->step_start);
    if (st->mask_stream) cudaStreamDestroy(st->mask_stream);
    free(st->pend.later_at);
    for (int i = 0; i < 2; i++)
        if (st->done[i]) cudaEventDestroy(st->done[i]);
    memset(st, 0, sizeof *st);
}

/* Room for n history ints, pinned and on the device; a new buffer changes the graphs' key. */
static int ensure_history(struct cuda_backend *b, size_t n)
{
    struct cuda_steps *st = &b->steps;
    int rc = 0;
    if (n <= st->hist_cap) return 0;
    size_t cap = st->hist_cap ? st->hist_cap : 4096;
    while (cap < n) cap *= 2;
    if (st->hist_dev) cudaFree(st->hist_dev);
    if (st->hist_host) cudaFreeHost(st->hist_host);
    st->hist_dev = NULL;
    st->hist_host = NULL;
    st->hist_cap = 0;
    CUDA_CHECK(b, cudaMalloc((void **)&st->hist_dev, cap * 4));
    CUDA_CHECK(b, cudaHostAlloc((void **)&st->hist_host, cap * 4, cudaHostAllocDefault));
    st->hist_cap = cap;
fail:
    return rc;
}

/* The sampler's extras for row of q into hist_host at *hist_at (the logit bias, the suppressed
 * ids) and mask_host at row *n_masked (the token mask; a late one's row goes to pend.later_at
 * at *n_later). */
static void fill_row_extras(struct cuda_backend *b, const struct batch_seq *q, struct sk_sample_row *row,
                            size_t *hist_at, int *n_masked, int *n_later)
{
    struct cuda_steps *st = &b->steps;
    const struct sampling_params *sp = q->sampling;
    row->mask_off = -1;
    if (sp->n_bias > 0) {
        row->bias_off = (int32_t)*hist_at;
        row->n_bias = sp->n_bias;
        memcpy(st->hist_host + *hist_at, sp->bias_ids, (size_t)sp->n_bias * 4);
        /* The values travel as their bits; the kernel reads them back as floats. */
        memcpy(st->hist_host + *hist_at + sp->n_bias, sp->bias_values, (size_t)sp->n_bias * 4);
        *hist_at += 2 * (size_t)sp->n_bias;
    }
    if (q->n_suppress > 0) {
        row->supp_off = (int32_t)*hist_at;
        row->n_supp = q->n_suppress;
        memcpy(st->hist_host + *hist_at, q->suppress, (size_t)q->n_suppress * 4);
        *hist_at += (size_t)q->n_suppress;
    }
    if (q->mask_later) {
        row->mask_off = *n_masked * st->mask_words;
        st->pend.later_at[(*n_later)++] = *n_masked;
        (*n_masked)++;
    } else if (q->allowed) {
        /* The engine's masks may be wider (a grammar's vocabulary past the model's rows): the
         * model's ids are all the sampler reads. */
        row->mask_off = *n_masked * st->mask_words;
        memcpy(st->mask_host + (size_t)row->mask_off, q->allowed, (size_t)st->mask_words * 4);
        (*n_masked)++;
    }
}

/* The step's metadata into hm (pinned), laid out as the plan sizes it; returns the history ints
 * written to hist_host (masks go to mask_host, p->n_masked rows). */
static size_t fill_meta(struct cuda_backend *b, const struct batch *batch, const struct cuda_step_plan *p,
                        const struct cuda_step_meta *hm)
{
    int n_masked = 0, n_later = 0;
    const int bt_stride = p->bt_stride;
    int tile_at = 0, dec_at = 0;
    size_t hist_at = 0;
    memcpy(hm->tokens, batch->tokens, (size_t)p->n_tokens * 4);
    for (int s = 0, t = 0, r = 0; s < p->n_seqs; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int need = (q->start_pos + q->n_new + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        memcpy(hm->bt + (size_t)s * bt_stride, q->block_table, (size_t)need * 4);
        if (cuda_plan_takes_tiles(&b->plan, q)) {
            for (int i = 0; i < q->n_new; i += SK_PREFILL_TILE, tile_at++) {
                hm->tiles[3 * tile_at] = t + i;
                hm->tiles[3 * tile_at + 1] = q->n_new - i < SK_PREFILL_TILE ? q->n_new - i : SK_PREFILL_TILE;
                hm->tiles[3 * tile_at + 2] = s;
            }
        } else if (!p->all_dec) {
            for (int i = 0; i < q->n_new; i++) hm->dec[dec_at++] = t + i;
        }
        for (int i = 0; i < q->n_new; i++, t++) {
            int pos = q->start_pos + i;
            hm->pos[t] = pos;
            hm->seq[t] = s;
            hm->slot[t] = q->block_table[pos / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + pos % KV_BLOCK_SIZE;
        }
        if (p->seq_rope_half) {
            /* The length transformers' forward would see (as the CPU backend takes it): a
             * prefill's whole prompt, however it is chunked. */
            const int32_t end = q->start_pos + q->n_new, len = end > q->n_history ? end : q->n_history;
            float *dst = hm->seq_freqs + (size_t)s * p->seq_rope_half;
            const float *f = rope_step_freqs(&b->w.rope, len, dst);
            if (f != dst) memcpy(dst, f, (size_t)p->seq_rope_half * sizeof *dst);
        }
        if (!q->sample) continue;
        const struct sampling_params *sp = q->sampling;
        struct sk_sample_row *row = &hm->rows[r];
        memset(row, 0, sizeof *row);
        row->temperature = sp->temperature;
        row->top_p = sp->top_p;
        row->min_p = sp->min_p;
        row->rep_penalty = sp->repetition_penalty;
        row->presence = sp->presence_penalty;
        row->frequency = sp->frequency_penalty;
        row->top_k = sp->top_k;
        row->n_logprobs = sp->logprobs;
        row->seed = sp->seed;
        row->n_generated = q->n_generated;
        if (sampling_uses_history(sp) && q->history && q->n_history > 0) {
            memcpy(b->steps.hist_host + hist_at, q->history, (size_t)q->n_history * 4);
            row->hist_off = (int32_t)hist_at;
            row->n_history = q->n_history;
            row->n_output = q->n_output;
            hist_at += (size_t)q->n_history;
        }
        fill_row_extras(b, q, row, &hist_at, &n_masked, &n_later);
        hm->sample_tok[r++] = t - 1;
    }
    return hist_at;
}

/* The end of a step, from its sampler on: the extras' and the sampled tokens' copies into half
 * slot, the event collect waits for; the step counts as submitted from here. */
static int end_step(struct cuda_backend *b, const struct cuda_step_plan *plan, int slot, bool wait, double t_start)
{
    struct cuda_steps *st = &b->steps;
    const int R = plan->n_rows;
    int rc = 0;
    if ((rc = cuda_extras_copy(b, plan, slot)) < 0) goto fail;
    if (R > 0)
        CUDA_CHECK(b, cudaMemcpyAsync(st->out_host + (size_t)slot * b->base.max_batch_seqs, st->out_dev,
                                      (size_t)R * sizeof *st->out_host, cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(b, cudaEventRecord(st->done[slot], b->stream));
    st->rows[slot] = R;
    st->submitted++;
    /* The profile's events, and logits the caller reads, are only good once the step is done. */
    if (wait) {
        if ((rc = cuda_watchdog_wait(b, st->done[slot])) < 0) goto fail;
        if (b->prof) {
            const int T = plan->n_tokens, S = plan->n_seqs;
            cuda_prof_collect(b, T == S ? S : -T, 1e3 * (cuda_now_s() - t_start));
        }
    }
fail:
    return rc;
}

/* Queues one step (backend_submit): its metadata goes over, then the model, the sampler and
 * the copy of the sampled tokens into this step's half of out_host. Tokens given as the previous
 * step's rows are read on the device from what its sampler left in out_dev. A step with late
 * masks stops after the model (see the top of this file). */
int cuda_submit(struct backend *base, const struct batch *batch)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    struct cuda_steps *st = &b->steps;
    struct cuda_step_plan plan;
    struct cuda_step_meta hm, dm;
    int rc = 0;

    if (st->pend.waiting) CUDA_FAIL(b, "cuda: the step before waits for its token masks (backend_sample)");
    /* What BACKEND_TOKEN_FROM_PREV may name: the rows the last submitted step sampled. */
    const int prev_rows = st->submitted ? st->rows[(st->submitted - 1) % 2] : 0;
    if (cuda_plan_step(&b->plan, batch, (int)(st->submitted - st->collected), prev_rows, &plan, base->error,
                       sizeof base->error) < 0)
        return -1;
    const double t_start = b->prof ? cuda_now_s() : 0.0;
    CUDA_CHECK(b, cudaSetDevice(b->device));
    if ((rc = ensure_history(b, plan.n_hist)) < 0) goto fail;

    /* The previous step's metadata copy must be done before its pinned buffer is rewritten, and
     * so must the last mask copy when this step's masks are written now. */
    CUDA_CHECK(b, cudaEventSynchronize(st->meta_sent));
    if (plan.n_masked > plan.n_later) CUDA_CHECK(b, cudaEventSynchronize(st->mask_sent));
    /* The decode attention takes every token unless tiles took some (then it gets a list). */
    const int T = plan.n_tokens, S = plan.n_seqs, R = plan.n_rows, n_list = plan.all_dec ? 0 : plan.attn.n_tokens;
    size_t bytes = meta_layout(st->meta_host, T, S, R, plan.bt_stride, plan.n_tiles, n_list, &plan, &hm);
    if (bytes > st->meta_bytes) CUDA_FAIL(b, "cuda: step metadata of %zu bytes exceeds %zu", bytes, st->meta_bytes);
    meta_layout(st->meta_dev, T, S, R, plan.bt_stride, plan.n_tiles, n_list, &plan, &dm);
    plan.attn.token_list = plan.attn_sliding.token_list = plan.all_dec ? NULL : dm.dec;
    const size_t hist_at = fill_meta(b, batch, &plan, &hm);
    const int slot = (int)(st->submitted % 2);
    b->extras.n_dst[slot] = 0;
    if (plan.n_lp || plan.n_hid_seqs) {
        if ((rc = cuda_extras_ensure(b)) < 0) goto fail;
        cuda_extras_fill(b, batch, &hm, slot);
    }
    if (plan.n_later) CUDA_CHECK(b, cudaEventRecord(st->step_start, b->stream));
    cuda_prof_begin(b);
    cuda_prof_mark(b, CUDA_PROF_COPY);
    CUDA_CHECK(b, cudaMemcpyAsync(st->meta_dev, st->meta_host, bytes, cudaMemcpyHostToDevice, b->stream));
    if (hist_at)
        CUDA_CHECK(b, cudaMemcpyAsync(st->hist_dev, st->hist_host, hist_at * 4, cudaMemcpyHostToDevice, b->stream));
    CUDA_CHECK(b, cudaEventRecord(st->meta_sent, b->stream));
    /* With late masks, all of the step's go over with them (cuda_sample). */
    if (plan.n_masked && !plan.n_later) {
        CUDA_CHECK(b, cudaMemcpyAsync(st->mask_dev, st->mask_host, (size_t)plan.n_masked * st->mask_words * 4,
                                      cudaMemcpyHostToDevice, b->stream));
        CUDA_CHECK(b, cudaEventRecord(st->mask_sent, b->stream));
    }
    cuda_prof_mark(b, CUDA_PROF_COPY);

    if (plan.fused_qkv) st->fused_qkv_steps++;
    const struct cuda_step_args args = {
        .plan = &plan, .dev = dm, .logits_out = batch->logits_out, .model_only = plan.n_later > 0};
    if (plan.graph) {
        if ((rc = cuda_graph_run(b, &args)) < 0) goto fail;
    } else if (T > 0) {
        if ((rc = cuda_forward_enqueue(b, &args)) < 0) goto fail;
    }
    if (plan.n_later) {
        st->pend.waiting = true;
        st->pend.plan = plan;
        st->pend.dev = dm;
        st->pend.logits_out = batch->logits_out;
        st->pend.t_start = t_start;
        return 0;
    }
    rc = end_step(b, &plan, slot, b->prof || batch->logits_out, t_start);
fail:
    return rc;
}

/* The rest of a step with late masks (backend_sample): masks[k] into the k-th late row of
 * mask_host, all the step's masks over, then the sampler and the end of the step. Runs while
 * the device is still on the step's model: the copy goes on mask_stream meanwhile (mask_dev is
 * free once the steps before are, step_start), and the sampler queues behind the model and
 * the copy. */
int cuda_sample(struct backend *base, const uint32_t *const *masks, int32_t n_masks)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    struct cuda_steps *st = &b->steps;
    const struct cuda_step_plan *plan = &st->pend.plan;
    int rc = 0;
    if (!st->pend.waiting) CUDA_FAIL(b, "cuda: no submitted step waits for token masks");
    st->pend.waiting = false;
    if (n_masks != plan->n_later)
        CUDA_FAIL(b, "cuda: %d token masks given for a step with %d late ones", n_masks, plan->n_later);
    CUDA_CHECK(b, cudaSetDevice(b->device));
    /* The last copy out of mask_host (the step before's) must be done before it is rewritten;
     * the engine has taken that step by now, so this does not wait. */
    CUDA_CHECK(b, cudaEventSynchronize(st->mask_sent));
    for (int k = 0; k < n_masks; k++)
        memcpy(st->mask_host + (size_t)st->pend.later_at[k] * st->mask_words, masks[k], (size_t)st->mask_words * 4);
    CUDA_CHECK(b, cudaStreamWaitEvent(st->mask_stream, st->step_start, 0));
    CUDA_CHECK(b, cudaMemcpyAsync(st->mask_dev, st->mask_host, (size_t)plan->n_masked * st->mask_words * 4,
                                  cudaMemcpyHostToDevice, st->mask_stream));
    CUDA_CHECK(b, cudaEventRecord(st->mask_sent, st->mask_stream));
    CUDA_CHECK(b, cudaStreamWaitEvent(b->stream, st->mask_sent, 0));
    const struct cuda_step_args args = {.plan = plan, .dev = st->pend.dev, .logits_out = st->pend.logits_out};
    if ((rc = cuda_sample_enqueue(b, &args, st->pend.delta_parts)) < 0) goto fail;
    rc = end_step(b, plan, (int)(st->submitted % 2), b->prof || st->pend.logits_out, st->pend.t_start);
fail:
    return rc;
}

/* Waits for the oldest queued step (backend_collect) and hands over its sampled tokens. */
int cuda_collect(struct backend *base, struct sample_result *results)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    struct cuda_steps *st = &b->steps;
    const int V = base->config.vocab_size;
    int rc = 0;
    if (st->collected == st->submitted) CUDA_FAIL(b, "cuda: no step is queued");
    const int slot = (int)(st->collected % 2);
    st->collected++;
    if ((rc = cuda_watchdog_wait(b, st->done[slot])) < 0) goto fail;
    if ((rc = cuda_tp_check(b)) < 0) goto fail;
    cuda_extras_collect(b, slot);
    const struct sk_sample_out *out = st->out_host + (size_t)slot * base->max_batch_seqs;
    for (int r = 0; r < st->rows[slot]; r++) {
        const struct sk_sample_out *o = &out[r];
        struct sample_result *res = &results[r];
        if (o->token < 0 || o->token >= V)
            CUDA_FAIL(b, "cuda: sampler returned token %d for row %d%s", o->token, r,
                      o->fixed ? " (its token mask allows no token)" : "");
        res->token = o->token;
        res->logprob = o->logprob;
        res->n_top = o->n_top;
        for (int k = 0; k < o->n_top && k < SAMPLER_MAX_TOP_LOGPROBS; k++) {
            res->top_ids[k] = o->top_ids[k];
            res->top_logprobs[k] = o->top_logprobs[k];
        }
    }
fail:
    return rc;
}
