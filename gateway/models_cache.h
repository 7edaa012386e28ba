/* The controller's model list (POST /list_models), cached for a short window so that
 * GET /v1/models costs no controller round trip inside it. Callers waiting for a refresh
 * share one call. Every name ever listed is remembered with the time it was first seen,
 * which serves as the model's "created" and tells "no worker right now" (503) apart from
 * "never heard of it" (404). */
#ifndef SLUICE_GATEWAY_MODELS_CACHE_H
#define SLUICE_GATEWAY_MODELS_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/http_client.h"

typedef struct gw_models gw_models;
typedef struct gw_models_wait gw_models_wait;

/* rc 0: names is the sorted array of model names (borrowed, valid during the call);
 * rc < 0: the controller could not be reached or answered badly (names NULL). */
typedef void (*gw_models_cb)(int rc, const json_t *names, void *user);

int gw_models_init(gw_models **out, http_client *client, const char *controller_url,
                   long timeout_ms, long ttl_ms);
void gw_models_free(gw_models *m);
/* Calls cb before returning when the cache is fresh (*wait set to NULL); otherwise the
 * caller waits and *wait is the handle to stop waiting with. */
void gw_models_get(gw_models *m, gw_models_cb cb, void *user, gw_models_wait **wait);
void gw_models_wait_cancel(gw_models *m, gw_models_wait *wait);
bool gw_models_ever_seen(const gw_models *m, const char *name);
/* Unix time the name was first listed; now when never. */
int64_t gw_models_created(const gw_models *m, const char *name);

#endif
