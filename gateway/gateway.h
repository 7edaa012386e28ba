/* The gateway instance: configuration and the shared objects every request handler uses.
 * One instance per process, living on one libuv loop. */
#ifndef SLUICE_GATEWAY_GATEWAY_H
#define SLUICE_GATEWAY_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/drain.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/trace.h"
#include "gateway/auth.h"
#include "gateway/controllers.h"
#include "gateway/metrics_gw.h"
#include "gateway/models_cache.h"
#include "gateway/ratelimit_gw.h"

struct gw_config {
    const char *host;
    long port;
    const char *controller_address; /* one or more, comma-separated */
    const char *api_keys;
    const char *api_key_file;
    long max_body_bytes;
    long max_concurrent_requests; /* 0: no limit */
    long controller_timeout_ms;
    long worker_connect_timeout_ms;
    long worker_idle_timeout_ms;  /* a stream silent this long is a failed worker */
    long max_stream_buffer;
    long models_cache_ms;
    double drain_timeout_s;       /* SIGTERM: how long open requests may take to finish */
    const char *rate_limit_file;  /* NULL: no rate limits */
    const char *access_log;       /* "-", "off" or a file (common/jsonlog.h) */
    bool log_requests;            /* access lines carry the prompt */
    const char *allowed_origins;  /* CORS: "*" or origins, comma-separated; NULL or "": off */
};

struct gw_gen;
struct gw_fwd;

struct gw {
    struct gw_config cfg;
    uv_loop_t *loop;
    http_server *server;
    http_client *client;
    gw_auth *auth;
    gw_ctls *ctls;    /* the controllers, with failover */
    gw_rl *rl;        /* rate limits per API key */
    gw_models *models;
    gw_metrics *metrics;
    unsigned active;  /* generation requests in flight */
    struct gw_gen *gens; /* those requests (proxy.c) */
    struct gw_fwd *fwds; /* embeddings, tokenize and detokenize in flight (forward.c) */
    int64_t started;  /* unix seconds */

    /* The graceful stop (shutdown.c): from the first SIGTERM or SIGINT on, no new connections,
     * 503 for new requests, open ones finish (bounded by drain_timeout_s), then the loop ends. */
    struct drain drain;
    bool draining;

    /* SIGHUP (reload.c): the API key file, the rate limits and the access log file again. */
    uv_signal_t sighup;
    bool sighup_open;
};

/* What the gateway knows of a request from its start (handlers.c), attached to it with
 * http_request_set_data until it is answered: gw_respond_* log its access line and free it; a
 * generation request takes it over (proxy.c) and logs the line at its end. */
struct gw_reqinfo {
    char request_id[TRACE_REQUEST_ID_SIZE]; /* the client's X-Request-Id, or a new one */
    struct trace_span span;                 /* this request's span: the client's trace or a new one */
    uint64_t start_ns;                      /* uv_hrtime */
    char peer[64];
    char method[16];
    char path[128];
};

void gw_reqinfo_free(struct gw_reqinfo *info);
/* Writes the request's access line and its span's line; extra (stolen, may be NULL) adds
 * fields. /health and /metrics are not logged: probes and scrapers would drown the rest. */
void gw_access_log(struct gw *g, const struct gw_reqinfo *info, const char *route, int status, json_t *extra);

/* reload.c: SIGHUP reloads the API key file and the rate limits (a file that cannot be read
 * leaves them as they were) and opens the access log file again. */
int gw_reload_watch(struct gw *g);
void gw_reload_close(struct gw *g);
void gw_reload(struct gw *g);

/* The HTTP handler (http_handler_fn) with user = struct gw *. */
void gw_handle(http_request *req, void *user);

/* Answers and counts the request in the metrics. */
void gw_respond_error(struct gw *g, http_request *req, const char *route, int status,
                      const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void gw_respond_json(struct gw *g, http_request *req, const char *route, int status, json_t *body);

/* POST /v1/chat/completions and /v1/completions (proxy.c). */
void gw_generate(struct gw *g, http_request *req, const char *route, int api);

/* POST /v1/embeddings (embeddings.c), POST /tokenize and /detokenize (tokenize.c): one call to
 * a worker serving the model each (forward.h). */
void gw_embeddings(struct gw *g, http_request *req);
void gw_tokenize(struct gw *g, http_request *req, bool detokenize);

/* CORS (cors.c): whether origin is one of allowed ("*" or a comma-separated list of origins,
 * compared exactly, scheme and port included; NULL or "": none is). */
bool gw_cors_allowed(const char *allowed, const char *origin);
/* Adds the Access-Control-* answer headers for the request's Origin when --allowed-origins
 * lets it in. Returns true when the request was a preflight (OPTIONS with
 * Access-Control-Request-Method), which it answered. */
bool gw_cors_handle(struct gw *g, http_request *req, const char *route);

/* Ends every generation request in flight with an error (an SSE error event then [DONE] on a
 * stream, else a 503 answer). */
void gw_generate_abort_all(struct gw *g, const char *message);

/* shutdown.c: starts watching SIGINT and SIGTERM (common/drain.h); closes that watch and the
 * drain's timer (once, however often called). */
int gw_shutdown_watch(struct gw *g);
void gw_shutdown_close(struct gw *g);

/* Seconds on a monotonic clock. */
double gw_now(void);

#endif
