/* A model with random weights (--load-format dummy) from a config.json given as a string, for
 * the GPU tests that need real shapes without weight files. */
#ifndef SLUICE_TESTS_GPU_DUMMY_MODEL_H
#define SLUICE_TESTS_GPU_DUMMY_MODEL_H

#include "tests/gpu/gpu_test.h"

#include <time.h>
#include <unistd.h>

#include "worker/model/model.h"

/* Llama-3-8B's config.json (bf16), for the speed tests at its shapes. */
#define GT_LLAMA3_8B_CONFIG                                                                                       \
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,\"intermediate_size\":14336,"                 \
    "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,\"vocab_size\":128256,"        \
    "\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,"                            \
    "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"  \
    "\"original_max_position_embeddings\":8192},\"tie_word_embeddings\":false,\"bos_token_id\":128000,"          \
    "\"eos_token_id\":128001,\"torch_dtype\":\"bfloat16\"}"

/* The model, or NULL after a failed check that says why. model_load reads the config from a
 * directory, so the string goes through a temporary one, removed before returning. */
static inline struct model *gt_dummy_model(const char *config_json)
{
    char dir[] = "/tmp/sluice_gpu_XXXXXX", path[256], err[512];
    if (!mkdtemp(dir)) {
        GT_CHECK(0, "mkdtemp for a dummy model's config.json");
        return NULL;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    int ok = f && fputs(config_json, f) >= 0;
    if (f && fclose(f)) ok = 0;
    struct model *m = NULL;
    int rc = ok ? model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err) : -1;
    if (!ok) snprintf(err, sizeof err, "cannot write %s", path);
    unlink(path);
    rmdir(dir);
    GT_CHECK(rc == 0, "dummy model from its config.json%s%s", rc ? ": " : "", rc ? err : "");
    return rc == 0 ? m : NULL;
}

/* stories260K's Hugging Face directory under $SLUICE_TEST_DATA (default ../shared): the model,
 * or NULL after a SKIP line (not there) or a failed check (not loadable). */
static inline struct model *gt_stories_model(void)
{
    const char *data = getenv("SLUICE_TEST_DATA");
    char dir[4096], err[1024];
    snprintf(dir, sizeof dir, "%s/models/stories260K/hf", data && *data ? data : "../shared");
    struct model *m = NULL;
    if (access(dir, R_OK) != 0) {
        printf("SKIP stories260K: %s not found (set SLUICE_TEST_DATA)\n", dir);
        return NULL;
    }
    if (model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err) != 0) {
        GT_CHECK(0, "model_load %s: %s", dir, err);
        return NULL;
    }
    return m;
}

/* Random blocks of dtype dt for n weights, the f16 scales at scale_at[0..n_scales) small and
 * finite (malloc'd; NULL when out of memory). */
static inline void *gt_random_blocks(enum dtype dt, const int *scale_at, int n_scales, int64_t n)
{
    size_t bb = dtype_block_bytes(dt), nb = (size_t)(n / dtype_block_elems(dt));
    unsigned char *p = malloc(nb * bb);
    if (!p) return NULL;
    for (size_t i = 0; i + 8 <= nb * bb; i += 8) {
        uint64_t r = gt_next();
        memcpy(p + i, &r, 8);
    }
    for (size_t i = nb * bb / 8 * 8; i < nb * bb; i++) p[i] = (unsigned char)gt_next();
    for (size_t b = 0; b < nb; b++)
        for (int s = 0; s < n_scales; s++) {
            uint16_t h = (uint16_t)(0x1000 + gt_next() % 0x1800) | (uint16_t)((gt_next() & 1) << 15);
            memcpy(p + b * bb + scale_at[s], &h, 2);
        }
    return p;
}

/* The GGUF block types the block kernels take (kernels/sk_quant.h), in enum dtype's order, with
 * where their f16 scales are for gt_random_blocks; *n of them. */
struct gt_block_type {
    enum dtype dt;
    int at[2], n;
};
static inline const struct gt_block_type *gt_block_types(int *n)
{
    static const struct gt_block_type types[] = {
        {DTYPE_Q4_0, {0}, 1}, {DTYPE_Q4_1, {0, 2}, 2}, {DTYPE_Q5_0, {0}, 1},    {DTYPE_Q5_1, {0, 2}, 2},
        {DTYPE_Q8_0, {0}, 1}, {DTYPE_Q4_K, {0, 2}, 2}, {DTYPE_Q5_K, {0, 2}, 2}, {DTYPE_Q6_K, {208}, 1},
    };
    *n = (int)(sizeof types / sizeof types[0]);
    return types;
}

/* The f16 bits of v (|v| below 65504), rounded to nearest; subnormal below 2^-14. */
static inline uint16_t gt_f2h(float v)
{
    const uint16_t sign = v < 0 ? 0x8000 : 0;
    double a = fabs((double)v);
    if (a < 0x1p-14) return sign | (uint16_t)lrint(a * 0x1p24);
    int e;
    double f = frexp(a, &e); /* a = f 2^e, f in [0.5, 1) */
    long man = lrint((2 * f - 1) * 1024);
    if (man == 1024) man = 0, e++;
    return sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)man;
}

/* gt_random_blocks with every f16 scale of magnitude in [scale_max / 4, scale_max] and a random
 * sign: with scale_max = the weights' bound over the type's largest quant factor (its quants times
 * its sub-block scales), the weights stay within that bound, as a trained model's do. */
static inline void *gt_random_blocks_bounded(enum dtype dt, const int *scale_at, int n_scales, int64_t n,
                                             float scale_max)
{
    unsigned char *p = gt_random_blocks(dt, scale_at, n_scales, n);
    if (!p) return NULL;
    size_t bb = dtype_block_bytes(dt), nb = (size_t)(n / dtype_block_elems(dt));
    for (size_t b = 0; b < nb; b++)
        for (int s = 0; s < n_scales; s++) {
            float v = scale_max * (0.25f + 0.375f * (gt_uniform() + 1.0f)); /* gt_uniform: [-1, 1) */
            uint16_t h = gt_f2h((gt_next() & 1) ? -v : v);
            memcpy(p + b * bb + scale_at[s], &h, 2);
        }
    return p;
}

#endif
