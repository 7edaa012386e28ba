/* config.json's fields for the families of model_family.h and the rope variants dynamic, yarn
 * and longrope, with the defaults of transformers' configuration classes (a config.json that
 * transformers saved leaves out the fields equal to them). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "worker/model/model.h"
#include "worker/model/model_internal.h"

enum family { FAM_OTHER = 0, FAM_LLAMA, FAM_MISTRAL, FAM_GEMMA, FAM_GEMMA2, FAM_GEMMA3, FAM_PHI3, FAM_OLMO2, FAM_GRANITE };

static const struct { const char *arch, *model_type; enum family fam; } families[] = {
    {"LlamaForCausalLM", "llama", FAM_LLAMA},
    {"MistralForCausalLM", "mistral", FAM_MISTRAL},
    {"GemmaForCausalLM", "gemma", FAM_GEMMA},
    {"Gemma2ForCausalLM", "gemma2", FAM_GEMMA2},
    {"Gemma3ForCausalLM", "gemma3_text", FAM_GEMMA3},
    {"Gemma3ForConditionalGeneration", "gemma3", FAM_GEMMA3}, /* its text_config, text only */
    {"Phi3ForCausalLM", "phi3", FAM_PHI3},
    {"Olmo2ForCausalLM", "olmo2", FAM_OLMO2},
    {"GraniteForCausalLM", "granite", FAM_GRANITE},
};

static enum family family_of(const char *arch)
{
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (!strcmp(arch, families[i].arch)) return families[i].fam;
    return FAM_OTHER;
}

const char *model_family_arch_for_type(const char *model_type)
{
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (!strcmp(model_type, families[i].model_type)) return families[i].arch;
    return NULL;
}

bool model_family_arch_known(const char *arch)
{
    return family_of(arch) != FAM_OTHER;
}

json_t *model_family_text_root(json_t *root)
{
    json_t *archs = json_object_get(root, "architectures"), *mt = json_object_get(root, "model_type");
    const char *arch = json_is_string(json_array_get(archs, 0)) ? json_string_value(json_array_get(archs, 0)) : NULL;
    bool g3 = arch ? !strcmp(arch, "Gemma3ForConditionalGeneration")
                   : json_is_string(mt) && !strcmp(json_string_value(mt), "gemma3");
    json_t *text = json_object_get(root, "text_config");
    if (!g3 || !json_is_object(text)) return NULL;
    json_t *t = json_deep_copy(text);
    if (!t) return NULL;
    json_object_set_new(t, "architectures", json_pack("[s]", "Gemma3ForConditionalGeneration"));
    /* Gemma3TextConfig's defaults, which the Hub's text_config leaves out. */
    static const struct { const char *key; long long v; } defaults[] = {
        {"vocab_size", 262208}, {"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
        {"num_attention_heads", 8}, {"num_key_value_heads", 4}, {"head_dim", 256},
        {"max_position_embeddings", 131072}, {"query_pre_attn_scalar", 256}, {"sliding_window", 4096},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
        if (!json_object_get(t, defaults[i].key)) json_object_set_new(t, defaults[i].key, json_integer(defaults[i].v));
    static const char *from_root[] = {"eos_token_id", "bos_token_id", "torch_dtype", "dtype", "tie_word_embeddings"};
    for (size_t i = 0; i < sizeof from_root / sizeof *from_root; i++)
        if (!json_object_get(t, from_root[i]) && json_object_get(root, from_root[i]))
            json_object_set(t, from_root[i], json_object_get(root, from_root[i]));
    return t;
}

static int get_num(json_t *o, const char *key, float *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        snprintf(err, errlen, "%s: field '%s' must be a number", file, key);
        return -1;
    }
    *out = (float)json_number_value(v);
    return 0;
}

static int get_bool(json_t *o, const char *key, bool *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s: field '%s' must be a boolean", file, key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int get_factors(json_t *rs, const char *key, float *dst, int n, const char *file, char *err, size_t errlen)
{
    json_t *a = json_object_get(rs, key);
    if (!json_is_array(a) || (int)json_array_size(a) != n) {
        snprintf(err, errlen, "%s: rope_scaling field '%s' must be a list of head_dim / 2 = %d numbers", file, key, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_number(v) || !(json_number_value(v) > 0)) {
            snprintf(err, errlen, "%s: rope_scaling field '%s' holds a non-positive or non-number entry", file, key);
            return -1;
        }
        dst[i] = (float)json_number_value(v);
    }
    return 0;
}

/* The original context of yarn and longrope: Phi-3's top-level field, else the rope dict's,
 * else max_position_embeddings (transformers' standardize_rope_params, in that priority). */
static int original_max(json_t *rs, json_t *root, struct model_config *c, const char *file, char *err, size_t errlen)
{
    float v = 0;
    if (get_num(rs, "original_max_position_embeddings", &v, file, err, errlen) ||
        get_num(root, "original_max_position_embeddings", &v, file, err, errlen))
        return -1;
    c->rope_scaling.original_max_position = v > 0 ? (int)v : c->max_position;
    return 0;
}

int model_rope_parse_variant(json_t *rs, json_t *root, const char *type, struct model_config *c, const char *file,
                             char *err, size_t errlen)
{
    struct model_family *f = &c->fam;
    bool has_factor = json_is_number(json_object_get(rs, "factor"));
    if (!strcmp(type, "dynamic")) {
        c->rope_scaling.type = ROPE_SCALING_DYNAMIC;
        return 0;
    }
    if (!strcmp(type, "yarn")) {
        c->rope_scaling.type = ROPE_SCALING_YARN;
        if (original_max(rs, root, c, file, err, errlen)) return -1;
        if (!has_factor) c->rope_scaling.factor = (float)c->max_position / (float)c->rope_scaling.original_max_position;
        float af = 0, mscale = 0, mscale_all = 0;
        f->yarn_beta_fast = 32.0f;
        f->yarn_beta_slow = 1.0f;
        f->yarn_truncate = true;
        if (get_num(rs, "attention_factor", &af, file, err, errlen) || get_num(rs, "mscale", &mscale, file, err, errlen) ||
            get_num(rs, "mscale_all_dim", &mscale_all, file, err, errlen) ||
            get_num(rs, "beta_fast", &f->yarn_beta_fast, file, err, errlen) ||
            get_num(rs, "beta_slow", &f->yarn_beta_slow, file, err, errlen) ||
            get_bool(rs, "truncate", &f->yarn_truncate, file, err, errlen))
            return -1;
        if (f->yarn_beta_fast == 0) f->yarn_beta_fast = 32.0f; /* transformers: `or 32` */
        if (f->yarn_beta_slow == 0) f->yarn_beta_slow = 1.0f;
        double factor = c->rope_scaling.factor;
#define YARN_MSCALE(s, m) ((s) <= 1 ? 1.0 : 0.1 * (m) * log(s) + 1.0)
        if (af > 0) f->rope_attn_factor = af;
        else if (mscale != 0 && mscale_all != 0)
            f->rope_attn_factor = (float)(YARN_MSCALE(factor, mscale) / YARN_MSCALE(factor, mscale_all));
        else f->rope_attn_factor = (float)YARN_MSCALE(factor, 1.0);
#undef YARN_MSCALE
        return 0;
    }
    if (!strcmp(type, "longrope") || !strcmp(type, "su")) {
        c->rope_scaling.type = ROPE_SCALING_LONGROPE;
        int half = c->head_dim / 2;
        if (half > MODEL_MAX_ROPE_FACTORS) {
            snprintf(err, errlen, "%s: longrope with head_dim %d is not supported (at most %d)", file, c->head_dim,
                     2 * MODEL_MAX_ROPE_FACTORS);
            return -1;
        }
        f->n_rope_factors = half;
        if (original_max(rs, root, c, file, err, errlen) ||
            get_factors(rs, "short_factor", f->rope_short, half, file, err, errlen) ||
            get_factors(rs, "long_factor", f->rope_long, half, file, err, errlen))
            return -1;
        double factor = has_factor ? c->rope_scaling.factor
                                   : (double)c->max_position / (double)c->rope_scaling.original_max_position;
        c->rope_scaling.factor = (float)factor;
        float af = 0;
        if (get_num(rs, "attention_factor", &af, file, err, errlen)) return -1;
        if (af > 0) f->rope_attn_factor = af;
        else f->rope_attn_factor =
            factor <= 1.0 ? 1.0f : (float)sqrt(1.0 + log(factor) / log((double)c->rope_scaling.original_max_position));
        return 0;
    }
    snprintf(err, errlen,
             "%s: rope_scaling type '%s' is not supported (default, linear, llama3, dynamic, yarn, longrope are)", file,
             type);
    return -1;
}

/* layer_types (transformers 5), else the family's pattern: every layer slides (Mistral,
 * Phi-3), every other from the first (Gemma 2), all but every pattern-th (Gemma 3). */
static int parse_layer_types(json_t *root, struct model_config *c, enum family fam, const char *file, char *err,
                             size_t errlen)
{
    struct model_family *f = &c->fam;
    memset(f->layer_sliding, 0, sizeof f->layer_sliding);
    if (c->n_layers > MODEL_MAX_LAYERS) {
        snprintf(err, errlen, "%s: num_hidden_layers %d is more than %d", file, c->n_layers, MODEL_MAX_LAYERS);
        return -1;
    }
    json_t *lt = json_object_get(root, "layer_types");
    int pattern = 6;
    float pf = 0;
    if (get_num(root, "sliding_window_pattern", &pf, file, err, errlen)) return -1;
    if (pf >= 1) pattern = (int)pf;
    int n_sliding = 0;
    for (int l = 0; l < c->n_layers; l++) {
        bool slide;
        if (json_is_array(lt)) {
            json_t *v = json_array_get(lt, (size_t)l);
            if ((int)json_array_size(lt) != c->n_layers || !json_is_string(v)) {
                snprintf(err, errlen, "%s: field 'layer_types' must name each of the %d layers", file, c->n_layers);
                return -1;
            }
            const char *s = json_string_value(v);
            if (!strcmp(s, "sliding_attention")) slide = true;
            else if (!strcmp(s, "full_attention")) slide = false;
            else {
                snprintf(err, errlen, "%s: layer_types entry '%s' is not supported (sliding_attention, full_attention are)",
                         file, s);
                return -1;
            }
        } else if (fam == FAM_GEMMA2) {
            slide = (l + 1) % 2 != 0;
        } else if (fam == FAM_GEMMA3) {
            slide = (l + 1) % pattern != 0;
        } else {
            slide = true;
        }
        if (slide) {
            f->layer_sliding[l / 8] |= (uint8_t)(1u << (l % 8));
            n_sliding++;
        }
    }
    f->all_sliding = n_sliding == c->n_layers;
    return 0;
}

static int gemma3_rope(json_t *root, struct model_config *c, const char *file, char *err, size_t errlen)
{
    /* transformers 5: rope_parameters per layer type; older: rope_theta, rope_local_base_freq
     * and rope_scaling (for the global layers). */
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *full = json_is_object(rp) ? json_object_get(rp, "full_attention") : NULL;
    json_t *local = json_is_object(rp) ? json_object_get(rp, "sliding_attention") : NULL;
    c->fam.local_rope_theta = 10000.0f;
    if (!json_object_get(root, "rope_theta")) c->rope_theta = 1000000.0f; /* full_attention's may say */
    if (get_num(root, "rope_local_base_freq", &c->fam.local_rope_theta, file, err, errlen)) return -1;
    if (json_is_object(full) && c->rope_scaling.type == ROPE_SCALING_NONE &&
        model_parse_rope_scaling(full, root, c, file, err, errlen))
        return -1;
    if (json_is_object(local)) {
        json_t *t = json_object_get(local, "rope_type");
        if (json_is_string(t) && strcmp(json_string_value(t), "default")) {
            snprintf(err, errlen, "%s: rope_parameters.sliding_attention rope_type '%s' is not supported (default is)",
                     file, json_string_value(t));
            return -1;
        }
        if (get_num(local, "rope_theta", &c->fam.local_rope_theta, file, err, errlen)) return -1;
    }
    return 0;
}

int model_config_family(struct model_config *c, json_t *root, const char *file, char *err, size_t errlen)
{
    struct model_family *f = &c->fam;
    enum family fam = family_of(c->arch_name);
    if (fam == FAM_OTHER) return 0;
    bool has_eps = json_object_get(root, "rms_norm_eps") != NULL;
    bool has_tie = json_object_get(root, "tie_word_embeddings") != NULL;
    bool attn_bias = false;
    if (get_bool(root, "attention_bias", &attn_bias, file, err, errlen) ||
        get_bool(root, "mlp_bias", &f->mlp_bias, file, err, errlen))
        return -1;
    if (attn_bias) c->qkv_bias = f->o_bias = true;
    float pr = 1.0f;
    if (get_num(root, "partial_rotary_factor", &pr, file, err, errlen)) return -1;
    json_t *rp = json_object_get(root, "rope_parameters");
    if (json_is_object(rp) && get_num(rp, "partial_rotary_factor", &pr, file, err, errlen)) return -1;
    if (pr != 1.0f) {
        snprintf(err, errlen, "%s: partial_rotary_factor %g is not supported for %s (1.0 is)", file, (double)pr,
                 c->arch_name);
        return -1;
    }
    float window = 0;
    json_t *sw = json_object_get(root, "sliding_window");
    if (fam == FAM_MISTRAL || fam == FAM_GEMMA2 || fam == FAM_GEMMA3) {
        if (!sw) window = 4096; /* their configuration classes' default */
    }
    if (fam == FAM_MISTRAL || fam == FAM_GEMMA2 || fam == FAM_GEMMA3 || fam == FAM_PHI3) {
        if (get_num(root, "sliding_window", &window, file, err, errlen)) return -1;
        if (window > 0) {
            f->sliding_window = (int)window;
            if (parse_layer_types(root, c, fam, file, err, errlen)) return -1;
        }
    }
    switch (fam) {
    case FAM_GEMMA:
    case FAM_GEMMA2:
    case FAM_GEMMA3: {
        if (!has_tie) c->tie_embeddings = true;
        if (!json_object_get(root, "head_dim")) c->head_dim = 256;
        f->act = MODEL_ACT_GELU_TANH;
        json_t *act = json_object_get(root, "hidden_activation");
        if (!act || json_is_null(act)) act = json_object_get(root, "hidden_act");
        if (json_is_string(act) && strcmp(json_string_value(act), "gelu_pytorch_tanh") &&
            strcmp(json_string_value(act), "gelu")) {
            snprintf(err, errlen, "%s: hidden_activation '%s' is not supported for %s (gelu_pytorch_tanh is)", file,
                     json_string_value(act), c->arch_name);
            return -1;
        }
        f->norm_plus_one = true;
        f->embed_scale = (float)sqrt((double)c->hidden_size);
        if (fam == FAM_GEMMA) break;
        f->norms = MODEL_NORMS_SANDWICH;
        float qpas = 256;
        if (get_num(root, "query_pre_attn_scalar", &qpas, file, err, errlen)) return -1;
        f->attn_scale = (float)pow((double)qpas, -0.5);
        if (fam == FAM_GEMMA2) {
            f->attn_softcap = 50.0f;
            f->final_softcap = 30.0f;
            if (!json_object_get(root, "max_position_embeddings")) c->max_position = 8192;
        } else {
            c->qk_norm = true;
            if (!json_object_get(root, "max_position_embeddings")) c->max_position = 131072;
            if (gemma3_rope(root, c, file, err, errlen)) return -1;
        }
        /* null turns soft-capping off. */
        json_t *ac = json_object_get(root, "attn_logit_softcapping"), *fc = json_object_get(root, "final_logit_softcapping");
        if (json_is_null(ac)) f->attn_softcap = 0;
        if (json_is_null(fc)) f->final_softcap = 0;
        if (get_num(root, "attn_logit_softcapping", &f->attn_softcap, file, err, errlen) ||
            get_num(root, "final_logit_softcapping", &f->final_softcap, file, err, errlen))
            return -1;
        break;
    }
    case FAM_PHI3:
        f->fused_qkv = true;
        if (!has_eps) c->rms_eps = 1e-5f;
        if (!json_object_get(root, "max_position_embeddings")) c->max_position = 4096;
        break;
    case FAM_OLMO2:
        f->norms = MODEL_NORMS_POST;
        c->qk_norm = f->qk_norm_full = true;
        if (!has_eps) c->rms_eps = 1e-5f;
        break;
    case FAM_GRANITE: {
        float emb = 1, res = 1, att = 1, lsc = 1;
        if (get_num(root, "embedding_multiplier", &emb, file, err, errlen) ||
            get_num(root, "residual_multiplier", &res, file, err, errlen) ||
            get_num(root, "attention_multiplier", &att, file, err, errlen) ||
            get_num(root, "logits_scaling", &lsc, file, err, errlen))
            return -1;
        if (!(att > 0) || !(lsc != 0)) {
            snprintf(err, errlen, "%s: attention_multiplier and logits_scaling must be positive", file);
            return -1;
        }
        f->embed_scale = emb;
        f->residual_scale = res;
        f->attn_scale = att;
        f->logits_divisor = lsc;
        break;
    }
    default:
        break;
    }
    return 0;
}
