/* The backend's matrix products, y[rows, n_out] = x[rows, k_in] w[n_out, k_in]^T in bf16 with fp32
 * accumulation and output (bf16 output for prefill's gate/up). One-row products go to the own gemv kernel; products of a decode
 * batch, on a Hopper GPU, to the own TMA + wgmma kernel (kernels/hopper_gemm.cu); the rest, and
 * everything elsewhere, to cublasGemmEx's default algorithm.
 *
 * Deterministic mode (--deterministic) gives every product, whatever its rows, to the Hopper kernel
 * in slices of at most SK_HOPPER_MAX_ROWS rows. That kernel's split count depends on the shape
 * alone and a row's sums do not depend on the other rows of its tile, so a row's result is the
 * same at every batch size; gemv, cuBLAS (whose algorithm and split-K follow the row count) and a
 * choice between them by rows would each make a sequence's output depend on its neighbours.
 *
 * Tried and dropped, measured on an H200 at Llama-3-8B's decode shapes (PERF_NOTES.md): cublasLt
 * with each shape's best candidate timed (within a few percent of the default, whole steps
 * slower) and an mma.sync tensor-core kernel with cp.async (75-95% of cuBLAS's rate). */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"

int cuda_gemm_init(struct cuda_backend *b, const struct model_config *c)
{
    int rc = 0;
    /* Hopper's own products unless turned off (hopper=0); elsewhere the handle is refused and
     * cuBLAS takes every product. */
    if (!b->opt.no_hopper) {
        cudaError_t e = sk_hopper_gemm_create(&b->hopper);
        if (e == cudaErrorNotSupported) {
            (void)cudaGetLastError();
            log_debug("cuda: no sm_90a products on this device or build; cuBLAS takes them");
        } else {
            CUDA_CHECK(b, e);
        }
    }
    b->split_parts = b->hopper && !b->opt.no_split_parts;
    b->fused_mlp = b->split_parts && !b->opt.no_fused_mlp;
    b->early_trigger = !b->opt.no_early_trigger;
    if (b->deterministic) {
        const int qd = c->n_heads * c->head_dim;
        if (!b->hopper)
            CUDA_FAIL(b, "cuda: --deterministic needs the Hopper products (a compute capability 9.0 GPU and a build "
                         "for sm_90); this GPU or build has none");
        if (c->hidden_size % 8 || qd % 8 || c->intermediate_size % 8)
            CUDA_FAIL(b, "cuda: --deterministic needs hidden_size, heads x head_dim and intermediate_size divisible "
                         "by 8 (the Hopper products' rows); this model has %d, %d, %d",
                      c->hidden_size, qd, c->intermediate_size);
    }
fail:
    return rc;
}

void cuda_gemm_free(struct cuda_backend *b)
{
    sk_hopper_gemm_destroy(b->hopper);
    b->hopper = NULL;
}

/* cuBLAS's product with y in y_type. Row-major y = x w^T is column-major y^T = w^T(op) x^T: w
 * read as [k_in, n_out] col-major. */
static int cublas_product(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, void *y, cudaDataType_t y_type,
                          int rows, int n_out, int k_in)
{
    int rc = 0;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(b, cublasGemmEx(b->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, k_in, &one, w, CUDA_R_16BF, k_in, x,
                                 CUDA_R_16BF, k_in, &zero, y, y_type, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
fail:
    return rc;
}

bool cuda_gemm_on_hopper(const struct cuda_backend *b, int rows)
{
    return b->hopper && (b->deterministic || (rows >= 2 && rows <= CUDA_HOPPER_MAX_ROWS));
}

/* The Hopper kernel's product in slices of at most SK_HOPPER_MAX_ROWS rows (deterministic mode),
 * its split-K sums added within each cluster. */
static int hopper_sliced(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                         int k_in)
{
    int rc = 0;
    for (int r0 = 0; r0 < rows; r0 += SK_HOPPER_MAX_ROWS) {
        const int n = rows - r0 < SK_HOPPER_MAX_ROWS ? rows - r0 : SK_HOPPER_MAX_ROWS;
        CUDA_CHECK(b, sk_hopper_gemm(b->hopper, w, x + (size_t)r0 * k_in, y + (size_t)r0 * n_out, n, n_out, k_in, 0,
                                     b->stream));
    }
fail:
    return rc;
}

/* Whether the Hopper kernel takes a product of more than one row; early: the product lets its
 * dependents launch early (sk_hopper_gemm_parts). */
static bool hopper_takes(const struct cuda_backend *b, int rows, int n_out, int k_in, bool early)
{
    /* At 33-64 rows the narrow products (under ~48M weights: Llama-3-8B's qkv and o) ran 4-14%
     * slower on the Hopper kernel than on cuBLAS (H200); everything else ran as fast or faster.
     * But qkv letting qkv_post and the decode attention launch early (cuBLAS cannot) made whole
     * steps shorter than cuBLAS's qkv: same run, batch 40 / 48 / 64 5.03 / 5.14 / 5.20 ms
     * against 5.15 / 5.23 / 5.17-5.22 (without the early launch 5.11 / 5.23 / 5.25). */
    const bool narrow = rows > 32 && (int64_t)n_out * k_in < ((int64_t)48 << 20) && !early && !b->deterministic;
    return cuda_gemm_on_hopper(b, rows) && k_in % 8 == 0 && !narrow;
}

int cuda_gemm(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in)
{
    int rc = 0;
    if (b->deterministic) return hopper_sliced(b, w, x, y, rows, n_out, k_in);
    /* Measured on an H200: the own kernel beats cuBLAS by 5-15% for one row, loses beyond. */
    if (b->use_gemv && rows == 1 && k_in % 8 == 0) {
        CUDA_CHECK(b, sk_gemv(w, x, y, rows, n_out, k_in, b->stream));
        return 0;
    }
    if (hopper_takes(b, rows, n_out, k_in, false)) {
        CUDA_CHECK(b, sk_hopper_gemm(b->hopper, w, x, y, rows, n_out, k_in, 0, b->stream));
        return 0;
    }
    return cublas_product(b, w, x, y, CUDA_R_32F, rows, n_out, k_in);
fail:
    return rc;
}

int cuda_gemm_parts(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                    int k_in, int *n_parts, bool early_dependents)
{
    int rc = 0;
    const bool early = early_dependents && b->early_trigger;
    *n_parts = 1;
    /* Parts of at most CUDA_HOPPER_MAX_ROWS rows (the room y has for them); larger products
     * (deterministic mode) add their parts within clusters, the same sums bit for bit. */
    if (b->split_parts && hopper_takes(b, rows, n_out, k_in, early) && rows <= CUDA_HOPPER_MAX_ROWS) {
        CUDA_CHECK(b, sk_hopper_gemm_parts(b->hopper, w, x, y, rows, n_out, k_in, 0, n_parts, early, b->stream));
        return 0;
    }
    return cuda_gemm(b, w, x, y, rows, n_out, k_in);
fail:
    return rc;
}

bool cuda_mlp_fused(const struct cuda_backend *b, int rows, int hidden, int inter)
{
    /* Measured on an H200 at Llama-3-8B's shape, ms a step fused / two launches: batch 16
     * 4.62 / 4.69, 32 4.79 / 4.91, but 64 5.19-5.21 / 5.13-5.16. At 64 rows the down work itself
     * ran ~2 us a layer slower inside the fused kernel, even with gate/up's blocks left idle
     * (kernel trace, PERF_NOTES.md), so batches of 33-64 keep two launches. Rechecked with the
     * early triggers (kernels/pdl.cuh): 40 and 48 rows even, 64 5.33-5.36 against 5.20 ms. */
    return b->fused_mlp && b->gu_interleaved && rows <= 32 && hopper_takes(b, rows, hidden, inter, false);
}

int cuda_gemm_swiglu(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *act, int rows, int inter,
                     int k_in, bool early_dependents)
{
    int rc = 0;
    const bool early = early_dependents && b->early_trigger;
    for (int r0 = 0; r0 < rows; r0 += SK_HOPPER_MAX_ROWS) {
        const int n = rows - r0 < SK_HOPPER_MAX_ROWS ? rows - r0 : SK_HOPPER_MAX_ROWS;
        /* Only the last slice may let the next kernel start early: it reads every slice's rows. */
        CUDA_CHECK(b, sk_hopper_gemm_swiglu(b->hopper, w, x + (size_t)r0 * k_in, act + (size_t)r0 * inter, n, inter,
                                            k_in, early && r0 + n == rows, b->stream));
    }
fail:
    return rc;
}

int cuda_gemm_bf16(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, uint16_t *y, int rows, int n_out,
                   int k_in)
{
    return cublas_product(b, w, x, y, CUDA_R_16BF, rows, n_out, k_in);
}
