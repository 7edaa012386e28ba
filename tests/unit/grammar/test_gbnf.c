/* GBNF: the syntax (llama.cpp's), its lowering to byte rules, and what the finished grammar
 * refuses, checked by matching whole strings. */
#include "tests/unit/grammar/grammar_test_util.h"

#define G GRAMMAR_GBNF

Test(gbnf, literals_sequences_alternatives)
{
    const char *g = "root ::= \"ab\" \"c\" | \"x\" ( \"y\" | \"z\" )\n";
    gt_accepts(G, g, "abc");
    gt_accepts(G, g, "xy");
    gt_accepts(G, g, "xz");
    gt_prefix(G, g, "ab");
    gt_prefix(G, g, "");
    gt_dead(G, g, "abd");
    gt_dead(G, g, "abcd");
    gt_dead(G, g, "xyz");
}

Test(gbnf, repetition_operators)
{
    gt_accepts(G, "root ::= \"a\"*", "");
    gt_accepts(G, "root ::= \"a\"*", "aaaa");
    gt_rejects(G, "root ::= \"a\"+", "");
    gt_accepts(G, "root ::= \"a\"+", "a");
    gt_accepts(G, "root ::= \"ab\"+", "ababab");
    gt_dead(G, "root ::= \"ab\"+", "aba" "c");
    gt_accepts(G, "root ::= \"a\"? \"b\"", "b");
    gt_accepts(G, "root ::= \"a\"? \"b\"", "ab");
    gt_dead(G, "root ::= \"a\"? \"b\"", "aab");
    /* {m}, {m,}, {m,n}, {,n} */
    gt_rejects(G, "root ::= \"a\"{3}", "aa");
    gt_accepts(G, "root ::= \"a\"{3}", "aaa");
    gt_dead(G, "root ::= \"a\"{3}", "aaaa");
    gt_rejects(G, "root ::= \"a\"{2,}", "a");
    gt_accepts(G, "root ::= \"a\"{2,}", "aaaaaaa");
    gt_rejects(G, "root ::= [0-9]{2,4}", "1");
    gt_accepts(G, "root ::= [0-9]{2,4}", "12");
    gt_accepts(G, "root ::= [0-9]{2,4}", "1234");
    gt_dead(G, "root ::= [0-9]{2,4}", "12345");
    gt_accepts(G, "root ::= \"x\"{,2}", "");
    gt_accepts(G, "root ::= \"x\"{,2}", "xx");
    gt_dead(G, "root ::= \"x\"{,2}", "xxx");
    gt_accepts(G, "root ::= \"x\"{0}", "");
    /* Groups repeated, and groups with an empty alternative. */
    gt_accepts(G, "root ::= (\"a\" | \"bc\")* \"!\"", "abcbca!");
    gt_dead(G, "root ::= (\"a\" | \"bc\")* \"!\"", "ab!");
    gt_accepts(G, "root ::= (\"a\" | \"\")* \"!\"", "aa!");
    gt_accepts(G, "root ::= (\"a\" | \"b\"){2,3}", "ab");
    gt_dead(G, "root ::= (\"a\" | \"b\"){2,3}", "abab");
    gt_accepts(G, "root ::= ((\"a\" \"b\"?)+ \"c\")*", "aababcac");
}

Test(gbnf, rules_and_recursion)
{
    const char *g = "root ::= expr\n"
                    "expr ::= term (\"+\" term)*\n"
                    "term ::= [0-9]+ | \"(\" expr \")\"\n";
    gt_accepts(G, g, "1+2");
    gt_accepts(G, g, "(1+(2+3))+45");
    gt_prefix(G, g, "((1+2)");
    gt_dead(G, g, "1++2");
    gt_dead(G, g, ")");
    /* Right recursion of any depth runs in constant stack (a tail reference). */
    const char *r = "root ::= \"a\" root | \"b\"";
    char buf[20002];
    memset(buf, 'a', 20000);
    buf[20000] = 'b';
    buf[20001] = '\0';
    gt_accepts(G, r, buf);
}

Test(gbnf, character_classes_over_utf8)
{
    const char *g = "root ::= [a-zé中-丯]+";
    gt_accepts(G, g, "abcé");
    gt_accepts(G, g, "中丯");
    gt_dead(G, g, "丁");
    gt_dead(G, g, "ê");
    gt_dead(G, g, "A");
    /* A negated class takes any other character, in UTF-8, and nothing that is not UTF-8. */
    const char *n = "root ::= [^\"\\\\]*";
    gt_accepts(G, n, "héllo wörld ✓ 😀");
    gt_dead(G, n, "a\"");
    gt_dead(G, n, "\xff");
    gt_dead(G, n, "\xc0\x80");       /* overlong */
    gt_dead(G, n, "\xed\xa0\x80");   /* a surrogate */
    gt_prefix(G, "root ::= [^a]", "\xe4\xb8");
    /* `.` is any character; escapes in classes and literals. */
    gt_accepts(G, "root ::= . . .", "a\n😀");
    gt_accepts(G, "root ::= [\\x41-\\x43\\u00e9\\t\\]\\-]+", "ABC\xc3\xa9\t]-");
    gt_accepts(G, "root ::= \"\\x41\\u00e9\\U0001F600\\n\\\"\\\\\"", "A\xc3\xa9\xf0\x9f\x98\x80\n\"\\");
}

Test(gbnf, layout_comments_and_newlines)
{
    const char *g = "# a comment\n"
                    "root ::= a\n"
                    "   | b  # another\n"
                    "\n"
                    "a ::= (\n"
                    "   \"x\"\n"
                    "   \"y\"\n"
                    ")\n"
                    "b ::= \"z\"\r\n";
    gt_accepts(G, g, "xy");
    gt_accepts(G, g, "z");
    gt_dead(G, g, "xz");
}

Test(gbnf, ill_formed_utf8_is_refused)
{
    /* An overlong form would be read as another character (E0 80 80 as NUL), a lead byte past
     * F4 as a code point above U+10FFFF: the grammar is refused instead. */
    cr_assert(strstr(gt_compile_error(G, "root ::= \"\xE0\x80\x80\""), "invalid UTF-8"));
    cr_assert(strstr(gt_compile_error(G, "root ::= [\xF5\x80\x80\x80]"), "invalid UTF-8"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"\xED\xA0\x80\""), "invalid UTF-8")); /* a surrogate */
}

Test(gbnf, errors_say_what_and_where)
{
    cr_assert(strstr(gt_compile_error(G, "root ::= foo"), "undefined rule 'foo'"));
    cr_assert(strstr(gt_compile_error(G, "start ::= \"a\""), "no rule named 'root'"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"a\"\nroot ::= \"b\""), "defined twice"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"a"), "unterminated string"));
    cr_assert(strstr(gt_compile_error(G, "root ::= [a-"), "unterminated character class"));
    cr_assert(strstr(gt_compile_error(G, "root ::= (\"a\""), "expected ')'"));
    cr_assert(strstr(gt_compile_error(G, "root := \"a\""), "expected '::='"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"a\" ) \"b\""), "unbalanced ')'"));
    cr_assert(strstr(gt_compile_error(G, "root ::= [z-a]"), "comes before"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"a\"{3,2}"), "below the minimum"));
    cr_assert(strstr(gt_compile_error(G, "root ::= \"\\q\""), "unknown escape"));
    const char *e = gt_compile_error(G, "root ::= \"a\"\nx ::= \"b\" @");
    cr_assert(strstr(e, "line 2"), "%s", e);
    /* What the automaton cannot run: left recursion, directly or through nullable rules. */
    cr_assert(strstr(gt_compile_error(G, "root ::= root \"a\" | \"b\""), "left recursion"));
    cr_assert(strstr(gt_compile_error(G, "root ::= e? root \"a\" | \"b\"\ne ::= \"x\""), "left recursion"));
    cr_assert(strstr(gt_compile_error(G, "root ::= a\na ::= b \"x\"\nb ::= a | \"y\""), "left recursion"));
    cr_assert(strstr(gt_compile_error(G, "root ::= (\"a\"? \"b\"?)*"), "left recursion"));
    gt_accepts(G, "root ::= (\"a\"?)*", "aaa"); /* (x?)* is x*: no recursion */
    /* A grammar that matches nothing. */
    cr_assert(strstr(gt_compile_error(G, "root ::= a\na ::= \"x\" a"), "matches no string"));
    cr_assert(strstr(gt_compile_error(G, "root ::= [^\\x00-\\U0010FFFF]"), "matches no string"));
    /* Sizes past the limits are refused, not built. */
    cr_assert(strstr(gt_compile_error(G, "root ::= (\"ab\"{0,1000}){0,1000}"), "too large"));
}

Test(gbnf, unproductive_alternatives_are_dropped)
{
    const char *g = "root ::= \"a\" | dead\ndead ::= \"b\" dead";
    gt_accepts(G, g, "a");
    gt_dead(G, g, "b");
}

Test(gbnf, equal_grammars_hash_equal)
{
    struct grammar *a = gt_compile(G, "root ::= \"a\" [0-9]*  # one\n");
    struct grammar *b = gt_compile(G, "root  ::=  \"a\"   [0-9]*\n");
    struct grammar *c = gt_compile(G, "root ::= \"a\" [0-8]*\n");
    cr_assert_eq(grammar_hash(a), grammar_hash(b));
    cr_assert_neq(grammar_hash(a), grammar_hash(c));
    grammar_free(a);
    grammar_free(b);
    grammar_free(c);
}

/* Bad input is an error, never a crash: valid sources mutated at random (bytes replaced,
 * inserted, deleted) either compile or say why, and what compiles runs. */
static void mutate_and_compile(enum grammar_kind kind, const char *src, int rounds, uint64_t seed)
{
    static const char alphabet[] = "\"\\[]()|*+?{},:-^$.#\n ab09xu\xc3\xa9";
    struct grammar_vocab *v = gt_byte_vocab();
    size_t n = strlen(src);
    char *buf = malloc(n + 64);
    int compiled = 0;
    for (int r = 0; r < rounds; r++) {
        memcpy(buf, src, n);
        size_t len = n;
        for (int k = 1 + (int)(gt_rand(&seed) % 3); k > 0; k--) {
            size_t at = len ? gt_rand(&seed) % len : 0;
            char c = alphabet[gt_rand(&seed) % (sizeof alphabet - 1)];
            switch (gt_rand(&seed) % 3) {
            case 0: if (len) buf[at] = c; break;
            case 1: memmove(buf + at + 1, buf + at, len - at); buf[at] = c; len++; break;
            default: if (len) { memmove(buf + at, buf + at + 1, len - at - 1); len--; } break;
            }
        }
        char err[256] = "";
        struct grammar *g = NULL;
        if (grammar_compile(&g, kind, buf, len, err, sizeof err) != 0) {
            cr_assert_null(g);
            cr_assert(err[0], "an error without a message for %.*s", (int)len, buf);
            continue;
        }
        compiled++;
        struct grammar_compiled *c = NULL;
        cr_assert_eq(grammar_compiled_new(&c, g, v), 0);
        struct grammar_matcher *m = NULL;
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        uint32_t mask[9];
        for (int step = 0; step < 8; step++) {
            cr_assert_eq(grammar_matcher_fill_mask(m, mask, 9), 0);
            int32_t pick = -1;
            for (int32_t t = (int32_t)(gt_rand(&seed) % 256), k = 0; k < 256 && pick < 0; k++, t = (t + 1) % 256)
                if (gt_bit(mask, t)) pick = t;
            if (pick < 0) break;
            cr_assert_eq(grammar_matcher_accept_token(m, pick), 0);
        }
        grammar_matcher_free(m);
        grammar_compiled_unref(c);
    }
    cr_assert_gt(compiled, 0, "no mutation of %s compiled: the test tests little", src);
    free(buf);
    grammar_vocab_free(v);
}

Test(gbnf, mutated_sources_fail_cleanly)
{
    mutate_and_compile(G, "root ::= item (\",\" item)*\nitem ::= [a-z]+ | \"(\" root \")\" | \"x\"{2,4}\n", 600, 1);
    mutate_and_compile(GRAMMAR_REGEX, "(a|b[0-9]{1,3})*\\.[^x]+(?:yz)?", 600, 2);
    mutate_and_compile(GRAMMAR_JSON_SCHEMA,
                       "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"string\", \"maxLength\": 3}, "
                       "\"b\": {\"enum\": [1, \"x\"]}, \"c\": {\"$ref\": \"#\"}}, \"required\": [\"a\"]}",
                       600, 3);
    mutate_and_compile(GRAMMAR_CHOICE, "[\"ab\", \"a\\u00e9\", \"b\"]", 300, 4);
}
