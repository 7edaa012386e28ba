/* Encode speed of sluice's tokenizer: reads a text file, encodes it line by line (as a
 * server encodes prompts), and prints tokens and tokens/s. Used by tests/bench/bench_tokenizer.py,
 * which times the `tokenizers` package on the same file in the same run.
 *
 *   tokenizer_bench TOKENIZER_PATH TEXT_FILE [REPEATS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/tokenizer/tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_PATH TEXT_FILE [REPEATS]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    char err[512];
    struct tokenizer *tok = NULL;
    if (tok_load(&tok, argv[1], err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: short read\n", argv[2]);
        return 1;
    }
    text[size] = '\0';
    fclose(f);

    double best = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < repeats; r++) {
        tokens = 0;
        double t0 = now_s();
        for (char *line = text; line < text + size;) {
            char *nl = memchr(line, '\n', (size_t)(text + size - line));
            size_t len = nl ? (size_t)(nl - line + 1) : (size_t)(text + size - line);
            int32_t *ids = NULL;
            size_t n = 0;
            if (tok_encode(tok, line, len, false, &ids, &n) != 0) return 1;
            tokens += n;
            free(ids);
            line += len;
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    printf("{\"bytes\": %ld, \"tokens\": %zu, \"seconds\": %.4f, \"tokens_per_s\": %.0f}\n", size,
           tokens, best, tokens / best);
    tok_free(tok);
    free(text);
    return 0;
}
