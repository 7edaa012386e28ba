/* The grammar builder: rules of alternatives of elements, written by the GBNF parser, and
 * finished into the flat form the automaton runs (struct grammar).
 *
 * Repetition is lowered here so that the automaton needs no counters: x* becomes
 * S ::= x S | "" (the reference in tail position keeps the stack flat), x{m,n} m copies of x
 * and a chain O1 ::= x O2 | "" ... When x is a group, its alternatives are spliced into the
 * helper (S ::= a S | b S | ""), and groups that a copy references are cloned, so that every
 * helper rule is referenced from one place only: a rule that returns to one place keeps the
 * mask classification exact (gram_mask.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

static int grow(void **p, uint32_t *cap, uint64_t need, size_t elsize)
{
    return gram_grow(p, cap, need, elsize, 4);
}

static int oom(struct gbuild *b)
{
    gram_err(b->err, b->errlen, "out of memory");
    return -1;
}

int gb_init(struct gbuild *b, char *err, size_t errlen)
{
    memset(b, 0, sizeof *b);
    b->err = err;
    b->errlen = errlen;
    return 0;
}

void gb_free(struct gbuild *b)
{
    for (uint32_t i = 0; i < b->n_rules; i++) {
        free(b->rules[i].name);
        free(b->rules[i].alts);
    }
    for (uint32_t i = 0; i < b->n_alts; i++) free(b->alts[i].el);
    free(b->rules);
    free(b->alts);
    free(b->sets);
    free(b->set_ht);
    free(b->name_ht);
    memset(b, 0, sizeof *b);
}

static int64_t new_rule(struct gbuild *b, char *name)
{
    if (b->n_rules >= GRAMMAR_MAX_RULES) {
        gram_err(b->err, b->errlen, "the grammar is too large (more than %u rules)", GRAMMAR_MAX_RULES);
        return -1;
    }
    if (grow((void **)&b->rules, &b->cap_rules, (uint64_t)b->n_rules + 1, sizeof *b->rules) < 0) return oom(b);
    struct gb_rule *r = &b->rules[b->n_rules];
    memset(r, 0, sizeof *r);
    r->name = name;
    r->defined = name == NULL;
    return b->n_rules++;
}

static uint64_t name_hash(const char *s, size_t n)
{
    return hash_fnv1a(HASH_FNV1A_INIT, s, n);
}

static int name_ht_insert(struct gbuild *b, uint32_t rule)
{
    const char *nm = b->rules[rule].name;
    uint32_t i = (uint32_t)name_hash(nm, strlen(nm)) & b->name_ht_mask;
    while (b->name_ht[i]) i = (i + 1) & b->name_ht_mask;
    b->name_ht[i] = rule + 1;
    return 0;
}

int64_t gb_rule_named(struct gbuild *b, const char *name, size_t len)
{
    if (b->name_ht) {
        uint32_t i = (uint32_t)name_hash(name, len) & b->name_ht_mask;
        for (; b->name_ht[i]; i = (i + 1) & b->name_ht_mask) {
            const char *nm = b->rules[b->name_ht[i] - 1].name;
            if (strlen(nm) == len && memcmp(nm, name, len) == 0) return b->name_ht[i] - 1;
        }
    }
    char *copy = malloc(len + 1);
    if (!copy) return oom(b);
    memcpy(copy, name, len);
    copy[len] = '\0';
    int64_t r = new_rule(b, copy);
    if (r < 0) {
        free(copy);
        return -1;
    }
    /* Keep the table at most half full. */
    uint32_t n_named = 0;
    for (uint32_t i = 0; i < b->n_rules; i++) n_named += b->rules[i].name != NULL;
    if (!b->name_ht || n_named * 2 > b->name_ht_mask + 1) {
        uint32_t size = 64;
        while (size < n_named * 4) size *= 2;
        free(b->name_ht);
        b->name_ht = calloc(size, sizeof *b->name_ht);
        if (!b->name_ht) return oom(b);
        b->name_ht_mask = size - 1;
        for (uint32_t i = 0; i < b->n_rules; i++)
            if (b->rules[i].name) name_ht_insert(b, i);
    } else {
        name_ht_insert(b, (uint32_t)r);
    }
    return r;
}

int64_t gb_rule_anon(struct gbuild *b)
{
    return new_rule(b, NULL);
}

int64_t gb_alt_new(struct gbuild *b, uint32_t rule)
{
    if (grow((void **)&b->alts, &b->cap_alts, (uint64_t)b->n_alts + 1, sizeof *b->alts) < 0) return oom(b);
    struct gb_rule *r = &b->rules[rule];
    if (grow((void **)&r->alts, &r->cap_alts, (uint64_t)r->n_alts + 1, sizeof *r->alts) < 0) return oom(b);
    memset(&b->alts[b->n_alts], 0, sizeof *b->alts);
    r->alts[r->n_alts++] = b->n_alts;
    return b->n_alts++;
}

int gb_push(struct gbuild *b, uint32_t alt, uint32_t el)
{
    if (b->n_el >= GRAMMAR_MAX_ELEMENTS) {
        gram_err(b->err, b->errlen, "the grammar is too large (more than %u elements; a repetition count too high?)",
                 GRAMMAR_MAX_ELEMENTS);
        return -1;
    }
    struct gb_alt *a = &b->alts[alt];
    if (grow((void **)&a->el, &a->cap, (uint64_t)a->n + 1, sizeof *a->el) < 0) return oom(b);
    a->el[a->n++] = el;
    b->n_el++;
    return 0;
}

static uint64_t set_hash(const struct gset *s)
{
    return hash_fnv1a(HASH_FNV1A_INIT, s->w, sizeof s->w);
}

static int64_t set_id(struct gbuild *b, const struct gset *s)
{
    if (b->set_ht) {
        uint32_t i = (uint32_t)set_hash(s) & b->set_ht_mask;
        for (; b->set_ht[i]; i = (i + 1) & b->set_ht_mask)
            if (memcmp(&b->sets[b->set_ht[i] - 1], s, sizeof *s) == 0) return b->set_ht[i] - 1;
    }
    if (grow((void **)&b->sets, &b->cap_sets, (uint64_t)b->n_sets + 1, sizeof *b->sets) < 0) return oom(b);
    b->sets[b->n_sets] = *s;
    uint32_t id = b->n_sets++;
    if (!b->set_ht || b->n_sets * 2 > b->set_ht_mask + 1) {
        uint32_t size = 64;
        while (size < b->n_sets * 4) size *= 2;
        free(b->set_ht);
        b->set_ht = calloc(size, sizeof *b->set_ht);
        if (!b->set_ht) return oom(b);
        b->set_ht_mask = size - 1;
        for (uint32_t k = 0; k < b->n_sets; k++) {
            uint32_t i = (uint32_t)set_hash(&b->sets[k]) & b->set_ht_mask;
            while (b->set_ht[i]) i = (i + 1) & b->set_ht_mask;
            b->set_ht[i] = k + 1;
        }
    } else {
        uint32_t i = (uint32_t)set_hash(s) & b->set_ht_mask;
        while (b->set_ht[i]) i = (i + 1) & b->set_ht_mask;
        b->set_ht[i] = id + 1;
    }
    return id;
}

int gb_push_set(struct gbuild *b, uint32_t alt, const struct gset *s)
{
    int64_t id = set_id(b, s);
    return id < 0 ? -1 : gb_push(b, alt, GEL_MAKE(GEL_BYTES, id));
}

int gb_push_literal(struct gbuild *b, uint32_t alt, const char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct gset s = {{0}};
        gset_add_range(&s, (unsigned char)bytes[i], (unsigned char)bytes[i]);
        if (gb_push_set(b, alt, &s) < 0) return -1;
    }
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

int gb_push_class(struct gbuild *b, uint32_t alt, const uint32_t *ranges, size_t n_ranges, bool negate)
{
    int rc = -1;
    uint32_t *r = malloc((n_ranges + 2) * 2 * sizeof *r), *c = NULL;
    uint8_t(*seqs)[8] = NULL;
    int *lens = NULL;
    if (!r) return oom(b);
    size_t n = 0;
    for (size_t i = 0; i < n_ranges; i++) {
        uint32_t lo = ranges[2 * i], hi = ranges[2 * i + 1] > 0x10FFFF ? 0x10FFFF : ranges[2 * i + 1];
        if (lo > hi) continue;
        r[2 * n] = lo;
        r[2 * n + 1] = hi;
        n++;
    }
    qsort(r, n, 2 * sizeof *r, cmp_range);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && r[2 * i] <= r[2 * (m - 1) + 1] + 1) {
            if (r[2 * i + 1] > r[2 * (m - 1) + 1]) r[2 * (m - 1) + 1] = r[2 * i + 1];
        } else {
            r[2 * m] = r[2 * i];
            r[2 * m + 1] = r[2 * i + 1];
            m++;
        }
    }
    if (negate) {
        uint32_t next = 0;
        size_t k = 0;
        c = malloc((m + 1) * 2 * sizeof *c);
        if (!c) goto nomem;
        for (size_t i = 0; i < m; i++) {
            if (r[2 * i] > next) {
                c[2 * k] = next;
                c[2 * k + 1] = r[2 * i] - 1;
                k++;
            }
            next = r[2 * i + 1] + 1;
        }
        if (next <= 0x10FFFF) {
            c[2 * k] = next;
            c[2 * k + 1] = 0x10FFFF;
            k++;
        }
        free(r);
        r = c;
        c = NULL;
        m = k;
    }
    /* Surrogates have no UTF-8 encoding (a range across them becomes two). */
    c = malloc((2 * m + 2) * 2 * sizeof *c);
    if (!c) goto nomem;
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t lo = r[2 * i], hi = r[2 * i + 1];
        if (hi < 0xD800 || lo > 0xDFFF) {
            c[2 * k] = lo;
            c[2 * k + 1] = hi;
            k++;
            continue;
        }
        if (lo < 0xD800) {
            c[2 * k] = lo;
            c[2 * k + 1] = 0xD7FF;
            k++;
        }
        if (hi > 0xDFFF) {
            c[2 * k] = 0xE000;
            c[2 * k + 1] = hi;
            k++;
        }
    }
    int cap = (int)(k * 16 + 16);
    seqs = malloc((size_t)cap * sizeof *seqs);
    lens = malloc((size_t)cap * sizeof *lens);
    if (!seqs || !lens) goto nomem;
    int ns = gram_utf8_sequences(c, k, seqs, lens, cap);
    if (ns < 0) goto nomem;
    /* Sequences that differ only in their first byte's range become one, with a byte set. */
    struct gset *first = calloc((size_t)ns + 1, sizeof *first);
    int *group = malloc(((size_t)ns + 1) * sizeof *group);
    if (!first || !group) {
        free(first);
        free(group);
        goto nomem;
    }
    int ng = 0;
    for (int i = 0; i < ns; i++) {
        int gi = -1;
        for (int j = 0; j < ng && gi < 0; j++) {
            int s = group[j];
            if (lens[s] == lens[i] && memcmp(seqs[s] + 2, seqs[i] + 2, (size_t)(2 * lens[i] - 2)) == 0) gi = j;
        }
        if (gi < 0) {
            gi = ng++;
            group[gi] = i;
        }
        gset_add_range(&first[gi], seqs[i][0], seqs[i][1]);
    }
    if (ng == 0) {
        struct gset empty = {{0}};
        rc = gb_push_set(b, alt, &empty); /* matches nothing: the alternative is dropped */
    } else if (ng == 1 && lens[group[0]] == 1) {
        rc = gb_push_set(b, alt, &first[0]);
    } else {
        int64_t rule = gb_rule_anon(b);
        rc = rule < 0 ? -1 : 0;
        for (int j = 0; j < ng && rc == 0; j++) {
            int s = group[j];
            int64_t a = gb_alt_new(b, (uint32_t)rule);
            if (a < 0 || gb_push_set(b, (uint32_t)a, &first[j]) < 0) {
                rc = -1;
                break;
            }
            for (int i = 1; i < lens[s] && rc == 0; i++) {
                struct gset st = {{0}};
                gset_add_range(&st, seqs[s][2 * i], seqs[s][2 * i + 1]);
                rc = gb_push_set(b, (uint32_t)a, &st);
            }
        }
        if (rc == 0) rc = gb_push(b, alt, GEL_MAKE(GEL_RULE, rule));
    }
    free(first);
    free(group);
    goto done;
nomem:
    oom(b);
done:
    free(r);
    free(c);
    free(seqs);
    free(lens);
    return rc;
}

/* ---- repetition ------------------------------------------------------------------------------ */
struct clone_map {
    uint32_t (*v)[2]; /* (old rule, its copy) */
    uint32_t n, cap;
};

static int64_t clone_rule(struct gbuild *b, uint32_t rule, struct clone_map *map);

/* Appends els to alt, cloning the anonymous rules they reference when clone is set. */
static int append_copy(struct gbuild *b, uint32_t alt, const uint32_t *els, uint32_t n, bool clone,
                       struct clone_map *map)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t e = els[i];
        if (clone && GEL_KIND(e) == GEL_RULE && !b->rules[GEL_VAL(e)].name) {
            int64_t r = clone_rule(b, GEL_VAL(e), map);
            if (r < 0) return -1;
            e = GEL_MAKE(GEL_RULE, r);
        }
        if (gb_push(b, alt, e) < 0) return -1;
    }
    return 0;
}

static int64_t map_get(const struct clone_map *map, uint32_t rule)
{
    for (uint32_t i = map->n; i-- > 0;)
        if (map->v[i][0] == rule) return map->v[i][1];
    return -1;
}

/* A copy of an anonymous rule and of the anonymous rules it reaches (named ones are shared),
 * made with a worklist: a chain x{0,1000} inside another repetition is a thousand deep. */
static int64_t clone_rule(struct gbuild *b, uint32_t rule, struct clone_map *map)
{
    int64_t have = map_get(map, rule);
    if (have >= 0) return have;
    uint32_t done = map->n;
    int64_t top = gb_rule_anon(b);
    if (top < 0) return -1;
    if (grow((void **)&map->v, &map->cap, (uint64_t)map->n + 1, sizeof *map->v) < 0) return oom(b);
    map->v[map->n][0] = rule;
    map->v[map->n][1] = (uint32_t)top;
    map->n++;
    /* map->v[done ..] are copies made but not yet filled in. */
    while (done < map->n) {
        uint32_t old = map->v[done][0], copy = map->v[done][1];
        done++;
        for (uint32_t k = 0; k < b->rules[old].n_alts; k++) {
            uint32_t src = b->rules[old].alts[k];
            int64_t a = gb_alt_new(b, copy);
            if (a < 0) return -1;
            for (uint32_t i = 0; i < b->alts[src].n; i++) {
                uint32_t e = b->alts[src].el[i];
                if (GEL_KIND(e) == GEL_RULE && !b->rules[GEL_VAL(e)].name) {
                    int64_t r = map_get(map, GEL_VAL(e));
                    if (r < 0) {
                        r = gb_rule_anon(b);
                        if (r < 0) return -1;
                        if (grow((void **)&map->v, &map->cap, (uint64_t)map->n + 1, sizeof *map->v) < 0) return oom(b);
                        map->v[map->n][0] = GEL_VAL(e);
                        map->v[map->n][1] = (uint32_t)r;
                        map->n++;
                    }
                    e = GEL_MAKE(GEL_RULE, r);
                }
                if (gb_push(b, (uint32_t)a, e) < 0) return -1;
            }
        }
    }
    return top;
}

/* The alternatives of the repeated item, as element lists: an anonymous group's own
 * alternatives (recursively, where an alternative is one reference to another group), else
 * the item itself. */
struct alt_list {
    struct alt_item {
        uint32_t *el;
        uint32_t n;
    } *v;
    uint32_t count, cap;
};

static int alt_list_add(struct gbuild *b, struct alt_list *l, const uint32_t *els, uint32_t n)
{
    if (grow((void **)&l->v, &l->cap, (uint64_t)l->count + 1, sizeof *l->v) < 0) return oom(b);
    uint32_t *copy = malloc(((size_t)n + 1) * sizeof(uint32_t));
    if (!copy) return oom(b);
    if (n) memcpy(copy, els, (size_t)n * sizeof(uint32_t));
    l->v[l->count++] = (struct alt_item){copy, n};
    return 0;
}

static void alt_list_free(struct alt_list *l)
{
    for (uint32_t i = 0; i < l->count; i++) free(l->v[i].el);
    free(l->v);
}

static int flatten(struct gbuild *b, uint32_t rule, struct alt_list *out, int depth)
{
    for (uint32_t k = 0; k < b->rules[rule].n_alts; k++) {
        const struct gb_alt *a = &b->alts[b->rules[rule].alts[k]];
        if (a->n == 1 && GEL_KIND(a->el[0]) == GEL_RULE && !b->rules[GEL_VAL(a->el[0])].name &&
            GEL_VAL(a->el[0]) != rule && depth < 8) {
            if (flatten(b, GEL_VAL(a->el[0]), out, depth + 1) < 0) return -1;
        } else if (alt_list_add(b, out, a->el, a->n) < 0) {
            return -1;
        }
    }
    return 0;
}

/* A rule of the item's alternatives, each followed by a reference to next (none when
 * next < 0), plus an empty alternative. */
static int64_t helper_rule(struct gbuild *b, const struct alt_list *x, int64_t next, struct clone_map *map)
{
    int64_t r = gb_rule_anon(b);
    if (r < 0) return -1;
    for (uint32_t k = 0; k < x->count; k++) {
        if (x->v[k].n == 0) continue; /* (a | "")* is a*: an empty alternative adds nothing */
        int64_t a = gb_alt_new(b, (uint32_t)r);
        if (a < 0) return -1;
        map->n = 0;
        if (append_copy(b, (uint32_t)a, x->v[k].el, x->v[k].n, true, map) < 0) return -1;
        if (next >= 0 && gb_push(b, (uint32_t)a, GEL_MAKE(GEL_RULE, next)) < 0) return -1;
    }
    if (gb_alt_new(b, (uint32_t)r) < 0) return -1;
    return r;
}

int gb_quantify(struct gbuild *b, uint32_t alt, uint32_t start, uint32_t min, int64_t max)
{
    uint32_t n = b->alts[alt].n;
    if (start >= n) return 0;
    if (max >= 0 && max < (int64_t)min) {
        gram_err(b->err, b->errlen, "repetition {%u,%lld}: the maximum is below the minimum", min, (long long)max);
        return -1;
    }
    if (min > 100000 || max > 100000) {
        gram_err(b->err, b->errlen, "repetition count above 100000");
        return -1;
    }
    int rc = -1;
    struct alt_list x = {0};
    struct clone_map map = {0};
    uint32_t *item = malloc((size_t)(n - start) * sizeof *item);
    if (!item) return oom(b);
    uint32_t ni = n - start;
    memcpy(item, b->alts[alt].el + start, (size_t)ni * sizeof *item);
    b->alts[alt].n = start;
    b->n_el -= ni;
    if (ni == 1 && GEL_KIND(item[0]) == GEL_RULE && !b->rules[GEL_VAL(item[0])].name) {
        if (flatten(b, GEL_VAL(item[0]), &x, 0) < 0) goto done;
    } else if (alt_list_add(b, &x, item, ni) < 0) {
        goto done;
    }
    for (uint32_t i = 0; i < min; i++) {
        map.n = 0;
        if (append_copy(b, alt, item, ni, i > 0, &map) < 0) goto done;
    }
    if (max < 0) {
        int64_t s = gb_rule_anon(b);
        if (s < 0) goto done;
        for (uint32_t k = 0; k < x.count; k++) {
            if (x.v[k].n == 0) continue;
            int64_t a = gb_alt_new(b, (uint32_t)s);
            if (a < 0) goto done;
            map.n = 0;
            if (append_copy(b, (uint32_t)a, x.v[k].el, x.v[k].n, true, &map) < 0) goto done;
            if (gb_push(b, (uint32_t)a, GEL_MAKE(GEL_RULE, s)) < 0) goto done;
        }
        if (gb_alt_new(b, (uint32_t)s) < 0) goto done;
        if (gb_push(b, alt, GEL_MAKE(GEL_RULE, s)) < 0) goto done;
    } else if (max > (int64_t)min) {
        int64_t next = -1;
        for (int64_t i = max - min; i > 0; i--) {
            next = helper_rule(b, &x, next, &map);
            if (next < 0) goto done;
        }
        if (gb_push(b, alt, GEL_MAKE(GEL_RULE, next)) < 0) goto done;
    }
    rc = 0;
done:
    alt_list_free(&x);
    free(map.v);
    free(item);
    return rc;
}

/* ---- finishing ------------------------------------------------------------------------------- */
static const char *rule_label(const struct gbuild *b, uint32_t r)
{
    return b->rules[r].name ? b->rules[r].name : "(a group)";
}

static bool alt_productive(const struct gbuild *b, const struct gb_alt *a, const uint8_t *prod)
{
    for (uint32_t i = 0; i < a->n; i++) {
        uint32_t e = a->el[i];
        if (GEL_KIND(e) == GEL_BYTES) {
            const struct gset *s = &b->sets[GEL_VAL(e)];
            if (!(s->w[0] | s->w[1] | s->w[2] | s->w[3])) return false;
        } else if (!prod[GEL_VAL(e)]) {
            return false;
        }
    }
    return true;
}

struct u32vec {
    uint32_t *v;
    uint32_t n, cap;
};

static int vec_push(struct u32vec *v, uint32_t x)
{
    if (grow((void **)&v->v, &v->cap, (uint64_t)v->n + 1, sizeof *v->v) < 0) return -1;
    v->v[v->n++] = x;
    return 0;
}

/* Left recursion: a rule that can reach itself without consuming a byte would make the
 * automaton expand forever. Depth-first search over "r starts with s" edges. */
static int check_left_recursion(struct gbuild *b, const uint8_t *prod, const uint8_t *nullable)
{
    uint32_t nr = b->n_rules;
    uint8_t *color = calloc(nr, 1); /* 1: on the search path, 2: done */
    uint32_t *stack = malloc((size_t)nr * sizeof *stack);
    uint32_t *alt = malloc((size_t)nr * sizeof *alt), *el = malloc((size_t)nr * sizeof *el);
    int rc = 0;
    if (!color || !stack || !alt || !el) {
        rc = oom(b);
        goto done;
    }
    /* Successors of r: the rules a productive alternative starts with, through nullable ones.
     * Each frame of the search remembers where in r's alternatives it is. */
    for (uint32_t root = 0; root < nr && rc == 0; root++) {
        if (color[root] || !prod[root]) continue;
        uint32_t sp = 0;
        stack[sp] = root;
        alt[sp] = el[sp] = 0;
        sp++;
        color[root] = 1;
        while (sp > 0 && rc == 0) {
            uint32_t r = stack[sp - 1], k = alt[sp - 1], i = el[sp - 1];
            uint32_t next = UINT32_MAX;
            while (k < b->rules[r].n_alts) {
                const struct gb_alt *a = &b->alts[b->rules[r].alts[k]];
                if (!alt_productive(b, a, prod) || i >= a->n || GEL_KIND(a->el[i]) == GEL_BYTES) {
                    k++;
                    i = 0;
                    continue;
                }
                next = GEL_VAL(a->el[i]);
                if (nullable[next]) {
                    i++;
                } else {
                    k++;
                    i = 0;
                }
                break;
            }
            alt[sp - 1] = k;
            el[sp - 1] = i;
            if (next == UINT32_MAX) {
                color[r] = 2;
                sp--;
                continue;
            }
            if (color[next] == 1) {
                /* Name next when it has a name, else the nearest named rule on the cycle. */
                uint32_t named = next;
                for (uint32_t j = sp; j-- > 0 && !b->rules[named].name;) {
                    if (b->rules[stack[j]].name) named = stack[j];
                    if (stack[j] == next) break;
                }
                gram_err(b->err, b->errlen, "left recursion through rule '%s' (a rule that can start with itself)",
                         rule_label(b, named));
                rc = -1;
            } else if (color[next] == 0) {
                color[next] = 1;
                stack[sp] = next;
                alt[sp] = el[sp] = 0;
                sp++;
            }
        }
    }
done:
    free(color);
    free(stack);
    free(alt);
    free(el);
    return rc;
}

static int union_into(struct u32vec *dst, uint8_t *many, const struct u32vec *src, bool src_many)
{
    if (*many) return 0;
    if (src_many) {
        *many = 1;
        free(dst->v);
        memset(dst, 0, sizeof *dst);
        return 1;
    }
    int changed = 0;
    for (uint32_t i = 0; i < src->n; i++) {
        bool have = false;
        for (uint32_t j = 0; j < dst->n && !have; j++) have = dst->v[j] == src->v[i];
        if (have) continue;
        if (dst->n >= GRAM_MAX_HYP) {
            *many = 1;
            free(dst->v);
            memset(dst, 0, sizeof *dst);
            return 1;
        }
        if (vec_push(dst, src->v[i]) < 0) return -1;
        changed = 1;
    }
    return changed;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Where each rule's frames return: after each non-tail reference, plus, through each tail
 * reference, wherever the referring rule returns. Rules with the same places share a return
 * class (the chain of rules x{0,n} makes, say), and the automaton's unknown contexts are kept
 * per class (gram_pda.c). */
static int compute_returns(struct grammar *g)
{
    uint32_t nr = g->n_rules;
    struct u32vec *ret = calloc(nr, sizeof *ret);
    uint8_t *many = calloc(nr ? nr : 1, 1);
    uint32_t *tail_off = calloc((size_t)nr + 1, sizeof *tail_off);
    uint32_t *tail = NULL, *queue = NULL, *ht = NULL, *rep = NULL;
    uint8_t *queued = calloc(nr ? nr : 1, 1);
    int rc = -1;
    if (!ret || !many || !tail_off || !queued) goto done;
    for (uint32_t q = 0; q < g->n_el; q++) {
        uint32_t e = g->el[q];
        if (GEL_KIND(e) != GEL_RULE) continue;
        if (GEL_KIND(g->el[q + 1]) == GEL_END) {
            tail_off[g->el_rule[q] + 1]++;
        } else {
            struct u32vec one = {&(uint32_t){q + 1}, 1, 1};
            if (union_into(&ret[GEL_VAL(e)], &many[GEL_VAL(e)], &one, false) < 0) goto done;
        }
    }
    {
        struct u32vec end = {&(uint32_t){GRAM_RET_END}, 1, 1};
        if (union_into(&ret[g->root], &many[g->root], &end, false) < 0) goto done;
    }
    for (uint32_t r = 0; r < nr; r++) tail_off[r + 1] += tail_off[r];
    tail = malloc(((size_t)tail_off[nr] + 1) * sizeof *tail);
    uint32_t *fill = calloc((size_t)nr + 1, sizeof *fill);
    if (!tail || !fill) {
        free(fill);
        goto done;
    }
    for (uint32_t q = 0; q < g->n_el; q++) {
        uint32_t e = g->el[q];
        if (GEL_KIND(e) == GEL_RULE && GEL_KIND(g->el[q + 1]) == GEL_END) {
            uint32_t s = g->el_rule[q];
            tail[tail_off[s] + fill[s]++] = GEL_VAL(e);
        }
    }
    free(fill);
    /* Worklist: a rule whose set grew passes it on along its tail references. */
    queue = malloc(((size_t)nr + 1) * sizeof *queue);
    if (!queue) goto done;
    uint32_t qh = 0, qn = 0;
    for (uint32_t r = 0; r < nr; r++) {
        queue[qn++] = r;
        queued[r] = 1;
    }
    while (qn > 0) {
        uint32_t s = queue[qh];
        qh = (qh + 1) % (nr + 1);
        qn--;
        queued[s] = 0;
        for (uint32_t k = tail_off[s]; k < tail_off[s + 1]; k++) {
            uint32_t r = tail[k];
            int ch = union_into(&ret[r], &many[r], &ret[s], many[s]);
            if (ch < 0) goto done;
            if (ch && !queued[r]) {
                queue[(qh + qn) % (nr + 1)] = r;
                qn++;
                queued[r] = 1;
            }
        }
    }
    /* Classes: rules with equal sets, found through a table keyed by the set. */
    uint32_t size = 64;
    while (size < nr * 2) size *= 2;
    ht = calloc(size, sizeof *ht);        /* class + 1 */
    rep = malloc(((size_t)nr + 1) * sizeof *rep); /* a rule of each class */
    g->rule_class = malloc(((size_t)nr + 1) * sizeof *g->rule_class);
    if (!ht || !rep || !g->rule_class) goto done;
    uint32_t nc = 0, total = 0;
    for (uint32_t r = 0; r < nr; r++) {
        if (ret[r].n) qsort(ret[r].v, ret[r].n, sizeof(uint32_t), cmp_u32);
        uint64_t h = hash_fnv1a(hash_fnv1a(HASH_FNV1A_INIT, &many[r], 1), ret[r].v ? (void *)ret[r].v : (void *)"",
                                     ret[r].n * sizeof(uint32_t));
        uint32_t i = (uint32_t)h & (size - 1);
        for (; ht[i]; i = (i + 1) & (size - 1)) {
            uint32_t o = rep[ht[i] - 1];
            if (many[o] == many[r] && ret[o].n == ret[r].n &&
                (ret[r].n == 0 || memcmp(ret[o].v, ret[r].v, ret[r].n * sizeof(uint32_t)) == 0))
                break;
        }
        if (!ht[i]) {
            rep[nc] = r;
            ht[i] = ++nc;
            total += ret[r].n;
        }
        g->rule_class[r] = ht[i] - 1;
    }
    g->n_classes = nc;
    g->ret_off = malloc(((size_t)nc + 1) * sizeof *g->ret_off);
    g->ret = malloc(((size_t)total + 1) * sizeof *g->ret);
    g->ret_many = malloc((size_t)nc + 1);
    if (!g->ret_off || !g->ret || !g->ret_many) goto done;
    total = 0;
    for (uint32_t c = 0; c < nc; c++) {
        uint32_t r = rep[c];
        g->ret_off[c] = total;
        g->ret_many[c] = many[r];
        if (ret[r].n) memcpy(g->ret + total, ret[r].v, ret[r].n * sizeof(uint32_t));
        total += ret[r].n;
    }
    g->ret_off[nc] = total;
    rc = 0;
done:
    for (uint32_t r = 0; ret && r < nr; r++) free(ret[r].v);
    free(ret);
    free(many);
    free(tail_off);
    free(tail);
    free(queue);
    free(queued);
    free(ht);
    free(rep);
    return rc;
}

int gb_finish(struct gbuild *b, uint32_t root, struct grammar **out)
{
    uint32_t nr = b->n_rules;
    int rc = -1;
    uint8_t *prod = calloc(nr + 1, 1), *nullable = calloc(nr + 1, 1), *reach = calloc(nr + 1, 1);
    uint32_t *newid = malloc(((size_t)nr + 1) * sizeof *newid);
    uint32_t *set_new = malloc(((size_t)b->n_sets + 1) * sizeof *set_new);
    struct u32vec work = {0}, order = {0};
    struct grammar *g = NULL;
    *out = NULL;
    if (!prod || !nullable || !reach || !newid || !set_new) {
        oom(b);
        goto done;
    }
    for (uint32_t r = 0; r < nr; r++) {
        if (!b->rules[r].defined) {
            gram_err(b->err, b->errlen, "undefined rule '%s'", b->rules[r].name);
            goto done;
        }
    }
    /* Productive and nullable rules, to a fixpoint. */
    for (bool changed = true; changed;) {
        changed = false;
        for (uint32_t r = 0; r < nr; r++) {
            for (uint32_t k = 0; k < b->rules[r].n_alts; k++) {
                const struct gb_alt *a = &b->alts[b->rules[r].alts[k]];
                if (!alt_productive(b, a, prod)) continue;
                if (!prod[r]) {
                    prod[r] = 1;
                    changed = true;
                }
                bool nul = true;
                for (uint32_t i = 0; i < a->n && nul; i++)
                    nul = GEL_KIND(a->el[i]) == GEL_RULE && nullable[GEL_VAL(a->el[i])];
                if (nul && !nullable[r]) {
                    nullable[r] = 1;
                    changed = true;
                }
            }
        }
    }
    if (!prod[root]) {
        gram_err(b->err, b->errlen, "rule '%s' matches no string", rule_label(b, root));
        goto done;
    }
    if (check_left_recursion(b, prod, nullable) < 0) goto done;
    /* Rules reachable from the root through productive alternatives, in that order. */
    if (vec_push(&work, root) < 0) goto nomem;
    reach[root] = 1;
    while (work.n > 0) {
        uint32_t r = work.v[--work.n];
        if (vec_push(&order, r) < 0) goto nomem;
        for (uint32_t k = b->rules[r].n_alts; k-- > 0;) {
            const struct gb_alt *a = &b->alts[b->rules[r].alts[k]];
            if (!alt_productive(b, a, prod)) continue;
            for (uint32_t i = a->n; i-- > 0;) {
                uint32_t e = a->el[i];
                if (GEL_KIND(e) == GEL_RULE && !reach[GEL_VAL(e)]) {
                    reach[GEL_VAL(e)] = 1;
                    if (vec_push(&work, GEL_VAL(e)) < 0) goto nomem;
                }
            }
        }
    }
    for (uint32_t i = 0; i < order.n; i++) newid[order.v[i]] = i;
    for (uint32_t i = 0; i < b->n_sets; i++) set_new[i] = UINT32_MAX;
    g = calloc(1, sizeof *g);
    if (!g) goto nomem;
    g->n_rules = order.n;
    g->root = 0;
    uint64_t n_el = 0, n_alts = 0;
    for (uint32_t i = 0; i < order.n; i++) {
        const struct gb_rule *r = &b->rules[order.v[i]];
        for (uint32_t k = 0; k < r->n_alts; k++) {
            const struct gb_alt *a = &b->alts[r->alts[k]];
            if (!alt_productive(b, a, prod)) continue;
            n_el += a->n + 1;
            n_alts++;
        }
    }
    g->el = malloc((n_el + 1) * sizeof *g->el);
    g->el_rule = malloc((n_el + 1) * sizeof *g->el_rule);
    g->alt_off = malloc(((size_t)order.n + 1) * sizeof *g->alt_off);
    g->alt_pos = malloc((n_alts + 1) * sizeof *g->alt_pos);
    g->sets = malloc(((size_t)b->n_sets + 1) * sizeof *g->sets);
    if (!g->el || !g->el_rule || !g->alt_off || !g->alt_pos || !g->sets) goto nomem;
    uint32_t q = 0, na = 0;
    for (uint32_t i = 0; i < order.n; i++) {
        const struct gb_rule *r = &b->rules[order.v[i]];
        g->alt_off[i] = na;
        for (uint32_t k = 0; k < r->n_alts; k++) {
            const struct gb_alt *a = &b->alts[r->alts[k]];
            if (!alt_productive(b, a, prod)) continue;
            g->alt_pos[na++] = q;
            for (uint32_t j = 0; j < a->n; j++) {
                uint32_t e = a->el[j];
                if (GEL_KIND(e) == GEL_RULE) {
                    e = GEL_MAKE(GEL_RULE, newid[GEL_VAL(e)]);
                } else {
                    uint32_t s = GEL_VAL(e);
                    if (set_new[s] == UINT32_MAX) {
                        set_new[s] = g->n_sets;
                        g->sets[g->n_sets++] = b->sets[s];
                    }
                    e = GEL_MAKE(GEL_BYTES, set_new[s]);
                }
                g->el_rule[q] = i;
                g->el[q++] = e;
            }
            g->el_rule[q] = i;
            g->el[q++] = GEL_MAKE(GEL_END, 0);
        }
    }
    g->alt_off[order.n] = na;
    g->n_el = q;
    if (compute_returns(g) < 0) goto nomem;
    uint64_t h = hash_fnv1a(HASH_FNV1A_INIT, &g->n_el, sizeof g->n_el);
    h = hash_fnv1a(h, g->el, (size_t)g->n_el * sizeof *g->el);
    h = hash_fnv1a(h, g->alt_off, ((size_t)g->n_rules + 1) * sizeof *g->alt_off);
    h = hash_fnv1a(h, g->alt_pos, (size_t)na * sizeof *g->alt_pos);
    h = hash_fnv1a(h, g->sets, (size_t)g->n_sets * sizeof *g->sets);
    g->hash = h;
    *out = g;
    g = NULL;
    rc = 0;
    goto done;
nomem:
    oom(b);
done:
    grammar_free(g);
    free(prod);
    free(nullable);
    free(reach);
    free(newid);
    free(set_new);
    free(work.v);
    free(order.v);
    return rc;
}
