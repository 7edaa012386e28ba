/* State shared by the worker's HTTP side: the files worker/api/api_*.c, worker/cli/serve.c and
 * worker/api/controller_client.c. Everything here lives on the loop thread, except the engine,
 * which has its own thread and is reached only through engine.h's thread-safe calls. */
#ifndef SLUICE_WORKER_WORKER_H
#define SLUICE_WORKER_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/drain.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/net_addr.h"
#include "worker/api/request_struct.h"
#include "worker/api/worker_metrics.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/template/chat_format.h"
#include "worker/tokenizer/tokenizer.h"

struct gen_stream;
struct embed_job;
struct controller_link;

struct worker_options {
    const char *model_path;
    const char *model_names;        /* comma-separated; default: the model folder's name */
    const char *controller_address; /* one or more, comma-separated: registers with each */
    const char *worker_address;     /* how the controller reaches us */
    const char *host;
    long port;
    long limit_worker_concurrency;
    bool no_register;
    const char *device;             /* "cpu" | "cuda" */
    const char *seed;               /* "none" (a random seed per process) or an integer */
    long stream_interval;           /* FastChat frames every N tokens */
    const char *load_format;        /* "auto" | "dummy" */
    const char *quantization;       /* --quantization: "none" | "fp8" */
    const char *chat_template;      /* FILE */
    const char *tokenizer;          /* default: model_path */
    long max_num_seqs;
    long max_num_batched_tokens;
    long max_model_len;             /* 0: the model's */
    long kv_cache_tokens;           /* CPU: KV cache size in tokens */
    const char *kv_cache_dtype;     /* --kv-cache-dtype: "auto" | "fp8" | "fp8_e4m3" (kv_dtype.h) */
    double gpu_memory_utilization;
    bool deterministic;             /* CUDA: batch-invariant arithmetic */
    bool no_prefix_caching;         /* --no-enable-prefix-caching */
    struct cuda_options cuda;       /* CUDA: --enforce-eager, --cuda-step-timeout, ... (cuda_options.h) */
    const char *cuda_options;       /* --cuda-options KEY=VALUE,..., parsed into cuda */
    bool no_overlap_steps;          /* each step's tokens reach the host before the next step is queued */
    struct cpu_options cpu;         /* CPU: --threads (cpu_options.h) */
    long tensor_parallel_size;      /* ranks the model is sharded over, 0: not given (--num-gpus is its alias) */
    long num_gpus;
    double heartbeat_interval;      /* seconds */
    double speed;
    const char *internal_token;
    bool allow_unauthenticated;     /* no token: serve any caller, and allow a non-loopback --host */
    const char *log_level;
    double drain_timeout;           /* seconds generations may take to finish on SIGTERM */
    const char *access_log;         /* JSON request lines and spans: "-", "off" or a file */
    const char *pooling;            /* embeddings: "last" or "mean" */
    const char *tool_call_parser;   /* "auto" (the chat template's family) or a family's name */
    const char *reasoning_parser;   /* "qwen3", "deepseek_r1" or none */
};

struct worker {
    struct worker_options opt;
    uv_loop_t *loop;
    http_server *server;
    http_client *client;
    struct model *model;
    struct tokenizer *tok;
    struct backend *backend;
    struct engine *engine;
    struct chat_format chat;
    /* Structured output and output parsing (worker/api/output_setup.c): the grammar vocabulary
     * and compile cache (NULL on a backend without token masks), read by the requests' parsing
     * on libuv's thread pool (both are thread-safe). */
    struct grammar_vocab *grammar_vocab;
    struct grammar_cache *grammar_cache;
    struct gen_struct_env output_env;
    json_t *fastchat_conv;          /* /worker_get_conv_template's answer: fixed once the model loads */
    char model_names[16][128];
    int n_model_names;
    char address[NET_BASE_URL_MAX]; /* how the controller and gateways reach us */
    int max_model_len;
    uint64_t default_seed;          /* from --seed: unseeded requests get it plus their count */

    /* Live generations by engine request id: a small open-addressing table would do, but
     * the count is bounded by limit_worker_concurrency, so a linked list is enough. */
    struct gen_stream *streams;
    struct embed_job *embeds;       /* embedding requests in flight (api_embed.c) */
    enum engine_pooling pooling;    /* --pooling */
    uint64_t next_request_id;
    int active;                     /* requests accepted and not yet finished */

    /* Controller registration: one link per controller (controller_client.c). */
    uv_timer_t heartbeat_timer;
    bool heartbeat_timer_open;
    struct controller_link *links;
    int n_links;
    int unregister_in_flight;       /* unregisters not answered yet */

    /* The graceful stop (worker/api/shutdown.c): from the first SIGTERM or SIGINT on. */
    struct drain drain;
    bool draining;

    struct worker_metrics metrics;
};

/* worker/api/api_generate.c */
void api_generate(struct worker *w, http_request *req, int mode);
enum { GEN_MODE_NATIVE = 0, GEN_MODE_FASTCHAT_STREAM, GEN_MODE_FASTCHAT_BLOCKING };
void api_on_engine_event(const struct engine_event *ev, void *user);

/* worker/api/api_embed.c: FastChat's /worker_get_embeddings (fastchat true) and the native
 * /embed. api_embed_on_event takes the engine events of embedding requests (true when ev was
 * one). */
void api_embed(struct worker *w, http_request *req, bool fastchat);
bool api_embed_on_event(struct worker *w, const struct engine_event *ev);

/* worker/api/api_info.c */
void api_worker_get_status(struct worker *w, http_request *req);
void api_count_token(struct worker *w, http_request *req);
void api_model_details(struct worker *w, http_request *req);
void api_conv_template(struct worker *w, http_request *req);
void api_tokenize(struct worker *w, http_request *req);
void api_detokenize(struct worker *w, http_request *req);
void api_health(struct worker *w, http_request *req);
void api_metrics(struct worker *w, http_request *req);
json_t *worker_status_json(struct worker *w);

/* Seconds the oldest accepted request has waited for its first token (0 when none waits): the
 * queue wait the heartbeats report for autoscaling. */
double api_queue_wait_s(struct worker *w);

/* worker/api/controller_client.c: registers with every controller of --controller-address and
 * beats to each; returns -1 (logged) when the list is malformed. */
int controller_client_start(struct worker *w);
/* Stops the heartbeats (once, however often called). */
void controller_client_stop(struct worker *w);
/* Frees the links, once no call of theirs can answer (after http_client_free). */
void controller_client_free(struct worker *w);
/* Asks every controller to forget this worker now (POST /unregister_worker); the answers
 * bring w->unregister_in_flight back to 0. */
void controller_client_unregister(struct worker *w);

/* worker/api/shutdown.c: starts watching SIGINT and SIGTERM; closes that watch and the drain
 * timer (once, however often called). */
int worker_shutdown_watch(struct worker *w);
void worker_shutdown_close(struct worker *w);

#endif
