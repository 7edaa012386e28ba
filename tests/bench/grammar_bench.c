/* Structured output: how long a token mask takes per step, over real tokenizers.
 *
 *   grammar_bench walk TOKENIZER KIND SOURCE_FILE DOC_FILE [--check] [--passes N] [--precompute]
 *       Encodes DOC_FILE with the tokenizer and walks it token by token under the grammar
 *       (KIND: json_schema, json_object, regex, choice, grammar; SOURCE_FILE its source),
 *       timing grammar_matcher_fill_mask before each token and checking that the token is
 *       allowed, and the stop token at the end. The first pass classifies positions as it
 *       meets them (cold); later passes reuse the compiled grammar (warm). --check compares
 *       every mask with the exact walk of the whole vocabulary; --precompute classifies every
 *       position before the first pass (and reports how long that took). Prints one JSON line; with
 *       BENCH_SLOW=US in the environment, also each warm step slower than US microseconds.
 *   grammar_bench sample TOKENIZER KIND SOURCE_FILE N SEED [MAX_TOKENS]
 *       N random walks that pick uniformly among the allowed tokens (the stop token, when
 *       allowed, half of the time) until a stop; prints each output's decoded text as a JSON
 *       line {"finished": bool, "text": ...} (tests/integration/test_grammar_outputs.py). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/grammar/grammar.h"
#include "worker/tokenizer/tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(s);
        return NULL;
    }
    fclose(f);
    s[n] = '\0';
    *len = (size_t)n;
    return s;
}

static int parse_kind(const char *s, enum grammar_kind *k)
{
    static const struct {
        const char *name;
        enum grammar_kind kind;
    } kinds[] = {{"json_schema", GRAMMAR_JSON_SCHEMA}, {"json_object", GRAMMAR_JSON_OBJECT}, {"regex", GRAMMAR_REGEX},
                 {"choice", GRAMMAR_CHOICE}, {"grammar", GRAMMAR_GBNF}};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        if (strcmp(s, kinds[i].name) == 0) {
            *k = kinds[i].kind;
            return 0;
        }
    }
    fprintf(stderr, "unknown kind %s\n", s);
    return -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct timing {
    double mean, p50, p99, max;
};

static struct timing summarize(double *us, size_t n)
{
    struct timing t = {0};
    if (!n) return t;
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += us[i];
    qsort(us, n, sizeof *us, cmp_double);
    t.mean = sum / (double)n;
    t.p50 = us[n / 2];
    t.p99 = us[(size_t)((double)(n - 1) * 0.99)];
    t.max = us[n - 1];
    return t;
}

static bool bit(const uint32_t *mask, int32_t id)
{
    return (mask[id >> 5] >> (id & 31)) & 1;
}

static int walk(struct tokenizer *tok, struct grammar_vocab *v, struct grammar_compiled *c, const int32_t *ids,
                size_t n, bool check, double *us, int pass)
{
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * sizeof *mask), *slow = malloc(words * sizeof *slow);
    struct grammar_matcher *m = NULL;
    int rc = -1;
    if (!mask || !slow || grammar_matcher_new(&m, c) < 0) goto done;
    for (size_t i = 0; i <= n; i++) {
        double t0 = now_s();
        if (grammar_matcher_fill_mask(m, mask, words) < 0) {
            fprintf(stderr, "fill_mask failed at token %zu\n", i);
            goto done;
        }
        us[i] = (now_s() - t0) * 1e6;
        if (getenv("BENCH_SLOW") && pass > 0 && us[i] > atof(getenv("BENCH_SLOW"))) {
            char piece[64] = "";
            if (i < n) tok_token_piece(tok, ids[i], piece, sizeof piece - 1);
            fprintf(stderr, "step %zu: %.1f us before \"%s\"\n", i, us[i], piece);
        }
        if (check) {
            if (grammar_matcher_fill_mask_slow(m, slow, words) < 0) goto done;
            for (size_t w = 0; w < words; w++) {
                if (mask[w] != slow[w]) {
                    for (int b = 0; b < 32; b++) {
                        if (((mask[w] ^ slow[w]) >> b & 1) == 0) continue;
                        int32_t id = (int32_t)(w * 32 + (size_t)b);
                        char piece[64] = "";
                        tok_token_piece(tok, id, piece, sizeof piece - 1);
                        fprintf(stderr, "pass %d step %zu: token %d (%s) fast %d exact %d\n", pass, i, id, piece,
                                bit(mask, id), bit(slow, id));
                    }
                    goto done;
                }
            }
        }
        int32_t id = i < n ? ids[i] : -1;
        if (i == n) {
            bool any_stop = false;
            for (int32_t t = 0; t < grammar_vocab_size(v); t++) any_stop |= grammar_vocab_is_stop(v, t) && bit(mask, t);
            if (!any_stop || !grammar_matcher_can_end(m)) {
                fprintf(stderr, "the document is complete but the grammar cannot end there\n");
                goto done;
            }
            break;
        }
        if (!bit(mask, id)) {
            char piece[64] = "";
            tok_token_piece(tok, id, piece, sizeof piece - 1);
            fprintf(stderr, "token %zu (%d, \"%s\") of the document is not allowed\n", i, id, piece);
            goto done;
        }
        if (grammar_matcher_accept_token(m, id) < 0) {
            fprintf(stderr, "token %zu was allowed but not accepted\n", i);
            goto done;
        }
    }
    rc = 0;
done:
    grammar_matcher_free(m);
    free(mask);
    free(slow);
    return rc;
}

static int cmd_walk(int argc, char **argv)
{
    if (argc < 6) return 2;
    bool check = false, precompute = false;
    int passes = 3;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "--check") == 0) check = true;
        else if (strcmp(argv[i], "--precompute") == 0) precompute = true;
        else if (strcmp(argv[i], "--passes") == 0 && i + 1 < argc) passes = atoi(argv[++i]);
    }
    if (passes < 1) passes = 1;
    enum grammar_kind kind;
    if (parse_kind(argv[3], &kind) < 0) return 2;
    size_t src_len = 0, doc_len = 0;
    char *src = kind == GRAMMAR_JSON_OBJECT ? strdup("") : read_file(argv[4], &src_len);
    char *doc = read_file(argv[5], &doc_len);
    if (!src || !doc) return 1;
    char err[512];
    struct tokenizer *tok = NULL;
    double t0 = now_s();
    if (tok_load(&tok, argv[2], err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t1 = now_s();
    struct grammar_vocab *v = NULL;
    if (grammar_vocab_from_tokenizer(&v, tok, NULL, 0, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t2 = now_s();
    struct grammar *g = NULL;
    if (grammar_compile(&g, kind, src, src_len, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t3 = now_s();
    struct grammar_compiled *c = NULL;
    if (grammar_compiled_new(&c, g, v) < 0) return 1;
    double t4 = now_s();
    if (precompute && grammar_compiled_precompute(c) < 0) return 1;
    double precompute_ms = (now_s() - t4) * 1e3;
    int32_t *ids = NULL;
    size_t n = 0;
    /* Documents end with a newline that the grammar does not take. */
    while (doc_len && (doc[doc_len - 1] == '\n' || doc[doc_len - 1] == '\r')) doc_len--;
    if (tok_encode(tok, doc, doc_len, false, &ids, &n) != 0) return 1;
    double *cold = malloc((n + 1) * sizeof *cold), *warm = malloc(((n + 1) * (size_t)passes + 1) * sizeof *warm);
    if (!cold || !warm) return 1;
    if (walk(tok, v, c, ids, n, check, cold, 0) < 0) return 1;
    size_t positions, classified;
    double classify_ms;
    grammar_compiled_stats(c, &positions, &classified, &classify_ms);
    size_t nw = 0;
    for (int p = 1; p < passes; p++) {
        if (walk(tok, v, c, ids, n, check, warm + nw, p) < 0) return 1;
        nw += n + 1;
    }
    struct timing tc = summarize(cold, n + 1), tw = summarize(warm, nw);
    printf("{\"tokenizer\": \"%s\", \"vocab\": %d, \"kind\": \"%s\", \"doc_tokens\": %zu, \"tokenizer_load_ms\": %.1f, "
           "\"vocab_build_ms\": %.1f, \"compile_ms\": %.2f, \"positions\": %zu, \"classified\": %zu, "
           "\"classify_ms\": %.1f, \"precompute_ms\": %.1f, \"cold_us\": {\"mean\": %.1f, \"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}, "
           "\"warm_us\": {\"mean\": %.1f, \"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}, \"checked\": %s}\n",
           argv[2], grammar_vocab_size(v), argv[3], n, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, positions,
           classified, classify_ms, precompute ? precompute_ms : 0.0, tc.mean, tc.p50, tc.p99, tc.max, tw.mean, tw.p50, tw.p99, tw.max,
           check ? "true" : "false");
    free(cold);
    free(warm);
    free(ids);
    grammar_compiled_unref(c);
    grammar_vocab_free(v);
    tok_free(tok);
    free(src);
    free(doc);
    return 0;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmd_sample(int argc, char **argv)
{
    if (argc < 7) return 2;
    enum grammar_kind kind;
    if (parse_kind(argv[3], &kind) < 0) return 2;
    int count = atoi(argv[5]);
    uint64_t seed = strtoull(argv[6], NULL, 10);
    int max_tokens = argc > 7 ? atoi(argv[7]) : 2000;
    size_t src_len = 0;
    char *src = kind == GRAMMAR_JSON_OBJECT ? strdup("") : read_file(argv[4], &src_len);
    char err[512];
    struct tokenizer *tok = NULL;
    struct grammar_vocab *v = NULL;
    struct grammar_cache *cache = NULL;
    if (!src || tok_load(&tok, argv[2], err, sizeof err) != 0 ||
        grammar_vocab_from_tokenizer(&v, tok, NULL, 0, err, sizeof err) < 0 || grammar_cache_new(&cache, v, 8) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * sizeof *mask);
    int32_t *allowed = malloc((size_t)grammar_vocab_size(v) * sizeof *allowed);
    int32_t *out = malloc((size_t)(max_tokens + 1) * sizeof *out);
    if (!mask || !allowed || !out) return 1;
    for (int k = 0; k < count; k++) {
        struct grammar_compiled *c = NULL;
        struct grammar_matcher *m = NULL;
        if (grammar_cache_get(cache, kind, src, src_len, &c, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        if (grammar_matcher_new(&m, c) < 0) return 1;
        int n = 0;
        bool finished = false;
        while (n < max_tokens) {
            if (grammar_matcher_fill_mask(m, mask, words) < 0) return 1;
            size_t na = 0;
            int32_t stop = -1;
            for (int32_t t = 0; t < grammar_vocab_size(v); t++) {
                if (!bit(mask, t)) continue;
                if (grammar_vocab_is_stop(v, t)) stop = t;
                else allowed[na++] = t;
            }
            if (na == 0 && stop < 0) {
                fprintf(stderr, "sample %d: no token allowed after %d tokens\n", k, n);
                return 1;
            }
            int32_t id = stop >= 0 && (na == 0 || rng_next(&seed) % 2 == 0) ? stop : allowed[rng_next(&seed) % na];
            if (grammar_matcher_accept_token(m, id) < 0) {
                fprintf(stderr, "sample %d: an allowed token was refused\n", k);
                return 1;
            }
            if (id == stop) {
                finished = true;
                break;
            }
            out[n++] = id;
        }
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(tok, out, (size_t)n, true, &text, &len) != 0) return 1;
        json_t *line = json_pack("{s:b, s:s%, s:i}", "finished", finished, "text", text, len, "tokens", n);
        char *s = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (!s) {
            fprintf(stderr, "sample %d: the output is not valid UTF-8\n", k);
            return 1;
        }
        printf("%s\n", s);
        free(s);
        json_decref(line);
        free(text);
        grammar_matcher_free(m);
        grammar_compiled_unref(c);
    }
    free(mask);
    free(allowed);
    free(out);
    grammar_cache_free(cache);
    grammar_vocab_free(v);
    tok_free(tok);
    free(src);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc > 1 && strcmp(argv[1], "walk") == 0) rc = cmd_walk(argc, argv);
    else if (argc > 1 && strcmp(argv[1], "sample") == 0) rc = cmd_sample(argc, argv);
    if (rc == 2)
        fprintf(stderr,
                "usage: %s walk TOKENIZER KIND SOURCE_FILE DOC_FILE [--check] [--passes N] [--precompute]\n"
                "       %s sample TOKENIZER KIND SOURCE_FILE N SEED [MAX_TOKENS]\n",
                argv[0], argv[0]);
    return rc;
}
