/* Whitespace and special tokens as transformers' AutoTokenizer has them: runs of spaces, tabs
 * and newlines at the start, end and inside, whitespace alone, the empty string, and special
 * tokens with spaces around them, on every shared tokenizer directory. The ids and texts are
 * tests/fixtures/tokenizer_whitespace.json, written from transformers (its "about" says how;
 * the conformance test checks that it is still what transformers gives). */
#include "tests/unit/tokenizer/tok_test_util.h"

static void check_ids(const struct tokenizer *tok, const char *name, json_t *c, bool add_special, const char *key)
{
    json_t *text = json_object_get(c, "text"), *want = json_object_get(c, key);
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, json_string_value(text), json_string_length(text), add_special, &ids, &n), 0);
    bool same = n == json_array_size(want);
    for (size_t i = 0; same && i < n; i++) same = ids[i] == json_integer_value(json_array_get(want, i));
    if (!same) {
        char *w = json_dumps(want, JSON_COMPACT);
        json_t *got = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(got, json_integer(ids[i]));
        char *g = json_dumps(got, JSON_COMPACT);
        cr_assert_fail("%s: \"%s\" (add_special %d): ids %s, transformers %s", name, json_string_value(text),
                       add_special, g, w);
    }
    free(ids);
}

static void check_decode(const struct tokenizer *tok, const char *name, json_t *c, bool skip, const char *key)
{
    json_t *ids = json_object_get(c, "ids"), *want = json_object_get(c, key);
    size_t n = json_array_size(ids);
    int32_t *v = calloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) v[i] = (int32_t)json_integer_value(json_array_get(ids, i));
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tok_decode(tok, v, n, skip, &text, &len), 0);
    cr_assert(len == json_string_length(want) && memcmp(text, json_string_value(want), len) == 0,
              "%s: \"%s\": decode (skip %d) \"%s\", transformers \"%s\"", name,
              json_string_value(json_object_get(c, "text")), skip, text, json_string_value(want));
    free(text);
    free(v);
}

static void check_tokenizer(const char *name)
{
    json_error_t je;
    json_t *fx = json_load_file("tests/fixtures/tokenizer_whitespace.json", 0, &je);
    cr_assert_not_null(fx, "tests/fixtures/tokenizer_whitespace.json: %s (run from the repository root)", je.text);
    const char *rel = json_string_value(json_object_get(json_object_get(fx, "tokenizers"), name));
    cr_assert_not_null(rel, "%s is not in the fixture", name);
    struct tokenizer *tok = tt_load(rel);
    size_t i, seen = 0;
    json_t *c;
    json_array_foreach(json_object_get(fx, "cases"), i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "tokenizer")), name) != 0) continue;
        check_ids(tok, name, c, true, "ids");
        check_ids(tok, name, c, false, "ids_plain");
        check_decode(tok, name, c, false, "decoded");
        check_decode(tok, name, c, true, "decoded_skip");
        seen++;
    }
    cr_assert_gt(seen, 40, "%s: only %zu cases", name, seen);
    tok_free(tok);
    json_decref(fx);
}

Test(tok_whitespace, stories260k) { check_tokenizer("stories260K-hf"); }
Test(tok_whitespace, llama2) { check_tokenizer("llama2"); }
Test(tok_whitespace, llama3_1) { check_tokenizer("llama3_1"); }
Test(tok_whitespace, qwen3) { check_tokenizer("qwen3"); }
