/* The whole CUDA backend: stories260K against Hugging Face's reference (reference.json: greedy
 * ids and the last prompt position's logits), alone, batched and with chunked prefill; then
 * small dummy models of each family (Llama GQA with llama3 rope scaling, Qwen2 with QKV bias,
 * Qwen3 with q/k norm, Gemma 2 at head_dim 256) against the CPU backend, and the on-device sampler against
 * sampler_sample on the logits the GPU produced. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include <jansson.h>
#include <sys/stat.h>

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"
#include "worker/sampler/sampler.h"

#define MAX_PROMPTS 4
#define MAX_GEN 64
#define BLOCKS_PER_SEQ 40

struct gen_seq {
    const int32_t *prompt;
    int n_prompt;
    int n_gen; /* tokens to generate */
    int32_t out[MAX_GEN];
    int n_out;
    int fed; /* prompt tokens already in the KV cache */
    int32_t blocks[BLOCKS_PER_SEQ];
    int32_t history[1024];
    float *first_logits; /* logits of the first sampled row, vocab floats */
};

/* A minimal engine: greedy (or given params), prefill in chunks of `chunk`, all sequences in one
 * ragged batch per step. Returns 0 or the backend's error. */
static int run_batch(struct backend *b, struct gen_seq *gs, int n, int chunk, const struct sampling_params *sp)
{
    const int V = b->config.vocab_size;
    struct batch_seq seqs[MAX_PROMPTS];
    int32_t tokens[2048];
    struct sample_result res[MAX_PROMPTS];
    float *logits = malloc((size_t)MAX_PROMPTS * V * 4);
    int rc = 0;
    for (;;) {
        int S = 0, T = 0, map[MAX_PROMPTS];
        for (int i = 0; i < n; i++) {
            struct gen_seq *g = &gs[i];
            if (g->n_out >= g->n_gen) continue;
            struct batch_seq *q = &seqs[S];
            memset(q, 0, sizeof *q);
            if (g->fed < g->n_prompt) {
                int k = g->n_prompt - g->fed < chunk ? g->n_prompt - g->fed : chunk;
                memcpy(tokens + T, g->prompt + g->fed, (size_t)k * 4);
                q->start_pos = g->fed;
                q->n_new = k;
                q->sample = g->fed + k == g->n_prompt;
                g->fed += k;
            } else {
                tokens[T] = g->out[g->n_out - 1];
                q->start_pos = g->n_prompt + g->n_out - 1;
                q->n_new = 1;
                q->sample = true;
            }
            T += q->n_new;
            q->block_table = g->blocks;
            q->n_blocks = BLOCKS_PER_SEQ;
            q->sampling = sp;
            q->n_generated = (uint64_t)g->n_out;
            memcpy(g->history, g->prompt, (size_t)g->n_prompt * 4);
            memcpy(g->history + g->n_prompt, g->out, (size_t)g->n_out * 4);
            q->history = g->history;
            q->n_history = g->n_prompt + g->n_out;
            q->n_output = g->n_out;
            map[S++] = i;
        }
        if (S == 0) break;
        /* Logits come back only when a sequence wants its first ones: decode steps then run as
         * CUDA graphs. */
        bool want = false;
        for (int s = 0; s < S; s++) want |= gs[map[s]].first_logits && gs[map[s]].n_out == 0 && seqs[s].sample;
        struct batch batch = {
            .n_seqs = S, .seqs = seqs, .n_tokens = T, .tokens = tokens, .logits_out = want ? logits : NULL};
        if ((rc = backend_forward(b, &batch, res)) < 0) break;
        for (int s = 0, r = 0; s < S; s++) {
            if (!seqs[s].sample) continue;
            struct gen_seq *g = &gs[map[s]];
            if (g->n_out == 0 && g->first_logits) memcpy(g->first_logits, logits + (size_t)r * V, (size_t)V * 4);
            g->out[g->n_out++] = res[r].token;
            r++;
        }
    }
    free(logits);
    return rc;
}

/* Greedy decoding as the engine runs it over a GPU: after one prefill step, each decode step is
 * queued before the previous one's tokens are collected, which it names as
 * BACKEND_TOKEN_FROM_PREV rows (the device reads them from the last sampler output). */
static int run_overlapped(struct backend *b, struct gen_seq *gs, int n, const struct sampling_params *sp)
{
    struct batch_seq seqs[MAX_PROMPTS];
    struct sample_result res[MAX_PROMPTS];
    int32_t tokens[2048];
    int T = 0, rc;
    for (int i = 0; i < n; i++) {
        struct gen_seq *g = &gs[i];
        memcpy(tokens + T, g->prompt, (size_t)g->n_prompt * 4);
        T += g->n_prompt;
        seqs[i] = (struct batch_seq){.n_new = g->n_prompt, .block_table = g->blocks, .n_blocks = BLOCKS_PER_SEQ,
                                     .sample = true, .sampling = sp};
    }
    struct batch batch = {.n_seqs = n, .seqs = seqs, .n_tokens = T, .tokens = tokens};
    if ((rc = backend_forward(b, &batch, res)) < 0) return rc;
    for (int i = 0; i < n; i++) gs[i].out[gs[i].n_out++] = res[i].token;
    /* issued: tokens known or queued; prev_row: the sequence's row in the uncollected step. */
    int issued[MAX_PROMPTS], prev_row[MAX_PROMPTS], row[MAX_PROMPTS];
    bool pending = false;
    for (int i = 0; i < n; i++) {
        issued[i] = 1;
        prev_row[i] = -1;
    }
    for (;;) {
        int S = 0;
        for (int i = 0; i < n; i++) {
            struct gen_seq *g = &gs[i];
            row[i] = -1;
            if (issued[i] >= g->n_gen) continue;
            tokens[S] = prev_row[i] >= 0 ? BACKEND_TOKEN_FROM_PREV(prev_row[i]) : g->out[issued[i] - 1];
            seqs[S] = (struct batch_seq){.n_new = 1, .start_pos = g->n_prompt + issued[i] - 1, .block_table = g->blocks,
                                         .n_blocks = BLOCKS_PER_SEQ, .sample = true, .sampling = sp,
                                         .n_generated = (uint64_t)issued[i]};
            row[i] = S++;
        }
        if (S > 0) {
            batch = (struct batch){.n_seqs = S, .seqs = seqs, .n_tokens = S, .tokens = tokens};
            if ((rc = backend_submit(b, &batch)) < 0) return rc;
        }
        if (pending) {
            if ((rc = backend_collect(b, res)) < 0) return rc;
            for (int i = 0; i < n; i++)
                if (prev_row[i] >= 0) gs[i].out[gs[i].n_out++] = res[prev_row[i]].token;
        }
        if (S == 0) return 0;
        for (int i = 0; i < n; i++) {
            prev_row[i] = row[i];
            issued[i] += row[i] >= 0;
        }
        pending = true;
    }
}

/* Gives each sequence scattered, distinct blocks. */
static void assign_blocks(struct gen_seq *gs, int n, int n_blocks)
{
    int *perm = malloc(n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = gt_int(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int s = 0; s < n; s++)
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) gs[s].blocks[i] = perm[s * BLOCKS_PER_SEQ + i];
    free(perm);
}

static int count_mismatch(const int32_t *a, const json_t *ids, int n, int *first)
{
    int bad = 0;
    *first = -1;
    for (int i = 0; i < n; i++)
        if (a[i] != (int32_t)json_integer_value(json_array_get(ids, i))) {
            if (*first < 0) *first = i;
            bad++;
        }
    return bad;
}

static void test_stories(const char *data)
{
    char dir[4096], ref_path[4096], err[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K/hf", data);
    snprintf(ref_path, sizeof ref_path, "%s/models/stories260K/reference.json", data);
    printf("stories260K (%s)\n", dir);
    struct stat st;
    if (stat(dir, &st) != 0 || stat(ref_path, &st) != 0) {
        printf("  SKIP: %s not found (set SLUICE_TEST_DATA)\n", dir);
        return;
    }
    struct model *m = NULL;
    if (model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err) < 0) {
        GT_CHECK(0, "model_load: %s", err);
        return;
    }
    json_error_t jerr;
    json_t *ref = json_load_file(ref_path, 0, &jerr);
    json_t *prompts = ref ? json_object_get(ref, "prompts") : NULL;
    if (!prompts) {
        GT_CHECK(0, "reference.json: %s", jerr.text);
        model_free(m);
        return;
    }
    struct backend_options bo = {.kv_blocks = 4 * BLOCKS_PER_SEQ,
                                 .gpu_memory_utilization = 0.9,
                                 .max_batch_tokens = 512,
                                 .max_batch_seqs = 8,
                                 .device = 0};
    struct backend *b = NULL;
    if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
        GT_CHECK(0, "backend_cuda_create: %s", err);
        json_decref(ref);
        model_free(m);
        return;
    }
    const int V = m->config.vocab_size;
    struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .logprobs = -1};

    /* Each prompt alone. */
    int n_prompts = 0;
    const char *keys[MAX_PROMPTS];
    int32_t prompt_ids[MAX_PROMPTS][64];
    int n_ids[MAX_PROMPTS];
    const char *key;
    json_t *pv;
    json_object_foreach(prompts, key, pv)
    {
        if (n_prompts == MAX_PROMPTS) break;
        json_t *ids = json_object_get(pv, "prompt_ids");
        keys[n_prompts] = key;
        n_ids[n_prompts] = (int)json_array_size(ids);
        for (int i = 0; i < n_ids[n_prompts] && i < 64; i++)
            prompt_ids[n_prompts][i] = (int32_t)json_integer_value(json_array_get(ids, i));
        n_prompts++;
    }
    int32_t alone[MAX_PROMPTS][MAX_GEN];
    int total_tok = 0, total_bad = 0;
    for (int p = 0; p < n_prompts; p++) {
        json_t *pj = json_object_get(prompts, keys[p]);
        json_t *gids = json_object_get(pj, "greedy_ids"), *ll = json_object_get(pj, "last_logits");
        int n_gen = (int)json_array_size(gids);
        if (n_gen > MAX_GEN) n_gen = MAX_GEN;
        struct gen_seq g;
        memset(&g, 0, sizeof g);
        g.prompt = prompt_ids[p];
        g.n_prompt = n_ids[p];
        g.n_gen = n_gen;
        g.first_logits = malloc((size_t)V * 4);
        assign_blocks(&g, 1, 4 * BLOCKS_PER_SEQ);
        int rc = run_batch(b, &g, 1, 512, &greedy);
        GT_CHECK(rc == 0, "forward steps for \"%s\" %s", keys[p], rc ? b->error : "");
        int first;
        int bad = count_mismatch(g.out, gids, n_gen, &first);
        total_tok += n_gen;
        total_bad += bad;
        GT_CHECK(bad == 0, "\"%s\": greedy ids equal HF's (%d of %d differ, first at %d)", keys[p], bad, n_gen, first);
        memcpy(alone[p], g.out, sizeof alone[p]);
        if (ll && (int)json_array_size(ll) == V) {
            double *r = malloc((size_t)V * 8);
            for (int i = 0; i < V; i++) r[i] = json_real_value(json_array_get(ll, i));
            double e = gt_rel_err(g.first_logits, r, (size_t)V);
            GT_CHECK(e < 2e-2, "\"%s\": prompt logits vs HF float32 rel err %.2e (bf16 weights)", keys[p], e);
            free(r);
        }
        free(g.first_logits);
    }
    printf("  stories260K greedy: %d of %d tokens equal HF\n", total_tok - total_bad, total_tok);

    /* All prompts in one ragged batch, with prefill chunked to 2 tokens: same tokens as alone. */
    for (int chunk = 512; chunk >= 2; chunk = chunk == 512 ? 2 : 0) {
        struct gen_seq gs[MAX_PROMPTS];
        memset(gs, 0, sizeof gs);
        for (int p = 0; p < n_prompts; p++) {
            gs[p].prompt = prompt_ids[p];
            gs[p].n_prompt = n_ids[p];
            gs[p].n_gen = MAX_GEN;
        }
        assign_blocks(gs, n_prompts, 4 * BLOCKS_PER_SEQ);
        int rc = run_batch(b, gs, n_prompts, chunk, &greedy);
        int bad = 0;
        for (int p = 0; p < n_prompts; p++)
            for (int i = 0; i < MAX_GEN; i++) bad += gs[p].out[i] != alone[p][i];
        GT_CHECK(rc == 0 && bad == 0, "batched, prefill chunk %d: tokens equal the single-sequence runs (%d differ) %s",
                 chunk, bad, rc ? b->error : "");
    }

    /* Steps queued before the previous step's tokens reach the host: same tokens. */
    {
        struct gen_seq gs[MAX_PROMPTS];
        memset(gs, 0, sizeof gs);
        for (int p = 0; p < n_prompts; p++) {
            gs[p].prompt = prompt_ids[p];
            gs[p].n_prompt = n_ids[p];
            gs[p].n_gen = MAX_GEN - 8 * p; /* sequences leave the batch at different steps */
        }
        assign_blocks(gs, n_prompts, 4 * BLOCKS_PER_SEQ);
        int rc = run_overlapped(b, gs, n_prompts, &greedy), bad = 0;
        for (int p = 0; p < n_prompts; p++) {
            bad += gs[p].n_out != gs[p].n_gen;
            for (int i = 0; i < gs[p].n_out; i++) bad += gs[p].out[i] != alone[p][i];
        }
        GT_CHECK(rc == 0 && bad == 0, "overlapped steps (tokens read on the device): tokens equal the single-sequence "
                 "runs (%d differ) %s", bad, rc ? b->error : "");
    }

    {
        const struct cuda_backend *cb = (const struct cuda_backend *)b;
        GT_CHECK(cb->graphs.replays > 100 && cb->graphs.captures < 40,
                 "decode steps replayed as CUDA graphs (%llu captures, %llu replays)",
                 (unsigned long long)cb->graphs.captures, (unsigned long long)cb->graphs.replays);
    }
    /* The same batch without graphs gives the same tokens. */
    {
        struct backend_options eager = bo;
        eager.cuda.enforce_eager = true;
        struct backend *b2 = NULL;
        int rc = backend_cuda_create(&b2, m, &eager, err, sizeof err);
        struct gen_seq gs[MAX_PROMPTS];
        memset(gs, 0, sizeof gs);
        for (int p = 0; p < n_prompts; p++) {
            gs[p].prompt = prompt_ids[p];
            gs[p].n_prompt = n_ids[p];
            gs[p].n_gen = MAX_GEN;
        }
        assign_blocks(gs, n_prompts, 4 * BLOCKS_PER_SEQ);
        if (rc == 0) rc = run_batch(b2, gs, n_prompts, 3, &greedy);
        int bad = 0;
        for (int p = 0; p < n_prompts; p++)
            for (int i = 0; i < MAX_GEN; i++) bad += gs[p].out[i] != alone[p][i];
        GT_CHECK(rc == 0 && bad == 0 && ((struct cuda_backend *)b2)->graphs.replays == 0,
                 "without CUDA graphs: same tokens (%d differ) %s", bad, rc ? err : "");
        backend_free(b2);
    }

    /* Bad input is an error, not a crash. */
    {
        int32_t bad_tok = V + 5, blocks[1] = {0};
        struct batch_seq q = {
            .n_new = 1, .start_pos = 0, .block_table = blocks, .n_blocks = 1, .sample = true, .sampling = &greedy};
        struct batch batch = {.n_seqs = 1, .seqs = &q, .n_tokens = 1, .tokens = &bad_tok};
        struct sample_result r;
        int rc = backend_forward(b, &batch, &r);
        GT_CHECK(rc < 0 && strstr(b->error, "vocabulary"), "out-of-range token rejected: %s", b->error);
        bad_tok = BACKEND_TOKEN_FROM_PREV(MAX_PROMPTS); /* no step here samples that many rows */
        rc = backend_forward(b, &batch, &r);
        GT_CHECK(rc < 0 && strstr(b->error, "previous step"), "a row the previous step did not sample rejected: %s",
                 b->error);
        bad_tok = 1;
        blocks[0] = 1 << 30;
        rc = backend_forward(b, &batch, &r);
        GT_CHECK(rc < 0, "out-of-range block rejected: %s", b->error);
    }
    backend_free(b);

    /* A step that does not finish in time (here: a limit far below a step's time) is a device
     * error, not a wait without end; the backend is then freed without touching the device. */
    {
        struct backend_options quick = bo;
        quick.cuda.step_timeout_s = 1e-9;
        quick.cuda.no_warmup = true; /* the steps below, not the start's, are to time out */
        struct backend *bs = NULL;
        int rc = backend_cuda_create(&bs, m, &quick, err, sizeof err);
        int timed_out = 0;
        for (int attempt = 0; rc == 0 && attempt < 10 && !timed_out; attempt++) {
            struct gen_seq g;
            memset(&g, 0, sizeof g);
            g.prompt = prompt_ids[0];
            g.n_prompt = n_ids[0];
            g.n_gen = 4;
            assign_blocks(&g, 1, 4 * BLOCKS_PER_SEQ);
            timed_out = run_batch(bs, &g, 1, 512, &greedy) < 0 && strstr(bs->error, "did not finish") != NULL;
        }
        GT_CHECK(rc == 0 && timed_out, "a step past the step timeout (--cuda-step-timeout) is reported: %s",
                 rc == 0 ? bs->error : err);
        backend_free(bs);
        GT_CUDA(cudaDeviceSynchronize());
    }

    /* The warm-up at start: one prefill and one decode step (its graph captured), or none. */
    for (int off = 0; off < 2; off++) {
        struct backend_options warm = bo;
        warm.cuda.no_warmup = off;
        struct backend *bw = NULL;
        int rc = backend_cuda_create(&bw, m, &warm, err, sizeof err);
        const struct cuda_backend *cw = (const struct cuda_backend *)bw;
        const unsigned long long want_steps = off ? 0 : 2, want_graphs = off ? 0 : 1;
        GT_CHECK(rc == 0 && cw->steps.submitted == want_steps && cw->steps.collected == want_steps &&
                     cw->graphs.captures == want_graphs,
                 "warm-up %s: %llu steps, %llu graphs at start %s", off ? "off" : "on",
                 rc == 0 ? (unsigned long long)cw->steps.submitted : 0ULL,
                 rc == 0 ? (unsigned long long)cw->graphs.captures : 0ULL, rc ? err : "");
        backend_free(bw);
    }

    /* Automatic KV sizing from --gpu-memory-utilization. */
    bo.kv_blocks = 0;
    bo.gpu_memory_utilization = 0.3;
    b = NULL;
    int rc = backend_cuda_create(&b, m, &bo, err, sizeof err);
    GT_CHECK(rc == 0 && b->num_kv_blocks > 1000, "automatic KV sizing at 0.3: %d blocks %s",
             rc == 0 ? b->num_kv_blocks : 0, rc ? err : "");
    backend_free(b);
    json_decref(ref);
    model_free(m);
}

/* ||a - ref|| / ||ref|| over n logits (infinite when a is not finite). */
static double logits_rel_err(const float *a, const float *ref, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return isfinite(num) ? sqrt(num / den) : INFINITY;
}

/* Appends to out which step's logits differ between a and b (n of them), the step's shape, how
 * many differ and by how much at most: what a failed bit-equality check needs to say where to look. */
static void note_step(char *out, size_t size, int step, int n_tokens, int n_seqs, const float *a, const float *b,
                      size_t n)
{
    size_t differ = 0;
    double most = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] == b[i]) continue;
        differ++;
        const double d = fabs((double)a[i] - b[i]);
        if (d > most) most = d;
    }
    const size_t used = strlen(out);
    if (used + 1 < size)
        snprintf(out + used, size - used, "; step %d (%d tokens, %d sequences): %zu of %zu logits, by up to %.2e",
                 step, n_tokens, n_seqs, differ, n, most);
}

/* A CUDA backend for m with bo's options and co's CUDA options (what: how they differ from the
 * default, for the message); NULL, reported, when it cannot be made. */
static struct backend *cuda_backend_with(const struct model *m, const struct backend_options *bo,
                                         const struct cuda_options *co, const char *what)
{
    char err[512];
    struct backend *b = NULL;
    struct backend_options o = *bo;
    o.cuda = *co;
    if (backend_cuda_create(&b, m, &o, err, sizeof err) < 0) {
        GT_CHECK(0, "backend_cuda_create (%s): %s", what, err);
        return NULL;
    }
    return b;
}

/* A dummy model of one family, CUDA against CPU. */
static void test_dummy_vs_cpu(const char *name, const char *config_json)
{
    printf("dummy %s: CUDA vs CPU backend\n", name);
    struct model *m = gt_dummy_model(config_json);
    if (!m) return;
    char err[512];
    const int V = m->config.vocab_size;
    struct backend_options bo = {.kv_blocks = 4 * BLOCKS_PER_SEQ,
                                 .max_batch_tokens = 512,
                                 .max_batch_seqs = 8,
                                 .cpu.n_threads = 4,
                                 .gpu_memory_utilization = 0.9};
    struct backend *cpu = NULL;
    if (backend_cpu_create(&cpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cpu_create: %s", err);
    struct backend *gpu = cuda_backend_with(m, &bo, &(struct cuda_options){0}, "default");
    /* The Hopper products adding their split-K sums themselves, instead of leaving parts to their
     * readers (norm, qkv_post), and so with the MLP in two launches instead of one
     * (sk_hopper_mlp): the logits must not change by a bit. Both without the early trigger,
     * which only a product left in parts has: with it the planner keeps 33-64-row narrow
     * products (this model's prefill qkv) on the Hopper kernel that it otherwise gives to cuBLAS
     * (hopper_takes in cuda_plan.c), whose sums are its own. */
    struct backend *gpu_parts =
        cuda_backend_with(m, &bo, &(struct cuda_options){.no_early_trigger = true}, "early_trigger=0");
    struct backend *gpu_sum = cuda_backend_with(
        m, &bo, &(struct cuda_options){.no_split_parts = true, .no_early_trigger = true},
        "split_parts=0,early_trigger=0");
    /* And with the decode attention doing qkv_post's work at every batch size, not only over 32
     * rows (head_dim 128 only): against the CPU as the others. */
    struct backend *gpu_fq =
        cuda_backend_with(m, &bo, &(struct cuda_options){.fused_qkv = CUDA_FUSED_QKV_ALL}, "fused_qkv=all");
    /* Split parts with the MLP in two launches: between the two above, so that a difference says
     * whether the parts' readers or the fused MLP gave it. */
    struct backend *gpu_nofm =
        cuda_backend_with(m, &bo, &(struct cuda_options){.no_fused_mlp = true}, "fused_mlp=0");
    if (!cpu || !gpu || !gpu_parts || !gpu_sum || !gpu_fq || !gpu_nofm) {
        backend_free(gpu_parts);
        backend_free(gpu_nofm);
        backend_free(gpu_fq);
        backend_free(gpu_sum);
        backend_free(gpu);
        backend_free(cpu);
        model_free(m);
        return;
    }
    /* Two prompts (one long enough for several blocks), prefill in chunks, then decode steps;
     * the CPU backend is fed the CUDA backend's tokens so both see the same sequence. */
    int32_t p0[300], p1[7];
    for (int i = 0; i < 300; i++) p0[i] = gt_int(V);
    for (int i = 0; i < 7; i++) p1[i] = gt_int(V);
    struct sampling_params sp = {.temperature = 0.8f,
                                 .top_p = 0.9f,
                                 .top_k = 50,
                                 .min_p = 0.01f,
                                 .repetition_penalty = 1.1f,
                                 .presence_penalty = 0.2f,
                                 .frequency_penalty = 0.1f,
                                 .seed = 42,
                                 .logprobs = 3};
    struct gen_seq g[2];
    memset(g, 0, sizeof g);
    g[0].prompt = p0;
    g[0].n_prompt = 300;
    g[1].prompt = p1;
    g[1].n_prompt = 7;
    for (int s = 0; s < 2; s++) {
        g[s].n_gen = 6;
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) g[s].blocks[i] = (BLOCKS_PER_SEQ - 1 - i) + s * BLOCKS_PER_SEQ;
    }
    /* Step by step: both backends get the same batch. */
    double worst = 0, worst_fq = 0;
    int sampler_bad = 0, steps = 0, split_bad = 0, fused_mlp_bad = 0;
    char split_steps[256] = "", fused_mlp_steps[256] = ""; /* which steps differ, and their shapes */
    float *lg = malloc((size_t)2 * V * 4), *lc = malloc((size_t)2 * V * 4), *ls = malloc((size_t)2 * V * 4),
          *lf = malloc((size_t)2 * V * 4), *ln = malloc((size_t)2 * V * 4), *lp = malloc((size_t)2 * V * 4);
    float *scratch = malloc(sampler_scratch_floats(V) * 4);
    for (;;) {
        struct batch_seq seqs[2];
        int32_t tokens[512];
        int S = 0, T = 0, map[2];
        for (int s = 0; s < 2; s++) {
            if (g[s].n_out >= g[s].n_gen) continue;
            map[S] = s;
            struct batch_seq *q = &seqs[S++];
            memset(q, 0, sizeof *q);
            if (g[s].fed < g[s].n_prompt) {
                int k = g[s].n_prompt - g[s].fed < 128 ? g[s].n_prompt - g[s].fed : 128;
                memcpy(tokens + T, g[s].prompt + g[s].fed, (size_t)k * 4);
                q->start_pos = g[s].fed;
                q->n_new = k;
                g[s].fed += k;
                q->sample = g[s].fed == g[s].n_prompt;
            } else {
                tokens[T] = g[s].out[g[s].n_out - 1];
                q->start_pos = g[s].n_prompt + g[s].n_out - 1;
                q->n_new = 1;
                q->sample = true;
            }
            T += q->n_new;
            q->block_table = g[s].blocks;
            q->n_blocks = BLOCKS_PER_SEQ;
            q->sampling = &sp;
            q->n_generated = (uint64_t)g[s].n_out;
            memcpy(g[s].history, g[s].prompt, (size_t)g[s].n_prompt * 4);
            memcpy(g[s].history + g[s].n_prompt, g[s].out, (size_t)g[s].n_out * 4);
            q->history = g[s].history;
            q->n_history = g[s].n_prompt + g[s].n_out;
            q->n_output = g[s].n_out;
        }
        if (S == 0) break;
        struct batch bg = {.n_seqs = S, .seqs = seqs, .n_tokens = T, .tokens = tokens, .logits_out = lg};
        struct batch bc = bg, bs = bg, bf = bg, bn = bg, bp = bg;
        bc.logits_out = lc;
        bs.logits_out = ls;
        bf.logits_out = lf;
        bn.logits_out = ln;
        bp.logits_out = lp;
        struct sample_result rg[2], rcpu[2], rsum[2], rfq[2], rn[2], rp[2];
        if (backend_forward(gpu, &bg, rg) < 0 || backend_forward(cpu, &bc, rcpu) < 0 ||
            backend_forward(gpu_sum, &bs, rsum) < 0 || backend_forward(gpu_fq, &bf, rfq) < 0 ||
            backend_forward(gpu_nofm, &bn, rn) < 0 || backend_forward(gpu_parts, &bp, rp) < 0) {
            GT_CHECK(0,
                     "forward: gpu '%s' cpu '%s' gpu without split parts '%s' gpu with qkv in attention '%s' gpu "
                     "without the fused MLP '%s' gpu without the early trigger '%s'",
                     gpu->error, cpu->error, gpu_sum->error, gpu_fq->error, gpu_nofm->error, gpu_parts->error);
            break;
        }
        steps++;
        int rows = 0;
        for (int s = 0; s < S; s++) rows += seqs[s].sample;
        const size_t n_logits = (size_t)rows * V;
        if (memcmp(lp, ls, n_logits * 4) != 0) {
            split_bad++;
            note_step(split_steps, sizeof split_steps, steps, T, S, lp, ls, n_logits);
        }
        if (memcmp(lg, ln, n_logits * 4) != 0) {
            fused_mlp_bad++;
            note_step(fused_mlp_steps, sizeof fused_mlp_steps, steps, T, S, lg, ln, n_logits);
        }
        for (int s = 0, r = 0; s < S; s++) {
            int gi = map[s];
            if (!seqs[s].sample) continue;
            double e = logits_rel_err(lg + (size_t)r * V, lc + (size_t)r * V, V);
            if (e > worst) worst = e;
            e = logits_rel_err(lf + (size_t)r * V, lc + (size_t)r * V, V);
            if (e > worst_fq) worst_fq = e;
            /* The device sampler against the CPU sampler on the device's own logits. */
            struct sample_result ref;
            sampler_sample(lg + (size_t)r * V, V, &seqs[s], scratch, &ref);
            if (ref.token != rg[r].token || ref.n_top != rg[r].n_top || fabsf(ref.logprob - rg[r].logprob) > 1e-3f)
                sampler_bad++;
            g[gi].out[g[gi].n_out++] = rg[r].token;
            r++;
        }
    }
    GT_CHECK(worst < 3e-2, "%s: logits rel err vs CPU fp32 over %d steps: worst %.2e (bf16 weights)", name, steps,
             worst);
    const uint64_t fq_steps = ((struct cuda_backend *)gpu_fq)->steps.fused_qkv_steps;
    const int fq_expected = m->config.head_dim == 128;
    GT_CHECK(worst_fq < 3e-2 && (fq_steps > 0) == fq_expected,
             "%s: with the decode attention doing qkv_post's work (fused_qkv=all, %llu steps, expected %s): "
             "logits rel err vs CPU fp32 worst %.2e",
             name, (unsigned long long)fq_steps, fq_expected ? "some" : "none at head_dim != 128", worst_fq);
    GT_CHECK(sampler_bad == 0, "%s: device sampling equals sampler_sample on the same logits (%d differ)", name,
             sampler_bad);
    GT_CHECK(split_bad == 0,
             "%s: split-K parts added by their readers (%s) and the fused MLP (%s) give the logits of the products' "
             "own sums bit for bit, both without the early trigger (%d of %d steps differ%s)",
             name, ((struct cuda_backend *)gpu_parts)->plan.split_parts ? "on" : "off: no Hopper products",
             ((struct cuda_backend *)gpu_parts)->plan.fused_mlp ? "on" : "off", split_bad, steps, split_steps);
    GT_CHECK(fused_mlp_bad == 0,
             "%s: the fused MLP (%s) gives the logits of the MLP in two launches bit for bit, split parts on "
             "(%d of %d steps differ%s)",
             name, ((struct cuda_backend *)gpu)->plan.fused_mlp ? "on" : "off", fused_mlp_bad, steps,
             fused_mlp_steps);
    free(lg);
    free(lc);
    free(ls);
    free(lf);
    free(ln);
    free(lp);
    free(scratch);
    backend_free(gpu_parts);
    backend_free(gpu_nofm);
    backend_free(gpu_fq);
    backend_free(gpu_sum);
    backend_free(gpu);
    backend_free(cpu);
    model_free(m);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    const char *data = getenv("SLUICE_TEST_DATA");
    if (!data || !*data) data = "../shared";
    test_stories(data);
    test_dummy_vs_cpu(
        "llama-gqa-llama3rope",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":688,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":64,"
        "\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"
        "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
        "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":64},"
        "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    test_dummy_vs_cpu(
        "qwen2-bias",
        "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":512,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
        "\"vocab_size\":1200,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
        "\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    test_dummy_vs_cpu(
        "qwen3-qknorm",
        "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":512,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":96,"
        "\"vocab_size\":1100,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
        "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    /* head_dim 128: decode steps take sk_attention_decode_qkv (q/k norm here, bias in qwen2). */
    test_dummy_vs_cpu(
        "qwen3-qknorm-128",
        "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":512,\"intermediate_size\":768,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":1,\"head_dim\":128,"
        "\"vocab_size\":900,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
        "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    /* head_dim 256 (Gemma 2 9B's, 2 query heads per kv head): prompt chunks take the tensor-core
     * prefill tiles' soft-capping and window instance (a 64-key window on every other layer, which
     * the 300-token prompt passes), decode steps the streaming kernel at head_dim 256. */
    test_dummy_vs_cpu(
        "gemma2-headdim256",
        "{\"architectures\":[\"Gemma2ForCausalLM\"],\"model_type\":\"gemma2\",\"hidden_size\":512,"
        "\"intermediate_size\":1024,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
        "\"head_dim\":256,\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,"
        "\"rope_theta\":10000.0,\"hidden_activation\":\"gelu_pytorch_tanh\",\"query_pre_attn_scalar\":256,"
        "\"sliding_window\":64,\"layer_types\":[\"sliding_attention\",\"full_attention\"],"
        "\"attn_logit_softcapping\":10.0,\"final_logit_softcapping\":30.0,\"tie_word_embeddings\":true,"
        "\"bos_token_id\":2,\"eos_token_id\":1,\"torch_dtype\":\"bfloat16\"}");
    return gt_finish();
}
