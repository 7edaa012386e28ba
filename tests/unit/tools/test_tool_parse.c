/* Tool-call parsers on canned model outputs, per family: the whole text at once, then cut at
 * every point and in pieces of every small size (as tokens stream), which must give the same
 * content and calls. */
#include "tests/unit/tools/tools_test_util.h"

struct want_call {
    const char *name, *args;
};

/* Parses text whole and in every cutting; each must give content and the calls of want. */
static void expect(enum tool_family f, const json_t *names, bool forced, const char *text, const char *content,
                   const struct want_call *want, int n_want)
{
    struct tt_result whole;
    tt_run(f, names, forced, text, 0, &whole);
    cr_assert_str_eq(strbuf_str(&whole.content), content, "%s: content of\n%s", tool_family_name(f), text);
    cr_assert_eq(whole.n_calls, n_want, "%s: %d calls in\n%s", tool_family_name(f), whole.n_calls, text);
    for (int i = 0; i < n_want; i++) {
        cr_assert_str_eq(whole.name[i], want[i].name);
        cr_assert_str_eq(strbuf_str(&whole.args[i]), want[i].args, "call %d of\n%s", i, text);
        /* Mistral's templates take back only ids of nine letters and digits. */
        if (f == TOOL_FAMILY_MISTRAL) cr_assert_eq(strlen(whole.id[i]), 9u);
        else cr_assert(!strncmp(whole.id[i], "call_", 5) && strlen(whole.id[i]) == 29, "%s", whole.id[i]);
    }
    size_t len = strlen(text);
    char what[64];
    for (size_t piece = 1; piece <= 7; piece++) {
        struct tt_result r;
        tt_run(f, names, forced, text, piece, &r);
        snprintf(what, sizeof what, "pieces of %zu", piece);
        tt_assert_same(&whole, &r, what);
        tt_result_free(&r);
    }
    for (size_t cut = 1; cut < len; cut++) {
        struct tt_result r;
        tt_run_cuts(f, names, forced, text, &cut, 1, &r);
        snprintf(what, sizeof what, "cut at %zu", cut);
        tt_assert_same(&whole, &r, what);
        tt_result_free(&r);
    }
    tt_result_free(&whole);
}

static void expect_content(enum tool_family f, const json_t *names, const char *text)
{
    expect(f, names, false, text, text, NULL, 0);
}

static json_t *names_of(const char *a, const char *b)
{
    return b ? json_pack("[s, s]", a, b) : json_pack("[s]", a);
}

Test(hermes, calls_after_content)
{
    const struct want_call w[] = {{"get_weather", "{\"city\": \"Paris\", \"days\": 3}"}, {"get_time", "{}"}};
    expect(TOOL_FAMILY_HERMES, NULL, false,
           "Let me check.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n"
           "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
           "Let me check.", w, 2);
}

Test(hermes, arguments_before_the_name_strings_and_nesting)
{
    const struct want_call w[] = {{"f", "{\"q\": [1, {\"r\": \"}]\\\"{\"}], \"s\": null}"}};
    expect(TOOL_FAMILY_HERMES, NULL, false,
           "<tool_call>{\"arguments\": {\"q\": [1, {\"r\": \"}]\\\"{\"}], \"s\": null}, \"name\": \"f\"}</tool_call>", "",
           w, 1);
    /* Arguments written as a JSON string hold the JSON text: passed decoded. */
    const struct want_call s[] = {{"f", "{\"a\": \"x\\\"y\"}"}};
    expect(TOOL_FAMILY_HERMES, NULL, false,
           "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": \\\"x\\\\\\\"y\\\"}\"}\n</tool_call>", "", s, 1);
    /* Other keys are skipped; a call without arguments gets {}. */
    const struct want_call o[] = {{"g", "{}"}};
    expect(TOOL_FAMILY_HERMES, NULL, false, "<tool_call>{\"type\": \"function\", \"id\": [1, \"a\"], \"name\": \"g\"}</tool_call> ok",
           "ok", o, 1);
}

Test(hermes, text_that_is_not_a_call_stays_content)
{
    expect_content(TOOL_FAMILY_HERMES, NULL, "Hello <tool world> and <tool_cal");
    expect_content(TOOL_FAMILY_HERMES, NULL, "<tool_call>\nnot json\n</tool_call> after");
    expect_content(TOOL_FAMILY_HERMES, NULL, "<tool_call>{\"nom\": \"f\"}</tool_call>");
    expect_content(TOOL_FAMILY_HERMES, NULL, "a < b <= c\n\n  done  ");
    /* A call cut off before its name is content; after it, what came of the arguments. */
    expect_content(TOOL_FAMILY_HERMES, NULL, "<tool_call>\n{\"na");
    const struct want_call w[] = {{"f", "{\"a\": [1, "}};
    expect(TOOL_FAMILY_HERMES, NULL, false, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, ", "", w, 1);
}

Test(llama3_json, calls_at_the_start)
{
    json_t *names = names_of("get_weather", NULL);
    const struct want_call w[] = {{"get_weather", "{\"city\": \"Paris\"}"}};
    expect(TOOL_FAMILY_LLAMA3_JSON, names, false, "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "",
           w, 1);
    /* After <|python_tag|> any name is a call, and calls are separated by ';'. */
    const struct want_call two[] = {{"x", "{}"}, {"y", "{\"q\": 1.5e3}"}};
    expect(TOOL_FAMILY_LLAMA3_JSON, names, false,
           "<|python_tag|>{\"name\": \"x\", \"parameters\": {}}; {\"name\": \"y\", \"parameters\": {\"q\": 1.5e3}}", "",
           two, 2);
    /* Scalars as arguments end where the value does. */
    const struct want_call sc[] = {{"get_weather", "42"}};
    expect(TOOL_FAMILY_LLAMA3_JSON, names, false, "{\"name\": \"get_weather\", \"parameters\": 42}", "", sc, 1);
    json_decref(names);
}

Test(llama3_json, json_answers_are_content)
{
    json_t *names = names_of("get_weather", NULL);
    expect_content(TOOL_FAMILY_LLAMA3_JSON, names, "{\"answer\": 42}");
    expect_content(TOOL_FAMILY_LLAMA3_JSON, names, "{\"name\": \"Bob\", \"parameters\": {}}");
    expect_content(TOOL_FAMILY_LLAMA3_JSON, names, "  Hello {\"name\": \"get_weather\"}");
    expect_content(TOOL_FAMILY_LLAMA3_JSON, names, "   ");
    expect_content(TOOL_FAMILY_LLAMA3_JSON, names, "{\"name\": \"get_weath");
    json_decref(names);
}

Test(mistral, array_and_bare_forms)
{
    const struct want_call w[] = {{"a", "{\"x\": 1}"}, {"b", "{}"}};
    expect(TOOL_FAMILY_MISTRAL, NULL, false,
           "Sure. [TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]", "Sure.", w,
           2);
    const struct want_call b[] = {{"get_weather", "{\"city\": \"Paris\"}"}, {"get_time", "{}"}};
    expect(TOOL_FAMILY_MISTRAL, NULL, false,
           "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}", "", b, 2);
    /* Forced calls come without the marker, which is a special token no grammar writes. */
    const struct want_call f[] = {{"a", "{\"x\": 1}"}};
    expect(TOOL_FAMILY_MISTRAL, NULL, true, "[{\"name\": \"a\", \"arguments\": {\"x\": 1}}]", "", f, 1);
    expect_content(TOOL_FAMILY_MISTRAL, NULL, "[TOOL_CALLS] is what I would write");
    expect_content(TOOL_FAMILY_MISTRAL, NULL, "[1, 2] [TOOL_CALL");
}

#define DS_CALL(name, args)                                                                                           \
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>" name "\n```json\n" args "\n```<｜tool▁call▁end｜>"

Test(deepseek_v3, calls)
{
    const struct want_call w[] = {{"get_weather", "{\"city\": \"Paris\"}"}, {"get_time", "{}"}};
    expect(TOOL_FAMILY_DEEPSEEK_V3, NULL, false,
           "Checking.<｜tool▁calls▁begin｜>" DS_CALL("get_weather", "{\"city\": \"Paris\"}") "\n" DS_CALL("get_time", "{}")
               "<｜tool▁calls▁end｜>",
           "Checking.", w, 2);
    expect_content(TOOL_FAMILY_DEEPSEEK_V3, NULL, "<｜tool▁calls▁begin｜>oops");
}

Test(json, object_or_array)
{
    json_t *names = names_of("a", "b");
    const struct want_call one[] = {{"a", "{\"k\": \"v\"}"}};
    expect(TOOL_FAMILY_JSON, names, false, "{\"name\": \"a\", \"arguments\": {\"k\": \"v\"}}", "", one, 1);
    const struct want_call two[] = {{"a", "{}"}, {"b", "[true]"}};
    expect(TOOL_FAMILY_JSON, names, false,
           "[{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": [true]}]\n\n trailing words", "trailing words",
           two, 2);
    expect_content(TOOL_FAMILY_JSON, names, "[1, 2, 3]");
    expect_content(TOOL_FAMILY_JSON, names, "{\"name\": \"c\", \"arguments\": {}}");
    json_decref(names);
}

Test(families, names_and_detection)
{
    enum tool_family f;
    for (int i = 0; i < TOOL_FAMILY_COUNT; i++) {
        cr_assert_eq(tool_family_from_name(tool_family_name((enum tool_family)i), &f), 0);
        cr_assert_eq((int)f, i);
    }
    cr_assert_eq(tool_family_from_name("qwen3", &f), 0);
    cr_assert_eq(f, TOOL_FAMILY_HERMES);
    cr_assert_lt(tool_family_from_name("nope", &f), 0);
    static const struct {
        const char *rendered;
        int family;
    } cases[] = {
        {"<tools>{\"name\": \"fn\"}</tools> use <tool_call> tags\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"fn\", "
         "\"arguments\": {}}\n</tool_call>",
         TOOL_FAMILY_HERMES},
        {"[AVAILABLE_TOOLS][{\"name\": \"fn\"}][/AVAILABLE_TOOLS][INST]hi[/INST][TOOL_CALLS][{\"name\": \"fn\", "
         "\"arguments\": {}}]</s>",
         TOOL_FAMILY_MISTRAL},
        {"<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>fn\n```json\n{}",
         TOOL_FAMILY_DEEPSEEK_V3},
        {"<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"fn\", \"parameters\": {\"x\": 1}}<|eot_id|>",
         TOOL_FAMILY_LLAMA3_JSON},
        {"assistant: {\"name\": \"fn\", \"arguments\": {}}", TOOL_FAMILY_JSON},
        {"assistant: I would call fn", -1},
        {"no mention at all", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = tool_family_detect(cases[i].rendered, "fn", &f);
        if (cases[i].family < 0) {
            cr_assert_lt(rc, 0, "case %zu", i);
        } else {
            cr_assert_eq(rc, 0, "case %zu", i);
            cr_assert_eq((int)f, cases[i].family, "case %zu: %s", i, tool_family_name(f));
        }
    }
}

/* ---- reasoning ------------------------------------------------------------------------------ */

static void expect_reasoning(bool from_start, const char *text, const char *reasoning, const char *content)
{
    size_t len = strlen(text);
    for (size_t cut = 0; cut <= len; cut++) {
        for (size_t piece = 0; piece <= 3; piece++) {
            struct reasoning_parser *p = reasoning_parser_new(from_start);
            struct strbuf r = {0}, c = {0};
            size_t at = 0;
            /* The first piece ends at cut, the rest go in pieces of `piece` (0: at once). */
            cr_assert_eq(reasoning_parser_push(p, text, cut, &r, &c), 0);
            at = cut;
            while (at < len) {
                size_t n = piece && len - at > piece ? piece : len - at;
                cr_assert_eq(reasoning_parser_push(p, text + at, n, &r, &c), 0);
                at += n;
            }
            cr_assert_eq(reasoning_parser_finish(p, &r, &c), 0);
            cr_assert_str_eq(strbuf_str(&r), reasoning, "reasoning of %s (cut %zu, pieces %zu)", text, cut, piece);
            cr_assert_str_eq(strbuf_str(&c), content, "content of %s (cut %zu, pieces %zu)", text, cut, piece);
            strbuf_free(&r);
            strbuf_free(&c);
            reasoning_parser_free(p);
        }
    }
}

Test(reasoning, qwen3)
{
    expect_reasoning(false, "<think>\nLet me see.\n</think>\n\nThe answer is 4.", "\nLet me see.\n", "The answer is 4.");
    expect_reasoning(false, "\n<think>a < b</think>b", "a < b", "b");
    /* Without <think> first, it is all answer. */
    expect_reasoning(false, "The answer <think>is</think> 4.", "", "The answer <think>is</think> 4.");
    expect_reasoning(false, "  <thin", "", "  <thin");
    /* A reasoning that never ends is all reasoning. */
    expect_reasoning(false, "<think>still thinking </thi", "still thinking </thi", "");
}

Test(reasoning, deepseek_r1_starts_in_reasoning)
{
    expect_reasoning(true, "Hmm, 2+2.\n</think>\n\n4", "Hmm, 2+2.\n", "4");
    expect_reasoning(true, "<think>x</think>y", "x", "y");
    expect_reasoning(true, "no end", "no end", "");
    enum reasoning_family f;
    cr_assert_eq(reasoning_family_from_name("deepseek_r1", &f), 0);
    cr_assert_eq(f, REASONING_DEEPSEEK_R1);
    cr_assert_str_eq(reasoning_family_name(REASONING_QWEN3), "qwen3");
    cr_assert_lt(reasoning_family_from_name("r1", &f), 0);
}
