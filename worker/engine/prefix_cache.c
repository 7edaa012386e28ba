/* The prefix cache's hash chain, its hash-to-block index and the LRU of unheld cached blocks. */
#include "worker/engine/prefix_cache.h"

#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

enum { PC_INDEXED = 1, PC_IN_LRU = 2 };

uint64_t pc_hash_root(uint64_t salt)
{
    return hash_mix64(salt ^ 0x736c7569636521ull);
}

uint64_t pc_hash_block(uint64_t parent, const int32_t *tokens)
{
    /* Two tokens per 64-bit word, each word folded in through a full avalanche: cheap next to
     * the step that computed the block, and sensitive to every bit and to the order. */
    uint64_t h = hash_mix64(parent + 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < KV_BLOCK_SIZE; i += 2) {
        uint64_t w = (uint64_t)(uint32_t)tokens[i] | (uint64_t)(uint32_t)tokens[i + 1] << 32;
        h = hash_mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
    }
    return hash_mix64(h);
}

int pc_init(struct prefix_cache *pc, int32_t num_blocks)
{
    memset(pc, 0, sizeof *pc);
    if (num_blocks < 0) return -1;
    size_t n = num_blocks > 0 ? (size_t)num_blocks : 1;
    uint32_t n_slots = 2;
    while (n_slots < 2 * n) n_slots *= 2;
    pc->num_blocks = num_blocks;
    pc->hash = malloc(n * sizeof *pc->hash);
    pc->parent = malloc(n * sizeof *pc->parent);
    pc->tokens = malloc(n * KV_BLOCK_SIZE * sizeof *pc->tokens);
    pc->ready_at = calloc(n, sizeof *pc->ready_at);
    pc->flags = calloc(n, sizeof *pc->flags);
    pc->lru_prev = malloc(n * sizeof *pc->lru_prev);
    pc->lru_next = malloc(n * sizeof *pc->lru_next);
    pc->slots = malloc((size_t)n_slots * sizeof *pc->slots);
    if (!pc->hash || !pc->parent || !pc->tokens || !pc->ready_at || !pc->flags || !pc->lru_prev || !pc->lru_next ||
        !pc->slots) {
        pc_free(pc);
        return -2;
    }
    memset(pc->slots, 0xff, (size_t)n_slots * sizeof *pc->slots);
    pc->mask = n_slots - 1;
    pc->lru_head = pc->lru_tail = -1;
    return 0;
}

void pc_free(struct prefix_cache *pc)
{
    free(pc->hash);
    free(pc->parent);
    free(pc->tokens);
    free(pc->ready_at);
    free(pc->flags);
    free(pc->lru_prev);
    free(pc->lru_next);
    free(pc->slots);
    memset(pc, 0, sizeof *pc);
    pc->lru_head = pc->lru_tail = -1;
}

static inline uint32_t home_slot(const struct prefix_cache *pc, uint64_t hash)
{
    return (uint32_t)(hash ^ (hash >> 32)) & pc->mask;
}

int32_t pc_find(const struct prefix_cache *pc, uint64_t hash, uint64_t parent, const int32_t *tokens)
{
    if (!pc->slots) return -1;
    for (uint32_t i = home_slot(pc, hash);; i = (i + 1) & pc->mask) {
        int32_t b = pc->slots[i];
        if (b < 0) return -1;
        if (pc->hash[b] == hash) {
            bool same = pc->parent[b] == parent &&
                        memcmp(pc->tokens + (size_t)b * KV_BLOCK_SIZE, tokens, KV_BLOCK_SIZE * sizeof *tokens) == 0;
            /* Hashes are unique in the index: a mismatch behind an equal hash is a collision. */
            return same ? b : -1;
        }
    }
}

bool pc_indexed(const struct prefix_cache *pc, int32_t block)
{
    return block >= 0 && block < pc->num_blocks && (pc->flags[block] & PC_INDEXED);
}

bool pc_insert(struct prefix_cache *pc, int32_t block, uint64_t hash, uint64_t parent, const int32_t *tokens,
               uint64_t ready_at)
{
    if (block < 0 || block >= pc->num_blocks || pc_indexed(pc, block)) return false;
    uint32_t i = home_slot(pc, hash);
    for (; pc->slots[i] >= 0; i = (i + 1) & pc->mask)
        if (pc->hash[pc->slots[i]] == hash) return false;
    pc->slots[i] = block;
    pc->hash[block] = hash;
    pc->parent[block] = parent;
    memcpy(pc->tokens + (size_t)block * KV_BLOCK_SIZE, tokens, KV_BLOCK_SIZE * sizeof *tokens);
    pc->ready_at[block] = ready_at;
    pc->flags[block] |= PC_INDEXED;
    pc->n_indexed++;
    return true;
}

/* Backward-shift deletion: later entries of the probe run move up, so lookups need no
 * tombstones and the table never degrades. */
static void index_remove(struct prefix_cache *pc, int32_t block)
{
    uint32_t i = home_slot(pc, pc->hash[block]);
    while (pc->slots[i] != block) i = (i + 1) & pc->mask;
    for (uint32_t j = (i + 1) & pc->mask;; j = (j + 1) & pc->mask) {
        int32_t b = pc->slots[j];
        if (b < 0) break;
        uint32_t home = home_slot(pc, pc->hash[b]);
        /* b may fill the hole at i only when its home is not cyclically within (i, j]. */
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays) continue;
        pc->slots[i] = b;
        i = j;
    }
    pc->slots[i] = -1;
    pc->flags[block] &= (uint8_t)~PC_INDEXED;
    pc->n_indexed--;
}

bool pc_in_lru(const struct prefix_cache *pc, int32_t block)
{
    return block >= 0 && block < pc->num_blocks && (pc->flags[block] & PC_IN_LRU);
}

void pc_lru_push(struct prefix_cache *pc, int32_t block)
{
    if (block < 0 || block >= pc->num_blocks || pc_in_lru(pc, block)) return;
    pc->lru_prev[block] = pc->lru_tail;
    pc->lru_next[block] = -1;
    if (pc->lru_tail >= 0) pc->lru_next[pc->lru_tail] = block;
    else pc->lru_head = block;
    pc->lru_tail = block;
    pc->flags[block] |= PC_IN_LRU;
    pc->n_lru++;
}

void pc_lru_remove(struct prefix_cache *pc, int32_t block)
{
    if (!pc_in_lru(pc, block)) return;
    int32_t p = pc->lru_prev[block], n = pc->lru_next[block];
    if (p >= 0) pc->lru_next[p] = n;
    else pc->lru_head = n;
    if (n >= 0) pc->lru_prev[n] = p;
    else pc->lru_tail = p;
    pc->flags[block] &= (uint8_t)~PC_IN_LRU;
    pc->n_lru--;
}

void pc_lru_touch(struct prefix_cache *pc, int32_t block)
{
    if (!pc_in_lru(pc, block) || pc->lru_tail == block) return;
    pc_lru_remove(pc, block);
    pc_lru_push(pc, block);
}

int32_t pc_evict(struct prefix_cache *pc)
{
    int32_t b = pc->lru_head;
    if (b < 0) return -1;
    pc_lru_remove(pc, b);
    if (pc_indexed(pc, b)) index_remove(pc, b);
    pc->evictions++;
    return b;
}
