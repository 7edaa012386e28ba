/* The compile cache: hits by (kind, source), sharing among sources that compile to the same
 * grammar, errors not cached, least recently used eviction that never frees a grammar a
 * matcher still holds, and use from several threads. */
#include <pthread.h>

#include "tests/unit/grammar/grammar_test_util.h"

static struct grammar_compiled *get(struct grammar_cache *c, enum grammar_kind kind, const char *src)
{
    char err[256];
    struct grammar_compiled *g = NULL;
    cr_assert_eq(grammar_cache_get(c, kind, src, strlen(src), &g, err, sizeof err), 0, "%s", err);
    return g;
}

Test(grammar_cache, hits_misses_and_sharing)
{
    struct grammar_vocab *v = gt_byte_vocab();
    struct grammar_cache *c = NULL;
    cr_assert_eq(grammar_cache_new(&c, v, 4), 0);
    struct grammar_compiled *a = get(c, GRAMMAR_REGEX, "[0-9]+");
    struct grammar_compiled *b = get(c, GRAMMAR_REGEX, "[0-9]+");
    cr_assert_eq(a, b, "the same source is one compiled grammar");
    /* A different source with the same grammar shares it, and its classification work. */
    struct grammar_compiled *d = get(c, GRAMMAR_GBNF, "root ::= [0-9]+");
    cr_assert_eq(a, d);
    /* The same text under another kind is another grammar. */
    struct grammar_compiled *e = get(c, GRAMMAR_CHOICE, "[\"[0-9]+\"]");
    cr_assert_neq(a, e);
    cr_assert_eq(gt_match_grammar(e, "[0-9]+", 6), 1);
    /* json_object ignores its source. */
    struct grammar_compiled *o1 = get(c, GRAMMAR_JSON_OBJECT, "");
    struct grammar_compiled *o2 = get(c, GRAMMAR_JSON_OBJECT, "anything");
    cr_assert_eq(o1, o2);
    struct grammar_cache_stats st;
    grammar_cache_get_stats(c, &st);
    cr_assert_eq(st.hits, 2);
    cr_assert_eq(st.misses, 4);
    cr_assert_eq(st.shared, 1);
    cr_assert_eq(st.entries, 4);
    /* Errors are reported, and not cached. */
    char err[256] = "";
    struct grammar_compiled *bad = NULL;
    cr_assert_lt(grammar_cache_get(c, GRAMMAR_REGEX, "(", 1, &bad, err, sizeof err), 0);
    cr_assert_null(bad);
    cr_assert(strstr(err, "missing ')'"), "%s", err);
    grammar_cache_get_stats(c, &st);
    cr_assert_eq(st.entries, 4);
    for (struct grammar_compiled **g = (struct grammar_compiled *[]){a, b, d, e, o1, o2, NULL}; *g; g++)
        grammar_compiled_unref(*g);
    grammar_cache_free(c);
    grammar_vocab_free(v);
}

Test(grammar_cache, eviction_keeps_grammars_in_use)
{
    struct grammar_vocab *v = gt_byte_vocab();
    struct grammar_cache *c = NULL;
    cr_assert_eq(grammar_cache_new(&c, v, 2), 0);
    struct grammar_compiled *a = get(c, GRAMMAR_REGEX, "a+");
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, a), 0);
    grammar_compiled_unref(a); /* the matcher still holds it */
    grammar_compiled_unref(get(c, GRAMMAR_REGEX, "b+"));
    grammar_compiled_unref(get(c, GRAMMAR_REGEX, "b+")); /* b is now the most recent */
    grammar_compiled_unref(get(c, GRAMMAR_REGEX, "c+")); /* evicts a */
    struct grammar_cache_stats st;
    grammar_cache_get_stats(c, &st);
    cr_assert_eq(st.entries, 2);
    cr_assert_eq(grammar_matcher_accept_bytes(m, "aaa", 3), 0, "an evicted grammar lives on in its matchers");
    cr_assert(grammar_matcher_can_end(m));
    uint32_t mask[9];
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, 9), 0);
    cr_assert(gt_bit(mask, 'a') && !gt_bit(mask, 'b') && gt_bit(mask, 256));
    grammar_matcher_free(m);
    struct grammar_compiled *a2 = get(c, GRAMMAR_REGEX, "a+");
    grammar_cache_get_stats(c, &st);
    cr_assert_eq(st.misses, 4, "a was compiled again");
    grammar_compiled_unref(a2);
    grammar_cache_free(c);
    grammar_vocab_free(v);
}

struct thread_arg {
    struct grammar_cache *c;
    int id;
};

static void *worker(void *p)
{
    struct thread_arg *a = p;
    static const char *const srcs[] = {"{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\"}}}",
                                       "{\"type\": \"array\", \"items\": {\"type\": \"string\"}}",
                                       "{\"enum\": [\"x\", \"y\"]}"};
    static const char *const docs[] = {"{\"n\": 12}", "[\"a\", \"b\"]", "\"y\""};
    uint32_t mask[9];
    for (int i = 0; i < 30; i++) {
        int k = (a->id + i) % 3;
        struct grammar_compiled *g = NULL;
        char err[256];
        if (grammar_cache_get(a->c, GRAMMAR_JSON_SCHEMA, srcs[k], strlen(srcs[k]), &g, err, sizeof err) < 0)
            return "compile failed";
        struct grammar_matcher *m = NULL;
        if (grammar_matcher_new(&m, g) < 0) return "matcher";
        for (const char *s = docs[k]; *s; s++) {
            if (grammar_matcher_fill_mask(m, mask, 9) < 0 || !gt_bit(mask, (unsigned char)*s)) return "mask";
            if (grammar_matcher_accept_bytes(m, s, 1) < 0) return "accept";
        }
        bool end = grammar_matcher_can_end(m);
        grammar_matcher_free(m);
        grammar_compiled_unref(g);
        if (!end) return "end";
    }
    return NULL;
}

Test(grammar_cache, threads_share_compiled_grammars)
{
    struct grammar_vocab *v = gt_byte_vocab();
    struct grammar_cache *c = NULL;
    cr_assert_eq(grammar_cache_new(&c, v, 2), 0); /* smaller than the working set: evictions too */
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){c, i};
        cr_assert_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        cr_assert_null(r, "thread %d: %s", i, (const char *)r);
    }
    grammar_cache_free(c);
    grammar_vocab_free(v);
}
