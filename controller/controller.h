/* The controller program's state and its HTTP side: routing, handlers, status fetches from
 * workers, metrics. Everything runs on the one libuv loop. */
#ifndef SLUICE_CONTROLLER_CONTROLLER_H
#define SLUICE_CONTROLLER_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/http_client.h"
#include "common/http_flags.h"
#include "common/http_server.h"
#include "controller/dispatch.h"
#include "controller/registry.h"
#include "common/strmap.h"

struct ctl_config {
    const char *host;
    long port;
    enum ctl_dispatch_method method;
    double heartbeat_expiration; /* seconds */
    const char *internal_token;  /* NULL or "": no token (internal endpoints serve loopback only) */
    bool allow_unauthenticated_workers; /* no token: serve every caller, as FastChat does */
    long status_timeout_ms;      /* bound on one worker's /worker_get_status */
    uint64_t seed;               /* for the dispatch draws */
    struct http_server_flags http; /* the server's timeouts and per-address cap */
};

struct ctl_dispatch_counts {
    uint64_t ok, no_worker;
};

struct ctl_op; /* a status fetch in flight: refresh.c */

struct ctl {
    struct ctl_config cfg;
    uv_loop_t *loop;
    http_server *server;
    http_client *client;
    ctl_registry *reg;
    struct ctl_rng rng;
    uv_timer_t sweep_timer;
    bool sweep_timer_started;
    /* Per model ever registered; requests for other names count in dispatch_unknown, so a
     * client cannot grow the label set without bound. */
    strmap *dispatch_counts;
    struct ctl_dispatch_counts dispatch_unknown;
    uint64_t registrations, heartbeats, heartbeats_unknown, refresh_removed, unauthorized;
    struct ctl_op *ops; /* status fetches in flight, freed at stop */
};

/* Listens and starts the sweep timer. On failure everything started is stopped. */
int ctl_start(struct ctl *c, uv_loop_t *loop, const struct ctl_config *cfg);
/* Closes the server, cancels status fetches, stops the timer; run the loop afterwards so the
 * handles close, then call ctl_free. */
void ctl_stop(struct ctl *c);
void ctl_free(struct ctl *c);

/* api.c */
void ctl_handle(http_request *req, void *user);
/* Creates the dispatch counters for a newly seen model name. */
void ctl_count_models(struct ctl *c, const struct ctl_worker_status *st);

/* refresh.c: asks worker_name's POST /worker_get_status. For a register (one worker, req
 * answered {} or 502) or a refresh of every worker (req answered {} when all are done). */
int ctl_refresh_register(struct ctl *c, http_request *req, const char *worker_name,
                         bool check_heart_beat, bool multimodal);
int ctl_refresh_all(struct ctl *c, http_request *req);
void ctl_refresh_cancel_all(struct ctl *c);

/* metrics.c: Prometheus text; malloc'd. */
char *ctl_metrics_render(struct ctl *c, size_t *len);

#endif
