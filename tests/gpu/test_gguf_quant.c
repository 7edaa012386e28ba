/* GGUF block quantizations on the CUDA backend against the CPU backend (which keeps them in their
 * blocks), step by step: a model whose matrices are every block type (K-quants included; layers
 * with a type the block kernels do not take are dequantized to bf16 at load through
 * worker/model/quant.c), and one whose layers and lm_head are all of types the block kernels take
 * (kept in blocks on the GPU: block GEMV for decode, the tensor-core kernel or dequantized tiles
 * for prefill); that model and GPTQ/AWQ fixtures with the tensor-core kernel on and off; the
 * block kernels' overlap (quant_overlap=1) against the default, bit for bit; and,
 * where it has been fetched (make fetch-smollm2), SmolLM2-135M-Instruct Q4_1 against Hugging
 * Face's greedy tokens (tests/fixtures/smollm2/hf_reference.json). */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include <jansson.h>
#include <sys/stat.h>

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"

#define BLOCKS 8
#define MAX_LAYERS 3 /* of the block models */

/* The logits of a prompt then n_gen decode steps, (n_gen + 1) rows of the vocabulary in logits:
 * the tokens fed are feed[0..n_gen) when given, else the backend's own greedy tokens, written to
 * out. Returns 0, or -1 after a failed check. */
static int run_steps(struct backend *b, const int32_t *prompt, int n_prompt, int n_gen, const int32_t *feed,
                     int32_t *out, float *logits)
{
    const int V = b->config.vocab_size;
    int32_t table[BLOCKS], hist[BLOCKS * KV_BLOCK_SIZE];
    for (int i = 0; i < BLOCKS; i++) table[i] = i;
    memcpy(hist, prompt, (size_t)n_prompt * 4);
    struct sampling_params sp = {.temperature = 0, .top_p = 1, .repetition_penalty = 1, .logprobs = -1};
    for (int pos = 0, step = 0; step <= n_gen; step++) {
        int take = step == 0 ? n_prompt : 1;
        struct batch_seq s = {.n_new = take, .start_pos = pos, .block_table = table, .n_blocks = BLOCKS,
                              .sample = true, .sampling = &sp, .history = hist, .n_history = pos + take};
        struct batch bt = {.n_seqs = 1, .seqs = &s, .n_tokens = take, .tokens = hist + pos,
                           .logits_out = logits + (size_t)step * V};
        struct sample_result r;
        if (backend_forward(b, &bt, &r) < 0) {
            GT_CHECK(0, "forward: %s", b->error);
            return -1;
        }
        pos += take;
        hist[pos] = feed && step < n_gen ? feed[step] : r.token;
        if (step < n_gen && out) out[step] = hist[pos];
    }
    return 0;
}

/* The worst over the steps of the relative error (2-norm) of a's logits against ref's. */
static double worst_logits_err(const float *a, const float *ref, int steps, int V)
{
    double worst = 0;
    for (int s = 0; s < steps; s++) {
        double num = 0, den = 0;
        for (int i = 0; i < V; i++) {
            double d = (double)a[(size_t)s * V + i] - ref[(size_t)s * V + i];
            num += d * d;
            den += (double)ref[(size_t)s * V + i] * ref[(size_t)s * V + i];
        }
        double e = isfinite(num) ? sqrt(num / den) : INFINITY;
        if (e > worst) worst = e;
    }
    return worst;
}

/* m's matrices (tok_embed, lm_head, then each layer's seven), *n of them. */
static struct tensor **model_mats(struct model *m, int *n)
{
    static struct tensor *mats[2 + 7 * MAX_LAYERS];
    int k = 0;
    mats[k++] = &m->tok_embed;
    mats[k++] = &m->lm_head;
    for (int l = 0; l < m->config.n_layers && l < MAX_LAYERS; l++) {
        struct layer_weights *L = &m->layers[l];
        mats[k++] = &L->wq, mats[k++] = &L->wk, mats[k++] = &L->wv, mats[k++] = &L->wo;
        mats[k++] = &L->w_gate, mats[k++] = &L->w_up, mats[k++] = &L->w_down;
    }
    *n = k;
    return mats;
}

/* Logits of the CPU backend on m with every block matrix replaced by the bf16 of its weights (what
 * bf16 weights alone cost, the yardstick beside the CUDA checks), fed tokens; m is left as it was. */
static int cpu_on_bf16(struct model *m, const struct backend_options *bo, const int32_t *prompt, int n_prompt,
                       int n_gen, const int32_t *feed, float *logits)
{
    int n, rc = -1;
    struct tensor **mats = model_mats(m, &n);
    struct tensor saved[2 + 7 * MAX_LAYERS];
    uint16_t *bf[2 + 7 * MAX_LAYERS] = {0};
    for (int i = 0; i < n; i++) {
        saved[i] = *mats[i];
        if (!dtype_is_quantized(mats[i]->dtype) || !mats[i]->data) continue;
        const int64_t numel = tensor_numel(mats[i]);
        float *w = malloc((size_t)numel * 4);
        bf[i] = malloc((size_t)numel * 2);
        if (!w || !bf[i]) {
            free(w);
            GT_CHECK(0, "host memory for the bf16 yardstick");
            goto out;
        }
        model_dequant(mats[i]->dtype, mats[i]->data, w, numel);
        for (int64_t j = 0; j < numel; j++) bf[i][j] = gt_f2bf(w[j]);
        free(w);
    }
    for (int i = 0; i < n; i++)
        if (bf[i]) mats[i]->dtype = DTYPE_BF16, mats[i]->data = bf[i];
    char err[512];
    struct backend *cpu = NULL;
    if (backend_cpu_create(&cpu, m, bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cpu_create (bf16): %s", err);
    else rc = run_steps(cpu, prompt, n_prompt, n_gen, feed, NULL, logits);
    backend_free(cpu);
out:
    for (int i = 0; i < n; i++) *mats[i] = saved[i], free(bf[i]);
    return rc;
}

/* Greedy logits and tokens of a prompt then n_gen decode steps on CUDA and on the CPU (fed the
 * CUDA tokens); returns the worst relative error of the logits and writes the CUDA tokens. With
 * yardstick, also the worst error of the CPU on the weights rounded to bf16 against the CPU on the
 * blocks (same tokens). */
static double cuda_vs_cpu(struct model *m, const int32_t *prompt, int n_prompt, int n_gen, int32_t *out,
                          double *yardstick)
{
    const int V = m->config.vocab_size;
    struct backend_options bo = {.kv_blocks = BLOCKS, .max_batch_tokens = 256, .max_batch_seqs = 2, .cpu.n_threads = 4,
                                 .gpu_memory_utilization = 0.5};
    char err[512];
    struct backend *cpu = NULL, *gpu = NULL;
    if (backend_cpu_create(&cpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cpu_create: %s", err);
    if (backend_cuda_create(&gpu, m, &bo, err, sizeof err) < 0) GT_CHECK(0, "backend_cuda_create: %s", err);
    const size_t n = (size_t)(n_gen + 1) * V;
    float *lg = malloc(n * 4), *lc = malloc(n * 4), *lb = malloc(n * 4);
    double worst = INFINITY;
    if (yardstick) *yardstick = INFINITY;
    if (cpu && gpu && lg && lc && lb && run_steps(gpu, prompt, n_prompt, n_gen, NULL, out, lg) == 0 &&
        run_steps(cpu, prompt, n_prompt, n_gen, out, NULL, lc) == 0) {
        worst = worst_logits_err(lg, lc, n_gen + 1, V);
        if (yardstick && cpu_on_bf16(m, &bo, prompt, n_prompt, n_gen, out, lb) == 0)
            *yardstick = worst_logits_err(lb, lc, n_gen + 1, V);
    }
    free(lg), free(lc), free(lb);
    backend_free(gpu);
    backend_free(cpu);
    return worst;
}

/* The bound on the CUDA backend's logits error: 3e-2, or three times what bf16 weights alone cost
 * on the CPU where that is more, but never 0.1 or more, which a wrong dequantization (errors of
 * the weights' own size) would reach. */
static double logits_bound(double yardstick)
{
    double b = 3 * yardstick > 3e-2 ? 3 * yardstick : 3e-2;
    return b < 0.1 ? b : 0.1;
}

/* Every block type; the first N_KEPT are those the CUDA backend keeps in blocks. */
#define N_KEPT 8
/* factor: the largest |weight| over the largest |f16 scale| of a block (its largest quant times
 * its largest sub-block scale, plus the minimum's term), so that scales up to kMaxWeight / factor
 * keep the weights within kMaxWeight. */
static const struct {
    enum dtype dt;
    int at[2], n; /* where the f16 scales are */
    float factor;
} types[] = {
    {DTYPE_Q4_0, {0}, 1, 8},         {DTYPE_Q4_1, {0, 2}, 2, 15 + 1},       {DTYPE_Q5_0, {0}, 1, 16},
    {DTYPE_Q5_1, {0, 2}, 2, 31 + 1}, {DTYPE_Q8_0, {0}, 1, 128},             {DTYPE_Q4_K, {0, 2}, 2, 63 * 15 + 63},
    {DTYPE_Q5_K, {0, 2}, 2, 63 * 31 + 63}, {DTYPE_Q6_K, {208}, 1, 128 * 32}, {DTYPE_Q2_K, {80, 82}, 2, 15 * 3 + 15},
    {DTYPE_Q3_K, {108}, 1, 32 * 4},  {DTYPE_IQ4_NL, {0}, 1, 127},           {DTYPE_IQ4_XS, {0}, 1, 32 * 127},
};
/* A trained model's weights are of this order (the dummy bf16 weights are within 0.02): random
 * quants under scales of any size would make weights up to ~30, saturating the attention's softmax
 * so that the logits' errors explode however exact the kernels. */
static const float kMaxWeight = 0.05f;

/* A small Llama of n_layers whose matrix i (tok_embed, lm_head, then each layer's seven) is random
 * blocks of types[(first + i * stride) % n_types]; owned[0..*n_owned) are the blocks, freed by the
 * caller after model_free. */
static struct model *blocks_model(int n_layers, int first, int stride, int n_types, void **owned, int *n_owned)
{
    char config[512];
    snprintf(config, sizeof config,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":512,\"intermediate_size\":1024,"
             "\"num_hidden_layers\":%d,\"num_attention_heads\":8,\"num_key_value_heads\":2,\"head_dim\":64,"
             "\"vocab_size\":1000,\"tie_word_embeddings\":false,\"rms_norm_eps\":1e-5}",
             n_layers);
    struct model *m = gt_dummy_model(config);
    *n_owned = 0;
    if (!m) return NULL;
    int k;
    struct tensor **mats = model_mats(m, &k);
    for (int i = 0; i < k; i++) {
        int t = (first + i * stride) % n_types;
        mats[i]->dtype = types[t].dt;
        mats[i]->data = owned[i] = gt_random_blocks_bounded(types[t].dt, types[t].at, types[t].n,
                                                            tensor_numel(mats[i]), kMaxWeight / types[t].factor);
    }
    *n_owned = k;
    return m;
}

static void test_every_type(void)
{
    printf("every GGUF block type: CUDA (in blocks or bf16 from quant.c) vs CPU (blocks)\n");
    void *owned[2 + 7 * MAX_LAYERS];
    int k;
    struct model *m = blocks_model(2, 0, 5, (int)(sizeof types / sizeof types[0]), owned, &k);
    if (!m) return;
    int32_t prompt[40], out[8];
    for (int i = 0; i < 40; i++) prompt[i] = gt_int(1000);
    double yard, worst = cuda_vs_cpu(m, prompt, 40, 8, out, &yard);
    GT_CHECK(worst < logits_bound(yard),
             "logits rel err vs the CPU over a prefill and 8 steps: worst %.2e (bf16 weights; the CPU on the weights "
             "rounded to bf16: %.2e; bound %.1e)",
             worst, yard, logits_bound(yard));
    model_free(m);
    for (int i = 0; i < k; i++) free(owned[i]);
}

/* Every layer matrix and lm_head in a type the block kernels take (cuda_qweights.c keeps them in
 * blocks): a long prompt (prefill on dequantized tiles and cuBLAS) and a short one (the block
 * GEMV throughout), then decode steps on the block GEMV. */
static void test_kept_in_blocks(void)
{
    printf("layers kept in their GGUF blocks on CUDA vs CPU\n");
    void *owned[2 + 7 * MAX_LAYERS];
    int k;
    struct model *m = blocks_model(3, 0, 3, N_KEPT, owned, &k);
    if (!m) return;
    int32_t prompt[40], out[8];
    for (int i = 0; i < 40; i++) prompt[i] = gt_int(1000);
    double yard, worst = cuda_vs_cpu(m, prompt, 40, 8, out, &yard);
    GT_CHECK(worst < logits_bound(yard),
             "40-token prompt (dequantized tiles) and 8 steps (block GEMV): logits rel err vs the CPU, worst %.2e (the "
             "CPU on the weights rounded to bf16: %.2e; bound %.1e)",
             worst, yard, logits_bound(yard));
    worst = cuda_vs_cpu(m, prompt, 5, 8, out, &yard);
    GT_CHECK(worst < logits_bound(yard),
             "5-token prompt and 8 steps, all on the block GEMV (Q4_K, Q6_K, Q8_0 with int8 activations): logits "
             "rel err vs the CPU, worst %.2e (the CPU on the weights rounded to bf16: %.2e; bound %.1e)",
             worst, yard, logits_bound(yard));
    model_free(m);
    for (int i = 0; i < k; i++) free(owned[i]);
}

/* The tensor-core kernel for block weights (kernels/quant_mma.cu) against the paths it replaced
 * (--cuda-options quant_mma=0: dequantized tiles and cuBLAS past 16 rows), on the whole backend:
 * prompts of n_prompt[i] tokens (prefill on the kernel, which the plan must say) then decode
 * steps, both fed the same tokens. The weights are the same bf16 on both paths and only the
 * order of the fp32 sums differs, so the logits must agree within bf16 noise. */
static void cuda_mma_on_off(const char *name, struct model *m, const int *n_prompt, int n_prompts, int dtype)
{
    const int V = m->config.vocab_size, n_gen = 4;
    struct backend_options on = {.kv_blocks = BLOCKS, .max_batch_tokens = 256, .max_batch_seqs = 2,
                                 .gpu_memory_utilization = 0.5},
                           off = on;
    off.cuda.no_quant_mma = true;
    char err[512];
    struct backend *a = NULL, *b = NULL;
    if (backend_cuda_create(&a, m, &on, err, sizeof err) < 0) GT_CHECK(0, "%s: backend_cuda_create: %s", name, err);
    if (backend_cuda_create(&b, m, &off, err, sizeof err) < 0)
        GT_CHECK(0, "%s: backend_cuda_create (quant_mma=0): %s", name, err);
    const size_t n = (size_t)(n_gen + 1) * V;
    float *la = malloc(n * 4), *lb = malloc(n * 4);
    for (int i = 0; a && b && i < n_prompts; i++) {
        int32_t prompt[BLOCKS * KV_BLOCK_SIZE], out[8];
        for (int j = 0; j < n_prompt[i]; j++) prompt[j] = gt_int(V);
        const struct cuda_plan_config *pc = &((struct cuda_backend *)a)->plan;
        const struct cuda_quant_plan pa = cuda_plan_quant(pc, dtype, n_prompt[i], m->config.hidden_size,
                                                          m->config.hidden_size);
        const struct cuda_quant_plan pb = cuda_plan_quant(&((struct cuda_backend *)b)->plan, dtype, n_prompt[i],
                                                          m->config.hidden_size, m->config.hidden_size);
        if (run_steps(a, prompt, n_prompt[i], n_gen, NULL, out, la) < 0 ||
            run_steps(b, prompt, n_prompt[i], n_gen, out, NULL, lb) < 0)
            break;
        const double e = worst_logits_err(la, lb, n_gen + 1, V);
        GT_CHECK(pa.path == CUDA_QUANT_PATH_MMA && pb.path == CUDA_QUANT_PATH_TILES && e < 1e-2,
                 "%s: %d-token prompt (%s prefill products on the tensor-core kernel, %s with quant_mma=0) and %d "
                 "steps: logits rel err between the two %.2e (bf16 noise: < 1e-2)",
                 name, n_prompt[i], dtype_name((enum dtype)dtype), pb.path == CUDA_QUANT_PATH_TILES ? "tiles" : "?",
                 n_gen, e);
    }
    free(la), free(lb);
    backend_free(a);
    backend_free(b);
}

static void test_mma_on_off(void)
{
    printf("the tensor-core kernel for block weights on and off (quant_mma=0)\n");
    static const int prompts[] = {20, 100};
    void *owned[2 + 7 * MAX_LAYERS];
    int k;
    struct model *m = blocks_model(3, 0, 3, N_KEPT, owned, &k);
    if (m) {
        cuda_mma_on_off("every kept block type", m, prompts, 2, (int)m->layers[0].wq.dtype);
        model_free(m);
        for (int i = 0; i < k; i++) free(owned[i]);
    }
    /* GPTQ and AWQ int4 (Q4_1 blocks at load): a 64-wide model, so rows of 2 and 4 blocks, k and v
     * of 32 rows, every product short of the kernel's tiles. */
    const char *int4[] = {"tests/fixtures/int4/gptq_g128_sym", "tests/fixtures/int4/awq_g32"};
    for (int i = 0; i < 2; i++) {
        char err[512];
        struct model *q = NULL;
        if (model_load(&q, int4[i], MODEL_LOAD_AUTO, err, sizeof err) != 0) {
            GT_CHECK(0, "model_load %s: %s (run from the repository root)", int4[i], err);
            continue;
        }
        cuda_mma_on_off(int4[i], q, prompts, 2, DTYPE_Q4_1);
        model_free(q);
    }
}

/* --cuda-options quant_overlap=1 against the default on the whole backend: the block kernels
 * launched as programmatic dependents and the int8 x of a block GEMV written by the norm or
 * SwiGLU before it compute the same values in the same order, so a 5-token prompt (the GEMV), a
 * 20-token one (the tensor-core kernel) and their decode steps give the same logits bit for bit.
 * And the norm or SwiGLU does write some product's x (cuda_qlayer_int8_input) at one row. */
static void overlap_on_off(const char *name, struct model *m)
{
    const int V = m->config.vocab_size, n_gen = 4;
    struct backend_options off = {.kv_blocks = BLOCKS, .max_batch_tokens = 256, .max_batch_seqs = 2,
                                  .gpu_memory_utilization = 0.5},
                           on = off;
    on.cuda.quant_overlap = true;
    char err[512];
    struct backend *a = NULL, *b = NULL;
    if (backend_cuda_create(&a, m, &on, err, sizeof err) < 0)
        GT_CHECK(0, "%s: backend_cuda_create (quant_overlap=1): %s", name, err);
    if (backend_cuda_create(&b, m, &off, err, sizeof err) < 0) GT_CHECK(0, "%s: backend_cuda_create: %s", name, err);
    int fused = 0;
    for (int l = 0; a && l < m->config.n_layers; l++) {
        const struct cuda_qlayer *q = ((struct cuda_backend *)a)->w.layers[l].q;
        if (q)
            fused += cuda_qlayer_int8_input((struct cuda_backend *)a, &q->q, 1) +
                     cuda_qlayer_int8_input((struct cuda_backend *)a, &q->gate, 1) +
                     cuda_qlayer_int8_input((struct cuda_backend *)a, &q->down, 1);
    }
    GT_CHECK(a && fused > 0, "%s: with quant_overlap=1 the norm or SwiGLU writes %d products' int8 x a step", name,
             fused);
    const size_t n = (size_t)(n_gen + 1) * V;
    float *la = malloc(n * 4), *lb = malloc(n * 4);
    static const int prompts[] = {5, 20};
    for (int i = 0; a && b && i < 2; i++) {
        int32_t prompt[BLOCKS * KV_BLOCK_SIZE], out[8];
        for (int j = 0; j < prompts[i]; j++) prompt[j] = gt_int(V);
        if (run_steps(a, prompt, prompts[i], n_gen, NULL, out, la) < 0 ||
            run_steps(b, prompt, prompts[i], n_gen, out, NULL, lb) < 0)
            break;
        GT_CHECK(!memcmp(la, lb, n * 4),
                 "%s: %d-token prompt and %d steps: the same logits with quant_overlap=1 as without, bit for bit",
                 name, prompts[i], n_gen);
    }
    free(la), free(lb);
    backend_free(a);
    backend_free(b);
}

static void test_overlap_on_off(void)
{
    printf("block kernels as programmatic dependents, int8 x from the norm and SwiGLU (quant_overlap=1)\n");
    void *owned[2 + 7 * MAX_LAYERS];
    int k;
    struct model *m = blocks_model(3, 0, 3, N_KEPT, owned, &k);
    if (m) {
        overlap_on_off("every kept block type", m);
        model_free(m);
        for (int i = 0; i < k; i++) free(owned[i]);
    }
    /* All Q4_K (types[5]): q/k/v and gate/up one launch each, every product on the int8 GEMV. */
    m = blocks_model(2, 5, 0, N_KEPT, owned, &k);
    if (m) {
        overlap_on_off("all Q4_K", m);
        model_free(m);
        for (int i = 0; i < k; i++) free(owned[i]);
    }
}

static void test_smollm2(void)
{
    printf("SmolLM2-135M-Instruct Q4_1 on CUDA vs Hugging Face\n");
    const char *cache = getenv("SLUICE_MODEL_CACHE"), *home = getenv("HOME");
    char path[4096], err[1024];
    if (cache && *cache) snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else snprintf(path, sizeof path, "%s/.cache/sluice/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/root");
    struct stat st;
    json_error_t jerr;
    json_t *ref = json_load_file("tests/fixtures/smollm2/hf_reference.json", 0, &jerr);
    if (stat(path, &st) != 0 || !ref) {
        printf("  SKIP: %s (make fetch-smollm2) or tests/fixtures/smollm2/hf_reference.json (run from the "
               "repository root) not found\n", path);
        json_decref(ref);
        return;
    }
    struct model *m = NULL;
    if (model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err) != 0) {
        GT_CHECK(0, "model_load: %s", err);
        json_decref(ref);
        return;
    }
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(ref, "prompts"), i, p) {
        json_t *ids = json_object_get(p, "prompt_ids"), *greedy = json_object_get(p, "greedy_ids");
        int32_t prompt[64], out[8];
        int n = (int)json_array_size(ids);
        if (n > 64) n = 64;
        for (int k = 0; k < n; k++) prompt[k] = (int32_t)json_integer_value(json_array_get(ids, k));
        double worst = cuda_vs_cpu(m, prompt, n, 8, out, NULL);
        int same = 0;
        while (same < 8 && out[same] == (int32_t)json_integer_value(json_array_get(greedy, same))) same++;
        GT_CHECK(worst < 3e-2 && same >= 1,
                 "prompt %zu: logits rel err vs the CPU %.2e; %d of the first 8 greedy tokens equal Hugging Face's "
                 "(the first must)", i, worst, same);
    }
    model_free(m);
    json_decref(ref);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_every_type();
    test_kept_in_blocks();
    test_mma_on_off();
    test_overlap_on_off();
    test_smollm2();
    return gt_finish();
}
