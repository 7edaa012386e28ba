/* sluice-controller: the registry of workers that gateways ask "who serves model M?". */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

#include "common/flags.h"
#include "common/log.h"
#include "controller/controller.h"

static void on_signal(uv_signal_t *h, int signum)
{
    log_info("signal %d: shutting down", signum);
    uv_stop(h->loop);
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
    long port = 21001, status_timeout_ms = 3000;
    double expiration = 30;
    const struct flag_spec specs[] = {
        {"host", FLAG_STRING, &host, "SLUICE_CONTROLLER_HOST", "HOST", "address to listen on", 0, 0},
        {"port", FLAG_INT, &port, "SLUICE_CONTROLLER_PORT", "PORT", "port to listen on (0 picks one)", 0, 65535},
        {"dispatch-method", FLAG_STRING, &method, "SLUICE_DISPATCH_METHOD", "METHOD",
         "shortest_queue (least queue_length/speed), lottery (chance in proportion to speed) or cache_aware "
         "(requests whose prompts start alike to the same worker, by the gateway's prefix_key)", 0, 0},
        {"heartbeat-expiration", FLAG_DOUBLE, &expiration, "SLUICE_HEARTBEAT_EXPIRATION", "SECONDS",
         "a worker not heard from for this long is no longer dispatched to, and dropped", 0.05, 86400},
        {"internal-token", FLAG_STRING, &token, "SLUICE_INTERNAL_TOKEN", "TOKEN",
         "when set, /register_worker and /receive_heart_beat need 'Authorization: Bearer TOKEN'", 0, 0},
        {"worker-status-timeout-ms", FLAG_INT, &status_timeout_ms, "SLUICE_WORKER_STATUS_TIMEOUT_MS", "MS",
         "bound on one worker's /worker_get_status during register and refresh", 10, 600000},
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
    signal(SIGPIPE, SIG_IGN);

    struct ctl_config cfg = {
        .host = host,
        .port = port,
        .method = (enum ctl_dispatch_method)m,
        .heartbeat_expiration = expiration,
        .internal_token = token && *token ? token : NULL,
        .status_timeout_ms = status_timeout_ms,
        .seed = random_seed(),
    };
    uv_loop_t *loop = uv_default_loop();
    struct ctl c;
    memset(&c, 0, sizeof c);
    int status = 1;
    if (ctl_start(&c, loop, &cfg) != 0) goto out;
    uv_signal_t sigint, sigterm;
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    /* Tests read this line to learn the port when they pass --port 0. */
    log_info("listening on http://%s:%d (dispatch %s, heartbeat expiration %g s, internal token %s)", host,
             http_server_port(c.server), ctl_dispatch_method_name(cfg.method), expiration,
             cfg.internal_token ? "on" : "off");
    uv_run(loop, UV_RUN_DEFAULT);
    status = 0;
out:
    ctl_stop(&c);
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    ctl_free(&c);
    uv_loop_close(loop);
    return status;
}
