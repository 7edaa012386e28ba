/* Decoding: ids to token texts, the decoder's steps over that list of strings (as Hugging
 * Face's decode_chain does), then the result made valid UTF-8. The incremental detokenizer
 * (tok_stream.c) is held to give exactly this text. */
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

int tok_byte_token(const char *s, size_t n)
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
    if (strbuf_reserve(&b, n) == 0 && tok_replace_append(&b, s, n, pat, plen, rep, rlen) == 0)
        rc = tok_pieces_add(out, b.p, b.len, false);
    strbuf_free(&b);
    return rc;
}

static int flush_bytes(struct tok_pieces *out, struct strbuf *bytes, bool raw)
{
    if (bytes->len == 0) return 0;
    int rc = 0;
    if (raw || tok_utf8_is_valid(bytes->p, bytes->len)) {
        rc = tok_pieces_add(out, bytes->p, bytes->len, false);
    } else {
        /* Hugging Face's ByteFallback: an invalid group becomes one U+FFFD token per byte. */
        for (size_t i = 0; i < bytes->len && rc == 0; i++) rc = tok_pieces_add(out, FFFD, 3, false);
    }
    bytes->len = 0;
    return rc;
}

int tok_bytelevel_unmap(struct strbuf *out, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t start = out->len;
    for (size_t j = 0; j < n;) {
        uint32_t cp;
        int k = tok_utf8_decode(s + j, n - j, &cp);
        int byte = k > 0 ? tok_bytelevel_byte(cp) : -1;
        if (byte < 0) {
            out->len = start; /* not a byte-level string: keep the token's own text */
            return strbuf_append(out, str, n);
        }
        if (strbuf_putc(out, (char)byte) < 0) return -1;
        j += (size_t)k;
    }
    return 0;
}

void tok_strip_range(const struct tok_dec *st, const char *s, size_t n, bool strip_start, size_t *a_out,
                     size_t *b_out)
{
    size_t a = 0, b = n;
    for (int k = 0; strip_start && k < st->start && b - a >= st->a_len && st->a_len &&
                    memcmp(s + a, st->a, st->a_len) == 0;
         k++)
        a += st->a_len;
    for (int k = 0; k < st->stop && b - a >= st->a_len && st->a_len && memcmp(s + b - st->a_len, st->a, st->a_len) == 0;
         k++)
        b -= st->a_len;
    *a_out = a;
    *b_out = b;
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
            int b = tok_byte_token(tok_piece_str(in, i), in->v[i].len);
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
            size_t a, b;
            /* After a Fuse the single string is the whole sequence, so its start is the
             * sequence's start only when this window begins the sequence. */
            tok_strip_range(st, tok_piece_str(in, i), in->v[i].len, at_start || !*fused, &a, &b);
            if (tok_pieces_add(out, tok_piece_str(in, i) + a, b - a, false) < 0) return -1;
        }
        return 0;
    case TOK_DEC_BYTELEVEL: {
        struct strbuf b = {0};
        int rc = 0;
        for (size_t i = 0; i < in->n && rc == 0; i++) rc = tok_bytelevel_unmap(&b, tok_piece_str(in, i), in->v[i].len);
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

size_t tok_token_piece_first(const struct tokenizer *tok, int32_t id, char *buf, size_t cap)
{
    struct strbuf b = {0};
    size_t n = 0;
    if (id >= 0 && id < tok->n_vocab && tok->text[id] && tok_decode_ex(tok, &id, 1, false, true, true, &b) == 0)
        n = b.len;
    if (cap) {
        size_t c = n < cap ? n : cap;
        if (c) memcpy(buf, b.p, c);
        if (c < cap) buf[c] = '\0';
    }
    strbuf_free(&b);
    return n;
}
