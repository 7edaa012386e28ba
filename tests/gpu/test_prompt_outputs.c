/* Prompt logprobs and hidden states (embeddings) from the CUDA backend against the CPU backend
 * on the same dummy weights (bf16 on the device, so within tolerances), plus what must hold
 * exactly on the device's own numbers (each row's target, rank against its top list, the top
 * list's order).
 *
 * One batch carries: a prompt whose every position wants its logprob with 5 alternatives (more
 * rows than max_batch_seqs, so lm_head runs in groups) and which samples at its end; a mean-pooled
 * embedding (every token's state summed) and a last-token embedding; then the same prompt again
 * in chunks of 16 over several steps (each chunk's rows into their place of the output). */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define BLOCKS 8
#define NA 70 /* the prompt with logprobs */
#define NB 45 /* mean-pooled */
#define NC 33 /* last token */
#define TOP 5

struct outputs {
    struct prompt_logprob lp[NA - 1], lp_chunked[NA - 1];
    float *sum, *last;
    int32_t sampled;
};

/* The batch on b; returns 0 or the backend's error (printed). */
static int run(struct backend *b, const int32_t *pa, const int32_t *pb, const int32_t *pc, struct outputs *o)
{
    static int32_t blocks[4][BLOCKS];
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < BLOCKS; i++) blocks[s][i] = s * BLOCKS + (BLOCKS - 1 - i);
    const int H = b->config.hidden_size;
    memset(o->sum, 0, (size_t)H * 4);
    const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1, .logprobs = -1};
    int32_t tokens[NA + NB + NC];
    memcpy(tokens, pa, NA * 4);
    memcpy(tokens + NA, pb, NB * 4);
    memcpy(tokens + NA + NB, pc, NC * 4);
    struct batch_seq seqs[3] = {
        {.n_new = NA, .block_table = blocks[0], .n_blocks = BLOCKS, .sample = true, .prompt = true,
         .sampling = &greedy, .lp_first = 0, .lp_rows = NA - 1, .lp_top = TOP, .lp_targets = pa + 1, .lp_out = o->lp},
        {.n_new = NB, .block_table = blocks[1], .n_blocks = BLOCKS, .prompt = true, .hidden_sum = o->sum},
        {.n_new = NC, .block_table = blocks[2], .n_blocks = BLOCKS, .prompt = true, .hidden_last = o->last},
    };
    struct batch batch = {.n_seqs = 3, .seqs = seqs, .n_tokens = NA + NB + NC, .tokens = tokens};
    struct sample_result res[1];
    if (backend_forward(b, &batch, res) < 0) {
        printf("    %s: %s\n", b->name, b->error);
        return -1;
    }
    o->sampled = res[0].token;
    /* The same prompt in chunks of 16, its rows' logprobs written where each chunk says. */
    for (int start = 0; start < NA; start += 16) {
        const int n = NA - start < 16 ? NA - start : 16;
        const int lp_end = start + n < NA - 1 ? start + n : NA - 1;
        struct batch_seq q = {.n_new = n, .start_pos = start, .block_table = blocks[3], .n_blocks = BLOCKS,
                              .sample = start + n == NA, .prompt = true, .sampling = &greedy, .lp_first = 0,
                              .lp_rows = lp_end - start, .lp_top = TOP, .lp_targets = pa + start + 1,
                              .lp_out = o->lp_chunked + start};
        struct batch one = {.n_seqs = 1, .seqs = &q, .n_tokens = n, .tokens = pa + start};
        if (backend_forward(b, &one, res) < 0) {
            printf("    %s (chunked): %s\n", b->name, b->error);
            return -1;
        }
    }
    return 0;
}

/* What holds exactly for one row of the device's prompt logprobs. */
static bool row_consistent(const struct prompt_logprob *p, int32_t target)
{
    if (p->token != target || !(p->logprob <= 0.0f) || p->rank < 1 || p->n_top != TOP) return false;
    int above = 0;
    for (int k = 0; k < p->n_top; k++) {
        if (k > 0 && p->top_logprobs[k] > p->top_logprobs[k - 1]) return false;
        above += p->top_logprobs[k] > p->logprob;
        if (p->top_ids[k] == target && fabsf(p->top_logprobs[k] - p->logprob) > 0.0f) return false;
    }
    /* Strictly larger logits rank before the target; rounding to float may only tie them. */
    return above <= p->rank - 1;
}

/* ||a - ref|| / ||ref|| over n floats (gt_rel_err on a double copy of ref). */
static double rel_err(const float *a, const float *ref, int n)
{
    double *r = malloc((size_t)n * sizeof *r);
    for (int i = 0; i < n; i++) r[i] = ref[i];
    const double e = gt_rel_err(a, r, (size_t)n);
    free(r);
    return e;
}

static void test_model(const char *name, const char *config_json)
{
    printf("prompt logprobs and hidden states, %s: CUDA vs CPU backend\n", name);
    struct model *m = gt_dummy_model(config_json);
    if (!m) return;
    const int V = m->config.vocab_size, H = m->config.hidden_size;
    struct backend_options bo = {.kv_blocks = 4 * BLOCKS + 2, .max_batch_tokens = 256, .max_batch_seqs = 8,
                                 .cpu.n_threads = 4, .gpu_memory_utilization = 0.9};
    char err[512];
    struct backend *cpu = NULL, *gpu = NULL;
    if (backend_cpu_create(&cpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cpu_create: %s", err);
    if (cpu && backend_cuda_create(&gpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cuda_create: %s", err);
    if (!cpu || !gpu) {
        backend_free(cpu);
        model_free(m);
        return;
    }
    GT_CHECK(gpu->supports_prompt_logprobs && gpu->supports_hidden_states,
             "the CUDA backend says it computes prompt logprobs and hidden states");
    int32_t pa[NA], pb[NB], pc[NC];
    for (int i = 0; i < NA; i++) pa[i] = gt_int(V);
    for (int i = 0; i < NB; i++) pb[i] = gt_int(V);
    for (int i = 0; i < NC; i++) pc[i] = gt_int(V);
    struct outputs og = {0}, oc = {0};
    og.sum = malloc((size_t)H * 4), og.last = malloc((size_t)H * 4);
    oc.sum = malloc((size_t)H * 4), oc.last = malloc((size_t)H * 4);
    for (int i = 0; i < H; i++) og.last[i] = oc.last[i] = NAN;
    const int rg = run(gpu, pa, pb, pc, &og), rc = run(cpu, pa, pb, pc, &oc);
    GT_CHECK(rg == 0 && rc == 0, "%s: both backends run the batch", name);
    if (rg == 0 && rc == 0) {
        int inconsistent = 0, top1_far = 0;
        double lp_diff = 0, chunk_diff = 0;
        for (int i = 0; i < NA - 1; i++) {
            inconsistent += !row_consistent(&og.lp[i], pa[i + 1]) + !row_consistent(&og.lp_chunked[i], pa[i + 1]);
            double d = fabs((double)og.lp[i].logprob - oc.lp[i].logprob);
            if (d > lp_diff) lp_diff = d;
            d = fabs((double)og.lp[i].logprob - og.lp_chunked[i].logprob);
            if (d > chunk_diff) chunk_diff = d;
            /* The best alternative's logprob (its id may differ on near-ties). */
            top1_far += fabsf(og.lp[i].top_logprobs[0] - oc.lp[i].top_logprobs[0]) > 0.05f;
        }
        GT_CHECK(inconsistent == 0,
                 "%s: every device row names its target, ranks it against its own top %d, keeps the top list in order "
                 "(%d rows bad)",
                 name, TOP, inconsistent);
        GT_CHECK(lp_diff < 0.05 && top1_far == 0,
                 "%s: prompt logprobs within 0.05 of the CPU backend's (max diff %.3g; best alternative off in %d rows)",
                 name, lp_diff, top1_far);
        GT_CHECK(chunk_diff < 0.05, "%s: the prompt in chunks of 16 gives the same logprobs (max diff %.3g)", name,
                 chunk_diff);
        GT_CHECK(og.sampled >= 0 && og.sampled < V, "%s: the row that samples in the same step still samples (%d)",
                 name, og.sampled);
        const double es = rel_err(og.sum, oc.sum, H), el = rel_err(og.last, oc.last, H);
        GT_CHECK(es < 3e-2 && el < 3e-2,
                 "%s: pooled hidden states (sum of %d tokens, last of %d) within 3e-2 of the CPU's (rel err %.2e, %.2e)",
                 name, NB, NC, es, el);
    }
    free(og.sum), free(og.last), free(oc.sum), free(oc.last);
    backend_free(gpu);
    backend_free(cpu);
    model_free(m);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_model("llama-gqa",
               "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":688,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":64,"
               "\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
               "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    /* Tied embeddings (lm_head is the embedding table) and head_dim 128. */
    test_model("qwen3-tied-128",
               "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":512,\"intermediate_size\":768,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":1,\"head_dim\":128,"
               "\"vocab_size\":1200,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,"
               "\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    return gt_finish();
}
