/* The matcher's masks against brute force on toy vocabularies: a token is allowed iff its
 * bytes, after everything accepted so far, are still a prefix of some sentence (checked by
 * replaying the bytes into a fresh matcher); the stop token iff the text so far is a whole
 * sentence. Also the first-token forms, stops, refusals, and long generations. */
#include "tests/unit/grammar/grammar_test_util.h"

/* The brute-force mask after history (hist_len bytes; started: a token was taken). */
static void brute_mask(struct grammar_compiled *c, const struct gt_vocab *t, const char *const *first, const char *hist,
                       size_t hist_len, bool started, uint32_t *mask, size_t words)
{
    memset(mask, 0, words * 4);
    char *buf = malloc(hist_len + 64);
    memcpy(buf, hist, hist_len);
    for (int32_t id = 0; id < t->n; id++) {
        if (id == t->stop) {
            if (gt_match_grammar(c, hist, hist_len) == 1) mask[id >> 5] |= 1u << (id & 31);
            continue;
        }
        const char *tb = !started && first && first[id] ? first[id] : t->tok[id];
        size_t tl = tb ? strlen(tb) : 0;
        if (tl == 0) continue;
        memcpy(buf + hist_len, tb, tl);
        if (gt_match_grammar(c, buf, hist_len + tl) >= 0) mask[id >> 5] |= 1u << (id & 31);
    }
    free(buf);
}

static void check_walks(enum grammar_kind kind, const char *src, const char *alphabet, int walks, int steps,
                        uint64_t seed)
{
    struct gt_vocab t = gt_toy_vocab(alphabet, 60, seed);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(kind, src), t.v), 0);
    size_t words = grammar_vocab_mask_words(t.v) + 2; /* more words than needed: the rest is zero */
    uint32_t *mask = calloc(words, 4), *want = calloc(words, 4), *slow = calloc(words, 4);
    char *hist = malloc((size_t)steps * 8 + 1);
    int32_t *allowed = malloc((size_t)t.n * sizeof *allowed);
    for (int w = 0; w < walks; w++) {
        struct grammar_matcher *m = NULL;
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        size_t len = 0;
        for (int step = 0; step < steps; step++) {
            memset(mask, 0xAB, words * 4);
            cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
            brute_mask(c, &t, NULL, hist, len, step > 0, want, words);
            cr_assert_eq(grammar_matcher_fill_mask_slow(m, slow, words), 0);
            for (int32_t id = 0; id < (int32_t)(words * 32); id++) {
                cr_assert_eq(gt_bit(mask, id), id < t.n && gt_bit(want, id), "%s, walk %d step %d after \"%.*s\": token %d (%s)",
                             src, w, step, (int)len, hist, id, id < t.n && t.tok[id] ? t.tok[id] : "-");
                cr_assert_eq(gt_bit(slow, id), gt_bit(mask, id));
            }
            int na = 0;
            for (int32_t id = 0; id < t.n; id++)
                if (gt_bit(mask, id) && id != t.stop) allowed[na++] = id;
            if (na == 0) break;
            int32_t id = allowed[gt_rand(&seed) % (uint64_t)na];
            cr_assert_eq(grammar_matcher_accept_token(m, id), 0);
            memcpy(hist + len, t.tok[id], t.len[id]);
            len += t.len[id];
        }
        grammar_matcher_free(m);
    }
    free(mask);
    free(want);
    free(slow);
    free(hist);
    free(allowed);
    grammar_compiled_unref(c);
    gt_toy_free(&t);
}

Test(matcher, masks_equal_brute_force_gbnf)
{
    check_walks(GRAMMAR_GBNF,
                "root ::= item (\",\" item)*\n"
                "item ::= \"[\" (item (\",\" item)*)? \"]\" | [a-c]+ | \"'\" [^']* \"'\"\n",
                "[],abc'x", 6, 40, 1);
}

Test(matcher, masks_equal_brute_force_ambiguous)
{
    /* Several stacks at once, converging paths, nullable rules. */
    check_walks(GRAMMAR_GBNF, "root ::= (\"a\" | \"a\" \"a\" | \"ab\")* \"b\"? x\nx ::= \"\" | \"c\" x", "abc", 6, 30, 2);
    check_walks(GRAMMAR_REGEX, "(a|ab)(c|bcd)(d*)", "abcd", 6, 10, 3);
}

Test(matcher, masks_equal_brute_force_shared_rules)
{
    /* A rule used in many places (here 70: more than the classification tries one by one)
     * and one used in a few: tokens that run past their end must come out exact. */
    char src[8192];
    size_t n = (size_t)snprintf(src, sizeof src, "root ::= ");
    for (int i = 0; i < 70; i++) n += (size_t)snprintf(src + n, sizeof src - n, "%s\"%c\" s \"%c\"", i ? " | " : "", 'A' + i % 26, 'a' + i % 26);
    snprintf(src + n, sizeof src - n, " | few \"!\" few \"?\"\ns ::= [0-9]*\nfew ::= \"(\" [xy]* \")\"\n");
    check_walks(GRAMMAR_GBNF, src, "ABCDabcd0123()xy!?", 8, 25, 4);
}

Test(matcher, masks_equal_brute_force_json)
{
    check_walks(GRAMMAR_JSON_SCHEMA,
                "{\"type\": \"object\", \"properties\": {\"ab\": {\"type\": \"array\", \"items\": {\"type\": \"string\", "
                "\"maxLength\": 3}}, \"c\": {\"enum\": [1, 12, \"a\"]}}, \"required\": [\"ab\"]}",
                "{}[]\",: abc12", 5, 40, 5);
}

Test(matcher, first_token_forms)
{
    /* As Llama 2 decodes: "_x" is " x" in the middle of a sequence and "x" at its start. */
    const char *toks[] = {"x", " x", " ", "y", NULL, "xy"};
    const char *first[] = {NULL, "x", "", NULL, NULL, NULL};
    uint32_t lens[] = {1, 2, 1, 1, 0, 2}, flens[] = {0, 1, 0, 0, 0, 0};
    int32_t stop = 4;
    char err[128];
    struct grammar_vocab *v = NULL;
    cr_assert_eq(grammar_vocab_from_bytes(&v, 6, toks, lens, first, flens, &stop, 1, err, sizeof err), 0);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(GRAMMAR_GBNF, "root ::= \"x\" (\" \" \"x\")* \"y\"?"), v), 0);
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    uint32_t mask[1];
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, 1), 0);
    /* First: "x" and "_x" (reads "x"), "xy"; not "_" (reads nothing) nor "y". */
    cr_assert_eq(mask[0], (1u << 0) | (1u << 1) | (1u << 5), "%x", mask[0]);
    cr_assert_eq(grammar_matcher_accept_token(m, 1), 0);
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, 1), 0);
    /* Then "_x" reads " x"; "_" reads " ". */
    cr_assert_eq(mask[0], (1u << 1) | (1u << 2) | (1u << 3) | (1u << 4), "%x", mask[0]);
    cr_assert_lt(grammar_matcher_accept_token(m, 0), 0);
    cr_assert_eq(grammar_matcher_accept_token(m, 1), 0);
    cr_assert_eq(grammar_matcher_accept_token(m, 3), 0);
    cr_assert(grammar_matcher_can_end(m));
    cr_assert(grammar_matcher_is_done(m));
    grammar_matcher_free(m);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
}

Test(matcher, stops_refusals_and_done)
{
    struct gt_vocab t = gt_toy_vocab("ab", 4, 9);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(GRAMMAR_GBNF, "root ::= \"a\" \"b\"?"), t.v), 0);
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    size_t words = grammar_vocab_mask_words(t.v);
    uint32_t mask[4];
    cr_assert(!grammar_matcher_can_end(m));
    cr_assert_lt(grammar_matcher_accept_token(m, t.stop), 0, "stop before the grammar can end");
    cr_assert_lt(grammar_matcher_accept_token(m, 1), 0, "'b' first");
    cr_assert_lt(grammar_matcher_accept_token(m, t.n - 1), 0, "the empty token");
    cr_assert_lt(grammar_matcher_accept_token(m, -1), 0);
    cr_assert_lt(grammar_matcher_accept_token(m, t.n), 0);
    cr_assert_eq(grammar_matcher_accept_token(m, 0), 0, "refusals leave the matcher as it was");
    cr_assert(grammar_matcher_can_end(m));
    cr_assert(!grammar_matcher_is_done(m));
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
    cr_assert(gt_bit(mask, t.stop) && gt_bit(mask, 1) && !gt_bit(mask, 0));
    cr_assert_eq(grammar_matcher_accept_token(m, 1), 0);
    cr_assert(grammar_matcher_is_done(m));
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
    for (int32_t i = 0; i < t.n; i++) cr_assert_eq(gt_bit(mask, i), i == t.stop);
    cr_assert_eq(grammar_matcher_accept_token(m, t.stop), 0);
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
    for (size_t w = 0; w < words; w++) cr_assert_eq(mask[w], 0);
    cr_assert_lt(grammar_matcher_accept_token(m, t.stop), 0, "nothing after the stop");
    cr_assert_lt(grammar_matcher_fill_mask(m, mask, 0), 0, "a mask too small for the vocabulary");
    grammar_matcher_free(m);
    grammar_compiled_unref(c);
    gt_toy_free(&t);
}

Test(matcher, long_generations_stay_small_and_right)
{
    /* 200k bytes through nested structures: frames no stack uses are dropped as it goes. */
    struct grammar_vocab *v = gt_byte_vocab();
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(GRAMMAR_JSON_OBJECT, ""), v), 0);
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    cr_assert_eq(grammar_matcher_accept_bytes(m, "{\"a\": [[[{\"b\": \"", 16), 0);
    for (int i = 0; i < 200000; i++) cr_assert_eq(grammar_matcher_accept_bytes(m, "xyz\\n" + i % 5, 1), 0);
    cr_assert_eq(grammar_matcher_accept_bytes(m, "\"}]], 1]}", 9), 0);
    cr_assert(grammar_matcher_can_end(m));
    cr_assert(grammar_matcher_is_done(m));
    grammar_matcher_free(m);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
}

Test(matcher, precompute_matches_lazy)
{
    struct gt_vocab t = gt_toy_vocab("{}[]\",: ab1", 50, 11);
    struct grammar_compiled *lazy = NULL, *eager = NULL;
    const char *src = "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"array\"}}}";
    cr_assert_eq(grammar_compiled_new(&lazy, gt_compile(GRAMMAR_JSON_SCHEMA, src), t.v), 0);
    cr_assert_eq(grammar_compiled_new(&eager, gt_compile(GRAMMAR_JSON_SCHEMA, src), t.v), 0);
    cr_assert_eq(grammar_compiled_precompute(eager), 0);
    size_t positions, classified;
    grammar_compiled_stats(eager, &positions, &classified, NULL);
    cr_assert_eq(positions, classified);
    struct grammar_matcher *a = NULL, *b = NULL;
    cr_assert_eq(grammar_matcher_new(&a, lazy), 0);
    cr_assert_eq(grammar_matcher_new(&b, eager), 0);
    const char *text = "{\"a\": [1, \"b\", {}, [null]]}";
    uint32_t ma[8], mb[8];
    for (size_t i = 0; i <= strlen(text); i++) {
        cr_assert_eq(grammar_matcher_fill_mask(a, ma, 8), 0);
        cr_assert_eq(grammar_matcher_fill_mask(b, mb, 8), 0);
        cr_assert(memcmp(ma, mb, sizeof ma) == 0, "step %zu", i);
        if (i < strlen(text)) {
            cr_assert_eq(grammar_matcher_accept_bytes(a, text + i, 1), 0);
            cr_assert_eq(grammar_matcher_accept_bytes(b, text + i, 1), 0);
        }
    }
    grammar_matcher_free(a);
    grammar_matcher_free(b);
    grammar_compiled_unref(lazy);
    grammar_compiled_unref(eager);
    gt_toy_free(&t);
}
