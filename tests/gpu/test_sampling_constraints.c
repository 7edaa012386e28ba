/* Structured output, logit_bias and min_tokens on the GPU: the device sampler's token masks,
 * logit biases and suppressed tokens (sampler.h steps 2 and 2b) against the CPU reference.
 *
 * 1. The kernels (sk_sample_prepare / sort / finish) on random logits, row by row against
 *    sampler_sample and sampler_penalize: masked and free rows, greedy and drawn, with top-k,
 *    top-p, min-p and penalties, biases of +-100, suppressed ids, a mask of one token, a mask
 *    whose every token is suppressed (the lowest allowed id), and a mask that allows nothing.
 * 2. The CUDA backend on a dummy model: four sequences in one batch (two constrained, one biased
 *    with suppressed ids on some steps, one free), decode steps replayed from CUDA graphs (the
 *    masks change every step, so a graph that kept its first mask would fail) and eager steps
 *    with the logits copied back, whose tokens must equal sampler_sample on those logits; the
 *    same with --deterministic.
 * With SLUICE_GPU_BENCH=1 it also times the sampler with and without masks (bench_masks). */
#include "tests/gpu/dummy_model.h"
#include "tests/gpu/gpu_test.h"

#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/model/model.h"
#include "worker/sampler/sampler.h"

static bool bit(const uint32_t *m, int i)
{
    return (m[i >> 5] >> (i & 31)) & 1u;
}
static void set_bit(uint32_t *m, int i)
{
    m[i >> 5] |= 1u << (i & 31);
}

/* --- 1. the kernels ------------------------------------------------------------------- */

enum row_case {
    CASE_FREE_GREEDY,
    CASE_MASK_GREEDY,     /* a sparse mask (about 2% of the vocabulary) */
    CASE_MASK_TOP_P,
    CASE_MASK_TOP_K,      /* a dense mask (about half) */
    CASE_MASK_MIN_P_BIAS,
    CASE_BIAS_GREEDY,     /* +100 on one token, -100 on the raw argmax */
    CASE_SUPPRESS_GREEDY, /* the three best raw tokens suppressed */
    CASE_EVERYTHING,      /* penalties, bias, suppressed ids and a mask, drawn */
    CASE_MASK_ONE,        /* one allowed token */
    CASE_MASK_ALL_SUPPRESSED_GREEDY,
    CASE_MASK_ALL_SUPPRESSED_DRAWN,
    CASE_FREE_TOP_P,
    CASE_MASK_NONE_ALLOWED, /* the kernel says -1, as sampler_sample fails */
    N_CASES
};

static void test_kernels(int V)
{
    printf("sampling with masks, logit bias and suppressed ids, V=%d\n", V);
    const int rounds = 4, R = N_CASES * rounds, W = (V + 31) / 32, NH = 64, NB = 8, NS = 4;
    /* Per row, in hist: NH history ints, then NB bias ids and NB value bits, then NS suppressed. */
    const int per_row = NH + 2 * NB + NS;
    float *logits = malloc((size_t)R * V * 4);
    for (size_t i = 0; i < (size_t)R * V; i++) logits[i] = gt_normal() * 3.0f;
    int32_t *hist = calloc((size_t)R * per_row, 4);
    uint32_t *masks = calloc((size_t)R * W, 4);
    struct sk_sample_row *rows = calloc(R, sizeof *rows);
    struct batch_seq *seqs = calloc(R, sizeof *seqs);
    struct sampling_params *sps = calloc(R, sizeof *sps);
    float *bias_vals = calloc((size_t)R * NB, 4);
    for (int r = 0; r < R; r++) {
        const int c = r % N_CASES;
        const float *l = logits + (size_t)r * V;
        struct sampling_params *sp = &sps[r];
        *sp = (struct sampling_params){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f,
                                       .seed = 977u * (uint64_t)r + 5, .logprobs = r % 3 == 0 ? 5 : -1};
        struct batch_seq *q = &seqs[r];
        q->sample = true;
        q->sampling = sp;
        q->n_generated = (uint64_t)r;
        int32_t *h = hist + (size_t)r * per_row, *bias_ids = h + NH, *supp = h + NH + 2 * NB;
        float *bv = bias_vals + (size_t)r * NB;
        uint32_t *m = masks + (size_t)r * W;
        int n_bias = 0, n_supp = 0;
        bool masked = true;
        int raw_best = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[raw_best]) raw_best = i;
        switch (c) {
        case CASE_FREE_GREEDY: masked = false; break;
        case CASE_MASK_GREEDY:
            for (int i = 0; i < V; i++)
                if (gt_int(50) == 0) set_bit(m, i);
            set_bit(m, gt_int(V));
            break;
        case CASE_MASK_TOP_P:
            sp->temperature = 0.8f, sp->top_p = 0.9f;
            for (int i = 0; i < V; i++)
                if (gt_int(50) == 0) set_bit(m, i);
            set_bit(m, gt_int(V));
            break;
        case CASE_MASK_TOP_K:
            sp->temperature = 1.0f, sp->top_k = 40;
            for (int i = 0; i < V; i++)
                if (gt_int(2)) set_bit(m, i);
            break;
        case CASE_MASK_MIN_P_BIAS:
            sp->temperature = 1.2f, sp->min_p = 0.05f;
            for (int i = 0; i < V; i++)
                if (gt_int(4) == 0) set_bit(m, i);
            for (int i = 0; i < NB; i++) bias_ids[n_bias] = (i * 97 + r) % V, bv[n_bias++] = (float)(i * 3) - 10.0f;
            break;
        case CASE_BIAS_GREEDY:
            masked = false;
            bias_ids[0] = (raw_best + 1 + gt_int(V - 1)) % V, bv[0] = 100.0f;
            bias_ids[1] = raw_best, bv[1] = -100.0f;
            n_bias = 2;
            break;
        case CASE_SUPPRESS_GREEDY: {
            masked = false;
            /* The three best raw tokens. */
            int best[3] = {-1, -1, -1};
            for (int k = 0; k < 3; k++)
                for (int i = 0; i < V; i++)
                    if ((k < 1 || i != best[0]) && (k < 2 || i != best[1]) && (best[k] < 0 || l[i] > l[best[k]]))
                        best[k] = i;
            for (int k = 0; k < 3; k++) supp[n_supp++] = best[k];
            break;
        }
        case CASE_EVERYTHING:
            sp->temperature = 0.9f, sp->top_p = 0.95f, sp->top_k = 100, sp->repetition_penalty = 1.2f,
            sp->presence_penalty = 0.3f, sp->frequency_penalty = 0.2f;
            for (int i = 0; i < NH; i++) h[i] = gt_int(V);
            q->history = h, q->n_history = NH, q->n_output = NH / 2;
            for (int i = 0; i < V; i++)
                if (gt_int(3) == 0) set_bit(m, i);
            for (int i = 0; i < NB; i++) bias_ids[n_bias] = (i * 131 + 7 * r) % V, bv[n_bias++] = gt_uniform() * 5.0f;
            for (int i = 0; i < NS; i++) supp[n_supp++] = gt_int(V);
            break;
        case CASE_MASK_ONE: set_bit(m, gt_int(V)); break;
        case CASE_MASK_ALL_SUPPRESSED_GREEDY:
        case CASE_MASK_ALL_SUPPRESSED_DRAWN:
            if (c == CASE_MASK_ALL_SUPPRESSED_DRAWN) sp->temperature = 1.0f, sp->top_p = 0.5f;
            for (int k = 0; k < NS; k++) {
                int id = gt_int(V);
                set_bit(m, id);
                supp[n_supp++] = id;
            }
            break;
        case CASE_FREE_TOP_P:
            masked = false;
            sp->temperature = 0.7f, sp->top_p = 0.8f;
            break;
        case CASE_MASK_NONE_ALLOWED: break;
        }
        if (n_bias) sp->n_bias = n_bias, sp->bias_ids = bias_ids, sp->bias_values = bv;
        if (n_supp) q->suppress = supp, q->n_suppress = n_supp;
        if (masked) q->allowed = m;
        /* The row as cuda_step.c lays it out. */
        struct sk_sample_row *w = &rows[r];
        w->temperature = sp->temperature, w->top_p = sp->top_p, w->min_p = sp->min_p;
        w->rep_penalty = sp->repetition_penalty, w->presence = sp->presence_penalty;
        w->frequency = sp->frequency_penalty, w->top_k = sp->top_k, w->n_logprobs = sp->logprobs;
        w->seed = sp->seed, w->n_generated = q->n_generated;
        w->hist_off = r * per_row, w->n_history = q->n_history, w->n_output = q->n_output;
        w->mask_off = masked ? r * W : -1;
        w->bias_off = r * per_row + NH, w->n_bias = n_bias;
        memcpy(bias_ids + n_bias, bv, (size_t)n_bias * 4);
        w->supp_off = r * per_row + NH + 2 * NB, w->n_supp = n_supp;
    }
    float *dlog = gt_up(logits, (size_t)R * V * 4), *dwork = gt_dev((size_t)R * V * 4),
          *dsw = gt_dev((size_t)R * V * 4);
    int32_t *dhist = gt_up(hist, (size_t)R * per_row * 4), *dcounts = gt_dev((size_t)R * V * 4),
            *dids = gt_dev((size_t)R * V * 4), *dsid = gt_dev((size_t)R * V * 4), *doff = gt_dev((R + 1) * 4);
    uint32_t *dmask = gt_up(masks, (size_t)R * W * 4);
    struct sk_sample_row *drows = gt_up(rows, R * sizeof *rows);
    struct sk_sample_out *dout = gt_dev(R * sizeof *dout), *out = malloc(R * sizeof *out);
    size_t tb = 0;
    GT_CUDA(sk_sort_temp_bytes(R, V, &tb));
    void *dtemp = gt_dev(tb);
    GT_CUDA(sk_fill_iota_rows(dids, R, V, 0));
    GT_CUDA(sk_fill_row_offsets(doff, R, V, 0));
    GT_CUDA(cudaMemset(dcounts, 0, (size_t)R * V * 4));
    GT_CUDA(sk_sample_prepare(dlog, drows, dhist, dmask, dwork, dcounts, dout, R, V, 0));
    GT_CUDA(sk_sample_sort(dtemp, tb, dwork, dids, doff, dsw, dsid, R, V, 0));
    GT_CUDA(sk_sample_finish(dlog, dwork, dsw, dsid, 1, drows, dout, R, V, 0));
    gt_down(out, dout, R * sizeof *out);
    float *work = malloc((size_t)R * V * 4), *scratch = malloc(sampler_scratch_floats(V) * 4);
    gt_down(work, dwork, (size_t)R * V * 4);

    int tok_bad = 0, not_allowed = 0, suppressed_drawn = 0, pen_bad = 0, pen_rows = 0, none_bad = 0, top_bad = 0;
    double lp_err = 0;
    for (int r = 0; r < R; r++) {
        const int c = r % N_CASES;
        const struct batch_seq *q = &seqs[r];
        const float *l = logits + (size_t)r * V;
        struct sample_result ref;
        memset(&ref, 0, sizeof ref);
        const int rc = sampler_sample(l, V, q, scratch, &ref);
        if (c == CASE_MASK_NONE_ALLOWED) {
            /* sampler_sample fails; the kernel leaves -1, which cuda_collect reports. */
            none_bad += !(rc < 0 && out[r].token == -1 && out[r].fixed);
            continue;
        }
        if (rc < 0 || ref.token != out[r].token) {
            tok_bad++;
            printf("    row %d (case %d, T=%.2f): cpu %d (rc %d) gpu %d\n", r, c, sps[r].temperature, ref.token, rc,
                   out[r].token);
        }
        if (q->allowed && (out[r].token < 0 || out[r].token >= V || !bit(q->allowed, out[r].token))) not_allowed++;
        bool fixed_case = c == CASE_MASK_ALL_SUPPRESSED_GREEDY || c == CASE_MASK_ALL_SUPPRESSED_DRAWN;
        for (int k = 0; k < q->n_suppress && !fixed_case; k++) suppressed_drawn += out[r].token == q->suppress[k];
        double d = fabs((double)ref.logprob - out[r].logprob);
        if (d > lp_err) lp_err = d;
        if (ref.n_top != out[r].n_top) top_bad++;
        for (int k = 0; k < ref.n_top && k < out[r].n_top; k++) top_bad += ref.top_ids[k] != out[r].top_ids[k];
        /* Greedy rows that changed their logits keep them in work: sampler_penalize's, then the mask. */
        if (sps[r].temperature <= SAMPLER_GREEDY_EPS && !fixed_case &&
            (q->allowed || q->n_suppress || sps[r].n_bias)) {
            sampler_penalize(l, V, q, scratch);
            if (q->allowed)
                for (int i = 0; i < V; i++)
                    if (!bit(q->allowed, i)) scratch[i] = -INFINITY;
            pen_bad += memcmp(scratch, work + (size_t)r * V, (size_t)V * 4) != 0;
            pen_rows++;
        }
    }
    GT_CHECK(tok_bad == 0, "V=%d: tokens equal sampler_sample's with masks, biases and suppressed ids (%d of %d differ)",
             V, tok_bad, R - rounds);
    GT_CHECK(not_allowed == 0 && suppressed_drawn == 0,
             "V=%d: no token outside its mask (%d) and no suppressed token (%d) drawn", V, not_allowed,
             suppressed_drawn);
    GT_CHECK(pen_rows > 0 && pen_bad == 0,
             "V=%d: greedy rows' biased, suppressed and masked logits equal sampler_penalize + mask bit for bit (%d of "
             "%d differ)",
             V, pen_bad, pen_rows);
    GT_CHECK(none_bad == 0, "V=%d: a mask that allows nothing gives token -1 (fixed), as the CPU sampler fails (%d bad)",
             V, none_bad);
    GT_CHECK(top_bad == 0 && lp_err < 1e-4,
             "V=%d: logprobs stay the raw logits' (top ids differ %d times, max logprob diff %.2e)", V, top_bad,
             lp_err);
    cudaFree(dlog), cudaFree(dwork), cudaFree(dsw), cudaFree(dhist), cudaFree(dcounts), cudaFree(dids);
    cudaFree(dsid), cudaFree(doff), cudaFree(dmask), cudaFree(drows), cudaFree(dout), cudaFree(dtemp);
    free(logits), free(hist), free(masks), free(rows), free(seqs), free(sps), free(bias_vals), free(out);
    free(work), free(scratch);
}

/* With SLUICE_GPU_BENCH=1: the sampler's device time for 64 drawn rows (top-p, as a chat
 * request samples) of Llama 3's vocabulary, free, each with a JSON-like mask (about 2% of the
 * tokens allowed), and masked with a 368-token logit bias: what the mask costs on the device. */
static void bench_masks(void)
{
    const char *on = getenv("SLUICE_GPU_BENCH");
    if (!on || !*on || *on == '0') return;
    const int V = 128256, R = 64, W = (V + 31) / 32, NB = 368;
    float *logits = malloc((size_t)R * V * 4);
    for (size_t i = 0; i < (size_t)R * V; i++) logits[i] = gt_normal() * 3.0f;
    uint32_t *masks = calloc((size_t)R * W, 4);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < V; i++)
            if (gt_int(50) == 0) set_bit(masks + (size_t)r * W, i);
    int32_t *hist = malloc((size_t)2 * NB * 4);
    for (int i = 0; i < NB; i++) {
        const float v = -100.0f;
        hist[i] = i * 300;
        memcpy(&hist[NB + i], &v, 4);
    }
    struct sk_sample_row rows[3][64];
    for (int m = 0; m < 3; m++)
        for (int r = 0; r < R; r++)
            rows[m][r] = (struct sk_sample_row){.temperature = 0.8f, .top_p = 0.9f, .rep_penalty = 1.0f,
                                                .seed = (uint64_t)r, .n_logprobs = -1,
                                                .mask_off = m > 0 ? r * W : -1, .n_bias = m == 2 ? NB : 0};
    float *dlog = gt_up(logits, (size_t)R * V * 4), *dwork = gt_dev((size_t)R * V * 4), *dsw = gt_dev((size_t)R * V * 4);
    int32_t *dcounts = gt_dev((size_t)R * V * 4), *dids = gt_dev((size_t)R * V * 4), *dsid = gt_dev((size_t)R * V * 4);
    int32_t *doff = gt_dev((R + 1) * 4), *dhist = gt_up(hist, (size_t)2 * NB * 4);
    uint32_t *dmask = gt_up(masks, (size_t)R * W * 4);
    struct sk_sample_row *drows = gt_dev(sizeof rows);
    GT_CUDA(cudaMemcpy(drows, rows, sizeof rows, cudaMemcpyHostToDevice));
    struct sk_sample_out *dout = gt_dev(R * sizeof *dout);
    size_t tb = 0;
    GT_CUDA(sk_sort_temp_bytes(R, V, &tb));
    void *dtemp = gt_dev(tb);
    GT_CUDA(sk_fill_iota_rows(dids, R, V, 0));
    GT_CUDA(sk_fill_row_offsets(doff, R, V, 0));
    cudaEvent_t e0, e1;
    GT_CUDA(cudaEventCreate(&e0));
    GT_CUDA(cudaEventCreate(&e1));
    const char *names[3] = {"free", "masked", "masked+bias"};
    for (int m = 0; m < 3; m++) {
        float ms = 0;
        for (int it = 0; it < 21; it++) {
            if (it == 1) GT_CUDA(cudaEventRecord(e0, 0));
            GT_CUDA(sk_sample_prepare(dlog, drows + m * 64, dhist, dmask, dwork, dcounts, dout, R, V, 0));
            GT_CUDA(sk_sample_sort(dtemp, tb, dwork, dids, doff, dsw, dsid, R, V, 0));
            GT_CUDA(sk_sample_finish(dlog, dwork, dsw, dsid, 1, drows + m * 64, dout, R, V, 0));
        }
        GT_CUDA(cudaEventRecord(e1, 0));
        GT_CUDA(cudaEventSynchronize(e1));
        GT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        printf("  bench sampler %d rows V=%d top-p %s: %.1f us a step\n", R, V, names[m], 1e3 * ms / 20);
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(dlog), cudaFree(dwork), cudaFree(dsw), cudaFree(dcounts), cudaFree(dids), cudaFree(dsid);
    cudaFree(doff), cudaFree(dhist), cudaFree(dmask), cudaFree(drows), cudaFree(dout), cudaFree(dtemp);
    free(logits), free(masks), free(hist);
}

/* --- 2. the backend ------------------------------------------------------------------- */

#define NSEQ 4
#define BLOCKS 8
#define PROMPT 20
#define STEPS 12

/* The masks of step k: sequence 0 allows ids i with (7 i + 13 k) % 29 == 0, sequence 1 one id
 * that moves every step. */
static void step_masks(uint32_t *m0, uint32_t *m1, int V, int k)
{
    const int W = (V + 31) / 32;
    memset(m0, 0, (size_t)W * 4);
    memset(m1, 0, (size_t)W * 4);
    for (int i = 0; i < V; i++)
        if ((7 * i + 13 * k) % 29 == 0) set_bit(m0, i);
    set_bit(m1, (37 * k + 5) % V);
}

/* Prefill, then STEPS decode steps of all four sequences. With check_logits, every step copies
 * the logits back (eager steps) and each row's token must equal sampler_sample's on them;
 * without, decode steps replay graphs. With late, as the engine runs structured output: the
 * masked rows are mask_later, each step's tokens are the step before's rows (read on the
 * device), and each step's masks are made only after it is submitted and the step before is
 * collected, then given by backend_sample. Checks the constraints on every token; returns the
 * number of violations (printed). */
static int run_constrained(struct backend *b, const char *what, bool check_logits, bool late)
{
    const int V = b->config.vocab_size, W = (V + 31) / 32;
    uint32_t *m0 = calloc(W, 4), *m1 = calloc(W, 4);
    float *logits = malloc((size_t)NSEQ * V * 4), *scratch = malloc(sampler_scratch_floats(V) * 4);
    int32_t prompts[NSEQ][PROMPT], blocks[NSEQ][BLOCKS], out[NSEQ][STEPS + 1], ref[NSEQ][STEPS + 1];
    int32_t tokens[NSEQ * PROMPT];
    const int32_t favoured = 11 % V;
    int32_t bias_ids[2] = {favoured, (favoured + 1) % V}, supp[1] = {favoured};
    float bias_vals[2] = {100.0f, 50.0f};
    const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1, .logprobs = 2};
    const struct sampling_params drawn = {
        .temperature = 0.9f, .top_p = 0.9f, .top_k = 50, .repetition_penalty = 1, .seed = 7, .logprobs = -1};
    struct sampling_params biased = greedy;
    biased.n_bias = 2, biased.bias_ids = bias_ids, biased.bias_values = bias_vals;
    const struct sampling_params *sps[NSEQ] = {&greedy, &drawn, &biased, &drawn};
    for (int s = 0; s < NSEQ; s++) {
        for (int i = 0; i < PROMPT; i++) prompts[s][i] = gt_int(V);
        for (int i = 0; i < BLOCKS; i++) blocks[s][i] = s * BLOCKS + (BLOCKS - 1 - i);
    }
    int bad = 0, sampler_bad = 0, steps = 0;
    struct sample_result res[NSEQ];
    for (int k = 0; k <= STEPS; k++) {
        struct batch_seq seqs[NSEQ];
        int T = 0;
        for (int s = 0; s < NSEQ; s++) {
            struct batch_seq *q = &seqs[s];
            *q = (struct batch_seq){.block_table = blocks[s], .n_blocks = BLOCKS, .sample = true,
                                    .sampling = sps[s], .n_generated = (uint64_t)k};
            if (k == 0) {
                memcpy(tokens + T, prompts[s], sizeof prompts[s]);
                q->n_new = PROMPT, q->prompt = true;
            } else {
                tokens[T] = late ? BACKEND_TOKEN_FROM_PREV(s) : out[s][k - 1];
                q->n_new = 1, q->start_pos = PROMPT + k - 1;
            }
            T += q->n_new;
        }
        if (late) {
            /* What the buffers hold at the submit is not this step's masks. */
            memset(m0, 0, (size_t)W * 4);
            memset(m1, 0, (size_t)W * 4);
            seqs[0].mask_later = seqs[1].mask_later = true;
        } else {
            step_masks(m0, m1, V, k);
            seqs[0].allowed = m0;
            seqs[1].allowed = m1;
        }
        /* min_tokens-like: the favoured token is suppressed on even steps. */
        if (k % 2 == 0) seqs[2].suppress = supp, seqs[2].n_suppress = 1;
        struct batch batch = {.n_seqs = NSEQ, .seqs = seqs, .n_tokens = T, .tokens = tokens,
                              .logits_out = check_logits ? logits : NULL};
        if (backend_submit(b, &batch) < 0) {
            printf("    %s: step %d failed: %s\n", what, k, b->error);
            bad++;
            break;
        }
        if (late) {
            if (k > 0) {
                if (backend_collect(b, res) < 0) {
                    printf("    %s: collecting step %d failed: %s\n", what, k - 1, b->error);
                    bad++;
                    steps = k - 1;
                    break;
                }
                for (int s = 0; s < NSEQ; s++) out[s][k - 1] = res[s].token;
            }
            step_masks(m0, m1, V, k);
            const uint32_t *masks[2] = {m0, m1};
            if (backend_sample(b, masks, 2) < 0) {
                printf("    %s: sampling step %d failed: %s\n", what, k, b->error);
                bad++;
                break;
            }
            seqs[0].allowed = m0, seqs[0].mask_later = false;
            seqs[1].allowed = m1, seqs[1].mask_later = false;
        }
        steps = k + 1;
        /* The step is done once submitted (logits_out), so its logits are there now. */
        for (int s = 0; s < NSEQ && check_logits; s++) {
            struct sample_result r;
            ref[s][k] = sampler_sample(logits + (size_t)s * V, V, &seqs[s], scratch, &r) < 0 ? -1 : r.token;
        }
        if (!late || k == STEPS) {
            if (backend_collect(b, res) < 0) {
                printf("    %s: collecting step %d failed: %s\n", what, k, b->error);
                bad++;
                steps = k;
                break;
            }
            for (int s = 0; s < NSEQ; s++) out[s][k] = res[s].token;
        }
    }
    for (int k = 0; k < steps; k++) {
        step_masks(m0, m1, V, k);
        for (int s = 0; s < NSEQ && check_logits; s++)
            if (ref[s][k] != out[s][k]) {
                printf("    %s: step %d seq %d: device %d, sampler_sample %d\n", what, k, s, out[s][k], ref[s][k]);
                sampler_bad++;
            }
        if (!bit(m0, out[0][k])) printf("    %s: step %d: seq 0 drew %d outside its mask\n", what, k, out[0][k]), bad++;
        if (out[1][k] != (37 * k + 5) % V)
            printf("    %s: step %d: seq 1 drew %d, its mask allows only %d\n", what, k, out[1][k], (37 * k + 5) % V),
                bad++;
        const int32_t want2 = k % 2 == 0 ? bias_ids[1] : favoured;
        if (out[2][k] != want2)
            printf("    %s: step %d: seq 2 (bias +100 on %d, +50 on %d, %d suppressed on even steps) drew %d\n", what,
                   k, favoured, bias_ids[1], favoured, out[2][k]),
                bad++;
    }
    if (steps <= STEPS) bad++;
    free(m0), free(m1), free(logits), free(scratch);
    return bad + sampler_bad;
}

static void test_backend_constraints(void)
{
    printf("CUDA backend: constrained, biased and free sequences in one batch\n");
    struct model *m = gt_dummy_model(
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"intermediate_size\":688,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":64,"
        "\"vocab_size\":1000,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
        "\"tie_word_embeddings\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}");
    if (!m) return;
    for (int det = 0; det < 2; det++) {
        struct backend_options bo = {.kv_blocks = NSEQ * BLOCKS + 4, .max_batch_tokens = 256, .max_batch_seqs = 8,
                                     .gpu_memory_utilization = 0.9, .deterministic = det};
        char err[512];
        struct backend *b = NULL;
        if (backend_cuda_create(&b, m, &bo, err, sizeof err) < 0) {
            GT_CHECK(0, "backend_cuda_create: %s", err);
            break;
        }
        GT_CHECK(b->supports_token_mask && b->supports_logit_bias && b->supports_suppress,
                 "the CUDA backend says it applies token masks, logit biases and suppressed ids");
        const char *mode = det ? "deterministic" : "default";
        for (int late = 0; late < 2; late++) {
            const char *how = late ? "masks given after the submit (pipelined)" : "masks given with the step";
            const uint64_t replays0 = ((struct cuda_backend *)b)->graphs.replays;
            int bad = run_constrained(b, mode, false, late);
            const uint64_t replays = ((struct cuda_backend *)b)->graphs.replays - replays0;
            GT_CHECK(bad == 0 && replays >= STEPS,
                     "%s, %s: decode steps from CUDA graphs (%llu replays) keep every constraint, with masks that "
                     "change every step (%d violations)",
                     mode, how, (unsigned long long)replays, bad);
            bad = run_constrained(b, mode, true, late);
            GT_CHECK(bad == 0,
                     "%s, %s: eager steps: constraints kept and tokens equal sampler_sample on the device's logits "
                     "(%d differ or violate)",
                     mode, how, bad);
        }
        backend_free(b);
    }
    model_free(m);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_kernels(1000);
    test_kernels(1001); /* rows not a multiple of 4 floats */
    test_kernels(128256);
    test_backend_constraints();
    bench_masks();
    return gt_finish();
}
