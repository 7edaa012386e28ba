/* AVX2 twins of worker/model/quant.c's dequantization, 32 weights at a time: their quants are
 * gathered as 32 int8 in one register, widened to float32 eight at a time, and scaled with the
 * same float32 operations in the same order as the reference (a sub-block's scale d * sc first,
 * then scale * q, then + m or - min, each rounded: this file is compiled with
 * -ffp-contract=off). x - m is computed as x + (-m), which IEEE arithmetic rounds the same.
 * Each type has two kernels over the same group code: one writes the row out as float32, the
 * other (the decode steps' dot products) multiplies it into the accumulators in registers. */
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

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

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

/* 32 consecutive dequantized weights, eight to a register. */
struct w32 {
    __m256 v[4];
};

/* d * q for the 8 int8 quants in the low half of q (+ m). */
AVX2_INLINE __m256 scale8(__m128i q, __m256 d)
{
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
}

/* 32 int8 quants: the first 16 scaled by d0, the last 16 by d1. */
AVX2_INLINE struct w32 scale32(__m256i q, float d0, float d1)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 a = _mm256_set1_ps(d0), b = _mm256_set1_ps(d1);
    return (struct w32){{scale8(lo, a), scale8(_mm_srli_si128(lo, 8), a), scale8(hi, b), scale8(_mm_srli_si128(hi, 8), b)}};
}

/* The same plus a minimum per 16 (m0, m1 added after the product, each sum rounded). */
AVX2_INLINE struct w32 scale32m(__m256i q, float d0, float d1, float m0, float m1)
{
    struct w32 w = scale32(q, d0, d1);
    __m256 ma = _mm256_set1_ps(m0), mb = _mm256_set1_ps(m1);
    w.v[0] = _mm256_add_ps(w.v[0], ma);
    w.v[1] = _mm256_add_ps(w.v[1], ma);
    w.v[2] = _mm256_add_ps(w.v[2], mb);
    w.v[3] = _mm256_add_ps(w.v[3], mb);
    return w;
}

/* Byte i of the result: (byte i of v >> shift) & mask. */
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

/* Each type's group g (weights 32g .. 32g + 31) of the block at b. */

AVX2_INLINE struct w32 grp_q8_0(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b);
    return scale32(load32(b + 2), d, d);
}

AVX2_INLINE struct w32 grp_q4_0(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b);
    return scale32(_mm256_sub_epi8(nibbles16(b + 2), _mm256_set1_epi8(8)), d, d);
}

AVX2_INLINE struct w32 grp_q4_1(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b), m = f16(b + 2);
    return scale32m(nibbles16(b + 4), d, d, m, m);
}

AVX2_INLINE __m256i q5_quants(const unsigned char *qh, const unsigned char *qs)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    return _mm256_or_si256(nibbles16(qs), _mm256_and_si256(bytes_from_bits(h), _mm256_set1_epi8(0x10)));
}

AVX2_INLINE struct w32 grp_q5_0(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b);
    return scale32(_mm256_sub_epi8(q5_quants(b + 2, b + 6), _mm256_set1_epi8(16)), d, d);
}

AVX2_INLINE struct w32 grp_q5_1(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b), m = f16(b + 2);
    return scale32m(q5_quants(b + 4, b + 8), d, d, m, m);
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

/* Q4_K and Q5_K: sub-block j from the nibbles (low for even j, high for odd) of 32-byte chunk
 * j / 2; Q5_K adds bit j of qh[i] as the fifth bit. x = (d * sc) * q + -(dmin * m). */
AVX2_INLINE struct w32 grp_k4(const unsigned char *b, int j, const unsigned char *qh, const unsigned char *qs)
{
    float d = f16(b), dmin = f16(b + 2);
    int sc, m;
    scale_min_k4(b + 4, j, &sc, &m);
    __m256i q = bits_of(load32(qs + 32 * (j / 2)), 4 * (j % 2), 0x0f);
    if (qh) q = _mm256_or_si256(q, _mm256_slli_epi16(bits_of(load32(qh), j, 1), 4));
    float dl = d * (float)sc, ml = -(dmin * (float)m);
    return scale32m(q, dl, dl, ml, ml);
}

AVX2_INLINE struct w32 grp_q4_k(const unsigned char *b, int g)
{
    return grp_k4(b, g, NULL, b + 16);
}

AVX2_INLINE struct w32 grp_q5_k(const unsigned char *b, int g)
{
    return grp_k4(b, g, b + 16, b + 48);
}

/* Q6_K: group 4h + k of half h takes nibble k / 2 of ql[64h + 32(k % 2) + i] and bits 2k of
 * qh[32h + i]; a scale per 16. */
AVX2_INLINE struct w32 grp_q6_k(const unsigned char *b, int g)
{
    int h = g / 4, k = g % 4, s = 8 * h + 2 * k;
    const signed char *sc = (const signed char *)(b + 192);
    float d = f16(b + 208);
    __m256i lo = bits_of(load32(b + 64 * h + 32 * (k % 2)), 4 * (k / 2), 0x0f);
    __m256i hi = _mm256_slli_epi16(bits_of(load32(b + 128 + 32 * h), 2 * k, 3), 4);
    __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
    return scale32(q, d * (float)sc[s], d * (float)sc[s + 1]);
}

AVX2_INLINE struct w32 grp_q2_k(const unsigned char *b, int g)
{
    int h = g / 4, k = g % 4, s0 = b[8 * h + 2 * k], s1 = b[8 * h + 2 * k + 1];
    float d = f16(b + 80), dmin = f16(b + 82);
    return scale32m(bits_of(load32(b + 16 + 32 * h), 2 * k, 3), d * (float)(s0 & 0x0f), d * (float)(s1 & 0x0f),
                    -(dmin * (float)(s0 >> 4)), -(dmin * (float)(s1 >> 4)));
}

AVX2_INLINE float q3_scale(const unsigned char *sc, float d, int s)
{
    int lo = s < 8 ? sc[s] & 0x0f : sc[s - 8] >> 4, hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    return d * (float)((lo | hi << 4) - 32);
}

AVX2_INLINE struct w32 grp_q3_k(const unsigned char *b, int g)
{
    int h = g / 4, k = g % 4;
    float d = f16(b + 108);
    /* A clear high bit (bit g of hmask[i]) subtracts 4. */
    __m256i low4 = _mm256_slli_epi16(_mm256_xor_si256(bits_of(load32(b), g, 1), _mm256_set1_epi8(1)), 2);
    __m256i q = _mm256_sub_epi8(bits_of(load32(b + 32 + 32 * h), 2 * k, 3), low4);
    return scale32(q, q3_scale(b + 96, d, 8 * h + 2 * k), q3_scale(b + 96, d, 8 * h + 2 * k + 1));
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

AVX2_INLINE struct w32 grp_iq4_nl(const unsigned char *b, int g)
{
    (void)g;
    float d = f16(b);
    return scale32(iq4_quants(b + 2), d, d);
}

AVX2_INLINE struct w32 grp_iq4_xs(const unsigned char *b, int j)
{
    float d = f16(b);
    uint16_t sh;
    memcpy(&sh, b + 2, 2);
    int ls = (b[4 + j / 2] >> (4 * (j % 2))) & 0x0f, hs = (sh >> (2 * j)) & 3;
    float dl = d * (float)((ls | hs << 4) - 32);
    return scale32(iq4_quants(b + 8 + 16 * j), dl, dl);
}

/* The dot product of cpu_ops.c's dot_rows_avx2, its weights dequantized group by group into
 * registers: the same fused multiply-adds into the same four accumulators per row, reduced in
 * the same order, so the result is that of the row dequantized first. Quantized rows are whole
 * groups of 32, so the float32 kernel's tail loop never runs. */
AVX2_INLINE void reduce(__m256 acc[4], float *out)
{
    __m256 s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    float t[4];
    _mm_storeu_ps(t, s4);
    *out = (t[0] + t[1]) + (t[2] + t[3]);
}

#define KERNELS(T, grp, be, bb)                                                                                \
    static AVX2 void avx2_##T(const void *src, float *y, int64_t n)                                            \
    {                                                                                                          \
        const unsigned char *b = src;                                                                          \
        for (int64_t i = 0; i < n / (be); i++, b += (bb))                                                      \
            for (int g = 0; g < (be) / 32; g++) {                                                              \
                struct w32 w = grp(b, g);                                                                      \
                for (int r = 0; r < 4; r++) _mm256_storeu_ps(y + i * (be) + 32 * g + 8 * r, w.v[r]);          \
            }                                                                                                  \
    }                                                                                                          \
    AVX2_INLINE void qdot_##T##_n(const float *const *x, const int nx, const void *src, int64_t n, float *out) \
    {                                                                                                          \
        __m256 acc[4][4];                                                                                      \
        _Pragma("GCC unroll 4") for (int k = 0; k < nx; k++) {                                                 \
            acc[k][0] = acc[k][1] = acc[k][2] = acc[k][3] = _mm256_setzero_ps();                               \
        }                                                                                                      \
        const unsigned char *b = src;                                                                          \
        int64_t i = 0;                                                                                         \
        for (int64_t blk = 0; blk < n / (be); blk++, b += (bb))                                                \
            _Pragma("GCC unroll 8") for (int g = 0; g < (be) / 32; g++, i += 32) {                             \
                struct w32 w = grp(b, g);                                                                      \
                _Pragma("GCC unroll 4") for (int k = 0; k < nx; k++) {                                         \
                    acc[k][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i), w.v[0], acc[k][0]);                 \
                    acc[k][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 8), w.v[1], acc[k][1]);             \
                    acc[k][2] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 16), w.v[2], acc[k][2]);            \
                    acc[k][3] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 24), w.v[3], acc[k][3]);            \
                }                                                                                              \
            }                                                                                                  \
        for (int k = 0; k < nx; k++) reduce(acc[k], out + k);                                                  \
    }                                                                                                          \
    static AVX2 void qdot_##T(const float *const *x, int nx, const void *src, int64_t n, float *out)            \
    {                                                                                                          \
        if (nx == 4) qdot_##T##_n(x, 4, src, n, out);                                                          \
        else                                                                                                   \
            for (int k = 0; k < nx; k++) qdot_##T##_n(x + k, 1, src, n, out + k);                              \
    }
KERNELS(Q4_0, grp_q4_0, 32, 18)
KERNELS(Q4_1, grp_q4_1, 32, 20)
KERNELS(Q5_0, grp_q5_0, 32, 22)
KERNELS(Q5_1, grp_q5_1, 32, 24)
KERNELS(Q8_0, grp_q8_0, 32, 34)
KERNELS(Q2_K, grp_q2_k, 256, 84)
KERNELS(Q3_K, grp_q3_k, 256, 110)
KERNELS(Q4_K, grp_q4_k, 256, 144)
KERNELS(Q5_K, grp_q5_k, 256, 176)
KERNELS(Q6_K, grp_q6_k, 256, 210)
KERNELS(IQ4_NL, grp_iq4_nl, 32, 18)
KERNELS(IQ4_XS, grp_iq4_xs, 256, 136)

#define BY_TYPE(prefix)                                                                                        \
    {                                                                                                          \
        [DTYPE_Q4_0] = prefix##Q4_0, [DTYPE_Q4_1] = prefix##Q4_1, [DTYPE_Q5_0] = prefix##Q5_0,                 \
        [DTYPE_Q5_1] = prefix##Q5_1, [DTYPE_Q8_0] = prefix##Q8_0, [DTYPE_Q2_K] = prefix##Q2_K,                 \
        [DTYPE_Q3_K] = prefix##Q3_K, [DTYPE_Q4_K] = prefix##Q4_K, [DTYPE_Q5_K] = prefix##Q5_K,                 \
        [DTYPE_Q6_K] = prefix##Q6_K, [DTYPE_IQ4_NL] = prefix##IQ4_NL, [DTYPE_IQ4_XS] = prefix##IQ4_XS,         \
    }
static cpu_dequant_fn *const vector[DTYPE_COUNT] = BY_TYPE(avx2_);
static cpu_qdot_fn *const qdots[DTYPE_COUNT] = BY_TYPE(qdot_);

static bool have_avx2(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return have;
}
#else
static cpu_dequant_fn *const vector[DTYPE_COUNT] = {0};
static cpu_qdot_fn *const qdots[DTYPE_COUNT] = {0};
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

cpu_qdot_fn *cpu_qdot_for(enum dtype d)
{
    return (unsigned)d < DTYPE_COUNT && have_avx2() ? qdots[d] : NULL;
}

cpu_dequant_fn *cpu_dequant_for(enum dtype d)
{
    if ((unsigned)d >= DTYPE_COUNT) return NULL;
    cpu_dequant_fn *v = cpu_dequant_vector_for(d);
    return v ? v : reference[d];
}
