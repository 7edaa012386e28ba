/* The CUDA backend's planner (worker/backend/cuda/cuda_plan.c), on the CPU: its choices for
 * thousands of batches over several models, devices and option sets must be the ones the backend
 * made before the planner existed. The oracle below is that code (cuda_forward.c, cuda_gemm.c,
 * cuda_backend.c and sk_attention_mode at 68a1383), transcribed with its environment switches as
 * fields; it also resolves the attention variant the way the kernel library did, which shows that
 * the register grouped kernel (variant 1) was never reached with the default variant 9. Then a
 * few decisions by hand at Llama-3-8B's shape, the numbers docs/performance.md explains. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "worker/backend/cuda/cuda_plan.h"

/* ---- the oracle: the backend's decisions before the planner --------------------------------- */

struct old_backend {
    /* cuda_backend.c / cuda_gemm.c / cuda_weights.c at creation */
    int n_sms;
    bool hopper, use_gemv, split_parts, fused_mlp, early_trigger, gu_interleaved, use_prefill_mma, attn_early,
        use_graphs, deterministic;
    int gqa_mode, fused_qkv_rows, det_split_len, bt_cap, num_kv_blocks, max_batch_tokens, max_batch_seqs;
    int64_t part_rows;
    struct model_config c;
};

static struct old_backend old_create(const struct model_config *c, const struct cuda_options *o, bool det,
                                     bool hopper_device, int n_sms, int max_tokens, int max_seqs, int bt_cap)
{
    struct old_backend b = {0};
    b.c = *c;
    b.n_sms = n_sms;
    b.max_batch_tokens = max_tokens;
    b.max_batch_seqs = max_seqs;
    b.bt_cap = bt_cap;
    b.use_gemv = !o->no_gemv;                                                            /* SLUICE_CUDA_GEMV */
    b.use_prefill_mma = !o->no_prefill_mma && (c->head_dim == 64 || c->head_dim == 128); /* _PREFILL_MMA */
    b.gqa_mode = 9;                                                                      /* _ATTN_GQA unset */
    b.attn_early = !o->no_attn_early;
    b.fused_qkv_rows = o->fused_qkv == CUDA_FUSED_QKV_OFF ? -1 : o->fused_qkv == CUDA_FUSED_QKV_ALL ? 0 : 32;
    b.use_graphs = !o->enforce_eager;
    b.deterministic = det;
    if (det) {
        b.fused_qkv_rows = -1;
        const int ctx = b.bt_cap * 16;
        const int len = (ctx + 32 - 1) / 32;
        b.det_split_len = len < 256 ? 256 : (len + 16 - 1) / 16 * 16;
    }
    b.hopper = hopper_device && !o->no_hopper; /* cuda_gemm_init */
    b.split_parts = b.hopper && !o->no_split_parts;
    b.fused_mlp = b.split_parts && !o->no_fused_mlp;
    b.early_trigger = !o->no_early_trigger;
    if (o->profile) b.use_graphs = false;
    b.gu_interleaved = b.hopper && c->intermediate_size % 64 == 0; /* cuda_weights_load */
    b.part_rows = (int64_t)max_seqs * c->n_heads * 32;             /* workspace_alloc */
    return b;
}

static bool old_on_hopper(const struct old_backend *b, int rows)
{
    return b->hopper && (b->deterministic || (rows >= 2 && rows <= 64));
}

static bool old_hopper_takes(const struct old_backend *b, int rows, int n_out, int k_in, bool early)
{
    const bool narrow = rows > 32 && (int64_t)n_out * k_in < ((int64_t)48 << 20) && !early && !b->deterministic;
    return old_on_hopper(b, rows) && k_in % 8 == 0 && !narrow;
}

/* cuda_gemm: which launch it made. */
static enum cuda_product old_gemm(const struct old_backend *b, int rows, int n_out, int k_in)
{
    (void)n_out;
    if (b->deterministic) return CUDA_PRODUCT_HOPPER_SLICED;
    if (b->use_gemv && rows == 1 && k_in % 8 == 0) return CUDA_PRODUCT_GEMV;
    if (old_hopper_takes(b, rows, n_out, k_in, false)) return CUDA_PRODUCT_HOPPER;
    return CUDA_PRODUCT_CUBLAS;
}

/* cuda_gemm_parts. */
static struct cuda_product_plan old_gemm_parts(const struct old_backend *b, int rows, int n_out, int k_in,
                                               bool early_dependents)
{
    const bool early = early_dependents && b->early_trigger;
    if (b->split_parts && old_hopper_takes(b, rows, n_out, k_in, early) && rows <= 64)
        return (struct cuda_product_plan){CUDA_PRODUCT_HOPPER_PARTS, early};
    return (struct cuda_product_plan){old_gemm(b, rows, n_out, k_in), false};
}

/* enqueue_mlp's path (cuda_mlp_fused, then its if/else chain). */
static struct cuda_mlp_plan old_mlp(const struct old_backend *b, int T)
{
    const int H = b->c.hidden_size, I = b->c.intermediate_size;
    struct cuda_mlp_plan p = {.kind = CUDA_MLP_FP32};
    p.down = old_gemm_parts(b, T, H, I, false);
    if (b->fused_mlp && b->gu_interleaved && T <= 32 && old_hopper_takes(b, T, H, I, false)) {
        p.kind = CUDA_MLP_FUSED;
        p.early = b->early_trigger; /* sk_hopper_mlp(..., b->early_trigger, ...) */
    } else if (b->gu_interleaved && old_on_hopper(b, T)) {
        p.kind = CUDA_MLP_SWIGLU;
        p.early = true && b->early_trigger; /* cuda_gemm_swiglu(..., true) */
    } else if (T >= 2 && !b->deterministic) {
        p.kind = CUDA_MLP_BF16;
    } else {
        p.gate_up = (struct cuda_product_plan){old_gemm(b, T, 2 * I, H), false};
    }
    return p;
}

static bool old_takes_tiles(const struct old_backend *b, const struct batch_seq *q)
{
    /* 68a1383's rule, then two changes on purpose: a lone prompt token takes the tiles only under
     * --deterministic, and a short chunk over a long context takes the decode attention. */
    if (!b->use_prefill_mma) return false;
    if (b->deterministic) return q->n_new >= 2 || (q->prompt && q->n_new == 1);
    return q->n_new >= 2 && !(q->n_new <= 16 && q->start_pos >= 1024);
}

/* kernels/attention*.cu at 68a1383: the shape predicates and sk_attention_mode's choice. */
enum old_attn { OLD_PER_HEAD, OLD_REGS, OLD_STREAM };
static bool old_decode_fits(const struct sk_attn_params *p, bool mma)
{
    if (p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads) return false;
    const int qg = p->n_heads / p->n_kv_heads;
    if (p->head_dim != 64 && p->head_dim != 128) return false;
    return qg == 1 || qg == 2 || qg == 4 || (qg == 8 && (mma || p->head_dim == 64));
}
static bool old_gqa_fits(const struct sk_attn_params *p)
{
    const int qg = p->n_kv_heads > 0 ? p->n_heads / p->n_kv_heads : 0;
    return (p->head_dim == 64 || p->head_dim == 128) && (qg == 1 || qg == 2 || qg == 4 || qg == 8);
}
static enum old_attn old_attention_mode(const struct sk_attn_params *p, int use_gqa)
{
    if (use_gqa >= 4 && old_decode_fits(p, use_gqa >= 8)) return OLD_STREAM;
    if (use_gqa >= 4) use_gqa = 1;
    if (use_gqa && old_gqa_fits(p)) return OLD_REGS;
    return OLD_PER_HEAD;
}

struct old_step {
    int rc;
    char err[512];
    int T, S, R, n_tiles, bt_stride;
    bool all_dec, any_cut, graphable, fused_qkv;
    size_t n_hist;
    struct sk_attn_params ap;
    enum old_attn attn;
    struct cuda_product_plan qkv, o, lm_head;
    struct cuda_mlp_plan mlp;
};

#define OLD_FAIL(...)                                                                                                  \
    do {                                                                                                               \
        snprintf(st.err, sizeof st.err, __VA_ARGS__);                                                                  \
        st.rc = -1;                                                                                                    \
        return st;                                                                                                     \
    } while (0)

/* cuda_submit up to the launches, and enqueue_step's product calls. */
static struct old_step old_submit(const struct old_backend *b, const struct batch *batch, uint64_t submitted,
                                  uint64_t collected, int prev_rows)
{
    struct old_step st = {0};
    const struct model_config *c = &b->c;
    const int T = batch->n_tokens, S = batch->n_seqs;
    const int D = c->head_dim, V = c->vocab_size, nh = c->n_heads, nkv = c->n_kv_heads;
    int R = 0, bt_stride = 1, max_ctx = 0, n_tiles = 0, n_dec = 0;
    bool any_cut = false, dec_single = true;
    size_t n_hist = 0;
    if (S < 0 || S > b->max_batch_seqs || T < 0 || T > b->max_batch_tokens)
        OLD_FAIL("cuda: batch of %d tokens / %d sequences exceeds %d / %d", T, S, b->max_batch_tokens,
                 b->max_batch_seqs);
    int total = 0;
    for (int s = 0; s < S; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int ctx = q->start_pos + q->n_new;
        int need = (ctx + 16 - 1) / 16;
        if (q->n_new < 0 || q->start_pos < 0 || need > q->n_blocks || need > b->bt_cap || (q->sample && !q->sampling) ||
            (q->sample && q->n_new < 1))
            OLD_FAIL("cuda: sequence %d of the batch is inconsistent (start %d, %d new, %d blocks)", s, q->start_pos,
                     q->n_new, q->n_blocks);
        for (int i = 0; i < need; i++)
            if (q->block_table[i] < 0 || q->block_table[i] >= b->num_kv_blocks)
                OLD_FAIL("cuda: block id %d out of range (%d blocks)", q->block_table[i], b->num_kv_blocks);
        if (need > bt_stride) bt_stride = need;
        if (ctx > max_ctx) max_ctx = ctx;
        if (old_takes_tiles(b, q))
            n_tiles += (q->n_new + 64 - 1) / 64;
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
    if (total != T) OLD_FAIL("cuda: sequences carry %d tokens, batch says %d", total, T);
    if (submitted - collected >= 2) OLD_FAIL("cuda: two steps are queued already");
    for (int t = 0; t < T; t++) {
        const int32_t tok = batch->tokens[t];
        if (tok >= V || (tok < 0 && BACKEND_TOKEN_PREV_ROW(tok) >= prev_rows))
            OLD_FAIL("cuda: token %d at row %d is neither in the vocabulary (%d) nor one of the %d rows the "
                     "previous step sampled",
                     tok, t, V, prev_rows);
    }
    bool graphable = b->use_graphs && T > 0 && T == S && R == S && n_tiles == 0 && !batch->logits_out;
    if (graphable) {
        int w = 4;
        while (w < bt_stride) w *= 2;
        bt_stride = w < b->bt_cap ? w : b->bt_cap;
    }
    const bool all_dec = n_dec == T;
    for (int s = 0; s < S; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        if (!q->sample) continue;
        const struct sampling_params *sp = q->sampling;
        if (sp->temperature > 1e-5f && ((sp->top_k > 0 && sp->top_k < V) || (sp->top_p > 0.0f && sp->top_p < 1.0f)))
            any_cut = true;
    }
    struct sk_attn_params ap = {.n_tokens = n_dec,
                                .n_heads = nh,
                                .n_kv_heads = nkv,
                                .head_dim = D,
                                .bt_stride = bt_stride,
                                .scale = 1.0f / sqrtf((float)D),
                                .n_splits = 1,
                                .split_len = 0,
                                .token_list = NULL,
                                .settled_keys = b->attn_early && dec_single};
    /* sk_attention_decode_fits: default variant >= 4 and attention_decode_fits(p, variant >= 8). */
    const bool stream = b->gqa_mode >= 4 && old_decode_fits(&ap, b->gqa_mode >= 8);
    const bool gqa =
        b->gqa_mode > 0 && old_gqa_fits(&ap) && (stream || b->deterministic || (int64_t)n_dec * nkv >= b->n_sms);
    const int gqa_mode = gqa ? b->gqa_mode : 0;
    /* sk_attention_decode_qkv_fits */
    const bool qkv_fits = ap.head_dim == 128 && ap.settled_keys && b->gqa_mode >= 8 && old_decode_fits(&ap, true);
    st.fused_qkv = b->fused_qkv_rows >= 0 && n_dec > b->fused_qkv_rows && all_dec && qkv_fits;
    int64_t ctx_bound = graphable ? (int64_t)bt_stride * 16 : max_ctx;
    if (b->deterministic && n_dec > 0) {
        const int64_t cap = b->part_rows / ((int64_t)n_dec * nh);
        int64_t n = (ctx_bound + b->det_split_len - 1) / b->det_split_len;
        ap.split_len = b->det_split_len;
        if (n > cap) {
            n = cap;
            /* (the old code divided by n here, by zero when cap was 0: the cases below keep cap >= 1) */
            ap.split_len = (int)((ctx_bound + n - 1) / n + 16 - 1) / 16 * 16;
        }
        ap.n_splits = n >= 2 ? (int)n : cap >= 2 ? 2 : 1;
    } else if (ctx_bound >= 256 && n_dec > 0) {
        int64_t blocks = (int64_t)n_dec * (gqa ? nkv : nh), n;
        if (stream) {
            int64_t fill = 4 * (int64_t)b->n_sms / blocks, by_1024 = (ctx_bound + 1023) / 1024;
            n = fill > by_1024 ? fill : by_1024;
        } else {
            int64_t fill = (8 * (int64_t)b->n_sms + blocks - 1) / blocks, by_256 = (ctx_bound + 255) / 256;
            n = fill > by_256 ? fill : by_256;
        }
        int64_t by_128 = (ctx_bound + 127) / 128;
        int64_t cap = b->part_rows / ((int64_t)n_dec * nh);
        if (n > by_128) n = by_128;
        if (n > cap) n = cap;
        if (n > 32) n = 32;
        if (n > 1) ap.n_splits = (int)n;
    }
    st.T = T;
    st.S = S;
    st.R = R;
    st.n_tiles = n_tiles;
    st.bt_stride = bt_stride;
    st.all_dec = all_dec;
    st.any_cut = any_cut;
    st.graphable = graphable;
    st.n_hist = n_hist;
    st.ap = ap;
    st.attn = old_attention_mode(&ap, gqa_mode);
    /* enqueue_step */
    const int H = c->hidden_size, qd = nh * D, qkvd = (nh + 2 * nkv) * D;
    st.qkv = old_gemm_parts(b, T, qkvd, H, T > 8);
    st.o = old_gemm_parts(b, T, H, qd, false);
    st.mlp = old_mlp(b, T);
    st.lm_head = (struct cuda_product_plan){old_gemm(b, R, V, H), false};
    return st;
}

/* ---- batches ------------------------------------------------------------------------------ */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int rnd(int n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)n);
}

#define MAX_SEQS 300
#define MAX_TOKENS 9000
static struct batch_seq seqs[MAX_SEQS];
static int32_t tokens[MAX_TOKENS], blocks[MAX_SEQS][600], hist[64];
static float logits_sink[1];
static const struct sampling_params greedy = {
    .temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1, .logprobs = -1};
static const struct sampling_params top_p = {.temperature = 0.8f, .top_p = 0.9f, .top_k = 0, .repetition_penalty = 1};
static const struct sampling_params top_k = {.temperature = 0.7f, .top_p = 1, .top_k = 40, .repetition_penalty = 1};
static const struct sampling_params penalty = {.temperature = 0, .top_p = 1, .repetition_penalty = 1.2f};

/* A batch as the engine's scheduler makes them: decode tokens, prompt chunks (a chunk of one
 * token among them), or both; contexts from a few keys to the whole block table. */
static struct batch make_batch(int max_seqs, int max_tokens, int bt_cap, int vocab, int kind)
{
    int S = 1 + rnd(max_seqs < MAX_SEQS ? max_seqs : MAX_SEQS), T = 0;
    const int max_ctx = (bt_cap - 1) * 16;
    for (int s = 0; s < S; s++) {
        struct batch_seq *q = &seqs[s];
        memset(q, 0, sizeof *q);
        const bool prefill = kind == 1 || (kind == 2 && rnd(3) == 0);
        const int ctx_pick = rnd(4) == 0 ? max_ctx : 1 + rnd(rnd(2) ? 300 : max_ctx);
        int n_new = 1;
        if (prefill) {
            n_new = rnd(4) == 0 ? 1 : 1 + rnd(600);
            q->prompt = true;
        }
        if (T + n_new > max_tokens) n_new = max_tokens - T;
        if (n_new < 1) {
            S = s;
            break;
        }
        int ctx = ctx_pick < n_new ? n_new : ctx_pick;
        if (ctx > max_ctx) ctx = max_ctx;
        q->start_pos = ctx - n_new;
        q->n_new = n_new;
        q->n_blocks = (ctx + 15) / 16;
        q->block_table = blocks[s];
        q->sample = !prefill || rnd(2);
        const int sp = rnd(8);
        q->sampling = sp == 0 ? &top_p : sp == 1 ? &top_k : sp == 2 ? &penalty : &greedy;
        q->history = hist;
        q->n_history = sp == 2 ? 1 + rnd(60) : 0;
        for (int i = 0; i < n_new; i++) tokens[T + i] = rnd(vocab);
        T += n_new;
    }
    struct batch b = {.n_seqs = S, .seqs = seqs, .n_tokens = T, .tokens = tokens};
    if (rnd(10) == 0) b.logits_out = logits_sink;
    return b;
}

/* ---- comparisons ---------------------------------------------------------------------------- */

static void expect_product(struct cuda_product_plan got, struct cuda_product_plan want, const char *what,
                           const char *ctx)
{
    cr_assert_eq(got.kernel, want.kernel, "%s (%s): kernel %d, the old code %d", what, ctx, got.kernel, want.kernel);
    cr_assert_eq(got.early, want.early, "%s (%s): early %d, the old code %d", what, ctx, got.early, want.early);
}

static void compare(const struct cuda_plan_config *pc, const struct old_backend *ob, const struct batch *batch,
                    int queued, int prev_rows, const char *ctx)
{
    struct cuda_step_plan p;
    char err[512] = "";
    const int rc = cuda_plan_step(pc, batch, queued, prev_rows, &p, err, sizeof err);
    const struct old_step o = old_submit(ob, batch, (uint64_t)queued + 5, 5, prev_rows);
    cr_assert_eq(rc, o.rc, "%s: planner %d (%s), old code %d (%s)", ctx, rc, err, o.rc, o.err);
    if (rc < 0) {
        cr_assert_str_eq(err, o.err, "%s", ctx);
        return;
    }
    for (int s = 0; s < batch->n_seqs; s++)
        cr_assert_eq(cuda_plan_takes_tiles(pc, &batch->seqs[s]), old_takes_tiles(ob, &batch->seqs[s]), "%s", ctx);
    cr_assert_eq(p.n_tokens, o.T, "%s", ctx);
    cr_assert_eq(p.n_seqs, o.S, "%s", ctx);
    cr_assert_eq(p.n_rows, o.R, "%s", ctx);
    cr_assert_eq(p.n_tiles, o.n_tiles, "%s", ctx);
    cr_assert_eq(p.all_dec, o.all_dec, "%s", ctx);
    cr_assert_eq(p.any_cut, o.any_cut, "%s", ctx);
    cr_assert_eq(p.n_hist, o.n_hist, "%s", ctx);
    cr_assert_eq(p.graph, o.graphable, "%s", ctx);
    cr_assert_eq(p.bt_stride, o.bt_stride, "%s", ctx);
    cr_assert_neq(o.attn, OLD_REGS, "%s: the old code took the register kernel", ctx);
    cr_assert_eq(p.attn_kernel, o.attn == OLD_STREAM ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD, "%s", ctx);
    cr_assert_eq(p.attn.n_tokens, o.ap.n_tokens, "%s", ctx);
    cr_assert_eq(p.attn.n_heads, o.ap.n_heads, "%s", ctx);
    cr_assert_eq(p.attn.n_kv_heads, o.ap.n_kv_heads, "%s", ctx);
    cr_assert_eq(p.attn.head_dim, o.ap.head_dim, "%s", ctx);
    cr_assert_eq(p.attn.bt_stride, o.ap.bt_stride, "%s", ctx);
    cr_assert(p.attn.scale == o.ap.scale, "%s", ctx);
    cr_assert_eq(p.attn.n_splits, o.ap.n_splits, "%s: splits", ctx);
    cr_assert_eq(p.attn.split_len, o.ap.split_len, "%s: split_len", ctx);
    cr_assert_eq(p.attn.settled_keys, o.ap.settled_keys, "%s", ctx);
    cr_assert_null(p.attn.token_list, "%s", ctx);
    cr_assert_eq(p.fused_qkv, o.fused_qkv, "%s: fused qkv", ctx);
    expect_product(p.qkv, o.qkv, "qkv", ctx);
    expect_product(p.o, o.o, "o", ctx);
    expect_product(p.lm_head, o.lm_head, "lm_head", ctx);
    cr_assert_eq(p.mlp.kind, o.mlp.kind, "%s: mlp", ctx);
    cr_assert_eq(p.mlp.early, o.mlp.early, "%s: mlp", ctx);
    if (p.mlp.kind != CUDA_MLP_FUSED) expect_product(p.mlp.down, o.mlp.down, "down", ctx);
    if (p.mlp.kind == CUDA_MLP_FP32) expect_product(p.mlp.gate_up, o.mlp.gate_up, "gate/up", ctx);
}

static struct model_config shape(int hidden, int inter, int heads, int kv_heads, int head_dim, int vocab,
                                 int max_position)
{
    return (struct model_config){.hidden_size = hidden,
                                 .intermediate_size = inter,
                                 .n_heads = heads,
                                 .n_kv_heads = kv_heads,
                                 .head_dim = head_dim,
                                 .vocab_size = vocab,
                                 .max_position = max_position,
                                 .n_layers = 2};
}

Test(cuda_plan, every_choice_is_the_old_codes)
{
    const struct model_config models[] = {
        shape(4096, 14336, 32, 8, 128, 128256, 8192), /* Llama-3-8B */
        shape(4096, 12288, 32, 8, 128, 151936, 4096), /* Qwen3-8B */
        shape(256, 688, 4, 2, 64, 1000, 4096),        /* the GPU tests' dummies */
        shape(256, 512, 2, 1, 128, 1200, 4096),
        shape(256, 512, 4, 2, 96, 1100, 4096),
        shape(512, 768, 4, 1, 128, 900, 4096),
        shape(576, 1536, 9, 3, 64, 49152, 2048),      /* SmolLM2-135M */
        shape(2048, 5504, 16, 1, 128, 32000, 4096),   /* 16 query heads per kv head */
        shape(3584, 18944, 28, 4, 128, 152064, 4096), /* Qwen2.5-7B: 7 per kv head */
        shape(64, 172, 8, 2, 8, 512, 512),            /* stories260K */
        shape(1280, 3400, 16, 16, 80, 50000, 2048),   /* head_dim 80, no grouping */
    };
    const struct {
        bool hopper;
        int n_sms;
    } devices[] = {{true, 132}, {true, 114}, {false, 108}};
    const struct cuda_options opts[] = {
        {0},
        {.no_gemv = true},
        {.no_prefill_mma = true},
        {.no_hopper = true},
        {.no_split_parts = true},
        {.no_fused_mlp = true},
        {.no_early_trigger = true},
        {.no_attn_early = true},
        {.fused_qkv = CUDA_FUSED_QKV_ALL},
        {.fused_qkv = CUDA_FUSED_QKV_OFF},
        {.enforce_eager = true},
        {.profile = true},
    };
    const struct {
        int tokens, seqs;
    } sizes[] = {{8192, 256}, {512, 8}, {4096, 64}};
    long planned = 0;
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++)
        for (size_t di = 0; di < sizeof devices / sizeof devices[0]; di++)
            for (size_t oi = 0; oi < sizeof opts / sizeof opts[0] + 1; oi++)
                for (size_t zi = 0; zi < sizeof sizes / sizeof sizes[0]; zi++) {
                    const struct model_config *m = &models[mi];
                    /* The last option set is --deterministic, which needs the Hopper products
                     * and widths divisible by 8. */
                    const bool det = oi == sizeof opts / sizeof opts[0];
                    if (det && (!devices[di].hopper || m->hidden_size % 8 || m->intermediate_size % 8 ||
                                (m->n_heads * m->head_dim) % 8))
                        continue;
                    const struct cuda_options *o = det ? &opts[0] : &opts[oi];
                    const int bt_cap = m->max_position / 16 + 2;
                    struct cuda_plan_config pc;
                    cuda_plan_config_init(&pc, m, o, det, devices[di].hopper && !o->no_hopper, devices[di].n_sms,
                                          sizes[zi].tokens, sizes[zi].seqs, bt_cap);
                    pc.num_kv_blocks = 100000;
                    struct old_backend ob = old_create(m, o, det, devices[di].hopper, devices[di].n_sms,
                                                       sizes[zi].tokens, sizes[zi].seqs, bt_cap);
                    ob.num_kv_blocks = pc.num_kv_blocks;
                    for (int i = 0; i < 40; i++) {
                        struct batch b = make_batch(sizes[zi].seqs, sizes[zi].tokens, bt_cap, m->vocab_size, i % 3);
                        for (int s = 0; s < b.n_seqs; s++)
                            for (int k = 0; k < b.seqs[s].n_blocks; k++) blocks[s][k] = rnd(pc.num_kv_blocks);
                        /* In deterministic mode the old code divided by zero where part_o had no
                         * room for one range a token; the planner keeps one range there. */
                        if (det && b.n_tokens > (int64_t)pc.part_rows / m->n_heads) continue;
                        char ctx[256];
                        snprintf(ctx, sizeof ctx,
                                 "model %zu, device %zu, options %zu, sizes %zu, batch %d (%d seqs, "
                                 "%d tokens)",
                                 mi, di, oi, zi, i, b.n_seqs, b.n_tokens);
                        compare(&pc, &ob, &b, 0, 0, ctx);
                        planned++;
                    }
                }
    cr_assert_gt(planned, 10000);
}

Test(cuda_plan, bad_batches_get_the_old_messages)
{
    const struct model_config m = shape(4096, 14336, 32, 8, 128, 128256, 8192);
    const struct cuda_options o = {0};
    struct cuda_plan_config pc;
    cuda_plan_config_init(&pc, &m, &o, false, true, 132, 512, 8, m.max_position / 16 + 2);
    pc.num_kv_blocks = 50;
    struct old_backend ob = old_create(&m, &o, false, true, 132, 512, 8, m.max_position / 16 + 2);
    ob.num_kv_blocks = 50;
    int32_t bt[4] = {0, 1, 2, 3}, tok[4] = {5, 6, 7, 8};
    struct batch_seq q = {
        .n_new = 1, .start_pos = 10, .block_table = bt, .n_blocks = 4, .sample = true, .sampling = &greedy};
    struct batch b = {.n_seqs = 1, .seqs = &q, .n_tokens = 1, .tokens = tok};
    compare(&pc, &ob, &b, 0, 0, "a good one");
    b.n_tokens = 513;
    compare(&pc, &ob, &b, 0, 0, "too many tokens");
    b.n_tokens = 2;
    compare(&pc, &ob, &b, 0, 0, "tokens disagree");
    b.n_tokens = 1;
    compare(&pc, &ob, &b, 2, 0, "two steps queued");
    q.start_pos = 100;
    compare(&pc, &ob, &b, 0, 0, "block table too short");
    q.start_pos = 10;
    bt[0] = 50;
    compare(&pc, &ob, &b, 0, 0, "block id out of range");
    bt[0] = 0;
    tok[0] = 128256;
    compare(&pc, &ob, &b, 0, 0, "token out of the vocabulary");
    tok[0] = BACKEND_TOKEN_FROM_PREV(3);
    compare(&pc, &ob, &b, 0, 3, "a row the previous step did not sample");
    compare(&pc, &ob, &b, 0, 4, "a row it did");
    q.sampling = NULL;
    compare(&pc, &ob, &b, 0, 4, "no sampling parameters");
    q.sampling = &greedy;
    q.n_new = 0;
    b.n_tokens = 0;
    compare(&pc, &ob, &b, 0, 0, "sampling after no token");
    char err[512];
    struct cuda_step_plan p;
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), -1);
    cr_assert(strstr(err, "inconsistent"), "%s", err);
}

/* A pure decode step of n sequences at context ctx each. */
static struct batch decode_batch(int n, int ctx)
{
    for (int s = 0; s < n; s++) {
        seqs[s] = (struct batch_seq){.n_new = 1,
                                     .start_pos = ctx - 1,
                                     .block_table = blocks[s],
                                     .n_blocks = (ctx + 15) / 16,
                                     .sample = true,
                                     .sampling = &greedy};
        for (int k = 0; k < seqs[s].n_blocks; k++) blocks[s][k] = k;
        tokens[s] = 1;
    }
    return (struct batch){.n_seqs = n, .seqs = seqs, .n_tokens = n, .tokens = tokens};
}

static struct cuda_step_plan plan_llama(bool det, int n, int ctx)
{
    const struct model_config m = shape(4096, 14336, 32, 8, 128, 128256, 8192);
    const struct cuda_options o = {0};
    struct cuda_plan_config pc;
    cuda_plan_config_init(&pc, &m, &o, det, true, 132, 8192, 256, m.max_position / 16 + 2);
    pc.num_kv_blocks = 100000;
    struct batch b = decode_batch(n, ctx);
    struct cuda_step_plan p;
    char err[256];
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    return p;
}

Test(cuda_plan, llama3_8b_on_an_h200_by_hand)
{
    /* Batch 64 over the engine bench's contexts: a graph, the streaming kernel in one range (a
     * second wave of blocks costs more than it saves), qkv on the Hopper kernel letting its
     * dependents launch early, o on cuBLAS (narrow at 33-64 rows), gate/up fused with its
     * activation and down in parts, the attention doing qkv_post's work (over 32 rows). */
    struct cuda_step_plan p = plan_llama(false, 64, 192);
    cr_assert(p.graph);
    cr_assert_eq(p.bt_stride, 16);
    cr_assert_eq(p.attn_kernel, SK_ATTN_DECODE_STREAM);
    cr_assert_eq(p.attn.n_splits, 1);
    cr_assert(p.attn.settled_keys && p.fused_qkv);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_HOPPER_PARTS);
    cr_assert(p.qkv.early);
    cr_assert_eq(p.o.kernel, CUDA_PRODUCT_CUBLAS);
    cr_assert_eq(p.mlp.kind, CUDA_MLP_SWIGLU);
    cr_assert_eq(p.mlp.down.kernel, CUDA_PRODUCT_HOPPER_PARTS);
    cr_assert_eq(p.lm_head.kernel, CUDA_PRODUCT_HOPPER);
    /* Batch 32: the MLP in one launch, qkv_post its own kernel, o in parts. */
    p = plan_llama(false, 32, 192);
    cr_assert_eq(p.mlp.kind, CUDA_MLP_FUSED);
    cr_assert_not(p.fused_qkv);
    cr_assert_eq(p.o.kernel, CUDA_PRODUCT_HOPPER_PARTS);
    /* Batch 8: qkv does not trigger early. */
    p = plan_llama(false, 8, 192);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_HOPPER_PARTS);
    cr_assert_not(p.qkv.early);
    /* Batch 1: the own gemv for every product, gate/up in fp32 then SiLU. */
    p = plan_llama(false, 1, 192);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_GEMV);
    cr_assert_eq(p.mlp.kind, CUDA_MLP_FP32);
    cr_assert_eq(p.mlp.gate_up.kernel, CUDA_PRODUCT_GEMV);
    cr_assert_eq(p.lm_head.kernel, CUDA_PRODUCT_GEMV);
    /* One long context: 32 ranges, the most part_o holds. Batch 128: cuBLAS beyond 64 rows. */
    p = plan_llama(false, 1, 8000);
    cr_assert_eq(p.attn.n_splits, 32);
    p = plan_llama(false, 128, 192);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_CUBLAS);
    cr_assert_eq(p.mlp.kind, CUDA_MLP_BF16);
    /* --deterministic: every product on the Hopper kernel (parts where they fit), ranges of a
     * fixed length (8224 keys at most in 32 ranges: 272) merged even when one holds every key,
     * no fused qkv. */
    p = plan_llama(true, 1, 192);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_HOPPER_PARTS);
    cr_assert_eq(p.lm_head.kernel, CUDA_PRODUCT_HOPPER_SLICED);
    cr_assert_eq(p.mlp.kind, CUDA_MLP_FUSED);
    cr_assert_eq(p.attn.split_len, 272);
    cr_assert_eq(p.attn.n_splits, 2);
    cr_assert_not(p.fused_qkv);
    p = plan_llama(true, 128, 192);
    cr_assert_eq(p.qkv.kernel, CUDA_PRODUCT_HOPPER_SLICED);
}

Test(cuda_plan, deterministic_prefill_without_room_for_a_range_keeps_one)
{
    /* head_dim 96: prefill goes through the decode attention; 2 sequences of room, 100 tokens. */
    const struct model_config m = shape(256, 512, 4, 2, 96, 1100, 4096);
    const struct cuda_options o = {0};
    struct cuda_plan_config pc;
    cuda_plan_config_init(&pc, &m, &o, true, true, 132, 512, 2, m.max_position / 16 + 2);
    pc.num_kv_blocks = 1000;
    for (int k = 0; k < 8; k++) blocks[0][k] = k;
    seqs[0] = (struct batch_seq){.n_new = 100,
                                 .start_pos = 0,
                                 .block_table = blocks[0],
                                 .n_blocks = 8,
                                 .sample = true,
                                 .sampling = &greedy,
                                 .prompt = true};
    struct batch b = {.n_seqs = 1, .seqs = seqs, .n_tokens = 100, .tokens = tokens};
    memset(tokens, 0, 100 * sizeof tokens[0]);
    struct cuda_step_plan p;
    char err[256];
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(p.attn.n_tokens, 100);
    cr_assert_eq(p.attn.n_splits, 1);
}

/* The rest of a prompt after a prefix-cache hit (at most a block, over thousands of keys) takes
 * the decode attention, whose key splits fill the GPU; under --deterministic every prompt chunk
 * keeps the tiles, and a chunk of 17 or a short context keeps them in every mode. */
Test(cuda_plan, a_short_chunk_over_a_long_context_takes_the_decode_attention)
{
    const struct model_config m = shape(4096, 14336, 32, 8, 128, 128256, 8192);
    const struct cuda_options o = {0};
    struct cuda_plan_config pc, det;
    cuda_plan_config_init(&pc, &m, &o, false, true, 132, 8192, 256, m.max_position / 16 + 2);
    cuda_plan_config_init(&det, &m, &o, true, true, 132, 8192, 256, m.max_position / 16 + 2);
    struct batch_seq q = {.n_new = 16, .start_pos = 3984, .prompt = true};
    cr_assert_not(cuda_plan_takes_tiles(&pc, &q));
    cr_assert(cuda_plan_takes_tiles(&det, &q));
    q.n_new = 17;
    cr_assert(cuda_plan_takes_tiles(&pc, &q));
    q = (struct batch_seq){.n_new = 16, .start_pos = 1000, .prompt = true};
    cr_assert(cuda_plan_takes_tiles(&pc, &q));
    q = (struct batch_seq){.n_new = 1, .start_pos = 3999, .prompt = true};
    cr_assert_not(cuda_plan_takes_tiles(&pc, &q));
    cr_assert(cuda_plan_takes_tiles(&det, &q));
}

Test(cuda_plan, sampler_extras_prompt_logprobs_and_hidden_states_are_checked_and_counted)
{
    const struct model_config m = shape(4096, 14336, 32, 8, 128, 128256, 8192);
    const struct cuda_options o = {0};
    struct cuda_plan_config pc;
    cuda_plan_config_init(&pc, &m, &o, false, true, 132, 512, 8, m.max_position / 16 + 2);
    pc.num_kv_blocks = 50;
    int32_t bt[4] = {0, 1, 2, 3}, tok[4] = {5, 6, 7, 8}, ids[1] = {7};
    float bias[1] = {100.0f}, hidden[4096];
    struct prompt_logprob lp[1];
    struct sampling_params biased = greedy;
    biased.n_bias = 1, biased.bias_ids = ids, biased.bias_values = bias;
    struct batch_seq ok = {
        .n_new = 2, .start_pos = 10, .block_table = bt, .n_blocks = 4, .sample = true, .sampling = &greedy};
    int32_t far[1] = {128256};
    struct batch_seq bad[3] = {ok, ok, ok};
    /* Prompt logprobs of more rows than the chunk has, of a target outside the vocabulary, and
     * without a place to put them. */
    bad[0].lp_first = 1, bad[0].lp_rows = 2, bad[0].lp_targets = tok + 1, bad[0].lp_out = lp;
    bad[1].lp_first = 0, bad[1].lp_rows = 1, bad[1].lp_targets = far, bad[1].lp_out = lp;
    bad[2].lp_first = 0, bad[2].lp_rows = 1, bad[2].lp_targets = tok + 1;
    char err[512];
    struct cuda_step_plan p;
    struct batch b = {.n_seqs = 1, .seqs = &ok, .n_tokens = 2, .tokens = tok};
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 3; i++) {
        b.seqs = &bad[i];
        cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), -1, "case %d", i);
        cr_assert(strstr(err, "prompt logprob"), "%s", err);
    }
    /* Prompt logprobs and hidden states are counted, and keep the step out of graphs. */
    struct batch_seq outs[2] = {ok, ok};
    outs[0].n_new = outs[1].n_new = 1;
    outs[0].lp_first = 0, outs[0].lp_rows = 1, outs[0].lp_targets = tok + 1, outs[0].lp_out = lp;
    outs[1].hidden_sum = hidden;
    b = (struct batch){.n_seqs = 2, .seqs = outs, .n_tokens = 2, .tokens = tok};
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    cr_assert(p.n_lp == 1 && p.n_hid_rows == 1 && p.n_hid_seqs == 1 && !p.graph);
    /* The device sampler takes the logit bias, suppressed ids and token masks: they travel with
     * the history ints (ids and value bits; ids) and in the mask rows. */
    uint32_t mask[128256 / 32] = {0};
    struct batch_seq extras[2] = {ok, ok};
    extras[0].sampling = &biased;
    extras[0].allowed = mask;
    extras[1].suppress = ids, extras[1].n_suppress = 1;
    b = (struct batch){.n_seqs = 2, .seqs = extras, .n_tokens = 2, .tokens = tok};
    extras[0].n_new = extras[1].n_new = 1;
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(p.n_hist, 3);
    cr_assert_eq(p.n_masked, 1);
    /* A pure decode step with them still replays a graph: the masks' buffer is fixed and the
     * history buffer is the graph's key. */
    cr_assert(p.graph);
    extras[1].suppress = NULL;
    cr_assert_eq(cuda_plan_step(&pc, &b, 0, 0, &p, err, sizeof err), -1);
}
