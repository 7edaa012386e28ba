/* sluice-gateway: the OpenAI-compatible API in front of the controller and workers. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <uv.h>

#include "common/auth.h"
#include "common/flags.h"
#include "common/http_flags.h"
#include "common/jsonlog.h"
#include "common/log.h"
#include "gateway/gateway.h"

static void on_server_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Each stream holds two sockets (client and worker): lift the soft descriptor limit to the
 * hard one so a thousand streams do not run out at the usual 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    struct gw g = {0};
    struct gw_config *c = &g.cfg;
    c->host = "127.0.0.1";
    c->port = 8000;
    c->controller_address = "http://127.0.0.1:21001";
    c->max_body_bytes = 1 << 20;
    c->max_concurrent_requests = 0;
    c->controller_timeout_ms = 2000;
    c->worker_connect_timeout_ms = 2000;
    c->worker_idle_timeout_ms = 600000;
    c->max_stream_buffer = 4 << 20;
    c->models_cache_ms = 1500;
    c->drain_timeout_s = 30;
    c->access_log = "-";
    const char *log_level = "info", *internal_token = NULL;
    struct http_server_flags http = HTTP_SERVER_FLAGS_DEFAULT;
    const struct flag_spec specs[] = {
        {"host", FLAG_STRING, &c->host, "SLUICE_GATEWAY_HOST", "HOST", "address to listen on", 0, 0},
        {"port", FLAG_INT, &c->port, "SLUICE_GATEWAY_PORT", "PORT", "port to listen on (0 picks one)", 0, 65535},
        {"controller-address", FLAG_STRING, &c->controller_address, "SLUICE_CONTROLLER_ADDRESS", "URL[,URL...]",
         "the controllers' base URLs: each call goes to the first healthy one and fails over to the next", 0, 0},
        {"api-keys", FLAG_STRING, &c->api_keys, "SLUICE_API_KEYS", "K1,K2",
         "comma-separated keys clients must send as 'Authorization: Bearer <key>'", 0, 0},
        {"api-key-file", FLAG_STRING, &c->api_key_file, "SLUICE_API_KEY_FILE", "PATH",
         "file with one API key per line, read again on SIGHUP", 0, 0},
        {"rate-limit-file", FLAG_STRING, &c->rate_limit_file, "SLUICE_RATE_LIMIT_FILE", "PATH",
         "requests and tokens per minute per API key: lines 'KEY RPM TPM' (key 'default' for the rest) or JSON; "
         "read again on SIGHUP", 0, 0},
        {"internal-token", FLAG_STRING, &internal_token, "SLUICE_INTERNAL_TOKEN", "TOKEN",
         "sent as 'Authorization: Bearer TOKEN' to the controller and workers (the token they were started with)",
         0, 0},
        {"max-body-bytes", FLAG_INT, &c->max_body_bytes, "SLUICE_GATEWAY_MAX_BODY_BYTES", "BYTES",
         "largest request body accepted (413 above)", 1024, 1 << 30},
        {"max-concurrent-requests", FLAG_INT, &c->max_concurrent_requests,
         "SLUICE_GATEWAY_MAX_CONCURRENT_REQUESTS", "N",
         "generation requests in flight before 429 (0: no limit)", 0, 1e9},
        {"controller-timeout-ms", FLAG_INT, &c->controller_timeout_ms, "SLUICE_CONTROLLER_TIMEOUT_MS", "MS",
         "bound on one call to one controller (then the next is asked; 503 when none answers)", 1, 600000},
        {"worker-idle-timeout-ms", FLAG_INT, &c->worker_idle_timeout_ms, NULL, "MS",
         "a worker stream that sends nothing for this long is failed (a hung worker), 0: never", 0, 86400000},
        {"worker-connect-timeout-ms", FLAG_INT, &c->worker_connect_timeout_ms, NULL, "MS",
         "bound on connecting to a worker", 1, 600000},
        {"max-stream-buffer", FLAG_INT, &c->max_stream_buffer, NULL, "BYTES",
         "bytes queued on a slow client before its stream is dropped", 4096, 1 << 30},
        {"models-cache-ms", FLAG_INT, &c->models_cache_ms, NULL, "MS",
         "how long the controller's model list is reused", 0, 60000},
        {"drain-timeout", FLAG_DOUBLE, &c->drain_timeout_s, "SLUICE_DRAIN_TIMEOUT", "SECONDS",
         "on SIGTERM/SIGINT, how long open requests may take to finish before they are ended", 0, 86400},
        {"access-log", FLAG_STRING, &c->access_log, "SLUICE_ACCESS_LOG", "DEST",
         "one JSON line per request and per trace span: '-' standard output, 'off', or a file (reopened on SIGHUP)",
         0, 0},
        {"log-requests", FLAG_BOOL, &c->log_requests, "SLUICE_LOG_REQUESTS", NULL,
         "access lines also carry the request's messages or prompt (users' data: off by default)", 0, 0},
        {"allowed-origins", FLAG_STRING, &c->allowed_origins, "SLUICE_ALLOWED_ORIGINS", "ORIGINS",
         "CORS: browser origins allowed to call the API, '*' or comma-separated (https://app.example.com); "
         "preflights answered, Access-Control-* headers added (default: none, CORS off)", 0, 0},
        HTTP_SERVER_FLAG_SPECS(&http),
        {"log-level", FLAG_STRING, &log_level, "SLUICE_LOG_LEVEL", "LEVEL", "debug, info, warn, error", 0, 0},
        {0},
    };
    int rc = flags_parse("sluice-gateway", "OpenAI-compatible API gateway for sluice.", specs, argc,
                         argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    log_init("gateway");
    int level = log_level_parse(log_level);
    if (level < 0) {
        fprintf(stderr, "sluice-gateway: unknown --log-level '%s'\n", log_level);
        return 2;
    }
    log_set_level((enum log_level)level);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    char err[256];
    if (gw_ctls_init(&g.ctls, c->controller_address, err, sizeof err) != 0) {
        fprintf(stderr, "sluice-gateway: %s\n", err);
        return 2;
    }
    if (jsonlog_open(c->access_log, "gateway") != 0) {
        gw_ctls_free(g.ctls);
        return 2;
    }

    uv_loop_t *loop = uv_default_loop();
    g.loop = loop;
    g.started = (int64_t)time(NULL);
    int status = 1;
    if (gw_auth_init(&g.auth, c->api_keys, c->api_key_file) != 0) goto out;
    if (gw_rl_init(&g.rl, c->rate_limit_file) != 0) goto out;
    g.metrics = gw_metrics_new();
    if (http_client_init(&g.client, loop) != 0) {
        log_error("cannot start the HTTP client");
        goto out;
    }
    /* The client calls only the controller and workers, whose endpoints need the token. */
    if (auth_client_token(g.client, internal_token) != 0) goto out;
    if (gw_ctls_start_probes(g.ctls, loop, g.client, c->controller_timeout_ms) != 0) goto out;
    if (gw_models_init(&g.models, g.client, g.ctls, c->controller_timeout_ms, c->models_cache_ms) != 0) {
        log_error("out of memory");
        goto out;
    }
    struct http_server_config scfg = {
        .host = c->host,
        .port = (int)c->port,
        .max_body_bytes = (size_t)c->max_body_bytes,
        .max_stream_buffer = (size_t)c->max_stream_buffer,
    };
    http_server_flags_apply(&http, &scfg);
    if (http_server_init(&g.server, loop, &scfg, gw_handle, &g) != 0) {
        log_error("cannot listen on %s:%ld", c->host, c->port);
        goto out;
    }
    if (gw_shutdown_watch(&g) != 0 || gw_reload_watch(&g) != 0) {
        log_error("cannot watch SIGINT, SIGTERM and SIGHUP");
        goto out;
    }
    /* Tests read this line to learn the port when they pass --port 0. */
    log_info("listening on http://%s:%d (controller %s, %zu API keys, internal token %s, rate limits %s)", c->host,
             http_server_port(g.server), c->controller_address, gw_auth_key_count(g.auth),
             internal_token && *internal_token ? "on" : "off", gw_rl_enabled(g.rl) ? "on" : "off");
    uv_run(loop, UV_RUN_DEFAULT);

    /* From here on a signal takes its default action: the teardown is short. Requests still
     * open (only past the drain timeout) are closed first: their on_close callbacks cancel
     * upstream calls, which needs the client still alive. */
    gw_shutdown_close(&g);
    gw_reload_close(&g);
    bool server_closed = false;
    http_server_close(g.server, on_server_closed, &server_closed);
    g.server = NULL;
    while (!server_closed) uv_run(loop, UV_RUN_ONCE);
    gw_models_free(g.models);
    g.models = NULL;
    gw_ctls_free(g.ctls); /* its probes use the client */
    g.ctls = NULL;
    http_client_free(g.client);
    g.client = NULL;
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    status = 0;
out:
    gw_shutdown_close(&g);
    gw_reload_close(&g);
    gw_models_free(g.models);
    gw_ctls_free(g.ctls);
    if (g.client) http_client_free(g.client);
    if (status != 0) uv_run(loop, UV_RUN_NOWAIT); /* lets closed handles go */
    gw_metrics_free(g.metrics);
    gw_rl_free(g.rl);
    gw_auth_free(g.auth);
    if (status == 0) uv_loop_close(loop);
    jsonlog_close();
    return status;
}
