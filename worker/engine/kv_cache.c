/* Block allocator for the paged KV cache: a free stack, per-block reference counts, and the
 * prefix cache's LRU as the second source of blocks. */
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
    if (!kv->free_list || !kv->refcount || pc_init(&kv->pc, num_blocks) != 0) goto fail;
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
    pc_free(&kv->pc);
    memset(kv, 0, sizeof *kv);
}

int32_t kv_block_alloc(struct kv_cache *kv)
{
    int32_t b = kv->n_free > 0 ? kv->free_list[--kv->n_free] : pc_evict(&kv->pc);
    if (b >= 0) kv->refcount[b] = 1;
    return b;
}

void kv_block_release(struct kv_cache *kv, int32_t block)
{
    if (block < 0 || block >= kv->num_blocks || kv->refcount[block] <= 0) return;
    if (--kv->refcount[block] > 0) return;
    if (pc_indexed(&kv->pc, block)) pc_lru_push(&kv->pc, block);
    else kv->free_list[kv->n_free++] = block;
}

void kv_block_hold(struct kv_cache *kv, int32_t block)
{
    if (block < 0 || block >= kv->num_blocks) return;
    if (kv->refcount[block] == 0) pc_lru_remove(&kv->pc, block);
    kv->refcount[block]++;
}

static int table_fit(struct kv_table *t, int32_t want)
{
    if (want <= t->cap) return 0;
    int32_t cap = t->cap ? t->cap : 4;
    while (cap < want) cap *= 2;
    int32_t *nb = realloc(t->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return -2;
    t->blocks = nb;
    t->cap = cap;
    return 0;
}

int kv_table_reserve(struct kv_cache *kv, struct kv_table *t, int32_t n_tokens)
{
    int32_t need = kv_table_blocks_needed(t, n_tokens);
    if (need == 0) return 0;
    if (need > kv_cache_num_free(kv)) return -1;
    if (table_fit(t, t->n_blocks + need) != 0) return -2;
    for (int32_t i = 0; i < need; i++) t->blocks[t->n_blocks++] = kv_block_alloc(kv);
    return 0;
}

int kv_table_append_held(struct kv_cache *kv, struct kv_table *t, int32_t block)
{
    if (table_fit(t, t->n_blocks + 1) != 0) return -2;
    kv_block_hold(kv, block);
    t->blocks[t->n_blocks++] = block;
    return 0;
}

void kv_table_release(struct kv_cache *kv, struct kv_table *t)
{
    /* Last to first: a cached block then enters the LRU after the blocks that extend it, so
     * it is evicted after them. */
    for (int32_t i = t->n_blocks - 1; i >= 0; i--)
        if (t->blocks[i] >= 0) kv_block_release(kv, t->blocks[i]); /* -1: freed out of a sliding window */
    t->n_blocks = 0;
}

void kv_table_free(struct kv_cache *kv, struct kv_table *t)
{
    kv_table_release(kv, t);
    free(t->blocks);
    memset(t, 0, sizeof *t);
}
