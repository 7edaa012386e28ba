/* The grammars that force tool calls: random walks through each family's grammar (any byte
 * the grammar allows, as a random-weight model would pick) always give text that the family's
 * parser reads back as calls of the request's tools, with arguments that parse and follow the
 * function's parameters. */
#include "tests/unit/tools/tools_test_util.h"
#include "worker/grammar/grammar.h"

#define WEATHER_PARAMS                                                                                                \
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"enum\": [\"Paris\", \"Tokyo\"]}, "     \
    "\"days\": {\"type\": \"integer\"}, \"units\": {\"enum\": [\"c\", \"f\"]}}, \"required\": [\"city\", \"days\"], "    \
    "\"additionalProperties\": false}"
/* Keywords the grammar engine cannot enforce: dropped for a function that is not strict. */
#define LOOKUP_PARAMS                                                                                                 \
    "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 1, \"maximum\": 5}, "          \
    "\"tag\": {\"type\": \"string\", \"maxLength\": 3, \"pattern\": \"^[a-z]+$\"}}, \"required\": [\"n\", \"tag\"]}"

static json_t *test_tools(void)
{
    json_error_t e;
    json_t *t = json_pack("[{s:s, s:{s:s, s:o, s:b}}, {s:s, s:{s:s}}, {s:s, s:{s:s, s:o}}]", "type", "function",
                          "function", "name", "get_weather", "parameters", json_loads(WEATHER_PARAMS, 0, &e), "strict", 1,
                          "type", "function", "function", "name", "get_time", "type", "function", "function", "name",
                          "lookup", "parameters", json_loads(LOOKUP_PARAMS, 0, &e));
    cr_assert_not_null(t);
    return t;
}

static struct grammar_vocab *byte_vocab(void)
{
    static char bytes[256];
    const char *toks[257];
    uint32_t lens[257];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        toks[i] = &bytes[i];
        lens[i] = 1;
    }
    toks[256] = NULL;
    lens[256] = 0;
    int32_t stop = 256;
    char err[256];
    struct grammar_vocab *v = NULL;
    cr_assert_eq(grammar_vocab_from_bytes(&v, 257, toks, lens, NULL, NULL, &stop, 1, err, sizeof err), 0, "%s", err);
    return v;
}

static struct grammar_compiled *compile(struct grammar_vocab *v, const char *gbnf)
{
    char err[512] = "";
    struct grammar *g = NULL;
    cr_assert_eq(grammar_compile(&g, GRAMMAR_GBNF, gbnf, strlen(gbnf), err, sizeof err), 0, "%s\n%s", err, gbnf);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, g, v), 0);
    return c;
}

/* One walk: uniformly random allowed tokens until the grammar ends. NULL when it ran out of
 * steps first. */
static char *walk(struct grammar_compiled *c, uint64_t *seed, int max_steps)
{
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    uint32_t mask[9];
    int32_t allowed[257];
    struct strbuf out = {0};
    bool done = false;
    for (int step = 0; step < max_steps && !done; step++) {
        cr_assert_eq(grammar_matcher_fill_mask(m, mask, 9), 0);
        int n = 0;
        for (int id = 0; id < 257; id++)
            if (mask[id >> 5] & (1u << (id & 31))) allowed[n++] = id;
        cr_assert_gt(n, 0, "the grammar allows nothing after '%s'", strbuf_str(&out));
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        int32_t id = allowed[(*seed >> 33) % (uint64_t)n];
        cr_assert_eq(grammar_matcher_accept_token(m, id), 0);
        if (id == 256) break;
        char b = (char)id;
        strbuf_append(&out, &b, 1);
        done = grammar_matcher_is_done(m);
        if (!done && grammar_matcher_can_end(m) && (*seed >> 40) % 4 == 0) break; /* stop when it may */
    }
    bool finished = done || grammar_matcher_can_end(m);
    grammar_matcher_free(m);
    if (!finished) {
        strbuf_free(&out);
        return NULL;
    }
    if (!out.p) strbuf_append(&out, "", 0);
    return out.p;
}

static size_t utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

/* The call's arguments follow its function's parameters. */
static void check_args(const char *name, const char *args, const char *text)
{
    json_error_t e;
    json_t *a = json_loads(args, JSON_DECODE_ANY, &e);
    cr_assert(json_is_object(a), "%s: arguments are not an object: %s\nin %s", name, args, text);
    if (!strcmp(name, "get_weather")) {
        const char *city = json_string_value(json_object_get(a, "city"));
        cr_assert(city && (!strcmp(city, "Paris") || !strcmp(city, "Tokyo")), "%s", args);
        cr_assert(json_is_integer(json_object_get(a, "days")), "%s", args);
        json_t *units = json_object_get(a, "units");
        cr_assert(!units || !strcmp(json_string_value(units) ?: "", "c") || !strcmp(json_string_value(units) ?: "", "f"));
        cr_assert_leq(json_object_size(a), 3u, "%s", args);
    } else if (!strcmp(name, "get_time")) {
        cr_assert_eq(json_object_size(a), 0u, "a function without parameters takes {}: %s", args);
    } else {
        cr_assert_str_eq(name, "lookup");
        cr_assert(json_is_integer(json_object_get(a, "n")), "%s", args);
        const char *tag = json_string_value(json_object_get(a, "tag"));
        cr_assert(tag && utf8_len(tag) <= 3, "%s", args);
    }
    json_decref(a);
}

static void check_family(enum tool_family f, const char *only, bool parallel)
{
    json_t *tools = test_tools();
    char *gbnf = NULL, err[256] = "";
    int bad = 0;
    cr_assert_eq(tool_grammar_gbnf(f, tools, only, parallel, &gbnf, &bad, err, sizeof err), 0, "%s", err);
    struct grammar_vocab *v = byte_vocab();
    struct grammar_compiled *c = compile(v, gbnf);
    json_t *names = json_pack("[s, s, s]", "get_weather", "get_time", "lookup");
    uint64_t seed = 12345 + (uint64_t)f * 7 + (only != NULL) * 3 + parallel;
    int finished = 0, several = 0;
    for (int w = 0; w < 60; w++) {
        char *text = walk(c, &seed, 3000);
        if (!text) continue;
        finished++;
        struct tt_result r;
        tt_run(f, names, true, text, 3, &r);
        cr_assert_geq(r.n_calls, 1, "%s: no call in\n%s", tool_family_name(f), text);
        if (!parallel) cr_assert_eq(r.n_calls, 1, "%s", text);
        several += r.n_calls > 1;
        cr_assert_str_eq(strbuf_str(&r.content), "", "%s: content beside the calls in\n%s", tool_family_name(f), text);
        for (int i = 0; i < r.n_calls; i++) {
            if (only) cr_assert_str_eq(r.name[i], only);
            check_args(r.name[i], strbuf_str(&r.args[i]), text);
        }
        tt_result_free(&r);
        free(text);
    }
    cr_assert_geq(finished, 30, "%s: only %d walks finished", tool_family_name(f), finished);
    if (parallel && !only) cr_assert_gt(several, 0, "%s: never several calls", tool_family_name(f));
    json_decref(names);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    free(gbnf);
    json_decref(tools);
}

Test(tool_grammar, every_family_required_one_or_several)
{
    for (int f = 0; f < TOOL_FAMILY_COUNT; f++) {
        check_family((enum tool_family)f, NULL, false);
        check_family((enum tool_family)f, NULL, true);
    }
}

Test(tool_grammar, named_function_only)
{
    for (int f = 0; f < TOOL_FAMILY_COUNT; f++) {
        check_family((enum tool_family)f, "get_weather", true);
        check_family((enum tool_family)f, "lookup", false);
    }
}

Test(tool_grammar, the_family_syntax_as_templates_write_it)
{
    json_t *tools = test_tools();
    struct grammar_vocab *v = byte_vocab();
    static const struct {
        enum tool_family f;
        const char *text;
    } ok[] = {
        {TOOL_FAMILY_HERMES, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": "
                             "\"get_weather\", \"arguments\": {\"city\": \"Tokyo\", \"days\": 2}}\n</tool_call>"},
        {TOOL_FAMILY_LLAMA3_JSON, "{\"name\": \"get_time\", \"parameters\": {}}"},
        {TOOL_FAMILY_MISTRAL, "[{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"lookup\", \"arguments\": {\"n\": 9, "
                              "\"tag\": \"abc\"}}]"},
        {TOOL_FAMILY_JSON, "[{\"name\": \"get_time\", \"arguments\": {}}]"},
        {TOOL_FAMILY_DEEPSEEK_V3, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
                                  "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *gbnf = NULL, err[256];
        int bad;
        cr_assert_eq(tool_grammar_gbnf(ok[i].f, tools, NULL, true, &gbnf, &bad, err, sizeof err), 0, "%s", err);
        struct grammar_compiled *c = compile(v, gbnf);
        struct grammar_matcher *m = NULL;
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        cr_assert_eq(grammar_matcher_accept_bytes(m, ok[i].text, strlen(ok[i].text)), 0, "%s", ok[i].text);
        cr_assert(grammar_matcher_can_end(m), "%s", ok[i].text);
        grammar_matcher_free(m);
        /* Names outside the tools are not allowed. */
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        const char *wrong = ok[i].f == TOOL_FAMILY_DEEPSEEK_V3
                                ? "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_tim\n"
                                : ok[i].f == TOOL_FAMILY_HERMES ? "<tool_call>\n{\"name\": \"get_tim\","
                                : ok[i].f == TOOL_FAMILY_LLAMA3_JSON ? "{\"name\": \"get_tim\","
                                                                     : "[{\"name\": \"get_tim\",";
        cr_assert_lt(grammar_matcher_accept_bytes(m, wrong, strlen(wrong)), 0, "%s took %s", tool_family_name(ok[i].f),
                     wrong);
        grammar_matcher_free(m);
        grammar_compiled_unref(c);
        free(gbnf);
    }
    grammar_vocab_free(v);
    json_decref(tools);
}

Test(tool_grammar, strict_functions_refuse_what_cannot_be_enforced)
{
    json_t *tools = test_tools();
    json_object_set_new(json_object_get(json_array_get(tools, 2), "function"), "strict", json_true());
    char *gbnf = NULL, err[256] = "";
    int bad = -1;
    cr_assert_lt(tool_grammar_gbnf(TOOL_FAMILY_HERMES, tools, NULL, true, &gbnf, &bad, err, sizeof err), 0);
    cr_assert_null(gbnf);
    cr_assert_eq(bad, 2);
    cr_assert(strstr(err, "minimum"), "%s", err);
    /* Only the named function's schema matters. */
    cr_assert_eq(tool_grammar_gbnf(TOOL_FAMILY_HERMES, tools, "get_time", false, &gbnf, &bad, err, sizeof err), 0);
    free(gbnf);
    cr_assert_lt(tool_grammar_gbnf(TOOL_FAMILY_HERMES, tools, "nope", false, &gbnf, &bad, err, sizeof err), 0);
    json_decref(tools);
}

Test(tool_grammar, loosening_keeps_shapes_and_drops_the_rest)
{
    json_error_t e;
    json_t *s = json_loads("{\"type\": \"object\", \"properties\": {\"a\": {\"oneOf\": [{\"type\": \"integer\", \"minimum\": 0}, "
                           "{\"type\": \"null\"}]}, \"b\": {\"allOf\": [{\"type\": \"string\", \"format\": \"date\"}], "
                           "\"description\": \"d\"}, \"enum_data\": {\"enum\": [{\"minimum\": 1}]}}, \"nullable\": true}",
                           0, &e);
    json_t *l = tool_schema_loosen(s);
    json_t *want = json_loads("{\"type\": \"object\", \"properties\": {\"a\": {\"anyOf\": [{\"type\": \"integer\"}, {\"type\": "
                              "\"null\"}]}, \"b\": {\"type\": \"string\", \"description\": \"d\"}, \"enum_data\": {\"enum\": "
                              "[{\"minimum\": 1}]}}}",
                              0, &e);
    cr_assert(json_equal(l, want), "%s", json_dumps(l, JSON_SORT_KEYS));
    json_decref(s);
    json_decref(l);
    json_decref(want);
}

Test(tool_grammar, rule_names_take_a_prefix)
{
    struct strbuf out = {0};
    cr_assert_eq(tool_gbnf_prefix("root ::= obj0 \"root \\\" x\" [a-z\\]] # root here\nobj0 ::= j-value{0,3} | ( _x )\n",
                                  "t1-", &out),
                 0);
    cr_assert_str_eq(strbuf_str(&out),
                     "t1-root ::= t1-obj0 \"root \\\" x\" [a-z\\]] # root here\nt1-obj0 ::= t1-j-value{0,3} | ( t1-_x )\n");
    strbuf_free(&out);
    cr_assert(tool_name_valid("get_weather-2"));
    cr_assert(!tool_name_valid(""));
    cr_assert(!tool_name_valid("a.b"));
    cr_assert(!tool_name_valid("a\"b"));
}
