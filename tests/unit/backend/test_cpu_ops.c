/* The CPU backend's pieces: the thread pool, matmul against a double-precision reference,
 * rope frequencies with llama3 and linear scaling, and whole Qwen2/Qwen3 forward passes on
 * dummy weights (biases, q/k norms) that must not depend on threads or chunking. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/backend/cpu/cpu_pool.h"
#include "worker/model/model.h"
#include "worker/model/rope.h"

static atomic_int hits[10000];

static void count_items(void *arg, int64_t begin, int64_t end, int tid)
{
    int n = *(int *)arg;
    cr_assert(tid >= 0 && tid < n);
    for (int64_t i = begin; i < end; i++) atomic_fetch_add(&hits[i], 1);
}

Test(cpu_pool, every_item_exactly_once)
{
    struct cpu_pool *p;
    int n = 4;
    cr_assert_eq(cpu_pool_init(&p, n), 0);
    cr_expect_eq(cpu_pool_size(p), 4);
    for (int round = 0; round < 200; round++) {
        int64_t items = 1 + (round * 97) % 10000;
        for (int64_t i = 0; i < items; i++) atomic_store(&hits[i], 0);
        cpu_pool_run(p, items, 1 + round % 7, count_items, &n);
        for (int64_t i = 0; i < items; i++) cr_assert_eq(atomic_load(&hits[i]), 1, "round %d item %lld", round, (long long)i);
    }
    cpu_pool_free(p);
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

Test(cpu_ops, matmul_matches_reference_and_is_batch_invariant)
{
    struct cpu_pool *p;
    cr_assert_eq(cpu_pool_init(&p, 3), 0);
    unsigned s = 1;
    const int rows = 9, in = 1037, outn = 301;
    float *x = malloc(sizeof(float) * rows * in), *w = malloc(sizeof(float) * outn * in);
    float *b = malloc(sizeof(float) * outn), *y = malloc(sizeof(float) * rows * outn), *y1 = malloc(sizeof(float) * outn);
    for (int i = 0; i < rows * in; i++) x[i] = frand(&s);
    for (int i = 0; i < outn * in; i++) w[i] = frand(&s);
    for (int i = 0; i < outn; i++) b[i] = frand(&s);
    cpu_matmul(p, x, rows, in, w, b, outn, y);
    for (int r = 0; r < rows; r++) {
        for (int o = 0; o < outn; o++) {
            double ref = b[o];
            for (int i = 0; i < in; i++) ref += (double)x[r * in + i] * w[o * in + i];
            cr_assert(fabs(ref - y[r * outn + o]) < 1e-3, "row %d out %d: %g vs %g", r, o, ref, (double)y[r * outn + o]);
        }
        cpu_matmul(p, x + r * in, 1, in, w, b, outn, y1);
        cr_assert(!memcmp(y1, y + r * outn, sizeof(float) * outn), "row %d alone differs from in a batch", r);
    }
    free(x), free(w), free(b), free(y), free(y1);
    cpu_pool_free(p);
}

Test(cpu_ops, rope_frequencies)
{
    struct model_config c = {.head_dim = 128, .rope_theta = 500000.0f};
    float plain[64], scaled[64];
    rope_static_freqs(&c, plain);
    for (int i = 0; i < 64; i++)
        cr_expect(fabs(plain[i] - pow(500000.0, -2.0 * i / 128)) < 1e-6 * pow(500000.0, -2.0 * i / 128) + 1e-12, "%d", i);
    c.rope_scaling.type = ROPE_SCALING_LINEAR;
    c.rope_scaling.factor = 4.0f;
    rope_static_freqs(&c, scaled);
    for (int i = 0; i < 64; i++) cr_expect_float_eq(scaled[i], plain[i] / 4.0f, 1e-6f * plain[i]);
    c.rope_scaling = (typeof(c.rope_scaling)){.type = ROPE_SCALING_LLAMA3, .factor = 8.0f, .low_freq_factor = 1.0f,
                                              .high_freq_factor = 4.0f, .original_max_position = 8192};
    rope_static_freqs(&c, scaled);
    int kept = 0, slowed = 0, blended = 0;
    for (int i = 0; i < 64; i++) {
        double f = plain[i], wavelen = 2 * M_PI / f, want;
        if (wavelen < 8192.0 / 4) want = f, kept++;
        else if (wavelen > 8192.0 / 1) want = f / 8, slowed++;
        else {
            double smooth = (8192.0 / wavelen - 1) / (4 - 1);
            want = (1 - smooth) * f / 8 + smooth * f;
            blended++;
        }
        cr_expect(fabs(scaled[i] - want) <= 1e-5 * want, "%d: %g vs %g", i, (double)scaled[i], want);
    }
    cr_expect(kept > 0 && slowed > 0 && blended > 0, "%d kept, %d slowed, %d blended", kept, slowed, blended);
}

Test(cpu_ops, rope_rotates_halves)
{
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8}, cs[4] = {1, 1, 1, 1}, sn[4] = {0, 0, 0, 0};
    cpu_rope_apply(v, 8, cs, sn);
    for (int i = 0; i < 8; i++) cr_expect_eq(v[i], (float)(i + 1), "angle 0 is the identity");
    float c2[4] = {0, 0, 0, 0}, s2[4] = {1, 1, 1, 1};
    cpu_rope_apply(v, 8, c2, s2);
    /* A quarter turn: (x_i, x_{i+4}) -> (-x_{i+4}, x_i). */
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(v[i], -(float)(i + 5));
        cr_expect_eq(v[i + 4], (float)(i + 1));
    }
}

/* --- whole forward passes on dummy weights ------------------------------------------- */

static struct model *dummy_model(const char *json)
{
    char dir[] = "/tmp/sluice-dummy-XXXXXX";
    cr_assert(mkdtemp(dir));
    char p[64];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs(json, f);
    fclose(f);
    struct model *m = NULL;
    char err[512] = "";
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    unlink(p);
    rmdir(dir);
    return m;
}

#define DV 300
#define DN 37

/* Logits after each of the DN prompt tokens fed in chunks of chunk, on blocks 5, 3, 1. */
static void run_prompt(const struct model *m, int threads, int chunk, float *logits)
{
    struct backend_options opt = {.kv_blocks = 6, .max_batch_tokens = 64, .max_batch_seqs = 4, .cpu.n_threads = threads};
    struct backend *b;
    char err[512];
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    int32_t table[3] = {5, 3, 1}, tokens[DN];
    for (int i = 0; i < DN; i++) tokens[i] = (i * 37 + 11) % DV;
    struct sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    for (int pos = 0; pos < DN;) {
        int n = DN - pos < chunk ? DN - pos : chunk;
        struct batch_seq s = {.n_new = n, .start_pos = pos, .block_table = table, .n_blocks = 3, .sample = true,
                              .sampling = &sp, .history = tokens, .n_history = pos + n};
        struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = n, .tokens = tokens + pos,
                              .logits_out = logits + (size_t)(pos + n - 1) * DV};
        struct sample_result r;
        cr_assert_eq(backend_forward(b, &batch, &r), 0, "%s", b->error);
        pos += n;
    }
    backend_free(b);
}

static void check_dummy(const char *json)
{
    struct model *m = dummy_model(json);
    float *a = calloc(DN * DV, sizeof(float)), *b = calloc(DN * DV, sizeof(float)), *c = calloc(DN * DV, sizeof(float));
    run_prompt(m, 1, 1, a);
    run_prompt(m, 3, 1, b);
    cr_expect(!memcmp(a, b, DN * DV * sizeof(float)), "1 thread and 3 threads differ");
    run_prompt(m, 2, 7, c);
    for (int i = 0; i < DN; i++) {
        if (i % 7 != 6 && i != DN - 1) continue; /* rows the chunked run sampled */
        cr_expect(!memcmp(a + i * DV, c + i * DV, DV * sizeof(float)), "position %d: chunks of 7 differ from 1", i);
    }
    double spread = 0;
    for (int i = 0; i < DN * DV; i++) {
        cr_assert(isfinite(a[i]));
        spread += fabs(a[i] - a[i % DV]);
    }
    cr_expect(spread > 0, "logits do not depend on the tokens");
    free(a), free(b), free(c);
    model_free(m);
}

Test(cpu_dummy, qwen3_qk_norm_forward_is_consistent, .timeout = 30)
{
    check_dummy("{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":96,"
                "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":32,"
                "\"vocab_size\":300,\"tie_word_embeddings\":true,\"rope_theta\":1000000}");
}

Test(cpu_dummy, qwen2_bias_forward_is_consistent, .timeout = 30)
{
    check_dummy("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":96,"
                "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"num_key_value_heads\":2,"
                "\"vocab_size\":300,\"tie_word_embeddings\":false,"
                "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
                "\"high_freq_factor\":4,\"original_max_position_embeddings\":16}}");
}
