/* `sluice-worker bench`: times the engine alone, without HTTP: B sequences of random prompt
 * ids of length I, each generating exactly O tokens (EOS ignored), submitted together. Prints
 * prefill time, decode tokens/s and the time per decode step, one line per batch size, so
 * the same command measures the CPU and the CUDA backends. Each batch size first runs untimed
 * with 2 output tokens (--warmup), as the Hugging Face baseline does: the first use of a shape
 * loads its GPU kernels (CUDA loads modules lazily, at their first launch) and captures its CUDA
 * graph, neither of which a timed run should pay for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/flags.h"
#include "worker/model/fp8.h"
#include "common/log.h"
#include "worker/backend/cpu/cpu_options.h"
#include "worker/backend/cuda/cuda_options.h"
#include "worker/backend/kv_dtype.h"
#include "worker/cli/cli.h"
#include "worker/engine/engine.h"

struct bench_run {
    int pending;
    int first_tokens;
    double t_start, t_first_all, t_end;
    long generated;
    int errors;
    char error[512];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_event(const struct engine_event *ev, void *user)
{
    struct bench_run *r = user;
    r->generated += ev->n_tokens;
    /* A sequence's first token: the batch is prefilled once every sequence has one. Times are
     * the engine's: on a busy machine the loop may take several steps' events in one pass. */
    if (ev->n_tokens > 0 && ev->completion_tokens == ev->n_tokens && ++r->first_tokens == 0)
        r->t_first_all = ev->time_ms * 1e-3;
    if (ev->finish == FINISH_NONE) return;
    if (ev->finish == FINISH_ERROR) {
        r->errors++;
        snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "error");
    }
    if (--r->pending == 0) {
        r->t_end = ev->time_ms * 1e-3;
        uv_stop(uv_default_loop());
    }
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

static uint64_t next_request_id = 1;

/* One round: B requests of input_len random ids and output_len tokens each, submitted at once;
 * returns when all are done (*run has the times) or -1 after printing why some failed. The
 * engine's events land in the bench_run it was created with, which is *run. */
static int bench_round(struct engine *e, struct bench_run *run, int B, long input_len, long output_len, int vocab)
{
    memset(run, 0, sizeof *run);
    run->pending = B;
    run->first_tokens = -B; /* reaches 0 when every sequence has its first token */
    run->t_start = now_s();
    for (int i = 0; i < B; i++) {
        struct engine_request *r = calloc(1, sizeof *r);
        r->id = next_request_id++;
        r->n_prompt = (int32_t)input_len;
        r->prompt = malloc((size_t)input_len * sizeof *r->prompt);
        for (long k = 0; k < input_len; k++) r->prompt[k] = (int32_t)(3 + rng_next() % (uint32_t)(vocab - 3));
        r->sampling = (struct sampling_params){
            .temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1, .logprobs = -1};
        r->max_tokens = (int32_t)output_len;
        r->ignore_eos = true;
        r->skip_special = true;
        engine_submit(e, r);
    }
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    if (run->errors) {
        fprintf(stderr, "sluice-worker bench: %d sequences failed: %s\n", run->errors, run->error);
        return -1;
    }
    return 0;
}

int cli_bench_main(int argc, char **argv)
{
    const char *model_path = NULL, *tokenizer = NULL, *device = "cuda", *load_format = "auto", *batches = "1,8,64", *quantization = "none",
               *kv_cache_dtype = "auto", *log_level = "warn";
    long input_len = 128, output_len = 128, kv_tokens = 0, max_batched = 8192, warmup = 1;
    double gpu_util = 0.9;
    bool deterministic = false, no_overlap = false;
    long tp_size = 0;
    struct cpu_options cpu = {0};
    struct cuda_options cuda = {.step_timeout_s = CUDA_STEP_TIMEOUT_S};
    const char *cuda_text = NULL;
    const struct flag_spec specs[] = {
        {"model-path", FLAG_STRING, &model_path, NULL, "PATH", "model directory, .gguf, or config.json folder with --load-format dummy", 0, 0},
        {"tokenizer", FLAG_STRING, &tokenizer, NULL, "PATH", "tokenizer (default: the model's)", 0, 0},
        {"device", FLAG_STRING, &device, NULL, "cpu|cuda", "backend", 0, 0},
        {"load-format", FLAG_STRING, &load_format, NULL, "auto|dummy", "dummy: random weights", 0, 0},
        MODEL_QUANTIZATION_FLAG_SPEC(&quantization),
        {"batch-sizes", FLAG_STRING, &batches, NULL, "B,B,..", "batch sizes to time", 0, 0},
        {"input-len", FLAG_INT, &input_len, NULL, "N", "prompt tokens per sequence", 1, 1 << 20},
        {"output-len", FLAG_INT, &output_len, NULL, "N", "generated tokens per sequence", 1, 1 << 20},
        {"kv-cache-tokens", FLAG_INT, &kv_tokens, NULL, "N", "CPU KV cache (default: enough for the largest batch)", 0, 1 << 28},
        KV_CACHE_DTYPE_FLAG_SPEC(&kv_cache_dtype),
        {"max-num-batched-tokens", FLAG_INT, &max_batched, NULL, "N", "tokens per step", 16, 1 << 20},
        {"warmup", FLAG_INT, &warmup, NULL, "N", "untimed rounds of 2 output tokens before each batch size", 0, 100},
        {"gpu-memory-utilization", FLAG_DOUBLE, &gpu_util, NULL, "F", "CUDA memory share", 0.05, 1},
        CPU_OPTIONS_FLAG_SPECS(&cpu),
        {"tensor-parallel-size", FLAG_INT, &tp_size, NULL, "N", "ranks to shard the model over (see the worker's flag) (default: none)", 1, 64},
        {"deterministic", FLAG_BOOL, &deterministic, NULL, NULL, "CUDA: batch-invariant arithmetic (see the worker's flag)", 0, 0},
        CUDA_OPTIONS_FLAG_SPECS(&cuda, &cuda_text),
        {"no-overlap-steps", FLAG_BOOL, &no_overlap, NULL, NULL, "take each step's tokens before queueing the next step (see the worker's flag)", 0, 0},
        {"log-level", FLAG_STRING, &log_level, NULL, "LEVEL", "log level", 0, 0},
        {0},
    };
    int rc = flags_parse("sluice-worker bench", "Times the engine alone: batch x input x output.", specs,
                         argc, argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    log_init("bench");
    if (log_level_parse(log_level) >= 0) log_set_level((enum log_level)log_level_parse(log_level));
    if (!model_path) {
        fprintf(stderr, "sluice-worker bench: --model-path is required\n");
        return 2;
    }
    char opt_err[512];
    if (cuda_options_parse(&cuda, cuda_text, opt_err, sizeof opt_err) != 0) {
        fprintf(stderr, "sluice-worker bench: %s\n", opt_err);
        return 2;
    }
    int sizes[32], n_sizes = 0, max_b = 0;
    for (const char *p = batches; *p && n_sizes < 32;) {
        sizes[n_sizes] = atoi(p);
        if (sizes[n_sizes] < 1) {
            fprintf(stderr, "sluice-worker bench: --batch-sizes must be positive integers\n");
            return 2;
        }
        if (sizes[n_sizes] > max_b) max_b = sizes[n_sizes];
        n_sizes++;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }

    char err[1024];
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    struct backend *b = NULL;
    struct engine *e = NULL;
    int status = 1;
    enum model_quantization quant;
    enum kv_cache_dtype kv_dtype;
    if (model_quantization_parse(quantization, &quant, err, sizeof err) != 0 ||
        kv_cache_dtype_parse(kv_cache_dtype, &kv_dtype, err, sizeof err) != 0 ||
        model_load(&m, model_path, strcmp(load_format, "dummy") ? MODEL_LOAD_AUTO : MODEL_LOAD_DUMMY, err,
                   sizeof err) != 0 ||
        model_quantize(m, quant, err, sizeof err) != 0) {
        fprintf(stderr, "sluice-worker bench: %s\n", err);
        goto out;
    }
    if (tok_load(&tok, tokenizer ? tokenizer : model_path, err, sizeof err) != 0) {
        fprintf(stderr, "sluice-worker bench: %s\n", err);
        goto out;
    }
    long seq_tokens = input_len + output_len;
    struct backend_options bo = {
        .gpu_memory_utilization = gpu_util,
        .kv_dtype = kv_dtype,
        .max_batch_tokens = (int32_t)max_batched,
        .max_batch_seqs = max_b,
        .tensor_parallel_size = (int32_t)tp_size,
        .deterministic = deterministic,
        .cpu = cpu,
        .cuda = cuda,
        .kv_blocks = !strcmp(device, "cpu")
                         ? (int32_t)((kv_tokens ? kv_tokens : max_b * (seq_tokens + KV_BLOCK_SIZE)) / KV_BLOCK_SIZE + 1)
                         : 0,
    };
    rc = !strcmp(device, "cpu") ? backend_cpu_create(&b, m, &bo, err, sizeof err)
                                : backend_cuda_create(&b, m, &bo, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "sluice-worker bench: %s\n", err);
        goto out;
    }
    struct bench_run run;
    struct engine_options eo = {.max_num_seqs = max_b, .max_num_batched_tokens = (int32_t)max_batched,
                                .max_model_len = (int32_t)(seq_tokens + 1), .seed = 1, .overlap_never = no_overlap};
    if (engine_create(&e, b, tok, &eo, uv_default_loop(), on_event, &run) != 0) {
        fprintf(stderr, "sluice-worker bench: cannot start the engine\n");
        goto out;
    }
    printf("%-6s %-6s %-6s %12s %14s %14s %12s\n", "batch", "input", "output", "prefill_s",
           "decode_tok/s", "step_ms", "total_s");
    for (int si = 0; si < n_sizes; si++) {
        const int B = sizes[si];
        for (long w = 0; w < warmup; w++)
            if (bench_round(e, &run, B, input_len, output_len < 2 ? output_len : 2, m->config.vocab_size) != 0)
                goto out;
        if (bench_round(e, &run, B, input_len, output_len, m->config.vocab_size) != 0) goto out;
        double prefill = run.t_first_all - run.t_start;
        double decode = run.t_end - run.t_first_all;
        long decode_tokens = (long)B * (output_len - 1);
        /* Seconds to the microsecond: a tiny model prefills a short batch in well under a millisecond. */
        printf("%-6d %-6ld %-6ld %12.6f %14.1f %14.3f %12.6f\n", B, input_len, output_len, prefill,
               decode > 0 ? decode_tokens / decode : 0.0,
               output_len > 1 ? 1000.0 * decode / (double)(output_len - 1) : 0.0, run.t_end - run.t_start);
        fflush(stdout);
    }
    status = 0;
out:
    engine_free(e);
    backend_free(b);
    tok_free(tok);
    model_free(m);
    return status;
}
