/* GGUF v3 reader: header, metadata and tensor directory of a file mapped read-only.
 *
 * Every offset and count in the file is checked against the file's size before use, so a
 * truncated file or one whose header lies gets an error naming the file and the field, never
 * a read past the mapping. */
#ifndef SLUICE_WORKER_GGUF_H
#define SLUICE_WORKER_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gguf_value_type {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

/* ggml tensor types this project reads. */
enum ggml_type {
    GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6, GGML_TYPE_Q5_1 = 7, GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11, GGML_TYPE_Q4_K = 12, GGML_TYPE_Q5_K = 13, GGML_TYPE_Q6_K = 14,
    GGML_TYPE_IQ4_NL = 20, GGML_TYPE_IQ4_XS = 23, GGML_TYPE_BF16 = 30,
};

struct gguf_file;

struct gguf_tensor_info {
    const char *name;
    uint32_t n_dims;
    uint64_t dims[4];     /* ggml order: dims[0] is the contiguous (innermost) dimension */
    uint32_t type;        /* enum ggml_type */
    const void *data;     /* inside the mapping, bounds-checked */
    uint64_t size;        /* bytes */
};

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen);
void gguf_close(struct gguf_file *f);
const char *gguf_path(const struct gguf_file *f);

bool gguf_has(const struct gguf_file *f, const char *key);
/* Scalars: converts between integer widths; returns -1 when absent or of another kind. */
int gguf_get_int(const struct gguf_file *f, const char *key, int64_t *out);
int gguf_get_float(const struct gguf_file *f, const char *key, double *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out);
/* Strings are not NUL-terminated in the file: a pointer into the mapping and a length. */
int gguf_get_string(const struct gguf_file *f, const char *key, const char **s, size_t *len);
/* Arrays: element type and count; numeric elements through gguf_array_get_*, strings
 * through gguf_array_get_string. */
int gguf_get_array(const struct gguf_file *f, const char *key, enum gguf_value_type *elem_type,
                   uint64_t *count);
int gguf_array_get_int(const struct gguf_file *f, const char *key, uint64_t i, int64_t *out);
int gguf_array_get_float(const struct gguf_file *f, const char *key, uint64_t i, double *out);
int gguf_array_get_string(const struct gguf_file *f, const char *key, uint64_t i,
                          const char **s, size_t *len);

uint64_t gguf_tensor_count(const struct gguf_file *f);
const struct gguf_tensor_info *gguf_tensor(const struct gguf_file *f, uint64_t i);
const struct gguf_tensor_info *gguf_find_tensor(const struct gguf_file *f, const char *name);

#endif
