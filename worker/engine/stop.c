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
    free(st->held);
    st->held = NULL;
    st->held_len = st->held_cap = 0;
}

enum finish_reason stop_check_token(const struct stop_state *st, int32_t token, int32_t n_generated,
                                    int32_t n_total, bool *emit_text)
{
    *emit_text = true;
    for (int32_t i = 0; i < st->n_eos; i++) {
        if (st->eos[i] == token) {
            *emit_text = false;
            return FINISH_STOP;
        }
    }
    for (int32_t i = 0; i < st->n_stop_ids; i++) {
        if (st->stop_ids[i] == token) {
            *emit_text = false;
            return FINISH_STOP;
        }
    }
    if (st->max_tokens > 0 && n_generated >= st->max_tokens) return FINISH_LENGTH;
    if (st->max_total > 0 && n_total >= st->max_total) return FINISH_LENGTH;
    return FINISH_NONE;
}

static int held_append(struct stop_state *st, const char *text, size_t len)
{
    if (st->held_len + len + 1 > st->held_cap) {
        size_t cap = st->held_cap ? st->held_cap : 64;
        while (cap < st->held_len + len + 1) cap *= 2;
        char *nh = realloc(st->held, cap);
        if (!nh) return -1;
        st->held = nh;
        st->held_cap = cap;
    }
    if (len) memcpy(st->held + st->held_len, text, len);
    st->held_len += len;
    st->held[st->held_len] = '\0';
    return 0;
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

/* The earliest position where a stop string occurs in buf, or -1. */
static long find_stop(const struct stop_state *st, const char *buf, size_t len)
{
    long best = -1;
    for (int32_t i = 0; i < st->n_stops; i++) {
        const char *s = st->stops[i];
        size_t sl = s ? strlen(s) : 0;
        if (sl == 0 || sl > len) continue;
        const char *p = memmem(buf, len, s, sl);
        if (p && (best < 0 || p - buf < best)) best = p - buf;
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
    if (held_append(st, text, len)) return -1;
    long at = find_stop(st, st->held, st->held_len);
    if (at >= 0) {
        st->matched = true;
        int rc = emit(st->held, (size_t)at, out, out_len);
        st->held_len = 0;
        return rc ? -1 : 1;
    }
    size_t keep = partial_suffix(st, st->held, st->held_len);
    size_t n_out = st->held_len - keep;
    if (emit(st->held, n_out, out, out_len)) return -1;
    memmove(st->held, st->held + n_out, keep);
    st->held_len = keep;
    st->held[keep] = '\0';
    return 0;
}

int stop_flush_text(struct stop_state *st, char **out, size_t *out_len)
{
    int rc = emit(st->held ? st->held : "", st->matched ? 0 : st->held_len, out, out_len);
    st->held_len = 0;
    return rc;
}
