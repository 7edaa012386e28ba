/* The incremental detokenizer: pieces never split a UTF-8 character, and their concatenation
 * equals the full decode, leading-space rules included. */
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
