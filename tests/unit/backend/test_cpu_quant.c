/* GGUF block weights on the CPU backend: the AVX2 dequantizers equal the reference bit for bit;
 * a matmul over quantized rows (several parts, a row map) equals the matmul over the same
 * rows dequantized to float32 bit for bit, row alone or in a batch; and a whole forward pass of
 * a model whose matrices are every quantized type, its q and k in the interleaved rope layout,
 * gives the logits of the same model dequantized at load (backend_options.cpu.f32_weights),
 * bit for bit, in chunks or not, on 1 or 3 threads. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_dequant.h"
#include "worker/backend/cpu/cpu_ops.h"
#include "worker/model/model.h"

/* Every quantized type and the byte offsets of its f16 scales in a block. */
static const struct {
    enum dtype dt;
    int scale_at[2];
    int n_scales;
} types[] = {
    {DTYPE_Q4_0, {0}, 1},  {DTYPE_Q4_1, {0, 2}, 2},   {DTYPE_Q5_0, {0}, 1},   {DTYPE_Q5_1, {0, 2}, 2},
    {DTYPE_Q8_0, {0}, 1},  {DTYPE_Q2_K, {80, 82}, 2}, {DTYPE_Q3_K, {108}, 1}, {DTYPE_Q4_K, {0, 2}, 2},
    {DTYPE_Q5_K, {0, 2}, 2}, {DTYPE_Q6_K, {208}, 1},  {DTYPE_IQ4_NL, {0}, 1}, {DTYPE_IQ4_XS, {0}, 1},
};
#define N_TYPES (sizeof types / sizeof *types)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* n random weights' worth of blocks of type t, scales small f16 values of either sign (the
 * float16 bit patterns 0x1000..0x27ff: about 3e-5 to 0.03) so that activations stay sane. */
static void *random_blocks(size_t t, int64_t n)
{
    enum dtype dt = types[t].dt;
    size_t bb = dtype_block_bytes(dt), nb = (size_t)(n / dtype_block_elems(dt));
    unsigned char *p = malloc(nb * bb);
    cr_assert(p);
    for (size_t i = 0; i < nb * bb; i++) p[i] = (unsigned char)next_u32();
    for (size_t b = 0; b < nb; b++)
        for (int s = 0; s < types[t].n_scales; s++) {
            uint16_t h = (uint16_t)(0x1000 + next_u32() % 0x1800) | (uint16_t)((next_u32() & 1) << 15);
            memcpy(p + b * bb + types[t].scale_at[s], &h, 2);
        }
    return p;
}

static float frand(void)
{
    return (float)(next_u32() % 20001) / 10000.0f - 1.0f;
}

Test(cpu_quant, vector_dequantizers_equal_the_reference)
{
    if (!cpu_dequant_vectorized()) cr_skip_test("this processor has no AVX2: only the reference runs");
    for (size_t t = 0; t < N_TYPES; t++) {
        enum dtype dt = types[t].dt;
        cpu_dequant_fn *vec = cpu_dequant_vector_for(dt);
        cr_assert(vec, "%s has no AVX2 dequantizer", dtype_name(dt));
        cr_assert_eq(cpu_dequant_for(dt), vec);
        /* Random bytes with wide-ranging scales: every quant bit pattern, extreme scales too. */
        int64_t n = 64 * 256;
        unsigned char *blocks = random_blocks(t, n);
        size_t bb = dtype_block_bytes(dt);
        for (size_t b = 0; b < (size_t)(n / dtype_block_elems(dt)); b++)
            for (int s = 0; s < types[t].n_scales; s++) {
                uint16_t h = (uint16_t)(next_u32() & 0xffff);
                if ((h & 0x7c00) == 0x7c00) h &= 0xbfff; /* no infinities or NaNs */
                if (b % 3 == 0) memcpy(blocks + b * bb + types[t].scale_at[s], &h, 2);
            }
        float *want = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
        model_dequant(dt, blocks, want, n);
        vec(blocks, got, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert(!memcmp(got + i, want + i, 4), "%s weight %lld: %a, the reference has %a", dtype_name(dt),
                      (long long)i, (double)got[i], (double)want[i]);
        free(blocks), free(want), free(got);
    }
}

/* A weight of three parts (types a, b as given, then float32), the first read through a map that
 * reverses its rows, against the same rows dequantized into one float32 matrix. */
Test(cpu_quant, matmul_over_blocks_equals_float32_bit_for_bit)
{
    struct cpu_pool *pool;
    cr_assert_eq(cpu_pool_init(&pool, 3), 0);
    const int64_t n_in = 512, rows[3] = {21, 13, 7}, n_out = 41, T = 9;
    float *x = malloc(sizeof(float) * T * n_in), *bias = malloc(sizeof(float) * n_out);
    for (int64_t i = 0; i < T * n_in; i++) x[i] = frand();
    for (int64_t i = 0; i < n_out; i++) bias[i] = frand();
    int32_t map[21];
    for (int i = 0; i < 21; i++) map[i] = 20 - i;
    for (size_t t = 0; t < N_TYPES; t++) {
        size_t t2 = (t + 5) % N_TYPES;
        void *a = random_blocks(t, rows[0] * n_in), *b = random_blocks(t2, rows[1] * n_in);
        float *c = malloc(sizeof(float) * rows[2] * n_in);
        for (int64_t i = 0; i < rows[2] * n_in; i++) c[i] = frand();
        struct cpu_weight w;
        cpu_weight_init(&w, n_in);
        cr_assert_eq(cpu_weight_add(&w, types[t].dt, a, rows[0], map, NULL), 0);
        cr_assert_eq(cpu_weight_add(&w, types[t2].dt, b, rows[1], NULL, NULL), 0);
        cr_assert_eq(cpu_weight_add(&w, DTYPE_F32, c, rows[2], NULL, NULL), 0);
        cr_assert_eq(w.n_out, n_out);
        cr_assert_lt(cpu_weight_add(&w, DTYPE_F32, c, 1, NULL, NULL), 0, "a fourth part is refused");
        size_t q;
        cr_expect_eq(cpu_weight_bytes(&w, &q), q + sizeof(float) * rows[2] * n_in);

        /* The reference: every row dequantized by worker/model/quant.c, in output order. */
        float *f = malloc(sizeof(float) * n_out * n_in), *tmp = malloc(sizeof(float) * rows[0] * n_in);
        model_dequant(types[t].dt, a, tmp, rows[0] * n_in);
        for (int r = 0; r < rows[0]; r++) memcpy(f + r * n_in, tmp + map[r] * n_in, sizeof(float) * n_in);
        model_dequant(types[t2].dt, b, f + rows[0] * n_in, rows[1] * n_in);
        memcpy(f + (rows[0] + rows[1]) * n_in, c, sizeof(float) * rows[2] * n_in);

        float *y = malloc(sizeof(float) * T * n_out), *yf = malloc(sizeof(float) * T * n_out);
        float *y1 = malloc(sizeof(float) * n_out), *row = malloc(sizeof(float) * n_in);
        cpu_matmul_w(pool, x, T, &w, bias, y);
        cpu_matmul(pool, x, T, n_in, f, bias, n_out, yf);
        cr_assert(!memcmp(y, yf, sizeof(float) * T * n_out), "%s + %s: blocks and float32 differ",
                  dtype_name(types[t].dt), dtype_name(types[t2].dt));
        for (int r = 0; r < T; r++) {
            cpu_matmul_w(pool, x + r * n_in, 1, &w, bias, y1);
            cr_assert(!memcmp(y1, y + r * n_out, sizeof(float) * n_out), "%s: row %d alone differs from in a batch",
                      dtype_name(types[t].dt), r);
        }
        for (int64_t o = 0; o < n_out; o++) {
            cpu_weight_row(&w, o, row);
            cr_assert(!memcmp(row, f + o * n_in, sizeof(float) * n_in), "%s: row %lld", dtype_name(types[t].dt),
                      (long long)o);
        }
        /* The dot products themselves, against double precision. */
        for (int64_t o = 0; o < n_out; o++) {
            double ref = bias[o];
            for (int64_t i = 0; i < n_in; i++) ref += (double)x[i] * f[o * n_in + i];
            cr_assert(fabs(ref - y[o]) <= 1e-4 * (1 + fabs(ref)), "%s out %lld: %g vs %g", dtype_name(types[t].dt),
                      (long long)o, ref, (double)y[o]);
        }
        free(a), free(b), free(c), free(f), free(tmp), free(y), free(yf), free(y1), free(row);
    }
    free(x), free(bias);
    cpu_pool_free(pool);
}

Test(cpu_quant, weight_refuses_what_the_matmul_cannot_read)
{
    struct cpu_weight w;
    cpu_weight_init(&w, 100);
    void *owned = malloc(64);
    cr_expect_lt(cpu_weight_add(&w, DTYPE_Q4_0, NULL, 1, NULL, owned), 0, "rows of 100 are not whole blocks");
    cr_expect_lt(cpu_weight_add(&w, DTYPE_F16, NULL, 1, NULL, NULL), 0, "F16 is converted before");
    cpu_weight_init(&w, CPU_MATMUL_MAX_QROW + 256);
    cr_expect_lt(cpu_weight_add(&w, DTYPE_Q4_K, NULL, 1, NULL, NULL), 0, "longer than the row buffer");
    cr_expect_eq(w.n_parts, 0);
}

/* --- a whole model ------------------------------------------------------------------- */

#define V 300
#define N_PROMPT 29

static struct model *quantized_model(void **owned, int *n_owned)
{
    char dir[] = "/tmp/sluice-qmodel-XXXXXX", p[64];
    cr_assert(mkdtemp(dir));
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":512,"
          "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":300,"
          "\"tie_word_embeddings\":false,\"rms_norm_eps\":1e-5}",
          f);
    fclose(f);
    struct model *m = NULL;
    char err[512] = "";
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    unlink(p);
    rmdir(dir);
    /* As a GGUF file has them: q and k rows in Meta's interleaved layout. */
    m->config.rope_interleaved = true;
    struct tensor *mats[2 + 7 * 2];
    int k = 0;
    mats[k++] = &m->tok_embed;
    mats[k++] = &m->lm_head;
    for (int l = 0; l < 2; l++) {
        struct layer_weights *L = &m->layers[l];
        mats[k++] = &L->wq, mats[k++] = &L->wk, mats[k++] = &L->wv, mats[k++] = &L->wo;
        mats[k++] = &L->w_gate, mats[k++] = &L->w_up, mats[k++] = &L->w_down;
    }
    *n_owned = 0;
    for (int i = 0; i < k; i++) {
        /* Layer 1's v stays float32 dummy weights: a fused q/k/v of blocks and float32. */
        if (mats[i] == &m->layers[1].wv) continue;
        size_t t = (size_t)(i * 5) % N_TYPES;
        mats[i]->dtype = types[t].dt;
        mats[i]->data = owned[(*n_owned)++] = random_blocks(t, tensor_numel(mats[i]));
    }
    return m;
}

/* Logits after each prompt token, fed in chunks of chunk. */
static void run_prompt(const struct model *m, bool f32_weights, int threads, int chunk, float *logits)
{
    struct backend_options opt = {.kv_blocks = 4, .max_batch_tokens = 64, .max_batch_seqs = 2, .cpu.n_threads = threads,
                                  .cpu.f32_weights = f32_weights};
    struct backend *b;
    char err[512];
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    int32_t table[2] = {3, 1}, tokens[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) tokens[i] = (i * 37 + 11) % V;
    struct sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    for (int pos = 0; pos < N_PROMPT;) {
        int n = N_PROMPT - pos < chunk ? N_PROMPT - pos : chunk;
        struct batch_seq s = {.n_new = n, .start_pos = pos, .block_table = table, .n_blocks = 2, .sample = true,
                              .sampling = &sp, .history = tokens, .n_history = pos + n};
        struct batch batch = {.n_seqs = 1, .seqs = &s, .n_tokens = n, .tokens = tokens + pos,
                              .logits_out = logits + (size_t)(pos + n - 1) * V};
        struct sample_result r;
        cr_assert_eq(backend_forward(b, &batch, &r), 0, "%s", b->error);
        pos += n;
    }
    backend_free(b);
}

Test(cpu_quant, forward_over_blocks_equals_weights_dequantized_at_load, .timeout = 60)
{
    void *owned[16];
    int n_owned;
    struct model *m = quantized_model(owned, &n_owned);
    size_t sz = (size_t)N_PROMPT * V * sizeof(float);
    float *blocks = calloc(1, sz), *f32 = calloc(1, sz), *chunked = calloc(1, sz), *threads3 = calloc(1, sz);
    run_prompt(m, false, 1, 1, blocks);
    run_prompt(m, true, 1, 1, f32);
    run_prompt(m, false, 2, 5, chunked);
    run_prompt(m, false, 3, 1, threads3);
    cr_expect(!memcmp(blocks, f32, sz), "logits over GGUF blocks differ from the float32 weights'");
    cr_expect(!memcmp(blocks, threads3, sz), "1 thread and 3 threads differ");
    for (int i = 4; i < N_PROMPT; i += 5)
        cr_expect(!memcmp(blocks + i * V, chunked + i * V, V * sizeof(float)), "position %d: chunks of 5 differ", i);
    double spread = 0;
    for (int i = 0; i < N_PROMPT * V; i++) {
        cr_assert(isfinite(blocks[i]));
        spread += fabs(blocks[i] - blocks[i % V]);
    }
    cr_expect(spread > 0, "logits do not depend on the tokens");
    free(blocks), free(f32), free(chunked), free(threads3);
    model_free(m);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
}
