/* The BPE model on one pre-tokenized piece: characters to ids (with byte fallback and unk),
 * then the lowest-ranked adjacent pair merged first, leftmost first on ties, until no pair of
 * neighbours has a merge. A binary heap with lazy invalidation keeps that O(n log n), which
 * matters for SentencePiece-style tokenizers whose "piece" is a whole paragraph. */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

struct sym {
    int32_t id, prev, next;
};

struct merge {
    int32_t rank, pos, right, merged;
};

static bool merge_less(const struct merge *a, const struct merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

struct heap {
    struct merge *v;
    size_t n, cap;
};

static int heap_push(struct heap *h, struct merge m)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct merge *v = realloc(h->v, cap * sizeof(*v));
        if (!v) return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&m, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = m;
    return 0;
}

static struct merge heap_pop(struct heap *h)
{
    struct merge top = h->v[0];
    struct merge last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && merge_less(&h->v[c + 1], &h->v[c])) c++;
        if (!merge_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

static int ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *v = realloc(*ids, c * sizeof(*v));
        if (!v) return -1;
        *ids = v;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return 0;
}

static int syms_push(struct sym **v, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        struct sym *p = realloc(*v, c * sizeof(*p));
        if (!p) return -1;
        *v = p;
        *cap = c;
    }
    (*v)[*n] = (struct sym){.id = id, .prev = (int32_t)*n - 1, .next = -1};
    if (*n) (*v)[*n - 1].next = (int32_t)*n;
    (*n)++;
    return 0;
}

static int try_pair(const struct tokenizer *t, struct heap *h, const struct sym *s, int32_t pos)
{
    int32_t r = s[pos].next;
    if (r < 0) return 0;
    const struct tok_pair_slot *m = tok_pairmap_get(&t->merges, s[pos].id, s[r].id);
    if (!m) return 0;
    return heap_push(h, (struct merge){.rank = m->rank, .pos = pos, .right = r, .merged = m->merged});
}

int tok_bpe_encode(const struct tokenizer *t, const char *s, size_t n, int32_t **ids, size_t *n_ids,
                   size_t *cap)
{
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = tok_strmap_get(&t->vocab, s, n);
        if (id >= 0) return ids_push(ids, n_ids, cap, id);
    }
    struct sym *sy = NULL;
    size_t ns = 0, scap = 0;
    struct heap h = {0};
    char pbuf[64];
    int rc = -1;
    bool last_unk = false;
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_valid_len((const unsigned char *)s + i, n - i);
        if (k <= 0) k = 1;
        int32_t id;
        if (i > 0 && t->cont_prefix_len && t->cont_prefix_len + (size_t)k <= sizeof(pbuf)) {
            memcpy(pbuf, t->cont_prefix, t->cont_prefix_len);
            memcpy(pbuf + t->cont_prefix_len, s + i, (size_t)k);
            id = tok_strmap_get(&t->vocab, pbuf, t->cont_prefix_len + (size_t)k);
        } else
            id = tok_strmap_get(&t->vocab, s + i, (size_t)k);
        if (id >= 0) {
            if (syms_push(&sy, &ns, &scap, id) < 0) goto done;
            last_unk = false;
        } else {
            bool all = t->byte_fallback;
            for (int j = 0; j < k && all; j++) all = t->byte_id[(unsigned char)s[i + (size_t)j]] >= 0;
            if (all) {
                for (int j = 0; j < k; j++)
                    if (syms_push(&sy, &ns, &scap, t->byte_id[(unsigned char)s[i + (size_t)j]]) < 0) goto done;
                last_unk = false;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && last_unk) && syms_push(&sy, &ns, &scap, t->unk_id) < 0) goto done;
                last_unk = true;
            }
        }
        i += (size_t)k;
    }
    for (size_t i = 0; i + 1 < ns; i++)
        if (try_pair(t, &h, sy, (int32_t)i) < 0) goto done;
    while (h.n) {
        struct merge m = heap_pop(&h);
        struct sym *a = &sy[m.pos];
        if (a->id < 0 || a->next != m.right) continue;
        const struct tok_pair_slot *cur = tok_pairmap_get(&t->merges, a->id, sy[m.right].id);
        if (!cur || cur->rank != m.rank || cur->merged != m.merged) continue;
        a->id = m.merged;
        struct sym *b = &sy[m.right];
        a->next = b->next;
        if (b->next >= 0) sy[b->next].prev = m.pos;
        b->id = -1;
        b->next = -1;
        if (a->prev >= 0 && try_pair(t, &h, sy, a->prev) < 0) goto done;
        if (try_pair(t, &h, sy, m.pos) < 0) goto done;
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sy[i].next)
        if (ids_push(ids, n_ids, cap, sy[i].id) < 0) goto done;
    rc = 0;
done:
    free(sy);
    free(h.v);
    return rc;
}
