/* JSON Schema and json_object: what each keyword of the strict subset lets through, what is
 * refused (with the keyword and a JSON pointer), and random walks over a toy vocabulary
 * whose every finished output parses and validates (tests/unit/grammar/json_validate.h). */
#include "tests/unit/grammar/grammar_test_util.h"
#include "tests/unit/grammar/json_validate.h"

#define S GRAMMAR_JSON_SCHEMA
#define O GRAMMAR_JSON_OBJECT

Test(json_schema, scalars)
{
    gt_accepts(S, "{\"type\": \"string\"}", "\"h\\u00e9llo \\\"w\\\" \\n ✓\"");
    gt_dead(S, "{\"type\": \"string\"}", "\"a\nb\""); /* raw control characters */
    gt_dead(S, "{\"type\": \"string\"}", "\"\\x\"");
    /* \u escapes of surrogates come in pairs (strict parsers refuse a lone one). */
    gt_accepts(S, "{\"type\": \"string\"}", "\"\\ud83d\\uDE00 \\u0000\\uFFFF\"");
    gt_dead(S, "{\"type\": \"string\"}", "\"\\udacc\"");
    gt_dead(S, "{\"type\": \"string\"}", "\"\\ude00");
    gt_dead(S, "{\"type\": \"string\"}", "\"\\ud83d\\u0041");
    gt_accepts(S, "{\"type\": \"integer\"}", "-120");
    gt_accepts(S, "{\"type\": \"integer\"}", "0");
    gt_dead(S, "{\"type\": \"integer\"}", "01");
    gt_dead(S, "{\"type\": \"integer\"}", "1.5");
    gt_accepts(S, "{\"type\": \"number\"}", "-0.5e+10");
    gt_accepts(S, "{\"type\": \"number\"}", "3.25");
    gt_rejects(S, "{\"type\": \"number\"}", "3.");
    gt_dead(S, "{\"type\": \"number\"}", "+3");
    gt_accepts(S, "{\"type\": \"boolean\"}", "false");
    gt_accepts(S, "{\"type\": \"null\"}", "null");
    gt_accepts(S, "{\"type\": [\"integer\", \"null\"]}", "null");
    gt_accepts(S, "{\"type\": [\"integer\", \"null\"]}", "7");
    gt_dead(S, "{\"type\": [\"integer\", \"null\"]}", "true");
    /* Numbers stay within what every parser reads as a double. */
    gt_dead(S, "{\"type\": \"integer\"}", "12345678901234567");
    gt_dead(S, "{\"type\": \"number\"}", "1e100");
}

Test(json_schema, string_lengths_count_code_points)
{
    const char *s = "{\"type\": \"string\", \"minLength\": 2, \"maxLength\": 3}";
    gt_rejects(S, s, "\"a\"");
    gt_accepts(S, s, "\"ab\"");
    gt_accepts(S, s, "\"é中😀\"");
    gt_accepts(S, s, "\"\\n\\u0041x\"");
    gt_dead(S, s, "\"abcd\"");
    gt_accepts(S, "{\"type\": \"string\", \"minLength\": 1}", "\"abcdefghijklmnop\"");
    gt_rejects(S, "{\"type\": \"string\", \"minLength\": 1}", "\"\"");
    gt_accepts(S, "{\"maxLength\": 0}", "\"\"");
}

Test(json_schema, enum_const_anyof)
{
    const char *e = "{\"enum\": [\"red\", \"green\", 3, null, {\"a\": [1]}]}";
    gt_accepts(S, e, "\"red\"");
    gt_accepts(S, e, "3");
    gt_accepts(S, e, "null");
    gt_accepts(S, e, "{\"a\":[1]}");
    gt_dead(S, e, "\"blue\"");
    gt_accepts(S, "{\"const\": \"x\\\"y\"}", "\"x\\\"y\"");
    gt_dead(S, "{\"const\": 2}", "3");
    /* With a type, only the enum's values of that type. */
    gt_dead(S, "{\"type\": \"string\", \"enum\": [\"a\", 1]}", "1");
    const char *a = "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"string\", \"maxLength\": 1}]}";
    gt_accepts(S, a, "12");
    gt_accepts(S, a, "\"z\"");
    gt_dead(S, a, "\"zz\"");
}

Test(json_schema, objects_in_order_required_and_optional)
{
    const char *s = "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, "
                    "\"b\": {\"type\": \"string\"}, \"c\": {\"type\": \"boolean\"}}, "
                    "\"required\": [\"a\", \"c\"], \"additionalProperties\": false}";
    gt_accepts(S, s, "{\"a\": 1, \"b\": \"x\", \"c\": true}");
    gt_accepts(S, s, "{\"a\":1,\"c\":false}");
    gt_accepts(S, s, "{\n  \"a\": 1,\n  \"c\": false\n}");
    gt_rejects(S, s, "{\"a\": 1}");
    gt_dead(S, s, "{\"b\": \"x\"");
    gt_dead(S, s, "{\"c\": true, \"a\": 1}"); /* the schema's order */
    gt_dead(S, s, "{\"a\": 1, \"d\": 1");
    gt_dead(S, s, "{\"a\": 1,,");
    /* Whitespace is bounded: one space, or a newline and an indent of at most 32. */
    gt_dead(S, s, "{  \"a\"");
    gt_dead(S, s, "{\n\n\"a\"");
    /* All optional: the empty object too. */
    const char *o = "{\"properties\": {\"x\": {\"type\": \"null\"}, \"y\": {\"type\": \"null\"}}}";
    gt_accepts(S, o, "{}");
    gt_accepts(S, o, "{\"y\": null}");
    gt_accepts(S, o, "{\"x\": null, \"y\": null}");
    gt_dead(S, o, "{\"y\": null, \"x\"");
    /* additionalProperties as a map, and false with no properties. */
    const char *m = "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"}}";
    gt_accepts(S, m, "{\"any key\": 1, \"other\": -2}");
    gt_dead(S, m, "{\"k\": \"v\"");
    gt_accepts(S, "{\"type\": \"object\", \"additionalProperties\": false}", "{}");
    gt_dead(S, "{\"type\": \"object\", \"additionalProperties\": false}", "{\"");
    /* Keys are written as JSON strings. */
    gt_accepts(S, "{\"properties\": {\"a\\\"b\": {\"const\": 1}}, \"required\": [\"a\\\"b\"]}", "{\"a\\\"b\": 1}");
}

Test(json_schema, arrays_with_bounds)
{
    const char *s = "{\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"minItems\": 2, \"maxItems\": 3}";
    gt_rejects(S, s, "[1]");
    gt_accepts(S, s, "[1, 2]");
    gt_accepts(S, s, "[1,2,3]");
    gt_dead(S, s, "[1, 2, 3, 4");
    gt_dead(S, s, "[1, \"a\"");
    gt_accepts(S, "{\"type\": \"array\"}", "[1, \"a\", {\"b\": [null]}, []]");
    gt_accepts(S, "{\"type\": \"array\", \"maxItems\": 0}", "[]");
    gt_dead(S, "{\"type\": \"array\", \"maxItems\": 0}", "[1");
    const char *n = "{\"type\": \"array\", \"items\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"minItems\": 1}}";
    gt_accepts(S, n, "[[\"a\"], [\"b\", \"c\"]]");
    gt_rejects(S, n, "[[]]");
}

Test(json_schema, refs_and_recursion)
{
    const char *t = "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {\"v\": {\"type\": \"integer\"}, "
                    "\"kids\": {\"type\": \"array\", \"items\": {\"$ref\": \"#/$defs/node\"}}}, "
                    "\"required\": [\"v\", \"kids\"], \"additionalProperties\": false}}, \"$ref\": \"#/$defs/node\"}";
    gt_accepts(S, t, "{\"v\": 1, \"kids\": [{\"v\": 2, \"kids\": []}, {\"v\": 3, \"kids\": [{\"v\": 4, \"kids\": []}]}]}");
    gt_dead(S, t, "{\"v\": 1, \"kids\": [{\"v\": 2}");
    /* "#" is the whole document; definitions works as $defs does. */
    const char *r = "{\"type\": \"object\", \"properties\": {\"next\": {\"anyOf\": [{\"$ref\": \"#\"}, {\"type\": \"null\"}]}}, "
                    "\"required\": [\"next\"], \"additionalProperties\": false}";
    gt_accepts(S, r, "{\"next\": {\"next\": {\"next\": null}}}");
    gt_accepts(S, "{\"definitions\": {\"x\": {\"const\": 1}}, \"$ref\": \"#/definitions/x\"}", "1");
    gt_accepts(S, "{\"$defs\": {\"a~b/c\": {\"const\": 1}}, \"$ref\": \"#/$defs/a~0b~1c\"}", "1");
}

Test(json_schema, annotations_are_ignored_and_the_rest_refused)
{
    gt_accepts(S, "{\"title\": \"T\", \"description\": \"d\", \"default\": 1, \"examples\": [1], \"$schema\": \"x\", "
                  "\"type\": \"integer\"}",
               "5");
    const char *e = gt_compile_error(S, "{\"type\": \"object\", \"properties\": {\"when\": {\"type\": \"string\", \"format\": \"date\"}}}");
    cr_assert(strstr(e, "unsupported keyword 'format' at /properties/when/format"), "%s", e);
    e = gt_compile_error(S, "{\"type\": \"number\", \"minimum\": 0}");
    cr_assert(strstr(e, "'minimum' at /minimum"), "%s", e);
    e = gt_compile_error(S, "{\"items\": [{\"oneOf\": []}], \"type\": \"array\"}");
    cr_assert(strstr(e, "not an object"), "%s", e);
    e = gt_compile_error(S, "{\"type\": \"array\", \"items\": {\"allOf\": [{}]}}");
    cr_assert(strstr(e, "'allOf' at /items/allOf"), "%s", e);
    e = gt_compile_error(S, "{\"properties\": {\"a~/\": {\"pattern\": \"x\"}}}");
    cr_assert(strstr(e, "at /properties/a~0~1/pattern"), "%s", e);
    e = gt_compile_error(S, "{\"$ref\": \"#/$defs/missing\"}");
    cr_assert(strstr(e, "#/$defs/missing"), "%s", e);
    e = gt_compile_error(S, "{\"$ref\": \"http://example.com/s.json\"}");
    cr_assert(strstr(e, "cannot resolve"), "%s", e);
    e = gt_compile_error(S, "{\"properties\": {\"a\": {}}, \"required\": [\"a\", \"b\"]}");
    cr_assert(strstr(e, "'b' at /required/1"), "%s", e);
    e = gt_compile_error(S, "{\"type\": \"strin\"}");
    cr_assert(strstr(e, "unknown type"), "%s", e);
    e = gt_compile_error(S, "{\"type\": \"string\", \"anyOf\": [{}]}");
    cr_assert(strstr(e, "anyOf together with 'type'"), "%s", e);
    e = gt_compile_error(S, "{\"properties\": {\"a\": false}}");
    cr_assert(strstr(e, "matches nothing"), "%s", e);
    e = gt_compile_error(S, "{\"maxLength\": -1}");
    cr_assert(strstr(e, "maxLength"), "%s", e);
    e = gt_compile_error(S, "{\"enum\": []}");
    cr_assert(strstr(e, "enum"), "%s", e);
    e = gt_compile_error(S, "{\"type\": \"integer\"");
    cr_assert(strstr(e, "not valid JSON"), "%s", e);
    e = gt_compile_error(S, "{\"a\": 1, \"a\": 2}");
    cr_assert(strstr(e, "not valid JSON"), "%s", e);
}

Test(json_object, any_object)
{
    gt_accepts(O, "", "{}");
    gt_accepts(O, "", "{\"a\": [1, 2.5e-3, \"x\", true, null, {\"b\": {}}], \"c\": -0}");
    gt_accepts(O, "", "{\n  \"k\": \"v\"\n}");
    gt_dead(O, "", "[");
    gt_dead(O, "", "{a");
    gt_dead(O, "", "{\"a\": 1,}");
    gt_rejects(O, "", "{\"a\": 1");
}

/* ---- random walks ---------------------------------------------------------------------------- */
static const char *const pieces[] = {"\": ", "\", \"", "true", "false", "null", "},", "]}", "{\"", "\n  ", "\\u00e9",
                                     "\\n", "12", "3.5", "e+1", "\": [", "\"]", "\"}", "\":", ", ", "[]", "{}",
                                     "\"name", "kind\"", "\"dir\"", "file", "ab", "\"v\": ", "\"kids\": [",
                                     "\"x\"", "-0", "\"\"", "é", NULL};

static struct gt_vocab json_vocab(void)
{
    struct gt_vocab t = gt_toy_vocab("{}[]\",: \n\tabcdefghijklmnopqrstuvwxyz0123456789.-+E\\/\xc3\xa9", 120, 7);
    /* Replace some random tokens with pieces of JSON, as real vocabularies have. */
    int n = 0;
    while (pieces[n]) n++;
    for (int i = 0; i < n; i++) {
        int32_t id = t.n - 3 - i;
        free(t.tok[id]);
        t.tok[id] = strdup(pieces[i]);
        t.len[id] = (uint32_t)strlen(pieces[i]);
    }
    grammar_vocab_free(t.v);
    char err[256];
    cr_assert_eq(grammar_vocab_from_bytes(&t.v, t.n, (const char *const *)t.tok, t.len, NULL, NULL, &t.stop, 1, err,
                                          sizeof err),
                 0, "%s", err);
    return t;
}

/* Walks: random allowed tokens (the stop token half of the time it is allowed), each mask
 * checked against the exact walk, each finished output parsed and validated. */
static void random_walks(enum grammar_kind kind, const char *schema, int walks, int max_tokens)
{
    struct gt_vocab t = json_vocab();
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(kind, schema), t.v), 0);
    json_error_t je;
    json_t *sj = kind == S ? json_loads(schema, 0, &je) : json_pack("{s:s}", "type", "object");
    cr_assert_not_null(sj);
    size_t words = grammar_vocab_mask_words(t.v);
    uint32_t *mask = calloc(words, 4), *slow = calloc(words, 4);
    char *out = malloc((size_t)max_tokens * 8 + 1);
    int32_t *allowed = malloc((size_t)t.n * sizeof *allowed);
    uint64_t seed = 12345;
    int finished = 0;
    for (int w = 0; w < walks; w++) {
        struct grammar_matcher *m = NULL;
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        size_t len = 0;
        bool done = false;
        for (int step = 0; step < max_tokens && !done; step++) {
            cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
            cr_assert_eq(grammar_matcher_fill_mask_slow(m, slow, words), 0);
            cr_assert(memcmp(mask, slow, words * 4) == 0, "walk %d step %d: the mask differs from the exact walk\n%.*s", w,
                      step, (int)len, out);
            int na = 0;
            bool stop_ok = gt_bit(mask, t.stop);
            for (int32_t i = 0; i < t.n; i++)
                if (i != t.stop && gt_bit(mask, i)) allowed[na++] = i;
            cr_assert(!gt_bit(mask, t.n - 1), "the empty token is never allowed");
            cr_assert(na > 0 || stop_ok, "walk %d: no token allowed after\n%.*s", w, (int)len, out);
            cr_assert_eq(stop_ok, grammar_matcher_can_end(m));
            if (stop_ok && (na == 0 || gt_rand(&seed) % 2 == 0)) {
                cr_assert_eq(grammar_matcher_accept_token(m, t.stop), 0);
                cr_assert(grammar_matcher_is_done(m));
                done = true;
                break;
            }
            int32_t id = allowed[gt_rand(&seed) % (uint64_t)na];
            cr_assert_eq(grammar_matcher_accept_token(m, id), 0);
            memcpy(out + len, t.tok[id], t.len[id]);
            len += t.len[id];
        }
        if (done) {
            finished++;
            json_t *v = json_loadb(out, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            cr_assert_not_null(v, "walk %d: does not parse (%s):\n%.*s", w, je.text, (int)len, out);
            cr_assert(jv_valid(v, sj, sj), "walk %d: does not validate:\n%.*s", w, (int)len, out);
            json_decref(v);
        }
        grammar_matcher_free(m);
    }
    cr_assert_geq(finished, walks * 3 / 4, "only %d of %d walks finished", finished, walks);
    json_decref(sj);
    free(mask);
    free(slow);
    free(out);
    free(allowed);
    grammar_compiled_unref(c);
    gt_toy_free(&t);
}

Test(json_walks, object_with_every_keyword)
{
    random_walks(S,
                 "{\"type\": \"object\", \"properties\": {"
                 "\"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 6},"
                 "\"kind\": {\"enum\": [\"dir\", \"file\", 7, null]},"
                 "\"size\": {\"type\": [\"integer\", \"null\"]},"
                 "\"ratio\": {\"type\": \"number\"},"
                 "\"ok\": {\"type\": \"boolean\"},"
                 "\"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 3}, \"minItems\": 1, \"maxItems\": 3},"
                 "\"grid\": {\"type\": \"array\", \"items\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"maxItems\": 2}, \"maxItems\": 2},"
                 "\"opt\": {\"const\": \"x\"},"
                 "\"alt\": {\"anyOf\": [{\"type\": \"string\", \"maxLength\": 2}, {\"type\": \"boolean\"}]}"
                 "}, \"required\": [\"name\", \"kind\", \"size\", \"ratio\", \"ok\", \"tags\", \"grid\", \"alt\"],"
                 " \"additionalProperties\": false}",
                 40, 600);
}

Test(json_walks, recursive_tree)
{
    random_walks(S,
                 "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {"
                 "\"v\": {\"type\": \"string\", \"maxLength\": 2}, "
                 "\"kids\": {\"type\": \"array\", \"items\": {\"$ref\": \"#/$defs/node\"}, \"maxItems\": 2}}, "
                 "\"required\": [\"v\", \"kids\"], \"additionalProperties\": false}}, \"$ref\": \"#/$defs/node\"}",
                 40, 800);
}

Test(json_walks, optional_properties_and_maps)
{
    random_walks(S,
                 "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, "
                 "\"b\": {\"type\": \"object\", \"additionalProperties\": {\"type\": \"boolean\"}}, "
                 "\"c\": {\"type\": \"null\"}}, \"required\": [\"b\"]}",
                 40, 600);
}

Test(json_walks, any_json_object)
{
    random_walks(O, "", 30, 600);
}
