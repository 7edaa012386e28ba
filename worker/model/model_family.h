/* What the dense families beyond Llama and Qwen change in a decoder layer (Gemma 2 and 3,
 * Phi-3, OLMo 2, Granite, Mistral's sliding window, Llama's biases) and the rope variants that
 * need more than a factor (dynamic NTK, YaRN, LongRoPE). Part of struct model_config (its
 * member fam); filled by worker/model/config_family.c from config.json. Zero means "as Llama":
 * a config that sets none of these computes exactly what it did before they existed. */
#ifndef SLUICE_WORKER_MODEL_FAMILY_H
#define SLUICE_WORKER_MODEL_FAMILY_H

#include <stdbool.h>
#include <stdint.h>

#define MODEL_MAX_LAYERS 4096
/* LongRoPE's per-frequency factors: head_dim / 2 of them, head_dim at most twice this. */
#define MODEL_MAX_ROPE_FACTORS 256

enum model_act { MODEL_ACT_SILU = 0, MODEL_ACT_GELU_TANH };

/* Where a layer's RMSNorms sit. PRE: before attention and MLP (Llama). SANDWICH: before and
 * after each (Gemma 2 and 3). POST: after each only (OLMo 2). */
enum model_norms { MODEL_NORMS_PRE = 0, MODEL_NORMS_SANDWICH, MODEL_NORMS_POST };

struct model_family {
    bool o_bias;              /* o_proj has a bias (attention_bias; q/k/v biases are qkv_bias) */
    bool mlp_bias;            /* gate, up and down have biases */
    bool fused_qkv;           /* the checkpoint stores qkv_proj and gate_up_proj (Phi-3) */
    enum model_act act;
    enum model_norms norms;
    bool norm_plus_one;       /* every RMSNorm scales by (1 + w) (Gemma) */
    bool qk_norm_full;        /* q/k norms over the whole projection, not per head (OLMo 2) */
    float embed_scale;        /* embeddings times this; 0: not scaled */
    float attn_scale;         /* softmax scale; 0: 1 / sqrt(head_dim) */
    float residual_scale;     /* sublayer outputs times this before the residual add; 0: none */
    float logits_divisor;     /* logits divided by this (Granite's logits_scaling); 0: none */
    float attn_softcap;       /* scores = cap * tanh(scores / cap); 0: none */
    float final_softcap;      /* the same on the logits */
    /* Sliding-window attention: a query at position p sees keys p - sliding_window + 1 .. p,
     * in the layers whose bit is set in layer_sliding. */
    int sliding_window;
    bool all_sliding;         /* every layer slides: K/V older than the window is never read */
    uint8_t layer_sliding[MODEL_MAX_LAYERS / 8];
    /* Gemma 3: sliding layers rotate with this theta and no scaling; 0: as the others. */
    float local_rope_theta;
    /* Rope variants (model_config.rope_scaling.type DYNAMIC, YARN, LONGROPE). */
    float yarn_beta_fast, yarn_beta_slow;
    bool yarn_truncate;
    float rope_attn_factor;   /* cos and sin times this (YaRN, LongRoPE); 0 or 1: none */
    int n_rope_factors;       /* LongRoPE: head_dim / 2 */
    float rope_short[MODEL_MAX_ROPE_FACTORS], rope_long[MODEL_MAX_ROPE_FACTORS];
};

static inline bool model_layer_sliding(const struct model_family *f, int layer)
{
    return f->sliding_window > 0 && (f->layer_sliding[layer / 8] >> (layer % 8) & 1);
}

#endif
