/* The CPU backend's paged KV cache: block-major, [block][layer][k|v][kv_head][slot][head_dim], of
 * float32 values or, with --kv-cache-dtype fp8, of e4m3 codes of value / the layer's K or V scale
 * (worker/backend/kv_dtype.h). Attention reads a block of one head at a time as float32: the
 * cache itself, or its codes decoded into a buffer of the reading thread, so that the arithmetic
 * after is the same for both. */
#ifndef SLUICE_WORKER_CPU_KV_H
#define SLUICE_WORKER_CPU_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/backend/backend.h"

struct cpu_kv {
    unsigned char *mem;
    size_t block_bytes;
    bool fp8;
    int n_threads;
    float *scales;   /* fp8: [layer][k|v] */
    float e4m3[256]; /* fp8: each code's value */
    float **rows;    /* fp8: per thread, one head's block decoded (KV_BLOCK_SIZE x head_dim) */
};

/* The cache for the model m's (a rank's shard's) config c, in dtype: *blocks of them (0: four of
 * the model's contexts within 4 GiB, which the call sets), n_threads readers. -1 with err set. */
int cpu_kv_init(struct cpu_kv *kv, const struct model *m, const struct model_config *c, enum kv_cache_dtype dtype,
                int64_t *blocks, int n_threads, char *err, size_t errlen);
void cpu_kv_free(struct cpu_kv *kv);
/* One head's new K (which 0) or V (1) of a token: head_dim values into slot of block. */
void cpu_kv_put(struct cpu_kv *kv, const struct model_config *c, int32_t block, int layer, int which, int kv_head,
                int slot, const float *src);
/* One head's K or V of block as KV_BLOCK_SIZE rows of head_dim floats, for thread tid (valid
 * until its next call). */
const float *cpu_kv_block(struct cpu_kv *kv, const struct model_config *c, int32_t block, int layer, int which,
                          int kv_head, int tid);
/* A short description for the log: "float32" or "fp8_e4m3 (...scales...)". */
const char *cpu_kv_dtype_name(const struct cpu_kv *kv);

#endif
