/* The CUDA backend's mixture-of-experts sizes (cuda_moe_plan.h). Plain C: built without nvcc
 * too, for its unit test. */
#include "worker/backend/cuda/cuda_moe_plan.h"

#include <stdio.h>
#include <string.h>

#include "kernels/sk_shapes.h"
#include "worker/backend/cuda/cuda_plan.h"

int cuda_moe_supported(const struct model_config *m, char *err, size_t errlen)
{
    const struct moe_config *c = &m->moe;
    const char *why = NULL;
    if (c->n_experts <= 0) return 0;
    if (c->n_experts > SK_MOE_MAX_EXPERTS) why = "more than 256 experts (the router kernel's limit)";
    else if (c->top_k < 1 || c->top_k > SK_MOE_MAX_TOP_K || c->top_k > c->n_experts)
        why = "a top-k outside 1..16 (and at most the experts)";
    else if (m->hidden_size % 8 || c->expert_intermediate % 8 || c->shared_intermediate % 8)
        why = "hidden, expert or shared-expert sizes not multiples of 8 (the expert kernels' 16-byte rows)";
    if (!why) return 0;
    if (err)
        snprintf(err, errlen,
                 "cuda: %s is a mixture-of-experts model (%d experts, top %d, hidden %d, expert intermediate %d, "
                 "shared %d) with %s; use --device cpu",
                 m->arch_name, c->n_experts, c->top_k, m->hidden_size, c->expert_intermediate,
                 c->shared_intermediate, why);
    return -1;
}

struct cuda_moe_sizes cuda_moe_sizes(const struct model_config *m, int max_batch_tokens)
{
    const struct moe_config *c = &m->moe;
    struct cuda_moe_sizes s;
    memset(&s, 0, sizeof s);
    s.chunk = max_batch_tokens < CUDA_MOE_CHUNK ? max_batch_tokens : CUDA_MOE_CHUNK;
    if (s.chunk < 1) s.chunk = 1;
    s.pairs = (int64_t)s.chunk * c->top_k;
    s.logits = (int64_t)s.chunk * c->n_experts;
    s.act = s.pairs * c->expert_intermediate;
    s.y_exp = s.pairs * m->hidden_size;
    if (c->shared_intermediate > 0) {
        s.shared_act = (int64_t)s.chunk * c->shared_intermediate;
        s.shared_y = (int64_t)s.chunk * m->hidden_size;
    }
    /* fp32: logits, weight, y_exp, shared_y, shared gate; int32: choice, order, pos, and
     * seg and active (n_experts + 1 each); bf16: act, shared_act. */
    s.bytes = 4 * (size_t)(s.logits + s.pairs + s.y_exp + s.shared_y + s.chunk) +
              4 * (size_t)(3 * s.pairs + 2 * (c->n_experts + 1)) + 2 * (size_t)(s.act + s.shared_act);
    return s;
}

bool cuda_moe_fp8_takes(const struct tensor *ts, int n, int64_t k_in)
{
    if (n < 1 || k_in % 16) return false;
    for (int i = 0; i < n; i++)
        if (!cuda_plan_fp8_row_scales(&ts[i]) || ts[i].shape[1] != k_in) return false;
    return true;
}

/* Bytes of an expert (gate, up and down of inter channels over hidden): bf16, or e4m3 codes and
 * a float32 scale for each of its 2 inter + hidden rows. */
static double expert_bytes(double hidden, double inter, bool fp8)
{
    return fp8 ? 3.0 * inter * hidden + 4.0 * (2.0 * inter + hidden) : 2.0 * 3.0 * inter * hidden;
}

double cuda_moe_layer_bytes(const struct model_config *m, int n_distinct, bool fp8)
{
    const struct moe_config *c = &m->moe;
    const double H = m->hidden_size;
    double b = 2.0 * (double)c->n_experts * H + n_distinct * expert_bytes(H, c->expert_intermediate, fp8);
    if (c->shared_intermediate > 0) b += expert_bytes(H, c->shared_intermediate, fp8) + 2.0 * H;
    return b;
}

int cuda_moe_distinct(const int32_t *choice, int64_t n, int n_experts)
{
    unsigned char seen[SK_MOE_MAX_EXPERTS] = {0};
    int d = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t e = choice[i];
        if (e < 0 || e >= n_experts || e >= SK_MOE_MAX_EXPERTS || seen[e]) continue;
        seen[e] = 1;
        d++;
    }
    return d;
}
