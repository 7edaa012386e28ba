/* The CPU backend on tiny random mixture-of-experts models against Hugging Face transformers
 * (tests/fixtures/families/<name>/, made by make_moe_fixtures.py): the logits at every prompt
 * position and at every greedy step within 1e-4 of the largest logit, and the same greedy
 * tokens, whether the prompt is prefilled at once or fed a token at a time, alone or beside
 * another sequence. A missing fixture fails the test. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"
#include "worker/model/model_moe.h"

#define FIXTURES "tests/fixtures/families"
#define MAX_PROMPT 16
#define MAX_GEN 16
#define VOCAB 256
#define BLOCKS_PER_SEQ 4

struct expected {
    int32_t prompt[MAX_PROMPT];
    int n_prompt;
    int32_t greedy[MAX_GEN];
    int n_gen;
    float prompt_logits[MAX_PROMPT][VOCAB];
    float greedy_logits[MAX_GEN][VOCAB];
};

static void read_rows(json_t *rows, int n, float out[][VOCAB])
{
    cr_assert_eq((int)json_array_size(rows), n);
    for (int i = 0; i < n; i++) {
        json_t *r = json_array_get(rows, (size_t)i);
        cr_assert_eq(json_array_size(r), VOCAB);
        for (int v = 0; v < VOCAB; v++) out[i][v] = (float)json_number_value(json_array_get(r, (size_t)v));
    }
}

static void load_expected(const char *name, struct expected *x)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/expected.json", FIXTURES, name);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert(root, "cannot read %s: %s (run from the repository root; make_moe_fixtures.py makes it)", path,
              jerr.text);
    json_t *ids = json_object_get(root, "prompt_ids"), *greedy = json_object_get(root, "greedy_ids");
    x->n_prompt = (int)json_array_size(ids);
    x->n_gen = (int)json_array_size(greedy);
    cr_assert(x->n_prompt > 0 && x->n_prompt <= MAX_PROMPT && x->n_gen > 0 && x->n_gen <= MAX_GEN);
    for (int i = 0; i < x->n_prompt; i++) x->prompt[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
    for (int i = 0; i < x->n_gen; i++) x->greedy[i] = (int32_t)json_integer_value(json_array_get(greedy, (size_t)i));
    read_rows(json_object_get(root, "prompt_logits"), x->n_prompt, x->prompt_logits);
    read_rows(json_object_get(root, "greedy_logits"), x->n_gen, x->greedy_logits);
    json_decref(root);
}

static struct model *load_fixture(const char *name)
{
    char path[512], err[1024] = "";
    snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    cr_assert_eq(m->config.vocab_size, VOCAB);
    return m;
}

static struct backend *make_backend(const struct model *m)
{
    struct backend_options opt = {.kv_blocks = 2 * BLOCKS_PER_SEQ, .max_batch_tokens = 64, .max_batch_seqs = 4,
                                  .n_threads = 2};
    struct backend *b = NULL;
    char err[512] = "";
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    return b;
}

static void check_logits(const char *name, const char *what, int i, const float *got, const float *want)
{
    float scale = 0.0f;
    for (int v = 0; v < VOCAB; v++) scale = fmaxf(scale, fabsf(want[v]));
    float worst = 0.0f;
    int at = 0;
    for (int v = 0; v < VOCAB; v++) {
        float d = fabsf(got[v] - want[v]);
        if (d > worst) worst = d, at = v;
    }
    cr_assert(worst <= 1e-4f * scale, "%s: %s %d: logit %d is %.7g, transformers %.7g (max |logit| %.4g)", name, what,
              i, at, got[at], want[at], scale);
}

/* One sequence's state as the engine would keep it. */
struct seq {
    int32_t table[BLOCKS_PER_SEQ];
    int32_t hist[MAX_PROMPT + MAX_GEN];
    int pos, n_gen;
};

/* Runs sequences (each fed `step` prompt tokens a step, 0 for all at once) to the end of
 * their greedy continuation, checking every logit row the backend hands out. */
static void run(const char *name, struct backend *b, const struct expected *x, int n_seqs, const int *step)
{
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .top_k = 0, .repetition_penalty = 1.0f};
    struct seq s[2];
    cr_assert(n_seqs <= 2);
    for (int q = 0; q < n_seqs; q++) {
        memset(&s[q], 0, sizeof s[q]);
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) s[q].table[i] = i * 2 + q; /* interleaved blocks */
        memcpy(s[q].hist, x->prompt, (size_t)x->n_prompt * sizeof(int32_t));
    }
    float logits[2 * VOCAB];
    for (;;) {
        struct batch_seq seqs[2];
        int32_t tokens[64];
        int ns = 0, nt = 0, who[2];
        for (int q = 0; q < n_seqs; q++) {
            if (s[q].n_gen == x->n_gen) continue;
            int left = x->n_prompt - s[q].pos;
            int take = left > 0 ? (step[q] > 0 && step[q] < left ? step[q] : left) : 1;
            memcpy(tokens + nt, s[q].hist + s[q].pos, (size_t)take * sizeof(int32_t));
            /* Token-at-a-time feeding samples every prompt position to check its logits. */
            bool sample = s[q].pos + take >= x->n_prompt || step[q] == 1;
            seqs[ns] = (struct batch_seq){.n_new = take, .start_pos = s[q].pos, .block_table = s[q].table,
                                          .n_blocks = BLOCKS_PER_SEQ, .sample = sample, .sampling = &greedy,
                                          .n_generated = (uint64_t)s[q].n_gen, .history = s[q].hist,
                                          .n_history = s[q].pos + take, .n_output = s[q].n_gen};
            who[ns++] = q;
            nt += take;
        }
        if (ns == 0) break;
        struct batch batch = {.n_seqs = ns, .seqs = seqs, .n_tokens = nt, .tokens = tokens, .logits_out = logits};
        struct sample_result res[2];
        cr_assert_eq(backend_forward(b, &batch, res), 0, "%s", b->error);
        int k = 0;
        for (int i = 0; i < ns; i++) {
            struct seq *q = &s[who[i]];
            q->pos += seqs[i].n_new;
            if (!seqs[i].sample) continue;
            const float *row = logits + (size_t)k * VOCAB;
            if (q->pos < x->n_prompt) {
                check_logits(name, "prompt position", q->pos - 1, row, x->prompt_logits[q->pos - 1]);
            } else {
                if (q->pos == x->n_prompt)
                    check_logits(name, "prompt position", q->pos - 1, row, x->prompt_logits[q->pos - 1]);
                check_logits(name, "greedy step", q->n_gen, row, x->greedy_logits[q->n_gen]);
                cr_assert_eq(res[k].token, x->greedy[q->n_gen], "%s: greedy token %d is %d, transformers %d", name,
                             q->n_gen, res[k].token, x->greedy[q->n_gen]);
                q->hist[q->pos] = res[k].token;
                q->n_gen++;
            }
            k++;
        }
    }
}

static void check_family(const char *name)
{
    struct expected *x = calloc(1, sizeof *x);
    load_expected(name, x);
    struct model *m = load_fixture(name);
    bool sparse = false;
    for (int l = 0; l < m->config.n_layers; l++) sparse |= model_layer_is_moe(&m->config, l);
    cr_assert(sparse, "%s: no sparse layer", name);
    struct backend *b = make_backend(m);
    int all[2] = {0, 0}, one[2] = {1, 1}, mixed[2] = {3, 1};
    run(name, b, x, 1, all);
    run(name, b, x, 1, one);
    run(name, b, x, 2, mixed);
    backend_free(b);
    model_free(m);
    free(x);
}

Test(moe_families, mixtral) { check_family("mixtral"); }
Test(moe_families, mixtral_stacked_experts) { check_family("mixtral_stacked"); }
Test(moe_families, qwen2_moe_shared_expert_and_dense_layer) { check_family("qwen2_moe"); }
Test(moe_families, qwen2_moe_sparse_step) { check_family("qwen2_moe_step2"); }
Test(moe_families, qwen3_moe) { check_family("qwen3_moe"); }

/* Each fixture's layers as config.json says: Qwen2-MoE's mlp_only_layers and sparse step. */
Test(moe_families, sparse_layers_follow_the_config)
{
    struct model *m = load_fixture("qwen2_moe");
    cr_assert(m->layers[0].moe && !m->layers[1].moe && m->layers[2].moe);
    cr_assert_eq(m->layers[1].w_gate.ndim, 2);
    cr_assert_eq(m->layers[0].w_gate.ndim, 0);
    cr_assert(m->layers[0].moe->shared_gate_proj.data && m->layers[0].moe->shared_expert_gate.data);
    cr_assert(!m->config.moe.norm_topk_prob);
    model_free(m);
    m = load_fixture("qwen2_moe_step2");
    cr_assert(!m->layers[0].moe && m->layers[1].moe);
    cr_assert(m->config.moe.norm_topk_prob);
    cr_assert_eq(m->config.moe.top_k, 3);
    model_free(m);
    m = load_fixture("mixtral");
    cr_assert(m->layers[0].moe && m->layers[1].moe);
    cr_assert(m->config.moe.norm_topk_prob);
    cr_assert_eq(m->layers[0].moe->shared_gate_proj.ndim, 0);
    model_free(m);
}

/* The stacked fixture's experts are slices of one tensor and equal the per-expert ones. */
Test(moe_families, stacked_slices_equal_per_expert_tensors)
{
    struct model *a = load_fixture("mixtral"), *s = load_fixture("mixtral_stacked");
    const struct moe_weights *wa = a->layers[1].moe, *ws = s->layers[1].moe;
    for (int e = 0; e < a->config.moe.n_experts; e++) {
        const struct tensor *pa[3] = {&wa->gate[e], &wa->up[e], &wa->down[e]};
        const struct tensor *ps[3] = {&ws->gate[e], &ws->up[e], &ws->down[e]};
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(tensor_numel(pa[i]), tensor_numel(ps[i]));
            cr_assert(!memcmp(pa[i]->data, ps[i]->data, (size_t)tensor_numel(pa[i]) * 4), "expert %d part %d", e, i);
        }
    }
    model_free(a);
    model_free(s);
}

/* --load-format dummy: a MoE config loads without weights and the CPU computes finite logits,
 * the same twice. */
Test(moe_families, dummy_weights_run)
{
    char err[1024] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, FIXTURES "/qwen2_moe/config.json", MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    cr_assert(m->layers[0].moe && !m->layers[0].moe->gate[0].data && m->layers[0].moe->gate[0].ndim == 2);
    struct backend *b = make_backend(m);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    int32_t table[BLOCKS_PER_SEQ] = {0, 1, 2, 3}, tokens[4] = {1, 2, 3, 4};
    float logits[2][VOCAB];
    for (int r = 0; r < 2; r++) {
        struct batch_seq q = {.n_new = 4, .start_pos = 0, .block_table = table, .n_blocks = BLOCKS_PER_SEQ,
                              .sample = true, .sampling = &greedy, .history = tokens, .n_history = 4};
        struct batch batch = {.n_seqs = 1, .seqs = &q, .n_tokens = 4, .tokens = tokens, .logits_out = logits[r]};
        struct sample_result res;
        cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
    }
    for (int v = 0; v < VOCAB; v++) {
        cr_assert(isfinite(logits[0][v]));
        cr_assert_eq(logits[0][v], logits[1][v]);
    }
    backend_free(b);
    model_free(m);
}
