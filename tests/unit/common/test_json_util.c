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
