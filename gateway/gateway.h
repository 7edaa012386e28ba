/* The gateway instance: configuration and the shared objects every request handler uses.
 * One instance per process, living on one libuv loop. */
#ifndef SLUICE_GATEWAY_GATEWAY_H
#define SLUICE_GATEWAY_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/http_client.h"
#include "common/http_server.h"
#include "common/signals.h"
#include "gateway/auth.h"
#include "gateway/metrics_gw.h"
#include "gateway/models_cache.h"

struct gw_config {
    const char *host;
    long port;
    const char *controller_address;
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
};

struct gw_gen;

struct gw {
    struct gw_config cfg;
    uv_loop_t *loop;
    http_server *server;
    http_client *client;
    gw_auth *auth;
    gw_models *models;
    gw_metrics *metrics;
    unsigned active;  /* generation requests in flight */
    struct gw_gen *gens; /* those requests (proxy.c) */
    int64_t started;  /* unix seconds */

    /* The graceful stop (shutdown.c): from the first SIGTERM or SIGINT on, no new connections,
     * 503 for new requests, open ones finish (bounded by drain_timeout_s), then the loop ends. */
    struct signals_watch signals;
    bool draining;
    uv_timer_t drain_timer;
    bool drain_timer_open;
    uint64_t drain_started_ns, drain_aborted_ns; /* uv_hrtime; aborted 0 until the timeout */
};

/* The HTTP handler (http_handler_fn) with user = struct gw *. */
void gw_handle(http_request *req, void *user);

/* Answers and counts the request in the metrics. */
void gw_respond_error(struct gw *g, http_request *req, const char *route, int status,
                      const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void gw_respond_json(struct gw *g, http_request *req, const char *route, int status, json_t *body);

/* POST /v1/chat/completions and /v1/completions (proxy.c). */
void gw_generate(struct gw *g, http_request *req, const char *route, int api);

/* Ends every generation request in flight with an error (an SSE error event then [DONE] on a
 * stream, else a 503 answer). */
void gw_generate_abort_all(struct gw *g, const char *message);

/* shutdown.c: starts watching SIGINT and SIGTERM; closes that watch and the drain timer
 * (once, however often called). */
int gw_shutdown_watch(struct gw *g);
void gw_shutdown_close(struct gw *g);

/* Seconds on a monotonic clock. */
double gw_now(void);

#endif
