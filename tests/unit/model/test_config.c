/* config.json parsing: the Llama, Qwen2 and Qwen3 switches, rope scaling, eos ids, and
 * refusals that name the file and the field. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/model.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/sluice-cfg-XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void remove_dir(void)
{
    char p[128];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    unlink(p);
    rmdir(dir);
}

TestSuite(config, .init = make_dir, .fini = remove_dir);

static void write_file(const char *name, const char *text)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
}

static int parse(const char *json, struct model_config *c, char *err, size_t errlen)
{
    write_file("config.json", json);
    char p[128];
    snprintf(p, sizeof p, "%s/config.json", dir);
    return model_config_from_json(c, p, err, errlen);
}

Test(config, llama3_rope_scaling_and_eos_list)
{
    struct model_config c;
    char err[512] = "";
    int rc = parse("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,\"intermediate_size\":14336,"
                   "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                   "\"vocab_size\":128256,\"max_position_embeddings\":131072,\"rms_norm_eps\":1e-05,"
                   "\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,"
                   "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},"
                   "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009],\"torch_dtype\":\"bfloat16\","
                   "\"tie_word_embeddings\":false}",
                   &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_eq(c.arch, MODEL_ARCH_LLAMA);
    cr_expect_str_eq(c.arch_name, "LlamaForCausalLM");
    cr_expect_eq(c.hidden_size, 4096);
    cr_expect_eq(c.intermediate_size, 14336);
    cr_expect_eq(c.n_layers, 32);
    cr_expect_eq(c.n_heads, 32);
    cr_expect_eq(c.n_kv_heads, 8);
    cr_expect_eq(c.head_dim, 128);
    cr_expect_eq(c.vocab_size, 128256);
    cr_expect_eq(c.max_position, 131072);
    cr_expect_float_eq(c.rms_eps, 1e-5f, 1e-12f);
    cr_expect_float_eq(c.rope_theta, 500000.0f, 1e-3f);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LLAMA3);
    cr_expect_float_eq(c.rope_scaling.factor, 8.0f, 1e-6f);
    cr_expect_float_eq(c.rope_scaling.low_freq_factor, 1.0f, 1e-6f);
    cr_expect_float_eq(c.rope_scaling.high_freq_factor, 4.0f, 1e-6f);
    cr_expect_eq(c.rope_scaling.original_max_position, 8192);
    cr_expect_eq(c.bos_id, 128000);
    cr_expect_eq(c.n_eos, 3);
    cr_expect_eq(c.eos_ids[0], 128001);
    cr_expect_eq(c.eos_ids[2], 128009);
    cr_expect_eq(c.dtype, DTYPE_BF16);
    cr_expect_not(c.tie_embeddings);
    cr_expect_not(c.qkv_bias);
    cr_expect_not(c.qk_norm);
    cr_expect_not(c.rope_interleaved);
}

Test(config, qwen2_bias_tied_linear_scaling_and_generation_config)
{
    struct model_config c;
    char err[512] = "";
    write_file("generation_config.json", "{\"eos_token_id\":[151645,151643],\"bos_token_id\":151643}");
    int rc = parse("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":896,\"intermediate_size\":4864,"
                   "\"num_hidden_layers\":24,\"num_attention_heads\":14,\"num_key_value_heads\":2,"
                   "\"vocab_size\":151936,\"rope_theta\":1000000.0,\"tie_word_embeddings\":true,"
                   "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},"
                   "\"eos_token_id\":151643,\"bos_token_id\":null,\"torch_dtype\":\"float16\"}",
                   &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_eq(c.arch, MODEL_ARCH_QWEN2);
    cr_expect(c.qkv_bias);
    cr_expect_not(c.qk_norm);
    cr_expect(c.tie_embeddings);
    cr_expect_eq(c.head_dim, 64);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LINEAR);
    cr_expect_float_eq(c.rope_scaling.factor, 2.0f, 1e-6f);
    cr_expect_eq(c.dtype, DTYPE_F16);
    /* config.json's 151643 and generation_config.json's two, without repeats. */
    cr_expect_eq(c.n_eos, 2);
    cr_expect_eq(c.eos_ids[0], 151643);
    cr_expect_eq(c.eos_ids[1], 151645);
    cr_expect_eq(c.bos_id, 151643, "bos from generation_config.json when config.json has none");
    cr_expect_eq(c.max_position, 2048, "default context length");
}

Test(config, qwen3_head_dim_from_config_and_qk_norm)
{
    struct model_config c;
    char err[512] = "";
    int rc = parse("{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":1024,\"intermediate_size\":3072,"
                   "\"num_hidden_layers\":28,\"num_attention_heads\":16,\"num_key_value_heads\":8,"
                   "\"head_dim\":128,\"vocab_size\":151936,\"max_position_embeddings\":40960,"
                   "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000,\"eos_token_id\":151645,"
                   "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\"}",
                   &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_eq(c.arch, MODEL_ARCH_QWEN3);
    cr_expect(c.qk_norm);
    cr_expect_not(c.qkv_bias);
    cr_expect_eq(c.head_dim, 128, "head_dim comes from config.json, not hidden/heads = 64");
    cr_expect_float_eq(c.rope_theta, 1e6f, 1.0f);
    cr_expect_eq(c.n_eos, 1);
    cr_expect_eq(c.bos_id, -1);
}

Test(config, model_type_when_architectures_absent)
{
    struct model_config c;
    char err[512] = "";
    int rc = parse("{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,"
                   "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}",
                   &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_str_eq(c.arch_name, "MistralForCausalLM");
    cr_expect_eq(c.n_kv_heads, 4, "num_key_value_heads defaults to num_attention_heads");
    cr_expect_eq(c.head_dim, 16);
}

struct bad_case {
    const char *json;
    const char *field; /* must appear in the message */
};

Test(config, refusals_name_the_file_and_field)
{
    static const struct bad_case cases[] = {
        {"{", "config.json"},
        {"[1,2]", "not a JSON object"},
        {"{\"architectures\":[\"GPT2LMHeadModel\"],\"hidden_size\":64}", "GPT2LMHeadModel"},
        {"{\"hidden_size\":64}", "architectures"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"intermediate_size\":1,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":1,\"vocab_size\":10}", "hidden_size"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\",\"intermediate_size\":1,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":1,\"vocab_size\":10}", "hidden_size"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":10}",
         "num_key_value_heads"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":6,\"vocab_size\":10}", "num_attention_heads"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":0,\"num_attention_heads\":4,\"vocab_size\":10}", "num_hidden_layers"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,"
         "\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":4}}", "short_factor"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,"
         "\"rope_scaling\":{\"rope_type\":\"ntk-by-parts\",\"factor\":4}}", "rope_scaling"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,"
         "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}", "rope_scaling"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,\"eos_token_id\":\"x\"}",
         "eos_token_id"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,\"torch_dtype\":\"int8\"}",
         "torch_dtype"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":10,\"partial_rotary_factor\":0.5}",
         "partial_rotary_factor"},
        {"{\"architectures\":[\"PaliGemmaForConditionalGeneration\"],\"hidden_size\":64}", "Gemma2ForCausalLM"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct model_config c;
        char err[512] = "";
        cr_expect_lt(parse(cases[i].json, &c, err, sizeof err), 0, "case %zu accepted: %s", i, cases[i].json);
        cr_expect(strstr(err, "config.json") != NULL, "case %zu: message lacks the file: %s", i, err);
        cr_expect(strstr(err, cases[i].field) != NULL, "case %zu: message lacks '%s': %s", i, cases[i].field, err);
    }
    struct model_config c;
    char err[512] = "";
    cr_expect_lt(model_config_from_json(&c, "/nonexistent/config.json", err, sizeof err), 0);
    cr_expect(strstr(err, "/nonexistent/config.json") != NULL, "%s", err);
}

Test(config, transformers5_rope_parameters)
{
    struct model_config c;
    char err[512] = "";
    int rc = parse("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":2048,\"intermediate_size\":8192,"
                   "\"num_hidden_layers\":16,\"num_attention_heads\":32,\"num_key_value_heads\":8,\"head_dim\":64,"
                   "\"vocab_size\":128256,\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"llama3\","
                   "\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                   "\"original_max_position_embeddings\":8192},\"dtype\":\"bfloat16\"}",
                   &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_float_eq(c.rope_theta, 500000.0f, 1e-2f);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LLAMA3);
    cr_expect_float_eq(c.rope_scaling.factor, 32.0f, 1e-6f);
    cr_expect_eq(c.head_dim, 64);
    cr_expect_eq(c.dtype, DTYPE_BF16);
}

/* Configs as the families' checkpoints on the Hub write them (transformers 4): the fields
 * transformers 5 adds (layer_types, nested rope_parameters) absent, defaults from the classes. */
Test(config, family_defaults_of_older_configs)
{
    struct model_config c;
    char err[512] = "";
    cr_assert_eq(parse("{\"architectures\":[\"Gemma2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                       "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"vocab_size\":10}", &c, err, sizeof err), 0,
                 "%s", err);
    cr_expect_eq(c.head_dim, 256);
    cr_expect(c.tie_embeddings);
    cr_expect_float_eq(c.fam.attn_softcap, 50.0f, 1e-6f);
    cr_expect_float_eq(c.fam.final_softcap, 30.0f, 1e-6f);
    cr_expect_eq(c.fam.sliding_window, 4096);
    cr_expect(model_layer_sliding(&c.fam, 0) && !model_layer_sliding(&c.fam, 1) && model_layer_sliding(&c.fam, 2));
    cr_expect_float_eq(c.fam.attn_scale, 1.0f / 16.0f, 1e-7f);
    cr_assert_eq(parse("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                       "\"num_hidden_layers\":12,\"num_attention_heads\":4,\"head_dim\":16,\"vocab_size\":10,"
                       "\"sliding_window\":512,\"sliding_window_pattern\":6,\"rope_local_base_freq\":10000.0,"
                       "\"rope_theta\":1000000.0,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0},"
                       "\"final_logit_softcapping\":null,\"attn_logit_softcapping\":null}", &c, err, sizeof err), 0,
                 "%s", err);
    for (int l = 0; l < 12; l++) cr_expect_eq(model_layer_sliding(&c.fam, l), l != 5 && l != 11, "layer %d", l);
    cr_expect(c.qk_norm && c.fam.norm_plus_one && c.fam.attn_softcap == 0 && c.fam.final_softcap == 0);
    cr_expect_float_eq(c.rope_theta, 1e6f, 1.0f);
    cr_expect_float_eq(c.fam.local_rope_theta, 1e4f, 1e-2f);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LINEAR);
    cr_assert_eq(parse("{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                       "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":10,\"sliding_window\":null}",
                       &c, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.fam.sliding_window, 0);
    cr_assert_eq(parse("{\"architectures\":[\"Phi3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                       "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":10,"
                       "\"max_position_embeddings\":131072,\"original_max_position_embeddings\":4096,"
                       "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,1],"
                       "\"long_factor\":[2,2,2,2,2,2,2,2]}}", &c, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LONGROPE);
    cr_expect_eq(c.rope_scaling.original_max_position, 4096);
    cr_expect_float_eq(c.fam.rope_attn_factor, 1.1902381f, 1e-6f); /* sqrt(1 + ln 32 / ln 4096) */
    cr_expect_float_eq(c.rms_eps, 1e-5f, 1e-12f);
}

/* Gemma 3 4B's config.json as the Hub has it: the language model's fields in text_config, most
 * left to Gemma3TextConfig's defaults. */
Test(config, gemma3_multimodal_checkpoint_as_text)
{
    struct model_config c;
    char err[512] = "";
    cr_assert_eq(parse("{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"eos_token_id\":[1,106],"
                       "\"model_type\":\"gemma3\",\"text_config\":{\"hidden_size\":2560,\"intermediate_size\":10240,"
                       "\"model_type\":\"gemma3_text\",\"num_hidden_layers\":34,\"rope_scaling\":{\"factor\":8.0,"
                       "\"rope_type\":\"linear\"},\"sliding_window\":1024},\"vision_config\":{\"hidden_size\":1152}}",
                       &c, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.arch_name, "Gemma3ForConditionalGeneration");
    cr_expect_eq(c.n_heads, 8);
    cr_expect_eq(c.n_kv_heads, 4);
    cr_expect_eq(c.head_dim, 256);
    cr_expect_eq(c.vocab_size, 262208);
    cr_expect_eq(c.hidden_size, 2560);
    cr_expect(c.tie_embeddings && c.qk_norm && c.fam.norm_plus_one);
    cr_expect_eq(c.rope_scaling.type, ROPE_SCALING_LINEAR);
    cr_expect_float_eq(c.rope_scaling.factor, 8.0f, 1e-6f);
    cr_expect_float_eq(c.rope_theta, 1e6f, 1.0f);
    cr_expect_eq(c.fam.sliding_window, 1024);
    for (int l = 0; l < 34; l++) cr_expect_eq(model_layer_sliding(&c.fam, l), (l + 1) % 6 != 0, "layer %d", l);
    cr_expect_eq(c.n_eos, 2);
    cr_expect_float_eq(c.fam.attn_scale, 1.0f / 16.0f, 1e-7f);
}
