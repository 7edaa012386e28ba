/* The CUDA backend's refusals of what it does not compute (cuda_features.h). The CPU backend
 * computes all of model_family.h. The CUDA backend has code for all of it but OLMo 2's layer
 * (norms after attention and the MLP only, q/k norms over the whole projection); until that code
 * has been checked on a GPU (tests/gpu/test_families.c), it runs only with --cuda-options
 * families=1, and the Llama/Qwen layer (pre-norms, SwiGLU, q/k/v biases, per-head q/k norms, rope
 * default, linear and llama3) is what it takes otherwise. */
#include "worker/backend/cuda/cuda_features.h"

#include <stdio.h>

/* The first addition to the Llama/Qwen layer that c asks for, or NULL. */
static const char *family_addition(const struct model_config *c)
{
    const struct model_family *f = &c->fam;
    if (c->rope_scaling.type == ROPE_SCALING_DYNAMIC) return "rope_scaling type dynamic";
    if (c->rope_scaling.type == ROPE_SCALING_YARN) return "rope_scaling type yarn";
    if (c->rope_scaling.type == ROPE_SCALING_LONGROPE) return "rope_scaling type longrope";
    if (f->o_bias) return "attention_bias (the o_proj bias)";
    if (f->mlp_bias) return "mlp_bias";
    if (f->act != MODEL_ACT_SILU) return "hidden_activation gelu_pytorch_tanh (GeGLU)";
    if (f->norms != MODEL_NORMS_PRE) return "norms after attention and MLP (Gemma 2/3 layers)";
    if (f->norm_plus_one) return "RMSNorm scaled by (1 + weight) (Gemma)";
    if (f->embed_scale != 0) return "scaled embeddings (Gemma's sqrt(hidden_size), Granite's embedding_multiplier)";
    if (f->attn_scale != 0)
        return "an attention scale other than 1/sqrt(head_dim) (query_pre_attn_scalar, attention_multiplier)";
    if (f->residual_scale != 0) return "residual_multiplier";
    if (f->logits_divisor != 0) return "logits_scaling";
    if (f->attn_softcap != 0) return "attn_logit_softcapping";
    if (f->final_softcap != 0) return "final_logit_softcapping";
    if (f->local_rope_theta != 0) return "a separate rope theta for local layers (rope_local_base_freq)";
    /* A window at least as long as the context changes nothing. */
    if (f->sliding_window > 0 && f->sliding_window < c->max_position) return "sliding_window attention";
    return NULL;
}

int cuda_config_supported(const struct model_config *c, bool families, char *err, size_t errlen)
{
    const struct model_family *f = &c->fam;
    const char *what = NULL;
    if (f->norms == MODEL_NORMS_POST) what = "norms after attention and MLP only (OLMo 2 layers)";
    else if (f->qk_norm_full) what = "q/k norms over the whole projection (OLMo 2)";
    if (what) {
        snprintf(err, errlen,
                 "cuda: %s uses %s, which the CUDA backend does not compute yet; serve it with --device cpu",
                 c->arch_name, what);
        return -1;
    }
    if (families || !(what = family_addition(c))) return 0;
    snprintf(err, errlen,
             "cuda: %s uses %s, which the CUDA backend computes only with --cuda-options families=1 (not yet "
             "checked on a GPU); serve it with --device cpu",
             c->arch_name, what);
    return -1;
}
