/* The engine end to end over a deterministic toy backend.
 *
 * The toy keeps, per KV cell, the token and position written there, and computes each
 * sampled row's logits from a hash of the sequence's whole history READ BACK THROUGH ITS BLOCK
 * TABLE. So any mistake in block tables, positions, chunking or preemption changes the output,
 * and batch invariance (concurrent == sequential) checks the whole engine. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/engine/engine.h"
#include "worker/sampler/sampler.h"
#include "tests/unit/engine/settled_stats.h"

/* ---- the toy backend ------------------------------------------------------------------- */

struct toy {
    struct backend b;
    int vocab;
    int32_t *cell_tok, *cell_pos;
    bool *banned; /* tokens whose text alone is not valid UTF-8: never produced */
    float *logits, *scratch;
    int fail_at_step; /* -1: never; written by the test thread (toy_fail_after) */
    int steps;        /* read by the test thread */
    int max_seqs_seen, max_tokens_seen;
};

static int toy_fail(struct toy *t, const char *msg)
{
    snprintf(t->b.error, sizeof t->b.error, "%s", msg);
    return -1;
}

/* Makes the toy fail from the n-th step after now on. Armed once the requests are in: armed
 * before, a slow run (ASan on a loaded machine) could reach the failure while the test still
 * submits, and the failed engine would refuse the rest. The engine thread steps the toy while
 * the test thread arms it, hence the atomics. */
static void toy_fail_after(struct toy *t, int n)
{
    __atomic_store_n(&t->fail_at_step, __atomic_load_n(&t->steps, __ATOMIC_ACQUIRE) + n, __ATOMIC_RELEASE);
}

static int toy_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    struct toy *t = (struct toy *)b;
    const int fail_at = __atomic_load_n(&t->fail_at_step, __ATOMIC_ACQUIRE);
    if (fail_at >= 0 && t->steps >= fail_at) return toy_fail(t, "toy device lost");
    __atomic_store_n(&t->steps, t->steps + 1, __ATOMIC_RELEASE);
    if (batch->n_seqs > t->max_seqs_seen) t->max_seqs_seen = batch->n_seqs;
    if (batch->n_tokens > t->max_tokens_seen) t->max_tokens_seen = batch->n_tokens;
    int32_t off = 0, r = 0;
    for (int32_t s = 0; s < batch->n_seqs; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int32_t end = q->start_pos + q->n_new;
        if (q->n_blocks * KV_BLOCK_SIZE < end) return toy_fail(t, "block table too short");
        for (int32_t j = 0; j < q->n_new; j++) {
            int32_t pos = q->start_pos + j;
            int32_t blk = q->block_table[pos / KV_BLOCK_SIZE];
            if (blk < 0 || blk >= b->num_kv_blocks) return toy_fail(t, "bad block id");
            int32_t cell = blk * KV_BLOCK_SIZE + pos % KV_BLOCK_SIZE;
            t->cell_tok[cell] = batch->tokens[off + j];
            t->cell_pos[cell] = pos;
        }
        off += q->n_new;
        if (!q->sample) continue;
        uint64_t h = 0x1234;
        for (int32_t pos = 0; pos < end; pos++) {
            int32_t cell = q->block_table[pos / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + pos % KV_BLOCK_SIZE;
            if (t->cell_pos[cell] != pos) return toy_fail(t, "a KV cell holds another position");
            h = sampler_mix64(h ^ ((uint64_t)(uint32_t)t->cell_tok[cell] * 0x100000001b3ull + (uint64_t)pos));
        }
        for (int v = 0; v < t->vocab; v++)
            t->logits[v] = t->banned[v] ? -INFINITY : (float)(sampler_mix64(h + (uint64_t)v) >> 40) * 0x1p-24f * 6.0f;
        if (sampler_sample(t->logits, t->vocab, q, t->scratch, &results[r++]) != 0)
            return toy_fail(t, "sampler failed");
    }
    if (off != batch->n_tokens) return toy_fail(t, "n_tokens disagrees with the sequences");
    return 0;
}

static void toy_free(struct backend *b)
{
    struct toy *t = (struct toy *)b;
    free(t->cell_tok);
    free(t->cell_pos);
    free(t->logits);
    free(t->scratch);
    free(t->banned);
    free(t);
}

static const struct backend_ops toy_ops = {.forward = toy_forward, .free = toy_free};

/* The toy with steps in two halves of its own, as a GPU backend has them, so that the engine
 * overlaps its steps unless told not to: submit and collect run the plain toy through
 * backend_steps.c's stash. toy_new makes one when toy_async_next is set. */
static const struct backend_ops toy_async_ops;
static bool toy_async_next;

static int toy_submit(struct backend *b, const struct batch *batch)
{
    b->ops = &toy_ops;
    const int rc = backend_submit(b, batch);
    b->ops = &toy_async_ops;
    return rc;
}

static int toy_collect(struct backend *b, struct sample_result *results)
{
    b->ops = &toy_ops;
    const int rc = backend_collect(b, results);
    b->ops = &toy_async_ops;
    return rc;
}

static const struct backend_ops toy_async_ops = {
    .forward = toy_forward, .submit = toy_submit, .collect = toy_collect, .free = toy_free};

/* Random byte tokens would make invalid UTF-8, for which streamed and decoded text may
 * legitimately differ; the toy model never produces them. */
static struct toy *toy_new(const struct tokenizer *tok, int32_t num_blocks)
{
    int vocab = tok_vocab_size(tok);
    struct toy *t = calloc(1, sizeof *t);
    t->b.ops = toy_async_next ? &toy_async_ops : &toy_ops;
    t->b.name = "toy";
    t->b.config.vocab_size = vocab;
    t->b.config.max_position = 4096;
    t->b.config.eos_ids[0] = 2;
    t->b.config.n_eos = 1;
    t->b.num_kv_blocks = num_blocks;
    t->vocab = vocab;
    t->fail_at_step = -1;
    t->cell_tok = calloc((size_t)num_blocks * KV_BLOCK_SIZE, sizeof *t->cell_tok);
    t->cell_pos = malloc((size_t)num_blocks * KV_BLOCK_SIZE * sizeof *t->cell_pos);
    memset(t->cell_pos, 0xff, (size_t)num_blocks * KV_BLOCK_SIZE * sizeof *t->cell_pos);
    t->logits = malloc((size_t)vocab * sizeof *t->logits);
    t->scratch = malloc(sampler_scratch_floats(vocab) * sizeof(float));
    t->banned = calloc((size_t)vocab, sizeof *t->banned);
    for (int32_t v = 0; v < vocab; v++) {
        char *text = NULL;
        size_t len = 0;
        cr_assert_eq(tok_decode(tok, &v, 1, true, &text, &len), 0);
        t->banned[v] = memmem(text, len, "\xEF\xBF\xBD", 3) != NULL;
        free(text);
    }
    return t;
}

/* ---- the harness ------------------------------------------------------------------------- */

#define MAX_REQ 32

struct result {
    int32_t tokens[1024];
    int32_t n_tokens;
    char text[8192];
    size_t text_len;
    enum finish_reason finish;
    char error[256];
    int events;
    int32_t completion_tokens;
    double first_token_ms;
};

struct harness {
    uv_loop_t loop;
    uv_timer_t timer;
    struct tokenizer *tok;
    struct toy *toy;
    struct engine *eng;
    struct result res[MAX_REQ];
    int n_done;
    bool timed_out;
    bool abort_on_first; /* abort each request at its first event */
};

static void on_event(const struct engine_event *ev, void *user)
{
    struct harness *h = user;
    cr_assert_lt(ev->id, MAX_REQ);
    struct result *r = &h->res[ev->id];
    cr_assert_eq(r->finish, FINISH_NONE, "no event after the last");
    r->events++;
    for (int32_t i = 0; i < ev->n_tokens && r->n_tokens < 1024; i++) r->tokens[r->n_tokens++] = ev->tokens[i].id;
    cr_assert_lt(r->text_len + ev->text_len, sizeof r->text);
    memcpy(r->text + r->text_len, ev->text, ev->text_len);
    r->text_len += ev->text_len;
    r->completion_tokens = ev->completion_tokens;
    r->finish = ev->finish;
    if (ev->error) snprintf(r->error, sizeof r->error, "%s", ev->error);
    if (ev->finish != FINISH_NONE) {
        r->first_token_ms = ev->first_token_ms;
        h->n_done++;
    } else if (h->abort_on_first) {
        engine_abort(h->eng, ev->id);
    }
}

static void on_timeout(uv_timer_t *t)
{
    struct harness *h = t->data;
    h->timed_out = true;
}

static bool setup(struct harness *h, int32_t num_blocks, const struct engine_options *eo)
{
    memset(h, 0, sizeof *h);
    const char *data = getenv("SLUICE_TEST_DATA");
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    if (tok_load(&h->tok, path, err, sizeof err) != 0) return false;
    cr_assert_eq(uv_loop_init(&h->loop), 0);
    uv_timer_init(&h->loop, &h->timer);
    h->timer.data = h;
    h->toy = toy_new(h->tok, num_blocks);
    cr_assert_eq(engine_create(&h->eng, &h->toy->b, h->tok, eo, &h->loop, on_event, h), 0);
    return true;
}

/* Runs the loop until n requests have finished (bounded). */
static void wait_done(struct harness *h, int n)
{
    h->timed_out = false;
    uv_timer_start(&h->timer, on_timeout, 30000, 0);
    while (h->n_done < n && !h->timed_out) uv_run(&h->loop, UV_RUN_ONCE);
    uv_timer_stop(&h->timer);
    cr_assert_not(h->timed_out, "timed out with %d of %d requests done", h->n_done, n);
}

static void teardown(struct harness *h)
{
    engine_free(h->eng);
    uv_close((uv_handle_t *)&h->timer, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "the engine left a handle open");
    backend_free(&h->toy->b);
    tok_free(h->tok);
}

/* Request i: a prompt of 5..52 tokens and varied sampling. */
static struct engine_request *make_request(int i, int32_t max_tokens)
{
    struct engine_request *r = calloc(1, sizeof *r);
    r->id = (uint64_t)i;
    r->n_prompt = 5 + (i * 13) % 48;
    r->prompt = malloc((size_t)r->n_prompt * sizeof *r->prompt);
    r->prompt[0] = 1;
    for (int32_t j = 1; j < r->n_prompt; j++) r->prompt[j] = 3 + (i * 31 + j * 7) % 400;
    r->max_tokens = max_tokens;
    r->skip_special = true;
    r->ignore_eos = i % 4 == 3;
    struct sampling_params *s = &r->sampling;
    *s = (struct sampling_params){.temperature = 1.0f, .top_p = 1.0f, .top_k = -1, .repetition_penalty = 1.0f,
                                  .logprobs = -1};
    switch (i % 4) {
    case 0: s->temperature = 0.0f; break;
    case 1: s->temperature = 0.8f; s->top_k = 20; s->repetition_penalty = 1.3f; break;
    case 2: s->top_p = 0.9f; s->min_p = 0.05f; s->presence_penalty = 0.5f; s->frequency_penalty = 0.3f; break;
    case 3: s->temperature = 1.2f; s->logprobs = 2; break;
    }
    r->has_seed = i % 5 != 4; /* the rest get engine seeds, in submit order */
    s->seed = 1000u + (uint64_t)i;
    return r;
}

/* With overlapped steps a step with penalties is not overlapped (they read every token on the
 * host): requests without them let every step overlap. */
static struct engine_request *without_penalties(struct engine_request *r)
{
    r->sampling.repetition_penalty = 1.0f;
    r->sampling.presence_penalty = 0.0f;
    r->sampling.frequency_penalty = 0.0f;
    return r;
}

static void check_text_matches_tokens(struct harness *h, const struct result *r)
{
    /* The streamed text is the decode of the tokens minus a final EOS (ignore_eos aside). */
    int32_t n = r->n_tokens;
    if (r->finish == FINISH_STOP && n > 0 && r->tokens[n - 1] == 2) n--;
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tok_decode(h->tok, r->tokens, (size_t)n, true, &text, &len), 0);
    cr_assert_eq(r->text_len, len, "streamed \"%.*s\" (%zu) != decoded \"%s\" (%zu)", (int)r->text_len, r->text,
                 r->text_len, text, len);
    cr_assert(memcmp(r->text, text, len) == 0, "streamed \"%.*s\" != decoded \"%s\"", (int)r->text_len, r->text, text);
    free(text);
}

/* Request i of the batch-invariance runs. Overlapped, the requests with penalties (whose steps
 * are not overlapped) end early, so that most steps overlap. */
static int32_t invariance_max_tokens(int i, bool overlap)
{
    return overlap && (i % 4 == 1 || i % 4 == 2) ? 8 : 40;
}

static struct engine_request *invariance_request(int i, bool overlap)
{
    struct engine_request *r = make_request(i, invariance_max_tokens(i, overlap));
    if (i % 4 == 0) {
        /* Ends at a stop string within a few tokens: the step after it is queued already. */
        r->n_stop = 1;
        r->stop[0] = strdup("e");
    }
    return r;
}

/* The same requests one at a time (steps not overlapped) and all at once (overlapped when
 * asked): every token, text and finish must agree. */
static void run_batch_invariance(int32_t num_blocks, int32_t max_batched, bool expect_preemption, bool overlap)
{
    enum { N = 16 };
    struct engine_options eo = {.max_num_seqs = 16, .max_num_batched_tokens = max_batched, .max_model_len = 0, .seed = 77};
    static struct harness seq_h, par_h;
    if (!setup(&seq_h, 256, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(engine_submit(seq_h.eng, invariance_request(i, overlap)), 0);
        wait_done(&seq_h, i + 1);
    }
    eo.overlap_always = overlap;
    cr_assert(setup(&par_h, num_blocks, &eo));
    for (int i = 0; i < N; i++)
        cr_assert_eq(engine_submit(par_h.eng, invariance_request(i, overlap)), 0);
    wait_done(&par_h, N);

    int lengths = 0, stops = 0;
    for (int i = 0; i < N; i++) {
        const struct result *a = &seq_h.res[i], *b = &par_h.res[i];
        cr_assert_eq(a->finish, b->finish, "request %d: finish %d vs %d (%s)", i, a->finish, b->finish, b->error);
        cr_assert(a->finish == FINISH_LENGTH || a->finish == FINISH_STOP, "request %d: %s", i, a->error);
        lengths += a->finish == FINISH_LENGTH;
        stops += a->finish == FINISH_STOP;
        cr_assert_eq(a->n_tokens, b->n_tokens, "request %d", i);
        cr_assert(memcmp(a->tokens, b->tokens, (size_t)a->n_tokens * sizeof a->tokens[0]) == 0,
                  "request %d: tokens differ between sequential and concurrent runs", i);
        cr_assert_eq(a->text_len, b->text_len);
        cr_assert(memcmp(a->text, b->text, a->text_len) == 0);
        cr_assert_eq(b->completion_tokens, b->n_tokens);
        if (a->finish == FINISH_LENGTH) cr_assert_eq(a->n_tokens, invariance_max_tokens(i, overlap));
        if (i % 4 != 0) check_text_matches_tokens(&par_h, b); /* a stop string cuts the text */
        cr_assert_geq(b->first_token_ms, 0.0);
    }
    cr_assert_gt(lengths, 0);
    /* Different prompts and seeds: the outputs are not all the same. */
    cr_assert(memcmp(seq_h.res[0].tokens, seq_h.res[4].tokens, 10 * sizeof(int32_t)) != 0);

    struct engine_stats st;
    settled_stats(par_h.eng, &st);
    cr_assert_eq(st.kv_blocks_free, num_blocks, "every block is back");
    cr_assert_eq(st.running + st.waiting, 0);
    cr_assert_not(st.failed);
    if (expect_preemption) cr_assert_gt(st.preemptions, 0, "the cache was meant to force preemption");
    if (overlap)
        cr_assert_gt(st.overlapped_steps, st.steps / 2, "%llu of %llu steps overlapped",
                     (unsigned long long)st.overlapped_steps, (unsigned long long)st.steps);
    else
        cr_assert_eq(st.overlapped_steps, 0);
    cr_assert_gt(par_h.toy->max_seqs_seen, 1, "requests were batched together");
    cr_assert_leq(par_h.toy->max_tokens_seen, max_batched);
    teardown(&seq_h);
    teardown(&par_h);
    cr_assert_geq(stops, N / 4, "stop strings and EOS end some requests while later steps are queued");
}

Test(engine, concurrent_equals_sequential)
{
    run_batch_invariance(256, 64, false, false);
}

Test(engine, concurrent_equals_sequential_under_preemption)
{
    /* 10 blocks = 160 tokens for 16 requests of up to 52 + 40 tokens. */
    run_batch_invariance(10, 32, true, false);
}

/* Each step queued before the last one's tokens are on the host, read through placeholders. */
Test(engine, overlapped_steps_equal_sequential)
{
    run_batch_invariance(256, 64, false, true);
}

Test(engine, overlapped_steps_equal_sequential_under_preemption)
{
    run_batch_invariance(10, 32, true, true);
}

static void check_stops(bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .seed = 5, .overlap_always = overlap};
    static struct harness h;
    if (!setup(&h, 64, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    struct engine_request *r = make_request(3, 60); /* ignore_eos: a full 60 tokens */
    cr_assert_eq(engine_submit(h.eng, r), 0);
    wait_done(&h, 1);
    struct result full = h.res[3];
    cr_assert_eq(full.finish, FINISH_LENGTH);
    cr_assert_gt(full.text_len, 40);
    /* A stop string from the middle of that output: the rerun ends just before it. */
    char stop[8];
    size_t at = full.text_len / 2;
    while (at > 0 && ((unsigned char)full.text[at] & 0xC0) == 0x80) at--;
    size_t sl = 3;
    while (at + sl < full.text_len && ((unsigned char)full.text[at + sl] & 0xC0) == 0x80) sl++;
    memcpy(stop, full.text + at, sl);
    stop[sl] = '\0';
    const char *first = memmem(full.text, full.text_len, stop, sl);
    size_t want_len = (size_t)(first - full.text);

    memset(&h.res[3], 0, sizeof h.res[3]);
    h.n_done = 0;
    r = make_request(3, 60);
    r->n_stop = 2;
    r->stop[0] = strdup("\x01never");
    r->stop[1] = strdup(stop);
    cr_assert_eq(engine_submit(h.eng, r), 0);
    wait_done(&h, 1);
    const struct result *s = &h.res[3];
    cr_assert_eq(s->finish, FINISH_STOP);
    cr_assert_eq(s->text_len, want_len, "stop \"%s\": got %zu bytes, expected %zu", stop, s->text_len, want_len);
    cr_assert(memcmp(s->text, full.text, want_len) == 0);
    cr_assert_lt(s->n_tokens, full.n_tokens);
    cr_assert(memcmp(s->tokens, full.tokens, (size_t)s->n_tokens * sizeof s->tokens[0]) == 0);

    /* Stop token id: the first token of the full run that is not the first one. */
    memset(&h.res[3], 0, sizeof h.res[3]);
    h.n_done = 0;
    r = make_request(3, 60);
    r->n_stop_ids = 1;
    r->stop_ids[0] = full.tokens[5];
    int32_t k = 0;
    while (full.tokens[k] != full.tokens[5]) k++;
    cr_assert_eq(engine_submit(h.eng, r), 0);
    wait_done(&h, 1);
    cr_assert_eq(h.res[3].finish, FINISH_STOP);
    cr_assert_eq(h.res[3].n_tokens, k + 1, "the stop token is generated and ends the request");
    struct engine_stats st;
    settled_stats(h.eng, &st);
    if (overlap) cr_assert_gt(st.overlapped_steps, 0);
    cr_assert_eq(st.kv_blocks_free, 64, "every block is back");
    teardown(&h);
}

Test(engine, stop_string_cuts_the_text)
{
    check_stops(false);
}

Test(engine, stop_string_cuts_the_text_overlapped)
{
    check_stops(true);
}

static void check_aborts(bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .seed = 5, .overlap_always = overlap};
    static struct harness h;
    if (!setup(&h, 128, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    h.abort_on_first = true;
    for (int i = 0; i < 6; i++) {
        struct engine_request *r = make_request(i, 100000);
        if (overlap) without_penalties(r);
        r->ignore_eos = true;
        cr_assert_eq(engine_submit(h.eng, r), 0);
    }
    wait_done(&h, 6);
    for (int i = 0; i < 6; i++) cr_assert_eq(h.res[i].finish, FINISH_ABORT, "request %d", i);
    struct engine_stats st;
    settled_stats(h.eng, &st);
    cr_assert_eq(st.kv_blocks_free, 128);
    cr_assert_eq(st.running + st.waiting, 0);
    /* An abort for an unknown id is harmless. */
    engine_abort(h.eng, 12345);
    teardown(&h);
}

Test(engine, aborts_free_blocks)
{
    check_aborts(false);
}

Test(engine, aborts_free_blocks_overlapped)
{
    check_aborts(true);
}

static void check_backend_failure(bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .seed = 5, .overlap_always = overlap};
    static struct harness h;
    if (!setup(&h, 128, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    for (int i = 0; i < 4; i++) {
        struct engine_request *r = make_request(i, 1000);
        if (overlap) without_penalties(r);
        r->ignore_eos = true;
        cr_assert_eq(engine_submit(h.eng, r), 0);
    }
    toy_fail_after(h.toy, 5);
    wait_done(&h, 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(h.res[i].finish, FINISH_ERROR);
        cr_assert(strstr(h.res[i].error, "toy device lost"), "error \"%s\"", h.res[i].error);
    }
    struct engine_stats st;
    engine_get_stats(h.eng, &st);
    cr_assert(st.failed);
    cr_assert(strstr(st.error, "toy device lost"));
    cr_assert_lt(engine_submit(h.eng, make_request(9, 10)), 0, "a failed engine refuses work");
    teardown(&h);
}

Test(engine, backend_failure_ends_everything)
{
    check_backend_failure(false);
}

Test(engine, backend_failure_ends_everything_overlapped)
{
    check_backend_failure(true);
}

/* The worker's drain, past its timeout: every request ends with an error saying why (also
 * one submitted just before the call), blocks come back, and later submits are refused. */
static void check_abort_all(bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .seed = 5, .overlap_always = overlap};
    static struct harness h;
    if (!setup(&h, 128, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    for (int i = 0; i < 5; i++) {
        struct engine_request *r = make_request(i, 100000);
        if (overlap) without_penalties(r);
        r->ignore_eos = true;
        cr_assert_eq(engine_submit(h.eng, r), 0);
    }
    engine_abort_all(h.eng, "shutting down: drain timeout");
    wait_done(&h, 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(h.res[i].finish, FINISH_ERROR, "request %d", i);
        cr_assert_str_eq(h.res[i].error, "shutting down: drain timeout");
    }
    cr_assert_lt(engine_submit(h.eng, make_request(9, 10)), 0, "submits after abort_all are refused");
    struct engine_stats st;
    settled_stats(h.eng, &st);
    cr_assert_eq(st.kv_blocks_free, 128);
    cr_assert_eq(st.running + st.waiting, 0);
    cr_assert_not(st.failed, "an abort is not a backend failure");
    teardown(&h);
}

Test(engine, abort_all_ends_everything_with_the_message)
{
    check_abort_all(false);
}

Test(engine, abort_all_ends_everything_with_the_message_overlapped)
{
    check_abort_all(true);
}

static void check_bad_requests(bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .max_model_len = 40, .seed = 5,
                                .overlap_always = overlap};
    static struct harness h;
    if (!setup(&h, 128, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    struct engine_request *r = make_request(1, 10);
    r->n_prompt = 0;
    cr_assert_eq(engine_submit(h.eng, r), 0);
    r = make_request(2, 10); /* 31 tokens: fits */
    cr_assert_eq(engine_submit(h.eng, r), 0);
    r = make_request(6, 10); /* 35 tokens + 10 > 40: ends at the context length */
    cr_assert_eq(engine_submit(h.eng, r), 0);
    r = make_request(3, 10); /* 44 tokens >= 40 */
    cr_assert_eq(engine_submit(h.eng, r), 0);
    wait_done(&h, 4);
    cr_assert_eq(h.res[1].finish, FINISH_ERROR);
    cr_assert_eq(h.res[3].finish, FINISH_ERROR);
    cr_assert(strstr(h.res[3].error, "context"), "%s", h.res[3].error);
    cr_assert_neq(h.res[2].finish, FINISH_ERROR);
    cr_assert_neq(h.res[6].finish, FINISH_ERROR);
    if (h.res[6].finish == FINISH_LENGTH) cr_assert_eq(h.res[6].n_tokens, 40 - 35);
    /* Work in flight when the engine is freed ends quietly, without leaks. */
    for (int i = 10; i < 14; i++) {
        struct engine_request *q = make_request(i, 20);
        q->n_prompt = 8;
        cr_assert_eq(engine_submit(h.eng, q), 0);
    }
    teardown(&h);
}

Test(engine, bad_requests_get_errors_and_free_stops_in_flight)
{
    check_bad_requests(false);
}

Test(engine, bad_requests_get_errors_and_free_stops_in_flight_overlapped)
{
    check_bad_requests(true);
}

/* ---- prefix caching -------------------------------------------------------------------------- */

#define PREFIX_N 12

static struct engine_request *with_prompt(struct engine_request *r, const int32_t *p, int32_t n)
{
    free(r->prompt);
    r->prompt = malloc((size_t)n * sizeof *r->prompt);
    memcpy(r->prompt, p, (size_t)n * sizeof *p);
    r->n_prompt = n;
    return r;
}

/* Prompt i: the same 37 tokens (a system prompt of two full blocks and a bit), then a tail;
 * requests 4k and 4k + 1 have the same tail (two choices of one request, seeds apart). */
static int32_t prefix_prompt(int i, int32_t *p)
{
    int32_t n = 0;
    p[n++] = 1;
    while (n < 37) p[n] = 3 + (n * 11) % 400, n++;
    const int group = i % 4 < 2 ? i / 4 : 100 + i;
    const int32_t tail = i % 4 < 2 ? 20 : 5 + 3 * i;
    for (int32_t j = 0; j < tail; j++) p[n++] = 3 + (group * 37 + j * 13) % 400;
    return n;
}

/* Submits PREFIX_N requests (at once, or each after the last finished), then a second turn of
 * each: its prompt and answer resent with three more tokens. */
static void run_prefix_turns(struct harness *h, bool at_once)
{
    int32_t p[256];
    for (int i = 0; i < PREFIX_N; i++) {
        int32_t n = prefix_prompt(i, p);
        cr_assert_eq(engine_submit(h->eng, with_prompt(make_request(i, 24), p, n)), 0);
        if (!at_once) wait_done(h, i + 1);
    }
    wait_done(h, PREFIX_N);
    for (int i = 0; i < PREFIX_N; i++) {
        int32_t n = prefix_prompt(i, p);
        const struct result *r = &h->res[i];
        cr_assert(r->finish == FINISH_LENGTH || r->finish == FINISH_STOP, "request %d: %s", i, r->error);
        memcpy(p + n, r->tokens, (size_t)r->n_tokens * sizeof *p);
        n += r->n_tokens;
        for (int32_t k = 0; k < 3; k++) p[n++] = 5 + k;
        cr_assert_eq(engine_submit(h->eng, with_prompt(make_request(PREFIX_N + i, 16), p, n)), 0);
        if (!at_once) wait_done(h, PREFIX_N + i + 1);
    }
    wait_done(h, 2 * PREFIX_N);
}

/* The cache changes what is computed, never the output: the same requests with it off, one at
 * a time, and on, all at once (chunked, preempted, overlapped as asked). */
static void check_prefix_caching(int32_t num_blocks, int32_t max_batched, bool overlap)
{
    struct engine_options eo = {.max_num_seqs = 16, .max_num_batched_tokens = 64, .seed = 9, .no_prefix_caching = true};
    static struct harness off, on;
    if (!setup(&off, 256, &eo)) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
    run_prefix_turns(&off, false);
    eo = (struct engine_options){.max_num_seqs = 16, .max_num_batched_tokens = max_batched, .seed = 9,
                                 .overlap_always = overlap};
    cr_assert(setup(&on, num_blocks, &eo));
    run_prefix_turns(&on, true);
    for (int i = 0; i < 2 * PREFIX_N; i++) {
        const struct result *a = &off.res[i], *b = &on.res[i];
        cr_assert_eq(a->finish, b->finish, "request %d: finish %d vs %d (%s)", i, a->finish, b->finish, b->error);
        cr_assert_eq(a->n_tokens, b->n_tokens, "request %d", i);
        cr_assert(memcmp(a->tokens, b->tokens, (size_t)a->n_tokens * sizeof a->tokens[0]) == 0,
                  "request %d: the tokens differ with the prefix cache on", i);
        cr_assert_eq(a->text_len, b->text_len);
        cr_assert(memcmp(a->text, b->text, a->text_len) == 0);
    }
    struct engine_stats st_off, st_on;
    settled_stats(off.eng, &st_off);
    settled_stats(on.eng, &st_on);
    cr_assert_not(st_off.prefix_caching);
    cr_assert_eq(st_off.prefix_query_tokens, 0);
    cr_assert_eq(st_off.kv_blocks_cached, 0);
    cr_assert(st_on.prefix_caching);
    cr_assert_geq(st_on.prefix_query_tokens, st_on.prompt_tokens);
    /* At least: the system prompt's two blocks for the 22 requests after the first, and each
     * second turn's first turn minus its last block or so. */
    cr_assert_gt(st_on.prefix_hit_tokens, (uint64_t)(2 * PREFIX_N - 1) * 32, "%llu hit tokens",
                 (unsigned long long)st_on.prefix_hit_tokens);
    cr_assert_eq(st_on.kv_blocks_free, num_blocks, "every block is free (cached or not)");
    cr_assert_gt(st_on.kv_blocks_cached, 0);
    if (num_blocks < 64) cr_assert_gt(st_on.preemptions, 0, "the cache was meant to force preemption");
    if (num_blocks < 64) cr_assert_gt(st_on.prefix_evictions, 0);
    if (overlap) cr_assert_gt(st_on.overlapped_steps, 0);
    teardown(&off);
    teardown(&on);
}

Test(engine, prefix_cache_on_equals_off)
{
    check_prefix_caching(256, 64, false);
}

Test(engine, prefix_cache_on_equals_off_chunked_preempted_overlapped)
{
    check_prefix_caching(12, 16, true);
}

/* Over a backend whose submit returns before the step has run, steps overlap by default and not
 * at all with overlap_never (the worker's --no-overlap-steps); the tokens are the same. */
Test(engine, overlap_never_turns_overlapping_off)
{
    static struct harness h[2];
    for (int never = 0; never < 2; never++) {
        struct engine_options eo = {
            .max_num_seqs = 8, .max_num_batched_tokens = 64, .seed = 5, .overlap_never = never};
        toy_async_next = true;
        const bool ok = setup(&h[never], 256, &eo);
        toy_async_next = false;
        if (!ok) cr_skip_test("stories260K tokenizer not found (SLUICE_TEST_DATA)");
        for (int i = 0; i < 8; i++) cr_assert_eq(engine_submit(h[never].eng, invariance_request(i, true)), 0);
        wait_done(&h[never], 8);
        struct engine_stats st;
        engine_get_stats(h[never].eng, &st);
        cr_assert_not(st.failed, "%s", st.error);
        if (never)
            cr_assert_eq(st.overlapped_steps, 0, "%llu of %llu steps overlapped",
                         (unsigned long long)st.overlapped_steps, (unsigned long long)st.steps);
        else
            cr_assert_gt(st.overlapped_steps, st.steps / 2, "%llu of %llu steps overlapped",
                         (unsigned long long)st.overlapped_steps, (unsigned long long)st.steps);
    }
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(h[0].res[i].n_tokens, h[1].res[i].n_tokens, "request %d", i);
        cr_assert(!memcmp(h[0].res[i].tokens, h[1].res[i].tokens, (size_t)h[0].res[i].n_tokens * sizeof(int32_t)),
                  "request %d: tokens differ with and without overlapping", i);
    }
    teardown(&h[0]);
    teardown(&h[1]);
}
