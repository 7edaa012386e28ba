/* Mixture-of-experts configs: the fields of Mixtral, Qwen2-MoE and Qwen3-MoE, which layers are
 * sparse, the refusals (sliding windows, Qwen3-MoE attention_bias, top-k beyond the experts),
 * and --load-format dummy at the benchmark's shapes (Mixtral 8x7B with 2 layers, Qwen3-30B-A3B
 * with 4): every expert tensor shaped, none read. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/model.h"
#include "worker/model/model_moe.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/sluice-moecfg-XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void remove_dir(void)
{
    char p[128];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

TestSuite(moe_config, .init = make_dir, .fini = remove_dir);

static const char *write_config(const char *text)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return p;
}

#define MIXTRAL_8X7B_2L                                                                                             \
    "{\"architectures\": [\"MixtralForCausalLM\"], \"hidden_size\": 4096, \"intermediate_size\": 14336, "          \
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"vocab_size\": 32000, "   \
    "\"max_position_embeddings\": 32768, \"num_local_experts\": 8, \"num_experts_per_tok\": 2, "                  \
    "\"rope_theta\": 1000000.0, \"torch_dtype\": \"bfloat16\", \"sliding_window\": %s}"

#define QWEN3_30B_A3B_4L                                                                                            \
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"hidden_size\": 2048, \"intermediate_size\": 6144, "          \
    "\"num_hidden_layers\": 4, \"num_attention_heads\": 32, \"num_key_value_heads\": 4, \"head_dim\": 128, "       \
    "\"vocab_size\": 151936, \"max_position_embeddings\": 40960, \"num_experts\": 128, "                          \
    "\"num_experts_per_tok\": 8, \"moe_intermediate_size\": 768, \"norm_topk_prob\": true, "                      \
    "\"decoder_sparse_step\": 1, \"mlp_only_layers\": [], \"attention_bias\": %s, \"torch_dtype\": \"bfloat16\"}"

Test(moe_config, mixtral_8x7b_shapes_load_as_dummy)
{
    char text[1024], err[512] = "";
    snprintf(text, sizeof text, MIXTRAL_8X7B_2L, "null");
    write_config(text);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    const struct model_config *c = &m->config;
    cr_assert_str_eq(c->arch_name, "MixtralForCausalLM");
    cr_assert_eq(c->arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(c->moe.n_experts, 8);
    cr_assert_eq(c->moe.top_k, 2);
    cr_assert_eq(c->moe.expert_intermediate, 14336);
    cr_assert(c->moe.norm_topk_prob);
    cr_assert_eq(c->moe.shared_intermediate, 0);
    uint64_t ids[64];
    int n_ids = 0;
    for (int l = 0; l < 2; l++) {
        const struct moe_weights *w = m->layers[l].moe;
        cr_assert(w && model_layer_is_moe(c, l));
        cr_assert_eq(m->layers[l].w_gate.ndim, 0);
        cr_assert_eq(w->router.shape[0], 8);
        cr_assert_eq(w->router.shape[1], 4096);
        ids[n_ids++] = w->router.dummy_id;
        for (int e = 0; e < 8; e++) {
            cr_assert(!w->gate[e].data && !w->up[e].data && !w->down[e].data);
            cr_assert_eq(w->gate[e].shape[0], 14336);
            cr_assert_eq(w->gate[e].shape[1], 4096);
            cr_assert_eq(w->up[e].shape[0], 14336);
            cr_assert_eq(w->down[e].shape[0], 4096);
            cr_assert_eq(w->down[e].shape[1], 14336);
            ids[n_ids++] = w->gate[e].dummy_id;
            ids[n_ids++] = w->down[e].dummy_id;
        }
        cr_assert_eq(w->shared_gate_proj.ndim, 0);
    }
    /* Distinct dummy ids: every expert gets its own random weights. */
    for (int i = 0; i < n_ids; i++)
        for (int j = i + 1; j < n_ids; j++) cr_assert_neq(ids[i], ids[j]);
    model_free(m);
}

Test(moe_config, mixtral_sliding_window_is_refused)
{
    char text[1024], err[512] = "";
    snprintf(text, sizeof text, MIXTRAL_8X7B_2L, "4096");
    struct model_config c;
    cr_assert_lt(model_config_from_json(&c, write_config(text), err, sizeof err), 0);
    cr_assert(strstr(err, "sliding_window") && strstr(err, "MixtralForCausalLM") && strstr(err, "config.json"), "%s",
              err);
    /* A window as long as the context is no window. */
    snprintf(text, sizeof text, MIXTRAL_8X7B_2L, "32768");
    cr_assert_eq(model_config_from_json(&c, write_config(text), err, sizeof err), 0, "%s", err);
}

Test(moe_config, qwen3_30b_a3b_shapes_load_as_dummy)
{
    char text[1024], err[512] = "";
    snprintf(text, sizeof text, QWEN3_30B_A3B_4L, "false");
    write_config(text);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    const struct model_config *c = &m->config;
    cr_assert_eq(c->arch, MODEL_ARCH_QWEN3);
    cr_assert(c->qk_norm && !c->qkv_bias);
    cr_assert_eq(c->head_dim, 128);
    cr_assert_eq(c->moe.n_experts, 128);
    cr_assert_eq(c->moe.top_k, 8);
    cr_assert_eq(c->moe.expert_intermediate, 768);
    cr_assert(c->moe.norm_topk_prob);
    for (int l = 0; l < 4; l++) {
        const struct moe_weights *w = m->layers[l].moe;
        cr_assert(w);
        cr_assert_eq(w->gate[127].shape[0], 768);
        cr_assert_eq(w->gate[127].shape[1], 2048);
        cr_assert_eq(w->down[127].shape[0], 2048);
        cr_assert_eq(w->down[127].shape[1], 768);
    }
    model_free(m);
}

Test(moe_config, qwen3_moe_attention_bias_is_refused)
{
    char text[1024], err[512] = "";
    snprintf(text, sizeof text, QWEN3_30B_A3B_4L, "true");
    struct model_config c;
    cr_assert_lt(model_config_from_json(&c, write_config(text), err, sizeof err), 0);
    cr_assert(strstr(err, "attention_bias") && strstr(err, "Qwen3MoeForCausalLM"), "%s", err);
}

#define QWEN2_MOE                                                                                                  \
    "{\"architectures\": [\"Qwen2MoeForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 96, "              \
    "\"num_hidden_layers\": 6, \"num_attention_heads\": 4, \"vocab_size\": 256, \"num_experts\": 8, "             \
    "\"num_experts_per_tok\": %d, \"moe_intermediate_size\": 16, \"shared_expert_intermediate_size\": 24, "       \
    "\"decoder_sparse_step\": 2, \"mlp_only_layers\": %s, \"use_sliding_window\": %s}"

Test(moe_config, qwen2_moe_sparse_layers)
{
    char text[1024], err[512] = "";
    snprintf(text, sizeof text, QWEN2_MOE, 4, "[3]", "false");
    struct model_config c;
    cr_assert_eq(model_config_from_json(&c, write_config(text), err, sizeof err), 0, "%s", err);
    cr_assert(c.qkv_bias);
    cr_assert(!c.moe.norm_topk_prob);
    cr_assert_eq(c.moe.shared_intermediate, 24);
    /* (l + 1) % 2 == 0 and not in mlp_only_layers: layers 1 and 5. */
    bool want[6] = {false, true, false, false, false, true};
    for (int l = 0; l < 6; l++) cr_assert_eq(model_layer_is_moe(&c, l), want[l], "layer %d", l);
}

Test(moe_config, qwen2_moe_refusals)
{
    char text[1024], err[512] = "";
    struct model_config c;
    snprintf(text, sizeof text, QWEN2_MOE, 4, "[3]", "true");
    cr_assert_lt(model_config_from_json(&c, write_config(text), err, sizeof err), 0);
    cr_assert(strstr(err, "use_sliding_window"), "%s", err);
    snprintf(text, sizeof text, QWEN2_MOE, 9, "[3]", "false");
    cr_assert_lt(model_config_from_json(&c, write_config(text), err, sizeof err), 0);
    cr_assert(strstr(err, "num_experts_per_tok"), "%s", err);
    snprintf(text, sizeof text, QWEN2_MOE, 2, "[\"x\"]", "false");
    cr_assert_lt(model_config_from_json(&c, write_config(text), err, sizeof err), 0);
    cr_assert(strstr(err, "mlp_only_layers"), "%s", err);
}

Test(moe_config, dense_models_have_no_experts)
{
    char err[512] = "";
    struct model_config c;
    cr_assert_eq(model_config_from_json(&c,
                                        write_config("{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": 64, "
                                                     "\"intermediate_size\": 96, \"num_hidden_layers\": 2, "
                                                     "\"num_attention_heads\": 4, \"vocab_size\": 256, "
                                                     "\"num_experts\": 8}"),
                                        err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.moe.n_experts, 0);
    cr_assert(!model_layer_is_moe(&c, 0));
}
