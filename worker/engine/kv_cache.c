/* Block allocator for the paged KV cache: a free stack plus per-block reference counts. */
#include "worker/engine/kv_cache.h"

#include <stdlib.h>
#include <string.h>

int kv_cache_init(struct kv_cache *kv, int32_t num_blocks)
{
    memset(kv, 0, sizeof *kv);
    if (num_blocks < 0) return -1;
    size_t n = num_blocks > 0 ? (size_t)num_blocks : 1;
    kv->free_list = malloc(n * sizeof *kv->free_list);
    kv->refcount = calloc(n, sizeof *kv->refcount);
    if (!kv->free_list || !kv->refcount) goto fail;
    kv->num_blocks = num_blocks;
    kv->n_free = num_blocks;
    /* Pushed in reverse so that the lowest ids come out first, which keeps tests readable. */
    for (int32_t i = 0; i < num_blocks; i++) kv->free_list[i] = num_blocks - 1 - i;
    return 0;
fail:
    kv_cache_free(kv);
    return -2;
}

void kv_cache_free(struct kv_cache *kv)
{
    free(kv->free_list);
    free(kv->refcount);
    memset(kv, 0, sizeof *kv);
}

int32_t kv_block_alloc(struct kv_cache *kv)
{
    if (kv->n_free == 0) return -1;
    int32_t b = kv->free_list[--kv->n_free];
    kv->refcount[b] = 1;
    return b;
}

void kv_block_release(struct kv_cache *kv, int32_t block)
{
    if (block < 0 || block >= kv->num_blocks || kv->refcount[block] <= 0) return;
    if (--kv->refcount[block] == 0) kv->free_list[kv->n_free++] = block;
}

int kv_table_reserve(struct kv_cache *kv, struct kv_table *t, int32_t n_tokens)
{
    int32_t need = kv_table_blocks_needed(t, n_tokens);
    if (need == 0) return 0;
    if (need > kv->n_free) return -1;
    int32_t want = t->n_blocks + need;
    if (want > t->cap) {
        int32_t cap = t->cap ? t->cap : 4;
        while (cap < want) cap *= 2;
        int32_t *nb = realloc(t->blocks, (size_t)cap * sizeof *nb);
        if (!nb) return -2;
        t->blocks = nb;
        t->cap = cap;
    }
    for (int32_t i = 0; i < need; i++) t->blocks[t->n_blocks++] = kv_block_alloc(kv);
    return 0;
}

void kv_table_release(struct kv_cache *kv, struct kv_table *t)
{
    for (int32_t i = 0; i < t->n_blocks; i++) kv_block_release(kv, t->blocks[i]);
    t->n_blocks = 0;
}

void kv_table_free(struct kv_cache *kv, struct kv_table *t)
{
    kv_table_release(kv, t);
    free(t->blocks);
    memset(t, 0, sizeof *t);
}
