/* GPTQ and AWQ checkpoints on the CPU backend (tests/fixtures/int4, README.md there): each
 * quantized model, its layers repacked into Q4_1 blocks at load, generates the greedy tokens
 * of the same model dequantized to float32 by numpy, with logits at every step within a bound
 * that follows from the repacking's only rounding (that of m, see the asymmetric test), or
 * bit for bit where there is none (a Mixtral's experts among them); and over two
 * tensor-parallel ranks, one rank's tokens and logits within float rounding. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define FIX "tests/fixtures/int4"
#define GEN 16
#define N_PROMPT 11
#define BLOCKS 4

struct run {
    int32_t ids[GEN];
    float *logits; /* GEN * vocab: the logits each token was chosen from */
    int vocab;
};

/* The prompt in one step, then one token a step, as Hugging Face's generate runs it, over tp
 * tensor-parallel ranks. */
static void generate(const char *name, int tp, struct run *out)
{
    char path[256], err[1024] = "";
    snprintf(path, sizeof path, FIX "/%s", name);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s", name, err);
    struct backend_options opt = {.kv_blocks = BLOCKS, .max_batch_tokens = 64, .max_batch_seqs = 1,
                                  .cpu.n_threads = 2, .tensor_parallel_size = tp};
    struct backend *b = NULL;
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s: %s", name, err);
    out->vocab = m->config.vocab_size;
    out->logits = malloc((size_t)GEN * (size_t)out->vocab * sizeof(float));
    int32_t hist[N_PROMPT + GEN], table[BLOCKS] = {0, 1, 2, 3};
    for (int i = 0; i < N_PROMPT; i++) hist[i] = (int32_t)((37 * i + 11) % out->vocab);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int pos = 0;
    for (int g = 0; g < GEN; g++) {
        int n = g == 0 ? N_PROMPT : 1;
        struct batch_seq seq = {.n_new = n, .start_pos = pos, .block_table = table, .n_blocks = BLOCKS,
                                .sample = true, .prompt = g == 0, .sampling = &greedy, .n_generated = (uint64_t)g,
                                .history = hist, .n_history = pos + n, .n_output = g};
        struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = n, .tokens = hist + pos,
                              .logits_out = out->logits + (size_t)g * (size_t)out->vocab};
        struct sample_result res;
        cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s: %s", name, b->error);
        pos += n;
        out->ids[g] = hist[pos] = res.token;
    }
    backend_free(b);
    model_free(m);
}

/* Run a (of what) against run b (of ref): tokens equal, every logit within bound (0: bit for
 * bit). Returns the largest difference. */
static double expect_runs_agree(const char *what, const struct run *a, const char *ref, const struct run *b,
                                double bound)
{
    double worst = 0, margin = INFINITY;
    for (int g = 0; g < GEN; g++) {
        cr_expect_eq(a->ids[g], b->ids[g], "%s: token %d is %d, %s's is %d", what, g, a->ids[g], ref, b->ids[g]);
        const float *x = a->logits + (size_t)g * a->vocab, *y = b->logits + (size_t)g * b->vocab;
        float top = -INFINITY, second = -INFINITY;
        for (int v = 0; v < a->vocab; v++) {
            worst = fmax(worst, fabs((double)x[v] - (double)y[v]));
            if (y[v] > top) second = top, top = y[v];
            else if (y[v] > second) second = y[v];
        }
        margin = fmin(margin, (double)top - (double)second);
    }
    if (bound == 0) cr_expect(!memcmp(a->logits, b->logits, (size_t)GEN * a->vocab * sizeof(float)),
                              "%s: logits differ from %s's (by %g)", what, ref, worst);
    else cr_expect(worst <= bound, "%s: logits differ from %s's by %g (bound %g)", what, ref, worst, bound);
    cr_log_info("%s against %s: logits within %.3g; %s's smallest greedy margin %.3g", what, ref, worst, ref, margin);
    return worst;
}

/* The quantized model's run against its dequantized twin's. */
static double expect_same(const char *quantized, const char *twin, double bound)
{
    struct run q, r;
    generate(quantized, 1, &q);
    generate(twin, 1, &r);
    double worst = expect_runs_agree(quantized, &q, twin, &r, bound);
    free(q.logits), free(r.logits);
    return worst;
}

/* The repacked weights differ from the twin's only by the rounding of m = -s z to fp16, at most
 * half its ulp: 2^-12 |m| <= 2^-12 * 15 * 0.06 = 2.2e-4 with the fixture's scales (0.02 to
 * 0.06, chosen so that every layer matters and the greedy tokens vary), against weights of
 * about 0.27 (rms). One rounding per block of 32 weights, shared by them, so it does not
 * average out over a dot product; through two layers the logits (up to about 15) move by
 * 0.032 at most on this fixture. m off by a whole ulp (scaled by 1 + 2^-11 before rounding)
 * moves them by 0.18, a wrong zero of one group in sixteen by 20: the bound sits between the
 * first two, under the twin's smallest greedy margin (0.18), so the tokens must agree too. */
#define ASYM_BOUND 0.08

Test(cpu_int4, asymmetric_checkpoints_give_the_dequantized_models_tokens)
{
    static const char *variants[] = {"gptq_g32_asym", "gptq_v2_g32_asym", "awq_g32", "gptq_phi3_fused"};
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        double worst = expect_same(variants[v], "ref_base", ASYM_BOUND);
        cr_expect_gt(worst, 0, "%s: no difference at all: the fixture does not round m", variants[v]);
    }
}

/* A symmetric zero (m = -8 s, exact) and act-order layers dequantized to fp16 (exact here):
 * the same weights as the twin's, so the same logits bit for bit. */
Test(cpu_int4, exact_checkpoints_give_the_dequantized_models_logits_bit_for_bit)
{
    expect_same("gptq_g128_sym", "ref_g128_sym", 0);
    expect_same("gptq_act_order", "ref_act_order", 0);
}

/* Mixtral's attention and experts quantized (tests/fixtures/int4/README.md), the router as it
 * was: with exact weights the experts each token goes to, and so the logits, are the twin's bit
 * for bit (a routing flipped by a rounding would show as a difference, not hide in a bound). */
Test(cpu_int4, mixtral_experts_give_the_dequantized_models_logits_bit_for_bit)
{
    expect_same("gptq_mixtral", "ref_mixtral", 0);
}

/* Two tensor-parallel ranks (cpu_tp.c): q/k/v/gate/up split by rows, their Q4_1 blocks kept;
 * o and down by columns, on whole blocks where a rank's part is (Llama's 64 and 128 inputs),
 * dequantized to float32 where it cuts one (Mixtral's 32-input expert w2: 16 a rank); act-order
 * layers are fp16. Only the row-parallel sums add in another order, so the tokens are one
 * rank's and the logits within float rounding of them, as in test_cpu_tp.c. */
Test(cpu_int4, two_ranks_give_one_ranks_tokens_and_logits)
{
    static const char *names[] = {"gptq_g32_asym", "awq_g32", "gptq_act_order", "gptq_mixtral"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        struct run one, two;
        generate(names[i], 1, &one);
        generate(names[i], 2, &two);
        double scale = 0;
        for (int k = 0; k < GEN * one.vocab; k++) scale = fmax(scale, fabs((double)one.logits[k]));
        char what[96];
        snprintf(what, sizeof what, "%s over 2 ranks", names[i]);
        cr_expect_gt(expect_runs_agree(what, &two, "one rank", &one, 1e-5 * (1 + scale)), 0,
                     "%s: bit for bit: the ranks' sums were not split", what);
        free(one.logits), free(two.logits);
    }
}
