/* A model as the engine sees it: its configuration and its weights, whatever file it came
 * from (Hugging Face directory, GGUF file, or random weights for a config.json).
 *
 * Weights stay in their source dtype and in the file's mapping, never copied by the loader:
 * F32/F16/BF16 as they are, GGUF block quantizations (Q4_0 .. Q8_0, the K-quants Q2_K .. Q6_K,
 * IQ4_NL, IQ4_XS) in their block format. Each backend converts them to what it computes in:
 * the CPU backend keeps quantized matrices in their blocks and dequantizes them as it
 * multiplies (float32 otherwise), the CUDA backend converts everything to bf16. Every matrix
 * is stored row-major as [out_features, in_features], Hugging Face's nn.Linear layout; a
 * quantized row is a whole number of blocks. */
#ifndef SLUICE_WORKER_MODEL_H
#define SLUICE_WORKER_MODEL_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/dummy_hash.h"
#include "worker/model/model_family.h"

enum model_arch { MODEL_ARCH_LLAMA = 0, MODEL_ARCH_QWEN2, MODEL_ARCH_QWEN3 };

/* Element types of tensors. After the plain floats come ggml's block quantizations: a row is
 * a run of blocks of dtype_block_elems() weights in dtype_block_bytes() bytes each. */
enum dtype {
    DTYPE_F32 = 0, DTYPE_F16, DTYPE_BF16,
    DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1, DTYPE_Q8_0,
    DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K,
    DTYPE_IQ4_NL, DTYPE_IQ4_XS,
    /* One byte a weight with float32 scales beside it (struct tensor's scale): Hugging Face's
     * FP8 checkpoints and --quantization fp8 (worker/model/fp8.c). */
    DTYPE_F8_E4M3, DTYPE_F8_E5M2,
    DTYPE_COUNT
};

enum rope_scaling_type {
    ROPE_SCALING_NONE = 0, ROPE_SCALING_LLAMA3, ROPE_SCALING_LINEAR,
    ROPE_SCALING_DYNAMIC, ROPE_SCALING_YARN, ROPE_SCALING_LONGROPE /* worker/model/model_family.h */
};

#define MODEL_MAX_EOS 8
#define MODEL_MAX_LAYERS 4096

/* Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE; worker/model/model_moe.c): each sparse
 * layer's MLP is n_experts SwiGLU experts of which a router picks top_k per token. The
 * attention around it is the base architecture's (model_config.arch). n_experts 0: dense. */
struct moe_config {
    int n_experts;
    int top_k;
    int expert_intermediate;  /* Qwen's moe_intermediate_size; Mixtral's intermediate_size */
    bool norm_topk_prob;      /* the top-k probabilities renormalised to sum to 1 (Mixtral: always) */
    int shared_intermediate;  /* Qwen2-MoE's shared expert (sigmoid-gated); 0 when none */
    int sparse_step;          /* decoder_sparse_step: layer l is sparse when (l + 1) % step == 0 */
    uint64_t dense_layers[MODEL_MAX_LAYERS / 64]; /* mlp_only_layers, one bit per layer */
};

struct model_config {
    enum model_arch arch;
    char arch_name[64];       /* "LlamaForCausalLM", "Qwen3ForCausalLM", GGUF "llama" ... */
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;             /* hidden_size / n_heads unless config.json says otherwise */
    int vocab_size;
    int max_position;         /* context length */
    float rms_eps;
    float rope_theta;
    struct {
        enum rope_scaling_type type;
        float factor;
        float low_freq_factor;           /* llama3 */
        float high_freq_factor;          /* llama3 */
        int original_max_position;       /* llama3, yarn, longrope */
    } rope_scaling;
    /* true when q/k weights as loaded rotate adjacent pairs (x0,x1),(x2,x3)... as Meta's and
     * GGUF's llama layout does; false for Hugging Face's rotate-half layout (x_i, x_{i+d/2}). */
    bool rope_interleaved;
    bool tie_embeddings;      /* lm_head shares tok_embed */
    bool qkv_bias;            /* Qwen2 */
    bool qk_norm;             /* Qwen3: RMSNorm over each head of q and k before rope */
    int bos_id;               /* -1 when none */
    int eos_ids[MODEL_MAX_EOS];
    int n_eos;
    enum dtype dtype;         /* the checkpoint's (or the dummy's) dtype; F32 for a quantized GGUF */
    struct model_family fam;  /* Gemma, Phi-3, OLMo 2, Granite, sliding windows, rope variants */
    struct moe_config moe;
};

/* The softmax scale of c's attention: the family's (query_pre_attn_scalar, attention_multiplier)
 * or 1 / sqrt(head_dim). */
static inline float model_attn_scale(const struct model_config *c)
{
    return c->fam.attn_scale > 0 ? c->fam.attn_scale : 1.0f / sqrtf((float)c->head_dim);
}

/* A tensor of the checkpoint. data is NULL for --load-format dummy: backends fill such a
 * tensor with model_dummy_value() so that every backend sees the same random weights. */
struct tensor {
    enum dtype dtype;
    int ndim;
    int64_t shape[2];         /* [rows, cols] for matrices, [n] for vectors */
    const void *data;
    uint64_t dummy_id;        /* distinct per tensor, seeds model_dummy_value() */
    /* FP8 tensors only: element (r, c) is fp8 * scale[(r / scale_rows) * ceil(cols / scale_cols)
     * + c / scale_cols] (per tensor: scale_rows = rows, scale_cols = cols; per output channel:
     * 1, cols; DeepSeek's blocks: 128, 128). scale is float32, owned by the model. A dummy FP8
     * tensor (--quantization fp8 of random weights) has no scale: each row is quantized from
     * its random values with its own scale (fp8_quantize_row). */
    const float *scale;
    int64_t scale_rows, scale_cols;
};

struct layer_weights {
    struct tensor attn_norm;                  /* [hidden] */
    struct tensor wq, wk, wv, wo;             /* [n_heads*hd, hidden], [n_kv*hd, hidden] x2, [hidden, n_heads*hd] */
    struct tensor bq, bk, bv;                 /* Qwen2 biases; data NULL and ndim 0 when absent */
    struct tensor q_norm, k_norm;             /* Qwen3: [head_dim]; ndim 0 when absent */
    struct tensor ffn_norm;                   /* [hidden] */
    struct tensor w_gate, w_up;               /* [intermediate, hidden] */
    struct tensor w_down;                     /* [hidden, intermediate] */
    /* model_family.h: o and MLP biases, norms after attention and MLP; ndim 0 when absent
     * (attn_norm and ffn_norm too, for OLMo 2). */
    struct tensor bo, b_gate, b_up, b_down;
    struct tensor post_attn_norm, post_ffn_norm;
    /* The checkpoint's scales for an FP8 KV cache (self_attn.k_scale and v_scale, or the older
     * self_attn.kv_scale for both; worker/backend/kv_dtype.h): K and V are stored as value / scale.
     * 0 when the checkpoint has none. */
    float k_scale, v_scale;
    struct moe_weights *moe;                  /* a sparse layer's experts (model_moe.h), whose w_gate,
                                               * w_up, w_down then have ndim 0; NULL when dense */
};

struct model {
    struct model_config config;
    struct tensor tok_embed;                  /* [vocab, hidden] */
    struct tensor final_norm;                 /* [hidden] */
    struct tensor lm_head;                    /* [vocab, hidden]; same data as tok_embed when tied */
    struct layer_weights *layers;             /* n_layers */
    bool dummy;
    uint64_t dummy_seed;
    /* Where the tokenizer and chat template come from: the model directory or the GGUF file. */
    char path[4096];
    bool is_gguf;
    /* "GPTQ" or "AWQ" when the checkpoint's linear layers were repacked at load into Q4_1 blocks
     * (act-order ones: dequantized; int4_checkpoint.h), which live in memory, not in the file;
     * NULL otherwise. */
    const char *repacked_from;
    void *source;                             /* loader-private: mmaps, owned buffers */
    void *moe_alloc;                          /* model_moe.c's tensors of every sparse layer */
};

enum model_load_format { MODEL_LOAD_AUTO = 0, MODEL_LOAD_DUMMY };

/* Loads a model directory (config.json + safetensors) or a .gguf file. With
 * MODEL_LOAD_DUMMY, path is a directory holding config.json or a config.json itself, and no
 * weight file is read. On failure returns a negative value and writes a message naming the
 * file and the field into err. Reads weights by mmap: no copy for F32/F16/BF16 tensors. */
int model_load(struct model **out, const char *path, enum model_load_format format,
               char *err, size_t errlen);
void model_free(struct model *m);

/* --quantization: none, or fp8 (e4m3 weights, a float32 scale per output channel). */
enum model_quantization { MODEL_QUANT_NONE = 0, MODEL_QUANT_FP8 };
/* Parses --quantization's text; -1 with a message in err for anything else. */
int model_quantization_parse(const char *text, enum model_quantization *out, char *err, size_t errlen);
/* Quantizes the layers' matrices (q, k, v, o, gate, up, down; a mixture-of-experts layer's
 * experts and shared expert; not the embeddings, lm_head, norms, biases, routers or the shared
 * expert's gate, as vLLM does) of an F32/F16/BF16 or dummy model to e4m3 with one scale per
 * output channel. Matrices that are FP8 already stay as they are; GGUF block types are refused
 * with a message in err. worker/model/fp8.c. */
int model_quantize(struct model *m, enum model_quantization q, char *err, size_t errlen);

/* Fills a config from a config.json object (Hugging Face); exposed for tests. */
int model_config_from_json(struct model_config *cfg, const char *json_path, char *err, size_t errlen);

/* The dummy weights' values: uniform in [-scale, scale) from a hash of (seed, id, index), so
 * any backend can fill any part of any tensor and agree with every other. Norm weights are
 * filled with 1.0 + that value instead, so activations stay well scaled. */
float model_dummy_value(uint64_t seed, uint64_t id, uint64_t index);

/* Converts one element of a tensor to float32 (dummy tensors through model_dummy_value; a
 * quantized tensor dequantizes the element's block, so this is for tests, not loops). */
float tensor_get_f32(const struct tensor *t, uint64_t seed, bool is_norm, uint64_t index);
/* Converts a whole tensor (rows*cols or n elements) into dst. */
void tensor_to_f32(const struct tensor *t, uint64_t seed, bool is_norm, float *dst);
/* Converts elements [begin, end) into dst[0 .. end - begin); for a quantized tensor begin
 * and end are multiples of its block (or end is the tensor's size). */
void tensor_range_to_f32(const struct tensor *t, uint64_t seed, bool is_norm, int64_t begin, int64_t end,
                         float *dst);
int64_t tensor_numel(const struct tensor *t);
/* Bytes of one row (of a vector: of the whole vector) in the tensor's dtype. */
size_t tensor_row_bytes(const struct tensor *t);

const char *dtype_name(enum dtype d);
bool dtype_is_quantized(enum dtype d);
/* Weights per block and bytes per block: 1 and the element size for F32/F16/BF16. */
int64_t dtype_block_elems(enum dtype d);
size_t dtype_block_bytes(enum dtype d);
/* The dtype of a ggml tensor type; -1 for a type this project does not read. */
int dtype_from_ggml(uint32_t ggml_type, enum dtype *out);
/* Dequantizes n weights (a multiple of the block) of quantized dtype d from src into dst,
 * bit for bit as the `gguf` Python package's gguf.quants.dequantize does (worker/model/quant.c). */
void model_dequant(enum dtype d, const void *src, float *dst, int64_t n);

#endif
