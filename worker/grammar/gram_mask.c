/* Token masks: the per-position classification (the "adaptive token mask cache" of
 * XGrammar), the run-time check of the tokens it leaves uncertain, and the exact walk.
 *
 * Classifying BYTES position pos walks the vocabulary trie from one stack: a frame at pos over
 * a CTX frame for the rest of the stack, which nothing is known about except that it is a
 * place pos's rule returns to. Popping into CTX (gram_pda.c, ctx_pop):
 *   - the rule returns to one place q only: the frame under it is at q, so the walk goes on
 *     exactly, over a CTX frame for q's rule;
 *   - it returns to several (at most GRAM_MAX_HYP) and is the first such rule on that chain:
 *     each site i is a hypothesis, walked over its own CTX frames tagged i;
 *   - otherwise the stack is unknown from there on: a CTXPOP entry.
 * A token is then ACCEPTED when an exact stack (hypothesis 0) survives its bytes, or one of
 * every hypothesis does, since the real stack is one of them; REJECTED when nothing survives
 * and no path met the unknown; else UNCERTAIN, checked at run time against the real stacks.
 * For JSON most positions leave nothing uncertain, or the few tokens that close a string
 * shared by several properties and go on into what follows it. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/grammar/grammar_internal.h"

struct u32list {
    uint32_t *v;
    uint32_t n, cap;
};

static int list_push(struct u32list *l, uint32_t x)
{
    if (l->n == l->cap) {
        uint32_t nc = l->cap ? l->cap * 2 : 64;
        void *q = realloc(l->v, (size_t)nc * sizeof *l->v);
        if (!q) return -1;
        l->v = q;
        l->cap = nc;
    }
    l->v[l->n++] = x;
    return 0;
}

void gram_mask_entry_free(struct gmask_entry *e)
{
    if (!e) return;
    free(e->acc);
    free(e->unc);
    free(e);
}

/* The first rule on pos's chain of single return sites that has several: its sites are the
 * hypotheses. UINT32_MAX when the chain ends at the end of input, or at a rule with too many. */
static uint32_t hyp_rule_of(const struct grammar *g, uint32_t r)
{
    for (uint32_t steps = 0; steps <= g->n_rules; steps++) {
        uint32_t n = g->ret_off[r + 1] - g->ret_off[r];
        if (g->ret_many[r]) return UINT32_MAX;
        if (n != 1) return n > 1 ? r : UINT32_MAX;
        uint32_t q = g->ret[g->ret_off[r]];
        if (q == GRAM_RET_END) return UINT32_MAX;
        r = g->el_rule[q];
    }
    return UINT32_MAX;
}

struct levels {
    uint32_t *off, *len, *nodes;
    uint64_t *unknown, *ctxpop;
};

static int levels_alloc(struct levels *l, size_t n)
{
    l->off = malloc(n * sizeof *l->off);
    l->len = malloc(n * sizeof *l->len);
    l->nodes = malloc(n * sizeof *l->nodes);
    l->unknown = malloc(n * sizeof *l->unknown);
    l->ctxpop = malloc(n * sizeof *l->ctxpop);
    return l->off && l->len && l->nodes && l->unknown && l->ctxpop ? 0 : -1;
}

static void levels_free(struct levels *l)
{
    free(l->off);
    free(l->len);
    free(l->nodes);
    free(l->unknown);
    free(l->ctxpop);
}

static struct gmask_entry *classify(struct grammar_compiled *c, struct gpda *p, uint32_t pos)
{
    const struct grammar *g = c->g;
    const struct gtrie *t = &c->v->trie;
    uint32_t st0 = p->n_st, nodes0 = p->n_nodes;
    struct levels lv = {0};
    struct u32list acc = {0}, unc = {0};
    struct gmask_entry *e = calloc(1, sizeof *e);
    bool ok = false;
    if (!e || levels_alloc(&lv, (size_t)t->max_depth + 2) < 0) goto done;
    p->hyp_rule = hyp_rule_of(g, g->el_rule[pos]);
    uint32_t n_hyp = 0;
    if (p->hyp_rule != UINT32_MAX) n_hyp = g->ret_off[p->hyp_rule + 1] - g->ret_off[p->hyp_rule];
    uint64_t all = n_hyp == 0 ? 0 : n_hyp >= 63 ? ~1ull : ((1ull << (n_hyp + 1)) - 2);
    /* The root of the walk: the frame at pos over the unknown. */
    {
        /* A CTX frame made directly: the step table is not needed for one frame. */
        struct gnode ctx = {GPOS_CTX, g->el_rule[pos] << 6, 0};
        if (p->n_nodes + 1 > p->cap_nodes) {
            uint32_t nc = p->cap_nodes ? p->cap_nodes * 2 : 64;
            void *q = realloc(p->nodes, (size_t)nc * sizeof *p->nodes);
            if (!q) goto done;
            p->nodes = q;
            p->cap_nodes = nc;
        }
        p->nodes[p->n_nodes] = ctx;
        uint32_t ctx_id = p->n_nodes++;
        if (gpda_start(p, pos, ctx_id) != 1) goto done;
    }
    lv.off[0] = p->n_st - 1;
    lv.len[0] = 1;
    lv.nodes[0] = p->n_nodes;
    lv.unknown[0] = 0;
    lv.ctxpop[0] = 0;
    for (uint32_t i = 1; i < t->n;) {
        uint32_t d = t->depth[i];
        p->n_st = lv.off[d - 1] + lv.len[d - 1];
        p->n_nodes = lv.nodes[d - 1];
        int64_t k = gpda_advance(p, lv.off[d - 1], lv.len[d - 1], t->byte[i]);
        if (k < 0) goto done;
        uint64_t alive = 0, ctxpop = 0;
        bool tops = false;
        for (uint32_t j = p->n_st - (uint32_t)k; j < p->n_st; j++) {
            const struct gentry *en = &p->st[j];
            uint64_t bit = 1ull << gpda_entry_hyp(p, en);
            alive |= bit;
            if (en->pos == GPOS_CTXPOP) ctxpop |= bit;
            else if (en->pos != GPOS_ACCEPT) tops = true;
        }
        uint64_t unknown = lv.unknown[d - 1] | lv.ctxpop[d - 1];
        int cls; /* 1 accepted, 0 uncertain, -1 rejected */
        if ((alive & 1) || (all && (alive & all) == all)) cls = 1;
        else if (!alive && !unknown) cls = -1;
        else cls = 0;
        for (uint32_t j = t->tok_off[i]; j < t->tok_off[i + 1] && cls >= 0; j++) {
            if (cls == 1 ? list_push(&acc, (uint32_t)t->ids[j]) < 0 : list_push(&unc, i) < 0) goto done;
            if (cls == 0) break; /* the node stands for all its tokens */
        }
        uint64_t child_unknown = unknown | ctxpop;
        if (!tops) {
            /* Nothing can take another byte: the subtree is rejected, or uncertain where the
             * unknown context might go on. */
            if (child_unknown) {
                for (uint32_t j = i + 1; j < t->end[i]; j++)
                    if (t->tok_off[j] < t->tok_off[j + 1] && list_push(&unc, j) < 0) goto done;
            }
            i = t->end[i];
            continue;
        }
        lv.off[d] = p->n_st - (uint32_t)k;
        lv.len[d] = (uint32_t)k;
        lv.nodes[d] = p->n_nodes;
        lv.unknown[d] = unknown;
        lv.ctxpop[d] = ctxpop;
        i++;
    }
    size_t words = grammar_vocab_mask_words(c->v);
    if (acc.n > words) {
        e->dense = true;
        e->acc = calloc(words, sizeof *e->acc);
        if (!e->acc) goto done;
        for (uint32_t j = 0; j < acc.n; j++) e->acc[acc.v[j] >> 5] |= 1u << (acc.v[j] & 31);
        e->n_acc = acc.n;
        free(acc.v);
    } else {
        e->acc = acc.v;
        e->n_acc = acc.n;
    }
    acc.v = NULL;
    e->unc = unc.v;
    e->n_unc = unc.n;
    unc.v = NULL;
    ok = true;
done:
    p->n_st = st0;
    p->n_nodes = nodes0;
    p->hyp_rule = UINT32_MAX;
    p->oom = false;
    levels_free(&lv);
    free(acc.v);
    free(unc.v);
    if (!ok) {
        gram_mask_entry_free(e);
        return NULL;
    }
    return e;
}

const struct gmask_entry *gram_mask_entry(struct grammar_compiled *c, struct gpda *p, uint32_t pos)
{
    struct gmask_entry *e = atomic_load_explicit(&c->entries[pos], memory_order_acquire);
    if (e) return e;
    pthread_mutex_lock(&c->lock);
    e = atomic_load_explicit(&c->entries[pos], memory_order_relaxed);
    if (!e) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        e = classify(c, p, pos);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (e) {
            atomic_store_explicit(&c->entries[pos], e, memory_order_release);
            atomic_fetch_add(&c->n_classified, 1);
            atomic_fetch_add(&c->classify_ns,
                             (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec)));
        }
    }
    pthread_mutex_unlock(&c->lock);
    return e;
}

int gram_walk_exact(struct gpda *p, const struct gtrie *t, const char *pool, uint32_t from, uint32_t n,
                    uint32_t *mask)
{
    (void)pool;
    uint32_t st0 = p->n_st, nodes0 = p->n_nodes;
    struct levels lv = {0};
    int rc = -1;
    if (levels_alloc(&lv, (size_t)t->max_depth + 2) < 0) goto done;
    lv.off[0] = from;
    lv.len[0] = n;
    lv.nodes[0] = p->n_nodes;
    for (uint32_t i = 1; i < t->n;) {
        uint32_t d = t->depth[i];
        uint32_t base = d == 1 ? st0 : lv.off[d - 1] + lv.len[d - 1];
        p->n_st = base;
        p->n_nodes = lv.nodes[d - 1];
        int64_t k = gpda_advance(p, lv.off[d - 1], lv.len[d - 1], t->byte[i]);
        if (k < 0) goto done;
        if (k == 0) {
            i = t->end[i];
            continue;
        }
        for (uint32_t j = t->tok_off[i]; j < t->tok_off[i + 1]; j++) mask[t->ids[j] >> 5] |= 1u << (t->ids[j] & 31);
        lv.off[d] = p->n_st - (uint32_t)k;
        lv.len[d] = (uint32_t)k;
        lv.nodes[d] = p->n_nodes;
        i++;
    }
    rc = 0;
done:
    p->n_st = st0;
    p->n_nodes = nodes0;
    p->oom = false;
    levels_free(&lv);
    return rc;
}
