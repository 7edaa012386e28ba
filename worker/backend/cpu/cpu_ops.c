#include "worker/backend/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsum(v4f a, v4f b, v4f c, v4f d)
{
    v4f s = (a + b) + (c + d);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* Dot products of nx rows of x with one weight row. The weight is loaded once for all rows;
 * each row's arithmetic is the same whatever nx is, which keeps results batch-invariant. */
static inline __attribute__((always_inline)) void dot_rows(const float *const *x, int nx, const float *w,
                                                           int64_t n, float *out)
{
    v4f acc[4][4];
    for (int k = 0; k < nx; k++)
        for (int j = 0; j < 4; j++) acc[k][j] = (v4f){0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v4f w0 = load4(w + i), w1 = load4(w + i + 4), w2 = load4(w + i + 8), w3 = load4(w + i + 12);
        for (int k = 0; k < nx; k++) {
            acc[k][0] += load4(x[k] + i) * w0;
            acc[k][1] += load4(x[k] + i + 4) * w1;
            acc[k][2] += load4(x[k] + i + 8) * w2;
            acc[k][3] += load4(x[k] + i + 12) * w3;
        }
    }
    for (int k = 0; k < nx; k++) {
        float s = hsum(acc[k][0], acc[k][1], acc[k][2], acc[k][3]);
        for (int64_t j = i; j < n; j++) s += x[k][j] * w[j];
        out[k] = s;
    }
}

struct matmul_job {
    const float *x, *bias;
    const struct cpu_weight *w;
    bool direct;              /* every part float32: no row needs dequantizing */
    int64_t n_rows;
    float *out;
};

#define MM_TILE 4

/* Weight rows per block: about 64 KiB of float32, so a block stays in L2 while every token tile
 * of the batch passes over it. */
static inline int64_t mm_row_block(int64_t n_in)
{
    int64_t rows = (64 * 1024 / 4) / (n_in > 0 ? n_in : 1);
    return rows > 0 ? rows : 1;
}

/* Row o's part, and the stored row it reads. */
static inline const struct cpu_weight_part *locate(const struct cpu_weight *w, int64_t o, const unsigned char **src)
{
    const struct cpu_weight_part *p = w->parts;
    while (o >= p->n_rows) {
        o -= p->n_rows;
        p++;
    }
    *src = (const unsigned char *)p->data + (size_t)(p->row_map ? p->row_map[o] : o) * p->row_bytes;
    return p;
}

/* Row o of the weight as float32: in place for a float32 part, else (fill) dequantized into
 * slot, which then holds it for the later calls with fill false. */
static inline const float *weight_row(const struct cpu_weight *w, int64_t o, float *slot, bool fill)
{
    const unsigned char *src;
    const struct cpu_weight_part *p = locate(w, o, &src);
    if (!p->dequant) return (const float *)(const void *)src;
    if (fill) p->dequant(src, slot, w->n_in);
    return slot;
}

typedef void dot_rows_fn(const float *const *x, int nx, const float *w, int64_t n, float *out);

/* Output rows [begin, end) of one matmul: weight rows in cache-sized blocks, token rows in
 * tiles of MM_TILE. A block's quantized rows are dequantized once into slots on this thread's
 * stack, then every token tile passes over them. With in_regs (the AVX2 kernel, whose quantized
 * parts have a fused dot) a batch of one tile, as a decode step is, multiplies each quantized
 * row in registers as it dequantizes it instead: the same arithmetic (cpu_dequant.h), without
 * writing the row out. Inlined into each caller with its dot product, so that constant row
 * counts keep the accumulators in registers and the AVX2 twin is compiled for AVX2. */
static inline __attribute__((always_inline)) void matmul_rows(const struct matmul_job *j, int64_t begin,
                                                              int64_t end, dot_rows_fn *dot, bool fused)
{
    const struct cpu_weight *w = j->w;
    const int64_t n_in = w->n_in;
    const bool in_regs = fused && j->n_rows <= MM_TILE;
    float slots[CPU_MATMUL_MAX_QROW] __attribute__((aligned(64)));
    int64_t ob = in_regs ? 64 : mm_row_block(n_in);
    for (int64_t o0 = begin; o0 < end; o0 += ob) {
        int64_t o1 = o0 + ob < end ? o0 + ob : end;
        if (!j->direct && !in_regs)
            for (int64_t o = o0; o < o1; o++) weight_row(w, o, slots + (o - o0) * n_in, true);
        for (int64_t t0 = 0; t0 < j->n_rows; t0 += MM_TILE) {
            int nx = j->n_rows - t0 < MM_TILE ? (int)(j->n_rows - t0) : MM_TILE;
            const float *xs[MM_TILE];
            for (int k = 0; k < nx; k++) xs[k] = j->x + (t0 + k) * n_in;
            for (int64_t o = o0; o < o1; o++) {
                float r[MM_TILE];
                const unsigned char *src;
                const struct cpu_weight_part *p = locate(w, o, &src);
                if (in_regs && p->qdot) {
                    p->qdot(xs, nx, src, n_in, r);
                } else {
                    const float *wr = (const float *)(const void *)src;
                    if (p->dequant && in_regs) {
                        /* One tile: the row is used once, so the first slot does. */
                        p->dequant(src, slots, n_in);
                        wr = slots;
                    } else if (p->dequant) {
                        wr = slots + (o - o0) * n_in;
                    }
                    if (nx == MM_TILE) dot(xs, MM_TILE, wr, n_in, r);
                    else
                        for (int k = 0; k < nx; k++) dot(xs + k, 1, wr, n_in, r + k);
                }
                for (int k = 0; k < nx; k++)
                    j->out[(t0 + k) * w->n_out + o] = j->bias ? r[k] + j->bias[o] : r[k];
            }
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

/* The AVX2+FMA twin of dot_rows: 32 floats per step in four 8-wide accumulators per row.
 * Chosen once per process, so every row of every batch still takes the same arithmetic. */
static inline __attribute__((always_inline, target("avx2,fma"))) void dot_rows_avx2(const float *const *x, int nx,
                                                                                      const float *w, int64_t n,
                                                                                      float *out)
{
    __m256 acc[MM_TILE][4];
    for (int k = 0; k < nx; k++)
        for (int j = 0; j < 4; j++) acc[k][j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
        __m256 w2 = _mm256_loadu_ps(w + i + 16), w3 = _mm256_loadu_ps(w + i + 24);
        for (int k = 0; k < nx; k++) {
            acc[k][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i), w0, acc[k][0]);
            acc[k][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 8), w1, acc[k][1]);
            acc[k][2] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 16), w2, acc[k][2]);
            acc[k][3] = _mm256_fmadd_ps(_mm256_loadu_ps(x[k] + i + 24), w3, acc[k][3]);
        }
    }
    for (int k = 0; k < nx; k++) {
        __m256 s8 = _mm256_add_ps(_mm256_add_ps(acc[k][0], acc[k][1]), _mm256_add_ps(acc[k][2], acc[k][3]));
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        float t[4];
        _mm_storeu_ps(t, s4);
        float s = (t[0] + t[1]) + (t[2] + t[3]);
        for (int64_t j = i; j < n; j++) s += x[k][j] * w[j];
        out[k] = s;
    }
}

__attribute__((target("avx2,fma"))) static void matmul_range_avx2(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    matmul_rows(arg, begin, end, dot_rows_avx2, true);
}
#endif

static void matmul_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    matmul_rows(arg, begin, end, dot_rows, false);
}

static cpu_pool_fn matmul_kernel(void)
{
#if defined(__x86_64__)
    static int have_avx2 = -1;
    if (have_avx2 < 0) {
        __builtin_cpu_init();
        have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    if (have_avx2) return matmul_range_avx2;
#endif
    return matmul_range;
}

void cpu_matmul_w(struct cpu_pool *pool, const float *x, int64_t n_rows, const struct cpu_weight *w,
                  const float *bias, float *out)
{
    struct matmul_job j = {.x = x, .w = w, .bias = bias, .n_rows = n_rows, .out = out, .direct = true};
    for (int i = 0; i < w->n_parts; i++)
        if (w->parts[i].dequant) j.direct = false;
    /* Chunks of weight rows big enough (about 32k multiply-adds) to be worth a thread, and
     * small enough to stay in cache while every token tile passes over them. */
    int64_t work = w->n_in * (n_rows < 8 ? n_rows : 8);
    int64_t min_chunk = work > 0 ? (32768 + work - 1) / work : 1;
    cpu_pool_run(pool, w->n_out, min_chunk, matmul_kernel(), &j);
}

void cpu_matmul(struct cpu_pool *pool, const float *x, int64_t n_rows, int64_t n_in, const float *w,
                const float *bias, int64_t n_out, float *out)
{
    struct cpu_weight wt;
    cpu_weight_init(&wt, n_in);
    cpu_weight_add(&wt, DTYPE_F32, w, n_out, NULL, NULL);
    cpu_matmul_w(pool, x, n_rows, &wt, bias, out);
}

void cpu_weight_init(struct cpu_weight *w, int64_t n_in)
{
    memset(w, 0, sizeof *w);
    w->n_in = n_in;
}

int cpu_weight_add(struct cpu_weight *w, enum dtype dtype, const void *data, int64_t n_rows, const int32_t *row_map,
                   void *owned)
{
    bool quantized = dtype_is_quantized(dtype);
    if (w->n_parts == CPU_WEIGHT_MAX_PARTS || (dtype != DTYPE_F32 && !quantized) ||
        (quantized && (w->n_in > CPU_MATMUL_MAX_QROW || w->n_in % dtype_block_elems(dtype) != 0))) {
        free(owned);
        return -1;
    }
    w->parts[w->n_parts++] = (struct cpu_weight_part){
        .dtype = dtype,
        .data = data,
        .row_bytes = (size_t)(w->n_in / dtype_block_elems(dtype)) * dtype_block_bytes(dtype),
        .n_rows = n_rows,
        .row_map = row_map,
        .owned = owned,
        .dequant = quantized ? cpu_dequant_for(dtype) : NULL,
        .qdot = quantized ? cpu_qdot_for(dtype) : NULL,
    };
    w->n_out += n_rows;
    return 0;
}

void cpu_weight_free(struct cpu_weight *w)
{
    for (int i = 0; i < w->n_parts; i++) free(w->parts[i].owned);
    cpu_weight_init(w, 0);
}

size_t cpu_weight_bytes(const struct cpu_weight *w, size_t *quantized)
{
    size_t all = 0, q = 0;
    for (int i = 0; i < w->n_parts; i++) {
        size_t b = (size_t)w->parts[i].n_rows * w->parts[i].row_bytes;
        all += b;
        if (w->parts[i].dequant) q += b;
    }
    if (quantized) *quantized = q;
    return all;
}

void cpu_weight_row(const struct cpu_weight *w, int64_t r, float *dst)
{
    const float *row = weight_row(w, r, dst, true);
    if (row != dst) memcpy(dst, row, (size_t)w->n_in * sizeof(float));
}

void cpu_rmsnorm(const float *x, const float *weight, int64_t n, float eps, float *out)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

void cpu_rope_apply(float *v, int head_dim, const float *cos_t, const float *sin_t)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cos_t[i] - x1 * sin_t[i];
        v[i + half] = x1 * cos_t[i] + x0 * sin_t[i];
    }
}
