/* The worker's graceful stop, as Kubernetes and vLLM expect of a server on SIGTERM (SIGINT
 * alike; common/drain.h). The first signal:
 *   - unregisters from the controller at once, so no gateway is sent here any more (and the
 *     heartbeats stop, so an older controller without /unregister_worker expires us);
 *   - keeps listening, but answers new generation requests 503 with Retry-After (the gateway
 *     retries them on another worker) and /health 503 "draining";
 *   - lets the generations in flight run to their end, bounded by --drain-timeout: past it
 *     they end with an error frame saying the worker is shutting down;
 * then, once no request (and no unregister) is left and its bytes are out, the loop stops and
 * serve.c's teardown runs; the worker exits 0. A second signal ends the process at once. */
#include <stdio.h>

#include "worker/api/worker.h"

static void begin(void *arg)
{
    struct worker *w = arg;
    w->draining = true;
    controller_client_stop(w);
    controller_client_unregister(w);
    http_server_drain(w->server, false);
}

static unsigned in_flight(void *arg)
{
    const struct worker *w = arg;
    return (unsigned)(w->active + w->unregister_in_flight);
}

static void abort_open(void *arg)
{
    struct worker *w = arg;
    char msg[160];
    snprintf(msg, sizeof msg, "the worker is shutting down: the generation did not finish within "
             "its drain timeout of %g s", w->opt.drain_timeout);
    engine_abort_all(w->engine, msg);
}

static const struct drain_ops ops = {begin, in_flight, abort_open};

int worker_shutdown_watch(struct worker *w)
{
    return drain_watch(&w->drain, w->loop, w->server, w->opt.drain_timeout, &ops, w);
}

void worker_shutdown_close(struct worker *w)
{
    drain_close(&w->drain);
}
