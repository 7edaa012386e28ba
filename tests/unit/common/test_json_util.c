#include <criterion/criterion.h>
#include <string.h>

#include "common/json_util.h"

static json_t *parse(const char *s)
{
    struct json_field_error err;
    json_t *v = json_parse_object(s, strlen(s), &err);
    cr_assert_not_null(v, "parse failed: %s", err.message);
    return v;
}

Test(json_util, required_field_missing_names_it)
{
    json_t *o = parse("{\"a\": 1}");
    struct json_field_error err;
    const char *s = NULL;
    cr_assert_eq(json_get_string(o, "model", true, &s, &err), JSON_FIELD_INVALID);
    cr_assert_str_eq(err.param, "model");
    cr_assert_not_null(strstr(err.message, "'model'"));
    json_decref(o);
}

Test(json_util, optional_missing_and_null_leave_default)
{
    json_t *o = parse("{\"t\": null}");
    double t = 0.7;
    cr_assert_eq(json_get_number(o, "t", false, 0, 2, &t, NULL), JSON_FIELD_MISSING);
    cr_assert_eq(json_get_number(o, "u", false, 0, 2, &t, NULL), JSON_FIELD_MISSING);
    cr_assert_float_eq(t, 0.7, 1e-12);
    json_decref(o);
}

Test(json_util, wrong_type_and_range)
{
    json_t *o = parse("{\"n\": \"3\", \"m\": -1, \"x\": 2.5, \"k\": 16.0, \"b\": 1}");
    struct json_field_error err;
    int64_t n;
    bool b;
    cr_assert_eq(json_get_int(o, "n", true, 1, 100, &n, &err), JSON_FIELD_INVALID);
    cr_assert_not_null(strstr(err.message, "integer"));
    cr_assert_eq(json_get_int(o, "m", true, 1, INT64_MAX, &n, &err), JSON_FIELD_INVALID);
    cr_assert_not_null(strstr(err.message, ">= 1"));
    cr_assert_eq(json_get_int(o, "x", true, 0, 10, &n, &err), JSON_FIELD_INVALID);
    cr_assert_eq(json_get_int(o, "k", true, 0, 100, &n, &err), JSON_FIELD_OK);
    cr_assert_eq(n, 16);
    cr_assert_eq(json_get_bool(o, "b", true, &b, &err), JSON_FIELD_INVALID);
    json_decref(o);
}

Test(json_util, malformed_bodies)
{
    struct json_field_error err;
    cr_assert_null(json_parse_object("{\"a\":", 5, &err));
    cr_assert_not_null(strstr(err.message, "not valid JSON"));
    cr_assert_null(json_parse_object("[1,2]", 5, &err));
    cr_assert_null(json_parse_object("", 0, &err));
    cr_assert_null(json_parse_object("{\"a\":1,\"a\":2}", 13, &err), "duplicate keys are rejected");
}

Test(json_util, openai_error_shape)
{
    char *s = openai_error_body("bad 'n'", "invalid_request_error", "n", NULL);
    json_t *o = parse(s);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")), "bad 'n'");
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), "n");
    cr_assert(json_is_null(json_object_get(e, "code")));
    cr_assert_str_eq(openai_error_type_for_status(404), "not_found_error");
    free(s);
    json_decref(o);
}

Test(json_util, token_ids_and_logit_bias)
{
    struct json_field_error err;
    static const struct {
        const char *body;
        int64_t vocab;
        int want;
    } ids[] = {
        {"{}", 0, JSON_FIELD_MISSING},
        {"{\"t\": null}", 0, JSON_FIELD_MISSING},
        {"{\"t\": []}", 0, JSON_FIELD_OK},
        {"{\"t\": [0, 2, 7]}", 8, JSON_FIELD_OK},
        {"{\"t\": [0, 2, 8]}", 8, JSON_FIELD_INVALID},
        {"{\"t\": [99999]}", 0, JSON_FIELD_OK},
        {"{\"t\": [-1]}", 0, JSON_FIELD_INVALID},
        {"{\"t\": [1.5]}", 0, JSON_FIELD_INVALID},
        {"{\"t\": [\"3\"]}", 0, JSON_FIELD_INVALID},
        {"{\"t\": 3}", 0, JSON_FIELD_INVALID},
        {"{\"t\": [1,2,3,4,5]}", 0, JSON_FIELD_INVALID}, /* more than max */
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        json_t *o = parse(ids[i].body);
        memset(&err, 0, sizeof err);
        cr_expect_eq(json_check_token_ids(o, "t", 4, ids[i].vocab, &err), ids[i].want, "%s", ids[i].body);
        if (ids[i].want == JSON_FIELD_INVALID) cr_expect_str_eq(err.param, "t", "%s", ids[i].body);
        json_decref(o);
    }
    static const struct {
        const char *body;
        int64_t vocab;
        int want;
    } lb[] = {
        {"{}", 0, JSON_FIELD_MISSING},
        {"{\"b\": {}}", 0, JSON_FIELD_OK},
        {"{\"b\": {\"0\": -100, \"511\": 100, \"7\": 0.5}}", 512, JSON_FIELD_OK},
        {"{\"b\": {\"512\": 1}}", 512, JSON_FIELD_INVALID},
        {"{\"b\": {\"4294967296\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"99999\": 1}}", 0, JSON_FIELD_OK},
        {"{\"b\": {\"abc\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"-1\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"1.5\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\" 1\": 1}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"1\": 100.5}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"1\": -101}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"1\": \"5\"}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": {\"1\": null}}", 0, JSON_FIELD_INVALID},
        {"{\"b\": [1]}", 0, JSON_FIELD_INVALID},
    };
    for (size_t i = 0; i < sizeof lb / sizeof lb[0]; i++) {
        json_t *o = parse(lb[i].body);
        memset(&err, 0, sizeof err);
        cr_expect_eq(json_check_logit_bias(o, "b", lb[i].vocab, &err), lb[i].want, "%s", lb[i].body);
        if (lb[i].want == JSON_FIELD_INVALID) cr_expect_str_eq(err.param, "b", "%s", lb[i].body);
        json_decref(o);
    }
}
