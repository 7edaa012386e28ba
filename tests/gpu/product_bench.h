/* Timing matrix products in the GPU tests' benchmarks: `copies` rotating copies of a [n_out,
 * k_in] bf16 weight matrix (more than L2 together, so the weights stream from memory as in a
 * decode step), an x of `rows` rows and y, and one timing loop for any product; and a bare
 * backend to run cuda_gemm with. */
#ifndef SLUICE_TESTS_GPU_PRODUCT_BENCH_H
#define SLUICE_TESTS_GPU_PRODUCT_BENCH_H

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"
#include "worker/backend/cuda/cuda_internal.h"

/* The backend's product y[rows, n_out] = x w^T on the kernel the planner gives it
 * (cuda_plan_product: whole sums, no parts), as the tests run and time it. */
static inline int cuda_gemm(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows,
                            int n_out, int k_in)
{
    return cuda_product(b, cuda_plan_product(&b->plan, rows, n_out, k_in), w, x, y, rows, n_out, k_in, NULL);
}

/* A backend of a stream and a cuBLAS handle only, all that cuda_gemm needs (with b->plan.gemv or
 * b->plan.hopper and b->gemm.hopper set where the test wants those paths). False, with the check
 * failed, without cuBLAS. */
static inline bool bare_backend_open(struct cuda_backend *b)
{
    memset(b, 0, sizeof *b);
    GT_CUDA(cudaStreamCreate(&b->stream));
    if (cublasCreate(&b->gemm.cublas) != CUBLAS_STATUS_SUCCESS) {
        GT_CHECK(0, "cublasCreate");
        return false;
    }
    cublasSetStream(b->gemm.cublas, b->stream);
    return true;
}

static inline void bare_backend_close(struct cuda_backend *b)
{
    cublasDestroy(b->gemm.cublas);
    cudaStreamDestroy(b->stream);
}

struct product_bench {
    uint16_t *w, *x;
    float *y;
    size_t wn; /* elements of one weight copy */
    int copies, rows, n_out, k_in;
};

static inline void product_bench_init(struct product_bench *pb, int rows, int n_out, int k_in)
{
    pb->copies = 4;
    pb->rows = rows;
    pb->n_out = n_out;
    pb->k_in = k_in;
    pb->wn = (size_t)n_out * k_in;
    pb->w = gt_dev(pb->wn * 2 * pb->copies);
    pb->x = gt_dev((size_t)rows * k_in * 2);
    pb->y = gt_dev((size_t)rows * n_out * 4 * SK_HOPPER_MAX_SPLITS); /* room for every split part */
    GT_CUDA(sk_fill_dummy_bf16(pb->w, 1, 9, 0, (int64_t)(pb->wn * pb->copies), 0, 0));
    GT_CUDA(sk_fill_dummy_bf16(pb->x, 1, 10, 0, (int64_t)rows * k_in, 0, 0));
}

static inline void product_bench_free(struct product_bench *pb)
{
    cudaFree(pb->w);
    cudaFree(pb->x);
    cudaFree(pb->y);
}

/* The weights of call i. */
static inline const uint16_t *product_bench_w(const struct product_bench *pb, int i)
{
    return pb->w + (size_t)(i % pb->copies) * pb->wn;
}

/* Milliseconds per call of run(pb, i, ctx) on stream st, over iters calls after 4 to warm up. */
static inline float product_bench_ms(const struct product_bench *pb, cudaStream_t st, int iters,
                                     void (*run)(const struct product_bench *pb, int i, void *ctx), void *ctx)
{
    cudaEvent_t e0, e1;
    GT_CUDA(cudaEventCreate(&e0));
    GT_CUDA(cudaEventCreate(&e1));
    for (int i = 0; i < iters + 4; i++) {
        if (i == 4) GT_CUDA(cudaEventRecord(e0, st));
        run(pb, i, ctx);
    }
    GT_CUDA(cudaEventRecord(e1, st));
    GT_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    GT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / iters;
}

#endif
