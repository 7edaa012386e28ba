/* Steps in two halves (backend.h): backend_submit and backend_collect over a backend's own
 * submit and collect, or, for a backend that only runs whole steps, over its forward with the
 * results kept here until collected. Either way the same contract holds, so the engine runs
 * one way over every backend, and its overlapped steps are tested over the CPU backend too. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"

/* The last two steps' results, by submit count modulo 2. */
struct backend_stash {
    struct sample_result *results[2];
    int32_t n_results[2];
    int32_t rows_cap;
    int32_t *tokens; /* the batch's tokens with the previous step's filled in */
    int32_t tokens_cap;
    uint64_t submitted, collected;
};

static int fail(struct backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct backend *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->error, sizeof b->error, fmt, ap);
    va_end(ap);
    return -1;
}

/* Room for a step of n_seqs sequences and n_tokens tokens (contents kept). */
static int stash_fit(struct backend *b, int32_t n_seqs, int32_t n_tokens)
{
    struct backend_stash *st = b->stash;
    if (!st && !(st = b->stash = calloc(1, sizeof *st))) return fail(b, "out of memory for the step results");
    if (n_seqs > st->rows_cap) {
        for (int i = 0; i < 2; i++) {
            struct sample_result *r = realloc(st->results[i], (size_t)n_seqs * sizeof *r);
            if (!r) return fail(b, "out of memory for the step results");
            st->results[i] = r;
        }
        st->rows_cap = n_seqs;
    }
    if (n_tokens > st->tokens_cap) {
        int32_t *t = realloc(st->tokens, (size_t)n_tokens * sizeof *t);
        if (!t) return fail(b, "out of memory for the step tokens");
        st->tokens = t;
        st->tokens_cap = n_tokens;
    }
    return 0;
}

int backend_submit(struct backend *b, const struct batch *batch)
{
    if (b->ops->submit) return b->ops->submit(b, batch);
    if (batch->n_tokens < 0 || batch->n_seqs < 0)
        return fail(b, "a step of %d tokens and %d sequences", batch->n_tokens, batch->n_seqs);
    if (stash_fit(b, batch->n_seqs, batch->n_tokens) != 0) return -1;
    struct backend_stash *st = b->stash;
    if (st->submitted - st->collected >= 2) return fail(b, "two steps are queued already");
    const int slot = (int)(st->submitted % 2), prev = slot ^ 1;
    const int32_t n_prev = st->submitted > 0 ? st->n_results[prev] : 0;
    for (int32_t t = 0; t < batch->n_tokens; t++) {
        int32_t tok = batch->tokens[t];
        if (tok < 0) {
            const int32_t r = BACKEND_TOKEN_PREV_ROW(tok);
            if (r >= n_prev)
                return fail(b, "token %d of the step is row %d of the previous step, which sampled %d rows", t, r,
                            n_prev);
            tok = st->results[prev][r].token;
        }
        st->tokens[t] = tok;
    }
    struct batch resolved = *batch;
    resolved.tokens = st->tokens;
    int rc = b->ops->forward(b, &resolved, st->results[slot]);
    if (rc != 0) return rc;
    int32_t n = 0;
    for (int32_t s = 0; s < batch->n_seqs; s++) n += batch->seqs[s].sample;
    st->n_results[slot] = n;
    st->submitted++;
    return 0;
}

int backend_collect(struct backend *b, struct sample_result *results)
{
    if (b->ops->collect) return b->ops->collect(b, results);
    struct backend_stash *st = b->stash;
    if (!st || st->collected == st->submitted) return fail(b, "no step is queued");
    const int slot = (int)(st->collected % 2);
    if (st->n_results[slot] > 0) memcpy(results, st->results[slot], (size_t)st->n_results[slot] * sizeof *results);
    st->collected++;
    return 0;
}

bool backend_submit_returns_early(const struct backend *b)
{
    return b->ops->submit != NULL;
}

bool backend_defers_masks(const struct backend *b)
{
    return b->ops->submit != NULL && b->ops->sample != NULL;
}

int backend_sample(struct backend *b, const uint32_t *const *masks, int32_t n_masks)
{
    if (!backend_defers_masks(b)) return fail(b, "this backend takes no masks after the step is submitted");
    return b->ops->sample(b, masks, n_masks);
}

int backend_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    int rc = backend_submit(b, batch);
    return rc != 0 ? rc : backend_collect(b, results);
}

void backend_free(struct backend *b)
{
    if (!b) return;
    struct backend_stash *st = b->stash;
    if (st) {
        free(st->results[0]);
        free(st->results[1]);
        free(st->tokens);
        free(st);
        b->stash = NULL;
    }
    b->ops->free(b);
}
