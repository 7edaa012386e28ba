/* FP8 against bf16 decode speed on a dummy Llama-3-8B (random weights at the real shapes; the
 * FP8 model is the bf16 one quantized with --quantization fp8). Runs only with
 * SLUICE_GPU_BENCH=1 (about 25 GB of GPU memory, a minute or two). First each FP8 decode kernel
 * alone at the layer shapes (its share of the bandwidth roofline); then whole steps of bf16, FP8
 * and FP8 without the L2 prefetch between products (fp8_prefetch=0). For batch 1 and 64 it prints each
 * model's step time, tokens/s and its share of its own bandwidth roofline: the bytes a step must
 * read (every weight matrix once: layer matrices in bf16 or e4m3 plus their fp32 row scales,
 * lm_head in bf16 for both; every sequence's keys and values) over the step time, against
 * SLUICE_HBM_TBPS (default 3.35, an H100 SXM's HBM3). The targets are checks: FP8 at
 * least 1.8x bf16's tokens/s at batch 1 and 1.5x at batch 64. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "kernels/sk_fp8.h"
#include "kernels/sluice_kernels.h"
#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define PROMPT 128
#define STEPS 64
#define MAX_B 64
#define BLOCKS_PER_SEQ ((PROMPT + STEPS + 8 + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE + 1)

struct speed {
    double ms, tok_s, roofline; /* per step, tokens/s, share of the bandwidth roofline */
};

/* Weight bytes a decode step reads: the layers' matrices at bytes_per_weight (plus fp32 row
 * scales for FP8) and lm_head in bf16. */
static double weight_bytes(const struct model_config *c, bool fp8)
{
    const double H = c->hidden_size, I = c->intermediate_size, qd = (double)c->n_heads * c->head_dim,
                 kvd = (double)c->n_kv_heads * c->head_dim;
    const double per_layer = H * (qd + 2 * kvd) + H * qd + 3 * H * I, rows = (qd + 2 * kvd) + H + 2 * I + H;
    return c->n_layers * (fp8 ? per_layer + 4 * rows : 2 * per_layer) + 2.0 * c->vocab_size * H;
}

/* Prefills bs sequences of PROMPT tokens one by one, then times STEPS decode steps of all of
 * them. */
static int measure(struct backend *b, const struct model_config *c, int bs, bool fp8, double hbm, struct speed *out)
{
    static int32_t blocks[MAX_B][BLOCKS_PER_SEQ], tokens[PROMPT];
    struct sampling_params sp = {.temperature = 0.0f, .top_p = 1, .repetition_penalty = 1, .logprobs = -1};
    struct batch_seq seqs[MAX_B];
    struct sample_result res[MAX_B];
    int32_t tk[MAX_B];
    int rc = 0;
    for (int s = 0; s < bs && rc == 0; s++) {
        for (int k = 0; k < BLOCKS_PER_SEQ; k++) blocks[s][k] = s * BLOCKS_PER_SEQ + k;
        for (int i = 0; i < PROMPT; i++) tokens[i] = gt_int(c->vocab_size);
        seqs[s] = (struct batch_seq){.n_new = PROMPT, .start_pos = 0, .block_table = blocks[s],
                                     .n_blocks = BLOCKS_PER_SEQ, .sample = true, .sampling = &sp};
        struct batch pre = {.n_seqs = 1, .seqs = &seqs[s], .n_tokens = PROMPT, .tokens = tokens};
        rc = backend_forward(b, &pre, &res[s]);
        tk[s] = res[s].token;
        seqs[s].n_new = 1;
    }
    double t0 = 0;
    /* Two untimed steps first (graph capture), then STEPS timed ones. */
    for (int i = 0; i < STEPS + 2 && rc == 0; i++) {
        if (i == 2) t0 = gt_now_s();
        for (int s = 0; s < bs; s++) seqs[s].start_pos = PROMPT + i;
        struct batch db = {.n_seqs = bs, .seqs = seqs, .n_tokens = bs, .tokens = tk};
        rc = backend_forward(b, &db, res);
        for (int s = 0; s < bs && rc == 0; s++) tk[s] = res[s].token;
    }
    if (rc) return rc;
    const double dt = (gt_now_s() - t0) / STEPS;
    /* Keys and values of the mean context over the timed steps, bf16. */
    const double ctx = PROMPT + 2 + STEPS / 2.0;
    const double kv = (double)bs * ctx * c->n_layers * 2.0 * c->n_kv_heads * c->head_dim * 2.0;
    const double bytes = weight_bytes(c, fp8) + kv;
    out->ms = dt * 1e3;
    out->tok_s = bs / dt;
    out->roofline = bytes / dt / (hbm * 1e12);
    printf("  %s batch %2d: %.3f ms/step, %7.0f tok/s, %.2f GB read per step (%.2f GB weights), %.0f GB/s = %.0f%% "
           "of %.2f TB/s\n",
           fp8 ? "fp8 " : "bf16", bs, dt * 1e3, bs / dt, bytes / 1e9, weight_bytes(c, fp8) / 1e9, bytes / dt / 1e9,
           100 * out->roofline, hbm);
    return 0;
}

/* Microseconds a launch of launch(it, ctx) on the default stream, over reps launches after 4
 * untimed ones (it counts from 0 through them all); *err is the first launch's error, which
 * ends the loop. */
static double launch_us(cudaError_t (*launch)(int it, void *ctx), void *ctx, int reps, cudaError_t *err)
{
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    *err = cudaSuccess;
    for (int it = 0; it < reps + 4 && !*err; it++) {
        if (it == 4) cudaEventRecord(e0, 0);
        *err = launch(it, ctx);
    }
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return ms * 1e3 / reps;
}

/* One layer product of kernel_table's: copies of the weights rotated past L2. */
struct table_product {
    struct sk_hopper_gemm *h; /* non-NULL: the Hopper stream on e4m3 */
    const uint8_t *w;
    const float *sc;
    const uint16_t *x;
    float *y;
    size_t wb;
    int copies, m, n, k;
    int splits; /* the stream's split-K count, 0: the planner's */
};

static cudaError_t table_launch(int it, void *ctx)
{
    const struct table_product *t = ctx;
    const uint8_t *wi = t->w + (size_t)(it % t->copies) * t->wb;
    if (t->h)
        return sk_hopper_fp8_gemm(t->h, wi, t->sc, (const uint8_t *)t->x, t->sc, t->y, t->m, t->n, t->k, t->splits, 0);
    if (t->m <= 4) return sk_fp8_gemv(wi, t->sc, 1, t->k, t->x, t->y, t->m, t->n, t->k, NULL, 0, 0);
    return sk_fp8_gemm_small(wi, t->sc, t->x, t->y, t->m, t->n, t->k, NULL, 0, 0);
}

/* Each FP8 decode kernel alone at the Llama-3-8B layer shapes: microseconds a launch and the
 * weight bytes over that time against the HBM rate (copies rotated past L2's 50 MB, no
 * prefetch), so each kernel's share of its roofline shows apart from the step's other kernels:
 * the gemv at 1 and 4 rows, the tensor-core kernel at 5 to 64, then the Hopper weight stream on
 * e4m3 operands at every row count (where the device has it). */
static void kernel_table(double hbm)
{
    struct sk_hopper_gemm *h = NULL;
    if (sk_hopper_gemm_create(&h) != cudaSuccess) h = NULL;
    const int shapes[4][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
    const char *names[4] = {"qkv", "o", "gate/up", "down"};
    const int rows[] = {1, 4, 5, 8, 16, 32, 64};
    printf("  kernels alone (weights only):\n");
    for (int i = 0; i < 4; i++) {
        const int n = shapes[i][0], k = shapes[i][1];
        const size_t wb = (size_t)n * k;
        const int copies = (int)((size_t)256 << 20) / wb + 2;
        uint8_t *w = gt_dev(wb * copies);
        float *sc = gt_dev((size_t)n * 4), *y = gt_dev((size_t)64 * n * 4);
        uint16_t *x = gt_dev((size_t)64 * k * 2);
        cudaMemset(w, 0x38, wb * copies), cudaMemset(x, 0, (size_t)64 * k * 2), cudaMemset(sc, 0, (size_t)n * 4);
        /* The second pass: the Hopper weight stream on e4m3 (x as codes, zero here). */
        for (int pass = 0; pass < (h ? 2 : 1); pass++)
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
            const bool hop = pass == 1;
            const int m = rows[r];
            struct table_product t = {.h = hop ? h : NULL, .w = w, .sc = sc, .x = x, .y = y, .wb = wb,
                                      .copies = copies, .m = m, .n = n, .k = k};
            cudaError_t err;
            const double us = launch_us(table_launch, &t, 40, &err);
            GT_CHECK(err == cudaSuccess, "%s rows %d launch: %s", names[i], m, cudaGetErrorString(err));
            printf("    %-7s [%5d x %5d] rows %2d (%s): %7.1f us, %5.0f GB/s = %3.0f%% of %.2f TB/s\n", names[i], n, k,
                   m, hop ? "hopper e4m3" : m <= 4 ? "gemv" : "tensor cores", us, wb / us / 1e3,
                   100 * wb / us / 1e6 / hbm, hbm);
        }
        /* The stream's split-K counts against the planner's pick (sk_hopper_gemm_splits, on the
         * bf16 product of half the width: the same 128-byte stages). */
        static const int split_rows[3] = {2, 8, 64};
        if (h) printf("    %-7s the planner's split count: %d\n", names[i], sk_hopper_gemm_splits(h, n, k / 2));
        for (int ri = 0; h && ri < 3; ri++)
            for (int sp = 1, m = split_rows[ri]; sp <= SK_HOPPER_MAX_SPLITS; sp *= 2) {
                struct table_product t = {.h = h, .w = w, .sc = sc, .x = x, .y = y, .wb = wb,
                                          .copies = copies, .m = m, .n = n, .k = k, .splits = sp};
                cudaError_t err;
                const double us = launch_us(table_launch, &t, 40, &err);
                GT_CHECK(err == cudaSuccess, "%s rows %d splits %d launch: %s", names[i], m, sp,
                         cudaGetErrorString(err));
                printf("    %-7s rows %2d, %d splits: %7.1f us (%3.0f%%)\n", names[i], m, sp, us,
                       100 * wb / us / 1e6 / hbm);
            }
        cudaFree(w), cudaFree(sc), cudaFree(y), cudaFree(x);
    }
    sk_hopper_gemm_destroy(h);
}

struct quantize_args {
    uint8_t *q;
    float *s;
    const uint16_t *x;
    int rows, k;
};

static cudaError_t quantize_launch(int it, void *ctx)
{
    (void)it;
    const struct quantize_args *a = ctx;
    return sk_fp8_quantize_rows(a->q, a->s, a->x, a->rows, a->k, 0);
}

/* The per-token quantization where the kernel that writes the activations does not do it (o's
 * input), alone: us a launch at the widths it meets in a step (hidden, intermediate). */
static void quantize_table(void)
{
    const int widths[2] = {4096, 14336}, rows[] = {1, 8, 64};
    printf("  the activations quantized per token (sk_fp8_quantize_rows), alone:\n");
    for (int i = 0; i < 2; i++) {
        const int k = widths[i];
        uint16_t *x = gt_dev((size_t)64 * k * 2);
        uint8_t *q = gt_dev((size_t)64 * k);
        float *s = gt_dev(64 * 4);
        GT_CUDA(sk_fill_dummy_bf16(x, 1, 3, 0, (int64_t)64 * k, 0, 0));
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
            struct quantize_args a = {.q = q, .s = s, .x = x, .rows = rows[r], .k = k};
            cudaError_t err;
            const double us = launch_us(quantize_launch, &a, 100, &err);
            GT_CHECK(err == cudaSuccess, "quantize rows %d launch: %s", rows[r], cudaGetErrorString(err));
            printf("    [%2d x %5d]: %5.1f us\n", rows[r], k, us);
        }
        cudaFree(x), cudaFree(q), cudaFree(s);
    }
}

int main(void)
{
    if (!gt_have_gpu() || !gt_bench_wanted()) return 0;
    const char *tb = getenv("SLUICE_HBM_TBPS");
    const double hbm = tb && atof(tb) > 0 ? atof(tb) : 3.35;
    const int sizes[2] = {1, 64};
    kernel_table(hbm);
    quantize_table();
    /* bf16, FP8, FP8 with fp8_prefetch=0 (the A/B of the L2 prefetch between products). */
    struct speed sp[3][2] = {0};
    for (int q = 0; q < 3; q++) {
        struct model *m = gt_dummy_model(GT_LLAMA3_8B_CONFIG);
        if (!m) return gt_finish();
        char err[512];
        if (q && model_quantize(m, MODEL_QUANT_FP8, err, sizeof err) < 0) {
            GT_CHECK(0, "model_quantize: %s", err);
            model_free(m);
            return gt_finish();
        }
        struct backend_options bo = {.kv_blocks = MAX_B * BLOCKS_PER_SEQ, .max_batch_tokens = 2048,
                                     .max_batch_seqs = MAX_B, .gpu_memory_utilization = 0.9,
                                     .cuda = {.no_fp8_prefetch = q == 2}};
        const char *what = q == 0 ? "bf16" : q == 1 ? "fp8" : "fp8, fp8_prefetch=0";
        struct backend *b = NULL;
        const double t0 = gt_now_s();
        if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
            GT_CHECK(0, "backend_cuda_create (%s): %s", what, err);
            model_free(m);
            return gt_finish();
        }
        printf("  %s: load %.1f s\n", what, gt_now_s() - t0);
        for (int i = 0; i < 2; i++) {
            int rc = measure(b, &m->config, sizes[i], q >= 1, hbm, &sp[q][i]);
            GT_CHECK(rc == 0, "%s decode at batch %d ran%s%s", what, sizes[i], rc ? ": " : "", rc ? b->error : "");
        }
        backend_free(b);
        model_free(m);
    }
    for (int i = 0; i < 2; i++)
        printf("  batch %d: fp8 with the L2 prefetch %.3f ms/step, without %.3f ms/step\n", sizes[i], sp[1][i].ms,
               sp[2][i].ms);
    const double target[2] = {1.8, 1.5};
    for (int i = 0; i < 2; i++) {
        const double ratio = sp[0][i].tok_s > 0 ? sp[1][i].tok_s / sp[0][i].tok_s : 0;
        GT_CHECK(ratio >= target[i],
                 "batch %d: fp8 %.0f tok/s (%.0f%% of its roofline) = %.2fx bf16's %.0f tok/s (%.0f%%); target %.1fx",
                 sizes[i], sp[1][i].tok_s, 100 * sp[1][i].roofline, ratio, sp[0][i].tok_s, 100 * sp[0][i].roofline,
                 target[i]);
    }
    return gt_finish();
}
