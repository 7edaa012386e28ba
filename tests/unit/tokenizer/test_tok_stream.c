/* The incremental detokenizer: pieces never split a UTF-8 character, and their concatenation
 * equals the full decode, leading-space rules included; checked on the shipped corpora, on
 * hand-picked sequences, and on thousands of random id sequences from every shared tokenizer
 * and from decoder pipelines that no shipped tokenizer uses. */
#include "tests/unit/tokenizer/tok_test_util.h"

static bool valid_utf8(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int k = u[i] < 0x80 ? 1 : u[i] >= 0xF0 ? 4 : u[i] >= 0xE0 ? 3 : u[i] >= 0xC0 ? 2 : 0;
        if (k == 0 || i + (size_t)k > n) return false;
        for (int j = 1; j < k; j++)
            if ((u[i + (size_t)j] & 0xC0) != 0x80) return false;
        i += (size_t)k;
    }
    return true;
}

/* Streams ids through tok_stream and checks it against tok_decode; returns how many pushes
 * held text back (returned nothing). */
static int check_stream(const struct tokenizer *tok, const int32_t *ids, size_t n, bool skip, const char *what)
{
    char *full = NULL;
    size_t full_len = 0;
    cr_assert_eq(tok_decode(tok, ids, n, skip, &full, &full_len), 0);
    struct tok_stream *s = tok_stream_new(tok, skip);
    cr_assert_not_null(s);
    char *acc = calloc(1, 1);
    size_t acc_len = 0;
    int held = 0;
    for (size_t i = 0; i <= n; i++) {
        char *piece = NULL;
        size_t len = 0;
        if (i < n) cr_assert_eq(tok_stream_push(s, ids[i], &piece, &len), 0);
        else cr_assert_eq(tok_stream_flush(s, &piece, &len), 0);
        cr_assert_not_null(piece);
        cr_assert_eq(piece[len], '\0');
        cr_assert(valid_utf8(piece, len), "%s: piece %zu is not whole UTF-8", what, i);
        if (len == 0 && i < n) held++;
        acc = realloc(acc, acc_len + len + 1);
        memcpy(acc + acc_len, piece, len + 1);
        acc_len += len;
        free(piece);
    }
    cr_assert(acc_len == full_len && memcmp(acc, full, full_len) == 0,
              "%s (skip=%d): stream gave \"%s\", decode \"%s\"", what, skip, acc, full);
    tok_stream_free(s);
    free(acc);
    free(full);
    return held;
}

static void check_corpus(const char *rel)
{
    struct tokenizer *tok = tt_load(rel);
    json_t *corpus = tt_corpus();
    for (size_t i = 0; i < json_array_size(corpus); i++) {
        json_t *e = json_array_get(corpus, i);
        int32_t *ids = NULL;
        size_t n = 0;
        cr_assert_eq(tok_encode(tok, json_string_value(e), json_string_length(e), true, &ids, &n), 0);
        char what[128];
        snprintf(what, sizeof(what), "%s corpus line %zu", rel, i);
        check_stream(tok, ids, n, true, what);
        check_stream(tok, ids, n, false, what);
        free(ids);
    }
    json_decref(corpus);
    tok_free(tok);
}

Test(tok_stream, corpus_stories260k) { check_corpus("models/stories260K/hf"); }
Test(tok_stream, corpus_llama2) { check_corpus("tokenizers/llama2"); }
Test(tok_stream, corpus_llama3_1) { check_corpus("tokenizers/llama3_1"); }
Test(tok_stream, corpus_qwen3) { check_corpus("tokenizers/qwen3"); }

Test(tok_stream, multibyte_split_across_byte_tokens_is_held)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    /* <s> ▁ <0xE6><0x97><0xA5> <0xF0><0x9F><0xA4><0x96>: characters made of byte tokens. */
    const int32_t ids[] = {1, 410, 233, 154, 168, 243, 162, 167, 153, 410, 424};
    int held = check_stream(tok, ids, sizeof(ids) / sizeof(ids[0]), true, "byte tokens");
    cr_assert_geq(held, 5, "partial characters were not held back (%d)", held);

    /* The leading space goes only at the very start: " w" mid-sequence keeps its space. */
    struct tok_stream *s = tok_stream_new(tok, true);
    char *p = NULL;
    size_t len;
    cr_assert_eq(tok_stream_push(s, 1, &p, &len), 0);
    free(p);
    cr_assert_eq(tok_stream_push(s, 424, &p, &len), 0); /* "w" */
    cr_assert_str_eq(p, "w");
    free(p);
    cr_assert_eq(tok_stream_push(s, 410, &p, &len), 0); /* "▁" */
    free(p);
    cr_assert_eq(tok_stream_push(s, 424, &p, &len), 0);
    free(p);
    cr_assert_eq(tok_stream_flush(s, &p, &len), 0);
    free(p);
    tok_stream_free(s);
    const int32_t ids2[] = {1, 424, 410, 424};
    check_stream(tok, ids2, 4, true, "space mid-sequence");
    tok_free(tok);
}

Test(tok_stream, incomplete_tail_flushes_as_replacement)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    struct tok_stream *s = tok_stream_new(tok, true);
    char *p = NULL;
    size_t len;
    cr_assert_eq(tok_stream_push(s, 424, &p, &len), 0);
    cr_assert_str_eq(p, "w");
    free(p);
    cr_assert_eq(tok_stream_push(s, 243, &p, &len), 0); /* <0xF0>: start of a 4-byte char */
    cr_assert_eq(len, 0);
    free(p);
    cr_assert_eq(tok_stream_flush(s, &p, &len), 0);
    cr_assert_str_eq(p, "\xEF\xBF\xBD");
    free(p);
    tok_stream_free(s);
    tok_free(tok);
}

Test(tok_stream, byte_level_partial_characters)
{
    struct tokenizer *tok = tt_load("tokenizers/llama3_1");
    /* Rare characters that byte-level BPE splits inside their UTF-8 encoding. */
    const char *text = "\xF0\x9D\x94\x98\xF0\x9D\x94\xAB \xF0\x90\x8D\x88 \xF0\x9F\x80\x84 \xE4\xB8\x80\xE4\xB8\x81";
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, text, strlen(text), false, &ids, &n), 0);
    int held = check_stream(tok, ids, n, true, "byte-level rare characters");
    cr_assert_gt(held, 0, "expected at least one token ending inside a character");
    free(ids);
    tok_free(tok);
}

Test(tok_stream, invalid_bytes_are_not_held_forever)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    struct tok_stream *s = tok_stream_new(tok, true);
    size_t total = 0;
    /* <0xFF> never starts a character: each decodes to U+FFFD. */
    for (int i = 0; i < 40; i++) {
        char *p = NULL;
        size_t len = 0;
        cr_assert_eq(tok_stream_push(s, 3 + 0xFF, &p, &len), 0);
        total += len;
        free(p);
    }
    cr_assert_geq(total, 3 * 30, "only %zu bytes came out of 40 invalid tokens", total);
    char *p = NULL;
    size_t len = 0;
    cr_assert_eq(tok_stream_flush(s, &p, &len), 0);
    total += len;
    free(p);
    cr_assert_eq(total, 3 * 40);
    tok_stream_free(s);
    tok_free(tok);
}

/* Byte tokens that turn out not to be valid UTF-8 make the full decode rewrite text already
 * streamed (into U+FFFD); the stream must carry on with the words after them, not stall. */
Test(tok_stream, invalid_bytes_do_not_stall_the_stream)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    int32_t *tail = NULL;
    size_t n_tail = 0;
    const char *words = " and the cat sat on the mat";
    cr_assert_eq(tok_encode(tok, words, strlen(words), false, &tail, &n_tail), 0);
    /* 'y' (0x79), then a lone continuation byte 0xBF, then 'Q' (0x51): as byte tokens. */
    int32_t ids[64] = {124, 194, 84};
    size_t n = 3;
    for (size_t i = 0; i < n_tail && n < 64; i++) ids[n++] = tail[i];
    struct tok_stream *s = tok_stream_new(tok, true);
    size_t total = 0, after_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        char *piece = NULL;
        size_t len = 0;
        cr_assert_eq(tok_stream_push(s, ids[i], &piece, &len), 0);
        total += len;
        if (i >= 3) after_bytes += len;
        free(piece);
    }
    cr_assert_gt(after_bytes, strlen(words) / 2, "the words after the bad bytes were not streamed");
    cr_assert_gt(total, 0);
    tok_stream_free(s);
    free(tail);
    tok_free(tok);
}

/* ---- the property: random id sequences ------------------------------------------------------ */

static uint64_t rng_next(uint64_t *x) /* splitmix64 */
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *x, size_t n)
{
    return n ? (size_t)(rng_next(x) % n) : 0;
}

struct id_pool {
    int32_t *v;
    size_t n;
};

static void pool_add(struct id_pool *p, int32_t id)
{
    p->v = realloc(p->v, (p->n + 1) * sizeof(*p->v));
    cr_assert_not_null(p->v);
    p->v[p->n++] = id;
}

/* The ids that make streaming hard, sorted by what they decode to alone: single bytes (byte
 * fallback tokens, or byte-level tokens of one byte), pieces that are not whole UTF-8 (parts
 * of characters), special tokens, and whitespace. */
struct pools {
    struct id_pool bytes, partial, special, space;
    int32_t vocab;
};

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n') return false;
    return true;
}

static void pools_build(const struct tokenizer *tok, struct pools *p)
{
    memset(p, 0, sizeof(*p));
    p->vocab = tok_vocab_size(tok);
    char buf[64];
    for (int32_t id = 0; id < p->vocab; id++) {
        size_t n = tok_token_piece(tok, id, buf, sizeof(buf));
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        if (tok_is_special(tok, id)) pool_add(&p->special, id);
        else if (n == 1) pool_add(&p->bytes, id);
        else if (n > 0 && !valid_utf8(buf, k)) pool_add(&p->partial, id);
        else if (n > 0 && n == k && all_space(buf, k)) pool_add(&p->space, id);
    }
    cr_assert_gt(p->bytes.n + p->partial.n, 0, "no byte or partial-character tokens found");
}

static void pools_free(struct pools *p)
{
    free(p->bytes.v);
    free(p->partial.v);
    free(p->special.v);
    free(p->space.v);
}

static int32_t pick(uint64_t *x, const struct id_pool *p, int32_t vocab)
{
    return p->n ? p->v[rng_below(x, p->n)] : (int32_t)rng_below(x, (size_t)vocab);
}

/* One random sequence: a mix whose weights depend on the sequence, from "any id" to "almost
 * only bytes and parts of characters", with the encoding of real multi-byte text cut up and
 * shuffled in, and now and then an id that decodes to nothing (out of range). */
static size_t random_sequence(uint64_t *x, const struct tokenizer *tok, const struct pools *p, int32_t *ids,
                              size_t cap)
{
    static const char *texts[] = {
        "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", " \xC3\xA9t\xC3\xA9 ",
        "\xF0\x9D\x94\x98\xF0\x90\x8D\x88", "  a\tb\n\n c  ", "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4", "<s> </s> x",
        "\xC3\xA9\xC3\xBC\xC3\xB1" /* in GPT-2's byte table, two bytes each */};
    size_t n = 1 + rng_below(x, rng_below(x, 8) == 0 ? 200 : 40);
    if (n > cap) n = cap;
    unsigned w_bytes = (unsigned)rng_below(x, 10), w_partial = (unsigned)rng_below(x, 6),
             w_special = (unsigned)rng_below(x, 3), w_space = (unsigned)rng_below(x, 3), w_any = (unsigned)rng_below(x, 6),
             w_text = (unsigned)rng_below(x, 3);
    if (rng_below(x, 6) == 0) /* only text cut up, and bytes: long runs of byte tokens */
        w_partial = w_special = w_space = w_any = 0, w_text = 4;
    unsigned total = w_bytes + w_partial + w_special + w_space + w_any + w_text + 1;
    size_t i = 0;
    while (i < n) {
        unsigned r = (unsigned)rng_below(x, total);
        if (r < w_bytes) {
            ids[i++] = pick(x, &p->bytes, p->vocab);
        } else if ((r -= w_bytes) < w_partial) {
            ids[i++] = pick(x, &p->partial, p->vocab);
        } else if ((r -= w_partial) < w_special) {
            ids[i++] = pick(x, &p->special, p->vocab);
        } else if ((r -= w_special) < w_space) {
            ids[i++] = pick(x, &p->space, p->vocab);
        } else if ((r -= w_space) < w_text) {
            const char *t = texts[rng_below(x, sizeof(texts) / sizeof(texts[0]))];
            int32_t *enc = NULL;
            size_t m = 0;
            cr_assert_eq(tok_encode(tok, t, strlen(t), false, &enc, &m), 0);
            size_t from = rng_below(x, m + 1);
            for (size_t j = from; j < m && i < n; j++)
                ids[i++] = rng_below(x, 6) == 0 ? enc[rng_below(x, m)] : enc[j]; /* now and then out of order */
            free(enc);
        } else if (rng_below(x, 20) == 0) {
            ids[i++] = rng_below(x, 2) ? -1 - (int32_t)rng_below(x, 5) : p->vocab + (int32_t)rng_below(x, 5);
        } else {
            ids[i++] = (int32_t)rng_below(x, (size_t)p->vocab);
        }
    }
    return n;
}

static void check_random(const struct tokenizer *tok, const char *name, uint64_t seed, int count)
{
    struct pools p;
    pools_build(tok, &p);
    uint64_t x = seed;
    int32_t ids[256];
    char what[160];
    for (int i = 0; i < count; i++) {
        size_t n = random_sequence(&x, tok, &p, ids, sizeof(ids) / sizeof(ids[0]));
        snprintf(what, sizeof(what), "%s random sequence %d (seed %llu)", name, i, (unsigned long long)seed);
        check_stream(tok, ids, n, true, what);
        check_stream(tok, ids, n, false, what);
    }
    pools_free(&p);
}

Test(tok_stream, random_ids_stories260k_hf)
{
    struct tokenizer *t = tt_load("models/stories260K/hf");
    check_random(t, "stories260K", 1, 800);
    tok_free(t);
}

Test(tok_stream, random_ids_stories260k_gguf)
{
    struct tokenizer *t = tt_load("models/stories260K/stories260K.gguf");
    check_random(t, "stories260K.gguf", 2, 800);
    tok_free(t);
}

Test(tok_stream, random_ids_llama2)
{
    struct tokenizer *t = tt_load("tokenizers/llama2");
    check_random(t, "llama2", 3, 800);
    tok_free(t);
}

Test(tok_stream, random_ids_llama3_1)
{
    struct tokenizer *t = tt_load("tokenizers/llama3_1");
    check_random(t, "llama3_1", 4, 800);
    tok_free(t);
}

Test(tok_stream, random_ids_qwen3)
{
    struct tokenizer *t = tt_load("tokenizers/qwen3");
    check_random(t, "qwen3", 5, 800);
    tok_free(t);
}

Test(tok_stream, random_ids_tiny_dummy)
{
    /* The example model the worker's dummy-weight runs use; it lives in this repository. */
    char err[512];
    struct tokenizer *t = NULL;
    cr_assert_eq(tok_load(&t, "examples/models/tiny-dummy", err, sizeof(err)), 0, "%s (run from the repository root)", err);
    check_random(t, "tiny-dummy", 6, 800);
    tok_free(t);
}

/* stories260K's vocabulary under a decoder of our own, written beside no tokenizer_config. */
static struct tokenizer *load_decoder_variant(const char *decoder_json)
{
    char src[1024], dir[] = "/tmp/sluice_tokdec_XXXXXX", path[1100], err[512];
    snprintf(src, sizeof(src), "%s/models/stories260K/hf/tokenizer.json", tt_data_dir());
    if (access(src, R_OK) != 0) cr_skip_test("test data %s is absent", src);
    json_error_t je;
    json_t *root = json_load_file(src, 0, &je), *dec = json_loads(decoder_json, JSON_DECODE_ANY, &je);
    cr_assert(root && dec, "%s", je.text);
    json_object_set_new(root, "decoder", dec);
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
    struct tokenizer *tok = NULL;
    int rc = tok_load(&tok, path, err, sizeof(err));
    unlink(path);
    rmdir(dir);
    cr_assert_eq(rc, 0, "%s: %s", decoder_json, err);
    return tok;
}

/* Every decoder step on the one fused string, and on token lists: partial matches of a
 * pattern across tokens, a Strip that cuts the end, a fused "<0xNN>", Metaspace's first
 * token, ByteLevel deciding late, and no decoder at all. */
Test(tok_stream, random_ids_every_decoder_shape)
{
#define R(pat, rep) "{\"type\": \"Replace\", \"pattern\": {\"String\": \"" pat "\"}, \"content\": \"" rep "\"}"
#define STRIP(c, a, b) "{\"type\": \"Strip\", \"content\": \"" c "\", \"start\": " #a ", \"stop\": " #b "}"
#define META(s) "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"" s "\", \"split\": true}"
#define BF "{\"type\": \"ByteFallback\"}"
#define FUSE "{\"type\": \"Fuse\"}"
#define BL "{\"type\": \"ByteLevel\"}"
#define SEQ(steps) "{\"type\": \"Sequence\", \"decoders\": [" steps "]}"
    static const char *decoders[] = {
        SEQ(R("\\u2581", " ") "," BF "," FUSE "," STRIP(" ", 1, 0)),
        SEQ(BF "," FUSE "," R("\\u2581", " ") "," STRIP(" ", 2, 2)),
        SEQ(FUSE "," BF "," META("first")),
        SEQ(FUSE "," R("\\u2581t", "T") "," R("he", "HE") "," R("ee", "3") "," BF),
        SEQ(BF "," FUSE "," BL),
        SEQ(FUSE "," BL "," STRIP("a", 1, 1)),
        SEQ(BF "," FUSE "," STRIP("a", 0, 1) "," BL), /* ByteLevel gets half a character */
        SEQ(META("always") "," BF "," FUSE),
        SEQ(META("never") "," BF),
        SEQ(STRIP("\\u2581", 1, 1) "," R("\\u2581", "_") "," BF "," R("\\ufffd\\ufffd", "X")),
        BL,
        SEQ(BF "," FUSE "," FUSE "," STRIP("\\ufffd", 3, 3)),
        "null",
    };
#undef R
#undef STRIP
#undef META
#undef BF
#undef FUSE
#undef BL
#undef SEQ
    for (size_t i = 0; i < sizeof(decoders) / sizeof(decoders[0]); i++) {
        struct tokenizer *t = load_decoder_variant(decoders[i]);
        char name[64];
        snprintf(name, sizeof(name), "decoder variant %zu", i);
        check_random(t, name, 100 + i, 300);
        tok_free(t);
    }
}

/* A Strip that holds the last byte of the fused text hands ByteLevel half of "é": that must
 * not decide that the text is not byte-level (every character here is in the byte table, so
 * the bytes E9 and FC come out, each one U+FFFD). */
Test(tok_stream, byte_level_after_fuse_waits_on_half_characters)
{
    struct tokenizer *tok = load_decoder_variant(
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
        "{\"type\": \"Strip\", \"content\": \"a\", \"start\": 0, \"stop\": 1}, {\"type\": \"ByteLevel\"}]}");
    /* <0xC3> <0xA9> "he" <0xC3> <0xBC> "nd" */
    const int32_t ids[] = {198, 172, 260, 198, 191, 264};
    check_stream(tok, ids, 6, true, "half characters into ByteLevel");
    char *text = NULL;
    cr_assert_eq(tok_decode(tok, ids, 6, true, &text, NULL), 0);
    cr_assert_str_eq(text, "\xEF\xBF\xBDhe\xEF\xBF\xBDnd");
    free(text);
    tok_free(tok);
}
