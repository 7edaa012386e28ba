/* A grammar bound to a vocabulary: the grammar, and the classification of its positions,
 * made as matchers first need them and kept for every later sequence. */
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

int grammar_compiled_new(struct grammar_compiled **out, struct grammar *g, const struct grammar_vocab *v)
{
    *out = NULL;
    struct grammar_compiled *c = calloc(1, sizeof *c);
    if (!c) goto fail;
    c->entries = calloc((size_t)g->n_el + 1, sizeof *c->entries);
    if (!c->entries || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c->entries);
        free(c);
        goto fail;
    }
    c->g = g;
    c->v = v;
    atomic_init(&c->refs, 1);
    atomic_init(&c->n_classified, 0);
    atomic_init(&c->classify_ns, 0);
    *out = c;
    return 0;
fail:
    grammar_free(g);
    return -1;
}

void grammar_compiled_ref(struct grammar_compiled *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void grammar_compiled_unref(struct grammar_compiled *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    for (uint32_t i = 0; i < c->g->n_el; i++) gram_mask_entry_free(atomic_load(&c->entries[i]));
    free(c->entries);
    gram_memo_free(c->memo);
    pthread_mutex_destroy(&c->lock);
    grammar_free(c->g);
    free(c);
}

const struct grammar *grammar_compiled_grammar(const struct grammar_compiled *c)
{
    return c->g;
}

const struct grammar_vocab *grammar_compiled_vocab(const struct grammar_compiled *c)
{
    return c->v;
}

int grammar_compiled_precompute(struct grammar_compiled *c)
{
    for (uint32_t q = 0; q < c->g->n_el; q++)
        if (GEL_KIND(c->g->el[q]) == GEL_BYTES && !gram_mask_entry(c, q)) return -1;
    return 0;
}

void grammar_compiled_stats(const struct grammar_compiled *c, size_t *positions, size_t *classified,
                            double *classify_ms)
{
    size_t n = 0;
    for (uint32_t q = 0; q < c->g->n_el; q++) n += GEL_KIND(c->g->el[q]) == GEL_BYTES;
    if (positions) *positions = n;
    if (classified) *classified = atomic_load(&((struct grammar_compiled *)c)->n_classified);
    if (classify_ms) *classify_ms = (double)atomic_load(&((struct grammar_compiled *)c)->classify_ns) / 1e6;
}
