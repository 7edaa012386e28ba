/* The CUDA backend's refusals of what it does not compute (cuda_features.h). The CPU backend
 * computes all of model_family.h; the GPU so far the Llama/Qwen layer: pre-norms, SwiGLU,
 * q/k/v biases, per-head q/k norms, rope default, linear and llama3. */
#include "worker/backend/cuda/cuda_features.h"

#include <stdio.h>

int cuda_config_supported(const struct model_config *c, char *err, size_t errlen)
{
    const struct model_family *f = &c->fam;
    const char *what = NULL;
    if (c->rope_scaling.type == ROPE_SCALING_DYNAMIC) what = "rope_scaling type dynamic";
    else if (c->rope_scaling.type == ROPE_SCALING_YARN) what = "rope_scaling type yarn";
    else if (c->rope_scaling.type == ROPE_SCALING_LONGROPE) what = "rope_scaling type longrope";
    else if (f->o_bias) what = "attention_bias (the o_proj bias)";
    else if (f->mlp_bias) what = "mlp_bias";
    else if (f->act != MODEL_ACT_SILU) what = "hidden_activation gelu_pytorch_tanh (GeGLU)";
    else if (f->norms != MODEL_NORMS_PRE) what = "norms after attention and MLP (Gemma 2/3 and OLMo 2 layers)";
    else if (f->norm_plus_one) what = "RMSNorm scaled by (1 + weight) (Gemma)";
    else if (f->qk_norm_full) what = "q/k norms over the whole projection (OLMo 2)";
    else if (f->embed_scale != 0) what = "scaled embeddings (Gemma's sqrt(hidden_size), Granite's embedding_multiplier)";
    else if (f->attn_scale != 0)
        what = "an attention scale other than 1/sqrt(head_dim) (query_pre_attn_scalar, attention_multiplier)";
    else if (f->residual_scale != 0) what = "residual_multiplier";
    else if (f->logits_divisor != 0) what = "logits_scaling";
    else if (f->attn_softcap != 0) what = "attn_logit_softcapping";
    else if (f->final_softcap != 0) what = "final_logit_softcapping";
    else if (f->local_rope_theta != 0) what = "a separate rope theta for local layers (rope_local_base_freq)";
    /* A window at least as long as the context changes nothing. */
    else if (f->sliding_window > 0 && f->sliding_window < c->max_position) what = "sliding_window attention";
    if (!what) return 0;
    snprintf(err, errlen,
             "cuda: %s uses %s, which the CUDA backend does not compute yet; serve it with --device cpu",
             c->arch_name, what);
    return -1;
}
