/* GGUF v3 (and v2, same layout) reader over a read-only mapping. Every length read from the
 * file is checked against what is left of it before it is used. */
#include "worker/model/gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 4

struct gguf_kv {
    const char *key;
    uint64_t key_len;
    uint32_t type;
    uint64_t off;          /* scalars: the value; arrays: the first element */
    uint32_t elem_type;    /* arrays */
    uint64_t count;        /* arrays */
    uint64_t *str_offs;    /* string arrays: each element's length field */
};

struct gguf_file {
    char *path;
    const unsigned char *map;
    size_t size;
    struct gguf_kv *kvs;
    uint64_t n_kv;
    struct gguf_tensor_info *tensors;
    uint64_t n_tensors;
};

struct cursor {
    const unsigned char *p;
    uint64_t pos, size;
    const char *path;
    char *err;
    size_t errlen;
};

static int fail(struct cursor *c, const char *what)
{
    snprintf(c->err, c->errlen, "%s: %s at byte %llu (file is %llu bytes)", c->path, what,
             (unsigned long long)c->pos, (unsigned long long)c->size);
    return -1;
}

static int need(struct cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos) return fail(c, what);
    return 0;
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int rd_u32(struct cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what)) return -1;
    *v = get_u32(c->p + c->pos);
    c->pos += 4;
    return 0;
}

static int rd_u64(struct cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what)) return -1;
    *v = get_u64(c->p + c->pos);
    c->pos += 8;
    return 0;
}

/* A string: u64 length then bytes. */
static int rd_str(struct cursor *c, const char **s, uint64_t *len, const char *what)
{
    if (rd_u64(c, len, what) || need(c, *len, what)) return -1;
    *s = (const char *)c->p + c->pos;
    c->pos += *len;
    return 0;
}

static uint64_t scalar_size(uint32_t type)
{
    switch (type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static int skip_value(struct cursor *c, uint32_t type, int depth, const char *what)
{
    uint64_t sz = scalar_size(type);
    if (sz) return need(c, sz, what) ? -1 : (c->pos += sz, 0);
    if (type == GGUF_TYPE_STRING) {
        const char *s;
        uint64_t len;
        return rd_str(c, &s, &len, what);
    }
    if (type != GGUF_TYPE_ARRAY || depth >= GGUF_MAX_ARRAY_DEPTH) return fail(c, "unknown metadata value type");
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et, what) || rd_u64(c, &n, what)) return -1;
    uint64_t esz = scalar_size(et);
    if (esz) {
        if (n > (c->size - c->pos) / esz) return fail(c, "array count exceeds the file");
        c->pos += n * esz;
        return 0;
    }
    for (uint64_t i = 0; i < n; i++)
        if (skip_value(c, et, depth + 1, what)) return -1;
    return 0;
}

static int read_kv(struct cursor *c, struct gguf_kv *kv)
{
    if (rd_str(c, &kv->key, &kv->key_len, "metadata key length exceeds the file")) return -1;
    if (rd_u32(c, &kv->type, "metadata value type truncated")) return -1;
    if (kv->type != GGUF_TYPE_ARRAY) {
        kv->off = c->pos;
        return skip_value(c, kv->type, 0, "metadata value exceeds the file");
    }
    if (rd_u32(c, &kv->elem_type, "array element type truncated") ||
        rd_u64(c, &kv->count, "array count truncated"))
        return -1;
    kv->off = c->pos;
    if (kv->elem_type == GGUF_TYPE_STRING) {
        /* Index the strings once so that the tokenizer's random access stays O(1). Each
         * string takes at least 8 bytes, which bounds the allocation by the file's size. */
        if (kv->count > (c->size - c->pos) / 8) return fail(c, "string array count exceeds the file");
        kv->str_offs = malloc((kv->count ? kv->count : 1) * sizeof *kv->str_offs);
        if (!kv->str_offs) return fail(c, "out of memory for a string array");
        for (uint64_t i = 0; i < kv->count; i++) {
            kv->str_offs[i] = c->pos;
            const char *s;
            uint64_t len;
            if (rd_str(c, &s, &len, "string array element exceeds the file")) return -1;
        }
        return 0;
    }
    uint64_t esz = scalar_size(kv->elem_type);
    if (esz) {
        if (kv->count > (c->size - c->pos) / esz) return fail(c, "array count exceeds the file");
        c->pos += kv->count * esz;
        return 0;
    }
    if (kv->elem_type != GGUF_TYPE_ARRAY) return fail(c, "unknown array element type");
    for (uint64_t i = 0; i < kv->count; i++)
        if (skip_value(c, GGUF_TYPE_ARRAY, 1, "nested array exceeds the file")) return -1;
    return 0;
}

/* Bytes per block and elements per block of a ggml type; 0 for types this reader skips. */
static void type_layout(uint32_t type, uint64_t *block_bytes, uint64_t *block_elems)
{
    *block_elems = 1;
    switch (type) {
    case GGML_TYPE_F32: *block_bytes = 4; return;
    case GGML_TYPE_F16: case GGML_TYPE_BF16: *block_bytes = 2; return;
    case GGML_TYPE_Q8_0: *block_bytes = 34, *block_elems = 32; return;
    case GGML_TYPE_Q4_0: *block_bytes = 18, *block_elems = 32; return;
    case GGML_TYPE_Q4_1: *block_bytes = 20, *block_elems = 32; return;
    case GGML_TYPE_Q5_0: *block_bytes = 22, *block_elems = 32; return;
    case GGML_TYPE_Q5_1: *block_bytes = 24, *block_elems = 32; return;
    case GGML_TYPE_IQ4_NL: *block_bytes = 18, *block_elems = 32; return;
    case GGML_TYPE_Q2_K: *block_bytes = 84, *block_elems = 256; return;
    case GGML_TYPE_Q3_K: *block_bytes = 110, *block_elems = 256; return;
    case GGML_TYPE_Q4_K: *block_bytes = 144, *block_elems = 256; return;
    case GGML_TYPE_Q5_K: *block_bytes = 176, *block_elems = 256; return;
    case GGML_TYPE_Q6_K: *block_bytes = 210, *block_elems = 256; return;
    case GGML_TYPE_IQ4_XS: *block_bytes = 136, *block_elems = 256; return;
    default: *block_bytes = 0; return;
    }
}

static const struct gguf_kv *find_kv(const struct gguf_file *f, const char *key)
{
    size_t n = strlen(key);
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (f->kvs[i].key_len == n && !memcmp(f->kvs[i].key, key, n)) return &f->kvs[i];
    return NULL;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor_info *t, uint64_t *offset)
{
    const char *name;
    uint64_t len;
    if (rd_str(c, &name, &len, "tensor name exceeds the file")) return -1;
    if (len > 1024) return fail(c, "tensor name longer than 1024 bytes");
    char *copy = malloc(len + 1);
    if (!copy) return fail(c, "out of memory");
    memcpy(copy, name, len);
    copy[len] = '\0';
    t->name = copy;
    if (rd_u32(c, &t->n_dims, "tensor n_dims truncated")) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) return fail(c, "tensor n_dims not in 1..4");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(c, &t->dims[d], "tensor dims truncated")) return -1;
        if (t->dims[d] == 0 || t->dims[d] > (1ull << 40) || numel > (1ull << 42) / t->dims[d])
            return fail(c, "tensor dims out of range");
        numel *= t->dims[d];
    }
    if (rd_u32(c, &t->type, "tensor type truncated") || rd_u64(c, offset, "tensor offset truncated")) return -1;
    uint64_t bb, be;
    type_layout(t->type, &bb, &be);
    t->size = 0;
    if (bb) {
        if (t->dims[0] % be != 0) return fail(c, "tensor row length not a multiple of its type's block");
        t->size = numel / be * bb;
    }
    return 0;
}

static int parse(struct gguf_file *f, char *err, size_t errlen)
{
    struct cursor c = {.p = f->map, .pos = 0, .size = f->size, .path = f->path, .err = err, .errlen = errlen};
    uint32_t magic, version;
    if (rd_u32(&c, &magic, "truncated header (magic)")) return -1;
    if (magic != GGUF_MAGIC) {
        snprintf(err, errlen, "%s: bad magic 0x%08x, not a GGUF file", f->path, magic);
        return -1;
    }
    if (rd_u32(&c, &version, "truncated header (version)")) return -1;
    if (version != 2 && version != 3) {
        snprintf(err, errlen, "%s: GGUF version %u is not supported (2 and 3 are)", f->path, version);
        return -1;
    }
    if (rd_u64(&c, &f->n_tensors, "truncated header (tensor_count)") ||
        rd_u64(&c, &f->n_kv, "truncated header (metadata_kv_count)"))
        return -1;
    /* A key-value takes at least 12 bytes and a tensor info at least 28: counts beyond what
     * the file can hold are lies, refused before allocating for them. */
    if (f->n_kv > (c.size - c.pos) / 12) return fail(&c, "header's metadata_kv_count exceeds the file");
    if (f->n_tensors > (c.size - c.pos) / 28) return fail(&c, "header's tensor_count exceeds the file");
    f->kvs = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kvs);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kvs || !f->tensors) return fail(&c, "out of memory");
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (read_kv(&c, &f->kvs[i])) return -1;
    uint64_t *offsets = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *offsets);
    if (!offsets) return fail(&c, "out of memory");
    int rc = -1;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (read_tensor_info(&c, &f->tensors[i], &offsets[i])) goto out;
    uint64_t align = 32;
    const struct gguf_kv *a = find_kv(f, "general.alignment");
    if (a) {
        int64_t v;
        if (gguf_get_int(f, "general.alignment", &v) || v <= 0 || v > (1 << 20) || (v & (v - 1))) {
            snprintf(err, errlen, "%s: general.alignment must be a power of two", f->path);
            goto out;
        }
        align = (uint64_t)v;
    }
    uint64_t data_start = (c.pos + align - 1) / align * align;
    if (data_start > c.size) {
        fail(&c, "data section starts past the end of the file");
        goto out;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor_info *t = &f->tensors[i];
        if (offsets[i] % align != 0) {
            snprintf(err, errlen, "%s: tensor '%s' offset %llu is not a multiple of the alignment %llu", f->path,
                     t->name, (unsigned long long)offsets[i], (unsigned long long)align);
            goto out;
        }
        if (offsets[i] > c.size - data_start || t->size > c.size - data_start - offsets[i]) {
            snprintf(err, errlen, "%s: tensor '%s' (offset %llu, %llu bytes) extends past the end of the file",
                     f->path, t->name, (unsigned long long)offsets[i], (unsigned long long)t->size);
            goto out;
        }
        t->data = t->size ? f->map + data_start + offsets[i] : NULL;
    }
    rc = 0;
out:
    free(offsets);
    return rc;
}

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        snprintf(err, errlen, "%s: not a regular non-empty file", path);
        close(fd);
        goto fail;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    f->size = (size_t)st.st_size;
    if (parse(f, err, errlen)) goto fail;
    *out = f;
    return 0;
fail:
    gguf_close(f);
    return -1;
}

void gguf_close(struct gguf_file *f)
{
    if (!f) return;
    if (f->kvs)
        for (uint64_t i = 0; i < f->n_kv; i++) free(f->kvs[i].str_offs);
    if (f->tensors)
        for (uint64_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->kvs);
    free(f->tensors);
    if (f->map) munmap((void *)f->map, f->size);
    free(f->path);
    free(f);
}

const char *gguf_path(const struct gguf_file *f)
{
    return f->path;
}

bool gguf_has(const struct gguf_file *f, const char *key)
{
    return find_kv(f, key) != NULL;
}

static int read_int_at(const struct gguf_file *f, uint32_t type, uint64_t off, int64_t *out)
{
    const unsigned char *p = f->map + off;
    switch (type) {
    case GGUF_TYPE_UINT8: *out = p[0]; return 0;
    case GGUF_TYPE_INT8: *out = (int8_t)p[0]; return 0;
    case GGUF_TYPE_BOOL: *out = p[0] != 0; return 0;
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_TYPE_UINT32: *out = get_u32(p); return 0;
    case GGUF_TYPE_INT32: *out = (int32_t)get_u32(p); return 0;
    case GGUF_TYPE_UINT64: *out = (int64_t)get_u64(p); return 0;
    case GGUF_TYPE_INT64: *out = (int64_t)get_u64(p); return 0;
    default: return -1;
    }
}

static int read_float_at(const struct gguf_file *f, uint32_t type, uint64_t off, double *out)
{
    const unsigned char *p = f->map + off;
    if (type == GGUF_TYPE_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
        return 0;
    }
    if (type == GGUF_TYPE_FLOAT64) {
        memcpy(out, p, 8);
        return 0;
    }
    int64_t i;
    if (type == GGUF_TYPE_BOOL || read_int_at(f, type, off, &i)) return -1;
    *out = (double)i;
    return 0;
}

int gguf_get_int(const struct gguf_file *f, const char *key, int64_t *out)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type == GGUF_TYPE_BOOL) return -1;
    return read_int_at(f, kv->type, kv->off, out);
}

int gguf_get_float(const struct gguf_file *f, const char *key, double *out)
{
    const struct gguf_kv *kv = find_kv(f, key);
    return kv ? read_float_at(f, kv->type, kv->off, out) : -1;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != GGUF_TYPE_BOOL) return -1;
    *out = f->map[kv->off] != 0;
    return 0;
}

int gguf_get_string(const struct gguf_file *f, const char *key, const char **s, size_t *len)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != GGUF_TYPE_STRING) return -1;
    *len = (size_t)get_u64(f->map + kv->off);
    *s = (const char *)f->map + kv->off + 8;
    return 0;
}

int gguf_get_array(const struct gguf_file *f, const char *key, enum gguf_value_type *elem_type,
                   uint64_t *count)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != GGUF_TYPE_ARRAY) return -1;
    *elem_type = (enum gguf_value_type)kv->elem_type;
    *count = kv->count;
    return 0;
}

static const struct gguf_kv *numeric_elem(const struct gguf_file *f, const char *key, uint64_t i,
                                          uint64_t *off)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != GGUF_TYPE_ARRAY || i >= kv->count) return NULL;
    uint64_t esz = scalar_size(kv->elem_type);
    if (!esz) return NULL;
    *off = kv->off + i * esz;
    return kv;
}

int gguf_array_get_int(const struct gguf_file *f, const char *key, uint64_t i, int64_t *out)
{
    uint64_t off;
    const struct gguf_kv *kv = numeric_elem(f, key, i, &off);
    return kv ? read_int_at(f, kv->elem_type, off, out) : -1;
}

int gguf_array_get_float(const struct gguf_file *f, const char *key, uint64_t i, double *out)
{
    uint64_t off;
    const struct gguf_kv *kv = numeric_elem(f, key, i, &off);
    return kv ? read_float_at(f, kv->elem_type, off, out) : -1;
}

int gguf_array_get_string(const struct gguf_file *f, const char *key, uint64_t i, const char **s,
                          size_t *len)
{
    const struct gguf_kv *kv = find_kv(f, key);
    if (!kv || kv->type != GGUF_TYPE_ARRAY || kv->elem_type != GGUF_TYPE_STRING || i >= kv->count) return -1;
    *len = (size_t)get_u64(f->map + kv->str_offs[i]);
    *s = (const char *)f->map + kv->str_offs[i] + 8;
    return 0;
}

uint64_t gguf_tensor_count(const struct gguf_file *f)
{
    return f->n_tensors;
}

const struct gguf_tensor_info *gguf_tensor(const struct gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct gguf_tensor_info *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}
