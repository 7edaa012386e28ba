/* Loading entry point, encoding (added tokens, normalizer, pre-tokenizer, model,
 * post-processor) and the accessors of the public header. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/tokenizer/tok_internal.h"

int tok_alloc_ids(struct tokenizer *t, int32_t n_vocab)
{
    t->n_vocab = n_vocab;
    t->text = calloc((size_t)n_vocab + 1, sizeof(*t->text));
    t->text_len = calloc((size_t)n_vocab + 1, sizeof(*t->text_len));
    t->attr = calloc((size_t)n_vocab + 1, 1);
    t->piece = calloc((size_t)n_vocab + 1, sizeof(*t->piece));
    t->piece_len = calloc((size_t)n_vocab + 1, sizeof(*t->piece_len));
    return t->text && t->text_len && t->attr && t->piece && t->piece_len ? 0 : -1;
}

int tok_set_text(struct tokenizer *t, int32_t id, const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (!p) return -1;
    memcpy(p, s, len);
    p[len] = '\0';
    free(t->text[id]);
    t->text[id] = p;
    t->text_len[id] = (uint32_t)len;
    return 0;
}

static int added_cmp_len(const void *a, const void *b, void *ctx)
{
    const struct tokenizer *t = ctx;
    size_t la = t->added[*(const uint32_t *)a].len, lb = t->added[*(const uint32_t *)b].len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

int tok_finish(struct tokenizer *t, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", i);
        t->byte_id[i] = tok_strmap_get(&t->vocab, name, 6);
    }
    /* Normalized added tokens are looked for in normalized text, in their normalized form
     * (Hugging Face normalizes their content the same way). */
    for (size_t i = 0; i < t->n_added; i++) {
        struct tok_added *ad = &t->added[i];
        if (ad->normalized) t->has_normalized_added = true;
        if (!ad->normalized || t->n_norm == 0) continue;
        struct strbuf nb = {0};
        if (tok_normalize(t, ad->content, ad->len, &nb) < 0) {
            strbuf_free(&nb);
            return -1;
        }
        free(ad->content);
        ad->content = nb.p;
        ad->len = nb.len;
    }
    /* Bucket the added tokens by first byte, longest first inside a bucket. */
    free(t->added_order);
    t->added_order = malloc((t->n_added + 1) * sizeof(uint32_t));
    if (!t->added_order) return -1;
    uint32_t counts[257] = {0};
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len) counts[(unsigned char)t->added[i].content[0] + 1]++;
    for (int i = 1; i <= 256; i++) counts[i] += counts[i - 1];
    memcpy(t->added_first, counts, sizeof(counts));
    uint32_t fill[256];
    memcpy(fill, counts, sizeof(fill));
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len) t->added_order[fill[(unsigned char)t->added[i].content[0]]++] = (uint32_t)i;
    for (int c = 0; c < 256; c++)
        qsort_r(t->added_order + t->added_first[c], t->added_first[c + 1] - t->added_first[c],
                sizeof(uint32_t), added_cmp_len, t);
    for (size_t i = 0; i < t->n_added; i++) {
        int32_t id = t->added[i].id;
        t->attr[id] |= TOK_ATTR_ADDED | (t->added[i].special ? TOK_ATTR_SPECIAL : 0);
    }
    struct strbuf b = {0};
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!t->text[id]) continue;
        if (tok_decode_ex(t, &id, 1, false, false, true, &b) < 0) goto fail;
        t->piece[id] = malloc(b.len + 1);
        if (!t->piece[id]) goto fail;
        memcpy(t->piece[id], b.p, b.len + 1);
        t->piece_len[id] = (uint32_t)b.len;
    }
    strbuf_free(&b);
    return 0;
fail:
    strbuf_free(&b);
    return -1;
}

void tok_pipeline_clear(struct tokenizer *t)
{
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
        if (t->norm[i].re) pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (size_t i = 0; i < t->n_pre; i++)
        if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    t->norm = NULL;
    t->pre = NULL;
    t->dec = NULL;
    t->n_norm = t->n_pre = t->n_dec = 0;
}

void tok_release(struct tokenizer *t)
{
    for (int32_t i = 0; t->text && i < t->n_vocab; i++) free(t->text[i]);
    for (int32_t i = 0; t->piece && i < t->n_vocab; i++) free(t->piece[i]);
    free(t->text);
    free(t->text_len);
    free(t->attr);
    free(t->piece);
    free(t->piece_len);
    tok_strmap_free(&t->vocab);
    free(t->vocab_keys);
    tok_pairmap_free(&t->merges);
    free(t->cont_prefix);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->added_order);
    tok_pipeline_clear(t);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t->bos_text);
    free(t->eos_text);
    free(t->chat_template);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int tok_load(struct tokenizer **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    struct tokenizer *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    t->unk_id = t->bos_id = t->eos_id = -1;
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
    } else if (S_ISDIR(st.st_mode)) {
        char json[4096], cfg[4096];
        snprintf(json, sizeof(json), "%s/tokenizer.json", path);
        snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", path);
        rc = tok_load_json(t, json, cfg, err, errlen);
    } else if (ends_with(path, ".gguf")) {
        rc = tok_load_gguf(t, path, err, errlen);
    } else {
        char cfg[4096];
        const char *slash = strrchr(path, '/');
        if (slash) snprintf(cfg, sizeof(cfg), "%.*s/tokenizer_config.json", (int)(slash - path), path);
        else snprintf(cfg, sizeof(cfg), "tokenizer_config.json");
        rc = tok_load_json(t, path, cfg, err, errlen);
    }
    if (rc == 0 && tok_finish(t, err, errlen) < 0) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -1;
    }
    if (rc != 0) {
        tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void tok_free(struct tokenizer *tok)
{
    if (!tok) return;
    tok_release(tok);
    free(tok);
}

/* ---- encode ------------------------------------------------------------------------------- */
struct ids {
    int32_t *v;
    size_t n, cap;
};

static int ids_add(struct ids *x, int32_t id)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 64;
        int32_t *v = realloc(x->v, cap * sizeof(*v));
        if (!v) return -1;
        x->v = v;
        x->cap = cap;
    }
    x->v[x->n++] = id;
    return 0;
}

/* Hugging Face checks single_word tokens with Rust's Unicode \\w: alphabetic, marks, decimal
 * digits, connector punctuation and the joiners. */
static pcre2_code *word_re;
static pthread_once_t word_once = PTHREAD_ONCE_INIT;
static void word_compile(void)
{
    static const char pat[] = "[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    word_re = tok_regex_compile(pat, sizeof(pat) - 1, false, NULL, 0);
}

static bool is_word_char_at(const char *s, size_t n)
{
    if (n == 0) return false;
    pthread_once(&word_once, word_compile);
    if (!word_re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(word_re, NULL);
    if (!md) return false;
    int k = tok_utf8_valid_len((const unsigned char *)s, n);
    int m = pcre2_match(word_re, (PCRE2_SPTR)s, (size_t)(k > 0 ? k : 1), 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return m >= 0;
}

/* Start of the character that ends at s[i] (exclusive). */
static size_t char_before(const char *s, size_t i)
{
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    return j;
}

static bool space_at(const char *s, size_t n, size_t i, int *len)
{
    uint32_t cp;
    int k = tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
    *len = k;
    return k > 0 && tok_is_space_cp(cp);
}

/* The added token starting at s[i] (longest first), or -1; normalized picks which set. */
static long added_at(const struct tokenizer *t, const char *s, size_t n, size_t i, bool normalized)
{
    unsigned char c = (unsigned char)s[i];
    for (uint32_t k = t->added_first[c]; k < t->added_first[c + 1]; k++) {
        const struct tok_added *a = &t->added[t->added_order[k]];
        if (a->normalized != normalized || a->len > n - i || memcmp(s + i, a->content, a->len) != 0) continue;
        if (a->single_word) {
            size_t b = i > 0 ? char_before(s, i) : 0;
            if ((i > 0 && is_word_char_at(s + b, i - b)) || is_word_char_at(s + i + a->len, n - i - a->len))
                continue;
        }
        return (long)t->added_order[k];
    }
    return -1;
}

struct encoder {
    const struct tokenizer *t;
    struct ids *out;
    struct tok_pieces p, q;
};

/* Pre-tokenizes and runs the model over one normalized stretch of text. */
static int encode_normalized(struct encoder *e, const char *s, size_t n, bool at_origin)
{
    if (n == 0) return 0;
    tok_pieces_clear(&e->p);
    if (tok_pieces_add(&e->p, s, n, at_origin) < 0) return -1;
    if (tok_pretokenize(e->t, &e->p, &e->q) < 0) return -1;
    for (size_t i = 0; i < e->p.n; i++)
        if (tok_bpe_encode(e->t, tok_piece_str(&e->p, i), e->p.v[i].len, &e->out->v, &e->out->n, &e->out->cap) < 0)
            return -1;
    return 0;
}

/* Splits s on added tokens of one kind (those matched in raw text, or those matched after
 * normalization); the stretches between are normalized (raw text only) and encoded. */
static int split_added(struct encoder *e, const char *s, size_t n, bool normalized, bool at_origin)
{
    size_t run = 0, i = 0;
    struct strbuf norm = {0};
    int rc = -1;
    while (i <= n) {
        long k = -1;
        size_t a = i, b = i;
        if (i < n && e->t->n_added) {
            k = added_at(e->t, s, n, i, normalized);
            if (k >= 0) {
                const struct tok_added *ad = &e->t->added[k];
                b = i + ad->len;
                int w;
                if (ad->lstrip)
                    while (a > run && space_at(s, a, char_before(s, a), &w)) a = char_before(s, a);
                if (ad->rstrip)
                    while (b < n && space_at(s, n, b, &w)) b += (size_t)w;
            }
        }
        if (k < 0 && i < n) {
            i++;
            continue;
        }
        /* s[run..a) is plain text. */
        if (a > run) {
            if (normalized) {
                if (encode_normalized(e, s + run, a - run, at_origin && run == 0) < 0) goto done;
            } else {
                if (tok_normalize(e->t, s + run, a - run, &norm) < 0) goto done;
                if (e->t->has_normalized_added) {
                    struct strbuf keep = norm;
                    norm = (struct strbuf){0};
                    int r = split_added(e, keep.p, keep.len, true, at_origin && run == 0);
                    strbuf_free(&keep);
                    if (r < 0) goto done;
                } else if (encode_normalized(e, norm.p, norm.len, at_origin && run == 0) < 0)
                    goto done;
            }
        }
        if (k < 0) break;
        if (ids_add(e->out, e->t->added[k].id) < 0) goto done;
        i = run = b;
    }
    rc = 0;
done:
    strbuf_free(&norm);
    return rc;
}

int tok_encode(const struct tokenizer *tok, const char *text, size_t len, bool add_special, int32_t **ids,
               size_t *n_ids)
{
    struct ids out = {0};
    struct encoder e = {.t = tok, .out = &out};
    struct strbuf clean = {0};
    int rc = -1;
    *ids = NULL;
    *n_ids = 0;
    if (!tok_utf8_is_valid(text, len)) {
        if (tok_utf8_lossy_append(&clean, text, len) < 0) goto done;
        text = clean.p;
        len = clean.len;
    }
    if (add_special)
        for (size_t i = 0; i < tok->n_prefix; i++)
            if (ids_add(&out, tok->prefix_ids[i]) < 0) goto done;
    if (split_added(&e, text, len, false, true) < 0) goto done;
    if (add_special)
        for (size_t i = 0; i < tok->n_suffix; i++)
            if (ids_add(&out, tok->suffix_ids[i]) < 0) goto done;
    if (!out.v && !(out.v = malloc(sizeof(int32_t)))) goto done;
    *ids = out.v;
    *n_ids = out.n;
    out.v = NULL;
    rc = 0;
done:
    free(out.v);
    strbuf_free(&clean);
    tok_pieces_free(&e.p);
    tok_pieces_free(&e.q);
    return rc;
}

/* ---- accessors ---------------------------------------------------------------------------- */
int tok_vocab_size(const struct tokenizer *tok) { return tok->n_vocab; }
int tok_bos_id(const struct tokenizer *tok) { return tok->bos_id; }
int tok_eos_id(const struct tokenizer *tok) { return tok->eos_id; }

bool tok_is_special(const struct tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab && (tok->attr[id] & TOK_ATTR_SPECIAL);
}

const char *tok_chat_template(const struct tokenizer *tok) { return tok->chat_template; }
const char *tok_bos_text(const struct tokenizer *tok) { return tok->bos_text ? tok->bos_text : ""; }
const char *tok_eos_text(const struct tokenizer *tok) { return tok->eos_text ? tok->eos_text : ""; }
