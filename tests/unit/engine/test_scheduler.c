#include <criterion/criterion.h>
#include <stdlib.h>

#include "worker/engine/scheduler.h"

static int32_t *prompt_of(int32_t n, int32_t base)
{
    int32_t *p = malloc((size_t)n * sizeof *p);
    for (int32_t i = 0; i < n; i++) p[i] = base + i;
    return p;
}

static struct sched_seq *add(struct scheduler *s, uint64_t id, int32_t n)
{
    struct sched_seq *q = NULL;
    cr_assert_eq(sched_add(s, id, prompt_of(n, (int32_t)id * 1000), n, NULL, &q), 0);
    return q;
}

static void schedule(struct scheduler *s, const struct sched_entry **e, int32_t *n)
{
    cr_assert_eq(sched_schedule(s, e, n), 0);
}

/* Appends a token to every sampled sequence, as the engine does after a step. */
static void sample_all(const struct sched_entry *e, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (e[i].sample) cr_assert_eq(sched_seq_append(e[i].seq, 7), 0);
}

Test(scheduler, admission_respects_max_num_seqs)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 2, .max_num_batched_tokens = 100};
    cr_assert_eq(sched_init(&s, 10, &o), 0);
    add(&s, 1, 5);
    add(&s, 2, 5);
    struct sched_seq *c = add(&s, 3, 5);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    cr_assert_eq(e[0].seq->id, 1);
    cr_assert_eq(e[1].seq->id, 2);
    cr_assert_eq(s.running.count, 2);
    cr_assert_eq(s.waiting.count, 1);
    cr_assert_eq(c->state, SCHED_WAITING);
    sample_all(e, n);
    /* The first finishes: the third gets its slot in the next step. */
    sched_seq_remove(&s, e[0].seq);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    cr_assert_eq(e[0].seq->id, 2);
    cr_assert_eq(e[0].n_new, 1);
    cr_assert_eq(e[1].seq, c);
    cr_assert_eq(e[1].n_new, 5);
    sched_free(&s);
}

Test(scheduler, token_budget_chunks_the_admitted_prefill)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 10};
    cr_assert_eq(sched_init(&s, 10, &o), 0);
    add(&s, 1, 6);
    add(&s, 2, 6);
    add(&s, 3, 6);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    cr_assert_eq(e[0].n_new, 6);
    cr_assert(e[0].sample);
    cr_assert_eq(e[1].n_new, 4);
    cr_assert_eq(e[1].start_pos, 0);
    cr_assert_not(e[1].sample, "a partial prefill samples nothing");
    cr_assert_eq(s.waiting.count, 1);
    sample_all(e, n);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 3);
    cr_assert_eq(e[0].n_new, 1); /* decode */
    cr_assert_eq(e[0].start_pos, 6);
    cr_assert_eq(e[1].n_new, 2); /* rest of the prefill */
    cr_assert_eq(e[1].start_pos, 4);
    cr_assert(e[1].sample);
    cr_assert_eq(e[2].n_new, 6);
    int32_t total = 0;
    for (int32_t i = 0; i < n; i++) total += e[i].n_new;
    cr_assert_leq(total, 10);
    sched_free(&s);
}

Test(scheduler, admission_waits_for_blocks)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 100};
    cr_assert_eq(sched_init(&s, 2, &o), 0);
    struct sched_seq *a = add(&s, 1, 20); /* two blocks */
    struct sched_seq *b = add(&s, 2, 3);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, a);
    cr_assert_eq(a->table.n_blocks, 2);
    cr_assert_eq(kv_cache_num_free(&s.kv), 0);
    cr_assert_eq(b->state, SCHED_WAITING);
    sample_all(e, n);
    sched_seq_remove(&s, a);
    cr_assert_eq(kv_cache_num_free(&s.kv), 2, "finishing frees the blocks");
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, b);
    sched_free(&s);
}

Test(scheduler, long_prompt_prefills_over_steps_then_decodes)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 4, .max_num_batched_tokens = 16};
    cr_assert_eq(sched_init(&s, 16, &o), 0);
    struct sched_seq *a = add(&s, 1, 40);
    const struct sched_entry *e;
    int32_t n;
    int32_t starts[3] = {0, 16, 32}, lens[3] = {16, 16, 8};
    for (int step = 0; step < 3; step++) {
        schedule(&s, &e, &n);
        cr_assert_eq(n, 1);
        cr_assert_eq(e[0].start_pos, starts[step]);
        cr_assert_eq(e[0].n_new, lens[step]);
        cr_assert_eq(e[0].sample, step == 2);
        cr_assert_geq(a->table.n_blocks * KV_BLOCK_SIZE, e[0].start_pos + e[0].n_new);
        sample_all(e, n);
    }
    for (int step = 0; step < 20; step++) {
        schedule(&s, &e, &n);
        cr_assert_eq(n, 1);
        cr_assert_eq(e[0].n_new, 1);
        cr_assert_eq(e[0].start_pos, 40 + step);
        cr_assert(e[0].sample);
        cr_assert_eq(a->table.n_blocks, kv_blocks_for_tokens(41 + step));
        sample_all(e, n);
    }
    cr_assert_eq(sched_seq_generated(a), 21);
    sched_free(&s);
}

Test(scheduler, preempts_the_newest_and_resumes_it)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 4, .max_num_batched_tokens = 64};
    cr_assert_eq(sched_init(&s, 2, &o), 0);
    struct sched_seq *a = add(&s, 1, 16);
    struct sched_seq *b = add(&s, 2, 16);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 2);
    sample_all(e, n); /* both now hold 17 tokens: each needs a second block */
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, a);
    cr_assert_eq(e[0].start_pos, 16);
    cr_assert_eq(s.preemptions, 1);
    cr_assert_eq(b->state, SCHED_WAITING);
    cr_assert_eq(b->n_computed, 0);
    cr_assert_eq(b->table.n_blocks, 0);
    cr_assert_eq(s.waiting.head, b);
    sample_all(e, n);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1, "b waits while a holds every block");
    sample_all(e, n);
    sched_seq_remove(&s, a);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, b);
    cr_assert_eq(e[0].start_pos, 0);
    cr_assert_eq(e[0].n_new, 17, "prompt and generated token are recomputed together");
    cr_assert(e[0].sample);
    cr_assert_eq(sched_seq_generated(b), 1, "sampling carries on at the same count");
    cr_assert_eq(b->tokens[16], 7);
    sched_free(&s);
}

Test(scheduler, a_sequence_alone_preempts_nothing_it_needs)
{
    /* Three sequences, cache for two growing ones: the oldest always progresses. */
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 4, .max_num_batched_tokens = 64};
    cr_assert_eq(sched_init(&s, 3, &o), 0);
    struct sched_seq *q[3];
    for (int i = 0; i < 3; i++) q[i] = add(&s, (uint64_t)i + 1, 10);
    const struct sched_entry *e;
    int32_t n;
    for (int step = 0; step < 30; step++) {
        schedule(&s, &e, &n);
        cr_assert_gt(n, 0);
        cr_assert_eq(e[0].seq, q[0], "the oldest is never preempted");
        int32_t used = 0;
        for (struct sched_seq *r = s.running.head; r; r = r->next) used += r->table.n_blocks;
        cr_assert_eq(used + kv_cache_num_free(&s.kv), 3, "no block lost or shared");
        sample_all(e, n);
    }
    cr_assert_gt(s.preemptions, 0);
    cr_assert_eq(sched_seq_generated(q[0]), 30);
    sched_free(&s);
}

Test(scheduler, abort_frees_blocks)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 4, .max_num_batched_tokens = 64};
    cr_assert_eq(sched_init(&s, 8, &o), 0);
    struct sched_seq *a = add(&s, 1, 40);
    struct sched_seq *b = add(&s, 2, 5);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(kv_cache_num_free(&s.kv), 4);
    sched_seq_remove(&s, a);
    cr_assert_eq(kv_cache_num_free(&s.kv), 7);
    cr_assert_eq(s.running.count, 1);
    sched_seq_remove(&s, b);
    cr_assert_eq(kv_cache_num_free(&s.kv), 8);
    cr_assert(sched_idle(&s));
    struct sched_seq *c = add(&s, 3, 5);
    sched_seq_remove(&s, c); /* a waiting one */
    cr_assert(sched_idle(&s));
    sched_free(&s);
}

Test(scheduler, impossible_prompt_is_refused)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 4, .max_num_batched_tokens = 64};
    cr_assert_eq(sched_init(&s, 2, &o), 0);
    int32_t *p = prompt_of(33, 0);
    struct sched_seq *q = NULL;
    cr_assert_eq(sched_add(&s, 1, p, 33, NULL, &q), SCHED_ERR_TOO_LONG);
    cr_assert_eq(sched_add(&s, 1, p, 0, NULL, &q), SCHED_ERR_TOO_LONG);
    free(p);
    cr_assert(sched_idle(&s));
    add(&s, 2, 32);
    const struct sched_entry *e;
    int32_t n;
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    sched_free(&s);
}

/* A model whose every layer slides (Mistral): blocks behind the window of the next token go
 * back to the pool, so a sequence longer than the whole cache runs without preemption, and
 * its table always covers the window. */
Test(scheduler, sliding_window_frees_blocks_behind_the_window)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 2, .max_num_batched_tokens = 64, .sliding_window = 32,
                              .prefix_caching = true};
    cr_assert_eq(sched_init(&s, 6, &o), 0); /* 96 tokens of cache */
    struct sched_seq *q = add(&s, 1, 40);
    const struct sched_entry *e;
    int32_t n;
    while (q->n_tokens < 200) {
        schedule(&s, &e, &n);
        cr_assert_eq(n, 1);
        int32_t first = e[0].start_pos >= 32 ? (e[0].start_pos - 31) / KV_BLOCK_SIZE : 0;
        for (int32_t i = 0; i < q->table.n_blocks; i++) {
            if (i < first) cr_assert_eq(q->table.blocks[i], -1, "block %d kept behind the window at %d", i, e[0].start_pos);
            else cr_assert_geq(q->table.blocks[i], 0, "block %d freed inside the window at %d", i, e[0].start_pos);
        }
        cr_assert_leq(q->table.n_blocks - first, 4);
        sample_all(e, n);
    }
    cr_assert_eq(s.preemptions, 0);
    /* The prompt's first two blocks were indexed before they were freed: a second sequence with
     * the same prompt maps them if they are still cached, else computes them; either way its
     * table covers its prompt. */
    struct sched_seq *r = NULL;
    cr_assert_eq(sched_add(&s, 2, prompt_of(40, 1000), 40, NULL, &r), 0);
    sched_seq_remove(&s, q);
    schedule(&s, &e, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(e[0].seq, r);
    cr_assert_eq(e[0].start_pos + e[0].n_new, 40);
    for (int32_t i = 0; i < r->table.n_blocks; i++) cr_assert_geq(r->table.blocks[i], 0);
    sched_seq_remove(&s, r);
    cr_assert_eq(kv_cache_num_free(&s.kv), 6);
    sched_free(&s);
}

/* With the window and a step fitting the cache, a prompt longer than the whole cache is
 * admitted and prefilled in chunks, the blocks behind the window freed as it goes. */
Test(scheduler, sliding_window_prompt_longer_than_the_cache)
{
    struct scheduler s;
    struct sched_options o = {.max_num_seqs = 1, .max_num_batched_tokens = 16, .sliding_window = 32};
    cr_assert_eq(sched_init(&s, 4, &o), 0); /* 64 tokens of cache; window + step need 4 blocks */
    struct sched_seq *q = add(&s, 1, 150);
    const struct sched_entry *e;
    int32_t n;
    int steps = 0;
    while (q->n_computed < 150) {
        schedule(&s, &e, &n);
        cr_assert_eq(n, 1);
        steps++;
    }
    cr_assert(e[0].sample);
    cr_assert_eq(steps, 10);
    cr_assert_eq(s.preemptions, 0);
    sched_seq_remove(&s, q);
    cr_assert_eq(kv_cache_num_free(&s.kv), 4);
    /* Without the window the same prompt is refused. */
    struct scheduler t;
    struct sched_options p = {.max_num_seqs = 1, .max_num_batched_tokens = 16};
    cr_assert_eq(sched_init(&t, 4, &p), 0);
    int32_t *prompt = prompt_of(150, 0);
    cr_assert_eq(sched_add(&t, 1, prompt, 150, NULL, NULL), SCHED_ERR_TOO_LONG);
    free(prompt);
    sched_free(&t);
    sched_free(&s);
}
