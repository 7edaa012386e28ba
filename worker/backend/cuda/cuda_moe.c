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
 *
 * Experts in FP8 (an FP8 checkpoint's, or --quantization fp8) stay in e4m3 on the device, a byte
 * a weight and a float32 scale a row, and their products run sk_moe_gemm_fp8 instead, which
 * takes the same rows and gives the same outputs (kernels/moe_gemm_fp8.cu); the router and the
 * shared expert's gate stay bf16, as vLLM leaves them unquantized.
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
#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/backend/cuda/cuda_moe_plan.h"
#include "worker/model/model_moe.h"

/* One product's weights on the device: bf16 (scale NULL), or e4m3 codes with a float32 scale
 * per row (sk_moe_gemm_fp8). bytes: both together. */
struct moe_mat {
    void *w;
    float *scale;
    size_t bytes;
};

struct cuda_moe_layer {
    uint16_t *router;                  /* [n_experts, hidden] bf16; NULL: a dense layer */
    struct moe_mat gu, down;           /* [n_experts, 2 inter, hidden], [n_experts, hidden, inter] */
    struct moe_mat shared_gu, shared_down; /* [2 si, hidden], [hidden, si]; w NULL without */
    uint16_t *shared_gate;             /* [1, hidden] bf16 */
};

struct cuda_moe {
    struct moe_config c;
    int n_layers;
    struct cuda_moe_layer *layers;
    struct cuda_moe_sizes sz;
    bool warned_fp8; /* some FP8 experts were dequantized to bf16 (said once) */
    /* Scratch for one pass (cuda_moe_sizes). */
    float *logits, *weight, *y_exp, *shared_y, *shared_g;
    int32_t *choice, *order, *pos, *seg, *active;
    uint16_t *act, *shared_act;
};

static int alloc_weights(struct cuda_backend *b, void **p, size_t bytes)
{
    int rc = 0;
    CUDA_CHECK(b, cudaMalloc(p, bytes));
    b->w.bytes += bytes;
fail:
    return rc;
}

static bool any_fp8(const struct tensor *const *parts, int n)
{
    for (int i = 0; i < n; i++)
        if (parts[i]->dtype == DTYPE_F8_E4M3 || parts[i]->dtype == DTYPE_F8_E5M2) return true;
    return false;
}

/* The n tensors of parts (part_rows x k_in each) stacked as the rows of one product's weights:
 * in e4m3 with a scale a row when fp8 (cuda_moe_fp8_takes said so), else in bf16. */
static int put_stack(struct cuda_backend *b, struct loader *ld, const struct model *mdl, struct moe_mat *m,
                     const struct tensor *const *parts, int n, int64_t part_rows, int64_t k_in, bool fp8,
                     const char *name)
{
    const int64_t rows = (int64_t)n * part_rows;
    int rc = 0;
    if (!fp8 && any_fp8(parts, n) && !b->moe->warned_fp8) {
        log_warn("cuda: %s: FP8 experts the FP8 expert product does not take (block scales, E5M2, or %lld columns, "
                 "a multiple of 16 needed) are dequantized to bf16 at load; so may be others",
                 name, (long long)k_in);
        b->moe->warned_fp8 = true;
    }
    const size_t w_bytes = (size_t)(rows * k_in) * (fp8 ? 1 : 2), s_bytes = fp8 ? (size_t)rows * sizeof(float) : 0;
    m->bytes = w_bytes + s_bytes;
    if ((rc = alloc_weights(b, &m->w, w_bytes)) < 0) goto fail;
    if (fp8 && (rc = alloc_weights(b, (void **)&m->scale, s_bytes)) < 0) goto fail;
    for (int i = 0; i < n; i++) {
        const struct tensor *t = parts[i];
        if (!fp8) {
            rc = cuda_weights_put_matrix(ld, (uint16_t *)m->w + i * part_rows * k_in, t, part_rows * k_in, name);
        } else if (t->shape[0] != part_rows || t->shape[1] != k_in) {
            CUDA_FAIL(b, "cuda: %s: an FP8 tensor of %lld x %lld, expected %lld x %lld", name, (long long)t->shape[0],
                      (long long)t->shape[1], (long long)part_rows, (long long)k_in);
        } else {
            rc = cuda_fp8_put_rows(b, (uint8_t *)m->w + i * part_rows * k_in, m->scale + i * part_rows, t,
                                   mdl->dummy_seed);
        }
        if (rc < 0) goto fail;
    }
fail:
    return rc;
}

/* The router and shared gate: bf16 matrices of their own. */
static int put_bf16(struct cuda_backend *b, struct loader *ld, uint16_t **dst, const struct tensor *t, int64_t rows,
                    int64_t cols, const char *name)
{
    int rc = alloc_weights(b, (void **)dst, (size_t)(rows * cols) * 2);
    return rc < 0 ? rc : cuda_weights_put_matrix(ld, *dst, t, rows * cols, name);
}

/* The shared expert of sparse layer l: [gate; up] and down, each in e4m3 where the FP8 product
 * takes it; its gate in bf16. */
static int put_shared(struct cuda_backend *b, struct loader *ld, const struct model *m, int l)
{
    const struct moe_weights *W = m->layers[l].moe;
    struct cuda_moe_layer *L = &b->moe->layers[l];
    const int64_t H = m->config.hidden_size, SI = m->config.moe.shared_intermediate;
    const struct tensor *gu[2] = {&W->shared_gate_proj, &W->shared_up}, *down = &W->shared_down;
    const bool fp8_gu = cuda_moe_fp8_takes(gu[0], 1, H) && cuda_moe_fp8_takes(gu[1], 1, H);
    char name[96];
    int rc;
    snprintf(name, sizeof name, "layer %d shared expert", l);
    if ((rc = put_stack(b, ld, m, &L->shared_gu, gu, 2, SI, H, fp8_gu, name)) < 0) return rc;
    if ((rc = put_stack(b, ld, m, &L->shared_down, &down, 1, H, SI, cuda_moe_fp8_takes(down, 1, SI), name)) < 0)
        return rc;
    return put_bf16(b, ld, &L->shared_gate, &W->shared_expert_gate, 1, H, name);
}

int cuda_moe_load_layer(struct cuda_backend *b, struct loader *ld, const struct model *m, int l)
{
    const struct model_config *c = &m->config;
    const struct moe_weights *W = m->layers[l].moe;
    const int64_t H = c->hidden_size, I = c->moe.expert_intermediate, SI = c->moe.shared_intermediate;
    const int E = c->moe.n_experts;
    const struct tensor *gu[2 * SK_MOE_MAX_EXPERTS], *down[SK_MOE_MAX_EXPERTS];
    int rc = 0;
    char name[96];
    if (E < 1 || E > SK_MOE_MAX_EXPERTS) CUDA_FAIL(b, "cuda: %d experts (at most %d)", E, SK_MOE_MAX_EXPERTS);
    if (!b->moe) {
        if (!(b->moe = calloc(1, sizeof *b->moe)) || !(b->moe->layers = calloc((size_t)c->n_layers, sizeof(struct cuda_moe_layer))))
            CUDA_FAIL(b, "cuda: out of host memory for the experts");
        b->moe->c = c->moe;
        b->moe->n_layers = c->n_layers;
    }
    struct cuda_moe_layer *L = &b->moe->layers[l];
    snprintf(name, sizeof name, "layer %d router", l);
    if ((rc = put_bf16(b, ld, &L->router, &W->router, E, H, name)) < 0) goto fail;
    /* Expert e's gate rows, then its up rows: sk_moe_gemm's [gate; up] per group. */
    for (int e = 0; e < E; e++) gu[2 * e] = &W->gate[e], gu[2 * e + 1] = &W->up[e], down[e] = &W->down[e];
    const bool fp8_gu = cuda_moe_fp8_takes(W->gate, E, H) && cuda_moe_fp8_takes(W->up, E, H);
    snprintf(name, sizeof name, "layer %d experts' gate/up", l);
    if ((rc = put_stack(b, ld, m, &L->gu, gu, 2 * E, I, H, fp8_gu, name)) < 0) goto fail;
    snprintf(name, sizeof name, "layer %d experts' down", l);
    if ((rc = put_stack(b, ld, m, &L->down, down, E, H, I, cuda_moe_fp8_takes(W->down, E, I), name)) < 0) goto fail;
    if (SI > 0 && W->shared_gate_proj.ndim && (rc = put_shared(b, ld, m, l)) < 0) goto fail;
    /* Pageable sources and the dummy fill: done before the model's memory or the fill moves on. */
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

size_t cuda_moe_expert_bytes(const struct cuda_backend *b, size_t *fp8)
{
    size_t all = 0, q = 0;
    for (int l = 0; b->moe && l < b->moe->n_layers; l++) {
        const struct cuda_moe_layer *L = &b->moe->layers[l];
        const struct moe_mat *ms[] = {&L->gu, &L->down, &L->shared_gu, &L->shared_down};
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            all += ms[i]->bytes;
            if (ms[i]->scale) q += ms[i]->bytes;
        }
    }
    if (fp8) *fp8 = q;
    return all;
}

void cuda_moe_load_done(const struct cuda_backend *b)
{
    if (!b->moe) return;
    int sparse = 0;
    for (int l = 0; l < b->moe->n_layers; l++) sparse += b->moe->layers[l].router != NULL;
    size_t fp8, all = cuda_moe_expert_bytes(b, &fp8);
    log_info("cuda: experts of %d sparse layers: %.3f GiB, %.3f GiB of it in e4m3 (a byte a weight, a scale a row), "
             "the rest bf16", sparse, (double)all / (1 << 30), (double)fp8 / (1 << 30));
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

/* A grouped product of m's weights (sk_moe_gemm's arguments): bf16, or e4m3 with its scales. */
static cudaError_t moe_product(const struct moe_mat *m, const uint16_t *x, const struct sk_moe_rows *rows, float *y,
                               uint16_t *act, int n_out, int k_in, cudaStream_t s)
{
    if (m->scale) return sk_moe_gemm_fp8(m->w, m->scale, x, rows, y, act, n_out, k_in, s);
    return sk_moe_gemm(m->w, x, rows, y, act, n_out, k_in, s);
}

/* Sparse layer l's MLP over the rows of b->ws.y [T, hidden] into b->ws.delta (one part). */
int cuda_moe_enqueue(struct cuda_backend *b, int l, int T, int *delta_parts)
{
    struct cuda_moe *moe = b->moe;
    const struct cuda_moe_layer *L = &moe->layers[l];
    const int H = b->base.config.hidden_size, E = moe->c.n_experts, K = moe->c.top_k;
    const int I = moe->c.expert_intermediate, SI = moe->c.shared_intermediate;
    const bool shared = L->shared_gu.w != NULL;
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
        CUDA_CHECK(b, moe_product(&L->gu, x, &by_token, NULL, moe->act, I, H, b->stream));
        CUDA_CHECK(b, moe_product(&L->down, moe->act, &by_pair, moe->y_exp, NULL, H, I, b->stream));
        if (shared) {
            CUDA_CHECK(b, moe_product(&L->shared_gu, x, &dense, NULL, moe->shared_act, SI, H, b->stream));
            CUDA_CHECK(b, moe_product(&L->shared_down, moe->shared_act, &dense, moe->shared_y, NULL, H, SI, b->stream));
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
        void *p[] = {L->router,       L->gu.w,           L->gu.scale,        L->down.w,          L->down.scale,
                     L->shared_gu.w, L->shared_gu.scale, L->shared_down.w, L->shared_down.scale, L->shared_gate};
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
