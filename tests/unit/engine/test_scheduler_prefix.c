/* The scheduler with prefix caching: which blocks a sequence maps, when it waits for blocks
 * another sequence is computing, what a preempted sequence finds again, and what is evicted
 * first. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/engine/scheduler.h"

static int32_t *tokens_of(int32_t n, int32_t base)
{
    int32_t *p = malloc((size_t)n * sizeof *p);
    for (int32_t i = 0; i < n; i++) p[i] = base + i;
    return p;
}

static struct sched_seq *add_tokens(struct scheduler *s, uint64_t id, int32_t *prompt, int32_t n)
{
    struct sched_seq *q = NULL;
    cr_assert_eq(sched_add(s, id, prompt, n, NULL, &q), 0);
    return q;
}

static struct sched_seq *add(struct scheduler *s, uint64_t id, int32_t n, int32_t base)
{
    return add_tokens(s, id, tokens_of(n, base), n);
}

static void init(struct scheduler *s, int32_t blocks, int32_t budget, bool caching)
{
    struct sched_options o = {.max_num_seqs = 8, .max_num_batched_tokens = budget, .prefix_caching = caching};
    cr_assert_eq(sched_init(s, blocks, &o), 0);
}

static void schedule(struct scheduler *s, const struct sched_entry **e, int32_t *n)
{
    cr_assert_eq(sched_schedule(s, e, n), 0);
}

static void sample_all(const struct sched_entry *e, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (e[i].sample) cr_assert_eq(sched_seq_append(e[i].seq, 7), 0);
}

/* Schedules one step and samples; returns the entry of q (NULL when q was not scheduled). */
static const struct sched_entry *step_find(struct scheduler *s, const struct sched_seq *q)
{
    const struct sched_entry *e, *found = NULL;
    int32_t n;
    schedule(s, &e, &n);
    for (int32_t i = 0; i < n; i++)
        if (e[i].seq == q) found = &e[i];
    sample_all(e, n);
    return found;
}

Test(scheduler_prefix, a_repeated_prompt_maps_the_full_blocks_and_computes_the_rest)
{
    struct scheduler s;
    init(&s, 16, 64, true);
    struct sched_seq *a = add(&s, 1, 40, 100);
    cr_assert_not_null(step_find(&s, a));
    int32_t a_blocks[3];
    memcpy(a_blocks, a->table.blocks, sizeof a_blocks);
    sched_seq_remove(&s, a);
    cr_assert_eq(kv_cache_num_free(&s.kv), 16);
    cr_assert_eq(kv_cache_num_cached(&s.kv), 2, "the two full blocks stay cached");

    struct sched_seq *b = add(&s, 2, 40, 100);
    const struct sched_entry *e = step_find(&s, b);
    cr_assert_not_null(e);
    cr_assert_eq(e->start_pos, 32);
    cr_assert_eq(e->n_new, 8);
    cr_assert(e->sample);
    cr_assert_eq(b->table.blocks[0], a_blocks[0]);
    cr_assert_eq(b->table.blocks[1], a_blocks[1]);
    cr_assert_eq(s.prefix_query_tokens, 80);
    cr_assert_eq(s.prefix_hit_tokens, 32);
    sched_seq_remove(&s, b);

    /* A prompt that ends on a block boundary computes its last block again: its last token's
     * logits are what it samples from. */
    struct sched_seq *c = add(&s, 3, 32, 100);
    e = step_find(&s, c);
    cr_assert_eq(e->start_pos, 16);
    cr_assert_eq(e->n_new, 16);
    cr_assert_eq(c->table.blocks[0], a_blocks[0]);
    cr_assert_neq(c->table.blocks[1], a_blocks[1], "a full block is never written again");
    sched_seq_remove(&s, c);

    /* The same tokens after a different first block share nothing. */
    int32_t *p = tokens_of(40, 100);
    p[3] = 5;
    struct sched_seq *d = add_tokens(&s, 4, p, 40);
    e = step_find(&s, d);
    cr_assert_eq(e->start_pos, 0);
    sched_free(&s);
}

Test(scheduler_prefix, off_shares_nothing)
{
    struct scheduler s;
    init(&s, 16, 64, false);
    struct sched_seq *a = add(&s, 1, 40, 100);
    cr_assert_not_null(step_find(&s, a));
    sched_seq_remove(&s, a);
    cr_assert_eq(kv_cache_num_cached(&s.kv), 0);
    struct sched_seq *b = add(&s, 2, 40, 100), *c = add(&s, 3, 40, 100);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2, "both computed at once, in full");
    cr_assert_eq(e[0].seq, b);
    cr_assert_eq(e[0].start_pos, 0);
    cr_assert_eq(e[1].seq, c);
    cr_assert_eq(e[1].start_pos, 0);
    cr_assert_eq(s.prefix_query_tokens, 0);
    sched_free(&s);
}

Test(scheduler_prefix, the_salt_separates_equal_tokens)
{
    struct scheduler s;
    init(&s, 16, 64, true);
    struct sched_seq *a = add(&s, 1, 40, 100);
    a->salt = 11;
    step_find(&s, a);
    sched_seq_remove(&s, a);
    struct sched_seq *b = add(&s, 2, 40, 100);
    b->salt = 12;
    cr_assert_eq(step_find(&s, b)->start_pos, 0);
    sched_seq_remove(&s, b);
    struct sched_seq *c = add(&s, 3, 40, 100);
    c->salt = 11;
    cr_assert_eq(step_find(&s, c)->start_pos, 32);
    sched_free(&s);
}

/* The n choices of one request arrive together: the first computes the prompt, the others wait
 * for its blocks instead of computing them too. */
Test(scheduler_prefix, identical_prompts_together_are_computed_once)
{
    struct scheduler s;
    init(&s, 32, 64, true);
    struct sched_seq *q[3];
    for (int i = 0; i < 3; i++) q[i] = add(&s, (uint64_t)i + 1, 40, 100);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1, "the others wait one step");
    cr_assert_eq(e[0].seq, q[0]);
    cr_assert_eq(e[0].n_new, 40);
    sample_all(e, n);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 3);
    cr_assert_eq(e[0].n_new, 1, "decode");
    for (int i = 1; i < 3; i++) {
        cr_assert_eq(e[i].seq, q[i]);
        cr_assert_eq(e[i].start_pos, 32);
        cr_assert_eq(e[i].n_new, 8);
        cr_assert_eq(q[i]->table.blocks[0], q[0]->table.blocks[0]);
        cr_assert_eq(q[i]->table.blocks[1], q[0]->table.blocks[1]);
    }
    cr_assert_eq(s.kv.refcount[q[0]->table.blocks[0]], 3);
    cr_assert_eq(s.prefix_hit_tokens, 64);
    sched_free(&s);
}

Test(scheduler_prefix, a_waiting_twin_does_not_hold_up_others)
{
    struct scheduler s;
    init(&s, 32, 64, true);
    struct sched_seq *a = add(&s, 1, 40, 100), *twin = add(&s, 2, 40, 100), *other = add(&s, 3, 20, 900);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    cr_assert_eq(e[0].seq, a);
    cr_assert_eq(e[1].seq, other);
    cr_assert_eq(twin->state, SCHED_WAITING);
    sched_free(&s);
}

/* A long prompt prefilled in chunks: its twin maps each chunk once that chunk is computed. */
Test(scheduler_prefix, a_twin_of_a_chunked_prefill_waits_for_every_chunk)
{
    struct scheduler s;
    init(&s, 32, 32, true);
    struct sched_seq *a = add(&s, 1, 64, 100), *b = add(&s, 2, 64, 100);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, a);
    cr_assert_eq(e[0].n_new, 32);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1, "the budget goes to a's second chunk");
    cr_assert_eq(e[0].start_pos, 32);
    sample_all(e, n);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    cr_assert_eq(e[1].seq, b);
    cr_assert_eq(e[1].start_pos, 48, "three of four blocks mapped, the last computed for its logits");
    cr_assert_eq(e[1].n_new, 16);
    cr_assert_eq(s.prefix_hit_tokens, 48);
    sched_free(&s);
}

/* A preempted sequence's full blocks stay cached: its recompute maps those not evicted since,
 * and eviction took the leaf (its later block) first. */
Test(scheduler_prefix, preempted_recompute_maps_what_is_left_of_its_blocks)
{
    struct scheduler s;
    init(&s, 5, 64, true);
    struct sched_seq *a = add(&s, 1, 32, 100), *b = add(&s, 2, 32, 500);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    sample_all(e, n);
    int32_t b0 = b->table.blocks[0], b1 = b->table.blocks[1];
    schedule(&s, &e, &n); /* both need a third block; one is free */
    cr_assert_eq(s.preemptions, 1);
    cr_assert_eq(b->state, SCHED_WAITING);
    cr_assert_eq(kv_cache_num_free(&s.kv), 2, "b's blocks count as free");
    sample_all(e, n);
    /* a grows to 49 tokens, taking a fourth block: b's leaf is evicted, its first block kept. */
    while (a->n_tokens < 49) {
        cr_assert_null(step_find(&s, b), "b needs a block besides its own");
    }
    cr_assert_null(step_find(&s, b));
    cr_assert_eq(a->table.n_blocks, 4);
    cr_assert_eq(s.kv.pc.evictions, 1);
    cr_assert(pc_indexed(&s.kv.pc, b0));
    cr_assert_not(pc_indexed(&s.kv.pc, b1));
    sched_seq_remove(&s, a);
    e = step_find(&s, b);
    cr_assert_not_null(e);
    cr_assert_eq(e->start_pos, 16);
    cr_assert_eq(e->n_new, 17, "the rest of the prompt and the token sampled before preemption");
    cr_assert(e->sample);
    cr_assert_eq(b->table.blocks[0], b0);
    sched_free(&s);
}

/* Freed chains are evicted leaves first: the block a later prompt shared outlives the blocks
 * that extended it, whichever sequence freed them last. */
Test(scheduler_prefix, eviction_takes_leaves_before_their_prefix)
{
    struct scheduler s;
    init(&s, 8, 128, true);
    struct sched_seq *a = add(&s, 1, 49, 100);
    step_find(&s, a);
    int32_t a0 = a->table.blocks[0], a1 = a->table.blocks[1], a2 = a->table.blocks[2];
    sched_seq_remove(&s, a);
    int32_t *p = tokens_of(49, 5000);
    for (int32_t i = 0; i < 16; i++) p[i] = 100 + i; /* a's first block, then its own */
    struct sched_seq *c = add_tokens(&s, 2, p, 49);
    const struct sched_entry *e = step_find(&s, c);
    cr_assert_eq(e->start_pos, 16);
    cr_assert_eq(c->table.blocks[0], a0);
    int32_t c1 = c->table.blocks[1], c2 = c->table.blocks[2];
    sched_seq_remove(&s, c);
    cr_assert_eq(kv_cache_num_cached(&s.kv), 5);
    cr_assert_eq(s.kv.n_free, 3);
    for (int i = 0; i < 3; i++) cr_assert_geq(kv_block_alloc(&s.kv), 0); /* the free stack */
    int32_t order[5] = {a2, a1, c2, c1, a0};
    for (int i = 0; i < 5; i++) cr_assert_eq(kv_block_alloc(&s.kv), order[i], "eviction %d", i);
    cr_assert_eq(kv_block_alloc(&s.kv), -1);
    sched_free(&s);
}

/* With overlapped steps a sequence's last token may be a placeholder for one still on the
 * device: a block holding one is indexed only once the token is known. */
Test(scheduler_prefix, blocks_with_placeholders_are_indexed_once_known)
{
    struct scheduler s;
    init(&s, 8, 64, true);
    struct sched_seq *a = add(&s, 1, 31, 100);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(sched_seq_append(a, BACKEND_TOKEN_FROM_PREV(0)), 0);
    cr_assert_eq(s.kv.pc.n_indexed, 1);
    schedule(&s, &e, &n); /* computes position 31, whose token the host does not know yet */
    cr_assert_eq(a->n_computed, 32);
    cr_assert_eq(s.kv.pc.n_indexed, 1, "not indexed under a placeholder");
    cr_assert_eq(sched_seq_append(a, BACKEND_TOKEN_FROM_PREV(0)), 0);
    a->tokens[31] = 42; /* the first step's token arrives */
    schedule(&s, &e, &n);
    cr_assert_eq(s.kv.pc.n_indexed, 2);
    /* A prompt that carries that token maps both blocks. */
    int32_t *p = tokens_of(40, 100);
    p[31] = 42;
    sched_seq_remove(&s, a);
    struct sched_seq *b = add_tokens(&s, 2, p, 40);
    cr_assert_eq(step_find(&s, b)->start_pos, 32);
    sched_free(&s);
}

/* Two prompts that share a head, arriving together: a short head (a chat template's first
 * block) is computed twice rather than delay the second by a step; a long one (a system
 * prompt of SCHED_WAIT_MIN_BLOCKS blocks or more) is worth the wait. */
static void shared_head(int32_t head_blocks, bool expect_wait)
{
    struct scheduler s;
    init(&s, 64, 512, true);
    const int32_t n = head_blocks * KV_BLOCK_SIZE + 40;
    int32_t *p = tokens_of(n, 100), *q = tokens_of(n, 100);
    for (int32_t i = head_blocks * KV_BLOCK_SIZE; i < n; i++) q[i] += 5000;
    struct sched_seq *a = add_tokens(&s, 1, p, n), *b = add_tokens(&s, 2, q, n);
    const struct sched_entry *e;
    int32_t k;
    schedule(&s, &e, &k);
    cr_assert_eq(e[0].seq, a);
    if (!expect_wait) {
        cr_assert_eq(k, 2, "%d blocks in common: not worth a step", head_blocks);
        cr_assert_eq(e[1].seq, b);
        cr_assert_eq(e[1].start_pos, 0);
        sched_free(&s);
        return;
    }
    cr_assert_eq(k, 1, "%d blocks in common: b waits for them", head_blocks);
    sample_all(e, k);
    schedule(&s, &e, &k);
    cr_assert_eq(k, 2);
    cr_assert_eq(e[1].seq, b);
    cr_assert_eq(e[1].start_pos, head_blocks * KV_BLOCK_SIZE);
    sched_free(&s);
}

Test(scheduler_prefix, a_short_shared_head_is_not_worth_a_step)
{
    shared_head(1, false);
    shared_head(SCHED_WAIT_MIN_BLOCKS - 1, false);
}

Test(scheduler_prefix, a_long_shared_head_is_worth_a_step)
{
    shared_head(SCHED_WAIT_MIN_BLOCKS, true);
    shared_head(20, true);
}

/* prefix_cache_prompt_only (the CUDA backend under --deterministic): a finished sequence's
 * generated tokens leave no block behind, so the next turn maps its prompt blocks only and
 * computes the answer's tokens itself; with the option off it maps them too. */
static int32_t next_turn_hit(bool prompt_only)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .prefix_caching = true,
                              .prefix_cache_prompt_only = prompt_only};
    cr_assert_eq(sched_init(&s, 32, &o), 0);
    struct sched_seq *a = add(&s, 1, 20, 100);
    while (a->n_tokens < 52) cr_assert_not_null(step_find(&s, a)); /* prompt 20, 32 generated */
    int32_t *turn2 = malloc(60 * sizeof *turn2);
    memcpy(turn2, a->tokens, 52 * sizeof *turn2);
    for (int i = 52; i < 60; i++) turn2[i] = 900 + i;
    sched_seq_remove(&s, a);
    struct sched_seq *b = add_tokens(&s, 2, turn2, 60);
    const struct sched_entry *e = step_find(&s, b);
    cr_assert_not_null(e);
    const int32_t hit = e->start_pos;
    sched_seq_remove(&s, b);
    sched_free(&s);
    return hit;
}

Test(scheduler_prefix, prompt_only_caches_no_generated_block)
{
    cr_assert_eq(next_turn_hit(true), 16, "only the prompt's one full block is mapped");
    cr_assert_eq(next_turn_hit(false), 48, "the answer's full blocks are mapped too");
}
