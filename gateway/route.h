/* Asking the controller which worker serves a model: POST /get_worker_address, bounded by
 * --controller-timeout-ms. */
#ifndef SLUICE_GATEWAY_ROUTE_H
#define SLUICE_GATEWAY_ROUTE_H

#include "common/http_client.h"

typedef struct gw_route gw_route;

/* rc 0: address is the worker's base URL, "" when no live worker serves the model;
 * rc GW_ROUTE_RECENT: address is "", but the controller says a worker served the model
 * lately (it is restarting: a 503, not a 404);
 * rc < 0: the controller could not be reached in time or answered badly. */
enum { GW_ROUTE_RECENT = 1 };
typedef void (*gw_route_cb)(int rc, const char *address, void *user);

/* Starts the lookup. exclude (may be NULL) names a worker that just failed: it is sent as an
 * extra "exclude" field that a controller may honour. The route frees itself after calling
 * cb; before that, gw_route_cancel stops it (no callback) and frees it. */
int gw_route_start(http_client *client, const char *controller_url, long timeout_ms,
                   const char *model, const char *exclude, gw_route_cb cb, void *user,
                   gw_route **out);
void gw_route_cancel(gw_route *route);

#endif
