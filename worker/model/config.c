/* config.json (and generation_config.json) into struct model_config. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "worker/model/model.h"
#include "worker/model/model_internal.h"

/* Reads an integer field; absent or null leaves *out as it was. */
static int get_int(json_t *obj, const char *key, int *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < -2147483647LL ||
        json_integer_value(v) > 2147483647LL) {
        snprintf(err, errlen, "%s: field '%s' must be an integer", file, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_float(json_t *obj, const char *key, float *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        snprintf(err, errlen, "%s: field '%s' must be a number", file, key);
        return -1;
    }
    *out = (float)json_number_value(v);
    return 0;
}

static void add_eos(struct model_config *cfg, int id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id) return;
    if (cfg->n_eos < MODEL_MAX_EOS) cfg->eos_ids[cfg->n_eos++] = id;
}

/* eos_token_id: an integer or a list of them. */
static int get_eos(json_t *obj, struct model_config *cfg, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, "eos_token_id");
    if (!v || json_is_null(v)) return 0;
    if (json_is_integer(v)) {
        add_eos(cfg, (int)json_integer_value(v));
        return 0;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e)) goto bad;
            add_eos(cfg, (int)json_integer_value(e));
        }
        return 0;
    }
bad:
    snprintf(err, errlen, "%s: field 'eos_token_id' must be an integer or a list of integers", file);
    return -1;
}

int model_parse_rope_scaling(json_t *rs, json_t *root, struct model_config *cfg, const char *file, char *err,
                             size_t errlen)
{
    if (!rs || json_is_null(rs)) return 0;
    if (!json_is_object(rs)) {
        snprintf(err, errlen, "%s: field 'rope_scaling' must be an object", file);
        return -1;
    }
    /* transformers 5 moved rope_theta into rope_parameters beside the scaling fields. */
    if (get_float(rs, "rope_theta", &cfg->rope_theta, file, err, errlen)) return -1;
    json_t *t = json_object_get(rs, "rope_type");
    if (!t) t = json_object_get(rs, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (!type || !strcmp(type, "default")) return 0;
    cfg->rope_scaling.factor = 1.0f;
    if (get_float(rs, "factor", &cfg->rope_scaling.factor, file, err, errlen)) return -1;
    if (!strcmp(type, "llama3")) {
        cfg->rope_scaling.type = ROPE_SCALING_LLAMA3;
        cfg->rope_scaling.low_freq_factor = 1.0f;
        cfg->rope_scaling.high_freq_factor = 4.0f;
        if (get_float(rs, "low_freq_factor", &cfg->rope_scaling.low_freq_factor, file, err, errlen) ||
            get_float(rs, "high_freq_factor", &cfg->rope_scaling.high_freq_factor, file, err, errlen) ||
            get_int(rs, "original_max_position_embeddings", &cfg->rope_scaling.original_max_position,
                    file, err, errlen))
            return -1;
        return 0;
    }
    if (!strcmp(type, "linear")) {
        cfg->rope_scaling.type = ROPE_SCALING_LINEAR;
        return 0;
    }
    return model_rope_parse_variant(rs, root, type, cfg, file, err, errlen);
}

static int parse_dtype(json_t *root, struct model_config *cfg, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, "torch_dtype");
    if (!v || json_is_null(v)) v = json_object_get(root, "dtype");
    cfg->dtype = DTYPE_BF16;
    if (!v || json_is_null(v)) return 0;
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (!strcmp(s, "float32")) cfg->dtype = DTYPE_F32;
    else if (!strcmp(s, "float16")) cfg->dtype = DTYPE_F16;
    else if (!strcmp(s, "bfloat16")) cfg->dtype = DTYPE_BF16;
    else {
        snprintf(err, errlen, "%s: field 'torch_dtype' '%s' is not supported (float32, float16, bfloat16)",
                 file, s);
        return -1;
    }
    return 0;
}

static int parse_arch(json_t *root, struct model_config *cfg, const char *file, char *err, size_t errlen)
{
    const char *name = NULL;
    json_t *archs = json_object_get(root, "architectures");
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        name = json_string_value(json_array_get(archs, 0));
    json_t *mt = json_object_get(root, "model_type");
    const char *model_type = json_is_string(mt) ? json_string_value(mt) : NULL;
    if (!name && model_type) {
        if (!strcmp(model_type, "llama")) name = "LlamaForCausalLM";
        else if (!strcmp(model_type, "mistral")) name = "MistralForCausalLM";
        else if (!strcmp(model_type, "qwen2")) name = "Qwen2ForCausalLM";
        else if (!strcmp(model_type, "qwen3")) name = "Qwen3ForCausalLM";
        else if (!strcmp(model_type, "mixtral")) name = "MixtralForCausalLM";
        else if (!strcmp(model_type, "qwen2_moe")) name = "Qwen2MoeForCausalLM";
        else if (!strcmp(model_type, "qwen3_moe")) name = "Qwen3MoeForCausalLM";
        else name = model_family_arch_for_type(model_type);
    }
    if (!name) {
        snprintf(err, errlen, "%s: field 'architectures' is missing (and no known 'model_type')", file);
        return -1;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", name);
    if (model_family_arch_known(name)) {
        cfg->arch = MODEL_ARCH_LLAMA;
    } else if (!strcmp(name, "Qwen2ForCausalLM")) {
        cfg->arch = MODEL_ARCH_QWEN2;
        cfg->qkv_bias = true;
    } else if (!strcmp(name, "Qwen3ForCausalLM")) {
        cfg->arch = MODEL_ARCH_QWEN3;
        cfg->qk_norm = true;
    } else if (model_moe_arch(name, cfg)) { /* Mixtral, Qwen2-MoE, Qwen3-MoE: model_moe.c */
    } else {
        snprintf(err, errlen,
                 "%s: field 'architectures' names '%s', which is not supported "
                 "(LlamaForCausalLM, MistralForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, "
                 "Gemma3ForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, GraniteForCausalLM, Qwen2ForCausalLM, "
                 "Qwen3ForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM are)",
                 file, name);
        return -1;
    }
    return 0;
}

static void sibling_path(char *dst, size_t n, const char *file, const char *name)
{
    const char *slash = strrchr(file, '/');
    if (slash) snprintf(dst, n, "%.*s/%s", (int)(slash - file), file, name);
    else snprintf(dst, n, "%s", name);
}

int model_config_from_json(struct model_config *cfg, const char *json_path, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = -1;
    json_error_t jerr;
    json_t *gen = NULL;
    json_t *root = json_load_file(json_path, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s: cannot parse: %s (line %d)", json_path, jerr.text, jerr.line);
        return -1;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: not a JSON object", json_path);
        goto out;
    }
    json_t *text_root = model_family_text_root(root); /* Gemma 3's language model, config_family.c */
    if (text_root) {
        json_decref(root);
        root = text_root;
    }
    if (parse_arch(root, cfg, json_path, err, errlen)) goto out;
    cfg->n_heads = 0;
    cfg->max_position = 2048;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->bos_id = -1;
    static const char *required[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "vocab_size"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        if (!json_object_get(root, required[i])) {
            snprintf(err, errlen, "%s: field '%s' is missing", json_path, required[i]);
            goto out;
        }
    }
    if (get_int(root, "hidden_size", &cfg->hidden_size, json_path, err, errlen) ||
        get_int(root, "intermediate_size", &cfg->intermediate_size, json_path, err, errlen) ||
        get_int(root, "num_hidden_layers", &cfg->n_layers, json_path, err, errlen) ||
        get_int(root, "num_attention_heads", &cfg->n_heads, json_path, err, errlen) ||
        get_int(root, "vocab_size", &cfg->vocab_size, json_path, err, errlen) ||
        get_int(root, "max_position_embeddings", &cfg->max_position, json_path, err, errlen) ||
        get_float(root, "rms_norm_eps", &cfg->rms_eps, json_path, err, errlen) ||
        get_float(root, "rope_theta", &cfg->rope_theta, json_path, err, errlen) ||
        get_int(root, "bos_token_id", &cfg->bos_id, json_path, err, errlen))
        goto out;
    cfg->n_kv_heads = cfg->n_heads;
    if (get_int(root, "num_key_value_heads", &cfg->n_kv_heads, json_path, err, errlen)) goto out;
    cfg->head_dim = cfg->n_heads > 0 ? cfg->hidden_size / cfg->n_heads : 0;
    if (cfg->n_heads > 0 && cfg->arch != MODEL_ARCH_QWEN3 && !json_object_get(root, "head_dim") &&
        cfg->hidden_size % cfg->n_heads != 0) {
        snprintf(err, errlen, "%s: hidden_size %d is not a multiple of num_attention_heads %d", json_path,
                 cfg->hidden_size, cfg->n_heads);
        goto out;
    }
    if (get_int(root, "head_dim", &cfg->head_dim, json_path, err, errlen)) goto out;
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_null(tie)) {
        if (!json_is_boolean(tie)) {
            snprintf(err, errlen, "%s: field 'tie_word_embeddings' must be a boolean", json_path);
            goto out;
        }
        cfg->tie_embeddings = json_is_true(tie);
    }
    if (model_parse_rope_scaling(json_object_get(root, "rope_scaling"), root, cfg, json_path, err, errlen)) goto out;
    if (cfg->rope_scaling.type == ROPE_SCALING_NONE &&
        model_parse_rope_scaling(json_object_get(root, "rope_parameters"), root, cfg, json_path, err, errlen))
        goto out;
    if (model_config_family(cfg, root, json_path, err, errlen)) goto out;
    if (parse_dtype(root, cfg, json_path, err, errlen)) goto out;
    if (model_moe_config_from_json(root, cfg, json_path, err, errlen)) goto out;
    if (get_eos(root, cfg, json_path, err, errlen)) goto out;

    /* generation_config.json decides what generation stops on in Hugging Face; its ids join
     * config.json's. */
    char gen_path[4200];
    sibling_path(gen_path, sizeof gen_path, json_path, "generation_config.json");
    gen = json_load_file(gen_path, 0, &jerr);
    if (gen && json_is_object(gen)) {
        if (get_eos(gen, cfg, gen_path, err, errlen)) goto out;
        if (cfg->bos_id < 0 && get_int(gen, "bos_token_id", &cfg->bos_id, gen_path, err, errlen)) goto out;
    }
    cfg->rope_interleaved = false;
    if (model_config_validate(cfg, json_path, err, errlen)) goto out;
    rc = 0;
out:
    json_decref(gen);
    json_decref(root);
    return rc;
}
