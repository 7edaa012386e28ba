/* The pushdown automaton over bytes. A state is a set of stacks, each entry the top frame,
 * waiting at a BYTES position, over its parent frame. Advancing by a byte moves each top whose
 * byte set has the byte one element on and normalizes it: an END pops to the parent frame
 * (which resumes where it returned to), a rule reference pushes a return frame and expands
 * the rule's alternatives, except in tail position, where the alternatives replace the frame.
 *
 * Frames live in one arena and are never changed, so stacks share their bottoms, and a walk
 * that backs up truncates the arena. Within one step, frames and normalizations are keyed by
 * (position, parent) in a table, so a state holds no duplicate stack and converging paths
 * share their frames.
 *
 * The classification of positions (gram_mask.c) starts a stack over a CTX frame that stands
 * for the unknown rest of the stack; popping into it is handled in ctx_pop below. */
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

#define NODE_FLAG 0x80000000u
/* Pops follow the stack down; deeper than this, a state is refused as if out of memory. */
#define MAX_RECURSION 20000

static int grow(void **ptr, uint32_t *cap, uint64_t need, size_t elsize)
{
    return gram_grow(ptr, cap, need, elsize, 64);
}

int gpda_init(struct gpda *p, const struct grammar *g)
{
    memset(p, 0, sizeof *p);
    p->g = g;
    p->ht = calloc(1024, sizeof *p->ht);
    if (!p->ht) return -1;
    p->ht_mask = 1023;
    return gpda_reset(p);
}

void gpda_free(struct gpda *p)
{
    free(p->pn);
    free(p->nodes);
    free(p->st);
    free(p->ht);
    memset(p, 0, sizeof *p);
}

static uint32_t new_node(struct gpda *p, uint32_t pos, uint32_t parent, uint32_t hyp)
{
    if (grow((void **)&p->nodes, &p->cap_nodes, (uint64_t)p->n_nodes + 1, sizeof *p->nodes) < 0) {
        p->oom = true;
        return 0;
    }
    p->nodes[p->n_nodes] = (struct gnode){pos, parent, hyp};
    return p->n_nodes++;
}

int gpda_reset(struct gpda *p)
{
    p->n_nodes = 0;
    p->n_st = 0;
    p->oom = false;
    new_node(p, GPOS_BOTTOM, 0, 0);
    return p->oom ? -1 : 0;
}

static void step_begin(struct gpda *p)
{
    if (++p->gen == 0) {
        memset(p->ht, 0, ((size_t)p->ht_mask + 1) * sizeof *p->ht);
        p->gen = 1;
    }
    p->ht_used = 0;
}

static inline uint32_t slot_of(uint64_t key, uint32_t mask)
{
    key ^= key >> 29;
    key *= 0xBF58476D1CE4E5B9ull;
    key ^= key >> 32;
    return (uint32_t)key & mask;
}

static int ht_grow(struct gpda *p)
{
    uint32_t size = (p->ht_mask + 1) * 2;
    struct gpda_slot *n = calloc(size, sizeof *n);
    if (!n) return -1;
    for (uint32_t i = 0; i <= p->ht_mask; i++) {
        if (p->ht[i].gen != p->gen) continue;
        uint32_t j = slot_of(p->ht[i].key, size - 1);
        while (n[j].gen == p->gen) j = (j + 1) & (size - 1);
        n[j] = p->ht[i];
    }
    free(p->ht);
    p->ht = n;
    p->ht_mask = size - 1;
    return 0;
}

/* The slot of key: found (gen current) or where to put it. NULL when out of memory. */
static struct gpda_slot *ht_find(struct gpda *p, uint64_t key, bool *found)
{
    if ((p->ht_used + 1) * 2 > p->ht_mask + 1 && ht_grow(p) < 0) {
        p->oom = true;
        return NULL;
    }
    uint32_t i = slot_of(key, p->ht_mask);
    while (p->ht[i].gen == p->gen) {
        if (p->ht[i].key == key) {
            *found = true;
            return &p->ht[i];
        }
        i = (i + 1) & p->ht_mask;
    }
    *found = false;
    return &p->ht[i];
}

/* True the first time (pos, parent) is normalized this step. */
static bool visit(struct gpda *p, uint32_t pos, uint32_t parent)
{
    bool found;
    struct gpda_slot *s = ht_find(p, (uint64_t)pos << 32 | parent, &found);
    if (!s || found) return false;
    s->key = (uint64_t)pos << 32 | parent;
    s->gen = p->gen;
    s->val = 0;
    p->ht_used++;
    return true;
}

/* Persistent mode: frames are made once for the automaton's life, in a table of their own. */
static uint32_t node_get_persistent(struct gpda *p, uint64_t key, uint32_t pos, uint32_t parent, uint32_t hyp)
{
    if ((p->pn_used + 1) * 2 > p->pn_mask + 1) {
        uint32_t size = p->pn_mask ? (p->pn_mask + 1) * 2 : 1024;
        struct gpda_pslot *n = calloc(size, sizeof *n);
        if (!n) {
            p->oom = true;
            return 0;
        }
        for (uint32_t i = 0; p->pn && i <= p->pn_mask; i++) {
            if (!p->pn[i].val) continue;
            uint32_t j = slot_of(p->pn[i].key, size - 1);
            while (n[j].val) j = (j + 1) & (size - 1);
            n[j] = p->pn[i];
        }
        free(p->pn);
        p->pn = n;
        p->pn_mask = size - 1;
    }
    uint32_t i = slot_of(key, p->pn_mask);
    for (; p->pn[i].val; i = (i + 1) & p->pn_mask)
        if (p->pn[i].key == key) return p->pn[i].val - 1;
    uint32_t nd = new_node(p, pos, parent, hyp);
    if (p->oom) return 0;
    p->pn[i].key = key;
    p->pn[i].val = nd + 1;
    p->pn_used++;
    return nd;
}

/* The frame (pos, parent), made once per step (once for good in persistent mode). */
static uint32_t node_get(struct gpda *p, uint32_t pos, uint32_t parent, uint32_t hyp)
{
    bool found;
    uint64_t key = (uint64_t)(pos | NODE_FLAG) << 32 | parent;
    if (p->persist) return node_get_persistent(p, key, pos, parent, hyp);
    struct gpda_slot *s = ht_find(p, key, &found);
    if (!s) return 0;
    if (found) return s->val;
    uint32_t n = new_node(p, pos, parent, hyp);
    if (p->oom) return 0;
    /* new_node does not touch the table, so s is still the slot. */
    s->key = key;
    s->gen = p->gen;
    s->val = n;
    p->ht_used++;
    return n;
}

uint32_t gpda_ctx_node(struct gpda *p, uint32_t cls, uint32_t hyp)
{
    return node_get(p, GPOS_CTX, cls << 6 | hyp, hyp);
}

static void emit(struct gpda *p, uint32_t pos, uint32_t parent)
{
    if (grow((void **)&p->st, &p->cap_st, (uint64_t)p->n_st + 1, sizeof *p->st) < 0) {
        p->oom = true;
        return;
    }
    p->st[p->n_st++] = (struct gentry){pos, parent};
}

static void norm(struct gpda *p, uint32_t q, uint32_t par, int depth);

/* Popped into a classification's unknown context (return class cls, hypothesis h): see
 * gram_mask.c. */
static void ctx_pop(struct gpda *p, uint32_t ctx, uint32_t cls, uint32_t h, int depth)
{
    const struct grammar *g = p->g;
    uint32_t lo = g->ret_off[cls], n = g->ret_off[cls + 1] - lo;
    bool many = g->ret_many[cls];
    if (!many && n == 1) {
        /* One place to return to: the context is known that far. */
        uint32_t q = g->ret[lo];
        if (q == GRAM_RET_END) {
            if (visit(p, GPOS_ACCEPT, ctx)) emit(p, GPOS_ACCEPT, ctx);
        } else {
            uint32_t c = gpda_ctx_node(p, g->rule_class[g->el_rule[q]], h);
            if (!p->oom) norm(p, q, c, depth + 1);
        }
        return;
    }
    if (!many && n == 0) return; /* never returns: no stack can be here */
    if (h == 0 && !many) {
        /* The first place with several: each return site is a hypothesis of its own. (The
         * exact part of a walk is one chain of single sites, so this is one class per walk.) */
        for (uint32_t i = 0; i < n && !p->oom; i++) {
            uint32_t q = g->ret[lo + i];
            if (q == GRAM_RET_END) {
                uint32_t c = gpda_ctx_node(p, cls, i + 1);
                if (!p->oom && visit(p, GPOS_ACCEPT, c)) emit(p, GPOS_ACCEPT, c);
            } else {
                uint32_t c = gpda_ctx_node(p, g->rule_class[g->el_rule[q]], i + 1);
                if (!p->oom) norm(p, q, c, depth + 1);
            }
        }
        return;
    }
    if (visit(p, GPOS_CTXPOP, ctx)) emit(p, GPOS_CTXPOP, ctx);
}

static void pop(struct gpda *p, uint32_t par, int depth)
{
    struct gnode nd = p->nodes[par];
    if (nd.pos == GPOS_BOTTOM) {
        if (visit(p, GPOS_ACCEPT, par)) emit(p, GPOS_ACCEPT, par);
    } else if (nd.pos == GPOS_CTX) {
        if (visit(p, GPOS_CTX, par)) ctx_pop(p, par, nd.parent >> 6, nd.hyp, depth);
    } else {
        norm(p, nd.pos, nd.parent, depth + 1);
    }
}

static void norm(struct gpda *p, uint32_t q, uint32_t par, int depth)
{
    if (p->oom) return;
    if (depth > MAX_RECURSION) {
        p->oom = true;
        return;
    }
    if (!visit(p, q, par)) return;
    const struct grammar *g = p->g;
    uint32_t e = g->el[q];
    switch (GEL_KIND(e)) {
    case GEL_BYTES:
        emit(p, q, par);
        return;
    case GEL_END:
        pop(p, par, depth);
        return;
    default: {
        uint32_t r = GEL_VAL(e), np = par;
        if (GEL_KIND(g->el[q + 1]) != GEL_END) {
            np = node_get(p, q + 1, par, p->nodes[par].hyp);
            if (p->oom) return;
        }
        for (uint32_t k = g->alt_off[r]; k < g->alt_off[r + 1] && !p->oom; k++) norm(p, g->alt_pos[k], np, depth + 1);
        return;
    }
    }
}

int64_t gpda_initial(struct gpda *p)
{
    step_begin(p);
    uint32_t start = p->n_st;
    const struct grammar *g = p->g;
    for (uint32_t k = g->alt_off[g->root]; k < g->alt_off[g->root + 1]; k++) norm(p, g->alt_pos[k], GNODE_BOTTOM, 0);
    return p->oom ? -1 : (int64_t)(p->n_st - start);
}

int64_t gpda_start(struct gpda *p, uint32_t pos, uint32_t parent)
{
    step_begin(p);
    uint32_t start = p->n_st;
    norm(p, pos, parent, 0);
    return p->oom ? -1 : (int64_t)(p->n_st - start);
}

int64_t gpda_advance(struct gpda *p, uint32_t from, uint32_t n, uint8_t byte)
{
    step_begin(p);
    uint32_t start = p->n_st;
    const struct grammar *g = p->g;
    for (uint32_t i = 0; i < n && !p->oom; i++) {
        struct gentry e = p->st[from + i];
        if (e.pos >= GPOS_BOTTOM) continue;
        if (!gset_has(&g->sets[GEL_VAL(g->el[e.pos])], byte)) continue;
        norm(p, e.pos + 1, e.parent, 0);
    }
    return p->oom ? -1 : (int64_t)(p->n_st - start);
}

int gpda_compact(struct gpda *p, uint32_t from, uint32_t n)
{
    uint32_t *map = malloc((size_t)p->n_nodes * sizeof *map);
    if (!map) return -1;
    const uint32_t DEAD = UINT32_MAX, LIVE = UINT32_MAX - 1;
    for (uint32_t i = 0; i < p->n_nodes; i++) map[i] = DEAD;
    map[GNODE_BOTTOM] = LIVE;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t x = p->st[from + i].parent; map[x] == DEAD; x = p->nodes[x].parent) map[x] = LIVE;
    }
    /* A parent is always older than its children: renumbering in order keeps that. */
    uint32_t k = 0;
    for (uint32_t i = 0; i < p->n_nodes; i++) {
        if (map[i] == DEAD) continue;
        struct gnode nd = p->nodes[i];
        if (i != GNODE_BOTTOM) nd.parent = map[nd.parent];
        map[i] = k;
        p->nodes[k++] = nd;
    }
    p->n_nodes = k;
    for (uint32_t i = 0; i < n; i++) p->st[from + i].parent = map[p->st[from + i].parent];
    free(map);
    return 0;
}
