/* GGUF files of the dense families of model_family.h (gemma, gemma2, gemma3, phi3, olmo2,
 * granite), as llama.cpp's convert_hf_to_gguf.py writes them: Gemma's norms stored as 1 + w
 * (so not added again here), Phi-3's qkv and gate_up fused and its LongRoPE factors as
 * tensors, Granite's q/k rows in the interleaved rope layout (as llama's); and what llama.cpp
 * fixes by architecture rather than storing (Gemma's embedding scale and sliding layer
 * pattern, Gemma 3's local rope theta, the attention scale of Gemma's 27B models). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "worker/model/gguf/gguf.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

static const char *const archs[] = {"gemma", "gemma2", "gemma3", "phi3", "olmo2", "granite"};

bool gguf_family_arch(const char *arch, struct model_config *c)
{
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++) {
        if (strcmp(arch, archs[i])) continue;
        c->arch = MODEL_ARCH_LLAMA;
        /* llama.cpp's converter permutes q/k into Meta's layout for llama-derived models only. */
        c->rope_interleaved = !strcmp(arch, "granite");
        return true;
    }
    return false;
}

static double get_f(const struct gguf_file *f, const char *arch, const char *suffix, double def)
{
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_float(f, key, &v) == 0 ? v : def;
}

static int64_t get_i(const struct gguf_file *f, const char *arch, const char *suffix, int64_t def)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_int(f, key, &v) == 0 ? v : def;
}

/* Which layers slide: "<arch>.attention.sliding_window_pattern" when the file has it (every
 * n-th layer global, or one boolean per layer, true for sliding, as llama.cpp reads it), else
 * the architecture's fixed pattern (0: every layer). */
static void slide_layers(const struct gguf_file *f, const char *arch, struct model_config *c, int window,
                         int pattern)
{
    struct model_family *fm = &c->fam;
    fm->sliding_window = window;
    memset(fm->layer_sliding, 0, sizeof fm->layer_sliding);
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", arch);
    enum gguf_value_type et;
    uint64_t count;
    int64_t v;
    bool per_layer = gguf_get_array(f, key, &et, &count) == 0 && et == GGUF_TYPE_BOOL && count == (uint64_t)c->n_layers;
    if (!per_layer && gguf_get_int(f, key, &v) == 0 && v >= 0 && v < (1 << 20)) pattern = (int)v;
    int n = 0;
    for (int l = 0; l < c->n_layers && l < MODEL_MAX_LAYERS; l++) {
        bool slide = pattern <= 1 || (l + 1) % pattern != 0;
        if (per_layer) {
            int64_t b = 0;
            slide = gguf_array_get_int(f, key, (uint64_t)l, &b) == 0 && b != 0;
        }
        if (slide) {
            fm->layer_sliding[l / 8] |= (uint8_t)(1u << (l % 8));
            n++;
        }
    }
    fm->all_sliding = n == c->n_layers;
}

static int longrope_factors(const struct gguf_file *f, const char *name, float *dst, int n, const char *path,
                            char *err, size_t errlen)
{
    const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
    if (!t || t->type != GGML_TYPE_F32 || t->n_dims != 1 || t->dims[0] != (uint64_t)n) {
        snprintf(err, errlen, "%s: tensor '%s' must be %d float32 rope factors", path, name, n);
        return -1;
    }
    memcpy(dst, t->data, (size_t)n * sizeof(float));
    return 0;
}

int gguf_family_config(const struct gguf_file *f, const char *arch, struct model_config *c, const char *path,
                       char *err, size_t errlen)
{
    struct model_family *fm = &c->fam;
    /* Biases by their tensors, as llama.cpp finds them. */
    c->qkv_bias = c->qkv_bias || gguf_find_tensor(f, "blk.0.attn_q.bias") != NULL;
    fm->o_bias = gguf_find_tensor(f, "blk.0.attn_output.bias") != NULL;
    fm->mlp_bias = gguf_find_tensor(f, "blk.0.ffn_up.bias") != NULL;
    bool gemma2 = !strcmp(arch, "gemma2"), gemma3 = !strcmp(arch, "gemma3");
    if (!strcmp(arch, "gemma") || gemma2 || gemma3) {
        fm->act = MODEL_ACT_GELU_TANH;
        fm->embed_scale = (float)sqrt((double)c->hidden_size);
        if (!gemma2 && !gemma3) return 0;
        fm->norms = MODEL_NORMS_SANDWICH;
        bool big = (gemma2 && c->n_layers == 46) || (gemma3 && c->n_layers == 62); /* the 27B models */
        fm->attn_scale = (float)pow(big ? (double)c->hidden_size / c->n_heads : (double)c->head_dim, -0.5);
        fm->final_softcap = (float)get_f(f, arch, "final_logit_softcapping", gemma2 ? 30.0 : 0.0);
        int window = (int)get_i(f, arch, "attention.sliding_window", 4096);
        if (gemma2) {
            fm->attn_softcap = (float)get_f(f, arch, "attn_logit_softcapping", 50.0);
            slide_layers(f, arch, c, window, 2);
        } else {
            c->qk_norm = true;
            fm->local_rope_theta = 10000.0f;
            slide_layers(f, arch, c, window, 6);
        }
        return 0;
    }
    if (!strcmp(arch, "phi3")) {
        fm->fused_qkv = true;
        int window = (int)get_i(f, arch, "attention.sliding_window", 0);
        if (window > 0) slide_layers(f, arch, c, window, 0);
        if (!gguf_find_tensor(f, "rope_factors_long.weight")) return 0;
        int half = c->head_dim / 2;
        if (half > MODEL_MAX_ROPE_FACTORS) {
            snprintf(err, errlen, "%s: longrope with head_dim %d is not supported", path, c->head_dim);
            return -1;
        }
        c->rope_scaling.type = ROPE_SCALING_LONGROPE;
        c->rope_scaling.original_max_position = (int)get_i(f, arch, "rope.scaling.original_context_length", 0);
        if (c->rope_scaling.original_max_position <= 0) {
            snprintf(err, errlen, "%s: metadata 'phi3.rope.scaling.original_context_length' is missing", path);
            return -1;
        }
        double factor = (double)c->max_position / c->rope_scaling.original_max_position;
        c->rope_scaling.factor = (float)factor;
        fm->n_rope_factors = half;
        fm->rope_attn_factor = (float)get_f(
            f, arch, "rope.scaling.attn_factor",
            factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log((double)c->rope_scaling.original_max_position)));
        return longrope_factors(f, "rope_factors_long.weight", fm->rope_long, half, path, err, errlen) ||
               longrope_factors(f, "rope_factors_short.weight", fm->rope_short, half, path, err, errlen);
    }
    if (!strcmp(arch, "olmo2")) {
        fm->norms = MODEL_NORMS_POST;
        c->qk_norm = fm->qk_norm_full = true;
        return 0;
    }
    if (!strcmp(arch, "granite")) {
        fm->embed_scale = (float)get_f(f, arch, "embedding_scale", 1.0);
        fm->residual_scale = (float)get_f(f, arch, "residual_scale", 1.0);
        fm->attn_scale = (float)get_f(f, arch, "attention.scale", 1.0);
        fm->logits_divisor = (float)get_f(f, arch, "logit_scale", 1.0);
        if (!(fm->attn_scale > 0) || fm->logits_divisor == 0) {
            snprintf(err, errlen, "%s: granite.attention.scale and granite.logit_scale must be positive", path);
            return -1;
        }
        return 0;
    }
    return 0;
}
