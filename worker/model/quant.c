/* ggml block quantizations, dequantized at load into float32. Each block covers 32 weights
 * and starts with an f16 scale d (Q4_1 adds an f16 minimum m). */
#include <string.h>

#include "worker/model/model_internal.h"

static float load_f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return model_f16_to_f32(h);
}

/* Q8_0: d, then 32 int8: x = q * d. */
void model_dequant_q8_0(const void *src, float *dst, int64_t n)
{
    const unsigned char *b = src;
    for (int64_t blk = 0; blk < n / 32; blk++, b += 34) {
        float d = load_f16(b);
        for (int i = 0; i < 32; i++) dst[blk * 32 + i] = (float)(int8_t)b[2 + i] * d;
    }
}

/* Q4_0: d, then 16 bytes; low nibbles are elements 0..15, high nibbles 16..31: x = (q - 8) * d. */
void model_dequant_q4_0(const void *src, float *dst, int64_t n)
{
    const unsigned char *b = src;
    for (int64_t blk = 0; blk < n / 32; blk++, b += 18) {
        float d = load_f16(b);
        for (int i = 0; i < 16; i++) {
            dst[blk * 32 + i] = (float)((b[2 + i] & 0x0f) - 8) * d;
            dst[blk * 32 + 16 + i] = (float)((b[2 + i] >> 4) - 8) * d;
        }
    }
}

/* Q4_1: d, m, then 16 bytes as Q4_0: x = q * d + m. */
void model_dequant_q4_1(const void *src, float *dst, int64_t n)
{
    const unsigned char *b = src;
    for (int64_t blk = 0; blk < n / 32; blk++, b += 20) {
        float d = load_f16(b), m = load_f16(b + 2);
        for (int i = 0; i < 16; i++) {
            dst[blk * 32 + i] = (float)(b[4 + i] & 0x0f) * d + m;
            dst[blk * 32 + 16 + i] = (float)(b[4 + i] >> 4) * d + m;
        }
    }
}
