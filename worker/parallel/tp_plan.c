/* The sharding plan: ranges per rank from the configuration, and the bytes they come to. */
#include <stdio.h>
#include <string.h>

#include "worker/model/model_moe.h"
#include "worker/parallel/tp_plan.h"

static struct tp_range even_part(int64_t total, int n, int r)
{
    return (struct tp_range){total * r / n, total * (r + 1) / n};
}

int tp_plan_make(struct tp_plan *p, const struct model_config *c, int n, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    if (n < 1 || n > COMM_MAX_RANKS) {
        snprintf(err, errlen, "--tensor-parallel-size must be 1 to %d, not %d", COMM_MAX_RANKS, n);
        return -1;
    }
    if (c->arch != MODEL_ARCH_LLAMA && c->arch != MODEL_ARCH_QWEN2 && c->arch != MODEL_ARCH_QWEN3) {
        snprintf(err, errlen, "tensor parallelism shards Llama, Qwen2 and Qwen3 models, not %s", c->arch_name);
        return -1;
    }
    if (c->fam.qk_norm_full && n > 1) {
        /* Its norm's mean runs over every head: each rank would need all of q and k. */
        snprintf(err, errlen, "tensor parallelism does not shard %s's q/k norms over the whole projection (OLMo 2)",
                 c->arch_name);
        return -1;
    }
    if (c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads != 0) {
        snprintf(err, errlen, "config: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->n_heads,
                 c->n_kv_heads);
        return -1;
    }
    if (c->n_heads % n != 0) {
        snprintf(err, errlen,
                 "tensor parallel size %d does not divide num_attention_heads %d: each rank must hold whole heads", n,
                 c->n_heads);
        return -1;
    }
    if (c->n_kv_heads >= n ? c->n_kv_heads % n != 0 : n % c->n_kv_heads != 0) {
        snprintf(err, errlen,
                 "tensor parallel size %d and num_key_value_heads %d: one must divide the other (KV heads are split "
                 "across ranks, or each replicated on size / kv_heads ranks)",
                 n, c->n_kv_heads);
        return -1;
    }
    if (c->intermediate_size % n != 0) {
        snprintf(err, errlen, "tensor parallel size %d does not divide intermediate_size %d", n, c->intermediate_size);
        return -1;
    }
    if (c->moe.n_experts > 0 && c->moe.expert_intermediate % n != 0) {
        snprintf(err, errlen, "tensor parallel size %d does not divide the experts' intermediate size %d", n,
                 c->moe.expert_intermediate);
        return -1;
    }
    if (c->moe.n_experts > 0 && c->moe.shared_intermediate % n != 0) {
        snprintf(err, errlen, "tensor parallel size %d does not divide shared_expert_intermediate_size %d", n,
                 c->moe.shared_intermediate);
        return -1;
    }
    int vpr = (c->vocab_size + n - 1) / n;
    if ((int64_t)vpr * (n - 1) >= c->vocab_size) {
        snprintf(err, errlen, "vocab_size %d is too small to give each of %d ranks a share of it", c->vocab_size, n);
        return -1;
    }
    p->n_ranks = n;
    p->heads_per_rank = c->n_heads / n;
    p->kv_heads_per_rank = c->n_kv_heads >= n ? c->n_kv_heads / n : 1;
    p->kv_replicas = c->n_kv_heads >= n ? 1 : n / c->n_kv_heads;
    p->inter_per_rank = c->intermediate_size / n;
    p->expert_inter_per_rank = c->moe.n_experts > 0 ? c->moe.expert_intermediate / n : 0;
    p->shared_inter_per_rank = c->moe.n_experts > 0 ? c->moe.shared_intermediate / n : 0;
    p->vocab_per_rank = vpr;
    int group = c->n_heads / c->n_kv_heads;
    for (int r = 0; r < n; r++) {
        struct tp_rank *t = &p->ranks[r];
        t->rank = r;
        t->q_heads = even_part(c->n_heads, n, r);
        if (c->n_kv_heads >= n) {
            t->kv_heads = even_part(c->n_kv_heads, n, r);
        } else {
            int64_t kvh = t->q_heads.begin / group;
            t->kv_heads = (struct tp_range){kvh, kvh + 1};
        }
        t->inter = even_part(c->intermediate_size, n, r);
        t->expert_inter = even_part((int64_t)p->expert_inter_per_rank * n, n, r);
        t->shared_inter = even_part((int64_t)p->shared_inter_per_rank * n, n, r);
        int64_t v0 = (int64_t)vpr * r, v1 = v0 + vpr < c->vocab_size ? v0 + vpr : c->vocab_size;
        t->vocab = (struct tp_range){v0, v1};
    }
    return 0;
}

enum tp_split tp_plan_part(const struct tp_plan *p, const struct model_config *c, enum tp_weight w, int r,
                           struct tp_range *range)
{
    const struct tp_rank *t = &p->ranks[r];
    int64_t hd = c->head_dim;
    *range = (struct tp_range){0, 0};
    switch (w) {
    case TP_W_Q:
    case TP_W_BQ:
        *range = (struct tp_range){t->q_heads.begin * hd, t->q_heads.end * hd};
        return TP_ROWS;
    case TP_W_K:
    case TP_W_V:
    case TP_W_BK:
    case TP_W_BV:
        *range = (struct tp_range){t->kv_heads.begin * hd, t->kv_heads.end * hd};
        return TP_ROWS;
    case TP_W_O:
        *range = (struct tp_range){t->q_heads.begin * hd, t->q_heads.end * hd};
        return TP_COLS;
    case TP_W_GATE:
    case TP_W_UP:
    case TP_W_B_GATE:
    case TP_W_B_UP:
        *range = t->inter;
        return TP_ROWS;
    case TP_W_BO:
    case TP_W_B_DOWN:
        return TP_FIRST_RANK;
    case TP_W_DOWN:
        *range = t->inter;
        return TP_COLS;
    case TP_W_EMBED:
    case TP_W_LM_HEAD:
        *range = t->vocab;
        return TP_ROWS;
    case TP_W_EXPERT_GATE:
    case TP_W_EXPERT_UP:
        *range = t->expert_inter;
        return TP_ROWS;
    case TP_W_EXPERT_DOWN:
        *range = t->expert_inter;
        return TP_COLS;
    case TP_W_SHARED_GATE:
    case TP_W_SHARED_UP:
        *range = t->shared_inter;
        return TP_ROWS;
    case TP_W_SHARED_DOWN:
        *range = t->shared_inter;
        return TP_COLS;
    case TP_W_NORM:
    case TP_W_ROUTER:
    case TP_W_SHARED_EXPERT_GATE:
    case TP_W_COUNT:
        break;
    }
    return TP_REPLICATED;
}

void tp_plan_rank_config(const struct tp_plan *p, const struct model_config *c, int r, struct model_config *out)
{
    (void)r;
    *out = *c;
    out->n_heads = p->heads_per_rank;
    out->n_kv_heads = p->kv_heads_per_rank;
    out->intermediate_size = p->inter_per_rank;
    out->moe.expert_intermediate = p->expert_inter_per_rank;
    out->moe.shared_intermediate = p->shared_inter_per_rank;
}

bool tp_lm_head_tied(const struct model *m)
{
    return m->config.tie_embeddings || (m->lm_head.data && m->lm_head.data == m->tok_embed.data) ||
           (!m->lm_head.data && !m->tok_embed.data && m->lm_head.dummy_id == m->tok_embed.dummy_id);
}

bool tp_cols_on_blocks(const struct tensor *t, struct tp_range cols)
{
    if (tp_is_fp8(t->dtype)) return false;
    int64_t be = dtype_block_elems(t->dtype);
    return cols.begin % be == 0 && (cols.end % be == 0 || cols.end == t->shape[1]);
}

size_t tp_cols_bytes(const struct tensor *t, struct tp_range cols)
{
    int64_t n = cols.end - cols.begin;
    if (tp_cols_on_blocks(t, cols))
        return (size_t)t->shape[0] * (size_t)((n + dtype_block_elems(t->dtype) - 1) / dtype_block_elems(t->dtype)) *
               dtype_block_bytes(t->dtype);
    return (size_t)t->shape[0] * (size_t)n * sizeof(float);
}

/* Bytes of the part of t that rank r holds (0 for a tensor the model lacks). */
static size_t part_bytes(const struct tp_plan *p, const struct model_config *c, const struct tensor *t,
                         enum tp_weight w, int r)
{
    if (t->ndim == 0) return 0;
    struct tp_range range;
    enum tp_split s = tp_plan_part(p, c, w, r, &range);
    size_t row = tensor_row_bytes(t);
    if (s == TP_FIRST_RANK && r != 0) return 0;
    if (s == TP_REPLICATED || s == TP_FIRST_RANK) return t->ndim == 2 ? row * (size_t)t->shape[0] : row;
    if (s == TP_COLS) return tp_cols_bytes(t, range);
    if (tp_is_fp8(t->dtype)) row = (size_t)(t->ndim == 2 ? t->shape[1] : t->shape[0]) * sizeof(float);
    if (t->ndim == 2) return row * (size_t)(range.end - range.begin);
    return row / (size_t)t->shape[0] * (size_t)(range.end - range.begin);
}

size_t tp_plan_rank_bytes(const struct tp_plan *p, const struct model *m, int r)
{
    const struct model_config *c = &m->config;
    size_t b = part_bytes(p, c, &m->tok_embed, TP_W_EMBED, r) + part_bytes(p, c, &m->final_norm, TP_W_NORM, r);
    if (!tp_lm_head_tied(m)) b += part_bytes(p, c, &m->lm_head, TP_W_LM_HEAD, r);
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        const struct {
            const struct tensor *t;
            enum tp_weight w;
        } parts[] = {
            {&L->attn_norm, TP_W_NORM}, {&L->ffn_norm, TP_W_NORM}, {&L->q_norm, TP_W_NORM},
            {&L->k_norm, TP_W_NORM},    {&L->wq, TP_W_Q},          {&L->wk, TP_W_K},
            {&L->wv, TP_W_V},           {&L->wo, TP_W_O},          {&L->bq, TP_W_BQ},
            {&L->bk, TP_W_BK},          {&L->bv, TP_W_BV},         {&L->w_gate, TP_W_GATE},
            {&L->w_up, TP_W_UP},        {&L->w_down, TP_W_DOWN},   {&L->bo, TP_W_BO},
            {&L->b_gate, TP_W_B_GATE},  {&L->b_up, TP_W_B_UP},     {&L->b_down, TP_W_B_DOWN},
            {&L->post_attn_norm, TP_W_NORM}, {&L->post_ffn_norm, TP_W_NORM},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) b += part_bytes(p, c, parts[i].t, parts[i].w, r);
        const struct moe_weights *E = L->moe;
        if (!E) continue;
        b += part_bytes(p, c, &E->router, TP_W_ROUTER, r) + part_bytes(p, c, &E->shared_gate_proj, TP_W_SHARED_GATE, r) +
             part_bytes(p, c, &E->shared_up, TP_W_SHARED_UP, r) + part_bytes(p, c, &E->shared_down, TP_W_SHARED_DOWN, r) +
             part_bytes(p, c, &E->shared_expert_gate, TP_W_SHARED_EXPERT_GATE, r);
        for (int e = 0; e < c->moe.n_experts; e++)
            b += part_bytes(p, c, &E->gate[e], TP_W_EXPERT_GATE, r) + part_bytes(p, c, &E->up[e], TP_W_EXPERT_UP, r) +
                 part_bytes(p, c, &E->down[e], TP_W_EXPERT_DOWN, r);
    }
    return b;
}
