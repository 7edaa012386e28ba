/* The paged KV cache's bookkeeping: which of the backend's blocks (KV_BLOCK_SIZE tokens each)
 * are free, and which blocks hold each sequence's tokens. The memory itself lives in the
 * backend; this only hands out block ids.
 *
 * Blocks carry a reference count: a full block may be shared by every sequence whose tokens
 * start the same way (prefix caching, prefix_cache.h). A block whose count drops to zero goes
 * back to the free stack, unless it holds indexed content: then it stays cached, in the
 * prefix cache's LRU, until an allocation finds the free stack empty and evicts it. Both kinds
 * count as free. */
#ifndef SLUICE_WORKER_KV_CACHE_H
#define SLUICE_WORKER_KV_CACHE_H

#include <stdint.h>

#include "worker/backend/backend.h"
#include "worker/engine/prefix_cache.h"

struct kv_cache {
    int32_t num_blocks;
    int32_t n_free;       /* blocks on the free stack (no cached content) */
    int32_t *free_list;   /* a stack of free block ids */
    int32_t *refcount;    /* per block; 0 = free or cached */
    struct prefix_cache pc;
};

/* One sequence's block table: blocks[i] holds its tokens [i * KV_BLOCK_SIZE, (i + 1) * ...). */
struct kv_table {
    int32_t *blocks;
    int32_t n_blocks;
    int32_t cap;
};

static inline int32_t kv_blocks_for_tokens(int32_t n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
}

int kv_cache_init(struct kv_cache *kv, int32_t num_blocks);
void kv_cache_free(struct kv_cache *kv);
/* Blocks an allocation may take: the free stack and the cached blocks nobody holds. */
static inline int32_t kv_cache_num_free(const struct kv_cache *kv) { return kv->n_free + kv->pc.n_lru; }
/* Blocks holding indexed (reusable) content, held or not. */
static inline int32_t kv_cache_num_cached(const struct kv_cache *kv) { return kv->pc.n_indexed; }

/* Returns a block id (the free stack first, else the least recently used cached block,
 * evicted), or -1 when none is free. */
int32_t kv_block_alloc(struct kv_cache *kv);
/* Drops one reference; at zero the block returns to the free stack, or to the LRU when it
 * holds indexed content. */
void kv_block_release(struct kv_cache *kv, int32_t block);
/* Takes one more reference on a block in use or cached (out of the LRU). */
void kv_block_hold(struct kv_cache *kv, int32_t block);

/* Grows table to cover n_tokens tokens. All or nothing: returns -1 (and allocates nothing)
 * when there are not enough free blocks, -2 when out of memory. */
int kv_table_reserve(struct kv_cache *kv, struct kv_table *t, int32_t n_tokens);
/* Appends a block that holds the table's next KV_BLOCK_SIZE tokens already (a prefix cache
 * hit), taking a reference on it. Returns 0, or -2 when out of memory. */
int kv_table_append_held(struct kv_cache *kv, struct kv_table *t, int32_t block);
/* How many more blocks covering n_tokens would take. */
static inline int32_t kv_table_blocks_needed(const struct kv_table *t, int32_t n_tokens)
{
    int32_t need = kv_blocks_for_tokens(n_tokens) - t->n_blocks;
    return need > 0 ? need : 0;
}
/* Releases every block of the table, last to first (it stays usable, empty). */
void kv_table_release(struct kv_cache *kv, struct kv_table *t);
/* Releases the blocks and the table's own memory. */
void kv_table_free(struct kv_cache *kv, struct kv_table *t);

#endif
