/* JSON Schema (OpenAI's strict subset) and `json_object` to GBNF.
 *
 * Supported: type (one or a list) object / array / string / number / integer / boolean /
 * null; properties, required (properties not required may be left out), additionalProperties
 * (false; true or a schema only on an object without properties, as a map); items,
 * minItems, maxItems; minLength, maxLength (code points); enum, const; anyOf; $ref to "#" or
 * "#/..." ($defs, definitions, anywhere in the document; recursion allowed). Annotations
 * (title, description, default, examples, $schema, $id, $comment, deprecated, readOnly,
 * writeOnly) are ignored. Anything else is refused with the keyword and a JSON pointer to it.
 *
 * Output is JSON as a model writes it: properties in the schema's order, whitespace between
 * tokens limited to one space or a newline and an indent (so a model cannot pad forever), and
 * numbers limited to 16 digits before and after the point and 2 in the exponent (a double's
 * precision; and no parser overflows, which 1e999 would make some do). The
 * whitespace expression is written out at each use rather than shared, and string and number
 * rules are shared by at most 32 uses, so each rule returns to few places (gram_mask.c). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

#define WS "( \" \" | \"\\n\" [ \\t]{0,32} )?"
/* A string's character: \u escapes of surrogates only in pairs, which strict parsers insist on. */
#define HEX "[0-9a-fA-F]"
#define CHAR_EXPR                                                                                  \
    "( [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-CeEfF] " HEX "{3} | [dD] [0-7] " HEX  \
    "{2} | [dD] [89abAB] " HEX "{2} \"\\\\u\" [dD] [c-fC-F] " HEX "{2} ) ) )"
#define STRING_BODY "\"\\\"\" " CHAR_EXPR "* \"\\\"\""
#define INT_BODY "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} )"
#define NUMBER_BODY INT_BODY " ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?"
#define SHARE_LIMIT 32

int gram_gbnf_literal(struct strbuf *out, const char *s, size_t n)
{
    if (strbuf_putc(out, '"') < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c == '"' || c == '\\') rc = gram_appendf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7F) rc = gram_appendf(out, "\\x%02X", c);
        else rc = strbuf_putc(out, (char)c);
        if (rc < 0) return -1;
    }
    return strbuf_putc(out, '"');
}

/* The rules of any JSON value, named j-*: json_object's grammar and a schema's {}. Keys have
 * a string rule of their own: what follows a key (":") and a value ("," "}" "]") differ, so
 * sharing one rule would leave the tokens that close a string uncertain (gram_mask.c). */
static int any_json_rules(struct strbuf *o)
{
    return gram_appendf(o,
                        "j-value ::= j-object | j-array | j-string | j-number | \"true\" | \"false\" | \"null\"\n"
                        "j-object ::= \"{\" " WS " ( j-key " WS " \":\" " WS " j-value ( " WS " \",\" " WS
                        " j-key " WS " \":\" " WS " j-value )* " WS " )? \"}\"\n"
                        "j-array ::= \"[\" " WS " ( j-value ( " WS " \",\" " WS " j-value )* " WS " )? \"]\"\n"
                        "j-string ::= " STRING_BODY "\n"
                        "j-key ::= " STRING_BODY "\n"
                        "j-number ::= " NUMBER_BODY "\n");
}

int gram_json_object_gbnf(struct strbuf *out)
{
    return gram_appendf(out, "root ::= j-object\n") < 0 ? -1 : any_json_rules(out);
}

struct ref_map {
    const json_t *target;
    char name[32];
};

struct js {
    json_t *doc;
    struct strbuf rules;
    struct ref_map *refs;
    size_t n_refs, cap_refs;
    int n_names;
    int depth;
    bool any_json;
    int string_uses, number_uses, integer_uses;
    char *err;
    size_t errlen;
};

static int gen(struct js *j, const json_t *s, const char *ptr, struct strbuf *e);

static int refuse(struct js *j, const char *ptr, const char *what, const char *kw)
{
    gram_err(j->err, j->errlen, "json_schema: %s '%s' at %s", what, kw, ptr[0] ? ptr : "/");
    return -1;
}

static int nomem(struct js *j)
{
    gram_err(j->err, j->errlen, "json_schema: out of memory");
    return -1;
}

/* ptr + "/" + key, escaped as JSON pointers are (~ as ~0, / as ~1). */
static char *ptr_join(const char *ptr, const char *key)
{
    struct strbuf b = {0};
    if (strbuf_append(&b, ptr, strlen(ptr)) < 0 || strbuf_putc(&b, '/') < 0) goto fail;
    for (const char *k = key; *k; k++) {
        int rc = *k == '~' ? strbuf_append(&b, "~0", 2) : *k == '/' ? strbuf_append(&b, "~1", 2) : strbuf_putc(&b, *k);
        if (rc < 0) goto fail;
    }
    return b.p;
fail:
    strbuf_free(&b);
    return NULL;
}

static char *ptr_index(const char *ptr, size_t i)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%zu", i);
    return ptr_join(ptr, buf);
}

static bool is_annotation(const char *k)
{
    static const char *const ann[] = {"title", "description", "default", "examples", "$schema", "$id",
                                      "$comment", "deprecated", "readOnly", "writeOnly", NULL};
    for (int i = 0; ann[i]; i++)
        if (strcmp(k, ann[i]) == 0) return true;
    return false;
}

static int new_name(struct js *j, const char *prefix, char *out, size_t cap)
{
    snprintf(out, cap, "%s%d", prefix, j->n_names++);
    return 0;
}

/* A shared rule used at most SHARE_LIMIT times, then a fresh copy. */
static int shared_rule(struct js *j, struct strbuf *e, const char *base, int *uses, const char *body)
{
    int copy = (*uses)++ / SHARE_LIMIT;
    if (*uses % SHARE_LIMIT == 1 || SHARE_LIMIT == 1) {
        if (gram_appendf(&j->rules, "%s-%d ::= %s\n", base, copy, body) < 0) return nomem(j);
    }
    return gram_appendf(e, "%s-%d", base, copy) < 0 ? nomem(j) : 0;
}

static int emit_literals(struct js *j, const json_t *values, const char *type_filter, const char *ptr,
                         struct strbuf *e)
{
    size_t n = json_array_size(values);
    char **strs = calloc(n + 1, sizeof *strs);
    size_t *lens = calloc(n + 1, sizeof *lens);
    size_t k = 0;
    int rc = -1;
    if (!strs || !lens) {
        nomem(j);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(values, i);
        if (type_filter) {
            bool ok = (strcmp(type_filter, "string") == 0 && json_is_string(v)) ||
                      (strcmp(type_filter, "number") == 0 && json_is_number(v)) ||
                      (strcmp(type_filter, "integer") == 0 &&
                       (json_is_integer(v) || (json_is_real(v) && json_real_value(v) == (double)(long long)json_real_value(v)))) ||
                      (strcmp(type_filter, "boolean") == 0 && json_is_boolean(v)) ||
                      (strcmp(type_filter, "null") == 0 && json_is_null(v)) ||
                      (strcmp(type_filter, "object") == 0 && json_is_object(v)) ||
                      (strcmp(type_filter, "array") == 0 && json_is_array(v));
            if (!ok) continue;
        }
        strs[k] = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        if (!strs[k]) {
            nomem(j);
            goto done;
        }
        lens[k] = strlen(strs[k]);
        k++;
    }
    if (k == 0) {
        gram_err(j->err, j->errlen, "json_schema: no value of the enum or const at %s fits the type", ptr[0] ? ptr : "/");
        goto done;
    }
    rc = gram_choice_expr(e, strs, lens, k) < 0 ? nomem(j) : 0;
done:
    for (size_t i = 0; strs && i < n; i++) free(strs[i]);
    free(strs);
    free(lens);
    return rc;
}

static int get_count(struct js *j, const json_t *s, const char *key, const char *ptr, long long *out)
{
    const json_t *v = json_object_get(s, key);
    *out = -1;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        char *p = ptr_join(ptr, key);
        int rc = refuse(j, p ? p : ptr, "not a non-negative integer:", key);
        free(p);
        return rc;
    }
    if (json_integer_value(v) > 100000) {
        char *p = ptr_join(ptr, key);
        int rc = refuse(j, p ? p : ptr, "above 100000:", key);
        free(p);
        return rc;
    }
    *out = json_integer_value(v);
    return 0;
}

static int gen_string(struct js *j, const json_t *s, const char *ptr, struct strbuf *e)
{
    long long min, max;
    if (get_count(j, s, "minLength", ptr, &min) < 0 || get_count(j, s, "maxLength", ptr, &max) < 0) return -1;
    if (min <= 0 && max < 0) return shared_rule(j, e, "string", &j->string_uses, STRING_BODY);
    if (min < 0) min = 0;
    if (max >= 0 && max < min) return refuse(j, ptr, "maxLength below minLength:", "maxLength");
    int rc = max < 0 ? gram_appendf(e, "( \"\\\"\" " CHAR_EXPR "{%lld,} \"\\\"\" )", min)
                     : gram_appendf(e, "( \"\\\"\" " CHAR_EXPR "{%lld,%lld} \"\\\"\" )", min, max);
    return rc < 0 ? nomem(j) : 0;
}

static int gen_array(struct js *j, const json_t *s, const char *ptr, struct strbuf *e)
{
    long long min, max;
    if (get_count(j, s, "minItems", ptr, &min) < 0 || get_count(j, s, "maxItems", ptr, &max) < 0) return -1;
    if (min < 0) min = 0;
    if (max >= 0 && max < min) return refuse(j, ptr, "maxItems below minItems:", "maxItems");
    struct strbuf item = {0};
    int rc = -1;
    const json_t *items = json_object_get(s, "items");
    if (items) {
        char *p = ptr_join(ptr, "items");
        if (!p) return nomem(j);
        rc = gen(j, items, p, &item);
        free(p);
        if (rc < 0) goto done;
        rc = -1;
    } else {
        j->any_json = true;
        if (strbuf_append(&item, "j-value", 7) < 0) goto oom;
    }
    char name[32];
    new_name(j, "arr", name, sizeof name);
    const char *I = strbuf_str(&item);
    if (gram_appendf(&j->rules, "%s ::= \"[\" " WS " ", name) < 0) goto oom;
    if (max == 0) {
        if (gram_appendf(&j->rules, "\"]\"\n") < 0) goto oom;
    } else if (min == 0) {
        if (gram_appendf(&j->rules, "( %s ( " WS " \",\" " WS " %s )", I, I) < 0) goto oom;
        if ((max < 0 ? gram_appendf(&j->rules, "*") : gram_appendf(&j->rules, "{0,%lld}", max - 1)) < 0) goto oom;
        if (gram_appendf(&j->rules, " " WS " )? \"]\"\n") < 0) goto oom;
    } else {
        if (gram_appendf(&j->rules, "%s ( " WS " \",\" " WS " %s )", I, I) < 0) goto oom;
        if ((max < 0 ? gram_appendf(&j->rules, "{%lld,}", min - 1)
                     : gram_appendf(&j->rules, "{%lld,%lld}", min - 1, max - 1)) < 0)
            goto oom;
        if (gram_appendf(&j->rules, " " WS " \"]\"\n") < 0) goto oom;
    }
    rc = gram_appendf(e, "%s", name) < 0 ? nomem(j) : 0;
    goto done;
oom:
    rc = nomem(j);
done:
    strbuf_free(&item);
    return rc;
}

static int gen_object(struct js *j, const json_t *s, const char *ptr, struct strbuf *e)
{
    const json_t *props = json_object_get(s, "properties");
    const json_t *req = json_object_get(s, "required");
    const json_t *addl = json_object_get(s, "additionalProperties");
    char name[32];
    int rc = -1;
    size_t n = props ? json_object_size(props) : 0;
    struct strbuf *member = calloc(n + 1, sizeof *member);
    bool *required = calloc(n + 1, sizeof *required);
    if (!member || !required) {
        free(member);
        free(required);
        return nomem(j);
    }
    if (props && !json_is_object(props)) {
        rc = refuse(j, ptr, "not an object:", "properties");
        goto done;
    }
    if (req && !json_is_array(req)) {
        rc = refuse(j, ptr, "not an array:", "required");
        goto done;
    }
    for (size_t i = 0; i < json_array_size(req); i++) {
        const json_t *r = json_array_get(req, i);
        if (!json_is_string(r) || !json_object_get(props, json_string_value(r))) {
            char *q = ptr_join(ptr, "required");
            char *pi = q ? ptr_index(q, i) : NULL;
            rc = refuse(j, pi ? pi : ptr, "a required name that is not among the properties:",
                        json_is_string(r) ? json_string_value(r) : "?");
            free(q);
            free(pi);
            goto done;
        }
    }
    if (addl && !json_is_boolean(addl) && !json_is_object(addl)) {
        rc = refuse(j, ptr, "neither a boolean nor a schema:", "additionalProperties");
        goto done;
    }
    new_name(j, "obj", name, sizeof name);
    if (n == 0) {
        /* No properties: a map when extra properties are allowed, else {}. */
        if (addl && json_is_false(addl)) {
            rc = gram_appendf(&j->rules, "%s ::= \"{\" " WS " \"}\"\n", name) < 0 ? nomem(j) : 0;
        } else {
            struct strbuf v = {0};
            if (addl && json_is_object(addl)) {
                char *p = ptr_join(ptr, "additionalProperties");
                rc = p ? gen(j, addl, p, &v) : nomem(j);
                free(p);
                if (rc < 0) {
                    strbuf_free(&v);
                    goto done;
                }
            } else {
                j->any_json = true;
                if (strbuf_append(&v, "j-value", 7) < 0) {
                    strbuf_free(&v);
                    rc = nomem(j);
                    goto done;
                }
            }
            j->any_json = true;
            const char *V = strbuf_str(&v);
            rc = gram_appendf(&j->rules,
                              "%s ::= \"{\" " WS " ( j-key " WS " \":\" " WS " %s ( " WS " \",\" " WS
                              " j-key " WS " \":\" " WS " %s )* " WS " )? \"}\"\n",
                              name, V, V) < 0
                     ? nomem(j)
                     : 0;
            strbuf_free(&v);
        }
        if (rc == 0) rc = gram_appendf(e, "%s", name) < 0 ? nomem(j) : 0;
        goto done;
    }
    /* Each property as "\"key\"" WS ":" WS value, in the schema's order. */
    size_t i = 0;
    const char *key;
    const json_t *sub;
    bool all_required = true, any_required = false;
    json_object_foreach((json_t *)props, key, sub) {
        char *p0 = ptr_join(ptr, "properties");
        char *p = p0 ? ptr_join(p0, key) : NULL;
        free(p0);
        if (!p) {
            rc = nomem(j);
            goto done;
        }
        json_t *k = json_string(key);
        char *kj = k ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
        json_decref(k);
        rc = kj ? 0 : nomem(j);
        if (rc == 0 && (gram_gbnf_literal(&member[i], kj, strlen(kj)) < 0 ||
                        gram_appendf(&member[i], " " WS " \":\" " WS " ") < 0))
            rc = nomem(j);
        free(kj);
        if (rc == 0) rc = gen(j, sub, p, &member[i]);
        free(p);
        if (rc < 0) goto done;
        for (size_t r = 0; r < json_array_size(req); r++)
            if (strcmp(json_string_value(json_array_get(req, r)), key) == 0) required[i] = true;
        all_required &= required[i];
        any_required |= required[i];
        i++;
    }
    rc = -1;
    if (all_required) {
        if (gram_appendf(&j->rules, "%s ::= \"{\" " WS " ", name) < 0) goto oom;
        for (i = 0; i < n; i++)
            if ((i && gram_appendf(&j->rules, " " WS " \",\" " WS " ") < 0) ||
                gram_appendf(&j->rules, "%s", strbuf_str(&member[i])) < 0)
                goto oom;
        if (gram_appendf(&j->rules, " " WS " \"}\"\n") < 0) goto oom;
    } else {
        /* name-tI: at least one member from property I on, none before; name-sI: the members
         * from I on after one was written (each with its comma). Optional ones may be skipped. */
        for (i = n; i-- > 0;) {
            bool last = i + 1 == n;
            if (gram_appendf(&j->rules, "%s-s%zu ::= " WS " \",\" " WS " %s", name, i, strbuf_str(&member[i])) < 0)
                goto oom;
            if (!last && gram_appendf(&j->rules, " %s-s%zu", name, i + 1) < 0) goto oom;
            if (!required[i] && gram_appendf(&j->rules, last ? " | \"\"" : " | %s-s%zu", name, i + 1) < 0) goto oom;
            if (gram_appendf(&j->rules, "\n%s-t%zu ::= %s", name, i, strbuf_str(&member[i])) < 0) goto oom;
            if (!last && gram_appendf(&j->rules, " %s-s%zu", name, i + 1) < 0) goto oom;
            if (!required[i] && !last && gram_appendf(&j->rules, " | %s-t%zu", name, i + 1) < 0) goto oom;
            if (gram_appendf(&j->rules, "\n") < 0) goto oom;
        }
        if (gram_appendf(&j->rules, "%s ::= \"{\" " WS " %s-t0 " WS " \"}\"", name, name) < 0) goto oom;
        if (!any_required && gram_appendf(&j->rules, " | \"{\" " WS " \"}\"") < 0) goto oom;
        if (gram_appendf(&j->rules, "\n") < 0) goto oom;
    }
    rc = gram_appendf(e, "%s", name) < 0 ? nomem(j) : 0;
    goto done;
oom:
    rc = nomem(j);
done:
    for (size_t k = 0; k < n; k++) strbuf_free(&member[k]);
    free(member);
    free(required);
    return rc;
}

/* The node a "#..." reference points at. */
static const json_t *resolve(struct js *j, const char *ref)
{
    if (ref[0] != '#') return NULL;
    const json_t *node = j->doc;
    const char *p = ref + 1;
    if (*p == '\0') return node;
    if (*p != '/') return NULL;
    while (*p == '/') {
        p++;
        struct strbuf tok = {0};
        for (; *p && *p != '/'; p++) {
            char c = *p;
            if (c == '~' && p[1] == '0') {
                c = '~';
                p++;
            } else if (c == '~' && p[1] == '1') {
                c = '/';
                p++;
            }
            if (strbuf_putc(&tok, c) < 0) {
                strbuf_free(&tok);
                return NULL;
            }
        }
        const char *t = strbuf_str(&tok);
        if (json_is_object(node)) {
            node = json_object_get(node, t);
        } else if (json_is_array(node)) {
            char *end;
            long idx = strtol(t, &end, 10);
            node = *t && !*end ? json_array_get(node, (size_t)idx) : NULL;
        } else {
            node = NULL;
        }
        strbuf_free(&tok);
        if (!node) return NULL;
    }
    return node;
}

static int gen_ref(struct js *j, const char *ref, const char *ptr, struct strbuf *e)
{
    const json_t *target = resolve(j, ref);
    if (!target) return refuse(j, ptr, "a $ref this engine cannot resolve (only \"#\" and \"#/...\" into the document):", ref);
    for (size_t i = 0; i < j->n_refs; i++)
        if (j->refs[i].target == target) return gram_appendf(e, "%s", j->refs[i].name) < 0 ? nomem(j) : 0;
    if (j->n_refs == j->cap_refs) {
        size_t nc = j->cap_refs ? j->cap_refs * 2 : 8;
        void *q = realloc(j->refs, nc * sizeof *j->refs);
        if (!q) return nomem(j);
        j->refs = q;
        j->cap_refs = nc;
    }
    struct ref_map *m = &j->refs[j->n_refs++];
    m->target = target;
    new_name(j, "ref", m->name, sizeof m->name);
    char name[32];
    memcpy(name, m->name, sizeof name);
    /* The name is known before the body is made, so a recursive schema refers to itself. */
    struct strbuf body = {0};
    char *p = strdup(ref + 1);
    int rc = p ? gen(j, target, p, &body) : nomem(j);
    free(p);
    if (rc == 0 && gram_appendf(&j->rules, "%s ::= %s\n", name, strbuf_str(&body)) < 0) rc = nomem(j);
    strbuf_free(&body);
    if (rc == 0) rc = gram_appendf(e, "%s", name) < 0 ? nomem(j) : 0;
    return rc;
}

static int gen_typed(struct js *j, const json_t *s, const char *type, const char *ptr, struct strbuf *e)
{
    const json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    if (cn) {
        json_t *arr = json_array();
        if (!arr || json_array_append((json_t *)arr, (json_t *)cn) < 0) {
            json_decref(arr);
            return nomem(j);
        }
        int rc = emit_literals(j, arr, type, ptr, e);
        json_decref(arr);
        return rc;
    }
    if (en) {
        if (!json_is_array(en) || json_array_size(en) == 0) return refuse(j, ptr, "not a non-empty array:", "enum");
        return emit_literals(j, en, type, ptr, e);
    }
    if (!type) {
        if (json_object_get(s, "properties") || json_object_get(s, "required") || json_object_get(s, "additionalProperties"))
            type = "object";
        else if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems"))
            type = "array";
        else if (json_object_get(s, "minLength") || json_object_get(s, "maxLength"))
            type = "string";
    }
    if (!type) {
        j->any_json = true;
        return gram_appendf(e, "j-value") < 0 ? nomem(j) : 0;
    }
    int rc = 0;
    if (strcmp(type, "string") == 0) return gen_string(j, s, ptr, e);
    if (strcmp(type, "object") == 0) return gen_object(j, s, ptr, e);
    if (strcmp(type, "array") == 0) return gen_array(j, s, ptr, e);
    if (strcmp(type, "number") == 0) return shared_rule(j, e, "number", &j->number_uses, NUMBER_BODY);
    if (strcmp(type, "integer") == 0) return shared_rule(j, e, "integer", &j->integer_uses, INT_BODY);
    if (strcmp(type, "boolean") == 0) rc = gram_appendf(e, "( \"true\" | \"false\" )");
    else if (strcmp(type, "null") == 0) rc = gram_appendf(e, "\"null\"");
    else return refuse(j, ptr, "an unknown type", type);
    return rc < 0 ? nomem(j) : 0;
}

static int gen(struct js *j, const json_t *s, const char *ptr, struct strbuf *e)
{
    if (++j->depth > 200) {
        j->depth--;
        return refuse(j, ptr, "schemas nested deeper than 200 levels", "");
    }
    int rc = -1;
    if (json_is_true(s)) {
        j->any_json = true;
        rc = gram_appendf(e, "j-value") < 0 ? nomem(j) : 0;
        goto done;
    }
    if (json_is_false(s)) {
        rc = refuse(j, ptr, "a schema that matches nothing:", "false");
        goto done;
    }
    if (!json_is_object(s)) {
        rc = refuse(j, ptr, "a schema that is not an object:", json_is_array(s) ? "array" : "value");
        goto done;
    }
    static const char *const known[] = {"type", "properties", "required", "additionalProperties", "items",
                                        "enum", "const", "anyOf", "$ref", "$defs", "definitions", "minLength",
                                        "maxLength", "minItems", "maxItems", NULL};
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)s, key, v) {
        bool ok = is_annotation(key);
        for (int i = 0; known[i] && !ok; i++) ok = strcmp(key, known[i]) == 0;
        if (!ok) {
            char *p = ptr_join(ptr, key);
            rc = refuse(j, p ? p : ptr, "unsupported keyword", key);
            free(p);
            goto done;
        }
    }
    const json_t *ref = json_object_get(s, "$ref"), *any = json_object_get(s, "anyOf"), *type = json_object_get(s, "type");
    /* Keywords that would have to hold together with $ref or anyOf. */
    static const char *const shaping[] = {"type", "properties", "required", "additionalProperties", "items", "enum",
                                          "const", "minLength", "maxLength", "minItems", "maxItems", NULL};
    if (ref || any) {
        const char *with = ref ? "$ref" : "anyOf";
        if (ref && any) {
            rc = refuse(j, ptr, "$ref together with", "anyOf");
            goto done;
        }
        for (int i = 0; shaping[i]; i++) {
            if (json_object_get(s, shaping[i])) {
                char msg[64];
                snprintf(msg, sizeof msg, "%s together with", with);
                rc = refuse(j, ptr, msg, shaping[i]);
                goto done;
            }
        }
    }
    if (ref) {
        if (!json_is_string(ref)) {
            rc = refuse(j, ptr, "not a string:", "$ref");
            goto done;
        }
        rc = gen_ref(j, json_string_value(ref), ptr, e);
        goto done;
    }
    if (any) {
        if (!json_is_array(any) || json_array_size(any) == 0) {
            rc = refuse(j, ptr, "not a non-empty array:", "anyOf");
            goto done;
        }
        char *pa = ptr_join(ptr, "anyOf");
        if (!pa || gram_appendf(e, "( ") < 0) {
            free(pa);
            rc = nomem(j);
            goto done;
        }
        rc = 0;
        for (size_t i = 0; i < json_array_size(any) && rc == 0; i++) {
            char *p = ptr_index(pa, i);
            if (!p || (i && gram_appendf(e, " | ") < 0)) rc = nomem(j);
            if (rc == 0) rc = gen(j, json_array_get(any, i), p, e);
            free(p);
        }
        free(pa);
        if (rc == 0 && gram_appendf(e, " )") < 0) rc = nomem(j);
        goto done;
    }
    if (type && json_is_array(type)) {
        if (json_array_size(type) == 0) {
            rc = refuse(j, ptr, "an empty list:", "type");
            goto done;
        }
        rc = gram_appendf(e, "( ") < 0 ? nomem(j) : 0;
        for (size_t i = 0; i < json_array_size(type) && rc == 0; i++) {
            const json_t *t = json_array_get(type, i);
            if (!json_is_string(t)) {
                rc = refuse(j, ptr, "a type name that is not a string in", "type");
                break;
            }
            if (i && gram_appendf(e, " | ") < 0) rc = nomem(j);
            if (rc == 0) rc = gen_typed(j, s, json_string_value(t), ptr, e);
        }
        if (rc == 0 && gram_appendf(e, " )") < 0) rc = nomem(j);
        goto done;
    }
    if (type && !json_is_string(type)) {
        rc = refuse(j, ptr, "neither a string nor a list:", "type");
        goto done;
    }
    rc = gen_typed(j, s, type ? json_string_value(type) : NULL, ptr, e);
done:
    j->depth--;
    return rc;
}

int gram_json_schema_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen)
{
    json_error_t je;
    struct js j = {.err = err, .errlen = errlen};
    struct strbuf root = {0};
    int rc = -1;
    j.doc = json_loadb(src, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!j.doc) {
        gram_err(err, errlen, "json_schema: not valid JSON: %s at line %d column %d", je.text, je.line, je.column);
        return -1;
    }
    if (gen(&j, j.doc, "", &root) < 0) goto done;
    if (gram_appendf(out, "root ::= %s\n", strbuf_str(&root)) < 0 ||
        strbuf_append(out, strbuf_str(&j.rules), j.rules.len) < 0 || (j.any_json && any_json_rules(out) < 0)) {
        nomem(&j);
        goto done;
    }
    rc = 0;
done:
    json_decref(j.doc);
    strbuf_free(&j.rules);
    strbuf_free(&root);
    free(j.refs);
    return rc;
}
