/* Tensor parallelism on the CPU backend: 2 and 4 ranks give the greedy tokens of 1 rank and
 * its logits within float rounding (only the row-parallel sums are added in another order),
 * on stories260K (Hugging Face directory and GGUF file) and on tiny random models of each
 * family (Llama with KV heads replicated across ranks and a vocabulary that does not split
 * evenly, Qwen2's q/k/v biases, Qwen3's q/k norms) and on the mixture-of-experts fixtures; the
 * same bits from run to run; prompt
 * logprobs and hidden states through the ranks; and sizes that do not shard refused. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define GEN 24
#define MAX_SEQS 3
#define BLOCKS_PER_SEQ 8
#define MAX_VOCAB 512

static char data_dir[4096];

static bool have_data(void)
{
    const char *env = getenv("SLUICE_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s/models/stories260K", env && *env ? env : "../shared");
    struct stat st;
    return stat(data_dir, &st) == 0;
}

static struct model *load(const char *path, enum model_load_format fmt)
{
    char err[1024] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, fmt, err, sizeof err), 0, "%s: %s", path, err);
    return m;
}

static struct backend *make_backend(const struct model *m, int tp)
{
    struct backend_options opt = {.kv_blocks = MAX_SEQS * BLOCKS_PER_SEQ, .max_batch_tokens = 256,
                                  .max_batch_seqs = 8, .cpu.n_threads = 2, .tensor_parallel_size = tp};
    struct backend *b = NULL;
    char err[1024] = "";
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "tp %d: %s", tp, err);
    cr_assert_eq(b->num_kv_blocks, MAX_SEQS * BLOCKS_PER_SEQ);
    cr_assert_eq(b->config.vocab_size, m->config.vocab_size);
    return b;
}

struct gen_out {
    int32_t ids[MAX_SEQS][GEN];
    float logits[MAX_SEQS][GEN][MAX_VOCAB];
    struct prompt_logprob plp[MAX_SEQS][16];
    float hidden[MAX_SEQS][128];
};

/* Token ids below 256: every test model's vocabulary has them. */
static const int32_t prompts[MAX_SEQS][12] = {
    {1, 203, 207, 161, 178, 10, 100, 77},
    {1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30},
    {1, 199, 3},
};
static const int n_prompt[MAX_SEQS] = {8, 12, 3};

/* The three prompts in one ragged batch, prefilled in chunks of 5, then decoded greedily; the
 * first chunk of each asks for prompt logprobs and the hidden states' sum. */
static void generate(struct backend *b, int vocab, struct gen_out *out)
{
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = 3};
    int32_t tables[MAX_SEQS][BLOCKS_PER_SEQ], hist[MAX_SEQS][12 + GEN];
    int pos[MAX_SEQS] = {0}, n_gen[MAX_SEQS] = {0};
    for (int s = 0; s < MAX_SEQS; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) tables[s][i] = i * MAX_SEQS + s;
        memcpy(hist[s], prompts[s], (size_t)n_prompt[s] * sizeof(int32_t));
    }
    float *logits = malloc((size_t)MAX_SEQS * (size_t)vocab * sizeof(float));
    memset(out, 0, sizeof *out);
    for (;;) {
        struct batch_seq seqs[MAX_SEQS];
        int32_t tokens[64];
        int ns = 0, nt = 0, who[MAX_SEQS];
        for (int s = 0; s < MAX_SEQS; s++) {
            if (n_gen[s] == GEN) continue;
            int take = pos[s] < n_prompt[s] ? (n_prompt[s] - pos[s] < 5 ? n_prompt[s] - pos[s] : 5) : 1;
            memcpy(tokens + nt, hist[s] + pos[s], (size_t)take * sizeof(int32_t));
            seqs[ns] = (struct batch_seq){.n_new = take, .start_pos = pos[s], .block_table = tables[s],
                                          .n_blocks = BLOCKS_PER_SEQ, .sample = pos[s] + take >= n_prompt[s],
                                          .prompt = pos[s] < n_prompt[s], .sampling = &greedy,
                                          .n_generated = (uint64_t)n_gen[s], .history = hist[s],
                                          .n_history = pos[s] + take, .n_output = n_gen[s]};
            if (pos[s] == 0 && take > 1) {
                seqs[ns].lp_first = 0;
                seqs[ns].lp_rows = take - 1;
                seqs[ns].lp_top = 2;
                seqs[ns].lp_targets = prompts[s] + 1;
                seqs[ns].lp_out = out->plp[s];
                seqs[ns].hidden_sum = out->hidden[s];
            }
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
            memcpy(out->logits[s][n_gen[s]], logits + (size_t)k * vocab, (size_t)vocab * sizeof(float));
            out->ids[s][n_gen[s]] = res[k].token;
            hist[s][pos[s]] = res[k].token;
            n_gen[s]++;
            k++;
        }
    }
    free(logits);
}

static void run(const struct model *m, int tp, struct gen_out *out)
{
    struct backend *b = make_backend(m, tp);
    generate(b, m->config.vocab_size, out);
    backend_free(b);
}

/* Tokens equal; logits, prompt logprobs and hidden states within float rounding of tp 1's. */
static void expect_close(const struct gen_out *one, const struct gen_out *tp, int vocab, int hidden, const char *what)
{
    float worst = 0.0f, scale = 0.0f;
    for (int s = 0; s < MAX_SEQS; s++) {
        for (int i = 0; i < GEN; i++) {
            cr_expect_eq(tp->ids[s][i], one->ids[s][i], "%s: sequence %d token %d is %d, not %d", what, s, i,
                         tp->ids[s][i], one->ids[s][i]);
            for (int v = 0; v < vocab; v++) {
                float d = fabsf(tp->logits[s][i][v] - one->logits[s][i][v]);
                if (d > worst) worst = d;
                if (fabsf(one->logits[s][i][v]) > scale) scale = fabsf(one->logits[s][i][v]);
            }
        }
        for (int i = 0; i < n_prompt[s] - 1 && i < 4; i++) {
            /* A rank counts larger logits: two within rounding of each other may swap. */
            cr_expect(abs(tp->plp[s][i].rank - one->plp[s][i].rank) <= 1, "%s: prompt logprob rank %d vs %d", what,
                      tp->plp[s][i].rank, one->plp[s][i].rank);
            cr_expect(fabsf(tp->plp[s][i].logprob - one->plp[s][i].logprob) < 1e-4f, "%s: prompt logprob %g vs %g",
                      what, (double)tp->plp[s][i].logprob, (double)one->plp[s][i].logprob);
        }
        for (int k = 0; k < hidden; k++)
            cr_expect(fabsf(tp->hidden[s][k] - one->hidden[s][k]) < 1e-4f * (1.0f + fabsf(one->hidden[s][k])),
                      "%s: hidden state %d", what, k);
    }
    cr_expect(scale > 0.0f, "%s: no logits came back", what);
    cr_expect(worst <= 1e-5f * (1.0f + scale), "%s: logits differ from one rank's by up to %g (largest %g)", what,
              (double)worst, (double)scale);
    cr_log_info("%s: logits within %g of one rank's (largest %g)", what, (double)worst, (double)scale);
}

static void expect_tp_equals_one(const struct model *m, const char *name)
{
    cr_assert_leq(m->config.vocab_size, MAX_VOCAB);
    cr_assert_leq(m->config.hidden_size, 128);
    struct gen_out *one = malloc(sizeof *one), *tp = malloc(sizeof *tp), *again = malloc(sizeof *again);
    run(m, 1, one);
    for (int n = 2; n <= 4; n *= 2) {
        char what[128];
        snprintf(what, sizeof what, "%s, %d ranks", name, n);
        run(m, n, tp);
        expect_close(one, tp, m->config.vocab_size, m->config.hidden_size, what);
        /* The ranks' sums run in rank order: the same bits every time. */
        run(m, n, again);
        cr_expect(memcmp(tp, again, sizeof *tp) == 0, "%s: two runs differ", what);
    }
    free(one), free(tp), free(again);
}

/* One timeout for the suite: Criterion 2.4.1's runner leaks a timer record (LeakSanitizer flags
 * it under `make asan`) when tests with different timeouts run side by side with --jobs 2. */
TestSuite(cpu_tp, .timeout = 120);

Test(cpu_tp, stories260k_two_and_four_ranks_match_one)
{
    if (!have_data()) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/hf", data_dir);
    struct model *m = load(path, MODEL_LOAD_AUTO);
    expect_tp_equals_one(m, "stories260K");
    model_free(m);
    snprintf(path, sizeof path, "%s/stories260K.gguf", data_dir);
    m = load(path, MODEL_LOAD_AUTO);
    expect_tp_equals_one(m, "stories260K.gguf");
    model_free(m);
}

Test(cpu_tp, sizes_that_do_not_shard_are_refused_by_name)
{
    if (!have_data()) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/hf", data_dir);
    struct model *m = load(path, MODEL_LOAD_AUTO);
    const struct {
        int n;
        const char *says;
    } cases[] = {{8, "does not divide intermediate_size 172"}, {3, "does not divide num_attention_heads 8"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct backend_options opt = {.kv_blocks = 8, .tensor_parallel_size = cases[i].n, .cpu.n_threads = 1};
        struct backend *b = NULL;
        char err[1024] = "";
        cr_expect_neq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0);
        cr_expect_null(b);
        cr_expect(strstr(err, cases[i].says), "size %d: '%s'", cases[i].n, err);
    }
    model_free(m);
}

/* expect_tp_equals_one on each named fixture under dir. */
static void each_fixture(const char *dir, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct model *m = load(path, MODEL_LOAD_AUTO);
        cr_assert_gt(m->config.moe.n_experts, 0, "%s", names[i]);
        expect_tp_equals_one(m, path);
        model_free(m);
    }
}

/* Mixture of experts: each expert's channels split across the ranks, the router on every rank
 * (the fixtures of tests/fixtures/families/: Mixtral's experts one by one and stacked, Qwen2-MoE's
 * shared expert and dense layers, Qwen3-MoE). */
Test(cpu_tp, mixture_of_experts_families)
{
    const char *names[] = {"mixtral", "mixtral_stacked", "qwen2_moe", "qwen2_moe_step2", "qwen3_moe"};
    each_fixture("tests/fixtures/families", names, sizeof names / sizeof names[0]);
}

/* FP8 checkpoints whose experts are FP8 (tests/fixtures/fp8_moe/: scales per tensor, per channel
 * and per block), each rank's share of every expert dequantized from whole rows. */
Test(cpu_tp, fp8_expert_checkpoints)
{
    const char *names[] = {"mixtral", "qwen2_moe", "qwen3_moe"};
    each_fixture("tests/fixtures/fp8_moe", names, sizeof names / sizeof names[0]);
}

/* A random-weight model of config.json text, written to a temporary folder. */
static struct model *dummy(const char *json)
{
    char dir[] = "/tmp/sluice_tp_XXXXXX", path[64];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(json, f);
    fclose(f);
    struct model *m = load(dir, MODEL_LOAD_DUMMY);
    unlink(path);
    rmdir(dir);
    return m;
}

/* Tiny random models of each dense family: Llama with one KV head (replicated on every rank)
 * and 509 tokens (255 + 254, and 128 x 3 + 125), Qwen2 with its q/k/v biases, Qwen3 with its
 * q/k norms and a head_dim of its own. */
Test(cpu_tp, tiny_random_models_of_each_dense_family)
{
    static const char *const configs[] = {
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
        "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        "\"num_key_value_heads\": 1, \"vocab_size\": 509, \"max_position_embeddings\": 256,"
        "\"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false,"
        "\"torch_dtype\": \"bfloat16\"}",
        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": 64,"
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 8,"
        "\"num_key_value_heads\": 4, \"vocab_size\": 400, \"max_position_embeddings\": 256,"
        "\"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, \"tie_word_embeddings\": true,"
        "\"torch_dtype\": \"float32\"}",
        "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", \"hidden_size\": 64,"
        "\"intermediate_size\": 160, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        "\"num_key_value_heads\": 2, \"head_dim\": 32, \"vocab_size\": 256,"
        "\"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0,"
        "\"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\"}",
    };
    static const char *const names[] = {"llama, 1 KV head", "qwen2", "qwen3"};
    for (int i = 0; i < 3; i++) {
        struct model *m = dummy(configs[i]);
        cr_assert(i != 1 || m->config.qkv_bias);
        cr_assert(i != 2 || m->config.qk_norm);
        expect_tp_equals_one(m, names[i]);
        model_free(m);
    }
}

/* The other dense families, as random weights at widths that split (4 heads, 2 KV heads, 64
 * channels) from the configs of tests/fixtures/families/: Llama's o/MLP biases (added once,
 * by rank 0), Gemma 2 and 3 (norms after attention and MLP applied to the summed output, soft
 * caps, scaled embeddings, local rope), Granite's scales, Mistral's sliding window, Phi-3's fused
 * projections and LongRoPE. OLMo 2's q/k norms over all heads are refused. */
static struct model *family_at_split_widths(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/families/%s/config.json", name);
    json_error_t jerr;
    json_t *c = json_load_file(path, 0, &jerr);
    cr_assert(c, "%s: %s", path, jerr.text);
    json_object_set_new(c, "hidden_size", json_integer(64));
    json_object_set_new(c, "num_attention_heads", json_integer(4));
    json_object_set_new(c, "num_key_value_heads", json_integer(2));
    json_object_set_new(c, "intermediate_size", json_integer(64));
    char *text = json_dumps(c, 0);
    json_decref(c);
    struct model *m = dummy(text);
    free(text);
    return m;
}

Test(cpu_tp, the_other_dense_families)
{
    const char *names[] = {"llama_bias_linear", "gemma2", "gemma3", "granite", "mistral_sliding", "phi3_longrope"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct model *m = family_at_split_widths(names[i]);
        expect_tp_equals_one(m, names[i]);
        model_free(m);
    }
    struct model *m = family_at_split_widths("olmo2");
    struct backend_options opt = {.kv_blocks = 8, .tensor_parallel_size = 2, .cpu.n_threads = 1};
    struct backend *b = NULL;
    char err[1024] = "";
    cr_expect_neq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0);
    cr_expect(strstr(err, "q/k norms over the whole projection"), "%s", err);
    model_free(m);
}

/* A step that fails on a rank fails the step, at once, with the rank's message; the ranks' group
 * has failed then, so every later step fails too (as after any device error, the worker stops
 * serving) rather than run ranks that no longer agree. */
Test(cpu_tp, a_failed_step_returns_its_error_and_later_steps_fail)
{
    if (!have_data()) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/hf", data_dir);
    struct model *m = load(path, MODEL_LOAD_AUTO);
    struct backend *b = make_backend(m, 2);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int32_t table[BLOCKS_PER_SEQ] = {0, 1, 2, 3, 4, 5, 6, 7}, bad[2] = {1, 9999}, good[2] = {1, 20};
    struct batch_seq seq = {.n_new = 2, .block_table = table, .n_blocks = BLOCKS_PER_SEQ, .sample = true,
                            .prompt = true, .sampling = &greedy};
    struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = 2, .tokens = bad};
    struct sample_result res;
    cr_expect_neq(backend_forward(b, &batch, &res), 0);
    cr_expect(strstr(b->error, "tensor parallel rank 0") && strstr(b->error, "outside the vocabulary"), "%s",
              b->error);
    batch.tokens = good;
    cr_expect_neq(backend_forward(b, &batch, &res), 0);
    cr_expect(strstr(b->error, "the group has failed"), "%s", b->error);
    backend_free(b);
    model_free(m);
}
