/* Structured output and tools of a generation request (request_struct.h). Runs with the rest
 * of the request's parsing on libuv's thread pool, so compiling a new schema (a millisecond or
 * a few) stalls no other request; the compiled grammar's positions are then classified on the
 * engine thread as sequences first reach them, microseconds each. */
#include "worker/api/request_struct.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

/* A 400 naming the field. */
static int invalid(struct json_field_error *err, const char *param, const char *msg)
{
    json_field_fail(err, param, "%s", msg);
    return 400;
}

/* The one constraint a request may carry. */
struct constraint {
    const char *field;  /* the request field it came from, NULL: none */
    enum grammar_kind kind;
    char *source;       /* malloc'd */
};

static int set_constraint(struct constraint *c, const char *field, enum grammar_kind kind, const json_t *source,
                          struct json_field_error *err)
{
    if (c->field) {
        json_field_fail(err, field,
                        "'%s' cannot be combined with '%s': give one of response_format, guided_json, guided_regex, "
                        "guided_choice, guided_grammar or structured_outputs",
                        field, c->field);
        return 400;
    }
    c->field = field;
    c->kind = kind;
    c->source = !source ? strdup("") : json_is_string(source) ? strdup(json_string_value(source)) : json_dump_compact(source);
    return c->source ? 0 : invalid(err, field, "out of memory");
}

static int read_response_format(const json_t *rf, struct constraint *c, struct json_field_error *err)
{
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || !type)
        return invalid(err, "response_format", "'response_format' must be an object with a 'type'");
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) return set_constraint(c, "response_format", GRAMMAR_JSON_OBJECT, NULL, err);
    if (strcmp(type, "json_schema") != 0)
        return invalid(err, "response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema'");
    json_t *js = json_object_get(rf, "json_schema");
    if (!json_is_object(js))
        return invalid(err, "response_format", "'response_format.json_schema' must be an object holding a 'schema'");
    json_t *schema = json_object_get(js, "schema");
    if (!schema || json_is_null(schema)) return set_constraint(c, "response_format", GRAMMAR_JSON_OBJECT, NULL, err);
    if (!json_is_object(schema))
        return invalid(err, "response_format", "'response_format.json_schema.schema' must be a JSON Schema object");
    return set_constraint(c, "response_format", GRAMMAR_JSON_SCHEMA, schema, err);
}

static bool string_array(const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0) return false;
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) return false;
    }
    return true;
}

/* One of vLLM's constraints: json (a schema, or its text), regex, choice or grammar. */
static int read_guided(const char *field, const char *what, const json_t *v, struct constraint *c,
                       struct json_field_error *err)
{
    char msg[160];
    if (!strcmp(what, "json")) {
        if (!json_is_object(v) && !json_is_string(v)) {
            snprintf(msg, sizeof msg, "'%s' must be a JSON Schema (an object, or its text)", field);
            return invalid(err, field, msg);
        }
        return set_constraint(c, field, GRAMMAR_JSON_SCHEMA, v, err);
    }
    if (!strcmp(what, "choice")) {
        if (!string_array(v)) {
            snprintf(msg, sizeof msg, "'%s' must be a non-empty array of strings", field);
            return invalid(err, field, msg);
        }
        return set_constraint(c, field, GRAMMAR_CHOICE, v, err);
    }
    if (!json_is_string(v)) {
        snprintf(msg, sizeof msg, "'%s' must be a string", field);
        return invalid(err, field, msg);
    }
    return set_constraint(c, field, !strcmp(what, "regex") ? GRAMMAR_REGEX : GRAMMAR_GBNF, v, err);
}

static int read_constraint(const json_t *body, struct constraint *c, struct json_field_error *err)
{
    json_t *v = json_object_get(body, "response_format");
    if (v && !json_is_null(v) && read_response_format(v, c, err)) return 400;
    static const struct {
        const char *field, *what;
    } guided[] = {{"guided_json", "json"}, {"guided_regex", "regex"}, {"guided_choice", "choice"}, {"guided_grammar", "grammar"}};
    for (size_t i = 0; i < sizeof guided / sizeof guided[0]; i++) {
        v = json_object_get(body, guided[i].field);
        if (v && !json_is_null(v) && read_guided(guided[i].field, guided[i].what, v, c, err)) return 400;
    }
    /* vLLM's newer form: {"json" | "regex" | "choice" | "grammar": ..., or "json_object": true}. */
    json_t *so = json_object_get(body, "structured_outputs");
    if (!so || json_is_null(so)) return 0;
    if (!json_is_object(so)) return invalid(err, "structured_outputs", "'structured_outputs' must be an object");
    static const char *const kinds[] = {"json", "regex", "choice", "grammar"};
    for (size_t i = 0; i < 4; i++) {
        v = json_object_get(so, kinds[i]);
        if (v && !json_is_null(v) && read_guided("structured_outputs", kinds[i], v, c, err)) return 400;
    }
    if (json_is_true(json_object_get(so, "json_object")))
        return set_constraint(c, "structured_outputs", GRAMMAR_JSON_OBJECT, NULL, err);
    return 0;
}

/* tools: OpenAI's function tools; returns their names (a new array) or NULL with err set. */
static json_t *read_tools(const json_t *tools, struct json_field_error *err)
{
    json_t *names = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_object_get(t, "function");
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        json_t *params = json_object_get(fn, "parameters");
        if (!json_is_object(t) || (type && strcmp(type, "function") != 0) || !json_is_object(fn)) {
            json_field_fail(err, "tools", "tools[%zu] must be {\"type\": \"function\", \"function\": {...}}", i);
            goto fail;
        }
        if (!tool_name_valid(name)) {
            json_field_fail(err, "tools", "tools[%zu].function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", i);
            goto fail;
        }
        if (params && !json_is_null(params) && !json_is_object(params)) {
            json_field_fail(err, "tools", "tools[%zu].function.parameters must be a JSON Schema object", i);
            goto fail;
        }
        json_array_append_new(names, json_string(name));
    }
    return names;
fail:
    json_decref(names);
    return NULL;
}

static bool has_name(const json_t *names, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) {
        if (!strcmp(json_string_value(v), name)) return true;
    }
    return false;
}

enum choice { CHOICE_NONE, CHOICE_AUTO, CHOICE_REQUIRED, CHOICE_NAMED };

/* tool_choice: "none" | "auto" | "required" | {"type": "function", "function": {"name": N}}. */
static int read_tool_choice(const json_t *body, const json_t *names, enum choice *choice, const char **only,
                            struct json_field_error *err)
{
    json_t *tc = json_object_get(body, "tool_choice");
    bool have_tools = json_array_size(names) > 0;
    *choice = have_tools ? CHOICE_AUTO : CHOICE_NONE;
    *only = NULL;
    if (!tc || json_is_null(tc)) return 0;
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (!strcmp(s, "none")) *choice = CHOICE_NONE;
        else if (!strcmp(s, "auto")) *choice = have_tools ? CHOICE_AUTO : CHOICE_NONE;
        else if (!strcmp(s, "required")) *choice = CHOICE_REQUIRED;
        else return invalid(err, "tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or a named function");
    } else {
        const char *type = json_string_value(json_object_get(tc, "type"));
        *only = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
        if (!json_is_object(tc) || (type && strcmp(type, "function") != 0) || !*only)
            return invalid(err, "tool_choice",
                           "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                           "{\"name\": ...}}");
        *choice = CHOICE_NAMED;
    }
    if (*choice >= CHOICE_REQUIRED && !have_tools)
        return invalid(err, "tool_choice", "'tool_choice' requires 'tools'");
    if (*choice == CHOICE_NAMED && !has_name(names, *only)) {
        char shown[80];
        json_field_fail(err, "tool_choice", "'tool_choice' names the function '%s', which is not among the tools",
                        utf8_clip(shown, sizeof shown, *only, strlen(*only)));
        return 400;
    }
    return 0;
}

/* "cuda" -> "CUDA" for the refusal's message. */
static void upper(char *out, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < cap; i++) out[i] = (char)toupper((unsigned char)s[i]);
    out[i] = '\0';
}

static int compile(const struct gen_struct_env *env, const struct constraint *c, struct engine_request *r,
                   struct json_field_error *err)
{
    if (!env->cache) {
        char backend[32];
        upper(backend, sizeof backend, env->backend ? env->backend : "this");
        json_field_fail(err, c->field, "structured output (%s) is not supported on the %s backend yet", c->field,
                        backend);
        return 400;
    }
    char msg[512];
    if (grammar_cache_get(env->cache, c->kind, c->source, strlen(c->source), &r->grammar, msg, sizeof msg) != 0) {
        r->grammar = NULL;
        json_field_fail(err, c->field, "'%s' cannot be used: %s", c->field, msg);
        return 400;
    }
    return 0;
}

int gen_struct_parse(const struct gen_struct_env *env, const json_t *body, struct engine_request *r,
                     struct gen_output_opts *out, struct json_field_error *err)
{
    memset(out, 0, sizeof *out);
    struct constraint c = {0};
    json_t *names = NULL;
    int status = read_constraint(body, &c, err);
    if (status) goto done;

    json_t *tools = json_object_get(body, "tools");
    bool parallel = true;
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        status = invalid(err, "tools", "'tools' must be an array");
        goto done;
    }
    if (!(names = read_tools(json_is_array(tools) ? tools : NULL, err)) ||
        json_get_bool(body, "parallel_tool_calls", false, &parallel, err) == JSON_FIELD_INVALID) {
        status = 400;
        goto done;
    }
    enum choice choice;
    const char *only;
    if ((status = read_tool_choice(body, names, &choice, &only, err))) goto done;
    if (choice >= CHOICE_REQUIRED) {
        if (c.field) {
            json_field_fail(err, "tool_choice", "'tool_choice' %s cannot be combined with '%s'",
                            choice == CHOICE_REQUIRED ? "'required'" : "naming a function", c.field);
            status = 400;
            goto done;
        }
        char msg[256];
        int bad = -1;
        char *gbnf = NULL;
        if (tool_grammar_gbnf(env->tool_family, tools, only, parallel && choice == CHOICE_REQUIRED, &gbnf, &bad, msg,
                              sizeof msg) != 0) {
            if (bad >= 0) json_field_fail(err, "tools", "tools[%d].function.parameters cannot be enforced: %s", bad, msg);
            else json_field_fail(err, "tool_choice", "%s", msg);
            status = 400;
            goto done;
        }
        c = (struct constraint){.field = "tool_choice", .kind = GRAMMAR_GBNF, .source = gbnf};
    }
    if (c.field && (status = compile(env, &c, r, err))) goto done;

    if (choice != CHOICE_NONE) {
        out->tools = true;
        out->tools_forced = choice >= CHOICE_REQUIRED;
        out->tool_family = env->tool_family;
        out->tool_names = names;
        names = NULL;
    }
    /* Reasoning is a chat model's; under a constraint, output that opens with <think> is
     * still read as reasoning, but none is assumed to come first. */
    json_t *messages = json_object_get(body, "messages");
    if (env->reasoning != REASONING_NONE && messages && !json_is_null(messages)) {
        out->reasoning = true;
        out->reasoning_from_start = env->reasoning == REASONING_DEEPSEEK_R1 && !c.field;
    }
    if ((out->tools && env->tool_keep_special) || (out->reasoning && env->reasoning_keep_special))
        r->skip_special = false;
done:
    free(c.source);
    json_decref(names);
    if (status) gen_output_opts_free(out);
    return status;
}

void gen_output_opts_free(struct gen_output_opts *o)
{
    json_decref(o->tool_names);
    memset(o, 0, sizeof *o);
}
