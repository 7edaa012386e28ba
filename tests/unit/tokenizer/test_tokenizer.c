/* Tokenizer: known ids (taken from the `tokenizers` Python package), byte fallback, special
 * tokens in text, decoding rules, GGUF against tokenizer.json, and load errors. */
#include <pthread.h>

#include "tests/unit/tokenizer/tok_test_util.h"

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), (sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))

static void assert_decode(const struct tokenizer *tok, const int32_t *ids, size_t n, bool skip, const char *want)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tok_decode(tok, ids, n, skip, &text, &len), 0);
    cr_assert_eq(len, strlen(want), "decode gave \"%s\", want \"%s\"", text, want);
    cr_assert_str_eq(text, want);
    free(text);
}

Test(tokenizer, stories260k_known_ids)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    tt_assert_ids(tok, "Once upon a time, there was a little girl.", true,
                  IDS(1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 426));
    tt_assert_ids(tok, "Hello\nworld", true, IDS(1, 346, 306, 414, 13, 424, 304, 341));
    tt_assert_ids(tok, "tab\there", false, IDS(259, 412, 430, 12, 260, 276));
    cr_assert_eq(tok_vocab_size(tok), 512);
    cr_assert_eq(tok_bos_id(tok), 1);
    cr_assert_eq(tok_eos_id(tok), 2);
    cr_assert_str_eq(tok_bos_text(tok), "<s>");
    cr_assert_str_eq(tok_eos_text(tok), "</s>");
    cr_assert_null(tok_chat_template(tok));
    tok_free(tok);
}

Test(tokenizer, llama2_known_ids)
{
    struct tokenizer *tok = tt_load("tokenizers/llama2");
    tt_assert_ids(tok, "Once upon a time, there was a little girl.", true,
                  IDS(1, 5713, 3714, 264, 727, 28725, 736, 403, 264, 1628, 2746, 28723));
    tt_assert_ids(tok, "Hello\nworld", true, IDS(1, 22557, 13, 9471));
    tt_assert_ids(tok, "Hi \xF0\x9F\x98\x80 \xE4\xB8\x96\xE7\x95\x8C", true, IDS(1, 15359, 28705, 30575, 28705, 30050, 29822));
    tt_assert_ids(tok, "", true, IDS(1));
    tt_assert_ids(tok, " ", false, IDS(28705)); /* "▁", as transformers 5 (tokenizer.json alone: "▁▁") */
    cr_assert_eq(tok_vocab_size(tok), 32000);
    tok_free(tok);
}

Test(tokenizer, byte_fallback_encode_and_decode)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    /* No token for these characters: their UTF-8 bytes become <0xNN> tokens. */
    tt_assert_ids(tok, "\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA4\x96", true,
                  IDS(1, 410, 233, 154, 168, 233, 159, 175, 410, 243, 162, 167, 153));
    assert_decode(tok, IDS(1, 410, 243, 162, 167, 153), true, "\xF0\x9F\xA4\x96");
    assert_decode(tok, IDS(1, 410, 243, 162, 167, 153), false, "<s> \xF0\x9F\xA4\x96");
    /* An incomplete character: one U+FFFD per byte, as Hugging Face's ByteFallback. */
    assert_decode(tok, IDS(233, 154), true, "\xEF\xBF\xBD\xEF\xBF\xBD");
    assert_decode(tok, IDS(233, 154, 410, 424), true, "\xEF\xBF\xBD\xEF\xBF\xBD w");
    tok_free(tok);
}

Test(tokenizer, special_tokens_in_text)
{
    struct tokenizer *tok = tt_load("models/stories260K/hf");
    /* As transformers 5's LlamaTokenizer: the space after </s> is the one "▁" of " x". */
    tt_assert_ids(tok, "<s>hi</s> x", true, IDS(1, 1, 270, 417, 2, 410, 444));
    cr_assert(tok_is_special(tok, 1));
    cr_assert(tok_is_special(tok, 2));
    cr_assert(!tok_is_special(tok, 270));
    assert_decode(tok, IDS(1, 1, 270, 417, 2), false, "<s><s> hi</s>");
    assert_decode(tok, IDS(1, 1, 270, 417, 2), true, "hi");
    tok_free(tok);

    tok = tt_load("tokenizers/llama3_1");
    tt_assert_ids(tok, "<|begin_of_text|>Hi<|eot_id|>", false, IDS(128000, 13347, 128009));
    cr_assert_eq(tok_bos_id(tok), 128000);
    cr_assert_eq(tok_eos_id(tok), 128009);
    cr_assert_not_null(tok_chat_template(tok));
    tok_free(tok);
}

Test(tokenizer, nfc_and_byte_level)
{
    struct tokenizer *tok = tt_load("tokenizers/qwen3");
    tt_assert_ids(tok, "caf\xC3\xA9", false, IDS(924, 58858));
    tt_assert_ids(tok, "cafe\xCC\x81", false, IDS(924, 58858)); /* e + combining acute composes */
    tok_free(tok);
    tok = tt_load("tokenizers/llama3_1");
    tt_assert_ids(tok, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80 ok", true,
                  IDS(128000, 102433, 102158, 91416, 5509));
    tok_free(tok);
}

Test(tokenizer, token_piece)
{
    struct tokenizer *tok = tt_load("tokenizers/llama2");
    char buf[32];
    cr_assert_eq(tok_token_piece(tok, 22557, buf, sizeof(buf)), 6);
    cr_assert_str_eq(buf, " Hello");
    cr_assert_eq(tok_token_piece(tok, 13, buf, sizeof(buf)), 1);
    cr_assert_str_eq(buf, "\n");
    cr_assert_eq(tok_token_piece(tok, 243, buf, sizeof(buf)), 1); /* <0xF0>: half a character */
    cr_assert_eq((unsigned char)buf[0], 0xF0);
    cr_assert_eq(tok_token_piece(tok, 22557, buf, 3), 6); /* truncated, full length returned */
    cr_assert_eq(tok_token_piece(tok, -1, buf, sizeof(buf)), 0);
    tok_free(tok);
    tok = tt_load("tokenizers/llama3_1");
    cr_assert_eq(tok_token_piece(tok, 5509, buf, sizeof(buf)), 3);
    cr_assert_str_eq(buf, " ok");
    tok_free(tok);
}

static struct tokenizer *load_with_config(const char *config_json, const char *model_config, char *dir);

/* The GGUF's SentencePiece pipeline is llama.cpp's, which is tokenizer.json's own (without
 * the class transformers builds from tokenizer_config.json). */
Test(tokenizer, gguf_vocab_equals_hf)
{
    char dir[] = "/tmp/sluice_tokcfg_XXXXXX";
    struct tokenizer *hf = load_with_config("{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}", NULL, dir);
    struct tokenizer *gg = tt_load("models/stories260K/stories260K.gguf");
    cr_assert_eq(tok_vocab_size(hf), tok_vocab_size(gg));
    cr_assert_eq(tok_bos_id(hf), tok_bos_id(gg));
    cr_assert_eq(tok_eos_id(hf), tok_eos_id(gg));
    for (int32_t id = 0; id < tok_vocab_size(hf); id++) {
        char a[64], b[64];
        size_t la = tok_token_piece(hf, id, a, sizeof(a)), lb = tok_token_piece(gg, id, b, sizeof(b));
        cr_assert(la == lb && memcmp(a, b, la) == 0, "token %d differs", id);
        cr_assert_eq(tok_is_special(hf, id), tok_is_special(gg, id), "token %d special", id);
    }
    json_t *corpus = tt_corpus();
    for (size_t i = 0; i < json_array_size(corpus); i++) {
        const char *s = json_string_value(json_array_get(corpus, i));
        size_t slen = json_string_length(json_array_get(corpus, i));
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        cr_assert_eq(tok_encode(hf, s, slen, true, &x, &nx), 0);
        cr_assert_eq(tok_encode(gg, s, slen, true, &y, &ny), 0);
        cr_assert(nx == ny && memcmp(x, y, nx * sizeof(*x)) == 0, "corpus line %zu encodes differently", i);
        free(x);
        free(y);
    }
    json_decref(corpus);
    tok_free(hf);
    tok_free(gg);
}

/* Writes a tokenizer.json made from stories260K's with one edit, and loads it. */
static void expect_load_error(const char *edit_key, json_t *edit_value, const char *want_field)
{
    char src[1024], dir[] = "/tmp/sluice_tok_XXXXXX", path[1100], err[512];
    snprintf(src, sizeof(src), "%s/models/stories260K/hf/tokenizer.json", tt_data_dir());
    if (access(src, R_OK) != 0) cr_skip_test("test data %s is absent", src);
    json_t *root = json_load_file(src, 0, NULL);
    cr_assert_not_null(root);
    /* edit_key is "a" or "a.b" */
    const char *dot = strchr(edit_key, '.');
    if (dot) {
        char head[64];
        snprintf(head, sizeof(head), "%.*s", (int)(dot - edit_key), edit_key);
        json_object_set_new(json_object_get(root, head), dot + 1, edit_value);
    } else
        json_object_set_new(root, edit_key, edit_value);
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
    struct tokenizer *tok = NULL;
    int rc = tok_load(&tok, path, err, sizeof(err));
    unlink(path);
    rmdir(dir);
    cr_assert_lt(rc, 0, "loading a tokenizer.json with a bad %s succeeded", edit_key);
    cr_assert_null(tok);
    cr_assert_not_null(strstr(err, "tokenizer.json"), "error does not name the file: %s", err);
    cr_assert_not_null(strstr(err, want_field), "error does not name %s: %s", want_field, err);
}

Test(tokenizer, malformed_json_names_the_field)
{
    expect_load_error("model.merges", json_pack("[s]", "zz qq"), "model.merges[0]");
    expect_load_error("model.vocab", json_string("nope"), "model.vocab");
    expect_load_error("model.unk_token", json_string("<nothing>"), "model.unk_token");
    expect_load_error("normalizer", json_pack("{s:s}", "type", "Frobnicate"), "normalizer.type");
    expect_load_error("decoder", json_pack("{s:s,s:[{s:s}]}", "type", "Sequence", "decoders", "type", "Bogus"),
                      "decoder.decoders[0].type");
    expect_load_error("pre_tokenizer", json_pack("{s:s,s:{s:s},s:s}", "type", "Split", "pattern", "Regex", "(",
                                                 "behavior", "Isolated"),
                      "pre_tokenizer.pattern");
    expect_load_error("added_tokens", json_pack("[{s:s}]", "content", "x"), "added_tokens[0]");

    char err[512];
    struct tokenizer *tok = NULL;
    cr_assert_lt(tok_load(&tok, "/nonexistent/tokenizer.json", err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "/nonexistent/tokenizer.json"), "%s", err);
    FILE *f = fopen("/tmp/sluice_tok_garbage.json", "w");
    cr_assert_not_null(f);
    fputs("{\"model\": [1, 2", f);
    fclose(f);
    cr_assert_lt(tok_load(&tok, "/tmp/sluice_tok_garbage.json", err, sizeof(err)), 0);
    unlink("/tmp/sluice_tok_garbage.json");
    cr_assert_not_null(strstr(err, "sluice_tok_garbage.json"), "%s", err);
}

Test(tokenizer, invalid_utf8_input_does_not_crash)
{
    struct tokenizer *tok = tt_load("tokenizers/llama3_1");
    const char bad[] = "ok \xFF\xFE \xE4\xB8 \xC0\x80 end";
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, bad, sizeof(bad) - 1, false, &ids, &n), 0);
    cr_assert_gt(n, 0);
    char *text = NULL;
    cr_assert_eq(tok_decode(tok, ids, n, false, &text, NULL), 0);
    cr_assert_not_null(strstr(text, "ok \xEF\xBF\xBD"));
    free(text);
    free(ids);
    tok_free(tok);
}

struct thread_arg {
    const struct tokenizer *tok;
    json_t *corpus;
    size_t total;
};

static void *encode_all(void *p)
{
    struct thread_arg *a = p;
    a->total = 0;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < json_array_size(a->corpus); i++) {
            json_t *s = json_array_get(a->corpus, i);
            int32_t *ids = NULL;
            size_t n = 0;
            if (tok_encode(a->tok, json_string_value(s), json_string_length(s), true, &ids, &n) == 0) {
                for (size_t k = 0; k < n; k++) a->total += (size_t)ids[k] * (k + 1);
            }
            free(ids);
        }
    return NULL;
}

Test(tokenizer, concurrent_encodes_agree)
{
    struct tokenizer *tok = tt_load("tokenizers/qwen3");
    json_t *corpus = tt_corpus();
    struct thread_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){.tok = tok, .corpus = corpus};
        cr_assert_eq(pthread_create(&th[i], NULL, encode_all, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    struct thread_arg ref = {.tok = tok, .corpus = corpus};
    encode_all(&ref);
    for (int i = 0; i < 4; i++) cr_assert_eq(args[i].total, ref.total);
    json_decref(corpus);
    tok_free(tok);
}

/* A model directory with stories260K's tokenizer.json and, when given, a tokenizer_config.json
 * and a config.json of our own. */
static struct tokenizer *load_with_config(const char *config_json, const char *model_config, char *dir)
{
    char src[1024], path[1100], err[512];
    snprintf(src, sizeof(src), "%s/models/stories260K/hf/tokenizer.json", tt_data_dir());
    if (access(src, R_OK) != 0) cr_skip_test("test data %s is absent", src);
    cr_assert_not_null(mkdtemp(dir));
    json_t *root = json_load_file(src, 0, NULL);
    cr_assert_not_null(root);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
    const char *names[] = {"tokenizer_config.json", "config.json"}, *texts[] = {config_json, model_config};
    for (int i = 0; i < 2; i++) {
        if (!texts[i]) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fputs(texts[i], f);
        fclose(f);
    }
    struct tokenizer *tok = NULL;
    int rc = tok_load(&tok, dir, err, sizeof(err));
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
    cr_assert_eq(rc, 0, "%s", err);
    return tok;
}

Test(tokenizer, config_class_flags)
{
    char dir[] = "/tmp/sluice_tokcfg_XXXXXX";
    /* add_bos_token and add_eos_token are not read when there is a tokenizer.json. */
    struct tokenizer *tok = load_with_config(
        "{\"tokenizer_class\": \"LlamaTokenizer\", \"bos_token\": \"<s>\", \"eos_token\": "
        "{\"content\": \"</s>\"}, \"add_bos_token\": false, \"add_eos_token\": true, "
        "\"chat_template\": \"{{ messages }}\", \"model_max_length\": 1000000000000000019884624838656}",
        NULL, dir);
    tt_assert_ids(tok, "hi", true, IDS(1, 270, 417));
    tt_assert_ids(tok, "hi", false, IDS(270, 417));
    /* no "legacy": only the text at the very start gets a "▁" */
    tt_assert_ids(tok, "</s>hi", true, IDS(1, 2, 415, 417));
    tt_assert_ids(tok, " hi", true, IDS(1, 270, 417));
    tt_assert_ids(tok, "  hi", true, IDS(1, 410, 270, 417));
    cr_assert_str_eq(tok_chat_template(tok), "{{ messages }}");
    cr_assert_str_eq(tok_eos_text(tok), "</s>");
    tok_free(tok);

    char dir4[] = "/tmp/sluice_tokcfg_XXXXXX";
    tok = load_with_config("{\"tokenizer_class\": \"LlamaTokenizerFast\", \"legacy\": true}", NULL, dir4);
    tt_assert_ids(tok, "</s>hi", true, IDS(1, 2, 270, 417)); /* every stretch of text gets one */
    tok_free(tok);

    char dir5[] = "/tmp/sluice_tokcfg_XXXXXX";
    tok = load_with_config("{\"tokenizer_class\": \"LlamaTokenizer\", \"add_prefix_space\": false}", NULL, dir5);
    tt_assert_ids(tok, "hi", true, IDS(1, 415, 417));
    assert_decode(tok, IDS(410, 270, 417), true, "  hi");
    tok_free(tok);

    /* A Mistral model's tokenizer is tokenizer.json as it is, class or not. */
    char dir6[] = "/tmp/sluice_tokcfg_XXXXXX";
    tok = load_with_config("{\"tokenizer_class\": \"LlamaTokenizer\", \"legacy\": true}",
                           "{\"model_type\": \"mistral\"}", dir6);
    tt_assert_ids(tok, " hi", true, IDS(1, 410, 270, 417));
    tok_free(tok);

    char dir2[] = "/tmp/sluice_tokcfg_XXXXXX";
    tok = load_with_config("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
                           "{\"name\": \"default\", \"template\": \"D\"}]}",
                           NULL, dir2);
    tt_assert_ids(tok, "hi", true, IDS(1, 270, 417)); /* the post-processor's BOS */
    cr_assert_str_eq(tok_chat_template(tok), "D");
    tok_free(tok);

    char dir3[] = "/tmp/sluice_tokcfg_XXXXXX";
    char src[1024], path[1100], err[512];
    snprintf(src, sizeof(src), "%s/models/stories260K/hf/tokenizer.json", tt_data_dir());
    cr_assert_not_null(mkdtemp(dir3));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir3);
    json_t *root = json_load_file(src, 0, NULL);
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir3);
    FILE *f = fopen(path, "w");
    fputs("{not json", f);
    fclose(f);
    struct tokenizer *bad = NULL;
    cr_assert_lt(tok_load(&bad, dir3, err, sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "tokenizer_config.json"), "%s", err);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir3);
    unlink(path);
    rmdir(dir3);
}
