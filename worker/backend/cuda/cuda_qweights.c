/* GGUF block-quantized matrices kept in their blocks on the device (issue 21): uploaded as the file
 * has them, so a quantized model's weights take about the file's size. The planner
 * (cuda_plan_quant) sends each product by its type and rows to the block GEMV
 * (kernels/quant_gemv.cu: dequantizes in registers, reads each weight byte once per 8 rows) for
 * the fewest rows, to the tensor-core kernel (kernels/quant_mma.cu: dequantizes in registers into
 * mma.sync, reads each weight byte once per 64 rows) up to a few hundred, and beyond (prefill) to
 * dequantized tiles of rows in one bf16 scratch buffer, shared by every matrix, with cuBLAS on
 * each tile (cuda_plan_quant_tile_rows). GPTQ and AWQ int4 checkpoints take the same paths: they
 * are Q4_1 blocks by then (worker/model/int4_checkpoint.c). A layer stays in blocks only when all
 * of its seven matrices are of types the kernels take; otherwise cuda_weights.c dequantizes it to
 * bf16 at load, as before (Q2_K, Q3_K, IQ4_NL, IQ4_XS). So do the token embedding (sk_embed_q
 * dequantizes a step's rows) and lm_head. */
#include "common/log.h"
#include "kernels/sk_quant.h"
#include "worker/backend/cuda/cuda_internal.h"

/* Whether t can stay in blocks as a matrix of n_out rows of k_in weights. */
static bool keeps_blocks(const struct tensor *t, int64_t n_out, int64_t k_in)
{
    return t->data && t->ndim == 2 && sk_quant_supported((int)t->dtype) && t->shape[0] == n_out &&
           t->shape[1] == k_in && k_in % dtype_block_elems(t->dtype) == 0 && n_out <= INT32_MAX && k_in <= INT32_MAX;
}

static int upload(struct cuda_backend *b, struct cuda_qmat *m, const struct tensor *t, const char *what)
{
    int rc = 0;
    const size_t bytes = (size_t)t->shape[0] * tensor_row_bytes(t);
    m->dtype = (int)t->dtype;
    m->n_out = (int)t->shape[0];
    m->k_in = (int)t->shape[1];
    CUDA_CHECK(b, cudaMalloc(&m->w, bytes));
    b->w.bytes += bytes;
    b->w.q_bytes += bytes;
    /* Pageable source (the mmap): the copy has ended when this returns. */
    CUDA_CHECK(b, cudaMemcpy(m->w, t->data, bytes, cudaMemcpyHostToDevice));
fail:
    if (rc < 0) log_error("cuda: uploading %s (%s) in its blocks failed", what, dtype_name(t->dtype));
    return rc;
}

int cuda_qlayer_load(struct cuda_backend *b, const struct layer_weights *lw, struct cuda_layer *cl)
{
    const struct model_config *c = &b->base.config;
    const int64_t H = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    const int64_t qd = (int64_t)c->n_heads * D, kvd = (int64_t)c->n_kv_heads * D;
    const struct tensor *ts[7] = {&lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up, &lw->w_down};
    const int64_t shapes[7][2] = {{qd, H}, {kvd, H}, {kvd, H}, {H, qd}, {I, H}, {I, H}, {H, I}};
    int rc = 0;
    cl->q = NULL;
    for (int i = 0; i < 7; i++)
        if (!keeps_blocks(ts[i], shapes[i][0], shapes[i][1])) return 0;
    struct cuda_qlayer *q = calloc(1, sizeof *q);
    if (!q) CUDA_FAIL(b, "cuda: out of host memory");
    cl->q = q; /* cuda_qweights_free frees it with what it holds, also after a failure here */
    struct cuda_qmat *ms[7] = {&q->q, &q->k, &q->v, &q->o, &q->gate, &q->up, &q->down};
    static const char *names[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};
    for (int i = 0; i < 7; i++)
        if ((rc = upload(b, ms[i], ts[i], names[i])) < 0) goto fail;
    b->w.q_layers++;
fail:
    return rc;
}

int cuda_qlm_head_load(struct cuda_backend *b, const struct tensor *t)
{
    const struct model_config *c = &b->base.config;
    if (!keeps_blocks(t, b->tp.vocab_rows, c->hidden_size)) return 0;
    return upload(b, &b->w.lm_head_q, t, "lm_head");
}

int cuda_qembed_load(struct cuda_backend *b, const struct tensor *t, bool tied)
{
    const struct model_config *c = &b->base.config;
    int rc = 0;
    if (!keeps_blocks(t, b->tp.vocab_rows, c->hidden_size)) return 0;
    if ((rc = upload(b, &b->w.tok_embed_q, t, "tok_embed")) < 0) return rc;
    if (tied) b->w.lm_head_q = b->w.tok_embed_q;
    return 0;
}

int cuda_qweights_finish(struct cuda_backend *b)
{
    int rc = 0;
    if (!b->w.q_layers && !b->w.lm_head_q.w && !b->w.tok_embed_q.w) return 0;
    CUDA_CHECK(b, cudaMalloc((void **)&b->w.q_scratch, CUDA_QUANT_SCRATCH_BYTES));
    b->w.bytes += CUDA_QUANT_SCRATCH_BYTES;
    const struct model_config *c = &b->base.config;
    int k_max = c->hidden_size > c->intermediate_size ? c->hidden_size : c->intermediate_size;
    if (c->n_heads * c->head_dim > k_max) k_max = c->n_heads * c->head_dim;
    const size_t xbytes = sk_gemv_q_scratch_bytes(k_max);
    CUDA_CHECK(b, cudaMalloc(&b->w.q_xscratch, xbytes));
    b->w.bytes += xbytes;
    /* sk_quant_mma's counters: one per tile of the largest product it may take. */
    int n_max = b->tp.vocab_rows > k_max ? b->tp.vocab_rows : k_max;
    if (c->intermediate_size > n_max) n_max = c->intermediate_size;
    const size_t counters = sk_quant_mma_counters(CUDA_QUANT_MMA_ROWS, n_max) * sizeof(unsigned);
    CUDA_CHECK(b, cudaMalloc((void **)&b->w.q_counters, counters));
    CUDA_CHECK(b, cudaMemset(b->w.q_counters, 0, counters));
    log_info("cuda: %d of %d layers%s%s kept in their GGUF blocks: %.3f GiB of blocks, %.3f GiB of weights in all "
             "(%.0f MiB of it the bf16 scratch for large batches)",
             b->w.q_layers, b->base.config.n_layers, b->w.tok_embed_q.w ? ", tok_embed" : "",
             b->w.lm_head_q.w ? (b->w.lm_head_q.w == b->w.tok_embed_q.w ? " (lm_head tied to it)" : ", lm_head") : "",
             (double)b->w.q_bytes / (1 << 30), (double)b->w.bytes / (1 << 30),
             (double)CUDA_QUANT_SCRATCH_BYTES / (1 << 20));
fail:
    return rc;
}

static void free_qmat(struct cuda_qmat *m)
{
    if (m->w) cudaFree(m->w);
    m->w = NULL;
}

void cuda_qweights_free(struct cuda_backend *b)
{
    if (b->w.layers) {
        for (int l = 0; l < b->base.config.n_layers; l++) {
            struct cuda_qlayer *q = b->w.layers[l].q;
            if (!q) continue;
            struct cuda_qmat *ms[7] = {&q->q, &q->k, &q->v, &q->o, &q->gate, &q->up, &q->down};
            for (int i = 0; i < 7; i++) free_qmat(ms[i]);
            free(q);
            b->w.layers[l].q = NULL;
        }
    }
    if (b->w.lm_head_q.w == b->w.tok_embed_q.w) b->w.lm_head_q.w = NULL; /* tied: freed once */
    free_qmat(&b->w.lm_head_q);
    free_qmat(&b->w.tok_embed_q);
    if (b->w.q_scratch) cudaFree(b->w.q_scratch);
    b->w.q_scratch = NULL;
    if (b->w.q_xscratch) cudaFree(b->w.q_xscratch);
    b->w.q_xscratch = NULL;
    if (b->w.q_counters) cudaFree(b->w.q_counters);
    b->w.q_counters = NULL;
}

/* cuda_qproduct_on; *x_int8: the activation scratch already holds x in int8 (a product on the same
 * x before this one left it there), updated for the next product on x. */
static int qproduct(struct cuda_backend *b, const struct cuda_qmat *m, const uint16_t *x, float *y, int ldy, int rows,
                    struct cuda_quant_plan p, bool *x_int8)
{
    int rc = 0;
    if (rows <= 0) return 0;
    if (p.path == CUDA_QUANT_PATH_GEMV) {
        CUDA_CHECK(b, sk_gemv_q(m->dtype, m->w, x, m->k_in, y, ldy, rows, m->n_out, m->k_in, b->w.q_xscratch, *x_int8,
                                b->plan.quant_overlap, b->stream));
        *x_int8 = *x_int8 || sk_gemv_q_int8(m->dtype);
        return 0;
    }
    if (p.path == CUDA_QUANT_PATH_MMA) {
        /* Split-K sums in the tile path's scratch (the planner keeps them within it). */
        CUDA_CHECK(b, sk_quant_mma(m->dtype, m->w, x, m->k_in, y, ldy, rows, m->n_out, m->k_in, p.splits,
                                   (float *)b->w.q_scratch, b->w.q_counters, b->plan.quant_overlap, b->stream));
        return 0;
    }
    /* Row-major y = x w^T is column-major y^T = w^T(op) x^T, a tile's columns at y + r0. The
     * scratch is reused by the next tile once cuBLAS has read it: same stream. */
    const size_t row_bytes =
        (size_t)(m->k_in / dtype_block_elems((enum dtype)m->dtype)) * dtype_block_bytes((enum dtype)m->dtype);
    const int tile = cuda_plan_quant_tile_rows(m->n_out, m->k_in);
    const float one = 1.0f, zero = 0.0f;
    for (int r0 = 0; r0 < m->n_out; r0 += tile) {
        const int n = m->n_out - r0 < tile ? m->n_out - r0 : tile;
        CUDA_CHECK(b, sk_dequant_bf16(m->dtype, (const unsigned char *)m->w + (size_t)r0 * row_bytes, b->w.q_scratch, n,
                                      m->k_in, b->stream));
        CUBLAS_CHECK(b, cublasGemmEx(b->gemm.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, m->k_in, &one, b->w.q_scratch,
                                     CUDA_R_16BF, m->k_in, x, CUDA_R_16BF, m->k_in, &zero, y + r0, CUDA_R_32F, ldy,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
fail:
    return rc;
}

static struct cuda_quant_plan plan_of(const struct cuda_backend *b, const struct cuda_qmat *m, int rows)
{
    return cuda_plan_quant(&b->plan, m->dtype, rows, m->n_out, m->k_in);
}

bool cuda_qlayer_int8_input(const struct cuda_backend *b, const struct cuda_qmat *m, int rows)
{
    return b->plan.quant_overlap && b->w.q_xscratch && rows >= 1 && rows <= SK_GEMV_Q_X_ROWS &&
           sk_gemv_q_int8(m->dtype) && plan_of(b, m, rows).path == CUDA_QUANT_PATH_GEMV;
}

int cuda_qproduct_on(struct cuda_backend *b, const struct cuda_qmat *m, const uint16_t *x, float *y, int ldy, int rows,
                     struct cuda_quant_plan p)
{
    bool x_int8 = false;
    return qproduct(b, m, x, y, ldy, rows, p, &x_int8);
}

int cuda_qproduct(struct cuda_backend *b, const struct cuda_qmat *m, const uint16_t *x, float *y, int ldy, int rows)
{
    return cuda_qproduct_on(b, m, x, y, ldy, rows, plan_of(b, m, rows));
}

/* The n products of ms on the same x, whose outputs are adjacent columns of y, in one block GEMV
 * launch when the batch takes the GEMV and the matrices share a type; 1 when done so. x_int8: as
 * qproduct's. */
static int one_launch(struct cuda_backend *b, const struct cuda_qmat *const *ms, int n, const uint16_t *x, float *y,
                      int ldy, int rows, bool x_int8)
{
    int rc = 0;
    const void *w[3];
    int n_out[3];
    if (rows <= 0) return 0;
    for (int i = 0; i < n; i++) {
        if (ms[i]->dtype != ms[0]->dtype || ms[i]->k_in != ms[0]->k_in ||
            plan_of(b, ms[i], rows).path != CUDA_QUANT_PATH_GEMV)
            return 0;
        w[i] = ms[i]->w;
        n_out[i] = ms[i]->n_out;
    }
    CUDA_CHECK(b, sk_gemv_q_n(ms[0]->dtype, n, w, n_out, x, ms[0]->k_in, y, ldy, rows, ms[0]->k_in, b->w.q_xscratch,
                              x_int8, b->plan.quant_overlap, b->stream));
    return 1;
fail:
    return rc;
}

int cuda_qlayer_qkv(struct cuda_backend *b, const struct cuda_qlayer *q, const uint16_t *x, float *qkv, int rows,
                    bool x_int8)
{
    const int width = q->q.n_out + q->k.n_out + q->v.n_out;
    const struct cuda_qmat *ms[3] = {&q->q, &q->k, &q->v};
    /* x is quantized once for the three (or was by the norm) */
    int rc = one_launch(b, ms, 3, x, qkv, width, rows, x_int8);
    if (rc != 0) return rc < 0 ? rc : 0;
    if ((rc = qproduct(b, &q->q, x, qkv, width, rows, plan_of(b, &q->q, rows), &x_int8)) < 0) return rc;
    if ((rc = qproduct(b, &q->k, x, qkv + q->q.n_out, width, rows, plan_of(b, &q->k, rows), &x_int8)) < 0) return rc;
    return qproduct(b, &q->v, x, qkv + q->q.n_out + q->k.n_out, width, rows, plan_of(b, &q->v, rows), &x_int8);
}

int cuda_qlayer_mlp(struct cuda_backend *b, const struct cuda_qlayer *q, const float *b_gu, int rows, bool x_int8)
{
    struct cuda_workspace *ws = &b->ws;
    const int I = q->gate.n_out;
    int rc = 0;
    /* [gate | up] per row in big, as sk_silu_mul and sk_glu read them; their output in y is down's
     * input. */
    const struct cuda_qmat *ms[2] = {&q->gate, &q->up};
    /* y is quantized once for the two (or was by the norm) */
    const int done = one_launch(b, ms, 2, ws->y, ws->big, 2 * I, rows, x_int8);
    if (done < 0) return done;
    if (!done) {
        if ((rc = qproduct(b, &q->gate, ws->y, ws->big, 2 * I, rows, plan_of(b, &q->gate, rows), &x_int8)) < 0)
            goto fail;
        if ((rc = qproduct(b, &q->up, ws->y, ws->big + I, 2 * I, rows, plan_of(b, &q->up, rows), &x_int8)) < 0)
            goto fail;
    }
    cuda_prof_mark(b, CUDA_PROF_GATE_UP);
    /* Where down takes its x in int8, SwiGLU leaves it so too. */
    bool act_int8 = !b->plan.plain_mlp && cuda_qlayer_int8_input(b, &q->down, rows);
    if (b->plan.plain_mlp)
        CUDA_CHECK(b, sk_glu(ws->y, ws->big, b_gu, (int)b->base.config.fam.act, rows, I, b->stream));
    else if (act_int8)
        CUDA_CHECK(b, sk_silu_mul_q8(ws->y, b->w.q_xscratch, ws->big, rows, I, b->stream));
    else
        CUDA_CHECK(b, sk_silu_mul(ws->y, ws->big, rows, I, b->stream));
    cuda_prof_mark(b, CUDA_PROF_SILU);
    if ((rc = qproduct(b, &q->down, ws->y, ws->delta, q->down.n_out, rows, plan_of(b, &q->down, rows), &act_int8)) < 0)
        goto fail;
    cuda_prof_mark(b, CUDA_PROF_DOWN);
fail:
    return rc;
}
