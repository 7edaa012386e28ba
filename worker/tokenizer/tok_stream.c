/* The incremental detokenizer for streaming: each push returns the text that no later token
 * can change, so the pieces of a stream, plus its flush, are exactly tok_decode of all its
 * ids, byte for byte, and each piece is whole UTF-8.
 *
 * Decoding (tok_decode.c) runs the decoder's steps over the list of token strings. Here the
 * same steps run as a chain of stages that pass on only what is final:
 *   - before any Fuse or ByteLevel the list grows one closed string at a time ("elements");
 *     Replace, Strip and Metaspace change each on its own (Metaspace knows which is first);
 *     ByteFallback holds an open run of byte tokens, because a later byte can turn a valid
 *     run into one U+FFFD per byte: the run is final when a non-byte token closes it, or as
 *     soon as no continuation can make it valid UTF-8 (then every byte of it, later ones too,
 *     is a U+FFFD);
 *   - Fuse and ByteLevel turn the list into one string that grows at its end ("appends");
 *     ByteLevel's bytes go through a lossy UTF-8 decoder that waits only on the start of a
 *     character still missing bytes;
 *   - on that one string, Replace and Metaspace hold a tail that could still begin a match,
 *     Strip holds what its stop count could still cut from the end (and decides its start
 *     first), ByteFallback holds a start that could still be exactly "<0xNN>", and ByteLevel
 *     holds everything until a character outside its byte table decides it (no tokenizer
 *     in use fuses before these; they are exact, just late);
 *   - last, the joined text is made valid UTF-8 as tok_decode does, holding an incomplete
 *     character. */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

static const char FFFD[] = "\xEF\xBF\xBD";

struct stage {
    const struct tok_dec *d;
    bool growing;         /* gets appends to one string (a Fuse or ByteLevel came before) */
    size_t n_in;          /* elements seen: Metaspace treats the first differently */
    struct strbuf held;   /* text (or a run of bytes) that is not final yet */
    struct strbuf work;   /* what goes on to the next stage */
    int left;             /* Strip: leading copies that may still go */
    bool decided;         /* ByteFallback: the open run is invalid, or the one string is no byte
                           * token; ByteLevel: the one string is not byte-level */
    size_t checked;       /* bytes of held known to be whole characters (ByteFallback's run)
                           * or in the byte table (ByteLevel) */
    struct strbuf pend;   /* ByteLevel: bytes waiting on the rest of a character */
};

struct tok_stream {
    const struct tokenizer *tok;
    bool skip_special;
    size_t n_tokens;      /* tokens that entered the chain */
    struct stage *st;
    size_t n_st;
    struct strbuf pend;   /* the output's incomplete character */
    struct strbuf *out;   /* where this call's text goes */
};

/* Stage k takes the next element (or append) p[0..n); stage n_st is the output. */
static int stage_push(struct tok_stream *s, size_t k, const char *p, size_t n);
/* The sequence ended: stage k lets go of what it holds, then tells the next. */
static int stage_end(struct tok_stream *s, size_t k);

/* A lossy UTF-8 decoder fed in parts: appends to out what is decided and keeps in pend the
 * start of a character that more bytes could complete (nothing once final). */
static int lossy_feed(struct strbuf *pend, const char *p, size_t n, bool final, struct strbuf *out)
{
    if (strbuf_append(pend, p, n) < 0) return -1;
    size_t keep = final ? 0 : tok_utf8_incomplete_tail(pend->p, pend->len);
    if (tok_utf8_lossy_append(out, pend->p, pend->len - keep) < 0) return -1;
    memmove(pend->p, pend->p + pend->len - keep, keep);
    pend->len = keep;
    return 0;
}

static void drop_front(struct strbuf *b, size_t n)
{
    if (n) memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static int pass_work(struct tok_stream *s, size_t k)
{
    struct stage *st = &s->st[k];
    return st->work.len ? stage_push(s, k + 1, st->work.p, st->work.len) : 0;
}

/* Replace (or Metaspace) on the one string: held keeps the tail from the first place where
 * a match could still start. */
static int replace_stream(struct tok_stream *s, size_t k, const char *rep, size_t rlen, const char *p, size_t n,
                          bool final)
{
    struct stage *st = &s->st[k];
    size_t held = 0;
    if (strbuf_append(&st->held, p, n) < 0) return -1;
    st->work.len = 0;
    if (tok_replace_append_open(&st->work, st->held.p, st->held.len, st->d->a, st->d->a_len, rep, rlen,
                                final ? NULL : &held) < 0)
        return -1;
    drop_front(&st->held, st->held.len - held);
    return pass_work(s, k);
}

/* Strip on the one string: first its leading copies (waiting while the text is shorter than
 * one), then all but the stop * length bytes that its end could still lose. */
static int strip_stream(struct tok_stream *s, size_t k, const char *p, size_t n, bool final)
{
    struct stage *st = &s->st[k];
    const struct tok_dec *d = st->d;
    if (strbuf_append(&st->held, p, n) < 0) return -1;
    while (st->left > 0) {
        size_t hn = st->held.len;
        if (hn >= d->a_len && memcmp(st->held.p, d->a, d->a_len) == 0) {
            drop_front(&st->held, d->a_len);
            st->left--;
        } else if (hn < d->a_len && !final && memcmp(st->held.p, d->a, hn) == 0) {
            return 0;
        } else
            st->left = 0;
    }
    size_t a = 0, b = st->held.len;
    if (final) {
        tok_strip_range(d, st->held.p, st->held.len, false, &a, &b);
    } else {
        size_t hold = (size_t)(d->stop > 0 ? d->stop : 0) * d->a_len;
        b = b > hold ? b - hold : 0;
    }
    int rc = b > a ? stage_push(s, k + 1, st->held.p + a, b - a) : 0;
    drop_front(&st->held, b);
    return rc;
}

/* ByteFallback over elements: byte tokens gather in an open run. end: the sequence ended. */
static int bytefallback_elem(struct tok_stream *s, size_t k, const char *p, size_t n, bool end)
{
    struct stage *st = &s->st[k];
    int byte = end ? -1 : tok_byte_token(p, n);
    if (byte >= 0) {
        if (st->decided) return stage_push(s, k + 1, FFFD, 3);
        if (strbuf_putc(&st->held, (char)byte) < 0) return -1;
        const unsigned char *h = (const unsigned char *)st->held.p;
        size_t hn = st->held.len, whole = st->checked;
        for (int c; whole < hn && (c = tok_utf8_valid_len(h + whole, hn - whole)) > 0;) whole += (size_t)c;
        st->checked = whole; /* the run is whole characters up to here */
        if (whole == hn || tok_utf8_incomplete_tail(st->held.p + whole, hn - whole) == hn - whole) return 0;
        /* No continuation makes the run valid: one U+FFFD per byte, whatever follows. */
        st->decided = true;
        for (size_t i = 0; i < hn; i++)
            if (stage_push(s, k + 1, FFFD, 3) < 0) return -1;
        st->held.len = 0;
        st->checked = 0;
        return 0;
    }
    /* Any other token, or the end, closes the run. */
    int rc = 0;
    if (st->held.len && st->checked == st->held.len) {
        rc = stage_push(s, k + 1, st->held.p, st->held.len);
    } else {
        for (size_t i = 0; i < st->held.len && rc == 0; i++) rc = stage_push(s, k + 1, FFFD, 3);
    }
    st->held.len = 0;
    st->checked = 0;
    st->decided = false;
    return rc == 0 && !end ? stage_push(s, k + 1, p, n) : rc;
}

/* ByteFallback on the one string: it is a byte token only if the whole of it is "<0xNN>". */
static int bytefallback_stream(struct tok_stream *s, size_t k, const char *p, size_t n, bool final)
{
    struct stage *st = &s->st[k];
    if (st->decided) return n ? stage_push(s, k + 1, p, n) : 0;
    if (strbuf_append(&st->held, p, n) < 0) return -1;
    static const char shape[] = "<0x__>", hex[] = "0123456789abcdefABCDEF";
    const char *h = st->held.p;
    size_t hn = st->held.len;
    bool maybe = hn <= 6;
    for (size_t i = 0; i < hn && maybe; i++)
        maybe = shape[i] == '_' ? h[i] && strchr(hex, h[i]) : h[i] == shape[i];
    if (maybe && !final) return 0;
    st->decided = true;
    int byte = final ? tok_byte_token(h, hn) : -1;
    int rc = 0;
    if (byte >= 0 && byte < 0x80) {
        char c = (char)byte;
        rc = stage_push(s, k + 1, &c, 1);
    } else if (byte >= 0) {
        rc = stage_push(s, k + 1, FFFD, 3); /* a lone byte that is not ASCII is invalid */
    } else if (hn) {
        rc = stage_push(s, k + 1, h, hn);
    }
    st->held.len = 0;
    return rc;
}

/* ByteLevel on the one string: it is byte-level only if every character of all of it is in
 * the byte table, so it is held until one is not (or the end). */
static int bytelevel_stream(struct tok_stream *s, size_t k, const char *p, size_t n, bool final)
{
    struct stage *st = &s->st[k];
    st->work.len = 0;
    if (st->decided) {
        if (lossy_feed(&st->pend, p, n, final, &st->work) < 0) return -1;
        return pass_work(s, k);
    }
    if (strbuf_append(&st->held, p, n) < 0) return -1;
    const unsigned char *h = (const unsigned char *)st->held.p;
    size_t hn = st->held.len;
    while (st->checked < hn) {
        uint32_t cp;
        int c = tok_utf8_decode(h + st->checked, hn - st->checked, &cp);
        if (c > 0 && tok_bytelevel_byte(cp) >= 0) {
            st->checked += (size_t)c;
            continue;
        }
        /* The start of a character still missing bytes decides nothing yet. */
        if (!(c <= 0 && !final && tok_utf8_incomplete_tail(st->held.p, hn) == hn - st->checked)) st->decided = true;
        break;
    }
    if (!st->decided && !final) return 0;
    struct strbuf bytes = {0};
    int rc = st->decided ? strbuf_append(&bytes, h, hn) : tok_bytelevel_unmap(&bytes, st->held.p, hn);
    if (rc == 0) rc = strbuf_reserve(&bytes, 0);
    if (rc == 0) rc = lossy_feed(&st->pend, bytes.p, bytes.len, final, &st->work);
    strbuf_free(&bytes);
    st->held.len = 0;
    st->decided = true;
    return rc < 0 ? rc : pass_work(s, k);
}

/* One step on the one growing string. */
static int growing_step(struct tok_stream *s, size_t k, const char *p, size_t n, bool final)
{
    const struct tok_dec *d = s->st[k].d;
    switch (d->kind) {
    case TOK_DEC_REPLACE:
        return replace_stream(s, k, d->b, d->b_len, p, n, final);
    case TOK_DEC_METASPACE: /* the one string is the first */
        return d->prepend_scheme != TOK_PREPEND_NEVER ? replace_stream(s, k, "", 0, p, n, final)
                                                      : replace_stream(s, k, " ", 1, p, n, final);
    case TOK_DEC_STRIP:
        return strip_stream(s, k, p, n, final);
    case TOK_DEC_BYTEFALLBACK:
        return bytefallback_stream(s, k, p, n, final);
    case TOK_DEC_BYTELEVEL:
        return bytelevel_stream(s, k, p, n, final);
    case TOK_DEC_FUSE:
        return n ? stage_push(s, k + 1, p, n) : 0;
    }
    return -1;
}

static int stage_push(struct tok_stream *s, size_t k, const char *p, size_t n)
{
    if (k == s->n_st) return lossy_feed(&s->pend, p, n, false, s->out);
    struct stage *st = &s->st[k];
    const struct tok_dec *d = st->d;
    if (st->growing) return growing_step(s, k, p, n, false);
    bool first = st->n_in++ == 0;
    st->work.len = 0;
    switch (d->kind) {
    case TOK_DEC_REPLACE:
        if (tok_replace_append(&st->work, p, n, d->a, d->a_len, d->b, d->b_len) < 0) return -1;
        return stage_push(s, k + 1, strbuf_str(&st->work), st->work.len);
    case TOK_DEC_METASPACE:
        first = first && d->prepend_scheme != TOK_PREPEND_NEVER;
        if (tok_replace_append(&st->work, p, n, d->a, d->a_len, first ? "" : " ", first ? 0 : 1) < 0) return -1;
        return stage_push(s, k + 1, strbuf_str(&st->work), st->work.len);
    case TOK_DEC_STRIP: {
        size_t a, b;
        tok_strip_range(d, p, n, true, &a, &b);
        return stage_push(s, k + 1, p + a, b - a);
    }
    case TOK_DEC_BYTEFALLBACK:
        return bytefallback_elem(s, k, p, n, false);
    case TOK_DEC_FUSE:
        return n ? stage_push(s, k + 1, p, n) : 0;
    case TOK_DEC_BYTELEVEL: {
        int rc = tok_bytelevel_unmap(&st->held, p, n);
        if (rc == 0) rc = strbuf_reserve(&st->held, 0);
        if (rc == 0) rc = lossy_feed(&st->pend, st->held.p, st->held.len, false, &st->work);
        st->held.len = 0;
        return rc < 0 ? rc : pass_work(s, k);
    }
    }
    return -1;
}

static int stage_end(struct tok_stream *s, size_t k)
{
    if (k == s->n_st) return lossy_feed(&s->pend, "", 0, true, s->out);
    struct stage *st = &s->st[k];
    int rc = 0;
    if (st->growing) {
        rc = growing_step(s, k, "", 0, true);
    } else if (st->d->kind == TOK_DEC_BYTEFALLBACK) {
        rc = bytefallback_elem(s, k, NULL, 0, true);
    } else if (st->d->kind == TOK_DEC_BYTELEVEL) {
        st->work.len = 0;
        rc = lossy_feed(&st->pend, "", 0, true, &st->work);
        if (rc == 0) rc = pass_work(s, k);
    }
    return rc < 0 ? rc : stage_end(s, k + 1);
}

struct tok_stream *tok_stream_new(const struct tokenizer *tok, bool skip_special)
{
    struct tok_stream *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->tok = tok;
    s->skip_special = skip_special;
    s->n_st = tok->n_dec;
    if (s->n_st && !(s->st = calloc(s->n_st, sizeof(*s->st)))) {
        free(s);
        return NULL;
    }
    bool growing = false;
    for (size_t i = 0; i < s->n_st; i++) {
        struct stage *st = &s->st[i];
        st->d = &tok->dec[i];
        st->growing = growing;
        st->left = st->d->kind == TOK_DEC_STRIP && st->d->a_len ? st->d->start : 0;
        if (st->d->kind == TOK_DEC_FUSE || st->d->kind == TOK_DEC_BYTELEVEL) growing = true;
    }
    return s;
}

void tok_stream_free(struct tok_stream *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_st; i++) {
        strbuf_free(&s->st[i].held);
        strbuf_free(&s->st[i].work);
        strbuf_free(&s->st[i].pend);
    }
    free(s->st);
    strbuf_free(&s->pend);
    free(s);
}

/* Runs one token, or the end, through the chain; what became final goes to *out. */
static int stream_run(struct tok_stream *s, int32_t id, bool end, char **out, size_t *len)
{
    struct strbuf text = {0};
    const struct tokenizer *t = s->tok;
    int rc = strbuf_append(&text, "", 0); /* "" when nothing becomes final */
    s->out = &text;
    if (rc == 0 && end) {
        rc = stage_end(s, 0);
    } else if (rc == 0 && id >= 0 && id < t->n_vocab && t->text[id] &&
               !(s->skip_special && (t->attr[id] & TOK_ATTR_SPECIAL))) {
        /* Without a decoder, tokens are joined with spaces (as Hugging Face does). */
        if (!t->has_decoder && s->n_tokens) rc = stage_push(s, 0, " ", 1);
        if (rc == 0) rc = stage_push(s, 0, t->text[id], t->text_len[id]);
        s->n_tokens++;
    }
    s->out = NULL;
    if (rc < 0) {
        strbuf_free(&text);
        return -1;
    }
    *out = text.p;
    *len = text.len;
    return 0;
}

int tok_stream_push(struct tok_stream *s, int32_t id, char **out, size_t *len)
{
    return stream_run(s, id, false, out, len);
}

int tok_stream_flush(struct tok_stream *s, char **out, size_t *len)
{
    return stream_run(s, -1, true, out, len);
}
