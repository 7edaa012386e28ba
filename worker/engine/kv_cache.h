/* The paged KV cache's bookkeeping: which of the backend's blocks (KV_BLOCK_SIZE tokens each)
 * are free, and which blocks hold each sequence's tokens. The memory itself lives in the
 * backend; this only hands out block ids.
 *
 * Blocks carry a reference count so that prefix sharing (full blocks keyed by a hash of their
 * tokens, shared between sequences) can be added without changing callers: today every block
 * has exactly one owner. */
#ifndef SLUICE_WORKER_KV_CACHE_H
#define SLUICE_WORKER_KV_CACHE_H

#include <stdint.h>

#include "worker/backend/backend.h"

struct kv_cache {
    int32_t num_blocks;
    int32_t n_free;
    int32_t *free_list;   /* a stack of free block ids */
    int32_t *refcount;    /* per block; 0 = free */
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
static inline int32_t kv_cache_num_free(const struct kv_cache *kv) { return kv->n_free; }

/* Returns a block id, or -1 when none is free. */
int32_t kv_block_alloc(struct kv_cache *kv);
/* Drops one reference; the block returns to the free list at zero. */
void kv_block_release(struct kv_cache *kv, int32_t block);

/* Grows table to cover n_tokens tokens. All or nothing: returns -1 (and allocates nothing)
 * when there are not enough free blocks, -2 when out of memory. */
int kv_table_reserve(struct kv_cache *kv, struct kv_table *t, int32_t n_tokens);
/* How many more blocks covering n_tokens would take. */
static inline int32_t kv_table_blocks_needed(const struct kv_table *t, int32_t n_tokens)
{
    int32_t need = kv_blocks_for_tokens(n_tokens) - t->n_blocks;
    return need > 0 ? need : 0;
}
/* Releases every block of the table (it stays usable, empty). */
void kv_table_release(struct kv_cache *kv, struct kv_table *t);
/* Releases the blocks and the table's own memory. */
void kv_table_free(struct kv_cache *kv, struct kv_table *t);

#endif
