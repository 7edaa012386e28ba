/* Stop conditions: token ids, lengths, and stop strings matched across token boundaries. */
#include "worker/engine/stop.h"

#include <stdlib.h>
#include <string.h>

void stop_init(struct stop_state *st, const int *eos, int n_eos, const int32_t *stop_ids,
               int32_t n_stop_ids, char *const *stops, int32_t n_stops, int32_t max_tokens,
               int32_t max_total)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; eos && i < n_eos && st->n_eos < STOP_MAX_EOS; i++) st->eos[st->n_eos++] = eos[i];
    st->stop_ids = stop_ids;
    st->n_stop_ids = stop_ids ? n_stop_ids : 0;
    st->stops = stops;
    st->n_stops = stops ? n_stops : 0;
    st->max_tokens = max_tokens;
    st->max_total = max_total;
}

void stop_free(struct stop_state *st)
{
    strbuf_free(&st->held);
}

enum finish_reason stop_check_token(const struct stop_state *st, int32_t token, int32_t n_generated,
                                    int32_t n_total, bool *emit_text)
{
    *emit_text = true;
    for (int32_t i = 0; i < st->n_eos && n_generated > st->min_tokens; i++) {
        if (st->eos[i] == token) {
            *emit_text = st->include_stop;
            return FINISH_STOP;
        }
    }
    for (int32_t i = 0; i < st->n_stop_ids && n_generated > st->min_tokens; i++) {
        if (st->stop_ids[i] == token) {
            *emit_text = st->include_stop;
            return FINISH_STOP;
        }
    }
    if (st->max_tokens > 0 && n_generated >= st->max_tokens) return FINISH_LENGTH;
    if (st->max_total > 0 && n_total >= st->max_total) return FINISH_LENGTH;
    return FINISH_NONE;
}

static int emit(const char *text, size_t len, char **out, size_t *out_len)
{
    *out = malloc(len + 1);
    if (!*out) return -1;
    if (len) memcpy(*out, text, len);
    (*out)[len] = '\0';
    *out_len = len;
    return 0;
}

/* The earliest position where a stop string occurs in buf, or -1; *stop_len: its length (the
 * first of the list among those starting there). */
static long find_stop(const struct stop_state *st, const char *buf, size_t len, size_t *stop_len)
{
    long best = -1;
    for (int32_t i = 0; i < st->n_stops; i++) {
        const char *s = st->stops[i];
        size_t sl = s ? strlen(s) : 0;
        if (sl == 0 || sl > len) continue;
        const char *p = memmem(buf, len, s, sl);
        if (p && (best < 0 || p - buf < best)) {
            best = p - buf;
            *stop_len = sl;
        }
    }
    return best;
}

/* How many trailing bytes of buf are a proper prefix of some stop string. */
static size_t partial_suffix(const struct stop_state *st, const char *buf, size_t len)
{
    size_t best = 0;
    for (int32_t i = 0; i < st->n_stops; i++) {
        const char *s = st->stops[i];
        size_t sl = s ? strlen(s) : 0;
        size_t k = sl > 0 ? sl - 1 : 0;
        if (k > len) k = len;
        for (; k > best; k--) {
            if (memcmp(buf + len - k, s, k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

int stop_push_text(struct stop_state *st, const char *text, size_t len, char **out, size_t *out_len)
{
    if (st->matched) return emit("", 0, out, out_len) ? -1 : 1;
    if (st->n_stops == 0) return emit(text, len, out, out_len);
    if (strbuf_append(&st->held, text, len)) return -1;
    size_t stop_len = 0;
    long at = find_stop(st, st->held.p, st->held.len, &stop_len);
    if (at >= 0) {
        st->matched = true;
        int rc = emit(st->held.p, (size_t)at + (st->include_stop ? stop_len : 0), out, out_len);
        st->held.len = 0;
        return rc ? -1 : 1;
    }
    size_t keep = partial_suffix(st, st->held.p, st->held.len);
    size_t n_out = st->held.len - keep;
    if (emit(st->held.p, n_out, out, out_len)) return -1;
    memmove(st->held.p, st->held.p + n_out, keep);
    st->held.len = keep;
    st->held.p[keep] = '\0';
    return 0;
}

int stop_flush_text(struct stop_state *st, char **out, size_t *out_len)
{
    int rc = emit(strbuf_str(&st->held), st->matched ? 0 : st->held.len, out, out_len);
    st->held.len = 0;
    return rc;
}
