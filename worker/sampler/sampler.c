/* The CPU reference sampler; sampler.h defines every step so the CUDA kernel can match it. */
#include "worker/sampler/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ull

uint64_t sampler_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float sampler_uniform(uint64_t seed, uint64_t n_generated)
{
    uint64_t h = sampler_mix64(sampler_mix64(seed + SPLITMIX_GAMMA) + (n_generated + 1) * SPLITMIX_GAMMA);
    return (float)(h >> 40) * 0x1p-24f;
}

size_t sampler_scratch_floats(int vocab)
{
    return vocab > 0 ? 2 * (size_t)vocab : 0;
}

/* The ranking every filter uses: higher weight first, the lower id among equals. Ids are
 * distinct, so this is a strict total order and selection never loops on ties. */
static inline bool ranks_before(const float *w, int32_t a, int32_t b)
{
    return w[a] > w[b] || (w[a] == w[b] && a < b);
}

static inline void swap_ids(int32_t *idx, int32_t a, int32_t b)
{
    int32_t t = idx[a];
    idx[a] = idx[b];
    idx[b] = t;
}

/* Partitions idx[lo..hi] around a median-of-three pivot; returns the pivot's final place. */
static int32_t rank_partition(int32_t *idx, int32_t lo, int32_t hi, const float *w)
{
    int32_t mid = lo + (hi - lo) / 2;
    if (ranks_before(w, idx[mid], idx[lo])) swap_ids(idx, lo, mid);
    if (ranks_before(w, idx[hi], idx[lo])) swap_ids(idx, lo, hi);
    if (ranks_before(w, idx[hi], idx[mid])) swap_ids(idx, mid, hi);
    swap_ids(idx, mid, hi);
    int32_t pivot = idx[hi], store = lo;
    for (int32_t i = lo; i < hi; i++)
        if (ranks_before(w, idx[i], pivot)) swap_ids(idx, i, store++);
    swap_ids(idx, store, hi);
    return store;
}

/* Moves the m best ranked of idx[0..n) to idx[0..m), in no particular order. */
static void rank_select(int32_t *idx, int32_t n, int32_t m, const float *w)
{
    int32_t lo = 0, hi = n - 1;
    if (m <= 0 || m >= n) return;
    while (lo < hi) {
        int32_t p = rank_partition(idx, lo, hi, w);
        if (p == m - 1) break;
        if (p < m - 1) lo = p + 1;
        else hi = p - 1;
    }
}

static void rank_sort(int32_t *idx, int32_t lo, int32_t hi, const float *w)
{
    while (hi - lo > 16) {
        int32_t p = rank_partition(idx, lo, hi, w);
        /* Recurse into the smaller side so the stack stays logarithmic. */
        if (p - lo < hi - p) {
            rank_sort(idx, lo, p - 1, w);
            lo = p + 1;
        } else {
            rank_sort(idx, p + 1, hi, w);
            hi = p - 1;
        }
    }
    for (int32_t i = lo + 1; i <= hi; i++) {
        int32_t v = idx[i], j = i;
        while (j > lo && ranks_before(w, v, idx[j - 1])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
}

/* log(sum(exp(logits))), with the largest logit factored out. */
static double log_sum_exp(const float *logits, int vocab)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += (double)expf(logits[i] - mx);
    return (double)mx + log(sum);
}

/* The n_top largest raw logits, ties to the lower id, in descending order, as logprobs. */
static int top_logprobs(const float *logits, int vocab, int n_top, double lse, int32_t *ids, float *lps)
{
    if (n_top > SAMPLER_MAX_TOP_LOGPROBS) n_top = SAMPLER_MAX_TOP_LOGPROBS;
    if (n_top > vocab) n_top = vocab;
    int n = 0;
    /* Insertion into a short sorted list: ids ascend, so an equal logit never displaces an
     * earlier (lower) id. */
    for (int i = 0; i < vocab && n_top > 0; i++) {
        float v = logits[i];
        if (n == n_top && !(v > lps[n - 1])) continue;
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && v > lps[j - 1]) {
            lps[j] = lps[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        lps[j] = v;
        ids[j] = i;
    }
    for (int j = 0; j < n; j++) lps[j] = (float)((double)lps[j] - lse);
    return n;
}

int sampler_prompt_logprob(const float *logits, int vocab, int32_t target, int n_top, struct prompt_logprob *out)
{
    if (!logits || !out || vocab < 1 || target < 0 || target >= vocab) return -1;
    double lse = log_sum_exp(logits, vocab);
    out->token = target;
    out->logprob = (float)((double)logits[target] - lse);
    int32_t above = 0;
    for (int i = 0; i < vocab; i++) above += logits[i] > logits[target];
    out->rank = above + 1;
    out->n_top = n_top > 0 ? top_logprobs(logits, vocab, n_top, lse, out->top_ids, out->top_logprobs) : 0;
    return 0;
}

static void fill_logprobs(const float *logits, int vocab, int n_top, struct sample_result *out,
                          double *lse_out)
{
    double lse = log_sum_exp(logits, vocab);
    *lse_out = lse;
    out->n_top = n_top > 0 ? top_logprobs(logits, vocab, n_top, lse, out->top_ids, out->top_logprobs) : 0;
}

static void apply_penalties(const float *logits, int vocab, const struct batch_seq *seq,
                            const struct sampling_params *sp, float *work, int32_t *counts)
{
    if (!seq->history || seq->n_history <= 0) return;
    float rep = sp->repetition_penalty;
    if (rep > 0.0f && rep != 1.0f) {
        /* Computed from the raw logit each time, so a repeated token is penalized once. */
        for (int32_t i = 0; i < seq->n_history; i++) {
            int32_t t = seq->history[i];
            if (t < 0 || t >= vocab) continue;
            float l = logits[t];
            work[t] = l > 0.0f ? l / rep : l * rep;
        }
    }
    if (sp->presence_penalty == 0.0f && sp->frequency_penalty == 0.0f) return;
    int32_t n_out = seq->n_output < seq->n_history ? seq->n_output : seq->n_history;
    if (n_out <= 0) return;
    const int32_t *outp = seq->history + (seq->n_history - n_out);
    for (int32_t i = 0; i < n_out; i++)
        if (outp[i] >= 0 && outp[i] < vocab) counts[outp[i]] = 0;
    for (int32_t i = 0; i < n_out; i++)
        if (outp[i] >= 0 && outp[i] < vocab) counts[outp[i]]++;
    for (int32_t i = 0; i < n_out; i++) {
        int32_t t = outp[i];
        if (t < 0 || t >= vocab || counts[t] == 0) continue;
        work[t] -= (float)counts[t] * sp->frequency_penalty + sp->presence_penalty;
        counts[t] = 0;
    }
}

void sampler_penalize(const float *logits, int vocab, const struct batch_seq *seq, float *scratch)
{
    memcpy(scratch, logits, (size_t)vocab * sizeof *scratch);
    if (!seq || !seq->sampling) return;
    const struct sampling_params *sp = seq->sampling;
    apply_penalties(logits, vocab, seq, sp, scratch, (int32_t *)(scratch + vocab));
    for (int32_t i = 0; i < sp->n_bias && sp->bias_ids && sp->bias_values; i++) {
        int32_t t = sp->bias_ids[i];
        if (t >= 0 && t < vocab) scratch[t] += sp->bias_values[i];
    }
    for (int32_t i = 0; i < seq->n_suppress && seq->suppress; i++) {
        int32_t t = seq->suppress[i];
        if (t >= 0 && t < vocab) scratch[t] = -INFINITY;
    }
}

static int32_t argmax(const float *v, int vocab)
{
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* Small k: one pass keeping the k best in a heap whose root is the worst of them, which
 * rejects most tokens with a single compare. Leaves them in idx[0..k), root first. */
static void heap_select(int32_t *idx, int32_t vocab, int32_t k, const float *w)
{
    for (int32_t i = 0; i < vocab; i++) {
        int32_t pos;
        if (i < k) {
            pos = i;
            while (pos > 0 && ranks_before(w, idx[(pos - 1) / 2], i)) {
                idx[pos] = idx[(pos - 1) / 2];
                pos = (pos - 1) / 2;
            }
            idx[pos] = i;
            continue;
        }
        if (!ranks_before(w, i, idx[0])) continue;
        pos = 0;
        for (;;) {
            int32_t c = 2 * pos + 1;
            if (c >= k) break;
            if (c + 1 < k && ranks_before(w, idx[c], idx[c + 1])) c++;
            if (!ranks_before(w, i, idx[c])) break;
            idx[pos] = idx[c];
            pos = c;
        }
        idx[pos] = i;
    }
}

/* Finds the worst-ranked token still kept by top_k and top_p; returns -1 when they keep all. */
static int32_t find_cut(const float *w, int32_t vocab, const struct sampling_params *sp, int32_t *idx)
{
    int32_t limit = sp->top_k > 0 && sp->top_k < vocab ? sp->top_k : vocab;
    bool use_p = sp->top_p > 0.0f && sp->top_p < 1.0f;
    if (limit == vocab && !use_p) return -1;
    if (limit <= 1024 && limit < vocab) {
        heap_select(idx, vocab, limit, w);
        if (!use_p) return idx[0];
    } else {
        for (int32_t i = 0; i < vocab; i++) idx[i] = i;
        if (limit < vocab) rank_select(idx, vocab, limit, w);
    }
    if (!use_p) {
        int32_t worst = idx[0];
        for (int32_t r = 1; r < limit; r++)
            if (ranks_before(w, worst, idx[r])) worst = idx[r];
        return worst;
    }
    double total = 0.0;
    for (int32_t r = 0; r < limit; r++) total += w[idx[r]];
    double thr = (double)sp->top_p * total;
    /* Usually the nucleus is small: sort a growing prefix instead of the whole vocabulary. */
    int32_t m = limit < 64 ? limit : 64;
    for (;;) {
        rank_select(idx, limit, m, w);
        rank_sort(idx, 0, m - 1, w);
        double cum = 0.0;
        for (int32_t r = 0; r < m; r++) {
            if (r > 0 && cum >= thr) return idx[r - 1];
            cum += w[idx[r]];
        }
        if (cum >= thr || m == limit) return idx[m - 1];
        m = m > limit / 4 ? limit : m * 4;
    }
}

int sampler_sample(const float *logits, int vocab, const struct batch_seq *seq, float *scratch,
                   struct sample_result *out)
{
    if (vocab < 1 || !seq || !seq->sampling || !logits || !scratch || !out) return -1;
    const struct sampling_params *sp = seq->sampling;
    float *work = scratch;
    int32_t *idx = (int32_t *)(scratch + vocab);

    double lse;
    out->n_top = 0;
    fill_logprobs(logits, vocab, sp->logprobs, out, &lse);

    sampler_penalize(logits, vocab, seq, scratch);

    int32_t token;
    if (seq->allowed) {
        /* Step 2b: the disallowed are out; with no allowed finite logit, the lowest allowed. */
        int32_t first = -1;
        bool finite = false;
        for (int32_t i = 0; i < vocab; i++) {
            if (!((seq->allowed[i >> 5] >> (i & 31)) & 1)) {
                work[i] = -INFINITY;
                continue;
            }
            if (first < 0) first = i;
            finite |= work[i] > -INFINITY;
        }
        if (first < 0) return -1;
        if (!finite) {
            out->token = first;
            out->logprob = (float)((double)logits[first] - lse);
            return 0;
        }
    }
    if (sp->temperature <= SAMPLER_GREEDY_EPS) {
        token = argmax(work, vocab);
    } else {
        float inv_t = 1.0f / sp->temperature;
        float mx = -INFINITY;
        for (int32_t i = 0; i < vocab; i++) {
            work[i] *= inv_t;
            if (work[i] > mx) mx = work[i];
        }
        for (int32_t i = 0; i < vocab; i++) work[i] = expf(work[i] - mx);

        int32_t cut = find_cut(work, vocab, sp, idx);
        float cut_w = cut >= 0 ? work[cut] : 0.0f;
        float min_w = sp->min_p > 0.0f ? sp->min_p : 0.0f;
#define KEPT(i) ((cut < 0 || work[i] > cut_w || (work[i] == cut_w && (i) <= cut)) && work[i] >= min_w && \
                 work[i] > 0.0f)
        double total = 0.0;
        for (int32_t i = 0; i < vocab; i++)
            if (KEPT(i)) total += work[i];
        double target = (double)sampler_uniform(sp->seed, seq->n_generated) * total;
        double acc = 0.0;
        token = -1;
        int32_t last = 0;
        for (int32_t i = 0; i < vocab; i++) {
            if (!KEPT(i)) continue;
            acc += work[i];
            last = i;
            if (acc > target) {
                token = i;
                break;
            }
        }
#undef KEPT
        if (token < 0) token = last;
    }
    out->token = token;
    out->logprob = (float)((double)logits[token] - lse);
    return 0;
}
