/* Structured output through the engine over the real CPU backend and stories260K (a model
 * that knows nothing of JSON): each step the engine asks the request's grammar for the mask,
 * the sampler draws only allowed tokens, and every request that stops has text the grammar
 * takes (a JSON Schema, a regex, a choice, any JSON object). Requests without a grammar in the
 * same batches get the tokens they get alone; a backend that cannot mask refuses them. Over a
 * backend that takes masks after the submit (as the CUDA backend does), the engine overlaps
 * constrained steps and every request gets the tokens it gets without. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/strbuf.h"
#include "tests/unit/grammar/json_validate.h"
#include "worker/engine/engine.h"
#include "tests/unit/engine/settled_stats.h"
#include "worker/grammar/grammar.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define N_REQ 10
#define MAX_TOK 400

static const char SCHEMA[] = "{\"type\": \"object\", \"properties\": {"
                             "\"name\": {\"type\": \"string\", \"maxLength\": 10},"
                             "\"age\": {\"type\": \"integer\"},"
                             "\"mood\": {\"enum\": [\"happy\", \"sad\"]},"
                             "\"friends\": {\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 6}, \"maxItems\": 3}},"
                             "\"required\": [\"name\", \"age\", \"mood\", \"friends\"], \"additionalProperties\": false}";
static const char REGEX[] = "[A-Z][a-z]{1,6}( [a-z]{1,6}){0,3}\\.";
static const char CHOICE[] = "[\"yes\", \"no\", \"maybe later\"]";

struct out {
    struct strbuf text;
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
    struct engine_stats stats;
};

static void on_event(const struct engine_event *ev, void *user)
{
    struct run *r = user;
    struct out *o = &r->res[ev->id];
    strbuf_append(&o->text, ev->text, ev->text_len);
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
    uv_timer_start(&r->timer, on_timeout, 60000, 0);
    while (r->done < n && !r->timed_out) uv_run(&r->loop, UV_RUN_ONCE);
    uv_timer_stop(&r->timer);
    cr_assert_not(r->timed_out);
}

/* Request i: i % 5 picks the constraint (schema, regex, choice, json_object, none). */
static struct engine_request *request(const struct tokenizer *tok, struct grammar_cache *cache, int i, bool grammars)
{
    static const char *texts[] = {"Once upon a time", "The little dog", "Lily and Ben went to the park", "One day, a big",
                                  "The sun was"};
    struct engine_request *q = calloc(1, sizeof *q);
    size_t n = 0;
    const char *t = texts[i % 5];
    cr_assert_eq(tok_encode(tok, t, strlen(t), true, &q->prompt, &n), 0);
    q->n_prompt = (int32_t)n;
    q->id = (uint64_t)i;
    q->max_tokens = MAX_TOK;
    q->skip_special = true;
    q->has_seed = true;
    q->sampling = (struct sampling_params){.temperature = i < 5 ? 1.0f : 0.0f, .top_p = 1.0f, .top_k = -1,
                                           .repetition_penalty = 1.0f, .seed = 7 + (uint64_t)i, .logprobs = -1};
    static const enum grammar_kind kinds[] = {GRAMMAR_JSON_SCHEMA, GRAMMAR_REGEX, GRAMMAR_CHOICE, GRAMMAR_JSON_OBJECT};
    static const char *const srcs[] = {SCHEMA, REGEX, CHOICE, ""};
    if (grammars && i % 5 < 4) {
        char err[256];
        cr_assert_eq(grammar_cache_get(cache, kinds[i % 5], srcs[i % 5], strlen(srcs[i % 5]), &q->grammar, err, sizeof err),
                     0, "%s", err);
    }
    return q;
}

/* A backend that takes masks late (backend_sample), as the CUDA backend does, over the CPU
 * backend's whole steps: submit keeps a copy of the step (what the engine may change or free
 * once it returns: block tables, sampling parameters, suppressed ids; the tokens with the step
 * before's filled in) and runs it at once unless it has mask_later rows; then backend_sample
 * runs it with their masks. It counts breaches of the contract (backend.h): a submit or collect
 * while a step waits for its masks, masks given before every step before is collected, or a
 * step with mask_later and allowed both. */
#define LATE_TOKENS 64
#define LATE_BLOCKS 64
static struct {
    const struct backend_ops *cpu;
    struct batch_seq seqs[N_REQ];
    struct sampling_params sps[N_REQ];
    int32_t tables[N_REQ][LATE_BLOCKS], suppress[N_REQ][16], tokens[LATE_TOKENS];
    uint32_t *masks;
    struct batch batch;
    struct sample_result res[2][N_REQ];
    int32_t n_res[2];
    uint64_t submitted, collected; /* a step waiting for its masks is not submitted yet */
    bool waiting;
    int n_later, late_steps, breaches;
} late;

static int late_run(struct backend *b)
{
    const int slot = (int)(late.submitted % 2);
    if (late.cpu->forward(b, &late.batch, late.res[slot]) != 0) return -1;
    late.n_res[slot] = 0;
    for (int s = 0; s < late.batch.n_seqs; s++) late.n_res[slot] += late.seqs[s].sample;
    late.submitted++;
    return 0;
}

static int late_submit(struct backend *b, const struct batch *batch)
{
    if (late.waiting || late.submitted - late.collected >= 2) late.breaches++;
    cr_assert_leq(batch->n_seqs, N_REQ);
    cr_assert_leq(batch->n_tokens, LATE_TOKENS);
    late.n_later = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        struct batch_seq *q = &late.seqs[s];
        *q = batch->seqs[s];
        cr_assert_leq(q->n_blocks, LATE_BLOCKS);
        cr_assert_leq(q->n_suppress, 16);
        cr_assert(q->lp_rows == 0 && !q->hidden_sum && !q->hidden_last, "no prompt logprobs or embeddings here");
        memcpy(late.tables[s], q->block_table, (size_t)q->n_blocks * sizeof *q->block_table);
        q->block_table = late.tables[s];
        if (q->n_suppress) memcpy(late.suppress[s], q->suppress, (size_t)q->n_suppress * sizeof *q->suppress);
        q->suppress = late.suppress[s];
        if (q->sample) {
            late.sps[s] = *q->sampling;
            cr_assert(late.sps[s].n_bias == 0 && !sampling_uses_history(&late.sps[s]));
            q->sampling = &late.sps[s];
        }
        q->history = NULL;
        q->n_history = 0;
        if (q->mask_later && q->allowed) late.breaches++;
        late.n_later += q->sample && q->mask_later;
    }
    const int prev = (int)((late.submitted + 1) % 2);
    for (int t = 0; t < batch->n_tokens; t++)
        late.tokens[t] = batch->tokens[t] >= 0 ? batch->tokens[t]
                                               : late.res[prev][BACKEND_TOKEN_PREV_ROW(batch->tokens[t])].token;
    late.batch = *batch;
    late.batch.seqs = late.seqs;
    late.batch.tokens = late.tokens;
    if (late.n_later == 0) return late_run(b);
    late.waiting = true;
    late.late_steps++;
    return 0;
}

static int late_sample(struct backend *b, const uint32_t *const *masks, int32_t n_masks)
{
    const size_t W = ((size_t)b->config.vocab_size + 31) / 32;
    if (!late.waiting || n_masks != late.n_later || late.collected != late.submitted) late.breaches++;
    cr_assert(late.waiting && n_masks == late.n_later);
    late.waiting = false;
    if (!late.masks) late.masks = malloc((size_t)N_REQ * W * sizeof *late.masks);
    for (int s = 0, k = 0; s < late.batch.n_seqs; s++) {
        struct batch_seq *q = &late.seqs[s];
        if (!q->sample || !q->mask_later) continue;
        memcpy(late.masks + (size_t)k * W, masks[k], W * sizeof *late.masks);
        q->allowed = late.masks + (size_t)k++ * W;
        q->mask_later = false;
    }
    return late_run(b);
}

static int late_collect(struct backend *b, struct sample_result *results)
{
    (void)b;
    if (late.collected == late.submitted) {
        late.breaches++;
        snprintf(b->error, sizeof b->error, "no step to collect");
        return -1;
    }
    const int slot = (int)(late.collected++ % 2);
    memcpy(results, late.res[slot], (size_t)late.n_res[slot] * sizeof *results);
    return 0;
}

static void late_free(struct backend *b)
{
    free(late.masks);
    late.masks = NULL;
    late.cpu->free(b);
}

/* b, over the CPU backend, takes masks late from here on. */
static void take_masks_late(struct backend *b)
{
    static struct backend_ops ops;
    memset(&late, 0, sizeof late);
    late.cpu = b->ops;
    ops = (struct backend_ops){.submit = late_submit, .collect = late_collect, .sample = late_sample, .free = late_free};
    b->ops = &ops;
}

static void serve(struct run *r, const struct model *m, const struct tokenizer *tok, struct grammar_cache *cache,
                  bool grammars, bool only_plain, bool mask_support, bool late_masks)
{
    char err[256];
    struct backend *b = NULL;
    struct backend_options bo = {.kv_blocks = 128, .max_batch_tokens = 64, .max_batch_seqs = N_REQ, .cpu.n_threads = 2};
    cr_assert_eq(backend_cpu_create(&b, m, &bo, err, sizeof err), 0, "%s", err);
    b->supports_token_mask = mask_support;
    if (late_masks) take_masks_late(b);
    memset(r, 0, sizeof *r);
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    /* Overlapped steps where they can be: a constrained sequence's only where masks come late. */
    struct engine_options eo = {.max_num_seqs = N_REQ, .max_num_batched_tokens = 64, .seed = 1, .overlap_always = true};
    cr_assert_eq(engine_create(&r->eng, b, tok, &eo, &r->loop, on_event, r), 0);
    int n = 0;
    for (int i = 0; i < N_REQ; i++) {
        if (only_plain && i % 5 != 4) continue;
        cr_assert_eq(engine_submit(r->eng, request(tok, cache, i, grammars)), 0);
        n++;
    }
    wait_for(r, n);
    settled_stats(r->eng, &r->stats);
    engine_free(r->eng);
    uv_close((uv_handle_t *)&r->timer, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
    backend_free(b);
}

static bool regex_full_match(const char *pattern, const char *s)
{
    char anchored[256];
    snprintf(anchored, sizeof anchored, "^(%s)$", pattern);
    regex_t re;
    cr_assert_eq(regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB), 0);
    bool ok = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

static struct model *load(struct tokenizer **tok)
{
    const char *data = getenv("SLUICE_TEST_DATA");
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    struct model *m = NULL;
    if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) cr_skip_test("stories260K: %s", err);
    cr_assert_eq(tok_load(tok, path, err, sizeof err), 0, "%s", err);
    return m;
}

/* stories260K, its tokenizer, a grammar vocabulary of it (its EOS ids the stop tokens) and a
 * compile cache. */
struct fixture {
    struct tokenizer *tok;
    struct model *m;
    struct grammar_vocab *v;
    struct grammar_cache *cache;
};

static void fixture_open(struct fixture *f)
{
    char err[256];
    memset(f, 0, sizeof *f);
    f->m = load(&f->tok);
    cr_assert_eq(grammar_vocab_from_tokenizer(&f->v, f->tok, f->m->config.eos_ids, (size_t)f->m->config.n_eos, err,
                                              sizeof err),
                 0, "%s", err);
    cr_assert_eq(grammar_cache_new(&f->cache, f->v, 8), 0);
}

static void fixture_close(struct fixture *f)
{
    grammar_cache_free(f->cache);
    grammar_vocab_free(f->v);
    tok_free(f->tok);
    model_free(f->m);
}

Test(engine_grammar, outputs_follow_their_grammars)
{
    struct fixture f;
    fixture_open(&f);
    struct tokenizer *tok = f.tok;
    struct model *m = f.m;
    struct grammar_cache *cache = f.cache;
    static struct run with, plain;
    serve(&with, m, tok, cache, true, false, true, false);
    serve(&plain, m, tok, cache, false, true, true, false);
    json_error_t je;
    json_t *schema = json_loads(SCHEMA, 0, &je);
    int stopped = 0;
    for (int i = 0; i < N_REQ; i++) {
        const struct out *o = &with.res[i];
        const char *text = strbuf_str(&o->text);
        cr_assert(o->finish == FINISH_STOP || o->finish == FINISH_LENGTH, "request %d: %d %s", i, o->finish, o->error);
        if (i % 5 == 4) {
            /* Unconstrained: the same tokens as when served with no grammar around. */
            const struct out *p = &plain.res[i];
            cr_assert_eq(o->n, p->n, "request %d", i);
            cr_assert(memcmp(o->tokens, p->tokens, (size_t)o->n * sizeof *o->tokens) == 0, "request %d", i);
            continue;
        }
        if (i % 5 != 3) cr_assert_eq(o->finish, FINISH_STOP, "request %d: a bounded grammar ends: %s", i, text);
        if (o->finish != FINISH_STOP) continue;
        stopped++;
        switch (i % 5) {
        case 0: {
            json_t *val = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            cr_assert_not_null(val, "request %d: not JSON (%s): %s", i, je.text, text);
            cr_assert(jv_valid(val, schema, schema), "request %d: does not validate: %s", i, text);
            json_decref(val);
            break;
        }
        case 1: cr_assert(regex_full_match(REGEX, text), "request %d: %s", i, text); break;
        case 2:
            cr_assert(!strcmp(text, "yes") || !strcmp(text, "no") || !strcmp(text, "maybe later"), "request %d: %s", i, text);
            break;
        case 3: {
            json_t *val = json_loads(text, JSON_ALLOW_NUL, &je);
            cr_assert(val && json_is_object(val), "request %d: not a JSON object (%s): %s", i, je.text, text);
            json_decref(val);
            break;
        }
        }
    }
    cr_assert_geq(stopped, 6);
    json_decref(schema);
    for (int i = 0; i < N_REQ; i++) {
        strbuf_free(&with.res[i].text);
        strbuf_free(&plain.res[i].text);
    }
    fixture_close(&f);
}

Test(engine_grammar, masks_made_while_the_device_runs_the_step_give_the_same_outputs)
{
    static struct fixture f;
    static struct run now, later;
    fixture_open(&f);
    serve(&now, f.m, f.tok, f.cache, true, false, true, false);
    serve(&later, f.m, f.tok, f.cache, true, false, true, true);
    cr_assert_eq(late.breaches, 0, "the engine keeps the late masks' contract");
    cr_assert_gt(late.late_steps, 20, "constrained steps took their masks late (%d)", late.late_steps);
    /* Steps with constrained rows queued behind the one before: with masks at the submit, they
     * never are. */
    cr_assert_gt(later.stats.overlapped_steps, now.stats.overlapped_steps + 20, "%llu steps overlapped, %llu before",
                 (unsigned long long)later.stats.overlapped_steps, (unsigned long long)now.stats.overlapped_steps);
    cr_assert_eq(later.stats.grammar_masks, now.stats.grammar_masks);
    for (int i = 0; i < N_REQ; i++) {
        const struct out *a = &now.res[i], *b = &later.res[i];
        cr_assert_eq(b->finish, a->finish, "request %d: %d vs %d (%s)", i, b->finish, a->finish, b->error);
        cr_assert_eq(b->n, a->n, "request %d", i);
        cr_assert(memcmp(b->tokens, a->tokens, (size_t)a->n * sizeof *a->tokens) == 0, "request %d", i);
        cr_assert_str_eq(strbuf_str(&b->text), strbuf_str(&a->text), "request %d", i);
        strbuf_free(&now.res[i].text);
        strbuf_free(&later.res[i].text);
    }
    fixture_close(&f);
}

Test(engine_grammar, refused_on_a_backend_without_masks)
{
    struct tokenizer *tok = NULL;
    struct model *m = load(&tok);
    char err[256];
    struct grammar_vocab *v = NULL;
    cr_assert_eq(grammar_vocab_from_tokenizer(&v, tok, NULL, 0, err, sizeof err), 0, "%s", err);
    struct grammar_cache *cache = NULL;
    cr_assert_eq(grammar_cache_new(&cache, v, 8), 0);
    static struct run r;
    serve(&r, m, tok, cache, true, false, false, false);
    for (int i = 0; i < N_REQ; i++) {
        if (i % 5 == 4) {
            cr_assert_neq(r.res[i].finish, FINISH_ERROR, "unconstrained requests are served");
        } else {
            cr_assert_eq(r.res[i].finish, FINISH_ERROR);
            cr_assert(strstr(r.res[i].error, "structured output is not supported"), "%s", r.res[i].error);
        }
        strbuf_free(&r.res[i].text);
    }
    grammar_cache_free(cache);
    grammar_vocab_free(v);
    tok_free(tok);
    model_free(m);
}

Test(engine_grammar, a_grammar_no_token_can_follow_ends_its_request_only)
{
    /* A vocabulary (for the grammar) where only token 5 has bytes, "x": a grammar that wants
     * "y" leaves no token, and that request ends with an error while the others are served. */
    struct tokenizer *tok = NULL;
    struct model *m = load(&tok);
    const char *bytes[512] = {0};
    uint32_t lens[512] = {0};
    bytes[5] = "x";
    lens[5] = 1;
    char err[256];
    struct grammar_vocab *v = NULL;
    cr_assert_eq(grammar_vocab_from_bytes(&v, 512, bytes, lens, NULL, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
    struct grammar *g = NULL;
    cr_assert_eq(grammar_compile(&g, GRAMMAR_GBNF, "root ::= \"y\"", 12, err, sizeof err), 0, "%s", err);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, g, v), 0);
    /* With the mask made at the submit, then after it (a backend that takes masks late). */
    for (int late_masks = 0; late_masks < 2; late_masks++) {
        struct backend *b = NULL;
        struct backend_options bo = {.kv_blocks = 64, .max_batch_tokens = 64, .max_batch_seqs = 4, .cpu.n_threads = 2};
        cr_assert_eq(backend_cpu_create(&b, m, &bo, err, sizeof err), 0, "%s", err);
        if (late_masks) take_masks_late(b);
        static struct run r;
        memset(&r, 0, sizeof r);
        cr_assert_eq(uv_loop_init(&r.loop), 0);
        uv_timer_init(&r.loop, &r.timer);
        r.timer.data = &r;
        struct engine_options eo = {.max_num_seqs = 4, .max_num_batched_tokens = 64, .seed = 1};
        cr_assert_eq(engine_create(&r.eng, b, tok, &eo, &r.loop, on_event, &r), 0);
        for (int i = 0; i < 3; i++) {
            struct engine_request *q = request(tok, NULL, 4, false);
            q->id = (uint64_t)i;
            q->max_tokens = 8;
            if (i == 1) {
                grammar_compiled_ref(c);
                q->grammar = c;
            }
            cr_assert_eq(engine_submit(r.eng, q), 0);
        }
        wait_for(&r, 3);
        cr_assert_eq(r.res[1].finish, FINISH_ERROR);
        cr_assert(strstr(r.res[1].error, "no token can continue the grammar"), "%s", r.res[1].error);
        cr_assert_eq(r.res[0].finish, FINISH_LENGTH);
        cr_assert_eq(r.res[2].finish, FINISH_LENGTH);
        struct engine_stats st;
        engine_get_stats(r.eng, &st);
        cr_assert_not(st.failed, "the engine goes on serving");
        engine_free(r.eng);
        uv_close((uv_handle_t *)&r.timer, NULL);
        uv_run(&r.loop, UV_RUN_DEFAULT);
        cr_assert_eq(uv_loop_close(&r.loop), 0);
        backend_free(b);
        for (int i = 0; i < 3; i++) strbuf_free(&r.res[i].text);
        cr_assert_eq(late.breaches, 0);
    }
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    tok_free(tok);
    model_free(m);
}
