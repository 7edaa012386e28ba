/* The shipped attention kernels (kernels/attention.cu, attention_decode_gqa.cu,
 * attention_prefill.cu) against the double reference of attention_ref.h on random inputs, outputs
 * poisoned first, bf16 outputs within 1e-2 relative error: the cases of attention_ref.h (head
 * dims, grouping, splits, tensor-core prefill tiles with listed decode tokens, soft-capping and
 * sliding windows); keys read before the kernel that writes the cache ends (settled_keys); and
 * sk_attention_decode_qkv, the decode attention doing qkv_post's work, whose caches must equal
 * qkv_post's bit for bit; head_dim 256 (Gemma 2 and 3) on the tensor-core kernels, bf16 and FP8.
 * Then it times prefill and decode attention at Llama-3-8B's shapes and at Gemma-2-9B's (head_dim
 * 256), each tensor-core kernel beside the per-head kernel.
 *
 * Run build/tests/gpu/kernels/attention_test (make all builds it with nvcc), on a GPU:
 *   attention_test                                   every check, then the benches
 *   SLUICE_GPU_ONLY=attention_window attention_test  the soft-capping and sliding-window cases alone
 *   SLUICE_GPU_ONLY=attention_qkv attention_test     sk_attention_decode_qkv's cases alone
 *   SLUICE_GPU_ONLY=attention_fp8 attention_test     the FP8 cache's cases alone (--kv-cache-dtype fp8)
 *   SLUICE_GPU_ONLY=attention_d256 attention_test    head_dim 256's cases, then its benches alone
 *   SLUICE_GPU_ONLY=attention attention_test         every check and the decode benches, no prefill ones
 *   SLUICE_ATTN_NOBENCH=1 attention_test             no decode benches (e.g. under compute-sanitizer)
 *   SLUICE_ATTN_PROFILE=1 attention_test             two decode shapes' kernels launched once, for ncu */
#include "kernels/attention_ref.h"
#include "tests/gpu/gpu_test.h"

#include "kernels/sluice_kernels.h"

#define BF_TOL 1e-2

/* The shipped decode-attention kernels: the per-head kernel (variant 0) and the tensor-core
 * streaming kernel (9). */
static const int shipped_variants[] = {0, 9};
static const struct attn_runner shipped = {2, shipped_variants, attn_run_shipped, attn_fits_shipped, 0};

/* Times prefill attention over one sequence of n tokens: tensor-core tiles against the streaming
 * decode kernel, which takes prefill tokens where the tiles are off (--cuda-options
 * prefill_mma=0), and the per-head kernel, which took them where neither fitted (head_dim 256
 * before it had tensor-core instances). softcap and window as in sk_attn_params (the tiles'
 * second kernel). */
static void bench_prefill_attention(int nh, int nkv, int D, int n, float softcap, int window)
{
    const int nblocks = (n + 15) / 16;
    size_t cache_n = (size_t)nblocks * nkv * 16 * D, qn = (size_t)n * nh * D;
    uint16_t *dk = gt_dev(cache_n * 2), *dv = gt_dev(cache_n * 2), *dout = gt_dev(qn * 2);
    float *dq = gt_dev(qn * 4);
    GT_CUDA(sk_fill_dummy_bf16(dk, 1, 1, 0, (int64_t)cache_n, 0, 0));
    GT_CUDA(sk_fill_dummy_bf16(dv, 1, 2, 0, (int64_t)cache_n, 0, 0));
    GT_CUDA(sk_fill_dummy_f32(dq, 1, 3, 0, (int64_t)qn, 0, 0));
    int32_t *bt = malloc(nblocks * 4), *pos = malloc(n * 4), *seq = calloc(n, 4), *tiles = malloc((n / 64 + 1) * 12);
    for (int i = 0; i < nblocks; i++) bt[i] = i;
    for (int i = 0; i < n; i++) pos[i] = i;
    int nt = 0;
    for (int i = 0; i < n; i += 64, nt++) {
        tiles[3 * nt] = i;
        tiles[3 * nt + 1] = n - i < 64 ? n - i : 64;
        tiles[3 * nt + 2] = 0;
    }
    int32_t *dbt = gt_up(bt, nblocks * 4), *dpos = gt_up(pos, n * 4), *dseq = gt_up(seq, n * 4),
            *dtiles = gt_up(tiles, nt * 12);
    struct sk_attn_params p = {.n_tokens = n,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = nblocks,
                               .scale = 0.08f,
                               .n_splits = 1,
                               .softcap = softcap,
                               .window = window};
    cudaEvent_t a, b;
    GT_CUDA(cudaEventCreate(&a));
    GT_CUDA(cudaEventCreate(&b));
    float ms[3];
    for (int v = 0; v < 3; v++) {
        for (int i = 0; i < 4; i++) {
            if (i == 1) GT_CUDA(cudaEventRecord(a, 0));
            if (v == 0)
                GT_CUDA(sk_attention_prefill(dq, dk, dv, dbt, dtiles, nt, dpos, dout, p, 0));
            else
                GT_CUDA(sk_attention(dq, dk, dv, dbt, dseq, dpos, NULL, NULL, dout, p,
                                     v == 1 ? SK_ATTN_DECODE_STREAM : SK_ATTN_PER_HEAD, 0));
        }
        GT_CUDA(cudaEventRecord(b, 0));
        GT_CUDA(cudaEventSynchronize(b));
        GT_CUDA(cudaEventElapsedTime(&ms[v], a, b));
        ms[v] /= 3;
    }
    double keys = 0;
    for (int i = 0; i < n; i++) keys += window > 0 && i + 1 > window ? window : i + 1;
    double flop = 4.0 * keys * D * nh;
    printf("  bench prefill attention nh=%d nkv=%d D=%d n=%d softcap=%g window=%d: tensor cores %.2f ms (%.0f "
           "TFLOP/s), streaming decode kernel %.2f ms, per-head kernel %.2f ms\n",
           nh, nkv, D, n, softcap, window, ms[0], flop / (ms[0] * 1e9), ms[1], ms[2]);
    fflush(stdout);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dbt);
    cudaFree(dpos);
    cudaFree(dseq);
    cudaFree(dtiles);
    free(bt);
    free(pos);
    free(seq);
    free(tiles);
}

/* Decode attention launched as a programmatic dependent of a kernel that writes the cache late
 * (sk_test_late_copy, 300 us after it starts), as qkv_post writes each token's own key. With
 * settled_keys, the tensor-core kernel reads the keys before each token's own before its wait.
 * own: the late kernel rewrites each token's own key and value, which every variant must see
 * new. !own: it rewrites key 3 of each sequence, a settled one: with settled_keys the
 * streaming kernel (variant 9, a programmatic dependent) must have read it early (old values: the
 * early reads happen), everything else must see it new. The rewritten values weigh enough that old and new
 * results differ far beyond the tolerance. */
static void test_attention_settled(int nh, int nkv, int D, int n_splits, int own)
{
    enum { S = 24 };
    const int stride = 4, nblocks = S * stride + 3;
    int32_t bt[S * stride], tseq[S], tpos[S];
    gt_shuffled_ids(bt, S * stride, 3);
    const int edges[] = {8, 9, 15, 16, 23, 24, 31, 32, 63};
    for (int s = 0; s < S; s++) {
        tseq[s] = s;
        tpos[s] = s < (int)(sizeof edges / sizeof edges[0]) ? edges[s] : 8 + gt_int(56);
    }
    const size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    uint16_t *kv_old = malloc(cache_n * 4), *kv_new = malloc(cache_n * 4);
    for (size_t i = 0; i < 2 * cache_n; i++) kv_old[i] = kv_new[i] = gt_f2bf(gt_normal());
    for (int s = 0; s < S; s++) {
        const int j = own ? tpos[s] : 3;
        for (int h = 0; h < nkv; h++) {
            const size_t at = ((size_t)(bt[s * stride + j / 16] * nkv + h) * 16 + j % 16) * D;
            for (int i = 0; i < D; i++) {
                kv_new[at + i] = gt_f2bf(gt_normal());
                kv_new[cache_n + at + i] = gt_f2bf(8.0f);
            }
        }
    }
    const size_t qn = (size_t)S * nh * D;
    float *q = malloc(qn * 4), *outf = malloc(qn * 4);
    for (size_t i = 0; i < qn; i++) q[i] = gt_normal();
    const float scale = 1.0f / sqrtf((float)D);
    double *ref_old = malloc(qn * 8), *ref_new = malloc(qn * 8);
    attention_ref(q, kv_old, kv_old + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, ref_old);
    attention_ref(q, kv_new, kv_new + cache_n, bt, stride, tseq, tpos, S, nh, nkv, D, scale, ref_new);

    uint16_t *dkv = gt_dev(cache_n * 4), *dkv_new = gt_up(kv_new, cache_n * 4), *dout = gt_dev(qn * 2);
    float *dq = gt_up(q, qn * 4), *dpo = gt_dev(qn * n_splits * 4), *dml = gt_dev((size_t)S * nh * n_splits * 8);
    int32_t *dbt = gt_up(bt, sizeof bt), *dseq = gt_up(tseq, sizeof tseq), *dpos = gt_up(tpos, sizeof tpos);
    uint16_t *out = malloc(qn * 2);
    cudaStream_t st;
    GT_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* Kernels start early only as programmatic dependents: sm_90 and later. */
    int dev = 0, major = 0;
    GT_CUDA(cudaGetDevice(&dev));
    GT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    const int pdl_on = major >= 9;
    for (int settled = 0; settled < 2; settled++)
        for (int mi = 0; mi < shipped.n; mi++) {
            const int v = shipped.variants[mi];
            struct sk_attn_params p = {.n_tokens = S,
                                       .n_heads = nh,
                                       .n_kv_heads = nkv,
                                       .head_dim = D,
                                       .bt_stride = stride,
                                       .scale = scale,
                                       .n_splits = n_splits,
                                       .settled_keys = settled};
            GT_CUDA(cudaMemcpy(dkv, kv_old, cache_n * 4, cudaMemcpyHostToDevice));
            GT_CUDA(cudaMemset(dout, 0xff, qn * 2));
            GT_CUDA(sk_test_late_copy(dkv, dkv_new, cache_n * 4, 300, st));
            GT_CUDA(attn_run_shipped(v, dq, dkv, dkv + cache_n, dbt, dseq, dpos, dpo, dml, dout, p, st));
            GT_CUDA(cudaStreamSynchronize(st));
            gt_down(out, dout, qn * 2);
            for (size_t i = 0; i < qn; i++) outf[i] = gt_bf2f(out[i]);
            const int early = !own && settled && v == 9 && pdl_on;
            const double err = gt_rel_err(outf, early ? ref_old : ref_new, qn);
            const double other = gt_rel_err(outf, early ? ref_new : ref_old, qn);
            GT_CHECK(err < BF_TOL && other > 10 * BF_TOL,
                     "attention after a late cache write (%s rewritten), variant %d, settled_keys %d, nh=%d nkv=%d "
                     "D=%d splits=%d: sees the %s values (rel err %.1e, against the %s ones %.1e)",
                     own ? "own keys" : "key 3", v, settled, nh, nkv, D, n_splits, early ? "old" : "new", err,
                     early ? "new" : "old", other);
        }
    GT_CUDA(cudaStreamDestroy(st));
    cudaFree(dkv);
    cudaFree(dkv_new);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dpo);
    cudaFree(dml);
    cudaFree(dbt);
    cudaFree(dseq);
    cudaFree(dpos);
    free(kv_old);
    free(kv_new);
    free(q);
    free(outf);
    free(out);
    free(ref_old);
    free(ref_new);
}

/* The cases above over an FP8 cache (--kv-cache-dtype fp8, attn_opts.kv_fp8): e4m3 codes with
 * scales of their own for K and V, against the reference over the codes' values. The per-head
 * kernel's vector and scalar paths (head dims 8 to 256), the streaming kernel at head dims 64, 128
 * and 256 and 1 to 8 query heads per kv head, splits, tensor-core prefill tiles with listed decode
 * tokens, sliding windows and soft-capping on each, and a range past the staged block table. */
static void attention_fp8_cases(void)
{
    const struct attn_opts f = {0, 0, 0, 1}, w16 = {0, 16, 0, 1}, w100 = {0, 100, 0, 1}, c50 = {50, 0, 16, 1},
                           w24c50 = {50, 24, 16, 1}, w100c2 = {2, 100, 0, 1}, w16c2 = {2, 16, 0, 1};
    const struct attn_seq seqs[] = {{0, 37}, {100, 1}, {700, 1}, {50, 20}, {0, 1}, {255, 3}, {130, 150}, {0, 64}};
    const int S = (int)(sizeof seqs / sizeof seqs[0]);
    const int dims[] = {8, 16, 64, 128, 256, 80, 48};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) attention_seqs_opt(&shipped, seqs, S, 8, 2, dims[i], 1, 0, 0, &f);
    attention_seqs_opt(&shipped, seqs, S, 32, 8, 128, 4, 0, 0, &f);
    attention_seqs_opt(&shipped, seqs, S, 16, 4, 64, 3, 208, 0, &f);
    /* Tensor-core prefill tiles with listed decode tokens. */
    attention_seqs_opt(&shipped, seqs, S, 8, 2, 64, 1, 0, 1, &f);
    attention_seqs_opt(&shipped, seqs, S, 8, 2, 128, 1, 0, 1, &f);
    attention_seqs_opt(&shipped, seqs, S, 32, 8, 128, 3, 0, 1, &f);
    /* Windows and caps, through the decode kernels and the prefill tiles. */
    const struct attn_seq wseqs[] = {{300, 1}, {517, 1}, {5, 1},    {0, 37},  {250, 150},
                                     {700, 40}, {1000, 1}, {130, 70}, {64, 1}};
    const int W = (int)(sizeof wseqs / sizeof wseqs[0]);
    attention_seqs_opt(&shipped, wseqs, W, 8, 2, 128, 1, 0, 0, &w16);
    attention_seqs_opt(&shipped, wseqs, W, 16, 4, 64, 3, 0, 0, &w24c50);
    attention_seqs_opt(&shipped, wseqs, W, 32, 8, 128, 4, 32, 0, &w100c2);
    attention_seqs_opt(&shipped, wseqs, W, 8, 2, 128, 5, 0, 0, &c50);
    attention_seqs_opt(&shipped, wseqs, W, 8, 4, 256, 3, 0, 0, &w24c50);
    attention_seqs_opt(&shipped, wseqs, W, 8, 2, 48, 2, 0, 0, &w16c2);
    attention_seqs_opt(&shipped, wseqs, W, 8, 2, 128, 1, 0, 1, &w16);
    attention_seqs_opt(&shipped, wseqs, W, 8, 2, 64, 2, 0, 1, &w24c50);
    attention_seqs_opt(&shipped, wseqs, W, 16, 8, 128, 2, 0, 1, &c50);
    attention_seqs_opt(&shipped, wseqs, W, 12, 12, 64, 1, 0, 1, &w100);
    /* Decode batches at every group size the streaming kernel takes. */
    attention_decode_batch_opt(&shipped, 32, 8, 128, 1, &f);
    attention_decode_batch_opt(&shipped, 16, 8, 128, 2, &f);
    attention_decode_batch_opt(&shipped, 8, 8, 128, 3, &w16);
    attention_decode_batch_opt(&shipped, 64, 8, 128, 5, &w100c2);
    attention_decode_batch_opt(&shipped, 16, 2, 64, 1, &w24c50);
    attention_decode_batch_opt(&shipped, 16, 4, 64, 4, &f);
    attention_decode_batch_opt(&shipped, 4, 4, 64, 2, &w16c2);
    attention_decode_batch_opt(&shipped, 8, 4, 64, 1, &f);
    /* Past the 1024 block-table entries the streaming kernel stages. */
    const struct attn_seq longs[] = {{16500, 1}, {3000, 1}};
    attention_seqs_opt(&shipped, longs, 2, 8, 2, 128, 1, 0, 0, &f);
    attention_seqs_opt(&shipped, longs, 2, 8, 2, 64, 2, 0, 0, &f);
}

/* head_dim 256 (Gemma 2 and 3) on the tensor-core kernels, beside the per-head kernel, on bf16
 * and then FP8 caches: prompts through the prefill tiles (64 queries over 32-key tiles) with
 * listed decode tokens, at lengths off the tiles' multiples, a prompt of 1100 tokens and chunks
 * over contexts past 1024; decode batches at 1, 2, 4 and 8 query heads per kv head, unsplit and
 * split (per-token and fixed ranges); ranges past the 1024 block-table entries the streaming
 * kernel stages; soft-capping (Gemma 2's 50) and windows on each kind. */
static void attention_d256_cases(void)
{
    const struct attn_seq seqs[] = {{0, 37}, {100, 1}, {700, 1}, {50, 20}, {0, 1}, {255, 3}, {130, 150}, {0, 64}};
    const struct attn_seq longs[] = {{0, 1100}, {1030, 70}, {2000, 1}, {1500, 33}};
    const struct attn_seq wseqs[] = {{300, 1}, {517, 1}, {5, 1},    {0, 37},  {250, 150},
                                     {700, 40}, {1000, 1}, {130, 70}, {64, 1}};
    const struct attn_seq far[] = {{16500, 1}, {3000, 1}};
    /* The sequence sets (BATCH: attention_decode_batch_opt's), and the options (softcap, window,
     * scale factor) of opts below. */
    enum { SEQS, LONGS, WSEQS, FAR, BATCH };
    const struct {
        const struct attn_seq *s;
        int n;
    } sets[] = {{seqs, (int)(sizeof seqs / sizeof seqs[0])},
                {longs, (int)(sizeof longs / sizeof longs[0])},
                {wseqs, (int)(sizeof wseqs / sizeof wseqs[0])},
                {far, (int)(sizeof far / sizeof far[0])}};
    enum { PLAIN, W16, W100, C50, W24C50, W100C50, W100C2, W1000C50, N_OPTS };
    const float caps[N_OPTS] = {0, 0, 0, 50, 50, 50, 2, 50}, mults[N_OPTS] = {0, 0, 0, 16, 16, 16, 0, 16};
    const int windows[N_OPTS] = {0, 16, 100, 0, 24, 100, 100, 1000};
    static const struct {
        int set, nh, nkv, splits, split_len, mixed, opt;
    } cases[] = {
        /* Prompts through the tiles: 1, 2, 4 and 8 query heads per kv head (16 / 8: Gemma 2 9B). */
        {SEQS, 8, 8, 1, 0, 1, PLAIN},
        {SEQS, 16, 8, 1, 0, 1, PLAIN},
        {SEQS, 8, 2, 3, 0, 1, PLAIN},
        {SEQS, 16, 2, 2, 0, 1, PLAIN},
        {LONGS, 4, 2, 4, 0, 1, PLAIN},
        /* Every token through the decode kernels. */
        {SEQS, 16, 8, 1, 0, 0, PLAIN},
        {SEQS, 8, 2, 4, 208, 0, PLAIN},
        {LONGS, 4, 1, 5, 0, 0, PLAIN},
        {BATCH, 8, 8, 1, 0, 0, PLAIN},
        {BATCH, 16, 8, 2, 0, 0, PLAIN},
        {BATCH, 16, 4, 5, 0, 0, PLAIN},
        {BATCH, 16, 2, 1, 0, 0, PLAIN},
        {FAR, 16, 2, 1, 0, 0, PLAIN},
        {FAR, 8, 2, 8, 0, 0, PLAIN},
        /* Soft-capping and windows: the prefill tiles' second kernel, then the decode kernels. */
        {WSEQS, 16, 8, 1, 0, 1, W100C50},
        {WSEQS, 8, 2, 2, 0, 1, W16},
        {WSEQS, 8, 8, 1, 0, 1, C50},
        {WSEQS, 16, 2, 3, 0, 1, W24C50},
        {LONGS, 4, 2, 2, 0, 1, W100C2},
        {WSEQS, 16, 8, 4, 32, 0, W100C2},
        {WSEQS, 8, 4, 8, 16, 0, W100},
        {BATCH, 16, 8, 1, 0, 0, W24C50},
        {BATCH, 8, 8, 3, 0, 0, C50},
        {BATCH, 16, 2, 2, 0, 0, W16},
        {FAR, 16, 4, 2, 0, 0, W1000C50},
    };
    for (int fp8 = 0; fp8 < 2; fp8++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const int k = cases[i].opt;
            const struct attn_opts opt = {caps[k], windows[k], mults[k], fp8};
            const struct attn_opts *o = k == PLAIN && !fp8 ? NULL : &opt;
            if (cases[i].set == BATCH)
                attention_decode_batch_opt(&shipped, cases[i].nh, cases[i].nkv, 256, cases[i].splits, o);
            else
                attention_seqs_opt(&shipped, sets[cases[i].set].s, sets[cases[i].set].n, cases[i].nh, cases[i].nkv,
                                   256, cases[i].splits, cases[i].split_len, cases[i].mixed, o);
        }
    /* Keys read before the previous kernel ends (settled_keys). */
    test_attention_settled(16, 8, 256, 1, 1);
    test_attention_settled(16, 8, 256, 2, 0);
    test_attention_settled(8, 2, 256, 1, 0);
}

/* sk_attention_decode_qkv against sk_qkv_post_parts followed by sk_attention's streaming kernel
 * (variant 9): one decode token per sequence, contexts across chunk, block and split edges, the
 * qkv product in n_parts parts. The caches must come out bit for bit as qkv_post leaves them (the
 * same arithmetic, and no other slot written), and the output within bf16 bounds of the double
 * reference over those caches. The own slots start as NaN, so a kernel that read its own key
 * from the cache instead of merging it itself would fail; the parts arrive through
 * sk_test_late_copy 300 us after the kernel may start, so one that read them before its wait
 * would see zeros. o (NULL: none) soft-caps and slides a window as in attention_seqs_opt, blocks
 * before each token's window dropped, and the case must tell the options apart; with o->kv_fp8
 * the caches are e4m3 codes (both kernels write the own keys' codes, which must agree bit for
 * bit). */
static void test_attention_decode_qkv(int nh, int nkv, int n_splits, int n_parts, int bias, int qknorm,
                                      int interleaved, const struct attn_opts *o)
{
    const float softcap = o ? o->softcap : 0.0f;
    const int window = o ? o->window : 0;
    const int fp8 = o && o->kv_fp8;
    enum { S = 40, D = 128 };
    const int nall = nh + 2 * nkv, stride = 40, nblocks = S * stride + 3;
    const int edges[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 127, 128, 191, 255, 256, 383};
    int32_t *bt = malloc((size_t)S * stride * 4), tseq[S], tpos[S], slot[S];
    gt_shuffled_ids(bt, S * stride, 3);
    for (int s = 0; s < S; s++) {
        tseq[s] = s;
        tpos[s] = s < (int)(sizeof edges / sizeof edges[0]) ? edges[s] : gt_int(stride * 16);
        slot[s] = bt[s * stride + tpos[s] / 16] * 16 + tpos[s] % 16;
    }
    const size_t cache_n = (size_t)nblocks * nkv * 16 * D;
    uint16_t *kv = malloc(cache_n * 4);
    for (size_t i = 0; i < 2 * cache_n; i++) kv[i] = gt_f2bf(gt_normal());
    /* Own slots and everything after them: NaN, as in a live cache. */
    for (int s = 0; s < S; s++)
        for (int j = tpos[s]; j < (tpos[s] + 16) / 16 * 16; j++)
            for (int h = 0; h < nkv; h++) {
                const size_t at = ((size_t)(bt[s * stride + j / 16] * nkv + h) * 16 + j % 16) * D;
                for (int i = 0; i < D; i++) kv[at + i] = kv[cache_n + at + i] = 0x7fc0;
            }
    int32_t *bt_full = malloc((size_t)S * stride * 4);
    memcpy(bt_full, bt, (size_t)S * stride * 4);
    if (window > 0)
        for (int s = 0; s < S; s++)
            attention_drop_before_window(bt + s * stride, kv, kv + cache_n, s, tpos[s], window, nkv, D);
    /* The caches as the kernels take them: bf16, or their codes (kv_bytes a cache, K then V). */
    const size_t kv_bytes = cache_n * (fp8 ? 1 : 2);
    unsigned char *kv_in = (unsigned char *)kv;
    if (fp8) {
        kv_in = malloc(2 * cache_n);
        attn_kv_encode_fp8(kv, kv + cache_n, kv_in, kv_in + cache_n, cache_n);
    }
    const int64_t width = (int64_t)nall * D, part_stride = S * width + 64;
    const size_t parts_n = (size_t)part_stride * n_parts;
    float *parts = malloc(parts_n * 4), *b = malloc((size_t)width * 4), *qn = malloc(D * 4), *kn = malloc(D * 4),
          *inv = malloc(D / 2 * 4);
    for (size_t i = 0; i < parts_n; i++) parts[i] = gt_normal();
    for (int i = 0; i < width; i++) b[i] = 0.5f * gt_normal();
    for (int i = 0; i < D; i++) {
        qn[i] = 1.0f + 0.2f * gt_normal();
        kn[i] = 1.0f + 0.2f * gt_normal();
    }
    for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(500000.0, 2.0 * i / D));
    float *dparts = gt_up(parts, parts_n * 4), *dlive = gt_dev(parts_n * 4), *db = gt_up(b, (size_t)width * 4),
          *dqn = gt_up(qn, D * 4), *dkn = gt_up(kn, D * 4), *dinv = gt_up(inv, D / 2 * 4);
    int32_t *dbt = gt_up(bt, (size_t)S * stride * 4), *dseq = gt_up(tseq, sizeof tseq),
            *dpos = gt_up(tpos, sizeof tpos), *dslot = gt_up(slot, sizeof slot);
    const size_t qsz = (size_t)S * nh * D;
    unsigned char *dkv = gt_up(kv_in, 2 * kv_bytes);
    uint16_t *dout = gt_dev(qsz * 2);
    float *dq = gt_dev(qsz * 4), *dpo = gt_dev(qsz * n_splits * 4), *dml = gt_dev((size_t)S * nh * n_splits * 8);
    const float scale = (o && o->scale_mult > 0 ? o->scale_mult : 1.0f) / sqrtf((float)D);
    struct sk_attn_params p = {.n_tokens = S,
                               .n_heads = nh,
                               .n_kv_heads = nkv,
                               .head_dim = D,
                               .bt_stride = stride,
                               .scale = scale,
                               .n_splits = n_splits,
                               .settled_keys = 1,
                               .softcap = softcap,
                               .window = window,
                               .kv_fp8 = fp8,
                               .k_scale = ATTN_FP8_K_SCALE,
                               .v_scale = ATTN_FP8_V_SCALE};
    GT_CHECK(sk_attention_decode_qkv_fits(&p), "sk_attention_decode_qkv takes nh=%d nkv=%d D=128 settled", nh, nkv);

    /* qkv_post, then the tensor-core decode attention. */
    const struct sk_qkv_params qp = {.n_tokens = S,
                                     .n_heads = nh,
                                     .n_kv_heads = nkv,
                                     .head_dim = D,
                                     .eps = 1e-6f,
                                     .interleaved = interleaved,
                                     .kv_fp8 = fp8,
                                     .k_scale = ATTN_FP8_K_SCALE,
                                     .v_scale = ATTN_FP8_V_SCALE};
    GT_CUDA(sk_qkv_post_parts(dparts, n_parts, part_stride, bias ? db : NULL, qknorm ? dqn : NULL, qknorm ? dkn : NULL,
                              dinv, dpos, dslot, dq, dkv, dkv + kv_bytes, qp, 0));
    GT_CUDA(cudaMemset(dout, 0xff, qsz * 2));
    GT_CUDA(sk_attention(dq, dkv, dkv + kv_bytes, dbt, dseq, dpos, dpo, dml, dout, p, SK_ATTN_DECODE_STREAM, 0));
    unsigned char *kv_a = malloc(2 * kv_bytes);
    uint16_t *out = malloc(qsz * 2);
    float *q = malloc(qsz * 4), *out_a = malloc(qsz * 4), *out_b = malloc(qsz * 4);
    gt_down(kv_a, dkv, 2 * kv_bytes);
    gt_down(q, dq, qsz * 4);
    gt_down(out, dout, qsz * 2);
    for (size_t i = 0; i < qsz; i++) out_a[i] = gt_bf2f(out[i]);

    /* The same in one kernel, its parts arriving late. */
    cudaStream_t st;
    GT_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    GT_CUDA(cudaMemcpy(dkv, kv_in, 2 * kv_bytes, cudaMemcpyHostToDevice));
    GT_CUDA(cudaMemset(dlive, 0, parts_n * 4));
    GT_CUDA(cudaMemset(dout, 0xff, qsz * 2));
    GT_CUDA(sk_test_late_copy(dlive, dparts, parts_n * 4, 300, st));
    const struct sk_qkv_src src = {dlive,   n_parts, part_stride,   bias ? db : NULL, qknorm ? dqn : NULL,
                                   qknorm ? dkn : NULL, dinv, dslot, 1e-6f, interleaved};
    GT_CUDA(sk_attention_decode_qkv(&src, dkv, dkv + kv_bytes, dbt, dseq, dpos, dpo, dml, dout, p, st));
    GT_CUDA(cudaStreamSynchronize(st));
    unsigned char *kv_b = malloc(2 * kv_bytes);
    gt_down(kv_b, dkv, 2 * kv_bytes);
    gt_down(out, dout, qsz * 2);
    for (size_t i = 0; i < qsz; i++) out_b[i] = gt_bf2f(out[i]);

    double *ref = malloc(qsz * 8);
    attention_ref_kv(q, kv_a, kv_a + kv_bytes, fp8, bt, stride, tseq, tpos, S, nh, nkv, D, scale, softcap, window,
                     ref);
    const double ea = gt_rel_err(out_a, ref, qsz), eb = gt_rel_err(out_b, ref, qsz);
    char opts[64] = "";
    if (o) snprintf(opts, sizeof opts, " softcap=%g window=%d%s", softcap, window, fp8 ? " kv=fp8" : "");
    GT_CHECK(!memcmp(kv_a, kv_b, 2 * kv_bytes) && eb < BF_TOL && ea < BF_TOL,
             "attention with qkv_post's work nh=%d nkv=%d splits=%d parts=%d bias=%d qknorm=%d interleaved=%d%s: "
             "caches %s qkv_post's, rel err %.1e (qkv_post + attention %.1e)",
             nh, nkv, n_splits, n_parts, bias, qknorm, interleaved, opts,
             memcmp(kv_a, kv_b, 2 * kv_bytes) ? "differ from" : "equal", eb, ea);
    if (o) {
        /* Without the window over the whole table, the NaN keys before it read as 0. */
        double *alt = malloc(qsz * 8), dw = INFINITY, dc = INFINITY;
        if (window > 0) {
            unsigned char *kv_z = malloc(2 * kv_bytes);
            memcpy(kv_z, kv_a, 2 * kv_bytes);
            if (fp8) {
                for (size_t i = 0; i < 2 * cache_n; i++)
                    if ((kv_z[i] & 0x7f) == 0x7f) kv_z[i] = 0;
            } else {
                uint16_t *z = (uint16_t *)kv_z;
                for (size_t i = 0; i < 2 * cache_n; i++)
                    if (z[i] == 0x7fc0) z[i] = 0;
            }
            attention_ref_kv(q, kv_z, kv_z + kv_bytes, fp8, bt_full, stride, tseq, tpos, S, nh, nkv, D, scale, softcap,
                             0, alt);
            dw = attention_ref_diff(alt, ref, qsz);
            free(kv_z);
        }
        if (softcap > 0) {
            attention_ref_kv(q, kv_a, kv_a + kv_bytes, fp8, bt, stride, tseq, tpos, S, nh, nkv, D, scale, 0.0f, window,
                             alt);
            dc = attention_ref_diff(alt, ref, qsz);
        }
        GT_CHECK(dw > 3 * BF_TOL && dc > 3 * BF_TOL,
                 "attention with qkv_post's work%s: the case tells the options apart (the reference without the "
                 "window moves by %.1e, without the cap by %.1e)",
                 opts, dw, dc);
        free(alt);
    }
    /* Refusals: head_dim 64, keys not settled. */
    struct sk_attn_params p64 = p, unsettled = p;
    p64.head_dim = 64;
    unsettled.settled_keys = 0;
    GT_CHECK(!sk_attention_decode_qkv_fits(&p64) &&
                 sk_attention_decode_qkv(&src, dkv, dkv + kv_bytes, dbt, dseq, dpos, dpo, dml, dout, p64, st) ==
                     cudaErrorInvalidValue &&
                 sk_attention_decode_qkv(&src, dkv, dkv + kv_bytes, dbt, dseq, dpos, dpo, dml, dout, unsettled, st) ==
                     cudaErrorInvalidValue,
             "sk_attention_decode_qkv refuses head_dim 64 and unsettled keys");
    GT_CUDA(cudaStreamDestroy(st));
    void *dev[] = {dparts, dlive, db, dqn, dkn, dinv, dbt, dseq, dpos, dslot, dkv, dout, dq, dpo, dml};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    void *host[] = {bt, bt_full, kv, parts, b, qn, kn, inv, kv_a, kv_b, out, q, out_a, out_b, ref};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    if (fp8) free(kv_in);
}

/* The same over FP8 caches, with and without windows and caps. */
static void test_attention_decode_qkv_fp8(void)
{
    const struct attn_opts f = {0, 0, 0, 1}, w24c50 = {50, 24, 16, 1}, w100c2 = {2, 100, 0, 1}, w16 = {0, 16, 0, 1};
    test_attention_decode_qkv(32, 8, 1, 3, 0, 0, 0, &f);
    test_attention_decode_qkv(16, 8, 1, 7, 0, 1, 1, &f);
    test_attention_decode_qkv(64, 8, 3, 2, 1, 1, 0, &f);
    test_attention_decode_qkv(8, 8, 1, 1, 0, 0, 1, &w16);
    test_attention_decode_qkv(32, 8, 2, 3, 0, 1, 0, &w24c50);
    test_attention_decode_qkv(16, 2, 2, 4, 1, 0, 1, &w100c2);
}

/* qkv_post's work inside the decode attention. */
static void test_attention_decode_qkv_shapes(void)
{
    test_attention_decode_qkv(32, 8, 1, 3, 0, 0, 0, NULL);
    test_attention_decode_qkv(32, 8, 2, 1, 1, 0, 0, NULL);
    test_attention_decode_qkv(16, 8, 1, 7, 0, 1, 1, NULL);
    test_attention_decode_qkv(64, 8, 3, 2, 1, 1, 0, NULL);
    test_attention_decode_qkv(8, 8, 1, 1, 0, 0, 1, NULL);
    test_attention_decode_qkv(16, 2, 2, 4, 1, 0, 1, NULL);
}

/* Soft-capping and sliding windows there: caps of 50 (on q-normed heads with the scale 16 times
 * larger, so that the cap matters) and 2, windows of 16, 24 and 100, 1 to 8 query heads per kv
 * head, with and without splits. */
static void test_attention_decode_qkv_windows(void)
{
    const struct attn_opts w16 = {0, 16, 0, 0}, w100 = {0, 100, 0, 0}, c50 = {50, 0, 16, 0}, w24c50 = {50, 24, 16, 0},
                           w16c2 = {2, 16, 0, 0}, w100c2 = {2, 100, 0, 0};
    test_attention_decode_qkv(32, 8, 2, 3, 0, 1, 0, &w24c50);
    test_attention_decode_qkv(64, 8, 3, 2, 1, 0, 0, &w100c2);
    test_attention_decode_qkv(16, 8, 1, 1, 0, 1, 1, &w16);
    test_attention_decode_qkv(8, 8, 4, 1, 0, 0, 1, &w16c2);
    test_attention_decode_qkv(32, 8, 1, 2, 1, 1, 0, &c50);
    test_attention_decode_qkv(16, 2, 2, 4, 1, 0, 1, &w100);
}

static void test_attention(void)
{
    printf("attention\n");
    attention_cases(&shipped);
    attention_window_cases(&shipped);
    attention_fp8_cases();
    test_attention_decode_qkv_fp8();
    /* Keys read before the previous kernel ends (settled_keys). */
    test_attention_settled(32, 8, 128, 1, 1);
    test_attention_settled(32, 8, 128, 1, 0);
    test_attention_settled(32, 8, 128, 2, 1);
    test_attention_settled(16, 8, 64, 1, 1);
    test_attention_settled(16, 8, 64, 2, 0);
    test_attention_decode_qkv_shapes();
    test_attention_decode_qkv_windows();
    attention_d256_cases();
}

/* Gemma-2-9B's attention (16 query heads, 8 kv heads, head_dim 256; its cap of 50 and 4096-key
 * window on the prefill's second kernel): a 4096-token prompt, and decode at contexts of 1k, 4k
 * and 8k at batch 1 and 16, the tensor-core kernels beside the per-head kernel, each at the split
 * count the planner gives it on an H100 (132 SMs); at batch 16 the streaming kernel also at the
 * count it had before the planner counted 2 of its blocks an SM at this head_dim (4, as at 128). */
static void bench_gemma2_prefill(void)
{
    bench_prefill_attention(16, 8, 256, 4096, 0, 0);
    bench_prefill_attention(16, 8, 256, 4096, 50, 4096);
}

static void bench_gemma2_decode(const struct attn_runner *r)
{
    printf("bench decode attention at Gemma-2-9B's shape (variant 0: per query head; 9: tensor-core streaming)\n");
    BENCH_DECODE(r, 16, 8, 256, 1, 1024, 8, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 1, 4096, 32, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 1, 8192, 32, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 1024, 5, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 1024, 2, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 1024, 4, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 4096, 16, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 4096, 4, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 8192, 32, 0, 9);
    BENCH_DECODE(r, 16, 8, 256, 16, 8192, 8, 9);
}

/* The shipped kernels at the shapes the backend meets (Llama-3-8B unless noted); the variants that
 * lost to them are timed beside them by kernels/dev/bench_attention_decode.c. */
static void bench_attention(const struct attn_runner *r)
{
    printf("bench decode attention, graph replays (variant 0: per query head; 9: tensor-core streaming)\n");
    /* Batch 64 over the engine bench's contexts (128 in + 128 out). */
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 1, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 192, 2, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 16, 1, 9); /* fixed cost: one 16-key block per kv head */
    BENCH_DECODE(r, 32, 8, 128, 64, 128, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 256, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 192, 1, 9);
    BENCH_DECODE(r, 32, 8, 128, 256, 256, 1, 9);
    BENCH_DECODE(r, 32, 8, 64, 64, 192, 1, 9);
    BENCH_DECODE(r, 32, 32, 128, 64, 192, 1, 0, 9); /* no grouping (32 kv heads) */
    BENCH_DECODE(r, 64, 8, 128, 64, 192, 1, 0, 9);  /* 8 query heads per kv head */
    /* Split choices at longer contexts. */
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 2, 9);
    BENCH_DECODE(r, 32, 8, 128, 64, 1024, 1, 9);
    /* Small batches. */
    BENCH_DECODE(r, 32, 8, 128, 1, 256, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 256, 8, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 256, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 256, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 16, 192, 2, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 16, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 8, 9);
    BENCH_DECODE(r, 32, 8, 128, 8, 4096, 4, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 16384, 32, 0, 9);
    BENCH_DECODE(r, 32, 8, 128, 1, 4096, 32, 0, 9);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    /* SLUICE_GPU_ONLY=attention: the checks and the decode-attention benches, not the prefill ones;
     * =attention_qkv: sk_attention_decode_qkv's tests alone (e.g. under compute-sanitizer);
     * =attention_window: the soft-capping and sliding-window cases alone (likewise);
     * =attention_d256: head_dim 256's cases, then its benches (unless SLUICE_ATTN_NOBENCH). */
    const char *only = getenv("SLUICE_GPU_ONLY");
    const int all = !(only && !strcmp(only, "attention"));
    if (only && !strcmp(only, "attention_qkv")) {
        test_attention_decode_qkv_shapes();
        test_attention_decode_qkv_windows();
        return gt_finish();
    }
    if (only && !strcmp(only, "attention_window")) {
        attention_window_cases(&shipped);
        test_attention_decode_qkv_windows();
        return gt_finish();
    }
    if (only && !strcmp(only, "attention_d256")) {
        attention_d256_cases();
        if (!getenv("SLUICE_ATTN_NOBENCH")) {
            bench_gemma2_prefill();
            bench_gemma2_decode(&shipped);
        }
        return gt_finish();
    }
    if (only && !strcmp(only, "attention_fp8")) {
        attention_fp8_cases();
        test_attention_decode_qkv_fp8();
        return gt_finish();
    }
    const char *prof = getenv("SLUICE_ATTN_PROFILE");
    if (prof && *prof && *prof != '0') {
        struct attn_runner once = shipped;
        once.profile = 1;
        BENCH_DECODE(&once, 32, 8, 128, 64, 192, 1, 0, 9);
        BENCH_DECODE(&once, 32, 8, 128, 1, 16384, 32, 0, 9);
        return gt_finish();
    }
    test_attention();
    printf("bench\n");
    if (all) {
        bench_prefill_attention(32, 8, 128, 2048, 0, 0);
        bench_prefill_attention(32, 8, 128, 8192, 0, 0);
        bench_prefill_attention(32, 8, 64, 2048, 0, 0);
        bench_prefill_attention(32, 8, 128, 8192, 0, 4096); /* Mistral's window */
        bench_prefill_attention(32, 8, 128, 2048, 50, 0);   /* a cap alone */
        bench_gemma2_prefill();
    }
    if (!getenv("SLUICE_ATTN_NOBENCH")) { /* e.g. under compute-sanitizer */
        bench_attention(&shipped);
        bench_gemma2_decode(&shipped);
    }
    return gt_finish();
}
