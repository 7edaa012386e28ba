/* --kv-cache-dtype fp8 on the CPU backend (worker/backend/kv_dtype.h, cpu/cpu_kv.c): the flag's
 * values, e4m3 rounding as CUDA's __nv_cvt_float_to_fp8 (round to nearest even, saturating)
 * against a search over every code, the layers' scales, and stories260K's logits with the cache
 * in e4m3 against the float32 cache over chunked prefill and decode steps.
 *
 * The bounds on the logits. An e4m3 code keeps 3 mantissa bits, so each K and V value is stored
 * within 2^-4 of itself, relative (half a step of 2^-3; below 2^-6 within 2^-10 absolute, the
 * subnormals' half step); spread over a binade, that error's RMS is about 2^-4 / sqrt(3) of the
 * value, 0.036. Attention's output, a weighted mean of the values with weights from scores that
 * move likewise, carries about that relative error into the residual stream in every layer, and
 * the layers after carry it to the logits about one to one: the logits of a row should move by
 * about 0.036 of their norm. Measured on the three reference prompts (8-token prefill chunks, 40
 * decode steps): 0.033 to 0.045 on average over the rows, and up to 0.19 of a row's largest logit
 * for its worst logit (stories260K's heads are 8 wide, so a score averages little of the error).
 * The bounds, L2_BOUND (the mean of the rows' relative L2 errors) and MAX_BOUND (the largest move
 * over its row's largest logit), are about twice and 1.3 times that; greedy tokens must agree
 * wherever the float32 cache's top two logits are further apart than twice MAX_BOUND's move.
 * A cache read or written with the wrong scale moves the logits by several times L2_BOUND: the
 * test checks that it would see one. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/backend/backend.h"
#include "worker/backend/kv_dtype.h"
#include "worker/model/fp8.h"
#include "worker/model/model.h"

#define VOCAB 512
#define STEPS 40
#define MAX_PROMPTS 3
#define L2_BOUND 0.08f
#define MAX_BOUND 0.25f

/* --- the flag ------------------------------------------------------------------------------ */

Test(kv_fp8, flag_values_as_vllm_names_them)
{
    enum kv_cache_dtype d = KV_CACHE_FP8_E4M3;
    char err[256] = "";
    cr_expect_eq(kv_cache_dtype_parse(NULL, &d, err, sizeof err), 0);
    cr_expect_eq(d, KV_CACHE_AUTO);
    cr_expect_eq(kv_cache_dtype_parse("auto", &d, err, sizeof err), 0);
    cr_expect_eq(d, KV_CACHE_AUTO);
    cr_expect_eq(kv_cache_dtype_parse("fp8", &d, err, sizeof err), 0);
    cr_expect_eq(d, KV_CACHE_FP8_E4M3);
    d = KV_CACHE_AUTO;
    cr_expect_eq(kv_cache_dtype_parse("fp8_e4m3", &d, err, sizeof err), 0);
    cr_expect_eq(d, KV_CACHE_FP8_E4M3);
    const char *bad[] = {"fp8_e5m2", "bf16", "int8", "FP8", "fp8 "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        cr_expect_eq(kv_cache_dtype_parse(bad[i], &d, err, sizeof err), -1, "'%s' is refused", bad[i]);
        cr_expect(strstr(err, "--kv-cache-dtype") && strstr(err, "auto, fp8 or fp8_e4m3") && strstr(err, bad[i]),
                  "the message names the flag, the accepted values and '%s': %s", bad[i], err);
    }
}

/* --- e4m3 rounding ---------------------------------------------------------------------------- */

/* What CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) gives, found by search: the
 * finite code nearest to x, the one with an even mantissa on a tie, +-448's beyond it; NaN 0x7f. */
static uint8_t nearest_code(float x)
{
    if (isnan(x)) return 0x7f;
    int best = -1;
    double best_d = INFINITY;
    for (int c = 0; c < 256; c++) {
        const float v = fp8_e4m3_to_f32((uint8_t)c);
        if (isnan(v) || (c == 0x80)) continue; /* -0 is never nearer than +0 for x = 0 */
        const double d = fabs((double)x - (double)v);
        if (d < best_d || (d == best_d && (c & 1) == 0 && (best & 1) == 1)) best = c, best_d = d;
    }
    /* Zero and values rounding to zero keep their sign, as the conversion does. */
    if (fp8_e4m3_to_f32((uint8_t)best) == 0.0f && signbit(x)) best = 0x80;
    return (uint8_t)best;
}

Test(kv_fp8, e4m3_rounding_is_nearest_even_saturating)
{
    /* Every code's value, the midpoints between neighbours (ties), a step either side of each, the
     * subnormals' range, and far past 448. */
    int checked = 0, bad = 0;
    for (int c = 0; c < 127; c++) {
        const float a = fp8_e4m3_to_f32((uint8_t)c), b = c < 126 ? fp8_e4m3_to_f32((uint8_t)(c + 1)) : 480.0f;
        const float mid = (float)(((double)a + (double)b) / 2);
        const float xs[] = {a, mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY), (a + mid) / 2, (mid + b) / 2};
        for (size_t i = 0; i < sizeof xs / sizeof *xs; i++)
            for (int s = 0; s < 2; s++) {
                const float x = s ? -xs[i] : xs[i];
                const uint8_t got = fp8_e4m3_from_f32(x), want = nearest_code(x);
                checked++;
                if (got != want && bad++ < 8)
                    cr_expect_fail("e4m3 of %.9g: 0x%02x, the nearest (ties to even) is 0x%02x", (double)x, got, want);
            }
    }
    const float far[] = {449.0f, 463.9f, 464.0f, 479.0f, 480.0f, 1e6f, 3e38f, INFINITY};
    for (size_t i = 0; i < sizeof far / sizeof *far; i++) {
        cr_expect_eq(fp8_e4m3_from_f32(far[i]), 0x7e, "%g saturates to 448", (double)far[i]);
        cr_expect_eq(fp8_e4m3_from_f32(-far[i]), 0xfe, "%g saturates to -448", (double)-far[i]);
    }
    cr_expect_eq(fp8_e4m3_from_f32(NAN), 0x7f);
    cr_expect_eq(bad, 0, "%d of %d values round otherwise than to the nearest code", bad, checked);
}

/* --- scales ---------------------------------------------------------------------------------- */

Test(kv_fp8, scales_from_the_checkpoint_else_one)
{
    struct layer_weights layers[3] = {0};
    struct model m = {.layers = layers};
    m.config.n_layers = 3;
    float s[6];
    char what[256];
    cr_expect_eq(kv_cache_scales(&m, s, what, sizeof what), 0);
    for (int i = 0; i < 6; i++) cr_expect_eq(s[i], 1.0f);
    cr_expect(strstr(what, "no k_scale"), "%s", what);
    layers[0].k_scale = 0.5f, layers[0].v_scale = 0.25f;
    layers[2].k_scale = 2.0f, layers[2].v_scale = 4.0f;
    cr_expect_eq(kv_cache_scales(&m, s, what, sizeof what), 2);
    const float want[6] = {0.5f, 0.25f, 1.0f, 1.0f, 2.0f, 4.0f};
    for (int i = 0; i < 6; i++) cr_expect_eq(s[i], want[i], "scale %d is %g, not %g", i, (double)s[i], (double)want[i]);
    cr_expect(strstr(what, "2 of 3 layers") && strstr(what, "1 for the others"), "%s", what);
}

/* --- stories260K ------------------------------------------------------------------------------ */

struct forced {
    int32_t ids[64 + STEPS + 1];
    int n_prompt, n;
};

static char data_dir[4096];
static struct forced prompts[MAX_PROMPTS];
static int n_prompts;

/* The reference prompts and their greedy continuations (reference.json), fed to both runs so that
 * every step of both sees the same tokens. */
static void setup(void)
{
    const char *env = getenv("SLUICE_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s/models/stories260K", env && *env ? env : "../shared");
    struct stat st;
    if (stat(data_dir, &st) != 0) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/reference.json", data_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert(root, "cannot read %s: %s", path, jerr.text);
    const char *key;
    json_t *p;
    n_prompts = 0;
    json_object_foreach(json_object_get(root, "prompts"), key, p) {
        cr_assert(n_prompts < MAX_PROMPTS);
        struct forced *f = &prompts[n_prompts++];
        json_t *ids = json_object_get(p, "prompt_ids"), *greedy = json_object_get(p, "greedy_ids");
        f->n_prompt = (int)json_array_size(ids);
        cr_assert(f->n_prompt > 0 && f->n_prompt <= 64 && json_array_size(greedy) >= STEPS);
        for (int i = 0; i < f->n_prompt; i++) f->ids[i] = (int32_t)json_integer_value(json_array_get(ids, i));
        for (int i = 0; i < STEPS; i++) f->ids[f->n_prompt + i] = (int32_t)json_integer_value(json_array_get(greedy, i));
        f->n = f->n_prompt + STEPS;
    }
    json_decref(root);
}

/* Logits of each sampled step (the prompt's last chunk, then each decode step) of prompt f, the
 * prompt in chunks of 8, on a backend of tp tensor-parallel ranks (0: none) with the given cache
 * and, where scales is not NULL, those k_scale/v_scale in every layer (as a checkpoint's). */
static void run_tp(int tp, enum kv_cache_dtype dtype, const float *scales, const struct forced *f, float *out)
{
    char path[4200], err[1024] = "";
    snprintf(path, sizeof path, "%s/hf", data_dir);
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    for (int l = 0; scales && l < m->config.n_layers; l++) m->layers[l].k_scale = scales[0], m->layers[l].v_scale = scales[1];
    struct backend_options opt = {.kv_blocks = 16, .kv_dtype = dtype, .max_batch_tokens = 64, .max_batch_seqs = 4,
                                  .cpu.n_threads = 2, .tensor_parallel_size = tp};
    struct backend *b = NULL;
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    /* Blocks in a scattered order, as a live cache hands them out. */
    int32_t table[16];
    for (int i = 0; i < 16; i++) table[i] = (i * 7 + 3) % 16;
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .logprobs = -1};
    int step = 0;
    for (int pos = 0; pos < f->n - 1;) {
        const int take = pos < f->n_prompt ? (f->n_prompt - pos < 8 ? f->n_prompt - pos : 8) : 1;
        struct batch_seq seq = {.n_new = take, .start_pos = pos, .block_table = table, .n_blocks = 16,
                                .sample = pos + take >= f->n_prompt, .prompt = pos < f->n_prompt,
                                .sampling = &greedy, .history = f->ids, .n_history = pos + take};
        struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = take, .tokens = f->ids + pos,
                              .logits_out = seq.sample ? out + (size_t)step * VOCAB : NULL};
        struct sample_result res;
        cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
        step += seq.sample;
        pos += take;
    }
    cr_assert_eq(step, STEPS);
    backend_free(b);
    model_free(m);
}

static void run(enum kv_cache_dtype dtype, const float *scales, const struct forced *f, float *out)
{
    run_tp(0, dtype, scales, f, out);
}

/* How far logits a are from b over the steps: the mean over rows of ||a - b|| / ||b||, the largest
 * |a - b| over its row's largest |b|, and the rows whose greedy token differs though b's top two
 * are further apart than twice the largest move the bound allows. */
struct diff {
    double mean_l2, max_rel;
    int clear_differs;
};

static struct diff compare(const float *a, const float *b)
{
    struct diff r = {0};
    for (int s = 0; s < STEPS; s++) {
        const float *x = a + (size_t)s * VOCAB, *y = b + (size_t)s * VOCAB;
        double n2 = 0.0, d2 = 0.0, dmax = 0.0, big = 0.0;
        int ax = 0, ay = 0;
        for (int v = 0; v < VOCAB; v++) {
            const double d = (double)x[v] - (double)y[v];
            n2 += d * d;
            d2 += (double)y[v] * y[v];
            dmax = fmax(dmax, fabs(d));
            big = fmax(big, fabs((double)y[v]));
            if (x[v] > x[ax]) ax = v;
            if (y[v] > y[ay]) ay = v;
        }
        float second = -INFINITY;
        for (int v = 0; v < VOCAB; v++)
            if (v != ay && y[v] > second) second = y[v];
        r.mean_l2 += sqrt(n2 / d2) / STEPS;
        r.max_rel = fmax(r.max_rel, dmax / big);
        if (ax != ay && y[ay] - second > 2 * MAX_BOUND * big) r.clear_differs++;
    }
    return r;
}

TestSuite(kv_fp8_stories, .init = setup, .timeout = 120);

Test(kv_fp8_stories, logits_within_e4m3s_rounding_of_the_float32_cache)
{
    float *ref = malloc((size_t)STEPS * VOCAB * sizeof(float)), *got = malloc((size_t)STEPS * VOCAB * sizeof(float));
    for (int i = 0; i < n_prompts; i++) {
        run(KV_CACHE_AUTO, NULL, &prompts[i], ref);
        run(KV_CACHE_FP8_E4M3, NULL, &prompts[i], got);
        struct diff d = compare(got, ref);
        cr_log_info("prompt %d: FP8 cache: mean relative L2 %.4f, largest move %.4f of the row's largest logit", i,
                    d.mean_l2, d.max_rel);
        cr_expect(d.mean_l2 > 0.0, "prompt %d: the FP8 cache changes nothing: is it in use?", i);
        cr_expect(d.mean_l2 <= L2_BOUND && d.max_rel <= MAX_BOUND && d.clear_differs == 0,
                  "prompt %d: the FP8 cache moves the logits by %.4f relative L2 on average (bound %g), up to %.4f of "
                  "a row's largest (bound %g); %d greedy tokens with a clear margin differ",
                  i, d.mean_l2, (double)L2_BOUND, d.max_rel, (double)MAX_BOUND, d.clear_differs);
        /* A checkpoint's scales (powers of two here: the codes' values barely change) stay within it. */
        const float quarter[2] = {0.25f, 0.125f};
        run(KV_CACHE_FP8_E4M3, quarter, &prompts[i], got);
        d = compare(got, ref);
        cr_expect(d.mean_l2 <= L2_BOUND && d.max_rel <= MAX_BOUND && d.clear_differs == 0,
                  "prompt %d: with scales 1/4 and 1/8: %.4f, %.4f, %d greedy differ", i, d.mean_l2, d.max_rel,
                  d.clear_differs);
        /* The test can fail: scales that saturate the codes (values over 0.0448) move the logits by
         * several times the bound. */
        const float tiny[2] = {1e-4f, 1e-4f};
        run(KV_CACHE_FP8_E4M3, tiny, &prompts[i], got);
        d = compare(got, ref);
        cr_expect(d.mean_l2 > 3 * L2_BOUND, "prompt %d: saturating scales move the logits by only %.4f", i,
                  d.mean_l2);
    }
    free(ref);
    free(got);
}

/* Two tensor-parallel ranks, each with its FP8 cache of its own heads: the single rank's FP8
 * logits, but for the codes that the ranks' sums in another order round otherwise (float
 * rounding, so rarely: far within the bound). */
Test(kv_fp8_stories, tensor_parallel_ranks_keep_their_own_fp8_caches)
{
    float *one = malloc((size_t)STEPS * VOCAB * sizeof(float)), *two = malloc((size_t)STEPS * VOCAB * sizeof(float));
    for (int i = 0; i < n_prompts; i++) {
        run(KV_CACHE_FP8_E4M3, NULL, &prompts[i], one);
        run_tp(2, KV_CACHE_FP8_E4M3, NULL, &prompts[i], two);
        const struct diff d = compare(two, one);
        cr_log_info("prompt %d: 2 ranks against 1, FP8 caches: mean relative L2 %.2e", i, d.mean_l2);
        cr_expect(d.mean_l2 <= L2_BOUND / 4 && d.clear_differs == 0,
                  "prompt %d: 2 ranks' FP8 caches move the logits by %.4f relative L2 (bound %g), %d greedy differ", i,
                  d.mean_l2, (double)L2_BOUND / 4, d.clear_differs);
    }
    free(one);
    free(two);
}

/* The float32 cache stays bit for bit what it was: --kv-cache-dtype auto is the default. */
Test(kv_fp8_stories, auto_is_the_float32_cache)
{
    float *a = malloc((size_t)STEPS * VOCAB * sizeof(float)), *b = malloc((size_t)STEPS * VOCAB * sizeof(float));
    run(KV_CACHE_AUTO, NULL, &prompts[0], a);
    const float ignored[2] = {0.5f, 0.5f}; /* a checkpoint's scales mean nothing to a float32 cache */
    run(KV_CACHE_AUTO, ignored, &prompts[0], b);
    cr_expect(memcmp(a, b, (size_t)STEPS * VOCAB * sizeof(float)) == 0, "the float32 cache's logits moved");
    free(a);
    free(b);
}
