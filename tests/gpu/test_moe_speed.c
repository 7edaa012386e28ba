/* Mixture-of-experts speed on the CUDA backend, at Mixtral 8x7B's and Qwen3-30B-A3B's shapes
 * (tests/bench/configs: 2 and 4 layers, random weights). Runs only with SLUICE_GPU_BENCH=1.
 *
 * 1. One MoE layer's kernels alone (router, top-k, sort, gate/up + SiLU, down, combine; captured
 *    in a CUDA graph as a decode step is) at 1 and 64 tokens: microseconds, the bytes of the
 *    experts actually read (router + the distinct experts chosen, cuda_moe_layer_bytes) and the
 *    share of the bandwidth roofline (SLUICE_GPU_BW_GBS, default 3350 GB/s: H100 SXM). The same
 *    for the two grouped products alone.
 *    Then the same with the experts in e4m3 (sk_moe_gemm_fp8, the bf16 weights quantized per row),
 *    against the roofline of their bytes (a byte a weight, a scale a row).
 * 2. The whole backend: decode tokens/s at batch 1 and 64 (decode steps replay CUDA graphs), with
 *    bf16 weights and with --quantization fp8 (attention and experts in e4m3). */
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/moe_pipe.h"

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/backend/cuda/cuda_moe_plan.h"
#include "worker/model/model.h"

/* Microseconds per replay of a graph of the pipeline (experts_only: the two products). */
static double time_graph(const struct moe_pipe *p, const uint16_t *x, int n, float *out, int experts_only,
                         cudaStream_t s)
{
    cudaGraph_t g;
    cudaGraphExec_t ge;
    cudaEvent_t a, b;
    GT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    moe_pipe_run(p, x, n, out, experts_only, 0, s);
    GT_CUDA(cudaStreamEndCapture(s, &g));
    GT_CUDA(cudaGraphInstantiate(&ge, g, 0));
    GT_CUDA(cudaEventCreate(&a));
    GT_CUDA(cudaEventCreate(&b));
    for (int i = 0; i < 10; i++) GT_CUDA(cudaGraphLaunch(ge, s));
    const int reps = 100;
    GT_CUDA(cudaEventRecord(a, s));
    for (int i = 0; i < reps; i++) GT_CUDA(cudaGraphLaunch(ge, s));
    GT_CUDA(cudaEventRecord(b, s));
    GT_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    GT_CUDA(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a), cudaEventDestroy(b);
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    return ms * 1e3 / reps;
}

static void bench_layer(const char *name, const struct model_config *c, double bw_gbs)
{
    const int E = c->moe.n_experts, k = c->moe.top_k, H = c->hidden_size, I = c->moe.expert_intermediate;
    struct moe_pipe p;
    moe_pipe_alloc(&p, E, k, H, I, 64);
    cudaStream_t s;
    GT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    /* model_dummy_value's weights, as --load-format dummy fills them. */
    GT_CUDA(sk_fill_dummy_bf16(p.router, 7, 1, 0, (int64_t)E * H, 0, s));
    GT_CUDA(sk_fill_dummy_bf16(p.gu, 7, 2, 0, (int64_t)E * 2 * I * H, 0, s));
    GT_CUDA(sk_fill_dummy_bf16(p.down, 7, 3, 0, (int64_t)E * H * I, 0, s));
    uint16_t *x = gt_dev((size_t)64 * H * 2);
    float *out = gt_dev((size_t)64 * H * 4);
    GT_CUDA(sk_fill_dummy_bf16(x, 7, 4, 0, (int64_t)64 * H, 0, s));
    const int sizes[] = {1, 64};
    for (int v = 0; v < 4; v++) {
        const int n = sizes[v % 2];
        const bool fp8 = v >= 2;
        if (v == 2) moe_pipe_to_fp8(&p, s);
        double us = time_graph(&p, x, n, out, 0, s);
        int32_t *choice = malloc((size_t)n * k * 4);
        GT_CUDA(cudaStreamSynchronize(s));
        gt_down(choice, p.choice, (size_t)n * k * 4);
        int distinct = cuda_moe_distinct(choice, (int64_t)n * k, E);
        if (distinct < k) /* what the router chose, to see why */
            printf("  %s, %d token%s: the first choices are %d %d %d %d\n", name, n, n > 1 ? "s" : "", choice[0],
                   k > 1 ? choice[1] : -1, k > 2 ? choice[2] : -1, k > 3 ? choice[3] : -1);
        double us_exp = time_graph(&p, x, n, out, 1, s);
        double bytes = cuda_moe_layer_bytes(c, distinct, fp8), exp_bytes = bytes - 2.0 * E * H;
        double gbs = bytes / (us * 1e-6) / 1e9, gbs_exp = exp_bytes / (us_exp * 1e-6) / 1e9;
        GT_CHECK(us > 0 && distinct >= k,
                 "%s MoE layer, experts in %s, %d token%s: %.1f us, %d of %d experts read (%.1f MB): %.0f GB/s = "
                 "%.0f%% of the %.0f GB/s roofline; the two expert products alone %.1f us, %.0f GB/s = %.0f%%",
                 name, fp8 ? "e4m3" : "bf16", n, n > 1 ? "s" : "", us, distinct, E, bytes / 1e6, gbs,
                 100.0 * gbs / bw_gbs, bw_gbs, us_exp,
                 gbs_exp, 100.0 * gbs_exp / bw_gbs);
        free(choice);
    }
    moe_pipe_free(&p);
    cudaFree(x), cudaFree(out);
    cudaStreamDestroy(s);
}

static void bench_decode(const char *name, struct model *m)
{
    char err[512];
    const struct model_config *c = &m->config;
    struct backend_options bo = {.gpu_memory_utilization = 0.9, .max_batch_tokens = 2048, .max_batch_seqs = 64};
    struct backend *b = NULL;
    double t0 = cuda_now_s();
    if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
        GT_CHECK(0, "%s: backend_cuda_create: %s", name, err);
        return;
    }
    printf("  %s: load (dummy fill on GPU) %.2f s\n", name, cuda_now_s() - t0);
    struct sampling_params sp = {.temperature = 0.0f, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                 .logprobs = -1};
    const int prompt = 512, steps = 64, per_seq = 64;
    int32_t *blocks = malloc((size_t)64 * per_seq * 4), *tokens = malloc((size_t)prompt * 4);
    for (int i = 0; i < 64 * per_seq; i++) blocks[i] = i;
    for (int i = 0; i < prompt; i++) tokens[i] = gt_int(c->vocab_size);
    struct batch_seq q = {
        .n_new = prompt, .start_pos = 0, .block_table = blocks, .n_blocks = per_seq, .sample = true, .sampling = &sp};
    struct batch batch = {.n_seqs = 1, .seqs = &q, .n_tokens = prompt, .tokens = tokens};
    struct sample_result res[64];
    int rc = backend_forward(b, &batch, res);
    t0 = cuda_now_s();
    if (rc == 0) rc = backend_forward(b, &batch, res);
    double pre = cuda_now_s() - t0;
    GT_CHECK(rc == 0, "%s: prefill %d tokens: %.1f ms (%.0f tok/s) %s", name, prompt, pre * 1e3, prompt / pre,
             rc ? b->error : "");
    const int bs_list[] = {1, 64};
    for (int k = 0; k < 2 && rc == 0; k++) {
        int bs = bs_list[k];
        struct batch_seq seqs[64];
        int32_t tk[64];
        for (int s = 0; s < bs; s++) {
            seqs[s] = q;
            seqs[s].block_table = blocks + s * per_seq;
            seqs[s].n_new = 1;
            tk[s] = (res[0].token + s) % c->vocab_size;
        }
        for (int i = 0; i < steps + 4 && rc == 0; i++) {
            if (i == 4) t0 = cuda_now_s(); /* the first steps capture the graph */
            for (int s = 0; s < bs; s++) seqs[s].start_pos = (s == 0 ? prompt : 0) + i;
            struct batch db = {.n_seqs = bs, .seqs = seqs, .n_tokens = bs, .tokens = tk};
            rc = backend_forward(b, &db, res);
            for (int s = 0; s < bs && rc == 0; s++) tk[s] = res[s].token;
        }
        double dt = (cuda_now_s() - t0) / steps;
        GT_CHECK(rc == 0, "%s: decode batch %d: %.2f ms/step, %.0f tok/s %s", name, bs, dt * 1e3, bs / dt,
                 rc ? b->error : "");
    }
    free(blocks), free(tokens);
    backend_free(b);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    const char *on = getenv("SLUICE_GPU_BENCH");
    if (!on || strcmp(on, "1")) {
        printf("SKIP: set SLUICE_GPU_BENCH=1\n0 passed, 0 failed\n");
        return 0;
    }
    const char *bw = getenv("SLUICE_GPU_BW_GBS");
    const double bw_gbs = bw && atof(bw) > 0 ? atof(bw) : 3350.0;
    const char *names[] = {"mixtral-8x7b-2layers", "qwen3-30b-a3b-4layers"};
    for (int i = 0; i < 2; i++) {
        for (int fp8 = 0; fp8 < 2; fp8++) {
            char path[256], err[512], label[96];
            snprintf(path, sizeof path, "tests/bench/configs/%s", names[i]);
            snprintf(label, sizeof label, "%s%s", names[i], fp8 ? " --quantization fp8" : "");
            struct model *m = NULL;
            if (model_load(&m, path, MODEL_LOAD_DUMMY, err, sizeof err) < 0 ||
                (fp8 && model_quantize(m, MODEL_QUANT_FP8, err, sizeof err) < 0)) {
                GT_CHECK(0, "%s: %s", label, err);
                model_free(m);
                continue;
            }
            if (!fp8) bench_layer(names[i], &m->config, bw_gbs);
            bench_decode(label, m);
            model_free(m);
        }
    }
    return gt_finish();
}
