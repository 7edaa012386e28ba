/* The engine's per-request parameters over the real CPU backend and stories260K: logit_bias,
 * min_tokens, include_stop_str, prompt logprobs and embedding requests; and their refusal on a
 * backend that does not compute them. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/engine/engine.h"
#include "tests/unit/engine/settled_stats.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define MAX_REQ 8
#define MAX_TOK 64

struct out {
    int32_t tokens[MAX_TOK];
    int32_t n;
    char text[4096];
    size_t text_len;
    enum finish_reason finish;
    char error[256];
    struct prompt_logprob *plp; /* a copy of the event's */
    int32_t n_plp;
    int plp_event;              /* which event carried them (1: the first) */
    int events;
    float *embedding;
    int32_t dim;
};

struct run {
    uv_loop_t loop;
    uv_timer_t timer;
    struct backend *b;
    struct engine *eng;
    struct out res[MAX_REQ];
    int done;
    bool timed_out;
};

static struct model *model;
static struct tokenizer *tok;

static void setup(void)
{
    const char *data = getenv("SLUICE_TEST_DATA");
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    if (model_load(&model, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) cr_skip_test("stories260K: %s", err);
    cr_assert_eq(tok_load(&tok, path, err, sizeof err), 0, "%s", err);
}

static void teardown(void)
{
    tok_free(tok);
    model_free(model);
    tok = NULL;
    model = NULL;
}

TestSuite(engine_params, .init = setup, .fini = teardown, .timeout = 60);

static void on_event(const struct engine_event *ev, void *user)
{
    struct run *r = user;
    cr_assert_lt(ev->id, MAX_REQ);
    struct out *o = &r->res[ev->id];
    o->events++;
    for (int32_t i = 0; i < ev->n_tokens && o->n < MAX_TOK; i++) o->tokens[o->n++] = ev->tokens[i].id;
    cr_assert_lt(o->text_len + ev->text_len, sizeof o->text);
    memcpy(o->text + o->text_len, ev->text, ev->text_len);
    o->text_len += ev->text_len;
    if (ev->prompt_logprobs) {
        cr_assert_null(o->plp, "prompt logprobs come once");
        o->n_plp = ev->n_prompt_logprobs;
        o->plp = malloc((size_t)(ev->n_prompt_logprobs ? ev->n_prompt_logprobs : 1) * sizeof *o->plp);
        memcpy(o->plp, ev->prompt_logprobs, (size_t)ev->n_prompt_logprobs * sizeof *o->plp);
        o->plp_event = o->events;
    }
    if (ev->embedding) {
        o->dim = ev->embedding_dim;
        o->embedding = malloc((size_t)ev->embedding_dim * sizeof(float));
        memcpy(o->embedding, ev->embedding, (size_t)ev->embedding_dim * sizeof(float));
    }
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

static void start(struct run *r, int32_t max_batched, bool prefix_caching)
{
    char err[256];
    memset(r, 0, sizeof *r);
    struct backend_options bo = {.kv_blocks = 64, .max_batch_tokens = max_batched, .max_batch_seqs = MAX_REQ,
                                 .cpu.n_threads = 2};
    cr_assert_eq(backend_cpu_create(&r->b, model, &bo, err, sizeof err), 0, "%s", err);
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    struct engine_options eo = {.max_num_seqs = MAX_REQ, .max_num_batched_tokens = max_batched, .seed = 1,
                                .no_prefix_caching = !prefix_caching};
    cr_assert_eq(engine_create(&r->eng, r->b, tok, &eo, &r->loop, on_event, r), 0);
}

static void stop(struct run *r)
{
    engine_free(r->eng);
    uv_close((uv_handle_t *)&r->timer, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
    backend_free(r->b);
    for (int i = 0; i < MAX_REQ; i++) {
        free(r->res[i].plp);
        free(r->res[i].embedding);
    }
}

/* Submits and waits for it. */
static struct out *serve(struct run *r, struct engine_request *q)
{
    int before = r->done;
    uint64_t id = q->id; /* the engine owns q from the submit on */
    cr_assert_eq(engine_submit(r->eng, q), 0);
    wait_for(r, before + 1);
    return &r->res[id];
}

static const char *const story = "Once upon a time, there was a little girl named Lily. She liked to play";

static struct engine_request *greedy(int id, const char *text, int32_t max_tokens)
{
    struct engine_request *q = calloc(1, sizeof *q);
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, text, strlen(text), true, &q->prompt, &n), 0);
    q->n_prompt = (int32_t)n;
    q->id = (uint64_t)id;
    q->max_tokens = max_tokens;
    q->skip_special = true;
    q->has_seed = true;
    q->sampling = (struct sampling_params){.temperature = 0.0f, .top_p = 1.0f, .top_k = -1,
                                           .repetition_penalty = 1.0f, .seed = 7, .logprobs = -1};
    return q;
}

static void bias(struct engine_request *q, int32_t id, float value)
{
    q->bias_ids = realloc(q->bias_ids, (size_t)(q->n_bias + 1) * sizeof *q->bias_ids);
    q->bias_values = realloc(q->bias_values, (size_t)(q->n_bias + 1) * sizeof *q->bias_values);
    q->bias_ids[q->n_bias] = id;
    q->bias_values[q->n_bias++] = value;
}

Test(engine_params, logit_bias_forces_and_bans_tokens)
{
    static struct run r;
    start(&r, 64, true);
    struct out *plain = serve(&r, greedy(0, story, 12));
    cr_assert_eq(plain->n, 12);
    /* +100 on one token: every token is it, sampled or greedy. */
    struct engine_request *q = greedy(1, story, 10);
    q->sampling.temperature = 1.0f;
    bias(q, 300, 100.0f);
    struct out *forced = serve(&r, q);
    cr_assert_eq(forced->n, 10);
    for (int i = 0; i < forced->n; i++) cr_assert_eq(forced->tokens[i], 300, "token %d", i);
    /* -100 on the greedy first token: another one comes first. */
    q = greedy(2, story, 1);
    bias(q, plain->tokens[0], -100.0f);
    struct out *banned = serve(&r, q);
    cr_assert_eq(banned->n, 1);
    cr_assert_neq(banned->tokens[0], plain->tokens[0]);
    stop(&r);
}

Test(engine_params, min_tokens_holds_eos_and_stop_tokens_back)
{
    static struct run r;
    start(&r, 64, true);
    /* EOS (2) biased to certainty ends the generation at once... */
    struct engine_request *q = greedy(0, story, 20);
    bias(q, 2, 100.0f);
    struct out *at_once = serve(&r, q);
    cr_assert_eq(at_once->n, 1);
    cr_assert_eq(at_once->tokens[0], 2);
    cr_assert_eq(at_once->finish, FINISH_STOP);
    /* ...unless min_tokens holds it back: the first 5 tokens are anything else, the 6th is EOS. */
    q = greedy(1, story, 20);
    bias(q, 2, 100.0f);
    q->min_tokens = 5;
    struct out *held = serve(&r, q);
    cr_assert_eq(held->n, 6, "%d tokens", held->n);
    for (int i = 0; i < 5; i++) cr_assert_neq(held->tokens[i], 2, "token %d", i);
    cr_assert_eq(held->tokens[5], 2);
    cr_assert_eq(held->finish, FINISH_STOP);
    /* A stop token id alike. */
    q = greedy(2, story, 20);
    bias(q, 300, 100.0f);
    q->stop_ids[q->n_stop_ids++] = 300;
    q->min_tokens = 3;
    struct out *stop_id = serve(&r, q);
    cr_assert_eq(stop_id->n, 4);
    cr_assert_eq(stop_id->tokens[3], 300);
    for (int i = 0; i < 3; i++) cr_assert_neq(stop_id->tokens[i], 300);
    stop(&r);
}

Test(engine_params, min_tokens_starts_stop_strings_late)
{
    static struct run r;
    start(&r, 64, true);
    struct out *plain = serve(&r, greedy(0, story, 16));
    cr_assert_eq(plain->n, 16);
    /* The first token's text as a stop string: it ends the output at once, but not with
     * min_tokens past it (unless it comes again). */
    char *first = NULL;
    size_t len = 0;
    cr_assert_eq(tok_decode(tok, plain->tokens, 1, true, &first, &len), 0);
    while (len && first[0] == ' ') memmove(first, first + 1, len--);
    cr_assert_gt(len, 0);
    struct engine_request *q = greedy(1, story, 16);
    q->stop[q->n_stop++] = strdup(first);
    struct out *early = serve(&r, q);
    cr_assert_eq(early->finish, FINISH_STOP);
    cr_assert_eq(early->n, 1);
    q = greedy(2, story, 16);
    q->stop[q->n_stop++] = strdup(first);
    q->min_tokens = 2;
    struct out *late = serve(&r, q);
    cr_assert_gt(late->n, 1);
    cr_assert_eq(late->tokens[0], plain->tokens[0]);
    cr_assert(memmem(late->text, late->text_len, first, len) != NULL, "the first token's text is in the output");
    free(first);
    stop(&r);
}

Test(engine_params, include_stop_str_keeps_what_ended_it)
{
    static struct run r;
    start(&r, 64, true);
    struct out *plain = serve(&r, greedy(0, story, 16));
    cr_assert_gt(plain->text_len, 8);
    /* A stop string taken from the middle of the plain output. */
    char stop_str[4] = {plain->text[plain->text_len / 2], plain->text[plain->text_len / 2 + 1], 0, 0};
    const char *at = memmem(plain->text, plain->text_len, stop_str, 2);
    size_t before = (size_t)(at - plain->text);
    struct engine_request *q = greedy(1, story, 16);
    q->stop[q->n_stop++] = strdup(stop_str);
    struct out *cut = serve(&r, q);
    cr_assert_eq(cut->text_len, before);
    q = greedy(2, story, 16);
    q->stop[q->n_stop++] = strdup(stop_str);
    q->include_stop_str = true;
    struct out *kept = serve(&r, q);
    cr_assert_eq(kept->finish, FINISH_STOP);
    cr_assert_eq(kept->text_len, before + 2, "\"%.*s\"", (int)kept->text_len, kept->text);
    cr_assert(memcmp(kept->text, plain->text, before + 2) == 0);
    /* A stop token's text too. */
    q = greedy(3, story, 16);
    q->stop_ids[q->n_stop_ids++] = plain->tokens[3];
    struct out *tok_cut = serve(&r, q);
    q = greedy(4, story, 16);
    q->stop_ids[q->n_stop_ids++] = plain->tokens[3];
    q->include_stop_str = true;
    struct out *tok_kept = serve(&r, q);
    cr_assert_eq(tok_cut->n, 4);
    cr_assert_eq(tok_kept->n, 4);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tok_decode(tok, plain->tokens, 4, true, &text, &len), 0);
    cr_assert_eq(tok_kept->text_len, len, "\"%.*s\" vs \"%s\"", (int)tok_kept->text_len, tok_kept->text, text);
    cr_assert_lt(tok_cut->text_len, len);
    free(text);
    stop(&r);
}

static void expect_same_plp(const struct out *a, const struct out *b)
{
    cr_assert_eq(a->n_plp, b->n_plp);
    for (int32_t i = 0; i < a->n_plp; i++) {
        cr_assert_eq(a->plp[i].token, b->plp[i].token);
        cr_assert_eq(a->plp[i].rank, b->plp[i].rank, "position %d", i + 1);
        cr_assert(fabsf(a->plp[i].logprob - b->plp[i].logprob) < 1e-5f, "position %d: %f vs %f", i + 1,
                  (double)a->plp[i].logprob, (double)b->plp[i].logprob);
    }
}

Test(engine_params, prompt_logprobs_come_on_the_first_token_and_never_from_the_cache)
{
    static struct run r, cold;
    start(&r, 64, true);
    /* Warm the prefix cache with the prompt (three full blocks of it). */
    const char *text = "Once upon a time, there was a little girl named Lily. She liked to play with her toys in "
                       "the garden. One day, she saw a big red ball under a tree and ran to get it.";
    struct out *warm = serve(&r, greedy(0, text, 4));
    cr_assert_eq(warm->finish, FINISH_LENGTH);
    struct engine_stats st0, st1;
    settled_stats(r.eng, &st0);
    struct engine_request *q = greedy(1, text, 4);
    int32_t n_prompt = q->n_prompt;
    cr_assert_gt(n_prompt, 3 * 16);
    cr_assert_lt(n_prompt, 256);
    q->prompt_logprobs = true;
    q->prompt_top_logprobs = 2;
    int32_t prompt[256];
    memcpy(prompt, q->prompt, (size_t)n_prompt * sizeof *prompt);
    struct out *a = serve(&r, q);
    settled_stats(r.eng, &st1);
    cr_assert_eq(st1.prefix_hit_tokens, st0.prefix_hit_tokens, "nothing of it came from the cache");
    cr_assert_eq(a->plp_event, 1, "on the first event");
    cr_assert_eq(a->n_plp, n_prompt - 1);
    for (int32_t i = 0; i < n_prompt - 1; i++) {
        cr_assert_eq(a->plp[i].token, prompt[i + 1]);
        cr_assert(a->plp[i].logprob <= 0.0f);
        cr_assert_eq(a->plp[i].n_top, 2);
        cr_assert(a->plp[i].top_logprobs[0] >= a->plp[i].logprob);
        cr_assert_eq(a->plp[i].rank == 1, a->plp[i].top_ids[0] == prompt[i + 1], "position %d", i + 1);
    }
    cr_assert_arr_eq(a->tokens, warm->tokens, 4 * sizeof(int32_t), "generation unchanged");
    /* The same numbers from a cold engine prefilling in chunks of 16. */
    start(&cold, 16, false);
    q = greedy(0, text, 4);
    q->prompt_logprobs = true;
    struct out *b = serve(&cold, q);
    expect_same_plp(a, b);
    cr_assert_eq(b->plp[0].n_top, 0);
    stop(&cold);
    stop(&r);
}

static float dot(const float *a, const float *b, int n)
{
    double d = 0.0;
    for (int i = 0; i < n; i++) d += (double)a[i] * b[i];
    return (float)d;
}

static struct engine_request *embed(int id, const char *text, enum engine_pooling pooling)
{
    struct engine_request *q = greedy(id, text, 1);
    q->pooling = pooling;
    return q;
}

Test(engine_params, embeddings_are_pooled_and_normalised)
{
    static struct run r, chunked;
    start(&r, 64, true);
    const int h = model->config.hidden_size;
    struct out *mean = serve(&r, embed(0, story, ENGINE_POOL_MEAN));
    struct out *last = serve(&r, embed(1, story, ENGINE_POOL_LAST));
    struct out *other = serve(&r, embed(2, "The dog ran to the park and barked at a cat.", ENGINE_POOL_MEAN));
    for (int i = 0; i < 3; i++) {
        const struct out *o = &r.res[i];
        cr_assert_eq(o->finish, FINISH_STOP, "%s", o->error);
        cr_assert_eq(o->n, 0, "nothing is generated");
        cr_assert_eq(o->events, 1);
        cr_assert_eq(o->dim, h);
        cr_assert(fabsf(dot(o->embedding, o->embedding, h) - 1.0f) < 1e-5f, "unit length");
    }
    cr_assert_lt(dot(mean->embedding, last->embedding, h), 0.9999f, "mean and last differ");
    cr_assert_lt(dot(mean->embedding, other->embedding, h), 0.9999f, "different texts differ");
    /* Again with the prompt in the prefix cache now (a mean computes it whole, the last token
     * is computed anyway) and on an engine prefilling in chunks of 16: the same vectors. */
    struct out *mean2 = serve(&r, embed(3, story, ENGINE_POOL_MEAN));
    struct out *last2 = serve(&r, embed(4, story, ENGINE_POOL_LAST));
    start(&chunked, 16, false);
    struct out *mean3 = serve(&chunked, embed(0, story, ENGINE_POOL_MEAN));
    struct out *last3 = serve(&chunked, embed(1, story, ENGINE_POOL_LAST));
    cr_assert_gt(dot(mean->embedding, mean2->embedding, h), 0.99999f);
    cr_assert_gt(dot(last->embedding, last2->embedding, h), 0.99999f);
    cr_assert_gt(dot(mean->embedding, mean3->embedding, h), 0.99999f);
    cr_assert_gt(dot(last->embedding, last3->embedding, h), 0.99999f);
    stop(&chunked);
    /* The KV blocks all came back. */
    struct engine_stats st;
    settled_stats(r.eng, &st);
    cr_assert_eq(st.kv_blocks_free, st.kv_blocks_total);
    stop(&r);
}

Test(engine_params, a_backend_without_them_refuses_each)
{
    static struct run r;
    start(&r, 64, true);
    r.b->supports_logit_bias = r.b->supports_suppress = false;
    r.b->supports_prompt_logprobs = r.b->supports_hidden_states = false;
    struct engine_request *q = greedy(0, story, 4);
    bias(q, 5, 1.0f);
    cr_assert_str_eq(serve(&r, q)->error, "logit_bias is not supported on the cpu backend yet");
    q = greedy(1, story, 4);
    q->min_tokens = 2;
    cr_assert_str_eq(serve(&r, q)->error, "min_tokens is not supported on the cpu backend yet");
    q = greedy(2, story, 4);
    q->prompt_logprobs = true;
    cr_assert_str_eq(serve(&r, q)->error, "prompt logprobs are not supported on the cpu backend yet");
    cr_assert_str_eq(serve(&r, embed(3, story, ENGINE_POOL_LAST))->error,
                     "embeddings are not supported on the cpu backend yet");
    for (int i = 0; i < 4; i++) cr_assert_eq(r.res[i].finish, FINISH_ERROR);
    struct out *fine = serve(&r, greedy(4, story, 4));
    cr_assert_eq(fine->finish, FINISH_LENGTH);
    /* min_tokens with nothing to hold back (ignore_eos, no stop token ids) asks nothing of it. */
    q = greedy(5, story, 4);
    q->min_tokens = 2;
    q->ignore_eos = true;
    cr_assert_eq(serve(&r, q)->finish, FINISH_LENGTH);
    stop(&r);
}

/* A backend that writes prompt logprobs at collect, not during the step, as the CUDA backend
 * does: the CPU backend's step into a buffer of its own, handed to the engine's lp_out when the
 * step is collected. Its first step with prompt logprob rows also aborts abort_id (from the
 * engine's own thread, as a client going away would through the loop): the request then ends
 * while that step is queued, and the engine must keep its buffer until the collect. */
#define DEFERRED_ROWS 256
static struct {
    const struct backend_ops *cpu;
    struct engine *eng;
    uint64_t abort_id;
    bool aborted;
    struct sample_result res[2][MAX_REQ];
    struct prompt_logprob buf[2][DEFERRED_ROWS];
    struct prompt_logprob *dst[2][MAX_REQ];
    int32_t at[2][MAX_REQ], n[2][MAX_REQ], n_dst[2];
    uint64_t submitted, collected;
} deferred;

static int deferred_submit(struct backend *b, const struct batch *batch)
{
    const int slot = (int)(deferred.submitted % 2);
    struct batch_seq seqs[MAX_REQ];
    struct batch copy = *batch;
    int32_t used = 0;
    bool any = false;
    deferred.n_dst[slot] = 0;
    cr_assert_leq(batch->n_seqs, MAX_REQ);
    for (int s = 0; s < batch->n_seqs; s++) {
        seqs[s] = batch->seqs[s];
        if (seqs[s].lp_rows > 0) {
            const int d = deferred.n_dst[slot]++;
            cr_assert_leq(used + seqs[s].lp_rows, DEFERRED_ROWS);
            deferred.dst[slot][d] = seqs[s].lp_out;
            deferred.at[slot][d] = used;
            deferred.n[slot][d] = seqs[s].lp_rows;
            seqs[s].lp_out = deferred.buf[slot] + used;
            used += seqs[s].lp_rows;
            any = true;
        }
    }
    copy.seqs = seqs;
    /* Tokens the engine queued before it took them: the previous step's, known here already. */
    int32_t tokens[64];
    cr_assert_leq(batch->n_tokens, 64);
    for (int t = 0; t < batch->n_tokens; t++)
        tokens[t] = batch->tokens[t] >= 0 ? batch->tokens[t]
                                          : deferred.res[1 - slot][BACKEND_TOKEN_PREV_ROW(batch->tokens[t])].token;
    copy.tokens = tokens;
    if (deferred.cpu->forward(b, &copy, deferred.res[slot]) != 0) return -1;
    deferred.submitted++;
    if (any && !deferred.aborted) {
        deferred.aborted = true;
        engine_abort(deferred.eng, deferred.abort_id);
    }
    return 0;
}

static int deferred_collect(struct backend *b, struct sample_result *results)
{
    (void)b;
    const int slot = (int)(deferred.collected++ % 2);
    for (int d = 0; d < deferred.n_dst[slot]; d++)
        memcpy(deferred.dst[slot][d], deferred.buf[slot] + deferred.at[slot][d],
               (size_t)deferred.n[slot][d] * sizeof(struct prompt_logprob));
    memcpy(results, deferred.res[slot], sizeof deferred.res[slot]);
    return 0;
}

static void deferred_free(struct backend *b)
{
    deferred.cpu->free(b);
}

Test(engine_params, prompt_logprobs_written_at_collect_survive_their_request_ending_while_queued)
{
    static struct run r, ref;
    static struct backend_ops ops;
    /* The reference: the CPU backend as it is. */
    start(&ref, 16, false);
    struct engine_request *q = greedy(1, story, 3);
    q->prompt_logprobs = true;
    q->prompt_top_logprobs = 2;
    struct out *want = serve(&ref, q);
    start(&r, 16, false);
    memset(&deferred, 0, sizeof deferred);
    deferred.cpu = r.b->ops;
    deferred.abort_id = 0;
    ops = (struct backend_ops){.submit = deferred_submit, .collect = deferred_collect, .free = deferred_free};
    r.b->ops = &ops;
    /* A new engine over it: the engine queues a step behind another only on a backend whose
     * submit returns early, which it asks when made. */
    engine_free(r.eng);
    struct engine_options eo = {.max_num_seqs = MAX_REQ, .max_num_batched_tokens = 16, .seed = 1,
                                .no_prefix_caching = true};
    cr_assert_eq(engine_create(&r.eng, r.b, tok, &eo, &r.loop, on_event, &r), 0);
    deferred.eng = r.eng;
    /* Request 0 is ended by the backend's first step with prompt logprobs, its own (chunks of 16
     * tokens: it has more to come); request 1 comes after and gets its logprobs at collect. */
    q = greedy(0, "Once upon a time, there was a little girl named Lily. She liked to play with her toys in the "
                  "garden. One day, she saw a big red ball.", 3);
    q->prompt_logprobs = true;
    struct out *gone = serve(&r, q);
    cr_assert(deferred.aborted);
    cr_assert_eq(gone->finish, FINISH_ABORT, "finish %d", gone->finish);
    q = greedy(1, story, 3);
    q->prompt_logprobs = true;
    q->prompt_top_logprobs = 2;
    expect_same_plp(serve(&r, q), want);
    stop(&r);
    stop(&ref);
}
