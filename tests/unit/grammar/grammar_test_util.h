/* Shared helpers of the grammar unit tests: compiling, whole-string matching, toy
 * vocabularies, and the brute-force mask every fast mask is checked against. */
#ifndef SLUICE_TESTS_GRAMMAR_TEST_UTIL_H
#define SLUICE_TESTS_GRAMMAR_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/grammar/grammar.h"

static inline struct grammar *gt_compile(enum grammar_kind kind, const char *src)
{
    char err[512] = "";
    struct grammar *g = NULL;
    cr_assert_eq(grammar_compile(&g, kind, src, strlen(src), err, sizeof err), 0, "%s: %s\n%s",
                 grammar_kind_name(kind), err, src);
    return g;
}

/* The error message of a source that must not compile. */
static inline const char *gt_compile_error(enum grammar_kind kind, const char *src)
{
    static char err[512];
    struct grammar *g = NULL;
    err[0] = '\0';
    int rc = grammar_compile(&g, kind, src, strlen(src), err, sizeof err);
    cr_assert_lt(rc, 0, "compiled but should not: %s", src);
    cr_assert_null(g);
    cr_assert(err[0], "no error message for %s", src);
    return err;
}

/* A byte vocabulary: token i is the byte i (ids 0..255), plus a stop token 256. Enough to
 * ask whether whole strings match. */
static inline struct grammar_vocab *gt_byte_vocab(void)
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

/* Whether s (n bytes) is a whole sentence of the grammar (1), a proper prefix of one (0), or
 * neither (-1). Takes ownership of nothing. */
static inline int gt_match_grammar(struct grammar_compiled *c, const char *s, size_t n)
{
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    int r;
    if (grammar_matcher_accept_bytes(m, s, n) < 0) r = -1;
    else r = grammar_matcher_can_end(m) ? 1 : 0;
    grammar_matcher_free(m);
    return r;
}

static inline int gt_match(enum grammar_kind kind, const char *src, const char *s)
{
    struct grammar_vocab *v = gt_byte_vocab();
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(kind, src), v), 0);
    int r = gt_match_grammar(c, s, strlen(s));
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    return r;
}

#define gt_accepts(kind, src, s) cr_assert_eq(gt_match(kind, src, s), 1, "should match: %s\n  grammar: %s", s, src)
#define gt_rejects(kind, src, s) cr_assert_lt(gt_match(kind, src, s), 1, "should not match: %s\n  grammar: %s", s, src)
#define gt_prefix(kind, src, s) cr_assert_eq(gt_match(kind, src, s), 0, "should be a prefix only: %s\n  grammar: %s", s, src)
#define gt_dead(kind, src, s) cr_assert_eq(gt_match(kind, src, s), -1, "should be no prefix: %s\n  grammar: %s", s, src)

/* A toy vocabulary for mask tests: every byte of alphabet as a token, then random strings of
 * 2..7 alphabet bytes (some repeated, as real vocabularies have duplicates), then a stop
 * token and an empty (never allowed) token. */
struct gt_vocab {
    struct grammar_vocab *v;
    int32_t n;
    char **tok;
    uint32_t *len;
    int32_t stop;
};

static inline uint64_t gt_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline struct gt_vocab gt_toy_vocab(const char *alphabet, int n_multi, uint64_t seed)
{
    struct gt_vocab t = {0};
    size_t na = strlen(alphabet);
    t.n = (int32_t)na + n_multi + 2;
    t.tok = calloc((size_t)t.n, sizeof *t.tok);
    t.len = calloc((size_t)t.n, sizeof *t.len);
    int32_t k = 0;
    for (size_t i = 0; i < na; i++, k++) {
        t.tok[k] = calloc(1, 2);
        t.tok[k][0] = alphabet[i];
        t.len[k] = 1;
    }
    for (int i = 0; i < n_multi; i++, k++) {
        uint32_t l = 2 + (uint32_t)(gt_rand(&seed) % 6);
        t.tok[k] = calloc(1, 8);
        if (i % 17 == 5 && i > 0) { /* a duplicate of an earlier multi-byte token */
            int32_t src = (int32_t)na + (int32_t)(gt_rand(&seed) % (uint64_t)i);
            l = t.len[src];
            memcpy(t.tok[k], t.tok[src], l);
        } else {
            for (uint32_t j = 0; j < l; j++) t.tok[k][j] = alphabet[gt_rand(&seed) % na];
        }
        t.len[k] = l;
    }
    t.stop = k++;
    t.tok[t.stop] = NULL;
    t.tok[k] = strdup(""); /* an empty token */
    t.len[k] = 0;
    char err[256];
    cr_assert_eq(grammar_vocab_from_bytes(&t.v, t.n, (const char *const *)t.tok, t.len, NULL, NULL, &t.stop, 1, err,
                                          sizeof err),
                 0, "%s", err);
    return t;
}

static inline void gt_toy_free(struct gt_vocab *t)
{
    for (int32_t i = 0; i < t->n; i++) free(t->tok[i]);
    free(t->tok);
    free(t->len);
    grammar_vocab_free(t->v);
}

static inline bool gt_bit(const uint32_t *mask, int32_t id)
{
    return (mask[id >> 5] >> (id & 31)) & 1;
}

#endif
