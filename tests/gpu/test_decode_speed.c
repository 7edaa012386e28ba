/* Decode and prefill speed of the CUDA backend on a dummy Llama-3-8B (random bf16 weights at the
 * real shapes). Runs only with SLUICE_GPU_BENCH=1 (it needs ~17 GB of GPU memory and seconds);
 * otherwise it skips. Checks that outputs are sane and prints tokens/s against the roofline
 * of reading every weight once per step. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "worker/backend/backend.h"
#include "worker/model/model.h"

int main(void)
{
    if (!gt_have_gpu() || !gt_bench_wanted()) return 0;
    struct model *m = gt_dummy_model(GT_LLAMA3_8B_CONFIG);
    if (!m) return gt_finish();
    char err[512];
    int rc = 0;
    const int variants[][3] = {{1, 1, 1}, {1, 0, 0}, {0, 0, 1}};
    for (int v = 0; v < 3; v++) {
        int gemv = variants[v][0], graphs = variants[v][1], mma = variants[v][2];
        printf("  variant: one-row products by %s, CUDA graphs %s, prefill attention on %s\n",
               gemv ? "own gemv" : "cuBLAS", graphs ? "on" : "off", mma ? "tensor cores" : "the general kernel");
        struct backend_options bo = {.gpu_memory_utilization = 0.9,
                                     .max_batch_tokens = 4096,
                                     .max_batch_seqs = 64,
                                     .cuda = {.no_gemv = !gemv, .enforce_eager = !graphs, .no_prefill_mma = !mma}};
        struct backend *b = NULL;
        double t0 = gt_now_s();
        if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
            GT_CHECK(0, "backend_cuda_create: %s", err);
            break;
        }
        printf("  load (dummy fill on GPU) %.2f s, %d KV blocks\n", gt_now_s() - t0, b->num_kv_blocks);
        const struct model_config *c = &m->config;
        double weight_gb =
            2.0 *
            ((double)c->vocab_size * c->hidden_size * 2 +
             (double)c->n_layers *
                 ((double)c->hidden_size * (c->n_heads + 2 * c->n_kv_heads) * c->head_dim +
                  (double)c->hidden_size * c->n_heads * c->head_dim + 3.0 * c->hidden_size * c->intermediate_size)) /
            1e9;

        struct sampling_params sp = {.temperature = 0.0f, .top_p = 1, .repetition_penalty = 1, .logprobs = -1};
        const int prompt = 2048, steps = 128;
        int32_t *blocks = malloc(64 * 256 * 4);
        for (int i = 0; i < 64 * 256; i++) blocks[i] = i;
        int32_t *tokens = malloc(prompt * 4);
        for (int i = 0; i < prompt; i++) tokens[i] = gt_int(c->vocab_size);
        struct batch_seq q = {
            .n_new = prompt, .start_pos = 0, .block_table = blocks, .n_blocks = 256, .sample = true, .sampling = &sp};
        struct batch batch = {.n_seqs = 1, .seqs = &q, .n_tokens = prompt, .tokens = tokens};
        struct sample_result res[64];
        rc = backend_forward(b, &batch, res); /* warm-up */
        t0 = gt_now_s();
        if (rc == 0) rc = backend_forward(b, &batch, res);
        double pre = gt_now_s() - t0;
        GT_CHECK(rc == 0, "[mma %d] prefill %d tokens: %.1f ms (%.0f tok/s) %s", mma, prompt, pre * 1e3, prompt / pre,
                 rc ? b->error : "");

        /* Decode at batch 1 to 64 after the prompt. */
        int bs_list[] = {1, 4, 8, 32, 64};
        for (size_t k = 0; k < sizeof bs_list / sizeof bs_list[0] && rc == 0; k++) {
            int bs = bs_list[k];
            struct batch_seq seqs[64];
            int32_t tk[64];
            for (int s = 0; s < bs; s++) {
                seqs[s] = q;
                seqs[s].block_table = blocks + s * 256;
                seqs[s].n_new = 1;
                tk[s] = res[0].token;
            }
            double best = 0;
            t0 = gt_now_s();
            for (int i = 0; i < steps && rc == 0; i++) {
                for (int s = 0; s < bs; s++) seqs[s].start_pos = (s == 0 ? prompt : 0) + i;
                struct batch db = {.n_seqs = bs, .seqs = seqs, .n_tokens = bs, .tokens = tk};
                rc = backend_forward(b, &db, res);
                for (int s = 0; s < bs && rc == 0; s++) tk[s] = res[s].token;
            }
            double dt = (gt_now_s() - t0) / steps;
            best = 1.0 / dt;
            GT_CHECK(rc == 0,
                     "[gemv %d graphs %d] decode batch %d: %.2f ms/step, %.0f tok/s (weights %.1f GB: %.0f GB/s "
                     "effective) %s",
                     gemv, graphs, bs, dt * 1e3, best * bs, weight_gb, weight_gb / dt, rc ? b->error : "");
        }
        free(blocks);
        free(tokens);
        backend_free(b);
    }
    model_free(m);
    return gt_finish();
}
