/* Loader-private parts of worker/model: what model->source points to, and the helpers the
 * safetensors and GGUF loaders share. Not for use outside worker/model/ and its tests. */
#ifndef SLUICE_WORKER_MODEL_INTERNAL_H
#define SLUICE_WORKER_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/gguf/gguf.h"
#include "worker/model/model.h"

struct model_source {
    struct { void *addr; size_t len; } *maps;
    int n_maps, cap_maps;
    void **owned;
    int n_owned, cap_owned;
    struct gguf_file *gguf;
};

int model_source_add_map(struct model_source *src, void *addr, size_t len);
/* Takes ownership of buf (malloc'd): freed with the model. */
int model_source_add_owned(struct model_source *src, void *buf);
void model_source_free(struct model_source *src);

size_t dtype_size(enum dtype d);
float model_f16_to_f32(uint16_t h);
float model_bf16_to_f32(uint16_t h);
/* Rounds to the nearest half (ties to even), overflowing to infinity as IEEE does. */
uint16_t model_f32_to_f16(float f);
/* A shape as "[2, 3]" for messages. */
void model_fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape);

/* Runs fn over rows [0, rows) in contiguous shares, one thread each (the last on the caller's),
 * as many as there are processors (32 at most) but no share under min_rows rows; fn returns 0
 * or -1. -1 when any share failed (model_threads.c). */
int model_parallel_rows(int64_t rows, int64_t min_rows, int (*fn)(void *arg, int64_t r0, int64_t r1), void *arg);

/* Checks the config's numbers make sense together (positive sizes, heads divide, even
 * head_dim); origin names the file in the message. */
int model_config_validate(const struct model_config *cfg, const char *origin, char *err, size_t errlen);

/* Allocates m->layers and fills tensor shapes for cfg, leaving data NULL: the loaders then
 * fill data, and dummy loading keeps NULL. */
int model_alloc_layers(struct model *m, char *err, size_t errlen);

/* config.json's rope dict (rope_scaling or rope_parameters) into cfg (config.c); the variants
 * dynamic, yarn and longrope, and the families of model_family.h (config_family.c). root is
 * the whole config.json object. */
struct json_t;
int model_parse_rope_scaling(struct json_t *rs, struct json_t *root, struct model_config *cfg, const char *file,
                             char *err, size_t errlen);
int model_rope_parse_variant(struct json_t *rs, struct json_t *root, const char *type, struct model_config *cfg,
                             const char *file, char *err, size_t errlen);
int model_config_family(struct model_config *cfg, struct json_t *root, const char *file, char *err, size_t errlen);
/* For a multimodal checkpoint whose language model is one of them (Gemma3ForConditionalGeneration),
 * a new object to read instead of root: its text_config with the defaults the Hub leaves out;
 * NULL otherwise. */
struct json_t *model_family_text_root(struct json_t *root);
/* The architecture name of a family's model_type, or NULL; whether an architecture is one of them. */
const char *model_family_arch_for_type(const char *model_type);
bool model_family_arch_known(const char *arch);

/* GGUF architectures of those families (model_gguf_family.c): whether arch is one (then sets
 * cfg's arch and rope layout), and their metadata into cfg once the common keys are read. */
struct gguf_file;
bool gguf_family_arch(const char *arch, struct model_config *cfg);
int gguf_family_config(const struct gguf_file *f, const char *arch, struct model_config *cfg, const char *path,
                       char *err, size_t errlen);

/* Mixture of experts (model_moe.c). */
struct json_t;
/* For an MoE architecture name ("MixtralForCausalLM", ...) sets cfg's arch_name, base arch and
 * attention options and returns true; false for any other name. */
bool model_moe_arch(const char *name, struct model_config *cfg);
/* Fills cfg->moe from config.json's object (its experts, top-k, normalisation, sparse layers)
 * and refuses what the MoE path does not compute (sliding windows, Qwen3-MoE attention_bias). */
int model_moe_config_from_json(struct json_t *root, struct model_config *cfg, const char *file, char *err,
                               size_t errlen);
/* Allocates every sparse layer's struct moe_weights with shapes set and data NULL (dummy ids
 * from *next_id on), and clears those layers' dense w_gate, w_up, w_down. */
int model_moe_alloc(struct model *m, uint64_t *next_id, char *err, size_t errlen);
/* A tensor of a weight file as a loader finds it: its shape row-major (GGUF's dims reversed);
 * an FP8 one with its scale as struct tensor holds it (NULL for other dtypes). */
struct model_tensor_ref {
    enum dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    const char *file;
    const float *scale;
    int64_t scale_rows, scale_cols;
};
/* 0 and *out when the file has the tensor, 1 when it has not, -1 (err set) when it is
 * unreadable (an unsupported dtype). */
typedef int (*model_find_fn)(void *ctx, const char *name, struct model_tensor_ref *out, char *err, size_t errlen);
/* The same for a GGUF file: qwen2moe and qwen3moe, and expert_count in any architecture's
 * metadata (llama for Mixtral). */
bool model_moe_gguf_arch(const char *arch, struct model_config *cfg);
int model_moe_config_from_gguf(const struct gguf_file *f, const char *arch, struct model_config *cfg,
                               const char *path, char *err, size_t errlen);
/* Binds layer l's expert tensors from a Hugging Face directory: per-expert tensors (the Hub's
 * layout, which transformers also saves) or stacked [n_experts, ...] ones. */
int model_moe_bind_hf(struct model *m, int layer, model_find_fn find, void *ctx, char *err, size_t errlen);
/* The same from a GGUF file: llama.cpp's ffn_gate_inp and stacked ffn_{gate,up,down}_exps. */
int model_moe_bind_gguf(struct model *m, int layer, model_find_fn find, void *ctx, char *err, size_t errlen);

/* A fused tensor (Phi-3's qkv_proj, gate_up_proj) bound as its parts: the shape of the parts'
 * rows stacked, and, once whole is bound, each part pointed at its rows (no copy). */
struct tensor model_stacked_shape(struct tensor *const *parts, int n);
void model_split_rows(const struct tensor *whole, struct tensor *const *parts, int n);

int model_load_safetensors(struct model *m, const char *dir, char *err, size_t errlen);
int model_load_gguf(struct model *m, const char *path, char *err, size_t errlen);

#endif
