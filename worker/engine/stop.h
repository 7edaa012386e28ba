/* When a generation ends, and which text may be streamed before it does.
 *
 * Token checks: EOS ids (unless ignore_eos) and stop token ids end with FINISH_STOP (the
 * token is generated but its text is not part of the output unless include_stop); max_tokens
 * and the context length end with FINISH_LENGTH.
 *
 * Stop strings are matched on the detokenized text, across token boundaries: text that could
 * still be the start of a stop string is held back and released once it cannot be. On a match
 * the text before it (and the stop string itself with include_stop) is released and the
 * generation ends with FINISH_STOP. */
#ifndef SLUICE_WORKER_STOP_H
#define SLUICE_WORKER_STOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

#include "worker/engine/engine.h"

#define STOP_MAX_EOS 8

struct stop_state {
    /* token checks */
    int32_t eos[STOP_MAX_EOS];
    int32_t n_eos;
    const int32_t *stop_ids;
    int32_t n_stop_ids;
    int32_t max_tokens;   /* generated tokens at most (<= 0: no limit) */
    int32_t max_total;    /* prompt + generated tokens at most (<= 0: no limit) */
    /* stop strings (borrowed) and the text held back */
    char *const *stops;
    int32_t n_stops;
    struct strbuf held;
    bool matched;
    /* Set after stop_init. min_tokens: EOS and stop token ids end nothing while n_generated
     * is at most this (the sampler excludes them then anyway). include_stop: the text of what
     * ended the generation (a stop string, a stop token, EOS) stays in the output. */
    int32_t min_tokens;
    bool include_stop;
};

/* stops/stop_ids are borrowed and must outlive the state; eos may be NULL. */
void stop_init(struct stop_state *st, const int *eos, int n_eos, const int32_t *stop_ids,
               int32_t n_stop_ids, char *const *stops, int32_t n_stops, int32_t max_tokens,
               int32_t max_total);
void stop_free(struct stop_state *st);

/* Whether token ends the generation; *emit_text says whether its text belongs to the output.
 * n_generated and n_total count the token itself. */
enum finish_reason stop_check_token(const struct stop_state *st, int32_t token, int32_t n_generated,
                                    int32_t n_total, bool *emit_text);

/* Feeds new text. Writes into *out (malloc'd, NUL-terminated, may be empty) the text that is
 * now final. Returns 1 when a stop string matched (then *out ends just before it and every
 * later push is ignored), 0 otherwise, negative on allocation failure. */
int stop_push_text(struct stop_state *st, const char *text, size_t len, char **out, size_t *out_len);
/* The generation ended for another reason: releases the held text into *out. */
int stop_flush_text(struct stop_state *st, char **out, size_t *out_len);

#endif
