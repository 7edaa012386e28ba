/* The prefix cache's pieces alone: the hash chain, the hash-to-block index (with the
 * deletions that linear probing gets wrong most easily) and the LRU. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/engine/prefix_cache.h"

static void block_of(int32_t *t, int32_t base)
{
    for (int i = 0; i < KV_BLOCK_SIZE; i++) t[i] = base + i;
}

Test(prefix_cache, hash_chain_depends_on_tokens_order_parent_and_salt)
{
    int32_t a[KV_BLOCK_SIZE], b[KV_BLOCK_SIZE];
    block_of(a, 100);
    memcpy(b, a, sizeof a);
    uint64_t root = pc_hash_root(0);
    cr_assert_eq(pc_hash_block(root, a), pc_hash_block(root, b), "the same key, the same hash");
    b[KV_BLOCK_SIZE - 1]++;
    cr_assert_neq(pc_hash_block(root, a), pc_hash_block(root, b), "the last token counts");
    memcpy(b, a, sizeof a);
    b[0] = a[1];
    b[1] = a[0];
    cr_assert_neq(pc_hash_block(root, a), pc_hash_block(root, b), "the order counts");
    cr_assert_neq(pc_hash_block(root, a), pc_hash_block(pc_hash_block(root, a), a), "the parent counts");
    cr_assert_neq(pc_hash_root(0), pc_hash_root(1));
    cr_assert_neq(pc_hash_block(pc_hash_root(0), a), pc_hash_block(pc_hash_root(7), a), "the salt counts");
    /* Token ids above 2^31 do not exist, but negative placeholders must not alias real ids. */
    memcpy(b, a, sizeof a);
    b[3] = -1 - a[3];
    cr_assert_neq(pc_hash_block(root, a), pc_hash_block(root, b));
}

Test(prefix_cache, index_finds_inserted_blocks_and_refuses_duplicates)
{
    struct prefix_cache pc;
    cr_assert_eq(pc_init(&pc, 8), 0);
    int32_t t[KV_BLOCK_SIZE], u[KV_BLOCK_SIZE];
    block_of(t, 5);
    block_of(u, 900);
    uint64_t root = pc_hash_root(0), h = pc_hash_block(root, t);
    cr_assert_eq(pc_find(&pc, h, root, t), -1);
    cr_assert(pc_insert(&pc, 3, h, root, t, 0));
    cr_assert(pc_indexed(&pc, 3));
    cr_assert_eq(pc_find(&pc, h, root, t), 3);
    cr_assert_not(pc_insert(&pc, 4, h, root, t, 0), "one block per prefix");
    cr_assert_not(pc_indexed(&pc, 4));
    cr_assert_not(pc_insert(&pc, 3, pc_hash_block(root, u), root, u, 0), "a block holds one prefix");
    /* A key that shares the hash but not the tokens or the parent is a collision, not a hit. */
    cr_assert_eq(pc_find(&pc, h, root, u), -1);
    cr_assert_eq(pc_find(&pc, h, root + 1, t), -1);
    cr_assert_eq(pc.n_indexed, 1);
    pc_free(&pc);
}

/* Every block's hash lands in slot 0 or 1 of the table: one long probe run, in which deleting
 * from the middle must keep every other entry reachable. */
Test(prefix_cache, deleting_from_a_probe_run_keeps_the_rest_findable)
{
    enum { N = 12 };
    struct prefix_cache pc;
    cr_assert_eq(pc_init(&pc, N), 0);
    int32_t t[N][KV_BLOCK_SIZE];
    uint64_t h[N];
    for (int i = 0; i < N; i++) {
        block_of(t[i], 1000 * i);
        /* The home slot is (hash ^ hash >> 32) & mask (mask 31 here): these distinct hashes
         * all start their probe at slot i % 2. */
        h[i] = (uint64_t)(i * 32) << 32 | (uint64_t)(i % 2);
        cr_assert(pc_insert(&pc, i, h[i], 0, t[i], 0), "block %d", i);
        /* Eligible for eviction in insertion order. */
        pc_lru_push(&pc, i);
    }
    for (int i = 0; i < N; i++) cr_assert_eq(pc_find(&pc, h[i], 0, t[i]), i);
    /* Evicting takes the oldest and forgets it; the rest stay findable. */
    bool gone[N] = {false};
    for (int k = 0; k < N / 2; k++) {
        int32_t b = pc_evict(&pc);
        cr_assert_eq(b, k, "LRU order");
        gone[b] = true;
        for (int i = 0; i < N; i++) cr_assert_eq(pc_find(&pc, h[i], 0, t[i]), gone[i] ? -1 : i, "block %d after %d evictions", i, k + 1);
    }
    cr_assert_eq(pc.n_indexed, N / 2);
    cr_assert_eq(pc.evictions, (uint64_t)N / 2);
    /* The freed slots take new entries. */
    for (int i = 0; i < N / 2; i++) cr_assert(pc_insert(&pc, i, h[i], 0, t[i], 0));
    for (int i = 0; i < N; i++) cr_assert_eq(pc_find(&pc, h[i], 0, t[i]), i);
    pc_free(&pc);
}

Test(prefix_cache, lru_evicts_the_oldest_and_touch_refreshes)
{
    struct prefix_cache pc;
    cr_assert_eq(pc_init(&pc, 4), 0);
    int32_t t[KV_BLOCK_SIZE];
    for (int i = 0; i < 4; i++) {
        block_of(t, 50 * i);
        cr_assert(pc_insert(&pc, i, pc_hash_block(0, t), 0, t, 0));
    }
    pc_lru_push(&pc, 2);
    pc_lru_push(&pc, 0);
    pc_lru_push(&pc, 3);
    pc_lru_push(&pc, 3); /* twice is once */
    cr_assert_eq(pc.n_lru, 3);
    pc_lru_touch(&pc, 2); /* now 0, 3, 2 */
    pc_lru_touch(&pc, 1); /* not in it: nothing */
    pc_lru_remove(&pc, 3); /* held again: 0, 2 */
    cr_assert_not(pc_in_lru(&pc, 3));
    cr_assert(pc_indexed(&pc, 3), "held blocks keep their content");
    cr_assert_eq(pc_evict(&pc), 0);
    cr_assert_not(pc_indexed(&pc, 0));
    cr_assert_eq(pc_evict(&pc), 2);
    cr_assert_eq(pc_evict(&pc), -1);
    cr_assert_eq(pc.n_lru, 0);
    pc_free(&pc);
}
