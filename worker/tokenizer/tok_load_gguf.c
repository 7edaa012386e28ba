/* Loading a GGUF file's embedded vocabulary: tokenizer.ggml.model "llama" (SentencePiece BPE
 * by scores) or "gpt2" (byte-level BPE with a merges list, the split regex chosen by
 * tokenizer.ggml.pre). The SentencePiece pipeline is expressed with the same steps tokenizer.json
 * uses for Llama 2, and the score-ordered merging with the same pair table: every pair of
 * tokens whose concatenation is a normal token merges, the higher the merged token's score the
 * earlier, leftmost first among equals (what SentencePiece and llama.cpp do). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/gguf/gguf.h"
#include "worker/tokenizer/tok_internal.h"

enum { GGUF_TOK_NORMAL = 1, GGUF_TOK_UNKNOWN = 2, GGUF_TOK_CONTROL = 3, GGUF_TOK_USER = 4, GGUF_TOK_BYTE = 6 };

static const char SPACE_MARK[] = "\xE2\x96\x81"; /* U+2581 */

struct by_score {
    float score;
    int32_t id;
};

static int cmp_score(const void *a, const void *b)
{
    const struct by_score *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int setup_pipeline(struct tokenizer *t, bool add_space_prefix)
{
    size_t nn = add_space_prefix ? 2 : 1;
    t->norm = calloc(nn, sizeof(*t->norm));
    t->dec = calloc(4, sizeof(*t->dec));
    if (!t->norm || !t->dec) return -1;
    size_t k = 0;
    if (add_space_prefix)
        t->norm[k++] = (struct tok_norm){.kind = TOK_NORM_PREPEND, .a = tok_strndup(SPACE_MARK, 3), .a_len = 3};
    t->norm[k++] = (struct tok_norm){.kind = TOK_NORM_REPLACE, .a = tok_strndup(" ", 1), .a_len = 1,
                                     .b = tok_strndup(SPACE_MARK, 3), .b_len = 3};
    t->n_norm = k;
    t->has_decoder = true;
    t->dec[0] = (struct tok_dec){.kind = TOK_DEC_REPLACE, .a = tok_strndup(SPACE_MARK, 3), .a_len = 3, .b = tok_strndup(" ", 1), .b_len = 1};
    t->dec[1] = (struct tok_dec){.kind = TOK_DEC_BYTEFALLBACK};
    t->dec[2] = (struct tok_dec){.kind = TOK_DEC_FUSE};
    t->n_dec = 3;
    if (add_space_prefix) t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_STRIP, .a = tok_strndup(" ", 1), .a_len = 1, .start = 1};
    for (size_t i = 0; i < t->n_norm; i++)
        if (!t->norm[i].a || (t->norm[i].kind == TOK_NORM_REPLACE && !t->norm[i].b)) return -1;
    for (size_t i = 0; i < t->n_dec; i++)
        if ((t->dec[i].kind == TOK_DEC_REPLACE || t->dec[i].kind == TOK_DEC_STRIP) && !t->dec[i].a) return -1;
    return 0;
}

/* SentencePiece: for each normal token, every split into two tokens, ranked by its score. */
static int spm_merges(struct tokenizer *t, struct by_score *order, const int32_t *types, size_t n_tok)
{
    qsort(order, n_tok, sizeof(*order), cmp_score);
    if (tok_pairmap_init(&t->merges, n_tok * 2) < 0) return -1;
    int32_t rank = -1;
    for (size_t k = 0; k < n_tok; k++) {
        if (k == 0 || order[k].score != order[k - 1].score) rank++;
        int32_t id = order[k].id;
        if (types[id] != GGUF_TOK_NORMAL) continue;
        const char *s = t->text[id];
        size_t len = t->text_len[id];
        for (size_t cut = 1; cut < len; cut++) {
            if (((unsigned char)s[cut] & 0xC0) == 0x80) continue;
            int32_t a = tok_strmap_get(&t->vocab, s, cut), b = tok_strmap_get(&t->vocab, s + cut, len - cut);
            if (a >= 0 && b >= 0 && tok_pairmap_put(&t->merges, a, b, rank, id) < 0) return -1;
        }
    }
    return 0;
}

/* Byte-level BPE: the merges array as "left right" strings, ranked by position. Returns -1 when
 * malformed, -2 when out of memory. */
static int bpe_merges(struct tokenizer *t, const struct gguf_file *f, const char *field)
{
    enum gguf_value_type et;
    uint64_t n;
    if (gguf_get_array(f, field, &et, &n) != 0 || et != GGUF_TYPE_STRING) return -1;
    if (tok_pairmap_init(&t->merges, n) < 0) return -2;
    char *joined = NULL;
    size_t cap = 0;
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        const char *s;
        size_t len;
        if (gguf_array_get_string(f, field, i, &s, &len) != 0) return -1;
        const char *sp = memchr(s, ' ', len);
        if (!sp || sp == s || sp + 1 == s + len) {
            rc = -1;
            break;
        }
        size_t alen = (size_t)(sp - s), blen = len - alen - 1;
        if (alen + blen > cap) {
            cap = (alen + blen) * 2;
            char *p = realloc(joined, cap);
            if (!p) {
                rc = -2;
                break;
            }
            joined = p;
        }
        memcpy(joined, s, alen);
        memcpy(joined + alen, sp + 1, blen);
        int32_t a = tok_strmap_get(&t->vocab, s, alen), b = tok_strmap_get(&t->vocab, sp + 1, blen),
                m = tok_strmap_get(&t->vocab, joined, alen + blen);
        if (a < 0 || b < 0 || m < 0) rc = -1;
        else if (tok_pairmap_put(&t->merges, a, b, (int32_t)i, m) < 0) rc = -2;
    }
    free(joined);
    return rc;
}

/* The split regex llama.cpp uses for each tokenizer.ggml.pre, with what Hugging Face's
 * tokenizer.json of the same family adds around it. */
static int setup_bytelevel(struct tokenizer *t, const char *pre, size_t pre_len)
{
    static const char llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    static const char qwen2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
#define IS(name) (pre_len == sizeof(name) - 1 && memcmp(pre, name, pre_len) == 0)
    const char *pattern = NULL;
    bool nfc = false, digits = false;
    if (IS("smollm")) {
        digits = true; /* Hugging Face: Digits(individual) then ByteLevel with GPT-2's regex */
    } else if (IS("llama-bpe") || IS("llama3") || IS("smaug-bpe")) {
        pattern = llama3;
        t->ignore_merges = true;
    } else if (IS("qwen2")) {
        pattern = qwen2;
        nfc = true;
    } else if (!(IS("default") || IS("gpt-2") || IS("gpt2"))) {
        return -1;
    }
#undef IS
    t->pre = calloc(2, sizeof(*t->pre));
    t->dec = calloc(1, sizeof(*t->dec));
    if (!t->pre || !t->dec) return -2;
    if (pattern) {
        t->pre[t->n_pre++] = (struct tok_pre){.kind = TOK_PRE_SPLIT, .behavior = TOK_SPLIT_ISOLATED};
        if (!(t->pre[0].re = tok_regex_compile(pattern, strlen(pattern), false, NULL, 0))) return -2;
        t->pre[t->n_pre++] = (struct tok_pre){.kind = TOK_PRE_BYTELEVEL};
    } else {
        if (digits) {
            t->pre[t->n_pre] = (struct tok_pre){.kind = TOK_PRE_SPLIT, .behavior = TOK_SPLIT_ISOLATED};
            if (!(t->pre[t->n_pre++].re = tok_regex_compile("\\p{N}", 5, false, NULL, 0))) return -2;
        }
        t->pre[t->n_pre++] = (struct tok_pre){.kind = TOK_PRE_BYTELEVEL, .use_regex = true};
    }
    if (nfc) {
        if (!(t->norm = calloc(1, sizeof(*t->norm)))) return -2;
        t->norm[t->n_norm++] = (struct tok_norm){.kind = TOK_NORM_NFC};
    }
    t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_BYTELEVEL};
    t->has_decoder = true;
    return 0;
}

int tok_load_gguf(struct tokenizer *t, const char *path, char *err, size_t errlen)
{
    struct gguf_file *f = NULL;
    struct by_score *order = NULL;
    int32_t *types = NULL;
    const char *field = "";
    int rc = -1;
    if (gguf_open(&f, path, err, errlen) != 0) return -1;

    const char *model;
    size_t model_len;
    field = "tokenizer.ggml.model";
    if (gguf_get_string(f, field, &model, &model_len) != 0) goto bad;
    bool spm = model_len == 5 && memcmp(model, "llama", 5) == 0;
    bool bpe = model_len == 4 && memcmp(model, "gpt2", 4) == 0;
    if (!spm && !bpe) {
        snprintf(err, errlen, "%s: %s: tokenizer model \"%.*s\" is not supported (only \"llama\" and \"gpt2\")",
                 path, field, (int)model_len, model);
        goto done;
    }
    enum gguf_value_type et;
    uint64_t n_tok, n_scores = 0, n_types = 0;
    field = "tokenizer.ggml.tokens";
    if (gguf_get_array(f, field, &et, &n_tok) != 0 || et != GGUF_TYPE_STRING || n_tok == 0 || n_tok > INT32_MAX - 1)
        goto bad;
    field = "tokenizer.ggml.scores";
    bool has_scores = gguf_get_array(f, field, &et, &n_scores) == 0;
    if (has_scores && n_scores != n_tok) goto bad;
    field = "tokenizer.ggml.token_type";
    bool has_types = gguf_get_array(f, field, &et, &n_types) == 0;
    if (has_types && n_types != n_tok) goto bad;

    field = "tokenizer.ggml.tokens";
    if (tok_alloc_ids(t, (int32_t)n_tok) < 0 || tok_strmap_init(&t->vocab, n_tok) < 0) goto oom;
    size_t key_bytes = 0;
    for (uint64_t i = 0; i < n_tok; i++) {
        const char *s;
        size_t len;
        if (gguf_array_get_string(f, field, i, &s, &len) != 0) goto bad;
        key_bytes += len + 1;
    }
    if (!(t->vocab_keys = malloc(key_bytes + 1)) || !(types = malloc(n_tok * sizeof(*types))) ||
        !(order = malloc(n_tok * sizeof(*order))))
        goto oom;
    size_t off = 0;
    for (uint64_t i = 0; i < n_tok; i++) {
        const char *s;
        size_t len;
        int64_t ty = GGUF_TOK_NORMAL;
        double sc = 0;
        gguf_array_get_string(f, field, i, &s, &len);
        memcpy(t->vocab_keys + off, s, len);
        t->vocab_keys[off + len] = '\0';
        if (tok_strmap_get(&t->vocab, s, len) < 0 &&
            tok_strmap_put(&t->vocab, t->vocab_keys + off, (uint32_t)len, (int32_t)i) < 0)
            goto oom;
        if (tok_set_text(t, (int32_t)i, s, len) < 0) goto oom;
        off += len + 1;
        if (has_types && gguf_array_get_int(f, "tokenizer.ggml.token_type", i, &ty) != 0) {
            field = "tokenizer.ggml.token_type";
            goto bad;
        }
        if (has_scores && gguf_array_get_float(f, "tokenizer.ggml.scores", i, &sc) != 0) {
            field = "tokenizer.ggml.scores";
            goto bad;
        }
        types[i] = (int32_t)ty;
        order[i] = (struct by_score){.score = (float)sc, .id = (int32_t)i};
    }

    if (spm) {
        if (spm_merges(t, order, types, (size_t)n_tok) < 0) goto oom;
    } else {
        field = "tokenizer.ggml.merges";
        int r = bpe_merges(t, f, field);
        if (r == -2) goto oom;
        if (r < 0) goto bad;
    }

    int64_t v;
    t->unk_id = gguf_get_int(f, "tokenizer.ggml.unknown_token_id", &v) == 0 && v >= 0 && v < (int64_t)n_tok ? (int32_t)v : -1;
    t->bos_id = gguf_get_int(f, "tokenizer.ggml.bos_token_id", &v) == 0 && v >= 0 && v < (int64_t)n_tok ? (int32_t)v : -1;
    t->eos_id = gguf_get_int(f, "tokenizer.ggml.eos_token_id", &v) == 0 && v >= 0 && v < (int64_t)n_tok ? (int32_t)v : -1;
    t->byte_fallback = spm;
    t->fuse_unk = spm;
    if (t->bos_id >= 0) t->bos_text = tok_strndup(t->text[t->bos_id], t->text_len[t->bos_id]);
    if (t->eos_id >= 0) t->eos_text = tok_strndup(t->text[t->eos_id], t->text_len[t->eos_id]);

    bool add_bos = spm, add_eos = false, add_space = true;
    gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos);
    gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &add_eos);
    gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &add_space);
    if (add_bos && t->bos_id >= 0) {
        if (!(t->prefix_ids = malloc(sizeof(int32_t)))) goto oom;
        t->prefix_ids[0] = t->bos_id;
        t->n_prefix = 1;
    }
    if (add_eos && t->eos_id >= 0) {
        if (!(t->suffix_ids = malloc(sizeof(int32_t)))) goto oom;
        t->suffix_ids[0] = t->eos_id;
        t->n_suffix = 1;
    }
    const char *tmpl;
    size_t tmpl_len;
    if (gguf_get_string(f, "tokenizer.chat_template", &tmpl, &tmpl_len) == 0 && !(t->chat_template = tok_strndup(tmpl, tmpl_len)))
        goto oom;

    /* Control, unknown and user-defined tokens are matched in raw text, as Hugging Face's
     * added tokens are. */
    if (!(t->added = calloc(n_tok, sizeof(*t->added)))) goto oom;
    for (uint64_t i = 0; i < n_tok; i++) {
        if (types[i] != GGUF_TOK_UNKNOWN && types[i] != GGUF_TOK_CONTROL && types[i] != GGUF_TOK_USER) continue;
        if (t->text_len[i] == 0) continue;
        struct tok_added *ad = &t->added[t->n_added++];
        ad->len = t->text_len[i];
        ad->content = tok_strndup(t->text[i], ad->len);
        ad->id = (int32_t)i;
        ad->special = types[i] != GGUF_TOK_USER;
        if (!ad->content) goto oom;
    }
    if (spm) {
        if (setup_pipeline(t, add_space) < 0) goto oom;
    } else {
        const char *pre = "default";
        size_t pre_len = 7;
        gguf_get_string(f, "tokenizer.ggml.pre", &pre, &pre_len);
        int r = setup_bytelevel(t, pre, pre_len);
        if (r == -2) goto oom;
        if (r < 0) {
            snprintf(err, errlen, "%s: tokenizer.ggml.pre: pre-tokenizer \"%.*s\" is not supported", path,
                     (int)pre_len, pre);
            goto done;
        }
    }
    rc = 0;
    goto done;
bad:
    snprintf(err, errlen, "%s: %s: missing or malformed", path, field);
    goto done;
oom:
    snprintf(err, errlen, "%s: %s: out of memory", path, field);
done:
    free(order);
    free(types);
    gguf_close(f);
    return rc;
}
