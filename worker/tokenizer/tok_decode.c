/* Decoding: ids to token texts, the decoder's steps over that list of strings (as Hugging
 * Face's decode_chain does), then the result made valid UTF-8. Also the incremental
 * detokenizer used for streaming. */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

static const char FFFD[] = "\xEF\xBF\xBD";

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" to NN, else -1. */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static int replace_all(struct tok_pieces *out, const char *s, size_t n, const char *pat, size_t plen,
                       const char *rep, size_t rlen)
{
    struct strbuf b = {0};
    int rc = -1;
    size_t i = 0, run = 0;
    if (strbuf_reserve(&b, n) < 0) goto done;
    while (plen && i + plen <= n) {
        if (memcmp(s + i, pat, plen) == 0) {
            if (strbuf_append(&b, s + run, i - run) < 0 || strbuf_append(&b, rep, rlen) < 0) goto done;
            i += plen;
            run = i;
        } else
            i++;
    }
    if (strbuf_append(&b, s + run, n - run) < 0) goto done;
    rc = tok_pieces_add(out, b.p, b.len, false);
done:
    strbuf_free(&b);
    return rc;
}

static int flush_bytes(struct tok_pieces *out, struct strbuf *bytes, bool raw)
{
    if (bytes->len == 0) return 0;
    int rc;
    if (raw || tok_utf8_is_valid(bytes->p, bytes->len)) {
        rc = tok_pieces_add(out, bytes->p, bytes->len, false);
    } else {
        /* Hugging Face's ByteFallback: one U+FFFD per byte of an invalid group. */
        struct strbuf f = {0};
        rc = 0;
        for (size_t i = 0; i < bytes->len && rc == 0; i++) rc = strbuf_append(&f, FFFD, 3);
        if (rc == 0) rc = tok_pieces_add(out, f.p ? f.p : "", f.len, false);
        strbuf_free(&f);
    }
    bytes->len = 0;
    return rc;
}

static int dec_step(const struct tok_dec *st, const struct tok_pieces *in, struct tok_pieces *out,
                    bool at_start, bool raw, bool *fused)
{
    switch (st->kind) {
    case TOK_DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++)
            if (replace_all(out, tok_piece_str(in, i), in->v[i].len, st->a, st->a_len, st->b, st->b_len) < 0)
                return -1;
        return 0;
    case TOK_DEC_BYTEFALLBACK: {
        struct strbuf bytes = {0};
        int rc = 0;
        for (size_t i = 0; i < in->n && rc == 0; i++) {
            int b = byte_token(tok_piece_str(in, i), in->v[i].len);
            if (b >= 0) {
                rc = strbuf_putc(&bytes, (char)b);
                continue;
            }
            rc = flush_bytes(out, &bytes, raw);
            if (rc == 0) rc = tok_pieces_add(out, tok_piece_str(in, i), in->v[i].len, false);
        }
        if (rc == 0) rc = flush_bytes(out, &bytes, raw);
        strbuf_free(&bytes);
        return rc;
    }
    case TOK_DEC_FUSE:
        *fused = true;
        return tok_pieces_add(out, in->arena.p ? in->arena.p : "", in->arena.len, false);
    case TOK_DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = tok_piece_str(in, i);
            size_t a = 0, b = in->v[i].len;
            /* After a Fuse the single string is the whole sequence, so its start is the
             * sequence's start only when this window begins the sequence. */
            bool strip_start = at_start || !*fused;
            for (int k = 0; strip_start && k < st->start && b - a >= st->a_len && st->a_len &&
                            memcmp(s + a, st->a, st->a_len) == 0;
                 k++)
                a += st->a_len;
            for (int k = 0; k < st->stop && b - a >= st->a_len && st->a_len &&
                            memcmp(s + b - st->a_len, st->a, st->a_len) == 0;
                 k++)
                b -= st->a_len;
            if (tok_pieces_add(out, s + a, b - a, false) < 0) return -1;
        }
        return 0;
    case TOK_DEC_BYTELEVEL: {
        struct strbuf b = {0};
        int rc = 0;
        for (size_t i = 0; i < in->n && rc == 0; i++) {
            const unsigned char *s = (const unsigned char *)tok_piece_str(in, i);
            size_t n = in->v[i].len, start = b.len;
            bool ok = true;
            for (size_t j = 0; j < n && ok;) {
                uint32_t cp;
                int k = tok_utf8_decode(s + j, n - j, &cp);
                int byte = k > 0 ? tok_bytelevel_byte(cp) : -1;
                if (byte < 0) ok = false;
                else if ((rc = strbuf_putc(&b, (char)byte)) < 0) break;
                j += (size_t)(k > 0 ? k : 1);
            }
            if (rc == 0 && !ok) {
                b.len = start; /* not a byte-level string: keep the token's own text */
                rc = strbuf_append(&b, s, n);
            }
        }
        if (rc == 0) {
            if (raw) {
                rc = tok_pieces_add(out, b.p ? b.p : "", b.len, false);
            } else {
                struct strbuf v = {0};
                rc = tok_utf8_lossy_append(&v, b.p ? b.p : "", b.len);
                if (rc == 0) rc = tok_pieces_add(out, v.p ? v.p : "", v.len, false);
                strbuf_free(&v);
            }
        }
        *fused = true;
        strbuf_free(&b);
        return rc;
    }
    case TOK_DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            bool first = i == 0 && at_start && st->prepend_scheme != TOK_PREPEND_NEVER;
            if (replace_all(out, tok_piece_str(in, i), in->v[i].len, st->a, st->a_len, first ? "" : " ",
                            first ? 0 : 1) < 0)
                return -1;
        }
        return 0;
    }
    return -1;
}

int tok_decode_ex(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                  bool at_start, bool raw, struct strbuf *out)
{
    struct tok_pieces a = {0}, b = {0};
    int rc = -1;
    out->len = 0;
    if (strbuf_reserve(out, 0) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->text[id]) continue;
        if (skip_special && (t->attr[id] & TOK_ATTR_SPECIAL)) continue;
        if (!t->has_decoder && a.n && tok_pieces_add(&a, " ", 1, false) < 0) goto done;
        if (tok_pieces_add(&a, t->text[id], t->text_len[id], false) < 0) goto done;
    }
    bool fused = false;
    for (size_t i = 0; i < t->n_dec; i++) {
        tok_pieces_clear(&b);
        if (dec_step(&t->dec[i], &a, &b, at_start, raw, &fused) < 0) goto done;
        struct tok_pieces sw = a;
        a = b;
        b = sw;
    }
    if (raw) {
        if (strbuf_append(out, a.arena.p ? a.arena.p : "", a.arena.len) < 0) goto done;
    } else if (tok_utf8_lossy_append(out, a.arena.p ? a.arena.p : "", a.arena.len) < 0)
        goto done;
    rc = 0;
done:
    tok_pieces_free(&a);
    tok_pieces_free(&b);
    return rc;
}

int tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
               char **text, size_t *len)
{
    struct strbuf out = {0};
    if (tok_decode_ex(tok, ids, n_ids, skip_special, true, false, &out) < 0) {
        strbuf_free(&out);
        return -1;
    }
    *text = out.p;
    if (len) *len = out.len;
    return 0;
}

size_t tok_token_piece(const struct tokenizer *tok, int32_t id, char *buf, size_t cap)
{
    if (id < 0 || id >= tok->n_vocab || !tok->piece[id]) {
        if (cap) buf[0] = '\0';
        return 0;
    }
    size_t n = tok->piece_len[id];
    if (cap) {
        size_t c = n < cap ? n : cap;
        memcpy(buf, tok->piece[id], c);
        if (c < cap) buf[c] = '\0';
    }
    return n;
}

/* ---- incremental detokenizer -------------------------------------------------------------- */
/* Decodes a short window of recent ids twice (up to the last emitted id, and up to now) and
 * emits the difference once it no longer ends in an incomplete character, as vLLM and TGI do.
 * The window starts where the last emitted text ended, so every decode stays small. */
struct tok_stream {
    const struct tokenizer *tok;
    bool skip_special;
    int32_t *ids;
    size_t n, cap;
    size_t prefix_off, read_off;
    struct strbuf a, b;
};

struct tok_stream *tok_stream_new(const struct tokenizer *tok, bool skip_special)
{
    struct tok_stream *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->tok = tok;
    s->skip_special = skip_special;
    return s;
}

void tok_stream_free(struct tok_stream *s)
{
    if (!s) return;
    free(s->ids);
    strbuf_free(&s->a);
    strbuf_free(&s->b);
    free(s);
}

static int stream_emit(struct tok_stream *s, bool final, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    bool at_start = s->prefix_off == 0;
    if (tok_decode_ex(s->tok, s->ids + s->prefix_off, s->read_off - s->prefix_off, s->skip_special,
                      at_start, false, &s->a) < 0 ||
        tok_decode_ex(s->tok, s->ids + s->prefix_off, s->n - s->prefix_off, s->skip_special, at_start,
                      false, &s->b) < 0)
        return -1;
    size_t pl = s->a.len;
    /* Compare lengths only, as vLLM does: when a run of byte tokens turns out not to be valid
     * UTF-8, the full decode rewrites text already streamed (into U+FFFD), and requiring a
     * common prefix would then stall the stream for good. */
    bool grew = s->b.len > pl;
    bool partial = s->b.len >= 3 && memcmp(s->b.p + s->b.len - 3, FFFD, 3) == 0;
    const char *src = "";
    size_t n = 0;
    /* A UTF-8 character spans at most 4 tokens; text that still ends in U+FFFD after more is
     * a real replacement character (or invalid bytes), so stop holding it back. */
    bool stale = s->n - s->read_off > 8;
    if (grew && (!partial || final || stale)) {
        src = s->b.p + pl;
        n = s->b.len - pl;
        s->prefix_off = s->read_off;
        s->read_off = s->n;
    }
    char *p = malloc(n + 1);
    if (!p) return -1;
    memcpy(p, src, n);
    p[n] = '\0';
    *out = p;
    *len = n;
    return 0;
}

int tok_stream_push(struct tok_stream *s, int32_t id, char **out, size_t *len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        int32_t *v = realloc(s->ids, cap * sizeof(*v));
        if (!v) return -1;
        s->ids = v;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    return stream_emit(s, false, out, len);
}

int tok_stream_flush(struct tok_stream *s, char **out, size_t *len)
{
    return stream_emit(s, true, out, len);
}
