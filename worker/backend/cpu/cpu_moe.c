/* The CPU backend's mixture-of-experts MLP. A batch goes through in chunks of CHUNK_ROWS
 * tokens so that the scratch stays bounded whatever the batch: route every token of the chunk,
 * sort its (token, expert) pairs by expert, and run each chosen expert over its rows with the
 * same cpu_matmul_w as the dense layers; then each token sums its experts' outputs, weighted,
 * in ascending expert order (transformers' index_add_ over the experts it hit), and adds
 * Qwen2-MoE's shared expert times sigmoid of its gate. Every row's arithmetic depends on that
 * row alone, so a token's result does not depend on what shares its batch. */
#include "worker/backend/cpu/cpu_moe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/backend/cpu/cpu_router.h"
#include "worker/model/model_moe.h"

#define CHUNK_ROWS 256

struct cpu_moe_layer {
    bool sparse;
    struct cpu_weight router;             /* [n_experts, hidden] */
    struct cpu_weight *gate_up;           /* n_experts: [2 inter, hidden] (gate rows, then up rows) */
    struct cpu_weight *down;              /* n_experts: [hidden, inter] */
    bool shared;
    struct cpu_weight shared_gate_up, shared_down, shared_gate; /* [2 si, hidden], [hidden, si], [1, hidden] */
};

struct cpu_moe {
    struct moe_config c;
    int n_layers;
    int64_t hidden;
    struct cpu_moe_layer *layers;
    /* Scratch for CHUNK_ROWS tokens: router logits and probabilities, choices, the rows
     * gathered by expert and what the experts make of them. */
    float *logits, *probs, *weight;
    int32_t *choice, *slot, *count, *start, *fill;
    float *xg, *gu, *act, *yg;
    float *shared_gu, *shared_act, *shared_y, *shared_g;
};

bool cpu_moe_is_sparse(const struct cpu_moe *moe, int layer)
{
    return moe && layer >= 0 && layer < moe->n_layers && moe->layers[layer].sparse;
}

void cpu_moe_free(struct cpu_moe *moe)
{
    if (!moe) return;
    for (int l = 0; l < moe->n_layers && moe->layers; l++) {
        struct cpu_moe_layer *L = &moe->layers[l];
        cpu_weight_free(&L->router);
        for (int e = 0; e < moe->c.n_experts && L->gate_up; e++) cpu_weight_free(&L->gate_up[e]);
        for (int e = 0; e < moe->c.n_experts && L->down; e++) cpu_weight_free(&L->down[e]);
        free(L->gate_up), free(L->down);
        cpu_weight_free(&L->shared_gate_up), cpu_weight_free(&L->shared_down), cpu_weight_free(&L->shared_gate);
    }
    free(moe->layers);
    free(moe->logits), free(moe->probs), free(moe->weight), free(moe->choice), free(moe->slot);
    free(moe->count), free(moe->start), free(moe->fill);
    free(moe->xg), free(moe->gu), free(moe->act), free(moe->yg);
    free(moe->shared_gu), free(moe->shared_act), free(moe->shared_y), free(moe->shared_g);
    free(moe);
}

size_t cpu_moe_bytes(const struct cpu_moe *moe, size_t *quantized)
{
    size_t all = 0, q = 0, part;
    for (int l = 0; moe && l < moe->n_layers; l++) {
        const struct cpu_moe_layer *L = &moe->layers[l];
        if (!L->sparse) continue;
        all += cpu_weight_bytes(&L->router, &part), q += part;
        for (int e = 0; e < moe->c.n_experts; e++) {
            all += cpu_weight_bytes(&L->gate_up[e], &part), q += part;
            all += cpu_weight_bytes(&L->down[e], &part), q += part;
        }
        all += cpu_weight_bytes(&L->shared_gate_up, &part), q += part;
        all += cpu_weight_bytes(&L->shared_down, &part), q += part;
        all += cpu_weight_bytes(&L->shared_gate, &part), q += part;
    }
    *quantized = q;
    return all;
}

static int load_layer(struct cpu_backend *cb, const struct model *m, struct cpu_moe *moe, int l)
{
    const struct moe_weights *W = m->layers[l].moe;
    struct cpu_moe_layer *L = &moe->layers[l];
    int64_t h = moe->hidden;
    int n = moe->c.n_experts;
    L->sparse = true;
    L->gate_up = calloc((size_t)n, sizeof *L->gate_up);
    L->down = calloc((size_t)n, sizeof *L->down);
    if (!L->gate_up || !L->down) return -1;
    const struct tensor *router = &W->router;
    if (cpu_load_weight(cb, m, &L->router, h, &router, 1)) return -1;
    for (int e = 0; e < n; e++) {
        const struct tensor *gu[2] = {&W->gate[e], &W->up[e]}, *down = &W->down[e];
        if (cpu_load_weight(cb, m, &L->gate_up[e], h, gu, 2) ||
            cpu_load_weight(cb, m, &L->down[e], moe->c.expert_intermediate, &down, 1))
            return -1;
    }
    if (W->shared_gate_proj.ndim == 0) return 0;
    L->shared = true;
    const struct tensor *sgu[2] = {&W->shared_gate_proj, &W->shared_up}, *sd = &W->shared_down,
                        *sg = &W->shared_expert_gate;
    if (cpu_load_weight(cb, m, &L->shared_gate_up, h, sgu, 2) ||
        cpu_load_weight(cb, m, &L->shared_down, moe->c.shared_intermediate, &sd, 1) ||
        cpu_load_weight(cb, m, &L->shared_gate, h, &sg, 1))
        return -1;
    return 0;
}

#define ALLOC(p, n) ((p) = calloc((size_t)(n), sizeof *(p)))

int cpu_moe_create(struct cpu_backend *cb, const struct model *m, char *err, size_t errlen)
{
    const struct model_config *c = &m->config;
    cb->moe = NULL;
    bool any = false;
    for (int l = 0; l < c->n_layers; l++) any |= m->layers[l].moe != NULL;
    if (!any) return 0;
    if (c->moe.n_experts > CPU_ROUTER_MAX_EXPERTS) {
        snprintf(err, errlen, "cpu: %d experts exceed the router's %d", c->moe.n_experts, CPU_ROUTER_MAX_EXPERTS);
        return -1;
    }
    struct cpu_moe *moe = calloc(1, sizeof *moe);
    if (!moe) goto oom;
    cb->moe = moe;
    moe->c = c->moe;
    moe->n_layers = c->n_layers;
    moe->hidden = c->hidden_size;
    if (!ALLOC(moe->layers, c->n_layers)) goto oom;
    for (int l = 0; l < c->n_layers; l++)
        if (m->layers[l].moe && load_layer(cb, m, moe, l)) goto oom;
    int64_t rows = CHUNK_ROWS, k = moe->c.top_k, n = moe->c.n_experts, h = moe->hidden;
    int64_t inter = moe->c.expert_intermediate, si = moe->c.shared_intermediate;
    ALLOC(moe->logits, rows * n);
    ALLOC(moe->probs, rows * n);
    ALLOC(moe->weight, rows * k);
    ALLOC(moe->choice, rows * k);
    ALLOC(moe->slot, rows * k);
    ALLOC(moe->count, n);
    ALLOC(moe->start, n + 1);
    ALLOC(moe->fill, n);
    ALLOC(moe->xg, rows * k * h);
    ALLOC(moe->gu, rows * k * 2 * inter);
    ALLOC(moe->act, rows * k * inter);
    ALLOC(moe->yg, rows * k * h);
    if (!moe->logits || !moe->probs || !moe->weight || !moe->choice || !moe->slot || !moe->count || !moe->start ||
        !moe->fill || !moe->xg || !moe->gu || !moe->act || !moe->yg)
        goto oom;
    if (si > 0) {
        ALLOC(moe->shared_gu, rows * 2 * si);
        ALLOC(moe->shared_act, rows * si);
        ALLOC(moe->shared_y, rows * h);
        ALLOC(moe->shared_g, rows);
        if (!moe->shared_gu || !moe->shared_act || !moe->shared_y || !moe->shared_g) goto oom;
    }
    return 0;
oom:
    snprintf(err, errlen, "cpu: out of memory loading the experts (%d experts of %d)", c->moe.n_experts,
             c->moe.expert_intermediate);
    return -1;
}

/* ---- the forward pass */

struct route_job {
    struct cpu_moe *moe;
};

static void route_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    struct cpu_moe *moe = ((struct route_job *)arg)->moe;
    int n = moe->c.n_experts, k = moe->c.top_k;
    for (int64_t t = begin; t < end; t++)
        cpu_router_route(moe->logits + t * n, n, k, moe->c.norm_topk_prob, moe->probs + t * n, moe->choice + t * k,
                         moe->weight + t * k);
}

/* silu(gate) * up over rows of [gate (inter) | up (inter)]. */
struct swiglu_job {
    const float *in;
    float *out;
    int64_t inter;
};

static void swiglu_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct swiglu_job *j = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *g = j->in + r * 2 * j->inter, *u = g + j->inter;
        float *o = j->out + r * j->inter;
        for (int64_t i = 0; i < j->inter; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

struct combine_job {
    struct cpu_moe *moe;
    float *out;
    bool shared;
};

static void combine_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct combine_job *j = arg;
    const struct cpu_moe *moe = j->moe;
    int k = moe->c.top_k;
    int64_t h = moe->hidden;
    for (int64_t t = begin; t < end; t++) {
        float *o = j->out + t * h;
        for (int64_t i = 0; i < h; i++) o[i] = 0.0f;
        /* The token's choices in ascending expert order: k is small, so select the next
         * smallest each round. */
        int32_t last = -1;
        for (int r = 0; r < k; r++) {
            int best = -1;
            for (int q = 0; q < k; q++) {
                int32_t e = moe->choice[t * k + q];
                if (e > last && (best < 0 || e < moe->choice[t * k + best])) best = q;
            }
            last = moe->choice[t * k + best];
            float w = moe->weight[t * k + best];
            const float *y = moe->yg + (int64_t)moe->slot[t * k + best] * h;
            for (int64_t i = 0; i < h; i++) o[i] += y[i] * w;
        }
        if (j->shared) {
            float g = 1.0f / (1.0f + expf(-moe->shared_g[t]));
            const float *y = moe->shared_y + t * h;
            for (int64_t i = 0; i < h; i++) o[i] += g * y[i];
        }
    }
}

/* One chunk of n tokens: x and out are its rows. */
static void forward_chunk(struct cpu_backend *cb, struct cpu_moe *moe, const struct cpu_moe_layer *L, int64_t n,
                          const float *x, float *out)
{
    int ne = moe->c.n_experts, k = moe->c.top_k;
    int64_t h = moe->hidden, inter = moe->c.expert_intermediate;
    cpu_matmul_w(cb->pool, x, n, &L->router, NULL, moe->logits);
    struct route_job rj = {moe};
    cpu_pool_run(cb->pool, n, 16, route_range, &rj);

    /* Counting sort of the (token, choice) pairs by expert; within an expert, by token. */
    memset(moe->count, 0, (size_t)ne * sizeof *moe->count);
    for (int64_t i = 0; i < n * k; i++) moe->count[moe->choice[i]]++;
    moe->start[0] = 0;
    for (int e = 0; e < ne; e++) moe->start[e + 1] = moe->start[e] + moe->count[e];
    memcpy(moe->fill, moe->start, (size_t)ne * sizeof *moe->fill);
    for (int64_t t = 0; t < n; t++) {
        for (int q = 0; q < k; q++) {
            int32_t s = moe->fill[moe->choice[t * k + q]]++;
            moe->slot[t * k + q] = s;
            memcpy(moe->xg + (int64_t)s * h, x + t * h, (size_t)h * sizeof(float));
        }
    }
    /* Each chosen expert over its rows; the others are not read. */
    for (int e = 0; e < ne; e++) {
        if (!moe->count[e]) continue;
        int64_t s = moe->start[e];
        cpu_matmul_w(cb->pool, moe->xg + s * h, moe->count[e], &L->gate_up[e], NULL, moe->gu + s * 2 * inter);
    }
    struct swiglu_job sj = {moe->gu, moe->act, inter};
    cpu_pool_run(cb->pool, n * k, 16, swiglu_range, &sj);
    for (int e = 0; e < ne; e++) {
        if (!moe->count[e]) continue;
        int64_t s = moe->start[e];
        cpu_matmul_w(cb->pool, moe->act + s * inter, moe->count[e], &L->down[e], NULL, moe->yg + s * h);
    }
    if (L->shared) {
        int64_t si = moe->c.shared_intermediate;
        cpu_matmul_w(cb->pool, x, n, &L->shared_gate_up, NULL, moe->shared_gu);
        struct swiglu_job ssj = {moe->shared_gu, moe->shared_act, si};
        cpu_pool_run(cb->pool, n, 16, swiglu_range, &ssj);
        cpu_matmul_w(cb->pool, moe->shared_act, n, &L->shared_down, NULL, moe->shared_y);
        cpu_matmul_w(cb->pool, x, n, &L->shared_gate, NULL, moe->shared_g);
    }
    struct combine_job cj = {moe, out, L->shared};
    cpu_pool_run(cb->pool, n, 16, combine_range, &cj);
}

void cpu_moe_forward(struct cpu_backend *cb, int layer, int64_t n_rows, const float *x, float *out)
{
    struct cpu_moe *moe = cb->moe;
    const struct cpu_moe_layer *L = &moe->layers[layer];
    int64_t h = moe->hidden;
    for (int64_t t0 = 0; t0 < n_rows; t0 += CHUNK_ROWS) {
        int64_t n = n_rows - t0 < CHUNK_ROWS ? n_rows - t0 : CHUNK_ROWS;
        forward_chunk(cb, moe, L, n, x + t0 * h, out + t0 * h);
    }
}
