#include "common/json_util.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int json_field_fail(struct json_field_error *err, const char *key, const char *fmt, ...)
{
    if (err) {
        snprintf(err->param, sizeof err->param, "%s", key ? key : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return JSON_FIELD_INVALID;
}

/* Looks the key up; returns MISSING/INVALID for an absent field as `required` demands. */
static int field_lookup(const json_t *obj, const char *key, bool required, json_t **value,
                        struct json_field_error *err)
{
    *value = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (*value && !json_is_null(*value)) return JSON_FIELD_OK;
    if (required) return json_field_fail(err, key, "'%s' is a required field", key);
    return JSON_FIELD_MISSING;
}

int json_get_string(const json_t *obj, const char *key, bool required, const char **out,
                    struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_string(v)) return json_field_fail(err, key, "'%s' must be a string", key);
    *out = json_string_value(v);
    return JSON_FIELD_OK;
}

int json_get_int(const json_t *obj, const char *key, bool required, int64_t min, int64_t max,
                 int64_t *out, struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    int64_t n;
    if (json_is_integer(v)) {
        n = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        /* 16.0 is an integer to JavaScript clients; accept it as Python servers do. */
        n = (int64_t)json_real_value(v);
    } else {
        return json_field_fail(err, key, "'%s' must be an integer", key);
    }
    if (n < min || n > max) {
        if (max == INT64_MAX)
            return json_field_fail(err, key, "'%s' must be an integer >= %" PRId64 ", got %" PRId64, key,
                              min, n);
        return json_field_fail(err, key, "'%s' must be an integer in [%" PRId64 ", %" PRId64 "], got %" PRId64,
                          key, min, max, n);
    }
    *out = n;
    return JSON_FIELD_OK;
}

int json_get_number(const json_t *obj, const char *key, bool required, double min, double max,
                    double *out, struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_number(v)) return json_field_fail(err, key, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!(d >= min && d <= max))
        return json_field_fail(err, key, "'%s' must be a number in [%g, %g], got %g", key, min, max, d);
    *out = d;
    return JSON_FIELD_OK;
}

int json_check_token_ids(const json_t *obj, const char *key, size_t max, int64_t vocab,
                         struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, false, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_array(v) || json_array_size(v) > max)
        return json_field_fail(err, key, "'%s' must be an array of at most %zu token ids", key, max);
    size_t i;
    json_t *id;
    json_array_foreach(v, i, id) {
        json_int_t n = json_is_integer(id) ? json_integer_value(id) : -1;
        if (n < 0) return json_field_fail(err, key, "'%s' must hold token ids: integers >= 0", key);
        if (vocab > 0 && n >= vocab)
            return json_field_fail(err, key, "'%s' holds %" PRId64 ", which is not a token id of this model "
                                   "(its vocabulary has %" PRId64 " tokens)", key, (int64_t)n, vocab);
    }
    return JSON_FIELD_OK;
}

int json_check_logit_bias(const json_t *obj, const char *key, int64_t vocab, struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, false, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_object(v))
        return json_field_fail(err, key, "'%s' must be an object mapping token ids to biases", key);
    const char *k;
    json_t *bias;
    json_object_foreach(v, k, bias) {
        /* Digits only: no sign, no spaces, no exponent; ten digits bound the value. */
        size_t len = strlen(k);
        bool digits = len > 0 && len <= 10 && strspn(k, "0123456789") == len;
        int64_t id = digits ? strtoll(k, NULL, 10) : -1;
        if (!digits || id > INT32_MAX)
            return json_field_fail(err, key, "'%s' keys must be token ids written as integers >= 0, not '%.32s'",
                                   key, k);
        if (vocab > 0 && id >= vocab)
            return json_field_fail(err, key, "'%s' names token %" PRId64 ", which is not a token id of this "
                                   "model (its vocabulary has %" PRId64 " tokens)", key, id, vocab);
        double d = json_is_number(bias) ? json_number_value(bias) : NAN;
        if (!(d >= -100.0 && d <= 100.0))
            return json_field_fail(err, key, "'%s' values must be numbers in [-100, 100] (token %s)", key, k);
    }
    return JSON_FIELD_OK;
}

int json_get_bool(const json_t *obj, const char *key, bool required, bool *out,
                  struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_boolean(v)) return json_field_fail(err, key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return JSON_FIELD_OK;
}

int json_get_object(const json_t *obj, const char *key, bool required, json_t **out,
                    struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_object(v)) return json_field_fail(err, key, "'%s' must be an object", key);
    *out = v;
    return JSON_FIELD_OK;
}

int json_get_array(const json_t *obj, const char *key, bool required, json_t **out,
                   struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_array(v)) return json_field_fail(err, key, "'%s' must be an array", key);
    *out = v;
    return JSON_FIELD_OK;
}

json_t *json_parse_object(const char *body, size_t len, struct json_field_error *err)
{
    json_error_t jerr;
    if (!body || len == 0) {
        json_field_fail(err, "", "the request body is empty; expected a JSON object");
        return NULL;
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        json_field_fail(err, "", "the request body is not valid JSON: %s (line %d, column %d)", jerr.text,
                   jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        json_field_fail(err, "", "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

char *openai_error_body(const char *message, const char *type, const char *param, const char *code)
{
    json_t *inner = json_pack("{s:s, s:s, s:o, s:o}", "message", message ? message : "", "type",
                              type ? type : "invalid_request_error", "param",
                              param && *param ? json_string(param) : json_null(), "code",
                              code && *code ? json_string(code) : json_null());
    json_t *root = json_pack("{s:o}", "error", inner);
    char *s = json_dump_compact(root);
    json_decref(root);
    return s;
}

const char *openai_error_type_for_status(int status)
{
    switch (status) {
    case 400: case 405: case 408: case 413: case 422: case 431: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_exceeded";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *json_dump_compact(const json_t *value)
{
    return json_dumps(value, JSON_COMPACT | JSON_PRESERVE_ORDER);
}
