/* Structured output (response_format, and vLLM's guided_* and structured_outputs) and tools
 * (tools, tool_choice, parallel_tool_calls): their shapes checked here, passed on as they are.
 * Whether a schema or grammar compiles only the worker knows (its grammar engine): its 400
 * names the same field. */
#include <stdio.h>
#include <string.h>

#include "common/utf8.h"
#include "gateway/validate.h"

enum { GW_MAX_TOOLS = 128 };

static int bad(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
    return 400;
}

/* OpenAI's rule for a function's name: 1 to 64 of a-z A-Z 0-9 _ -. */
static bool name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int check_tool(const json_t *t, size_t i, struct json_field_error *err)
{
    json_t *fn = json_object_get(t, "function");
    const char *type = json_string_value(json_object_get(t, "type"));
    if (!json_is_object(t) || !type || strcmp(type, "function") != 0 || !json_is_object(fn)) {
        json_field_fail(err, "tools", "tools[%zu] must be {\"type\": \"function\", \"function\": {...}}", i);
        return 400;
    }
    if (!name_ok(json_string_value(json_object_get(fn, "name")))) {
        json_field_fail(err, "tools", "tools[%zu].function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", i);
        return 400;
    }
    json_t *v = json_object_get(fn, "description");
    if (v && !json_is_null(v) && !json_is_string(v)) {
        json_field_fail(err, "tools", "tools[%zu].function.description must be a string", i);
        return 400;
    }
    v = json_object_get(fn, "parameters");
    if (v && !json_is_null(v) && !json_is_object(v)) {
        json_field_fail(err, "tools", "tools[%zu].function.parameters must be a JSON Schema object", i);
        return 400;
    }
    v = json_object_get(fn, "strict");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        json_field_fail(err, "tools", "tools[%zu].function.strict must be a boolean", i);
        return 400;
    }
    return 0;
}

static bool tools_name(const json_t *tools, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        if (!strcmp(json_string_value(json_object_get(json_object_get(t, "function"), "name")), name)) return true;
    }
    return false;
}

static int check_tool_choice(const json_t *tc, const json_t *tools, struct json_field_error *err)
{
    size_t n_tools = json_array_size(tools);
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (strcmp(s, "none") && strcmp(s, "auto") && strcmp(s, "required"))
            return bad(err, "tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or a named function");
        if (!strcmp(s, "required") && !n_tools) return bad(err, "tool_choice", "'tool_choice' 'required' needs 'tools'");
        return 0;
    }
    const char *type = json_string_value(json_object_get(tc, "type"));
    const char *name = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
    if (!json_is_object(tc) || !type || strcmp(type, "function") != 0 || !name)
        return bad(err, "tool_choice",
                   "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}");
    if (!n_tools || !tools_name(tools, name)) {
        char shown[80];
        json_field_fail(err, "tool_choice", "'tool_choice' names the function '%s', which is not among the tools",
                        utf8_clip(shown, sizeof shown, name, strlen(name)));
        return 400;
    }
    return 0;
}

int gw_validate_tools(const json_t *body, json_t *base, struct json_field_error *err)
{
    json_t *tools = NULL, *tc = json_object_get(body, "tool_choice");
    if (json_get_array(body, "tools", false, &tools, err) == JSON_FIELD_INVALID) return 400;
    if (json_array_size(tools) > GW_MAX_TOOLS) return bad(err, "tools", "'tools' may hold at most 128 functions");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        if (check_tool(t, i, err)) return 400;
    }
    if (tc && !json_is_null(tc) && check_tool_choice(tc, tools, err)) return 400;
    bool parallel;
    int rc = json_get_bool(body, "parallel_tool_calls", false, &parallel, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    if (json_array_size(tools) > 0) json_object_set(base, "tools", tools);
    if (tc && !json_is_null(tc)) json_object_set(base, "tool_choice", tc);
    if (rc == JSON_FIELD_OK) json_object_set_new(base, "parallel_tool_calls", json_boolean(parallel));
    return 0;
}

static int check_response_format(const json_t *rf, struct json_field_error *err)
{
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || !type)
        return bad(err, "response_format", "'response_format' must be an object with a 'type'");
    if (!strcmp(type, "text") || !strcmp(type, "json_object")) return 0;
    if (strcmp(type, "json_schema") != 0)
        return bad(err, "response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema'");
    json_t *js = json_object_get(rf, "json_schema");
    if (!json_is_object(js))
        return bad(err, "response_format", "'response_format.json_schema' must be an object holding a 'schema'");
    json_t *name = json_object_get(js, "name"), *schema = json_object_get(js, "schema"), *strict = json_object_get(js, "strict");
    if (name && !json_is_null(name) && !json_is_string(name))
        return bad(err, "response_format", "'response_format.json_schema.name' must be a string");
    if (schema && !json_is_null(schema) && !json_is_object(schema))
        return bad(err, "response_format", "'response_format.json_schema.schema' must be a JSON Schema object");
    if (strict && !json_is_null(strict) && !json_is_boolean(strict))
        return bad(err, "response_format", "'response_format.json_schema.strict' must be a boolean");
    return 0;
}

static bool strings(const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0) return false;
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) return false;
    }
    return true;
}

int gw_validate_structured(const json_t *body, json_t *base, struct json_field_error *err)
{
    static const char *const fields[] = {"response_format", "guided_json", "guided_regex", "guided_choice",
                                         "guided_grammar", "structured_outputs"};
    const char *given = NULL;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *f = fields[i];
        json_t *v = json_object_get(body, f);
        if (!v || json_is_null(v)) continue;
        char msg[128];
        bool ok = true;
        if (i == 0) {
            if (check_response_format(v, err)) return 400;
            /* "text" is no constraint. */
            if (!strcmp(json_string_value(json_object_get(v, "type")), "text")) {
                json_object_set(base, f, v);
                continue;
            }
        } else if (!strcmp(f, "guided_json")) {
            ok = json_is_object(v) || json_is_string(v);
            snprintf(msg, sizeof msg, "'%s' must be a JSON Schema (an object, or its text)", f);
        } else if (!strcmp(f, "guided_choice")) {
            ok = strings(v);
            snprintf(msg, sizeof msg, "'%s' must be a non-empty array of strings", f);
        } else if (!strcmp(f, "structured_outputs")) {
            ok = json_is_object(v);
            snprintf(msg, sizeof msg, "'%s' must be an object", f);
        } else {
            ok = json_is_string(v);
            snprintf(msg, sizeof msg, "'%s' must be a string", f);
        }
        if (!ok) return bad(err, f, msg);
        if (given) {
            json_field_fail(err, f, "'%s' cannot be combined with '%s': give one way of constraining the output", f, given);
            return 400;
        }
        given = f;
        json_object_set(base, f, v);
    }
    return 0;
}
