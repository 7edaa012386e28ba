/* sluice-controller: the registry of workers that gateways ask "who serves model M?". */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

#include "common/auth.h"
#include "common/flags.h"
#include "common/http_flags.h"
#include "common/jsonlog.h"
#include "common/log.h"
#include "common/signals.h"
#include "controller/controller.h"

/* The controller holds nothing worth draining (workers re-register with a restarted one), so
 * the first signal leaves the loop at once; the teardown below is the only shutdown path. */
static void on_first_signal(void *arg, int signum)
{
    (void)signum;
    uv_stop(arg);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static uint64_t random_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) == (ssize_t)sizeof seed) return seed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *method = "shortest_queue", *token = NULL, *log_level = "info";
    const char *access_log = "-";
    long port = 21001, status_timeout_ms = 3000;
    double expiration = 30;
    bool allow_unauthenticated = false;
    struct http_server_flags http = HTTP_SERVER_FLAGS_DEFAULT;
    const struct flag_spec specs[] = {
        {"host", FLAG_STRING, &host, "SLUICE_CONTROLLER_HOST", "HOST",
         "address to listen on (one other than loopback needs --internal-token or --allow-unauthenticated-workers)", 0, 0},
        {"port", FLAG_INT, &port, "SLUICE_CONTROLLER_PORT", "PORT", "port to listen on (0 picks one)", 0, 65535},
        {"dispatch-method", FLAG_STRING, &method, "SLUICE_DISPATCH_METHOD", "METHOD",
         "shortest_queue (least queue_length/speed), lottery (chance in proportion to speed) or cache_aware "
         "(requests whose prompts start alike to the same worker, by the gateway's prefix_key)", 0, 0},
        {"heartbeat-expiration", FLAG_DOUBLE, &expiration, "SLUICE_HEARTBEAT_EXPIRATION", "SECONDS",
         "a worker not heard from for this long is no longer dispatched to, and dropped", 0.05, 86400},
        {"internal-token", FLAG_STRING, &token, "SLUICE_INTERNAL_TOKEN", "TOKEN",
         "when set, every internal endpoint (all but /health, /test_connection, /metrics) needs "
         "'Authorization: Bearer TOKEN'; give workers and gateways the same token", 0, 0},
        {"allow-unauthenticated-workers", FLAG_BOOL, &allow_unauthenticated, "SLUICE_ALLOW_UNAUTHENTICATED_WORKERS",
         NULL,
         "without --internal-token, serve internal endpoints (worker registration included) to any caller, "
         "not only loopback, and allow a non-loopback --host (FastChat's behaviour; insecure)", 0, 0},
        {"worker-status-timeout-ms", FLAG_INT, &status_timeout_ms, "SLUICE_WORKER_STATUS_TIMEOUT_MS", "MS",
         "bound on one worker's /worker_get_status during register and refresh", 10, 600000},
        {"access-log", FLAG_STRING, &access_log, "SLUICE_ACCESS_LOG", "DEST",
         "one JSON line per trace span of a traced dispatch (a gateway's traceparent): '-' standard output, 'off', or "
         "a file", 0, 0},
        HTTP_SERVER_FLAG_SPECS(&http),
        {"log-level", FLAG_STRING, &log_level, "SLUICE_LOG_LEVEL", "LEVEL", "debug, info, warn, error", 0, 0},
        {0},
    };
    int rc = flags_parse("sluice-controller", "Registry and dispatcher of sluice workers (FastChat-compatible).",
                         specs, argc, argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    log_init("controller");
    int level = log_level_parse(log_level);
    if (level < 0) {
        fprintf(stderr, "sluice-controller: unknown --log-level '%s'\n", log_level);
        return 2;
    }
    log_set_level((enum log_level)level);
    int m = ctl_dispatch_method_parse(method);
    if (m < 0) {
        fprintf(stderr, "sluice-controller: unknown --dispatch-method '%s' (shortest_queue, lottery or cache_aware)\n", method);
        return 2;
    }
    struct auth_internal policy = {.token = token, .allow_unauthenticated = allow_unauthenticated,
                                   .program = "sluice-controller"};
    if (auth_listen_check(&policy, host) != 0) return 2;
    if (jsonlog_open(access_log, "controller") != 0) return 2;
    signal(SIGPIPE, SIG_IGN);

    struct ctl_config cfg = {
        .host = host,
        .port = port,
        .method = (enum ctl_dispatch_method)m,
        .heartbeat_expiration = expiration,
        .internal_token = token && *token ? token : NULL,
        .allow_unauthenticated_workers = allow_unauthenticated,
        .status_timeout_ms = status_timeout_ms,
        .seed = random_seed(),
        .http = http,
    };
    uv_loop_t *loop = uv_default_loop();
    struct ctl c;
    memset(&c, 0, sizeof c);
    int status = 1;
    struct signals_watch signals = {0};
    if (ctl_start(&c, loop, &cfg) != 0) goto out;
    if (signals_watch_start(&signals, loop, on_first_signal, NULL, loop) != 0) {
        log_error("cannot watch SIGINT and SIGTERM");
        goto out;
    }
    /* Tests read this line to learn the port when they pass --port 0. */
    log_info("listening on http://%s:%d (dispatch %s, heartbeat expiration %g s, internal token %s)", host,
             http_server_port(c.server), ctl_dispatch_method_name(cfg.method), expiration,
             cfg.internal_token ? "on" : allow_unauthenticated ? "off, every caller served" : "off, loopback callers only");
    uv_run(loop, UV_RUN_DEFAULT);
    status = 0;
out:
    signals_watch_close(&signals);
    ctl_stop(&c);
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    ctl_free(&c);
    uv_loop_close(loop);
    jsonlog_close();
    return status;
}
