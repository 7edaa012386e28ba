/* The engine over the real CPU backend and stories260K: continuous batching (with chunked
 * prefill and preemption) gives exactly the tokens that one-at-a-time serving gives. */
#include <criterion/criterion.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/engine/engine.h"
#include "tests/unit/engine/settled_stats.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define N_REQ 8
#define MAX_TOK 48

struct out {
    int32_t tokens[MAX_TOK];
    int32_t n;
    enum finish_reason finish;
    char error[256];
};

struct run {
    uv_loop_t loop;
    uv_timer_t timer;
    struct engine *eng;
    struct out res[N_REQ];
    int done;
    bool timed_out;
};

static void on_event(const struct engine_event *ev, void *user)
{
    struct run *r = user;
    struct out *o = &r->res[ev->id];
    for (int32_t i = 0; i < ev->n_tokens && o->n < MAX_TOK; i++) o->tokens[o->n++] = ev->tokens[i].id;
    if (ev->finish != FINISH_NONE) {
        o->finish = ev->finish;
        if (ev->error) snprintf(o->error, sizeof o->error, "%s", ev->error);
        r->done++;
    }
}

static void on_timeout(uv_timer_t *t)
{
    ((struct run *)t->data)->timed_out = true;
}

static void wait_for(struct run *r, int n)
{
    r->timed_out = false;
    uv_timer_start(&r->timer, on_timeout, 30000, 0);
    while (r->done < n && !r->timed_out) uv_run(&r->loop, UV_RUN_ONCE);
    uv_timer_stop(&r->timer);
    cr_assert_not(r->timed_out);
}

static struct engine_request *request(const struct tokenizer *tok, int i)
{
    static const char *texts[] = {"Once upon a time", "The little dog", "Lily and Ben went to the park",
                                  "One day, a big", "The sun was", "Tom had a red ball. He", "She saw a bird",
                                  "There was a girl named Sue. Sue liked to play with her friends in the garden"};
    struct engine_request *q = calloc(1, sizeof *q);
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, texts[i], strlen(texts[i]), true, &q->prompt, &n), 0);
    q->n_prompt = (int32_t)n;
    q->id = (uint64_t)i;
    q->max_tokens = MAX_TOK;
    q->skip_special = true;
    q->has_seed = true;
    q->sampling = (struct sampling_params){.temperature = i % 2 ? 0.9f : 0.0f, .top_p = i % 4 == 1 ? 0.9f : 1.0f,
                                           .top_k = -1, .repetition_penalty = 1.0f, .seed = 42 + (uint64_t)i,
                                           .logprobs = -1};
    return q;
}

static void serve(struct run *r, const struct model *m, const struct tokenizer *tok, int32_t kv_blocks,
                  int32_t max_batched, bool one_at_a_time, bool overlap, uint64_t *preemptions)
{
    char err[256];
    struct backend *b = NULL;
    struct backend_options bo = {.kv_blocks = kv_blocks, .max_batch_tokens = max_batched, .max_batch_seqs = N_REQ,
                                 .cpu.n_threads = 2};
    cr_assert_eq(backend_cpu_create(&b, m, &bo, err, sizeof err), 0, "%s", err);
    memset(r, 0, sizeof *r);
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    struct engine_options eo = {
        .max_num_seqs = N_REQ, .max_num_batched_tokens = max_batched, .seed = 1, .overlap_always = overlap};
    cr_assert_eq(engine_create(&r->eng, b, tok, &eo, &r->loop, on_event, r), 0);
    for (int i = 0; i < N_REQ; i++) {
        cr_assert_eq(engine_submit(r->eng, request(tok, i)), 0);
        if (one_at_a_time) wait_for(r, i + 1);
    }
    wait_for(r, N_REQ);
    struct engine_stats st;
    settled_stats(r->eng, &st);
    *preemptions = st.preemptions;
    if (overlap) cr_assert_gt(st.overlapped_steps, st.steps / 2);
    cr_assert_eq(st.kv_blocks_free, st.kv_blocks_total);
    engine_free(r->eng);
    uv_close((uv_handle_t *)&r->timer, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
    backend_free(b);
}

Test(engine_cpu, continuous_batching_matches_one_at_a_time)
{
    const char *data = getenv("SLUICE_TEST_DATA");
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) cr_skip_test("stories260K: %s", err);
    cr_assert_eq(tok_load(&tok, path, err, sizeof err), 0, "%s", err);

    static struct run seq, par, over;
    uint64_t pre_seq, pre_par, pre_over;
    serve(&seq, m, tok, 64, 64, true, false, &pre_seq);
    /* 8 blocks (128 tokens) for 8 requests of up to ~70 tokens: preemption; 16-token steps:
     * chunked prefill. Then the same with each step queued before the last one's tokens are
     * taken (as over a GPU). */
    serve(&par, m, tok, 8, 16, false, false, &pre_par);
    serve(&over, m, tok, 8, 16, false, true, &pre_over);
    cr_assert_gt(pre_par, 0, "the small cache was meant to force preemption");
    cr_assert_gt(pre_over, 0, "the small cache was meant to force preemption");
    for (int i = 0; i < N_REQ; i++) {
        cr_assert(seq.res[i].finish == FINISH_LENGTH || seq.res[i].finish == FINISH_STOP, "%d: %s", i, seq.res[i].error);
        const struct out *runs[2] = {&par.res[i], &over.res[i]};
        for (int k = 0; k < 2; k++) {
            cr_assert_eq(seq.res[i].finish, runs[k]->finish, "request %d, run %d", i, k);
            cr_assert_eq(seq.res[i].n, runs[k]->n, "request %d, run %d", i, k);
            cr_assert(memcmp(seq.res[i].tokens, runs[k]->tokens, (size_t)seq.res[i].n * sizeof(int32_t)) == 0,
                      "request %d, run %d: tokens differ", i, k);
        }
    }
    tok_free(tok);
    model_free(m);
}

/* Prefix caching over the real model: the K/V a request maps from the cache are exactly what
 * it would have computed, so greedy and seeded outputs are the same with the cache off. Every
 * prompt starts with the same story (three full blocks and more); requests 2k and 2k + 1 are
 * the same prompt. */
static struct engine_request *prefix_request(const struct tokenizer *tok, int i)
{
    static const char *story = "Once upon a time, there was a little girl named Lily. She loved to play outside in "
                               "the park with her big red ball. Lily was very happy and she ran to find her friend Ben. One day, her "
                               "mom said";
    static const char *ends[] = {" that they would go to the beach.", " no.", " it was time to eat lunch with Ben",
                                 " she could have a cookie"};
    char text[512];
    snprintf(text, sizeof text, "%s%s", story, ends[(i / 2) % 4]);
    struct engine_request *q = request(tok, i);
    free(q->prompt);
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, text, strlen(text), true, &q->prompt, &n), 0);
    cr_assert_gt(n, 3 * KV_BLOCK_SIZE);
    q->n_prompt = (int32_t)n;
    return q;
}

static void serve_prefix(struct run *r, const struct model *m, const struct tokenizer *tok, int32_t kv_blocks,
                         int32_t max_batched, bool caching, bool at_once, struct engine_stats *st)
{
    char err[256];
    struct backend *b = NULL;
    struct backend_options bo = {.kv_blocks = kv_blocks, .max_batch_tokens = max_batched, .max_batch_seqs = N_REQ,
                                 .cpu.n_threads = 2};
    cr_assert_eq(backend_cpu_create(&b, m, &bo, err, sizeof err), 0, "%s", err);
    memset(r, 0, sizeof *r);
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    struct engine_options eo = {.max_num_seqs = N_REQ, .max_num_batched_tokens = max_batched, .seed = 1,
                                .overlap_always = at_once, .no_prefix_caching = !caching};
    cr_assert_eq(engine_create(&r->eng, b, tok, &eo, &r->loop, on_event, r), 0);
    for (int i = 0; i < N_REQ; i++) {
        cr_assert_eq(engine_submit(r->eng, prefix_request(tok, i)), 0);
        if (!at_once) wait_for(r, i + 1);
    }
    wait_for(r, N_REQ);
    engine_get_stats(r->eng, st);
    engine_free(r->eng);
    uv_close((uv_handle_t *)&r->timer, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
    backend_free(b);
}

Test(engine_cpu, prefix_cache_gives_the_same_tokens)
{
    const char *data = getenv("SLUICE_TEST_DATA");
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) cr_skip_test("stories260K: %s", err);
    cr_assert_eq(tok_load(&tok, path, err, sizeof err), 0, "%s", err);

    static struct run off, one, many;
    struct engine_stats st_off, st_one, st_many;
    serve_prefix(&off, m, tok, 64, 64, false, false, &st_off);
    /* One at a time: each maps what the ones before left. All at once, in 16 blocks (256
     * tokens for 8 requests of ~70 + 48) with 32-token steps: twins wait for each other's
     * chunks, sequences are preempted and evicted, steps overlap. */
    serve_prefix(&one, m, tok, 64, 64, true, false, &st_one);
    serve_prefix(&many, m, tok, 16, 32, true, true, &st_many);
    cr_assert_eq(st_off.prefix_hit_tokens, 0);
    cr_assert_geq(st_one.prefix_hit_tokens, (N_REQ - 1) * 3 * KV_BLOCK_SIZE, "%llu",
                  (unsigned long long)st_one.prefix_hit_tokens);
    cr_assert_gt(st_many.prefix_hit_tokens, 0);
    cr_assert_gt(st_many.preemptions, 0, "the small cache was meant to force preemption");
    for (int i = 0; i < N_REQ; i++) {
        cr_assert(off.res[i].finish == FINISH_LENGTH || off.res[i].finish == FINISH_STOP, "%d: %s", i, off.res[i].error);
        const struct out *runs[2] = {&one.res[i], &many.res[i]};
        for (int k = 0; k < 2; k++) {
            cr_assert_eq(off.res[i].finish, runs[k]->finish, "request %d, run %d", i, k);
            cr_assert_eq(off.res[i].n, runs[k]->n, "request %d, run %d", i, k);
            cr_assert(memcmp(off.res[i].tokens, runs[k]->tokens, (size_t)off.res[i].n * sizeof(int32_t)) == 0,
                      "request %d, run %d: tokens differ with the prefix cache", i, k);
        }
    }
    tok_free(tok);
    model_free(m);
}
