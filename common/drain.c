#include "common/drain.h"

#include "common/log.h"

static double ms_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e6;
}

static void on_tick(uv_timer_t *t)
{
    struct drain *d = t->data;
    unsigned left = d->ops->in_flight(d->arg);
    size_t queued = http_server_queued_bytes(d->server);
    if (left == 0 && queued == 0) {
        log_info("drained in %.0f ms: stopping", ms_since(d->started_ns));
        uv_stop(d->loop);
        return;
    }
    if (!d->aborted_ns && ms_since(d->started_ns) >= d->timeout_s * 1000.0) {
        log_warn("drain timeout (%g s): ending %u request(s) still open", d->timeout_s, left);
        d->aborted_ns = uv_hrtime();
        d->ops->abort(d->arg);
        return;
    }
    if (d->aborted_ns && ms_since(d->aborted_ns) >= DRAIN_ABORT_GRACE_MS) {
        log_warn("%u request(s) and %zu bytes still open after the drain timeout: stopping anyway", left, queued);
        uv_stop(d->loop);
    }
}

static void on_first_signal(void *arg, int signum)
{
    (void)signum;
    struct drain *d = arg;
    d->started_ns = uv_hrtime();
    log_info("draining: %u request(s) in flight, up to %g s", d->ops->in_flight(d->arg), d->timeout_s);
    d->ops->begin(d->arg);
    if (uv_timer_init(d->loop, &d->timer) != 0) {
        uv_stop(d->loop);
        return;
    }
    d->timer.data = d;
    d->timer_open = true;
    uv_timer_start(&d->timer, on_tick, 0, DRAIN_TICK_MS);
}

int drain_watch(struct drain *d, uv_loop_t *loop, http_server *server, double timeout_s,
                const struct drain_ops *ops, void *arg)
{
    *d = (struct drain){.loop = loop, .server = server, .timeout_s = timeout_s, .ops = ops, .arg = arg};
    return signals_watch_start(&d->signals, loop, on_first_signal, NULL, d);
}

void drain_close(struct drain *d)
{
    signals_watch_close(&d->signals);
    if (d->timer_open) {
        d->timer_open = false;
        uv_close((uv_handle_t *)&d->timer, NULL);
    }
}
