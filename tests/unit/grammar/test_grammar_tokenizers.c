/* The grammar engine over the shared tokenizers (Llama 3, Qwen 3: byte-level BPE; Llama 2:
 * SentencePiece with byte fallback, whose first token reads without its leading space):
 * documents encoded by the tokenizer are allowed token by token with masks equal to the exact
 * walk, and random walks over the real vocabulary decode to JSON that validates. */
#include <jansson.h>

#include "tests/unit/grammar/grammar_test_util.h"
#include "tests/unit/grammar/json_validate.h"
#include "worker/tokenizer/tokenizer.h"

static struct tokenizer *load_tok(const char *name)
{
    const char *d = getenv("SLUICE_TEST_DATA");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tokenizers/%s", d && *d ? d : "../shared", name);
    if (access(path, R_OK) != 0) {
        cr_skip_test("test data %s is absent (set SLUICE_TEST_DATA)", path);
        return NULL;
    }
    struct tokenizer *tok = NULL;
    cr_assert_eq(tok_load(&tok, path, err, sizeof err), 0, "%s", err);
    return tok;
}

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    s[n] = '\0';
    *len = (size_t)n;
    return s;
}

static struct grammar_vocab *vocab_of(const struct tokenizer *tok)
{
    char err[256];
    struct grammar_vocab *v = NULL;
    cr_assert_eq(grammar_vocab_from_tokenizer(&v, tok, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(grammar_vocab_size(v), tok_vocab_size(tok));
    cr_assert(grammar_vocab_is_stop(v, tok_eos_id(tok)));
    return v;
}

/* Walks the document's tokens; every check_every-th mask is compared with the exact walk. */
static void walk_document(const char *tok_name, enum grammar_kind kind, const char *schema_path, const char *doc_path,
                          int check_every)
{
    struct tokenizer *tok = load_tok(tok_name);
    struct grammar_vocab *v = vocab_of(tok);
    size_t slen = 0, dlen = 0;
    char *schema = schema_path ? read_text(schema_path, &slen) : strdup("");
    char *doc = read_text(doc_path, &dlen);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(kind, schema), v), 0);
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, doc, dlen, false, &ids, &n), 0);
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * 4), *slow = malloc(words * 4);
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    for (size_t i = 0; i <= n; i++) {
        cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
        if (i % (size_t)check_every == 0 || i == n) {
            cr_assert_eq(grammar_matcher_fill_mask_slow(m, slow, words), 0);
            cr_assert(memcmp(mask, slow, words * 4) == 0, "%s: step %zu differs from the exact walk", tok_name, i);
        }
        if (i == n) break;
        char piece[64] = "";
        tok_token_piece(tok, ids[i], piece, sizeof piece - 1);
        cr_assert(gt_bit(mask, ids[i]), "%s: token %zu (%d, \"%s\") of %s is not allowed", tok_name, i, ids[i], piece, doc_path);
        cr_assert_eq(grammar_matcher_accept_token(m, ids[i]), 0);
    }
    cr_assert(gt_bit(mask, tok_eos_id(tok)), "%s: the end of %s is not allowed", tok_name, doc_path);
    cr_assert_eq(grammar_matcher_accept_token(m, tok_eos_id(tok)), 0);
    cr_assert(grammar_matcher_is_done(m));
    grammar_matcher_free(m);
    free(mask);
    free(slow);
    free(ids);
    free(schema);
    free(doc);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    tok_free(tok);
}

Test(grammar_tokenizers, documents_llama3)
{
    walk_document("llama3_1", GRAMMAR_JSON_SCHEMA, "tests/fixtures/grammar/order_schema.json",
                  "tests/fixtures/grammar/order_doc.json", 40);
    walk_document("llama3_1", GRAMMAR_JSON_OBJECT, NULL, "tests/fixtures/grammar/object_doc.json", 40);
}

Test(grammar_tokenizers, documents_qwen3)
{
    walk_document("qwen3", GRAMMAR_JSON_SCHEMA, "tests/fixtures/grammar/tree_schema.json",
                  "tests/fixtures/grammar/tree_doc.json", 40);
}

Test(grammar_tokenizers, documents_llama2)
{
    walk_document("llama2", GRAMMAR_JSON_SCHEMA, "tests/fixtures/grammar/order_schema.json",
                  "tests/fixtures/grammar/order_doc.json", 25);
    walk_document("llama2", GRAMMAR_JSON_SCHEMA, "tests/fixtures/grammar/tree_schema.json",
                  "tests/fixtures/grammar/tree_doc.json", 25);
}

Test(grammar_tokenizers, llama2_first_token_reads_without_its_space)
{
    struct tokenizer *tok = load_tok("llama2");
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, "{", 1, false, &ids, &n), 0);
    cr_assert_eq(n, 1);
    char mid[16], first[16];
    cr_assert_eq(tok_token_piece(tok, ids[0], mid, sizeof mid), 2);
    cr_assert_eq(tok_token_piece_first(tok, ids[0], first, sizeof first), 1);
    cr_assert_str_eq(mid, " {");
    cr_assert_str_eq(first, "{");
    cr_assert_eq(tok_token_piece_first(tok, ids[0], NULL, 0), 1, "the length without a buffer");
    /* The grammar reads "\u2581{" as "{" at the start of the output, and as " {" after it. */
    struct grammar_vocab *v = vocab_of(tok);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(GRAMMAR_JSON_SCHEMA, "{\"type\": \"array\", \"items\": {\"type\": \"object\"}}"), v), 0);
    struct grammar_matcher *m = NULL;
    cr_assert_eq(grammar_matcher_new(&m, c), 0);
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * 4);
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
    cr_assert(!gt_bit(mask, ids[0]), "\"{\" cannot start an array");
    int32_t *arr = NULL;
    size_t na = 0;
    cr_assert_eq(tok_encode(tok, "[", 1, false, &arr, &na), 0);
    cr_assert_eq(na, 1);
    cr_assert(gt_bit(mask, arr[0]), "\"\u2581[\" starts the output as \"[\"");
    cr_assert_eq(grammar_matcher_accept_token(m, arr[0]), 0);
    cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
    cr_assert(gt_bit(mask, ids[0]), "then \"\u2581{\" is \" {\": a space and an object");
    cr_assert_eq(grammar_matcher_accept_token(m, ids[0]), 0);
    cr_assert_lt(grammar_matcher_accept_token(m, ids[0]), 0, "\"[ { {\" is not JSON");
    free(mask);
    free(arr);
    free(ids);
    grammar_matcher_free(m);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    tok_free(tok);
}

static void random_walks(const char *tok_name, const char *schema_path, int walks, uint64_t seed)
{
    struct tokenizer *tok = load_tok(tok_name);
    struct grammar_vocab *v = vocab_of(tok);
    size_t slen = 0;
    char *schema = read_text(schema_path, &slen);
    json_error_t je;
    json_t *sj = json_loads(schema, 0, &je);
    cr_assert_not_null(sj);
    struct grammar_compiled *c = NULL;
    cr_assert_eq(grammar_compiled_new(&c, gt_compile(GRAMMAR_JSON_SCHEMA, schema), v), 0);
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * 4), *slow = malloc(words * 4);
    int32_t n_vocab = grammar_vocab_size(v), eos = tok_eos_id(tok);
    int32_t *allowed = malloc((size_t)n_vocab * sizeof *allowed), *out = malloc(4000 * sizeof *out);
    int finished = 0;
    for (int w = 0; w < walks; w++) {
        struct grammar_matcher *m = NULL;
        cr_assert_eq(grammar_matcher_new(&m, c), 0);
        int n = 0;
        bool done = false;
        while (n < 4000 && !done) {
            cr_assert_eq(grammar_matcher_fill_mask(m, mask, words), 0);
            if (gt_rand(&seed) % 64 == 0) {
                cr_assert_eq(grammar_matcher_fill_mask_slow(m, slow, words), 0);
                cr_assert(memcmp(mask, slow, words * 4) == 0, "%s walk %d step %d differs from the exact walk", tok_name, w, n);
            }
            int na = 0;
            for (int32_t t = 0; t < n_vocab; t++)
                if (gt_bit(mask, t) && t != eos) allowed[na++] = t;
            bool stop = gt_bit(mask, eos);
            cr_assert(na > 0 || stop);
            if (stop && (na == 0 || gt_rand(&seed) % 2 == 0)) {
                cr_assert_eq(grammar_matcher_accept_token(m, eos), 0);
                done = true;
                break;
            }
            int32_t id = allowed[gt_rand(&seed) % (uint64_t)na];
            cr_assert_eq(grammar_matcher_accept_token(m, id), 0);
            out[n++] = id;
        }
        if (done) {
            finished++;
            char *text = NULL;
            size_t len = 0;
            cr_assert_eq(tok_decode(tok, out, (size_t)n, true, &text, &len), 0);
            json_t *val = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            cr_assert_not_null(val, "%s walk %d does not parse (%s):\n%s", tok_name, w, je.text, text);
            cr_assert(jv_valid(val, sj, sj), "%s walk %d does not validate:\n%s", tok_name, w, text);
            json_decref(val);
            free(text);
        }
        grammar_matcher_free(m);
    }
    cr_assert_geq(finished, walks / 2, "%d of %d walks finished", finished, walks);
    free(mask);
    free(slow);
    free(allowed);
    free(out);
    free(schema);
    json_decref(sj);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    tok_free(tok);
}

Test(grammar_tokenizers, random_walks_validate_llama3, .timeout = 120)
{
    random_walks("llama3_1", "tests/fixtures/grammar/bounded_schema.json", 8, 1);
}

Test(grammar_tokenizers, random_walks_validate_llama2, .timeout = 120)
{
    random_walks("llama2", "tests/fixtures/grammar/bounded_schema.json", 8, 2);
}
