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
 * shared by several properties and go on into what follows it.
 *
 * Speed. These walks have no real stacks under them, so their states are small and repeat:
 * each compiled grammar keeps a memo (struct gmemo) of the states met, interned as sorted
 * entry lists over frames made once (the automaton's persistent mode), and of the transitions
 * between them, shared by all its positions. A walk is then a table lookup per trie node,
 * and a subtree is taken whole when every byte in it leads from the node's state back to
 * that state (inside a string: most tokens). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/grammar/grammar_internal.h"

/* Past these, the memo starts over (before a classification, never during one). */
#define MEMO_MAX_NODES (1u << 22)
#define MEMO_MAX_STATES (1u << 15) /* 1 KiB of transitions each */
/* Subtrees smaller than this are walked, not checked for a loop. */
#define BULK_MIN 8

struct gmstate {
    uint32_t off, len;        /* entries in the memo's pool */
    uint64_t alive, ctxpop;   /* hypotheses with an entry / with a CTXPOP entry */
    bool tops;                /* some entry can take another byte */
    struct gset known, loop;  /* bytes whose transition is known, and those that lead back here */
    int32_t *next;            /* the state after each byte (known ones), made on first use */
};

struct gmemo {
    struct gpda p;
    struct gentry *pool;
    uint32_t n_pool, cap_pool;
    struct gmstate *st;
    uint32_t n_st, cap_st;
    uint32_t *st_ht, st_mask; /* state + 1 by content */
    uint32_t n_trans;
};

struct u32list {
    uint32_t *v;
    uint32_t n, cap;
};

static int list_append(struct u32list *l, const int32_t *v, uint32_t n)
{
    if (gram_grow((void **)&l->v, &l->cap, (uint64_t)l->n + n, sizeof *l->v, 64) < 0) return -1;
    memcpy(l->v + l->n, v, (size_t)n * sizeof *v);
    l->n += n;
    return 0;
}

void gram_mask_entry_free(struct gmask_entry *e)
{
    if (!e) return;
    free(e->acc);
    free(e->unc);
    free(e);
}

/* ---- the memo --------------------------------------------------------------------------------- */
void gram_memo_free(struct gmemo *m)
{
    if (!m) return;
    gpda_free(&m->p);
    for (uint32_t i = 0; i < m->n_st; i++) free(m->st[i].next);
    free(m->pool);
    free(m->st);
    free(m->st_ht);
    free(m);
}

static struct gmemo *memo_new(const struct grammar *g)
{
    struct gmemo *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (gpda_init(&m->p, g) < 0) goto fail;
    m->p.persist = true;
    m->st_mask = 1023;
    m->st_ht = calloc(m->st_mask + 1, sizeof *m->st_ht);
    if (!m->st_ht) goto fail;
    return m;
fail:
    gram_memo_free(m);
    return NULL;
}

static uint64_t entries_hash(const struct gentry *e, uint32_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (uint32_t i = 0; i < n; i++) {
        h ^= (uint64_t)e[i].pos << 32 | e[i].parent;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    return h;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct gentry *x = a, *y = b;
    if (x->pos != y->pos) return x->pos < y->pos ? -1 : 1;
    return (x->parent > y->parent) - (x->parent < y->parent);
}

/* The state of the entries p.st[from .. from + n), interned: its id, or -1. */
static int64_t memo_intern(struct gmemo *m, uint32_t from, uint32_t n)
{
    struct gentry *e = m->p.st + from;
    if (n > 1) qsort(e, n, sizeof *e, cmp_entry);
    uint64_t h = entries_hash(e, n);
    uint32_t i = (uint32_t)h & m->st_mask;
    for (; m->st_ht[i]; i = (i + 1) & m->st_mask) {
        const struct gmstate *s = &m->st[m->st_ht[i] - 1];
        if (s->len == n && memcmp(m->pool + s->off, e, n * sizeof *e) == 0) return m->st_ht[i] - 1;
    }
    if (gram_grow((void **)&m->st, &m->cap_st, (uint64_t)m->n_st + 1, sizeof *m->st, 256) < 0 ||
        gram_grow((void **)&m->pool, &m->cap_pool, (uint64_t)m->n_pool + n, sizeof *m->pool, 1024) < 0)
        return -1;
    struct gmstate *s = &m->st[m->n_st];
    memset(s, 0, sizeof *s);
    s->off = m->n_pool;
    s->len = n;
    if (n) memcpy(m->pool + m->n_pool, e, n * sizeof *e);
    m->n_pool += n;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t bit = 1ull << gpda_entry_hyp(&m->p, &e[k]);
        s->alive |= bit;
        if (e[k].pos == GPOS_CTXPOP) s->ctxpop |= bit;
        else if (e[k].pos != GPOS_ACCEPT) s->tops = true;
    }
    uint32_t id = m->n_st++;
    m->st_ht[i] = id + 1;
    if (m->n_st * 2 > m->st_mask) { /* keep the table at most half full */
        uint32_t size = (m->st_mask + 1) * 2;
        uint32_t *t = calloc(size, sizeof *t);
        if (!t) return -1;
        for (uint32_t k = 0; k < m->n_st; k++) {
            const struct gmstate *x = &m->st[k];
            uint32_t j = (uint32_t)entries_hash(m->pool + x->off, x->len) & (size - 1);
            while (t[j]) j = (j + 1) & (size - 1);
            t[j] = k + 1;
        }
        free(m->st_ht);
        m->st_ht = t;
        m->st_mask = size - 1;
    }
    return id;
}

/* The state after byte b from state s: a lookup, or one step of the automaton. */
static int64_t memo_next(struct gmemo *m, uint32_t s, uint8_t b)
{
    if (m->st[s].next && m->st[s].next[b] >= 0) return m->st[s].next[b];
    if (!m->st[s].next) {
        int32_t *t = malloc(256 * sizeof *t);
        if (!t) return -1;
        memset(t, 0xFF, 256 * sizeof *t);
        m->st[s].next = t;
    }
    struct gpda *p = &m->p;
    uint32_t len = m->st[s].len;
    if (gram_grow((void **)&p->st, &p->cap_st, len, sizeof *p->st, 64) < 0) return -1;
    if (len) memcpy(p->st, m->pool + m->st[s].off, (size_t)len * sizeof *p->st);
    p->n_st = len;
    int64_t k = gpda_advance(p, 0, len, b);
    if (k < 0) {
        p->oom = false;
        return -1;
    }
    int64_t next = memo_intern(m, len, (uint32_t)k);
    if (next < 0) return -1;
    struct gmstate *st = &m->st[s];
    st->next[b] = (int32_t)next;
    st->known.w[b >> 6] |= 1ull << (b & 63);
    if (next == s) st->loop.w[b >> 6] |= 1ull << (b & 63);
    m->n_trans++;
    return next;
}

/* Whether every byte of set leads from s back to s. */
static int memo_loops(struct gmemo *m, uint32_t s, const struct gset *set)
{
    for (int w = 0; w < 4; w++)
        if (set->w[w] & m->st[s].known.w[w] & ~m->st[s].loop.w[w]) return 0;
    for (int w = 0; w < 4; w++) {
        uint64_t todo = set->w[w] & ~m->st[s].known.w[w];
        while (todo) {
            int b = w * 64 + __builtin_ctzll(todo);
            todo &= todo - 1;
            int64_t n = memo_next(m, s, (uint8_t)b);
            if (n < 0) return -1;
            if (n != s) return 0;
        }
    }
    return 1;
}

/* The state of one frame at pos over the unknown stack of its class. */
static int64_t memo_root(struct gmemo *m, uint32_t pos)
{
    const struct grammar *g = m->p.g;
    uint32_t ctx = gpda_ctx_node(&m->p, g->rule_class[g->el_rule[pos]], 0);
    if (m->p.oom) {
        m->p.oom = false;
        return -1;
    }
    if (gram_grow((void **)&m->p.st, &m->p.cap_st, 1, sizeof *m->p.st, 64) < 0) return -1;
    m->p.st[0] = (struct gentry){pos, ctx};
    m->p.n_st = 1;
    return memo_intern(m, 0, 1);
}

/* ---- classification ---------------------------------------------------------------------------- */
/* Hypotheses of a walk from pos: the sites of the first class on its chain of single return
 * sites that has several (0 when the chain ends, or meets a class with too many). */
static uint32_t hypotheses_of(const struct grammar *g, uint32_t pos)
{
    uint32_t c = g->rule_class[g->el_rule[pos]];
    for (uint32_t steps = 0; steps <= g->n_classes; steps++) {
        uint32_t n = g->ret_off[c + 1] - g->ret_off[c];
        if (g->ret_many[c]) return 0;
        if (n != 1) return n;
        uint32_t q = g->ret[g->ret_off[c]];
        if (q == GRAM_RET_END) return 0;
        c = g->rule_class[g->el_rule[q]];
    }
    return 0;
}

/* 1 accepted, 0 uncertain, -1 rejected (see the top of the file). */
static inline int class_of(uint64_t alive, uint64_t unknown, uint64_t all)
{
    if ((alive & 1) || (all && (alive & all) == all)) return 1;
    if (!alive && !unknown) return -1;
    return 0;
}

struct unc_list {
    struct gunc *v;
    uint32_t n, cap;
};

static int unc_push(struct unc_list *l, uint32_t node, uint64_t alive, uint64_t unknown)
{
    if (gram_grow((void **)&l->v, &l->cap, (uint64_t)l->n + 1, sizeof *l->v, 64) < 0) return -1;
    l->v[l->n++] = (struct gunc){node, alive, unknown};
    return 0;
}

/* The tokens below node i, all of one class. */
static int add_subtree(const struct gtrie *t, uint32_t i, int cls, uint64_t alive, uint64_t unknown,
                       struct u32list *acc, struct unc_list *unc)
{
    if (cls == 1) return list_append(acc, t->ids + t->tok_off[i + 1], t->tok_off[t->end[i]] - t->tok_off[i + 1]);
    if (cls == 0)
        for (uint32_t j = i + 1; j < t->end[i]; j++)
            if (t->tok_off[j] < t->tok_off[j + 1] && unc_push(unc, j, alive, unknown) < 0) return -1;
    return 0;
}

uint32_t gram_hypothesis(const struct gpda *p, uint32_t pos, uint32_t parent)
{
    const struct grammar *g = p->g;
    uint32_t c = g->rule_class[g->el_rule[pos]], f = parent;
    for (uint32_t steps = 0; steps <= g->n_classes; steps++) {
        uint32_t lo = g->ret_off[c], n = g->ret_off[c + 1] - lo;
        if (g->ret_many[c] || n == 0) return 0;
        uint32_t at = p->nodes[f].pos == GPOS_BOTTOM ? GRAM_RET_END : p->nodes[f].pos;
        if (n == 1) {
            /* The frame under is at the one return site; the next class is its rule's. */
            if (at != g->ret[lo] || at == GRAM_RET_END) return 0;
            c = g->rule_class[g->el_rule[at]];
            f = p->nodes[f].parent;
            continue;
        }
        uint32_t a = 0, b = n; /* the sites are sorted */
        while (a < b) {
            uint32_t mid = (a + b) / 2;
            if (g->ret[lo + mid] < at) a = mid + 1;
            else b = mid;
        }
        return a < n && g->ret[lo + a] == at ? a + 1 : 0;
    }
    return 0;
}

static struct gmask_entry *classify(struct grammar_compiled *c, uint32_t pos)
{
    const struct grammar *g = c->g;
    const struct gtrie *t = &c->v->trie;
    struct u32list acc = {0};
    struct unc_list unc = {0};
    size_t depth = (size_t)t->max_depth + 2;
    uint32_t *lv_state = malloc(depth * sizeof *lv_state);
    uint64_t *lv_unknown = malloc(depth * sizeof *lv_unknown);
    struct gmask_entry *e = calloc(1, sizeof *e);
    bool ok = false;
    if (!lv_state || !lv_unknown || !e) goto done;
    if (c->memo && (c->memo->p.n_nodes > MEMO_MAX_NODES || c->memo->n_st > MEMO_MAX_STATES)) {
        gram_memo_free(c->memo);
        c->memo = NULL;
    }
    if (!c->memo && !(c->memo = memo_new(g))) goto done;
    struct gmemo *m = c->memo;
    uint32_t n_hyp = hypotheses_of(g, pos);
    uint64_t all = n_hyp == 0 ? 0 : n_hyp >= 63 ? ~1ull : ((1ull << (n_hyp + 1)) - 2);
    int64_t root = memo_root(m, pos);
    if (root < 0) goto done;
    lv_state[0] = (uint32_t)root;
    lv_unknown[0] = 0;
    for (uint32_t i = 1; i < t->n;) {
        uint32_t d = t->depth[i];
        uint32_t ps = lv_state[d - 1];
        uint64_t unknown = lv_unknown[d - 1] | m->st[ps].ctxpop;
        int64_t s = memo_next(m, ps, t->byte[i]);
        if (s < 0) goto done;
        const struct gmstate *st = &m->st[s];
        int cls = class_of(st->alive, unknown, all);
        if (t->tok_off[i] < t->tok_off[i + 1]) {
            if (cls == 1 && list_append(&acc, t->ids + t->tok_off[i], t->tok_off[i + 1] - t->tok_off[i]) < 0) goto done;
            if (cls == 0 && unc_push(&unc, i, st->alive, unknown) < 0) goto done;
        }
        uint64_t below = unknown | st->ctxpop;
        if (!st->tops) {
            /* Nothing can take another byte: the subtree is rejected, or uncertain where an
             * unknown context might go on. */
            if (below && add_subtree(t, i, 0, 0, below, &acc, &unc) < 0) goto done;
            i = t->end[i];
            continue;
        }
        if (t->end[i] - i > BULK_MIN) {
            int loops = memo_loops(m, (uint32_t)s, &t->sub[i]);
            if (loops < 0) goto done;
            if (loops) {
                /* Every node below has this state: one class for all their tokens. */
                if (add_subtree(t, i, class_of(m->st[s].alive, below, all), m->st[s].alive, below, &acc, &unc) < 0)
                    goto done;
                i = t->end[i];
                continue;
            }
        }
        lv_state[d] = (uint32_t)s;
        lv_unknown[d] = unknown;
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
    free(lv_state);
    free(lv_unknown);
    free(acc.v);
    free(unc.v);
    if (!ok) {
        gram_mask_entry_free(e);
        return NULL;
    }
    return e;
}

const struct gmask_entry *gram_mask_entry(struct grammar_compiled *c, uint32_t pos)
{
    struct gmask_entry *e = atomic_load_explicit(&c->entries[pos], memory_order_acquire);
    if (e) return e;
    pthread_mutex_lock(&c->lock);
    e = atomic_load_explicit(&c->entries[pos], memory_order_relaxed);
    if (!e) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        e = classify(c, pos);
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

/* ---- the exact walk ------------------------------------------------------------------------------ */
int gram_walk_exact(struct gpda *p, const struct gtrie *t, const char *pool, uint32_t from, uint32_t n,
                    uint32_t *mask)
{
    (void)pool;
    uint32_t st0 = p->n_st, nodes0 = p->n_nodes;
    size_t depth = (size_t)t->max_depth + 2;
    uint32_t *off = malloc(depth * sizeof *off), *len = malloc(depth * sizeof *len), *nodes = malloc(depth * sizeof *nodes);
    int rc = -1;
    if (!off || !len || !nodes) goto done;
    off[0] = from;
    len[0] = n;
    nodes[0] = p->n_nodes;
    for (uint32_t i = 1; i < t->n;) {
        uint32_t d = t->depth[i];
        p->n_st = d == 1 ? st0 : off[d - 1] + len[d - 1];
        p->n_nodes = nodes[d - 1];
        int64_t k = gpda_advance(p, off[d - 1], len[d - 1], t->byte[i]);
        if (k < 0) goto done;
        if (k == 0) {
            i = t->end[i];
            continue;
        }
        for (uint32_t j = t->tok_off[i]; j < t->tok_off[i + 1]; j++) mask[t->ids[j] >> 5] |= 1u << (t->ids[j] & 31);
        off[d] = p->n_st - (uint32_t)k;
        len[d] = (uint32_t)k;
        nodes[d] = p->n_nodes;
        i++;
    }
    rc = 0;
done:
    p->n_st = st0;
    p->n_nodes = nodes0;
    p->oom = false;
    free(off);
    free(len);
    free(nodes);
    return rc;
}
