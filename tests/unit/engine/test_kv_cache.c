#include <criterion/criterion.h>

#include "worker/engine/kv_cache.h"

Test(kv_cache, alloc_until_exhausted_then_free)
{
    struct kv_cache kv;
    cr_assert_eq(kv_cache_init(&kv, 4), 0);
    cr_assert_eq(kv_cache_num_free(&kv), 4);
    bool seen[4] = {false};
    for (int i = 0; i < 4; i++) {
        int32_t b = kv_block_alloc(&kv);
        cr_assert(b >= 0 && b < 4);
        cr_assert_not(seen[b], "block %d handed out twice", b);
        seen[b] = true;
    }
    cr_assert_eq(kv_block_alloc(&kv), -1);
    cr_assert_eq(kv_cache_num_free(&kv), 0);
    kv_block_release(&kv, 2);
    cr_assert_eq(kv_cache_num_free(&kv), 1);
    cr_assert_eq(kv_block_alloc(&kv), 2);
    /* Releasing a free block twice must not corrupt the free list. */
    kv_block_release(&kv, 2);
    kv_block_release(&kv, 2);
    cr_assert_eq(kv_cache_num_free(&kv), 1);
    kv_cache_free(&kv);
}

Test(kv_cache, table_grows_by_blocks_all_or_nothing)
{
    struct kv_cache kv;
    struct kv_table t = {0};
    cr_assert_eq(kv_cache_init(&kv, 5), 0);
    cr_assert_eq(kv_blocks_for_tokens(0), 0);
    cr_assert_eq(kv_blocks_for_tokens(1), 1);
    cr_assert_eq(kv_blocks_for_tokens(16), 1);
    cr_assert_eq(kv_blocks_for_tokens(17), 2);

    cr_assert_eq(kv_table_reserve(&kv, &t, 16), 0);
    cr_assert_eq(t.n_blocks, 1);
    cr_assert_eq(kv_table_reserve(&kv, &t, 10), 0, "shrinking asks for nothing");
    cr_assert_eq(t.n_blocks, 1);
    cr_assert_eq(kv_table_reserve(&kv, &t, 17), 0);
    cr_assert_eq(t.n_blocks, 2);
    cr_assert_eq(kv_cache_num_free(&kv), 3);
    cr_assert_eq(kv_table_blocks_needed(&t, 100), 5);
    cr_assert_eq(kv_table_reserve(&kv, &t, 100), -1);
    cr_assert_eq(t.n_blocks, 2, "a failed reserve takes nothing");
    cr_assert_eq(kv_cache_num_free(&kv), 3);
    cr_assert_eq(kv_table_reserve(&kv, &t, 80), 0);
    cr_assert_eq(kv_cache_num_free(&kv), 0);
    for (int i = 0; i < t.n_blocks; i++)
        for (int j = i + 1; j < t.n_blocks; j++) cr_assert_neq(t.blocks[i], t.blocks[j]);
    kv_table_release(&kv, &t);
    cr_assert_eq(t.n_blocks, 0);
    cr_assert_eq(kv_cache_num_free(&kv), 5);
    kv_table_free(&kv, &t);
    kv_cache_free(&kv);
}

/* Indexes block b as a block of tokens base.. under parent 0 (what the scheduler does for a
 * full block), so that releasing it caches it instead of freeing it. */
static void index_block(struct kv_cache *kv, int32_t b, int32_t base)
{
    int32_t t[KV_BLOCK_SIZE];
    for (int i = 0; i < KV_BLOCK_SIZE; i++) t[i] = base + i;
    cr_assert(pc_insert(&kv->pc, b, pc_hash_block(0, t), 0, t, 0));
}

Test(kv_cache, released_indexed_blocks_stay_cached_until_needed)
{
    struct kv_cache kv;
    cr_assert_eq(kv_cache_init(&kv, 3), 0);
    struct kv_table t = {0};
    cr_assert_eq(kv_table_reserve(&kv, &t, 3 * KV_BLOCK_SIZE), 0);
    cr_assert_eq(t.blocks[0], 0);
    index_block(&kv, 0, 100);
    index_block(&kv, 1, 200);
    kv_table_release(&kv, &t);
    cr_assert_eq(kv_cache_num_free(&kv), 3, "cached blocks count as free");
    cr_assert_eq(kv_cache_num_cached(&kv), 2);
    cr_assert_eq(kv.n_free, 1, "only the unindexed block went back to the stack");

    /* A hit takes a cached block out of the LRU; allocations use the stack first, then evict
     * the least recent, which is the table's later block: released last to first. */
    kv_block_hold(&kv, 0);
    cr_assert_eq(kv_cache_num_free(&kv), 2);
    cr_assert_eq(kv_block_alloc(&kv), 2);
    cr_assert_eq(kv_cache_num_cached(&kv), 2, "the stack served it: nothing evicted");
    cr_assert_eq(kv_block_alloc(&kv), 1);
    cr_assert_eq(kv_cache_num_cached(&kv), 1, "evicted, it holds nothing reusable any more");
    cr_assert_eq(kv_block_alloc(&kv), -1, "block 0 is held");
    cr_assert_eq(kv.pc.evictions, 1);
    kv_block_release(&kv, 1);
    kv_block_release(&kv, 2);
    kv_block_release(&kv, 0);
    cr_assert_eq(kv.n_free, 2);
    cr_assert_eq(kv.pc.n_lru, 1);
    kv_table_free(&kv, &t);
    kv_cache_free(&kv);
}

Test(kv_cache, held_blocks_are_counted_and_appended)
{
    struct kv_cache kv;
    cr_assert_eq(kv_cache_init(&kv, 2), 0);
    struct kv_table a = {0}, b = {0};
    cr_assert_eq(kv_table_reserve(&kv, &a, KV_BLOCK_SIZE), 0);
    index_block(&kv, a.blocks[0], 1);
    cr_assert_eq(kv_table_append_held(&kv, &b, a.blocks[0]), 0);
    cr_assert_eq(kv.refcount[a.blocks[0]], 2);
    cr_assert_eq(kv_table_reserve(&kv, &b, 2 * KV_BLOCK_SIZE), 0);
    cr_assert_eq(b.n_blocks, 2);
    cr_assert_eq(kv_cache_num_free(&kv), 0);
    kv_table_release(&kv, &a);
    cr_assert_eq(kv_cache_num_free(&kv), 0, "b still holds the shared block");
    kv_table_release(&kv, &b);
    cr_assert_eq(kv_cache_num_free(&kv), 2);
    kv_table_free(&kv, &a);
    kv_table_free(&kv, &b);
    kv_cache_free(&kv);
}
