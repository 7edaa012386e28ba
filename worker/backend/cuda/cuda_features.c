/* The CUDA backend's refusals of what it does not compute (cuda_features.h). The CPU backend
 * computes all of model_family.h; the GPU all of it but OLMo 2's layer (norms after attention
 * and the MLP only, q/k norms over the whole projection). */
#include "worker/backend/cuda/cuda_features.h"

#include <stdio.h>

int cuda_config_supported(const struct model_config *c, char *err, size_t errlen)
{
    const struct model_family *f = &c->fam;
    const char *what = NULL;
    if (f->norms == MODEL_NORMS_POST) what = "norms after attention and MLP only (OLMo 2 layers)";
    else if (f->qk_norm_full) what = "q/k norms over the whole projection (OLMo 2)";
    if (!what) return 0;
    snprintf(err, errlen,
             "cuda: %s uses %s, which the CUDA backend does not compute yet; serve it with --device cpu",
             c->arch_name, what);
    return -1;
}
