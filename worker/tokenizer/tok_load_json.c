/* Loading a Hugging Face tokenizer.json (and tokenizer_config.json beside it): the JSON trees
 * of normalizer, pre_tokenizer, model, post_processor and decoder become flat step lists.
 * Every error names the file and the field ("tokenizer.json: model.merges[3]: ..."). */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/tokenizer/tok_internal.h"

struct jctx {
    struct tokenizer *t;
    const char *file;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 3, 4))) static int fail(struct jctx *c, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s: %s", c->file, field, msg);
    return -1;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jbool(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static void *grow(void *p, size_t *n, size_t elem)
{
    void *q = realloc(p, (*n + 1) * elem);
    if (q) memset((char *)q + *n * elem, 0, elem);
    return q;
}

/* A {"String": s} or {"Regex": r} pattern. */
static int parse_pattern(struct jctx *c, json_t *pat, const char *field, const char **str, size_t *len,
                         bool *is_regex)
{
    json_t *v;
    if (json_is_object(pat) && json_is_string(v = json_object_get(pat, "String"))) {
        *is_regex = false;
    } else if (json_is_object(pat) && json_is_string(v = json_object_get(pat, "Regex"))) {
        *is_regex = true;
    } else
        return fail(c, field, "expected {\"String\": ...} or {\"Regex\": ...}");
    *str = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

static pcre2_code *compile(struct jctx *c, const char *field, const char *s, size_t n, bool literal)
{
    char msg[200];
    pcre2_code *re = tok_regex_compile(s, n, literal, msg, sizeof(msg));
    if (!re) fail(c, field, "bad regex: %s", msg);
    return re;
}

/* A component's parser: normalizer, pre-tokenizer, decoder or post-processor. */
typedef int (*component_parser)(struct jctx *c, json_t *node, const char *field);

/* A "Sequence" component: each item of its `key` array, in order, through parse. */
static int parse_sequence(struct jctx *c, json_t *node, const char *field, const char *key, component_parser parse)
{
    char sub[256];
    json_t *arr = json_object_get(node, key);
    if (!json_is_array(arr)) return fail(c, field, "Sequence needs a \"%s\" array", key);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        snprintf(sub, sizeof(sub), "%s.%s[%zu]", field, key, i);
        if (parse(c, json_array_get(arr, i), sub) < 0) return -1;
    }
    return 0;
}

static int parse_normalizer(struct jctx *c, json_t *node, const char *field)
{
    struct tokenizer *t = c->t;
    char sub[256];
    if (json_is_null(node)) return 0;
    const char *type = json_is_object(node) ? jstr(node, "type") : NULL;
    if (!type) return fail(c, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) return parse_sequence(c, node, field, "normalizers", parse_normalizer);
    struct tok_norm *v = grow(t->norm, &t->n_norm, sizeof(*v));
    if (!v) return fail(c, field, "out of memory");
    t->norm = v;
    struct tok_norm *st = &t->norm[t->n_norm++];
    if (strcmp(type, "Prepend") == 0) {
        const char *p = jstr(node, "prepend");
        if (!p) return fail(c, field, "Prepend needs a \"prepend\" string");
        st->kind = TOK_NORM_PREPEND;
        st->a = tok_strndup(p, strlen(p));
        st->a_len = strlen(p);
    } else if (strcmp(type, "Replace") == 0) {
        const char *p, *content = jstr(node, "content");
        size_t plen;
        bool is_re;
        snprintf(sub, sizeof(sub), "%s.pattern", field);
        if (parse_pattern(c, json_object_get(node, "pattern"), sub, &p, &plen, &is_re) < 0) return -1;
        if (!content) return fail(c, field, "Replace needs a \"content\" string");
        st->kind = TOK_NORM_REPLACE;
        st->a = tok_strndup(p, plen);
        st->a_len = plen;
        st->b = tok_strndup(content, strlen(content));
        st->b_len = strlen(content);
        if (is_re && !(st->re = compile(c, sub, p, plen, false))) return -1;
    } else if (strcmp(type, "NFC") == 0) {
        st->kind = TOK_NORM_NFC;
    } else if (strcmp(type, "NFD") == 0) {
        st->kind = TOK_NORM_NFD;
    } else if (strcmp(type, "NFKC") == 0) {
        st->kind = TOK_NORM_NFKC;
    } else if (strcmp(type, "NFKD") == 0) {
        st->kind = TOK_NORM_NFKD;
    } else if (strcmp(type, "Lowercase") == 0) {
        st->kind = TOK_NORM_LOWERCASE;
    } else if (strcmp(type, "StripAccents") == 0) {
        st->kind = TOK_NORM_STRIP_ACCENTS;
    } else if (strcmp(type, "Strip") == 0) {
        st->kind = TOK_NORM_STRIP;
        st->left = jbool(node, "strip_left", true);
        st->right = jbool(node, "strip_right", true);
    } else {
        t->n_norm--;
        snprintf(sub, sizeof(sub), "%s.type", field);
        return fail(c, sub, "normalizer \"%s\" is not supported", type);
    }
    return 0;
}

static int parse_prepend_scheme(json_t *node, enum tok_prepend_scheme *out)
{
    const char *s = jstr(node, "prepend_scheme");
    if (s) {
        if (strcmp(s, "always") == 0) *out = TOK_PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0) *out = TOK_PREPEND_FIRST;
        else if (strcmp(s, "never") == 0) *out = TOK_PREPEND_NEVER;
        else return -1;
    } else
        *out = jbool(node, "add_prefix_space", true) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    return 0;
}

/* Hugging Face's punctuation: ASCII punctuation (which takes some symbols) or Unicode P*. */
static const char PUNCT[] = "[\\p{P}!-/:-@\\[-`{-~]";

static int parse_behavior(const char *name, enum tok_split_behavior *out)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; name && i < 5; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (enum tok_split_behavior)i;
            return 0;
        }
    return -1;
}

static int parse_pre(struct jctx *c, json_t *node, const char *field)
{
    struct tokenizer *t = c->t;
    char sub[256];
    if (json_is_null(node)) return 0;
    const char *type = json_is_object(node) ? jstr(node, "type") : NULL;
    if (!type) return fail(c, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) return parse_sequence(c, node, field, "pretokenizers", parse_pre);
    struct tok_pre *v = grow(t->pre, &t->n_pre, sizeof(*v));
    if (!v) return fail(c, field, "out of memory");
    t->pre = v;
    struct tok_pre *st = &t->pre[t->n_pre++];
    if (strcmp(type, "Split") == 0) {
        const char *p, *beh = jstr(node, "behavior");
        size_t plen;
        bool is_re;
        snprintf(sub, sizeof(sub), "%s.pattern", field);
        if (parse_pattern(c, json_object_get(node, "pattern"), sub, &p, &plen, &is_re) < 0) return -1;
        st->kind = TOK_PRE_SPLIT;
        if (!(st->re = compile(c, sub, p, plen, !is_re))) return -1;
        snprintf(sub, sizeof(sub), "%s.behavior", field);
        if (parse_behavior(beh, &st->behavior) < 0)
            return fail(c, sub, "unknown split behavior \"%s\"", beh ? beh : "(missing)");
        st->invert = jbool(node, "invert", false);
    } else if (strcmp(type, "Punctuation") == 0) {
        const char *beh = jstr(node, "behavior");
        st->kind = TOK_PRE_SPLIT;
        if (!(st->re = compile(c, field, PUNCT, sizeof(PUNCT) - 1, false))) return -1;
        snprintf(sub, sizeof(sub), "%s.behavior", field);
        if (parse_behavior(beh ? beh : "Isolated", &st->behavior) < 0)
            return fail(c, sub, "unknown split behavior \"%s\"", beh);
    } else if (strcmp(type, "CharDelimiterSplit") == 0) {
        const char *d = jstr(node, "delimiter");
        if (!d || !*d) return fail(c, field, "CharDelimiterSplit needs a \"delimiter\"");
        st->kind = TOK_PRE_SPLIT;
        if (!(st->re = compile(c, field, d, strlen(d), true))) return -1;
        st->behavior = TOK_SPLIT_REMOVED;
    } else if (strcmp(type, "BertPreTokenizer") == 0) {
        /* Whitespace removed, then each punctuation character isolated. */
        st->kind = TOK_PRE_WHITESPACE_SPLIT;
        v = grow(t->pre, &t->n_pre, sizeof(*v));
        if (!v) return fail(c, field, "out of memory");
        t->pre = v;
        st = &t->pre[t->n_pre++];
        st->kind = TOK_PRE_SPLIT;
        st->behavior = TOK_SPLIT_ISOLATED;
        if (!(st->re = compile(c, field, PUNCT, sizeof(PUNCT) - 1, false))) return -1;
    } else if (strcmp(type, "ByteLevel") == 0) {
        st->kind = TOK_PRE_BYTELEVEL;
        st->add_prefix_space = jbool(node, "add_prefix_space", true);
        st->use_regex = jbool(node, "use_regex", true);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = jstr(node, "replacement");
        st->kind = TOK_PRE_METASPACE;
        if (!r || strlen(r) >= sizeof(st->replacement)) return fail(c, field, "Metaspace needs a \"replacement\"");
        strcpy(st->replacement, r);
        st->replacement_len = strlen(r);
        st->split = jbool(node, "split", true);
        snprintf(sub, sizeof(sub), "%s.prepend_scheme", field);
        if (parse_prepend_scheme(node, &st->prepend_scheme) < 0) return fail(c, sub, "unknown scheme");
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        st->kind = TOK_PRE_WHITESPACE_SPLIT;
    } else if (strcmp(type, "Whitespace") == 0) {
        static const char pat[] = "\\w+|[^\\w\\s]+";
        st->kind = TOK_PRE_SPLIT;
        if (!(st->re = compile(c, field, pat, sizeof(pat) - 1, false))) return -1;
        st->behavior = TOK_SPLIT_REMOVED;
        st->invert = true;
    } else if (strcmp(type, "Digits") == 0) {
        /* Rust's char::is_numeric is the N categories; runs of them, or each one, isolated. */
        bool each = jbool(node, "individual_digits", false);
        const char *pat = each ? "\\p{N}" : "\\p{N}+";
        st->kind = TOK_PRE_SPLIT;
        if (!(st->re = compile(c, field, pat, strlen(pat), false))) return -1;
        st->behavior = TOK_SPLIT_ISOLATED;
    } else {
        t->n_pre--;
        snprintf(sub, sizeof(sub), "%s.type", field);
        return fail(c, sub, "pre-tokenizer \"%s\" is not supported", type);
    }
    return 0;
}

static int parse_decoder(struct jctx *c, json_t *node, const char *field)
{
    struct tokenizer *t = c->t;
    char sub[256];
    if (json_is_null(node)) return 0;
    const char *type = json_is_object(node) ? jstr(node, "type") : NULL;
    if (!type) return fail(c, field, "expected an object with a \"type\"");
    t->has_decoder = true;
    if (strcmp(type, "Sequence") == 0) return parse_sequence(c, node, field, "decoders", parse_decoder);
    struct tok_dec *v = grow(t->dec, &t->n_dec, sizeof(*v));
    if (!v) return fail(c, field, "out of memory");
    t->dec = v;
    struct tok_dec *st = &t->dec[t->n_dec++];
    if (strcmp(type, "Replace") == 0) {
        const char *p, *content = jstr(node, "content");
        size_t plen;
        bool is_re;
        snprintf(sub, sizeof(sub), "%s.pattern", field);
        if (parse_pattern(c, json_object_get(node, "pattern"), sub, &p, &plen, &is_re) < 0) return -1;
        if (is_re) return fail(c, sub, "a Regex pattern in a Replace decoder is not supported");
        if (!content) return fail(c, field, "Replace needs a \"content\" string");
        st->kind = TOK_DEC_REPLACE;
        st->a = tok_strndup(p, plen);
        st->a_len = plen;
        st->b = tok_strndup(content, strlen(content));
        st->b_len = strlen(content);
    } else if (strcmp(type, "ByteFallback") == 0) {
        st->kind = TOK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        st->kind = TOK_DEC_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        const char *content = jstr(node, "content");
        if (!content) return fail(c, field, "Strip needs a \"content\" string");
        st->kind = TOK_DEC_STRIP;
        st->a = tok_strndup(content, strlen(content));
        st->a_len = strlen(content);
        st->start = (int)json_integer_value(json_object_get(node, "start"));
        st->stop = (int)json_integer_value(json_object_get(node, "stop"));
    } else if (strcmp(type, "ByteLevel") == 0) {
        st->kind = TOK_DEC_BYTELEVEL;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = jstr(node, "replacement");
        if (!r) return fail(c, field, "Metaspace needs a \"replacement\"");
        st->kind = TOK_DEC_METASPACE;
        st->a = tok_strndup(r, strlen(r));
        st->a_len = strlen(r);
        snprintf(sub, sizeof(sub), "%s.prepend_scheme", field);
        if (parse_prepend_scheme(node, &st->prepend_scheme) < 0) return fail(c, sub, "unknown scheme");
    } else {
        t->n_dec--;
        snprintf(sub, sizeof(sub), "%s.type", field);
        return fail(c, sub, "decoder \"%s\" is not supported", type);
    }
    return 0;
}

static int push_id(int32_t **v, size_t *n, int32_t id)
{
    int32_t *p = realloc(*v, (*n + 1) * sizeof(*p));
    if (!p) return -1;
    p[(*n)++] = id;
    *v = p;
    return 0;
}

static int parse_post(struct jctx *c, json_t *node, const char *field)
{
    struct tokenizer *t = c->t;
    char sub[256];
    if (json_is_null(node)) return 0;
    const char *type = json_is_object(node) ? jstr(node, "type") : NULL;
    if (!type) return fail(c, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) return parse_sequence(c, node, field, "processors", parse_post);
    if (strcmp(type, "ByteLevel") == 0) return 0; /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(node, "single"), *specials = json_object_get(node, "special_tokens");
        snprintf(sub, sizeof(sub), "%s.single", field);
        if (!json_is_array(single)) return fail(c, sub, "expected an array");
        bool after = false;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *item = json_array_get(single, i), *sp;
            snprintf(sub, sizeof(sub), "%s.single[%zu]", field, i);
            if (json_object_get(item, "Sequence")) {
                after = true;
                continue;
            }
            sp = json_object_get(item, "SpecialToken");
            const char *name = jstr(sp, "id");
            if (!name) return fail(c, sub, "expected {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": ...}");
            json_t *ids = json_object_get(json_object_get(specials, name), "ids");
            if (!json_is_array(ids)) return fail(c, sub, "special token \"%s\" is not in special_tokens", name);
            for (size_t k = 0; k < json_array_size(ids); k++) {
                json_int_t id = json_integer_value(json_array_get(ids, k));
                if (id < 0 || id >= t->n_vocab) return fail(c, sub, "id %lld out of range", (long long)id);
                if (push_id(after ? &t->suffix_ids : &t->prefix_ids, after ? &t->n_suffix : &t->n_prefix,
                            (int32_t)id) < 0)
                    return fail(c, sub, "out of memory");
            }
        }
        return 0;
    }
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        json_t *cls = json_object_get(node, "cls"), *sep = json_object_get(node, "sep");
        json_int_t a = json_integer_value(json_array_get(cls, 1)), b = json_integer_value(json_array_get(sep, 1));
        if (!json_is_array(cls) || !json_is_array(sep) || a < 0 || b < 0 || a >= t->n_vocab || b >= t->n_vocab)
            return fail(c, field, "needs \"cls\" and \"sep\" as [token, id]");
        if (push_id(&t->prefix_ids, &t->n_prefix, (int32_t)a) < 0 || push_id(&t->suffix_ids, &t->n_suffix, (int32_t)b) < 0)
            return fail(c, field, "out of memory");
        return 0;
    }
    snprintf(sub, sizeof(sub), "%s.type", field);
    return fail(c, sub, "post-processor \"%s\" is not supported", type);
}

static int32_t find_token(const struct tokenizer *t, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, s, n) == 0) return t->added[i].id;
    return tok_strmap_get(&t->vocab, s, n);
}

static int parse_model(struct jctx *c, json_t *model, json_t *added)
{
    struct tokenizer *t = c->t;
    char sub[256];
    if (!json_is_object(model)) return fail(c, "model", "missing or not an object");
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0) return fail(c, "model.type", "model \"%s\" is not supported (only BPE)", type);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return fail(c, "model.vocab", "missing or not an object");
    if (!json_is_array(merges)) return fail(c, "model.merges", "missing or not an array");
    const char *suffix = jstr(model, "end_of_word_suffix");
    if (suffix && *suffix) return fail(c, "model.end_of_word_suffix", "is not supported");

    /* Ids: the model's and the added tokens', whichever is larger. */
    int64_t max_id = -1;
    size_t key_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id > INT32_MAX - 1) {
            snprintf(sub, sizeof(sub), "model.vocab[\"%.60s\"]", key);
            return fail(c, sub, "expected a non-negative integer id");
        }
        if (id > max_id) max_id = id;
        key_bytes += strlen(key) + 1;
    }
    if (added && !json_is_array(added)) return fail(c, "added_tokens", "not an array");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i), *idv = json_object_get(a, "id");
        snprintf(sub, sizeof(sub), "added_tokens[%zu]", i);
        if (!json_is_integer(idv) || json_integer_value(idv) < 0 || json_integer_value(idv) > INT32_MAX - 1 ||
            !jstr(a, "content"))
            return fail(c, sub, "needs an integer \"id\" and a \"content\" string");
        if (json_integer_value(idv) > max_id) max_id = json_integer_value(idv);
    }
    if (max_id < 0) return fail(c, "model.vocab", "is empty");
    if (tok_alloc_ids(t, (int32_t)(max_id + 1)) < 0 || tok_strmap_init(&t->vocab, json_object_size(vocab)) < 0 ||
        !(t->vocab_keys = malloc(key_bytes + 1)))
        return fail(c, "model.vocab", "out of memory");
    size_t off = 0;
    json_object_foreach(vocab, key, val) {
        size_t n = strlen(key);
        int32_t id = (int32_t)json_integer_value(val);
        memcpy(t->vocab_keys + off, key, n + 1);
        if (tok_strmap_put(&t->vocab, t->vocab_keys + off, (uint32_t)n, id) < 0 || tok_set_text(t, id, key, n) < 0)
            return fail(c, "model.vocab", "out of memory");
        off += n + 1;
    }

    const char *unk = jstr(model, "unk_token");
    if (unk && (t->unk_id = tok_strmap_get(&t->vocab, unk, strlen(unk))) < 0)
        return fail(c, "model.unk_token", "\"%s\" is not in the vocabulary", unk);
    t->fuse_unk = jbool(model, "fuse_unk", false);
    t->byte_fallback = jbool(model, "byte_fallback", false);
    t->ignore_merges = jbool(model, "ignore_merges", false);
    const char *cp = jstr(model, "continuing_subword_prefix");
    if (cp && *cp) {
        t->cont_prefix = tok_strndup(cp, strlen(cp));
        t->cont_prefix_len = strlen(cp);
    }

    if (tok_pairmap_init(&t->merges, json_array_size(merges)) < 0) return fail(c, "model.merges", "out of memory");
    struct strbuf joined = {0};
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t alen, blen;
        snprintf(sub, sizeof(sub), "model.merges[%zu]", i);
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                strbuf_free(&joined);
                return fail(c, sub, "expected \"left right\"");
            }
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            alen = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            blen = json_string_length(json_array_get(m, 1));
        } else {
            strbuf_free(&joined);
            return fail(c, sub, "expected \"left right\" or [\"left\", \"right\"]");
        }
        int32_t ia = tok_strmap_get(&t->vocab, a, alen), ib = tok_strmap_get(&t->vocab, b, blen);
        const char *bs = b;
        size_t bslen = blen;
        if (t->cont_prefix_len && blen >= t->cont_prefix_len && memcmp(b, t->cont_prefix, t->cont_prefix_len) == 0) {
            bs += t->cont_prefix_len;
            bslen -= t->cont_prefix_len;
        }
        joined.len = 0;
        if (strbuf_append(&joined, a, alen) < 0 || strbuf_append(&joined, bs, bslen) < 0) {
            strbuf_free(&joined);
            return fail(c, sub, "out of memory");
        }
        int32_t im = tok_strmap_get(&t->vocab, joined.p, joined.len);
        if (ia < 0 || ib < 0 || im < 0) {
            int r = fail(c, sub, "token \"%.*s\" is not in the vocabulary", (int)(ia < 0 ? alen : ib < 0 ? blen : joined.len),
                         ia < 0 ? a : ib < 0 ? b : joined.p);
            strbuf_free(&joined);
            return r;
        }
        if (tok_pairmap_put(&t->merges, ia, ib, (int32_t)i, im) < 0) {
            strbuf_free(&joined);
            return fail(c, sub, "out of memory");
        }
    }
    strbuf_free(&joined);

    t->added = calloc(json_array_size(added) + 1, sizeof(*t->added));
    if (!t->added) return fail(c, "added_tokens", "out of memory");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        const char *content = jstr(a, "content");
        struct tok_added *ad = &t->added[t->n_added++];
        ad->len = strlen(content);
        ad->content = tok_strndup(content, ad->len);
        /* As Hugging Face does, a content already in the model's vocabulary keeps that id. */
        int32_t in_vocab = tok_strmap_get(&t->vocab, content, strlen(content));
        ad->id = in_vocab >= 0 ? in_vocab : (int32_t)json_integer_value(json_object_get(a, "id"));
        ad->special = jbool(a, "special", false);
        ad->lstrip = jbool(a, "lstrip", false);
        ad->rstrip = jbool(a, "rstrip", false);
        ad->single_word = jbool(a, "single_word", false);
        ad->normalized = jbool(a, "normalized", !ad->special);
        if (!ad->content || tok_set_text(t, ad->id, content, ad->len) < 0) return fail(c, "added_tokens", "out of memory");
    }
    return 0;
}

/* A token in tokenizer_config.json: "text" or {"content": "text", ...}. */
static const char *config_token(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return jstr(v, "content");
    return NULL;
}

static int apply_config(struct jctx *c, json_t *cfg, bool byte_level, const char *model_type)
{
    struct tokenizer *t = c->t;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    if (bos && (t->bos_id = find_token(t, bos)) >= 0) t->bos_text = tok_strndup(bos, strlen(bos));
    if (eos && (t->eos_id = find_token(t, eos)) >= 0) t->eos_text = tok_strndup(eos, strlen(eos));
    json_t *tmpl = json_object_get(cfg, "chat_template");
    if (json_is_string(tmpl)) {
        t->chat_template = tok_strndup(json_string_value(tmpl), json_string_length(tmpl));
    } else if (json_is_array(tmpl)) {
        /* Named templates: take "default", else the first. */
        for (size_t i = 0; i < json_array_size(tmpl); i++) {
            json_t *e = json_array_get(tmpl, i);
            const char *name = jstr(e, "name"), *src = jstr(e, "template");
            if (src && (!t->chat_template || (name && strcmp(name, "default") == 0))) {
                free(t->chat_template);
                t->chat_template = tok_strndup(src, strlen(src));
            }
        }
    }
    /* transformers 5 builds a Llama tokenizer's pipeline from its class and the flags here,
     * not from tokenizer.json (tok_load_class.c). It reads add_bos_token and add_eos_token
     * only where there is no tokenizer.json, so they are not followed. */
    const char *cls = jstr(cfg, "tokenizer_class");
    if (!byte_level && tok_class_is_llama(cls, model_type)) {
        json_t *aps = json_object_get(cfg, "add_prefix_space");
        if (tok_llama_pipeline(t, !json_is_false(aps), json_is_true(json_object_get(cfg, "legacy"))) < 0) return -1;
    }
    return 0;
}

/* Whether a component mentions a ByteLevel step anywhere (transformers 5 then takes
 * tokenizer.json as it is, whatever tokenizer class is named). */
static bool mentions_byte_level(json_t *node)
{
    if (json_is_string(node)) return strcmp(json_string_value(node), "ByteLevel") == 0;
    const char *key;
    json_t *v;
    size_t i;
    if (json_is_object(node)) {
        json_object_foreach(node, key, v) {
            if (mentions_byte_level(v)) return true;
        }
    } else if (json_is_array(node)) {
        json_array_foreach(node, i, v) {
            if (mentions_byte_level(v)) return true;
        }
    }
    return false;
}

/* model_type from the config.json beside tokenizer_config.json, malloc'd, or NULL. */
static char *model_type_beside(const char *config_path)
{
    const char *slash = strrchr(config_path, '/');
    size_t dir = slash ? (size_t)(slash - config_path) + 1 : 0;
    char *path = malloc(dir + sizeof("config.json"));
    if (!path) return NULL;
    memcpy(path, config_path, dir);
    memcpy(path + dir, "config.json", sizeof("config.json"));
    json_t *root = json_load_file(path, 0, NULL);
    free(path);
    const char *mt = json_is_object(root) ? jstr(root, "model_type") : NULL;
    char *out = mt ? tok_strndup(mt, strlen(mt)) : NULL;
    json_decref(root);
    return out;
}

int tok_load_json(struct tokenizer *t, const char *json_path, const char *config_path, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_load_file(json_path, 0, &je), *cfg = NULL;
    char *model_type = NULL;
    struct jctx c = {.t = t, .file = json_path, .err = err, .errlen = errlen};
    int rc = -1;
    if (!root) {
        snprintf(err, errlen, "%s: cannot read tokenizer: %s (line %d)", json_path, je.text, je.line);
        return -1;
    }
    if (!json_is_object(root)) {
        fail(&c, "(root)", "expected a JSON object");
        goto done;
    }
    if (parse_model(&c, json_object_get(root, "model"), json_object_get(root, "added_tokens")) < 0) goto done;
    if (parse_normalizer(&c, json_object_get(root, "normalizer"), "normalizer") < 0) goto done;
    if (parse_pre(&c, json_object_get(root, "pre_tokenizer"), "pre_tokenizer") < 0) goto done;
    if (parse_post(&c, json_object_get(root, "post_processor"), "post_processor") < 0) goto done;
    if (parse_decoder(&c, json_object_get(root, "decoder"), "decoder") < 0) goto done;
    if (t->n_prefix == 1) t->bos_id = t->prefix_ids[0];
    cfg = json_load_file(config_path, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg && access(config_path, F_OK) == 0) {
        snprintf(err, errlen, "%s: cannot read: %s (line %d)", config_path, je.text, je.line);
        goto done;
    }
    if (cfg) {
        c.file = config_path;
        if (!json_is_object(cfg)) {
            fail(&c, "(root)", "expected a JSON object");
            goto done;
        }
        static const char *const parts[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
        bool byte_level = false;
        for (size_t i = 0; i < 4; i++) byte_level = byte_level || mentions_byte_level(json_object_get(root, parts[i]));
        model_type = model_type_beside(config_path);
        if (apply_config(&c, cfg, byte_level, model_type) < 0) {
            fail(&c, "(root)", "out of memory");
            goto done;
        }
    }
    if (t->bos_id >= 0 && !t->bos_text && t->text[t->bos_id]) t->bos_text = tok_strndup(t->text[t->bos_id], t->text_len[t->bos_id]);
    rc = 0;
done:
    json_decref(root);
    json_decref(cfg);
    free(model_type);
    return rc;
}
