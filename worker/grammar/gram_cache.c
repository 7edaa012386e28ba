/* The compile cache of one vocabulary: compiled grammars by (kind, source), least recently
 * used evicted. Two sources whose grammars come out identical (same hash, same arrays) share
 * one compiled grammar, and with it the classification work already done. */
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

struct cache_entry {
    enum grammar_kind kind;
    char *src;
    size_t len;
    uint64_t hash;
    struct grammar_compiled *c;
    uint64_t used;
};

struct grammar_cache {
    const struct grammar_vocab *v;
    size_t cap, n;
    struct cache_entry *e;
    pthread_mutex_t lock;
    uint64_t tick;
    struct grammar_cache_stats stats;
};

int grammar_cache_new(struct grammar_cache **out, const struct grammar_vocab *v, size_t capacity)
{
    *out = NULL;
    struct grammar_cache *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->v = v;
    c->cap = capacity ? capacity : 1;
    c->e = calloc(c->cap, sizeof *c->e);
    if (!c->e || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c->e);
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void grammar_cache_free(struct grammar_cache *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        grammar_compiled_unref(c->e[i].c);
        free(c->e[i].src);
    }
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static bool same_grammar(const struct grammar *a, const struct grammar *b)
{
    if (a->hash != b->hash || a->n_el != b->n_el || a->n_rules != b->n_rules || a->n_sets != b->n_sets ||
        a->root != b->root)
        return false;
    return memcmp(a->el, b->el, a->n_el * sizeof *a->el) == 0 &&
           memcmp(a->alt_off, b->alt_off, ((size_t)a->n_rules + 1) * sizeof *a->alt_off) == 0 &&
           memcmp(a->alt_pos, b->alt_pos, a->alt_off[a->n_rules] * sizeof *a->alt_pos) == 0 &&
           memcmp(a->sets, b->sets, a->n_sets * sizeof *a->sets) == 0;
}

static struct cache_entry *find_source(struct grammar_cache *c, enum grammar_kind kind, const char *src, size_t len,
                                       uint64_t h)
{
    for (size_t i = 0; i < c->n; i++) {
        struct cache_entry *e = &c->e[i];
        if (e->hash == h && e->kind == kind && e->len == len && memcmp(e->src, src, len) == 0) return e;
    }
    return NULL;
}

int grammar_cache_get(struct grammar_cache *c, enum grammar_kind kind, const char *source, size_t len,
                      struct grammar_compiled **out, char *err, size_t errlen)
{
    *out = NULL;
    if (kind == GRAMMAR_JSON_OBJECT) len = 0; /* the source says nothing */
    if (!source) source = "";
    uint64_t h = hash_fnv1a(hash_fnv1a(HASH_FNV1A_INIT, &kind, sizeof kind), source, len);
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find_source(c, kind, source, len, h);
    if (e) {
        e->used = ++c->tick;
        c->stats.hits++;
        grammar_compiled_ref(e->c);
        *out = e->c;
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    pthread_mutex_unlock(&c->lock);

    /* Compile without the lock: another thread's hit need not wait on it. */
    struct grammar *g = NULL;
    if (grammar_compile(&g, kind, source, len, err, errlen) < 0) return -1;
    char *copy = malloc(len + 1);
    if (!copy) {
        grammar_free(g);
        gram_err(err, errlen, "out of memory");
        return -1;
    }
    memcpy(copy, source, len);
    copy[len] = '\0';

    pthread_mutex_lock(&c->lock);
    struct grammar_compiled *gc = NULL;
    e = find_source(c, kind, source, len, h);
    if (e) { /* compiled meanwhile by another thread */
        gc = e->c;
        e->used = ++c->tick;
        c->stats.hits++;
        grammar_compiled_ref(gc);
        grammar_free(g);
        free(copy);
        *out = gc;
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    c->stats.misses++;
    for (size_t i = 0; i < c->n && !gc; i++) {
        if (same_grammar(c->e[i].c->g, g)) {
            gc = c->e[i].c;
            grammar_compiled_ref(gc);
            grammar_free(g);
            c->stats.shared++;
        }
    }
    if (!gc && grammar_compiled_new(&gc, g, c->v) < 0) {
        free(copy);
        pthread_mutex_unlock(&c->lock);
        gram_err(err, errlen, "out of memory");
        return -1;
    }
    if (c->n == c->cap) {
        size_t lru = 0;
        for (size_t i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[lru].used) lru = i;
        grammar_compiled_unref(c->e[lru].c);
        free(c->e[lru].src);
        c->e[lru] = c->e[--c->n];
    }
    c->e[c->n++] = (struct cache_entry){kind, copy, len, h, gc, ++c->tick};
    grammar_compiled_ref(gc); /* one for the cache, one for the caller */
    *out = gc;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

void grammar_cache_get_stats(struct grammar_cache *c, struct grammar_cache_stats *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->stats;
    out->entries = c->n;
    pthread_mutex_unlock(&c->lock);
}
