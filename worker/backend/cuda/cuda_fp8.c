/* FP8 weights on the GPU: each layer's four products (fused q/k/v, o, fused gate/up, down) kept
 * as e4m3 codes, one byte a weight, with float32 scales per output row (per-tensor scales are
 * spread over the rows, which is exact) or per block (DeepSeek's weight_block_size). Embeddings,
 * lm_head, norms and biases stay as cuda_weights.c loads them.
 *
 * Products (the planner chooses, cuda_plan_fp8_product): the gemv for one-row steps, or small
 * decode batches off Hopper (sk_fp8_gemv), reads the codes and converts them in registers, with
 * bf16 activations and the scales fused; decode batches of 2 to 128 rows (with per-row scales)
 * take the Hopper weight stream on e4m3 operands (sk_hopper_fp8_gemm), off Hopper past a few
 * rows the tensor-core kernel (sk_fp8_gemm_small: the codes converted to bf16 in registers, bf16
 * activations, 64 rows a launch, the weights read once for all of them); prefill-sized batches
 * run cuBLASLt's FP8 GEMM (A = weights transposed, B = activations: the "TN" layout FP8
 * needs) with the row and token scales inside it (outer-vector scaling) or, where this
 * cuBLASLt lacks that, applied to its output by sk_fp8_scale_output; where cuBLASLt cannot take
 * a product at all (block scales, shapes not multiples of 16, no algorithm, a failed self-test)
 * the gemv takes more rows and beyond them the weights are dequantized to a bf16 scratch matrix
 * for cuBLAS. Each cuBLASLt configuration is tried on a small product at creation before it is
 * used (lt_selftest). The stream and cuBLASLt read the activations as e4m3 codes with a scale
 * per token: the kernel that writes them quantizes them where it can (cuda_fp8_codes_for: the
 * norms, SwiGLU; the product is then told x_coded), else the product runs sk_fp8_quantize_rows.
 *
 * A mixture-of-experts layer has only its attention's two products here; its experts are
 * cuda_moe.c's, which keeps FP8 ones in e4m3 too (cuda_fp8_put_rows, sk_moe_gemm_fp8). */
#include <cublasLt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/sk_fp8.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/fp8.h"

/* cuBLASLt runs prefill in slices of this many rows, so its bf16 output scratch stays small. */
#define LT_SLICE_ROWS 1024
#define LT_CACHE 64
/* A decode product brings at most this much of the next product's weights into L2 at its end
 * (kernels/prefetch_l2.cuh): about what the memory moves while the small kernels between two
 * products run, and a third of an H100's L2. An estimate to tune (fp8_prefetch=0 turns it off). */
#define PREFETCH_BYTES ((size_t)16 << 20)

struct fp8_matrix {
    uint8_t *q;
    float *scale;
    int rows, cols;
};

struct lt_algo {
    int rows, n_out, k_in;
    cublasLtMatmulAlgo_t algo;
};

struct cuda_fp8 {
    struct fp8_matrix (*layers)[CUDA_FP8_MATRICES];
    int n_layers;
    int scale_rows, scale_cols; /* the GPU layout: 1 and 0 (each matrix's cols) per row, else blocks */
    cublasLtHandle_t lt;
    cudaDataType_t lt_out;      /* CUDA_R_32F, or CUDA_R_16BF where the device has no fp32 output */
    bool lt_outer;              /* cuBLASLt applies the scales (outer vectors), no kernel after it */
    uint8_t *xq;                /* activations as e4m3, max_batch_tokens x the widest k_in */
    float *xs;                  /* their scales, one per token */
    uint16_t *lt_acc;           /* bf16 output of one slice (lt_out bf16) */
    uint16_t *deq;              /* dequantized weights of one matrix (where DEQUANT may be planned) */
    struct lt_algo algos[LT_CACHE];
    int n_algos, next_algo;
};

static bool is_fp8(enum dtype d)
{
    return d == DTYPE_F8_E4M3 || d == DTYPE_F8_E5M2;
}

static int alloc_counted(struct cuda_backend *b, void **p, size_t bytes)
{
    int rc = 0;
    CUDA_CHECK(b, cudaMalloc(p, bytes ? bytes : 16));
    b->w.bytes += bytes;
fail:
    return rc;
}

/* The tensors of each product, in the order their rows are stacked; none for a sparse layer's
 * MLP (its experts are cuda_moe.c's). */
static int parts_of(const struct layer_weights *L, enum cuda_fp8_matrix which, const struct tensor **out)
{
    if (L->moe && (which == CUDA_FP8_GATE_UP || which == CUDA_FP8_DOWN)) return 0;
    switch (which) {
    case CUDA_FP8_QKV: out[0] = &L->wq, out[1] = &L->wk, out[2] = &L->wv; return 3;
    case CUDA_FP8_O: out[0] = &L->wo; return 1;
    case CUDA_FP8_GATE_UP: out[0] = &L->w_gate, out[1] = &L->w_up; return 2;
    default: out[0] = &L->w_down; return 1;
    }
}

/* Whether every layer matrix is e4m3 with scales the GPU layout takes: per row (or per tensor)
 * everywhere, or the same blocks everywhere with every stacked part a whole number of block rows
 * and blocks of whole 16-weight loads. Sets *blocks, *br, *bc; else says why in why. */
static bool layout_fits(const struct model *m, bool *blocks, int64_t *br, int64_t *bc, char *why, size_t whylen)
{
    bool first = true;
    *blocks = false;
    *br = 1, *bc = 0;
    for (int l = 0; l < m->config.n_layers; l++) {
        for (int w = 0; w < CUDA_FP8_MATRICES; w++) {
            const struct tensor *parts[3];
            const int n = parts_of(&m->layers[l], (enum cuda_fp8_matrix)w, parts);
            for (int i = 0; i < n; i++) {
                const struct tensor *t = parts[i];
                if (t->dtype != DTYPE_F8_E4M3) {
                    snprintf(why, whylen, "layer %d has a %s matrix", l, dtype_name(t->dtype));
                    return false;
                }
                /* Per tensor, per row and dummy (per row) all become a scale per row. */
                const bool row = cuda_plan_fp8_row_scales(t);
                if (first) {
                    *blocks = !row;
                    if (!row) *br = t->scale_rows, *bc = t->scale_cols;
                    first = false;
                } else if (row == *blocks || (!row && (t->scale_rows != *br || t->scale_cols != *bc))) {
                    snprintf(why, whylen, "layer %d mixes scale layouts", l);
                    return false;
                }
                if (!row && (t->shape[0] % t->scale_rows || t->scale_cols % 16)) {
                    snprintf(why, whylen, "blocks of %lld x %lld do not tile layer %d's %lld rows in 16-weight loads",
                             (long long)t->scale_rows, (long long)t->scale_cols, l, (long long)t->shape[0]);
                    return false;
                }
            }
        }
    }
    return true;
}

static void lt_free_descs(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                          cublasLtMatrixLayout_t ld, cublasLtMatmulPreference_t pref)
{
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
}

/* Row-major y[rows, n_out] = x[rows, k_in] w[n_out, k_in]^T is column-major y^T = op(A) B with A =
 * w as a [k_in, n_out] column-major matrix, transposed (op T), and B = x as [k_in, rows]: the TN
 * layout FP8 products need. Makes the descriptors; with algo NULL only asks for an algorithm. */
static cublasStatus_t lt_run(struct cuda_backend *b, struct cuda_fp8 *f, cudaDataType_t out, const uint8_t *w,
                             const uint8_t *x, void *y, int rows, int n_out, int k_in, const float *w_scale,
                             const float *x_scale, cublasLtMatmulAlgo_t *algo, bool run)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const size_t ws_bytes = CUBLAS_WS_BYTES;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (f->lt_outer) {
        /* Element (i, j) of op(A) B times A's scale i (the weight row's) and B's scale j (the
         * token's): exactly the per-row and per-token scales, inside the GEMM. */
        const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode);
        if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode);
        if (!s && run)
            s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof w_scale);
        if (!s && run)
            s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof x_scale);
    }
    if (!s) s = cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, (uint64_t)k_in, (uint64_t)n_out, k_in);
    if (!s) s = cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, (uint64_t)k_in, (uint64_t)rows, k_in);
    if (!s) s = cublasLtMatrixLayoutCreate(&ld, out, (uint64_t)n_out, (uint64_t)rows, n_out);
    if (!run) {
        if (!s) s = cublasLtMatmulPreferenceCreate(&pref);
        if (!s)
            s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                     sizeof ws_bytes);
        cublasLtMatmulHeuristicResult_t h;
        int found = 0;
        if (!s) s = cublasLtMatmulAlgoGetHeuristic(f->lt, op, la, lb, ld, ld, pref, 1, &h, &found);
        if (!s && found < 1) s = CUBLAS_STATUS_NOT_SUPPORTED;
        if (!s) *algo = h.algo;
    } else if (!s) {
        s = cublasLtMatmul(f->lt, op, &one, w, la, x, lb, &zero, y, ld, y, ld, algo, b->gemm.cublas_ws, ws_bytes,
                           b->stream);
    }
    lt_free_descs(op, la, lb, ld, pref);
    return s;
}

/* The algorithm for a shape, asked for once. */
static cublasStatus_t lt_algo_for(struct cuda_backend *b, struct cuda_fp8 *f, int rows, int n_out, int k_in,
                                  cublasLtMatmulAlgo_t **out)
{
    for (int i = 0; i < f->n_algos; i++) {
        struct lt_algo *a = &f->algos[i];
        if (a->rows == rows && a->n_out == n_out && a->k_in == k_in) {
            *out = &a->algo;
            return CUBLAS_STATUS_SUCCESS;
        }
    }
    const int slot = f->n_algos < LT_CACHE ? f->n_algos++ : (f->next_algo++ % LT_CACHE);
    struct lt_algo *a = &f->algos[slot];
    a->rows = -1;
    cublasStatus_t s = lt_run(b, f, f->lt_out, NULL, NULL, NULL, rows, n_out, k_in, NULL, NULL, &a->algo, false);
    if (s) return s;
    a->rows = rows, a->n_out = n_out, a->k_in = k_in;
    *out = &a->algo;
    return s;
}

static int lt_product(struct cuda_backend *b, const struct fp8_matrix *w, const uint16_t *x, bool x_coded, float *y,
                      int rows, int n_out, int k_in);

/* One small product through lt_product as configured, checked on the host: cuBLASLt may offer an
 * algorithm for a combination it then refuses to run, and a scale applied along the wrong side
 * would go unnoticed by any status. Weights all 1 with row i's scale i + 1, activations of token j
 * all j + 1 (so its e4m3 scale is (j + 1) / 448): y[j][i] = 128 (i + 1) (j + 1), up to the
 * scales' rounding (and bf16's, with bf16 output). */
static bool lt_selftest(struct cuda_backend *b, struct cuda_fp8 *f)
{
    enum { R = 16, N = 64, K = 128 };
    uint8_t wq[N * K];
    float ws[N], y[R * N];
    uint16_t x[R * K];
    memset(wq, 0x38, sizeof wq); /* e4m3 1.0 */
    for (int i = 0; i < N; i++) ws[i] = (float)(i + 1);
    for (int j = 0; j < R; j++) {
        const float v = (float)(j + 1);
        uint32_t u;
        memcpy(&u, &v, 4);
        for (int k = 0; k < K; k++) x[j * K + k] = (uint16_t)(u >> 16); /* small integers: exact in bf16 */
    }
    struct fp8_matrix w = {0};
    uint8_t *xq = f->xq;
    float *xs = f->xs, *dy = NULL;
    uint16_t *acc = f->lt_acc, *dx = NULL;
    bool ok = false;
    /* lt_product reads the activation buffers from f: small ones of the test's own meanwhile. */
    f->xq = NULL, f->xs = NULL, f->lt_acc = NULL;
    if (cudaMalloc((void **)&w.q, sizeof wq) || cudaMalloc((void **)&w.scale, sizeof ws) ||
        cudaMalloc((void **)&dx, sizeof x) || cudaMalloc((void **)&dy, sizeof y) ||
        cudaMalloc((void **)&f->xq, R * K) || cudaMalloc((void **)&f->xs, R * sizeof(float)) ||
        cudaMalloc((void **)&f->lt_acc, R * N * 2))
        goto out;
    w.rows = N, w.cols = K;
    if (cudaMemcpy(w.q, wq, sizeof wq, cudaMemcpyHostToDevice) ||
        cudaMemcpy(w.scale, ws, sizeof ws, cudaMemcpyHostToDevice) || cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice))
        goto out;
    if (lt_product(b, &w, dx, false, dy, R, N, K) < 0 || cudaStreamSynchronize(b->stream) ||
        cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost))
        goto out;
    ok = true;
    for (int j = 0; j < R; j++)
        for (int i = 0; i < N; i++) {
            const float want = (float)(K * (i + 1) * (j + 1));
            if (!(fabsf(y[j * N + i] - want) <= 1e-2f * want)) {
                if (ok)
                    log_warn("cuda: cuBLASLt FP8 self-test (%s out, scales %s): y[%d][%d] = %g, expected %g",
                             f->lt_out == CUDA_R_32F ? "fp32" : "bf16", f->lt_outer ? "inside" : "after", j, i,
                             (double)y[j * N + i], (double)want);
                ok = false;
            }
        }
out:
    if (!ok) {
        (void)cudaGetLastError();
        b->base.error[0] = '\0';
    }
    cudaFree(w.q), cudaFree(w.scale), cudaFree(dx), cudaFree(dy);
    cudaFree(f->xq), cudaFree(f->xs), cudaFree(f->lt_acc);
    f->xq = xq, f->xs = xs, f->lt_acc = acc;
    return ok;
}

/* Whether cuBLASLt has FP8 algorithms for every product's shape it could take (multiples of 16)
 * at a few batch sizes, with output dtype out, and computes a small product right so. */
static bool lt_probe(struct cuda_backend *b, struct cuda_fp8 *f, bool outer, cudaDataType_t out,
                     const int (*shapes)[2], int n_shapes)
{
    const int sizes[] = {CUDA_FP8_MMA_ROWS + 1, 256, LT_SLICE_ROWS};
    f->lt_outer = outer;
    f->lt_out = out;
    f->n_algos = 0;
    for (int s = 0; s < n_shapes; s++) {
        if (shapes[s][0] % 16 || shapes[s][1] % 16) continue; /* the planner keeps these off cuBLASLt */
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            cublasLtMatmulAlgo_t *a;
            if (lt_algo_for(b, f, sizes[i], shapes[s][0], shapes[s][1], &a)) return false;
        }
    }
    return lt_selftest(b, f);
}

/* The planner's kernels for a product of n_out x k_in by rows, 1 to max_rows, as ranges ("1-4
 * gemv, 5-128 Hopper stream, ..."), for the log. */
static void describe_plan(const struct cuda_plan_config *c, int n_out, int k_in, int max_rows, char *out, size_t len)
{
    static const char *const names[] = {
        [CUDA_PRODUCT_FP8_GEMV] = "gemv",
        [CUDA_PRODUCT_FP8_MMA] = "tensor-core kernel",
        [CUDA_PRODUCT_FP8_HOPPER] = "Hopper stream (e4m3 wgmma)",
        [CUDA_PRODUCT_FP8_LT] = "cuBLASLt FP8 GEMM",
        [CUDA_PRODUCT_FP8_DEQUANT] = "dequantized to bf16 for cuBLAS",
    };
    size_t at = 0;
    out[0] = 0;
    for (int r0 = 1; r0 <= max_rows && at < len;) {
        const enum cuda_product k = cuda_plan_fp8_product(c, r0, n_out, k_in).kernel;
        int r1 = r0;
        while (r1 < max_rows && cuda_plan_fp8_product(c, r1 + 1, n_out, k_in).kernel == k) r1++;
        const char *name = (size_t)k < sizeof names / sizeof names[0] && names[k] ? names[k] : "?";
        at += (size_t)snprintf(out + at, len - at, "%s%d-%d %s", r0 > 1 ? ", " : "", r0, r1, name);
        r0 = r1 + 1;
    }
}

int cuda_fp8_init(struct cuda_backend *b, const struct model *m)
{
    const struct model_config *c = &m->config;
    int rc = 0;
    bool any = false;
    for (int l = 0; l < c->n_layers && !any; l++)
        any = is_fp8(m->layers[l].wq.dtype) || is_fp8(m->layers[l].w_down.dtype);
    if (!any) return 0;
    bool blocks;
    int64_t br, bc;
    char why[256];
    if (!layout_fits(m, &blocks, &br, &bc, why, sizeof why)) {
        log_warn("cuda: FP8 weights dequantized to bf16 at load: %s", why);
        return 0;
    }
    struct cuda_fp8 *f = calloc(1, sizeof *f);
    if (!f) CUDA_FAIL(b, "cuda: out of host memory");
    b->fp8 = f;
    f->n_layers = c->n_layers;
    f->layers = calloc((size_t)c->n_layers, sizeof *f->layers);
    if (!f->layers) CUDA_FAIL(b, "cuda: out of host memory");
    f->scale_rows = (int)br, f->scale_cols = (int)bc;
    const int H = c->hidden_size, qd = c->n_heads * c->head_dim;
    const int qkvd = qd + 2 * c->n_kv_heads * c->head_dim;
    /* intermediate_size is the dense MLP's: only where some layer has one (a model whose every
     * layer is sparse has no FP8 MLP product here, and its shape would only constrain these). */
    bool dense_mlp = false;
    for (int l = 0; l < c->n_layers; l++) dense_mlp = dense_mlp || !m->layers[l].moe;
    const int I = dense_mlp ? c->intermediate_size : 0, n_shapes = dense_mlp ? 4 : 2;
    const int shapes[4][2] = {{qkvd, H}, {H, qd}, {2 * I, H}, {H, I}};
    CUBLAS_CHECK(b, cublasLtCreate(&f->lt));
    /* The scales inside the GEMM where this cuBLASLt and device have that (outer-vector scaling),
     * else a kernel after it; fp32 output where there is, else bf16. */
    bool lt = !blocks && !b->opt.no_fp8_lt &&
              ((!b->opt.no_fp8_outer && lt_probe(b, f, true, CUDA_R_32F, shapes, n_shapes)) ||
               lt_probe(b, f, false, CUDA_R_32F, shapes, n_shapes) ||
               lt_probe(b, f, false, CUDA_R_16BF, shapes, n_shapes));
    cuda_plan_config_fp8(&b->plan, blocks, lt);
    if (b->plan.deterministic && (H % 16 || qd % 16 || I % 16))
        CUDA_FAIL(b, "cuda: --deterministic with FP8 weights needs hidden_size, heads x head_dim and "
                     "intermediate_size divisible by 16 (the FP8 gemv's loads); this model has %d, %d, %d", H, qd,
                  c->intermediate_size);

    const int T = b->base.max_batch_tokens;
    int kmax = H > qd ? H : qd, nmax = 0;
    if (I > kmax) kmax = I;
    size_t deq = 0;
    for (int s = 0; s < n_shapes; s++) {
        const int n_out = shapes[s][0], k_in = shapes[s][1];
        if (n_out > nmax) nmax = n_out;
        const int probe[2] = {1, T};
        for (int i = 0; i < 2; i++)
            if (cuda_plan_fp8_product(&b->plan, probe[i], n_out, k_in).kernel == CUDA_PRODUCT_FP8_DEQUANT &&
                (size_t)n_out * k_in > deq)
                deq = (size_t)n_out * k_in;
    }
    /* The activations quantized per token, for cuBLASLt and the Hopper weight stream. */
    if (lt || (b->plan.fp8_hopper && !blocks)) {
        if ((rc = alloc_counted(b, (void **)&f->xq, (size_t)T * kmax)) < 0) goto fail;
        if ((rc = alloc_counted(b, (void **)&f->xs, (size_t)T * sizeof(float))) < 0) goto fail;
    }
    if (lt) {
        if (f->lt_out == CUDA_R_16BF &&
            (rc = alloc_counted(b, (void **)&f->lt_acc, (size_t)LT_SLICE_ROWS * nmax * 2)) < 0)
            goto fail;
    }
    if (deq && (rc = alloc_counted(b, (void **)&f->deq, deq * 2)) < 0) goto fail;
    /* The plan by rows for each product (they differ by shape: each kernel's conditions on n_out
     * and k_in). */
    static const char *const shape_names[4] = {"qkv", "o", "gate/up", "down"};
    char plan[1024];
    size_t at = 0;
    for (int s = 0; s < n_shapes && at < sizeof plan; s++) {
        at += (size_t)snprintf(plan + at, sizeof plan - at, "%s%s ", s ? "; " : "", shape_names[s]);
        if (at < sizeof plan) describe_plan(&b->plan, shapes[s][0], shapes[s][1], T, plan + at, sizeof plan - at);
        at += strlen(plan + at);
    }
    log_info("cuda: FP8 weights (e4m3, scales per %s), products by rows: %s%s%s", blocks ? "block" : "row", plan,
             lt ? (f->lt_out == CUDA_R_32F ? "; cuBLASLt with fp32 out, " : "; cuBLASLt with bf16 out, ") : "",
             lt ? (f->lt_outer ? "scales inside it" : "scales by a kernel after it") : "");
fail:
    return rc;
}

int cuda_fp8_put_rows(struct cuda_backend *b, uint8_t *q, float *scale, const struct tensor *t, uint64_t seed)
{
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const size_t elems = (size_t)rows * (size_t)cols;
    int rc = 0;
    float *host = NULL;
    if (!cuda_plan_fp8_row_scales(t))
        CUDA_FAIL(b, "cuda: an FP8 matrix of %lld x %lld has no scale per row (%s, scales per %lld x %lld)",
                  (long long)rows, (long long)cols, dtype_name(t->dtype), (long long)t->scale_rows,
                  (long long)t->scale_cols);
    if (!t->data) {
        /* Dummy weights: the bf16 values every backend fills, quantized per row on the device as
         * fp8_range_to_f32 does on the host. The next dummy matrix reuses the fill buffer in
         * stream order; growing it frees the old one with cudaFree, which waits for the device. */
        if (b->w.fp8_fill_elems < elems) {
            cudaFree(b->w.fp8_fill);
            b->w.fp8_fill = NULL, b->w.fp8_fill_elems = 0;
            CUDA_CHECK(b, cudaMalloc((void **)&b->w.fp8_fill, elems * 2));
            b->w.fp8_fill_elems = elems;
        }
        CUDA_CHECK(b, sk_fill_dummy_bf16(b->w.fp8_fill, seed, t->dummy_id, 0, (int64_t)elems, 0, b->stream));
        CUDA_CHECK(b, sk_fp8_quantize_rows(q, scale, b->w.fp8_fill, (int)rows, (int)cols, b->stream));
    } else {
        CUDA_CHECK(b, cudaMemcpy(q, t->data, elems, cudaMemcpyHostToDevice));
        host = malloc((size_t)rows * sizeof *host);
        if (!host) CUDA_FAIL(b, "cuda: out of host memory");
        /* Per tensor or per row: a scale for each row. */
        for (int64_t r = 0; r < rows; r++) host[r] = t->scale[t->scale_rows == 1 ? r : 0];
        CUDA_CHECK(b, cudaMemcpy(scale, host, (size_t)rows * sizeof *host, cudaMemcpyHostToDevice));
    }
fail:
    free(host);
    return rc;
}

/* Part t's codes and block scales at rows r0 .. r0 + its rows of the stacked matrix. */
static int put_blocks(struct cuda_backend *b, struct fp8_matrix *dst, const struct tensor *t, int r0)
{
    struct cuda_fp8 *f = b->fp8;
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const int64_t per_row = (cols + f->scale_cols - 1) / f->scale_cols, n = rows / f->scale_rows * per_row;
    int rc = 0;
    if (!t->data) CUDA_FAIL(b, "cuda: dummy FP8 weights among block-scaled ones");
    CUDA_CHECK(b, cudaMemcpy(dst->q + (size_t)r0 * cols, t->data, (size_t)(rows * cols), cudaMemcpyHostToDevice));
    CUDA_CHECK(b, cudaMemcpy(dst->scale + (size_t)(r0 / f->scale_rows) * per_row, t->scale, (size_t)n * sizeof(float),
                             cudaMemcpyHostToDevice));
fail:
    return rc;
}

int cuda_fp8_load_layer(struct cuda_backend *b, const struct model *m, int l)
{
    struct cuda_fp8 *f = b->fp8;
    int rc = 0;
    for (int w = 0; w < CUDA_FP8_MATRICES; w++) {
        const struct tensor *parts[3];
        const int n = parts_of(&m->layers[l], (enum cuda_fp8_matrix)w, parts);
        if (n == 0) continue;
        struct fp8_matrix *d = &f->layers[l][w];
        d->cols = (int)parts[0]->shape[1];
        d->rows = 0;
        for (int i = 0; i < n; i++) d->rows += (int)parts[i]->shape[0];
        const size_t n_scales = f->scale_rows == 1 ? (size_t)d->rows
                                                   : (size_t)(d->rows / f->scale_rows) *
                                                         (size_t)((d->cols + f->scale_cols - 1) / f->scale_cols);
        if ((rc = alloc_counted(b, (void **)&d->q, (size_t)d->rows * d->cols)) < 0) goto fail;
        if ((rc = alloc_counted(b, (void **)&d->scale, n_scales * sizeof(float))) < 0) goto fail;
        int r0 = 0;
        for (int i = 0; i < n; i++) {
            const struct tensor *t = parts[i];
            if (t->shape[1] != d->cols) CUDA_FAIL(b, "cuda: layer %d: stacked FP8 matrices differ in width", l);
            if (f->scale_rows == 1)
                rc = cuda_fp8_put_rows(b, d->q + (size_t)r0 * d->cols, d->scale + r0, t, m->dummy_seed);
            else
                rc = put_blocks(b, d, t, r0);
            if (rc < 0) goto fail;
            r0 += (int)t->shape[0];
        }
    }
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

void cuda_fp8_load_done(struct cuda_backend *b)
{
    cudaFree(b->w.fp8_fill);
    b->w.fp8_fill = NULL;
    b->w.fp8_fill_elems = 0;
}

struct cuda_fp8_codes cuda_fp8_codes_for(const struct cuda_backend *b, struct cuda_product_plan p)
{
    const bool reads_codes = p.kernel == CUDA_PRODUCT_FP8_HOPPER || p.kernel == CUDA_PRODUCT_FP8_LT;
    if (!b->fp8 || !b->fp8->xq || !reads_codes) return (struct cuda_fp8_codes){0};
    return (struct cuda_fp8_codes){.q = b->fp8->xq, .scale = b->fp8->xs};
}

static int lt_product(struct cuda_backend *b, const struct fp8_matrix *w, const uint16_t *x, bool x_coded, float *y,
                      int rows, int n_out, int k_in)
{
    struct cuda_fp8 *f = b->fp8;
    int rc = 0;
    if (!x_coded) CUDA_CHECK(b, sk_fp8_quantize_rows(f->xq, f->xs, x, rows, k_in, b->stream));
    for (int r0 = 0; r0 < rows; r0 += LT_SLICE_ROWS) {
        const int n = rows - r0 < LT_SLICE_ROWS ? rows - r0 : LT_SLICE_ROWS;
        float *ys = y + (size_t)r0 * n_out;
        void *acc = f->lt_out == CUDA_R_32F ? (void *)ys : (void *)f->lt_acc;
        cublasLtMatmulAlgo_t *algo;
        CUBLAS_CHECK(b, lt_algo_for(b, f, n, n_out, k_in, &algo));
        CUBLAS_CHECK(b, lt_run(b, f, f->lt_out, w->q, f->xq + (size_t)r0 * k_in, acc, n, n_out, k_in, w->scale,
                               f->xs + r0, algo, true));
        if (!f->lt_outer)
            CUDA_CHECK(b, sk_fp8_scale_output(ys, acc, f->lt_out == CUDA_R_16BF, f->xs + r0, w->scale, n, n_out,
                                              b->stream));
    }
fail:
    return rc;
}

int cuda_fp8_product(struct cuda_backend *b, struct cuda_product_plan p, int layer, enum cuda_fp8_matrix which,
                     const uint16_t *x, bool x_coded, float *y, int rows, int n_out, int k_in)
{
    struct cuda_fp8 *f = b->fp8;
    int rc = 0;
    const struct fp8_matrix *w = &f->layers[layer][which];
    if (w->rows != n_out || w->cols != k_in)
        CUDA_FAIL(b, "cuda: FP8 product %d of layer %d is [%d, %d], the step asked for [%d, %d]", (int)which, layer,
                  w->rows, w->cols, n_out, k_in);
    const int sr = f->scale_rows, sc = f->scale_rows == 1 ? k_in : f->scale_cols;
    /* The layer's next product (the next layer's qkv after down; none after the last layer). */
    const void *pf = NULL;
    size_t pf_bytes = 0;
    if (!b->opt.no_fp8_prefetch && (which != CUDA_FP8_DOWN || layer + 1 < f->n_layers)) {
        const struct fp8_matrix *nx = which == CUDA_FP8_DOWN ? &f->layers[layer + 1][CUDA_FP8_QKV]
                                                             : &f->layers[layer][which + 1];
        pf = nx->q;
        pf_bytes = (size_t)nx->rows * nx->cols;
        if (pf_bytes > PREFETCH_BYTES) pf_bytes = PREFETCH_BYTES;
    }
    switch (p.kernel) {
    case CUDA_PRODUCT_FP8_GEMV:
        for (int r0 = 0; r0 < rows; r0 += SK_FP8_GEMV_MAX_ROWS) {
            const int n = rows - r0 < SK_FP8_GEMV_MAX_ROWS ? rows - r0 : SK_FP8_GEMV_MAX_ROWS;
            const bool last = r0 + n >= rows;
            CUDA_CHECK(b, sk_fp8_gemv(w->q, w->scale, sr, sc, x + (size_t)r0 * k_in, y + (size_t)r0 * n_out, n, n_out,
                                      k_in, last ? pf : NULL, last ? pf_bytes : 0, b->stream));
        }
        break;
    case CUDA_PRODUCT_FP8_MMA:
        if (f->scale_rows != 1) CUDA_FAIL(b, "cuda: FP8 tensor-core product planned for block scales");
        for (int r0 = 0; r0 < rows; r0 += SK_FP8_GEMM_SMALL_MAX_ROWS) {
            const int n = rows - r0 < SK_FP8_GEMM_SMALL_MAX_ROWS ? rows - r0 : SK_FP8_GEMM_SMALL_MAX_ROWS;
            const bool last = r0 + n >= rows;
            CUDA_CHECK(b, sk_fp8_gemm_small(w->q, w->scale, x + (size_t)r0 * k_in, y + (size_t)r0 * n_out, n, n_out,
                                            k_in, last ? pf : NULL, last ? pf_bytes : 0, b->stream));
        }
        break;
    case CUDA_PRODUCT_FP8_HOPPER:
        if (f->scale_rows != 1 || !b->gemm.hopper) CUDA_FAIL(b, "cuda: FP8 Hopper product planned without its kernel");
        if (!x_coded) CUDA_CHECK(b, sk_fp8_quantize_rows(f->xq, f->xs, x, rows, k_in, b->stream));
        CUDA_CHECK(b, sk_hopper_fp8_gemm(b->gemm.hopper, w->q, w->scale, f->xq, f->xs, y, rows, n_out, k_in, 0,
                                         b->stream));
        break;
    case CUDA_PRODUCT_FP8_LT: return lt_product(b, w, x, x_coded, y, rows, n_out, k_in);
    case CUDA_PRODUCT_FP8_DEQUANT:
        if (!f->deq) CUDA_FAIL(b, "cuda: FP8 product planned dequantized with no scratch for it");
        CUDA_CHECK(b, sk_fp8_dequant_bf16(f->deq, w->q, w->scale, sr, sc, n_out, k_in, b->stream));
        return cuda_product(b, (struct cuda_product_plan){.kernel = CUDA_PRODUCT_CUBLAS}, f->deq, x, y, rows, n_out,
                            k_in, NULL);
    default: CUDA_FAIL(b, "cuda: product kernel %d is not an FP8 one", (int)p.kernel);
    }
fail:
    return rc;
}

int cuda_fp8_put_bf16(struct cuda_backend *b, uint16_t *dst, const struct tensor *t, uint64_t seed)
{
    const int64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = t->ndim == 2 ? t->shape[1] : tensor_numel(t);
    const size_t numel = (size_t)(rows * cols);
    int rc = 0;
    uint8_t *q = NULL;
    float *s = NULL, *host = NULL;
    uint16_t *bits = NULL;
    if (t->dtype == DTYPE_F8_E4M3) {
        /* On the device: the codes and scales up (or a dummy's bf16 values quantized per row, as
         * every backend does), then the dequantization kernel into dst. */
        const int sr = t->data ? (int)t->scale_rows : 1, sc = t->data ? (int)t->scale_cols : (int)cols;
        const size_t n_scales = (size_t)((rows + sr - 1) / sr) * (size_t)((cols + sc - 1) / sc);
        CUDA_CHECK(b, cudaMalloc((void **)&q, numel));
        CUDA_CHECK(b, cudaMalloc((void **)&s, n_scales * sizeof(float)));
        if (t->data) {
            CUDA_CHECK(b, cudaMemcpy(q, t->data, numel, cudaMemcpyHostToDevice));
            CUDA_CHECK(b, cudaMemcpy(s, t->scale, n_scales * sizeof(float), cudaMemcpyHostToDevice));
        } else {
            CUDA_CHECK(b, sk_fill_dummy_bf16(dst, seed, t->dummy_id, 0, (int64_t)numel, 0, b->stream));
            CUDA_CHECK(b, sk_fp8_quantize_rows(q, s, dst, (int)rows, (int)cols, b->stream));
        }
        CUDA_CHECK(b, sk_fp8_dequant_bf16(dst, q, s, sr, sc, (int)rows, (int)cols, b->stream));
        CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
    } else {
        /* E5M2: on the host, a row at a time, rounded to bf16 as the device would. */
        host = malloc((size_t)cols * sizeof *host);
        bits = malloc((size_t)cols * sizeof *bits);
        if (!host || !bits) CUDA_FAIL(b, "cuda: out of host memory for an FP8 tensor");
        for (int64_t r = 0; r < rows; r++) {
            tensor_range_to_f32(t, seed, false, r * cols, (r + 1) * cols, host);
            for (int64_t c = 0; c < cols; c++) {
                uint32_t u;
                const float v = fp8_round_bf16(host[c]);
                memcpy(&u, &v, 4);
                bits[c] = (uint16_t)(u >> 16);
            }
            CUDA_CHECK(b, cudaMemcpy(dst + r * cols, bits, (size_t)cols * 2, cudaMemcpyHostToDevice));
        }
    }
fail:
    if (q) cudaFree(q);
    if (s) cudaFree(s);
    free(host);
    free(bits);
    return rc;
}

void cuda_fp8_free(struct cuda_backend *b)
{
    struct cuda_fp8 *f = b->fp8;
    if (!f) return;
    if (f->layers) {
        for (int l = 0; l < f->n_layers; l++) {
            for (int w = 0; w < CUDA_FP8_MATRICES; w++) {
                cudaFree(f->layers[l][w].q);
                cudaFree(f->layers[l][w].scale);
            }
        }
        free(f->layers);
    }
    cudaFree(f->xq);
    cudaFree(f->xs);
    cudaFree(f->lt_acc);
    cudaFree(f->deq);
    if (f->lt) cublasLtDestroy(f->lt);
    free(f);
    b->fp8 = NULL;
}
