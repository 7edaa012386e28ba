/* The gateway's graceful stop (common/drain.h). On the first SIGTERM or SIGINT the listener
 * closes (a load balancer moves on to another gateway), requests arriving on connections
 * already open get 503 with Retry-After (handlers.c), and the requests in flight run to their
 * end: a stream still gets its last chunks and "data: [DONE]". Past --drain-timeout the
 * requests still open are ended with an error (streams with an error event and [DONE]). */
#include "gateway/forward.h"
#include "gateway/gateway.h"

static void begin(void *arg)
{
    struct gw *g = arg;
    g->draining = true;
    http_server_drain(g->server, true);
}

static unsigned in_flight(void *arg)
{
    return ((struct gw *)arg)->active;
}

static void abort_open(void *arg)
{
    static const char msg[] = "the gateway is shutting down: the request did not finish within its drain timeout";
    gw_generate_abort_all(arg, msg);
    gw_forward_abort_all(arg, msg);
}

static const struct drain_ops ops = {begin, in_flight, abort_open};

int gw_shutdown_watch(struct gw *g)
{
    return drain_watch(&g->drain, g->loop, g->server, g->cfg.drain_timeout_s, &ops, g);
}

void gw_shutdown_close(struct gw *g)
{
    drain_close(&g->drain);
}
