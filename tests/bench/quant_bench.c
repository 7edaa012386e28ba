/* The CPU backend on a quantized GGUF file: its weights kept in their blocks (the default)
 * against the same weights dequantized to float32 at load (backend_options.cpu.f32_weights),
 * in one run, on the same prompt.
 *
 *   quant_bench MODEL.gguf [--threads N] [--prompt-len N] [--steps N] [--rounds N]
 *
 * Each round times, for both backends in turn, a prefill of --prompt-len tokens and --steps
 * greedy decode steps at batch 1; the best round of each is printed, with the logits' largest
 * difference between the two (they should be identical: both compute in float32 from the same
 * dequantized values). One JSON line per backend. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "worker/backend/backend.h"
#include "worker/model/model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct timing {
    double prefill_s, decode_s;
    int32_t *tokens;
    float *logits;      /* the last step's */
};

/* A prefill of prompt_len tokens, then steps decode steps; *t keeps the best times. */
static int run(struct backend *b, int vocab, int prompt_len, int steps, struct timing *t)
{
    int n = prompt_len + steps;
    int32_t *table = malloc(sizeof(int32_t) * (size_t)((n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE));
    int32_t *hist = malloc(sizeof(int32_t) * (size_t)(n + 1));
    for (int i = 0; i < (n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE; i++) table[i] = i;
    for (int i = 0; i < prompt_len; i++) hist[i] = (int32_t)(1 + (i * 7919) % (vocab - 1));
    struct sampling_params greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1, .logprobs = -1};
    int rc = -1;
    double t0 = now_s(), t1 = t0;
    for (int pos = 0; pos < n;) {
        int take = pos == 0 ? prompt_len : 1;
        struct batch_seq s = {.n_new = take, .start_pos = pos, .block_table = table,
                              .n_blocks = (n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE, .sample = true,
                              .sampling = &greedy, .history = hist, .n_history = pos + take};
        struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = take, .tokens = hist + pos, .logits_out = t->logits};
        struct sample_result res;
        if (backend_forward(b, &batch, &res) != 0) {
            fprintf(stderr, "quant_bench: %s\n", b->error);
            goto out;
        }
        pos += take;
        hist[pos] = res.token;
        t->tokens[pos] = res.token;
        if (pos == prompt_len) t1 = now_s();
    }
    double t2 = now_s();
    if (t->prefill_s == 0 || t1 - t0 < t->prefill_s) t->prefill_s = t1 - t0;
    if (t->decode_s == 0 || t2 - t1 < t->decode_s) t->decode_s = t2 - t1;
    rc = 0;
out:
    free(table);
    free(hist);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int threads = 0, prompt_len = 64, steps = 64, rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--prompt-len")) prompt_len = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--steps")) steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--rounds")) rounds = atoi(argv[++i]);
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: quant_bench MODEL.gguf [--threads N] [--prompt-len N] [--steps N] [--rounds N]\n");
            return 2;
        }
    }
    if (!path || prompt_len < 1 || steps < 1 || rounds < 1) {
        fprintf(stderr, "usage: quant_bench MODEL.gguf [--threads N] [--prompt-len N] [--steps N] [--rounds N]\n");
        return 2;
    }
    log_init("quant_bench");
    log_set_level(LOG_LEVEL_WARN);
    struct model *m = NULL;
    char err[1024];
    if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) {
        fprintf(stderr, "quant_bench: %s\n", err);
        return 1;
    }
    int vocab = m->config.vocab_size, n = prompt_len + steps;
    struct backend *b[2] = {NULL, NULL};
    struct timing t[2];
    int rc = 1;
    memset(t, 0, sizeof t);
    for (int k = 0; k < 2; k++) {
        struct backend_options opt = {.kv_blocks = (n + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE,
                                      .max_batch_tokens = prompt_len, .max_batch_seqs = 1, .cpu.n_threads = threads,
                                      .cpu.f32_weights = k == 1};
        if (backend_cpu_create(&b[k], m, &opt, err, sizeof err) != 0) {
            fprintf(stderr, "quant_bench: %s\n", err);
            goto out;
        }
        t[k].tokens = calloc((size_t)n + 1, sizeof(int32_t));
        t[k].logits = calloc((size_t)vocab, sizeof(float));
    }
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++)
            if (run(b[k], vocab, prompt_len, steps, &t[k]) != 0) goto out;
    double worst = 0;
    for (int v = 0; v < vocab; v++) worst = fmax(worst, fabs((double)t[0].logits[v] - t[1].logits[v]));
    bool same_tokens = !memcmp(t[0].tokens, t[1].tokens, sizeof(int32_t) * ((size_t)n + 1));
    for (int k = 0; k < 2; k++)
        printf("{\"weights\": \"%s\", \"threads\": %d, \"prompt_len\": %d, \"prefill_tok_s\": %.1f, \"steps\": %d, "
               "\"decode_tok_s\": %.1f, \"same_tokens\": %s, \"max_logit_diff\": %g}\n",
               k == 0 ? "gguf-blocks" : "f32", threads, prompt_len, prompt_len / t[k].prefill_s, steps,
               steps / t[k].decode_s, same_tokens ? "true" : "false", worst);
    rc = 0;
out:
    for (int k = 0; k < 2; k++) {
        if (b[k]) backend_free(b[k]);
        free(t[k].tokens);
        free(t[k].logits);
    }
    model_free(m);
    return rc;
}
