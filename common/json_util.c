#include "common/json_util.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

int json_field_fail(struct json_field_error *err, const char *key, const char *fmt, ...)
{
    if (err) {
        snprintf(err->param, sizeof err->param, "%s", key ? key : "");
        va_list ap;
        va_start(ap, fmt);
        utf8_vsnprintf(err->message, sizeof err->message, fmt, ap);
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

int json_get_number_range(const json_t *obj, const char *key, bool required, double min, double max, bool open_min,
                          double *out, struct json_field_error *err)
{
    json_t *v;
    int rc = field_lookup(obj, key, required, &v, err);
    if (rc != JSON_FIELD_OK) return rc;
    if (!json_is_number(v)) return json_field_fail(err, key, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!((open_min ? d > min : d >= min) && d <= max))
        return json_field_fail(err, key, "'%s' must be a number in %c%g, %g], got %g", key, open_min ? '(' : '[', min,
                               max, d);
    *out = d;
    return JSON_FIELD_OK;
}

int json_get_number(const json_t *obj, const char *key, bool required, double min, double max,
                    double *out, struct json_field_error *err)
{
    return json_get_number_range(obj, key, required, min, max, false, out, err);
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

/* What jansson's error says, in the terms of someone writing a request: its message with the
 * text it stopped at quoted (cleaned and shortened: it is the client's own bytes), and never
 * its option names. */
static void describe_json_error(const json_error_t *jerr, struct json_field_error *err)
{
    switch (json_error_code(jerr)) {
    case json_error_invalid_utf8:
        json_field_fail(err, "", "the request body is not valid UTF-8 (at line %d column %d)", jerr->line,
                        jerr->column);
        return;
    case json_error_null_byte_in_key:
        json_field_fail(err, "", "the request body has an object key with a NUL character (\\u0000), which "
                        "is not supported (at line %d column %d)", jerr->line, jerr->column);
        return;
    case json_error_out_of_memory:
        json_field_fail(err, "", "the request body is too large to parse");
        return;
    default:
        break;
    }
    /* "invalid token near 'tru'": the quote may be cut short, without its closing mark. */
    char what[JSON_ERROR_TEXT_LENGTH + 32], near[64] = "";
    static const char eof_expected[] = "end of file expected";
    /* jansson's "end of file expected" means that something follows the value. */
    if (json_error_code(jerr) == json_error_end_of_input_expected &&
        !strncmp(jerr->text, eof_expected, sizeof eof_expected - 1))
        utf8_snprintf(what, sizeof what, "unexpected data after the JSON value%s",
                      jerr->text + sizeof eof_expected - 1);
    else
        utf8_snprintf(what, sizeof what, "%s", jerr->text);
    char *at = strstr(what, " near '");
    if (at) {
        *at = '\0';
        const char *q = at + 7;
        size_t qlen = strlen(q);
        if (qlen && q[qlen - 1] == '\'') qlen--;
        char clipped[48];
        snprintf(near, sizeof near, " near '%s'", utf8_clip(clipped, sizeof clipped, q, qlen));
    } else if ((at = strstr(what, " near end of file"))) {
        *at = '\0';
        snprintf(near, sizeof near, " at the end of the body");
    }
    char clean[sizeof what];
    json_field_fail(err, "", "the request body is not valid JSON: %s%s (at line %d column %d)",
                    utf8_clip(clean, sizeof clean, what, strlen(what)), near, jerr->line, jerr->column);
}

/* Appends ".key" or "[i]" to a field path, cut at a character boundary when it is long. */
static void path_push(char *path, size_t cap, size_t len, const char *key, size_t key_len, size_t index)
{
    char piece[64];
    if (key)
        utf8_snprintf(path + len, cap - len, "%s%s", len ? "." : "", utf8_clip(piece, sizeof piece, key, key_len));
    else
        utf8_snprintf(path + len, cap - len, "[%zu]", index);
}

/* Finds the first string (or key) holding a NUL character; writes its path ("messages[0].content")
 * and returns true. */
static bool find_nul(const json_t *v, char *path, size_t cap, size_t len)
{
    if (json_is_string(v)) return memchr(json_string_value(v), '\0', json_string_length(v)) != NULL;
    if (json_is_object(v)) {
        const char *key;
        size_t key_len;
        json_t *item;
        json_object_keylen_foreach((json_t *)v, key, key_len, item) {
            path_push(path, cap, len, key, key_len, 0);
            if (find_nul(item, path, cap, strlen(path))) return true;
            path[len] = '\0';
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) {
            path_push(path, cap, len, NULL, 0, i);
            if (find_nul(item, path, cap, strlen(path))) return true;
            path[len] = '\0';
        }
    }
    return false;
}

json_t *json_parse_object(const char *body, size_t len, struct json_field_error *err)
{
    json_error_t jerr;
    if (!body || len == 0) {
        json_field_fail(err, "", "the request body is empty; expected a JSON object");
        return NULL;
    }
    /* \u0000 is valid JSON, so it is decoded and then refused by name below: a C string would
     * end at it, and a prompt cut short or a model name "m\u0000x" read as "m" must not pass. */
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        describe_json_error(&jerr, err);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        json_field_fail(err, "", "the request body must be a JSON object");
        return NULL;
    }
    char path[sizeof err->param] = "";
    if (find_nul(root, path, sizeof path, 0)) {
        json_decref(root);
        json_field_fail(err, path, "'%s' contains a NUL character (\\u0000); text with NUL characters is "
                        "not supported", path);
        return NULL;
    }
    return root;
}

const char openai_error_body_oom[] =
    "{\"error\":{\"message\":\"the server ran out of memory\",\"type\":\"server_error\",\"param\":null,"
    "\"code\":null}}";

json_t *json_string_clean(const char *text)
{
    size_t len = strlen(text);
    if (utf8_is_clean(text, len)) return json_stringn_nocheck(text, len);
    char *clean = utf8_clean_dup(text, len);
    json_t *s = clean ? json_string_nocheck(clean) : NULL;
    free(clean);
    return s;
}

char *openai_error_body(const char *message, const char *type, const char *param, const char *code)
{
    json_t *root = json_pack("{s:{s:o, s:s, s:o, s:o}}", "error", "message", json_string_clean(message ? message : ""),
                             "type", type ? type : "invalid_request_error", "param",
                             param && *param ? json_string_clean(param) : json_null(), "code",
                             code && *code ? json_string_clean(code) : json_null());
    char *s = root ? json_dump_compact(root) : NULL;
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
