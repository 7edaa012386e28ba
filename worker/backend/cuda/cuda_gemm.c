/* The backend's matrix products. One-row products go to the own gemv kernel, others to
 * cublasGemmEx's default algorithm. With SLUICE_CUDA_LT=1 the products of decode steps (up to
 * GEMM_TUNE_MAX_ROWS rows) go through cublasLt instead, with an algorithm picked by timing
 * cublasLt's best few candidates the first time a shape is seen, each over all the layers'
 * matrices of that shape so that the weights come from memory as in a step. Measured on an H200
 * (Llama-3-8B shapes, 64 rows) the best candidate was within a few percent of the default, and
 * whole steps were slower, hence off by default. A shape first met while a CUDA graph is being
 * captured takes cublasLt's first candidate untimed; cuda_forward runs a new graph shape once
 * eagerly before capturing it (when this path is on), so every captured product is tuned. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"

#define GEMM_TUNE_MAX_ROWS 256
#define GEMM_CANDIDATES 8
#define GEMM_TUNE_REPS 3
#define GEMM_TUNE_WEIGHTS 32

struct cuda_gemm_plan {
    int rows, n_out, k_in;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    bool tuned;
};

static void plan_free(struct cuda_gemm_plan *p)
{
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof *p);
}

void cuda_gemm_plans_free(struct cuda_backend *b)
{
    for (int i = 0; i < b->n_plans; i++) plan_free(&b->plans[i]);
    free(b->plans);
    b->plans = NULL;
    b->n_plans = 0;
    if (b->lt) cublasLtDestroy(b->lt);
    b->lt = NULL;
    if (b->skinny_ws) cudaFree(b->skinny_ws);
    if (b->skinny_cnt) cudaFree(b->skinny_cnt);
    b->skinny_ws = NULL;
    b->skinny_cnt = NULL;
    sk_hopper_gemm_destroy(b->hopper);
    b->hopper = NULL;
}

static int run_plan(struct cuda_backend *b, const struct cuda_gemm_plan *p, const cublasLtMatmulAlgo_t *algo,
                    const uint16_t *w, const uint16_t *x, float *y)
{
    int rc = 0;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(b, cublasLtMatmul(b->lt, p->desc, &one, w, p->la, x, p->lb, &zero, y, p->lc, y, p->lc, algo,
                                   b->cublas_ws, CUBLAS_WS_BYTES, b->stream));
fail:
    return rc;
}

/* The weight matrices of shape [n_out, k_in] (the same product in every layer), w first: timing a
 * candidate over all of them reads each from memory, as a step does, not from the L2 cache. */
static int same_shape_weights(const struct cuda_backend *b, const uint16_t *w, int n_out, int k_in,
                              const uint16_t **out)
{
    const struct model_config *c = &b->base.config;
    const int H = c->hidden_size, I = c->intermediate_size, qd = c->n_heads * c->head_dim;
    const int qkvd = qd + 2 * c->n_kv_heads * c->head_dim;
    int n = 0;
    out[n++] = w;
    for (int l = 0; l < c->n_layers && b->layers && n < GEMM_TUNE_WEIGHTS; l++) {
        const struct cuda_layer *L = &b->layers[l];
        const uint16_t *m[4] = {L->wqkv, L->wo, L->wgu, L->wd};
        const int dims[4][2] = {{qkvd, H}, {H, qd}, {2 * I, H}, {H, I}};
        for (int i = 0; i < 4 && n < GEMM_TUNE_WEIGHTS; i++)
            if (m[i] && m[i] != w && dims[i][0] == n_out && dims[i][1] == k_in) out[n++] = m[i];
    }
    return n;
}

/* Builds the plan for one shape: descriptors, candidates from cublasLt, and (when the stream is
 * not capturing) the fastest candidate on this data. Returns 1 when the shape must fall back to
 * cublasGemmEx (no candidate). */
static int plan_make(struct cuda_backend *b, struct cuda_gemm_plan *p, const uint16_t *w, const uint16_t *x, float *y,
                     bool capturing)
{
    int rc = 0, n_found = 0;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t cand[GEMM_CANDIDATES];
    cudaEvent_t ev[2] = {NULL, NULL};
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const size_t ws = CUBLAS_WS_BYTES;

    /* Row-major y = x w^T is column-major y^T = w^T(op) x^T: w read as [k_in, n_out] col-major. */
    CUBLAS_CHECK(b, cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(b, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(b, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_CHECK(b, cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, (uint64_t)p->k_in, (uint64_t)p->n_out, p->k_in));
    CUBLAS_CHECK(b, cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, (uint64_t)p->k_in, (uint64_t)p->rows, p->k_in));
    CUBLAS_CHECK(b, cublasLtMatrixLayoutCreate(&p->lc, CUDA_R_32F, (uint64_t)p->n_out, (uint64_t)p->rows, p->n_out));
    CUBLAS_CHECK(b, cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(b,
                 cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_CHECK(b, cublasLtMatmulAlgoGetHeuristic(b->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, GEMM_CANDIDATES,
                                                   cand, &n_found));
    if (n_found < 1) {
        rc = 1;
        goto fail;
    }
    int best = 0;
    if (!capturing && n_found > 1) {
        float best_ms = -1.0f;
        const uint16_t *ws_list[GEMM_TUNE_WEIGHTS];
        const int n_w = same_shape_weights(b, w, p->n_out, p->k_in, ws_list);
        const int reps = n_w > GEMM_TUNE_REPS ? n_w : GEMM_TUNE_REPS;
        CUDA_CHECK(b, cudaEventCreate(&ev[0]));
        CUDA_CHECK(b, cudaEventCreate(&ev[1]));
        for (int i = 0; i < n_found; i++) {
            if (cand[i].state != CUBLAS_STATUS_SUCCESS) continue;
            /* One warm-up, then the timed repetitions; the output is overwritten each time. */
            if (run_plan(b, p, &cand[i].algo, w, x, y) < 0) continue;
            CUDA_CHECK(b, cudaEventRecord(ev[0], b->stream));
            for (int r = 0; r < reps; r++)
                if ((rc = run_plan(b, p, &cand[i].algo, ws_list[r % n_w], x, y)) < 0) goto fail;
            CUDA_CHECK(b, cudaEventRecord(ev[1], b->stream));
            CUDA_CHECK(b, cudaEventSynchronize(ev[1]));
            float ms = 0.0f;
            CUDA_CHECK(b, cudaEventElapsedTime(&ms, ev[0], ev[1]));
            if (best_ms < 0.0f || ms < best_ms) {
                best_ms = ms;
                best = i;
            }
            if (b->gemm_log)
                fprintf(stderr, "cuda gemm %d x %d x %d: candidate %d %.1f us (%.0f GB/s)\n", p->rows, p->n_out,
                        p->k_in, i, 1e3 * ms / reps, (double)p->n_out * p->k_in * 2 * reps / (ms * 1e-3) / 1e9);
        }
        p->tuned = true;
    }
    p->algo = cand[best].algo;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    return rc;
}

static int gemm_lt(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out,
                   int k_in)
{
    int rc = 0;
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CUDA_CHECK(b, cudaStreamIsCapturing(b->stream, &cs));
    const bool capturing = cs != cudaStreamCaptureStatusNone;
    struct cuda_gemm_plan *p = NULL;
    for (int i = 0; i < b->n_plans; i++) {
        struct cuda_gemm_plan *e = &b->plans[i];
        if (e->rows == rows && e->n_out == n_out && e->k_in == k_in) {
            p = e;
            break;
        }
    }
    if (p && !p->tuned && !capturing) {
        /* Made untimed during a capture: time it now. */
        plan_free(p);
        p->rows = rows;
        p->n_out = n_out;
        p->k_in = k_in;
        if ((rc = plan_make(b, p, w, x, y, false)) != 0) goto fail;
    }
    if (!p) {
        if (b->n_plans == CUDA_GEMM_PLANS) return 1;
        p = &b->plans[b->n_plans];
        memset(p, 0, sizeof *p);
        p->rows = rows;
        p->n_out = n_out;
        p->k_in = k_in;
        if ((rc = plan_make(b, p, w, x, y, capturing)) != 0) {
            plan_free(p);
            return rc;
        }
        b->n_plans++;
    }
    rc = run_plan(b, p, &p->algo, w, x, y);
fail:
    return rc;
}

int cuda_gemm_init(struct cuda_backend *b)
{
    int rc = 0;
    const char *lt = getenv("SLUICE_CUDA_LT");
    b->use_lt = lt && !strcmp(lt, "1");
    const char *lg = getenv("SLUICE_CUDA_GEMM_LOG");
    b->gemm_log = lg && !strcmp(lg, "1");
    /* SLUICE_CUDA_SKINNY=1: decode products of 2..64 rows on the own kernel (off by default);
     * SLUICE_CUDA_SKINNY_VARIANT=1..4 picks its tile shape (sk_skinny_gemm_variant). */
    const char *sk = getenv("SLUICE_CUDA_SKINNY"), *skv = getenv("SLUICE_CUDA_SKINNY_VARIANT");
    b->skinny_mode = sk && !strcmp(sk, "1") ? 1 : 0;
    b->skinny_variant = skv && skv[0] >= '1' && skv[0] <= '4' && !skv[1] ? skv[0] - '0' : SK_SKINNY_DEFAULT_VARIANT;
    /* Hopper's own products (kernels/hopper_gemm.cu) unless SLUICE_CUDA_HOPPER=0; elsewhere the
     * handle is refused and cuBLAS takes every product. */
    const char *hop = getenv("SLUICE_CUDA_HOPPER");
    if (!hop || strcmp(hop, "0")) {
        cudaError_t e = sk_hopper_gemm_create(&b->hopper);
        if (e == cudaErrorNotSupported) {
            (void)cudaGetLastError();
            log_debug("cuda: no sm_90a products on this device or build; cuBLAS takes them");
        } else {
            CUDA_CHECK(b, e);
        }
    }
    if (b->skinny_mode) {
        CUDA_CHECK(b, cudaMalloc((void **)&b->skinny_ws, CUDA_SKINNY_WS_FLOATS * sizeof(float)));
        CUDA_CHECK(b, cudaMalloc((void **)&b->skinny_cnt, CUDA_SKINNY_COUNTERS * sizeof(int)));
        CUDA_CHECK(b, cudaMemset(b->skinny_cnt, 0, CUDA_SKINNY_COUNTERS * sizeof(int)));
    }
    if (!b->use_lt) return 0;
    CUBLAS_CHECK(b, cublasLtCreate(&b->lt));
    b->plans = calloc(CUDA_GEMM_PLANS, sizeof *b->plans);
    if (!b->plans) CUDA_FAIL(b, "cuda: out of host memory");
fail:
    return rc;
}

/* Whether the own tensor-core kernel takes this product: only with SLUICE_CUDA_SKINNY=1, since it
 * was slower than cuBLAS at every Llama-3-8B decode shape on an H200 (PERF_NOTES.md). */
static bool skinny_wanted(const struct cuda_backend *b, int rows, int k_in)
{
    return b->skinny_mode > 0 && b->skinny_ws && rows >= 2 && rows <= SK_SKINNY_MAX_ROWS && k_in % 8 == 0;
}

bool cuda_gemm_on_hopper(const struct cuda_backend *b, int rows)
{
    return b->hopper && !b->skinny_mode && rows >= 2 && rows <= CUDA_HOPPER_MAX_ROWS;
}

int cuda_gemm(struct cuda_backend *b, const uint16_t *w, const uint16_t *x, float *y, int rows, int n_out, int k_in)
{
    int rc = 0;
    const float one = 1.0f, zero = 0.0f;
    /* Measured on an H200: the own kernel beats cuBLAS by 5-15% for one row, loses beyond. */
    if (b->use_gemv && rows == 1 && k_in % 8 == 0) {
        CUDA_CHECK(b, sk_gemv(w, x, y, rows, n_out, k_in, b->stream));
        return 0;
    }
    /* At 33-64 rows the narrow products (under ~48M weights: Llama-3-8B's qkv and o) ran 4-14%
     * slower on the Hopper kernel than on cuBLAS (H200); everything else ran as fast or faster. */
    const bool narrow = rows > 32 && (int64_t)n_out * k_in < ((int64_t)48 << 20);
    if (cuda_gemm_on_hopper(b, rows) && k_in % 8 == 0 && !narrow) {
        CUDA_CHECK(b, sk_hopper_gemm(b->hopper, w, x, y, rows, n_out, k_in, 0, b->stream));
        return 0;
    }
    if (skinny_wanted(b, rows, k_in)) {
        const int splits = sk_skinny_splits(rows, n_out, k_in, b->n_sms, CUDA_SKINNY_WS_FLOATS, CUDA_SKINNY_COUNTERS);
        CUDA_CHECK(b, sk_skinny_gemm_variant(w, x, y, rows, n_out, k_in, splits, b->skinny_ws, CUDA_SKINNY_WS_FLOATS,
                                             b->skinny_cnt, CUDA_SKINNY_COUNTERS, b->skinny_variant, b->stream));
        return 0;
    }
    if (b->use_lt && b->decode_step && rows <= GEMM_TUNE_MAX_ROWS) {
        rc = gemm_lt(b, w, x, y, rows, n_out, k_in);
        if (rc <= 0) return rc;
        rc = 0; /* no cublasLt candidate: the general path below */
    }
    /* Row-major y = x w^T is column-major y^T = w^T(op) x^T: w read as [k_in, n_out] col-major. */
    CUBLAS_CHECK(b,
                 cublasGemmEx(b->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, k_in, &one, w, CUDA_R_16BF, k_in, x,
                              CUDA_R_16BF, k_in, &zero, y, CUDA_R_32F, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
fail:
    return rc;
}
