/* The worker's graceful stop, as Kubernetes and vLLM expect of a server on SIGTERM (SIGINT
 * alike). The first signal:
 *   - unregisters from the controller at once, so no gateway is sent here any more (and the
 *     heartbeats stop, so an older controller without /unregister_worker expires us);
 *   - keeps listening, but answers new generation requests 503 with Retry-After (the gateway
 *     retries them on another worker) and /health 503 "draining";
 *   - lets the generations in flight run to their end, bounded by --drain-timeout: past it
 *     they end with an error frame saying the worker is shutting down;
 * then, once no request is left and its bytes are out, the loop stops and serve.c's teardown
 * runs; the worker exits 0. A second signal ends the process at once (common/signals.c). */
#include <stdio.h>

#include "common/log.h"
#include "worker/api/worker.h"

/* Aborted generations' last frames get this long to reach their clients. */
enum { DRAIN_TICK_MS = 20, ABORT_GRACE_MS = 2000 };

static double ms_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e6;
}

static void on_drain_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->active == 0 && !w->unregister_in_flight && http_server_queued_bytes(w->server) == 0) {
        log_info("drained in %.0f ms: stopping", ms_since(w->drain_started_ns));
        uv_stop(w->loop);
        return;
    }
    if (!w->drain_aborted_ns && ms_since(w->drain_started_ns) >= w->opt.drain_timeout * 1000.0) {
        char msg[160];
        snprintf(msg, sizeof msg, "the worker is shutting down: the generation did not finish within "
                 "its drain timeout of %g s", w->opt.drain_timeout);
        log_warn("drain timeout: ending %d request(s) still in flight", w->active);
        w->drain_aborted_ns = uv_hrtime();
        engine_abort_all(w->engine, msg);
        return;
    }
    if (w->drain_aborted_ns && ms_since(w->drain_aborted_ns) >= ABORT_GRACE_MS) {
        log_warn("%d request(s) still open after the drain timeout: stopping anyway", w->active);
        uv_stop(w->loop);
    }
}

static void on_first_signal(void *arg, int signum)
{
    (void)signum;
    struct worker *w = arg;
    w->draining = true;
    w->drain_started_ns = uv_hrtime();
    log_info("draining: %d request(s) in flight, up to %g s", w->active, w->opt.drain_timeout);
    controller_client_stop(w);
    controller_client_unregister(w);
    http_server_drain(w->server, false);
    if (uv_timer_init(w->loop, &w->drain_timer) != 0) {
        uv_stop(w->loop);
        return;
    }
    w->drain_timer.data = w;
    w->drain_timer_open = true;
    uv_timer_start(&w->drain_timer, on_drain_tick, 0, DRAIN_TICK_MS);
}

int worker_shutdown_watch(struct worker *w)
{
    return signals_watch_start(&w->signals, w->loop, on_first_signal, NULL, w);
}

void worker_shutdown_close(struct worker *w)
{
    signals_watch_close(&w->signals);
    if (w->drain_timer_open) {
        w->drain_timer_open = false;
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    }
}
