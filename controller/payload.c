#include "controller/payload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* json_util names the bare key; nested fields are reported with their path ("worker_status.speed"). */
static int prefixed(int rc, const char *prefix, struct json_field_error *err)
{
    if (rc != JSON_FIELD_INVALID || !prefix) return rc;
    char bare[sizeof err->param];
    snprintf(bare, sizeof bare, "%s", err->param);
    snprintf(err->param, sizeof err->param, "%.40s.%.50s", prefix, bare);
    return rc;
}

/* The worker's name is the base URL the controller and gateways call: nothing but
 * scheme://host:port, so that a registration cannot point them at another URL. */
int ctl_payload_worker_name(const json_t *body, char out[NET_BASE_URL_MAX], struct json_field_error *err)
{
    const char *name;
    if (json_get_string(body, "worker_name", true, &name, err) != JSON_FIELD_OK) return -1;
    const char *why = "";
    if (net_base_url_parse(name, out, NET_BASE_URL_MAX, &why) == 0) return 0;
    json_field_fail(err, "worker_name", "'worker_name' must be the worker's base URL, http://host:port or "
                    "https://host:port: %s", why);
    return -1;
}

void ctl_worker_status_clear(struct ctl_worker_status *st)
{
    free(st->model_names);
    st->model_names = NULL;
    st->n_models = 0;
}

int ctl_payload_status(const json_t *obj, const char *prefix, struct ctl_worker_status *st,
                       struct json_field_error *err)
{
    memset(st, 0, sizeof *st);
    char param[96];
    json_t *arr;
    if (prefixed(json_get_array(obj, "model_names", true, &arr, err), prefix, err) != JSON_FIELD_OK) return -1;
    snprintf(param, sizeof param, "%s%smodel_names", prefix ? prefix : "", prefix ? "." : "");
    size_t n = json_array_size(arr);
    if (n == 0 || n > CTL_MAX_MODELS)
        return json_field_fail(err, param, "'model_names' must list between 1 and 256 model names");
    st->model_names = calloc(n, sizeof *st->model_names);
    if (!st->model_names) return json_field_fail(err, param, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > CTL_MAX_MODEL_NAME ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            ctl_worker_status_clear(st);
            return json_field_fail(err, param, "'model_names' must be an array of non-empty strings (at most 512 bytes each)");
        }
        st->model_names[i] = json_string_value(v);
    }
    st->n_models = n;
    double speed = 1;
    int rc = prefixed(json_get_number(obj, "speed", false, 0, 1e12, &speed, err), prefix, err);
    if (rc == JSON_FIELD_INVALID) goto fail;
    if (!(speed > 0)) {
        snprintf(param, sizeof param, "%s%sspeed", prefix ? prefix : "", prefix ? "." : "");
        json_field_fail(err, param, "'speed' must be a number > 0");
        goto fail;
    }
    st->speed = speed;
    int64_t q = 0;
    if (prefixed(json_get_int(obj, "queue_length", false, 0, INT32_MAX, &q, err), prefix, err) == JSON_FIELD_INVALID)
        goto fail;
    st->queue_length = q;
    return 0;
fail:
    ctl_worker_status_clear(st);
    return -1;
}

int ctl_payload_register(const json_t *body, struct ctl_register_req *req, struct json_field_error *err)
{
    memset(req, 0, sizeof *req);
    req->check_heart_beat = true;
    if (ctl_payload_worker_name(body, req->name, err) != 0) return -1;
    req->worker_name = req->name;
    if (json_get_bool(body, "check_heart_beat", false, &req->check_heart_beat, err) == JSON_FIELD_INVALID) return -1;
    if (json_get_bool(body, "multimodal", false, &req->multimodal, err) == JSON_FIELD_INVALID) return -1;
    json_t *status = NULL;
    int rc = json_get_object(body, "worker_status", false, &status, err);
    if (rc == JSON_FIELD_INVALID) return -1;
    if (rc == JSON_FIELD_OK) {
        if (ctl_payload_status(status, "worker_status", &req->status, err) != 0) return -1;
        req->has_status = true;
    }
    return 0;
}

int ctl_payload_heartbeat(const json_t *body, char worker_name[NET_BASE_URL_MAX], int64_t *queue_length,
                          struct json_field_error *err)
{
    if (ctl_payload_worker_name(body, worker_name, err) != 0) return -1;
    *queue_length = 0;
    if (json_get_int(body, "queue_length", true, 0, INT32_MAX, queue_length, err) != JSON_FIELD_OK) return -1;
    return 0;
}

int ctl_payload_queue_wait(const json_t *body, double *seconds, struct json_field_error *err)
{
    *seconds = -1;
    return json_get_number(body, "queue_wait_s", false, 0, 1e9, seconds, err) == JSON_FIELD_INVALID ? -1 : 0;
}

int ctl_payload_model(const json_t *body, const char **model, struct json_field_error *err)
{
    return json_get_string(body, "model", true, model, err) == JSON_FIELD_OK ? 0 : -1;
}

int ctl_payload_exclude(const json_t *body, const char *names[CTL_MAX_EXCLUDE], size_t *n,
                        struct json_field_error *err)
{
    json_t *list = NULL;
    *n = 0;
    int rc = json_get_array(body, "exclude", false, &list, err);
    if (rc == JSON_FIELD_MISSING) return 0;
    if (rc != JSON_FIELD_OK) return -1;
    if (json_array_size(list) > CTL_MAX_EXCLUDE) {
        json_field_fail(err, "exclude", "'exclude' may name at most %d workers", CTL_MAX_EXCLUDE);
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        if (!json_is_string(v)) {
            json_field_fail(err, "exclude", "'exclude' must be an array of worker addresses");
            return -1;
        }
        names[(*n)++] = json_string_value(v);
    }
    return 0;
}

int ctl_payload_prefix_key(const json_t *body, const char **key, struct json_field_error *err)
{
    *key = NULL;
    int rc = json_get_string(body, "prefix_key", false, key, err);
    if (rc == JSON_FIELD_INVALID) return -1;
    if (rc == JSON_FIELD_OK && strlen(*key) > CTL_MAX_PREFIX_KEY) {
        *key = NULL;
        json_field_fail(err, "prefix_key", "'prefix_key' must be at most %d bytes", CTL_MAX_PREFIX_KEY);
        return -1;
    }
    return 0;
}
