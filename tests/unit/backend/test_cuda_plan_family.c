/* The planner's choices for the families' additions (model_family.h), on the CPU: the attention's
 * scale (query_pre_attn_scalar, YaRN's factor squared) and soft-capping; gate/up biases or GeGLU
 * keeping the MLP off the fused SwiGLU kinds; rope frequencies chosen per sequence (LongRoPE,
 * dynamic) keeping decode off the fused qkv attention and sending each sequence's frequencies
 * with the metadata; OLMo 2's whole-projection q/k norms keeping decode off it too; and a model
 * whose every layer slides accepting freed blocks (-1) before a sequence's window, but no other;
 * and head_dim 256 (Gemma 2 and 3) on the tensor-core attention kernels. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "worker/backend/cuda/cuda_plan.h"

static struct model_config llama(void)
{
    return (struct model_config){.hidden_size = 4096, .intermediate_size = 14336, .n_heads = 32, .n_kv_heads = 8,
                                 .head_dim = 128, .vocab_size = 128256, .max_position = 8192, .n_layers = 2};
}

static struct cuda_plan_config config(const struct model_config *m)
{
    const struct cuda_options o = {0};
    struct cuda_plan_config c;
    cuda_plan_config_init(&c, m, &o, false, true, 132, 8192, 256, m->max_position / 16 + 2);
    c.num_kv_blocks = 100000;
    return c;
}

/* n decode tokens at position pos; blocks before first_block are -1 (freed). */
static int plan(const struct cuda_plan_config *c, int n, int pos, int first_block, struct cuda_step_plan *p,
                char *err, size_t errlen)
{
    static struct batch_seq seqs[256];
    static int32_t blocks[256][64], tokens[256];
    static const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    const int nb = pos / 16 + 1;
    for (int s = 0; s < n; s++) {
        seqs[s] = (struct batch_seq){.n_new = 1, .start_pos = pos, .block_table = blocks[s], .n_blocks = nb,
                                     .sample = true, .sampling = &greedy};
        for (int k = 0; k < nb; k++) blocks[s][k] = k < first_block ? -1 : k;
        tokens[s] = 1;
    }
    struct batch b = {.n_seqs = n, .seqs = seqs, .n_tokens = n, .tokens = tokens};
    return cuda_plan_step(c, &b, 0, 0, p, err, errlen);
}

static struct cuda_step_plan plan_ok(const struct cuda_plan_config *c, int n)
{
    struct cuda_step_plan p;
    char err[256];
    cr_assert_eq(plan(c, n, 191, 0, &p, err, sizeof err), 0, "%s", err);
    return p;
}

Test(cuda_plan_family, a_plain_llama_keeps_its_choices)
{
    const struct model_config m = llama();
    struct cuda_plan_config c = config(&m);
    cr_expect(c.gu_interleaved && !c.plain_mlp && !c.seq_rope && c.all_sliding_window == 0);
    struct cuda_step_plan p = plan_ok(&c, 64);
    cr_expect_float_eq(p.attn.scale, 1.0f / sqrtf(128.0f), 1e-7f);
    cr_expect_eq(p.attn.softcap, 0.0f);
    cr_expect(p.fused_qkv, "64 decode tokens take the fused qkv attention");
    cr_expect_eq(p.seq_rope_half, 0);
    cr_expect_neq(p.mlp.kind, CUDA_MLP_FP32, "batch 64 takes a fused SwiGLU kind");
}

Test(cuda_plan_family, attention_scale_and_softcap)
{
    struct model_config m = llama();
    m.fam.attn_scale = 0.0625f; /* Gemma 2's query_pre_attn_scalar 256 */
    m.fam.attn_softcap = 50.0f;
    struct cuda_plan_config c = config(&m);
    struct cuda_step_plan p = plan_ok(&c, 8);
    cr_expect_float_eq(p.attn.scale, 0.0625f, 1e-9f);
    cr_expect_float_eq(p.attn.softcap, 50.0f, 1e-9f);
    /* YaRN multiplies cos and sin by its factor: q.k by its square. */
    m = llama();
    m.rope_scaling.type = ROPE_SCALING_YARN;
    m.fam.rope_attn_factor = 1.2f;
    c = config(&m);
    p = plan_ok(&c, 8);
    cr_expect_float_eq(p.attn.scale, 1.44f / sqrtf(128.0f), 1e-6f);
    cr_expect(!c.seq_rope, "YaRN's frequencies are static");
}

Test(cuda_plan_family, mlp_bias_and_geglu_take_the_plain_mlp)
{
    for (int which = 0; which < 2; which++) {
        struct model_config m = llama();
        if (which) m.fam.act = MODEL_ACT_GELU_TANH;
        else m.fam.mlp_bias = true;
        struct cuda_plan_config c = config(&m);
        cr_expect(c.plain_mlp && !c.gu_interleaved, "%s: gate and up rows stay apart", which ? "GeGLU" : "mlp_bias");
        for (int n = 1; n <= 256; n *= 4) {
            struct cuda_step_plan p = plan_ok(&c, n);
            cr_expect_eq(p.mlp.kind, CUDA_MLP_FP32, "%s, batch %d: gate/up in fp32, then sk_glu",
                         which ? "GeGLU" : "mlp_bias", n);
        }
    }
}

Test(cuda_plan_family, per_sequence_rope_stays_off_the_fused_attention)
{
    const enum rope_scaling_type types[] = {ROPE_SCALING_LONGROPE, ROPE_SCALING_DYNAMIC};
    for (int i = 0; i < 2; i++) {
        struct model_config m = llama();
        m.rope_scaling.type = types[i];
        struct cuda_plan_config c = config(&m);
        cr_expect(c.seq_rope);
        struct cuda_step_plan p = plan_ok(&c, 64);
        cr_expect(!p.fused_qkv, "qkv_post reads each sequence's frequencies; the fused attention cannot");
        cr_expect_eq(p.seq_rope_half, 64);
    }
}

Test(cuda_plan_family, whole_projection_qk_norms_stay_off_the_fused_attention)
{
    struct model_config m = llama();
    m.qk_norm = true;
    m.fam.qk_norm_full = true;
    struct cuda_plan_config c = config(&m);
    cr_expect(c.qk_norm_full);
    struct cuda_step_plan p = plan_ok(&c, 64);
    cr_expect(!p.fused_qkv, "sk_qkv_norm_full runs before qkv_post; the fused attention would skip it");
    m.fam.qk_norm_full = false;
    c = config(&m);
    p = plan_ok(&c, 64);
    cr_expect(p.fused_qkv, "per-head q/k norms (Qwen3) keep the fused attention");
}

Test(cuda_plan_family, freed_blocks_only_before_an_all_sliding_window)
{
    struct model_config m = llama();
    m.fam.sliding_window = 64;
    m.fam.all_sliding = true;
    struct cuda_plan_config c = config(&m);
    cr_expect_eq(c.all_sliding_window, 64);
    struct cuda_step_plan p;
    char err[256] = "";
    /* Position 191 sees keys 128..191: blocks 0..7 are wholly before it. */
    cr_expect_eq(plan(&c, 4, 191, 8, &p, err, sizeof err), 0, "%s", err);
    cr_expect_lt(plan(&c, 4, 191, 9, &p, err, sizeof err), 0, "block 8 is inside the window");
    cr_expect(strstr(err, "block id -1") != NULL, "%s", err);
    /* A model whose layers do not all slide reads every block. */
    m.fam.all_sliding = false;
    c = config(&m);
    cr_expect_lt(plan(&c, 4, 191, 1, &p, err, sizeof err), 0, "block 0 is read by the global layers");
}

Test(cuda_plan_family, an_all_sliding_window_bounds_the_decode_splits)
{
    /* One token at position 1000 with a 256-key window reads 256 keys: ranges of at least ~128
     * keys make 2 splits at most, where the whole context would take more. */
    struct model_config m = llama();
    m.fam.sliding_window = 256;
    m.fam.all_sliding = true;
    struct cuda_plan_config c = config(&m);
    struct cuda_step_plan p;
    char err[256] = "";
    cr_assert_eq(plan(&c, 1, 1000, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_leq(p.attn.n_splits, 2, "a 256-key window: %d splits", p.attn.n_splits);
    cr_expect_eq(p.attn_sliding.n_splits, p.attn.n_splits);
    m.fam.all_sliding = false; /* the global layers read all 1001 keys */
    c = config(&m);
    cr_assert_eq(plan(&c, 1, 1000, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_gt(p.attn.n_splits, 2, "1001 keys: %d splits", p.attn.n_splits);
}

Test(cuda_plan_family, alternating_windows_split_each_kind_of_layer_by_what_it_reads)
{
    /* Gemma 2: a 256-key window on every other layer. At position 1000 its sliding layers read
     * 256 keys (2 splits at most), its global layers 1001 (more); under 256 keys both agree. */
    struct model_config m = llama();
    m.fam.sliding_window = 256;
    m.fam.layer_sliding[0] = 0x55; /* layers 0, 2, 4, 6 */
    struct cuda_plan_config c = config(&m);
    cr_expect_eq(c.all_sliding_window, 0);
    struct cuda_step_plan p;
    char err[256] = "";
    cr_assert_eq(plan(&c, 1, 1000, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_leq(p.attn_sliding.n_splits, 2, "sliding layers: %d splits", p.attn_sliding.n_splits);
    cr_expect_gt(p.attn.n_splits, 2, "global layers: %d splits", p.attn.n_splits);
    cr_expect_eq(p.attn_sliding.n_tokens, p.attn.n_tokens);
    cr_expect_eq(p.attn_sliding.bt_stride, p.attn.bt_stride);
    cr_assert_eq(plan(&c, 1, 100, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_eq(p.attn_sliding.n_splits, p.attn.n_splits);
    cr_expect_eq(p.attn_sliding.split_len, p.attn.split_len);
    /* --deterministic keeps its fixed ranges in both. */
    c.deterministic = true;
    c.det_split_len = 256;
    cr_assert_eq(plan(&c, 1, 1000, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_eq(p.attn_sliding.n_splits, p.attn.n_splits);
    cr_expect_eq(p.attn_sliding.split_len, p.attn.split_len);
}

Test(cuda_plan_family, head_dim_256_takes_the_tensor_core_attention)
{
    /* Gemma 2 9B's attention (16 query heads, 8 kv heads, head_dim 256, soft-capped, a window on
     * every other layer): prompts take the tensor-core tiles and decode the streaming kernel,
     * which has about 2 blocks an SM at this head_dim (4 at 128), so batch 16 at 1024 keys splits
     * its 128 blocks in 2 where head_dim 128 splits them in 4. The fused qkv attention stays at
     * head_dim 128. prefill_mma=0 sends prompts to the streaming kernel. */
    struct model_config m = llama();
    m.hidden_size = 3584;
    m.n_heads = 16;
    m.n_kv_heads = 8;
    m.head_dim = 256;
    m.vocab_size = 256000;
    m.fam.attn_scale = 0.0625f;
    m.fam.attn_softcap = 50.0f;
    m.fam.sliding_window = 4096;
    m.fam.layer_sliding[0] = 0x55;
    struct cuda_plan_config c = config(&m);
    cr_expect(c.prefill_mma);
    struct batch_seq chunk = {.n_new = 100, .start_pos = 0, .prompt = true};
    cr_expect(cuda_plan_takes_tiles(&c, &chunk));
    struct cuda_step_plan p;
    char err[256] = "";
    cr_assert_eq(plan(&c, 16, 1023, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_eq(p.attn_kernel, SK_ATTN_DECODE_STREAM);
    cr_expect_eq(p.attn.n_splits, 2, "head_dim 256, batch 16 x 1024 keys: %d splits", p.attn.n_splits);
    cr_expect_eq(p.attn_sliding.n_splits, 2);
    cr_expect(!p.fused_qkv);
    p = plan_ok(&c, 64);
    cr_expect(!p.fused_qkv, "64 decode tokens at head_dim 256 keep qkv_post");
    /* The same at head_dim 128 (Gemma's 16 heads otherwise): 4 splits. */
    struct model_config m128 = m;
    m128.head_dim = 128;
    struct cuda_plan_config c128 = config(&m128);
    cr_assert_eq(plan(&c128, 16, 1023, 0, &p, err, sizeof err), 0, "%s", err);
    cr_expect_eq(p.attn.n_splits, 4, "head_dim 128, batch 16 x 1024 keys: %d splits", p.attn.n_splits);
    /* GQA groups of 1, 4 and 8 take the streaming kernel too; 16 does not. */
    const int kv[] = {16, 4, 2, 1};
    for (int i = 0; i < 4; i++) {
        struct model_config g = m;
        g.n_kv_heads = kv[i];
        struct cuda_plan_config cg = config(&g);
        cr_assert_eq(plan(&cg, 4, 500, 0, &p, err, sizeof err), 0, "%s", err);
        cr_expect_eq(p.attn_kernel, kv[i] > 1 ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD, "%d kv heads", kv[i]);
    }
    const struct cuda_options off = {.no_prefill_mma = true};
    cuda_plan_config_init(&c, &m, &off, false, true, 132, 8192, 256, m.max_position / 16 + 2);
    c.num_kv_blocks = 100000;
    cr_expect(!c.prefill_mma && !cuda_plan_takes_tiles(&c, &chunk));
}
