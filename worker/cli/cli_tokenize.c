/* `sluice-worker tokenize` and `sluice-worker detokenize`: the tokenizer alone, one JSON value
 * per line, for conformance tests and for people checking what a model sees. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/flags.h"
#include "worker/cli/cli.h"
#include "worker/cli/cli_lines.h"
#include "worker/tokenizer/tokenizer.h"

static void tokenize_line(const struct tokenizer *tok, const char *line, size_t len, bool add_special)
{
    json_error_t je;
    json_t *v = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    int32_t *ids = NULL;
    size_t n = 0;
    if (!v || !json_is_string(v)) {
        cli_print_error(v ? "expected a JSON string" : je.text);
    } else if (tok_encode(tok, json_string_value(v), json_string_length(v), add_special, &ids, &n) != 0) {
        cli_print_error("tokenization failed");
    } else {
        fputc('[', stdout);
        for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        fputs("]\n", stdout);
    }
    free(ids);
    json_decref(v);
}

static void detokenize_line(const struct tokenizer *tok, const char *line, size_t len, bool skip_special)
{
    json_error_t je;
    json_t *v = json_loadb(line, len, JSON_DECODE_ANY, &je);
    int32_t *ids = NULL;
    char *text = NULL;
    size_t text_len = 0;
    if (!v || !json_is_array(v)) {
        cli_print_error(v ? "expected a JSON array of token ids" : je.text);
        goto done;
    }
    ids = malloc((json_array_size(v) + 1) * sizeof(*ids));
    if (!ids) {
        cli_print_error("out of memory");
        goto done;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        json_int_t id = json_integer_value(e);
        if (!json_is_integer(e) || id < 0 || id >= tok_vocab_size(tok)) {
            char msg[96];
            snprintf(msg, sizeof(msg), "element %zu is not a token id in [0, %d)", i, tok_vocab_size(tok));
            cli_print_error(msg);
            goto done;
        }
        ids[i] = (int32_t)id;
    }
    if (tok_decode(tok, ids, json_array_size(v), skip_special, &text, &text_len) != 0) {
        cli_print_error("detokenization failed");
        goto done;
    }
    cli_print_string(text, text_len);
done:
    free(text);
    free(ids);
    json_decref(v);
}

struct line_job {
    const struct tokenizer *tok;
    bool encode;
    bool flag; /* add special tokens (encode) or skip them (decode) */
};

static void on_line(const char *line, size_t len, void *arg)
{
    const struct line_job *job = arg;
    if (job->encode) tokenize_line(job->tok, line, len, job->flag);
    else detokenize_line(job->tok, line, len, job->flag);
}

static int run(int argc, char **argv, bool encode)
{
    const char *path = NULL;
    bool flag = false;
    struct flag_spec specs[] = {
        {"tokenizer", FLAG_STRING, &path, NULL, "PATH", "model directory, tokenizer.json or .gguf file", 0, 0},
        {encode ? "add-special-tokens" : "skip-special-tokens", FLAG_BOOL, &flag, NULL, NULL,
         encode ? "add BOS/EOS as the tokenizer's configuration says" : "leave special tokens out of the text", 0, 0},
        {0},
    };
    const char *prog = encode ? "sluice-worker tokenize" : "sluice-worker detokenize";
    const char *summary = encode ? "Reads one JSON string per line, writes one JSON array of token ids per line."
                                 : "Reads one JSON array of token ids per line, writes one JSON string per line.";
    int rc = flags_parse(prog, summary, specs, argc, argv, 1, NULL, 0, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return 2;
    if (!path) {
        fprintf(stderr, "%s: --tokenizer PATH is required\n", prog);
        return 2;
    }
    struct tokenizer *tok = NULL;
    char err[512];
    if (tok_load(&tok, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: cannot load tokenizer: %s\n", prog, err);
        return 1;
    }
    struct line_job job = {.tok = tok, .encode = encode, .flag = flag};
    cli_for_each_line(on_line, &job);
    tok_free(tok);
    return 0;
}

int cli_tokenize_main(int argc, char **argv)
{
    return run(argc, argv, true);
}

int cli_detokenize_main(int argc, char **argv)
{
    return run(argc, argv, false);
}
