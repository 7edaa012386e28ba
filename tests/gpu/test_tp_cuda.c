/* The CUDA backend with --tensor-parallel-size 1: an NCCL communicator of one GPU whose
 * all-reduces (after attention and after the MLP) and logits gather run in every step, eagerly
 * and in CUDA graphs, and change nothing: greedy tokens and logits equal, bit for bit, those of
 * the backend without a communicator (where two of those equal each other), on stories260K and
 * on a random-weight model wide enough for the Hopper products' split parts (test_tp_sharded
 * checks sizes above 1). The same with --cuda-options tp_oneshot=1, where the all-reduces take
 * the one-shot kernel of one rank, which adds the products' split parts and the residual in the
 * order the RMSNorm would, so that nothing changes either. Exits 0 with a SKIP line without a
 * GPU, or without NCCL in the build or on the machine. */
#include <stdbool.h>
#include <unistd.h>

#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"
#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define N_SEQS 3
#define N_GEN 32
#define BLOCKS_PER_SEQ 8
#define MAX_VOCAB 8192

struct run_out {
    int32_t ids[N_SEQS][N_GEN];
    float *logits; /* [N_SEQS][N_GEN][vocab] */
};

/* Three prompts in one ragged batch, prefilled in chunks of 7, then greedy decode. */
static int generate(struct backend *b, struct run_out *out)
{
    const int V = b->config.vocab_size;
    static const int32_t prompts[N_SEQS][16] = {
        {1, 15, 27, 300, 41, 5, 6, 90, 100, 11, 12, 13}, {1, 200, 201, 202, 203}, {1, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
    static const int n_prompt[N_SEQS] = {12, 5, 11};
    struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .logprobs = -1};
    int32_t tables[N_SEQS][BLOCKS_PER_SEQ], hist[N_SEQS][16 + N_GEN];
    int pos[N_SEQS] = {0}, n_gen[N_SEQS] = {0};
    for (int s = 0; s < N_SEQS; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) tables[s][i] = i * N_SEQS + s;
        memcpy(hist[s], prompts[s], (size_t)n_prompt[s] * sizeof(int32_t));
    }
    float *step_logits = malloc((size_t)N_SEQS * V * sizeof(float));
    int rc = 0;
    for (;;) {
        struct batch_seq seqs[N_SEQS];
        int32_t tokens[64];
        int ns = 0, nt = 0, who[N_SEQS];
        for (int s = 0; s < N_SEQS; s++) {
            if (n_gen[s] == N_GEN) continue;
            int take = pos[s] < n_prompt[s] ? (n_prompt[s] - pos[s] < 7 ? n_prompt[s] - pos[s] : 7) : 1;
            memcpy(tokens + nt, hist[s] + pos[s], (size_t)take * sizeof(int32_t));
            seqs[ns] = (struct batch_seq){.n_new = take, .start_pos = pos[s], .block_table = tables[s],
                                          .n_blocks = BLOCKS_PER_SEQ, .sample = pos[s] + take >= n_prompt[s],
                                          .prompt = pos[s] < n_prompt[s], .sampling = &greedy,
                                          .n_generated = (uint64_t)n_gen[s]};
            who[ns++] = s;
            nt += take;
        }
        if (ns == 0) break;
        struct batch batch = {.n_seqs = ns, .seqs = seqs, .n_tokens = nt, .tokens = tokens, .logits_out = step_logits};
        struct sample_result res[N_SEQS];
        if ((rc = backend_forward(b, &batch, res)) != 0) break;
        int k = 0;
        for (int i = 0; i < ns; i++) {
            int s = who[i];
            pos[s] += seqs[i].n_new;
            if (!seqs[i].sample) continue;
            memcpy(out->logits + ((size_t)s * N_GEN + n_gen[s]) * V, step_logits + (size_t)k * V, (size_t)V * 4);
            out->ids[s][n_gen[s]] = res[k].token;
            hist[s][pos[s]] = res[k].token;
            n_gen[s]++;
            k++;
        }
    }
    free(step_logits);
    return rc;
}

static struct backend *make(const struct model *m, int tp, bool oneshot, bool eager, char *err, size_t errlen)
{
    struct backend_options bo = {.kv_blocks = N_SEQS * BLOCKS_PER_SEQ + 1,
                                 .gpu_memory_utilization = 0.9,
                                 .max_batch_tokens = 256,
                                 .max_batch_seqs = 8,
                                 .device = 0,
                                 .tensor_parallel_size = tp,
                                 .cuda = {.enforce_eager = eager, .tp_oneshot = oneshot}};
    struct backend *b = NULL;
    return backend_cuda_create(&b, m, &bo, err, errlen) == 0 ? b : NULL;
}

/* Returns 1 when NCCL is missing (the test then skips). */
static size_t count_differ(const struct run_out *a, const struct run_out *b, size_t n, float tol)
{
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += fabsf(a->logits[i] - b->logits[i]) > tol * (1.0f + fabsf(a->logits[i]));
    return differ;
}

#define N_RUNS 4
/* What each run of compare has: no communicator (twice), NCCL, NCCL with the one-shot kernel. */
static const char *const run_how[N_RUNS] = {"without a communicator", "without a communicator", "through NCCL",
                                            "through NCCL and the one-shot kernel"};

/* Per mode (CUDA graphs, eager): two runs without a communicator (is the backend bit for bit
 * reproducible from one instance to the next?), then one through NCCL and one with tp_oneshot=1,
 * which must equal them bit for bit where they equal each other. Returns 1 when NCCL is missing
 * (the test skips). */
static int compare(const char *name, const struct model *m)
{
    const size_t n = (size_t)N_SEQS * N_GEN * m->config.vocab_size;
    char err[1024] = "";
    printf("%s\n", name);
    struct run_out runs[N_RUNS];
    for (int i = 0; i < N_RUNS; i++) runs[i].logits = malloc(n * 4);
    int skip = 0;
    for (int eager = 0; eager < 2 && !skip; eager++) {
        const char *mode = eager ? "eager" : "CUDA graphs";
        bool ok = true;
        for (int i = 0; i < N_RUNS && ok; i++) {
            struct backend *b = make(m, i >= 2 ? 1 : 0, i == 3, eager, err, sizeof err);
            if (!b && i == 2 && (strstr(err, "without NCCL") || strstr(err, "cannot open the NCCL library"))) {
                printf("SKIP: %s\n", err);
                skip = 1;
                break;
            }
            GT_CHECK(b != NULL, "%s: backend %s %s", mode, run_how[i], err);
            if (!(ok = b != NULL)) break;
            memset(runs[i].ids, 0xff, sizeof runs[i].ids);
            int rc = generate(b, &runs[i]);
            GT_CHECK(rc == 0, "%s: steps %s %s", mode, run_how[i], b->error);
            ok = rc == 0;
            backend_free(b);
        }
        if (!ok || skip) continue;
        bool reproducible = memcmp(runs[0].ids, runs[1].ids, sizeof runs[0].ids) == 0 &&
                            count_differ(&runs[0], &runs[1], n, 0.0f) == 0;
        if (!reproducible)
            printf("  note: %s: two backends without a communicator differ from each other; the runs through NCCL "
                   "are compared within 1e-3 relative\n", mode);
        for (int i = 2; i < N_RUNS; i++) {
            GT_CHECK(memcmp(runs[0].ids, runs[i].ids, sizeof runs[0].ids) == 0,
                     "%s: greedy tokens %s equal those without", mode, run_how[i]);
            size_t differ = count_differ(&runs[0], &runs[i], n, reproducible ? 0.0f : 1e-3f);
            GT_CHECK(differ == 0, "%s: logits %s equal %s (%zu of %zu differ)", mode, run_how[i],
                     reproducible ? "bit for bit" : "within 1e-3 relative", differ, n);
        }
    }
    for (int i = 0; i < N_RUNS; i++) free(runs[i].logits);
    return skip;
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    struct model *m = gt_stories_model();
    if (m) {
        int skip = compare("stories260K", m);
        model_free(m);
        if (skip) return gt_finish();
    }
    m = gt_dummy_model("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":1024,\"intermediate_size\":2816,"
              "\"num_hidden_layers\":4,\"num_attention_heads\":8,\"num_key_value_heads\":2,\"head_dim\":128,"
              "\"vocab_size\":4096,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
              "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    if (m) {
        compare("qwen2-shaped random model, hidden 1024", m);
        model_free(m);
    }
    return gt_finish();
}
