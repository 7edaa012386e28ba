/* model_load's dispatch, the tensor helpers every backend uses, and --load-format dummy. */
#include "worker/model/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "worker/model/fp8.h"
#include "worker/model/model_internal.h"

size_t dtype_size(enum dtype d)
{
    return d == DTYPE_F32 ? 4 : d == DTYPE_F8_E4M3 || d == DTYPE_F8_E5M2 ? 1 : 2;
}

float model_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            /* Subnormal half: normalize it into a float's exponent range. */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t model_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)(x >> 16 & 0x8000);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;  /* NaN */
    if (a >= 0x47800000u) return sign | 0x7c00; /* 65536 and beyond, infinity */
    if (a < 0x38800000u) {
        /* Below the smallest normal half: steps of 2^-24, rounded to nearest even (rintf);
         * 1024 steps is the smallest normal, whose code this also is. */
        float v;
        memcpy(&v, &a, 4);
        return sign | (uint16_t)rintf(v * 16777216.0f);
    }
    uint32_t h = ((a >> 23) - 112) << 10 | (a >> 13 & 0x3ff), rest = a & 0x1fff;
    /* Nearest, ties to even; a carry into the exponent is right, up to infinity at 65520. */
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}

float model_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void model_fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

int64_t tensor_numel(const struct tensor *t)
{
    if (t->ndim == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

float model_dummy_value(uint64_t seed, uint64_t id, uint64_t index)
{
    float u = (float)(dummy_hash(seed, id, index) >> 40) * (1.0f / 16777216.0f);
    return (2.0f * u - 1.0f) * MODEL_DUMMY_SCALE;
}

float tensor_get_f32(const struct tensor *t, uint64_t seed, bool is_norm, uint64_t index)
{
    if (t->dtype == DTYPE_F8_E4M3 || t->dtype == DTYPE_F8_E5M2) {
        float v;
        fp8_range_to_f32(t, seed, (int64_t)index, (int64_t)index + 1, &v);
        return v;
    }
    if (!t->data) {
        float v = model_dummy_value(seed, t->dummy_id, index);
        return is_norm ? 1.0f + v : v;
    }
    /* memcpy: safetensors offsets need not be aligned for the element type. */
    const unsigned char *p = t->data;
    if (dtype_is_quantized(t->dtype)) {
        float block[256];
        uint64_t be = (uint64_t)dtype_block_elems(t->dtype);
        model_dequant(t->dtype, p + index / be * dtype_block_bytes(t->dtype), block, (int64_t)be);
        return block[index % be];
    }
    if (t->dtype == DTYPE_F32) {
        float f;
        memcpy(&f, p + index * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + index * 2, 2);
    return t->dtype == DTYPE_F16 ? model_f16_to_f32(h) : model_bf16_to_f32(h);
}

void tensor_range_to_f32(const struct tensor *t, uint64_t seed, bool is_norm, int64_t begin, int64_t end,
                         float *dst)
{
    if (t->dtype == DTYPE_F8_E4M3 || t->dtype == DTYPE_F8_E5M2) {
        fp8_range_to_f32(t, seed, begin, end, dst);
        return;
    }
    if (t->data && t->dtype == DTYPE_F32) {
        memcpy(dst, (const unsigned char *)t->data + (size_t)begin * 4, (size_t)(end - begin) * 4);
        return;
    }
    if (t->data && dtype_is_quantized(t->dtype)) {
        int64_t be = dtype_block_elems(t->dtype);
        model_dequant(t->dtype, (const unsigned char *)t->data + (size_t)(begin / be) * dtype_block_bytes(t->dtype),
                      dst, end - begin);
        return;
    }
    for (int64_t i = begin; i < end; i++) dst[i - begin] = tensor_get_f32(t, seed, is_norm, (uint64_t)i);
}

void tensor_to_f32(const struct tensor *t, uint64_t seed, bool is_norm, float *dst)
{
    tensor_range_to_f32(t, seed, is_norm, 0, tensor_numel(t), dst);
}

int model_source_add_map(struct model_source *src, void *addr, size_t len)
{
    if (src->n_maps == src->cap_maps) {
        int cap = src->cap_maps ? 2 * src->cap_maps : 4;
        void *p = realloc(src->maps, (size_t)cap * sizeof *src->maps);
        if (!p) return -1;
        src->maps = p;
        src->cap_maps = cap;
    }
    src->maps[src->n_maps].addr = addr;
    src->maps[src->n_maps].len = len;
    src->n_maps++;
    return 0;
}

int model_source_add_owned(struct model_source *src, void *buf)
{
    if (src->n_owned == src->cap_owned) {
        int cap = src->cap_owned ? 2 * src->cap_owned : 16;
        void *p = realloc(src->owned, (size_t)cap * sizeof *src->owned);
        if (!p) {
            free(buf);
            return -1;
        }
        src->owned = p;
        src->cap_owned = cap;
    }
    src->owned[src->n_owned++] = buf;
    return 0;
}

void model_source_free(struct model_source *src)
{
    if (!src) return;
    for (int i = 0; i < src->n_maps; i++) munmap(src->maps[i].addr, src->maps[i].len);
    for (int i = 0; i < src->n_owned; i++) free(src->owned[i]);
    free(src->maps);
    free(src->owned);
    if (src->gguf) gguf_close(src->gguf);
    free(src);
}

int model_config_validate(const struct model_config *c, const char *origin, char *err, size_t errlen)
{
    const char *field = NULL;
    if (c->hidden_size <= 0 || c->hidden_size > (1 << 20)) field = "hidden_size";
    else if (c->intermediate_size <= 0 || c->intermediate_size > (1 << 22)) field = "intermediate_size";
    else if (c->n_layers <= 0 || c->n_layers > 4096) field = "num_hidden_layers";
    else if (c->n_heads <= 0 || c->n_heads > 4096) field = "num_attention_heads";
    else if (c->n_kv_heads <= 0 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
        field = "num_key_value_heads";
    else if (c->head_dim <= 0 || c->head_dim % 2 != 0 || c->head_dim > 4096) field = "head_dim";
    else if (c->vocab_size <= 0 || c->vocab_size > (1 << 24)) field = "vocab_size";
    else if (c->max_position <= 0) field = "max_position_embeddings";
    else if (!(c->rms_eps > 0.0f)) field = "rms_norm_eps";
    else if (!(c->rope_theta > 0.0f)) field = "rope_theta";
    else if (c->rope_scaling.type != ROPE_SCALING_NONE && !(c->rope_scaling.factor > 0.0f))
        field = "rope_scaling.factor";
    else if (c->rope_scaling.type == ROPE_SCALING_LLAMA3 &&
             (c->rope_scaling.original_max_position <= 0 ||
              !(c->rope_scaling.high_freq_factor > c->rope_scaling.low_freq_factor) ||
              !(c->rope_scaling.low_freq_factor > 0.0f)))
        field = "rope_scaling (llama3 needs original_max_position_embeddings and high_freq_factor > low_freq_factor > 0)";
    else if ((c->rope_scaling.type == ROPE_SCALING_YARN || c->rope_scaling.type == ROPE_SCALING_LONGROPE) &&
             c->rope_scaling.original_max_position <= 0)
        field = "rope_scaling.original_max_position_embeddings";
    else if (c->fam.sliding_window < 0) field = "sliding_window";
    if (field) {
        snprintf(err, errlen, "%s: invalid or missing %s", origin, field);
        return -1;
    }
    return 0;
}

static void set_shape(struct tensor *t, enum dtype dt, int64_t rows, int64_t cols, uint64_t *next_id)
{
    t->dtype = dt;
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = NULL;
    t->dummy_id = (*next_id)++;
}

int model_alloc_layers(struct model *m, char *err, size_t errlen)
{
    const struct model_config *c = &m->config;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        snprintf(err, errlen, "out of memory for %d layers", c->n_layers);
        return -1;
    }
    enum dtype dt = c->dtype;
    int64_t h = c->hidden_size, hd = c->head_dim;
    int64_t qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    uint64_t id = 1;
    set_shape(&m->tok_embed, dt, c->vocab_size, h, &id);
    set_shape(&m->final_norm, dt, h, 0, &id);
    if (c->tie_embeddings) m->lm_head = m->tok_embed;
    else set_shape(&m->lm_head, dt, c->vocab_size, h, &id);
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        const struct model_family *f = &c->fam;
        if (f->norms != MODEL_NORMS_POST) set_shape(&L->attn_norm, dt, h, 0, &id);
        set_shape(&L->wq, dt, qd, h, &id);
        set_shape(&L->wk, dt, kvd, h, &id);
        set_shape(&L->wv, dt, kvd, h, &id);
        set_shape(&L->wo, dt, h, qd, &id);
        if (c->qkv_bias) {
            set_shape(&L->bq, dt, qd, 0, &id);
            set_shape(&L->bk, dt, kvd, 0, &id);
            set_shape(&L->bv, dt, kvd, 0, &id);
        }
        if (c->qk_norm) {
            set_shape(&L->q_norm, dt, f->qk_norm_full ? qd : hd, 0, &id);
            set_shape(&L->k_norm, dt, f->qk_norm_full ? kvd : hd, 0, &id);
        }
        if (f->norms != MODEL_NORMS_POST) set_shape(&L->ffn_norm, dt, h, 0, &id);
        set_shape(&L->w_gate, dt, c->intermediate_size, h, &id);
        set_shape(&L->w_up, dt, c->intermediate_size, h, &id);
        set_shape(&L->w_down, dt, h, c->intermediate_size, &id);
        if (f->o_bias) set_shape(&L->bo, dt, h, 0, &id);
        if (f->mlp_bias) {
            set_shape(&L->b_gate, dt, c->intermediate_size, 0, &id);
            set_shape(&L->b_up, dt, c->intermediate_size, 0, &id);
            set_shape(&L->b_down, dt, h, 0, &id);
        }
        if (f->norms != MODEL_NORMS_PRE) {
            set_shape(&L->post_attn_norm, dt, h, 0, &id);
            set_shape(&L->post_ffn_norm, dt, h, 0, &id);
        }
    }
    return model_moe_alloc(m, &id, err, errlen);
}

struct tensor model_stacked_shape(struct tensor *const *parts, int n)
{
    struct tensor whole = *parts[0];
    whole.shape[0] = 0;
    for (int i = 0; i < n; i++) whole.shape[0] += parts[i]->shape[0];
    return whole;
}

void model_split_rows(const struct tensor *whole, struct tensor *const *parts, int n)
{
    size_t row = tensor_row_bytes(whole);
    const unsigned char *p = whole->data;
    for (int i = 0; i < n; i++) {
        parts[i]->dtype = whole->dtype;
        parts[i]->data = p;
        p += row * (size_t)parts[i]->shape[0];
    }
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int load_dummy(struct model *m, const char *path, char *err, size_t errlen)
{
    char cfg_path[4200];
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
        snprintf(m->path, sizeof m->path, "%s", path);
    } else {
        snprintf(cfg_path, sizeof cfg_path, "%s", path);
        snprintf(m->path, sizeof m->path, "%s", path);
        char *slash = strrchr(m->path, '/');
        if (slash) *slash = '\0';
        else snprintf(m->path, sizeof m->path, ".");
    }
    if (model_config_from_json(&m->config, cfg_path, err, errlen) != 0) return -1;
    m->dummy = true;
    m->dummy_seed = 0x5EED5111CEull;
    return model_alloc_layers(m, err, errlen);
}

int model_load(struct model **out, const char *path, enum model_load_format format, char *err,
               size_t errlen)
{
    *out = NULL;
    if (!path || !*path) {
        snprintf(err, errlen, "no model path given");
        return -1;
    }
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc;
    if (format == MODEL_LOAD_DUMMY) {
        rc = load_dummy(m, path, err, errlen);
    } else {
        struct stat st;
        if (stat(path, &st) != 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            snprintf(m->path, sizeof m->path, "%s", path);
            rc = model_load_safetensors(m, path, err, errlen);
        } else if (ends_with(path, ".gguf") || S_ISREG(st.st_mode)) {
            snprintf(m->path, sizeof m->path, "%s", path);
            m->is_gguf = true;
            rc = model_load_gguf(m, path, err, errlen);
        } else {
            snprintf(err, errlen, "%s: neither a model directory nor a .gguf file", path);
            rc = -1;
        }
    }
    if (rc != 0) {
        model_free(m);
        return rc < 0 ? rc : -1;
    }
    *out = m;
    return 0;
}

void model_free(struct model *m)
{
    if (!m) return;
    model_source_free(m->source);
    free(m->layers);
    free(m->moe_alloc);
    free(m);
}
