/* Building a rank's model from the whole model and the plan (tp_shard.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/model_moe.h"
#include "worker/parallel/tp_shard.h"

struct tp_shard {
    struct model m;   /* first: the shard is handed out as its model */
    void **owned;     /* buffers this shard copied or filled */
    int n_owned, cap;
};

static int keep(struct tp_shard *s, void *p)
{
    if (!p) return -1;
    if (s->n_owned == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        void **o = realloc(s->owned, (size_t)cap * sizeof *o);
        if (!o) {
            free(p);
            return -1;
        }
        s->owned = o, s->cap = cap;
    }
    s->owned[s->n_owned++] = p;
    return 0;
}

/* t as a float32 tensor of its shape, no data yet. */
static struct tensor as_f32(const struct tensor *t)
{
    struct tensor f = *t;
    f.dtype = DTYPE_F32;
    f.scale = NULL;
    f.scale_rows = f.scale_cols = 0;
    return f;
}

/* Elements [begin, end) of a tensor as float32: one without data (dummy), or FP8 (whose scales
 * index the whole tensor's rows). */
static float *fill_dummy(struct tp_shard *s, const struct tensor *t, int64_t begin, int64_t end)
{
    float *f = malloc((size_t)(end - begin) * sizeof(float));
    if (keep(s, f)) return NULL;
    tensor_range_to_f32(t, s->m.dummy_seed, false, begin, end, f);
    return f;
}

/* Rows [g.begin, g.end) of a matrix, elements of a vector. */
static int part_rows(struct tp_shard *s, const struct tensor *t, struct tp_range g, struct tensor *out)
{
    *out = *t;
    if (t->ndim == 0) return 0;
    int64_t n = g.end - g.begin, cols = t->ndim == 2 ? t->shape[1] : 1;
    out->shape[0] = n;
    if (!t->data || tp_is_fp8(t->dtype)) {
        *out = as_f32(out);
        out->data = fill_dummy(s, t, g.begin * cols, g.end * cols);
        return out->data ? 0 : -1;
    }
    size_t row = t->ndim == 2 ? tensor_row_bytes(t) : dtype_block_bytes(t->dtype);
    out->data = (const char *)t->data + (size_t)g.begin * row;
    return 0;
}

/* Columns [g.begin, g.end) of every row of a matrix. */
static int part_cols(struct tp_shard *s, const struct tensor *t, struct tp_range g, struct tensor *out)
{
    *out = *t;
    if (t->ndim == 0) return 0;
    int64_t rows = t->shape[0], cols = t->shape[1], n = g.end - g.begin;
    out->shape[1] = n;
    if (t->data && !tp_is_fp8(t->dtype) && tp_cols_on_blocks(t, g)) {
        int64_t be = dtype_block_elems(t->dtype);
        size_t bb = dtype_block_bytes(t->dtype), row = tensor_row_bytes(t), part = (size_t)(n / be) * bb;
        char *buf = malloc((size_t)rows * part);
        if (keep(s, buf)) return -1;
        for (int64_t r = 0; r < rows; r++)
            memcpy(buf + (size_t)r * part, (const char *)t->data + (size_t)r * row + (size_t)(g.begin / be) * bb, part);
        out->data = buf;
        return 0;
    }
    *out = as_f32(out);
    float *f = malloc((size_t)rows * (size_t)n * sizeof(float));
    float *whole = malloc((size_t)cols * sizeof(float));
    if (keep(s, f) || !whole) {
        free(whole);
        return -1;
    }
    /* The whole row, then the part: a block type cut inside its blocks, and an FP8 row (or a
     * dummy one quantized with --quantization fp8) whose scale belongs to the whole row. */
    for (int64_t r = 0; r < rows; r++) {
        tensor_range_to_f32(t, s->m.dummy_seed, false, r * cols, (r + 1) * cols, whole);
        memcpy(f + r * n, whole + g.begin, (size_t)n * sizeof(float));
    }
    free(whole);
    out->data = f;
    return 0;
}

static int part(struct tp_shard *s, const struct model *m, const struct tp_plan *p, int rank, enum tp_weight w,
                const struct tensor *t, struct tensor *out)
{
    struct tp_range g;
    switch (tp_plan_part(p, &m->config, w, rank, &g)) {
    case TP_ROWS: return part_rows(s, t, g, out);
    case TP_COLS: return part_cols(s, t, g, out);
    case TP_FIRST_RANK:
        if (rank != 0) {
            *out = (struct tensor){0}; /* absent: the backend adds no bias */
            return 0;
        }
        break;
    case TP_REPLICATED: break;
    }
    *out = *t;
    return 0;
}

/* A sparse layer's experts: each expert's (and the shared expert's) channels split like a dense
 * MLP's, the router and the shared expert's gate whole. */
static int part_moe(struct tp_shard *s, const struct model *m, const struct tp_plan *p, int rank,
                    const struct moe_weights *E, struct moe_weights **out)
{
    int n = m->config.moe.n_experts;
    struct moe_weights *S = calloc(1, sizeof *S);
    if (keep(s, S)) return -1;
    *S = *E;
    S->gate = calloc((size_t)n, sizeof *S->gate);
    if (keep(s, S->gate)) return -1;
    S->up = calloc((size_t)n, sizeof *S->up);
    if (keep(s, S->up)) return -1;
    S->down = calloc((size_t)n, sizeof *S->down);
    if (keep(s, S->down)) return -1;
    for (int e = 0; e < n; e++)
        if (part(s, m, p, rank, TP_W_EXPERT_GATE, &E->gate[e], &S->gate[e]) ||
            part(s, m, p, rank, TP_W_EXPERT_UP, &E->up[e], &S->up[e]) ||
            part(s, m, p, rank, TP_W_EXPERT_DOWN, &E->down[e], &S->down[e]))
            return -1;
    if (part(s, m, p, rank, TP_W_SHARED_GATE, &E->shared_gate_proj, &S->shared_gate_proj) ||
        part(s, m, p, rank, TP_W_SHARED_UP, &E->shared_up, &S->shared_up) ||
        part(s, m, p, rank, TP_W_SHARED_DOWN, &E->shared_down, &S->shared_down))
        return -1;
    *out = S;
    return 0;
}

void tp_shard_free(struct model *shard)
{
    struct tp_shard *s = (struct tp_shard *)shard;
    if (!s) return;
    for (int i = 0; i < s->n_owned; i++) free(s->owned[i]);
    free(s->owned);
    free(s->m.layers);
    free(s);
}

int tp_shard_make(struct model **out, const struct model *m, const struct tp_plan *p, int rank, char *err,
                  size_t errlen)
{
    *out = NULL;
    struct tp_shard *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = *m;
    s->m.layers = calloc((size_t)m->config.n_layers, sizeof *s->m.layers);
    if (!s->m.layers) goto oom;
    tp_plan_rank_config(p, &m->config, rank, &s->m.config);
    if (part(s, m, p, rank, TP_W_EMBED, &m->tok_embed, &s->m.tok_embed)) goto oom;
    if (tp_lm_head_tied(m))
        s->m.lm_head = s->m.tok_embed;
    else if (part(s, m, p, rank, TP_W_LM_HEAD, &m->lm_head, &s->m.lm_head))
        goto oom;
    for (int l = 0; l < m->config.n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        struct layer_weights *S = &s->m.layers[l];
        *S = *L; /* the norms, replicated */
        if (part(s, m, p, rank, TP_W_Q, &L->wq, &S->wq) || part(s, m, p, rank, TP_W_K, &L->wk, &S->wk) ||
            part(s, m, p, rank, TP_W_V, &L->wv, &S->wv) || part(s, m, p, rank, TP_W_O, &L->wo, &S->wo) ||
            part(s, m, p, rank, TP_W_BQ, &L->bq, &S->bq) || part(s, m, p, rank, TP_W_BK, &L->bk, &S->bk) ||
            part(s, m, p, rank, TP_W_BV, &L->bv, &S->bv) || part(s, m, p, rank, TP_W_GATE, &L->w_gate, &S->w_gate) ||
            part(s, m, p, rank, TP_W_UP, &L->w_up, &S->w_up) ||
            part(s, m, p, rank, TP_W_DOWN, &L->w_down, &S->w_down) || part(s, m, p, rank, TP_W_BO, &L->bo, &S->bo) ||
            part(s, m, p, rank, TP_W_B_GATE, &L->b_gate, &S->b_gate) ||
            part(s, m, p, rank, TP_W_B_UP, &L->b_up, &S->b_up) ||
            part(s, m, p, rank, TP_W_B_DOWN, &L->b_down, &S->b_down) ||
            (L->moe && part_moe(s, m, p, rank, L->moe, &S->moe)))
            goto oom;
    }
    *out = &s->m;
    return 0;
oom:
    snprintf(err, errlen, "out of memory building rank %d's shard of the weights", rank);
    tp_shard_free(s ? &s->m : NULL);
    return -1;
}
