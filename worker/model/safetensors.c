/* Hugging Face directories: config.json plus model.safetensors or the shards named by
 * model.safetensors.index.json, mapped read-only. A GPTQ or AWQ checkpoint's quantized layers
 * are repacked into Q4_1 blocks as they are bound (int4_checkpoint.h). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/model/fp8.h"
#include "worker/model/int4_checkpoint.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

#define ST_MAX_HEADER (256u << 20)

struct st_entry {
    char *name;
    int file;          /* index into st_set.files */
    int dtype;         /* enum dtype, or -1 when the file's dtype is not one we read */
    char dtype_str[16];
    int ndim;
    int64_t shape[4];
    const void *data;
};

/* A GPTQ/AWQ checkpoint's config, the model state that owns the repacked tensors, and the last
 * one repacked (model_moe.c probes expert 0's gate before it binds it: one repack, not two). */
struct st_int4 {
    struct int4_qconfig q;
    struct model_source *src;
    char last_name[256];
    struct tensor last;
    const char *last_file;
    bool repacked;        /* some layer was */
};

struct st_set {
    char **files;
    int n_files;
    struct st_entry *entries;
    size_t n_entries, cap_entries;
    struct st_int4 *int4;
};

static void st_set_free(struct st_set *s)
{
    for (int i = 0; i < s->n_files; i++) free(s->files[i]);
    free(s->files);
    for (size_t i = 0; i < s->n_entries; i++) free(s->entries[i].name);
    free(s->entries);
}

static int st_add_entry(struct st_set *s, struct st_entry *e)
{
    if (s->n_entries == s->cap_entries) {
        size_t cap = s->cap_entries ? 2 * s->cap_entries : 64;
        void *p = realloc(s->entries, cap * sizeof *s->entries);
        if (!p) return -1;
        s->entries = p;
        s->cap_entries = cap;
    }
    s->entries[s->n_entries++] = *e;
    return 0;
}

/* Parses one tensor's header entry and checks it against the data section's size. */
static int st_parse_entry(struct st_set *s, int file_idx, const char *path, const char *name, json_t *v,
                          const unsigned char *data, uint64_t data_len, char *err, size_t errlen)
{
    struct st_entry e = {.file = file_idx, .dtype = -1};
    json_t *dt = json_object_get(v, "dtype");
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) ||
        json_array_size(offs) != 2 || json_array_size(shape) > 4) {
        snprintf(err, errlen, "%s: header entry for tensor '%s' lacks dtype, shape or data_offsets", path, name);
        return -1;
    }
    snprintf(e.dtype_str, sizeof e.dtype_str, "%s", json_string_value(dt));
    size_t esize = 0;
    if (!strcmp(e.dtype_str, "F32")) e.dtype = DTYPE_F32, esize = 4;
    else if (!strcmp(e.dtype_str, "F16")) e.dtype = DTYPE_F16, esize = 2;
    else if (!strcmp(e.dtype_str, "BF16")) e.dtype = DTYPE_BF16, esize = 2;
    else if (!strcmp(e.dtype_str, "F8_E4M3")) e.dtype = DTYPE_F8_E4M3, esize = 1;
    else if (!strcmp(e.dtype_str, "F8_E5M2")) e.dtype = DTYPE_F8_E5M2, esize = 1;
    else if (!strcmp(e.dtype_str, "I32")) esize = 4; /* GPTQ/AWQ packed weights, read by int4_checkpoint.c */
    e.ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int i = 0; i < e.ndim; i++) {
        json_t *d = json_array_get(shape, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (1LL << 40)) {
            snprintf(err, errlen, "%s: tensor '%s': bad shape", path, name);
            return -1;
        }
        e.shape[i] = json_integer_value(d);
        numel *= (uint64_t)e.shape[i];
        if (numel > (1ull << 40)) {
            snprintf(err, errlen, "%s: tensor '%s': shape too large", path, name);
            return -1;
        }
    }
    json_t *a = json_array_get(offs, 0), *b = json_array_get(offs, 1);
    if (!json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 ||
        json_integer_value(b) < json_integer_value(a) || (uint64_t)json_integer_value(b) > data_len) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets outside the file's %llu data bytes", path, name,
                 (unsigned long long)data_len);
        return -1;
    }
    uint64_t begin = (uint64_t)json_integer_value(a), end = (uint64_t)json_integer_value(b);
    if (esize && end - begin != numel * esize) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets span %llu bytes, shape and dtype need %llu", path,
                 name, (unsigned long long)(end - begin), (unsigned long long)(numel * esize));
        return -1;
    }
    e.data = data + begin;
    e.name = strdup(name);
    if (!e.name || st_add_entry(s, &e)) {
        free(e.name);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int st_open_file(struct st_set *s, struct model_source *src, const char *path, char *err, size_t errlen)
{
    int rc = -1;
    json_t *hdr = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        snprintf(err, errlen, "%s: truncated: %llu bytes, too short for the header length", path,
                 (unsigned long long)size);
        goto out;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        goto out;
    }
    if (model_source_add_map(src, map, size)) {
        munmap(map, size);
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | ((const unsigned char *)map)[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        snprintf(err, errlen, "%s: header length %llu exceeds the %llu bytes after the length field", path,
                 (unsigned long long)hlen, (unsigned long long)(size - 8));
        goto out;
    }
    json_error_t jerr;
    hdr = json_loadb((const char *)map + 8, hlen, 0, &jerr);
    if (!hdr || !json_is_object(hdr)) {
        snprintf(err, errlen, "%s: header is not a JSON object: %s", path, hdr ? "" : jerr.text);
        goto out;
    }
    char **files = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *files);
    if (!files) goto out;
    s->files = files;
    s->files[s->n_files] = strdup(path);
    if (!s->files[s->n_files]) goto out;
    int idx = s->n_files++;
    const unsigned char *data = (const unsigned char *)map + 8 + hlen;
    const char *name;
    json_t *v;
    json_object_foreach(hdr, name, v) {
        if (!strcmp(name, "__metadata__")) continue;
        if (st_parse_entry(s, idx, path, name, v, data, size - 8 - hlen, err, errlen)) goto out;
    }
    rc = 0;
out:
    json_decref(hdr);
    close(fd);
    return rc;
}

static const struct st_entry *st_find(const struct st_set *s, const char *name)
{
    for (size_t i = 0; i < s->n_entries; i++)
        if (!strcmp(s->entries[i].name, name)) return &s->entries[i];
    return NULL;
}

/* A tensor as the loaders bind it: the file's own, or for a GPTQ/AWQ checkpoint without X.weight,
 * the quantized layer X repacked. */
struct st_view {
    int dtype;             /* enum dtype, or -1 when the file's dtype is not one we read */
    const char *dtype_str;
    int ndim;
    const int64_t *shape;
    const void *data;
    const char *file;
};

static int st_int4_find(void *ctx, const char *name, struct int4_source *out)
{
    const struct st_set *s = ctx;
    const struct st_entry *e = st_find(s, name);
    if (!e) return 1;
    *out = (struct int4_source){.dtype = e->dtype_str, .ndim = e->ndim, .data = e->data, .file = s->files[e->file]};
    memcpy(out->shape, e->shape, sizeof out->shape);
    return 0;
}

/* 0 and *v, 1 when the checkpoint has neither the tensor nor a quantized form of it, -1 (err
 * set) when its quantized form cannot be repacked. */
static int st_lookup(const struct st_set *s, const char *name, struct st_view *v, char *err, size_t errlen)
{
    const struct st_entry *e = st_find(s, name);
    if (e) {
        *v = (struct st_view){.dtype = e->dtype, .dtype_str = e->dtype_str, .ndim = e->ndim, .shape = e->shape,
                              .data = e->data, .file = s->files[e->file]};
        return 0;
    }
    struct st_int4 *c = s->int4;
    if (!c || c->q.method == INT4_NONE) return 1;
    if (strcmp(c->last_name, name) != 0) {
        struct tensor t = {0};
        struct int4_source qw = {0};
        int rc = int4_bind_linear(&c->q, name, st_int4_find, (void *)s, c->src, &t, err, errlen);
        if (rc) return rc;
        char qname[300];
        snprintf(qname, sizeof qname, "%.*s.qweight", (int)(strlen(name) - strlen(".weight")), name);
        st_int4_find((void *)s, qname, &qw);
        snprintf(c->last_name, sizeof c->last_name, "%s", name);
        c->last = t;
        c->last_file = qw.file;
        c->repacked = true;
    }
    *v = (struct st_view){.dtype = (int)c->last.dtype, .dtype_str = dtype_name(c->last.dtype), .ndim = 2,
                          .shape = c->last.shape, .data = c->last.data, .file = c->last_file};
    return 0;
}

/* The message for a tensor neither the file nor its quantized form has. */
static void st_missing(const struct st_set *s, const char *dir, const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name), k = strlen(".weight");
    char qname[300];
    snprintf(qname, sizeof qname, "%.*s.qweight", (int)(n > k ? n - k : n), name);
    const struct st_entry *q = n > k && !strcmp(name + n - k, ".weight") ? st_find(s, qname) : NULL;
    if (q)
        snprintf(err, errlen, "%s: tensor '%s' is missing; the checkpoint has '%s', a GPTQ or AWQ layer, but "
                 "config.json has no quantization_config with quant_method gptq or awq, and no quantize_config.json "
                 "or quant_config.json was read beside it", s->files[q->file], name, qname);
    else if (s->int4 && s->int4->q.method != INT4_NONE && n > k && !strcmp(name + n - k, ".weight"))
        snprintf(err, errlen, "%s: tensor '%s' is missing from the safetensors files, and so is its quantized form "
                 "'%s'", dir, name, qname);
    else
        snprintf(err, errlen, "%s: tensor '%s' is missing from the safetensors files", dir, name);
}

/* Points t at the named tensor after checking that its dtype and shape are what t expects. */
static int st_bind(const struct st_set *s, const char *dir, const char *name, struct tensor *t, char *err,
                   size_t errlen)
{
    struct st_view e;
    int rc = st_lookup(s, name, &e, err, errlen);
    if (rc < 0) return -1;
    if (rc > 0) {
        st_missing(s, dir, name, err, errlen);
        return -1;
    }
    const char *file = e.file;
    if (e.dtype < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, which is not supported (F32, F16, BF16, F8_E4M3, F8_E5M2 are)", file,
                 name, e.dtype_str);
        return -1;
    }
    bool ok = e.ndim == t->ndim;
    for (int i = 0; ok && i < t->ndim; i++) ok = e.shape[i] == t->shape[i];
    if (!ok) {
        char have[96], need[96];
        model_fmt_shape(have, sizeof have, e.ndim, e.shape);
        model_fmt_shape(need, sizeof need, t->ndim, t->shape);
        snprintf(err, errlen, "%s: tensor '%s' has shape %s, the config needs %s", file, name, have, need);
        return -1;
    }
    t->dtype = (enum dtype)e.dtype;
    t->data = e.data;
    return 0;
}

/* Phi-3's qkv_proj and gate_up_proj: one tensor whose rows are the parts' rows stacked, bound
 * as the parts (pointers into it, no copy). */
static int st_bind_stacked(const struct st_set *s, const char *dir, const char *pfx, int layer, const char *suffix,
                           struct tensor **parts, int n, char *err, size_t errlen)
{
    struct tensor whole = model_stacked_shape(parts, n);
    char name[256];
    snprintf(name, sizeof name, "%slayers.%d.%s", pfx, layer, suffix);
    if (st_bind(s, dir, name, &whole, err, errlen)) return -1;
    model_split_rows(&whole, parts, n);
    return 0;
}

/* An FP8 tensor's scale: NAME_scale or NAME_scale_inv beside NAME (both multiply). */
static int st_bind_fp8_scale(const struct st_set *s, struct model_source *src, const struct fp8_qconfig *q,
                             const char *name, struct tensor *t, char *err, size_t errlen)
{
    char sname[300];
    snprintf(sname, sizeof sname, "%s_scale", name);
    const struct st_entry *e = st_find(s, sname);
    if (!e) {
        snprintf(sname, sizeof sname, "%s_scale_inv", name);
        e = st_find(s, sname);
    }
    if (!e) {
        snprintf(err, errlen, "%s: FP8 tensor '%s' has neither '%s_scale' nor '%s_scale_inv' beside it",
                 s->files[st_find(s, name)->file], name, name, name);
        return -1;
    }
    if (e->dtype < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s (F32, BF16 or F16 expected)", s->files[e->file], sname,
                 e->dtype_str);
        return -1;
    }
    if (fp8_scale_attach(t, q, e->data, (enum dtype)e->dtype, e->ndim, e->shape, src, sname, err, errlen) == 0)
        return 0;
    /* The message names the tensor; say which file too. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", err);
    snprintf(err, errlen, "%s: %s", s->files[e->file], msg);
    return -1;
}

/* One of an FP8 KV cache's per-tensor scales (worker/backend/kv_dtype.h) into *out, 0 when the
 * checkpoint has no tensor name: a positive finite scalar (shape [] or [1]) of F32, BF16 or F16. */
static int st_kv_scale(const struct st_set *s, const char *name, float *out, char *err, size_t errlen)
{
    *out = 0.0f;
    const struct st_entry *e = st_find(s, name);
    if (!e) return 0;
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
    if (n != 1 || (e->dtype != DTYPE_F32 && e->dtype != DTYPE_BF16 && e->dtype != DTYPE_F16)) {
        snprintf(err, errlen, "%s: KV cache scale '%s' must be one F32, BF16 or F16 value (it is %s of %lld)",
                 s->files[e->file], name, e->dtype_str, (long long)n);
        return -1;
    }
    struct tensor t = {.dtype = (enum dtype)e->dtype, .ndim = 1, .shape = {1, 0}, .data = e->data};
    tensor_to_f32(&t, 0, false, out);
    if (!(*out > 0.0f) || isinf(*out)) {
        snprintf(err, errlen, "%s: KV cache scale '%s' is %g, not a positive finite number", s->files[e->file], name,
                 (double)*out);
        return -1;
    }
    return 0;
}

/* Layer l's KV cache scales, as vLLM names them: self_attn.k_scale and v_scale (compressed-tensors,
 * vLLM's own FP8 checkpoints), or the older self_attn.kv_scale for both (AutoFP8). Where only one
 * of K and V has one, the other's is 1. Only an FP8 cache reads them. */
static int st_kv_scales(const struct st_set *s, const char *pfx, int l, struct layer_weights *L, char *err,
                        size_t errlen)
{
    char name[256];
    float kv = 0.0f;
    snprintf(name, sizeof name, "%slayers.%d.self_attn.k_scale", pfx, l);
    if (st_kv_scale(s, name, &L->k_scale, err, errlen)) return -1;
    snprintf(name, sizeof name, "%slayers.%d.self_attn.v_scale", pfx, l);
    if (st_kv_scale(s, name, &L->v_scale, err, errlen)) return -1;
    snprintf(name, sizeof name, "%slayers.%d.self_attn.kv_scale", pfx, l);
    if (st_kv_scale(s, name, &kv, err, errlen)) return -1;
    if (L->k_scale == 0.0f) L->k_scale = kv;
    if (L->v_scale == 0.0f) L->v_scale = kv;
    if ((L->k_scale > 0.0f) != (L->v_scale > 0.0f)) {
        if (L->k_scale == 0.0f) L->k_scale = 1.0f;
        if (L->v_scale == 0.0f) L->v_scale = 1.0f;
    }
    return 0;
}

/* model_find_fn over the directory's files, for the expert tensors (model_moe.c); an FP8 one
 * with its scale, read as the dense layers' are (st_bind_fp8_scale). */
struct st_find_ctx {
    const struct st_set *s;
    const char *dir;
    struct model_source *src;
    const struct fp8_qconfig *q;
};

static int st_find_ref(void *arg, const char *name, struct model_tensor_ref *out, char *err, size_t errlen)
{
    const struct st_find_ctx *ctx = arg;
    struct st_view e;
    int rc = st_lookup(ctx->s, name, &e, err, errlen);
    out->file = rc == 0 ? e.file : ctx->dir;
    if (rc) return rc;
    if (e.dtype < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, which is not supported for expert tensors (F32, F16, "
                 "BF16, F8_E4M3, F8_E5M2 and GPTQ/AWQ layers are)", out->file, name, e.dtype_str);
        return -1;
    }
    const bool fp8 = e.dtype == DTYPE_F8_E4M3 || e.dtype == DTYPE_F8_E5M2;
    /* A stacked [n_experts, rows, cols] tensor's scale would have to be cut per expert; the
     * Hub's FP8 checkpoints store one tensor per expert. */
    if (fp8 && e.ndim != 2) {
        snprintf(err, errlen, "%s: FP8 tensor '%s' has %d dimensions; FP8 experts are read one matrix per expert, "
                 "not stacked", out->file, name, e.ndim);
        return -1;
    }
    out->dtype = (enum dtype)e.dtype;
    out->ndim = e.ndim;
    memset(out->shape, 0, sizeof out->shape);
    memcpy(out->shape, e.shape, (size_t)e.ndim * sizeof *out->shape);
    out->data = e.data;
    if (!fp8) return 0;
    struct tensor t = {.dtype = out->dtype, .ndim = 2, .shape = {e.shape[0], e.shape[1]}, .data = e.data};
    if (st_bind_fp8_scale(ctx->s, ctx->src, ctx->q, name, &t, err, errlen)) return -1;
    out->scale = t.scale;
    out->scale_rows = t.scale_rows;
    out->scale_cols = t.scale_cols;
    return 0;
}

static int st_open_all(struct st_set *s, struct model_source *src, const char *dir, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) != 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        return st_open_file(s, src, path, err, errlen);
    }
    json_error_t jerr;
    json_t *idx = json_load_file(path, 0, &jerr);
    int rc = -1;
    json_t *wm = idx ? json_object_get(idx, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        snprintf(err, errlen, "%s: no 'weight_map' object%s%s", path, idx ? "" : ": ", idx ? "" : jerr.text);
        goto out;
    }
    /* Each shard once, in the order the index first names it. */
    const char *key;
    json_t *v;
    json_t *seen = json_object();
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) || strchr(json_string_value(v), '/')) {
            snprintf(err, errlen, "%s: weight_map entry '%s' is not a file name", path, key);
            json_decref(seen);
            goto out;
        }
        if (json_object_get(seen, json_string_value(v))) continue;
        json_object_set_new(seen, json_string_value(v), json_true());
        char shard[4200];
        snprintf(shard, sizeof shard, "%s/%s", dir, json_string_value(v));
        if (st_open_file(s, src, shard, err, errlen)) {
            json_decref(seen);
            goto out;
        }
    }
    json_decref(seen);
    rc = 0;
out:
    json_decref(idx);
    return rc;
}

int model_load_safetensors(struct model *m, const char *dir, char *err, size_t errlen)
{
    char path[4200];
    struct st_set s = {0};
    int rc = -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (model_config_from_json(&m->config, path, err, errlen)) return -1;
    struct fp8_qconfig q;
    struct st_int4 int4 = {0};
    if (fp8_qconfig_load(&q, path, err, errlen) || int4_qconfig_load(&int4.q, path, err, errlen)) return -1;
    m->source = calloc(1, sizeof(struct model_source));
    if (!m->source || model_alloc_layers(m, err, errlen)) goto out;
    int4.src = m->source;
    s.int4 = &int4;
    if (st_open_all(&s, m->source, dir, err, errlen)) goto out;

    const struct model_config *c = &m->config;
    /* The language model of a multimodal checkpoint (Gemma3ForConditionalGeneration) sits
     * under language_model.model. (as transformers saves it) or model.language_model. */
    const char *pfx = "model.", *head = "lm_head.weight";
    if (!st_find(&s, "model.embed_tokens.weight")) {
        if (st_find(&s, "language_model.model.embed_tokens.weight")) {
            pfx = "language_model.model.";
            head = "language_model.lm_head.weight";
        } else if (st_find(&s, "model.language_model.embed_tokens.weight")) {
            pfx = "model.language_model.";
        }
    }
    char emb_name[96], norm_name[96];
    snprintf(emb_name, sizeof emb_name, "%sembed_tokens.weight", pfx);
    snprintf(norm_name, sizeof norm_name, "%snorm.weight", pfx);
    if (st_bind(&s, dir, emb_name, &m->tok_embed, err, errlen) || st_bind(&s, dir, norm_name, &m->final_norm, err, errlen))
        goto out;
    if (c->tie_embeddings) m->lm_head = m->tok_embed;
    else if (st_bind(&s, dir, st_find(&s, head) ? head : "lm_head.weight", &m->lm_head, err, errlen)) goto out;
    if ((m->tok_embed.dtype == DTYPE_F8_E4M3 || m->tok_embed.dtype == DTYPE_F8_E5M2) &&
        st_bind_fp8_scale(&s, m->source, &q, emb_name, &m->tok_embed, err, errlen))
        goto out;
    if (c->tie_embeddings) m->lm_head = m->tok_embed;
    else if ((m->lm_head.dtype == DTYPE_F8_E4M3 || m->lm_head.dtype == DTYPE_F8_E5M2) &&
             st_bind_fp8_scale(&s, m->source, &q, st_find(&s, head) ? head : "lm_head.weight", &m->lm_head, err,
                               errlen))
        goto out;
    if (m->final_norm.dtype == DTYPE_F8_E4M3 || m->final_norm.dtype == DTYPE_F8_E5M2) {
        snprintf(err, errlen, "%s: %s is FP8; norms must be F32, F16 or BF16", dir, norm_name);
        goto out;
    }
    m->config.dtype = m->tok_embed.dtype;
    const struct model_family *f = &c->fam;
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        /* Norm names by where they sit (model_family.h): Llama's post_attention_layernorm is
         * the MLP's pre-norm, Gemma's and OLMo 2's is the attention's post-norm. */
        bool pre = f->norms == MODEL_NORMS_PRE, sandwich = f->norms == MODEL_NORMS_SANDWICH;
        struct { const char *suffix; struct tensor *t; } names[] = {
            {"input_layernorm.weight", f->norms != MODEL_NORMS_POST ? &L->attn_norm : NULL},
            {"self_attn.q_proj.weight", f->fused_qkv ? NULL : &L->wq},
            {"self_attn.k_proj.weight", f->fused_qkv ? NULL : &L->wk},
            {"self_attn.v_proj.weight", f->fused_qkv ? NULL : &L->wv},
            {"self_attn.o_proj.weight", &L->wo},
            {"self_attn.q_proj.bias", c->qkv_bias ? &L->bq : NULL},
            {"self_attn.k_proj.bias", c->qkv_bias ? &L->bk : NULL},
            {"self_attn.v_proj.bias", c->qkv_bias ? &L->bv : NULL},
            {"self_attn.o_proj.bias", f->o_bias ? &L->bo : NULL},
            {"self_attn.q_norm.weight", c->qk_norm ? &L->q_norm : NULL},
            {"self_attn.k_norm.weight", c->qk_norm ? &L->k_norm : NULL},
            {"post_attention_layernorm.weight", pre ? &L->ffn_norm : &L->post_attn_norm},
            {"pre_feedforward_layernorm.weight", sandwich ? &L->ffn_norm : NULL},
            {"post_feedforward_layernorm.weight", pre ? NULL : &L->post_ffn_norm},
            {"mlp.gate_proj.weight", L->moe || f->fused_qkv ? NULL : &L->w_gate},
            {"mlp.up_proj.weight", L->moe || f->fused_qkv ? NULL : &L->w_up},
            {"mlp.down_proj.weight", L->moe ? NULL : &L->w_down},
            {"mlp.gate_proj.bias", f->mlp_bias ? &L->b_gate : NULL},
            {"mlp.up_proj.bias", f->mlp_bias ? &L->b_up : NULL},
            {"mlp.down_proj.bias", f->mlp_bias ? &L->b_down : NULL},
        };
        if (f->fused_qkv) {
            struct tensor *qkv[3] = {&L->wq, &L->wk, &L->wv}, *gu[2] = {&L->w_gate, &L->w_up};
            if (st_bind_stacked(&s, dir, pfx, l, "self_attn.qkv_proj.weight", qkv, 3, err, errlen) ||
                st_bind_stacked(&s, dir, pfx, l, "mlp.gate_up_proj.weight", gu, 2, err, errlen))
                goto out;
            if (L->wq.dtype == DTYPE_F8_E4M3 || L->wq.dtype == DTYPE_F8_E5M2 || L->w_gate.dtype == DTYPE_F8_E4M3 ||
                L->w_gate.dtype == DTYPE_F8_E5M2) {
                snprintf(err, errlen, "%s: layer %d's fused qkv_proj/gate_up_proj is FP8, which is not supported yet "
                         "(FP8 checkpoints of separate projections are)", dir, l);
                goto out;
            }
        }
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            if (!names[i].t) continue;
            char name[256];
            snprintf(name, sizeof name, "%slayers.%d.%s", pfx, l, names[i].suffix);
            if (st_bind(&s, dir, name, names[i].t, err, errlen)) goto out;
            const enum dtype dt = names[i].t->dtype;
            if ((dt == DTYPE_F8_E4M3 || dt == DTYPE_F8_E5M2) &&
                st_bind_fp8_scale(&s, m->source, &q, name, names[i].t, err, errlen))
                goto out;
        }
        if (st_kv_scales(&s, pfx, l, L, err, errlen)) goto out;
        struct st_find_ctx fc = {.s = &s, .dir = dir, .src = m->source, .q = &q};
        if (model_moe_bind_hf(m, l, st_find_ref, &fc, err, errlen)) goto out;
    }
    if (int4.repacked) m->repacked_from = int4.q.method == INT4_AWQ ? "AWQ" : "GPTQ";
    rc = 0;
out:
    st_set_free(&s);
    return rc;
}
