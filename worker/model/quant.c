/* ggml's block quantizations: their layouts and the reference dequantization of each.
 *
 * Every function here computes exactly what the `gguf` Python package's gguf.quants computes
 * (numpy, float32, every product and sum rounded on its own): the scale of a sub-block is
 * d * scale in float32 first, then each weight is that times its quant, minus the sub-block's
 * minimum where the type has one. A fused multiply-add would round once instead of twice and
 * differ in the last bit, so this file is compiled with -ffp-contract=off (Makefile).
 * tests/unit/model/test_quant.c checks every type bit for bit against fixtures made with that
 * package (tests/fixtures/quant/). The CPU backend's vector twins (cpu_dequant.c) are checked
 * against these. */
#include <string.h>

#include "worker/model/model.h"
#include "worker/model/model_internal.h"

#define QK_K 256

static inline float load_f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return model_f16_to_f32(h);
}

/* Q8_0: d, then 32 int8: x = q * d. */
static void dequant_q8_0(const unsigned char *b, float *y)
{
    float d = load_f16(b);
    for (int i = 0; i < 32; i++) y[i] = (float)(int8_t)b[2 + i] * d;
}

/* Q4_0: d, then 16 bytes; low nibbles are elements 0..15, high nibbles 16..31: x = (q - 8) * d. */
static void dequant_q4_0(const unsigned char *b, float *y)
{
    float d = load_f16(b);
    for (int i = 0; i < 16; i++) {
        y[i] = (float)((b[2 + i] & 0x0f) - 8) * d;
        y[16 + i] = (float)((b[2 + i] >> 4) - 8) * d;
    }
}

/* Q4_1: d, m, then 16 bytes as Q4_0: x = q * d + m. */
static void dequant_q4_1(const unsigned char *b, float *y)
{
    float d = load_f16(b), m = load_f16(b + 2);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)(b[4 + i] & 0x0f) + m;
        y[16 + i] = d * (float)(b[4 + i] >> 4) + m;
    }
}

/* Q5_0: d, 32 high bits (little-endian u32, bit i for element i), 16 bytes of low nibbles as
 * Q4_0: x = (q - 16) * d. */
static void dequant_q5_0(const unsigned char *b, float *y)
{
    float d = load_f16(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    for (int i = 0; i < 16; i++) {
        int lo = (b[6 + i] & 0x0f) | (int)((qh >> i) & 1) << 4;
        int hi = (b[6 + i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
        y[i] = d * (float)(lo - 16);
        y[16 + i] = d * (float)(hi - 16);
    }
}

/* Q5_1: d, m, high bits and low nibbles as Q5_0: x = q * d + m. */
static void dequant_q5_1(const unsigned char *b, float *y)
{
    float d = load_f16(b), m = load_f16(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    for (int i = 0; i < 16; i++) {
        int lo = (b[8 + i] & 0x0f) | (int)((qh >> i) & 1) << 4;
        int hi = (b[8 + i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
        y[i] = d * (float)lo + m;
        y[16 + i] = d * (float)hi + m;
    }
}

/* Q2_K: 16 bytes of 4-bit scale and 4-bit minimum per 16 weights, 64 bytes of 2-bit quants
 * (byte 32h + i holds elements 128h + 32k + i in bits 2k), then d and dmin:
 * x = (d * scale) * q - dmin * min. */
static void dequant_q2_k(const unsigned char *b, float *y)
{
    const unsigned char *scales = b, *qs = b + 16;
    float d = load_f16(b + 80), dmin = load_f16(b + 82);
    for (int p = 0; p < QK_K; p++) {
        int h = p / 128, k = (p % 128) / 32, i = p % 32;
        int q = (qs[h * 32 + i] >> (2 * k)) & 3;
        int s = scales[p / 16];
        float dl = d * (float)(s & 0x0f), ml = dmin * (float)(s >> 4);
        y[p] = dl * (float)q - ml;
    }
}

/* Q3_K: 32 bytes of high bits (bit j of byte i for element 32j + i; a clear bit subtracts 4),
 * 64 bytes of 2-bit quants as Q2_K, 12 bytes of sixteen 6-bit scales (offset by 32), then d:
 * x = (d * scale) * q. */
static void dequant_q3_k(const unsigned char *b, float *y)
{
    const unsigned char *hmask = b, *qs = b + 32, *sc = b + 96;
    float d = load_f16(b + 108);
    for (int p = 0; p < QK_K; p++) {
        int h = p / 128, k = (p % 128) / 32, i = p % 32, s = p / 16;
        int q = ((qs[h * 32 + i] >> (2 * k)) & 3) - (((hmask[i] >> (p / 32)) & 1) ? 0 : 4);
        int lo = s < 8 ? sc[s] & 0x0f : sc[s - 8] >> 4;
        int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        float dl = d * (float)((lo | hi << 4) - 32);
        y[p] = dl * (float)q;
    }
}

/* The eight 6-bit scales and minimums of Q4_K and Q5_K, packed in 12 bytes. */
static inline void scale_min_k4(const unsigned char *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K: d, dmin, 12 bytes of scales and minimums, 128 bytes of nibbles: 32-byte chunk j holds
 * sub-block 2j in its low nibbles and 2j + 1 in its high ones: x = (d * sc) * q - dmin * m. */
static void dequant_q4_k(const unsigned char *b, float *y)
{
    float d = load_f16(b), dmin = load_f16(b + 2);
    const unsigned char *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(b + 4, j, &sc, &m);
        float dl = d * (float)sc, ml = dmin * (float)m;
        for (int i = 0; i < 32; i++) y[j * 32 + i] = dl * (float)((qs[(j / 2) * 32 + i] >> (4 * (j % 2))) & 0x0f) - ml;
    }
}

/* Q5_K: Q4_K with 32 bytes of fifth bits (bit j of byte i for sub-block j) before the nibbles. */
static void dequant_q5_k(const unsigned char *b, float *y)
{
    float d = load_f16(b), dmin = load_f16(b + 2);
    const unsigned char *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(b + 4, j, &sc, &m);
        float dl = d * (float)sc, ml = dmin * (float)m;
        for (int i = 0; i < 32; i++) {
            int q = ((qs[(j / 2) * 32 + i] >> (4 * (j % 2))) & 0x0f) | ((qh[i] >> j) & 1) << 4;
            y[j * 32 + i] = dl * (float)q - ml;
        }
    }
}

/* Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, sixteen int8 scales, d. In each half
 * h of 128, element 32k + i takes nibble k / 2 of byte 64h + 32(k % 2) + i and bits 2k of byte
 * 32h + i: x = (d * scale) * (q - 32). */
static void dequant_q6_k(const unsigned char *b, float *y)
{
    const unsigned char *ql = b, *qh = b + 128;
    const signed char *sc = (const signed char *)(b + 192);
    float d = load_f16(b + 208);
    for (int p = 0; p < QK_K; p++) {
        int h = p / 128, k = (p % 128) / 32, i = p % 32;
        int lo = (ql[h * 64 + (k % 2) * 32 + i] >> (4 * (k / 2))) & 0x0f;
        int hi = (qh[h * 32 + i] >> (2 * k)) & 3;
        float dl = d * (float)sc[p / 16];
        y[p] = dl * (float)((lo | hi << 4) - 32);
    }
}

/* The 16 values of IQ4_NL and IQ4_XS's non-linear 4-bit grid. */
static const int8_t iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* IQ4_NL: Q4_0's layout with each nibble looked up in the grid: x = d * grid[q]. */
static void dequant_iq4_nl(const unsigned char *b, float *y)
{
    float d = load_f16(b);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)iq4_values[b[2 + i] & 0x0f];
        y[16 + i] = d * (float)iq4_values[b[2 + i] >> 4];
    }
}

/* IQ4_XS: d, a u16 of 2-bit high scale parts, 4 bytes of 4-bit low parts (eight 6-bit scales
 * offset by 32), and 16 bytes per sub-block laid out as IQ4_NL: x = (d * scale) * grid[q]. */
static void dequant_iq4_xs(const unsigned char *b, float *y)
{
    float d = load_f16(b);
    uint16_t sh;
    memcpy(&sh, b + 2, 2);
    const unsigned char *sl = b + 4, *qs = b + 8;
    for (int j = 0; j < 8; j++) {
        int ls = (sl[j / 2] >> (4 * (j % 2))) & 0x0f, hs = (sh >> (2 * j)) & 3;
        float dl = d * (float)((ls | hs << 4) - 32);
        for (int i = 0; i < 16; i++) {
            y[j * 32 + i] = dl * (float)iq4_values[qs[j * 16 + i] & 0x0f];
            y[j * 32 + 16 + i] = dl * (float)iq4_values[qs[j * 16 + i] >> 4];
        }
    }
}

struct quant_layout {
    const char *name;
    uint32_t ggml_type;
    int block_elems, block_bytes;
    void (*dequant)(const unsigned char *block, float *out);
};

/* Indexed by enum dtype; the plain types have blocks of one element. */
static const struct quant_layout layouts[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", GGML_TYPE_F32, 1, 4, NULL},
    [DTYPE_F16] = {"F16", GGML_TYPE_F16, 1, 2, NULL},
    [DTYPE_BF16] = {"BF16", GGML_TYPE_BF16, 1, 2, NULL},
    [DTYPE_Q4_0] = {"Q4_0", GGML_TYPE_Q4_0, 32, 18, dequant_q4_0},
    [DTYPE_Q4_1] = {"Q4_1", GGML_TYPE_Q4_1, 32, 20, dequant_q4_1},
    [DTYPE_Q5_0] = {"Q5_0", GGML_TYPE_Q5_0, 32, 22, dequant_q5_0},
    [DTYPE_Q5_1] = {"Q5_1", GGML_TYPE_Q5_1, 32, 24, dequant_q5_1},
    [DTYPE_Q8_0] = {"Q8_0", GGML_TYPE_Q8_0, 32, 34, dequant_q8_0},
    [DTYPE_Q2_K] = {"Q2_K", GGML_TYPE_Q2_K, QK_K, 84, dequant_q2_k},
    [DTYPE_Q3_K] = {"Q3_K", GGML_TYPE_Q3_K, QK_K, 110, dequant_q3_k},
    [DTYPE_Q4_K] = {"Q4_K", GGML_TYPE_Q4_K, QK_K, 144, dequant_q4_k},
    [DTYPE_Q5_K] = {"Q5_K", GGML_TYPE_Q5_K, QK_K, 176, dequant_q5_k},
    [DTYPE_Q6_K] = {"Q6_K", GGML_TYPE_Q6_K, QK_K, 210, dequant_q6_k},
    [DTYPE_IQ4_NL] = {"IQ4_NL", GGML_TYPE_IQ4_NL, 32, 18, dequant_iq4_nl},
    [DTYPE_IQ4_XS] = {"IQ4_XS", GGML_TYPE_IQ4_XS, QK_K, 136, dequant_iq4_xs},
    /* Not ggml types; one byte a weight, scaled by struct tensor's scale (fp8.c). */
    [DTYPE_F8_E4M3] = {"F8_E4M3", UINT32_MAX, 1, 1, NULL},
    [DTYPE_F8_E5M2] = {"F8_E5M2", UINT32_MAX, 1, 1, NULL},
};

static const struct quant_layout *layout(enum dtype d)
{
    return (unsigned)d < DTYPE_COUNT ? &layouts[d] : NULL;
}

const char *dtype_name(enum dtype d)
{
    return layout(d) ? layout(d)->name : "?";
}

bool dtype_is_quantized(enum dtype d)
{
    return layout(d) && layout(d)->dequant != NULL;
}

int64_t dtype_block_elems(enum dtype d)
{
    return layout(d) ? layout(d)->block_elems : 1;
}

size_t dtype_block_bytes(enum dtype d)
{
    return layout(d) ? (size_t)layout(d)->block_bytes : 0;
}

int dtype_from_ggml(uint32_t ggml_type, enum dtype *out)
{
    for (int d = 0; d < DTYPE_COUNT; d++) {
        if (layouts[d].ggml_type == ggml_type) {
            *out = (enum dtype)d;
            return 0;
        }
    }
    return -1;
}

size_t tensor_row_bytes(const struct tensor *t)
{
    int64_t cols = t->ndim == 2 ? t->shape[1] : t->shape[0];
    return (size_t)(cols / dtype_block_elems(t->dtype)) * dtype_block_bytes(t->dtype);
}

void model_dequant(enum dtype d, const void *src, float *dst, int64_t n)
{
    const struct quant_layout *q = layout(d);
    if (!q || !q->dequant) return;
    const unsigned char *b = src;
    for (int64_t i = 0; i < n / q->block_elems; i++, b += q->block_bytes) q->dequant(b, dst + i * q->block_elems);
}
