/* --kv-cache-dtype fp8 through the whole CUDA backend: small dummy models (GQA at head_dim 64,
 * q/k norm at head_dim 128, Gemma 2's sliding window and soft-capping at head_dim 128) against
 * the CPU backend with the same FP8 cache, over chunked prefill (a 300-token prompt in chunks of
 * 128, beside a 7-token one) and greedy decode steps, the CPU fed the GPU's tokens. The CUDA
 * backend runs as shipped (graphs, the tensor-core prefill and decode kernels), with the decode
 * attention doing qkv_post's work at every batch size (fused_qkv=all), eagerly with the prefill
 * on the decode kernels (prefill_mma=0), and over two tensor-parallel ranks sharing the GPU
 * (each its own FP8 cache). Then the number of KV blocks and tokens the automatic sizing
 * (--gpu-memory-utilization) gives with a bf16 and with an FP8 cache: about twice.
 *
 * The bound. The two backends' K and V differ in their last bits (bf16 weights and products on
 * the GPU, float32 on the CPU), which moves the logits of the bf16 cache by up to 3e-2 relative
 * to the CPU's (tests/gpu/test_backend.c's bound). With FP8 those small differences also flip
 * the rounding of the values that lie near the midpoint of two e4m3 codes, each flip moving one
 * value by a step (up to 1/8 of it); a value's bf16-level difference (~2^-8 of it) against a step
 * of 2^-3 flips about one value in 2^5 / 2, and their moves, at random signs, add about
 * sqrt(1/64) x 1/16 = 1/128 of the values' size to the attention's output: 8e-3 more. The bound
 * is the bf16 cache's own worst on the same steps (CUDA's bf16 cache against the CPU's float32
 * one, measured beside it; at least test_backend's 3e-2) plus 2e-2, 2.5 times that estimate.
 * That CUDA's cache is FP8 indeed shows in its logits being nearer the CPU's FP8 cache than the
 * CPU's float32 one: the FP8 cache's own effect (2e-2 to 3.5e-2 on average on these models, on
 * the CPU) is independent of the backends' difference and larger than the flips'.
 *
 * Run build/tests/gpu/test_kv_fp8 on a GPU (SLUICE_TEST_DATA is not needed). */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define BF16_BOUND 3e-2 /* tests/gpu/test_backend.c's, CUDA's bf16 cache against the CPU */
#define FLIPS 2e-2
#define BLOCKS_PER_SEQ 40
#define N_GEN 8
#define N_RUNS 5 /* CUDA variants below */

/* ||a - b|| / ||b|| over n logits (infinite when a is not finite). */
static double rel_err(const float *a, const float *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return isfinite(num) ? sqrt(num / den) : INFINITY;
}

struct variant {
    const char *what;
    struct backend_options bo;
    struct backend *b;
    float *logits;
    double worst;
};

/* One dummy model: every CUDA variant and the CPU with an FP8 cache (and the CPU with its float32
 * cache, for the FP8 cache's own effect) step by step on the same batches. */
static void test_model(const char *name, const char *config_json)
{
    printf("%s: CUDA FP8 cache vs CPU FP8 cache\n", name);
    struct model *m = gt_dummy_model(config_json);
    if (!m) return;
    const int V = m->config.vocab_size;
    const struct backend_options base = {.kv_blocks = 2 * BLOCKS_PER_SEQ,
                                         .kv_dtype = KV_CACHE_FP8_E4M3,
                                         .max_batch_tokens = 512,
                                         .max_batch_seqs = 4,
                                         .cpu.n_threads = 4,
                                         .gpu_memory_utilization = 0.9};
    struct variant gpu[N_RUNS] = {{"default", base, NULL, NULL, 0},
                                  {"fused_qkv=all", base, NULL, NULL, 0},
                                  {"prefill_mma=0, eager", base, NULL, NULL, 0},
                                  {"deterministic", base, NULL, NULL, 0},
                                  {"2 tensor-parallel ranks on one GPU (tp_nccl=0)", base, NULL, NULL, 0}};
    gpu[1].bo.cuda.fused_qkv = CUDA_FUSED_QKV_ALL;
    gpu[2].bo.cuda.no_prefill_mma = true;
    gpu[2].bo.cuda.enforce_eager = true;
    gpu[3].bo.deterministic = true;
    gpu[4].bo.tensor_parallel_size = 2;
    gpu[4].bo.cuda.no_tp_nccl = true;
    struct backend_options f32 = base;
    f32.kv_dtype = KV_CACHE_AUTO;
    struct backend *cpu = NULL, *cpu32 = NULL;
    char err[512];
    int ok = 1;
    if (backend_cpu_create(&cpu, m, &base, err, sizeof err) < 0 || backend_cpu_create(&cpu32, m, &f32, err, sizeof err) < 0) {
        GT_CHECK(0, "%s: backend_cpu_create: %s", name, err);
        ok = 0;
    }
    struct backend_options bo16 = f32;
    struct backend *gpu16 = NULL;
    if (ok && backend_cuda_create(&gpu16, m, &bo16, err, sizeof err) < 0) {
        GT_CHECK(0, "%s: backend_cuda_create (bf16 cache): %s", name, err);
        ok = 0;
    }
    for (int v = 0; ok && v < N_RUNS; v++) {
        /* --deterministic needs the Hopper products; elsewhere that variant is left out. */
        if (backend_cuda_create(&gpu[v].b, m, &gpu[v].bo, err, sizeof err) < 0) {
            if (v == 3 && strstr(err, "Hopper")) {
                printf("  (no deterministic variant: %s)\n", err);
                continue;
            }
            GT_CHECK(0, "%s: backend_cuda_create (%s): %s", name, gpu[v].what, err);
            ok = 0;
            break;
        }
        gpu[v].logits = malloc((size_t)2 * V * 4);
    }
    int32_t p0[300], p1[7];
    for (int i = 0; i < 300; i++) p0[i] = gt_int(V);
    for (int i = 0; i < 7; i++) p1[i] = gt_int(V);
    const int32_t *prompt[2] = {p0, p1};
    const int n_prompt[2] = {300, 7};
    int32_t blocks[2][BLOCKS_PER_SEQ], hist[2][300 + N_GEN];
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) blocks[s][i] = (BLOCKS_PER_SEQ - 1 - i) * 2 + s; /* interleaved */
        memcpy(hist[s], prompt[s], (size_t)n_prompt[s] * 4);
    }
    const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                           .logprobs = -1};
    float *lc = malloc((size_t)2 * V * 4), *l32 = malloc((size_t)2 * V * 4), *l16 = malloc((size_t)2 * V * 4);
    double fp8_effect = 0, near_fp8 = 0, near_f32 = 0, bf16_worst = 0;
    int fed[2] = {0, 0}, n_out[2] = {0, 0}, steps = 0, rows_seen = 0;
    while (ok) {
        struct batch_seq seqs[2];
        int32_t tokens[512];
        int S = 0, T = 0, map[2];
        for (int s = 0; s < 2; s++) {
            if (n_out[s] >= N_GEN) continue;
            struct batch_seq *q = &seqs[S];
            map[S++] = s;
            const int pos = fed[s] < n_prompt[s] ? fed[s] : n_prompt[s] + n_out[s] - 1;
            const int k = fed[s] < n_prompt[s] ? (n_prompt[s] - fed[s] < 128 ? n_prompt[s] - fed[s] : 128) : 1;
            memcpy(tokens + T, hist[s] + pos, (size_t)k * 4);
            *q = (struct batch_seq){.n_new = k, .start_pos = pos, .block_table = blocks[s], .n_blocks = BLOCKS_PER_SEQ,
                                    .sample = pos + k >= n_prompt[s], .prompt = pos < n_prompt[s],
                                    .sampling = &greedy, .n_generated = (uint64_t)n_out[s], .history = hist[s],
                                    .n_history = pos + k, .n_output = n_out[s]};
            if (fed[s] < n_prompt[s]) fed[s] += k;
            T += k;
        }
        if (S == 0) break;
        struct sample_result rg[2], rx[2];
        struct batch bc = {.n_seqs = S, .seqs = seqs, .n_tokens = T, .tokens = tokens, .logits_out = lc};
        struct batch b32 = bc, b16 = bc;
        b32.logits_out = l32;
        b16.logits_out = l16;
        if (backend_forward(cpu, &bc, rx) < 0 || backend_forward(cpu32, &b32, rx) < 0 ||
            backend_forward(gpu16, &b16, rx) < 0) {
            GT_CHECK(0, "%s: forward: CPU '%s' '%s', CUDA bf16 cache '%s'", name, cpu->error, cpu32->error,
                     gpu16->error);
            break;
        }
        int first = -1;
        for (int v = 0; v < N_RUNS; v++) {
            if (!gpu[v].b) continue;
            struct batch bg = bc;
            bg.logits_out = gpu[v].logits;
            if (backend_forward(gpu[v].b, &bg, first < 0 ? rg : rx) < 0) {
                GT_CHECK(0, "%s: CUDA forward (%s): %s", name, gpu[v].what, gpu[v].b->error);
                ok = 0;
                break;
            }
            if (first < 0) first = v;
        }
        if (!ok) break;
        steps++;
        for (int i = 0, r = 0; i < S; i++) {
            if (!seqs[i].sample) continue;
            const size_t at = (size_t)r * V;
            for (int v = 0; v < N_RUNS; v++) {
                if (!gpu[v].b) continue;
                const double e = rel_err(gpu[v].logits + at, lc + at, V);
                if (!(e <= gpu[v].worst)) gpu[v].worst = e;
            }
            fp8_effect += rel_err(lc + at, l32 + at, V);
            const double e16 = rel_err(l16 + at, l32 + at, V);
            if (!(e16 <= bf16_worst)) bf16_worst = e16;
            near_fp8 += rel_err(gpu[first].logits + at, lc + at, V);
            near_f32 += rel_err(gpu[first].logits + at, l32 + at, V);
            rows_seen++;
            const int s = map[i];
            hist[s][n_prompt[s] + n_out[s]] = rg[r].token;
            n_out[s]++;
            r++;
        }
    }
    const double bound = (bf16_worst > BF16_BOUND ? bf16_worst : BF16_BOUND) + FLIPS;
    if (ok)
        printf("  %s: CUDA's bf16 cache vs the CPU's float32 cache: worst rel err %.2e; FP8 bound %.2e\n", name,
               bf16_worst, bound);
    for (int v = 0; ok && v < N_RUNS; v++)
        if (gpu[v].b)
            GT_CHECK(gpu[v].worst < bound,
                     "%s (%s): logits vs the CPU's FP8 cache over %d steps: worst rel err %.2e (bound %.2e)", name,
                     gpu[v].what, steps, gpu[v].worst, bound);
    if (ok && rows_seen) {
        fp8_effect /= rows_seen, near_fp8 /= rows_seen, near_f32 /= rows_seen;
        if (fp8_effect > 1e-2)
            GT_CHECK(near_fp8 < near_f32,
                     "%s: CUDA's cache is FP8: its logits are nearer the CPU's FP8 cache (mean rel err %.2e) than its "
                     "float32 cache (%.2e; the FP8 cache moves the CPU's logits by %.2e on average)",
                     name, near_fp8, near_f32, fp8_effect);
        else
            printf("  note %s: the FP8 cache moves this model's logits by %.2e on average, within the backends' own "
                   "difference: not a test of which cache CUDA used\n", name, fp8_effect);
    }
    for (int v = 0; v < N_RUNS; v++) {
        backend_free(gpu[v].b);
        free(gpu[v].logits);
    }
    backend_free(gpu16);
    backend_free(cpu);
    backend_free(cpu32);
    free(lc);
    free(l32);
    free(l16);
    model_free(m);
}

/* The automatic sizing with each cache: the blocks --gpu-memory-utilization 0.5 leaves room for. */
static void test_auto_sizing(void)
{
    printf("KV cache sizing: bf16 vs fp8\n");
    struct model *m = gt_dummy_model(GT_LLAMA3_8B_CONFIG);
    if (!m) return;
    /* Two layers of Llama-3-8B: its KV bytes a token per layer, without 16 GB of weights. */
    const int n_layers = m->config.n_layers;
    m->config.n_layers = 2;
    int32_t blocks[2] = {0, 0};
    for (int fp8 = 0; fp8 < 2; fp8++) {
        struct backend_options bo = {.kv_dtype = fp8 ? KV_CACHE_FP8_E4M3 : KV_CACHE_AUTO,
                                     .gpu_memory_utilization = 0.5,
                                     .max_batch_tokens = 2048,
                                     .max_batch_seqs = 64,
                                     .cuda = {.no_warmup = true}};
        struct backend *b = NULL;
        char err[512];
        if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
            GT_CHECK(0, "backend_cuda_create (%s cache): %s", fp8 ? "fp8" : "bf16", err);
            m->config.n_layers = n_layers;
            model_free(m);
            return;
        }
        blocks[fp8] = b->num_kv_blocks;
        printf("  %s cache: %d blocks = %lld tokens\n", fp8 ? "fp8_e4m3" : "bf16", blocks[fp8],
               (long long)blocks[fp8] * KV_BLOCK_SIZE);
        backend_free(b);
    }
    const double ratio = blocks[0] ? (double)blocks[1] / blocks[0] : 0;
    GT_CHECK(ratio > 1.9 && ratio < 2.1,
             "the automatic sizing gives the FP8 cache %.3f times the bf16 cache's blocks (%d against %d, Llama-3-8B's "
             "KV shape, 2 layers, --gpu-memory-utilization 0.5)",
             ratio, blocks[1], blocks[0]);
    m->config.n_layers = n_layers;
    model_free(m);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_model("llama-gqa-64",
               "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":688,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":64,"
               "\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"
               "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    test_model("qwen3-qknorm-128",
               "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":512,\"intermediate_size\":768,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"num_key_value_heads\":2,\"head_dim\":128,"
               "\"vocab_size\":900,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
               "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    /* Gemma 2: a sliding layer (window 64, shorter than the prompt) and a global one, scores
     * soft-capped at 50 and the logits at 30. */
    test_model("gemma2-window-softcap-128",
               "{\"architectures\":[\"Gemma2ForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":512,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":128,"
               "\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":10000.0,"
               "\"hidden_activation\":\"gelu_pytorch_tanh\",\"query_pre_attn_scalar\":128,"
               "\"attn_logit_softcapping\":50.0,\"final_logit_softcapping\":30.0,\"sliding_window\":64,"
               "\"layer_types\":[\"sliding_attention\",\"full_attention\"],"
               "\"tie_word_embeddings\":true,\"bos_token_id\":2,\"eos_token_id\":1,\"torch_dtype\":\"bfloat16\"}");
    test_auto_sizing();
    return gt_finish();
}
