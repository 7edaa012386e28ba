/* Loading stories260K from both formats, --load-format dummy, and every kind of bad file:
 * each refused with a message naming the file, never a crash. The bad files are made here
 * from the real ones in a temporary folder. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/model/gguf/gguf.h"
#include "worker/model/model.h"

static char data_dir[4096];
static char tmp[64];

static bool have_data(void)
{
    const char *env = getenv("SLUICE_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s/models/stories260K", env && *env ? env : "../shared");
    struct stat st;
    return stat(data_dir, &st) == 0;
}

static void make_tmp(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/sluice-model-XXXXXX");
    cr_assert(mkdtemp(tmp));
}

static void remove_tmp(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    cr_expect_eq(system(cmd), 0);
}

static void setup_real(void)
{
    if (!have_data()) cr_skip_test("stories260K not found under %s (set SLUICE_TEST_DATA)", data_dir);
    make_tmp();
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*len ? *len : 1);
    cr_assert_eq(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot create %s", path);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

static void write_text(const char *path, const char *text)
{
    write_all(path, text, strlen(text));
}

/* Loading must fail with a message holding each of the given strings. */
static void expect_refused(const char *path, enum model_load_format fmt, const char *want1, const char *want2)
{
    struct model *m = (struct model *)1;
    char err[1024] = "";
    int rc = model_load(&m, path, fmt, err, sizeof err);
    cr_expect_lt(rc, 0, "%s loaded although it should not (%s)", path, want2 ? want2 : want1);
    cr_expect_null(m);
    if (rc == 0) model_free(m);
    cr_log_info("refused: %s", err);
    cr_expect(strstr(err, want1) != NULL, "message lacks '%s': %s", want1, err);
    if (want2) cr_expect(strstr(err, want2) != NULL, "message lacks '%s': %s", want2, err);
}

/* --- the real model ------------------------------------------------------------------- */

TestSuite(load, .init = setup_real, .fini = remove_tmp, .timeout = 60);

Test(load, hf_and_gguf_agree)
{
    char path[4200], err[1024] = "";
    struct model *hf = NULL, *gg = NULL;
    snprintf(path, sizeof path, "%s/hf", data_dir);
    cr_assert_eq(model_load(&hf, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/stories260K.gguf", data_dir);
    cr_assert_eq(model_load(&gg, path, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    const struct model_config *a = &hf->config, *b = &gg->config;
    cr_expect_eq(a->hidden_size, 64);
    cr_expect_eq(a->n_layers, 5);
    cr_expect_eq(a->n_heads, 8);
    cr_expect_eq(a->n_kv_heads, 4);
    cr_expect_eq(a->head_dim, 8);
    cr_expect_eq(a->intermediate_size, 172);
    cr_expect_eq(a->vocab_size, 512);
    cr_expect_eq(a->bos_id, 1);
    cr_expect_eq(a->n_eos, 1);
    cr_expect_eq(a->eos_ids[0], 2);
    cr_expect(a->tie_embeddings);
    cr_expect_not(a->rope_interleaved);
    cr_expect_not(hf->is_gguf);
    cr_expect_eq(hf->lm_head.data, hf->tok_embed.data);
    cr_expect_str_eq(b->arch_name, "llama");
    cr_expect(gg->is_gguf);
    cr_expect(b->rope_interleaved);
    cr_expect_eq(b->hidden_size, a->hidden_size);
    cr_expect_eq(b->n_layers, a->n_layers);
    cr_expect_eq(b->n_heads, a->n_heads);
    cr_expect_eq(b->n_kv_heads, a->n_kv_heads);
    cr_expect_eq(b->head_dim, a->head_dim);
    cr_expect_eq(b->intermediate_size, a->intermediate_size);
    cr_expect_eq(b->vocab_size, a->vocab_size);
    cr_expect_float_eq(b->rms_eps, a->rms_eps, 1e-9f);
    cr_expect_float_eq(b->rope_theta, 10000.0f, 1e-3f);
    cr_expect_eq(b->bos_id, 1);
    cr_expect_eq(b->eos_ids[0], 2);
    /* Same numbers, same [out][in] layout; q and k differ only by the rope row order. */
    float x[64 * 172], y[64 * 172];
    struct { const struct tensor *p, *q; } same[] = {
        {&hf->tok_embed, &gg->tok_embed}, {&hf->final_norm, &gg->final_norm},
        {&hf->layers[2].w_gate, &gg->layers[2].w_gate}, {&hf->layers[4].w_down, &gg->layers[4].w_down},
        {&hf->layers[1].wv, &gg->layers[1].wv}, {&hf->layers[3].wo, &gg->layers[3].wo},
        {&hf->layers[0].attn_norm, &gg->layers[0].attn_norm}, {&hf->tok_embed, &gg->lm_head},
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        cr_assert_eq(tensor_numel(same[i].p), tensor_numel(same[i].q));
        cr_expect_eq(same[i].p->shape[0], same[i].q->shape[0]);
        cr_expect_eq(same[i].p->shape[1], same[i].q->shape[1]);
    }
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        int64_t n = tensor_numel(same[i].p);
        for (int64_t k = 0; k < n; k++)
            cr_assert_eq(tensor_get_f32(same[i].p, 0, false, (uint64_t)k), tensor_get_f32(same[i].q, 0, false, (uint64_t)k),
                         "tensor pair %zu differs at %lld", i, (long long)k);
    }
    /* HF row i of a head is Meta's row 2i, row i + 4 is Meta's 2i + 1. */
    tensor_to_f32(&hf->layers[0].wq, 0, false, x);
    tensor_to_f32(&gg->layers[0].wq, 0, false, y);
    for (int h = 0; h < 8; h++)
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 64; c++) {
                cr_assert_eq(x[(h * 8 + i) * 64 + c], y[(h * 8 + 2 * i) * 64 + c]);
                cr_assert_eq(x[(h * 8 + i + 4) * 64 + c], y[(h * 8 + 2 * i + 1) * 64 + c]);
            }
    model_free(hf);
    model_free(gg);
}

Test(load, gguf_metadata_and_vocab)
{
    char path[4200], err[1024] = "";
    snprintf(path, sizeof path, "%s/stories260K.gguf", data_dir);
    struct gguf_file *f = NULL;
    cr_assert_eq(gguf_open(&f, path, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(gguf_path(f), path);
    cr_expect_eq(gguf_tensor_count(f), 48);
    int64_t v;
    cr_expect_eq(gguf_get_int(f, "llama.block_count", &v), 0);
    cr_expect_eq(v, 5);
    cr_expect_lt(gguf_get_int(f, "no.such.key", &v), 0);
    double eps;
    cr_expect_eq(gguf_get_float(f, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    cr_expect_float_eq(eps, 1e-5, 1e-9);
    const char *s;
    size_t len;
    cr_expect_eq(gguf_get_string(f, "general.architecture", &s, &len), 0);
    cr_expect(len == 5 && !memcmp(s, "llama", 5));
    cr_expect_lt(gguf_get_string(f, "llama.block_count", &s, &len), 0, "an integer is not a string");
    enum gguf_value_type et;
    uint64_t count;
    cr_assert_eq(gguf_get_array(f, "tokenizer.ggml.tokens", &et, &count), 0);
    cr_expect_eq(et, GGUF_TYPE_STRING);
    cr_expect_eq(count, 512);
    cr_expect_eq(gguf_array_get_string(f, "tokenizer.ggml.tokens", 1, &s, &len), 0);
    cr_expect(len == 3 && !memcmp(s, "<s>", 3));
    cr_expect_eq(gguf_array_get_string(f, "tokenizer.ggml.tokens", 511, &s, &len), 0);
    cr_expect_lt(gguf_array_get_string(f, "tokenizer.ggml.tokens", 512, &s, &len), 0);
    double score;
    cr_expect_eq(gguf_array_get_float(f, "tokenizer.ggml.scores", 0, &score), 0);
    cr_expect_eq(gguf_array_get_int(f, "tokenizer.ggml.token_type", 0, &v), 0);
    cr_expect_eq(v, 2);
    cr_expect_lt(gguf_array_get_int(f, "tokenizer.ggml.tokens", 0, &v), 0, "strings are not integers");
    const struct gguf_tensor_info *t = gguf_find_tensor(f, "blk.0.ffn_down.weight");
    cr_assert(t);
    cr_expect_eq(t->n_dims, 2);
    cr_expect_eq(t->dims[0], 172);
    cr_expect_eq(t->dims[1], 64);
    cr_expect_eq(t->type, GGML_TYPE_F32);
    cr_expect_eq(t->size, 172 * 64 * 4);
    cr_expect_null(gguf_find_tensor(f, "blk.9.ffn_down.weight"));
    gguf_close(f);
}

/* --- bad Hugging Face directories ------------------------------------------------------ */

static unsigned char *st_buf;
static size_t st_len;
static json_t *st_header;

/* A copy of hf/ whose model.safetensors is st_buf[0..len), or its header replaced. */
static void make_hf_copy(const char *sub, const unsigned char *st, size_t len)
{
    char d[256], p[300], src[4200];
    snprintf(d, sizeof d, "%s/%s", tmp, sub);
    cr_assert_eq(mkdir(d, 0755), 0);
    const char *names[] = {"config.json", "generation_config.json"};
    for (int i = 0; i < 2; i++) {
        size_t n;
        snprintf(src, sizeof src, "%s/hf/%s", data_dir, names[i]);
        unsigned char *b = read_all(src, &n);
        snprintf(p, sizeof p, "%s/%s", d, names[i]);
        write_all(p, b, n);
        free(b);
    }
    if (st) {
        snprintf(p, sizeof p, "%s/model.safetensors", d);
        write_all(p, st, len);
    }
}

static void load_st(void)
{
    char src[4200];
    snprintf(src, sizeof src, "%s/hf/model.safetensors", data_dir);
    st_buf = read_all(src, &st_len);
    uint64_t hlen;
    memcpy(&hlen, st_buf, 8);
    json_error_t jerr;
    st_header = json_loadb((const char *)st_buf + 8, hlen, 0, &jerr);
    cr_assert(st_header);
}

/* model.safetensors with header h and the original data section. */
static void make_hf_with_header(const char *sub, json_t *h)
{
    uint64_t old;
    memcpy(&old, st_buf, 8);
    char *text = json_dumps(h, JSON_COMPACT);
    uint64_t n = strlen(text);
    size_t len = 8 + n + (st_len - 8 - old);
    unsigned char *b = malloc(len);
    memcpy(b, &n, 8);
    memcpy(b + 8, text, n);
    memcpy(b + 8 + n, st_buf + 8 + old, st_len - 8 - old);
    make_hf_copy(sub, b, len);
    free(b);
    free(text);
}

static void path_of(char *out, size_t n, const char *sub)
{
    snprintf(out, n, "%s/%s", tmp, sub);
}

Test(load, bad_safetensors_refused)
{
    load_st();
    char p[300];

    make_hf_copy("ok", st_buf, st_len);
    path_of(p, sizeof p, "ok");
    struct model *m = NULL;
    char err[1024] = "";
    cr_expect_eq(model_load(&m, p, MODEL_LOAD_AUTO, err, sizeof err), 0, "the unmodified copy: %s", err);
    model_free(m);

    make_hf_copy("truncated", st_buf, st_len / 2);
    path_of(p, sizeof p, "truncated");
    expect_refused(p, MODEL_LOAD_AUTO, "model.safetensors", "data_offsets");

    make_hf_copy("tiny", st_buf, 5);
    path_of(p, sizeof p, "tiny");
    expect_refused(p, MODEL_LOAD_AUTO, "model.safetensors", "truncated");

    unsigned char *lying = malloc(st_len);
    memcpy(lying, st_buf, st_len);
    uint64_t huge = st_len;
    memcpy(lying, &huge, 8);
    make_hf_copy("header_len", lying, st_len);
    path_of(p, sizeof p, "header_len");
    expect_refused(p, MODEL_LOAD_AUTO, "model.safetensors", "header length");
    free(lying);

    make_hf_copy("missing_file", NULL, 0);
    path_of(p, sizeof p, "missing_file");
    expect_refused(p, MODEL_LOAD_AUTO, "model.safetensors", NULL);

    json_t *h = json_deep_copy(st_header);
    json_object_del(h, "model.layers.3.mlp.up_proj.weight");
    make_hf_with_header("dropped", h);
    json_decref(h);
    path_of(p, sizeof p, "dropped");
    expect_refused(p, MODEL_LOAD_AUTO, "model.layers.3.mlp.up_proj.weight", "missing");

    h = json_deep_copy(st_header);
    json_t *e = json_object_get(h, "model.layers.0.mlp.down_proj.weight");
    json_object_set_new(e, "shape", json_pack("[ii]", 172, 64));
    make_hf_with_header("shape", h);
    json_decref(h);
    path_of(p, sizeof p, "shape");
    expect_refused(p, MODEL_LOAD_AUTO, "model.layers.0.mlp.down_proj.weight", "shape");

    h = json_deep_copy(st_header);
    e = json_object_get(h, "model.norm.weight");
    json_object_set_new(e, "dtype", json_string("I8"));
    make_hf_with_header("dtype", h);
    json_decref(h);
    path_of(p, sizeof p, "dtype");
    expect_refused(p, MODEL_LOAD_AUTO, "model.norm.weight", "I8");

    h = json_deep_copy(st_header);
    e = json_object_get(h, "model.norm.weight");
    json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)0, (json_int_t)1 << 40));
    make_hf_with_header("offsets", h);
    json_decref(h);
    path_of(p, sizeof p, "offsets");
    expect_refused(p, MODEL_LOAD_AUTO, "model.norm.weight", "data_offsets");

    h = json_deep_copy(st_header);
    e = json_object_get(h, "model.norm.weight");
    json_object_set_new(e, "data_offsets", json_pack("[ii]", 0, 100));
    make_hf_with_header("span", h);
    json_decref(h);
    path_of(p, sizeof p, "span");
    expect_refused(p, MODEL_LOAD_AUTO, "model.norm.weight", "bytes");

    h = json_array();
    make_hf_with_header("not_object", h);
    json_decref(h);
    path_of(p, sizeof p, "not_object");
    expect_refused(p, MODEL_LOAD_AUTO, "model.safetensors", "header");

    make_hf_copy("bad_config", st_buf, st_len);
    char cfg[400];
    snprintf(cfg, sizeof cfg, "%s/bad_config/config.json", tmp);
    write_text(cfg, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,");
    path_of(p, sizeof p, "bad_config");
    expect_refused(p, MODEL_LOAD_AUTO, "config.json", NULL);

    /* A config that disagrees with the weights' shapes. */
    make_hf_copy("wrong_config", st_buf, st_len);
    snprintf(cfg, sizeof cfg, "%s/wrong_config/config.json", tmp);
    write_text(cfg, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":100,"
                    "\"num_hidden_layers\":5,\"num_attention_heads\":8,\"num_key_value_heads\":4,"
                    "\"vocab_size\":512,\"tie_word_embeddings\":true}");
    path_of(p, sizeof p, "wrong_config");
    expect_refused(p, MODEL_LOAD_AUTO, "mlp.gate_proj.weight", "shape");

    /* Untied: lm_head.weight is then required. */
    make_hf_copy("untied", st_buf, st_len);
    snprintf(cfg, sizeof cfg, "%s/untied/config.json", tmp);
    write_text(cfg, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":172,"
                    "\"num_hidden_layers\":5,\"num_attention_heads\":8,\"num_key_value_heads\":4,"
                    "\"vocab_size\":512,\"tie_word_embeddings\":false}");
    path_of(p, sizeof p, "untied");
    expect_refused(p, MODEL_LOAD_AUTO, "lm_head.weight", "missing");

    expect_refused("/nonexistent/model", MODEL_LOAD_AUTO, "/nonexistent/model", NULL);
    json_decref(st_header);
    free(st_buf);
}

Test(load, sharded_safetensors_through_the_index)
{
    /* Split the real file into two shards by tensor name, with an index naming them. */
    load_st();
    uint64_t old;
    memcpy(&old, st_buf, 8);
    const unsigned char *data = st_buf + 8 + old;
    json_t *parts[2] = {json_object(), json_object()};
    json_t *wm = json_object();
    const char *name;
    json_t *v;
    uint64_t off[2] = {0, 0};
    unsigned char *shard_data[2] = {malloc(st_len), malloc(st_len)};
    json_object_foreach(st_header, name, v) {
        if (!strcmp(name, "__metadata__")) continue;
        int s = strstr(name, "layers.") && atoi(strstr(name, "layers.") + 7) >= 2 ? 1 : 0;
        json_t *offs = json_object_get(v, "data_offsets");
        uint64_t a = (uint64_t)json_integer_value(json_array_get(offs, 0));
        uint64_t b = (uint64_t)json_integer_value(json_array_get(offs, 1));
        memcpy(shard_data[s] + off[s], data + a, b - a);
        json_t *e = json_deep_copy(v);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off[s], (json_int_t)(off[s] + b - a)));
        json_object_set_new(parts[s], name, e);
        off[s] += b - a;
        json_object_set_new(wm, name, json_string(s ? "model-00002-of-00002.safetensors"
                                                    : "model-00001-of-00002.safetensors"));
    }
    make_hf_copy("sharded", NULL, 0);
    for (int s = 0; s < 2; s++) {
        char *text = json_dumps(parts[s], JSON_COMPACT);
        uint64_t n = strlen(text);
        unsigned char *b = malloc(8 + n + off[s]);
        memcpy(b, &n, 8);
        memcpy(b + 8, text, n);
        memcpy(b + 8 + n, shard_data[s], off[s]);
        char p[400];
        snprintf(p, sizeof p, "%s/sharded/model-0000%d-of-00002.safetensors", tmp, s + 1);
        write_all(p, b, 8 + n + off[s]);
        free(b);
        free(text);
        json_decref(parts[s]);
        free(shard_data[s]);
    }
    json_t *index = json_pack("{s:{s:i},s:o}", "metadata", "total_size", 0, "weight_map", wm);
    char p[400];
    snprintf(p, sizeof p, "%s/sharded/model.safetensors.index.json", tmp);
    cr_assert_eq(json_dump_file(index, p, 0), 0);
    json_decref(index);

    char dir[300], ref[4200], err[1024] = "";
    path_of(dir, sizeof dir, "sharded");
    snprintf(ref, sizeof ref, "%s/hf", data_dir);
    struct model *a = NULL, *b = NULL;
    cr_assert_eq(model_load(&a, dir, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    cr_assert_eq(model_load(&b, ref, MODEL_LOAD_AUTO, err, sizeof err), 0, "%s", err);
    for (int l = 0; l < 5; l++) {
        cr_expect(!memcmp(a->layers[l].w_up.data, b->layers[l].w_up.data, 64 * 172 * 4), "layer %d", l);
        cr_expect(!memcmp(a->layers[l].wq.data, b->layers[l].wq.data, 64 * 64 * 4), "layer %d", l);
    }
    cr_expect(!memcmp(a->tok_embed.data, b->tok_embed.data, 512 * 64 * 4));
    model_free(a);
    model_free(b);

    /* An index naming a shard that is not there. */
    snprintf(p, sizeof p, "%s/sharded/model-00002-of-00002.safetensors", tmp);
    unlink(p);
    expect_refused(dir, MODEL_LOAD_AUTO, "model-00002-of-00002.safetensors", NULL);
    json_decref(st_header);
    free(st_buf);
}

/* --- bad GGUF files ------------------------------------------------------------------- */

static unsigned char *gg_buf;
static size_t gg_len;

static void load_gg(void)
{
    char src[4200];
    snprintf(src, sizeof src, "%s/stories260K.gguf", data_dir);
    gg_buf = read_all(src, &gg_len);
}

/* Where a string occurs in the file's header (the first occurrence). */
static size_t find_bytes(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= 20000 && i + n <= gg_len; i++)
        if (!memcmp(gg_buf + i, s, n)) return i;
    cr_assert_fail("'%s' not found in the GGUF header", s);
    return 0;
}

/* Writes a copy with 8 bytes at off replaced by v (or 4 when width 4) and expects refusal. */
static void expect_patched_refused(const char *sub, size_t off, uint64_t v, int width, const char *want)
{
    unsigned char *b = malloc(gg_len);
    memcpy(b, gg_buf, gg_len);
    memcpy(b + off, &v, (size_t)width);
    char p[300];
    snprintf(p, sizeof p, "%s/%s.gguf", tmp, sub);
    write_all(p, b, gg_len);
    free(b);
    expect_refused(p, MODEL_LOAD_AUTO, p, want);
}

Test(load, bad_gguf_refused)
{
    load_gg();
    char p[300];
    /* Every truncation refused: through the header byte by byte in steps, then into the data. */
    for (size_t len = 0; len < gg_len; len += len < 15000 ? 37 : 65521) {
        snprintf(p, sizeof p, "%s/cut.gguf", tmp);
        write_all(p, gg_buf, len);
        struct model *m = NULL;
        char err[1024] = "";
        int rc = model_load(&m, p, MODEL_LOAD_AUTO, err, sizeof err);
        cr_expect_lt(rc, 0, "a file cut to %zu bytes loaded", len);
        if (rc == 0) model_free(m);
        cr_expect(strstr(err, p) != NULL, "cut to %zu: message lacks the file: %s", len, err);
    }
    expect_patched_refused("magic", 0, 0x46554746, 4, "magic");
    expect_patched_refused("version", 4, 99, 4, "version");
    expect_patched_refused("n_tensors", 8, 1ull << 40, 8, "tensor_count");
    expect_patched_refused("n_kv", 16, 1ull << 40, 8, "metadata_kv_count");
    expect_patched_refused("key_len", 24, 1ull << 50, 8, "metadata key");
    /* The token array's count (after key, type and element type). */
    size_t tok = find_bytes("tokenizer.ggml.tokens");
    expect_patched_refused("array_count", tok + 21 + 4 + 4, 1ull << 60, 8, "array");
    /* token_embd.weight's info: name, n_dims, dims[2], type, offset. */
    size_t te = find_bytes("token_embd.weight");
    size_t dims = te + 17 + 4, type = dims + 16, offset = type + 4;
    expect_patched_refused("n_dims", te + 17, 7, 4, "n_dims");
    expect_patched_refused("dims", dims, 1ull << 41, 8, "dims");
    expect_patched_refused("offset_past_end", offset, 1ull << 40, 8, "past the end");
    expect_patched_refused("offset_unaligned", offset, 4, 8, "alignment");
    /* IQ2_XXS (16): a ggml type this project does not read. */
    expect_patched_refused("tensor_type", type, 16, 4, "type 16");
    /* Q4_K (12) is read, but stories260K's rows of 64 are not a whole 256-weight block. */
    expect_patched_refused("tensor_type_block", type, 12, 4, "multiple of its type's block");
    expect_patched_refused("shape", dims, 32, 8, "token_embd.weight");
    size_t arch = find_bytes("general.architecture");
    unsigned char *b = malloc(gg_len);
    memcpy(b, gg_buf, gg_len);
    memcpy(b + arch + 20 + 4 + 8, "gpt2x", 5);
    snprintf(p, sizeof p, "%s/arch.gguf", tmp);
    write_all(p, b, gg_len);
    expect_refused(p, MODEL_LOAD_AUTO, "gpt2x", "not supported");
    memcpy(b, gg_buf, gg_len);
    size_t up = find_bytes("blk.3.ffn_up.weight");
    b[up + 12] = 'X';
    snprintf(p, sizeof p, "%s/dropped.gguf", tmp);
    write_all(p, b, gg_len);
    expect_refused(p, MODEL_LOAD_AUTO, "blk.3.ffn_up.weight", "missing");
    memcpy(b, gg_buf, gg_len);
    size_t bc = find_bytes("llama.block_count");
    b[bc + 6] = 'X';
    snprintf(p, sizeof p, "%s/no_layers.gguf", tmp);
    write_all(p, b, gg_len);
    expect_refused(p, MODEL_LOAD_AUTO, "llama.block_count", "missing");
    free(b);
    free(gg_buf);
}

/* --- dummy weights -------------------------------------------------------------------- */

TestSuite(dummy, .init = make_tmp, .fini = remove_tmp);

Test(dummy, deterministic_values_from_config_only)
{
    char p[200];
    snprintf(p, sizeof p, "%s/config.json", tmp);
    write_text(p, "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":96,"
                  "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":32,"
                  "\"vocab_size\":300,\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\"}");
    struct model *a = NULL, *b = NULL;
    char err[1024] = "";
    cr_assert_eq(model_load(&a, tmp, MODEL_LOAD_DUMMY, err, sizeof err), 0, "%s", err);
    cr_assert_eq(model_load(&b, p, MODEL_LOAD_DUMMY, err, sizeof err), 0, "config.json itself: %s", err);
    cr_expect(a->dummy);
    cr_expect_str_eq(a->path, tmp);
    cr_expect_str_eq(b->path, tmp);
    cr_expect_eq(a->config.head_dim, 32);
    cr_expect_eq(a->layers[0].q_norm.shape[0], 32);
    cr_expect_eq(a->layers[2].wq.shape[0], 128);
    cr_expect_eq(a->layers[2].wq.shape[1], 64);
    cr_expect_eq(a->layers[2].wo.shape[0], 64);
    cr_expect_eq(a->layers[2].wo.shape[1], 128);
    cr_expect_eq(a->lm_head.dummy_id, a->tok_embed.dummy_id, "tied");
    /* Every tensor has no data and an id of its own. */
    const struct tensor *all[64];
    int n = 0;
    all[n++] = &a->tok_embed;
    all[n++] = &a->final_norm;
    for (int l = 0; l < 3; l++) {
        struct layer_weights *L = &a->layers[l];
        const struct tensor *t[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->q_norm, &L->k_norm,
                                    &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) all[n++] = t[i];
    }
    for (int i = 0; i < n; i++) {
        cr_expect_null(all[i]->data);
        cr_expect_eq(all[i]->dtype, DTYPE_BF16);
        for (int j = 0; j < i; j++) cr_expect_neq(all[i]->dummy_id, all[j]->dummy_id);
    }
    cr_expect_eq(a->layers[1].bq.ndim, 0, "no biases for Qwen3");
    /* Values: deterministic, in range, spread over it, different per tensor and seed. */
    double sum = 0, lo = 1, hi = -1;
    for (uint64_t i = 0; i < 10000; i++) {
        float v = tensor_get_f32(&a->layers[1].w_up, a->dummy_seed, false, i);
        cr_assert_eq(v, tensor_get_f32(&b->layers[1].w_up, b->dummy_seed, false, i));
        cr_assert_eq(v, model_dummy_value(a->dummy_seed, a->layers[1].w_up.dummy_id, i));
        cr_assert(v >= -MODEL_DUMMY_SCALE && v < MODEL_DUMMY_SCALE);
        float nv = tensor_get_f32(&a->layers[1].w_up, a->dummy_seed, true, i);
        cr_assert_eq(nv, 1.0f + v);
        sum += v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    cr_expect(sum / 10000 < 0.001 && sum / 10000 > -0.001, "mean %g", sum / 10000);
    cr_expect(lo < -0.019 && hi > 0.019, "range [%g, %g]", lo, hi);
    cr_expect_neq(model_dummy_value(1, 2, 3), model_dummy_value(1, 3, 3));
    cr_expect_neq(model_dummy_value(1, 2, 3), model_dummy_value(2, 2, 3));
    cr_expect_neq(model_dummy_value(1, 2, 3), model_dummy_value(1, 2, 4));
    float buf[300 * 64];
    tensor_to_f32(&a->tok_embed, a->dummy_seed, false, buf);
    cr_expect_eq(buf[12345], model_dummy_value(a->dummy_seed, a->tok_embed.dummy_id, 12345));
    model_free(a);
    model_free(b);
    expect_refused("/nonexistent/dir", MODEL_LOAD_DUMMY, "/nonexistent/dir", NULL);
}

/* Random corruption of the headers: loading may succeed or fail, but must never read out
 * of bounds (the sanitizer build checks) or crash. */
Test(load, corrupted_headers_never_crash)
{
    load_gg();
    load_st();
    uint64_t st_hlen;
    memcpy(&st_hlen, st_buf, 8);
    unsigned rng = 12345;
    unsigned char *b = malloc(gg_len > st_len ? gg_len : st_len);
    char p[300];
    int refused = 0;
    for (int round = 0; round < 400; round++) {
        bool gguf = round % 2 == 0;
        const unsigned char *src = gguf ? gg_buf : st_buf;
        size_t len = gguf ? gg_len : st_len, header = gguf ? 14200 : (size_t)st_hlen + 8;
        memcpy(b, src, len);
        int flips = 1 + round % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 1103515245u + 12345u;
            size_t at = (rng >> 8) % header;
            rng = rng * 1103515245u + 12345u;
            b[at] = (unsigned char)(rng >> 16);
        }
        struct model *m = NULL;
        char err[1024] = "";
        int rc;
        if (gguf) {
            snprintf(p, sizeof p, "%s/fuzz.gguf", tmp);
            write_all(p, b, len);
            rc = model_load(&m, p, MODEL_LOAD_AUTO, err, sizeof err);
        } else {
            snprintf(p, sizeof p, "%s/fuzz%d", tmp, round);
            make_hf_copy(p + strlen(tmp) + 1, b, len);
            rc = model_load(&m, p, MODEL_LOAD_AUTO, err, sizeof err);
        }
        if (rc == 0) {
            model_free(m);
        } else {
            refused++;
            cr_expect(err[0] != '\0', "round %d failed without a message", round);
        }
    }
    cr_log_info("%d of 400 corrupted files refused", refused);
    cr_expect(refused > 40, "only %d of 400 corrupted files refused", refused);
    free(b);
    free(gg_buf);
    json_decref(st_header);
    free(st_buf);
}
