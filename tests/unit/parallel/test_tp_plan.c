/* The tensor-parallel sharding plan: Megatron's splits for each weight, KV heads split or
 * replicated, configurations that cannot shard refused by name, and the bytes each rank holds. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/model_moe.h"
#include "worker/parallel/tp_plan.h"

static struct model_config cfg(int hidden, int inter, int heads, int kv, int hd, int vocab)
{
    struct model_config c = {.arch = MODEL_ARCH_LLAMA, .hidden_size = hidden, .intermediate_size = inter,
                             .n_layers = 2, .n_heads = heads, .n_kv_heads = kv, .head_dim = hd, .vocab_size = vocab};
    strcpy(c.arch_name, "LlamaForCausalLM");
    return c;
}

static void expect_refused(const struct model_config *c, int n, const char *says)
{
    struct tp_plan p;
    char err[512] = "";
    cr_expect_neq(tp_plan_make(&p, c, n, err, sizeof err), 0, "size %d was accepted", n);
    cr_expect(strstr(err, says), "size %d: '%s' does not say '%s'", n, err, says);
}

static void make(struct tp_plan *p, const struct model_config *c, int n)
{
    char err[512] = "";
    cr_assert_eq(tp_plan_make(p, c, n, err, sizeof err), 0, "size %d: %s", n, err);
}

/* Each rank's ranges of one weight tile its split dimension exactly, in rank order. */
static void expect_tiles(const struct tp_plan *p, const struct model_config *c, enum tp_weight w, int64_t total,
                         enum tp_split want)
{
    int64_t at = 0;
    for (int r = 0; r < p->n_ranks; r++) {
        struct tp_range g;
        cr_expect_eq(tp_plan_part(p, c, w, r, &g), want, "weight %d", (int)w);
        cr_expect_eq(g.begin, at, "weight %d rank %d begins at %lld, not %lld", (int)w, r, (long long)g.begin,
                     (long long)at);
        cr_expect_gt(g.end, g.begin);
        at = g.end;
    }
    cr_expect_eq(at, total, "weight %d: ranks cover %lld of %lld", (int)w, (long long)at, (long long)total);
}

Test(tp_plan, stories260k_shards_by_two_and_four_and_refuses_eight)
{
    struct model_config c = cfg(64, 172, 8, 4, 8, 512);
    for (int n = 1; n <= 4; n *= 2) {
        struct tp_plan p;
        make(&p, &c, n);
        cr_expect_eq(p.heads_per_rank, 8 / n);
        cr_expect_eq(p.kv_heads_per_rank, 4 / n);
        cr_expect_eq(p.kv_replicas, 1);
        cr_expect_eq(p.inter_per_rank, 172 / n);
        cr_expect_eq(p.vocab_per_rank, 512 / n);
        expect_tiles(&p, &c, TP_W_Q, 64, TP_ROWS);
        expect_tiles(&p, &c, TP_W_BQ, 64, TP_ROWS);
        expect_tiles(&p, &c, TP_W_K, 32, TP_ROWS);
        expect_tiles(&p, &c, TP_W_V, 32, TP_ROWS);
        expect_tiles(&p, &c, TP_W_O, 64, TP_COLS);
        expect_tiles(&p, &c, TP_W_GATE, 172, TP_ROWS);
        expect_tiles(&p, &c, TP_W_UP, 172, TP_ROWS);
        expect_tiles(&p, &c, TP_W_DOWN, 172, TP_COLS);
        expect_tiles(&p, &c, TP_W_EMBED, 512, TP_ROWS);
        expect_tiles(&p, &c, TP_W_LM_HEAD, 512, TP_ROWS);
        struct tp_range g;
        cr_expect_eq(tp_plan_part(&p, &c, TP_W_NORM, n - 1, &g), TP_REPLICATED);
        struct model_config rc;
        tp_plan_rank_config(&p, &c, n - 1, &rc);
        cr_expect_eq(rc.n_heads, 8 / n);
        cr_expect_eq(rc.n_kv_heads, 4 / n);
        cr_expect_eq(rc.intermediate_size, 172 / n);
        cr_expect_eq(rc.hidden_size, 64);
        cr_expect_eq(rc.vocab_size, 512);
        cr_expect_eq(rc.head_dim, 8);
    }
    /* 8 ranks would split the KV heads in pairs of ranks, but 172 channels do not split by 8. */
    expect_refused(&c, 8, "does not divide intermediate_size 172");
    expect_refused(&c, 3, "does not divide num_attention_heads 8");
    expect_refused(&c, 0, "must be 1 to 64");
}

Test(tp_plan, fewer_kv_heads_than_ranks_are_replicated_on_the_ranks_that_read_them)
{
    struct model_config c = cfg(4096, 14336, 32, 8, 128, 128256); /* Llama-3-8B */
    struct tp_plan p;
    make(&p, &c, 8);
    cr_expect_eq(p.kv_heads_per_rank, 1);
    cr_expect_eq(p.kv_replicas, 1);
    expect_tiles(&p, &c, TP_W_K, 8 * 128, TP_ROWS);
    make(&p, &c, 16);
    cr_expect_eq(p.heads_per_rank, 2);
    cr_expect_eq(p.kv_heads_per_rank, 1);
    cr_expect_eq(p.kv_replicas, 2);
    for (int r = 0; r < 16; r++) {
        /* Query heads 2r and 2r+1 read KV head (2r) / 4 (groups of four query heads). */
        cr_expect_eq(p.ranks[r].q_heads.begin, 2 * r);
        cr_expect_eq(p.ranks[r].kv_heads.begin, r / 2, "rank %d holds KV head %lld", r,
                     (long long)p.ranks[r].kv_heads.begin);
        cr_expect_eq(p.ranks[r].kv_heads.end, r / 2 + 1);
        struct tp_range g;
        cr_expect_eq(tp_plan_part(&p, &c, TP_W_V, r, &g), TP_ROWS);
        cr_expect_eq(g.begin, (r / 2) * 128);
        cr_expect_eq(g.end, (r / 2 + 1) * 128);
    }
    /* Three KV heads over two ranks, or two over three, do not split either way. */
    struct model_config odd = cfg(768, 2048, 12, 3, 64, 1000);
    expect_refused(&odd, 2, "num_key_value_heads 3");
    struct model_config two = cfg(768, 2048, 12, 2, 64, 1000);
    expect_refused(&two, 3, "num_key_value_heads 2");
    make(&p, &two, 4);
    cr_expect_eq(p.kv_replicas, 2);
    cr_expect_eq(p.ranks[1].kv_heads.begin, 0);
    cr_expect_eq(p.ranks[2].kv_heads.begin, 1);
}

Test(tp_plan, vocabulary_shares_round_up_and_the_last_rank_takes_the_rest)
{
    struct model_config c = cfg(64, 128, 4, 4, 16, 10);
    struct tp_plan p;
    make(&p, &c, 4);
    cr_expect_eq(p.vocab_per_rank, 3);
    cr_expect_eq(p.ranks[3].vocab.begin, 9);
    cr_expect_eq(p.ranks[3].vocab.end, 10);
    expect_tiles(&p, &c, TP_W_EMBED, 10, TP_ROWS);
    c.vocab_size = 9; /* 3 + 3 + 3 + 0: the last rank would hold nothing */
    expect_refused(&c, 4, "vocab_size 9 is too small");
    c.vocab_size = 10;
    c.moe.n_experts = 8;
    c.moe.top_k = 2;
    c.moe.expert_intermediate = 48;
    c.moe.shared_intermediate = 20;
    strcpy(c.arch_name, "Qwen2MoeForCausalLM");
    make(&p, &c, 4);
    cr_expect_eq(p.expert_inter_per_rank, 12);
    cr_expect_eq(p.shared_inter_per_rank, 5);
    expect_tiles(&p, &c, TP_W_EXPERT_GATE, 48, TP_ROWS);
    expect_tiles(&p, &c, TP_W_EXPERT_DOWN, 48, TP_COLS);
    expect_tiles(&p, &c, TP_W_SHARED_UP, 20, TP_ROWS);
    expect_tiles(&p, &c, TP_W_SHARED_DOWN, 20, TP_COLS);
    struct tp_range g;
    cr_expect_eq(tp_plan_part(&p, &c, TP_W_ROUTER, 1, &g), TP_REPLICATED);
    cr_expect_eq(tp_plan_part(&p, &c, TP_W_SHARED_EXPERT_GATE, 1, &g), TP_REPLICATED);
    struct model_config rc;
    tp_plan_rank_config(&p, &c, 2, &rc);
    cr_expect_eq(rc.moe.expert_intermediate, 12);
    cr_expect_eq(rc.moe.shared_intermediate, 5);
    cr_expect_eq(rc.moe.n_experts, 8);
    c.moe.expert_intermediate = 50;
    expect_refused(&c, 4, "does not divide the experts' intermediate size 50");
    c.moe.expert_intermediate = 48;
    c.moe.shared_intermediate = 22;
    expect_refused(&c, 4, "does not divide shared_expert_intermediate_size 22");
    c.moe.n_experts = 0;
    c.arch = 99;
    strcpy(c.arch_name, "MixtralForCausalLM");
    expect_refused(&c, 2, "not MixtralForCausalLM");
}

/* A model of float32 (or Q8_0) tensors with no data, shaped as c says. */
static struct tensor mat(enum dtype d, int64_t rows, int64_t cols)
{
    return (struct tensor){.dtype = d, .ndim = 2, .shape = {rows, cols}};
}
static struct tensor vec(int64_t n) { return (struct tensor){.dtype = DTYPE_F32, .ndim = 1, .shape = {n, 0}}; }

static struct model *fake_model(const struct model_config *c, enum dtype d, bool tied)
{
    struct model *m = calloc(1, sizeof *m);
    m->config = *c;
    m->config.tie_embeddings = tied;
    int64_t h = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    m->tok_embed = mat(d, c->vocab_size, h);
    m->tok_embed.dummy_id = 1;
    m->lm_head = mat(d, c->vocab_size, h);
    m->lm_head.dummy_id = tied ? 1 : 2;
    m->final_norm = vec(h);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        L->attn_norm = vec(h), L->ffn_norm = vec(h);
        L->wq = mat(d, q, h), L->wk = mat(d, kv, h), L->wv = mat(d, kv, h), L->wo = mat(d, h, q);
        L->w_gate = mat(d, c->intermediate_size, h), L->w_up = mat(d, c->intermediate_size, h);
        L->w_down = mat(d, h, c->intermediate_size);
    }
    return m;
}

static void free_fake(struct model *m)
{
    free(m->layers);
    free(m);
}

Test(tp_plan, rank_bytes_add_up_to_the_model_plus_the_replicated_norms)
{
    struct model_config c = cfg(64, 172, 8, 4, 8, 512);
    for (int tied = 0; tied < 2; tied++) {
        struct model *m = fake_model(&c, DTYPE_F32, tied);
        struct tp_plan p;
        make(&p, &c, 1);
        size_t whole = tp_plan_rank_bytes(&p, m, 0);
        /* Embedding (and lm_head unless tied), final norm, per layer 2 norms, q/k/v/o, gate/up/down. */
        size_t want = (512 * 64 * (tied ? 1 : 2) + 64 + 2 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 172 * 64)) * 4;
        cr_expect_eq(whole, want, "tied %d: %zu bytes, not %zu", tied, whole, want);
        for (int n = 2; n <= 4; n *= 2) {
            make(&p, &c, n);
            size_t sum = 0;
            for (int r = 0; r < n; r++) {
                size_t b = tp_plan_rank_bytes(&p, m, r);
                cr_expect_lt(b, whole / n + 2000, "size %d rank %d holds %zu of %zu bytes", n, r, b, whole);
                sum += b;
            }
            size_t norms = (64 + 2 * 2 * 64) * 4;
            cr_expect_eq(sum, whole + (size_t)(n - 1) * norms, "size %d: %zu", n, sum);
        }
        free_fake(m);
    }
}

Test(tp_plan, expert_bytes_split_and_the_router_is_on_every_rank)
{
    struct model_config c = cfg(64, 128, 4, 2, 16, 256);
    c.moe = (struct moe_config){.n_experts = 3, .top_k = 2, .expert_intermediate = 32, .sparse_step = 1};
    struct model *m = fake_model(&c, DTYPE_F32, true);
    struct tensor gate[3], up[3], down[3];
    struct moe_weights E = {.router = mat(DTYPE_F32, 3, 64), .gate = gate, .up = up, .down = down};
    for (int e = 0; e < 3; e++) gate[e] = mat(DTYPE_F32, 32, 64), up[e] = mat(DTYPE_F32, 32, 64), down[e] = mat(DTYPE_F32, 64, 32);
    for (int l = 0; l < c.n_layers; l++) {
        m->layers[l].moe = &E;
        m->layers[l].w_gate = m->layers[l].w_up = m->layers[l].w_down = (struct tensor){0};
    }
    struct tp_plan p;
    make(&p, &c, 1);
    size_t whole = tp_plan_rank_bytes(&p, m, 0), sum = 0;
    make(&p, &c, 2);
    for (int r = 0; r < 2; r++) sum += tp_plan_rank_bytes(&p, m, r);
    size_t replicated = (64 + 2 * 2 * 64 + 2 * 3 * 64) * 4; /* norms, and each layer's router */
    cr_expect_eq(sum, whole + replicated, "%zu vs %zu + %zu", sum, whole, replicated);
    cr_expect_eq(whole, (256 * 64 + 64 + 2 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 +
                                                                         3 * 64 + 3 * 3 * 32 * 64)) * 4);
    free_fake(m);
}

Test(tp_plan, block_quantized_columns_cut_inside_a_block_count_as_float32)
{
    struct tensor t = mat(DTYPE_Q8_0, 10, 128); /* blocks of 32 weights in 34 bytes */
    cr_expect(tp_cols_on_blocks(&t, (struct tp_range){64, 128}));
    cr_expect_eq(tp_cols_bytes(&t, (struct tp_range){64, 128}), 10 * 2 * 34);
    cr_expect(!tp_cols_on_blocks(&t, (struct tp_range){48, 96}));
    cr_expect_eq(tp_cols_bytes(&t, (struct tp_range){48, 96}), 10 * 48 * 4);
    struct tensor f = mat(DTYPE_BF16, 10, 128);
    cr_expect_eq(tp_cols_bytes(&f, (struct tp_range){3, 7}), 10 * 4 * 2);
}
