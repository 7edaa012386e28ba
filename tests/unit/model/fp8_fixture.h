/* Reads tests/fixtures/fp8/expected.safetensors (made by make_fp8_fixtures.py there), or any
 * safetensors fixture: the named tensor's bytes, copied, with its element count (and dtype and
 * shape). Header-only, for the FP8 tests on the CPU and the GPU. */
#ifndef SLUICE_TESTS_FP8_FIXTURE_H
#define SLUICE_TESTS_FP8_FIXTURE_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FP8_FIXTURE_DIR "tests/fixtures/fp8"

/* A tensor of a safetensors file as the fixtures' readers see it. */
struct fixture_tensor {
    char dtype[16];
    int ndim;
    int64_t shape[4];
    int64_t numel;
};

/* Returns malloc'd bytes of tensor name of safetensors file path (NULL when absent or
 * unreadable), its dtype and shape in *info when info is not NULL. Independent of the loader
 * (worker/model/safetensors.c), so that the tests read the files their own way. */
static inline void *fixture_tensor_read(const char *path, const char *name, struct fixture_tensor *info)
{
    FILE *f = fopen(path, "rb");
    void *out = NULL;
    if (!f) return NULL;
    uint64_t hlen = 0;
    unsigned char len8[8];
    if (fread(len8, 1, 8, f) != 8) goto done;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
    char *hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        free(hdr);
        goto done;
    }
    json_t *root = json_loadb(hdr, hlen, 0, NULL);
    free(hdr);
    json_t *e = root ? json_object_get(root, name) : NULL;
    if (e) {
        json_t *offs = json_object_get(e, "data_offsets"), *shape = json_object_get(e, "shape");
        int64_t a = json_integer_value(json_array_get(offs, 0)), b = json_integer_value(json_array_get(offs, 1));
        struct fixture_tensor t = {.ndim = (int)json_array_size(shape), .numel = 1};
        snprintf(t.dtype, sizeof t.dtype, "%s", json_string_value(json_object_get(e, "dtype")));
        for (int i = 0; i < t.ndim && i < 4; i++) {
            t.shape[i] = json_integer_value(json_array_get(shape, (size_t)i));
            t.numel *= t.shape[i];
        }
        out = malloc((size_t)(b - a) + 1);
        if (out && (fseek(f, (long)(8 + hlen + (uint64_t)a), SEEK_SET) != 0 ||
                    fread(out, 1, (size_t)(b - a), f) != (size_t)(b - a))) {
            free(out);
            out = NULL;
        } else if (info) {
            *info = t;
        }
    }
    json_decref(root);
done:
    fclose(f);
    return out;
}

/* Returns malloc'd bytes of tensor name of expected.safetensors (NULL when absent) and its
 * element count in *n. */
static inline void *fp8_fixture_read(const char *name, int64_t *n)
{
    struct fixture_tensor t = {0};
    void *out = fixture_tensor_read(FP8_FIXTURE_DIR "/expected.safetensors", name, &t);
    *n = out ? t.numel : 0;
    return out;
}

#endif
