/* Reading the controller's request bodies (FastChat's payloads) into plain structs, with a
 * 400-ready error naming the field when something is missing or has the wrong type. */
#ifndef SLUICE_CONTROLLER_PAYLOAD_H
#define SLUICE_CONTROLLER_PAYLOAD_H

#include <jansson.h>
#include <stdbool.h>

#include "common/json_util.h"
#include "common/net_addr.h"
#include "controller/registry.h"

enum { CTL_MAX_MODELS = 256, CTL_MAX_MODEL_NAME = 512 };

/* POST /register_worker. Strings are borrowed from the JSON, but for worker_name: the
 * normalised address (net_base_url_parse) in name. */
struct ctl_register_req {
    const char *worker_name; /* = name */
    char name[NET_BASE_URL_MAX];
    bool check_heart_beat; /* default true */
    bool multimodal;       /* default false */
    bool has_status;       /* worker_status was an object, not null or absent */
    struct ctl_worker_status status;
};

/* A worker's status object ({"model_names","speed","queue_length"}), from /register_worker's
 * worker_status (prefix "worker_status") or a worker's /worker_get_status answer (prefix NULL).
 * Fills st->model_names with a malloc'd array: release it with ctl_worker_status_clear. */
int ctl_payload_status(const json_t *obj, const char *prefix, struct ctl_worker_status *st,
                       struct json_field_error *err);
void ctl_worker_status_clear(struct ctl_worker_status *st);

/* "worker_name" (required), normalised (net_base_url_parse) into out: what every endpoint
 * that names a worker keys the registry by, so that the spellings a worker may send of one
 * address ("HTTP://host:1/") all find it. */
int ctl_payload_worker_name(const json_t *body, char out[NET_BASE_URL_MAX], struct json_field_error *err);
/* Release with ctl_worker_status_clear(&req->status). */
int ctl_payload_register(const json_t *body, struct ctl_register_req *req, struct json_field_error *err);
/* worker_name receives the normalised address, as registered. */
int ctl_payload_heartbeat(const json_t *body, char worker_name[NET_BASE_URL_MAX], int64_t *queue_length,
                          struct json_field_error *err);
/* The heartbeat's optional "queue_wait_s" (sluice's, not FastChat's): seconds >= 0 that the
 * worker's oldest waiting request has waited; *seconds is -1 when absent or null. */
int ctl_payload_queue_wait(const json_t *body, double *seconds, struct json_field_error *err);
int ctl_payload_model(const json_t *body, const char **model, struct json_field_error *err);
/* /get_worker_address's optional "exclude": addresses of workers not to choose (a gateway
 * retrying after one failed). At most CTL_MAX_EXCLUDE; the strings are borrowed from body. */
#define CTL_MAX_EXCLUDE 8
int ctl_payload_exclude(const json_t *body, const char *names[CTL_MAX_EXCLUDE], size_t *n,
                        struct json_field_error *err);
/* /get_worker_address's optional "prefix_key" (cache_aware dispatch; the gateway sends 16 hex
 * digits): a string of at most CTL_MAX_PREFIX_KEY bytes, borrowed from body; NULL when absent
 * or null. */
#define CTL_MAX_PREFIX_KEY 256
int ctl_payload_prefix_key(const json_t *body, const char **key, struct json_field_error *err);

#endif
