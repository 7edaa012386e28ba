/* The controller's model list (POST /list_models), cached for a short window so that
 * GET /v1/models costs no controller round trip inside it. Callers waiting for a refresh
 * share one call.
 *
 * The cache also remembers which models were served lately: every name the controller listed
 * and every model a request was routed for, for GW_MODELS_RECENT_S and at most
 * GW_MODELS_RECENT_MAX names. That tells "no worker right now" (503, retry: the controller or
 * the workers are restarting) apart from "never heard of it" (404), and the first time a name
 * was seen serves as the model's "created". */
#ifndef SLUICE_GATEWAY_MODELS_CACHE_H
#define SLUICE_GATEWAY_MODELS_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/http_client.h"
#include "gateway/controllers.h"

typedef struct gw_models gw_models;
typedef struct gw_models_wait gw_models_wait;

/* rc 0: names is the sorted array of model names (borrowed, valid during the call);
 * rc < 0: the controller could not be reached or answered badly (names NULL). */
typedef void (*gw_models_cb)(int rc, const json_t *names, void *user);

/* The list comes from the first controller of ctls that answers (gateway/controllers.h). */
int gw_models_init(gw_models **out, http_client *client, gw_ctls *ctls, long timeout_ms, long ttl_ms);
void gw_models_free(gw_models *m);
/* Calls cb before returning when the cache is fresh (*wait set to NULL); otherwise the
 * caller waits and *wait is the handle to stop waiting with. */
void gw_models_get(gw_models *m, gw_models_cb cb, void *user, gw_models_wait **wait);
void gw_models_wait_cancel(gw_models *m, gw_models_wait *wait);
#define GW_MODELS_RECENT_S 600
#define GW_MODELS_RECENT_MAX 1024

/* A request for the model was just routed to a worker. */
void gw_models_note_served(gw_models *m, const char *name);
/* Listed or routed within GW_MODELS_RECENT_S. */
bool gw_models_recently_served(const gw_models *m, const char *name);
/* Unix time the name was first seen (while remembered); now when not. */
int64_t gw_models_created(const gw_models *m, const char *name);

#endif
