/* Reads tests/fixtures/fp8/expected.safetensors (made by make_fp8_fixtures.py there): the
 * named tensor's bytes, copied, with its element count. Header-only, for the FP8 tests on the
 * CPU and the GPU. */
#ifndef SLUICE_TESTS_FP8_FIXTURE_H
#define SLUICE_TESTS_FP8_FIXTURE_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FP8_FIXTURE_DIR "tests/fixtures/fp8"

/* Returns malloc'd bytes of tensor name (NULL when absent) and its element count in *n. */
static inline void *fp8_fixture_read(const char *name, int64_t *n)
{
    FILE *f = fopen(FP8_FIXTURE_DIR "/expected.safetensors", "rb");
    void *out = NULL;
    *n = 0;
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
        const char *dt = json_string_value(json_object_get(e, "dtype"));
        int64_t a = json_integer_value(json_array_get(offs, 0)), b = json_integer_value(json_array_get(offs, 1));
        int64_t numel = 1;
        for (size_t i = 0; i < json_array_size(shape); i++) numel *= json_integer_value(json_array_get(shape, i));
        (void)dt;
        out = malloc((size_t)(b - a) + 1);
        if (out && (fseek(f, (long)(8 + hlen + (uint64_t)a), SEEK_SET) != 0 ||
                    fread(out, 1, (size_t)(b - a), f) != (size_t)(b - a))) {
            free(out);
            out = NULL;
        } else {
            *n = numel;
        }
    }
    json_decref(root);
done:
    fclose(f);
    return out;
}

#endif
