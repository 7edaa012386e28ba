/* Runs a model directory through one backend and writes what a reference implementation can be
 * compared with: the logits of every greedy step and the tokens chosen.
 *
 *   parity_tool --model DIR --device cuda|cpu --prompt-ids 1,2,3 --steps N --out FILE
 *
 * The prompt runs as one prefill; then N-1 greedy decode steps follow, each fed the token the
 * last step chose, so N tokens and N rows of logits come out (row k: the logits that chose
 * token k). FILE gets JSON {"vocab_size", "steps", "tokens", "tokens_nologits",
 * "logits_file"}; the logits go to FILE.f32 as raw little-endian float32, steps x vocab.
 * "tokens_nologits" repeats the run without asking for logits (on CUDA the decode steps then
 * replay CUDA graphs), so a caller can check that path chooses the same tokens.
 * tests/gpu/test_hf_parity.py drives it against Hugging Face transformers. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define PARITY_MAX_PROMPT 4096
#define PARITY_MAX_STEPS 1024

struct parity_args {
    const char *model;
    const char *device;
    const char *out;
    int32_t prompt[PARITY_MAX_PROMPT];
    int n_prompt;
    int steps;
    int threads;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_ids(const char *s, struct parity_args *a)
{
    a->n_prompt = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > 2147483647L || a->n_prompt == PARITY_MAX_PROMPT) return -1;
        a->prompt[a->n_prompt++] = (int32_t)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return a->n_prompt > 0 ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct parity_args *a)
{
    memset(a, 0, sizeof *a);
    a->steps = 8;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (!strcmp(k, "--model")) a->model = v;
        else if (!strcmp(k, "--device")) a->device = v;
        else if (!strcmp(k, "--out")) a->out = v;
        else if (!strcmp(k, "--steps")) a->steps = atoi(v);
        else if (!strcmp(k, "--threads")) a->threads = atoi(v);
        else if (!strcmp(k, "--prompt-ids")) {
            if (parse_ids(v, a)) {
                fprintf(stderr, "--prompt-ids: expected comma-separated token ids, got '%s'\n", v);
                return -1;
            }
        } else goto usage;
        i++;
    }
    if (!a->model || !a->device || !a->out || a->n_prompt == 0 || a->steps < 1 || a->steps > PARITY_MAX_STEPS)
        goto usage;
    if (strcmp(a->device, "cuda") && strcmp(a->device, "cpu")) goto usage;
    return 0;
usage:
    fprintf(stderr, "usage: %s --model DIR --device cuda|cpu --prompt-ids 1,2,3 --steps N --out FILE "
                    "[--threads N]\n",
            argv[0]);
    return -1;
}

/* One greedy generation: a prefill of the whole prompt, then decode steps. logits (steps x V)
 * may be NULL. Returns 0 or the backend's negative status. */
static int generate(struct backend *b, const struct parity_args *a, const int32_t *blocks, int n_blocks,
                    int32_t *tokens, float *logits)
{
    const int V = b->config.vocab_size;
    struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .logprobs = -1};
    int32_t *history = malloc((size_t)(a->n_prompt + a->steps) * sizeof *history);
    if (!history) return -1;
    memcpy(history, a->prompt, (size_t)a->n_prompt * sizeof *history);
    int rc = 0;
    for (int k = 0; k < a->steps; k++) {
        struct batch_seq q = {
            .n_new = k == 0 ? a->n_prompt : 1,
            .start_pos = k == 0 ? 0 : a->n_prompt + k - 1,
            .block_table = blocks,
            .n_blocks = n_blocks,
            .sample = true,
            .sampling = &greedy,
            .n_generated = (uint64_t)k,
            .history = history,
            .n_history = a->n_prompt + k,
            .n_output = k,
        };
        struct batch batch = {.n_seqs = 1,
                              .seqs = &q,
                              .n_tokens = q.n_new,
                              .tokens = k == 0 ? a->prompt : &tokens[k - 1],
                              .logits_out = logits ? logits + (size_t)k * V : NULL};
        struct sample_result r;
        if ((rc = backend_forward(b, &batch, &r)) < 0) break;
        tokens[k] = r.token;
        history[a->n_prompt + k] = r.token;
    }
    free(history);
    return rc;
}

static json_t *ids_json(const int32_t *ids, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    return arr;
}

int main(int argc, char **argv)
{
    struct parity_args a;
    if (parse_args(argc, argv, &a)) return 2;
    int rc = 1;
    char err[512] = "";
    struct model *m = NULL;
    struct backend *b = NULL;
    float *logits = NULL;
    int32_t *tokens = NULL, *tokens2 = NULL, *blocks = NULL;
    json_t *out = NULL;
    FILE *f = NULL;
    char bin_path[4200];

    double t0 = now_s();
    if (model_load(&m, a.model, MODEL_LOAD_AUTO, err, sizeof err) < 0) {
        fprintf(stderr, "model_load: %s\n", err);
        goto out;
    }
    double t1 = now_s();
    const int V = m->config.vocab_size;
    for (int i = 0; i < a.n_prompt; i++)
        if (a.prompt[i] >= V) {
            fprintf(stderr, "prompt id %d is not below the vocabulary size %d\n", a.prompt[i], V);
            goto out;
        }
    int n_blocks = (a.n_prompt + a.steps + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    struct backend_options bo = {.kv_blocks = 2 * n_blocks,
                                 .gpu_memory_utilization = 0.9,
                                 .max_batch_tokens = a.n_prompt > 256 ? a.n_prompt : 256,
                                 .max_batch_seqs = 4,
                                 .cpu.n_threads = a.threads,
                                 .device = 0};
    int crc = !strcmp(a.device, "cuda") ? backend_cuda_create(&b, m, &bo, err, sizeof err)
                                        : backend_cpu_create(&b, m, &bo, err, sizeof err);
    if (crc < 0) {
        fprintf(stderr, "backend_%s_create: %s\n", a.device, err);
        goto out;
    }
    double t2 = now_s();
    logits = malloc((size_t)a.steps * V * sizeof *logits);
    tokens = calloc((size_t)a.steps, sizeof *tokens);
    tokens2 = calloc((size_t)a.steps, sizeof *tokens2);
    blocks = malloc((size_t)2 * n_blocks * sizeof *blocks);
    if (!logits || !tokens || !tokens2 || !blocks) {
        fprintf(stderr, "out of memory for %d steps of %d logits\n", a.steps, V);
        goto out;
    }
    /* The two runs use different (reversed) blocks, so neither reads the other's KV. */
    for (int i = 0; i < n_blocks; i++) {
        blocks[i] = i;
        blocks[n_blocks + i] = 2 * n_blocks - 1 - i;
    }
    if (generate(b, &a, blocks, n_blocks, tokens, logits) < 0 ||
        generate(b, &a, blocks + n_blocks, n_blocks, tokens2, NULL) < 0) {
        fprintf(stderr, "forward: %s\n", b->error);
        goto out;
    }
    double t3 = now_s();

    snprintf(bin_path, sizeof bin_path, "%s.f32", a.out);
    if (!(f = fopen(bin_path, "wb")) || fwrite(logits, sizeof *logits, (size_t)a.steps * V, f) != (size_t)a.steps * V) {
        fprintf(stderr, "cannot write %s: %s\n", bin_path, strerror(errno));
        goto out;
    }
    if (fclose(f)) {
        f = NULL;
        fprintf(stderr, "cannot write %s: %s\n", bin_path, strerror(errno));
        goto out;
    }
    f = NULL;
    out = json_pack("{s:i, s:i, s:o, s:o, s:s, s:s, s:{s:f, s:f, s:f}}", "vocab_size", V, "steps", a.steps, "tokens",
                    ids_json(tokens, a.steps), "tokens_nologits", ids_json(tokens2, a.steps), "logits_file", bin_path,
                    "device", a.device, "seconds", "load", t1 - t0, "create", t2 - t1, "generate", t3 - t2);
    if (!out || json_dump_file(out, a.out, JSON_COMPACT) != 0) {
        fprintf(stderr, "cannot write %s\n", a.out);
        goto out;
    }
    fprintf(stderr, "parity_tool: %s %s: load %.2f s, backend %.2f s, 2 x %d steps %.2f s\n", a.device, a.model,
            t1 - t0, t2 - t1, a.steps, t3 - t2);
    rc = 0;
out:
    if (f) fclose(f);
    json_decref(out);
    free(logits);
    free(tokens);
    free(tokens2);
    free(blocks);
    backend_free(b);
    model_free(m);
    return rc;
}
