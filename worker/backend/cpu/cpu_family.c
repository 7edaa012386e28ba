/* Activations, soft-capping and logit scaling of the families (cpu_family.h). */
#include "worker/backend/cpu/cpu_family.h"

#include <math.h>

void cpu_glu(enum model_act act, const float *g, const float *u, float *o, int64_t n)
{
    if (act == MODEL_ACT_GELU_TANH) {
        /* torch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
        const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
        for (int64_t i = 0; i < n; i++) {
            float x = g[i], inner = beta * (x + kappa * (x * x * x));
            o[i] = 0.5f * x * (1.0f + tanhf(inner)) * u[i];
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_logits_finish(const struct model_family *f, float *logits, int64_t n)
{
    if (f->logits_divisor != 0)
        for (int64_t i = 0; i < n; i++) logits[i] /= f->logits_divisor;
    if (f->final_softcap > 0)
        for (int64_t i = 0; i < n; i++) logits[i] = cpu_softcap(logits[i], f->final_softcap);
}
