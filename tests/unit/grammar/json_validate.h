/* A small JSON Schema validator for the subset the grammar engine supports (type, properties,
 * required, additionalProperties, items, minItems, maxItems, minLength, maxLength, enum, const,
 * anyOf, $ref into the document): the oracle the random-walk tests check outputs against. */
#ifndef SLUICE_TESTS_JSON_VALIDATE_H
#define SLUICE_TESTS_JSON_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <string.h>

static inline const json_t *jv_resolve(const json_t *root, const char *ref)
{
    if (strcmp(ref, "#") == 0) return root;
    if (strncmp(ref, "#/", 2) != 0) return NULL;
    const json_t *node = root;
    char buf[256];
    const char *p = ref + 1;
    while (*p == '/' && node) {
        p++;
        size_t n = strcspn(p, "/");
        if (n >= sizeof buf) return NULL;
        memcpy(buf, p, n);
        buf[n] = '\0';
        node = json_object_get(node, buf);
        p += n;
    }
    return node;
}

static inline size_t jv_codepoints(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static inline bool jv_is_type(const json_t *v, const char *t)
{
    if (strcmp(t, "string") == 0) return json_is_string(v);
    if (strcmp(t, "number") == 0) return json_is_number(v);
    if (strcmp(t, "integer") == 0)
        return json_is_integer(v) || (json_is_real(v) && json_real_value(v) == (double)(long long)json_real_value(v));
    if (strcmp(t, "boolean") == 0) return json_is_boolean(v);
    if (strcmp(t, "null") == 0) return json_is_null(v);
    if (strcmp(t, "object") == 0) return json_is_object(v);
    if (strcmp(t, "array") == 0) return json_is_array(v);
    return false;
}

/* Numbers compare by value, as JSON Schema's enum and const do (1 equals 1.0). */
static inline bool jv_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

static inline bool jv_valid(const json_t *v, const json_t *s, const json_t *root)
{
    if (json_is_true(s)) return true;
    if (!json_is_object(s)) return false;
    const json_t *x;
    if ((x = json_object_get(s, "$ref"))) {
        const json_t *t = jv_resolve(root, json_string_value(x));
        return t && jv_valid(v, t, root);
    }
    if ((x = json_object_get(s, "anyOf"))) {
        for (size_t i = 0; i < json_array_size(x); i++)
            if (jv_valid(v, json_array_get(x, i), root)) return true;
        return false;
    }
    if ((x = json_object_get(s, "const")) && !jv_equal(v, x)) return false;
    if ((x = json_object_get(s, "enum"))) {
        bool any = false;
        for (size_t i = 0; i < json_array_size(x) && !any; i++) any = jv_equal(v, json_array_get(x, i));
        if (!any) return false;
    }
    if ((x = json_object_get(s, "type"))) {
        bool ok = false;
        if (json_is_string(x)) ok = jv_is_type(v, json_string_value(x));
        for (size_t i = 0; json_is_array(x) && i < json_array_size(x) && !ok; i++)
            ok = jv_is_type(v, json_string_value(json_array_get(x, i)));
        if (!ok) return false;
    }
    if (json_is_string(v)) {
        size_t n = jv_codepoints(json_string_value(v), json_string_length(v));
        if ((x = json_object_get(s, "minLength")) && n < (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "maxLength")) && n > (size_t)json_integer_value(x)) return false;
    }
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if ((x = json_object_get(s, "minItems")) && n < (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "maxItems")) && n > (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "items")))
            for (size_t i = 0; i < n; i++)
                if (!jv_valid(json_array_get(v, i), x, root)) return false;
    }
    if (json_is_object(v)) {
        const json_t *props = json_object_get(s, "properties"), *addl = json_object_get(s, "additionalProperties");
        if ((x = json_object_get(s, "required")))
            for (size_t i = 0; i < json_array_size(x); i++)
                if (!json_object_get(v, json_string_value(json_array_get(x, i)))) return false;
        const char *k;
        json_t *val;
        json_object_foreach((json_t *)v, k, val) {
            const json_t *ps = props ? json_object_get(props, k) : NULL;
            if (ps) {
                if (!jv_valid(val, ps, root)) return false;
            } else if (addl && json_is_false(addl)) {
                return false;
            } else if (addl && json_is_object(addl) && !jv_valid(val, addl, root)) {
                return false;
            }
        }
    }
    return true;
}

#endif
