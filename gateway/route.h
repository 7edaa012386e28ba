/* Asking the controllers which worker serves a model: POST /get_worker_address, bounded by
 * --controller-timeout-ms per controller. */
#ifndef SLUICE_GATEWAY_ROUTE_H
#define SLUICE_GATEWAY_ROUTE_H

#include "common/http_client.h"
#include "common/trace.h"
#include "gateway/controllers.h"
#include "gateway/validate.h"

typedef struct gw_route gw_route;

/* rc 0: address is the worker's base URL, "" when no live worker serves the model;
 * rc GW_ROUTE_RECENT: address is "", but a controller says a worker served the model
 * lately (it is restarting: a 503, not a 404);
 * rc < 0: no controller could be reached in time or answered sensibly. */
enum { GW_ROUTE_RECENT = 1 };
typedef void (*gw_route_cb)(int rc, const char *address, void *user);

struct gw_route_opts {
    const char *model;
    /* A worker that just failed (may be NULL): sent as "exclude", which a controller may
     * honour. */
    const char *exclude;
    /* Sent as "prefix_key" (may be NULL), which a controller dispatching cache_aware routes
     * by (others ignore it). */
    const char *prefix_key;
    const char *request_id;          /* sent as X-Request-Id (may be NULL) */
    const struct trace_span *parent; /* each controller call is a child span (may be NULL) */
    long timeout_ms;                 /* each controller's bound */
};

/* Starts the lookup on the controllers, with failover (gateway/controllers.h): a controller
 * that names no worker is not the last word while another healthy one may name one. The route
 * frees itself after calling cb; before that, gw_route_cancel stops it (no callback) and
 * frees it. */
int gw_route_start(gw_ctls *ctls, http_client *client, const struct gw_route_opts *o, gw_route_cb cb, void *user,
                   gw_route **out);
void gw_route_cancel(gw_route *route);

/* The request's prefix key: 16 hex digits hashing how the request starts, for a cache_aware
 * controller to send requests that start alike where that prefix is in the KV cache (the
 * gateway does not tokenize). For chat, the messages up to the first user message (compact
 * JSON, at most GW_PREFIX_KEY_CHAT_BYTES): every turn of a conversation resends them, so a
 * conversation stays on its worker, while conversations that share only a system prompt still
 * spread. For completions, the first GW_PREFIX_KEY_PROMPT_BYTES bytes of the first prompt (its
 * text, or its token ids as JSON). Returns out, or NULL when the request has no prompt. */
#define GW_PREFIX_KEY_CHAT_BYTES 1024
#define GW_PREFIX_KEY_PROMPT_BYTES 256
#define GW_PREFIX_KEY_SIZE 17
const char *gw_route_prefix_key(const struct gw_params *p, char out[GW_PREFIX_KEY_SIZE]);

#endif
