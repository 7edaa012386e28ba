/* sluice-worker: loads a model onto a device, runs the engine on its own thread, and serves
 * FastChat's worker API plus the native stream on one libuv loop. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/flags.h"
#include "common/http_flags.h"
#include "worker/model/fp8.h"
#include "common/jsonlog.h"
#include "common/log.h"
#include "common/net_addr.h"
#include "common/utf8.h"
#include "worker/api/gen_output.h"
#include "worker/api/worker.h"
#include "worker/backend/cpu/cpu_options.h"
#include "worker/backend/cuda/cuda_options.h"
#include "worker/backend/kv_dtype.h"
#include "worker/cli/cli.h"

static void route(http_request *req, void *user)
{
    struct worker *w = user;
    const char *path = http_request_path(req);
    bool post = strcmp(http_request_method(req), "POST") == 0;
    bool get = strcmp(http_request_method(req), "GET") == 0;
    const char *allow = "POST";
    char shown[200]; /* the path as messages quote it: a client's bytes, cleaned and shortened */
    /* Every endpoint but the probes is internal (docs/PROTOCOL.md, "Authentication"). */
    struct auth_internal a = {.token = w->opt.internal_token, .allow_unauthenticated = w->opt.allow_unauthenticated,
                              .program = "sluice-worker"};
    if (strcmp(path, "/health") && strcmp(path, "/metrics") && auth_internal_check(req, &a) != AUTH_OK) return;
    static const struct {
        const char *path;
        bool get_ok;
        void (*fn)(struct worker *, http_request *);
    } routes[] = {
        {"/worker_get_status", true, api_worker_get_status},
        {"/count_token", false, api_count_token},
        {"/model_details", true, api_model_details},
        {"/worker_get_conv_template", true, api_conv_template},
        {"/tokenize", false, api_tokenize},
        {"/detokenize", false, api_detokenize},
    };
    if (!strcmp(path, "/embed") || !strcmp(path, "/worker_get_embeddings")) {
        if (!post) goto method;
        api_embed(w, req, path[1] == 'w');
        return;
    }
    if (!strcmp(path, "/generate") || !strcmp(path, "/worker_generate_stream") ||
        !strcmp(path, "/worker_generate")) {
        if (!post) goto method;
        api_generate(w, req,
                     !strcmp(path, "/generate")                  ? GEN_MODE_NATIVE
                     : !strcmp(path, "/worker_generate_stream") ? GEN_MODE_FASTCHAT_STREAM
                                                                 : GEN_MODE_FASTCHAT_BLOCKING);
        return;
    }
    if (!strcmp(path, "/health") || !strcmp(path, "/metrics")) {
        if (!get) {
            allow = "GET";
            goto method;
        }
        if (path[1] == 'h' && w->draining) {
            /* Alive, finishing what it has, taking nothing new: a readiness probe says no. */
            http_respond_json(req, 503, json_pack("{s:s, s:i}", "status", "draining", "running", w->active));
            return;
        }
        (path[1] == 'h' ? api_health : api_metrics)(w, req);
        return;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path) != 0) continue;
        if (routes[i].get_ok) allow = "GET, POST";
        if (!post && !(get && routes[i].get_ok)) goto method;
        routes[i].fn(w, req);
        return;
    }
    http_respond_error(req, 404, NULL, "no such endpoint: %s", utf8_clip(shown, sizeof shown, path, strlen(path)));
    return;
method:
    http_response_header(req, "Allow", allow);
    http_respond_error(req, 405, NULL, "method %s is not allowed on %s", http_request_method(req),
                       utf8_clip(shown, sizeof shown, path, strlen(path)));
}

static void set_model_names(struct worker *w)
{
    if (w->opt.model_names && *w->opt.model_names) {
        char *copy = strdup(w->opt.model_names), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t && w->n_model_names < 16; t = strtok_r(NULL, ",", &save))
            if (*t) snprintf(w->model_names[w->n_model_names++], sizeof w->model_names[0], "%s", t);
        free(copy);
        if (w->n_model_names) return;
    }
    char *copy = strdup(w->opt.model_path);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *base = basename(copy);
    char *dot = strstr(base, ".gguf");
    if (dot && dot[5] == '\0') *dot = '\0';
    snprintf(w->model_names[w->n_model_names++], sizeof w->model_names[0], "%s", base);
    free(copy);
}

static void on_server_closed(void *arg)
{
    *(bool *)arg = true;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* --seed: "none" draws the default seed from the kernel, so that requests without a seed
 * differ from one worker (and one run) to the next; a number makes them reproducible. The
 * engine gives each unseeded request that base plus its own count, which the sampler mixes. */
static int parse_seed(const char *text, uint64_t *out)
{
    if (!text || !strcmp(text, "none")) {
        if (getrandom(out, sizeof *out, 0) == (ssize_t)sizeof *out) return 0;
        *out = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
        return 0;
    }
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int load_everything(struct worker *w)
{
    char err[1024] = "";
    enum model_load_format fmt = MODEL_LOAD_AUTO;
    if (!strcmp(w->opt.load_format, "dummy")) {
        fmt = MODEL_LOAD_DUMMY;
    } else if (strcmp(w->opt.load_format, "auto") != 0) {
        log_error("--load-format must be auto or dummy, not '%s'", w->opt.load_format);
        return -1;
    }
    enum model_quantization quant;
    enum kv_cache_dtype kv_dtype;
    if (model_quantization_parse(w->opt.quantization, &quant, err, sizeof err) != 0 ||
        kv_cache_dtype_parse(w->opt.kv_cache_dtype, &kv_dtype, err, sizeof err) != 0) {
        log_error("%s", err);
        return -1;
    }
    if (model_load(&w->model, w->opt.model_path, fmt, err, sizeof err) != 0 ||
        model_quantize(w->model, quant, err, sizeof err) != 0) {
        log_error("cannot load the model: %s", err);
        return -1;
    }
    const char *tok_path = w->opt.tokenizer && *w->opt.tokenizer ? w->opt.tokenizer : w->opt.model_path;
    if (tok_load(&w->tok, tok_path, err, sizeof err) != 0) {
        log_error("cannot load the tokenizer: %s", err);
        return -1;
    }
    if (chat_format_init(&w->chat, w->tok, tok_path, w->opt.chat_template, err, sizeof err) != 0) {
        log_error("--chat-template: %s", err);
        return -1;
    }
    struct backend_options bo = {
        .kv_blocks = 0,
        .kv_dtype = kv_dtype,
        .gpu_memory_utilization = w->opt.gpu_memory_utilization,
        .max_batch_tokens = (int32_t)w->opt.max_num_batched_tokens,
        .max_batch_seqs = (int32_t)w->opt.max_num_seqs,
        .tensor_parallel_size = (int32_t)w->opt.tensor_parallel_size,
        .deterministic = w->opt.deterministic,
        .cpu = w->opt.cpu,
        .cuda = w->opt.cuda,
    };
    int rc;
    if (!strcmp(w->opt.device, "cpu")) {
        bo.kv_blocks = (int32_t)((w->opt.kv_cache_tokens + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE);
        rc = backend_cpu_create(&w->backend, w->model, &bo, err, sizeof err);
    } else if (!strcmp(w->opt.device, "cuda")) {
        rc = backend_cuda_create(&w->backend, w->model, &bo, err, sizeof err);
    } else {
        log_error("--device must be cpu or cuda, not '%s'", w->opt.device);
        return -1;
    }
    if (rc != 0) {
        log_error("cannot start the %s backend: %s", w->opt.device, err);
        return -1;
    }
    int ctx = (int)engine_model_context(w->backend);
    if (w->opt.max_model_len > 0 && w->opt.max_model_len < ctx) ctx = (int)w->opt.max_model_len;
    long kv_tokens = (long)w->backend->num_kv_blocks * KV_BLOCK_SIZE;
    /* A model whose every layer slides keeps only its window in the cache (engine.h). */
    if (kv_tokens < ctx && !engine_windowed(w->backend, (int32_t)w->opt.max_num_batched_tokens)) {
        log_warn("the KV cache holds %ld tokens, fewer than the context length %d: limiting the context to it",
                 kv_tokens, ctx);
        ctx = (int)kv_tokens;
    }
    w->max_model_len = ctx;
    struct engine_options eo = {
        .max_num_seqs = (int32_t)w->opt.max_num_seqs,
        .max_num_batched_tokens = (int32_t)w->opt.max_num_batched_tokens,
        .max_model_len = ctx,
        .seed = w->default_seed,
        .no_prefix_caching = w->opt.no_prefix_caching,
        /* Under --deterministic the CUDA backend's decode attention is not its prefill's. */
        .prefix_cache_prompt_only = w->opt.deterministic && !strcmp(w->opt.device, "cuda"),
        .overlap_never = w->opt.no_overlap_steps,
    };
    if (worker_output_setup(w, err, sizeof err) != 0) {
        log_error("%s", err);
        return -1;
    }
    if (engine_create(&w->engine, w->backend, w->tok, &eo, w->loop, api_on_engine_event, w) != 0) {
        log_error("cannot start the engine");
        return -1;
    }
    log_info("model %s (%s, %d layers, vocab %d) on %s: context %d tokens, KV cache %ld tokens, prefix caching %s",
             w->model_names[0], w->model->config.arch_name, w->model->config.n_layers,
             w->model->config.vocab_size, w->backend->name, ctx, kv_tokens, w->opt.no_prefix_caching ? "off" : "on");
    return 0;
}

int worker_serve_main(int argc, char **argv)
{
    static struct worker worker;
    struct worker *w = &worker;
    bool prefix_caching_on = false; /* the default already: accepted for vLLM's command lines */
    bool auto_tool_choice = false;  /* likewise */
    struct worker_options *o = &w->opt;
    *o = (struct worker_options){
        .controller_address = "http://127.0.0.1:21001",
        .host = "127.0.0.1",
        .port = 21002,
        .limit_worker_concurrency = 1024,
        .device = "cuda",
        .seed = "none",
        .stream_interval = 2,
        .load_format = "auto",
        .quantization = "none",
        .max_num_seqs = 256,
        .max_num_batched_tokens = 4096,
        .kv_cache_tokens = 16384,
        .kv_cache_dtype = "auto",
        .tensor_parallel_size = 0, /* not given: no communicator (as 1 on the CPU) */
        .num_gpus = 0,
        .gpu_memory_utilization = 0.9,
        .heartbeat_interval = 10,
        .speed = 1,
        .log_level = "info",
        .drain_timeout = 30,
        .cuda = {.step_timeout_s = CUDA_STEP_TIMEOUT_S},
        .access_log = "-",
        .pooling = "last",
        .tool_call_parser = "auto",
        .reasoning_parser = "none",
    };
    struct http_server_flags http = HTTP_SERVER_FLAGS_DEFAULT;
    const struct flag_spec specs[] = {
        {"model-path", FLAG_STRING, &o->model_path, NULL, "PATH", "model directory (Hugging Face) or .gguf file", 0, 0},
        {"model-names", FLAG_STRING, &o->model_names, NULL, "A,B", "names to serve the model under (default: the folder's name)", 0, 0},
        {"controller-address", FLAG_STRING, &o->controller_address, "SLUICE_CONTROLLER_ADDRESS", "URL[,URL...]", "the controllers to register with (each of them: high availability)", 0, 0},
        {"worker-address", FLAG_STRING, &o->worker_address, NULL, "URL", "address the controller and gateway reach this worker at (default: http://HOST:PORT)", 0, 0},
        {"host", FLAG_STRING, &o->host, NULL, "ADDR", "address to listen on (one other than loopback needs --internal-token or --allow-unauthenticated-workers)", 0, 0},
        {"port", FLAG_INT, &o->port, NULL, "PORT", "port to listen on", 0, 65535},
        {"limit-worker-concurrency", FLAG_INT, &o->limit_worker_concurrency, NULL, "N", "requests in flight at most; more get 503", 1, 1e7},
        {"no-register", FLAG_BOOL, &o->no_register, NULL, NULL, "do not register with the controller", 0, 0},
        {"device", FLAG_STRING, &o->device, NULL, "cpu|cuda", "where to run the model", 0, 0},
        {"seed", FLAG_STRING, &o->seed, NULL, "N|none", "default seed of requests that bring none (none: random, so they differ; N: reproducible)", 0, 0},
        {"stream-interval", FLAG_INT, &o->stream_interval, NULL, "N", "FastChat stream: a frame every N tokens", 1, 1e6},
        {"load-format", FLAG_STRING, &o->load_format, NULL, "auto|dummy", "dummy: random weights for the config.json", 0, 0},
        MODEL_QUANTIZATION_FLAG_SPEC(&o->quantization),
        {"tokenizer", FLAG_STRING, &o->tokenizer, NULL, "PATH", "tokenizer directory, tokenizer.json or .gguf (default: the model's)", 0, 0},
        {"chat-template", FLAG_STRING, &o->chat_template, NULL, "FILE", "chat template: a Jinja file, as vLLM's, or a simple format as JSON (default: the model's own)", 0, 0},
        {"max-num-seqs", FLAG_INT, &o->max_num_seqs, NULL, "N", "sequences running at once at most", 1, 65536},
        {"max-num-batched-tokens", FLAG_INT, &o->max_num_batched_tokens, NULL, "N", "tokens per engine step at most (prefill is chunked)", 16, 1 << 20},
        {"max-model-len", FLAG_INT, &o->max_model_len, NULL, "N", "context length (default: the model's)", 0, 1 << 24},
        {"kv-cache-tokens", FLAG_INT, &o->kv_cache_tokens, NULL, "N", "CPU: KV cache size in tokens", 16, 1 << 26},
        KV_CACHE_DTYPE_FLAG_SPEC(&o->kv_cache_dtype),
        {"gpu-memory-utilization", FLAG_DOUBLE, &o->gpu_memory_utilization, NULL, "F", "CUDA: share of GPU memory to use", 0.05, 1.0},
        CPU_OPTIONS_FLAG_SPECS(&o->cpu),
        {"tensor-parallel-size", FLAG_INT, &o->tensor_parallel_size, NULL, "N", "shard the model over N ranks (Megatron-style tensor parallelism: attention heads, MLP channels and the vocabulary split, two all-reduces per layer); one worker, registered once. CPU: N threads sharing --threads. CUDA: one GPU per rank, the first N that CUDA_VISIBLE_DEVICES shows, joined by NCCL; 1 runs the NCCL path on one GPU (its all-reduces are no-ops) (default: none, one rank without a communicator)", 1, 64},
        {"num-gpus", FLAG_INT, &o->num_gpus, NULL, "N", "FastChat's name for --tensor-parallel-size (default: none)", 1, 64},
        {"deterministic", FLAG_BOOL, &o->deterministic, NULL, NULL, "CUDA: a request's output does not depend on what shares its batch (greedy equals the request alone); slower prefill and large batches (README)", 0, 0},
        {"enable-prefix-caching", FLAG_BOOL, &prefix_caching_on, NULL, NULL, "reuse the KV of prompt prefixes seen before (the default)", 0, 0},
        {"no-enable-prefix-caching", FLAG_BOOL, &o->no_prefix_caching, NULL, NULL, "compute every prompt in full, sharing no KV between requests", 0, 0},
        CUDA_OPTIONS_FLAG_SPECS(&o->cuda, &o->cuda_options),
        {"tool-call-parser", FLAG_STRING, &o->tool_call_parser, NULL, "NAME", "how tool calls are read from the output: auto (the syntax the chat template writes), json, llama3_json, hermes, mistral or deepseek_v3", 0, 0},
        {"enable-auto-tool-choice", FLAG_BOOL, &auto_tool_choice, NULL, NULL, "accepted for vLLM's command lines: tool_choice auto is always on", 0, 0},
        {"reasoning-parser", FLAG_STRING, &o->reasoning_parser, NULL, "NAME", "put a chat answer's <think> reasoning in reasoning_content: qwen3, deepseek_r1 or none", 0, 0},
        {"no-overlap-steps", FLAG_BOOL, &o->no_overlap_steps, NULL, NULL, "take each step's tokens before queueing the next step (steps overlap by default where the device runs them on its own: CUDA)", 0, 0},
        {"heartbeat-interval", FLAG_DOUBLE, &o->heartbeat_interval, "SLUICE_HEARTBEAT_INTERVAL", "SECONDS", "seconds between heartbeats", 0.05, 3600},
        {"speed", FLAG_DOUBLE, &o->speed, NULL, "F", "relative speed reported to the controller", 0.001, 1e6},
        {"internal-token", FLAG_STRING, &o->internal_token, "SLUICE_INTERNAL_TOKEN", "TOKEN", "bearer token sent to the controller and required on every endpoint but /health and /metrics", 0, 0},
        {"allow-unauthenticated-workers", FLAG_BOOL, &o->allow_unauthenticated, "SLUICE_ALLOW_UNAUTHENTICATED_WORKERS", NULL, "without --internal-token, serve generation and the other internal endpoints to any caller, not only loopback, and allow a non-loopback --host (FastChat's behaviour; insecure)", 0, 0},
        {"drain-timeout", FLAG_DOUBLE, &o->drain_timeout, "SLUICE_DRAIN_TIMEOUT", "SECONDS", "on SIGTERM/SIGINT, how long generations in flight may take to finish before they are ended", 0, 86400},
        {"access-log", FLAG_STRING, &o->access_log, "SLUICE_ACCESS_LOG", "DEST", "one JSON line per generation request and per trace span: '-' standard output, 'off', or a file", 0, 0},
        {"pooling", FLAG_STRING, &o->pooling, NULL, "last|mean", "embeddings (/v1/embeddings): the last token's final hidden state, or the mean over the input's tokens; L2-normalised either way", 0, 0},
        HTTP_SERVER_FLAG_SPECS(&http),
        {"log-level", FLAG_STRING, &o->log_level, "SLUICE_LOG_LEVEL", "LEVEL", "debug, info, warn or error", 0, 0},
        {0},
    };
    int rc = flags_parse("sluice-worker", cli_serve_summary(), specs, argc, argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    log_init("worker");
    int level = log_level_parse(o->log_level);
    if (level < 0) {
        fprintf(stderr, "sluice-worker: --log-level must be debug, info, warn or error\n");
        return 2;
    }
    log_set_level((enum log_level)level);
    if (prefix_caching_on && o->no_prefix_caching) {
        fprintf(stderr, "sluice-worker: --enable-prefix-caching and --no-enable-prefix-caching contradict each other\n");
        return 2;
    }
    if (o->num_gpus && o->tensor_parallel_size && o->num_gpus != o->tensor_parallel_size) {
        fprintf(stderr, "sluice-worker: --num-gpus %ld and --tensor-parallel-size %ld disagree (one is the other's alias)\n",
                o->num_gpus, o->tensor_parallel_size);
        return 2;
    }
    if (o->num_gpus) o->tensor_parallel_size = o->num_gpus;
    enum kv_cache_dtype kv_dtype;
    char kv_err[256];
    if (kv_cache_dtype_parse(o->kv_cache_dtype, &kv_dtype, kv_err, sizeof kv_err) != 0) {
        fprintf(stderr, "sluice-worker: %s\n", kv_err);
        return 2;
    }
    if (!o->model_path) {
        fprintf(stderr, "sluice-worker: --model-path is required (see --help)\n");
        return 2;
    }
    struct auth_internal policy = {.token = o->internal_token, .allow_unauthenticated = o->allow_unauthenticated,
                                   .program = "sluice-worker"};
    if (auth_listen_check(&policy, o->host) != 0) return 2;
    if (jsonlog_open(o->access_log, "worker") != 0) return 2;
    if (o->worker_address && *o->worker_address) {
        const char *why = "";
        if (net_base_url_parse(o->worker_address, w->address, sizeof w->address, &why) != 0) {
            fprintf(stderr, "sluice-worker: --worker-address '%s' is not http://host:port: %s\n", o->worker_address, why);
            return 2;
        }
    }
    char opt_err[512];
    if (cuda_options_parse(&o->cuda, o->cuda_options, opt_err, sizeof opt_err) != 0) {
        fprintf(stderr, "sluice-worker: %s\n", opt_err);
        return 2;
    }
    if (!strcmp(o->pooling, "last") || !strcmp(o->pooling, "mean")) {
        w->pooling = o->pooling[0] == 'l' ? ENGINE_POOL_LAST : ENGINE_POOL_MEAN;
    } else {
        fprintf(stderr, "sluice-worker: --pooling must be last or mean, not '%s'\n", o->pooling);
        return 2;
    }
    if (parse_seed(o->seed, &w->default_seed) != 0) {
        fprintf(stderr, "sluice-worker: --seed must be an integer or none, not '%s'\n", o->seed);
        return 2;
    }
    w->loop = uv_default_loop();
    set_model_names(w);
    if (worker_metrics_init(&w->metrics) != 0 || load_everything(w) != 0) return 1;

    struct http_server_config sc = {.host = o->host, .port = (int)o->port, .max_body_bytes = 16u << 20};
    http_server_flags_apply(&http, &sc);
    if (http_server_init(&w->server, w->loop, &sc, route, w) != 0) {
        log_error("cannot listen on %s:%ld", o->host, o->port);
        return 1;
    }
    if (!(o->worker_address && *o->worker_address))
        snprintf(w->address, sizeof w->address, strchr(o->host, ':') ? "http://[%s]:%d" : "http://%s:%d", o->host,
                 http_server_port(w->server));
    if (http_client_init(&w->client, w->loop) != 0 || auth_client_token(w->client, o->internal_token) != 0) {
        log_error("cannot start the HTTP client");
        return 1;
    }
    if (controller_client_start(w) != 0) return 2;
    log_info("serving %s at %s", w->model_names[0], w->address);
    if (worker_shutdown_watch(w) != 0) {
        log_error("cannot watch SIGINT and SIGTERM");
        return 1;
    }

    uv_run(w->loop, UV_RUN_DEFAULT);

    /* Here after a drain (worker/api/shutdown.c), the one way out. A signal now takes its default
     * action: what follows is short. Requests still open (only when the drain ran out of time)
     * are closed first: their on_close callbacks abort their sequences, which needs the
     * engine; the engine thread stops next (its undelivered events are dropped), then the
     * rest closes. */
    worker_shutdown_close(w);
    controller_client_stop(w);
    bool server_closed = false;
    http_server_close(w->server, on_server_closed, &server_closed);
    w->server = NULL;
    while (!server_closed) uv_run(w->loop, UV_RUN_ONCE);
    engine_free(w->engine);
    worker_output_free(w); /* after the engine: its sequences held compiled grammars */
    http_client_free(w->client);
    controller_client_free(w);
    uv_walk(w->loop, close_walk, NULL);
    uv_run(w->loop, UV_RUN_DEFAULT);
    backend_free(w->backend);
    json_decref(w->fastchat_conv);
    chat_format_free(&w->chat);
    tok_free(w->tok);
    model_free(w->model);
    worker_metrics_free(&w->metrics);
    return 0;
}
