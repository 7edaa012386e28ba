#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/sampler/sampler.h"

static struct sampling_params params(void)
{
    return (struct sampling_params){.temperature = 1.0f, .top_p = 1.0f, .top_k = -1, .min_p = 0.0f,
                                    .repetition_penalty = 1.0f, .seed = 1, .logprobs = -1};
}

static int32_t sample(const float *logits, int vocab, struct sampling_params *sp, uint64_t n_gen,
                      const int32_t *hist, int32_t n_hist, int32_t n_out, struct sample_result *res)
{
    struct batch_seq seq = {.sample = true, .sampling = sp, .n_generated = n_gen, .history = hist,
                            .n_history = n_hist, .n_output = n_out};
    float *scratch = malloc(sampler_scratch_floats(vocab) * sizeof(float));
    struct sample_result local;
    if (!res) res = &local;
    cr_assert_eq(sampler_sample(logits, vocab, &seq, scratch, res), 0);
    free(scratch);
    return res->token;
}

/* Frequencies of each token over n seeds. */
static void histogram(const float *logits, int vocab, struct sampling_params sp, int n, double *freq)
{
    memset(freq, 0, (size_t)vocab * sizeof *freq);
    for (int i = 0; i < n; i++) {
        sp.seed = 1000 + (uint64_t)i;
        int32_t t = sample(logits, vocab, &sp, 0, NULL, 0, 0, NULL);
        cr_assert(t >= 0 && t < vocab);
        freq[t] += 1.0 / n;
    }
}

static void expect_freq(const double *freq, const double *want, int vocab)
{
    for (int i = 0; i < vocab; i++)
        cr_expect(fabs(freq[i] - want[i]) < 0.02, "token %d: frequency %.4f, expected %.4f", i, freq[i], want[i]);
}

Test(sampler, uniform_is_the_documented_function)
{
    /* Reference values computed independently (Python) from the formula in sampler.h. */
    cr_assert_eq(sampler_uniform(0, 0), 10946269 * 0x1p-24f);
    cr_assert_eq(sampler_uniform(42, 0), 5759482 * 0x1p-24f);
    cr_assert_eq(sampler_uniform(42, 1), 16034769 * 0x1p-24f);
    cr_assert_eq(sampler_uniform(12345678901234ull, 7), 903247 * 0x1p-24f);
    cr_assert_eq(sampler_uniform(UINT64_MAX, UINT64_MAX - 1), 3014170 * 0x1p-24f);
    double mean = 0;
    for (int i = 0; i < 10000; i++) {
        float u = sampler_uniform(7, (uint64_t)i);
        cr_assert(u >= 0.0f && u < 1.0f);
        mean += u / 10000.0;
    }
    cr_assert(fabs(mean - 0.5) < 0.02);
}

Test(sampler, greedy_is_argmax_with_ties_to_lowest_id)
{
    float logits[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 3.0f};
    struct sampling_params sp = params();
    sp.temperature = 0.0f;
    for (uint64_t s = 0; s < 20; s++) {
        sp.seed = s;
        cr_assert_eq(sample(logits, 6, &sp, s, NULL, 0, 0, NULL), 1);
    }
}

Test(sampler, logprobs_are_log_softmax_of_raw_logits)
{
    float logits[5] = {1.0f, 2.0f, 0.0f, 2.0f, -3.0f};
    double lse = log(exp(1.0) + exp(2.0) + exp(0.0) + exp(2.0) + exp(-3.0));
    struct sampling_params sp = params();
    sp.temperature = 0.0f;
    sp.logprobs = 3;
    sp.repetition_penalty = 1.5f; /* penalties must not change the reported logprobs */
    int32_t hist[1] = {1};
    struct sample_result r;
    int32_t t = sample(logits, 5, &sp, 0, hist, 1, 0, &r);
    cr_assert_eq(t, 3, "token 1 is penalized, so 3 wins");
    cr_assert_float_eq(r.logprob, (float)(2.0 - lse), 1e-5);
    cr_assert_eq(r.n_top, 3);
    cr_assert_eq(r.top_ids[0], 1);
    cr_assert_eq(r.top_ids[1], 3);
    cr_assert_eq(r.top_ids[2], 0);
    cr_assert_float_eq(r.top_logprobs[0], (float)(2.0 - lse), 1e-5);
    cr_assert_float_eq(r.top_logprobs[2], (float)(1.0 - lse), 1e-5);
    sp.logprobs = 20;
    sample(logits, 5, &sp, 0, NULL, 0, 0, &r);
    cr_assert_eq(r.n_top, 5, "never more than the vocabulary");
    cr_assert_eq(r.top_ids[4], 4);
    sp.logprobs = -1;
    sample(logits, 5, &sp, 0, NULL, 0, 0, &r);
    cr_assert_eq(r.n_top, 0);
}

Test(sampler, penalties_math)
{
    float logits[5] = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f};
    struct sampling_params sp = params();
    sp.repetition_penalty = 2.0f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = 0.25f;
    /* prompt {0, 1, 1}, output {2, 2, 2, 1} */
    int32_t hist[7] = {0, 1, 1, 2, 2, 2, 1};
    struct batch_seq seq = {.sampling = &sp, .history = hist, .n_history = 7, .n_output = 4};
    float *scratch = malloc(sampler_scratch_floats(5) * sizeof(float));
    sampler_penalize(logits, 5, &seq, scratch);
    cr_assert_float_eq(scratch[0], 1.0f, 1e-6);                        /* 2 / 2 */
    cr_assert_float_eq(scratch[1], -4.0f - 0.25f - 0.5f, 1e-6);        /* -2 * 2, once out */
    cr_assert_float_eq(scratch[2], 0.5f - 3 * 0.25f - 0.5f, 1e-6);     /* 1 / 2, three out */
    cr_assert_float_eq(scratch[3], 0.5f, 1e-6);
    cr_assert_float_eq(scratch[4], 3.0f, 1e-6);
    /* Twice in a row gives the same (the repetition penalty is not compounded). */
    sampler_penalize(logits, 5, &seq, scratch);
    cr_assert_float_eq(scratch[0], 1.0f, 1e-6);
    cr_assert_float_eq(scratch[2], 0.5f - 3 * 0.25f - 0.5f, 1e-6);
    free(scratch);
}

Test(sampler, temperature_matches_softmax)
{
    float logits[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    double f[4];
    struct sampling_params sp = params();
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0.1, 0.2, 0.3, 0.4}, 4);
    sp.temperature = 0.5f; /* p^2 normalized: 1, 4, 9, 16 over 30 */
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){1 / 30.0, 4 / 30.0, 9 / 30.0, 16 / 30.0}, 4);
}

Test(sampler, top_k_top_p_min_p)
{
    float logits[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    double f[4];
    struct sampling_params sp = params();
    sp.top_k = 2;
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0, 0, 3 / 7.0, 4 / 7.0}, 4);
    cr_assert_eq(f[0] + f[1], 0.0);

    sp = params();
    sp.top_p = 0.5f; /* 0.4 alone is short of 0.5: 0.3 joins */
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0, 0, 3 / 7.0, 4 / 7.0}, 4);
    cr_assert_eq(f[0] + f[1], 0.0);
    sp.top_p = 0.39f;
    histogram(logits, 4, sp, 2000, f);
    cr_assert(f[3] > 0.99999, "the top token alone reaches top_p");
    sp.top_p = 0.75f; /* 0.4 + 0.3 = 0.7 < 0.75: 0.2 joins */
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0, 2 / 9.0, 3 / 9.0, 4 / 9.0}, 4);

    sp = params();
    sp.min_p = 0.6f; /* keeps p >= 0.24 */
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0, 0, 3 / 7.0, 4 / 7.0}, 4);
    cr_assert_eq(f[0] + f[1], 0.0);

    sp = params();
    sp.top_k = 3; /* 0.2, 0.3, 0.4 */
    sp.top_p = 0.6f; /* of 0.9: 0.54 -> 0.4 alone is short, 0.3 joins */
    histogram(logits, 4, sp, 20000, f);
    expect_freq(f, (double[]){0, 0, 3 / 7.0, 4 / 7.0}, 4);
}

static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *l = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (l[x] != l[y]) return l[x] > l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

Test(sampler, filters_on_a_large_vocabulary_match_brute_force)
{
    enum { V = 5000 };
    float *logits = malloc(V * sizeof *logits);
    int32_t *order = malloc(V * sizeof *order);
    uint64_t x = 12345;
    for (int i = 0; i < V; i++) {
        x = sampler_mix64(x + (uint64_t)i);
        logits[i] = (float)(x >> 40) * 0x1p-24f * 8.0f;
        if (i % 97 == 0) logits[i] = 7.5f; /* plenty of ties */
        order[i] = i;
    }
    qsort_r(order, V, sizeof *order, cmp_desc, logits);
    /* Brute-force nucleus with top_k = 300, top_p = 0.5 at temperature 1. */
    double w[V], total = 0, cum = 0;
    float mx = logits[order[0]];
    for (int r = 0; r < 300; r++) total += (w[r] = exp((double)logits[order[r]] - mx));
    int keep = 0;
    while (keep < 300 && (keep == 0 || cum < 0.5 * total)) cum += w[keep++];
    char *allowed = calloc(V, 1);
    for (int r = 0; r < keep; r++) allowed[order[r]] = 1;
    cr_assert_gt(keep, 1);

    struct sampling_params sp = params();
    sp.top_k = 300;
    sp.top_p = 0.5f;
    int hits_kept = 0;
    char *seen = calloc(V, 1);
    for (int i = 0; i < 3000; i++) {
        sp.seed = (uint64_t)i;
        int32_t t = sample(logits, V, &sp, 0, NULL, 0, 0, NULL);
        cr_assert(allowed[t], "token %d is outside the nucleus", t);
        if (!seen[t]) hits_kept++;
        seen[t] = 1;
    }
    cr_assert_gt(hits_kept, keep / 2, "the draw spreads over the nucleus");

    /* top_k alone: every draw among the k best. */
    sp = params();
    sp.top_k = 40;
    memset(allowed, 0, V);
    for (int r = 0; r < 40; r++) allowed[order[r]] = 1;
    for (int i = 0; i < 2000; i++) {
        sp.seed = (uint64_t)i;
        cr_assert(allowed[sample(logits, V, &sp, 0, NULL, 0, 0, NULL)]);
    }
    /* A large top_k takes the partition path instead of the heap. */
    sp = params();
    sp.top_k = 2000;
    memset(allowed, 0, V);
    for (int r = 0; r < 2000; r++) allowed[order[r]] = 1;
    for (int i = 0; i < 2000; i++) {
        sp.seed = (uint64_t)i;
        cr_assert(allowed[sample(logits, V, &sp, 0, NULL, 0, 0, NULL)]);
    }
    sp.top_k = 2000;
    sp.top_p = 0.01f;
    sp.temperature = 0.05f; /* sharp: the nucleus is the tied maximum and its neighbours */
    for (int i = 0; i < 200; i++) {
        sp.seed = (uint64_t)i;
        int32_t t = sample(logits, V, &sp, 0, NULL, 0, 0, NULL);
        cr_assert_eq(t, order[0], "top_p 0.01 of a sharp distribution keeps the best (lowest tied id)");
    }
    /* top_p alone, small enough that the prefix-growing path is exercised past 64. */
    sp = params();
    sp.top_p = 0.3f;
    total = 0;
    for (int r = 0; r < V; r++) total += exp((double)logits[order[r]] - mx);
    cum = 0;
    keep = 0;
    while (keep == 0 || cum < 0.3 * total) cum += exp((double)logits[order[keep++]] - mx);
    cr_assert_gt(keep, 64);
    memset(allowed, 0, V);
    for (int r = 0; r < keep; r++) allowed[order[r]] = 1;
    for (int i = 0; i < 2000; i++) {
        sp.seed = (uint64_t)i;
        cr_assert(allowed[sample(logits, V, &sp, 0, NULL, 0, 0, NULL)]);
    }
    free(seen);
    free(allowed);
    free(order);
    free(logits);
}

Test(sampler, same_seed_and_position_same_draw)
{
    float logits[50];
    for (int i = 0; i < 50; i++) logits[i] = (float)(i % 7) * 0.3f;
    struct sampling_params sp = params();
    sp.seed = 99;
    int differ = 0;
    for (uint64_t n = 0; n < 100; n++) {
        int32_t a = sample(logits, 50, &sp, n, NULL, 0, 0, NULL);
        int32_t b = sample(logits, 50, &sp, n, NULL, 0, 0, NULL);
        cr_assert_eq(a, b);
        if (a != sample(logits, 50, &sp, n + 1, NULL, 0, 0, NULL)) differ++;
    }
    cr_assert_gt(differ, 50, "successive positions draw different numbers");
}

static int32_t sample_masked(const float *logits, int vocab, struct sampling_params *sp, uint64_t n_gen,
                             const uint32_t *allowed, struct sample_result *res)
{
    struct batch_seq seq = {.sample = true, .sampling = sp, .n_generated = n_gen, .allowed = allowed};
    float *scratch = malloc(sampler_scratch_floats(vocab) * sizeof(float));
    int rc = sampler_sample(logits, vocab, &seq, scratch, res);
    free(scratch);
    return rc < 0 ? rc : res->token;
}

Test(sampler, mask_draws_only_allowed_tokens)
{
    /* Structured output (step 2b): 70 tokens, three allowed, in three mask words. */
    float logits[70];
    for (int i = 0; i < 70; i++) logits[i] = (float)((i * 37) % 11) * 0.3f;
    logits[3] = 0.0f;
    logits[40] = 1.0f;
    logits[65] = 0.5f;
    uint32_t allowed[3] = {1u << 3, 1u << (40 - 32), 1u << (65 - 64)};
    struct sampling_params sp = params();
    struct sample_result r, raw;
    sp.temperature = 0.0f;
    sp.logprobs = 2;
    cr_assert_eq(sample_masked(logits, 70, &sp, 0, allowed, &r), 40, "greedy: the best allowed");
    sample(logits, 70, &sp, 0, NULL, 0, 0, &raw);
    cr_assert_neq(raw.token, 40);
    cr_assert_float_eq(r.logprob, raw.top_logprobs[0] - logits[raw.top_ids[0]] + 1.0f, 1e-5, "logprobs stay raw");
    cr_assert_eq(r.top_ids[0], raw.top_ids[0], "top logprobs too");
    /* Sampling: only the three, in proportion to their softmax among themselves. */
    sp.temperature = 1.0f;
    double freq[70] = {0};
    for (int s = 0; s < 4000; s++) {
        sp.seed = 500 + (uint64_t)s;
        int32_t t = sample_masked(logits, 70, &sp, 0, allowed, &r);
        cr_assert(t == 3 || t == 40 || t == 65, "drew %d", t);
        freq[t] += 1.0 / 4000;
    }
    double z = exp(0.0) + exp(1.0) + exp(0.5);
    cr_expect(fabs(freq[3] - 1.0 / z) < 0.03 && fabs(freq[40] - exp(1.0) / z) < 0.03, "%f %f", freq[3], freq[40]);
    /* top_k counts only what the mask allows. */
    sp.top_k = 1;
    cr_assert_eq(sample_masked(logits, 70, &sp, 0, allowed, &r), 40);
    sp.top_k = -1;
    /* No allowed token with a finite logit: the lowest allowed; none allowed: an error. */
    logits[3] = logits[40] = logits[65] = -INFINITY;
    cr_assert_eq(sample_masked(logits, 70, &sp, 0, allowed, &r), 3);
    sp.temperature = 0.0f;
    cr_assert_eq(sample_masked(logits, 70, &sp, 0, allowed, &r), 3);
    uint32_t none[3] = {0, 0, 0};
    cr_assert_lt(sample_masked(logits, 70, &sp, 0, none, &r), 0);
}

Test(sampler, logit_bias_adds_to_the_logits_after_penalties)
{
    float logits[8] = {2.0f, 1.0f, 0.5f, 3.0f, 0.0f, -1.0f, 0.25f, 1.5f};
    struct sampling_params sp = params();
    int32_t ids[2] = {5, 3};
    float bias[2] = {100.0f, -100.0f};
    sp.n_bias = 2;
    sp.bias_ids = ids;
    sp.bias_values = bias;
    sp.logprobs = 1;
    struct sample_result r;
    /* +100 forces token 5 whatever the draw; -100 keeps token 3 (the argmax) out. */
    for (uint64_t seed = 0; seed < 200; seed++) {
        sp.seed = seed;
        cr_assert_eq(sample(logits, 8, &sp, seed, NULL, 0, 0, &r), 5);
    }
    double lse = log(exp(2.0) + exp(1.0) + exp(0.5) + exp(3.0) + 1.0 + exp(-1.0) + exp(0.25) + exp(1.5));
    cr_assert_float_eq(r.logprob, logits[5] - lse, 1e-5, "logprobs stay those of the raw logits");
    cr_assert_eq(r.top_ids[0], 3);
    sp.temperature = 0.0f;
    cr_assert_eq(sample(logits, 8, &sp, 0, NULL, 0, 0, &r), 5);
    bias[0] = 0.0f;
    cr_assert_eq(sample(logits, 8, &sp, 0, NULL, 0, 0, &r), 0, "3 is biased away: the next best");
    /* The bias comes after the penalties: a repetition penalty on 0 cannot undo a +1.5 bias. */
    int32_t hist[1] = {0};
    struct sampling_params pen = params();
    pen.repetition_penalty = 2.0f;
    int32_t one[1] = {0};
    float plus[1] = {1.5f};
    pen.n_bias = 1, pen.bias_ids = one, pen.bias_values = plus;
    struct batch_seq seq = {.sample = true, .sampling = &pen, .history = hist, .n_history = 1, .n_output = 0};
    float *s2 = malloc(sampler_scratch_floats(8) * sizeof(float));
    sampler_penalize(logits, 8, &seq, s2);
    cr_assert_float_eq(s2[0], 2.0f / 2.0f + 1.5f, 1e-6);
    cr_assert_float_eq(s2[1], 1.0f, 1e-6);
    free(s2);
}

Test(sampler, suppressed_tokens_are_never_drawn)
{
    float logits[6] = {0.0f, 5.0f, 0.0f, 4.0f, 0.0f, 0.0f};
    struct sampling_params sp = params();
    int32_t sup[2] = {1, 3};
    struct batch_seq seq = {.sample = true, .sampling = &sp, .suppress = sup, .n_suppress = 2};
    float *scratch = malloc(sampler_scratch_floats(6) * sizeof(float));
    struct sample_result r;
    for (uint64_t seed = 0; seed < 500; seed++) {
        sp.seed = seed;
        seq.n_generated = seed;
        cr_assert_eq(sampler_sample(logits, 6, &seq, scratch, &r), 0);
        cr_assert(r.token != 1 && r.token != 3, "drew suppressed token %d", r.token);
    }
    sp.temperature = 0.0f;
    cr_assert_eq(sampler_sample(logits, 6, &seq, scratch, &r), 0);
    cr_assert_eq(r.token, 0, "greedy: the best token left");
    /* Even a +100 bias does not bring a suppressed token back. */
    int32_t id[1] = {1};
    float b[1] = {100.0f};
    sp.n_bias = 1, sp.bias_ids = id, sp.bias_values = b;
    cr_assert_eq(sampler_sample(logits, 6, &seq, scratch, &r), 0);
    cr_assert_eq(r.token, 0);
    free(scratch);
}

Test(sampler, prompt_logprob_is_log_softmax_with_rank_and_top)
{
    float logits[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    struct prompt_logprob p;
    cr_assert_eq(sampler_prompt_logprob(logits, 5, 2, 2, &p), 0);
    double lse = log(exp(1.0) + exp(3.0) + exp(2.0) + exp(3.0) + exp(-1.0));
    cr_assert_eq(p.token, 2);
    cr_assert_float_eq(p.logprob, 2.0 - lse, 1e-6);
    cr_assert_eq(p.rank, 3, "two tokens are more likely");
    cr_assert_eq(p.n_top, 2);
    cr_assert_eq(p.top_ids[0], 1, "ties to the lower id");
    cr_assert_eq(p.top_ids[1], 3);
    cr_assert_float_eq(p.top_logprobs[1], 3.0 - lse, 1e-6);
    cr_assert_eq(sampler_prompt_logprob(logits, 5, 1, 0, &p), 0);
    cr_assert_eq(p.rank, 1);
    cr_assert_eq(p.n_top, 0);
    cr_assert_lt(sampler_prompt_logprob(logits, 5, 5, 0, &p), 0, "a target outside the vocabulary");
}
