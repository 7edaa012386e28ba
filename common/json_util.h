/* Reading and validating JSON request fields (over jansson), and OpenAI-shaped error bodies.
 *
 * Every getter takes the object, the key and whether the field is required, and on failure
 * fills a json_field_error naming the field and what was wrong, so that a server can answer
 * 400 with a message a user can act on ("'max_tokens' must be an integer >= 1"). A missing
 * optional field leaves *out untouched and returns 0; JSON null counts as missing. */
#ifndef SLUICE_COMMON_JSON_UTIL_H
#define SLUICE_COMMON_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_field_error {
    char param[96];    /* the field's name, for OpenAI's "param" */
    char message[256]; /* a sentence naming the field */
};

enum { JSON_FIELD_OK = 0, JSON_FIELD_MISSING = 1, JSON_FIELD_INVALID = -1 };

/* Fills err with the field's name and a printf-style sentence; returns JSON_FIELD_INVALID.
 * Every validator in the project reports through this. */
int json_field_fail(struct json_field_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Each returns JSON_FIELD_OK when the field was present and valid (and *out was set),
 * JSON_FIELD_MISSING when it was absent or null (an error only when required: then the
 * return is JSON_FIELD_INVALID with err filled), JSON_FIELD_INVALID when present and wrong. */
int json_get_string(const json_t *obj, const char *key, bool required, const char **out,
                    struct json_field_error *err);
int json_get_int(const json_t *obj, const char *key, bool required, int64_t min, int64_t max,
                 int64_t *out, struct json_field_error *err);
int json_get_number(const json_t *obj, const char *key, bool required, double min, double max,
                    double *out, struct json_field_error *err);
/* The same over (min, max] when open_min: for fields whose lower bound itself is refused
 * (top_p, repetition_penalty). */
int json_get_number_range(const json_t *obj, const char *key, bool required, double min, double max, bool open_min,
                          double *out, struct json_field_error *err);
int json_get_bool(const json_t *obj, const char *key, bool required, bool *out,
                  struct json_field_error *err);
/* Objects and arrays are returned borrowed (no new reference). */
int json_get_object(const json_t *obj, const char *key, bool required, json_t **out,
                    struct json_field_error *err);
int json_get_array(const json_t *obj, const char *key, bool required, json_t **out,
                   struct json_field_error *err);

/* Token-id fields of the sampling APIs. vocab > 0 also bounds each id (< vocab); 0 leaves the
 * bound to whoever knows the vocabulary (the gateway does not, the worker does).
 *
 * key: an array of at most max ids, each an integer >= 0 (vLLM's stop_token_ids). */
int json_check_token_ids(const json_t *obj, const char *key, size_t max, int64_t vocab,
                         struct json_field_error *err);
/* key: an object mapping token ids, written as decimal strings, to numbers in [-100, 100]
 * (OpenAI's logit_bias). */
int json_check_logit_bias(const json_t *obj, const char *key, int64_t vocab, struct json_field_error *err);

/* Parses a request body that must be one JSON object. On failure fills err and returns NULL:
 * param "" for a body that is not JSON (the message says what is wrong and where, in a
 * client's terms), or the path of a string holding a NUL character ("messages[0].content"):
 * \u0000 is valid JSON but every program here reads strings as C strings, so it is refused
 * by name rather than cut short. */
json_t *json_parse_object(const char *body, size_t len, struct json_field_error *err);

/* {"error":{"message":..,"type":..,"param":..,"code":..}}; param and code may be NULL (JSON
 * null). Any bytes are accepted: what is not valid UTF-8 (a client's raw bytes quoted in the
 * message) becomes U+FFFD. Returns a malloc'd compact string, NULL only when out of memory:
 * then send openai_error_body_oom, which needs no memory. */
char *openai_error_body(const char *message, const char *type, const char *param, const char *code);
extern const char openai_error_body_oom[];

/* A JSON string of any text: what is not valid UTF-8 becomes U+FFFD (json_string refuses such
 * text, and a message quoting a client's bytes must still go out). NULL only when out of
 * memory. */
json_t *json_string_clean(const char *text);

/* The error "type" OpenAI uses for an HTTP status: 400 invalid_request_error,
 * 401 authentication_error, 404 not_found_error, 429 rate_limit_exceeded, 5xx server_error... */
const char *openai_error_type_for_status(int status);

/* json_dumps with the flags every program uses (compact, keys in insertion order). */
char *json_dump_compact(const json_t *value);

#endif
