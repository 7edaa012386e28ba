/* Hugging Face directories: config.json plus model.safetensors or the shards named by
 * model.safetensors.index.json, mapped read-only. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

struct st_set {
    char **files;
    int n_files;
    struct st_entry *entries;
    size_t n_entries, cap_entries;
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

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Points t at the named tensor after checking that its dtype and shape are what t expects. */
static int st_bind(const struct st_set *s, const char *dir, const char *name, struct tensor *t, char *err,
                   size_t errlen)
{
    const struct st_entry *e = st_find(s, name);
    if (!e) {
        snprintf(err, errlen, "%s: tensor '%s' is missing from the safetensors files", dir, name);
        return -1;
    }
    const char *file = s->files[e->file];
    if (e->dtype < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, which is not supported (F32, F16, BF16 are)", file,
                 name, e->dtype_str);
        return -1;
    }
    bool ok = e->ndim == t->ndim;
    for (int i = 0; ok && i < t->ndim; i++) ok = e->shape[i] == t->shape[i];
    if (!ok) {
        char have[96], need[96];
        fmt_shape(have, sizeof have, e->ndim, e->shape);
        fmt_shape(need, sizeof need, t->ndim, t->shape);
        snprintf(err, errlen, "%s: tensor '%s' has shape %s, the config needs %s", file, name, have, need);
        return -1;
    }
    t->dtype = (enum dtype)e->dtype;
    t->data = e->data;
    return 0;
}

/* model_find_fn over the directory's files, for the expert tensors (model_moe.c). */
struct st_find_ctx {
    const struct st_set *s;
    const char *dir;
};

static int st_find_ref(void *arg, const char *name, struct model_tensor_ref *out, char *err, size_t errlen)
{
    const struct st_find_ctx *ctx = arg;
    const struct st_entry *e = st_find(ctx->s, name);
    out->file = e ? ctx->s->files[e->file] : ctx->dir;
    if (!e) return 1;
    if (e->dtype < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, which is not supported (F32, F16, BF16 are)", out->file,
                 name, e->dtype_str);
        return -1;
    }
    out->dtype = (enum dtype)e->dtype;
    out->ndim = e->ndim;
    memcpy(out->shape, e->shape, sizeof out->shape);
    out->data = e->data;
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
    m->source = calloc(1, sizeof(struct model_source));
    if (!m->source || model_alloc_layers(m, err, errlen)) goto out;
    if (st_open_all(&s, m->source, dir, err, errlen)) goto out;

    const struct model_config *c = &m->config;
    if (st_bind(&s, dir, "model.embed_tokens.weight", &m->tok_embed, err, errlen) ||
        st_bind(&s, dir, "model.norm.weight", &m->final_norm, err, errlen))
        goto out;
    if (c->tie_embeddings) m->lm_head = m->tok_embed;
    else if (st_bind(&s, dir, "lm_head.weight", &m->lm_head, err, errlen)) goto out;
    m->config.dtype = m->tok_embed.dtype;
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &m->layers[l];
        struct { const char *suffix; struct tensor *t; } names[] = {
            {"input_layernorm.weight", &L->attn_norm},
            {"self_attn.q_proj.weight", &L->wq},
            {"self_attn.k_proj.weight", &L->wk},
            {"self_attn.v_proj.weight", &L->wv},
            {"self_attn.o_proj.weight", &L->wo},
            {"self_attn.q_proj.bias", c->qkv_bias ? &L->bq : NULL},
            {"self_attn.k_proj.bias", c->qkv_bias ? &L->bk : NULL},
            {"self_attn.v_proj.bias", c->qkv_bias ? &L->bv : NULL},
            {"self_attn.q_norm.weight", c->qk_norm ? &L->q_norm : NULL},
            {"self_attn.k_norm.weight", c->qk_norm ? &L->k_norm : NULL},
            {"post_attention_layernorm.weight", &L->ffn_norm},
            {"mlp.gate_proj.weight", L->moe ? NULL : &L->w_gate},
            {"mlp.up_proj.weight", L->moe ? NULL : &L->w_up},
            {"mlp.down_proj.weight", L->moe ? NULL : &L->w_down},
        };
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            if (!names[i].t) continue;
            char name[256];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, names[i].suffix);
            if (st_bind(&s, dir, name, names[i].t, err, errlen)) goto out;
        }
        struct st_find_ctx fc = {.s = &s, .dir = dir};
        if (model_moe_bind_hf(m, l, st_find_ref, &fc, err, errlen)) goto out;
    }
    rc = 0;
out:
    st_set_free(&s);
    return rc;
}
