/* Asking the controller which worker serves a model: POST /get_worker_address, bounded by
 * --controller-timeout-ms. */
#ifndef SLUICE_GATEWAY_ROUTE_H
#define SLUICE_GATEWAY_ROUTE_H

#include "common/http_client.h"
#include "gateway/validate.h"

typedef struct gw_route gw_route;

/* rc 0: address is the worker's base URL, "" when no live worker serves the model;
 * rc GW_ROUTE_RECENT: address is "", but the controller says a worker served the model
 * lately (it is restarting: a 503, not a 404);
 * rc < 0: the controller could not be reached in time or answered badly. */
enum { GW_ROUTE_RECENT = 1 };
typedef void (*gw_route_cb)(int rc, const char *address, void *user);

/* Starts the lookup. exclude (may be NULL) names a worker that just failed: it is sent as an
 * extra "exclude" field that a controller may honour. prefix_key (may be NULL) is sent as
 * "prefix_key", which a controller dispatching cache_aware routes by (others ignore it). The route frees itself after calling
 * cb; before that, gw_route_cancel stops it (no callback) and frees it. */
int gw_route_start(http_client *client, const char *controller_url, long timeout_ms,
                   const char *model, const char *exclude, const char *prefix_key, gw_route_cb cb,
                   void *user, gw_route **out);
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
