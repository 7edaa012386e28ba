/* Mixture-of-experts models: which layers are sparse, their expert tensors, and how the
 * loaders find them (Hugging Face's per-expert tensors; llama.cpp's stacked ones in GGUF).
 * The configuration is struct moe_config in model.h. */
#ifndef SLUICE_WORKER_MODEL_MOE_H
#define SLUICE_WORKER_MODEL_MOE_H

#include <stdbool.h>
#include <stddef.h>

#include "worker/model/model.h"

/* One sparse layer's MLP. Each expert is a SwiGLU MLP of expert_intermediate:
 * down(silu(gate x) * up x). */
struct moe_weights {
    struct tensor router;                 /* [n_experts, hidden] */
    struct tensor *gate, *up;             /* n_experts each: [expert_intermediate, hidden] */
    struct tensor *down;                  /* n_experts: [hidden, expert_intermediate] */
    /* Qwen2-MoE: a shared expert every token goes through, scaled by sigmoid(shared_gate x);
     * ndim 0 when the config has none. */
    struct tensor shared_gate_proj, shared_up, shared_down; /* [shared_inter, hidden] x2, [hidden, shared_inter] */
    struct tensor shared_expert_gate;     /* [1, hidden] */
};

/* Whether layer l's MLP is sparse (Hugging Face's rule: not in mlp_only_layers and
 * (l + 1) % decoder_sparse_step == 0). Always false for a dense model. */
bool model_layer_is_moe(const struct model_config *c, int layer);

#endif
