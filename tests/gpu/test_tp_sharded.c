/* The CUDA backend sharded over 2 and 4 tensor-parallel ranks (worker/backend/cuda/
 * cuda_tp_group.c) against the CPU backend unsharded, as test_families checks one GPU: logits
 * within bf16 bounds over prefill chunks and greedy decode, greedy tokens equal where the CPU's
 * margin clears the bf16 noise. The models: stories260K (real weights), the mixture-of-experts
 * fixtures (Mixtral, Qwen2-MoE with its shared expert, Qwen3-MoE, made with transformers; the
 * Qwen ones over 2 ranks only, 4 being refused), and
 * random-weight models of Llama with attention and MLP biases (o_proj's and down's summed once)
 * and of Gemma 2 (post-norms after the ranks' sum, soft-capping, alternating windows, a tied
 * embedding), each with a vocabulary the ranks do not divide evenly.
 *
 * With one GPU the ranks share it and meet through host memory (--cuda-options tp_nccl=0,
 * eager); with as many GPUs as ranks they also run through NCCL with CUDA graphs. Each way runs a
 * second time with --cuda-options tp_oneshot=1, where the small all-reduces (here all but the
 * logits gather) take the one-shot kernel instead, fused with the residual add where nothing comes
 * between (stories260K, the MoE fixtures) and apart where a bias or post-norm does (the Llama
 * with biases, Gemma 2); over GPUs without peer access that is refused, naming them. And: NCCL
 * with more ranks than GPUs is refused with a message naming both. */
#include <stdio.h>
#include <unistd.h>

#include "tests/gpu/fixture_run.h"
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"
#include "worker/model/model.h"

static const struct fixture_bounds dense_bounds = {.row_bound = 3e-2, .min_within = 1.0, .median_bound = 1e-2};
/* As test_moe bounds the experts on one GPU: a near-tie in the router can pick another expert. */
static const struct fixture_bounds moe_bounds = {.row_bound = 3e-2, .min_within = 0.75, .median_bound = 2e-2};

static int n_gpus;

static void run_sharded(const char *name, const struct model *m, struct fixture_bounds bd, int tp, const char *how,
                        struct cuda_options cuda)
{
    char label[200];
    snprintf(label, sizeof label, "%s, %d ranks %s%s", name, tp, how,
             cuda.tp_oneshot ? ", small all-reduces one-shot (tp_oneshot=1)" : "");
    printf("%s\n", label);
    const struct fixture_opts o = {.tp = tp, .cuda = cuda};
    fixture_vs_cpu_opts(label, m, bd, &o);
}

/* Whether GPUs 0 .. n-1 can each access the others' memory; if not, a pair that cannot. */
static bool peers_reach(int n, int *from, int *to)
{
    for (*from = 0; *from < n; ++*from)
        for (*to = 0; *to < n; ++*to) {
            int can = 1;
            if (*from != *to && (cudaDeviceCanAccessPeer(&can, *from, *to) != cudaSuccess || !can)) return false;
        }
    return true;
}

static void check_sharded(const char *name, const struct model *m, struct fixture_bounds bd, int max_tp)
{
    for (int tp = 2; tp <= max_tp; tp += 2) {
        const struct cuda_options host = {.no_tp_nccl = true, .enforce_eager = true},
                                  host_oneshot = {.no_tp_nccl = true, .enforce_eager = true, .tp_oneshot = true};
        run_sharded(name, m, bd, tp, "through host memory", host);
        run_sharded(name, m, bd, tp, "through host memory", host_oneshot);
        if (n_gpus < tp) continue;
        char how[64];
        snprintf(how, sizeof how, "on %d GPUs through NCCL, CUDA graphs", tp);
        run_sharded(name, m, bd, tp, how, (struct cuda_options){0});
        int from, to;
        if (peers_reach(tp, &from, &to)) {
            run_sharded(name, m, bd, tp, how, (struct cuda_options){.tp_oneshot = true});
            continue;
        }
        struct backend_options bo = {.kv_blocks = 64, .max_batch_tokens = 256, .max_batch_seqs = 4,
                                     .tensor_parallel_size = tp, .cuda = {.tp_oneshot = true}};
        struct backend *b = NULL;
        char err[1024] = "", gpus[64];
        snprintf(gpus, sizeof gpus, "GPU %d cannot access GPU %d's memory", from, to);
        GT_CHECK(backend_cuda_create(&b, m, &bo, err, sizeof err) != 0 && strstr(err, "tp_oneshot=1") &&
                     strstr(err, gpus) && strstr(err, "no peer access"),
                 "%s, %d GPUs, GPU %d without peer access to GPU %d: tp_oneshot=1 refused, naming them: %s", name, tp,
                 from, to, err);
        backend_free(b);
    }
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    cudaGetDeviceCount(&n_gpus);
    char dir[4096], err[1024];
    struct model *m = gt_stories_model();
    if (m) {
        if (n_gpus < 2) {
            struct backend_options bo = {.kv_blocks = 64, .max_batch_tokens = 256, .max_batch_seqs = 4,
                                         .tensor_parallel_size = 2};
            struct backend *b = NULL;
            GT_CHECK(backend_cuda_create(&b, m, &bo, err, sizeof err) != 0 && strstr(err, "needs 2 GPUs") &&
                         strstr(err, "1 is visible"),
                     "NCCL over 2 ranks on one GPU is refused, naming both counts: %s", err);
            backend_free(b);
        }
        check_sharded("stories260K", m, dense_bounds, 4);
        model_free(m);
    }
    /* Over 4 ranks the Qwen-MoE fixtures' experts keep 4 channels each, under the expert kernels'
     * multiple of 8: refused at creation, naming it. */
    const char *moe[] = {"mixtral", "qwen2_moe", "qwen3_moe"};
    const int moe_max_tp[] = {4, 2, 2};
    for (size_t i = 0; i < sizeof moe / sizeof moe[0]; i++) {
        snprintf(dir, sizeof dir, "tests/fixtures/families/%s", moe[i]);
        if (model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err) != 0) {
            GT_CHECK(0, "model_load %s: %s (run from the repository root)", dir, err);
            continue;
        }
        check_sharded(moe[i], m, moe_bounds, moe_max_tp[i]);
        if (moe_max_tp[i] < 4) {
            struct backend_options bo = {.kv_blocks = 64, .max_batch_tokens = 256, .max_batch_seqs = 4,
                                         .tensor_parallel_size = 4, .cuda = {.no_tp_nccl = true}};
            struct backend *b = NULL;
            GT_CHECK(backend_cuda_create(&b, m, &bo, err, sizeof err) != 0 && strstr(err, "rank 0") &&
                         strstr(err, "multiples of 8"),
                     "%s over 4 ranks refused, naming rank 0 and the experts' sizes: %s", moe[i], err);
            backend_free(b);
        }
        model_free(m);
    }
    m = gt_dummy_model("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":512,"
              "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":1001,"
              "\"max_position_embeddings\":1024,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"attention_bias\":true,"
              "\"mlp_bias\":true,\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,"
              "\"torch_dtype\":\"bfloat16\"}");
    if (m) {
        check_sharded("llama with attention and MLP biases, random weights", m, dense_bounds, 4);
        model_free(m);
    }
    m = gt_dummy_model("{\"architectures\":[\"Gemma2ForCausalLM\"],\"model_type\":\"gemma2\",\"hidden_size\":256,"
              "\"intermediate_size\":512,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
              "\"head_dim\":64,\"vocab_size\":1001,\"max_position_embeddings\":1024,\"rms_norm_eps\":1e-6,"
              "\"rope_theta\":10000.0,\"hidden_activation\":\"gelu_pytorch_tanh\",\"query_pre_attn_scalar\":64,"
              "\"sliding_window\":32,\"attn_logit_softcapping\":50.0,\"final_logit_softcapping\":30.0,"
              "\"tie_word_embeddings\":true,\"bos_token_id\":2,\"eos_token_id\":1,\"torch_dtype\":\"bfloat16\"}");
    if (m) {
        check_sharded("gemma2, random weights", m, dense_bounds, 4);
        model_free(m);
    }
    return gt_finish();
}
