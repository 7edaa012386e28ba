/* Attention's CPU reference (causal attention in double over the paged cache, with soft-capping
 * and sliding windows), the cases that check any set of kernel variants against it, and their
 * timing: kernels/attention_test.c runs the shipped ones (sk_attention), and
 * kernels/dev/bench_attention_decode.c those in kernels/dev/ beside them, which is why the cases
 * live in a header rather than in the test. Variant 0 is the per-head kernel, 9 the tensor-core
 * streaming kernel (the numbers the variants had when they all shipped; 1-7 are in kernels/dev/). */
#ifndef SLUICE_KERNELS_ATTENTION_REF_H
#define SLUICE_KERNELS_ATTENTION_REF_H

#include <pthread.h>
#include <unistd.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"
#include "worker/model/fp8.h"

/* bf16 outputs pass at ||out - ref|| / ||ref|| below this. */
#define ATTN_TOL 1e-2
#define ATTN_MAX_VARIANTS 16

struct attn_runner {
    int n;
    const int *variants;
    /* Runs variant v with sk_attention's arguments; whether v takes p. */
    cudaError_t (*run)(int v, const float *q, const void *k, const void *v_cache, const int32_t *bt,
                       const int32_t *seq, const int32_t *pos, float *part_o, float *part_ml, uint16_t *out,
                       struct sk_attn_params p, cudaStream_t s);
    int (*fits)(int v, const struct sk_attn_params *p);
    /* Benches launch each variant once, eagerly, for a profiler (ncu), and time nothing. */
    int profile;
};

/* The shipped kernels under their variant numbers. */
static inline cudaError_t attn_run_shipped(int v, const float *q, const void *k, const void *vc,
                                           const int32_t *bt, const int32_t *seq, const int32_t *pos, float *po,
                                           float *pml, uint16_t *out, struct sk_attn_params p, cudaStream_t s)
{
    return sk_attention(q, k, vc, bt, seq, pos, po, pml, out, p, v == 9 ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD, s);
}

static inline int attn_fits_shipped(int v, const struct sk_attn_params *p)
{
    return v == 0 || (v == 9 && sk_attention_decode_fits(p));
}

struct attn_seq {
    int start, n_new;
};

/* Soft-capping and a sliding window (sk_attn_params' softcap and window), a factor on the
 * scale: scores of a few units, which a cap of 50 changes by more than the tolerance; and an FP8
 * cache (kv_fp8): the values are stored as e4m3 codes of value / ATTN_FP8_K_SCALE (K) and value /
 * ATTN_FP8_V_SCALE (V), and the reference reads the codes' values times the scales. */
struct attn_opts {
    float softcap;
    int window;
    float scale_mult; /* 0: 1 */
    int kv_fp8;
};

/* Scales far from 1 and from each other, so that a kernel that left either out, or swapped them,
 * misses the reference by far more than the tolerance; N(0, 1) values then take codes up to
 * about +-200, inside e4m3's +-448. */
#define ATTN_FP8_K_SCALE 0.02f
#define ATTN_FP8_V_SCALE 0.03125f

/* A cache's element i as a double: bf16, or (fp8) an e4m3 code's value times scale. */
static inline double attn_kv_value(const void *cache, size_t i, int fp8, float scale)
{
    return fp8 ? (double)fp8_e4m3_to_f32(((const uint8_t *)cache)[i]) * scale
               : (double)gt_bf2f(((const uint16_t *)cache)[i]);
}

/* The bf16 caches k and v (n values each) as e4m3 codes of value / the scale, as the kernels store
 * them (fp8_e4m3_from_f32; NaN stays NaN, 0x7f). */
static inline void attn_kv_encode_fp8(const uint16_t *k, const uint16_t *v, uint8_t *k8, uint8_t *v8, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        k8[i] = fp8_e4m3_from_f32(gt_bf2f(k[i]) / ATTN_FP8_K_SCALE);
        v8[i] = fp8_e4m3_from_f32(gt_bf2f(v[i]) / ATTN_FP8_V_SCALE);
    }
}

/* The first key a query at position qpos sees (as attn_first_key in kernels/attention_common.cuh). */
static inline int attention_first_key(int window, int qpos)
{
    return window > 0 && qpos >= window ? qpos - window + 1 : 0;
}

/* Causal attention in double over the paged cache (16-key blocks), as every decode kernel
 * computes it: token t (sequence tseq[t]) attends to keys first..tpos[t] (first > 0 past a
 * sliding window: no key or block-table entry before it is read), scores soft-capped where
 * softcap > 0. The (token, head) pairs are shared among threads: the long-context and head_dim
 * 256 cases would otherwise spend minutes here, on one core of a many-core machine. */
struct attn_ref_job {
    const float *q;
    const void *k, *v;
    int fp8;
    const int32_t *bt, *tseq, *tpos;
    int stride, T, nh, nkv, D, window, max_ctx;
    float scale, softcap;
    double *ref;
    int first_pair, n_pairs; /* pairs t * nh + h of this thread */
};

static inline void *attention_ref_pairs(void *arg)
{
    const struct attn_ref_job *a = arg;
    const int D = a->D, nh = a->nh, nkv = a->nkv;
    double *sc = malloc((size_t)a->max_ctx * 8), *o = malloc((size_t)D * 8);
    for (int pair = a->first_pair; pair < a->first_pair + a->n_pairs; pair++) {
        const int t = pair / nh, h = pair % nh;
        const int kvh = h / (nh / nkv), n = a->tpos[t] + 1, first = attention_first_key(a->window, a->tpos[t]);
        const int32_t *tb = a->bt + (size_t)a->tseq[t] * a->stride;
        const float *qh = a->q + ((size_t)t * nh + h) * D;
        double mx = -INFINITY;
        for (int j = first; j < n; j++) {
            const size_t at = ((size_t)(tb[j / 16] * nkv + kvh) * 16 + j % 16) * D;
            double s = 0;
            for (int i = 0; i < D; i++) s += (double)qh[i] * attn_kv_value(a->k, at + i, a->fp8, ATTN_FP8_K_SCALE);
            sc[j] = s * a->scale;
            if (a->softcap > 0) sc[j] = a->softcap * tanh(sc[j] / a->softcap);
            if (sc[j] > mx) mx = sc[j];
        }
        double sum = 0;
        for (int j = first; j < n; j++) sum += (sc[j] = exp(sc[j] - mx));
        for (int i = 0; i < D; i++) o[i] = 0;
        for (int j = first; j < n; j++) { /* key by key: each key's row is read once, in order */
            const size_t at = ((size_t)(tb[j / 16] * nkv + kvh) * 16 + j % 16) * D;
            for (int i = 0; i < D; i++) o[i] += sc[j] * attn_kv_value(a->v, at + i, a->fp8, ATTN_FP8_V_SCALE);
        }
        for (int i = 0; i < D; i++) a->ref[((size_t)t * nh + h) * D + i] = o[i] / sum;
    }
    free(o);
    free(sc);
    return NULL;
}

static inline void attention_ref_kv(const float *q, const void *k, const void *v, int fp8, const int32_t *bt,
                                    int stride, const int32_t *tseq, const int32_t *tpos, int T, int nh, int nkv,
                                    int D, float scale, float softcap, int window, double *ref)
{
    enum { MAX_THREADS = 32 };
    int max_ctx = 1;
    for (int t = 0; t < T; t++)
        if (tpos[t] + 1 > max_ctx) max_ctx = tpos[t] + 1;
    const int pairs = T * nh;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cores < 1 ? 1 : cores > MAX_THREADS ? MAX_THREADS : (int)cores;
    if (n > pairs) n = pairs > 0 ? pairs : 1;
    struct attn_ref_job jobs[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0, at = 0; i < n; i++) {
        const int share = pairs / n + (i < pairs % n);
        jobs[i] = (struct attn_ref_job){.q = q, .k = k, .v = v, .fp8 = fp8, .bt = bt, .tseq = tseq, .tpos = tpos,
                                        .stride = stride, .T = T, .nh = nh, .nkv = nkv, .D = D, .window = window,
                                        .max_ctx = max_ctx, .scale = scale, .softcap = softcap, .ref = ref,
                                        .first_pair = at, .n_pairs = share};
        at += share;
        /* The first share runs on this thread; a thread that cannot start runs its share here too. */
        started[i] = i > 0 && pthread_create(&th[i], NULL, attention_ref_pairs, &jobs[i]) == 0;
        if (i > 0 && !started[i]) attention_ref_pairs(&jobs[i]);
    }
    attention_ref_pairs(&jobs[0]);
    for (int i = 1; i < n; i++)
        if (started[i]) pthread_join(th[i], NULL);
}

/* The same over bf16 caches. */
static inline void attention_ref_opt(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt,
                                     int stride, const int32_t *tseq, const int32_t *tpos, int T, int nh, int nkv,
                                     int D, float scale, float softcap, int window, double *ref)
{
    attention_ref_kv(q, k, v, 0, bt, stride, tseq, tpos, T, nh, nkv, D, scale, softcap, window, ref);
}

static inline void attention_ref(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, int stride,
                                 const int32_t *tseq, const int32_t *tpos, int T, int nh, int nkv, int D, float scale,
                                 double *ref)
{
    attention_ref_opt(q, k, v, bt, stride, tseq, tpos, T, nh, nkv, D, scale, 0.0f, 0, ref);
}

/* ||a - b|| / ||b|| of two double arrays: how far apart two references are. */
static inline double attention_ref_diff(const double *a, const double *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* With a sliding window, what the engine does to a sequence whose step starts at position start:
 * the block-table entries of blocks wholly before that position's window are freed, -1 (or, on
 * odd sequences, an id far past the cache, so that a read of one faults), and the keys and values
 * of the first kept block before the window are NaN, so that a kernel which mixes one in, even
 * with weight 0, gives NaN. */
static inline void attention_drop_before_window(int32_t *tb, uint16_t *k, uint16_t *v, int s, int start, int window,
                                                int nkv, int D)
{
    const int first = attention_first_key(window, start);
    for (int b = 0; b < first / 16; b++) tb[b] = s % 2 ? 0x3fffffff : -1;
    for (int j = first / 16 * 16; j < first; j++)
        for (int h = 0; h < nkv; h++) {
            const size_t at = ((size_t)(tb[j / 16] * nkv + h) * 16 + j % 16) * D;
            for (int i = 0; i < D; i++) k[at + i] = v[at + i] = 0x7fc0;
        }
}

/* Runs every variant of r that takes the shape over the sequences seqs[0..S) (start = cached
 * tokens before, n_new = tokens now) against a double reference. Outputs are poisoned before each
 * run; unless mixed, the cache slots past each sequence's last token hold NaN, as unwritten slots
 * of a live cache may. mixed: as the backend does with tensor-core prefill, sequences of 2+ new tokens go to
 * sk_attention_prefill in 64-token tiles and single tokens to sk_attention through a list.
 * o (NULL: none) soft-caps and slides a window; then the blocks before each sequence's window are
 * dropped (attention_drop_before_window), and a second check says that the case tells the
 * options apart: the reference without the window, and the one without the cap, are each more
 * than 3 tolerances away from the one with both, so a kernel that ignored either would fail.
 * With o->kv_fp8 the caches go to the kernels as e4m3 codes (attn_kv_encode_fp8, after every
 * change to the bf16 values), and the references read the codes. */
static inline void attention_seqs_opt(const struct attn_runner *r, const struct attn_seq *seqs, int S, int nh,
                                      int nkv, int D, int n_splits, int split_len, int mixed,
                                      const struct attn_opts *o)
{
    const float softcap = o ? o->softcap : 0.0f;
    const int window = o ? o->window : 0;
    const int fp8 = o && o->kv_fp8;
    int T = 0, max_ctx = 0;
    for (int s = 0; s < S; s++) {
        T += seqs[s].n_new;
        if (seqs[s].start + seqs[s].n_new > max_ctx) max_ctx = seqs[s].start + seqs[s].n_new;
    }
    const int stride = (max_ctx + 15) / 16, nblocks = S * stride + 3;
    int32_t *bt = malloc((size_t)S * stride * 4), *tseq = malloc(T * 4), *tpos = malloc(T * 4);
    int32_t *perm = malloc(nblocks * sizeof *perm);
    gt_shuffled_ids(perm, nblocks, 0);
    for (int i = 0; i < S * stride; i++) bt[i] = perm[i];
    for (int s = 0, t = 0; s < S; s++)
        for (int i = 0; i < seqs[s].n_new; i++, t++) {
            tseq[t] = s;
            tpos[t] = seqs[s].start + i;
        }
    size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    uint16_t *k = malloc(cache_n * 2), *v = malloc(cache_n * 2);
    for (size_t i = 0; i < cache_n; i++) {
        k[i] = gt_f2bf(gt_normal());
        v[i] = gt_f2bf(gt_normal());
    }
    if (!mixed)
        for (int s = 0; s < S; s++) {
            int end = seqs[s].start + seqs[s].n_new;
            for (int j = end; j < (end + 15) / 16 * 16; j++)
                for (int h = 0; h < nkv; h++)
                    for (int i = 0; i < D; i++) {
                        size_t at = ((size_t)(bt[(size_t)s * stride + j / 16] * nkv + h) * 16 + j % 16) * D + i;
                        k[at] = v[at] = 0x7fc0;
                    }
        }
    size_t qn = (size_t)T * nh * D;
    float *q = malloc(qn * 4);
    for (size_t i = 0; i < qn; i++) q[i] = gt_normal();
    float scale = (o && o->scale_mult > 0 ? o->scale_mult : 1.0f) / sqrtf((float)D);
    /* What the kernels and references read: the bf16 caches, or their codes. */
    uint8_t *k8 = fp8 ? malloc(cache_n) : NULL, *v8 = fp8 ? malloc(cache_n) : NULL;
    const void *kr = fp8 ? (const void *)k8 : (const void *)k, *vr = fp8 ? (const void *)v8 : (const void *)v;
    if (fp8) attn_kv_encode_fp8(k, v, k8, v8, cache_n);

    double *ref = malloc(qn * 8), *ref_nowin = NULL, *ref_nocap = NULL;
    if (window > 0) {
        ref_nowin = malloc(qn * 8);
        attention_ref_kv(q, kr, vr, fp8, bt, stride, tseq, tpos, T, nh, nkv, D, scale, softcap, 0, ref_nowin);
        for (int s = 0; s < S; s++)
            attention_drop_before_window(bt + (size_t)s * stride, k, v, s, seqs[s].start, window, nkv, D);
        if (fp8) attn_kv_encode_fp8(k, v, k8, v8, cache_n);
    }
    if (softcap > 0) {
        ref_nocap = malloc(qn * 8);
        attention_ref_kv(q, kr, vr, fp8, bt, stride, tseq, tpos, T, nh, nkv, D, scale, 0.0f, window, ref_nocap);
    }
    attention_ref_kv(q, kr, vr, fp8, bt, stride, tseq, tpos, T, nh, nkv, D, scale, softcap, window, ref);

    const size_t elem = fp8 ? 1 : 2;
    void *dk = gt_up(kr, cache_n * elem), *dv = gt_up(vr, cache_n * elem);
    uint16_t *dout = gt_dev(qn * 2);
    float *dq = gt_up(q, qn * 4);
    int32_t *dbt = gt_up(bt, (size_t)S * stride * 4), *dseq = gt_up(tseq, T * 4), *dpos = gt_up(tpos, T * 4);
    float *dpo = gt_dev((size_t)T * nh * n_splits * D * 4), *dml = gt_dev((size_t)T * nh * n_splits * 2 * 4);
    struct sk_attn_params p = {.n_tokens = T,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = stride,
                               .scale = scale,
                               .n_splits = n_splits,
                               .split_len = split_len,
                               .softcap = softcap,
                               .window = window,
                               .kv_fp8 = fp8,
                               .k_scale = ATTN_FP8_K_SCALE,
                               .v_scale = ATTN_FP8_V_SCALE};
    int32_t *dtiles = NULL, *dlist = NULL;
    int nt = 0;
    if (mixed) {
        int32_t *tiles = malloc((size_t)(T / SK_PREFILL_TILE + S) * 12), *list = malloc((size_t)T * 4);
        int nl = 0;
        for (int s = 0, t = 0; s < S; t += seqs[s].n_new, s++) {
            if (seqs[s].n_new >= 2) {
                for (int i = 0; i < seqs[s].n_new; i += SK_PREFILL_TILE, nt++) {
                    tiles[3 * nt] = t + i;
                    tiles[3 * nt + 1] = seqs[s].n_new - i < SK_PREFILL_TILE ? seqs[s].n_new - i : SK_PREFILL_TILE;
                    tiles[3 * nt + 2] = s;
                }
            } else {
                list[nl++] = t;
            }
        }
        dtiles = gt_up(tiles, (size_t)(nt ? nt : 1) * 12);
        dlist = gt_up(list, (size_t)(nl ? nl : 1) * 4);
        p.n_tokens = nl;
        p.token_list = dlist;
        free(tiles);
        free(list);
    }

    uint16_t *out = malloc(qn * 2);
    float *outf = malloc(qn * 4);
    double errs[ATTN_MAX_VARIANTS], worst = 0;
    char line[256];
    int at = 0;
    for (int mi = 0; mi < r->n; mi++) {
        if (!r->fits(r->variants[mi], &p)) continue;
        GT_CUDA(cudaMemset(dout, 0xff, qn * 2));
        GT_CUDA(cudaMemset(dpo, 0xff, (size_t)T * nh * n_splits * D * 4));
        GT_CUDA(cudaMemset(dml, 0xff, (size_t)T * nh * n_splits * 2 * 4));
        if (mixed) GT_CUDA(sk_attention_prefill(dq, dk, dv, dbt, dtiles, nt, dpos, dout, p, 0));
        GT_CUDA(r->run(r->variants[mi], dq, dk, dv, dbt, dseq, dpos, dpo, dml, dout, p, 0));
        GT_CUDA(cudaGetLastError());
        gt_down(out, dout, qn * 2);
        for (size_t i = 0; i < qn; i++) outf[i] = gt_bf2f(out[i]);
        errs[mi] = gt_rel_err(outf, ref, qn);
        if (!(errs[mi] < worst)) worst = errs[mi];
        at += snprintf(line + at, sizeof line - at, " %d:%.1e", r->variants[mi], errs[mi]);
    }
    char opts[64] = "";
    if (o) snprintf(opts, sizeof opts, " softcap=%g window=%d%s", softcap, window, fp8 ? " kv=fp8" : "");
    GT_CHECK(worst < ATTN_TOL,
             "attention%s nh=%d nkv=%d D=%d splits=%d/%d%s (S=%d, T=%d, contexts to %d): rel err by variant%s",
             mixed ? " (tensor-core prefill + listed decode)" : "", nh, nkv, D, n_splits, split_len, opts, S, T,
             max_ctx, line);
    if (o) {
        const double dw = ref_nowin ? attention_ref_diff(ref_nowin, ref, qn) : INFINITY;
        const double dc = ref_nocap ? attention_ref_diff(ref_nocap, ref, qn) : INFINITY;
        GT_CHECK(dw > 3 * ATTN_TOL && dc > 3 * ATTN_TOL,
                 "attention%s D=%d: the case tells the options apart (the reference without the window moves by "
                 "%.1e, without the cap by %.1e)",
                 opts, D, dw, dc);
    }
    free(ref_nowin);
    free(ref_nocap);
    cudaFree(dtiles);
    cudaFree(dlist);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dbt);
    cudaFree(dseq);
    cudaFree(dpos);
    cudaFree(dpo);
    cudaFree(dml);
    free(bt);
    free(tseq);
    free(tpos);
    free(perm);
    free(k);
    free(v);
    free(k8);
    free(v8);
    free(q);
    free(out);
    free(ref);
    free(outf);
}

static inline void attention_seqs(const struct attn_runner *r, const struct attn_seq *seqs, int S, int nh, int nkv,
                                  int D, int n_splits, int split_len, int mixed)
{
    attention_seqs_opt(r, seqs, S, nh, nkv, D, n_splits, split_len, mixed, NULL);
}

/* The batches every runner is checked on: head dims 8..256 (the streaming kernel takes 64, 128
 * and 256), 1 to 16 query heads per kv head, splits of fixed and per-token lengths, tensor-core
 * prefill tiles with listed decode tokens, decode batches at chunk and block edges, and ranges
 * past the 1024 block-table entries the streaming kernel stages. */
static inline void attention_case_m(const struct attn_runner *r, int nh, int nkv, int D, int n_splits, int split_len,
                                    int mixed)
{
    const struct attn_seq seqs[] = {{0, 37}, {100, 1}, {700, 1}, {50, 20}, {0, 1}, {255, 3}, {130, 150}, {0, 64}};
    attention_seqs(r, seqs, (int)(sizeof seqs / sizeof seqs[0]), nh, nkv, D, n_splits, split_len, mixed);
}

/* A decode batch: one new token per sequence, contexts of random lengths plus the edges of the
 * streaming kernels' 8-key chunks and 16-key blocks (o: as for attention_seqs_opt). */
static inline void attention_decode_batch_opt(const struct attn_runner *r, int nh, int nkv, int D, int n_splits,
                                              const struct attn_opts *o)
{
    enum { S = 40 };
    struct attn_seq seqs[S];
    const int edges[] = {0, 1, 7, 8, 15, 16, 31, 32, 33, 63, 127, 128, 191, 255, 256, 383};
    for (int s = 0; s < S; s++) {
        seqs[s].start = s < (int)(sizeof edges / sizeof edges[0]) ? edges[s] : gt_int(600);
        seqs[s].n_new = 1;
    }
    attention_seqs_opt(r, seqs, S, nh, nkv, D, n_splits, 0, 0, o);
}

static inline void attention_decode_batch(const struct attn_runner *r, int nh, int nkv, int D, int n_splits)
{
    attention_decode_batch_opt(r, nh, nkv, D, n_splits, NULL);
}

static inline void attention_cases(const struct attn_runner *r)
{
    int dims[] = {8, 16, 32, 64, 128, 256, 80, 96, 24, 40, 160};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        attention_case_m(r, 8, 2, dims[i], 1, 0, 0);
        attention_case_m(r, 8, 2, dims[i], 4, 208, 0);
    }
    attention_case_m(r, 32, 8, 128, 1, 0, 0);
    attention_case_m(r, 32, 8, 128, 11, 64, 0);
    attention_case_m(r, 4, 4, 64, 3, 240, 0);
    /* Per-token equal ranges (split_len 0), as the backend uses them. */
    attention_case_m(r, 8, 2, 128, 5, 0, 0);
    attention_case_m(r, 32, 8, 128, 16, 0, 0);
    attention_case_m(r, 8, 2, 80, 3, 0, 0);
    attention_case_m(r, 8, 2, 8, 7, 0, 0);
    attention_case_m(r, 8, 2, 64, 2, 0, 0);
    /* Tensor-core prefill tiles with listed decode tokens, as the backend runs them. */
    attention_case_m(r, 8, 2, 64, 1, 0, 1);
    attention_case_m(r, 8, 2, 128, 1, 0, 1);
    attention_case_m(r, 32, 8, 128, 4, 0, 1);
    attention_case_m(r, 12, 12, 64, 3, 0, 1);
    attention_case_m(r, 28, 4, 128, 1, 0, 1);
    /* GQA groups of 16 and 7. */
    attention_case_m(r, 16, 1, 128, 1, 0, 0);
    attention_case_m(r, 16, 1, 64, 9, 0, 0);
    attention_case_m(r, 28, 4, 128, 1, 0, 0);
    attention_case_m(r, 28, 4, 96, 32, 0, 0);
    /* Decode batches at every group size the streaming kernels take (and 8 at head_dim 128,
     * which the SIMT one does not), with and without splits. */
    attention_decode_batch(r, 32, 8, 128, 1);
    attention_decode_batch(r, 32, 8, 128, 2);
    attention_decode_batch(r, 32, 8, 128, 5);
    attention_decode_batch(r, 16, 8, 128, 1);
    attention_decode_batch(r, 8, 8, 128, 3);
    attention_decode_batch(r, 16, 2, 128, 2);
    attention_decode_batch(r, 64, 8, 128, 2);
    attention_decode_batch(r, 16, 2, 64, 1);
    attention_decode_batch(r, 16, 4, 64, 4);
    attention_decode_batch(r, 8, 4, 64, 1);
    attention_decode_batch(r, 4, 4, 64, 2);
    /* A range past the 1024 block-table entries the streaming kernels stage. */
    const struct attn_seq longs[] = {{16500, 1}, {3000, 1}};
    attention_seqs(r, longs, 2, 8, 2, 128, 1, 0, 0);
    attention_seqs(r, longs, 2, 8, 2, 64, 2, 0, 0);
}

/* Soft-capping and sliding windows (kernels with no such options are not asked: run these on the
 * shipped kernels alone). Queries up to hundreds of positions past windows of 16, 24 and 100 keys,
 * the blocks before each sequence's window dropped (-1 or far out of range) and the keys before it
 * in its first kept block NaN; caps of 50 (on scores scaled up 16 times, so that the cap matters)
 * and 2; head dims 64, 128 and 256 (Gemma 2's) on every kernel and 16 and 48 on the per-head one;
 * splits of per-token and of fixed lengths, some of them empty past the window; tensor-core
 * prefill tiles whose chunks start past the window; decode batches of 1, 2, 4 and 8 query heads
 * per kv head; and a window 16500 keys into a context. */
static inline void attention_window_cases(const struct attn_runner *r)
{
    const struct attn_seq seqs[] = {{300, 1}, {517, 1}, {5, 1},    {0, 37},  {250, 150},
                                    {700, 40}, {1000, 1}, {130, 70}, {64, 1}};
    const int S = (int)(sizeof seqs / sizeof seqs[0]);
    const struct attn_opts w16 = {0, 16, 0, 0}, w100 = {0, 100, 0, 0}, c50 = {50, 0, 16, 0}, w24c50 = {50, 24, 16, 0},
                           w100c50 = {50, 100, 16, 0}, w16c2 = {2, 16, 0, 0}, w100c2 = {2, 100, 0, 0};
    /* Every token through the decode kernels. */
    attention_seqs_opt(r, seqs, S, 8, 2, 128, 1, 0, 0, &w16);
    attention_seqs_opt(r, seqs, S, 16, 4, 64, 3, 0, 0, &w24c50);
    attention_seqs_opt(r, seqs, S, 32, 8, 128, 4, 32, 0, &w100c2); /* fixed ranges that just cover it */
    attention_seqs_opt(r, seqs, S, 8, 2, 128, 8, 16, 0, &w100);    /* short contexts leave ranges empty */
    attention_seqs_opt(r, seqs, S, 8, 2, 128, 5, 0, 0, &c50);
    attention_seqs_opt(r, seqs, S, 8, 2, 64, 1, 0, 0, &w16c2);
    /* The per-head kernel's other paths. */
    attention_seqs_opt(r, seqs, S, 8, 2, 48, 2, 0, 0, &w24c50);
    attention_seqs_opt(r, seqs, S, 8, 4, 16, 1, 0, 0, &w16c2);
    attention_seqs_opt(r, seqs, S, 8, 4, 256, 1, 0, 0, &w100c50);
    attention_seqs_opt(r, seqs, S, 8, 4, 256, 3, 0, 0, &w24c50);
    /* Tensor-core prefill tiles with listed decode tokens. */
    attention_seqs_opt(r, seqs, S, 8, 2, 128, 1, 0, 1, &w16);
    attention_seqs_opt(r, seqs, S, 8, 2, 64, 2, 0, 1, &w24c50);
    attention_seqs_opt(r, seqs, S, 32, 8, 128, 3, 0, 1, &w100c2);
    attention_seqs_opt(r, seqs, S, 8, 2, 128, 1, 0, 1, &c50);
    attention_seqs_opt(r, seqs, S, 12, 12, 64, 1, 0, 1, &w100);
    attention_seqs_opt(r, seqs, S, 16, 8, 128, 2, 0, 1, &w100c50);
    /* Decode batches. */
    attention_decode_batch_opt(r, 32, 8, 128, 1, &w16);
    attention_decode_batch_opt(r, 32, 8, 128, 2, &w24c50);
    attention_decode_batch_opt(r, 64, 8, 128, 5, &w100c2);
    attention_decode_batch_opt(r, 16, 8, 128, 3, &w100);
    attention_decode_batch_opt(r, 16, 2, 64, 1, &w24c50);
    attention_decode_batch_opt(r, 4, 4, 64, 3, &w16c2);
    /* A window far into a long context: the streaming kernel stages the table from its block on. */
    const struct attn_seq longs[] = {{16500, 1}, {3000, 1}};
    const struct attn_opts w1000c50 = {50, 1000, 16, 0};
    attention_seqs_opt(r, longs, 2, 8, 2, 128, 2, 0, 0, &w1000c50);
}

/* Times decode attention over a batch of sequences that each hold ctx keys (one new token each):
 * enough layers' caches to exceed L2 are cycled, block tables are shuffled as in a live cache,
 * and each variant's median over 9 samples of 4 passes over the layers is reported in
 * microseconds per layer and GB/s of K+V read. */
static inline void bench_decode_batch(const struct attn_runner *r, int nh, int nkv, int D, int batch, int ctx,
                                      int n_splits, const int *modes, int n_modes)
{
    const int nb = (ctx + 15) / 16, nblocks = batch * nb;
    const size_t layer_n = (size_t)nblocks * nkv * 16 * D;
    int layers = (int)((size_t)256 * 1024 * 1024 / (layer_n * 4)) + 1;
    if (layers < 2) layers = 2;
    if (layers > 64) layers = 64;
    uint16_t *dk = gt_dev(layer_n * layers * 2), *dv = gt_dev(layer_n * layers * 2);
    GT_CUDA(sk_fill_dummy_bf16(dk, 1, 1, 0, (int64_t)(layer_n * layers), 0, 0));
    GT_CUDA(sk_fill_dummy_bf16(dv, 1, 2, 0, (int64_t)(layer_n * layers), 0, 0));
    int32_t *bt = malloc((size_t)nblocks * 4), *pos = malloc((size_t)batch * 4), *seq = malloc((size_t)batch * 4);
    gt_shuffled_ids(bt, nblocks, 0);
    for (int i = 0; i < batch; i++) {
        pos[i] = ctx - 1;
        seq[i] = i;
    }
    int32_t *dbt = gt_up(bt, (size_t)nblocks * 4), *dpos = gt_up(pos, (size_t)batch * 4),
            *dseq = gt_up(seq, (size_t)batch * 4);
    const size_t qn = (size_t)batch * nh * D;
    float *dq = gt_dev(qn * 4);
    GT_CUDA(sk_fill_dummy_f32(dq, 1, 3, 0, (int64_t)qn, 0, 0));
    uint16_t *dout = gt_dev(qn * 2);
    float *dpo = gt_dev(qn * n_splits * 4), *dml = gt_dev((size_t)batch * nh * n_splits * 8);
    struct sk_attn_params p = {.n_tokens = batch,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = nb,
                               .scale = 1.0f / sqrtf((float)D),
                               .n_splits = n_splits};
    cudaEvent_t a, b;
    cudaStream_t st;
    GT_CUDA(cudaEventCreate(&a));
    GT_CUDA(cudaEventCreate(&b));
    GT_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const double kv_bytes = (double)batch * ctx * nkv * D * 4;
    printf("  bench decode nh=%d nkv=%d D=%d batch=%d ctx=%d splits=%d (%.1f MB K+V, %d layers):", nh, nkv, D, batch,
           ctx, n_splits, kv_bytes / 1e6, layers);
    for (int mi = 0; mi < n_modes; mi++) {
        if (!r->fits(modes[mi], &p)) {
            printf(" | variant %d: shape not taken", modes[mi]);
            continue;
        }
        /* One graph of 4 passes over the layers, replayed: launch gaps as in the backend's graphs. */
        GT_CUDA(r->run(modes[mi], dq, dk, dv, dbt, dseq, dpos, dpo, dml, dout, p, st));
        GT_CUDA(cudaStreamSynchronize(st));
        if (r->profile) continue;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        GT_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < 4 * layers; i++) {
            size_t off = (size_t)(i % layers) * layer_n;
            GT_CUDA(r->run(modes[mi], dq, dk + off, dv + off, dbt, dseq, dpos, dpo, dml, dout, p, st));
        }
        GT_CUDA(cudaStreamEndCapture(st, &g));
        GT_CUDA(cudaGraphInstantiate(&ge, g, 0));
        float samples[9];
        for (int r = -1; r < 9; r++) {
            GT_CUDA(cudaEventRecord(a, st));
            GT_CUDA(cudaGraphLaunch(ge, st));
            GT_CUDA(cudaEventRecord(b, st));
            GT_CUDA(cudaEventSynchronize(b));
            if (r >= 0) GT_CUDA(cudaEventElapsedTime(&samples[r], a, b));
        }
        GT_CUDA(cudaGraphExecDestroy(ge));
        GT_CUDA(cudaGraphDestroy(g));
        for (int i = 1; i < 9; i++)
            for (int j = i; j > 0 && samples[j] < samples[j - 1]; j--) {
                float tmp = samples[j];
                samples[j] = samples[j - 1];
                samples[j - 1] = tmp;
            }
        const double us = samples[4] * 1000.0 / (4 * layers);
        printf(" | variant %d %.1f us %.0f GB/s", modes[mi], us, kv_bytes / (us * 1e3));
    }
    printf("\n");
    fflush(stdout);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(st);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dbt);
    cudaFree(dpos);
    cudaFree(dseq);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dpo);
    cudaFree(dml);
    free(bt);
    free(pos);
    free(seq);
}

#define BENCH_DECODE(r, nh, nkv, D, batch, ctx, splits, ...)                                                           \
    do {                                                                                                               \
        const int v_[] = {__VA_ARGS__};                                                                                \
        bench_decode_batch(r, nh, nkv, D, batch, ctx, splits, v_, (int)(sizeof v_ / sizeof v_[0]));                    \
    } while (0)

#endif
