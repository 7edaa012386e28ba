/* The sampling kernels (kernels/sample.cu: sk_sample_prepare, sk_sample_sort, sk_sample_finish)
 * against worker/sampler's sampler_sample and sampler_penalize, the CPU reference, row by row on
 * random logits with ties, over greedy and random rows with every penalty, top-p, top-k and min-p:
 * penalized logits bit for bit, sampled tokens and top-logprob ids equal, logprobs within 1e-4. */
#include "tests/gpu/gpu_test.h"

#include "kernels/sluice_kernels.h"
#include "worker/sampler/sampler.h"

/* Sampling: the GPU kernels against sampler_sample (the CPU reference) row by row. */
static void test_sampling(int V)
{
    printf("sampling V=%d\n", V);
    struct sampling_params sps[] = {
        {.temperature = 0.0f, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .logprobs = 5},
        {.temperature = 0.0f,
         .top_p = 1,
         .top_k = 0,
         .repetition_penalty = 1.3f,
         .presence_penalty = 0.5f,
         .frequency_penalty = 0.7f,
         .logprobs = 20},
        {.temperature = 1.0f, .top_p = 1, .top_k = 0, .repetition_penalty = 1, .seed = 1, .logprobs = -1},
        {.temperature = 0.7f, .top_p = 0.9f, .top_k = 0, .repetition_penalty = 1, .seed = 2, .logprobs = 0},
        {.temperature = 1.3f, .top_p = 1, .top_k = 40, .repetition_penalty = 1, .seed = 3, .logprobs = 3},
        {.temperature = 0.9f,
         .top_p = 0.5f,
         .top_k = 100,
         .min_p = 0.05f,
         .repetition_penalty = 1.1f,
         .seed = 4,
         .logprobs = 1},
        {.temperature = 1.0f,
         .top_p = 1,
         .top_k = 0,
         .min_p = 0.1f,
         .repetition_penalty = 1,
         .presence_penalty = -0.5f,
         .seed = 5,
         .logprobs = -1},
        {.temperature = 2.0f,
         .top_p = 0.99f,
         .top_k = 0,
         .repetition_penalty = 0.8f,
         .frequency_penalty = 1.0f,
         .seed = 6,
         .logprobs = 2},
        {.temperature = 1.0f, .top_p = 0.95f, .top_k = 1, .repetition_penalty = 1, .seed = 7, .logprobs = -1},
    };
    const int R0 = sizeof sps / sizeof sps[0], rounds = 8, R = R0 * rounds;
    float *logits = malloc((size_t)R * V * 4);
    for (size_t i = 0; i < (size_t)R * V; i++) logits[i] = gt_normal() * 3.0f;
    /* Ties: a few rows with repeated maxima. */
    for (int r = 0; r < R; r += 5) {
        logits[(size_t)r * V + 7] = 20.0f;
        logits[(size_t)r * V + 3] = 20.0f;
    }
    const int NH = 300;
    int32_t *hist = malloc((size_t)R * NH * 4);
    for (int i = 0; i < R * NH; i++) hist[i] = gt_int(V < 50 ? V : 50) * (V / 50 > 0 ? V / 50 : 1);
    struct sk_sample_row *rows = calloc(R, sizeof *rows);
    struct batch_seq *seqs = calloc(R, sizeof *seqs);
    struct sampling_params *rsp = calloc(R, sizeof *rsp);
    for (int r = 0; r < R; r++) {
        rsp[r] = sps[r % R0];
        rsp[r].seed = rsp[r].seed * 1000003ull + (uint64_t)r;
        struct sk_sample_row *w = &rows[r];
        w->temperature = rsp[r].temperature;
        w->top_p = rsp[r].top_p;
        w->min_p = rsp[r].min_p;
        w->rep_penalty = rsp[r].repetition_penalty;
        w->presence = rsp[r].presence_penalty;
        w->frequency = rsp[r].frequency_penalty;
        w->top_k = rsp[r].top_k;
        w->n_logprobs = rsp[r].logprobs;
        w->seed = rsp[r].seed;
        w->n_generated = (uint64_t)r * 3;
        w->hist_off = r * NH;
        w->n_history = NH - r % 7;
        w->n_output = 100 + r % 50;
        w->mask_off = -1;
        seqs[r].sample = true;
        seqs[r].sampling = &rsp[r];
        seqs[r].n_generated = w->n_generated;
        seqs[r].history = hist + r * NH;
        seqs[r].n_history = w->n_history;
        seqs[r].n_output = w->n_output;
    }
    float *dlog = gt_up(logits, (size_t)R * V * 4), *dwork = gt_dev((size_t)R * V * 4),
          *dsw = gt_dev((size_t)R * V * 4);
    int32_t *dhist = gt_up(hist, (size_t)R * NH * 4), *dcounts = gt_dev((size_t)R * V * 4),
            *dids = gt_dev((size_t)R * V * 4), *dsid = gt_dev((size_t)R * V * 4), *doff = gt_dev((R + 1) * 4);
    struct sk_sample_row *drows = gt_up(rows, R * sizeof *rows);
    struct sk_sample_out *dout = gt_dev(R * sizeof *dout), *out = malloc(R * sizeof *out);
    size_t tb = 0;
    GT_CUDA(sk_sort_temp_bytes(R, V, &tb));
    void *dtemp = gt_dev(tb);
    GT_CUDA(sk_fill_iota_rows(dids, R, V, 0));
    GT_CUDA(sk_fill_row_offsets(doff, R, V, 0));
    GT_CUDA(sk_sample_prepare(dlog, drows, dhist, NULL, dwork, dcounts, dout, R, V, 0));
    GT_CUDA(sk_sample_sort(dtemp, tb, dwork, dids, doff, dsw, dsid, R, V, 0));
    GT_CUDA(sk_sample_finish(dlog, dwork, dsw, dsid, 1, drows, dout, R, V, 0));
    gt_down(out, dout, R * sizeof *out);

    /* Penalized logits (greedy rows with penalties keep them in work; those without take the raw
     * argmax and leave work alone) against sampler_penalize. */
    float *work = malloc((size_t)R * V * 4), *scratch = malloc(sampler_scratch_floats(V) * 4);
    gt_down(work, dwork, (size_t)R * V * 4);
    long pen_bad = 0, pen_rows = 0;
    for (int r = 0; r < R; r++) {
        if (rsp[r].temperature > SAMPLER_GREEDY_EPS || !sampling_uses_history(&rsp[r])) continue;
        sampler_penalize(logits + (size_t)r * V, V, &seqs[r], scratch);
        pen_bad += memcmp(scratch, work + (size_t)r * V, (size_t)V * 4) != 0;
        pen_rows++;
    }
    GT_CHECK(pen_bad == 0 && pen_rows > 0, "penalties match sampler_penalize bit for bit (%ld of %ld rows differ)",
             pen_bad, pen_rows);

    int tok_bad = 0, top_bad = 0;
    double lp_err = 0;
    for (int r = 0; r < R; r++) {
        struct sample_result ref;
        memset(&ref, 0, sizeof ref);
        sampler_sample(logits + (size_t)r * V, V, &seqs[r], scratch, &ref);
        if (ref.token != out[r].token) {
            tok_bad++;
            printf("    row %d (T=%.2f p=%.2f k=%d minp=%.2f): cpu %d gpu %d\n", r, rsp[r].temperature, rsp[r].top_p,
                   rsp[r].top_k, rsp[r].min_p, ref.token, out[r].token);
        }
        double d = fabs((double)ref.logprob - out[r].logprob);
        if (d > lp_err) lp_err = d;
        if (ref.n_top != out[r].n_top) top_bad++;
        for (int k = 0; k < ref.n_top && k < out[r].n_top; k++) {
            if (ref.top_ids[k] != out[r].top_ids[k]) top_bad++;
            d = fabs((double)ref.top_logprobs[k] - out[r].top_logprobs[k]);
            if (d > lp_err) lp_err = d;
        }
    }
    GT_CHECK(tok_bad == 0, "sampled tokens equal the CPU sampler's (%d of %d rows differ)", tok_bad, R);
    GT_CHECK(top_bad == 0, "top logprob ids equal (%d differences)", top_bad);
    GT_CHECK(lp_err < 1e-4, "logprobs within 1e-4 (max diff %.2e)", lp_err);

    cudaFree(dlog);
    cudaFree(dwork);
    cudaFree(dsw);
    cudaFree(dhist);
    cudaFree(dcounts);
    cudaFree(dids);
    cudaFree(dsid);
    cudaFree(doff);
    cudaFree(drows);
    cudaFree(dout);
    cudaFree(dtemp);
    free(logits);
    free(hist);
    free(rows);
    free(seqs);
    free(rsp);
    free(out);
    free(work);
    free(scratch);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    test_sampling(1000);
    test_sampling(1001); /* rows not a multiple of 4 floats: the scalar loop */
    test_sampling(32000);
    test_sampling(151936);
    return gt_finish();
}
