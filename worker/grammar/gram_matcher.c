/* The per-sequence matcher: the automaton's current state, advanced token by token, and the
 * mask of the next step: the accepted sets of the state's stack tops (gram_mask.c), plus
 * their uncertain tokens checked against the real stacks. The uncertain tokens come in trie
 * order, so each is advanced only past the prefix it shares with the one before. */
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

struct grammar_matcher {
    struct grammar_compiled *c;
    struct gpda p;
    uint32_t n_state;   /* the state is p.st[0 .. n_state) */
    bool started;       /* a token (or bytes) was accepted: tokens read in their middle form */
    bool stopped;       /* a stop token was accepted */
    uint32_t gc_at;
    uint32_t *lv_off, *lv_len, *lv_nodes;
};

int grammar_matcher_new(struct grammar_matcher **out, struct grammar_compiled *c)
{
    *out = NULL;
    struct grammar_matcher *m = calloc(1, sizeof *m);
    if (!m) return -1;
    m->c = c;
    grammar_compiled_ref(c);
    size_t depth = (size_t)c->v->trie.max_depth;
    if (c->v->first_trie.max_depth > depth) depth = c->v->first_trie.max_depth;
    m->lv_off = malloc((depth + 2) * sizeof *m->lv_off);
    m->lv_len = malloc((depth + 2) * sizeof *m->lv_len);
    m->lv_nodes = malloc((depth + 2) * sizeof *m->lv_nodes);
    if (!m->lv_off || !m->lv_len || !m->lv_nodes || gpda_init(&m->p, c->g) < 0) goto fail;
    int64_t k = gpda_initial(&m->p);
    if (k < 0) goto fail;
    m->n_state = (uint32_t)k;
    m->gc_at = 4096;
    *out = m;
    return 0;
fail:
    grammar_matcher_free(m);
    return -1;
}

void grammar_matcher_free(struct grammar_matcher *m)
{
    if (!m) return;
    gpda_free(&m->p);
    free(m->lv_off);
    free(m->lv_len);
    free(m->lv_nodes);
    grammar_compiled_unref(m->c);
    free(m);
}

bool grammar_matcher_can_end(const struct grammar_matcher *m)
{
    if (m->stopped) return true;
    for (uint32_t i = 0; i < m->n_state; i++)
        if (m->p.st[i].pos == GPOS_ACCEPT) return true;
    return false;
}

bool grammar_matcher_is_done(const struct grammar_matcher *m)
{
    if (m->stopped) return true;
    for (uint32_t i = 0; i < m->n_state; i++)
        if (m->p.st[i].pos < GPOS_BOTTOM) return false;
    return true;
}

static int advance_bytes(struct grammar_matcher *m, const char *s, size_t n)
{
    struct gpda *p = &m->p;
    uint32_t nodes0 = p->n_nodes, cur = 0, len = m->n_state;
    for (size_t i = 0; i < n; i++) {
        p->n_st = cur == 0 ? m->n_state : cur + len;
        int64_t k = gpda_advance(p, cur, len, (uint8_t)s[i]);
        if (k <= 0) {
            p->n_st = m->n_state;
            p->n_nodes = nodes0;
            p->oom = false;
            return -1;
        }
        /* Keep the new state right after the saved one. */
        memmove(p->st + m->n_state, p->st + p->n_st - (uint32_t)k, (size_t)k * sizeof *p->st);
        cur = m->n_state;
        len = (uint32_t)k;
        p->n_st = cur + len;
    }
    if (n) memmove(p->st, p->st + cur, (size_t)len * sizeof *p->st);
    m->n_state = len;
    p->n_st = len;
    if (p->n_nodes > m->gc_at) {
        if (gpda_compact(p, 0, m->n_state) == 0) m->gc_at = p->n_nodes * 2 > 4096 ? p->n_nodes * 2 : 4096;
    }
    return 0;
}

int grammar_matcher_accept_bytes(struct grammar_matcher *m, const char *s, size_t n)
{
    if (m->stopped) return -1;
    if (advance_bytes(m, s, n) < 0) return -1;
    if (n) m->started = true;
    return 0;
}

int grammar_matcher_accept_token(struct grammar_matcher *m, int32_t id)
{
    const struct grammar_vocab *v = m->c->v;
    if (m->stopped || id < 0 || id >= v->n_vocab) return -1;
    if (grammar_vocab_is_stop(v, id)) {
        if (!grammar_matcher_can_end(m)) return -1;
        m->stopped = true;
        return 0;
    }
    bool first = !m->started && v->first_off;
    uint32_t len = first ? v->first_len[id] : v->len[id];
    const char *s = v->pool + (first ? v->first_off[id] : v->off[id]);
    if (len == 0) return -1;
    if (advance_bytes(m, s, len) < 0) return -1;
    m->started = true;
    return 0;
}

static void set_stops(const struct grammar_matcher *m, uint32_t *mask)
{
    const struct grammar_vocab *v = m->c->v;
    if (!grammar_matcher_can_end(m)) return;
    for (size_t i = 0; i < v->n_stop; i++) mask[v->stop_ids[i] >> 5] |= 1u << (v->stop_ids[i] & 31);
}

/* The uncertain tokens of entry e's position, each checked from e's own stack. */
static int check_uncertain(struct grammar_matcher *m, struct gentry e, const struct gmask_entry *E, uint32_t *mask)
{
    struct gpda *p = &m->p;
    const struct gtrie *t = &m->c->v->trie;
    const char *pool = m->c->v->pool;
    uint32_t st0 = p->n_st, nodes0 = p->n_nodes;
    int rc = -1;
    if (gram_grow((void **)&p->st, &p->cap_st, (uint64_t)p->n_st + 1, sizeof *p->st, 64) < 0) return -1;
    p->st[p->n_st++] = e;
    m->lv_off[0] = st0;
    m->lv_len[0] = 1;
    m->lv_nodes[0] = p->n_nodes;
    uint32_t D = 0, dead_at = UINT32_MAX, prev_len = 0;
    const char *prev = NULL;
    /* Which return site the stack is at settles most uncertain tokens without a walk. */
    uint32_t h = gram_hypothesis(p, e.pos, e.parent);
    uint64_t hbit = h ? 1ull << h : 0;
    for (uint32_t k = 0; k < E->n_unc; k++) {
        uint32_t u = E->unc[k].node;
        if (E->unc[k].alive & hbit) {
            for (uint32_t j = t->tok_off[u]; j < t->tok_off[u + 1]; j++) mask[t->ids[j] >> 5] |= 1u << (t->ids[j] & 31);
            continue;
        }
        if (hbit && !(E->unc[k].unknown & (hbit | 1))) continue;
        bool need = false;
        for (uint32_t j = t->tok_off[u]; j < t->tok_off[u + 1] && !need; j++)
            need = !(mask[t->ids[j] >> 5] >> (t->ids[j] & 31) & 1);
        if (!need) continue;
        uint32_t L = t->depth[u], l = 0;
        const char *path = pool + t->path[u];
        while (l < L && l < prev_len && path[l] == prev[l]) l++;
        prev = path;
        prev_len = L;
        if (l >= dead_at) continue; /* its prefix already died */
        dead_at = UINT32_MAX;
        if (D > l) D = l;
        bool alive = true;
        while (D < L) {
            uint32_t j = D + 1;
            p->n_st = m->lv_off[D] + m->lv_len[D];
            p->n_nodes = m->lv_nodes[D];
            int64_t n = gpda_advance(p, m->lv_off[D], m->lv_len[D], (uint8_t)path[j - 1]);
            if (n < 0) goto done;
            if (n == 0) {
                dead_at = j;
                alive = false;
                break;
            }
            m->lv_off[j] = p->n_st - (uint32_t)n;
            m->lv_len[j] = (uint32_t)n;
            m->lv_nodes[j] = p->n_nodes;
            D = j;
        }
        if (!alive) continue;
        for (uint32_t j = t->tok_off[u]; j < t->tok_off[u + 1]; j++) mask[t->ids[j] >> 5] |= 1u << (t->ids[j] & 31);
    }
    rc = 0;
done:
    p->n_st = st0;
    p->n_nodes = nodes0;
    p->oom = false;
    return rc;
}

int grammar_matcher_fill_mask(struct grammar_matcher *m, uint32_t *mask, size_t n_words)
{
    const struct grammar_vocab *v = m->c->v;
    size_t words = grammar_vocab_mask_words(v);
    memset(mask, 0, n_words * sizeof *mask);
    if (n_words < words) return -1;
    if (m->stopped) return 0;
    struct gpda *p = &m->p;
    if (!m->started && v->first_off) {
        /* The first token reads differently: walk the trie of first forms (once per sequence). */
        if (gram_walk_exact(p, &v->first_trie, v->pool, 0, m->n_state, mask) < 0) goto fail;
        set_stops(m, mask);
        return 0;
    }
    for (uint32_t i = 0; i < m->n_state; i++) {
        uint32_t pos = p->st[i].pos;
        if (pos >= GPOS_BOTTOM) continue;
        bool seen = false;
        for (uint32_t j = 0; j < i && !seen; j++) seen = p->st[j].pos == pos;
        if (seen) continue;
        const struct gmask_entry *E = gram_mask_entry(m->c, pos);
        if (!E) goto fail;
        if (E->dense) {
            for (size_t w = 0; w < words; w++) mask[w] |= E->acc[w];
        } else {
            for (uint32_t j = 0; j < E->n_acc; j++) mask[E->acc[j] >> 5] |= 1u << (E->acc[j] & 31);
        }
    }
    for (uint32_t i = 0; i < m->n_state; i++) {
        struct gentry e = p->st[i];
        if (e.pos >= GPOS_BOTTOM) continue;
        const struct gmask_entry *E = gram_mask_entry(m->c, e.pos);
        if (!E) goto fail;
        if (E->n_unc && check_uncertain(m, e, E, mask) < 0) goto fail;
    }
    set_stops(m, mask);
    return 0;
fail:
    memset(mask, 0, n_words * sizeof *mask);
    return -1;
}

int grammar_matcher_fill_mask_slow(struct grammar_matcher *m, uint32_t *mask, size_t n_words)
{
    const struct grammar_vocab *v = m->c->v;
    memset(mask, 0, n_words * sizeof *mask);
    if (n_words < grammar_vocab_mask_words(v)) return -1;
    if (m->stopped) return 0;
    const struct gtrie *t = !m->started && v->first_off ? &v->first_trie : &v->trie;
    if (gram_walk_exact(&m->p, t, v->pool, 0, m->n_state, mask) < 0) {
        memset(mask, 0, n_words * sizeof *mask);
        return -1;
    }
    set_stops(m, mask);
    return 0;
}
