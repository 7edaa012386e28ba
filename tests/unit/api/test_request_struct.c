/* A request's structured output and tools into a grammar and output options: every constraint
 * is refused with a 400 naming its field on a backend without token masks (the CUDA backend
 * today), before any generation; on one with masks each compiles, once per source. */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/api/request_struct.h"

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

#define MSGS "\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]"
#define TOOLS                                                                                                         \
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": "       \
    "\"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}, {\"type\": "          \
    "\"function\", \"function\": {\"name\": \"get_time\"}}]"

struct outcome {
    int status;
    struct json_field_error err;
    struct engine_request *r;
    struct gen_output_opts out;
};

static struct outcome parse(const struct gen_struct_env *env, const char *body)
{
    json_error_t je;
    json_t *root = json_loads(body, 0, &je);
    cr_assert_not_null(root, "test body: %s: %s", je.text, body);
    struct outcome o = {0};
    o.r = calloc(1, sizeof *o.r);
    o.r->skip_special = true;
    o.status = gen_struct_parse(env, root, o.r, &o.out, &o.err);
    json_decref(root);
    return o;
}

static void outcome_free(struct outcome *o)
{
    engine_request_free(o->r);
    gen_output_opts_free(&o->out);
}

Test(request_struct, every_constraint_is_refused_on_a_backend_without_masks)
{
    struct gen_struct_env env = {.cache = NULL, .backend = "cuda", .tool_family = TOOL_FAMILY_HERMES};
    static const struct {
        const char *body, *param;
    } cases[] = {
        {"{" MSGS ", \"response_format\": {\"type\": \"json_object\"}}", "response_format"},
        {"{" MSGS ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"x\", \"schema\": "
         "{\"type\": \"integer\"}}}}",
         "response_format"},
        {"{\"prompt\": \"x\", \"guided_regex\": \"a+\"}", "guided_regex"},
        {"{" MSGS ", \"guided_json\": {\"type\": \"boolean\"}}", "guided_json"},
        {"{" MSGS ", \"guided_choice\": [\"a\", \"b\"]}", "guided_choice"},
        {"{" MSGS ", \"guided_grammar\": \"root ::= \\\"a\\\"\"}", "guided_grammar"},
        {"{" MSGS ", \"structured_outputs\": {\"choice\": [\"a\"]}}", "structured_outputs"},
        {"{" MSGS ", " TOOLS ", \"tool_choice\": \"required\"}", "tool_choice"},
        {"{" MSGS ", " TOOLS ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"get_time\"}}}",
         "tool_choice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct outcome o = parse(&env, cases[i].body);
        cr_assert_eq(o.status, 400, "accepted: %s", cases[i].body);
        cr_assert_str_eq(o.err.param, cases[i].param);
        char want[160];
        snprintf(want, sizeof want, "structured output (%s) is not supported on the CUDA backend yet", cases[i].param);
        cr_assert_str_eq(o.err.message, want);
        cr_assert_null(o.r->grammar);
        outcome_free(&o);
    }
    /* What needs no mask still works there: text, and tools the model may call or not. */
    struct outcome o = parse(&env, "{" MSGS ", \"response_format\": {\"type\": \"text\"}, " TOOLS "}");
    cr_assert_eq(o.status, 0, "%s", o.err.message);
    cr_assert(o.out.tools && !o.out.tools_forced);
    cr_assert_eq(json_array_size(o.out.tool_names), 2u);
    cr_assert_null(o.r->grammar);
    outcome_free(&o);
}

Test(request_struct, constraints_compile_once_and_errors_name_the_field)
{
    struct grammar_vocab *v = byte_vocab();
    struct grammar_cache *cache = NULL;
    cr_assert_eq(grammar_cache_new(&cache, v, 8), 0);
    struct gen_struct_env env = {.cache = cache, .backend = "cpu", .tool_family = TOOL_FAMILY_HERMES};

    const char *schema = "{" MSGS ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"x\", "
                         "\"schema\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}}";
    for (int i = 0; i < 2; i++) {
        struct outcome o = parse(&env, schema);
        cr_assert_eq(o.status, 0, "%s", o.err.message);
        cr_assert_not_null(o.r->grammar);
        cr_assert(!o.out.tools && !o.out.reasoning);
        outcome_free(&o);
    }
    struct grammar_cache_stats st;
    grammar_cache_get_stats(cache, &st);
    cr_assert_eq(st.misses, 1);
    cr_assert_eq(st.hits, 1);

    static const struct {
        const char *body, *param, *says;
    } bad[] = {
        {"{" MSGS ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"type\": \"string\", "
         "\"format\": \"date\"}}}}",
         "response_format", "'format' at /format"},
        {"{" MSGS ", \"guided_regex\": \"(a\"}", "guided_regex", "guided_regex"},
        {"{" MSGS ", \"guided_grammar\": \"root ::= undefined\"}", "guided_grammar", "undefined"},
        {"{" MSGS ", \"guided_regex\": \"a\", \"guided_choice\": [\"b\"]}", "guided_choice", "cannot be combined"},
        {"{" MSGS ", \"response_format\": {\"type\": \"xml\"}}", "response_format", "'response_format.type'"},
        {"{" MSGS ", \"guided_choice\": []}", "guided_choice", "non-empty"},
        {"{" MSGS ", " TOOLS ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"nope\"}}}",
         "tool_choice", "'nope'"},
        {"{" MSGS ", \"tool_choice\": \"required\"}", "tool_choice", "requires 'tools'"},
        {"{" MSGS ", " TOOLS ", \"tool_choice\": \"required\", \"guided_regex\": \"a\"}", "tool_choice", "guided_regex"},
        {"{" MSGS ", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"a b\"}}]}", "tools", "tools[0]"},
        {"{" MSGS ", \"tools\": {}}", "tools", "array"},
        {"{" MSGS ", " TOOLS ", \"parallel_tool_calls\": 1}", "parallel_tool_calls", "parallel_tool_calls"},
        {"{" MSGS ", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"s\", \"strict\": true, \"parameters\": "
         "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 2}}}}}], \"tool_choice\": "
         "\"required\"}",
         "tools", "minimum"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct outcome o = parse(&env, bad[i].body);
        cr_assert_eq(o.status, 400, "accepted: %s", bad[i].body);
        cr_assert_str_eq(o.err.param, bad[i].param, "%s: %s", bad[i].body, o.err.message);
        cr_assert(strstr(o.err.message, bad[i].says), "%s: %s", bad[i].body, o.err.message);
        cr_assert_null(o.r->grammar);
        cr_assert_null(o.out.tool_names);
        outcome_free(&o);
    }
    grammar_cache_free(cache);
    grammar_vocab_free(v);
}

Test(request_struct, tools_and_reasoning_options)
{
    struct grammar_vocab *v = byte_vocab();
    struct grammar_cache *cache = NULL;
    cr_assert_eq(grammar_cache_new(&cache, v, 8), 0);
    struct gen_struct_env env = {.cache = cache, .backend = "cpu", .tool_family = TOOL_FAMILY_MISTRAL,
                                 .tool_keep_special = true, .reasoning = REASONING_DEEPSEEK_R1};

    struct outcome o = parse(&env, "{" MSGS ", " TOOLS ", \"tool_choice\": \"required\"}");
    cr_assert_eq(o.status, 0, "%s", o.err.message);
    cr_assert_not_null(o.r->grammar);
    cr_assert(o.out.tools && o.out.tools_forced);
    cr_assert_eq(o.out.tool_family, TOOL_FAMILY_MISTRAL);
    /* Mistral's [TOOL_CALLS] is a special token here: the text must keep it for the parser. */
    cr_assert(!o.r->skip_special);
    /* Under a constraint, no reasoning is assumed to come first. */
    cr_assert(o.out.reasoning && !o.out.reasoning_from_start);
    outcome_free(&o);

    o = parse(&env, "{" MSGS ", " TOOLS ", \"tool_choice\": \"none\"}");
    cr_assert_eq(o.status, 0);
    cr_assert(!o.out.tools && o.out.reasoning && o.out.reasoning_from_start);
    cr_assert(o.r->skip_special, "no tool parser: special tokens stay out of the text");
    outcome_free(&o);

    /* Reasoning is a chat model's: a plain prompt is all answer. */
    o = parse(&env, "{\"prompt\": \"x\"}");
    cr_assert_eq(o.status, 0);
    cr_assert(!o.out.reasoning && !o.out.tools);
    outcome_free(&o);
    grammar_cache_free(cache);
    grammar_vocab_free(v);
}
