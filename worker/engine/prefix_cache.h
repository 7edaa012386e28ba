/* The prefix cache's index: which KV blocks hold a known run of tokens, so that a new sequence
 * whose prompt starts the same way maps those blocks instead of computing them again.
 *
 * Only full blocks are indexed. A block is named by a hash chain: the hash of its parent (the
 * block before it in the sequence, or for the first block a root made from a salt) and of its
 * KV_BLOCK_SIZE token ids. The salt stands for whatever else changes the K/V of the same
 * tokens (an adapter, the images of a multimodal prompt): 0 when nothing does. A lookup
 * compares the stored parent hash and tokens too, so a false match needs a 64-bit collision
 * of two different prefixes that end in the same tokens.
 *
 * Blocks nobody holds any more but that keep indexed content wait in an LRU list, the oldest
 * evicted first when a block is needed. Sequences release their blocks last to first, so a
 * block is always at least as recent as the blocks after it in any sequence: leaves go before
 * the prefixes they extend, and a hot system prompt outlives the conversations built on it.
 *
 * This is bookkeeping only (block ids, no memory of the backend's), owned by kv_cache.c. */
#ifndef SLUICE_WORKER_PREFIX_CACHE_H
#define SLUICE_WORKER_PREFIX_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/backend/backend.h"

/* The parent hash of a sequence's first block. */
uint64_t pc_hash_root(uint64_t salt);
/* The hash of a full block: its parent's hash and its KV_BLOCK_SIZE tokens. */
uint64_t pc_hash_block(uint64_t parent, const int32_t *tokens);

struct prefix_cache {
    int32_t num_blocks;
    /* Per block, valid while indexed. */
    uint64_t *hash, *parent;
    int32_t *tokens;          /* KV_BLOCK_SIZE per block */
    uint64_t *ready_at;       /* the first scheduler step that may read it (see scheduler.c) */
    uint8_t *flags;
    /* LRU of indexed blocks with no holder: head is the oldest. */
    int32_t *lru_prev, *lru_next;
    int32_t lru_head, lru_tail, n_lru;
    /* Open addressing (linear probing) from hash to block id, -1 for empty; at most half full. */
    int32_t *slots;
    uint32_t mask;
    int32_t n_indexed;
    uint64_t evictions;
};

int pc_init(struct prefix_cache *pc, int32_t num_blocks);
void pc_free(struct prefix_cache *pc);

/* The indexed block for (hash, parent, tokens), or -1. */
int32_t pc_find(const struct prefix_cache *pc, uint64_t hash, uint64_t parent, const int32_t *tokens);
/* Indexes block under hash. Returns false (and changes nothing) when that hash is indexed
 * already (another block holds the same prefix) or the block is. */
bool pc_insert(struct prefix_cache *pc, int32_t block, uint64_t hash, uint64_t parent, const int32_t *tokens,
               uint64_t ready_at);
bool pc_indexed(const struct prefix_cache *pc, int32_t block);

/* The LRU of unheld indexed blocks. */
bool pc_in_lru(const struct prefix_cache *pc, int32_t block);
void pc_lru_push(struct prefix_cache *pc, int32_t block);   /* as the most recent */
void pc_lru_remove(struct prefix_cache *pc, int32_t block);
void pc_lru_touch(struct prefix_cache *pc, int32_t block);  /* to most recent, when in it */
/* Evicts the least recent: drops it from the LRU and the index. -1 when the LRU is empty. */
int32_t pc_evict(struct prefix_cache *pc);

#endif
