/* The CPU backend's paged KV cache (cpu_kv.h). */
#include "worker/backend/cpu/cpu_kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/kv_dtype.h"
#include "worker/model/fp8.h"

int cpu_kv_init(struct cpu_kv *kv, const struct model *m, const struct model_config *c, enum kv_cache_dtype dtype,
                int64_t *blocks, int n_threads, char *err, size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    kv->fp8 = dtype == KV_CACHE_FP8_E4M3;
    kv->n_threads = n_threads;
    const size_t elem = kv->fp8 ? 1 : sizeof(float);
    kv->block_bytes = (size_t)c->n_layers * 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim * KV_BLOCK_SIZE * elem;
    if (!*blocks) {
        /* Room for four full contexts, within 4 GiB of host memory. */
        *blocks = ((int64_t)c->max_position * 4 + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
        int64_t cap = (int64_t)(4ull << 30) / (int64_t)kv->block_bytes;
        if (*blocks > cap) *blocks = cap > 0 ? cap : 1;
    }
    if (*blocks > INT32_MAX) *blocks = INT32_MAX;
    kv->mem = calloc((size_t)*blocks, kv->block_bytes);
    if (!kv->mem) {
        snprintf(err, errlen, "cannot allocate the KV cache: %lld blocks of %zu bytes", (long long)*blocks,
                 kv->block_bytes);
        return -1;
    }
    if (!kv->fp8) return 0;
    kv->scales = malloc((size_t)c->n_layers * 2 * sizeof *kv->scales);
    kv->rows = calloc((size_t)n_threads, sizeof *kv->rows);
    if (!kv->scales || !kv->rows) goto oom;
    for (int i = 0; i < n_threads; i++)
        if (!(kv->rows[i] = malloc((size_t)KV_BLOCK_SIZE * (size_t)c->head_dim * sizeof(float)))) goto oom;
    for (int b = 0; b < 256; b++) kv->e4m3[b] = fp8_e4m3_to_f32((uint8_t)b);
    char what[256];
    kv_cache_scales(m, kv->scales, what, sizeof what);
    log_info("cpu: KV cache in fp8_e4m3, %s", what);
    return 0;
oom:
    snprintf(err, errlen, "out of memory for the FP8 KV cache's buffers");
    cpu_kv_free(kv);
    return -1;
}

void cpu_kv_free(struct cpu_kv *kv)
{
    if (kv->rows)
        for (int i = 0; i < kv->n_threads; i++) free(kv->rows[i]);
    free(kv->rows);
    free(kv->scales);
    free(kv->mem);
    memset(kv, 0, sizeof *kv);
}

/* Byte offset of (block, layer, which, kv_head, slot 0). */
static size_t head_at(const struct cpu_kv *kv, const struct model_config *c, int32_t block, int layer, int which,
                      int kv_head)
{
    const size_t elem = kv->fp8 ? 1 : sizeof(float);
    return (size_t)block * kv->block_bytes +
           (((size_t)layer * 2 + (size_t)which) * (size_t)c->n_kv_heads + (size_t)kv_head) * KV_BLOCK_SIZE *
               (size_t)c->head_dim * elem;
}

void cpu_kv_put(struct cpu_kv *kv, const struct model_config *c, int32_t block, int layer, int which, int kv_head,
                int slot, const float *src)
{
    const int hd = c->head_dim;
    unsigned char *dst = kv->mem + head_at(kv, c, block, layer, which, kv_head);
    if (!kv->fp8) {
        memcpy(dst + (size_t)slot * hd * sizeof(float), src, (size_t)hd * sizeof(float));
        return;
    }
    /* value / scale, as vLLM stores it (and CUDA's kernels: kernels/kv_cache.cuh). */
    const float scale = kv->scales[2 * layer + which];
    uint8_t *q = dst + (size_t)slot * hd;
    for (int i = 0; i < hd; i++) q[i] = fp8_e4m3_from_f32(src[i] / scale);
}

const float *cpu_kv_block(struct cpu_kv *kv, const struct model_config *c, int32_t block, int layer, int which,
                          int kv_head, int tid)
{
    const unsigned char *p = kv->mem + head_at(kv, c, block, layer, which, kv_head);
    if (!kv->fp8) return (const float *)p;
    const float scale = kv->scales[2 * layer + which];
    float *out = kv->rows[tid];
    for (int i = 0; i < KV_BLOCK_SIZE * c->head_dim; i++) out[i] = kv->e4m3[p[i]] * scale;
    return out;
}

const char *cpu_kv_dtype_name(const struct cpu_kv *kv)
{
    return kv->fp8 ? "fp8_e4m3" : "float32";
}
