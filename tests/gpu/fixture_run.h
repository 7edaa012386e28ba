/* The GPU tests' runs of a whole model (tests/fixtures/families) through the CUDA backend,
 * against the CPU backend (float32, itself checked against transformers): three sequences of
 * different lengths, prefilled in chunks of 16 and decoded greedily side by side. */
#ifndef SLUICE_TESTS_GPU_FIXTURE_RUN_H
#define SLUICE_TESTS_GPU_FIXTURE_RUN_H

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gpu/fp8_yardstick.h"
#include "tests/gpu/gpu_test.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"

#define BLOCKS 8
#define N_GEN 16
#define MAX_SEQS 3

struct seq {
    int32_t prompt[64];
    int n_prompt, fed, n_out;
    int32_t out[N_GEN];
    int32_t blocks[BLOCKS];
    /* > 0: the model's every layer slides over this many keys, and each step marks the blocks
     * wholly before its first token's window freed (-1), as the engine does. */
    int window;
};

/* The next step of the sequences of ss not yet done (prefill in chunks of `chunk`, greedy):
 * q[S], tokens[T] and map[s] = the sequence of q[s]. Returns S. */
static int next_step(struct seq *ss, int n, int chunk, struct batch_seq *q, int32_t *tokens, int *map, int *T_out)
{
    static const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                                  .logprobs = -1};
    int S = 0, T = 0;
    for (int i = 0; i < n; i++) {
        struct seq *s = &ss[i];
        if (s->n_out >= N_GEN) continue;
        struct batch_seq *p = &q[S];
        memset(p, 0, sizeof *p);
        if (s->fed < s->n_prompt) {
            int c = s->n_prompt - s->fed < chunk ? s->n_prompt - s->fed : chunk;
            memcpy(tokens + T, s->prompt + s->fed, (size_t)c * 4);
            p->start_pos = s->fed;
            p->n_new = c;
            s->fed += c;
            p->sample = s->fed == s->n_prompt;
        } else {
            tokens[T] = s->out[s->n_out - 1];
            p->start_pos = s->n_prompt + s->n_out - 1;
            p->n_new = 1;
            p->sample = true;
        }
        for (int j = 0; j < kv_blocks_before_window(s->window, p->start_pos); j++) s->blocks[j] = -1;
        T += p->n_new;
        p->block_table = s->blocks;
        p->n_blocks = BLOCKS;
        /* The sequence's known length, as the engine gives it: LongRoPE and dynamic NTK choose
         * their frequencies by it (greedy rows read no history tokens). */
        p->n_history = s->n_prompt + s->n_out;
        p->sampling = &greedy;
        p->n_generated = (uint64_t)s->n_out;
        map[S++] = i;
    }
    *T_out = T;
    return S;
}

/* One step for the sequences of ss not yet done; logits (rows * V) when not NULL, map[r] = the
 * sequence of sampled row r. Stores no tokens. Returns the rows sampled, or -1. */
static int step(struct backend *b, struct seq *ss, int n, int chunk, float *logits, int *map)
{
    struct batch_seq q[MAX_SEQS];
    int32_t tokens[256];
    struct sample_result res[MAX_SEQS];
    int T, S = next_step(ss, n, chunk, q, tokens, map, &T);
    if (S == 0) return 0;
    struct batch batch = {.n_seqs = S, .seqs = q, .n_tokens = T, .tokens = tokens, .logits_out = logits};
    if (backend_forward(b, &batch, res) < 0) return -1;
    int rows = 0;
    for (int s = 0; s < S; s++)
        if (q[s].sample) map[rows] = map[s], rows++;
    return rows;
}

/* Prompts of 9, 26 and 43 random tokens for model m, their blocks in reverse order from
 * first_block on. */
static void seqs_init(struct seq *ss, int n, const struct model *m, int first_block)
{
    const int V = m->config.vocab_size;
    memset(ss, 0, (size_t)n * sizeof *ss);
    for (int i = 0; i < n; i++) ss[i].window = m->config.fam.all_sliding ? m->config.fam.sliding_window : 0;
    gt_rng_state = 0x5eed;
    for (int i = 0; i < n; i++) {
        ss[i].n_prompt = 9 + 17 * i;
        for (int j = 0; j < ss[i].n_prompt; j++) ss[i].prompt[j] = gt_int(V);
        for (int j = 0; j < BLOCKS; j++) ss[i].blocks[j] = first_block + i * BLOCKS + (BLOCKS - 1 - j);
    }
}

static int argmax(const float *l, int V, float *margin)
{
    int a = 0, b = -1;
    for (int v = 1; v < V; v++) {
        if (l[v] > l[a]) b = a, a = v;
        else if (b < 0 || l[v] > l[b]) b = v;
    }
    *margin = l[a] - l[b];
    return a;
}

/* How close the CUDA backend's logits must come to the CPU's (float32): every row's relative
 * error within row_bound, or at least min_within of the rows (a fraction) and the median within
 * median_bound. */
struct fixture_bounds {
    double row_bound, min_within, median_bound;
};

/* How fixture_vs_cpu_opts runs CUDA: over tp ranks (> 1: sharded), with these options; and
 * fp8_yardstick: for a model with FP8 weights, the CPU rounds its activations to e4m3 in the steps
 * where CUDA's plan has cuBLASLt's FP8 GEMM quantize them (tests/gpu/fp8_yardstick.h; it reads one
 * backend's plan, so tp 0 or 1 only). */
struct fixture_opts {
    int tp;
    struct cuda_options cuda;
    bool fp8_yardstick;
};

/* The CUDA backend on fixture m as o says, against the CPU backend, both fed the GPU's greedy
 * tokens: logits within the bounds, greedy tokens equal wherever the CPU's top-two margin exceeds
 * 5 x the row's RMS logit error (the bf16 noise). */
static void fixture_vs_cpu_opts(const char *name, const struct model *m, struct fixture_bounds bd,
                                const struct fixture_opts *o)
{
    char err[512];
    const int V = m->config.vocab_size;
    struct backend_options bo = {.kv_blocks = 2 * MAX_SEQS * BLOCKS + 1, .max_batch_tokens = 256, .max_batch_seqs = 4,
                                 .cpu.n_threads = 4, .gpu_memory_utilization = 0.9, .tensor_parallel_size = o->tp,
                                 .cuda = o->cuda};
    struct backend *cpu = NULL, *gpu = NULL;
    if (backend_cuda_create(&gpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "%s: backend_cuda_create: %s", name, err);
    if (gpu && o->fp8_yardstick) {
        const struct act_rows a = quantized_act_rows(gpu, &m->config, bo.max_batch_tokens);
        GT_CHECK(a.ok, "%s: the CUDA backend's FP8 plan takes cuBLASLt at step sizes the CPU yardstick cannot mirror",
                 name);
        memcpy(bo.cpu.fp8_act_rows, a.rows, sizeof bo.cpu.fp8_act_rows);
        if (a.any)
            printf("  %s: the CPU's activations in e4m3 in steps of more than %d tokens, where CUDA's cuBLASLt FP8 "
                   "GEMM has them\n", name, CUDA_FP8_MMA_ROWS);
        else
            printf("  %s: no step takes cuBLASLt's FP8 GEMM (the CPU's activations stay as they are)\n", name);
    }
    bo.tensor_parallel_size = 0;
    if (backend_cpu_create(&cpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "%s: backend_cpu_create: %s", name, err);
    if (!cpu || !gpu) goto out;
    {
        struct seq sg[MAX_SEQS], sc[MAX_SEQS];
        seqs_init(sg, MAX_SEQS, m, 0);
        float *lg = malloc((size_t)MAX_SEQS * V * 4), *lc = malloc((size_t)MAX_SEQS * V * 4);
        double worst = 0, errs[64];
        int steps = 0, n_rows = 0, checked = 0, token_bad = 0, map_g[MAX_SEQS], map_c[MAX_SEQS];
        char first_bad[160] = "";
        for (;;) {
            bool done = true;
            for (int i = 0; i < MAX_SEQS; i++) done &= sg[i].n_out >= N_GEN;
            if (done) break;
            memcpy(sc, sg, sizeof sg);
            int rg = step(gpu, sg, MAX_SEQS, 16, lg, map_g), rc = step(cpu, sc, MAX_SEQS, 16, lc, map_c);
            if (rg < 0 || rc < 0) {
                GT_CHECK(0, "%s: forward: gpu '%s' cpu '%s'", name, gpu->error, cpu->error);
                break;
            }
            steps++;
            for (int r = 0; r < rg; r++) {
                const float *g = lg + (size_t)r * V, *c = lc + (size_t)r * V;
                double e = 0, num = 0, den = 0;
                for (int v = 0; v < V; v++) num += ((double)g[v] - c[v]) * ((double)g[v] - c[v]), den += (double)c[v] * c[v];
                e = isfinite(num) ? sqrt(num / den) : INFINITY;
                if (e > worst) worst = e;
                if (n_rows < 64) errs[n_rows++] = e;
                float mg, mc;
                int tg = argmax(g, V, &mg), tc = argmax(c, V, &mc);
                double rms = sqrt(num / V);
                if (mc > 5.0 * rms) {
                    checked++;
                    if (tg != tc && !token_bad++)
                        snprintf(first_bad, sizeof first_bad, " (first: seq %d step %d, cuda %d, cpu %d, margin %.3g)",
                                 map_g[r], steps, tg, tc, mc);
                }
            }
            /* Both continue with the GPU's greedy choices (step() stores no tokens). */
            for (int r = 0; r < rg; r++) {
                float mg;
                struct seq *s = &sg[map_g[r]];
                s->out[s->n_out++] = argmax(lg + (size_t)r * V, V, &mg);
            }
        }
        int within = 0;
        for (int i = 0; i < n_rows; i++) within += errs[i] < bd.row_bound;
        for (int i = 1; i < n_rows; i++)
            for (int j = i; j > 0 && errs[j] < errs[j - 1]; j--) {
                double t = errs[j];
                errs[j] = errs[j - 1], errs[j - 1] = t;
            }
        const double median = n_rows ? errs[n_rows / 2] : INFINITY;
        GT_CHECK(n_rows > 0 && within >= bd.min_within * n_rows && median < bd.median_bound,
                 "%s: CUDA logits vs CPU float32 over %d steps: %d of %d rows within rel err %.0e (bf16; %.0f%% "
                 "needed), median %.2e (bound %.0e), worst %.2e",
                 name, steps, within, n_rows, bd.row_bound, 100 * bd.min_within, median, bd.median_bound, worst);
        GT_CHECK(token_bad == 0 && checked > 0,
                 "%s: greedy tokens equal where the CPU's top-two margin > 5 x RMS logit error: %d of %d differ%s", name,
                 token_bad, checked, first_bad);
        free(lg), free(lc);
    }
out:
    backend_free(gpu);
    backend_free(cpu);
}

/* fixture_vs_cpu_opts sharded over tp ranks when tp > 1 (through host memory when tp_host:
 * --cuda-options tp_nccl=0, ranks sharing the GPUs there are; with CUDA graphs unless eager). */
static void fixture_vs_cpu_tp(const char *name, const struct model *m, struct fixture_bounds bd, int tp, bool tp_host,
                              bool eager)
{
    const struct fixture_opts o = {.tp = tp, .cuda = {.no_tp_nccl = tp_host, .enforce_eager = eager}};
    fixture_vs_cpu_opts(name, m, bd, &o);
}

static void fixture_vs_cpu(const char *name, const struct model *m, struct fixture_bounds bd)
{
    fixture_vs_cpu_tp(name, m, bd, 0, false, false);
}

/* Runs seqs to N_GEN greedy tokens (the sampler's, through the backend's results), storing each
 * step's logits per sequence in lg[seq][N_GEN][V] when lg is not NULL. */
static int generate(struct backend *b, struct seq *ss, int n, int chunk, float *lg)
{
    const int V = b->config.vocab_size;
    float *step_lg = lg ? malloc((size_t)MAX_SEQS * V * 4) : NULL;
    int map[MAX_SEQS], rc = 0;
    for (;;) {
        struct batch_seq q[MAX_SEQS];
        int32_t tokens[256];
        struct sample_result res[MAX_SEQS];
        int T, S = next_step(ss, n, chunk, q, tokens, map, &T);
        if (S == 0) break;
        struct batch batch = {.n_seqs = S, .seqs = q, .n_tokens = T, .tokens = tokens, .logits_out = step_lg};
        if ((rc = backend_forward(b, &batch, res)) < 0) break;
        for (int s = 0, r = 0; s < S; s++) {
            if (!q[s].sample) continue;
            struct seq *sq = &ss[map[s]];
            if (lg) memcpy(lg + ((size_t)map[s] * N_GEN + sq->n_out) * V, step_lg + (size_t)r * V, (size_t)V * 4);
            sq->out[sq->n_out++] = res[r].token;
            r++;
        }
    }
    free(step_lg);
    return rc;
}

/* Under --deterministic a batch of three sequences gives each one's logits alone bit for bit,
 * and decode steps replayed from CUDA graphs give the tokens of eager steps. */
static void fixture_batch(const char *name, const struct model *m)
{
    char err[512];
    const int V = m->config.vocab_size;
    struct backend_options bo = {.kv_blocks = 2 * MAX_SEQS * BLOCKS + 1, .max_batch_tokens = 256, .max_batch_seqs = 4,
                                 .gpu_memory_utilization = 0.9, .deterministic = true};
    struct backend_options eager = bo;
    eager.cuda.enforce_eager = true;
    struct backend *b = NULL, *e = NULL;
    if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "%s: backend_cuda_create: %s", name, err);
    if (backend_cuda_create(&e, m, &eager, err, sizeof err) < 0)
        GT_CHECK(0, "%s: backend_cuda_create (enforce_eager): %s", name, err);
    if (!b || !e) goto out;
    {
        struct seq all[MAX_SEQS], one[MAX_SEQS];
        const size_t per = (size_t)N_GEN * V;
        float *lg_all = calloc(MAX_SEQS * per, 4), *lg_one = calloc(MAX_SEQS * per, 4);
        seqs_init(all, MAX_SEQS, m, 0);
        int rc = generate(b, all, MAX_SEQS, 16, lg_all);
        for (int i = 0; i < MAX_SEQS && rc == 0; i++) {
            seqs_init(one, MAX_SEQS, m, 0);
            rc = generate(b, &one[i], 1, 16, lg_one + i * per);
        }
        if (rc < 0) {
            GT_CHECK(0, "%s: forward: %s", name, b->error);
        } else {
            int bad = 0;
            for (int i = 0; i < MAX_SEQS; i++) bad += memcmp(lg_all + i * per, lg_one + i * per, per * 4) != 0;
            GT_CHECK(bad == 0,
                     "%s (--deterministic): %d sequences in one batch give each one's logits alone bit for bit at "
                     "every step (%d differ)",
                     name, MAX_SEQS, bad);
        }
        /* The same batch without logits: decode steps replay CUDA graphs; and eagerly. */
        struct cuda_backend *cb = (struct cuda_backend *)b;
        uint64_t replays0 = cb->graphs.replays + cb->graphs.captures;
        struct seq g[MAX_SEQS], ea[MAX_SEQS];
        seqs_init(g, MAX_SEQS, m, 0);
        seqs_init(ea, MAX_SEQS, m, 0);
        int rg = generate(b, g, MAX_SEQS, 16, NULL), re = generate(e, ea, MAX_SEQS, 16, NULL);
        uint64_t graphs = cb->graphs.replays + cb->graphs.captures - replays0;
        int bad = 0;
        for (int i = 0; i < MAX_SEQS; i++)
            bad += memcmp(g[i].out, ea[i].out, sizeof g[i].out) != 0 || memcmp(g[i].out, all[i].out, sizeof g[i].out) != 0;
        GT_CHECK(rg == 0 && re == 0 && graphs > 0 && bad == 0,
                 "%s: decode steps from CUDA graphs (%llu graph runs) give the eager steps' greedy tokens and those "
                 "chosen with logits (%d of %d sequences differ)",
                 name, (unsigned long long)graphs, bad, MAX_SEQS);
        free(lg_all), free(lg_one);
    }
out:
    backend_free(e);
    backend_free(b);
}

/* Both checks on each of the n fixtures named (folders or files under tests/fixtures/families;
 * run from the repository root). */
static void fixtures_run(const char *const *names, size_t n, struct fixture_bounds bd)
{
    for (size_t i = 0; i < n; i++) {
        char path[256], err[512];
        snprintf(path, sizeof path, "tests/fixtures/families/%s", names[i]);
        struct model *m = NULL;
        if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) < 0) {
            GT_CHECK(0, "%s: model_load: %s (run from the repository root)", path, err);
            continue;
        }
        printf("fixture %s: CUDA against the CPU backend\n", names[i]);
        fixture_vs_cpu(names[i], m, bd);
        fixture_batch(names[i], m);
        model_free(m);
    }
}

#endif
