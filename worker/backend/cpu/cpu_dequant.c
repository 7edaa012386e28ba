/* AVX2 twins of worker/model/quant.c's dequantization, one block at a time: the quants of 32
 * weights are gathered as 32 int8 in one register, widened to float32 eight at a time, and
 * scaled with the same float32 operations in the same order as the reference (a sub-block's
 * scale d * sc first, then scale * q, then + m or - min, each rounded: this file is compiled
 * with -ffp-contract=off). x - m is computed as x + (-m), which IEEE arithmetic rounds the
 * same. Types without a twin use the reference. */
#include "worker/backend/cpu/cpu_dequant.h"

#include <string.h>

#define REF(T)                                                                                                 \
    static void ref_##T(const void *src, float *dst, int64_t n) { model_dequant(DTYPE_##T, src, dst, n); }
REF(Q4_0)
REF(Q4_1)
REF(Q5_0)
REF(Q5_1)
REF(Q8_0)
REF(Q2_K)
REF(Q3_K)
REF(Q4_K)
REF(Q5_K)
REF(Q6_K)
REF(IQ4_NL)
REF(IQ4_XS)

static cpu_dequant_fn *const reference[DTYPE_COUNT] = {
    [DTYPE_Q4_0] = ref_Q4_0, [DTYPE_Q4_1] = ref_Q4_1, [DTYPE_Q5_0] = ref_Q5_0,   [DTYPE_Q5_1] = ref_Q5_1,
    [DTYPE_Q8_0] = ref_Q8_0, [DTYPE_Q2_K] = ref_Q2_K, [DTYPE_Q3_K] = ref_Q3_K,   [DTYPE_Q4_K] = ref_Q4_K,
    [DTYPE_Q5_K] = ref_Q5_K, [DTYPE_Q6_K] = ref_Q6_K, [DTYPE_IQ4_NL] = ref_IQ4_NL, [DTYPE_IQ4_XS] = ref_IQ4_XS,
};

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,f16c")))

AVX2_INLINE float f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h); /* exact, subnormal halves included */
}

AVX2_INLINE __m256i load32(const unsigned char *p)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)p);
}

AVX2_INLINE __m128i load16(const unsigned char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* y[0..8) = d * q (+ m) for the 8 int8 quants in the low half of q. */
AVX2_INLINE void put8(float *y, __m128i q, __m256 d)
{
    _mm256_storeu_ps(y, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
}

AVX2_INLINE void put8m(float *y, __m128i q, __m256 d, __m256 m)
{
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))), m));
}

/* 32 int8 quants: the first 16 scaled by d0, the last 16 by d1. */
AVX2_INLINE void put32(float *y, __m256i q, float d0, float d1)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 a = _mm256_set1_ps(d0), b = _mm256_set1_ps(d1);
    put8(y, lo, a);
    put8(y + 8, _mm_srli_si128(lo, 8), a);
    put8(y + 16, hi, b);
    put8(y + 24, _mm_srli_si128(hi, 8), b);
}

/* The same plus a minimum per 16 (m0, m1 added). */
AVX2_INLINE void put32m(float *y, __m256i q, float d0, float d1, float m0, float m1)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 a = _mm256_set1_ps(d0), b = _mm256_set1_ps(d1), ma = _mm256_set1_ps(m0), mb = _mm256_set1_ps(m1);
    put8m(y, lo, a, ma);
    put8m(y + 8, _mm_srli_si128(lo, 8), a, ma);
    put8m(y + 16, hi, b, mb);
    put8m(y + 24, _mm_srli_si128(hi, 8), b, mb);
}

/* Bytes i of the result: (v >> shift) & mask, for every byte. */
AVX2_INLINE __m256i bits_of(__m256i v, int shift, int mask)
{
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8((char)mask));
}

/* Low nibbles of 16 bytes as elements 0..15, high nibbles as 16..31. */
AVX2_INLINE __m256i nibbles16(const unsigned char *p)
{
    __m128i v = load16(p), m4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
}

/* Byte i is 0xff where bit i of x is set. */
AVX2_INLINE __m256i bytes_from_bits(uint32_t x)
{
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

AVX2_INLINE void blk_q8_0(const unsigned char *b, float *y)
{
    float d = f16(b);
    put32(y, load32(b + 2), d, d);
}

AVX2_INLINE void blk_q4_0(const unsigned char *b, float *y)
{
    float d = f16(b);
    put32(y, _mm256_sub_epi8(nibbles16(b + 2), _mm256_set1_epi8(8)), d, d);
}

AVX2_INLINE void blk_q4_1(const unsigned char *b, float *y)
{
    float d = f16(b), m = f16(b + 2);
    put32m(y, nibbles16(b + 4), d, d, m, m);
}

AVX2_INLINE __m256i q5_quants(const unsigned char *qh, const unsigned char *qs)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    return _mm256_or_si256(nibbles16(qs), _mm256_and_si256(bytes_from_bits(h), _mm256_set1_epi8(0x10)));
}

AVX2_INLINE void blk_q5_0(const unsigned char *b, float *y)
{
    float d = f16(b);
    put32(y, _mm256_sub_epi8(q5_quants(b + 2, b + 6), _mm256_set1_epi8(16)), d, d);
}

AVX2_INLINE void blk_q5_1(const unsigned char *b, float *y)
{
    float d = f16(b), m = f16(b + 2);
    put32m(y, q5_quants(b + 4, b + 8), d, d, m, m);
}

AVX2_INLINE void scale_min_k4(const unsigned char *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K and Q5_K: sub-blocks 2c and 2c + 1 from the nibbles of 32-byte chunk c (Q5_K adds bit j
 * of qh[i] as the fifth bit of sub-block j). */
AVX2_INLINE void blk_k4(const unsigned char *b, float *y, const unsigned char *qh, const unsigned char *qs)
{
    float d = f16(b), dmin = f16(b + 2);
    __m256i hv = qh ? load32(qh) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i v = load32(qs + 32 * c);
        for (int half = 0; half < 2; half++) {
            int j = 2 * c + half, sc, m;
            __m256i q = bits_of(v, 4 * half, 0x0f);
            if (qh) q = _mm256_or_si256(q, _mm256_slli_epi16(bits_of(hv, j, 1), 4));
            scale_min_k4(b + 4, j, &sc, &m);
            float dl = d * (float)sc, ml = -(dmin * (float)m);
            put32m(y + 32 * j, q, dl, dl, ml, ml);
        }
    }
}

AVX2_INLINE void blk_q4_k(const unsigned char *b, float *y)
{
    blk_k4(b, y, NULL, b + 16);
}

AVX2_INLINE void blk_q5_k(const unsigned char *b, float *y)
{
    blk_k4(b, y, b + 16, b + 48);
}

AVX2_INLINE void blk_q6_k(const unsigned char *b, float *y)
{
    const unsigned char *ql = b, *qh = b + 128;
    const signed char *sc = (const signed char *)(b + 192);
    float d = f16(b + 208);
    for (int h = 0; h < 2; h++) {
        __m256i l[2] = {load32(ql + 64 * h), load32(ql + 64 * h + 32)}, hv = load32(qh + 32 * h);
        for (int k = 0; k < 4; k++) {
            __m256i q = _mm256_or_si256(bits_of(l[k % 2], 4 * (k / 2), 0x0f), _mm256_slli_epi16(bits_of(hv, 2 * k, 3), 4));
            q = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
            int s = 8 * h + 2 * k;
            put32(y + 128 * h + 32 * k, q, d * (float)sc[s], d * (float)sc[s + 1]);
        }
    }
}

AVX2_INLINE void blk_q2_k(const unsigned char *b, float *y)
{
    const unsigned char *scales = b, *qs = b + 16;
    float d = f16(b + 80), dmin = f16(b + 82);
    for (int h = 0; h < 2; h++) {
        __m256i v = load32(qs + 32 * h);
        for (int k = 0; k < 4; k++) {
            int s0 = scales[8 * h + 2 * k], s1 = scales[8 * h + 2 * k + 1];
            put32m(y + 128 * h + 32 * k, bits_of(v, 2 * k, 3), d * (float)(s0 & 0x0f), d * (float)(s1 & 0x0f),
                   -(dmin * (float)(s0 >> 4)), -(dmin * (float)(s1 >> 4)));
        }
    }
}

AVX2_INLINE void blk_q3_k(const unsigned char *b, float *y)
{
    const unsigned char *qs = b + 32, *sc = b + 96;
    float d = f16(b + 108);
    float dl[16];
    for (int s = 0; s < 16; s++) {
        int lo = s < 8 ? sc[s] & 0x0f : sc[s - 8] >> 4, hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        dl[s] = d * (float)((lo | hi << 4) - 32);
    }
    __m256i hm = load32(b);
    for (int h = 0; h < 2; h++) {
        __m256i v = load32(qs + 32 * h);
        for (int k = 0; k < 4; k++) {
            /* A clear high bit subtracts 4. */
            __m256i low4 = _mm256_slli_epi16(_mm256_xor_si256(bits_of(hm, 4 * h + k, 1), _mm256_set1_epi8(1)), 2);
            __m256i q = _mm256_sub_epi8(bits_of(v, 2 * k, 3), low4);
            put32(y + 128 * h + 32 * k, q, dl[8 * h + 2 * k], dl[8 * h + 2 * k + 1]);
        }
    }
}

static const int8_t iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* 16 bytes of grid indices as IQ4_NL lays them out: 32 int8 grid values. */
AVX2_INLINE __m256i iq4_quants(const unsigned char *qs)
{
    __m128i table = _mm_loadu_si128((const __m128i *)(const void *)iq4_values), v = load16(qs);
    __m128i m4 = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(v, m4));
    __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    return _mm256_set_m128i(hi, lo);
}

AVX2_INLINE void blk_iq4_nl(const unsigned char *b, float *y)
{
    float d = f16(b);
    put32(y, iq4_quants(b + 2), d, d);
}

AVX2_INLINE void blk_iq4_xs(const unsigned char *b, float *y)
{
    float d = f16(b);
    uint16_t sh;
    memcpy(&sh, b + 2, 2);
    for (int j = 0; j < 8; j++) {
        int ls = (b[4 + j / 2] >> (4 * (j % 2))) & 0x0f, hs = (sh >> (2 * j)) & 3;
        float dl = d * (float)((ls | hs << 4) - 32);
        put32(y + 32 * j, iq4_quants(b + 8 + 16 * j), dl, dl);
    }
}

#define ROW(T, blk, be, bb)                                                                                    \
    static AVX2 void avx2_##T(const void *src, float *y, int64_t n)                                            \
    {                                                                                                          \
        const unsigned char *b = src;                                                                          \
        for (int64_t i = 0; i < n / (be); i++) blk(b + i * (bb), y + i * (be));                                \
    }
ROW(Q4_0, blk_q4_0, 32, 18)
ROW(Q4_1, blk_q4_1, 32, 20)
ROW(Q5_0, blk_q5_0, 32, 22)
ROW(Q5_1, blk_q5_1, 32, 24)
ROW(Q8_0, blk_q8_0, 32, 34)
ROW(Q2_K, blk_q2_k, 256, 84)
ROW(Q3_K, blk_q3_k, 256, 110)
ROW(Q4_K, blk_q4_k, 256, 144)
ROW(Q5_K, blk_q5_k, 256, 176)
ROW(Q6_K, blk_q6_k, 256, 210)
ROW(IQ4_NL, blk_iq4_nl, 32, 18)
ROW(IQ4_XS, blk_iq4_xs, 256, 136)

static cpu_dequant_fn *const vector[DTYPE_COUNT] = {
    [DTYPE_Q4_0] = avx2_Q4_0, [DTYPE_Q4_1] = avx2_Q4_1, [DTYPE_Q5_0] = avx2_Q5_0,   [DTYPE_Q5_1] = avx2_Q5_1,
    [DTYPE_Q8_0] = avx2_Q8_0, [DTYPE_Q2_K] = avx2_Q2_K, [DTYPE_Q3_K] = avx2_Q3_K,   [DTYPE_Q4_K] = avx2_Q4_K,
    [DTYPE_Q5_K] = avx2_Q5_K, [DTYPE_Q6_K] = avx2_Q6_K, [DTYPE_IQ4_NL] = avx2_IQ4_NL, [DTYPE_IQ4_XS] = avx2_IQ4_XS,
};

static bool have_avx2(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return have;
}
#else
static cpu_dequant_fn *const vector[DTYPE_COUNT] = {0};
static bool have_avx2(void)
{
    return false;
}
#endif

bool cpu_dequant_vectorized(void)
{
    return have_avx2();
}

cpu_dequant_fn *cpu_dequant_vector_for(enum dtype d)
{
    return (unsigned)d < DTYPE_COUNT && have_avx2() ? vector[d] : NULL;
}

cpu_dequant_fn *cpu_dequant_for(enum dtype d)
{
    if ((unsigned)d >= DTYPE_COUNT) return NULL;
    cpu_dequant_fn *v = cpu_dequant_vector_for(d);
    return v ? v : reference[d];
}
