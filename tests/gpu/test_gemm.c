/* The CUDA backend's product y = x w^T (cuda_gemm in product_bench.h: cuda_product on the
 * planner's choice) against a double reference on random bf16 operands, within 1e-4 relative error
 * (only fp32 accumulation rounding remains): cuBLAS, and with the backend's gemv switch on, the
 * own kernel (kernels/gemv.cu) at 1 to 8 rows and cuBLAS for the shapes it does not take; gemv's
 * refusal of 9 rows. Then it times cuBLAS against gemv at Llama-3-8B's decode shapes. A backend
 * test rather than a kernel's: the cases go through struct cuda_backend and its planner. */
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/product_bench.h"

#include "kernels/sluice_kernels.h"
#include "worker/backend/cuda/cuda_internal.h"

/* cuda_gemm: bf16 operands, fp32 accumulation, against a double reference. */
static void test_gemm_case(struct cuda_backend *b, int M, int N, int K)
{
    uint16_t *w = malloc((size_t)N * K * 2), *x = malloc((size_t)M * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = gt_f2bf(gt_normal());
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = gt_f2bf(gt_normal());
    uint16_t *dw = gt_up(w, (size_t)N * K * 2), *dx = gt_up(x, (size_t)M * K * 2);
    float *dy = gt_dev((size_t)M * N * 4), *y = malloc((size_t)M * N * 4);
    int rc = b->plan.gemv && M > 1 && M <= SK_GEMV_MAX_ROWS && K % 8 == 0
                 ? (sk_gemv(dw, dx, dy, M, N, K, b->stream) == cudaSuccess ? 0 : -1)
                 : cuda_gemm(b, dw, dx, dy, M, N, K);
    gt_down(y, dy, (size_t)M * N * 4);
    double *ref = malloc((size_t)M * N * 8);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)gt_bf2f(x[(size_t)m * K + k]) * gt_bf2f(w[(size_t)n * K + k]);
            ref[(size_t)m * N + n] = s;
        }
    double e = gt_rel_err(y, ref, (size_t)M * N);
    /* Operands are exact bf16; only fp32 accumulation rounding remains. */
    GT_CHECK(rc == 0 && e < 1e-4, "gemm M=%d N=%d K=%d rel err %.2e %s", M, N, K, e, rc ? b->base.error : "");
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    free(w);
    free(x);
    free(y);
    free(ref);
}

/* Times one product over rotating weight copies (more than L2) and prints GB/s of weights. */
static void run_cuda_gemm(const struct product_bench *pb, int i, void *b)
{
    cuda_gemm(b, product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in);
}

static void run_gemv(const struct product_bench *pb, int i, void *b)
{
    GT_CUDA(sk_gemv(product_bench_w(pb, i), pb->x, pb->y, pb->rows, pb->n_out, pb->k_in,
                    ((struct cuda_backend *)b)->stream));
}

static void bench_gemm(struct cuda_backend *b, int rows, int N, int K)
{
    const int iters = 20;
    struct product_bench pb;
    product_bench_init(&pb, rows, N, K);
    b->plan.gemv = false;
    const float ms[2] = {product_bench_ms(&pb, b->stream, iters, run_cuda_gemm, b),
                         product_bench_ms(&pb, b->stream, iters, run_gemv, b)};
    b->plan.gemv = true;
    const size_t wn = pb.wn;
    printf("  bench gemm rows=%d N=%d K=%d: cublas %.1f us (%.0f GB/s), gemv %.1f us (%.0f GB/s)\n", rows, N, K,
           ms[0] * 1e3, wn * 2 / (ms[0] * 1e6), ms[1] * 1e3, wn * 2 / (ms[1] * 1e6));
    product_bench_free(&pb);
}

static void test_gemm(void)
{
    printf("gemm (cuBLAS bf16, fp32 compute)\n");
    struct cuda_backend b;
    if (!bare_backend_open(&b)) return;
    test_gemm_case(&b, 1, 4096, 4096);
    test_gemm_case(&b, 37, 1000, 768);
    test_gemm_case(&b, 5, 172, 64);
    test_gemm_case(&b, 130, 344, 8);
    printf("gemv (own kernel, rows <= 8)\n");
    b.plan.gemv = true;
    for (int m = 1; m <= 8; m++) test_gemm_case(&b, m, m < 4 ? 4096 : 1000, m < 4 ? 4096 : 768);
    test_gemm_case(&b, 3, 6144, 4096);
    test_gemm_case(&b, 2, 5, 64);
    test_gemm_case(&b, 1, 344, 8);
    /* Shapes it does not take go to cuBLAS. */
    test_gemm_case(&b, 2, 172, 172);
    test_gemm_case(&b, 9, 100, 64);
    GT_CHECK(sk_gemv(NULL, NULL, NULL, 9, 10, 64, 0) == cudaErrorInvalidValue, "gemv refuses 9 rows");
    (void)cudaGetLastError();
    printf("bench gemm at decode shapes (Llama-3-8B), cuBLAS vs own gemv\n");
    int shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int rows = 1; rows <= 8; rows *= 8) bench_gemm(&b, rows, shapes[i][0], shapes[i][1]);
    bare_backend_close(&b);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_gemm();
    return gt_finish();
}
