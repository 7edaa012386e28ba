/* Mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE): their config.json fields, which
 * layers are sparse, and their expert tensors, per expert or stacked, for the safetensors and
 * GGUF loaders and for --load-format dummy. */
#include "worker/model/model_moe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/model_internal.h"

bool model_layer_is_moe(const struct model_config *c, int layer)
{
    const struct moe_config *m = &c->moe;
    if (m->n_experts <= 0 || layer < 0 || layer >= MODEL_MAX_LAYERS) return false;
    if (m->dense_layers[layer / 64] >> (layer % 64) & 1) return false;
    return m->sparse_step > 0 && (layer + 1) % m->sparse_step == 0;
}

bool model_moe_arch(const char *name, struct model_config *cfg)
{
    if (!strcmp(name, "MixtralForCausalLM")) {
        cfg->arch = MODEL_ARCH_LLAMA;
    } else if (!strcmp(name, "Qwen2MoeForCausalLM")) {
        cfg->arch = MODEL_ARCH_QWEN2;
        cfg->qkv_bias = true; /* Qwen2MoeConfig.qkv_bias defaults to true */
    } else if (!strcmp(name, "Qwen3MoeForCausalLM")) {
        cfg->arch = MODEL_ARCH_QWEN3;
        cfg->qk_norm = true;
    } else {
        return false;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", name);
    return true;
}

/* An integer field >= min; absent or null keeps *out. */
static int get_int(json_t *root, const char *key, int min, int *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > (1 << 24)) {
        snprintf(err, errlen, "%s: field '%s' must be an integer of at least %d", file, key, min);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *key, bool *out, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s: field '%s' must be a boolean", file, key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int get_dense_layers(json_t *root, struct model_config *cfg, const char *file, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, "mlp_only_layers");
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v)) goto bad;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= MODEL_MAX_LAYERS) goto bad;
        int l = (int)json_integer_value(e);
        cfg->moe.dense_layers[l / 64] |= 1ull << (l % 64);
    }
    return 0;
bad:
    snprintf(err, errlen, "%s: field 'mlp_only_layers' must be a list of layer indices below %d", file,
             MODEL_MAX_LAYERS);
    return -1;
}

int model_moe_config_from_json(struct json_t *root, struct model_config *cfg, const char *file, char *err,
                               size_t errlen)
{
    struct moe_config *m = &cfg->moe;
    memset(m, 0, sizeof *m);
    bool mixtral = !strcmp(cfg->arch_name, "MixtralForCausalLM");
    bool qwen2 = !strcmp(cfg->arch_name, "Qwen2MoeForCausalLM");
    bool qwen3 = !strcmp(cfg->arch_name, "Qwen3MoeForCausalLM");
    if (!mixtral && !qwen2 && !qwen3) return 0;
    m->sparse_step = 1;
    if (mixtral) {
        /* MixtralConfig's defaults; every expert is intermediate_size wide and the top-k
         * probabilities are always renormalised (MixtralTopKRouter). */
        m->n_experts = 8;
        m->top_k = 2;
        m->norm_topk_prob = true;
        m->expert_intermediate = cfg->intermediate_size;
        /* transformers maps num_experts to num_local_experts for Mixtral and Qwen3-MoE. */
        if (get_int(root, "num_experts", 1, &m->n_experts, file, err, errlen) ||
            get_int(root, "num_local_experts", 1, &m->n_experts, file, err, errlen))
            return -1;
        json_t *sw = json_object_get(root, "sliding_window");
        if (sw && !json_is_null(sw) &&
            (!json_is_integer(sw) || json_integer_value(sw) < cfg->max_position)) {
            snprintf(err, errlen, "%s: field 'sliding_window' set below max_position_embeddings is not supported "
                     "for %s (null is)", file, cfg->arch_name);
            return -1;
        }
    } else {
        /* Qwen2MoeConfig's and Qwen3MoeConfig's defaults. */
        m->n_experts = qwen2 ? 60 : 128;
        m->top_k = qwen2 ? 4 : 8;
        m->expert_intermediate = qwen2 ? 1408 : 768;
        m->shared_intermediate = qwen2 ? 5632 : 0;
        if (get_int(root, "num_experts", 0, &m->n_experts, file, err, errlen) ||
            (qwen3 && get_int(root, "num_local_experts", 0, &m->n_experts, file, err, errlen)) ||
            get_int(root, "moe_intermediate_size", 1, &m->expert_intermediate, file, err, errlen) ||
            get_int(root, "decoder_sparse_step", 1, &m->sparse_step, file, err, errlen) ||
            get_bool(root, "norm_topk_prob", &m->norm_topk_prob, file, err, errlen) ||
            get_dense_layers(root, cfg, file, err, errlen))
            return -1;
        if (qwen2 && (get_int(root, "shared_expert_intermediate_size", 1, &m->shared_intermediate, file, err, errlen) ||
                      get_bool(root, "qkv_bias", &cfg->qkv_bias, file, err, errlen)))
            return -1;
        bool flag = false;
        if (get_bool(root, "use_sliding_window", &flag, file, err, errlen)) return -1;
        if (flag) {
            snprintf(err, errlen, "%s: field 'use_sliding_window' true is not supported for %s", file, cfg->arch_name);
            return -1;
        }
        if (qwen3 && (get_bool(root, "attention_bias", &flag, file, err, errlen) || flag)) {
            if (flag) snprintf(err, errlen, "%s: field 'attention_bias' true is not supported for %s", file,
                               cfg->arch_name);
            return -1;
        }
    }
    if (get_int(root, "num_experts_per_tok", 1, &m->top_k, file, err, errlen)) return -1;
    if (m->n_experts > 0 && m->top_k > m->n_experts) {
        snprintf(err, errlen, "%s: field 'num_experts_per_tok' %d exceeds the %d experts", file, m->top_k,
                 m->n_experts);
        return -1;
    }
    return 0;
}

bool model_moe_gguf_arch(const char *arch, struct model_config *cfg)
{
    if (!strcmp(arch, "qwen2moe")) {
        cfg->arch = MODEL_ARCH_QWEN2;
        cfg->qkv_bias = true;
    } else if (!strcmp(arch, "qwen3moe")) {
        cfg->arch = MODEL_ARCH_QWEN3;
        cfg->qk_norm = true;
    } else {
        return false;
    }
    return true;
}

/* "<arch>.<suffix>" as a positive integer; absent keeps *out. */
static int gguf_arch_int(const struct gguf_file *f, const char *arch, const char *suffix, int *out, const char *path,
                         char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t v;
    if (!gguf_has(f, key)) return 0;
    if (gguf_get_int(f, key, &v) != 0 || v < 0 || v > (1 << 24)) {
        snprintf(err, errlen, "%s: metadata '%s' is not an integer in range", path, key);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int model_moe_config_from_gguf(const struct gguf_file *f, const char *arch, struct model_config *cfg,
                               const char *path, char *err, size_t errlen)
{
    struct moe_config *m = &cfg->moe;
    memset(m, 0, sizeof *m);
    bool qwen2 = !strcmp(arch, "qwen2moe"), qwen3 = !strcmp(arch, "qwen3moe");
    if (gguf_arch_int(f, arch, "expert_count", &m->n_experts, path, err, errlen)) return -1;
    if (m->n_experts == 0) {
        if (!qwen2 && !qwen3) return 0;
        snprintf(err, errlen, "%s: metadata '%s.expert_count' is missing", path, arch);
        return -1;
    }
    m->sparse_step = 1; /* llama.cpp makes every layer of these architectures sparse */
    m->top_k = 2;
    m->expert_intermediate = cfg->intermediate_size; /* Mixtral's: feed_forward_length */
    /* llama.cpp's graphs renormalise the top-k for llama (Mixtral) and qwen3moe, not for
     * qwen2moe, unless the file says otherwise. */
    m->norm_topk_prob = !qwen2;
    if (gguf_arch_int(f, arch, "expert_used_count", &m->top_k, path, err, errlen) ||
        gguf_arch_int(f, arch, "expert_feed_forward_length", &m->expert_intermediate, path, err, errlen) ||
        gguf_arch_int(f, arch, "expert_shared_feed_forward_length", &m->shared_intermediate, path, err, errlen))
        return -1;
    char key[128];
    snprintf(key, sizeof key, "%s.expert_weights_norm", arch);
    if (gguf_has(f, key) && gguf_get_bool(f, key, &m->norm_topk_prob) != 0) {
        snprintf(err, errlen, "%s: metadata '%s' is not a boolean", path, key);
        return -1;
    }
    int64_t gating;
    snprintf(key, sizeof key, "%s.expert_gating_func", arch);
    if (gguf_has(f, key) && (gguf_get_int(f, key, &gating) != 0 || gating != 1)) {
        snprintf(err, errlen, "%s: metadata '%s' is not softmax (1), the only router these models use", path, key);
        return -1;
    }
    /* A shared expert without its width in the metadata: the tensor's rows say it. */
    const struct gguf_tensor_info *sh = gguf_find_tensor(f, "blk.0.ffn_gate_shexp.weight");
    if (qwen2 && m->shared_intermediate == 0 && sh && sh->n_dims == 2 && sh->dims[1] < (1u << 24))
        m->shared_intermediate = (int)sh->dims[1];
    if (m->top_k < 1 || m->top_k > m->n_experts || m->expert_intermediate < 1) {
        snprintf(err, errlen, "%s: metadata '%s.expert_used_count' %d or the expert width %d does not fit %d experts",
                 path, arch, m->top_k, m->expert_intermediate, m->n_experts);
        return -1;
    }
    return 0;
}

static void set_shape(struct tensor *t, enum dtype dt, int64_t rows, int64_t cols, uint64_t *next_id)
{
    t->dtype = dt;
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = NULL;
    t->dummy_id = (*next_id)++;
}

int model_moe_alloc(struct model *m, uint64_t *next_id, char *err, size_t errlen)
{
    const struct model_config *c = &m->config;
    const struct moe_config *mc = &c->moe;
    int n_sparse = 0;
    for (int l = 0; l < c->n_layers; l++) n_sparse += model_layer_is_moe(c, l);
    if (n_sparse == 0) return 0;
    size_t per_layer = sizeof(struct moe_weights) + 3 * (size_t)mc->n_experts * sizeof(struct tensor);
    unsigned char *block = calloc((size_t)n_sparse, per_layer);
    if (!block) {
        snprintf(err, errlen, "out of memory for the experts of %d layers", n_sparse);
        return -1;
    }
    m->moe_alloc = block;
    enum dtype dt = c->dtype;
    int64_t h = c->hidden_size, inter = mc->expert_intermediate, si = mc->shared_intermediate;
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        if (!model_layer_is_moe(c, l)) continue;
        memset(&L->w_gate, 0, sizeof L->w_gate);
        memset(&L->w_up, 0, sizeof L->w_up);
        memset(&L->w_down, 0, sizeof L->w_down);
        struct moe_weights *w = (struct moe_weights *)block;
        struct tensor *experts = (struct tensor *)(block + sizeof *w);
        block += per_layer;
        L->moe = w;
        w->gate = experts;
        w->up = experts + mc->n_experts;
        w->down = experts + 2 * mc->n_experts;
        set_shape(&w->router, dt, mc->n_experts, h, next_id);
        for (int e = 0; e < mc->n_experts; e++) {
            set_shape(&w->gate[e], dt, inter, h, next_id);
            set_shape(&w->up[e], dt, inter, h, next_id);
            set_shape(&w->down[e], dt, h, inter, next_id);
        }
        if (si > 0) {
            set_shape(&w->shared_gate_proj, dt, si, h, next_id);
            set_shape(&w->shared_up, dt, si, h, next_id);
            set_shape(&w->shared_down, dt, h, si, next_id);
            set_shape(&w->shared_expert_gate, dt, 1, h, next_id);
        }
    }
    return 0;
}

/* Checks a found tensor's shape against ndim dims; names the file and tensor when it differs. */
static int check_shape(const struct model_tensor_ref *r, const char *name, int ndim, const int64_t *shape, char *err,
                       size_t errlen)
{
    bool ok = r->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = r->shape[i] == shape[i];
    if (ok) return 0;
    char have[96], need[96];
    model_fmt_shape(have, sizeof have, r->ndim, r->shape);
    model_fmt_shape(need, sizeof need, ndim, shape);
    snprintf(err, errlen, "%s: tensor '%s' has shape %s, the config needs %s", r->file, name, have, need);
    return -1;
}

/* Finds the named tensor: 0, or 1 when absent and optional, or -1 with err set. */
static int find_tensor(model_find_fn find, void *ctx, const char *name, bool optional, struct model_tensor_ref *r,
                       char *err, size_t errlen)
{
    memset(r, 0, sizeof *r); /* no scale unless the finder gives one */
    int rc = find(ctx, name, r, err, errlen);
    if (rc <= 0) return rc;
    if (optional) return 1;
    snprintf(err, errlen, "%s: tensor '%s' is missing", r->file, name);
    return -1;
}

/* Binds t (shape already set) to the named 2D tensor; 1 when absent and optional. */
static int bind_one(model_find_fn find, void *ctx, const char *name, struct tensor *t, bool optional, char *err,
                    size_t errlen)
{
    struct model_tensor_ref r;
    int rc = find_tensor(find, ctx, name, optional, &r, err, errlen);
    if (rc) return rc;
    if (check_shape(&r, name, t->ndim, t->shape, err, errlen)) return -1;
    t->dtype = r.dtype;
    t->data = r.data;
    t->scale = r.scale;
    t->scale_rows = r.scale_rows;
    t->scale_cols = r.scale_cols;
    return 0;
}

/* Binds n_experts tensors of rows x cols each to slices of a stacked tensor named name whose
 * shape is [n_experts, stack_rows, cols]; expert e's rows begin at row_off of its slab. A
 * quantized row is whole blocks, so each slice begins on a row. 1 when absent and optional. */
static int bind_stacked(model_find_fn find, void *ctx, const char *name, struct tensor *ts, int n_experts,
                        int64_t stack_rows, int64_t row_off, bool optional, char *err, size_t errlen)
{
    struct model_tensor_ref r;
    int rc = find_tensor(find, ctx, name, optional, &r, err, errlen);
    if (rc) return rc;
    int64_t shape[3] = {n_experts, stack_rows, ts[0].shape[1]};
    if (check_shape(&r, name, 3, shape, err, errlen)) return -1;
    struct tensor probe = {.dtype = r.dtype, .ndim = 2, .shape = {1, shape[2]}};
    size_t row_bytes = tensor_row_bytes(&probe);
    for (int e = 0; e < n_experts; e++) {
        ts[e].dtype = r.dtype;
        ts[e].data = (const unsigned char *)r.data + ((size_t)e * (size_t)stack_rows + (size_t)row_off) * row_bytes;
    }
    return 0;
}

static int bind_shared(struct moe_weights *w, const char *pre, model_find_fn find, void *ctx, char *err, size_t errlen)
{
    if (w->shared_gate_proj.ndim == 0) return 0;
    struct { const char *suffix; struct tensor *t; } names[] = {
        {"shared_expert.gate_proj.weight", &w->shared_gate_proj},
        {"shared_expert.up_proj.weight", &w->shared_up},
        {"shared_expert.down_proj.weight", &w->shared_down},
        {"shared_expert_gate.weight", &w->shared_expert_gate},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", pre, names[i].suffix);
        if (bind_one(find, ctx, name, names[i].t, false, err, errlen)) return -1;
    }
    return 0;
}

int model_moe_bind_hf(struct model *m, int layer, model_find_fn find, void *ctx, char *err, size_t errlen)
{
    struct moe_weights *w = m->layers[layer].moe;
    if (!w) return 0;
    const struct moe_config *mc = &m->config.moe;
    bool mixtral = !strcmp(m->config.arch_name, "MixtralForCausalLM");
    char pre[128], name[256];
    /* Mixtral's Hub checkpoints name the block block_sparse_moe and the experts w1 (gate), w3
     * (up), w2 (down); transformers 5 computes in mlp.experts.gate_up_proj and down_proj,
     * stacked, and converts either way. Try the per-expert layout first. */
    snprintf(pre, sizeof pre, "model.layers.%d.%s.", layer, mixtral ? "block_sparse_moe" : "mlp");
    snprintf(name, sizeof name, "%sgate.weight", pre);
    int rc = bind_one(find, ctx, name, &w->router, mixtral, err, errlen);
    if (rc < 0) return -1;
    if (rc > 0) { /* Mixtral stored under mlp., as transformers 5 names it in memory */
        snprintf(pre, sizeof pre, "model.layers.%d.mlp.", layer);
        snprintf(name, sizeof name, "%sgate.weight", pre);
        if (bind_one(find, ctx, name, &w->router, false, err, errlen)) return -1;
    }
    const char *gate = mixtral ? "w1" : "gate_proj", *up = mixtral ? "w3" : "up_proj",
               *down = mixtral ? "w2" : "down_proj";
    snprintf(name, sizeof name, "%sexperts.0.%s.weight", pre, gate);
    struct model_tensor_ref probe;
    rc = find_tensor(find, ctx, name, true, &probe, err, errlen);
    if (rc < 0) return -1;
    if (rc == 0) {
        for (int e = 0; e < mc->n_experts; e++) {
            struct { const char *n; struct tensor *t; } parts[3] = {{gate, &w->gate[e]}, {up, &w->up[e]},
                                                                    {down, &w->down[e]}};
            for (int i = 0; i < 3; i++) {
                snprintf(name, sizeof name, "%sexperts.%d.%s.weight", pre, e, parts[i].n);
                if (bind_one(find, ctx, name, parts[i].t, false, err, errlen)) return -1;
            }
        }
    } else {
        int64_t inter = mc->expert_intermediate;
        snprintf(name, sizeof name, "%sexperts.gate_up_proj", pre);
        rc = bind_stacked(find, ctx, name, w->gate, mc->n_experts, 2 * inter, 0, true, err, errlen);
        if (rc > 0) {
            snprintf(err, errlen, "%s: tensor '%sexperts.0.%s.weight' (or the stacked '%s') is missing", probe.file, pre,
                     gate, name);
            return -1;
        }
        if (rc < 0 || bind_stacked(find, ctx, name, w->up, mc->n_experts, 2 * inter, inter, false, err, errlen))
            return -1;
        snprintf(name, sizeof name, "%sexperts.down_proj", pre);
        if (bind_stacked(find, ctx, name, w->down, mc->n_experts, m->config.hidden_size, 0, false, err, errlen))
            return -1;
    }
    return bind_shared(w, pre, find, ctx, err, errlen);
}

int model_moe_bind_gguf(struct model *m, int layer, model_find_fn find, void *ctx, char *err, size_t errlen)
{
    struct moe_weights *w = m->layers[layer].moe;
    if (!w) return 0;
    const struct moe_config *mc = &m->config.moe;
    char name[128];
    snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", layer);
    if (bind_one(find, ctx, name, &w->router, false, err, errlen)) return -1;
    struct { const char *n; struct tensor *t; int64_t rows; } parts[3] = {
        {"ffn_gate_exps", w->gate, mc->expert_intermediate},
        {"ffn_up_exps", w->up, mc->expert_intermediate},
        {"ffn_down_exps", w->down, m->config.hidden_size},
    };
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", layer, parts[i].n);
        if (bind_stacked(find, ctx, name, parts[i].t, mc->n_experts, parts[i].rows, 0, false, err, errlen)) return -1;
    }
    if (w->shared_gate_proj.ndim == 0) return 0;
    struct { const char *n; struct tensor *t; } shared[4] = {
        {"ffn_gate_shexp", &w->shared_gate_proj}, {"ffn_up_shexp", &w->shared_up},
        {"ffn_down_shexp", &w->shared_down}, {"ffn_gate_inp_shexp", &w->shared_expert_gate},
    };
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", layer, shared[i].n);
        /* llama.cpp reads the shared expert's gate as a vector of hidden_size: [1, hidden] or
         * [hidden] in the file. */
        struct model_tensor_ref r;
        if (i == 3 && find(ctx, name, &r, err, errlen) == 0 && r.ndim == 1) {
            struct tensor vec = {.ndim = 1, .shape = {m->config.hidden_size}};
            if (bind_one(find, ctx, name, &vec, false, err, errlen)) return -1;
            shared[i].t->dtype = vec.dtype;
            shared[i].t->data = vec.data;
            continue;
        }
        if (bind_one(find, ctx, name, shared[i].t, false, err, errlen)) return -1;
    }
    return 0;
}
