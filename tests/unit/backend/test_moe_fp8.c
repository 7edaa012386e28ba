/* FP8 checkpoints whose experts are FP8 (tests/fixtures/fp8_moe/, made by make_fp8_moe_fixtures.py
 * from the tiny MoE fixtures of tests/fixtures/families): Mixtral with a scale per tensor,
 * Qwen2-MoE with a bf16 scale per channel and its shared expert, Qwen3-MoE with block scales.
 *
 * Each expert matrix loads as the file's e4m3 bytes with the file's scales (read here with this
 * test's own reader, not the loader); the codes are the project's e4m3 rounding of the original
 * float32 fixture's weights over those scales (so the generator rounds as torch does); and the CPU
 * backend, which dequantizes FP8 to float32 at load, gives bit for bit the logits and greedy tokens
 * of the same checkpoint with every expert matrix replaced by float32 code * scale, the codes
 * decoded by torch's table (tests/fixtures/fp8/expected.safetensors). Also: tensor parallelism
 * over 2 and 4 ranks (test_cpu_tp.c), and malformed or missing expert scales refused by name. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/model/fp8_fixture.h"
#include "worker/backend/backend.h"
#include "worker/model/fp8.h"
#include "worker/model/model.h"
#include "worker/model/model_moe.h"

#define FP8_MOE "tests/fixtures/fp8_moe"
#define VOCAB 256
#define PROMPT 8
#define GEN 16
#define BLOCKS 4

/* Where a family keeps its experts, and their gate, up and down names. */
struct family {
    const char *name;
    const char *block;
    const char *part[3];
};

static const struct family families[] = {
    {"mixtral", "block_sparse_moe", {"w1", "w3", "w2"}},
    {"qwen2_moe", "mlp", {"gate_proj", "up_proj", "down_proj"}},
    {"qwen3_moe", "mlp", {"gate_proj", "up_proj", "down_proj"}},
};

static struct model *load(const char *dir)
{
    char err[1024] = "";
    struct model *m = NULL;
    cr_assert_eq(model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s: %s", dir, err);
    return m;
}

/* config.json's weight_block_size, {0, 0} when none. */
static void block_size(const char *dir, int64_t out[2])
{
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    cr_assert(root, "%s", path);
    json_t *b = json_object_get(json_object_get(root, "quantization_config"), "weight_block_size");
    out[0] = json_integer_value(json_array_get(b, 0));
    out[1] = json_integer_value(json_array_get(b, 1));
    json_decref(root);
}

/* A scale tensor's values as float32 (F32 or BF16 in the file). */
static float *scale_values(const char *file, const char *wname, struct fixture_tensor *st)
{
    char name[300];
    snprintf(name, sizeof name, "%s_scale", wname);
    void *raw = fixture_tensor_read(file, name, st);
    if (!raw) {
        snprintf(name, sizeof name, "%s_scale_inv", wname);
        raw = fixture_tensor_read(file, name, st);
    }
    cr_assert(raw, "%s: no scale for '%s'", file, wname);
    float *s = malloc((size_t)st->numel * sizeof *s);
    for (int64_t i = 0; i < st->numel; i++) {
        if (!strcmp(st->dtype, "BF16")) {
            uint32_t u = (uint32_t)((const uint16_t *)raw)[i] << 16;
            memcpy(&s[i], &u, 4);
        } else {
            cr_assert_str_eq(st->dtype, "F32", "%s", name);
            memcpy(&s[i], (const char *)raw + 4 * i, 4);
        }
    }
    free(raw);
    return s;
}

/* The scale of element (r, c) of a matrix of `rows` by the scale tensor's shape: one, one per
 * row, or per block (a [rows / 8, 1] block scale is not one per row). */
static float scale_at(const float *s, const struct fixture_tensor *st, const int64_t block[2], int64_t rows,
                      int64_t r, int64_t c)
{
    if (st->numel == 1) return s[0];
    if (st->numel == rows && st->ndim == 2 && st->shape[1] == 1) return s[r];
    return s[(r / block[0]) * st->shape[1] + c / block[1]];
}

struct checkpoint {
    const struct family *f;
    char dir[128], file[160];
    int64_t block[2];
    float table[256];   /* torch's e4m3 decoding */
    struct model *orig; /* the float32 fixture the checkpoint was made from */
};

/* Checks loaded expert matrix t (named wname in the file) against the file: e4m3, the file's
 * bytes, the file's scale at every element, the codes the e4m3 rounding of the original weights
 * over that scale. Returns float32 code * scale, the reference's weights. */
static float *check_expert(const struct checkpoint *c, const char *wname, const struct tensor *t,
                           const struct tensor *orig)
{
    struct fixture_tensor wt, st;
    uint8_t *codes = fixture_tensor_read(c->file, wname, &wt);
    cr_assert(codes, "%s: no '%s'", c->file, wname);
    cr_assert_str_eq(wt.dtype, "F8_E4M3", "%s", wname);
    const int64_t rows = wt.shape[0], cols = wt.shape[1];
    cr_assert(t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols, "%s: shape", wname);
    cr_assert_eq(t->dtype, DTYPE_F8_E4M3, "%s: loaded as %s", wname, dtype_name(t->dtype));
    cr_assert(memcmp(t->data, codes, (size_t)(rows * cols)) == 0, "%s: the loaded codes are not the file's", wname);
    float *s = scale_values(c->file, wname, &st);
    float *w = malloc((size_t)(rows * cols) * sizeof *w), *o = malloc((size_t)(rows * cols) * sizeof *o);
    tensor_to_f32(orig, 0, false, o);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++) {
            const float want = scale_at(s, &st, c->block, rows, r, k);
            cr_assert(fp8_tensor_scale(t, r, k) == want, "%s (%lld, %lld): scale %g, the file's %g", wname,
                      (long long)r, (long long)k, (double)fp8_tensor_scale(t, r, k), (double)want);
            const uint8_t q = codes[r * cols + k];
            cr_assert_eq(q, fp8_e4m3_from_f32(o[r * cols + k] / want), "%s (%lld, %lld): code 0x%02x", wname,
                         (long long)r, (long long)k, q);
            w[r * cols + k] = c->table[q] * want;
        }
    free(codes), free(s), free(o);
    return w;
}

/* Each expert matrix of model m checked (check_expert) and, in ref (the same checkpoint loaded
 * again), replaced by float32 code * scale. The buffers go into *owned (up to cap). */
static int make_reference(const struct checkpoint *c, const struct model *m, struct model *ref, float **owned,
                          int cap)
{
    int n = 0;
    for (int l = 0; l < m->config.n_layers; l++) {
        const struct moe_weights *W = m->layers[l].moe, *O = c->orig->layers[l].moe;
        struct moe_weights *R = ref->layers[l].moe;
        if (!W) continue;
        char name[256];
        for (int e = 0; e < m->config.moe.n_experts; e++) {
            const struct tensor *ws[3] = {&W->gate[e], &W->up[e], &W->down[e]};
            const struct tensor *os[3] = {&O->gate[e], &O->up[e], &O->down[e]};
            struct tensor *rs[3] = {&R->gate[e], &R->up[e], &R->down[e]};
            for (int i = 0; i < 3; i++) {
                snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", l, c->f->block, e,
                         c->f->part[i]);
                cr_assert_lt(n, cap);
                owned[n] = check_expert(c, name, ws[i], os[i]);
                *rs[i] = (struct tensor){.dtype = DTYPE_F32, .ndim = 2, .shape = {ws[i]->shape[0], ws[i]->shape[1]},
                                         .data = owned[n++]};
            }
        }
        /* The router and the shared expert's gate stay as stored. */
        cr_assert_eq(W->router.dtype, DTYPE_BF16, "layer %d router", l);
        if (W->shared_gate_proj.ndim == 0) continue;
        cr_assert_eq(W->shared_expert_gate.dtype, DTYPE_BF16, "layer %d shared expert gate", l);
        const char *shared[3] = {"gate_proj", "up_proj", "down_proj"};
        const struct tensor *ws[3] = {&W->shared_gate_proj, &W->shared_up, &W->shared_down};
        const struct tensor *os[3] = {&O->shared_gate_proj, &O->shared_up, &O->shared_down};
        struct tensor *rs[3] = {&R->shared_gate_proj, &R->shared_up, &R->shared_down};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert.%s.weight", l, shared[i]);
            cr_assert_lt(n, cap);
            owned[n] = check_expert(c, name, ws[i], os[i]);
            *rs[i] = (struct tensor){.dtype = DTYPE_F32, .ndim = 2, .shape = {ws[i]->shape[0], ws[i]->shape[1]},
                                     .data = owned[n++]};
        }
    }
    return n;
}

/* The prompt's logits at its last position, then GEN greedy steps: every step's logits and token. */
static void generate(const struct model *m, float logits[GEN][VOCAB], int32_t tokens[GEN])
{
    struct backend_options opt = {.kv_blocks = BLOCKS, .max_batch_tokens = 64, .max_batch_seqs = 1,
                                  .cpu.n_threads = 2};
    struct backend *b = NULL;
    char err[512] = "";
    cr_assert_eq(backend_cpu_create(&b, m, &opt, err, sizeof err), 0, "%s", err);
    struct sampling_params greedy = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    int32_t table[BLOCKS] = {0, 1, 2, 3}, hist[PROMPT + GEN] = {1, 17, 200, 33, 95, 4, 250, 61};
    int pos = 0;
    for (int g = 0; g < GEN; g++) {
        const int n = g == 0 ? PROMPT : 1;
        struct batch_seq q = {.n_new = n, .start_pos = pos, .block_table = table, .n_blocks = BLOCKS,
                              .sample = true, .sampling = &greedy, .n_generated = (uint64_t)g, .history = hist,
                              .n_history = pos + n, .n_output = g};
        struct batch batch = {.n_seqs = 1, .seqs = &q, .n_tokens = n, .tokens = hist + pos, .logits_out = logits[g]};
        struct sample_result res;
        cr_assert_eq(backend_forward(b, &batch, &res), 0, "%s", b->error);
        pos += n;
        tokens[g] = hist[pos] = res.token;
    }
    backend_free(b);
}

static void check_checkpoint(const struct family *f)
{
    struct checkpoint *c = calloc(1, sizeof *c);
    c->f = f;
    snprintf(c->dir, sizeof c->dir, "%s/%s", FP8_MOE, f->name);
    snprintf(c->file, sizeof c->file, "%s/model.safetensors", c->dir);
    block_size(c->dir, c->block);
    int64_t n = 0;
    float *table = fp8_fixture_read("e4m3_table", &n);
    cr_assert(table && n == 256, "tests/fixtures/fp8/expected.safetensors: e4m3_table");
    memcpy(c->table, table, sizeof c->table);
    free(table);
    char orig_dir[128];
    snprintf(orig_dir, sizeof orig_dir, "tests/fixtures/families/%s", f->name);
    c->orig = load(orig_dir);
    struct model *m = load(c->dir), *ref = load(c->dir);
    enum { CAP = 128 };
    float *owned[CAP];
    const int n_owned = make_reference(c, m, ref, owned, CAP);
    cr_assert_gt(n_owned, 0, "%s: no experts", f->name);
    static float got[GEN][VOCAB], want[GEN][VOCAB];
    int32_t got_ids[GEN], want_ids[GEN];
    generate(m, got, got_ids);
    generate(ref, want, want_ids);
    for (int g = 0; g < GEN; g++) {
        cr_expect_eq(got_ids[g], want_ids[g], "%s: greedy token %d is %d, the dequantized checkpoint's %d", f->name, g,
                     got_ids[g], want_ids[g]);
        for (int v = 0; v < VOCAB; v++)
            cr_assert(memcmp(&got[g][v], &want[g][v], sizeof(float)) == 0,
                      "%s: step %d logit %d is %.9g, the dequantized checkpoint's %.9g", f->name, g, v,
                      (double)got[g][v], (double)want[g][v]);
    }
    model_free(ref); /* before its weights */
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    model_free(m);
    model_free(c->orig);
    free(c);
}

Test(moe_fp8, mixtral_scale_per_tensor) { check_checkpoint(&families[0]); }
Test(moe_fp8, qwen2_moe_scale_per_channel_and_shared_expert) { check_checkpoint(&families[1]); }
Test(moe_fp8, qwen3_moe_block_scales) { check_checkpoint(&families[2]); }

/* A copy of fixture `name` in a temporary folder whose header entry `tensor` is replaced by
 * `entry` (deleted when NULL); the data bytes unchanged. Returns the folder. */
static char *broken_copy(const char *name, const char *tensor, json_t *entry)
{
    char src[256], path[256];
    snprintf(src, sizeof src, "%s/%s/model.safetensors", FP8_MOE, name);
    FILE *f = fopen(src, "rb");
    cr_assert(f, "%s", src);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    unsigned char *raw = malloc((size_t)len);
    fseek(f, 0, SEEK_SET);
    cr_assert_eq(fread(raw, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];
    json_t *hdr = json_loadb((const char *)raw + 8, hlen, 0, NULL);
    cr_assert(hdr && json_object_get(hdr, tensor), "%s: '%s'", src, tensor);
    if (entry) json_object_set_new(hdr, tensor, entry);
    else json_object_del(hdr, tensor);
    char *text = json_dumps(hdr, JSON_COMPACT);
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/sluice_fp8_moe_XXXXXX");
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *out = fopen(path, "wb");
    cr_assert(out);
    unsigned char len8[8];
    const uint64_t n = strlen(text);
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
    fwrite(len8, 1, 8, out);
    fwrite(text, 1, n, out);
    fwrite(raw + 8 + hlen, 1, (size_t)len - 8 - hlen, out);
    fclose(out);
    snprintf(src, sizeof src, "%s/%s/config.json", FP8_MOE, name);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(src, 0, NULL);
    cr_assert(cfg && json_dump_file(cfg, path, 0) == 0, "%s", path);
    json_decref(cfg);
    free(text), free(raw);
    json_decref(hdr);
    return dir;
}

static void expect_refused(const char *dir, const char *says)
{
    char err[1024] = "", path[128];
    struct model *m = NULL;
    cr_expect_neq(model_load(&m, dir, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s loaded", dir);
    cr_expect(strstr(err, says), "the error names '%s': %s", says, err);
    model_free(m);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* One expert's per-tensor scale made three values: neither one, one per row, nor blocks. */
Test(moe_fp8, a_malformed_expert_scale_is_refused_by_name)
{
    const char *scale = "model.layers.1.block_sparse_moe.experts.2.w2.weight_scale";
    json_t *bad = json_pack("{s:s, s:[i], s:[i,i]}", "dtype", "F32", "shape", 3, "data_offsets", 0, 12);
    expect_refused(broken_copy("mixtral", scale, bad), scale);
}

/* The shared expert's up_proj without its scale. */
Test(moe_fp8, a_missing_shared_expert_scale_is_refused_by_name)
{
    expect_refused(broken_copy("qwen2_moe", "model.layers.2.mlp.shared_expert.up_proj.weight_scale", NULL),
                   "'model.layers.2.mlp.shared_expert.up_proj.weight' has neither");
}
