/* The normalizer and pre-tokenizer stages: each step of the loaded pipeline applied in order. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

#define is_space_cp tok_is_space_cp

int tok_replace_append_open(struct strbuf *out, const char *s, size_t n, const char *pat, size_t plen,
                            const char *rep, size_t rlen, size_t *held)
{
    size_t i = 0, run = 0, keep = n;
    while (plen && i + plen <= n) {
        if (s[i] == pat[0] && memcmp(s + i, pat, plen) == 0) {
            if (strbuf_append(out, s + run, i - run) < 0 || strbuf_append(out, rep, rlen) < 0) return -1;
            i += plen;
            run = i;
        } else
            i++;
    }
    /* Past i no whole match fits: the first tail that begins the pattern waits for more. */
    if (held && plen)
        for (size_t j = i; j < n; j++)
            if (memcmp(s + j, pat, n - j) == 0) {
                keep = j;
                break;
            }
    if (held) *held = n - keep;
    return strbuf_append(out, s + run, keep - run);
}

int tok_replace_append(struct strbuf *out, const char *s, size_t n, const char *pat, size_t plen, const char *rep,
                       size_t rlen)
{
    return tok_replace_append_open(out, s, n, pat, plen, rep, rlen, NULL);
}

/* Calls fn for each non-empty match of re in s[0..n), left to right, as Rust's find_iter. */
typedef int (*match_fn)(void *ctx, size_t start, size_t end);
static int regex_each(const pcre2_code *re, const char *s, size_t n, match_fn fn, void *ctx)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return -1;
    int rc = 0;
    size_t pos = 0;
    while (pos <= n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m < 0) {
            if (m != PCRE2_ERROR_NOMATCH) rc = -1;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) {
            /* An empty match: step one character forward, as find_iter does. */
            if (a >= n) break;
            int k = tok_utf8_valid_len((const unsigned char *)s + a, n - a);
            pos = a + (size_t)(k > 0 ? k : 1);
            continue;
        }
        if ((rc = fn(ctx, a, b)) < 0) break;
        pos = b;
    }
    pcre2_match_data_free(md);
    return rc;
}

struct replace_ctx {
    struct strbuf *out;
    const char *s;
    size_t run;
    const char *rep;
    size_t rlen;
};

static int replace_cb(void *vctx, size_t a, size_t b)
{
    struct replace_ctx *c = vctx;
    if (strbuf_append(c->out, c->s + c->run, a - c->run) < 0 || strbuf_append(c->out, c->rep, c->rlen) < 0)
        return -1;
    c->run = b;
    return 0;
}

static int norm_step(const struct tok_norm *st, const char *s, size_t n, struct strbuf *out)
{
    switch (st->kind) {
    case TOK_NORM_PREPEND:
        if (n == 0) return 0;
        if (strbuf_append(out, st->a, st->a_len) < 0) return -1;
        return strbuf_append(out, s, n);
    case TOK_NORM_REPLACE:
        if (st->re) {
            struct replace_ctx c = {.out = out, .s = s, .run = 0, .rep = st->b, .rlen = st->b_len};
            if (regex_each(st->re, s, n, replace_cb, &c) < 0) return -1;
            return strbuf_append(out, s + c.run, n - c.run);
        }
        return tok_replace_append(out, s, n, st->a, st->a_len, st->b, st->b_len);
    case TOK_NORM_NFC:
        return tok_nfc_append(out, s, n);
    case TOK_NORM_NFD:
        return tok_unorm_append(out, s, n, TOK_NFD);
    case TOK_NORM_NFKC:
        return tok_unorm_append(out, s, n, TOK_NFKC);
    case TOK_NORM_NFKD:
        return tok_unorm_append(out, s, n, TOK_NFKD);
    case TOK_NORM_LOWERCASE:
        return tok_case_append(out, s, n, false);
    case TOK_NORM_STRIP_ACCENTS:
        return tok_case_append(out, s, n, true);
    case TOK_NORM_STRIP: {
        size_t a = 0, b = n;
        uint32_t cp;
        int k;
        while (st->left && a < b && (k = tok_utf8_decode((const unsigned char *)s + a, b - a, &cp)) > 0 &&
               is_space_cp(cp))
            a += (size_t)k;
        while (st->right && b > a) {
            size_t j = b - 1;
            while (j > a && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
            if (tok_utf8_decode((const unsigned char *)s + j, b - j, &cp) <= 0 || !is_space_cp(cp)) break;
            b = j;
        }
        return strbuf_append(out, s + a, b - a);
    }
    }
    return -1;
}

int tok_normalize(const struct tokenizer *t, const char *s, size_t n, struct strbuf *out)
{
    out->len = 0;
    if (t->n_norm == 0) return strbuf_append(out, s, n);
    struct strbuf tmp = {0};
    int rc = -1;
    if (strbuf_append(&tmp, s, n) < 0) goto done;
    for (size_t i = 0; i < t->n_norm; i++) {
        out->len = 0;
        if (strbuf_reserve(out, 0) < 0 || norm_step(&t->norm[i], tmp.p, tmp.len, out) < 0) goto done;
        if (i + 1 < t->n_norm) {
            tmp.len = 0;
            if (strbuf_append(&tmp, out->p, out->len) < 0) goto done;
        }
    }
    rc = 0;
done:
    strbuf_free(&tmp);
    return rc;
}

/* ---- pre-tokenizers ----------------------------------------------------------------------- */
struct span {
    size_t a, b;
    bool match;
};
struct spans {
    struct span *v;
    size_t n, cap;
};

static int spans_add(struct spans *sp, size_t a, size_t b, bool match)
{
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 16;
        struct span *v = realloc(sp->v, cap * sizeof(*v));
        if (!v) return -1;
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n++] = (struct span){a, b, match};
    return 0;
}

struct split_ctx {
    struct spans *sp;
    size_t prev;
};

static int split_cb(void *vctx, size_t a, size_t b)
{
    struct split_ctx *c = vctx;
    if (a > c->prev && spans_add(c->sp, c->prev, a, false) < 0) return -1;
    if (spans_add(c->sp, a, b, true) < 0) return -1;
    c->prev = b;
    return 0;
}

/* Given s cut into match / non-match spans, groups the spans as the behavior says (as Hugging
 * Face's SplitDelimiterBehavior does) and appends the non-empty results to out. */
static int split_emit(const char *s, bool at_origin, struct spans *sp, enum tok_split_behavior behavior,
                      bool invert, struct tok_pieces *out)
{
    if (invert)
        for (size_t i = 0; i < sp->n; i++) sp->v[i].match = !sp->v[i].match;
    size_t cur_a = 0, cur_b = 0;
    bool open = false, prev_match = false;
    bool first = true;
#define EMIT(A, B)                                                                                 \
    do {                                                                                           \
        if ((B) > (A)) {                                                                           \
            if (tok_pieces_add(out, s + (A), (B) - (A), at_origin && first && (A) == 0) < 0) return -1; \
            first = false;                                                                         \
        }                                                                                          \
    } while (0)
    for (size_t i = 0; i < sp->n; i++) {
        struct span x = sp->v[i];
        switch (behavior) {
        case TOK_SPLIT_REMOVED:
            if (!x.match) EMIT(x.a, x.b);
            break;
        case TOK_SPLIT_ISOLATED:
            EMIT(x.a, x.b);
            break;
        case TOK_SPLIT_MERGED_PREV:
            if (x.match && open) {
                cur_b = x.b;
                EMIT(cur_a, cur_b);
                open = false;
            } else if (x.match) {
                EMIT(x.a, x.b);
            } else {
                if (open) EMIT(cur_a, cur_b);
                cur_a = x.a;
                cur_b = x.b;
                open = true;
            }
            break;
        case TOK_SPLIT_MERGED_NEXT:
            if (x.match) {
                if (open) EMIT(cur_a, cur_b);
                cur_a = x.a;
                cur_b = x.b;
                open = true;
            } else if (open) {
                cur_b = x.b;
                EMIT(cur_a, cur_b);
                open = false;
            } else
                EMIT(x.a, x.b);
            break;
        case TOK_SPLIT_CONTIGUOUS:
            /* Neighbours of the same kind (match or not) join, as Hugging Face's fold does. */
            if (open && x.match == prev_match) {
                cur_b = x.b;
            } else {
                if (open) EMIT(cur_a, cur_b);
                cur_a = x.a;
                cur_b = x.b;
                open = true;
            }
            prev_match = x.match;
            break;
        }
    }
    if (open) EMIT(cur_a, cur_b);
#undef EMIT
    return 0;
}

static int split_regex(const pcre2_code *re, const char *s, size_t n, struct spans *sp)
{
    sp->n = 0;
    struct split_ctx c = {.sp = sp, .prev = 0};
    if (regex_each(re, s, n, split_cb, &c) < 0) return -1;
    if (c.prev < n && spans_add(sp, c.prev, n, false) < 0) return -1;
    return 0;
}

/* Splits into runs by a character class: each character whose class is "match" is a match. */
static int split_class(const char *s, size_t n, int (*cls)(uint32_t), struct spans *sp)
{
    sp->n = 0;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        int k = tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (k <= 0) k = 1, cp = 0xFFFD;
        bool m = cls(cp);
        if (sp->n && sp->v[sp->n - 1].match == m && sp->v[sp->n - 1].b == i)
            sp->v[sp->n - 1].b = i + (size_t)k;
        else if (spans_add(sp, i, i + (size_t)k, m) < 0)
            return -1;
        i += (size_t)k;
    }
    return 0;
}

static int cls_space(uint32_t c) { return is_space_cp(c); }

static pcre2_code *gpt2_re;
static pthread_once_t gpt2_once = PTHREAD_ONCE_INIT;
static void gpt2_compile(void)
{
    static const char pat[] =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    gpt2_re = tok_regex_compile(pat, sizeof(pat) - 1, false, NULL, 0);
}

static int bytelevel_map(const char *s, size_t n, bool at_origin, struct tok_pieces *out)
{
    char tmp[256];
    struct strbuf b = {0};
    const char *src;
    size_t len = 0;
    if (n * 2 <= sizeof(tmp)) {
        for (size_t i = 0; i < n; i++) len += (size_t)tok_utf8_encode(tok_bytelevel_char[(unsigned char)s[i]], tmp + len);
        src = tmp;
    } else {
        if (strbuf_reserve(&b, n * 2) < 0) return -1;
        for (size_t i = 0; i < n; i++) len += (size_t)tok_utf8_encode(tok_bytelevel_char[(unsigned char)s[i]], b.p + len);
        src = b.p;
    }
    int rc = tok_pieces_add(out, src, len, at_origin);
    strbuf_free(&b);
    return rc;
}

static int pre_step(const struct tok_pre *st, const struct tok_pieces *in, struct tok_pieces *out,
                    struct spans *sp, struct strbuf *scratch)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = tok_piece_str(in, i);
        size_t n = in->v[i].len;
        bool origin = in->v[i].at_origin;
        switch (st->kind) {
        case TOK_PRE_SPLIT:
            if (split_regex(st->re, s, n, sp) < 0) return -1;
            if (split_emit(s, origin, sp, st->behavior, st->invert, out) < 0) return -1;
            break;
        case TOK_PRE_WHITESPACE_SPLIT:
            if (split_class(s, n, cls_space, sp) < 0) return -1;
            if (split_emit(s, origin, sp, TOK_SPLIT_REMOVED, false, out) < 0) return -1;
            break;
        case TOK_PRE_METASPACE: {
            scratch->len = 0;
            bool pre = st->prepend_scheme == TOK_PREPEND_ALWAYS ||
                       (st->prepend_scheme == TOK_PREPEND_FIRST && origin);
            if (pre && !(n >= 1 && s[0] == ' ') &&
                !(n >= st->replacement_len && memcmp(s, st->replacement, st->replacement_len) == 0) &&
                strbuf_append(scratch, st->replacement, st->replacement_len) < 0)
                return -1;
            if (tok_replace_append(scratch, s, n, " ", 1, st->replacement, st->replacement_len) < 0) return -1;
            if (!st->split) {
                if (tok_pieces_add(out, scratch->p, scratch->len, origin) < 0) return -1;
                break;
            }
            /* Split before each replacement character (MergedWithNext). */
            size_t a = 0;
            for (size_t j = 1; j + st->replacement_len <= scratch->len; j++) {
                if (memcmp(scratch->p + j, st->replacement, st->replacement_len) == 0) {
                    if (tok_pieces_add(out, scratch->p + a, j - a, origin && a == 0) < 0) return -1;
                    a = j;
                }
            }
            if (scratch->len > a && tok_pieces_add(out, scratch->p + a, scratch->len - a, origin && a == 0) < 0)
                return -1;
            break;
        }
        case TOK_PRE_BYTELEVEL: {
            scratch->len = 0;
            if (st->add_prefix_space && !(n >= 1 && s[0] == ' ') && strbuf_putc(scratch, ' ') < 0) return -1;
            if (strbuf_append(scratch, s, n) < 0) return -1;
            if (!st->use_regex) {
                if (bytelevel_map(scratch->p, scratch->len, origin, out) < 0) return -1;
                break;
            }
            pthread_once(&gpt2_once, gpt2_compile);
            if (!gpt2_re || split_regex(gpt2_re, scratch->p, scratch->len, sp) < 0) return -1;
            for (size_t j = 0; j < sp->n; j++)
                if (sp->v[j].b > sp->v[j].a &&
                    bytelevel_map(scratch->p + sp->v[j].a, sp->v[j].b - sp->v[j].a, origin && j == 0, out) < 0)
                    return -1;
            break;
        }
        }
    }
    return 0;
}

int tok_pretokenize(const struct tokenizer *t, struct tok_pieces *io, struct tok_pieces *tmp)
{
    struct spans sp = {0};
    struct strbuf scratch = {0};
    int rc = 0;
    for (size_t i = 0; i < t->n_pre && rc == 0; i++) {
        tok_pieces_clear(tmp);
        rc = pre_step(&t->pre[i], io, tmp, &sp, &scratch);
        struct tok_pieces swap = *io;
        *io = *tmp;
        *tmp = swap;
    }
    free(sp.v);
    strbuf_free(&scratch);
    return rc;
}
