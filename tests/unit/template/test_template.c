/* The chat template interpreter: parser, evaluator and builtins piece by piece, the error
 * messages (construct and line), the bounds, and concurrent renders of one compiled template.
 * tests/integration/test_chat_template_conformance.py compares whole templates with jinja2. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/template/chat_template.h"

/* Renders source with vars (JSON text, NULL for none); returns the status, *out the text. */
static int render(const char *source, const char *vars_json, char **out, char *err, size_t errlen)
{
    struct chat_template *t = NULL;
    *out = NULL;
    int rc = chat_template_compile(&t, source, err, errlen);
    if (rc != 0) return rc;
    json_t *vars = NULL;
    if (vars_json) {
        json_error_t je;
        vars = json_loads(vars_json, 0, &je);
        cr_assert_not_null(vars, "bad test JSON: %s", je.text);
    }
    rc = chat_template_render_vars(t, vars, out, NULL, err, errlen);
    json_decref(vars);
    chat_template_free(t);
    return rc;
}

static void expect(const char *source, const char *vars_json, const char *want)
{
    char err[256], *out;
    int rc = render(source, vars_json, &out, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s: failed with %d: %s", source, rc, err);
    cr_expect_str_eq(out, want, "%s", source);
    free(out);
}

static void expect_error(const char *source, const char *vars_json, int want_rc, const char *want_err)
{
    char err[256], *out;
    int rc = render(source, vars_json, &out, err, sizeof(err));
    cr_assert_eq(rc, want_rc, "%s: got %d (%s)", source, rc, err);
    cr_expect_null(out);
    cr_expect(strstr(err, want_err) != NULL, "%s: error '%s' lacks '%s'", source, err, want_err);
}

Test(template_lex, text_and_output)
{
    expect("plain text", NULL, "plain text");
    expect("a{{ 1 }}b{# comment #}c", NULL, "a1bc");
    expect("{{ 'x' }}\n", NULL, "x");  /* one trailing newline is dropped, as jinja2 does */
    expect("{{ 'x' }}\n\n", NULL, "x\n");
    expect("a\r\nb", NULL, "a\nb");
    expect("{{ {'a': {'b': 1}}['a']['b'] }}", NULL, "1");  /* '}}' inside brackets */
    expect("{% raw %}{{ x }}{% if %}{% endraw %}", NULL, "{{ x }}{% if %}");
}

Test(template_lex, trim_and_lstrip_blocks)
{
    expect("  {% if true %}\n  yes\n  {% endif %}\n  {{ 'a' }}  {% if 1 %}b{% endif %}\n", NULL, "  yes\n  a  b");
    expect("a  {%- if true %}b{% endif -%}  \n c", NULL, "abc");
    expect("x {{- ' y ' -}} z", NULL, "x y z");
    expect("  {%+ if true %}k{% endif +%}\nz", NULL, "  k\nz");
    expect("  {# comment #}\nz", NULL, "z");
    expect("{{ 1 }}\n{{ 2 }}", NULL, "1\n2");  /* trim_blocks does not apply to {{ }} */
}

Test(template_lex, string_literals)
{
    expect("{{ 'it\\'s' }}|{{ \"q\\\"\" }}|{{ 'a\\tb' }}|{{ '\\u00e9' }}|{{ 'x' 'y' }}", NULL, "it's|q\"|a\tb|\xc3\xa9|xy");
}

Test(template_expr, arithmetic_like_python)
{
    expect("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }}", NULL,
           "3 -4 2 3.5 2.0 1024 7");
    expect("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 100.0 }} {{ 1e16 }} {{ -0.0 }}", NULL,
           "0.30000000000000004 1e+20 1.5e-07 100.0 1e+16 -0.0");
    expect("{{ 'ab' ~ 1 ~ none ~ true }} {{ 'x' * 3 }} {{ [1] + [2] }}", NULL, "ab1NoneTrue xxx [1, 2]");
    expect_error("{{ 1 / 0 }}", NULL, CHAT_TEMPLATE_ERENDER, "line 1: division by zero");
    expect_error("{{ 9223372036854775807 + 1 }}", NULL, CHAT_TEMPLATE_ERENDER, "integer overflow");
}

Test(template_expr, printing_values)
{
    expect("{{ [1, 'a', none, true, 1.0, {'k': 'v'}, (1,), (1, 2)] }}", NULL,
           "[1, 'a', None, True, 1.0, {'k': 'v'}, (1,), (1, 2)]");
    expect("{{ [\"it's\"] }}", NULL, "[\"it's\"]");
}

Test(template_expr, logic_and_comparisons)
{
    expect("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' in 'abc' }} {{ 2 not in [1, 3] }} {{ 1 == 1.0 }} {{ not 0 }}", NULL,
           "True False True True True True");
    expect("{{ 0 or 'b' }} {{ 'a' and 'c' }} {{ 1 if false else 2 }}[{{ 1 if false }}]", NULL, "b c 2[]");
    expect("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is not none }}", "{\"x\": 1}",
           "True False True True");
}

Test(template_expr, attributes_items_and_slices)
{
    const char *vars = "{\"m\": {\"role\": \"user\", \"items\": 5}, \"xs\": [1, 2, 3, 4], \"s\": \"h\xc3\xa9llo\"}";
    expect("{{ m.role }} {{ m['role'] }} {{ m.nope }}|{{ m.nope.deeper }}|{{ xs[-1] }} {{ xs[9] is defined }}", vars,
           "user user ||4 False");
    expect("{{ xs[1:] }} {{ xs[::-1] }} {{ xs[:-1] }} {{ xs[1:4:2] }} {{ s[::-1] }} {{ s[1:3] }} {{ s|length }}", vars,
           "[2, 3, 4] [4, 3, 2, 1] [1, 2, 3] [2, 4] oll\xc3\xa9h \xc3\xa9l 5");
    /* As in jinja2, d.items is the method even when the dict has an "items" key; d['items'] is the key. */
    expect("{{ m['items'] }} {{ m.items()|list|length }}", vars, "5 2");
}

Test(template_stmt, for_loops)
{
    expect("{% for x in 'ab' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
           "{{ loop.revindex }}{{ x }};{% endfor %}", NULL, "10TrueFalse22a;21FalseTrue21b;");
    expect("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}", NULL, "2/2 4/2 ");
    expect("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
    expect("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}", NULL, "a1b2");
    expect("{% for x in range(10) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}"
           "{{ x }}{% endfor %}", NULL, "02");
    expect("{% for x in [1, 2] %}{{ loop.previtem }}-{{ loop.nextitem }} {% endfor %}", NULL, "-2 1- ");
}

Test(template_stmt, scoping_and_namespace)
{
    /* A set inside a loop is local to the iteration; namespace() carries state out. */
    expect("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 5 %}{{ x }}{% endfor %}{{ x }}", NULL, "15151");
    expect("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
           NULL, "6");
    expect("{% set a, b = 1, 2 %}{{ b }}{{ a }}{% set t %}[{{ a }}]{% endset %}{{ t }}", NULL, "21[1]");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", NULL, CHAT_TEMPLATE_ERENDER, "non-namespace");
}

Test(template_stmt, macros_call_filter_generation)
{
    expect("{% macro m(a, b='d') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m(b=3, a=4) }}", NULL, "1d1243");
    expect("{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}in{% endcall %}", NULL, "[in]");
    expect("{% filter upper %}ab{{ 'c' }}{% endfilter %}", NULL, "ABC");
    expect("{% generation %}g{% endgeneration %}", NULL, "g");
    expect("{% set a = 1 %}{% with a = 2, b = a %}{{ a }}{{ b }}{% endwith %}{{ a }}", NULL, "211");
    expect_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", NULL, CHAT_TEMPLATE_ERENDER, "takes 1 arguments");
}

Test(template_builtins, filters)
{
    expect("{{ ' a '|trim }}|{{ 'ab'|upper }}|{{ 'hello world-x'|title }}|{{ 'aBC'|capitalize }}|{{ 'aaa'|replace('a', 'b', 2) }}",
           NULL, "a|AB|Hello World-X|Abc|bba");
    expect("{{ [3, 1, 2]|sort|join(',') }}|{{ [3, 1, 3]|unique|list }}|{{ [1, 2]|sum }}|{{ [1, 5]|max }}|{{ [1, 2]|first }}"
           "|{{ [1, 2]|last }}|{{ [1, 2]|reverse|list }}|{{ 'x'|list }}|{{ [1, 2]|length }}", NULL,
           "1,2,3|[3, 1]|3|5|1|2|[2, 1]|['x']|2");
    expect("{{ u|selectattr('a')|map(attribute='n')|join }}|{{ u|rejectattr('a')|map(attribute='n')|join }}"
           "|{{ u|selectattr('n', 'equalto', 'q')|list|length }}|{{ ['a', 'b']|map('upper')|join }}"
           "|{{ [1, 2, 3]|select('odd')|list }}",
           "{\"u\": [{\"n\": \"p\", \"a\": true}, {\"n\": \"q\", \"a\": false}]}", "p|q|1|AB|[1, 3]");
    expect("{{ x|default('d') }}|{{ none|default('d') }}|{{ ''|default('d', true) }}|{{ '3'|int + 1 }}|{{ 'x'|int }}"
           "|{{ '2.5'|float }}|{{ -2|abs }}|{{ 2.5|round }}|{{ 2.675|round(2) }}|{{ 3|string }}",
           NULL, "d|None|d|4|0|2.5|2|2.0|2.67|3");
    expect("{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ {'a': 1}|items|list }}|{{ '<&>'|escape }}",
           NULL, "a\n  b|  a\n  b|[('a', 1)]|&lt;&amp;&gt;");
}

Test(template_builtins, tojson_like_transformers)
{
    const char *vars = "{\"x\": {\"b\": [1, 2.5, null, true], \"a\": \"\xc3\xa9<\\\"\\n\"}}";
    expect("{{ x|tojson }}", vars, "{\"b\": [1, 2.5, null, true], \"a\": \"\xc3\xa9<\\\"\\n\"}");
    expect("{{ x|tojson(indent=2) }}", vars,
           "{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": \"\xc3\xa9<\\\"\\n\"\n}");
    expect("{{ x|tojson(sort_keys=true, ensure_ascii=true) }}", vars,
           "{\"a\": \"\\u00e9<\\\"\\n\", \"b\": [1, 2.5, null, true]}");
    expect("{{ {}|tojson }}{{ []|tojson(indent=4) }}", NULL, "{}[]");
}

Test(template_builtins, methods_and_globals)
{
    expect("{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }}"
           " {{ 'a,b,c'.rsplit(',', 1) }} {{ '--x--'.strip('-') }} {{ 'hello'.find('l') }} {{ '-'.join(['a', 'b']) }}",
           NULL, "True True ['a', 'b', '', 'c'] ['a', 'b'] ['a,b', 'c'] x 2 a-b");
    expect("{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z', 0) }} {{ {'a': 1}.keys()|list }} {{ dict(k=1) }}", NULL,
           "1 0 ['a'] {'k': 1}");
    expect("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(3, 0, -1)|list }}", NULL, "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
    expect("{% set l = [1] %}{% set _ = l.append(2) %}{{ l }}", NULL, "[1, 2]");
    expect("{{ '{} {x}'.format(1, x='y') }} {{ '%s=%d' % ('a', 3) }} {{ '%05.1f'|format(2.25) }}", NULL, "1 y a=3 002.2");
    expect("{{ {'b': 1, 'a': 2}|dictsort }} {% set s | upper %}up{% endset %}{{ s }}", NULL, "[('a', 2), ('b', 1)] UP");
    expect_error("{{ '{:q}'.format(1) }}", NULL, CHAT_TEMPLATE_ERENDER, "unsupported format spec");
}

Test(template_errors, compile_errors_name_construct_and_line)
{
    expect_error("ok\n{{ x|frobnicate }}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 2: unknown filter 'frobnicate'");
    expect_error("{% if x is frobbed %}{% endif %}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 1: unknown test 'frobbed'");
    expect_error("a\nb\n{% include 'x' %}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 3: unsupported tag 'include'");
    expect_error("{% frob %}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 1: unknown tag 'frob'");
    expect_error("\n{% for x in y %}{{ x }}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 2: missing {% endfor %} for {% for %}");
    expect_error("{% if x %}{% endfor %}", NULL, CHAT_TEMPLATE_ESYNTAX, "line 1: unexpected 'endfor'");
    expect_error("{{ 'abc' ", NULL, CHAT_TEMPLATE_ESYNTAX, "line 1: unexpected end of template");
    expect_error("{{ 'abc }}", NULL, CHAT_TEMPLATE_ESYNTAX, "unterminated string");
    expect_error("{% break %}", NULL, CHAT_TEMPLATE_ESYNTAX, "'break' outside of a loop");
    expect_error("{{ f(*a) }}", NULL, CHAT_TEMPLATE_ESYNTAX, "*args");
    expect_error("{% for x in y recursive %}{% endfor %}", NULL, CHAT_TEMPLATE_ESYNTAX, "recursive");
}

Test(template_errors, render_errors)
{
    expect_error("a\n{{ raise_exception('Roles must alternate') }}", NULL, CHAT_TEMPLATE_ERAISED, "Roles must alternate");
    expect_error("\n\n{{ 1 + 'a' }}", NULL, CHAT_TEMPLATE_ERENDER, "line 3: unsupported operand type(s) for +: 'int' and 'str'");
    expect_error("{{ nope() }}", NULL, CHAT_TEMPLATE_ERENDER, "'nope' is undefined");
    expect_error("{{ nope + 1 }}", NULL, CHAT_TEMPLATE_ERENDER, "'nope' is undefined");
    expect_error("{{ 'x'.frob() }}", NULL, CHAT_TEMPLATE_ERENDER, "line 1: 'str object' has no attribute 'frob'");
    expect_error("{{ {'a': 1}.b + 1 }}", NULL, CHAT_TEMPLATE_ERENDER, "'dict object' has no attribute 'b'");
    expect_error("{{ [][0] + 1 }}", NULL, CHAT_TEMPLATE_ERENDER, "'list object' has no such item");
    expect_error("{% for x in 5 %}{% endfor %}", NULL, CHAT_TEMPLATE_ERENDER, "'int' object is not iterable");
    expect_error("{{ x|tojson }}", NULL, CHAT_TEMPLATE_ERENDER, "tojson");
}

Test(template_errors, bounds)
{
    expect_error("{{ range(1000000)|length }}", NULL, CHAT_TEMPLATE_ELIMIT, "range too big");
    expect_error("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", NULL, CHAT_TEMPLATE_ELIMIT, "nested deeper");
    expect_error("{% set s = 'x' * 1000 %}{% for i in range(100000) %}{{ s }}{% endfor %}", NULL,
                 CHAT_TEMPLATE_ELIMIT, "output exceeds");
    /* Work that outgrows the memory bound stops too. */
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% set k = [i, j] %}{% endfor %}{% endfor %}",
                 NULL, CHAT_TEMPLATE_ELIMIT, "memory");
    expect_error("{{ 'x' * 1000000000 }}", NULL, CHAT_TEMPLATE_ELIMIT, "too large");
    /* Deep nesting fails cleanly at compile time instead of overflowing the stack. */
    size_t n = 5000;
    char *deep = malloc(n * 2 + 8);
    strcpy(deep, "{{ ");
    for (size_t i = 0; i < n; i++) strcat(deep, "(");
    strcat(deep, "1");
    for (size_t i = 0; i < n; i++) strcat(deep, ")");
    strcat(deep, " }}");
    expect_error(deep, NULL, CHAT_TEMPLATE_ESYNTAX, "nested too deep");
    free(deep);
}

Test(template_api, render_with_chat_variables)
{
    struct chat_template *t = NULL;
    char err[256], *out = NULL;
    size_t len = 0;
    cr_assert_eq(chat_template_compile(&t, "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                                           "{% if add_generation_prompt %}<assistant>{% endif %}{{ tools is none }}"
                                           "{{ eos_token }}{{ flag }}", err, sizeof(err)), 0, "%s", err);
    json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
    json_t *extra = json_loads("{\"flag\": false}", 0, NULL);
    cr_assert_eq(chat_template_render(t, msgs, NULL, true, "<s>", "</s>", extra, &out, &len, err, sizeof(err)), 0, "%s", err);
    cr_expect_str_eq(out, "<s><user>hi<assistant>True</s>False");
    cr_expect_eq(len, strlen(out));
    free(out);
    json_t *tools = json_loads("[]", 0, NULL);
    cr_assert_eq(chat_template_render(t, msgs, tools, false, NULL, NULL, NULL, &out, NULL, err, sizeof(err)), 0);
    cr_expect_str_eq(out, "<user>hiFalse");
    free(out);
    cr_expect_eq(chat_template_render(t, extra, NULL, false, NULL, NULL, NULL, &out, NULL, err, sizeof(err)),
                 CHAT_TEMPLATE_EARG);
    cr_expect_null(out);
    json_decref(tools);
    json_decref(extra);
    json_decref(msgs);
    chat_template_free(t);
}

struct thread_arg {
    const struct chat_template *t;
    const json_t *msgs;
    int failures;
};

static void *render_many(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 300; i++) {
        char err[128], *out = NULL;
        if (chat_template_render(a->t, a->msgs, NULL, true, "<s>", NULL, NULL, &out, NULL, err, sizeof(err)) != 0 ||
            strcmp(out, "<s>[user:hello][assistant:4]{\"role\": \"user\", \"content\": \"hello\"}|2|>") != 0)
            a->failures++;
        free(out);
    }
    return NULL;
}

Test(template_api, concurrent_renders_of_one_template)
{
    struct chat_template *t = NULL;
    char err[256];
    cr_assert_eq(chat_template_compile(&t, "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}"
                                           "[{{ m.role }}:{{ m.content|trim }}]{% set ns.n = ns.n + 1 %}{% endfor %}"
                                           "{{ messages[0]|tojson }}|{{ ns.n }}|{{ '>' if add_generation_prompt }}",
                                       err, sizeof(err)), 0, "%s", err);
    json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \" hello \"}, {\"role\": \"assistant\", \"content\": \"4\"}]",
                              0, NULL);
    /* tojson of messages[0] shows the untrimmed content: the input is never modified. */
    json_object_set_new(json_array_get(msgs, 0), "content", json_string("hello"));
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){t, msgs, 0};
        pthread_create(&th[i], NULL, render_many, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(args[i].failures, 0);
    }
    json_decref(msgs);
    chat_template_free(t);
}
