/* The engine over the CPU backend and the tiny family models of tests/fixtures/families, against
 * transformers' greedy tokens, where the engine itself has a part: a Mistral whose 16-token
 * window lets a 60-token sequence run in a 48-token cache (the blocks behind the window go back
 * to the pool, scheduler.h, and stay in the prefix cache for the same prompt again); a Phi-3
 * whose generation crosses LongRoPE's original context (the sequence is computed again with the
 * long factors, as transformers does); long prompts of the length-dependent ropes prefilled in
 * chunks. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/engine/engine.h"
#include "tests/unit/engine/settled_stats.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define GEN 20

struct run {
    uv_loop_t loop;
    uv_timer_t timer;
    int32_t tokens[GEN];
    int n;
    bool done, timed_out;
    enum finish_reason finish;
    char error[256];
};

static void on_event(const struct engine_event *ev, void *user)
{
    struct run *r = user;
    for (int32_t i = 0; i < ev->n_tokens && r->n < GEN; i++) r->tokens[r->n++] = ev->tokens[i].id;
    if (ev->finish != FINISH_NONE) {
        r->finish = ev->finish;
        if (ev->error) snprintf(r->error, sizeof r->error, "%s", ev->error);
        r->done = true;
    }
}

static void on_timeout(uv_timer_t *t)
{
    ((struct run *)t->data)->timed_out = true;
}

/* Serves prompt `which` of the fixture greedily through the engine, `times` times one after
 * the other (the later ones may map the earlier one's cached blocks), and checks Hugging
 * Face's tokens each time; returns the engine's stats. */
static struct engine_stats serve_n(const char *fixture, int which, int32_t kv_blocks, int32_t step_tokens, int times)
{
    char dir[256], path[512], err[512] = "";
    snprintf(dir, sizeof dir, "tests/fixtures/families/%s", fixture);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert(root, "%s: %s (run tests/fixtures/families/make_fixtures.py)", path, jerr.text);
    json_t *p0 = json_array_get(json_object_get(root, "prompts"), (size_t)which);
    json_t *ids = json_object_get(p0, "prompt_ids"), *greedy = json_object_get(p0, "greedy_ids");
    cr_assert(json_array_size(ids) > 0, "%s: no prompt %d", path, which);
    cr_assert_eq(json_array_size(greedy), GEN);

    const char *data = getenv("SLUICE_TEST_DATA");
    char tok_path[1024];
    snprintf(tok_path, sizeof tok_path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    struct tokenizer *tok = NULL;
    /* Any tokenizer whose vocabulary covers the fixture's 256 ids: the engine detokenizes. */
    if (tok_load(&tok, tok_path, err, sizeof err) != 0) cr_skip_test("tokenizer: %s", err);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    struct backend *b = NULL;
    struct backend_options bo = {.kv_blocks = kv_blocks, .max_batch_tokens = step_tokens, .max_batch_seqs = 2,
                                 .cpu.n_threads = 2};
    cr_assert_eq(backend_cpu_create(&b, m, &bo, err, sizeof err), 0, "%s", err);

    static struct run r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(uv_loop_init(&r.loop), 0);
    uv_timer_init(&r.loop, &r.timer);
    r.timer.data = &r;
    struct engine *eng = NULL;
    struct engine_options eo = {.max_num_seqs = 2, .max_num_batched_tokens = step_tokens, .seed = 1};
    cr_assert_eq(engine_create(&eng, b, tok, &eo, &r.loop, on_event, &r), 0);
    for (int run = 0; run < times; run++) {
        memset(r.tokens, 0, sizeof r.tokens);
        r.n = 0;
        r.done = false;
        struct engine_request *q = calloc(1, sizeof *q);
        q->id = (uint64_t)run;
        q->n_prompt = (int32_t)json_array_size(ids);
        q->prompt = malloc((size_t)q->n_prompt * sizeof(int32_t));
        for (int i = 0; i < q->n_prompt; i++)
            q->prompt[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
        q->max_tokens = GEN;
        q->ignore_eos = true;
        q->sampling = (struct sampling_params){.temperature = 0.0f, .top_p = 1.0f, .top_k = -1,
                                               .repetition_penalty = 1.0f, .logprobs = -1};
        cr_assert_eq(engine_submit(eng, q), 0);
        uv_timer_start(&r.timer, on_timeout, 30000, 0);
        while (!r.done && !r.timed_out) uv_run(&r.loop, UV_RUN_ONCE);
        uv_timer_stop(&r.timer);
        cr_assert_not(r.timed_out, "%s prompt %d: no answer in 30 s", fixture, which);
        cr_assert_eq(r.finish, FINISH_LENGTH, "%s", r.error);
        cr_assert_eq(r.n, GEN);
        for (int i = 0; i < GEN; i++)
            cr_expect_eq(r.tokens[i], json_integer_value(json_array_get(greedy, (size_t)i)),
                         "%s prompt %d run %d: token %d", fixture, which, run, i);
    }
    struct engine_stats st;
    settled_stats(eng, &st);
    engine_free(eng);
    uv_close((uv_handle_t *)&r.timer, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&r.loop), 0);
    backend_free(b);
    model_free(m);
    tok_free(tok);
    json_decref(root);
    return st;
}

static uint64_t serve(const char *fixture, int which, int32_t kv_blocks, int32_t step_tokens)
{
    return serve_n(fixture, which, kv_blocks, step_tokens, 1).preemptions;
}

TestSuite(engine_families, .timeout = 120);

Test(engine_families, sliding_window_blocks_are_reused)
{
    /* 3 blocks (48 tokens) for 40 + 20 tokens, 16-token steps: no preemption either. */
    cr_expect_eq(serve("mistral_sliding", 0, 3, 16), 0);
}

/* Blocks freed behind the window stay in the prefix cache: the same prompt again maps the
 * ones still cached, and its tokens are still transformers'. */
Test(engine_families, sliding_window_blocks_freed_stay_cached)
{
    struct engine_stats st = serve_n("mistral_sliding", 0, 8, 16, 2);
    cr_expect_eq(st.preemptions, 0);
    cr_expect(st.prefix_caching);
    cr_expect_gt(st.prefix_hit_tokens, 0, "the second run mapped nothing");
}

Test(engine_families, longrope_crossing_the_original_context_recomputes)
{
    serve("phi3_longrope", 2, 16, 64);
}

Test(engine_families, length_dependent_ropes_prefill_in_chunks)
{
    serve("phi3_longrope", 0, 16, 16);
    serve("llama_dynamic", 0, 16, 16);
    serve("llama_yarn", 0, 16, 16);
}
