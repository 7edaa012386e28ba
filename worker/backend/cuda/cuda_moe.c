/* The CUDA backend's mixture-of-experts layers (Mixtral, Qwen2-MoE with its shared expert,
 * Qwen3-MoE). Per sparse layer and pass of up to CUDA_MOE_CHUNK tokens, all on the stream with no
 * host synchronisation, so that a decode step is captured in a CUDA graph like a dense one:
 *
 *   router logits      sk_moe_gemm (dense, fp32)              [n, n_experts]
 *   top-k + weights    sk_moe_route                           choice, weight [n * top_k]
 *   sort by expert     sk_moe_sort (counting sort, one block) order, pos, seg, active
 *   gate/up + SiLU     sk_moe_gemm over the active experts    act [pairs, inter] bf16
 *   down               sk_moe_gemm over the active experts    y_exp [pairs, hidden] fp32
 *                      (CUDA cores where experts have few rows, as in decode; tensor cores where
 *                      they have many, unless --deterministic)
 *   shared expert      sk_moe_gemm (dense) x3 (Qwen2-MoE)     shared_y, shared_g
 *   combine            sk_moe_combine: ascending expert order, then the sigmoid-gated shared expert
 *
 * One launch per projection per layer; the grids depend on the pass's token count and the
 * model's shape only (kernels/moe_*.cu). Every row's arithmetic is its own; under --deterministic
 * it is also the same kernel's at every batch size, so a token's result is the same whatever
 * shares its batch.
 *
 * Ties: the CPU backend replays torch's CPU top-k tie order (cpu_router.c); sk_moe_route gives
 * equal probabilities to the lower expert id. Exactly equal float router probabilities need
 * equal logits, which trained routers practically never produce; a degenerate router (equal
 * rows) may choose differently from the CPU, with the same weights. */
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/backend/cuda/cuda_moe_plan.h"
#include "worker/model/model_moe.h"

struct cuda_moe_layer {
    uint16_t *router;                 /* [n_experts, hidden]; NULL: a dense layer */
    uint16_t *gu, *down;              /* [n_experts, 2 inter, hidden], [n_experts, hidden, inter] */
    uint16_t *shared_gu, *shared_down; /* [2 si, hidden], [hidden, si]; NULL without */
    uint16_t *shared_gate;            /* [1, hidden] */
};

struct cuda_moe {
    struct moe_config c;
    int n_layers;
    struct cuda_moe_layer *layers;
    struct cuda_moe_sizes sz;
    /* Scratch for one pass (cuda_moe_sizes). */
    float *logits, *weight, *y_exp, *shared_y, *shared_g;
    int32_t *choice, *order, *pos, *seg, *active;
    uint16_t *act, *shared_act;
};

static int alloc_weights(struct cuda_backend *b, uint16_t **p, int64_t elems)
{
    int rc = 0;
    CUDA_CHECK(b, cudaMalloc((void **)p, (size_t)elems * 2));
    b->w.bytes += (size_t)elems * 2;
fail:
    return rc;
}

int cuda_moe_load_layer(struct cuda_backend *b, struct loader *ld, const struct model *m, int l)
{
    const struct model_config *c = &m->config;
    const struct moe_weights *W = m->layers[l].moe;
    const int64_t H = c->hidden_size, I = c->moe.expert_intermediate, SI = c->moe.shared_intermediate;
    const int E = c->moe.n_experts;
    int rc = 0;
    char name[96];
    if (!b->moe) {
        if (!(b->moe = calloc(1, sizeof *b->moe)) || !(b->moe->layers = calloc((size_t)c->n_layers, sizeof(struct cuda_moe_layer))))
            CUDA_FAIL(b, "cuda: out of host memory for the experts");
        b->moe->c = c->moe;
        b->moe->n_layers = c->n_layers;
    }
    struct cuda_moe_layer *L = &b->moe->layers[l];
    snprintf(name, sizeof name, "layer %d router", l);
    if ((rc = alloc_weights(b, &L->router, E * H)) < 0) goto fail;
    if ((rc = cuda_weights_put_matrix(ld, L->router, &W->router, E * H, name)) < 0) goto fail;
    if ((rc = alloc_weights(b, &L->gu, E * 2 * I * H)) < 0) goto fail;
    if ((rc = alloc_weights(b, &L->down, E * H * I)) < 0) goto fail;
    for (int e = 0; e < E; e++) {
        uint16_t *gu = L->gu + (int64_t)e * 2 * I * H;
        snprintf(name, sizeof name, "layer %d expert %d", l, e);
        if ((rc = cuda_weights_put_matrix(ld, gu, &W->gate[e], I * H, name)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, gu + I * H, &W->up[e], I * H, name)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, L->down + (int64_t)e * H * I, &W->down[e], H * I, name)) < 0) goto fail;
    }
    if (SI > 0 && W->shared_gate_proj.ndim) {
        snprintf(name, sizeof name, "layer %d shared expert", l);
        if ((rc = alloc_weights(b, &L->shared_gu, 2 * SI * H)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, L->shared_gu, &W->shared_gate_proj, SI * H, name)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, L->shared_gu + SI * H, &W->shared_up, SI * H, name)) < 0) goto fail;
        if ((rc = alloc_weights(b, &L->shared_down, H * SI)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, L->shared_down, &W->shared_down, H * SI, name)) < 0) goto fail;
        if ((rc = alloc_weights(b, &L->shared_gate, H)) < 0) goto fail;
        if ((rc = cuda_weights_put_matrix(ld, L->shared_gate, &W->shared_expert_gate, H, name)) < 0) goto fail;
    }
fail:
    return rc;
}

bool cuda_moe_is_sparse(const struct cuda_backend *b, int l)
{
    return b->moe && l >= 0 && l < b->moe->n_layers && b->moe->layers[l].router;
}

static int alloc_scratch(struct cuda_backend *b, void **p, int64_t elems, size_t esz)
{
    int rc = 0;
    size_t bytes = elems > 0 ? (size_t)elems * esz : 16;
    CUDA_CHECK(b, cudaMalloc(p, bytes));
    b->ws.bytes += bytes;
fail:
    return rc;
}

int cuda_moe_workspace_alloc(struct cuda_backend *b)
{
    struct cuda_moe *moe = b->moe;
    int rc = 0;
    if (!moe) return 0;
    moe->sz = cuda_moe_sizes(&b->base.config, b->base.max_batch_tokens);
    const struct cuda_moe_sizes *s = &moe->sz;
    const int64_t E1 = moe->c.n_experts + 1;
    if ((rc = alloc_scratch(b, (void **)&moe->logits, s->logits, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->weight, s->pairs, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->y_exp, s->y_exp, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->shared_y, s->shared_y, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->shared_g, s->chunk, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->choice, s->pairs, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->order, s->pairs, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->pos, s->pairs, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->seg, E1, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->active, E1, 4)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->act, s->act, 2)) < 0) goto fail;
    if ((rc = alloc_scratch(b, (void **)&moe->shared_act, s->shared_act, 2)) < 0) goto fail;
fail:
    return rc;
}

/* Sparse layer l's MLP over the rows of b->ws.y [T, hidden] into b->ws.delta (one part). */
int cuda_moe_enqueue(struct cuda_backend *b, int l, int T, int *delta_parts)
{
    struct cuda_moe *moe = b->moe;
    const struct cuda_moe_layer *L = &moe->layers[l];
    const int H = b->base.config.hidden_size, E = moe->c.n_experts, K = moe->c.top_k;
    const int I = moe->c.expert_intermediate, SI = moe->c.shared_intermediate;
    const bool shared = L->shared_gu != NULL;
    int rc = 0;
    for (int t0 = 0; t0 < T; t0 += moe->sz.chunk) {
        const int n = T - t0 < moe->sz.chunk ? T - t0 : moe->sz.chunk, pairs = n * K;
        const uint16_t *x = b->ws.y + (int64_t)t0 * H;
        /* --deterministic: the CUDA-core product at every row count, so a token's bits do not
         * depend on how many tokens share its step or its experts. */
        const int invariant = b->plan.deterministic;
        const struct sk_moe_rows dense = {.n_rows = n, .invariant = invariant};
        const struct sk_moe_rows by_token = {.seg = moe->seg, .active = moe->active, .order = moe->order,
                                             .n_groups = E, .n_rows = pairs, .top_k = K, .invariant = invariant};
        const struct sk_moe_rows by_pair = {.seg = moe->seg, .active = moe->active, .order = NULL,
                                            .n_groups = E, .n_rows = pairs, .top_k = K, .invariant = invariant};
        CUDA_CHECK(b, sk_moe_gemm(L->router, x, &dense, moe->logits, NULL, E, H, b->stream));
        CUDA_CHECK(b, sk_moe_route(moe->logits, n, E, K, moe->c.norm_topk_prob, moe->choice, moe->weight, b->stream));
        CUDA_CHECK(b, sk_moe_sort(moe->choice, pairs, E, moe->order, moe->pos, moe->seg, moe->active, b->stream));
        CUDA_CHECK(b, sk_moe_gemm(L->gu, x, &by_token, NULL, moe->act, I, H, b->stream));
        CUDA_CHECK(b, sk_moe_gemm(L->down, moe->act, &by_pair, moe->y_exp, NULL, H, I, b->stream));
        if (shared) {
            CUDA_CHECK(b, sk_moe_gemm(L->shared_gu, x, &dense, NULL, moe->shared_act, SI, H, b->stream));
            CUDA_CHECK(b, sk_moe_gemm(L->shared_down, moe->shared_act, &dense, moe->shared_y, NULL, H, SI, b->stream));
            CUDA_CHECK(b, sk_moe_gemm(L->shared_gate, x, &dense, moe->shared_g, NULL, 1, H, b->stream));
        }
        CUDA_CHECK(b, sk_moe_combine(moe->y_exp, moe->choice, moe->weight, moe->pos, K, shared ? moe->shared_y : NULL,
                                     moe->shared_g, b->ws.delta + (int64_t)t0 * H, n, H, b->stream));
    }
    *delta_parts = 1;
    cuda_prof_mark(b, CUDA_PROF_MLP);
fail:
    return rc;
}

void cuda_moe_free(struct cuda_backend *b)
{
    struct cuda_moe *moe = b->moe;
    if (!moe) return;
    for (int l = 0; moe->layers && l < moe->n_layers; l++) {
        struct cuda_moe_layer *L = &moe->layers[l];
        void *p[] = {L->router, L->gu, L->down, L->shared_gu, L->shared_down, L->shared_gate};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
            if (p[i]) cudaFree(p[i]);
    }
    void *s[] = {moe->logits, moe->weight, moe->y_exp, moe->shared_y, moe->shared_g, moe->choice,
                 moe->order,  moe->pos,    moe->seg,   moe->active,   moe->act,      moe->shared_act};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (s[i]) cudaFree(s[i]);
    free(moe->layers);
    free(moe);
    b->moe = NULL;
}
