/* The vocabulary as the grammar sees it: each token's bytes, and a trie of them laid out in
 * preorder, built once per tokenizer and shared by every grammar. A mask walk visits the
 * trie nodes in order and skips a whole subtree (end[i]) as soon as its prefix is dead, so
 * tokens that share a prefix are checked once. */
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"
#include "worker/tokenizer/tokenizer.h"

struct sort_ctx {
    const char *pool;
    const uint32_t *off, *len;
};

static int cmp_tokens(const void *a, const void *b, void *arg)
{
    const struct sort_ctx *c = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = c->len[x], ly = c->len[y];
    int r = memcmp(c->pool + c->off[x], c->pool + c->off[y], lx < ly ? lx : ly);
    if (r) return r;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

void gram_trie_free(struct gtrie *t)
{
    free(t->byte);
    free(t->depth);
    free(t->end);
    free(t->tok_off);
    free(t->ids);
    free(t->path);
    free(t->sub);
    memset(t, 0, sizeof *t);
}

int gram_trie_build(struct gtrie *t, const char *pool, const uint32_t *off, const uint32_t *len, int32_t n)
{
    memset(t, 0, sizeof *t);
    size_t total = 1, n_tok = 0;
    uint32_t max_len = 0;
    for (int32_t i = 0; i < n; i++) {
        if (!len[i]) continue;
        if (len[i] > 65535) return -1;
        total += len[i];
        n_tok++;
        if (len[i] > max_len) max_len = len[i];
    }
    int32_t *order = malloc((n_tok + 1) * sizeof *order);
    uint32_t *stack = malloc(((size_t)max_len + 2) * sizeof *stack);
    t->byte = malloc(total);
    t->depth = malloc(total * sizeof *t->depth);
    t->end = malloc(total * sizeof *t->end);
    t->tok_off = malloc((total + 1) * sizeof *t->tok_off);
    t->path = malloc(total * sizeof *t->path);
    t->ids = malloc((n_tok + 1) * sizeof *t->ids);
    if (!order || !stack || !t->byte || !t->depth || !t->end || !t->tok_off || !t->path || !t->ids) {
        free(order);
        free(stack);
        gram_trie_free(t);
        return -1;
    }
    size_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (len[i]) order[k++] = i;
    struct sort_ctx c = {pool, off, len};
    qsort_r(order, n_tok, sizeof *order, cmp_tokens, &c);
    uint32_t nn = 1, n_ids = 0, cur = 0; /* cur: depth of the current path */
    t->byte[0] = 0;
    t->depth[0] = 0;
    t->tok_off[0] = 0;
    t->path[0] = 0;
    stack[0] = 0;
    const char *prev = NULL;
    uint32_t prev_len = 0;
    for (size_t j = 0; j < n_tok; j++) {
        int32_t id = order[j];
        const char *s = pool + off[id];
        uint32_t l = len[id], lcp = 0;
        while (lcp < l && lcp < prev_len && s[lcp] == prev[lcp]) lcp++;
        while (cur > lcp) t->end[stack[cur--]] = nn;
        for (uint32_t d = lcp; d < l; d++) {
            t->byte[nn] = (uint8_t)s[d];
            t->depth[nn] = (uint16_t)(d + 1);
            t->tok_off[nn] = n_ids;
            t->path[nn] = off[id];
            stack[++cur] = nn++;
        }
        t->ids[n_ids++] = id;
        prev = s;
        prev_len = l;
    }
    while (cur > 0) t->end[stack[cur--]] = nn;
    t->end[0] = nn;
    t->tok_off[nn] = n_ids;
    t->n = nn;
    t->max_depth = (uint16_t)max_len;
    /* The bytes below each node, children up: a walk takes a whole subtree at once where
     * every byte in it leaves its state as it is (gram_mask.c). */
    uint32_t *parent = malloc((size_t)nn * sizeof *parent);
    t->sub = calloc(nn, sizeof *t->sub);
    if (!parent || !t->sub) {
        free(parent);
        free(order);
        free(stack);
        gram_trie_free(t);
        return -1;
    }
    stack[0] = 0;
    for (uint32_t i = 1; i < nn; i++) {
        parent[i] = stack[t->depth[i] - 1];
        stack[t->depth[i]] = i;
    }
    for (uint32_t i = nn; i-- > 1;) {
        struct gset *ps = &t->sub[parent[i]];
        for (int w = 0; w < 4; w++) ps->w[w] |= t->sub[i].w[w];
        ps->w[t->byte[i] >> 6] |= 1ull << (t->byte[i] & 63);
    }
    free(parent);
    free(order);
    free(stack);
    return 0;
}

void grammar_vocab_free(struct grammar_vocab *v)
{
    if (!v) return;
    free(v->pool);
    free(v->off);
    free(v->len);
    free(v->first_off);
    free(v->first_len);
    free(v->stop_ids);
    gram_trie_free(&v->trie);
    gram_trie_free(&v->first_trie);
    free(v);
}

int32_t grammar_vocab_size(const struct grammar_vocab *v)
{
    return v->n_vocab;
}

size_t grammar_vocab_mask_words(const struct grammar_vocab *v)
{
    return ((size_t)v->n_vocab + 31) / 32;
}

const char *grammar_vocab_token_bytes(const struct grammar_vocab *v, int32_t id, uint32_t *len)
{
    if (id < 0 || id >= v->n_vocab || v->len[id] == 0) {
        *len = 0;
        return NULL;
    }
    *len = v->len[id];
    return v->pool + v->off[id];
}

bool grammar_vocab_is_stop(const struct grammar_vocab *v, int32_t id)
{
    for (size_t i = 0; i < v->n_stop; i++)
        if (v->stop_ids[i] == id) return true;
    return false;
}

int grammar_vocab_from_bytes(struct grammar_vocab **out, int32_t n_vocab, const char *const *bytes,
                             const uint32_t *lens, const char *const *first_bytes,
                             const uint32_t *first_lens, const int32_t *stop_ids, size_t n_stop,
                             char *err, size_t errlen)
{
    *out = NULL;
    if (n_vocab <= 0) {
        gram_err(err, errlen, "empty vocabulary");
        return -1;
    }
    struct grammar_vocab *v = calloc(1, sizeof *v);
    if (!v) goto nomem;
    v->n_vocab = n_vocab;
    v->off = calloc((size_t)n_vocab, sizeof *v->off);
    v->len = calloc((size_t)n_vocab, sizeof *v->len);
    v->stop_ids = malloc((n_stop + 1) * sizeof *v->stop_ids);
    if (!v->off || !v->len || !v->stop_ids) goto nomem;
    for (size_t i = 0; i < n_stop; i++) {
        if (stop_ids[i] < 0 || stop_ids[i] >= n_vocab) {
            gram_err(err, errlen, "stop token %d is outside the vocabulary", stop_ids[i]);
            grammar_vocab_free(v);
            return -1;
        }
        v->stop_ids[v->n_stop++] = stop_ids[i];
    }
    bool differ = false;
    size_t total = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        uint32_t l = bytes[i] ? lens[i] : 0;
        if (grammar_vocab_is_stop(v, i)) l = 0;
        v->len[i] = l;
        total += l;
        if (first_bytes && first_bytes[i]) {
            uint32_t fl = l ? first_lens[i] : 0;
            if (fl != l || memcmp(first_bytes[i], bytes[i], l) != 0) differ = true;
            total += fl;
        }
    }
    v->pool = malloc(total + 1);
    if (!v->pool) goto nomem;
    size_t at = 0;
    uint64_t h = hash_fnv1a(HASH_FNV1A_INIT, &n_vocab, sizeof n_vocab);
    for (int32_t i = 0; i < n_vocab; i++) {
        v->off[i] = (uint32_t)at;
        if (v->len[i]) memcpy(v->pool + at, bytes[i], v->len[i]);
        at += v->len[i];
        h = hash_fnv1a(h, &v->len[i], sizeof v->len[i]);
        h = hash_fnv1a(h, v->pool + v->off[i], v->len[i]);
    }
    if (differ) {
        v->first_off = calloc((size_t)n_vocab, sizeof *v->first_off);
        v->first_len = calloc((size_t)n_vocab, sizeof *v->first_len);
        if (!v->first_off || !v->first_len) goto nomem;
        for (int32_t i = 0; i < n_vocab; i++) {
            if (!first_bytes[i] || !v->len[i]) {
                v->first_off[i] = v->off[i];
                v->first_len[i] = v->len[i];
                continue;
            }
            v->first_off[i] = (uint32_t)at;
            v->first_len[i] = first_lens[i];
            memcpy(v->pool + at, first_bytes[i], first_lens[i]);
            at += first_lens[i];
            h = hash_fnv1a(h, &v->first_len[i], sizeof v->first_len[i]);
            h = hash_fnv1a(h, v->pool + v->first_off[i], v->first_len[i]);
        }
    }
    h = hash_fnv1a(h, v->stop_ids, v->n_stop * sizeof *v->stop_ids);
    v->ident = h;
    if (gram_trie_build(&v->trie, v->pool, v->off, v->len, n_vocab) < 0) goto nomem;
    if (differ && gram_trie_build(&v->first_trie, v->pool, v->first_off, v->first_len, n_vocab) < 0) goto nomem;
    *out = v;
    return 0;
nomem:
    gram_err(err, errlen, "out of memory building the grammar vocabulary");
    grammar_vocab_free(v);
    return -1;
}

int grammar_vocab_from_tokenizer(struct grammar_vocab **out, const struct tokenizer *tok,
                                 const int32_t *stop_ids, size_t n_stop, char *err, size_t errlen)
{
    int32_t n = tok_vocab_size(tok);
    char **bytes = calloc((size_t)n + 1, sizeof *bytes), **first = calloc((size_t)n + 1, sizeof *first);
    uint32_t *lens = calloc((size_t)n + 1, sizeof *lens), *first_lens = calloc((size_t)n + 1, sizeof *first_lens);
    int rc = -1;
    int32_t eos = tok_eos_id(tok);
    if (!bytes || !first || !lens || !first_lens) {
        gram_err(err, errlen, "out of memory building the grammar vocabulary");
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        if (tok_is_special(tok, i)) continue;
        size_t l = tok_token_piece(tok, i, NULL, 0);
        if (l == 0) continue;
        bytes[i] = malloc(l + 1);
        if (!bytes[i]) goto oom;
        tok_token_piece(tok, i, bytes[i], l + 1);
        lens[i] = (uint32_t)l;
        /* The first-token form is a decode of the token: made once, into buf, unless longer. */
        char buf[256];
        size_t fl = tok_token_piece_first(tok, i, buf, sizeof buf);
        if (fl == l && fl <= sizeof buf && memcmp(buf, bytes[i], l) == 0) continue;
        first[i] = malloc(fl + 1);
        if (!first[i]) goto oom;
        if (fl <= sizeof buf) {
            memcpy(first[i], buf, fl);
            first[i][fl] = '\0';
        } else {
            tok_token_piece_first(tok, i, first[i], fl + 1);
        }
        first_lens[i] = (uint32_t)fl;
    }
    if (n_stop == 0 && eos >= 0) {
        stop_ids = &eos;
        n_stop = 1;
    }
    rc = grammar_vocab_from_bytes(out, n, (const char *const *)bytes, lens, (const char *const *)first,
                                  first_lens, stop_ids, n_stop, err, errlen);
    goto done;
oom:
    gram_err(err, errlen, "out of memory building the grammar vocabulary");
done:
    for (int32_t i = 0; bytes && i < n; i++) free(bytes[i]);
    for (int32_t i = 0; first && i < n; i++) free(first[i]);
    free(bytes);
    free(first);
    free(lens);
    free(first_lens);
    return rc;
}
