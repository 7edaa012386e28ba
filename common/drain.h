/* The graceful stop of a server that must finish what it started (the gateway, the worker),
 * as Kubernetes and load balancers expect of one on SIGTERM.
 *
 * The first SIGTERM or SIGINT (common/signals.h) calls the program's begin: it stops taking
 * work (closes its listener or answers 503, unregisters). The drain then checks every
 * DRAIN_TICK_MS until the program has nothing in flight and its server has written every byte
 * it queued, and stops the loop, so that the program's teardown runs and it exits 0. Past
 * timeout_s it calls abort once, which ends what is still open with an error its clients can
 * read, and DRAIN_ABORT_GRACE_MS later it stops the loop whatever is still open. A second
 * signal ends the process at once (common/signals.h). */
#ifndef SLUICE_COMMON_DRAIN_H
#define SLUICE_COMMON_DRAIN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/http_server.h"
#include "common/signals.h"

enum { DRAIN_TICK_MS = 20, DRAIN_ABORT_GRACE_MS = 2000 };

struct drain_ops {
    void (*begin)(void *arg);
    /* Requests (and whatever else the stop waits for) still open: 0 when there are none. */
    unsigned (*in_flight)(void *arg);
    /* The timeout has passed: end what is still open. */
    void (*abort)(void *arg);
};

struct drain {
    struct signals_watch signals;
    uv_loop_t *loop;
    http_server *server;  /* its queued bytes are waited for too */
    double timeout_s;
    const struct drain_ops *ops;
    void *arg;
    uv_timer_t timer;
    bool timer_open;
    uint64_t started_ns, aborted_ns; /* uv_hrtime; aborted 0 until the timeout */
};

/* Starts watching SIGINT and SIGTERM. Returns 0, or a negative libuv error (nothing left
 * open then). */
int drain_watch(struct drain *d, uv_loop_t *loop, http_server *server, double timeout_s,
                const struct drain_ops *ops, void *arg);
/* Closes the signal watch and the drain's timer, once however often called; a signal after
 * it takes its default action. */
void drain_close(struct drain *d);

#endif
