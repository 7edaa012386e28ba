/* One step of the CUDA backend: the ragged batch's metadata goes over in one copy, the layers
 * run as kernels and cuBLAS products on one stream, sampling runs on the device, and the host
 * waits once, for the sampled tokens, when it collects the step: by then the next step may be
 * queued behind it (backend_submit), so the GPU does not wait for the host in between. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/backend/cuda/cuda_internal.h"


struct step_meta {
    struct sk_sample_row *rows;
    int32_t *tokens, *pos, *seq, *slot, *sample_tok, *bt;
    int32_t *tiles; /* prefill tiles: (first token, count, sequence) */
    int32_t *dec;   /* tokens for the general attention kernel */
};

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Lays the step's arrays out in base (host or device) for T tokens, S sequences, R sampled rows. */
static size_t meta_layout(unsigned char *base, int T, int S, int R, int bt_stride, int n_tiles, int n_dec,
                          struct step_meta *m)
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
    return at;
}

static int ensure_history(struct cuda_backend *b, size_t n)
{
    int rc = 0;
    if (n <= b->hist_cap) return 0;
    size_t cap = b->hist_cap ? b->hist_cap : 4096;
    while (cap < n) cap *= 2;
    if (b->hist_dev) cudaFree(b->hist_dev);
    if (b->hist_host) cudaFreeHost(b->hist_host);
    b->hist_dev = NULL;
    b->hist_host = NULL;
    b->hist_cap = 0;
    CUDA_CHECK(b, cudaMalloc((void **)&b->hist_dev, cap * 4));
    CUDA_CHECK(b, cudaHostAlloc((void **)&b->hist_host, cap * 4, cudaHostAllocDefault));
    b->hist_cap = cap;
fail:
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { P_EMBED, P_NORM, P_QKV, P_QKV_POST, P_ATTN, P_O, P_GU, P_SILU, P_DOWN, P_MLP, P_LM_HEAD, P_SAMPLE, P_COPY };
static const char *const prof_names[CUDA_PROF_CATS] = {
    "embed", "norm", "gemm qkv", "qkv post", "attention", "gemm o", "gemm gate/up", "silu", "gemm down",
    "mlp (fused)", "lm_head", "sample", "copies"};

/* Marks the end of a phase of category cat on the stream (profiling only). */
static void prof_mark(struct cuda_backend *b, int cat)
{
    struct cuda_prof *p = b->prof;
    if (!p || p->n_ev >= CUDA_PROF_EVENTS) return;
    if (cudaEventRecord(p->ev[p->n_ev], b->stream) == cudaSuccess) p->cat[p->n_ev++] = cat;
}

/* After the step's synchronization: adds each phase's time to the step's shape. */
static void prof_collect(struct cuda_backend *b, int shape, double wall_ms)
{
    struct cuda_prof *p = b->prof;
    int k = 0;
    while (k < p->n_shapes && p->shape[k] != shape) k++;
    if (k == p->n_shapes) {
        if (k == CUDA_PROF_SHAPES) goto done;
        p->shape[k] = shape;
        p->n_shapes++;
    }
    for (int i = 1; i < p->n_ev; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess) p->ms[k][p->cat[i]] += ms;
    }
    p->steps[k]++;
    p->wall_ms[k] += wall_ms;
done:
    p->n_ev = 0;
}

void cuda_prof_report(struct cuda_backend *b)
{
    struct cuda_prof *p = b->prof;
    for (int k = 0; k < p->n_shapes; k++) {
        if (!p->steps[k]) continue;
        char line[1024];
        int at = 0;
        double tot = 0;
        for (int c = 0; c < CUDA_PROF_CATS; c++) tot += p->ms[k][c];
        for (int c = 0; c < CUDA_PROF_CATS && at < (int)sizeof line - 64; c++)
            at += snprintf(line + at, sizeof line - at, " %s %.3f", prof_names[c], p->ms[k][c] / p->steps[k]);
        fprintf(stderr, "cuda profile: %s %d, %d steps: device %.3f ms/step, host wall %.3f ms/step; ms/step:%s\n",
                p->shape[k] > 0 ? "decode batch" : "tokens", p->shape[k] > 0 ? p->shape[k] : -p->shape[k], p->steps[k],
                tot / p->steps[k], p->wall_ms[k] / p->steps[k], line);
    }
}

/* Waits for ev, at most b->step_timeout_s: a GPU that never finishes a step (a kernel that
 * hangs) then becomes a device error that the worker reports (its requests end with it, /health
 * answers 503) instead of a worker that waits forever. Spins on the event as
 * cudaEventSynchronize does, looking at the clock every few hundred queries. */
static int wait_step(struct cuda_backend *b, cudaEvent_t ev)
{
    int rc = 0;
    double t0 = -1.0;
    for (unsigned n = 0;; n++) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) CUDA_CHECK(b, e);
        if (n % 256 == 0) {
            const double t = now_s();
            if (t0 < 0) {
                t0 = t;
            } else if (t - t0 > b->step_timeout_s) {
                b->stuck = true;
                CUDA_FAIL(b, "cuda: a step did not finish within %g s: the GPU is stuck; restart the worker",
                          b->step_timeout_s);
            }
        }
    }
fail:
    return rc;
}

struct step_args {
    int T, R, n_tiles;
    struct step_meta dm;
    struct sk_attn_params ap;
    struct sk_qkv_params qp;
    bool any_cut;
    enum sk_attn_kernel attn_kernel; /* the decode attention's kernel */
    bool fused_qkv; /* the decode attention does qkv_post's work (sk_attention_decode_qkv) */
    float *logits_out;
};

/* The MLP of layer w over the T rows of b->y (its input, normalized): delta, the residual's next
 * addend, is left in *delta_parts parts. big's memory is idle by then and holds gate/up. */
static int enqueue_mlp(struct cuda_backend *b, const struct cuda_layer *w, int T, int *delta_parts)
{
    const int H = b->base.config.hidden_size, I = b->base.config.intermediate_size;
    int rc = 0;
    if (cuda_mlp_fused(b, T, H, I)) {
        /* Gate/up, the activation and down's parts, in one launch. The norm after it launches
         * early and reads its weights meanwhile (its own early trigger then brings qkv's weight
         * stream): batch 8-32 steps 0.3-0.5% shorter on an H200. */
        CUDA_CHECK(b, sk_hopper_mlp(b->hopper, w->wgu, w->wd, b->y, (uint16_t *)b->big, b->delta, T, H, I, delta_parts,
                                    b->early_trigger, b->stream));
        prof_mark(b, P_MLP);
        return 0;
    }
    const uint16_t *act = b->y;
    if (b->gu_interleaved && cuda_gemm_on_hopper(b, T)) {
        /* One launch for gate/up and the activation, as bf16. Its only reader, the down product,
         * streams its weights while it runs: a batch-64 step took 5.18-5.19 ms against 5.21-5.25
         * with the trigger at exit (H200, same runs). */
        act = (const uint16_t *)b->big;
        if ((rc = cuda_gemm_swiglu(b, w->wgu, b->y, (uint16_t *)b->big, T, I, H, true)) < 0) goto fail;
        prof_mark(b, P_GU);
    } else if (T >= 2 && !b->deterministic) {
        /* Prefill (and batches off Hopper): gate/up in bf16, as transformers keeps it, so SiLU
         * reads half the bytes (at 4096 tokens its fp32 rows were 470 MB a layer). */
        if ((rc = cuda_gemm_bf16(b, w->wgu, b->y, (uint16_t *)b->big, T, 2 * I, H)) < 0) goto fail;
        prof_mark(b, P_GU);
        CUDA_CHECK(b, sk_silu_mul_bf16(b->y, (const uint16_t *)b->big, T, I, b->gu_interleaved, b->stream));
        prof_mark(b, P_SILU);
    } else {
        if ((rc = cuda_gemm(b, w->wgu, b->y, b->big, T, 2 * I, H)) < 0) goto fail;
        prof_mark(b, P_GU);
        if (b->gu_interleaved)
            CUDA_CHECK(b, sk_silu_mul_interleaved(b->y, b->big, T, I, b->stream));
        else
            CUDA_CHECK(b, sk_silu_mul(b->y, b->big, T, I, b->stream));
        prof_mark(b, P_SILU);
    }
    if ((rc = cuda_gemm_parts(b, w->wd, act, b->delta, T, H, I, delta_parts, false)) < 0) goto fail;
    prof_mark(b, P_DOWN);
fail:
    return rc;
}

/* Enqueues the model and the sampler for one step on b->stream (also while capturing a graph). */
static int enqueue_step(struct cuda_backend *b, const struct step_args *a)
{
    const struct model_config *c = &b->base.config;
    const int H = c->hidden_size, D = c->head_dim, V = c->vocab_size;
    const int nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * D, qkvd = (nh + 2 * nkv) * D;
    /* delta, the residual's next addend, is left by the o and down products in delta_parts parts
     * of T rows each (cuda_gemm_parts), which the norm after them adds; qkv in qkv_parts, which
     * qkv_post adds. */
    const int64_t part_stride = (int64_t)a->T * H;
    int delta_parts = 1, qkv_parts = 1;
    int rc = 0;
    CUDA_CHECK(b, sk_embed(b->x, b->tok_embed, a->dm.tokens, b->out_dev, a->T, H, b->stream));
    prof_mark(b, P_EMBED);
    for (int l = 0; l < c->n_layers; l++) {
        const struct cuda_layer *w = &b->layers[l];
        uint16_t *kc = b->kv + (size_t)l * 2 * b->kv_layer_elems, *vc = kc + b->kv_layer_elems;
        CUDA_CHECK(b, sk_add_rmsnorm_parts(b->x, l ? b->delta : NULL, delta_parts, part_stride, NULL, w->attn_norm,
                                           b->y, a->T, H, c->rms_eps, b->stream));
        prof_mark(b, P_NORM);
        /* qkv_post and the decode attention launch while qkv streams, and the attention's settled
         * keys with it (sk_attn_params.settled_keys): same runs on an H200, batch 16 / 32 steps
         * 4.54 / 4.69 ms against 4.60 / 4.78; batch 8 lost 0.5% (4.45 against 4.43). */
        if ((rc = cuda_gemm_parts(b, w->wqkv, b->y, b->big, a->T, qkvd, H, &qkv_parts, a->T > 8)) < 0) goto fail;
        prof_mark(b, P_QKV);
        if (a->fused_qkv) {
            const struct sk_qkv_src src = {.qkv = b->big,
                                           .n_parts = qkv_parts,
                                           .part_stride = (int64_t)a->T * qkvd,
                                           .bias = w->bqkv,
                                           .q_norm = w->q_norm,
                                           .k_norm = w->k_norm,
                                           .inv_freq = b->inv_freq,
                                           .slot = a->dm.slot,
                                           .eps = a->qp.eps,
                                           .interleaved = a->qp.interleaved};
            CUDA_CHECK(b, sk_attention_decode_qkv(&src, kc, vc, a->dm.bt, a->dm.seq, a->dm.pos, b->part_o, b->part_ml,
                                                  b->y, a->ap, b->stream));
        } else {
            CUDA_CHECK(b, sk_qkv_post_parts(b->big, qkv_parts, (int64_t)a->T * qkvd, w->bqkv, w->q_norm, w->k_norm,
                                            b->inv_freq, a->dm.pos, a->dm.slot, b->q, kc, vc, a->qp, b->stream));
            prof_mark(b, P_QKV_POST);
            if (a->n_tiles)
                CUDA_CHECK(b, sk_attention_prefill(b->q, kc, vc, a->dm.bt, a->dm.tiles, a->n_tiles, a->dm.pos, b->y,
                                                   a->ap, b->stream));
            if (a->ap.n_tokens)
                CUDA_CHECK(b, sk_attention(b->q, kc, vc, a->dm.bt, a->dm.seq, a->dm.pos, b->part_o, b->part_ml, b->y,
                                           a->ap, a->attn_kernel, b->stream));
        }
        prof_mark(b, P_ATTN);
        if ((rc = cuda_gemm_parts(b, w->wo, b->y, b->delta, a->T, H, qd, &delta_parts, false)) < 0) goto fail;
        prof_mark(b, P_O);
        CUDA_CHECK(b, sk_add_rmsnorm_parts(b->x, b->delta, delta_parts, part_stride, NULL, w->ffn_norm, b->y, a->T, H,
                                           c->rms_eps, b->stream));
        prof_mark(b, P_NORM);
        if ((rc = enqueue_mlp(b, w, a->T, &delta_parts)) < 0) goto fail;
    }
    if (a->R > 0) {
        CUDA_CHECK(b, sk_add_rmsnorm_parts(b->x, b->delta, delta_parts, part_stride, a->dm.sample_tok, b->final_norm,
                                           b->y, a->R, H, c->rms_eps, b->stream));
        prof_mark(b, P_NORM);
        if ((rc = cuda_gemm(b, b->lm_head, b->y, b->logits, a->R, V, H)) < 0) goto fail;
        prof_mark(b, P_LM_HEAD);
        if (a->logits_out)
            CUDA_CHECK(
                b, cudaMemcpyAsync(a->logits_out, b->logits, (size_t)a->R * V * 4, cudaMemcpyDeviceToHost, b->stream));
        CUDA_CHECK(b, sk_sample_prepare(b->logits, a->dm.rows, b->hist_dev, b->work, b->counts, b->out_dev, a->R, V,
                                        b->stream));
        if (a->any_cut)
            CUDA_CHECK(b, sk_sample_sort(b->sort_temp, b->sort_temp_bytes, b->work, b->ids_in, b->offsets, b->sorted_w,
                                         b->sorted_ids, a->R, V, b->stream));
        CUDA_CHECK(b, sk_sample_finish(b->logits, b->work, b->sorted_w, b->sorted_ids, a->any_cut, a->dm.rows,
                                       b->out_dev, a->R, V, b->stream));
        prof_mark(b, P_SAMPLE);
    }
fail:
    return rc;
}

/* Whether a sequence's new tokens go to the prefill attention (tiles of SK_PREFILL_TILE queries)
 * rather than the decode attention: every chunk of two or more, and a prompt's chunk of one, so
 * that a prompt token is computed the same way however the prompt was cut into chunks. */
static bool takes_tiles(const struct cuda_backend *b, const struct batch_seq *q)
{
    return b->use_prefill_mma && (q->n_new >= 2 || (q->prompt && q->n_new == 1));
}

/* Replays the captured step for this batch shape, capturing it first when new. */
static int run_graph(struct cuda_backend *b, const struct step_args *a, int n_seqs, int bt_stride)
{
    int rc = 0;
    struct cuda_graph_entry *g = NULL;
    cudaGraph_t graph = NULL;
    bool capturing = false;
    for (int i = 0; i < b->n_graphs; i++) {
        struct cuda_graph_entry *e = &b->graphs[i];
        if (e->n_seqs == n_seqs && e->bt_stride == bt_stride && e->any_cut == a->any_cut && e->hist == b->hist_dev) {
            g = e;
            break;
        }
    }
    if (!g) {
        if (b->n_graphs < CUDA_GRAPH_CACHE) {
            g = &b->graphs[b->n_graphs++];
        } else {
            g = &b->graphs[0];
            for (int i = 1; i < b->n_graphs; i++)
                if (b->graphs[i].last_used < g->last_used) g = &b->graphs[i];
            cudaGraphExecDestroy(g->exec);
        }
        memset(g, 0, sizeof *g);
        CUDA_CHECK(b, cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
        capturing = true;
        rc = enqueue_step(b, a);
        capturing = false;
        cudaError_t e = cudaStreamEndCapture(b->stream, &graph);
        if (rc < 0) goto fail;
        CUDA_CHECK(b, e);
        CUDA_CHECK(b, cudaGraphInstantiate(&g->exec, graph, 0));
        g->n_seqs = n_seqs;
        g->bt_stride = bt_stride;
        g->any_cut = a->any_cut;
        g->hist = b->hist_dev;
        b->graph_captures++;
    }
    g->last_used = ++b->graph_clock;
    CUDA_CHECK(b, cudaGraphLaunch(g->exec, b->stream));
    b->graph_replays++;
fail:
    if (capturing) {
        cudaGraph_t dropped = NULL;
        cudaStreamEndCapture(b->stream, &dropped);
        if (dropped) cudaGraphDestroy(dropped);
    }
    if (graph) cudaGraphDestroy(graph);
    if (rc < 0 && g && !g->exec) {
        /* Drop the half-made entry: move the last one into its place. */
        *g = b->graphs[--b->n_graphs];
    }
    return rc;
}

/* Queues one step (backend_submit): its metadata goes over, then the model, the sampler and
 * the copy of the sampled tokens into this step's half of out_host. Tokens given as the previous
 * step's rows are read on the device from what its sampler left in out_dev. */
int cuda_submit(struct backend *base, const struct batch *batch)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    const struct model_config *c = &base->config;
    const int T = batch->n_tokens, S = batch->n_seqs;
    const int D = c->head_dim, V = c->vocab_size, nh = c->n_heads, nkv = c->n_kv_heads;
    int rc = 0, R = 0, bt_stride = 1, max_ctx = 0, n_tiles = 0, n_dec = 0;
    bool any_cut = false, dec_single = true; /* every decode-attention token its sequence's only one */
    size_t n_hist = 0;
    struct step_meta hm, dm;

    if (S < 0 || S > base->max_batch_seqs || T < 0 || T > base->max_batch_tokens)
        CUDA_FAIL(b, "cuda: batch of %d tokens / %d sequences exceeds %d / %d", T, S, base->max_batch_tokens,
                  base->max_batch_seqs);
    const double t_start = b->prof ? now_s() : 0.0;
    CUDA_CHECK(b, cudaSetDevice(b->device));

    /* Check the batch and size its parts. */
    int total = 0;
    for (int s = 0; s < S; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int ctx = q->start_pos + q->n_new;
        int need = (ctx + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        if (q->n_new < 0 || q->start_pos < 0 || need > q->n_blocks || need > b->bt_cap || (q->sample && !q->sampling) ||
            (q->sample && q->n_new < 1))
            CUDA_FAIL(b, "cuda: sequence %d of the batch is inconsistent (start %d, %d new, %d blocks)", s,
                      q->start_pos, q->n_new, q->n_blocks);
        for (int i = 0; i < need; i++)
            if (q->block_table[i] < 0 || q->block_table[i] >= base->num_kv_blocks)
                CUDA_FAIL(b, "cuda: block id %d out of range (%d blocks)", q->block_table[i], base->num_kv_blocks);
        if (need > bt_stride) bt_stride = need;
        if (ctx > max_ctx) max_ctx = ctx;
        if (takes_tiles(b, q))
            n_tiles += (q->n_new + SK_PREFILL_TILE - 1) / SK_PREFILL_TILE;
        else {
            n_dec += q->n_new;
            if (q->n_new > 1) dec_single = false;
        }
        total += q->n_new;
        if (q->sample) {
            R++;
            if (sampling_uses_history(q->sampling) && q->history && q->n_history > 0) n_hist += (size_t)q->n_history;
        }
    }
    if (total != T) CUDA_FAIL(b, "cuda: sequences carry %d tokens, batch says %d", total, T);
    if (b->submitted - b->collected >= 2) CUDA_FAIL(b, "cuda: two steps are queued already");
    /* What BACKEND_TOKEN_FROM_PREV may name: the rows the last submitted step sampled. */
    const int prev_rows = b->submitted ? b->slot_rows[(b->submitted - 1) % 2] : 0;
    for (int t = 0; t < T; t++) {
        const int32_t tok = batch->tokens[t];
        if (tok >= V || (tok < 0 && BACKEND_TOKEN_PREV_ROW(tok) >= prev_rows))
            CUDA_FAIL(b, "cuda: token %d at row %d is neither in the vocabulary (%d) nor one of the %d rows the "
                         "previous step sampled", tok, t, V, prev_rows);
    }
    if ((rc = ensure_history(b, n_hist)) < 0) goto fail;

    /* A pure decode step (one token per sequence, every one sampled) of a shape seen before is
     * replayed from a CUDA graph; its block-table width is rounded up to a power of two so the
     * shape changes rarely as contexts grow. */
    bool graphable = b->use_graphs && T > 0 && T == S && R == S && n_tiles == 0 && !batch->logits_out;
    if (graphable) {
        int w = 4;
        while (w < bt_stride) w *= 2;
        bt_stride = w < b->bt_cap ? w : b->bt_cap;
    }

    /* The previous step's metadata copy must be done before its pinned buffer is rewritten. */
    CUDA_CHECK(b, cudaEventSynchronize(b->meta_sent));
    /* The general kernel takes every token unless tiles took some (then it gets a list). */
    const bool all_dec = n_dec == T;
    size_t bytes = meta_layout(b->meta_host, T, S, R, bt_stride, n_tiles, all_dec ? 0 : n_dec, &hm);
    if (bytes > b->meta_bytes) CUDA_FAIL(b, "cuda: step metadata of %zu bytes exceeds %zu", bytes, b->meta_bytes);
    meta_layout(b->meta_dev, T, S, R, bt_stride, n_tiles, all_dec ? 0 : n_dec, &dm);
    int tile_at = 0, dec_at = 0;
    memcpy(hm.tokens, batch->tokens, (size_t)T * 4);
    size_t hist_at = 0;
    for (int s = 0, t = 0, r = 0; s < S; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int need = (q->start_pos + q->n_new + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        memcpy(hm.bt + (size_t)s * bt_stride, q->block_table, (size_t)need * 4);
        if (takes_tiles(b, q)) {
            for (int i = 0; i < q->n_new; i += SK_PREFILL_TILE, tile_at++) {
                hm.tiles[3 * tile_at] = t + i;
                hm.tiles[3 * tile_at + 1] = q->n_new - i < SK_PREFILL_TILE ? q->n_new - i : SK_PREFILL_TILE;
                hm.tiles[3 * tile_at + 2] = s;
            }
        } else if (!all_dec) {
            for (int i = 0; i < q->n_new; i++) hm.dec[dec_at++] = t + i;
        }
        for (int i = 0; i < q->n_new; i++, t++) {
            int p = q->start_pos + i;
            hm.pos[t] = p;
            hm.seq[t] = s;
            hm.slot[t] = q->block_table[p / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + p % KV_BLOCK_SIZE;
        }
        if (!q->sample) continue;
        const struct sampling_params *sp = q->sampling;
        struct sk_sample_row *row = &hm.rows[r];
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
            memcpy(b->hist_host + hist_at, q->history, (size_t)q->n_history * 4);
            row->hist_off = (int32_t)hist_at;
            row->n_history = q->n_history;
            row->n_output = q->n_output;
            hist_at += (size_t)q->n_history;
        }
        if (sp->temperature > 1e-5f && ((sp->top_k > 0 && sp->top_k < V) || (sp->top_p > 0.0f && sp->top_p < 1.0f)))
            any_cut = true;
        hm.sample_tok[r++] = t - 1;
    }
    if (b->prof) {
        b->prof->n_ev = 0;
        prof_mark(b, P_COPY);
    }
    CUDA_CHECK(b, cudaMemcpyAsync(b->meta_dev, b->meta_host, bytes, cudaMemcpyHostToDevice, b->stream));
    if (hist_at)
        CUDA_CHECK(b, cudaMemcpyAsync(b->hist_dev, b->hist_host, hist_at * 4, cudaMemcpyHostToDevice, b->stream));
    CUDA_CHECK(b, cudaEventRecord(b->meta_sent, b->stream));
    prof_mark(b, P_COPY);

    struct step_args sa = {
        .T = T, .R = R, .n_tiles = n_tiles, .dm = dm, .any_cut = any_cut, .logits_out = batch->logits_out};
    /* Long contexts split their keys (flash-decoding) so that a few queries still fill the GPU:
     * each token's keys are cut into n_splits equal ranges of at least ~128 keys. The bound
     * comes from the block-table width, so a captured step keeps its grid while the width holds. */
    sa.ap = (struct sk_attn_params){.n_tokens = n_dec,
                                    .n_heads = nh,
                                    .n_kv_heads = nkv,
                                    .head_dim = D,
                                    .bt_stride = bt_stride,
                                    .scale = 1.0f / sqrtf((float)D),
                                    .n_splits = 1,
                                    .split_len = 0,
                                    .token_list = all_dec ? NULL : dm.dec,
                                    /* A sequence's earlier keys are written only by earlier steps
                                     * when it brings one token (shared blocks are full ones). */
                                    .settled_keys = b->attn_early && dec_single};
    /* The streaming kernel (one block per kv head and token) beat the per-query-head kernel at
     * every batch measured (1-256), so it takes every shape it fits. */
    const bool stream = sk_attention_decode_fits(&sa.ap);
    sa.attn_kernel = stream ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD;
    /* Every token a decode token, its sequence's only one, and more than 32 of them
     * (fused_qkv_rows): no qkv_post, the decode attention does its work (a graph's batch size
     * decides, so graphs need no key for it). Same runs on an H200, ms per step against
     * fused_qkv=off: batch 40 / 48 / 64 5.02 / 5.13 / 5.17 against 5.05 / 5.16 / 5.24,
     * 128 even; but batch 1 / 8 / 16 4.36 / 4.48 / 4.56 against 4.33 / 4.45 / 4.55, where the
     * attention's start no longer hides behind qkv_post's work, and 32 even. */
    sa.fused_qkv = b->fused_qkv_rows >= 0 && n_dec > b->fused_qkv_rows && all_dec &&
                   sk_attention_decode_qkv_fits(&sa.ap);
    if (sa.fused_qkv) b->fused_qkv_steps++;
    int64_t ctx_bound = graphable ? (int64_t)bt_stride * KV_BLOCK_SIZE : max_ctx;
    if (b->deterministic && n_dec > 0) {
        /* Ranges of det_split_len keys, so that a token's ranges follow from its own position,
         * and always the merge, even where one range holds every key: the unsplit kernel's
         * normalization is not the merge's, and which one a token got would depend on its batch. */
        const int64_t cap = b->part_rows / ((int64_t)n_dec * nh);
        int64_t n = (ctx_bound + b->det_split_len - 1) / b->det_split_len;
        sa.ap.split_len = b->det_split_len;
        if (n > cap) {
            /* Only a prefill through the decode attention (head_dim not 64 or 128) of more
             * tokens than --max-num-seqs gets here; its ranges then follow the batch. */
            n = cap;
            sa.ap.split_len = (int)((ctx_bound + n - 1) / n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
        }
        sa.ap.n_splits = n >= 2 ? (int)n : cap >= 2 ? 2 : 1;
    } else if (ctx_bound >= 256 && n_dec > 0) {
        int64_t blocks = (int64_t)n_dec * (stream ? nkv : nh), n;
        if (stream) {
            /* About 4 of its blocks are resident per SM: split only up to one full wave (a second
             * wave plus the merge costs more than it saves: batch 64 x 192 keys took 23.8 us per
             * layer with 2 splits and 15.8 with 1 on an H200), and keep ranges under ~1024 keys
             * so that one long context does not become the step's tail. */
            int64_t fill = 4 * (int64_t)b->n_sms / blocks, by_1024 = (ctx_bound + 1023) / 1024;
            n = fill > by_1024 ? fill : by_1024;
        } else {
            /* Enough blocks to fill the GPU, and ranges of ~256 keys on the longest context. */
            int64_t fill = (8 * (int64_t)b->n_sms + blocks - 1) / blocks, by_256 = (ctx_bound + 255) / 256;
            n = fill > by_256 ? fill : by_256;
        }
        /* Never ranges under ~128 keys. */
        int64_t by_128 = (ctx_bound + 127) / 128;
        int64_t cap = b->part_rows / ((int64_t)n_dec * nh); /* part_o holds rows per query head */
        if (n > by_128) n = by_128;
        if (n > cap) n = cap;
        if (n > CUDA_MAX_SPLITS) n = CUDA_MAX_SPLITS;
        if (n > 1) sa.ap.n_splits = (int)n;
    }
    sa.qp = (struct sk_qkv_params){.n_tokens = T,
                                   .n_heads = nh,
                                   .n_kv_heads = nkv,
                                   .head_dim = D,
                                   .eps = c->rms_eps,
                                   .interleaved = c->rope_interleaved};
    if (graphable) {
        if ((rc = run_graph(b, &sa, S, bt_stride)) < 0) goto fail;
    } else if (T > 0) {
        if ((rc = enqueue_step(b, &sa)) < 0) goto fail;
    }
    const int slot = (int)(b->submitted % 2);
    if (R > 0)
        CUDA_CHECK(b, cudaMemcpyAsync(b->out_host + (size_t)slot * base->max_batch_seqs, b->out_dev,
                                      (size_t)R * sizeof *b->out_host, cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(b, cudaEventRecord(b->step_done[slot], b->stream));
    b->slot_rows[slot] = R;
    b->submitted++;
    /* The profile's events, and logits the caller reads, are only good once the step is done. */
    if (b->prof || batch->logits_out) {
        if ((rc = wait_step(b, b->step_done[slot])) < 0) goto fail;
        if (b->prof) prof_collect(b, T == S ? S : -T, 1e3 * (now_s() - t_start));
    }
fail:
    return rc;
}

/* Waits for the oldest queued step (backend_collect) and hands over its sampled tokens. */
int cuda_collect(struct backend *base, struct sample_result *results)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    const int V = base->config.vocab_size;
    int rc = 0;
    if (b->collected == b->submitted) CUDA_FAIL(b, "cuda: no step is queued");
    const int slot = (int)(b->collected % 2);
    b->collected++;
    if ((rc = wait_step(b, b->step_done[slot])) < 0) goto fail;
    const struct sk_sample_out *out = b->out_host + (size_t)slot * base->max_batch_seqs;
    for (int r = 0; r < b->slot_rows[slot]; r++) {
        const struct sk_sample_out *o = &out[r];
        struct sample_result *res = &results[r];
        if (o->token < 0 || o->token >= V) CUDA_FAIL(b, "cuda: sampler returned token %d", o->token);
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
