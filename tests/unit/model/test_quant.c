/* Block dequantization on hand-made blocks and, for every type, bit for bit against the gguf
 * Python package's reference (tests/fixtures/quant/); half/bfloat conversion; and a small GGUF
 * file written here with quantized, F16 and BF16 tensors, loaded end to end and kept in its
 * block format. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/gguf/gguf.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

Test(quant, half_and_bfloat)
{
    cr_expect_eq(model_f16_to_f32(0x3c00), 1.0f);
    cr_expect_eq(model_f16_to_f32(0xc000), -2.0f);
    cr_expect_eq(model_f16_to_f32(0x3800), 0.5f);
    cr_expect_eq(model_f16_to_f32(0x7bff), 65504.0f);
    cr_expect_eq(model_f16_to_f32(0x0001), 1.0f / 16777216.0f, "smallest subnormal");
    cr_expect_eq(model_f16_to_f32(0x03ff), 1023.0f / 16777216.0f, "largest subnormal");
    cr_expect_eq(model_f16_to_f32(0x8000), -0.0f);
    cr_expect(model_f16_to_f32(0x7c00) > 3e38f, "infinity");
    cr_expect(model_f16_to_f32(0x7e00) != model_f16_to_f32(0x7e00), "NaN");
    cr_expect_eq(model_bf16_to_f32(0x3f80), 1.0f);
    cr_expect_eq(model_bf16_to_f32(0xc040), -3.0f);
}

Test(quant, q8_0_block)
{
    unsigned char b[2 * 34];
    uint16_t d0 = 0x3800, d1 = 0xc000; /* 0.5 and -2 */
    memcpy(b, &d0, 2);
    memcpy(b + 34, &d1, 2);
    for (int i = 0; i < 32; i++) {
        b[2 + i] = (unsigned char)(int8_t)(i * 8 - 128);
        b[36 + i] = (unsigned char)(int8_t)(i - 16);
    }
    float out[64];
    model_dequant(DTYPE_Q8_0, b, out, 64);
    for (int i = 0; i < 32; i++) {
        cr_expect_eq(out[i], (float)(i * 8 - 128) * 0.5f, "element %d", i);
        cr_expect_eq(out[32 + i], (float)(i - 16) * -2.0f, "element %d", 32 + i);
    }
}

Test(quant, q4_0_block)
{
    unsigned char b[18];
    uint16_t d = 0x4000; /* 2 */
    memcpy(b, &d, 2);
    /* Low nibble i, high nibble 15 - i. */
    for (int i = 0; i < 16; i++) b[2 + i] = (unsigned char)(i | ((15 - i) << 4));
    float out[32];
    model_dequant(DTYPE_Q4_0, b, out, 32);
    for (int i = 0; i < 16; i++) {
        cr_expect_eq(out[i], (float)(i - 8) * 2.0f, "element %d", i);
        cr_expect_eq(out[16 + i], (float)(15 - i - 8) * 2.0f, "element %d", 16 + i);
    }
}

Test(quant, q4_1_block)
{
    unsigned char b[20];
    uint16_t d = 0x3400, m = 0xbc00; /* 0.25 and -1 */
    memcpy(b, &d, 2);
    memcpy(b + 2, &m, 2);
    for (int i = 0; i < 16; i++) b[4 + i] = (unsigned char)((15 - i) | (i << 4));
    float out[32];
    model_dequant(DTYPE_Q4_1, b, out, 32);
    for (int i = 0; i < 16; i++) {
        cr_expect_eq(out[i], (float)(15 - i) * 0.25f - 1.0f, "element %d", i);
        cr_expect_eq(out[16 + i], (float)i * 0.25f - 1.0f, "element %d", 16 + i);
    }
}

/* Every type against tests/fixtures/quant/<TYPE>.bin: blocks, then the gguf package's float32
 * values for them (tests/fixtures/quant/README.md says how they were made). Compared as bits:
 * -0.0 and 0.0 differ, as they would in the reference. */
static const struct {
    enum dtype dtype;
    uint32_t ggml;
} all_types[] = {
    {DTYPE_Q4_0, GGML_TYPE_Q4_0}, {DTYPE_Q4_1, GGML_TYPE_Q4_1}, {DTYPE_Q5_0, GGML_TYPE_Q5_0},
    {DTYPE_Q5_1, GGML_TYPE_Q5_1}, {DTYPE_Q8_0, GGML_TYPE_Q8_0}, {DTYPE_Q2_K, GGML_TYPE_Q2_K},
    {DTYPE_Q3_K, GGML_TYPE_Q3_K}, {DTYPE_Q4_K, GGML_TYPE_Q4_K}, {DTYPE_Q5_K, GGML_TYPE_Q5_K},
    {DTYPE_Q6_K, GGML_TYPE_Q6_K}, {DTYPE_IQ4_NL, GGML_TYPE_IQ4_NL}, {DTYPE_IQ4_XS, GGML_TYPE_IQ4_XS},
};
#define N_TYPES (sizeof all_types / sizeof *all_types)

static unsigned char *read_fixture(const char *name, size_t *len)
{
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/quant/%s.bin", name);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*len);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

Test(quant, every_type_matches_the_gguf_reference_bit_for_bit)
{
    for (size_t t = 0; t < N_TYPES; t++) {
        enum dtype dt = all_types[t].dtype;
        enum dtype from_ggml;
        cr_assert_eq(dtype_from_ggml(all_types[t].ggml, &from_ggml), 0, "%s", dtype_name(dt));
        cr_assert_eq(from_ggml, dt);
        cr_assert(dtype_is_quantized(dt));
        size_t len, bb = dtype_block_bytes(dt);
        int64_t be = dtype_block_elems(dt);
        unsigned char *buf = read_fixture(dtype_name(dt), &len);
        size_t per_block = bb + (size_t)be * 4;
        cr_assert_eq(len % per_block, 0, "%s: %zu bytes is not a whole number of blocks and values", dtype_name(dt), len);
        int64_t n_blocks = (int64_t)(len / per_block), n = n_blocks * be;
        cr_assert_gt(n_blocks, 8);
        float *got = malloc((size_t)n * sizeof(float));
        model_dequant(dt, buf, got, n);
        const unsigned char *want = buf + (size_t)n_blocks * bb;
        for (int64_t i = 0; i < n; i++) {
            uint32_t g, w;
            memcpy(&g, got + i, 4);
            memcpy(&w, want + i * 4, 4);
            float wf;
            memcpy(&wf, &w, 4);
            cr_assert_eq(g, w, "%s block %lld element %lld: %a, the reference has %a", dtype_name(dt),
                         (long long)(i / be), (long long)(i % be), (double)got[i], (double)wf);
        }
        /* One element at a time through a tensor, as the tests and tools read weights. */
        struct tensor ten = {.dtype = dt, .ndim = 2, .shape = {n_blocks, be}, .data = buf};
        cr_assert_eq(tensor_row_bytes(&ten), bb);
        for (int64_t i = 0; i < n; i += 37) cr_assert_eq(tensor_get_f32(&ten, 0, false, (uint64_t)i), got[i]);
        free(got);
        free(buf);
    }
    cr_expect(!dtype_is_quantized(DTYPE_F32) && !dtype_is_quantized(DTYPE_BF16));
    enum dtype none;
    cr_expect_eq(dtype_from_ggml(15 /* Q8_K: no model file holds it */, &none), -1);
}

/* --- a small GGUF file, written here ----------------------------------------------------- */

struct writer {
    unsigned char *buf;
    size_t len, cap;
};

static void put(struct writer *w, const void *p, size_t n)
{
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2;
        w->buf = realloc(w->buf, w->cap);
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}
static void put_u32(struct writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(struct writer *w, uint64_t v) { put(w, &v, 8); }
static void put_str(struct writer *w, const char *s)
{
    put_u64(w, strlen(s));
    put(w, s, strlen(s));
}
static void kv_u32(struct writer *w, const char *k, uint32_t v)
{
    put_str(w, k);
    put_u32(w, GGUF_TYPE_UINT32);
    put_u32(w, v);
}
static void kv_f32(struct writer *w, const char *k, float v)
{
    put_str(w, k);
    put_u32(w, GGUF_TYPE_FLOAT32);
    put(w, &v, 4);
}

struct tspec {
    const char *name;
    uint64_t d0, d1; /* ggml dims; d1 = 0 for vectors */
    uint32_t type;
};

static size_t tbytes(const struct tspec *t)
{
    uint64_t n = t->d0 * (t->d1 ? t->d1 : 1);
    enum dtype dt;
    cr_assert_eq(dtype_from_ggml(t->type, &dt), 0);
    return n / (uint64_t)dtype_block_elems(dt) * dtype_block_bytes(dt);
}

/* Byte offsets of a block type's f16 scales (and minimums). */
static int scale_offsets(uint32_t type, int at[2])
{
    switch (type) {
    case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_1: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: at[0] = 0, at[1] = 2; return 2;
    case GGML_TYPE_Q2_K: at[0] = 80, at[1] = 82; return 2;
    case GGML_TYPE_Q3_K: at[0] = 108; return 1;
    case GGML_TYPE_Q6_K: at[0] = 208; return 1;
    default: at[0] = 0; return 1;
    }
}

/* Plausible bytes for a tensor: finite scales in the quantized blocks. */
static void fill(const struct tspec *t, unsigned char *p, unsigned seed)
{
    size_t n = tbytes(t);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 131 + seed * 7919 + (i >> 5)) % 251);
    enum dtype dt;
    cr_assert_eq(dtype_from_ggml(t->type, &dt), 0);
    size_t bb = dtype_is_quantized(dt) ? dtype_block_bytes(dt) : 0;
    uint16_t scale = 0x2000 + (uint16_t)seed, minv = 0xa000;
    int at[2], n_at = scale_offsets(t->type, at);
    for (size_t b = 0; bb && b < n; b += bb) {
        memcpy(p + b + at[0], &scale, 2);
        if (n_at == 2) memcpy(p + b + at[1], &minv, 2);
    }
    if (t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16)
        for (size_t i = 0; i < n; i += 2) {
            uint16_t h = t->type == GGML_TYPE_F16 ? (uint16_t)(0x2000 + (i * 37 % 0x1000)) : (uint16_t)(0x3c00 + (i * 37 % 0x100));
            memcpy(p + i, &h, 2);
        }
    if (t->type == GGML_TYPE_F32)
        for (size_t i = 0; i < n; i += 4) {
            float f = 1.0f + 0.01f * (float)(i % 17);
            memcpy(p + i, &f, 4);
        }
}

static const struct tspec tiny[] = {
    {"token_embd.weight", 32, 40, GGML_TYPE_Q8_0},
    {"output_norm.weight", 32, 0, GGML_TYPE_F32},
    {"output.weight", 32, 40, GGML_TYPE_Q4_1},
    {"blk.0.attn_norm.weight", 32, 0, GGML_TYPE_F32},
    {"blk.0.attn_q.weight", 32, 32, GGML_TYPE_Q4_0},
    {"blk.0.attn_k.weight", 32, 16, GGML_TYPE_Q8_0},
    {"blk.0.attn_v.weight", 32, 16, GGML_TYPE_F16},
    {"blk.0.attn_output.weight", 32, 32, GGML_TYPE_BF16},
    {"blk.0.ffn_norm.weight", 32, 0, GGML_TYPE_F32},
    {"blk.0.ffn_gate.weight", 32, 64, GGML_TYPE_Q4_0},
    {"blk.0.ffn_up.weight", 32, 64, GGML_TYPE_Q4_1},
    {"blk.0.ffn_down.weight", 64, 32, GGML_TYPE_Q8_0},
};
#define N_TINY (sizeof tiny / sizeof *tiny)

/* The same model at widths K-quants need (rows of 256): every K-quant and IQ type. */
static const struct tspec tiny_k[] = {
    {"token_embd.weight", 256, 40, GGML_TYPE_Q6_K},
    {"output_norm.weight", 256, 0, GGML_TYPE_F32},
    {"output.weight", 256, 40, GGML_TYPE_Q2_K},
    {"blk.0.attn_norm.weight", 256, 0, GGML_TYPE_F32},
    {"blk.0.attn_q.weight", 256, 256, GGML_TYPE_Q4_K},
    {"blk.0.attn_k.weight", 256, 128, GGML_TYPE_Q5_K},
    {"blk.0.attn_v.weight", 256, 128, GGML_TYPE_Q3_K},
    {"blk.0.attn_output.weight", 256, 256, GGML_TYPE_IQ4_XS},
    {"blk.0.ffn_norm.weight", 256, 0, GGML_TYPE_F32},
    {"blk.0.ffn_gate.weight", 256, 512, GGML_TYPE_IQ4_NL},
    {"blk.0.ffn_up.weight", 256, 512, GGML_TYPE_Q5_0},
    {"blk.0.ffn_down.weight", 512, 256, GGML_TYPE_Q5_1},
};

/* What write_tiny writes: tiny at hidden 32 unless a test switches to tiny_k at 256. */
static const struct tspec *cur = tiny;
static size_t n_cur = N_TINY;
static uint32_t cur_hidden = 32;

/* With rope_freqs: 2 heads of 16 and llama3 factors (factor 8, low 1, high 8, original context 32768) for rope_theta 500000,
 * as llama.cpp's converter writes them; r_override replaces them when non-NULL. */
static void write_tiny(const char *path, unsigned char **data_out, bool rope_freqs, const float *r_override)
{
    struct writer w = {0};
    put_u32(&w, 0x46554747);
    put_u32(&w, 3);
    put_u64(&w, n_cur + (rope_freqs ? 1 : 0));
    put_u64(&w, 11);
    put_str(&w, "general.architecture");
    put_u32(&w, GGUF_TYPE_STRING);
    put_str(&w, "llama");
    kv_u32(&w, "general.alignment", 64);
    kv_u32(&w, "llama.embedding_length", cur_hidden);
    kv_u32(&w, "llama.block_count", 1);
    kv_u32(&w, "llama.feed_forward_length", 2 * cur_hidden);
    kv_u32(&w, "llama.attention.head_count", rope_freqs ? 2 : 4);
    kv_u32(&w, "llama.attention.head_count_kv", rope_freqs ? 1 : 2);
    kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-6f);
    kv_f32(&w, "llama.rope.freq_base", 500000.0f);
    kv_u32(&w, "tokenizer.ggml.eos_token_id", 7);
    put_str(&w, "tokenizer.ggml.tokens");
    put_u32(&w, GGUF_TYPE_ARRAY);
    put_u32(&w, GGUF_TYPE_STRING);
    put_u64(&w, 40);
    for (int i = 0; i < 40; i++) {
        char s[16];
        snprintf(s, sizeof s, "t%d", i);
        put_str(&w, s);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n_cur; i++) {
        put_str(&w, cur[i].name);
        put_u32(&w, cur[i].d1 ? 2 : 1);
        put_u64(&w, cur[i].d0);
        if (cur[i].d1) put_u64(&w, cur[i].d1);
        put_u32(&w, cur[i].type);
        put_u64(&w, off);
        off += (tbytes(&cur[i]) + 63) / 64 * 64;
    }
    if (rope_freqs) {
        put_str(&w, "rope_freqs.weight");
        put_u32(&w, 1);
        put_u64(&w, 8);
        put_u32(&w, GGML_TYPE_F32);
        put_u64(&w, off);
    }
    while (w.len % 64) put(&w, "", 1);
    size_t data_start = w.len;
    unsigned char *zeros = calloc(1, off + 64);
    put(&w, zeros, off + 64);
    free(zeros);
    off = 0;
    for (size_t i = 0; i < n_cur; i++) {
        fill(&cur[i], w.buf + data_start + off, (unsigned)i);
        off += (tbytes(&cur[i]) + 63) / 64 * 64;
    }
    if (rope_freqs) {
        float r[8];
        for (int i = 0; i < 8; i++) {
            double f = 1.0 / pow(500000.0, 2.0 * i / 16), wavelen = 2 * M_PI / f;
            if (wavelen < 32768.0 / 8) r[i] = 1.0f;
            else if (wavelen > 32768.0 / 1) r[i] = 8.0f;
            else {
                double sm = (32768.0 / wavelen - 1) / (8 - 1);
                r[i] = (float)(1.0 / ((1 - sm) / 8 + sm));
            }
        }
        memcpy(w.buf + data_start + off, r_override ? r_override : r, sizeof r);
    }
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(w.buf, 1, w.len, f), w.len);
    fclose(f);
    *data_out = w.buf;
    (void)data_start;
}

/* Writes specs (12 tensors in tiny's order) at hidden size `hidden`, loads the file and checks
 * every tensor against the file: dims, type, bytes and values. */
static void check_tiny_loads(const struct tspec *specs, uint32_t hidden)
{
    cur = specs;
    n_cur = N_TINY;
    cur_hidden = hidden;
    char dir[] = "/tmp/sluice-quant-XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/tiny.gguf", dir);
    unsigned char *file;
    write_tiny(path, &file, false, NULL);

    struct model *m = NULL;
    char err[1024] = "";
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    cr_expect_eq(m->config.hidden_size, (int)hidden);
    cr_expect_eq(m->config.vocab_size, 40);
    cr_expect_eq(m->config.head_dim, (int)hidden / 4);
    cr_expect_eq(m->config.max_position, 2048, "default context length");
    cr_expect_float_eq(m->config.rope_theta, 500000.0f, 1e-2f);
    cr_expect_eq(m->config.n_eos, 1);
    cr_expect_eq(m->config.eos_ids[0], 7);
    cr_expect_eq(m->config.bos_id, -1);
    cr_expect_not(m->config.tie_embeddings);
    cr_expect(m->config.rope_interleaved);

    struct gguf_file *g = NULL;
    cr_assert_eq(gguf_open(&g, path, err, sizeof err), 0, "%s", err);
    const struct tensor *mine[N_TINY] = {&m->tok_embed, &m->final_norm, &m->lm_head, &m->layers[0].attn_norm,
                                         &m->layers[0].wq, &m->layers[0].wk, &m->layers[0].wv, &m->layers[0].wo,
                                         &m->layers[0].ffn_norm, &m->layers[0].w_gate, &m->layers[0].w_up,
                                         &m->layers[0].w_down};
    for (size_t i = 0; i < N_TINY; i++) {
        const struct gguf_tensor_info *ti = gguf_find_tensor(g, cur[i].name);
        cr_assert(ti, "%s", cur[i].name);
        cr_expect_eq(ti->size, tbytes(&cur[i]), "%s", cur[i].name);
        int64_t n = tensor_numel(mine[i]);
        cr_assert_eq(n, (int64_t)(cur[i].d0 * (cur[i].d1 ? cur[i].d1 : 1)), "%s", cur[i].name);
        if (cur[i].d1) {
            cr_expect_eq(mine[i]->shape[0], (int64_t)cur[i].d1, "%s rows", cur[i].name);
            cr_expect_eq(mine[i]->shape[1], (int64_t)cur[i].d0, "%s cols", cur[i].name);
        }
        float *want = malloc((size_t)n * sizeof(float));
        enum dtype dt;
        cr_assert_eq(dtype_from_ggml(cur[i].type, &dt), 0);
        struct tensor t = {.dtype = dt, .ndim = 1, .shape = {n, 0}, .data = ti->data};
        tensor_to_f32(&t, 0, false, want);
        /* Every tensor keeps the file's type and bytes: quantized ones are not expanded. */
        cr_expect_eq(mine[i]->dtype, dt, "%s is %s, the file has %s", cur[i].name, dtype_name(mine[i]->dtype),
                     dtype_name(dt));
        cr_expect(memcmp(mine[i]->data, ti->data, ti->size) == 0, "%s: not the file's bytes", cur[i].name);
        for (int64_t k = 0; k < n; k++) {
            float v = tensor_get_f32(mine[i], 0, false, (uint64_t)k);
            cr_assert_eq(v, want[k], "%s element %lld", cur[i].name, (long long)k);
            cr_assert(v == v && v > -1e4f && v < 1e4f, "%s element %lld = %g", cur[i].name, (long long)k, (double)v);
        }
        free(want);
    }
    gguf_close(g);
    model_free(m);
    free(file);
    unlink(path);
    rmdir(dir);
}

Test(quant, gguf_with_quantized_tensors_loads)
{
    check_tiny_loads(tiny, 32);
}

Test(quant, gguf_with_k_quants_loads)
{
    check_tiny_loads(tiny_k, 256);
}

Test(quant, gguf_rope_freqs_become_llama3_scaling)
{
    cur = tiny, n_cur = N_TINY, cur_hidden = 32;
    char dir[] = "/tmp/sluice-ropef-XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/tiny.gguf", dir);
    unsigned char *file;
    write_tiny(path, &file, true, NULL);
    free(file);
    struct model *m = NULL;
    char err[1024] = "";
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    cr_expect_eq(m->config.head_dim, 16);
    cr_expect_eq(m->config.rope_scaling.type, ROPE_SCALING_LLAMA3);
    cr_expect_float_eq(m->config.rope_scaling.factor, 8.0f, 1e-6f);
    cr_expect_float_eq(m->config.rope_scaling.low_freq_factor, 1.0f, 1e-6f);
    cr_expect_float_eq(m->config.rope_scaling.high_freq_factor, 8.0f, 1e-3f);
    cr_expect_eq(m->config.rope_scaling.original_max_position, 32768);
    model_free(m);

    /* Factors that follow no llama3 curve are refused, not silently dropped. */
    float odd[8] = {1, 1, 1, 3, 1, 2, 8, 8};
    write_tiny(path, &file, true, odd);
    free(file);
    m = NULL;
    cr_expect_lt(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0);
    cr_expect(strstr(err, "rope_freqs.weight") != NULL, "%s", err);
    unlink(path);
    rmdir(dir);
}
