/* Private parts of the grammar engine: the builder the front ends write into, the finished
 * byte-level grammar, the vocabulary trie, and the pushdown automaton the matcher and the
 * mask classification share. grammar.h has the design. */
#ifndef SLUICE_WORKER_GRAMMAR_INTERNAL_H
#define SLUICE_WORKER_GRAMMAR_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"
#include "common/strbuf.h"
#include "worker/grammar/grammar.h"

/* ---- elements ------------------------------------------------------------------------------ */
/* An element is one uint32: its kind in the top two bits, a byte set or rule index below. */
enum { GEL_BYTES = 0, GEL_RULE = 1, GEL_END = 2 };
#define GEL_MAKE(kind, val) (((uint32_t)(kind) << 30) | (uint32_t)(val))
#define GEL_KIND(e) ((uint32_t)(e) >> 30)
#define GEL_VAL(e) ((uint32_t)(e) & 0x3FFFFFFFu)

/* Sizes past which a grammar is refused rather than built (x{1,100000} and the like). */
#define GRAMMAR_MAX_ELEMENTS (1u << 21)
#define GRAMMAR_MAX_RULES (1u << 19)

struct gset {
    uint64_t w[4];
};
static inline bool gset_has(const struct gset *s, unsigned b)
{
    return (s->w[b >> 6] >> (b & 63)) & 1;
}
static inline void gset_add_range(struct gset *s, unsigned lo, unsigned hi)
{
    for (unsigned b = lo; b <= hi; b++) s->w[b >> 6] |= 1ull << (b & 63);
}

/* The value of hexadecimal digit c, or -1 (the front ends' \x, \u and \U escapes). */
static inline int gram_hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* printf into a caller's error buffer (which may be NULL or 0 bytes). */
void gram_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* printf onto a strbuf; 0 or -1 when out of memory. */
int gram_appendf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Makes room for need elements of elsize bytes in *p (capacity *cap, doubled from first):
 * 0, or -1 when out of memory or past UINT32_MAX / 2 elements (*p unchanged). */
int gram_grow(void **p, uint32_t *cap, uint64_t need, size_t elsize, uint32_t first);

/* ---- the builder --------------------------------------------------------------------------- */
struct gb_rule {
    char *name;      /* NULL for rules the lowering makes (groups, repetitions, classes) */
    uint32_t *alts;  /* indices into gbuild.alts */
    uint32_t n_alts, cap_alts;
    bool defined;    /* a named rule has a definition (GBNF's `name ::= ...`) */
};
struct gb_alt {
    uint32_t *el;
    uint32_t n, cap;
};
struct gbuild {
    struct gb_rule *rules;
    uint32_t n_rules, cap_rules;
    struct gb_alt *alts;
    uint32_t n_alts, cap_alts;
    struct gset *sets;
    uint32_t n_sets, cap_sets;
    uint32_t *set_ht, set_ht_mask;   /* byte sets by content (index + 1, 0 empty) */
    uint32_t *name_ht, name_ht_mask; /* named rules by name (index + 1, 0 empty) */
    size_t n_el;
    char *err;
    size_t errlen;
};

int gb_init(struct gbuild *b, char *err, size_t errlen);
void gb_free(struct gbuild *b);
/* The rule called name (made, undefined, on first mention); negative on failure. */
int64_t gb_rule_named(struct gbuild *b, const char *name, size_t len);
int64_t gb_rule_anon(struct gbuild *b);
int64_t gb_alt_new(struct gbuild *b, uint32_t rule);
int gb_push(struct gbuild *b, uint32_t alt, uint32_t el);
int gb_push_set(struct gbuild *b, uint32_t alt, const struct gset *s);
int gb_push_literal(struct gbuild *b, uint32_t alt, const char *bytes, size_t n);
/* A character class: code point ranges (lo, hi pairs, any order), negated or not, as UTF-8. */
int gb_push_class(struct gbuild *b, uint32_t alt, const uint32_t *ranges, size_t n_ranges, bool negate);
/* Applies {min, max} (max < 0: unbounded) to the elements alt[start ..]. */
int gb_quantify(struct gbuild *b, uint32_t alt, uint32_t start, uint32_t min, int64_t max);
/* Checks and flattens the grammar rooted at root. The builder may be freed after. */
int gb_finish(struct gbuild *b, uint32_t root, struct grammar **out);

/* UTF-8: code point ranges (sorted, disjoint, no surrogates) to byte-range sequences. Each
 * sequence is n (1..4) ranges; seqs receives lo/hi bytes, 8 per sequence. Returns the count,
 * or negative when cap is too small. */
int gram_utf8_sequences(const uint32_t *ranges, size_t n_ranges, uint8_t (*seqs)[8], int *lens, int cap);

/* Front ends to GBNF text. */
int gram_json_schema_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen);
int gram_json_object_gbnf(struct strbuf *out);
int gram_regex_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen);
int gram_choice_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen);
/* A list of literal alternatives as one GBNF expression, factored on their common prefixes
 * (gram_choice.c; a schema's enum uses it too). */
int gram_choice_expr(struct strbuf *e, char **strs, size_t *lens, size_t n);
/* Appends s as a GBNF string literal ("..." with escapes). */
int gram_gbnf_literal(struct strbuf *out, const char *s, size_t n);
/* Parses GBNF into a finished grammar. */
int gram_gbnf_parse(const char *src, size_t len, struct grammar **out, char *err, size_t errlen);

/* ---- the finished grammar ------------------------------------------------------------------ */
#define GRAM_RET_END 0xFFFFFFFFu /* the root's return: the end of the input */
#define GRAM_MAX_HYP 63          /* return sites tried one by one at most (see gram_mask.c) */

struct grammar {
    uint32_t n_el;
    uint32_t *el;        /* every alternative's elements then GEL_END, rule after rule */
    uint32_t *el_rule;   /* position -> its rule */
    uint32_t n_rules;
    uint32_t *alt_off;   /* rule r's alternatives start at alt_pos[alt_off[r] .. alt_off[r + 1]) */
    uint32_t *alt_pos;
    uint32_t n_sets;
    struct gset *sets;
    /* Where frames return, per class of rules that return to the same places: class c's
     * sites are ret[ret_off[c] .. ret_off[c + 1]) (positions, or GRAM_RET_END), unless
     * ret_many[c] (more than GRAM_MAX_HYP of them: not listed). */
    uint32_t *rule_class;
    uint32_t n_classes;
    uint32_t *ret_off;
    uint32_t *ret;
    uint8_t *ret_many;
    uint32_t root;
    uint64_t hash;
};

/* ---- vocabulary ---------------------------------------------------------------------------- */
/* Tokens' bytes sorted into a trie laid out in preorder: node i's subtree is [i, end[i]). */
struct gtrie {
    uint32_t n;
    uint8_t *byte;       /* the byte on the edge into node i (node 0 is the root) */
    uint16_t *depth;
    uint32_t *end;
    uint32_t *tok_off;   /* tokens ending at node i: ids[tok_off[i] .. tok_off[i + 1]) */
    int32_t *ids;
    uint32_t *path;      /* offset in the vocabulary's byte pool of node i's path */
    struct gset *sub;    /* the bytes on the edges below node i */
    uint16_t max_depth;
};

struct grammar_vocab {
    int32_t n_vocab;
    char *pool;          /* every token's bytes, first forms after */
    uint32_t *off, *len; /* token id -> its bytes in pool (len 0: never allowed) */
    uint32_t *first_off, *first_len; /* first-token forms; NULL when all equal the above */
    int32_t *stop_ids;
    size_t n_stop;
    struct gtrie trie, first_trie;
    uint64_t ident;      /* a hash of every token's bytes and the stop ids */
};

/* ---- the pushdown automaton ---------------------------------------------------------------- */
/* Positions past the elements mark the special frames. */
#define GPOS_BOTTOM 0x7FFFFFF0u  /* under a real stack: popping it accepts */
#define GPOS_CTX 0x7FFFFFF1u     /* under a classified position: the unknown context */
#define GPOS_ACCEPT 0x7FFFFFF2u  /* state entry: the grammar ended */
#define GPOS_CTXPOP 0x7FFFFFF3u  /* state entry: popped into a context we cannot follow */

/* A frame: a position and the frame under it. CTX frames keep (class << 6 | hyp) in parent.
 * hyp: 0 for real stacks and for the part of a classification that is exact; 1..63 for the
 * return site a classification is trying (gram_mask.c). */
struct gnode {
    uint32_t pos, parent, hyp;
};
/* A state entry: a stack whose top waits at BYTES position pos (or ACCEPT / CTXPOP). */
struct gentry {
    uint32_t pos, parent;
};

struct gpda {
    const struct grammar *g;
    struct gnode *nodes;
    uint32_t n_nodes, cap_nodes;
    struct gentry *st;   /* states, one after the other (a walk keeps one per trie depth) */
    uint32_t n_st, cap_st;
    /* Per step: (pos, parent) pairs already normalized, and frames already made. */
    struct gpda_slot {
        uint64_t key;
        uint32_t gen, val;
    } *ht;
    uint32_t ht_mask, ht_used, gen;
    /* Persistent mode (the classification's memo, gram_mask.c): frames are made once and
     * kept, so equal stacks are equal node ids across steps. */
    bool persist;
    struct gpda_pslot {
        uint64_t key;
        uint32_t val; /* node + 1; 0 empty */
    } *pn;
    uint32_t pn_mask, pn_used;
    bool oom;
};

int gpda_init(struct gpda *p, const struct grammar *g);
void gpda_free(struct gpda *p);
/* Node 0 is the bottom of every real stack. */
#define GNODE_BOTTOM 0u
int gpda_reset(struct gpda *p); /* nodes = {bottom}, no states */
/* Appends to st the initial state of the grammar (the root's alternatives over the bottom);
 * returns how many entries, negative on failure. */
int64_t gpda_initial(struct gpda *p);
/* Appends the state after byte from the state st[from .. from + n); returns its size. */
int64_t gpda_advance(struct gpda *p, uint32_t from, uint32_t n, uint8_t byte);
/* Appends to st the state of one stack: frame (pos, parent) normalized. */
int64_t gpda_start(struct gpda *p, uint32_t pos, uint32_t parent);
/* The CTX frame standing for the unknown stack under a frame of return class cls. */
uint32_t gpda_ctx_node(struct gpda *p, uint32_t cls, uint32_t hyp);
static inline uint32_t gpda_entry_hyp(const struct gpda *p, const struct gentry *e)
{
    return p->nodes[e->parent].hyp;
}
/* Keeps only the nodes the stacks of st[from .. from + n) use, renumbered; returns 0/-1. */
int gpda_compact(struct gpda *p, uint32_t from, uint32_t n);

/* ---- compiled grammars and masks ----------------------------------------------------------- */
/* A position's classification (gram_mask.c). */
struct gunc {
    uint32_t node;         /* a trie node whose tokens are uncertain (in preorder) */
    uint64_t alive;        /* the hypotheses under which they are accepted */
    uint64_t unknown;      /* those under which they might be (bit 0: under all) */
};
struct gmask_entry {
    bool dense;            /* accepted as a bitmap of mask words, else an id list */
    uint32_t n_acc;
    uint32_t *acc;
    uint32_t n_unc;
    struct gunc *unc;
};

struct gmemo;
void gram_memo_free(struct gmemo *m);

struct grammar_compiled {
    struct grammar *g;
    const struct grammar_vocab *v;
    _Atomic(struct gmask_entry *) *entries; /* per position; NULL until classified */
    struct gmemo *memo;                     /* the classification's states (gram_mask.c) */
    pthread_mutex_t lock;                   /* held while classifying */
    atomic_int refs;
    atomic_size_t n_classified;
    _Atomic uint64_t classify_ns;
};

/* The classification of BYTES position pos, made on first use. */
const struct gmask_entry *gram_mask_entry(struct grammar_compiled *c, uint32_t pos);
/* Which hypothesis of pos's classification the real stack under a top at pos is (its parent
 * frame is parent): 1.. for a return site, 0 when the classification has none or the stack
 * cannot tell. */
uint32_t gram_hypothesis(const struct gpda *p, uint32_t pos, uint32_t parent);
void gram_mask_entry_free(struct gmask_entry *e);

int gram_trie_build(struct gtrie *t, const char *pool, const uint32_t *off, const uint32_t *len, int32_t n);
void gram_trie_free(struct gtrie *t);

/* Walks trie t from the state st[from .. from + n) and sets the bit of every token whose
 * bytes keep the state alive (no cache; the matcher's slow path and first step). */
int gram_walk_exact(struct gpda *p, const struct gtrie *t, const char *pool, uint32_t from, uint32_t n,
                    uint32_t *mask);

#endif
