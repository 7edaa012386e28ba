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
