/* The grammar that makes a model call tools (tool_choice "required" or a named function):
 * the family's call syntax, written as its chat template writes it, around each function's
 * parameters compiled from JSON Schema by worker/grammar. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "worker/grammar/grammar.h"
#include "worker/tools/tools.h"

static bool word_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.';
}

int tool_gbnf_prefix(const char *g, const char *prefix, struct strbuf *out)
{
    size_t plen = strlen(prefix);
    const char *s = g;
    while (*s) {
        const char *start = s;
        char c = *s;
        if (c == '"' || c == '[') {
            /* A literal or a class, escapes included, copied whole. */
            char close = c == '"' ? '"' : ']';
            s++;
            while (*s && *s != close) s += s[0] == '\\' && s[1] ? 2 : 1;
            if (*s) s++;
        } else if (c == '#') {
            while (*s && *s != '\n') s++;
        } else if (c == '{') {
            while (*s && *s != '}') s++;
            if (*s) s++;
        } else if (isalpha((unsigned char)c) || c == '_') {
            if (strbuf_append(out, prefix, plen) < 0) return -1;
            while (word_char(*s)) s++;
        } else {
            s++;
        }
        if (strbuf_append(out, start, (size_t)(s - start)) < 0) return -1;
    }
    return 0;
}

/* Schema keywords worker/grammar takes (gram_json.c), annotations included. */
static bool kept(const char *key)
{
    static const char *const keys[] = {"type", "properties", "required", "additionalProperties", "items", "minItems",
                                       "maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "$ref", "$defs",
                                       "definitions", "title", "description", "default", "examples", "$schema",
                                       "$id", "$comment", "deprecated", "readOnly", "writeOnly"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(key, keys[i])) return true;
    return false;
}

static json_t *loosen_map(const json_t *obj)
{
    json_t *out = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) json_object_set_new(out, k, tool_schema_loosen(v));
    return out;
}

static json_t *loosen_list(const json_t *arr)
{
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) json_array_append_new(out, tool_schema_loosen(v));
    return out;
}

json_t *tool_schema_loosen(const json_t *s)
{
    if (!json_is_object(s)) return json_deep_copy(s);
    json_t *out = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)s, k, v) {
        /* oneOf's values are anyOf's; a one-schema allOf is that schema. */
        if (!strcmp(k, "oneOf") && json_is_array(v) && !json_object_get(s, "anyOf")) {
            json_object_set_new(out, "anyOf", loosen_list(v));
        } else if (!strcmp(k, "allOf") && json_is_array(v) && json_array_size(v) == 1) {
            json_t *one = tool_schema_loosen(json_array_get(v, 0));
            json_object_update_missing(out, one);
            json_decref(one);
        } else if (!kept(k)) {
            continue;
        } else if ((!strcmp(k, "properties") || !strcmp(k, "$defs") || !strcmp(k, "definitions")) && json_is_object(v)) {
            json_object_set_new(out, k, loosen_map(v));
        } else if ((!strcmp(k, "items") || !strcmp(k, "additionalProperties")) && json_is_object(v)) {
            json_object_set_new(out, k, tool_schema_loosen(v));
        } else if (!strcmp(k, "anyOf") && json_is_array(v)) {
            json_object_set_new(out, k, loosen_list(v));
        } else {
            json_object_set_new(out, k, json_deep_copy(v));
        }
    }
    return out;
}

static int schema_gbnf(const json_t *schema, char **gbnf, char *err, size_t errlen)
{
    char *text = json_dump_compact(schema);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = grammar_to_gbnf(GRAMMAR_JSON_SCHEMA, text, strlen(text), gbnf, err, errlen);
    free(text);
    return rc;
}

/* The GBNF of a function's arguments (rules named from root). */
static int args_gbnf(const json_t *params, bool strict, char **gbnf, char *err, size_t errlen)
{
    if (!params || json_is_null(params)) {
        /* OpenAI: no parameters is a function of no arguments. */
        json_t *none = json_pack("{s:s, s:{}, s:b}", "type", "object", "properties", "additionalProperties", 0);
        int rc = schema_gbnf(none, gbnf, err, errlen);
        json_decref(none);
        return rc;
    }
    if (schema_gbnf(params, gbnf, err, errlen) == 0) return 0;
    if (strict) return -1;
    json_t *loose = tool_schema_loosen(params);
    char ignored[256];
    int rc = loose ? schema_gbnf(loose, gbnf, ignored, sizeof ignored) : -1;
    json_decref(loose);
    if (rc == 0) return 0;
    json_t *any = json_pack("{s:s}", "type", "object");
    rc = schema_gbnf(any, gbnf, err, errlen);
    json_decref(any);
    return rc;
}

/* A GBNF literal of s. */
static int lit(struct strbuf *b, const char *s)
{
    if (strbuf_putc(b, '"') < 0) return -1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        int n;
        if (*p == '"' || *p == '\\') n = snprintf(esc, sizeof esc, "\\%c", *p);
        else if (*p == '\n') n = snprintf(esc, sizeof esc, "\\n");
        else if (*p < 0x20 || *p == 0x7f) n = snprintf(esc, sizeof esc, "\\x%02X", *p);
        else n = snprintf(esc, sizeof esc, "%c", *p);
        if (strbuf_append(b, esc, (size_t)n) < 0) return -1;
    }
    return strbuf_putc(b, '"');
}

static int appendf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(struct strbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) return -1;
    return strbuf_append(b, tmp, (size_t)n);
}

#define DS_CALL_OPEN "<｜tool▁call▁begin｜>function<｜tool▁sep｜>"

/* The alternative of one call of tool i named name: its text up to the arguments, the
 * arguments' rule, and the text after them. */
static int call_alt(struct strbuf *b, enum tool_family f, size_t i, const char *name)
{
    char pre[256];
    if (f == TOOL_FAMILY_DEEPSEEK_V3) snprintf(pre, sizeof pre, DS_CALL_OPEN "%s\n```json\n", name);
    else snprintf(pre, sizeof pre, "{\"name\": \"%s\", \"%s\": ", name, f == TOOL_FAMILY_LLAMA3_JSON ? "parameters" : "arguments");
    if (lit(b, pre) < 0 || appendf(b, " t%zu-root ", i) < 0) return -1;
    return lit(b, f == TOOL_FAMILY_DEEPSEEK_V3 ? "\n```<｜tool▁call▁end｜>" : "}");
}

/* The root: calls in the family's framing, as its templates write several. */
static int root_rule(struct strbuf *b, enum tool_family f, bool parallel)
{
    switch (f) {
    case TOOL_FAMILY_HERMES:
        return appendf(b, "tool-call ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"\nroot ::= tool-call%s\n",
                       parallel ? " ( \"\\n\" tool-call )*" : "");
    case TOOL_FAMILY_LLAMA3_JSON: return appendf(b, "root ::= call%s\n", parallel ? " ( \"; \" call )*" : "");
    case TOOL_FAMILY_MISTRAL:
        /* [TOOL_CALLS] before it is a special token, which no grammar writes. */
        return appendf(b, "root ::= \"[\" call%s \"]\"\n", parallel ? " ( \", \" call )*" : "");
    case TOOL_FAMILY_DEEPSEEK_V3:
        return strbuf_append(b, "root ::= ", 9) < 0 || lit(b, "<｜tool▁calls▁begin｜>") < 0 ||
                       appendf(b, " call%s ", parallel ? " ( \"\\n\" call )*" : "") < 0 ||
                       lit(b, "<｜tool▁calls▁end｜>") < 0 || strbuf_putc(b, '\n') < 0
                   ? -1
                   : 0;
    default: return appendf(b, parallel ? "root ::= \"[\" call ( \", \" call )* \"]\"\n" : "root ::= call\n");
    }
}

int tool_grammar_gbnf(enum tool_family f, const json_t *tools, const char *only, bool parallel, char **gbnf,
                      int *bad, char *err, size_t errlen)
{
    struct strbuf rules = {0}, calls = {0};
    *gbnf = NULL;
    *bad = -1;
    int n = 0;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!name || (only && strcmp(name, only) != 0)) continue;
        if (!tool_name_valid(name)) {
            snprintf(err, errlen, "'%.64s' is not a valid function name", name);
            *bad = (int)i;
            goto fail;
        }
        char *args = NULL, prefix[32];
        if (args_gbnf(json_object_get(fn, "parameters"), json_is_true(json_object_get(fn, "strict")), &args, err,
                      errlen) != 0) {
            *bad = (int)i;
            goto fail;
        }
        snprintf(prefix, sizeof prefix, "t%zu-", i);
        int rc = tool_gbnf_prefix(args, prefix, &rules);
        free(args);
        if (rc < 0 || (n && strbuf_append(&calls, " | ", 3) < 0) || call_alt(&calls, f, i, name) < 0) goto oom;
        n++;
    }
    if (n == 0) {
        snprintf(err, errlen, "no function named '%.64s' among the tools", only ? only : "");
        goto fail;
    }
    struct strbuf out = {0};
    if (root_rule(&out, f, parallel) < 0 || appendf(&out, "call ::= ") < 0 ||
        strbuf_append(&out, calls.p, calls.len) < 0 || strbuf_putc(&out, '\n') < 0 ||
        strbuf_append(&out, rules.p, rules.len) < 0) {
        strbuf_free(&out);
        goto oom;
    }
    strbuf_free(&rules);
    strbuf_free(&calls);
    *gbnf = out.p;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    *bad = -1;
fail:
    strbuf_free(&rules);
    strbuf_free(&calls);
    return -1;
}
