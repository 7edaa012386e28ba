/* The CPU backend against Hugging Face transformers on tiny random models of each dense family
 * and rope variant (tests/fixtures/families, made by its make_fixtures.py): the same greedy
 * tokens, and logits within 1e-4 of the largest, for a prompt longer than every sliding window
 * and original context and for a short one. Each prompt runs as Hugging Face's generate runs
 * it (the prompt in one step, then a token a step), alone and beside the other, and with the
 * prompts prefilled in chunks of 7 (the rope variants that depend on the length see the whole
 * prompt's, batch_seq.n_history, as transformers does). For a model
 * whose every layer slides, blocks that fell out of the window are poisoned (-1) in the block
 * table, as the scheduler frees them. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define FIX_DIR "tests/fixtures/families"
#define GEN 20
#define MAX_PROMPT 64
#define N_PROMPTS 2
#define BLOCKS_PER_SEQ 8
#define TOL 1e-4

struct expected {
    int32_t prompt[MAX_PROMPT];
    int n_prompt;
    int32_t greedy[GEN];
    int steps[8], n_steps;
    float *logits[8];        /* vocab floats per entry of steps */
};

struct fixture {
    char dir[512];
    struct model *m;
    int vocab;
    struct expected e[N_PROMPTS];
};

/* The Hugging Face directory, or with gguf its model.gguf twin (as llama.cpp converts it). */
static void load_fixture(struct fixture *f, const char *name, bool gguf)
{
    cr_assert_lt(snprintf(f->dir, sizeof f->dir, FIX_DIR "/%s", name), (int)sizeof f->dir);
    char path[600], model_path[600], err[1024] = "";
    snprintf(path, sizeof path, "%s/expected.json", f->dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert(root, "fixture %s missing or unreadable (%s): run tests/fixtures/families/make_fixtures.py", path,
              jerr.text);
    snprintf(model_path, sizeof model_path, gguf ? "%s/model.gguf" : "%s", f->dir);
    cr_assert_eq(model_load(&f->m, model_path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s", name, err);
    if (gguf) cr_assert_lt(snprintf(f->dir, sizeof f->dir, "%s", model_path), (int)sizeof f->dir);
    f->vocab = f->m->config.vocab_size;
    cr_assert_eq(json_integer_value(json_object_get(root, "gen")), GEN);
    json_t *prompts = json_object_get(root, "prompts");
    cr_assert_geq(json_array_size(prompts), N_PROMPTS); /* a third: test_engine_families.c */
    for (int p = 0; p < N_PROMPTS; p++) {
        struct expected *e = &f->e[p];
        json_t *jp = json_array_get(prompts, (size_t)p);
        json_t *ids = json_object_get(jp, "prompt_ids"), *greedy = json_object_get(jp, "greedy_ids");
        json_t *steps = json_object_get(jp, "step_logits");
        cr_assert(json_array_size(ids) > 0 && json_array_size(ids) <= MAX_PROMPT);
        cr_assert_eq(json_array_size(greedy), GEN);
        e->n_prompt = (int)json_array_size(ids);
        for (int i = 0; i < e->n_prompt; i++) e->prompt[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
        for (int i = 0; i < GEN; i++) e->greedy[i] = (int32_t)json_integer_value(json_array_get(greedy, (size_t)i));
        const char *key;
        json_t *arr;
        e->n_steps = 0;
        json_object_foreach(steps, key, arr) {
            cr_assert(e->n_steps < 8);
            cr_assert_eq((int)json_array_size(arr), f->vocab);
            e->steps[e->n_steps] = atoi(key);
            float *l = malloc((size_t)f->vocab * sizeof(float));
            for (int v = 0; v < f->vocab; v++) l[v] = (float)json_number_value(json_array_get(arr, (size_t)v));
            e->logits[e->n_steps++] = l;
        }
        cr_assert_geq(e->n_steps, 2);
    }
    json_decref(root);
}

static void free_fixture(struct fixture *f)
{
    for (int p = 0; p < N_PROMPTS; p++)
        for (int s = 0; s < f->e[p].n_steps; s++) free(f->e[p].logits[s]);
    model_free(f->m);
}

struct gen_out {
    int32_t ids[GEN];
    float *logits; /* GEN * vocab */
};

/* As the engine drives it: each step every unfinished sequence brings its next prompt chunk
 * (at most chunk tokens) or its last token; sequence s owns blocks s, s + 2, s + 4, ... */
static void generate(struct backend *b, const struct fixture *f, const int *which, int n, int chunk,
                     struct gen_out *out)
{
    const struct model_family *fam = &f->m->config.fam;
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t tables[N_PROMPTS][BLOCKS_PER_SEQ], hist[N_PROMPTS][MAX_PROMPT + GEN];
    int pos[N_PROMPTS] = {0}, n_gen[N_PROMPTS] = {0};
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) tables[s][i] = i * N_PROMPTS + s;
        memcpy(hist[s], f->e[which[s]].prompt, (size_t)f->e[which[s]].n_prompt * sizeof(int32_t));
    }
    float *logits = malloc((size_t)N_PROMPTS * (size_t)f->vocab * sizeof(float));
    for (;;) {
        struct batch_seq seqs[N_PROMPTS];
        int32_t tokens[2 * MAX_PROMPT];
        int ns = 0, nt = 0, who[N_PROMPTS];
        for (int s = 0; s < n; s++) {
            if (n_gen[s] == GEN) continue;
            int n_prompt = f->e[which[s]].n_prompt;
            int take = pos[s] < n_prompt ? (n_prompt - pos[s] < chunk ? n_prompt - pos[s] : chunk) : 1;
            /* Out of every layer's window: what the scheduler frees. */
            if (fam->all_sliding && pos[s] >= fam->sliding_window)
                for (int i = 0; i < (pos[s] - fam->sliding_window + 1) / KV_BLOCK_SIZE; i++) tables[s][i] = -1;
            memcpy(tokens + nt, hist[s] + pos[s], (size_t)take * sizeof(int32_t));
            seqs[ns] = (struct batch_seq){.n_new = take, .start_pos = pos[s], .block_table = tables[s],
                                          .n_blocks = BLOCKS_PER_SEQ, .sample = pos[s] + take >= n_prompt,
                                          .prompt = pos[s] < n_prompt, .sampling = &greedy,
                                          .n_generated = (uint64_t)n_gen[s], .history = hist[s],
                                          .n_history = pos[s] < n_prompt ? n_prompt : pos[s] + take,
                                          .n_output = n_gen[s]};
            who[ns++] = s;
            nt += take;
        }
        if (ns == 0) break;
        struct batch batch = {.n_seqs = ns, .seqs = seqs, .n_tokens = nt, .tokens = tokens, .logits_out = logits};
        struct sample_result res[N_PROMPTS];
        cr_assert_eq(backend_forward(b, &batch, res), 0, "%s: %s", f->dir, b->error);
        int k = 0;
        for (int i = 0; i < ns; i++) {
            int s = who[i];
            pos[s] += seqs[i].n_new;
            if (!seqs[i].sample) continue;
            memcpy(out[s].logits + (size_t)n_gen[s] * f->vocab, logits + (size_t)k * f->vocab,
                   (size_t)f->vocab * sizeof(float));
            out[s].ids[n_gen[s]] = res[k].token;
            hist[s][pos[s]] = res[k].token;
            n_gen[s]++;
            k++;
        }
    }
    free(logits);
}

/* Greedy tokens equal, logits of the recorded steps within TOL of the largest |logit|. */
static double expect_hf(const struct fixture *f, const struct gen_out *g, const struct expected *e, const char *what)
{
    for (int i = 0; i < GEN; i++)
        cr_expect_eq(g->ids[i], e->greedy[i], "%s %s: token %d is %d, Hugging Face says %d", f->dir, what, i, g->ids[i],
                     e->greedy[i]);
    double worst_rel = 0;
    for (int s = 0; s < e->n_steps; s++) {
        const float *mine = g->logits + (size_t)e->steps[s] * f->vocab, *ref = e->logits[s];
        double worst = 0, scale = 1;
        for (int v = 0; v < f->vocab; v++) {
            if (fabs(ref[v]) > scale) scale = fabs(ref[v]);
            if (fabs(mine[v] - ref[v]) > worst) worst = fabs(mine[v] - ref[v]);
        }
        cr_expect(worst <= TOL * scale, "%s %s: step %d logits differ from Hugging Face's by %g (largest %g)", f->dir,
                  what, e->steps[s], worst, scale);
        if (worst / scale > worst_rel) worst_rel = worst / scale;
    }
    return worst_rel;
}

static void check_family(const char *name, bool gguf)
{
    struct fixture f;
    memset(&f, 0, sizeof f);
    load_fixture(&f, name, gguf);
    struct backend_options opt = {.kv_blocks = N_PROMPTS * BLOCKS_PER_SEQ, .max_batch_tokens = 2 * MAX_PROMPT,
                                  .max_batch_seqs = N_PROMPTS, .cpu.n_threads = 2};
    struct backend *b = NULL;
    char err[512] = "";
    cr_assert_eq(backend_cpu_create(&b, f.m, &opt, err, sizeof err), 0, "%s", err);
    struct gen_out out[N_PROMPTS];
    for (int p = 0; p < N_PROMPTS; p++) out[p].logits = malloc((size_t)GEN * f.vocab * sizeof(float));
    double worst = 0, w;
    for (int p = 0; p < N_PROMPTS; p++) {
        generate(b, &f, &p, 1, MAX_PROMPT, &out[0]);
        if ((w = expect_hf(&f, &out[0], &f.e[p], "alone")) > worst) worst = w;
    }
    int both[N_PROMPTS] = {0, 1};
    generate(b, &f, both, N_PROMPTS, MAX_PROMPT, out);
    for (int p = 0; p < N_PROMPTS; p++) expect_hf(&f, &out[p], &f.e[p], "batched");
    /* Dynamic NTK and LongRoPE choose their frequencies by the sequence's known length (the
     * whole prompt while prefilling), as transformers does for a forward over the whole prompt:
     * chunks change nothing. */
    generate(b, &f, both, N_PROMPTS, 7, out);
    for (int p = 0; p < N_PROMPTS; p++) expect_hf(&f, &out[p], &f.e[p], "chunked prefill");
    cr_log_info("%s: logits within %.2g (relative to the largest) of transformers'", name, worst);
    for (int p = 0; p < N_PROMPTS; p++) free(out[p].logits);
    backend_free(b);
    free_fixture(&f);
}

TestSuite(cpu_families, .timeout = 120);

#define FAMILY(name) \
    Test(cpu_families, name) { check_family(#name, false); }
/* The same model as a GGUF file: llama.cpp's names and conventions (make_fixtures.py). */
#define FAMILY_GGUF(name) \
    Test(cpu_families, name##_gguf) { check_family(#name, true); }

FAMILY(llama_bias_linear)
FAMILY(llama_dynamic)
FAMILY(llama_yarn)
FAMILY(llama_llama3)
FAMILY(mistral_sliding)
FAMILY(gemma)
FAMILY(gemma2)
FAMILY(gemma3)
FAMILY(gemma3_mm)
FAMILY(phi3_longrope)
FAMILY(olmo2)
FAMILY(granite)
FAMILY_GGUF(gemma3)
FAMILY_GGUF(phi3_longrope)
FAMILY_GGUF(granite)

/* What each fixture must have turned on, so that a config read wrongly cannot pass as Llama. */
Test(cpu_families, configs_read_as_transformers_does)
{
    char err[1024] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, FIX_DIR "/gemma3", MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    const struct model_family *g = &m->config.fam;
    cr_expect(g->norm_plus_one && g->norms == MODEL_NORMS_SANDWICH && g->act == MODEL_ACT_GELU_TANH);
    cr_expect(model_layer_sliding(g, 0) && !model_layer_sliding(g, 1) && !g->all_sliding);
    cr_expect_eq(g->sliding_window, 16);
    cr_expect_float_eq(g->local_rope_theta, 10000.0f, 1e-3f);
    cr_expect_float_eq(m->config.rope_theta, 1000000.0f, 1.0f);
    cr_expect_eq(m->config.rope_scaling.type, ROPE_SCALING_LINEAR);
    cr_expect_float_eq(g->attn_scale, 0.25f, 1e-7f);
    model_free(m);
    cr_assert_eq(model_load(&m, FIX_DIR "/mistral_sliding", MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    cr_expect(m->config.fam.all_sliding && m->config.fam.sliding_window == 16);
    model_free(m);
    cr_assert_eq(model_load(&m, FIX_DIR "/phi3_longrope", MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    cr_expect_eq(m->config.rope_scaling.type, ROPE_SCALING_LONGROPE);
    cr_expect_eq(m->config.rope_scaling.original_max_position, 32);
    /* sqrt(1 + ln(128 / 32) / ln(32)) */
    cr_expect_float_eq(m->config.fam.rope_attn_factor, (float)sqrt(1 + log(4.0) / log(32.0)), 1e-6f);
    cr_expect(m->config.fam.fused_qkv);
    model_free(m);
}
