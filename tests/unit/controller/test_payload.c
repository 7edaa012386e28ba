/* Request bodies: what is accepted, and that each bad one names its field. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "controller/payload.h"

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    cr_assert_not_null(j, "bad test JSON: %s", s);
    return j;
}

/* Expects a register body to fail and name `param`. */
static void register_fails(const char *body, const char *param)
{
    json_t *j = parse(body);
    struct ctl_register_req r;
    struct json_field_error err = {{0}, {0}};
    cr_assert_neq(ctl_payload_register(j, &r, &err), 0, "accepted: %s", body);
    cr_assert_str_eq(err.param, param, "%s: param '%s' (%s)", body, err.param, err.message);
    cr_assert(strstr(err.message, strrchr(param, '.') ? strrchr(param, '.') + 1 : param) != NULL,
              "message does not name the field: %s", err.message);
    json_decref(j);
}

Test(payload, register_full)
{
    json_t *j = parse("{\"worker_name\":\"http://127.0.0.1:21002\",\"check_heart_beat\":false,"
                      "\"worker_status\":{\"model_names\":[\"a\",\"b\"],\"speed\":2.5,\"queue_length\":3},"
                      "\"multimodal\":true}");
    struct ctl_register_req r;
    struct json_field_error err;
    cr_assert_eq(ctl_payload_register(j, &r, &err), 0);
    cr_assert_str_eq(r.worker_name, "http://127.0.0.1:21002");
    cr_assert_not(r.check_heart_beat);
    cr_assert(r.multimodal);
    cr_assert(r.has_status);
    cr_assert_eq(r.status.n_models, 2);
    cr_assert_str_eq(r.status.model_names[1], "b");
    cr_assert_float_eq(r.status.speed, 2.5, 1e-12);
    cr_assert_eq(r.status.queue_length, 3);
    ctl_worker_status_clear(&r.status);
    json_decref(j);
}

Test(payload, register_defaults_and_null_status)
{
    json_t *j = parse("{\"worker_name\":\"https://w:443/\",\"worker_status\":null}");
    struct ctl_register_req r;
    struct json_field_error err;
    cr_assert_eq(ctl_payload_register(j, &r, &err), 0);
    cr_assert(r.check_heart_beat);
    cr_assert_not(r.has_status);
    cr_assert_str_eq(r.worker_name, "https://w:443", "the trailing slash is normalised away");
    json_decref(j);
    j = parse("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\"]}}");
    cr_assert_eq(ctl_payload_register(j, &r, &err), 0);
    cr_assert_float_eq(r.status.speed, 1.0, 1e-12);
    cr_assert_eq(r.status.queue_length, 0);
    ctl_worker_status_clear(&r.status);
    json_decref(j);
}

Test(payload, register_errors_name_the_field)
{
    register_fails("{}", "worker_name");
    register_fails("{\"worker_name\":5}", "worker_name");
    register_fails("{\"worker_name\":\"\"}", "worker_name");
    register_fails("{\"worker_name\":\"127.0.0.1:21002\"}", "worker_name");
    register_fails("{\"worker_name\":\"http://a b\"}", "worker_name");
    /* Only scheme://host:port: anything more would be fetched by the controller and gateways. */
    register_fails("{\"worker_name\":\"http://w\"}", "worker_name");
    register_fails("{\"worker_name\":\"http://w:1/admin?x=1\"}", "worker_name");
    register_fails("{\"worker_name\":\"http://user@w:1\"}", "worker_name");
    register_fails("{\"worker_name\":\"file:///etc/passwd\"}", "worker_name");
    register_fails("{\"worker_name\":\"http://w:99999\"}", "worker_name");
    register_fails("{\"worker_name\":\"http://w:1\",\"check_heart_beat\":\"yes\"}", "check_heart_beat");
    register_fails("{\"worker_name\":\"http://w:1\",\"multimodal\":1}", "multimodal");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":[]}", "worker_status");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{}}", "worker_status.model_names");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":\"a\"}}",
                   "worker_status.model_names");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[]}}",
                   "worker_status.model_names");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\",3]}}",
                   "worker_status.model_names");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"\"]}}",
                   "worker_status.model_names");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\"],\"speed\":\"fast\"}}",
                   "worker_status.speed");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\"],\"speed\":0}}",
                   "worker_status.speed");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\"],\"queue_length\":-1}}",
                   "worker_status.queue_length");
    register_fails("{\"worker_name\":\"http://w:1\",\"worker_status\":{\"model_names\":[\"a\"],\"queue_length\":1.5}}",
                   "worker_status.queue_length");
}

Test(payload, status_from_worker)
{
    json_t *j = parse("{\"model_names\":[\"m\"],\"speed\":1,\"queue_length\":0}");
    struct ctl_worker_status st;
    struct json_field_error err;
    cr_assert_eq(ctl_payload_status(j, NULL, &st, &err), 0);
    cr_assert_eq(st.n_models, 1);
    ctl_worker_status_clear(&st);
    json_decref(j);
    j = parse("{\"speed\":1}");
    cr_assert_neq(ctl_payload_status(j, NULL, &st, &err), 0);
    cr_assert_str_eq(err.param, "model_names");
    cr_assert_null(st.model_names);
    json_decref(j);
}

Test(payload, heartbeat)
{
    struct json_field_error err;
    char name[NET_BASE_URL_MAX];
    int64_t q;
    json_t *j = parse("{\"worker_name\":\"HTTP://w:1/\",\"queue_length\":4}");
    cr_assert_eq(ctl_payload_heartbeat(j, name, &q, &err), 0);
    cr_assert_str_eq(name, "http://w:1", "normalised as at registration");
    cr_assert_eq(q, 4);
    json_decref(j);
    const char *bad[][2] = {
        {"{\"queue_length\":4}", "worker_name"},
        {"{\"worker_name\":[],\"queue_length\":4}", "worker_name"},
        {"{\"worker_name\":\"http://w:1/x\",\"queue_length\":4}", "worker_name"},
        {"{\"worker_name\":\"http://w:1\"}", "queue_length"},
        {"{\"worker_name\":\"http://w:1\",\"queue_length\":\"4\"}", "queue_length"},
        {"{\"worker_name\":\"http://w:1\",\"queue_length\":-2}", "queue_length"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = parse(bad[i][0]);
        cr_assert_neq(ctl_payload_heartbeat(j, name, &q, &err), 0, "accepted %s", bad[i][0]);
        cr_assert_str_eq(err.param, bad[i][1]);
        json_decref(j);
    }
}

Test(payload, heartbeat_queue_wait_is_optional)
{
    struct json_field_error err;
    double wait = 7;
    json_t *j = parse("{\"worker_name\":\"http://w:1\",\"queue_length\":4}");
    cr_assert_eq(ctl_payload_queue_wait(j, &wait, &err), 0);
    cr_assert_float_eq(wait, -1.0, 1e-12, "FastChat's heartbeat has none");
    json_decref(j);
    j = parse("{\"worker_name\":\"http://w:1\",\"queue_length\":4,\"queue_wait_s\":2.5}");
    cr_assert_eq(ctl_payload_queue_wait(j, &wait, &err), 0);
    cr_assert_float_eq(wait, 2.5, 1e-12);
    json_decref(j);
    j = parse("{\"worker_name\":\"http://w:1\",\"queue_length\":4,\"queue_wait_s\":-1}");
    cr_assert_neq(ctl_payload_queue_wait(j, &wait, &err), 0);
    cr_assert_str_eq(err.param, "queue_wait_s");
    json_decref(j);
}

Test(payload, model)
{
    struct json_field_error err;
    const char *model;
    json_t *j = parse("{\"model\":\"llama\"}");
    cr_assert_eq(ctl_payload_model(j, &model, &err), 0);
    cr_assert_str_eq(model, "llama");
    json_decref(j);
    j = parse("{\"model\":null}");
    cr_assert_neq(ctl_payload_model(j, &model, &err), 0);
    cr_assert_str_eq(err.param, "model");
    json_decref(j);
    j = parse("{\"model\":{}}");
    cr_assert_neq(ctl_payload_model(j, &model, &err), 0);
    cr_assert_str_eq(err.param, "model");
    cr_assert(strstr(err.message, "string") != NULL);
    json_decref(j);
}

Test(payload, prefix_key_is_an_optional_short_string)
{
    struct json_field_error err = {{0}, {0}};
    const char *key = "untouched";
    json_t *j = parse("{\"model\":\"m\"}");
    cr_assert_eq(ctl_payload_prefix_key(j, &key, &err), 0);
    cr_assert_null(key);
    json_decref(j);
    j = parse("{\"model\":\"m\",\"prefix_key\":null}");
    cr_assert_eq(ctl_payload_prefix_key(j, &key, &err), 0);
    cr_assert_null(key);
    json_decref(j);
    j = parse("{\"model\":\"m\",\"prefix_key\":\"0123456789abcdef\"}");
    cr_assert_eq(ctl_payload_prefix_key(j, &key, &err), 0);
    cr_assert_str_eq(key, "0123456789abcdef");
    json_decref(j);
    j = parse("{\"model\":\"m\",\"prefix_key\":7}");
    cr_assert_neq(ctl_payload_prefix_key(j, &key, &err), 0);
    cr_assert_str_eq(err.param, "prefix_key");
    json_decref(j);
    char body[600];
    snprintf(body, sizeof body, "{\"prefix_key\":\"%0300d\"}", 0);
    j = parse(body);
    cr_assert_neq(ctl_payload_prefix_key(j, &key, &err), 0);
    cr_assert_null(key);
    cr_assert(strstr(err.message, "256"), "%s", err.message);
    json_decref(j);
}
