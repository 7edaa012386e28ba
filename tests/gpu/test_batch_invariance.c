/* Batch invariance of the CUDA backend under --deterministic: a sequence's logits, at every step,
 * are the same bits whether it runs alone or among a hundred others, with its prompt prefilled
 * whole or cut into chunks (one of them a single token), and with decode batches of 1 to 131
 * rows (one Hopper slice, then two). Llama-3-8B's widths with two layers and random weights.
 *
 * The same runs without --deterministic only report how many steps differ: there the products'
 * algorithm and split-K follow the row count, which is what the mode exists to avoid. */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "worker/backend/backend.h"
#include "worker/model/model.h"

#define N_GEN 24
#define MAX_PROMPT 80
#define BLOCKS_PER_SEQ ((MAX_PROMPT + N_GEN) / 16 + 1)
#define MAX_SEQS 132

struct inv_seq {
    int32_t prompt[MAX_PROMPT];
    int n_prompt, fed, n_out;
    int32_t out[N_GEN];
    int32_t blocks[BLOCKS_PER_SEQ];
    float *logits; /* N_GEN rows of the vocabulary: the logits each token was chosen from */
};

/* Runs every sequence to N_GEN greedy tokens, all in one ragged batch per step: prompts in chunks
 * of at most `chunk` tokens, a step's tokens at most `budget`, as the engine's scheduler cuts
 * them. Block ids come from first_block on, BLOCKS_PER_SEQ per sequence. */
static int run(struct backend *b, struct inv_seq *ss, int n, int chunk, int budget, int first_block)
{
    const int V = b->config.vocab_size;
    static struct batch_seq seqs[MAX_SEQS];
    static int32_t tokens[4096];
    static struct sample_result res[MAX_SEQS];
    const struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f,
                                           .logprobs = -1};
    float *logits = malloc((size_t)MAX_SEQS * V * sizeof *logits);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        ss[i].fed = ss[i].n_out = 0;
        for (int k = 0; k < BLOCKS_PER_SEQ; k++) ss[i].blocks[k] = first_block + i * BLOCKS_PER_SEQ + k;
    }
    for (;;) {
        int S = 0, T = 0, map[MAX_SEQS];
        for (int i = 0; i < n && T < budget; i++) {
            struct inv_seq *g = &ss[i];
            if (g->n_out >= N_GEN) continue;
            struct batch_seq *q = &seqs[S];
            memset(q, 0, sizeof *q);
            if (g->fed < g->n_prompt) {
                int k = g->n_prompt - g->fed;
                if (k > chunk) k = chunk;
                if (k > budget - T) k = budget - T;
                memcpy(tokens + T, g->prompt + g->fed, (size_t)k * 4);
                q->start_pos = g->fed;
                q->n_new = k;
                q->prompt = true;
                g->fed += k;
                q->sample = g->fed == g->n_prompt;
            } else {
                tokens[T] = g->out[g->n_out - 1];
                q->start_pos = g->n_prompt + g->n_out - 1;
                q->n_new = 1;
                q->sample = true;
            }
            T += q->n_new;
            q->block_table = g->blocks;
            q->n_blocks = BLOCKS_PER_SEQ;
            q->sampling = &greedy;
            q->n_generated = (uint64_t)g->n_out;
            map[S++] = i;
        }
        if (S == 0) break;
        struct batch batch = {.n_seqs = S, .seqs = seqs, .n_tokens = T, .tokens = tokens, .logits_out = logits};
        if ((rc = backend_forward(b, &batch, res)) < 0) break;
        for (int s = 0, r = 0; s < S; s++) {
            if (!seqs[s].sample) continue;
            struct inv_seq *g = &ss[map[s]];
            memcpy(g->logits + (size_t)g->n_out * V, logits + (size_t)r * V, (size_t)V * sizeof *logits);
            g->out[g->n_out++] = res[r++].token;
        }
    }
    free(logits);
    return rc;
}

/* Steps at which a's logits differ from ref's in any bit (tokens compared through them). */
static int steps_differing(const struct inv_seq *a, const struct inv_seq *ref, int V, int *first)
{
    int bad = 0;
    *first = -1;
    for (int k = 0; k < N_GEN; k++) {
        const bool same = a->out[k] == ref->out[k] &&
                          !memcmp(a->logits + (size_t)k * V, ref->logits + (size_t)k * V, (size_t)V * sizeof(float));
        if (!same && *first < 0) *first = k;
        bad += !same;
        if (a->out[k] != ref->out[k]) {
            bad += N_GEN - 1 - k; /* after a different token nothing is comparable */
            break;
        }
    }
    return bad;
}

static void random_prompt(struct inv_seq *s, int len, int V)
{
    s->n_prompt = len;
    for (int i = 0; i < len; i++) s->prompt[i] = gt_int(V);
}

/* Sequence 0 and 1 of a crowd of n, each against its run alone. */
static void check_crowd(struct backend *b, struct inv_seq *ss, const struct inv_seq *alone, int n, int chunk,
                        bool deterministic)
{
    const int V = b->config.vocab_size;
    const int rc = run(b, ss, n, chunk, 2048, 0);
    if (rc < 0) {
        GT_CHECK(0, "crowd of %d, chunks of %d: %s", n, chunk, b->error);
        return;
    }
    for (int i = 0; i < 2; i++) {
        int first;
        const int bad = steps_differing(&ss[i], &alone[i], V, &first);
        if (deterministic)
            GT_CHECK(bad == 0, "deterministic: sequence %d (prompt %d) among %d, chunks of %d: %d of %d steps' logits "
                     "differ from its run alone (first at %d)", i, ss[i].n_prompt, n, chunk, bad, N_GEN, first);
        else
            printf("  info  default mode: sequence %d among %d, chunks of %d: %d of %d steps differ from alone%s\n", i,
                   n, chunk, bad, N_GEN, bad ? " (expected: the default is not batch-invariant)" : "");
    }
}

static void test_mode(struct model *m, bool deterministic)
{
    const int V = m->config.vocab_size;
    char err[512];
    struct backend *b = NULL;
    struct backend_options bo = {.kv_blocks = MAX_SEQS * BLOCKS_PER_SEQ + 16,
                                 .max_batch_tokens = 2048,
                                 .max_batch_seqs = MAX_SEQS,
                                 .gpu_memory_utilization = 0.9,
                                 .deterministic = deterministic};
    if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
        GT_CHECK(0, "backend_cuda_create (deterministic %d): %s", deterministic, err);
        return;
    }
    struct inv_seq *ss = calloc(MAX_SEQS, sizeof *ss), alone[2];
    memset(alone, 0, sizeof alone);
    for (int i = 0; i < MAX_SEQS; i++) ss[i].logits = malloc((size_t)N_GEN * V * sizeof(float));
    for (int i = 0; i < 2; i++) alone[i].logits = malloc((size_t)N_GEN * V * sizeof(float));
    gt_rng_state = 0xC0FFEEull;
    /* 33 tokens: in chunks of 16 its last chunk is the prompt's last token alone. */
    random_prompt(&ss[0], 33, V);
    random_prompt(&ss[1], 70, V);
    for (int i = 2; i < MAX_SEQS; i++) random_prompt(&ss[i], 3 + gt_int(MAX_PROMPT - 3), V);
    for (int i = 0; i < 2; i++) {
        alone[i].n_prompt = ss[i].n_prompt;
        memcpy(alone[i].prompt, ss[i].prompt, sizeof ss[i].prompt);
        /* Alone: the whole prompt in one step, then decode steps of one row (gemv's batch). */
        if (run(b, &alone[i], 1, 4096, 4096, 0) < 0) GT_CHECK(0, "sequence %d alone: %s", i, b->error);
    }
    check_crowd(b, ss, alone, 8, 4096, deterministic);    /* decode rows 8 */
    check_crowd(b, ss, alone, 101, 16, deterministic);    /* chunked prefill; decode rows 101 */
    check_crowd(b, ss, alone, MAX_SEQS - 1, 7, deterministic); /* two Hopper slices of rows */
    for (int i = 0; i < MAX_SEQS; i++) free(ss[i].logits);
    for (int i = 0; i < 2; i++) free(alone[i].logits);
    free(ss);
    backend_free(b);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    /* Llama-3-8B's widths (the products' real shapes and split counts), two layers, Llama 2's
     * vocabulary to keep the logits copies small. */
    struct model *m = gt_dummy_model(
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,\"intermediate_size\":14336,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
        "\"vocab_size\":32000,\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"
        "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    if (!m) return gt_finish();
    test_mode(m, true);
    test_mode(m, false);
    model_free(m);
    return gt_finish();
}
