/* Shared helpers of the tokenizer unit tests: where the test data is, and loading it. */
#ifndef SLUICE_TESTS_TOK_TEST_UTIL_H
#define SLUICE_TESTS_TOK_TEST_UTIL_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/tokenizer/tokenizer.h"

static inline const char *tt_data_dir(void)
{
    const char *d = getenv("SLUICE_TEST_DATA");
    return d && *d ? d : "../shared";
}

/* Loads <data>/<rel>, or skips the test when the test data is absent. */
static inline struct tokenizer *tt_load(const char *rel)
{
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/%s", tt_data_dir(), rel);
    if (access(path, R_OK) != 0) {
        cr_skip_test("test data %s is absent (set SLUICE_TEST_DATA)", path);
        return NULL;
    }
    struct tokenizer *tok = NULL;
    cr_assert_eq(tok_load(&tok, path, err, sizeof(err)), 0, "load %s: %s", path, err);
    return tok;
}

static inline void tt_assert_ids(const struct tokenizer *tok, const char *text, bool add_special,
                                 const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, text, strlen(text), add_special, &ids, &n), 0);
    cr_assert_eq(n, n_want, "\"%s\": %zu ids, want %zu", text, n, n_want);
    for (size_t i = 0; i < n; i++) cr_assert_eq(ids[i], want[i], "\"%s\": id[%zu] = %d, want %d", text, i, ids[i], want[i]);
    free(ids);
}

/* The corpus of tests/fixtures/tokenizer_corpus.json (a JSON array of strings). */
static inline json_t *tt_corpus(void)
{
    json_error_t je;
    json_t *c = json_load_file("tests/fixtures/tokenizer_corpus.json", JSON_ALLOW_NUL, &je);
    cr_assert_not_null(c, "tests/fixtures/tokenizer_corpus.json: %s (run from the repository root)", je.text);
    cr_assert(json_is_array(c) && json_array_size(c) > 10);
    return c;
}

#endif
