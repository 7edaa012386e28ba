/* The CPU backend against Hugging Face transformers on stories260K: the same greedy tokens
 * and last-position logits, from the GGUF file and the Hugging Face directory alike, whether
 * prompts run alone, together in one ragged batch, or prefilled in chunks. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define GEN 64
#define MAX_SEQS 3
#define BLOCKS_PER_SEQ 8
#define VOCAB 512

struct ref_prompt {
    int32_t prompt[64];
    int n_prompt;
    int32_t greedy[GEN];
    float logits[VOCAB];
};

static char data_dir[4096];
static struct ref_prompt refs[MAX_SEQS];
static int n_refs;

static bool have_data(void)
{
    const char *env = getenv("SLUICE_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s/models/stories260K", env && *env ? env : "../shared");
    struct stat st;
    return stat(data_dir, &st) == 0;
}

static void load_reference(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/reference.json", data_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert(root, "cannot read %s: %s", path, jerr.text);
    json_t *prompts = json_object_get(root, "prompts");
    cr_assert(json_is_object(prompts));
    const char *key;
    json_t *p;
    n_refs = 0;
    json_object_foreach(prompts, key, p) {
        cr_assert(n_refs < MAX_SEQS);
        struct ref_prompt *r = &refs[n_refs++];
        json_t *ids = json_object_get(p, "prompt_ids"), *greedy = json_object_get(p, "greedy_ids");
        json_t *logits = json_object_get(p, "last_logits");
        cr_assert(json_array_size(ids) > 0 && json_array_size(ids) <= 64);
        cr_assert_eq(json_array_size(greedy), GEN);
        cr_assert_eq(json_array_size(logits), VOCAB);
        r->n_prompt = (int)json_array_size(ids);
        for (int i = 0; i < r->n_prompt; i++) r->prompt[i] = (int32_t)json_integer_value(json_array_get(ids, i));
        for (int i = 0; i < GEN; i++) r->greedy[i] = (int32_t)json_integer_value(json_array_get(greedy, i));
        for (int i = 0; i < VOCAB; i++) r->logits[i] = (float)json_number_value(json_array_get(logits, i));
    }
    cr_assert_eq(n_refs, 3);
    json_decref(root);
}

static void setup(void)
{
    if (!have_data()) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    load_reference();
}

static struct model *load(bool gguf)
{
    char path[4200], err[1024] = "";
    snprintf(path, sizeof path, gguf ? "%s/stories260K.gguf" : "%s/hf", data_dir);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    return m;
}

static struct backend *make_backend(const struct model *m, int threads)
{
    struct backend_options opt = {.kv_blocks = MAX_SEQS * BLOCKS_PER_SEQ, .max_batch_tokens = 256,
                                  .max_batch_seqs = 8, .cpu.n_threads = threads};
    struct backend *b = NULL;
    char err[512] = "";
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b->num_kv_blocks, MAX_SEQS * BLOCKS_PER_SEQ);
    return b;
}

struct gen_out {
    int32_t ids[GEN];
    float logits[GEN][VOCAB];   /* the logits each token was sampled from */
};

/* Drives the backend as the engine would: each step every sequence contributes its next
 * prompt chunk (at most chunk tokens) or its last sampled token, and samples once its prompt
 * is all in. Sequence s owns blocks s, s+3, s+6, ...: interleaved, to exercise the paging. */
static void generate(struct backend *b, const struct ref_prompt *const *prompts, int n, int chunk,
                     struct gen_out *out)
{
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .top_k = 0,
                                     .repetition_penalty = 1.0f, .logprobs = 5};
    int32_t tables[MAX_SEQS][BLOCKS_PER_SEQ];
    int32_t hist[MAX_SEQS][64 + GEN];
    int pos[MAX_SEQS] = {0}, n_gen[MAX_SEQS] = {0};
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) tables[s][i] = i * MAX_SEQS + s;
        memcpy(hist[s], prompts[s]->prompt, (size_t)prompts[s]->n_prompt * sizeof(int32_t));
    }
    float *logits = malloc((size_t)MAX_SEQS * VOCAB * sizeof(float));
    for (;;) {
        struct batch_seq seqs[MAX_SEQS];
        int32_t tokens[256];
        int ns = 0, nt = 0, who[MAX_SEQS];
        for (int s = 0; s < n; s++) {
            if (n_gen[s] == GEN) continue;
            int n_prompt = prompts[s]->n_prompt;
            int take = pos[s] < n_prompt ? (n_prompt - pos[s] < chunk ? n_prompt - pos[s] : chunk) : 1;
            memcpy(tokens + nt, hist[s] + pos[s], (size_t)take * sizeof(int32_t));
            seqs[ns] = (struct batch_seq){.n_new = take, .start_pos = pos[s], .block_table = tables[s],
                                          .n_blocks = BLOCKS_PER_SEQ, .sample = pos[s] + take >= n_prompt,
                                          .sampling = &greedy, .n_generated = (uint64_t)n_gen[s],
                                          .history = hist[s], .n_history = pos[s] + take,
                                          .n_output = n_gen[s]};
            who[ns++] = s;
            nt += take;
        }
        if (ns == 0) break;
        struct batch batch = {.n_seqs = ns, .seqs = seqs, .n_tokens = nt, .tokens = tokens, .logits_out = logits};
        struct sample_result res[MAX_SEQS];
        cr_assert_eq(backend_forward(b, &batch, res), 0, "%s", b->error);
        int k = 0;
        for (int i = 0; i < ns; i++) {
            int s = who[i];
            pos[s] += seqs[i].n_new;
            if (!seqs[i].sample) continue;
            cr_assert_eq(res[k].n_top, 5);
            cr_assert_eq(res[k].top_ids[0], res[k].token);
            memcpy(out[s].logits[n_gen[s]], logits + (size_t)k * VOCAB, VOCAB * sizeof(float));
            out[s].ids[n_gen[s]] = res[k].token;
            hist[s][pos[s]] = res[k].token;
            n_gen[s]++;
            k++;
        }
    }
    free(logits);
}

static void expect_reference(const struct gen_out *g, const struct ref_prompt *r, const char *what)
{
    for (int i = 0; i < GEN; i++)
        cr_expect_eq(g->ids[i], r->greedy[i], "%s: token %d is %d, Hugging Face says %d", what, i, g->ids[i],
                     r->greedy[i]);
    float worst = 0.0f;
    for (int v = 0; v < VOCAB; v++) {
        float d = fabsf(g->logits[0][v] - r->logits[v]);
        if (d > worst) worst = d;
    }
    cr_expect(worst < 1e-4f, "%s: last-position logits differ from Hugging Face's by up to %g", what, (double)worst);
}

static void expect_same(const struct gen_out *a, const struct gen_out *b, const char *what)
{
    cr_expect_arr_eq(a->ids, b->ids, sizeof a->ids, "%s: tokens differ", what);
    cr_expect(memcmp(a->logits, b->logits, sizeof a->logits) == 0, "%s: logits are not identical", what);
}

static void run_alone(bool gguf, int threads, struct gen_out *out)
{
    struct model *m = load(gguf);
    struct backend *b = make_backend(m, threads);
    for (int i = 0; i < n_refs; i++) {
        const struct ref_prompt *p = &refs[i];
        generate(b, &p, 1, 1000, &out[i]);
    }
    backend_free(b);
    model_free(m);
}

TestSuite(cpu_reference, .init = setup, .timeout = 60);

Test(cpu_reference, hf_directory_matches_transformers)
{
    struct gen_out *out = calloc(MAX_SEQS, sizeof *out);
    run_alone(false, 2, out);
    for (int i = 0; i < n_refs; i++) expect_reference(&out[i], &refs[i], "hf");
    free(out);
}

Test(cpu_reference, gguf_matches_transformers_and_hf_exactly)
{
    struct gen_out *hf = calloc(MAX_SEQS, sizeof *hf), *gg = calloc(MAX_SEQS, sizeof *gg);
    run_alone(true, 2, gg);
    run_alone(false, 1, hf);
    for (int i = 0; i < n_refs; i++) {
        expect_reference(&gg[i], &refs[i], "gguf");
        expect_same(&gg[i], &hf[i], "gguf vs hf");
    }
    free(hf);
    free(gg);
}

Test(cpu_reference, ragged_batch_equals_one_at_a_time)
{
    struct gen_out *alone = calloc(MAX_SEQS, sizeof *alone), *together = calloc(MAX_SEQS, sizeof *together);
    run_alone(false, 2, alone);
    struct model *m = load(false);
    struct backend *b = make_backend(m, 2);
    const struct ref_prompt *ps[MAX_SEQS] = {&refs[0], &refs[1], &refs[2]};
    generate(b, ps, 3, 1000, together);
    for (int i = 0; i < n_refs; i++) {
        expect_same(&together[i], &alone[i], "batched vs alone");
        expect_reference(&together[i], &refs[i], "batched");
    }
    backend_free(b);
    model_free(m);
    free(alone);
    free(together);
}

Test(cpu_reference, chunked_prefill_equals_one_prefill)
{
    struct gen_out *alone = calloc(MAX_SEQS, sizeof *alone), *chunked = calloc(MAX_SEQS, sizeof *chunked);
    run_alone(true, 2, alone);
    struct model *m = load(true);
    struct backend *b = make_backend(m, 2);
    /* Chunks of 1, then of 3 with all three prompts mixing prefill and decode rows. */
    for (int i = 0; i < n_refs; i++) {
        const struct ref_prompt *p = &refs[i];
        generate(b, &p, 1, 1, &chunked[i]);
        expect_same(&chunked[i], &alone[i], "prefill in chunks of 1");
    }
    const struct ref_prompt *ps[MAX_SEQS] = {&refs[0], &refs[1], &refs[2]};
    generate(b, ps, 3, 3, chunked);
    for (int i = 0; i < n_refs; i++) expect_same(&chunked[i], &alone[i], "batched prefill in chunks of 3");
    backend_free(b);
    model_free(m);
    free(alone);
    free(chunked);
}

Test(cpu_reference, rejects_bad_batches)
{
    struct model *m = load(false);
    struct backend *b = make_backend(m, 1);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t table[2] = {0, 99}, tokens[20] = {1};
    struct batch_seq s = {.n_new = 20, .start_pos = 0, .block_table = table, .n_blocks = 2, .sample = true,
                          .sampling = &greedy, .history = tokens, .n_history = 20};
    struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = 20, .tokens = tokens};
    struct sample_result res;
    cr_expect_lt(backend_forward(b, &batch, &res), 0, "block 99 is outside a 24-block cache");
    cr_expect(strstr(b->error, "block") != NULL, "%s", b->error);
    table[1] = 1;
    s.n_blocks = 1;
    cr_expect_lt(backend_forward(b, &batch, &res), 0, "20 tokens do not fit one block");
    s.n_blocks = 2;
    tokens[3] = VOCAB;
    cr_expect_lt(backend_forward(b, &batch, &res), 0, "token id outside the vocabulary");
    tokens[3] = 5;
    batch.n_tokens = 19;
    cr_expect_lt(backend_forward(b, &batch, &res), 0, "n_tokens disagrees with n_new");
    batch.n_tokens = 20;
    cr_expect_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
    backend_free(b);
    model_free(m);
}

/* Prompt logprobs: for each prompt position, the log-softmax of that position's logits at the
 * next prompt token, as a prompt fed one token per step (each step sampling, its logits copied
 * out) shows them; whether the prompt goes in whole or in chunks. */
Test(cpu_reference, prompt_logprobs_are_each_positions_log_softmax)
{
    struct model *m = load(false);
    struct backend *b = make_backend(m, 2);
    const struct ref_prompt *p = &refs[0];
    int n = p->n_prompt;
    cr_assert_gt(n, 3);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t table[BLOCKS_PER_SEQ];
    for (int i = 0; i < BLOCKS_PER_SEQ; i++) table[i] = i;
    /* One token per step: row i's logits. */
    float(*logits)[VOCAB] = malloc((size_t)n * sizeof *logits);
    for (int i = 0; i < n; i++) {
        struct batch_seq s = {.n_new = 1, .start_pos = i, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                              .sample = true, .prompt = true, .sampling = &greedy};
        struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = 1, .tokens = &p->prompt[i], .logits_out = logits[i]};
        struct sample_result res;
        cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
    }
    struct prompt_logprob *lp = calloc((size_t)n, sizeof *lp);
    for (int chunk = 1; chunk <= n; chunk += n - 1) {
        memset(lp, 0, (size_t)n * sizeof *lp);
        for (int at = 0; at < n; at += chunk) {
            int take = n - at < chunk ? n - at : chunk;
            /* Rows whose next token is a prompt token: all but the prompt's last. */
            int rows = at + take < n ? take : take - 1;
            struct batch_seq s = {.n_new = take, .start_pos = at, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                                  .sample = at + take == n, .prompt = true, .sampling = &greedy,
                                  .lp_first = 0, .lp_rows = rows, .lp_top = 3, .lp_targets = p->prompt + at + 1,
                                  .lp_out = lp + at};
            struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = take, .tokens = p->prompt + at};
            struct sample_result res;
            cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
        }
        for (int i = 0; i + 1 < n; i++) {
            double mx = -INFINITY, sum = 0.0;
            for (int v = 0; v < VOCAB; v++) mx = fmax(mx, logits[i][v]);
            for (int v = 0; v < VOCAB; v++) sum += exp(logits[i][v] - mx);
            int32_t t = p->prompt[i + 1];
            double want = logits[i][t] - mx - log(sum);
            int rank = 1;
            for (int v = 0; v < VOCAB; v++) rank += logits[i][v] > logits[i][t];
            cr_expect_eq(lp[i].token, t);
            cr_expect(fabs(lp[i].logprob - want) < 1e-4, "chunk %d, row %d: %f, want %f", chunk, i,
                      (double)lp[i].logprob, want);
            cr_expect_eq(lp[i].rank, rank, "chunk %d, row %d", chunk, i);
            cr_expect_eq(lp[i].n_top, 3);
            cr_expect(lp[i].top_logprobs[0] >= lp[i].logprob);
        }
        cr_expect_eq(lp[n - 1].token, 0, "the last prompt row has no prompt token after it");
    }
    free(lp);
    free(logits);
    backend_free(b);
    model_free(m);
}

/* Hidden states: the final norm's output, which lm_head turns into the logits; summed over a
 * sequence's rows the same whether it comes whole or in chunks. */
Test(cpu_reference, hidden_states_are_what_lm_head_reads)
{
    struct model *m = load(false);
    struct backend *b = make_backend(m, 2);
    const int h = m->config.hidden_size;
    const struct ref_prompt *p = &refs[1];
    int n = p->n_prompt;
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t table[BLOCKS_PER_SEQ];
    for (int i = 0; i < BLOCKS_PER_SEQ; i++) table[i] = i;
    float *sum_whole = calloc((size_t)h, sizeof(float)), *sum_chunks = calloc((size_t)h, sizeof(float));
    float *last = calloc((size_t)h, sizeof(float)), *logits = malloc(VOCAB * sizeof(float));
    struct batch_seq s = {.n_new = n, .start_pos = 0, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                          .sample = true, .prompt = true, .sampling = &greedy, .hidden_sum = sum_whole,
                          .hidden_last = last};
    struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = n, .tokens = p->prompt, .logits_out = logits};
    struct sample_result res;
    cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
    /* As the backend picks it (cpu_backend.c). */
    bool tied = m->config.tie_embeddings || (m->lm_head.data && m->lm_head.data == m->tok_embed.data) ||
                (!m->lm_head.data && m->lm_head.dummy_id == m->tok_embed.dummy_id);
    const struct tensor *head = tied ? &m->tok_embed : &m->lm_head;
    for (int v = 0; v < VOCAB; v += 37) {
        double dot = 0.0;
        for (int k = 0; k < h; k++)
            dot += (double)last[k] * tensor_get_f32(head, m->dummy_seed, false, (uint64_t)v * (uint64_t)h + (uint64_t)k);
        cr_expect(fabs(dot - logits[v]) < 1e-3, "token %d: lm_head(hidden) %f, logits %f", v, dot, (double)logits[v]);
    }
    for (int at = 0; at < n; at += 2) {
        int take = n - at < 2 ? n - at : 2;
        struct batch_seq c = {.n_new = take, .start_pos = at, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                              .prompt = true, .hidden_sum = sum_chunks};
        struct batch cb = {.n_seqs = 1, .seqs = &c, .n_tokens = take, .tokens = p->prompt + at};
        cr_assert_eq(backend_forward(b, &cb, &res), 0, "%s", b->error);
    }
    for (int k = 0; k < h; k++)
        cr_expect(fabsf(sum_whole[k] - sum_chunks[k]) <= 1e-5f * (1.0f + fabsf(sum_whole[k])), "element %d", k);
    free(sum_whole);
    free(sum_chunks);
    free(last);
    free(logits);
    backend_free(b);
    model_free(m);
}

Test(cpu_reference, decode_step_speed)
{
    struct model *m = load(false);
    struct backend *b = make_backend(m, 1);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t table[BLOCKS_PER_SEQ];
    for (int i = 0; i < BLOCKS_PER_SEQ; i++) table[i] = i;
    int32_t hist[128] = {1};
    /* The best of five passes over positions 0..99, so a busy machine disturbs it less. */
    double us = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int steps = 100;
        for (int i = 0; i < steps; i++) {
            struct batch_seq s = {.n_new = 1, .start_pos = i, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                                  .sample = true, .sampling = &greedy, .history = hist, .n_history = i + 1};
            struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = 1, .tokens = &hist[i]};
            struct sample_result res;
            cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
            hist[i + 1] = res.token;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double t = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / steps;
        if (t < us) us = t;
    }
    cr_log_info("stories260K decode step, batch 1, 1 thread, positions 0..99: %.1f us", us);
    fprintf(stderr, "stories260K decode step (batch 1, 1 thread): %.1f us\n", us);
    backend_free(b);
    model_free(m);
}
