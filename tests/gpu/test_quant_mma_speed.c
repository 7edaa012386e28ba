/* The three paths of a product on GGUF block weights, timed against each other so that one GPU run
 * gives the planner's crossovers (cuda_plan.c's cuda_plan_quant_gemv_rows, cuda_plan.h's
 * CUDA_QUANT_MMA_ROWS): the block GEMV (sk_gemv_q, int8 activations where the type has them), the
 * tensor-core kernel (sk_quant_mma, with the planner's split-K and without) and dequantized tiles
 * with cuBLAS, each through cuda_qproduct_on as the backend runs them, on Llama-3-8B's layer
 * matrices (q and o 4096 x 4096, k and v 1024 x 4096, gate and up 14336 x 4096, down 4096 x 14336;
 * lm_head 128256 x 4096 for Q4_K and Q6_K) at 1 to 1024 rows, every block type.
 *
 * Each line: microseconds a product (a CUDA graph of 20 products over rotating copies of the
 * weights, more bytes than L2 holds, so that they stream from memory as in a decode step) and the
 * effective GB/s of the quantized bytes (the matrix's blocks over the time: against the device's
 * bandwidth printed first), the planner's choice and the fastest. Then, per type, a whole layer
 * (the seven matrices) by rows and the crossovers read off it: the last row count where the GEMV
 * beats the tensor-core kernel, and the first where the tiles do. Runs only with
 * SLUICE_GPU_BENCH=1 (about two minutes, ~6 GB of GPU memory). */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "kernels/sk_quant.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"

static const int kRows[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define N_ROWS (int)(sizeof kRows / sizeof kRows[0])
#define GEMV_MAX_ROWS 64 /* passes of 8: past this the GEMV is only slower */
#define LM_MAX_ROWS 256  /* lm_head's output past this takes more memory than it tells */
#define ITERS 20

enum { P_GEMV, P_MMA, P_MMA1, P_TILES, N_PATHS };
static const char *kPathNames[N_PATHS] = {"gemv", "mma", "mma(1 split)", "tiles"};

#define N_TYPES 8 /* gt_block_types' */

/* Layer matrices: shape and how many of them a layer has. */
static const struct {
    const char *name;
    int n_out, k_in, per_layer;
} kShapes[] = {
    {"q,o", 4096, 4096, 2}, {"k,v", 1024, 4096, 2}, {"gate,up", 14336, 4096, 2}, {"down", 4096, 14336, 1},
    {"lm_head", 128256, 4096, 0},
};
#define N_SHAPES (int)(sizeof kShapes / sizeof kShapes[0])

struct bench {
    struct cuda_backend b;
    uint16_t *x;
    float *y;
};

/* Microseconds a product of `rows` rows on path p (copies of the matrix at m.w, copy_bytes apart),
 * from a graph of ITERS products; < 0 when a product failed. */
static double time_path(struct bench *bn, struct cuda_qmat m, size_t copy_bytes, int copies, int rows,
                        struct cuda_quant_plan p)
{
    struct cuda_backend *b = &bn->b;
    const unsigned char *base = m.w;
    for (int i = 0; i < 3; i++) /* warm: lazy loading, the shared-memory limit */
        if (cuda_qproduct_on(b, &m, bn->x, bn->y, m.n_out, rows, p) < 0) return -1;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    GT_CUDA(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
    int rc = 0;
    for (int i = 0; i < ITERS && rc == 0; i++) {
        m.w = (void *)(base + (size_t)(i % copies) * copy_bytes);
        rc = cuda_qproduct_on(b, &m, bn->x, bn->y, m.n_out, rows, p);
    }
    GT_CUDA(cudaStreamEndCapture(b->stream, &g));
    if (rc < 0) {
        cudaGraphDestroy(g);
        return -1;
    }
    GT_CUDA(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    GT_CUDA(cudaEventCreate(&e0));
    GT_CUDA(cudaEventCreate(&e1));
    GT_CUDA(cudaGraphLaunch(ge, b->stream));
    GT_CUDA(cudaEventRecord(e0, b->stream));
    GT_CUDA(cudaGraphLaunch(ge, b->stream));
    GT_CUDA(cudaEventRecord(e1, b->stream));
    GT_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    GT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    return 1e3 * ms / ITERS;
}

/* us[shape][rows][path] for type t (0: not run). */
static void bench_type(struct bench *bn, const struct gt_block_type *ty, double us[N_SHAPES][N_ROWS][N_PATHS])
{
    const enum dtype dt = ty->dt;
    const bool lm = dt == DTYPE_Q4_K || dt == DTYPE_Q6_K;
    for (int s = 0; s < N_SHAPES; s++) {
        if (!kShapes[s].per_layer && !lm) continue;
        const int n_out = kShapes[s].n_out, k_in = kShapes[s].k_in;
        const int64_t n = (int64_t)n_out * k_in;
        const size_t bytes = (size_t)(n / dtype_block_elems(dt)) * dtype_block_bytes(dt);
        const size_t copy_bytes = (bytes + 255) / 256 * 256;
        int copies = (int)(((size_t)256 << 20) / copy_bytes) + 1; /* well past L2 */
        if (copies < 2) copies = 2;
        if (copies > 16) copies = 16;
        void *blocks = gt_random_blocks(dt, ty->at, ty->n, n);
        unsigned char *dw = gt_dev(copy_bytes * copies);
        for (int c = 0; c < copies; c++) GT_CUDA(cudaMemcpy(dw + c * copy_bytes, blocks, bytes, cudaMemcpyHostToDevice));
        free(blocks);
        const struct cuda_qmat m = {.dtype = (int)dt, .w = dw, .n_out = n_out, .k_in = k_in};
        printf("%s %s %d x %d (%.1f MB of blocks, %d copies)\n", dtype_name(dt), kShapes[s].name, n_out, k_in,
               bytes / 1e6, copies);
        for (int r = 0; r < N_ROWS; r++) {
            const int rows = kRows[r];
            if (!kShapes[s].per_layer && rows > LM_MAX_ROWS) continue;
            const struct cuda_quant_plan plan = cuda_plan_quant(&bn->b.plan, (int)dt, rows, n_out, k_in);
            /* The kernel with the splits the planner gives it at these rows, also where the plan
             * is the GEMV or the tiles: a crossover is between the paths as each would run. */
            const struct cuda_quant_plan mma = {CUDA_QUANT_PATH_MMA,
                                                cuda_plan_quant_mma_splits(&bn->b.plan, rows, n_out, k_in)};
            const struct cuda_quant_plan ps[N_PATHS] = {
                {CUDA_QUANT_PATH_GEMV, 1}, mma, {CUDA_QUANT_PATH_MMA, 1}, {CUDA_QUANT_PATH_TILES, 1}};
            char line[512];
            int at = snprintf(line, sizeof line, "  rows %4d:", rows), best = -1;
            for (int p = 0; p < N_PATHS; p++) {
                us[s][r][p] = 0;
                if ((p == P_GEMV && rows > GEMV_MAX_ROWS) || (p == P_MMA1 && mma.splits == 1)) continue;
                const double v = time_path(bn, m, copy_bytes, copies, rows, ps[p]);
                if (v <= 0) {
                    GT_CHECK(0, "%s %s rows %d: the %s path ran", dtype_name(dt), kShapes[s].name, rows,
                             kPathNames[p]);
                    continue;
                }
                us[s][r][p] = v;
                if (best < 0 || v < us[s][r][best]) best = p;
                at += snprintf(line + at, sizeof line - at, "  %s %8.1f us %6.0f GB/s", kPathNames[p], v,
                               bytes / v / 1e3);
            }
            static const char *plan_names[] = {"gemv", "mma", "tiles"};
            printf("%s  | mma splits %d; plan: %s, fastest: %s\n", line, mma.splits, plan_names[plan.path],
                   best >= 0 ? kPathNames[best] : "-");
        }
        cudaFree(dw);
    }
}

/* Per type: a layer's time by rows on each path, and the crossovers it gives. */
static void layer_summary(enum dtype dt, double us[N_SHAPES][N_ROWS][N_PATHS])
{
    printf("%s, a whole layer (q, k, v, o, gate, up, down) in us:\n", dtype_name(dt));
    int last_gemv = 0, first_tiles = 0;
    for (int r = 0; r < N_ROWS; r++) {
        double sum[N_PATHS] = {0};
        bool have[N_PATHS] = {true, true, true, true};
        for (int p = 0; p < N_PATHS; p++)
            for (int s = 0; s < N_SHAPES; s++) {
                if (!kShapes[s].per_layer) continue;
                double v = us[s][r][p];
                if (p == P_MMA1 && v <= 0) v = us[s][r][P_MMA]; /* no split to take away */
                if (v <= 0) have[p] = false;
                sum[p] += kShapes[s].per_layer * v;
            }
        printf("  rows %4d:", kRows[r]);
        for (int p = 0; p < N_PATHS; p++)
            if (have[p]) printf("  %s %8.1f", kPathNames[p], sum[p]);
        printf("\n");
        if (have[P_GEMV] && have[P_MMA] && sum[P_GEMV] <= sum[P_MMA]) last_gemv = kRows[r];
        if (!first_tiles && have[P_TILES] && have[P_MMA] && sum[P_TILES] < sum[P_MMA]) first_tiles = kRows[r];
    }
    printf("  => %s: the GEMV beats the tensor-core kernel up to %d rows (of those timed; planner: "
           "cuda_plan_quant_gemv_rows = %d), the tiles beat it from %s%d rows (planner: tiles past "
           "CUDA_QUANT_MMA_ROWS = %d)\n",
           dtype_name(dt), last_gemv, cuda_plan_quant_gemv_rows(dt), first_tiles ? "" : "more than ",
           first_tiles ? first_tiles : kRows[N_ROWS - 1], CUDA_QUANT_MMA_ROWS);
}

int main(void)
{
    if (!gt_have_gpu() || !gt_bench_wanted()) return 0;
    int dev = 0, clock_khz = 0, bus_bits = 0, n_sms = 0;
    GT_CUDA(cudaGetDevice(&dev));
    GT_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
    GT_CUDA(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
    GT_CUDA(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev));
    struct cudaDeviceProp prop;
    GT_CUDA(cudaGetDeviceProperties(&prop, dev));
    printf("%s: %d SMs, memory bandwidth %.0f GB/s from its clock and bus\n", prop.name, n_sms,
           2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9);

    static struct bench bn;
    memset(&bn, 0, sizeof bn);
    struct cuda_backend *b = &bn.b;
    GT_CUDA(cudaStreamCreate(&b->stream));
    if (cublasCreate(&b->gemm.cublas) != CUBLAS_STATUS_SUCCESS) {
        GT_CHECK(0, "cublasCreate");
        return gt_finish();
    }
    cublasSetStream(b->gemm.cublas, b->stream);
    struct model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.hidden_size = 4096, mc.intermediate_size = 14336, mc.n_heads = 32, mc.n_kv_heads = 8, mc.head_dim = 128;
    mc.vocab_size = 128256;
    struct cuda_options o;
    memset(&o, 0, sizeof o);
    cuda_plan_config_init(&b->plan, &mc, &o, false, true, n_sms, 2048, 256, 64);
    b->w.q_scratch = gt_dev(CUDA_QUANT_SCRATCH_BYTES);
    b->w.q_xscratch = gt_dev(sk_gemv_q_scratch_bytes(14336));
    const size_t counters = sk_quant_mma_counters(1024, 128256) * sizeof(unsigned); /* the most rows timed */
    b->w.q_counters = gt_dev(counters);
    GT_CUDA(cudaMemset(b->w.q_counters, 0, counters));
    bn.x = gt_dev((size_t)1024 * 14336 * 2);
    bn.y = gt_dev((size_t)LM_MAX_ROWS * 128256 * 4);
    GT_CUDA(sk_fill_dummy_bf16(bn.x, 1, 10, 0, (int64_t)1024 * 14336, 0, 0));
    GT_CUDA(cudaDeviceSynchronize());

    int n_types;
    const struct gt_block_type *types = gt_block_types(&n_types);
    static double us[N_TYPES][N_SHAPES][N_ROWS][N_PATHS];
    for (int t = 0; t < n_types && t < N_TYPES; t++) bench_type(&bn, &types[t], us[t]);
    for (int t = 0; t < n_types && t < N_TYPES; t++) layer_summary(types[t].dt, us[t]);

    cudaFree(bn.x), cudaFree(bn.y);
    cudaFree(b->w.q_scratch), cudaFree(b->w.q_xscratch), cudaFree(b->w.q_counters);
    cublasDestroy(b->gemm.cublas);
    cudaStreamDestroy(b->stream);
    return gt_finish();
}
