/* The gateway's graceful stop. On the first SIGTERM or SIGINT the listener closes (a load
 * balancer moves on to another gateway), requests arriving on connections already open get
 * 503 with Retry-After (handlers.c), and the requests in flight run to their end: a stream
 * still gets its last chunks and "data: [DONE]". Once none is left and their bytes are out,
 * the loop stops and main's teardown runs. Past --drain-timeout the requests still open are
 * ended with an error (streams with an error event and [DONE]). A second signal ends the
 * process at once (common/signals.c). */
#include "common/log.h"
#include "gateway/gateway.h"

/* Bytes an aborted stream still has to write get this long before the connections close. */
enum { DRAIN_TICK_MS = 20, ABORT_GRACE_MS = 2000 };

static double ms_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e6;
}

static void on_drain_tick(uv_timer_t *t)
{
    struct gw *g = t->data;
    if (g->active == 0 && http_server_queued_bytes(g->server) == 0) {
        log_info("drained in %.0f ms: stopping", ms_since(g->drain_started_ns));
        uv_stop(g->loop);
        return;
    }
    if (!g->drain_aborted_ns && ms_since(g->drain_started_ns) >= g->cfg.drain_timeout_s * 1000.0) {
        log_warn("drain timeout (%g s): ending %u request(s) still open", g->cfg.drain_timeout_s, g->active);
        g->drain_aborted_ns = uv_hrtime();
        gw_generate_abort_all(g, "the gateway is shutting down: the request did not finish within its drain timeout");
        return;
    }
    if (g->drain_aborted_ns && ms_since(g->drain_aborted_ns) >= ABORT_GRACE_MS) {
        log_warn("%u request(s) and %zu bytes still open after the drain timeout: stopping anyway", g->active,
                 http_server_queued_bytes(g->server));
        uv_stop(g->loop);
    }
}

static void on_first_signal(void *arg, int signum)
{
    (void)signum;
    struct gw *g = arg;
    g->draining = true;
    g->drain_started_ns = uv_hrtime();
    http_server_drain(g->server, true);
    log_info("draining: %u request(s) in flight, up to %g s", g->active, g->cfg.drain_timeout_s);
    if (uv_timer_init(g->loop, &g->drain_timer) != 0) {
        uv_stop(g->loop);
        return;
    }
    g->drain_timer.data = g;
    g->drain_timer_open = true;
    uv_timer_start(&g->drain_timer, on_drain_tick, 0, DRAIN_TICK_MS);
}

int gw_shutdown_watch(struct gw *g)
{
    return signals_watch_start(&g->signals, g->loop, on_first_signal, NULL, g);
}

void gw_shutdown_close(struct gw *g)
{
    signals_watch_close(&g->signals);
    if (g->drain_timer_open) {
        g->drain_timer_open = false;
        uv_close((uv_handle_t *)&g->drain_timer, NULL);
    }
}
