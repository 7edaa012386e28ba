/* The backend's matrix products, y[rows, n_out] = x[rows, k_in] w[n_out, k_in]^T in bf16 with fp32
 * accumulation and output (bf16 output for prefill's gate/up), on the kernel the planner names
 * (cuda_plan.h): the own gemv kernel, the own Hopper kernel (TMA + wgmma, kernels/hopper_gemm.cu)
 * whole, in slices or leaving its split-K parts, or cublasGemmEx's default algorithm.
 * cublasLt with tuned candidates and an mma.sync kernel were tried and lost (docs/performance.md). */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"

int cuda_gemm_init(struct cuda_backend *b)
{
    int rc = 0;
    CUBLAS_CHECK(b, cublasCreate(&b->gemm.cublas));
    CUBLAS_CHECK(b, cublasSetStream(b->gemm.cublas, b->stream));
    /* A fixed workspace, so cuBLAS allocates nothing later (KV sizing, CUDA graphs). */
    CUDA_CHECK(b, cudaMalloc(&b->gemm.cublas_ws, CUBLAS_WS_BYTES));
    CUBLAS_CHECK(b, cublasSetWorkspace(b->gemm.cublas, b->gemm.cublas_ws, CUBLAS_WS_BYTES));
    CUBLAS_CHECK(b, cublasSetMathMode(b->gemm.cublas, CUBLAS_DEFAULT_MATH));
    /* Hopper's own products unless turned off (hopper=0); elsewhere the handle is refused and
     * cuBLAS takes every product. */
    if (!b->opt.no_hopper) {
        cudaError_t e = sk_hopper_gemm_create(&b->gemm.hopper);
        if (e == cudaErrorNotSupported) {
            (void)cudaGetLastError();
            log_debug("cuda: no sm_90a products on this device or build; cuBLAS takes them");
        } else {
            CUDA_CHECK(b, e);
        }
    }
fail:
    return rc;
}

void cuda_gemm_free(struct cuda_backend *b)
{
    sk_hopper_gemm_destroy(b->gemm.hopper);
    b->gemm.hopper = NULL;
    if (b->gemm.cublas) cublasDestroy(b->gemm.cublas);
    b->gemm.cublas = NULL;
    if (b->gemm.cublas_ws) cudaFree(b->gemm.cublas_ws);
    b->gemm.cublas_ws = NULL;
}

/* cuBLAS's product with y in y_type. Row-major y = x w^T is column-major y^T = w^T(op) x^T: w
 * read as [k_in, n_out] col-major. */
static int cublas_product(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, void *y, cudaDataType_t y_type,
                          int rows, int n_out, int k_in)
{
    int rc = 0;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(b,
                 cublasGemmEx(b->gemm.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, k_in, &one, w, CUDA_R_16BF, k_in,
                              x, CUDA_R_16BF, k_in, &zero, y, y_type, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
fail:
    return rc;
}

/* The Hopper kernel's product in slices of at most SK_HOPPER_MAX_ROWS rows (deterministic mode),
 * its split-K sums added within each cluster. */
static int hopper_sliced(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                         int k_in)
{
    int rc = 0;
    for (int r0 = 0; r0 < rows; r0 += SK_HOPPER_MAX_ROWS) {
        const int n = rows - r0 < SK_HOPPER_MAX_ROWS ? rows - r0 : SK_HOPPER_MAX_ROWS;
        CUDA_CHECK(b, sk_hopper_gemm(b->gemm.hopper, w, x + (size_t)r0 * k_in, y + (size_t)r0 * n_out, n, n_out, k_in,
                                     0, b->stream));
    }
fail:
    return rc;
}

int cuda_product(struct cuda_backend *b, struct cuda_product_plan p, const uint16_t *w, const uint16_t *x, float *y,
                 int rows, int n_out, int k_in, int *n_parts)
{
    int rc = 0;
    if (n_parts) *n_parts = 1;
    switch (p.kernel) {
    case CUDA_PRODUCT_HOPPER_SLICED: return hopper_sliced(b, w, x, y, rows, n_out, k_in);
    case CUDA_PRODUCT_GEMV: CUDA_CHECK(b, sk_gemv(w, x, y, rows, n_out, k_in, b->stream)); break;
    case CUDA_PRODUCT_HOPPER:
        CUDA_CHECK(b, sk_hopper_gemm(b->gemm.hopper, w, x, y, rows, n_out, k_in, 0, b->stream));
        break;
    case CUDA_PRODUCT_HOPPER_PARTS:
        CUDA_CHECK(b, sk_hopper_gemm_parts(b->gemm.hopper, w, x, y, rows, n_out, k_in, 0, n_parts, p.early, b->stream));
        break;
    case CUDA_PRODUCT_CUBLAS: return cublas_product(b, w, x, y, CUDA_R_32F, rows, n_out, k_in);
    case CUDA_PRODUCT_FP8_GEMV:
    case CUDA_PRODUCT_FP8_MMA:
    case CUDA_PRODUCT_FP8_HOPPER:
    case CUDA_PRODUCT_FP8_LT:
    case CUDA_PRODUCT_FP8_DEQUANT: CUDA_FAIL(b, "cuda: an FP8 plan reached the bf16 products (cuda_fp8_product takes it)");
    }
fail:
    return rc;
}

int cuda_gemm_swiglu(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *act, int rows, int inter,
                     int k_in, bool early)
{
    int rc = 0;
    for (int r0 = 0; r0 < rows; r0 += SK_HOPPER_MAX_ROWS) {
        const int n = rows - r0 < SK_HOPPER_MAX_ROWS ? rows - r0 : SK_HOPPER_MAX_ROWS;
        /* Only the last slice may let the next kernel start early: it reads every slice's rows. */
        CUDA_CHECK(b, sk_hopper_gemm_swiglu(b->gemm.hopper, w, x + (size_t)r0 * k_in, act + (size_t)r0 * inter, n,
                                            inter, k_in, early && r0 + n == rows, b->stream));
    }
fail:
    return rc;
}

int cuda_gemm_bf16(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *y, int rows, int n_out,
                   int k_in)
{
    return cublas_product(b, w, x, y, CUDA_R_16BF, rows, n_out, k_in);
}
