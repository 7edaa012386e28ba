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

/* A message quoting a client's raw bytes (a URL with 0x80-0xFF, a name cut mid-character)
 * still makes a JSON error body, with U+FFFD where the bytes were not UTF-8. */
Test(json_util, openai_error_body_takes_any_bytes)
{
    char *s = openai_error_body("no route for /\x80\xff/caf\xC3", "not_found_error", "a\xE4\xB8", NULL);
    cr_assert_not_null(s, "no body for a message with invalid UTF-8");
    json_t *o = parse(s);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")),
                     "no route for /\xEF\xBF\xBD\xEF\xBF\xBD/caf\xEF\xBF\xBD");
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), "a\xEF\xBF\xBD");
    free(s);
    json_decref(o);
    json_t *str = json_string_clean("ok\xC0");
    cr_assert_str_eq(json_string_value(str), "ok\xEF\xBF\xBD");
    json_decref(str);
    o = parse(openai_error_body_oom);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "type")), "server_error");
    json_decref(o);
}

/* A long message made from user text is cut between characters, not inside one. */
Test(json_util, field_fail_cuts_at_a_character_boundary)
{
    char name[301 * 3];
    for (int i = 0; i < 300; i++) memcpy(name + 3 * i, "\xE4\xB8\xAD", 3);
    name[900] = '\0';
    struct json_field_error err;
    /* "x" shifts the text by one byte, so a byte-wise cut would split a character. */
    json_field_fail(&err, "model", "x%s", name);
    size_t len = strlen(err.message);
    cr_assert_geq(len, sizeof err.message - 4);
    cr_assert_eq((len - 1) % 3, 0, "cut inside a character: %zu bytes", len);
    json_t *v = json_string(err.message);
    cr_assert_not_null(v, "the message is not valid UTF-8");
    json_decref(v);
}

/* Messages say what is wrong in a client's terms: where, and the text near it, but never
 * jansson's option names (its NUL message names JSON_ALLOW_NUL). */
Test(json_util, parse_errors_in_user_terms)
{
    static const struct {
        const char *body;
        size_t len;
        const char *want;
    } cases[] = {
        {"{\"a\":tru}", 9, "the request body is not valid JSON: invalid token near 'tru' (at line 1 column 8)"},
        {"{\"a\":1", 6, "the request body is not valid JSON: '}' expected at the end of the body (at line 1 column 6)"},
        {"{\"a\":\"\x80\"}", 9, "the request body is not valid UTF-8 (at line 1 column 6)"},
        {"{\"a\\u0000b\":1}", 14, "the request body has an object key with a NUL character (\\u0000), which is "
                                  "not supported (at line 1 column 11)"},
        {"{\"a\":1,\"a\":2}", 13, "the request body is not valid JSON: duplicate object key near '\"a\"' (at line 1 column 10)"},
        {"{\"a\":1}x", 8, "the request body is not valid JSON: unexpected data after the JSON value near 'x' (at line 1 column 8)"},
        {"{\"a\":1}\0", 8, "the request body is not valid JSON: unexpected data after the JSON value at the end of the body (at line 1 column 8)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct json_field_error err;
        cr_assert_null(json_parse_object(cases[i].body, cases[i].len, &err));
        cr_assert_str_eq(err.message, cases[i].want, "case %zu", i);
        cr_assert_str_eq(err.param, "");
    }
    /* The quoted text is the client's: invalid bytes in it are cleaned. */
    struct json_field_error err;
    cr_assert_null(json_parse_object("{\"a\":\"x\"\xff}", 10, &err));
    json_t *v = json_string(err.message);
    cr_assert_not_null(v, "not UTF-8: %s", err.message);
    json_decref(v);
}

/* \u0000 is valid JSON, but every consumer reads C strings: refused by the field's path. */
Test(json_util, nul_characters_refused_by_field)
{
    static const struct {
        const char *body, *param;
    } cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", "messages[0].content"},
        {"{\"prompt\":\"\\u0000\"}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[\"ok\",\"x\\u0000\"]}", "prompt[1]"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\u0000\"}]}]}",
         "messages[0].content[0].text"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct json_field_error err;
        cr_assert_null(json_parse_object(cases[i].body, strlen(cases[i].body), &err), "case %zu", i);
        cr_assert_str_eq(err.param, cases[i].param);
        cr_assert_not_null(strstr(err.message, "NUL"), "%s", err.message);
        cr_assert_null(strstr(err.message, "JSON_"), "%s", err.message);
    }
    json_t *o = parse("{\"prompt\":\"\\u00e9 fine\"}");
    json_decref(o);
}
