/* Small helpers shared by the GPU tests: pass/fail counting, deterministic random numbers,
 * bf16 conversion on the host, and relative error. Plain C, no test framework (the GPU machine
 * has none): each test prints one line per check and a final "N passed, N failed". */
#ifndef SLUICE_TESTS_GPU_TEST_H
#define SLUICE_TESTS_GPU_TEST_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int gt_passed, gt_failed;

#define GT_CHECK(cond, ...)                                                                                            \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            gt_passed++;                                                                                               \
            printf("  ok    ");                                                                                        \
        } else {                                                                                                       \
            gt_failed++;                                                                                               \
            printf("  FAIL  ");                                                                                        \
        }                                                                                                              \
        printf(__VA_ARGS__);                                                                                           \
        printf("\n");                                                                                                  \
        fflush(stdout);                                                                                                \
    } while (0)

/* A CUDA failure in test plumbing ends the test program (it is a test, not a server). */
#define GT_CUDA(stmt)                                                                                                  \
    do {                                                                                                               \
        cudaError_t e_ = (stmt);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            printf("  FAIL  %s: %s (%s:%d)\n", #stmt, cudaGetErrorString(e_), __FILE__, __LINE__);                     \
            gt_failed++;                                                                                               \
            printf("%d passed, %d failed\n", gt_passed, gt_failed);                                                    \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* Seconds on the monotonic clock. */
static inline double gt_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Whether the speed runs are asked for (SLUICE_GPU_BENCH=1); otherwise says it skips. */
static inline int gt_bench_wanted(void)
{
    const char *on = getenv("SLUICE_GPU_BENCH");
    if (on && !strcmp(on, "1")) return 1;
    printf("SKIP: set SLUICE_GPU_BENCH=1\n0 passed, 0 failed\n");
    return 0;
}

static inline int gt_finish(void)
{
    printf("%d passed, %d failed\n", gt_passed, gt_failed);
    return gt_failed ? 1 : 0;
}

static uint64_t gt_rng_state = 0x1234567887654321ull;
static inline uint64_t gt_next(void)
{
    uint64_t z = (gt_rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static inline float gt_uniform(void)
{
    return (float)(gt_next() >> 40) * 0x1p-23f - 1.0f;
}
static inline float gt_normal(void)
{
    float u1 = ((float)(gt_next() >> 40) + 0.5f) * 0x1p-24f, u2 = (float)(gt_next() >> 40) * 0x1p-24f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}
static inline int gt_int(int n)
{
    return (int)(gt_next() % (uint64_t)n);
}

/* a[0..n) = first, first + 1, ... in a random order (Fisher-Yates): cache slots and blocks as a
 * live cache scatters them. */
static inline void gt_shuffled_ids(int32_t *a, int n, int first)
{
    for (int i = 0; i < n; i++) a[i] = first + i;
    for (int i = n - 1; i > 0; i--) {
        int j = gt_int(i + 1), tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
    }
}

static inline uint16_t gt_f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float gt_bf2f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float gt_round_bf(float f)
{
    return gt_bf2f(gt_f2bf(f));
}

/* ||out - ref|| / ||ref||; NaN or Inf anywhere in out gives +Inf. */
static inline double gt_rel_err(const float *out, const double *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) return INFINITY;
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline void *gt_dev(size_t bytes)
{
    void *p = NULL;
    GT_CUDA(cudaMalloc(&p, bytes ? bytes : 16));
    GT_CUDA(cudaMemset(p, 0xff, bytes ? bytes : 16)); /* poison: NaN in float and bf16 */
    /* The memset runs on the legacy stream, which a non-blocking stream does not wait for: done
     * before anyone writes the buffer. */
    GT_CUDA(cudaDeviceSynchronize());
    return p;
}
static inline void *gt_up(const void *host, size_t bytes)
{
    void *p = gt_dev(bytes);
    GT_CUDA(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return p;
}
static inline void gt_down(void *host, const void *dev, size_t bytes)
{
    GT_CUDA(cudaDeviceSynchronize());
    GT_CUDA(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}
static inline int gt_have_gpu(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("SKIP: no GPU visible\n0 passed, 0 failed\n");
        return 0;
    }
    return 1;
}

#endif
