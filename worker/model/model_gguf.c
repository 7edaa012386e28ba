/* A model from a GGUF file: llama, qwen2, qwen3 (and the families of model_gguf_family.c)
 * metadata into model_config, every tensor
 * bound in place in the file's mapping, block quantizations included (the backends decide
 * what to convert). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/gguf/gguf.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

struct gguf_ctx {
    struct gguf_file *f;
    const char *path;
    char prefix[32];
    char *err;
    size_t errlen;
};

/* "<arch>.<suffix>" as an integer: required or default. */
static int arch_int(struct gguf_ctx *g, const char *suffix, bool required, int def, int *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", g->prefix, suffix);
    int64_t v;
    if (gguf_get_int(g->f, key, &v) != 0) {
        if (required || gguf_has(g->f, key)) {
            snprintf(g->err, g->errlen, "%s: metadata '%s' is %s", g->path, key,
                     gguf_has(g->f, key) ? "not an integer" : "missing");
            return -1;
        }
        *out = def;
        return 0;
    }
    if (v <= 0 || v > (1 << 30)) {
        snprintf(g->err, g->errlen, "%s: metadata '%s' = %lld is out of range", g->path, key, (long long)v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int arch_float(struct gguf_ctx *g, const char *suffix, float def, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", g->prefix, suffix);
    double v;
    if (gguf_get_float(g->f, key, &v) != 0) {
        if (gguf_has(g->f, key)) {
            snprintf(g->err, g->errlen, "%s: metadata '%s' is not a number", g->path, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    *out = (float)v;
    return 0;
}

/* llama3 rope factors from a list of per-frequency divisors r[i] (rope_freqs.weight, as
 * llama.cpp's converter writes them): 1 for short wavelengths, the factor for long ones, and
 * in between 1 / ((1 - s) / factor + s) with s = (old_ctx / wavelen - lo) / (hi - lo). */
static bool llama3_matches(const struct model_config *c, const float *r, int half)
{
    struct model_config probe = *c;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, 2.0 * i / c->head_dim), wavelen = 2 * M_PI / f;
        double lo_w = probe.rope_scaling.original_max_position / probe.rope_scaling.low_freq_factor;
        double hi_w = probe.rope_scaling.original_max_position / probe.rope_scaling.high_freq_factor;
        double want;
        if (wavelen < hi_w) want = 1.0;
        else if (wavelen > lo_w) want = probe.rope_scaling.factor;
        else {
            double sm = (probe.rope_scaling.original_max_position / wavelen - probe.rope_scaling.low_freq_factor) /
                        (probe.rope_scaling.high_freq_factor - probe.rope_scaling.low_freq_factor);
            want = 1.0 / ((1 - sm) / probe.rope_scaling.factor + sm);
        }
        if (fabs(want - r[i]) > 1e-3 * want) return false;
    }
    return true;
}

static int rope_freqs_to_llama3(struct gguf_ctx *g, struct model_config *c)
{
    const struct gguf_tensor_info *t = gguf_find_tensor(g->f, "rope_freqs.weight");
    if (!t) return 0;
    int half = c->head_dim / 2;
    if (t->type != GGML_TYPE_F32 || t->n_dims != 1 || t->dims[0] != (uint64_t)half || half < 2) {
        snprintf(g->err, g->errlen, "%s: tensor 'rope_freqs.weight' must be F32 with head_dim/2 = %d elements",
                 g->path, half);
        return -1;
    }
    float *r = malloc((size_t)half * sizeof(float));
    if (!r) return -1;
    memcpy(r, t->data, (size_t)half * sizeof(float));
    int rc = -1;
    float factor = r[half - 1];
    double ab[2][2];
    int n_band = 0;
    for (int i = 0; i < half; i++) {
        if (!(r[i] >= 1.0f - 1e-4f && r[i] <= factor * (1.0f + 1e-4f))) goto bad;
        if (r[i] > 1.0f + 1e-4f && r[i] < factor * (1.0f - 1e-4f)) {
            /* In the band: s = A / wavelen - B, two such points give A and B. */
            double wavelen = 2 * M_PI * pow((double)c->rope_theta, 2.0 * i / c->head_dim);
            double s = (1.0 / r[i] - 1.0 / factor) / (1.0 - 1.0 / factor);
            int k = n_band < 2 ? n_band : 1;
            ab[k][0] = 1.0 / wavelen;
            ab[k][1] = s;
            n_band++;
        }
    }
    if (factor <= 1.0f + 1e-4f) {
        rc = 0; /* all ones: no scaling */
        goto out;
    }
    if (n_band < 2) goto bad;
    double A = (ab[1][1] - ab[0][1]) / (ab[1][0] - ab[0][0]), B = A * ab[0][0] - ab[0][1];
    if (!(A > 0) || !(B > 0)) goto bad;
    /* Scale so that low_freq_factor is 1, as Meta's configs have it. */
    c->rope_scaling.type = ROPE_SCALING_LLAMA3;
    c->rope_scaling.factor = factor;
    c->rope_scaling.low_freq_factor = 1.0f;
    c->rope_scaling.high_freq_factor = (float)((B + 1.0) / B);
    c->rope_scaling.original_max_position = (int)lround(A / B);
    if (!llama3_matches(c, r, half)) goto bad;
    rc = 0;
    goto out;
bad:
    snprintf(g->err, g->errlen, "%s: tensor 'rope_freqs.weight' does not follow llama3 rope scaling", g->path);
    c->rope_scaling.type = ROPE_SCALING_NONE;
out:
    free(r);
    return rc;
}

static int read_config(struct gguf_ctx *g, struct model_config *c)
{
    const char *arch;
    size_t len;
    memset(c, 0, sizeof *c);
    if (gguf_get_string(g->f, "general.architecture", &arch, &len) != 0) {
        snprintf(g->err, g->errlen, "%s: metadata 'general.architecture' is missing", g->path);
        return -1;
    }
    if (len >= sizeof g->prefix) len = sizeof g->prefix - 1;
    memcpy(g->prefix, arch, len);
    g->prefix[len] = '\0';
    snprintf(c->arch_name, sizeof c->arch_name, "%s", g->prefix);
    if (!strcmp(g->prefix, "llama")) {
        c->arch = MODEL_ARCH_LLAMA;
        /* llama.cpp's converter permutes llama q/k into Meta's interleaved rope layout. */
        c->rope_interleaved = true;
    } else if (!strcmp(g->prefix, "qwen2")) {
        c->arch = MODEL_ARCH_QWEN2;
        c->qkv_bias = true;
    } else if (!strcmp(g->prefix, "qwen3")) {
        c->arch = MODEL_ARCH_QWEN3;
        c->qk_norm = true;
    } else if (model_moe_gguf_arch(g->prefix, c)) { /* model_moe.c */
    } else if (!gguf_family_arch(g->prefix, c)) { /* model_gguf_family.c */
        snprintf(g->err, g->errlen,
                 "%s: general.architecture '%s' is not supported (llama, qwen2, qwen3, qwen2moe, qwen3moe, gemma, "
                 "gemma2, gemma3, phi3, olmo2, granite are)", g->path, g->prefix);
        return -1;
    }
    if (arch_int(g, "embedding_length", true, 0, &c->hidden_size) ||
        arch_int(g, "block_count", true, 0, &c->n_layers) ||
        arch_int(g, "feed_forward_length", true, 0, &c->intermediate_size) ||
        arch_int(g, "attention.head_count", true, 0, &c->n_heads) ||
        arch_int(g, "attention.head_count_kv", false, c->n_heads, &c->n_kv_heads) ||
        arch_int(g, "context_length", false, 2048, &c->max_position) ||
        arch_int(g, "attention.key_length", false, c->hidden_size / c->n_heads, &c->head_dim) ||
        arch_float(g, "attention.layer_norm_rms_epsilon", 1e-5f, &c->rms_eps) ||
        arch_float(g, "rope.freq_base", 10000.0f, &c->rope_theta))
        return -1;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", g->prefix);
    const char *st;
    size_t stlen;
    if (gguf_get_string(g->f, key, &st, &stlen) == 0 && !(stlen == 4 && !memcmp(st, "none", 4))) {
        if (stlen == 6 && !memcmp(st, "linear", 6)) {
            c->rope_scaling.type = ROPE_SCALING_LINEAR;
            if (arch_float(g, "rope.scaling.factor", 1.0f, &c->rope_scaling.factor)) return -1;
        } else {
            snprintf(g->err, g->errlen, "%s: metadata '%s' = '%.*s' is not supported", g->path, key, (int)stlen, st);
            return -1;
        }
    }
    if (rope_freqs_to_llama3(g, c)) return -1;
    if (gguf_family_config(g->f, g->prefix, c, g->path, g->err, g->errlen)) return -1;
    if (model_moe_config_from_gguf(g->f, g->prefix, c, g->path, g->err, g->errlen)) return -1;
    /* The embedding's rows are the vocabulary the model computes over; the token list may
     * be shorter when a checkpoint pads its embedding. */
    const struct gguf_tensor_info *te = gguf_find_tensor(g->f, "token_embd.weight");
    enum gguf_value_type et;
    uint64_t count;
    if (te && te->n_dims == 2 && te->dims[1] < (1u << 24)) c->vocab_size = (int)te->dims[1];
    else if (gguf_get_array(g->f, "tokenizer.ggml.tokens", &et, &count) == 0 && count < (1u << 24))
        c->vocab_size = (int)count;
    int64_t v;
    c->bos_id = gguf_get_int(g->f, "tokenizer.ggml.bos_token_id", &v) == 0 && v >= 0 && v < c->vocab_size
                    ? (int)v : -1;
    if (gguf_get_int(g->f, "tokenizer.ggml.eos_token_id", &v) == 0 && v >= 0 && v < c->vocab_size)
        c->eos_ids[c->n_eos++] = (int)v;
    if (gguf_get_int(g->f, "tokenizer.ggml.eot_token_id", &v) == 0 && v >= 0 && v < c->vocab_size &&
        (c->n_eos == 0 || c->eos_ids[0] != v))
        c->eos_ids[c->n_eos++] = (int)v;
    c->tie_embeddings = gguf_find_tensor(g->f, "output.weight") == NULL;
    c->dtype = DTYPE_F32;
    const struct gguf_tensor_info *q = gguf_find_tensor(g->f, "blk.0.attn_q.weight");
    if (q && q->type == GGML_TYPE_F16) c->dtype = DTYPE_F16;
    if (q && q->type == GGML_TYPE_BF16) c->dtype = DTYPE_BF16;
    return model_config_validate(c, g->path, g->err, g->errlen);
}

static int bind(struct gguf_ctx *g, const char *name, struct tensor *t)
{
    const struct gguf_tensor_info *ti = gguf_find_tensor(g->f, name);
    if (!ti) {
        snprintf(g->err, g->errlen, "%s: tensor '%s' is missing", g->path, name);
        return -1;
    }
    /* ggml lists dims innermost first: [in, out] is row-major [out][in]. */
    bool ok = t->ndim == 2 ? ti->n_dims == 2 && ti->dims[0] == (uint64_t)t->shape[1] &&
                                 ti->dims[1] == (uint64_t)t->shape[0]
                           : ti->n_dims == 1 && ti->dims[0] == (uint64_t)t->shape[0];
    if (!ok) {
        snprintf(g->err, g->errlen, "%s: tensor '%s' has ggml dims [%llu, %llu], the config needs [%lld, %lld]",
                 g->path, name, (unsigned long long)ti->dims[0], (unsigned long long)ti->dims[1],
                 (long long)(t->ndim == 2 ? t->shape[1] : t->shape[0]), (long long)(t->ndim == 2 ? t->shape[0] : 1));
        return -1;
    }
    enum dtype dt;
    if (dtype_from_ggml(ti->type, &dt) != 0) {
        snprintf(g->err, g->errlen, "%s: tensor '%s' has ggml type %u, which is not supported (F32, F16, BF16, "
                 "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS are)", g->path, name, ti->type);
        return -1;
    }
    t->dtype = dt;
    t->data = ti->data;
    return 0;
}

static int bind_stacked(struct gguf_ctx *g, int layer, const char *suffix, struct tensor **parts, int n)
{
    struct tensor whole = model_stacked_shape(parts, n);
    char name[128];
    snprintf(name, sizeof name, "blk.%d.%s", layer, suffix);
    if (bind(g, name, &whole)) return -1;
    model_split_rows(&whole, parts, n);
    return 0;
}

/* model_find_fn over the file, for the expert tensors (model_moe.c): shapes row-major. */
static int find_ref(void *arg, const char *name, struct model_tensor_ref *out, char *err, size_t errlen)
{
    struct gguf_ctx *g = arg;
    const struct gguf_tensor_info *ti = gguf_find_tensor(g->f, name);
    out->file = g->path;
    if (!ti) return 1;
    enum dtype dt;
    if (dtype_from_ggml(ti->type, &dt) != 0) {
        snprintf(err, errlen, "%s: tensor '%s' has ggml type %u, which is not supported", g->path, name, ti->type);
        return -1;
    }
    out->dtype = dt;
    out->ndim = (int)ti->n_dims;
    for (uint32_t i = 0; i < ti->n_dims && i < 4; i++) out->shape[i] = (int64_t)ti->dims[ti->n_dims - 1 - i];
    out->data = ti->data;
    return 0;
}

int model_load_gguf(struct model *m, const char *path, char *err, size_t errlen)
{
    struct model_source *src = calloc(1, sizeof *src);
    if (!src) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->source = src;
    if (gguf_open(&src->gguf, path, err, errlen)) return -1;
    struct gguf_ctx g = {.f = src->gguf, .path = path, .err = err, .errlen = errlen};
    if (read_config(&g, &m->config) || model_alloc_layers(m, err, errlen)) return -1;
    const struct model_config *c = &m->config;
    if (bind(&g, "token_embd.weight", &m->tok_embed) || bind(&g, "output_norm.weight", &m->final_norm))
        return -1;
    if (c->tie_embeddings) m->lm_head = m->tok_embed;
    else if (bind(&g, "output.weight", &m->lm_head)) return -1;
    const struct model_family *f = &c->fam;
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        /* Tensors a family lacks have ndim 0 (model_alloc_layers) and are not looked for. */
        struct { const char *suffix; struct tensor *t; } names[] = {
            {"attn_norm.weight", &L->attn_norm},
            {"attn_q.weight", f->fused_qkv ? NULL : &L->wq},
            {"attn_k.weight", f->fused_qkv ? NULL : &L->wk},
            {"attn_v.weight", f->fused_qkv ? NULL : &L->wv},
            {"attn_output.weight", &L->wo},
            {"attn_q.bias", c->qkv_bias ? &L->bq : NULL},
            {"attn_k.bias", c->qkv_bias ? &L->bk : NULL},
            {"attn_v.bias", c->qkv_bias ? &L->bv : NULL},
            {"attn_output.bias", &L->bo},
            {"attn_q_norm.weight", c->qk_norm ? &L->q_norm : NULL},
            {"attn_k_norm.weight", c->qk_norm ? &L->k_norm : NULL},
            {"ffn_norm.weight", &L->ffn_norm},
            {"ffn_gate.weight", L->moe || f->fused_qkv ? NULL : &L->w_gate},
            {"ffn_up.weight", L->moe || f->fused_qkv ? NULL : &L->w_up},
            {"ffn_down.weight", L->moe ? NULL : &L->w_down},
            {"ffn_gate.bias", &L->b_gate},
            {"ffn_up.bias", &L->b_up},
            {"ffn_down.bias", &L->b_down},
            {"post_attention_norm.weight", &L->post_attn_norm},
            {"post_ffw_norm.weight", &L->post_ffn_norm},
        };
        if (f->fused_qkv) {
            /* Phi-3: attn_qkv and ffn_up (gate then up) as their parts, pointers into them. */
            struct tensor *qkv[3] = {&L->wq, &L->wk, &L->wv}, *gu[2] = {&L->w_gate, &L->w_up};
            if (bind_stacked(&g, l, "attn_qkv.weight", qkv, 3) || bind_stacked(&g, l, "ffn_up.weight", gu, 2))
                return -1;
        }
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            if (!names[i].t || names[i].t->ndim == 0) continue;
            char name[128];
            snprintf(name, sizeof name, "blk.%d.%s", l, names[i].suffix);
            if (bind(&g, name, names[i].t)) return -1;
        }
        if (model_moe_bind_gguf(m, l, find_ref, &g, err, errlen)) return -1;
    }
    return 0;
}
