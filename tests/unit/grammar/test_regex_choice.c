/* Regular expressions (anchored full match) and choice lists, through their GBNF. */
#include "tests/unit/grammar/grammar_test_util.h"

#define R GRAMMAR_REGEX
#define C GRAMMAR_CHOICE

Test(regex, literals_classes_and_escapes)
{
    gt_accepts(R, "abc", "abc");
    gt_dead(R, "abc", "abd");
    gt_accepts(R, "^a.c$", "a-c");
    gt_dead(R, "a.c", "a\nc"); /* . is not a newline */
    gt_accepts(R, "[a-c]+[^0-9]", "abcx");
    gt_dead(R, "[a-c]+[^0-9]", "ab1");
    gt_accepts(R, "\\d{3}-\\w+\\s\\S", "123-ab_9\tX");
    gt_dead(R, "\\d", "a");
    gt_accepts(R, "[\\d\\s]+", "1 2\n3");
    gt_accepts(R, "[\\D]", "x");
    gt_dead(R, "[\\D]", "5");
    gt_accepts(R, "\\.\\*\\(\\)\\[\\]\\{\\}\\|\\\\\\/\\^\\$", ".*()[]{}|\\/^$");
    gt_accepts(R, "\\x41\\u00e9\\x{1F600}\\t", "A\xc3\xa9\xf0\x9f\x98\x80\t");
    gt_accepts(R, "[]a]", "]");
    gt_accepts(R, "[a-]+", "-a-");
    gt_accepts(R, "é+ü", "ééü");
    gt_accepts(R, "[^a]", "😀");
    gt_accepts(R, "a$", "a"); /* a trailing $ */
    gt_accepts(R, "a\\$", "a$");
    gt_accepts(R, "a{b", "a{b"); /* not a quantifier: a literal { */
}

Test(regex, groups_alternation_quantifiers)
{
    const char *re = "(\\+\\d{1,3} )?\\(?\\d{3}\\)?[ -]?\\d{3}-\\d{4}";
    gt_accepts(R, re, "+44 (020) 794-6001");
    gt_accepts(R, re, "555 123-4567");
    gt_dead(R, re, "+12345 ");
    gt_accepts(R, "(?:ab|cd)*e", "abcdabe");
    gt_accepts(R, "(?<year>\\d{4})-(?P<m>\\d{2})", "2024-06");
    gt_accepts(R, "a|b|", "");
    gt_accepts(R, "x(a|)y", "xy");
    gt_accepts(R, "a+?b*?c??", "aab");
    gt_rejects(R, "a{2,3}", "a");
    gt_accepts(R, "a{2,3}", "aaa");
    gt_dead(R, "a{2,3}", "aaaa");
    gt_accepts(R, "a{2,}", "aaaaa");
    gt_accepts(R, "a{,2}", "aa");
    gt_accepts(R, "(a(b(c)*)+)?d", "abcbccd");
}

Test(regex, refusals_name_the_construct)
{
    cr_assert(strstr(gt_compile_error(R, "(a)\\1"), "backreferences"));
    cr_assert(strstr(gt_compile_error(R, "a(?=b)"), "lookaround"));
    cr_assert(strstr(gt_compile_error(R, "(?i)a"), "flags"));
    cr_assert(strstr(gt_compile_error(R, "\\bword"), "word boundaries"));
    cr_assert(strstr(gt_compile_error(R, "a^b"), "anchors"));
    cr_assert(strstr(gt_compile_error(R, "*a"), "nothing to repeat"));
    cr_assert(strstr(gt_compile_error(R, "a**"), "repeated quantifier"));
    cr_assert(strstr(gt_compile_error(R, "a++"), "possessive"));
    cr_assert(strstr(gt_compile_error(R, "(ab"), "missing ')'"));
    cr_assert(strstr(gt_compile_error(R, "ab)"), "unmatched ')'"));
    cr_assert(strstr(gt_compile_error(R, "[[:alpha:]]"), "POSIX"));
    cr_assert(strstr(gt_compile_error(R, "[b-a]"), "before its start"));
    const char *e = gt_compile_error(R, "abc\\1");
    cr_assert(strstr(e, "offset 3"), "%s", e);
}

Test(regex, ill_formed_utf8_is_refused)
{
    /* Not the NUL that the overlong E0 80 80 would decode to, nor a code point past U+10FFFF. */
    cr_assert(strstr(gt_compile_error(R, "a\xE0\x80\x80"), "invalid UTF-8"));
    cr_assert(strstr(gt_compile_error(R, "[\xF5\x80\x80\x80]"), "invalid UTF-8"));
}

Test(choice, one_of_the_strings)
{
    const char *c = "[\"yes\", \"yellow\", \"no\", \"né\", \"nè\", \"\", \"yes\"]";
    gt_accepts(C, c, "yes");
    gt_accepts(C, c, "yellow");
    gt_accepts(C, c, "no");
    gt_accepts(C, c, "né");
    gt_accepts(C, c, "nè");
    gt_accepts(C, c, "");
    gt_prefix(C, c, "yell");
    gt_dead(C, c, "yess");
    gt_dead(C, c, "nö");
    gt_accepts(C, "[\"a\\\"b\\\\c\\n\"]", "a\"b\\c\n");
    /* Shared prefixes are factored, so the GBNF stays small. */
    char *gbnf = NULL, err[256];
    cr_assert_eq(grammar_to_gbnf(C, c, strlen(c), &gbnf, err, sizeof err), 0);
    cr_assert(strstr(gbnf, "\"ye\""), "%s", gbnf);
    free(gbnf);
    cr_assert(strstr(gt_compile_error(C, "[]"), "non-empty JSON array"));
    cr_assert(strstr(gt_compile_error(C, "[\"a\", 1]"), "element 1"));
    cr_assert(strstr(gt_compile_error(C, "{\"a\": 1}"), "non-empty JSON array"));
}
