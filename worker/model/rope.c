/* Rope frequencies of every variant, as transformers computes them (rope.h). */
#include "worker/model/rope.h"

#include <math.h>
#include <stdlib.h>

void rope_static_freqs(const struct model_config *c, float *inv_freq)
{
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float f = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope_scaling.type == ROPE_SCALING_LINEAR) {
            f /= c->rope_scaling.factor;
        } else if (c->rope_scaling.type == ROPE_SCALING_LLAMA3) {
            /* Meta's Llama 3.1 scaling: long wavelengths slowed by factor, short ones kept,
             * the band between blended smoothly. */
            float factor = c->rope_scaling.factor;
            float lo = c->rope_scaling.low_freq_factor, hi = c->rope_scaling.high_freq_factor;
            float old_ctx = (float)c->rope_scaling.original_max_position;
            float low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
            float wavelen = 2.0f * (float)M_PI / f;
            if (wavelen > low_freq_wavelen) {
                f = f / factor;
            } else if (wavelen >= high_freq_wavelen) {
                float smooth = (old_ctx / wavelen - lo) / (hi - lo);
                f = (1.0f - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}


/* 1 / base^(2i / dim) in float32: transformers' `base ** (arange(0, dim, 2).float() / dim)`. */
static void default_freqs(float base, int head_dim, float *out)
{
    for (int i = 0; i < head_dim / 2; i++) out[i] = 1.0f / powf(base, (float)(2 * i) / (float)head_dim);
}

static double yarn_correction_dim(double rotations, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (rotations * 2 * M_PI))) / (2 * log(base));
}

/* _compute_yarn_parameters: frequencies blended between interpolated (divided by factor) and
 * extrapolated (kept) by a linear ramp over the dimensions between the correction bounds. */
static void yarn_freqs(const struct model_config *c, float *out)
{
    const struct model_family *f = &c->fam;
    int dim = c->head_dim, half = dim / 2;
    double base = c->rope_theta, orig = c->rope_scaling.original_max_position;
    double low = yarn_correction_dim(f->yarn_beta_fast, dim, base, orig);
    double high = yarn_correction_dim(f->yarn_beta_slow, dim, base, orig);
    if (f->yarn_truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    float factor = c->rope_scaling.factor;
    for (int i = 0; i < half; i++) {
        float pos_freq = powf((float)base, (float)(2 * i) / (float)dim);
        float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / (factor * pos_freq);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float extra_factor = 1.0f - ramp;
        out[i] = interpolation * (1.0f - extra_factor) + extrapolation * extra_factor;
    }
}

static void longrope_freqs(const struct model_config *c, const float *ext, float *out)
{
    for (int i = 0; i < c->head_dim / 2; i++)
        out[i] = 1.0f / (ext[i] * powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim));
}

/* _compute_dynamic_ntk_parameters at seq_len (above max_position_embeddings), in float32 as
 * transformers computes it from the tensor seq_len. */
static void dynamic_freqs(const struct rope *r, int head_dim, int32_t seq_len, float *out)
{
    float ratio = r->factor * (float)seq_len / (float)r->threshold - (r->factor - 1.0f);
    float base = r->theta * powf(ratio, (float)((double)head_dim / (double)(head_dim - 2)));
    default_freqs(base, head_dim, out);
}

int rope_init(struct rope *r, const struct model_config *c)
{
    int half = c->head_dim / 2;
    r->half = half;
    r->type = c->rope_scaling.type;
    r->theta = c->rope_theta;
    r->factor = c->rope_scaling.factor;
    r->attn_factor = c->fam.rope_attn_factor > 0 ? c->fam.rope_attn_factor : 1.0f;
    r->inv_freq = malloc((size_t)half * sizeof(float));
    if (!r->inv_freq) return -1;
    switch (r->type) {
    case ROPE_SCALING_YARN:
        yarn_freqs(c, r->inv_freq);
        break;
    case ROPE_SCALING_LONGROPE:
        r->threshold = c->rope_scaling.original_max_position;
        r->inv_freq_long = malloc((size_t)half * sizeof(float));
        if (!r->inv_freq_long) return -1;
        longrope_freqs(c, c->fam.rope_short, r->inv_freq);
        longrope_freqs(c, c->fam.rope_long, r->inv_freq_long);
        break;
    case ROPE_SCALING_DYNAMIC: {
        /* At load transformers computes them for seq_len = max_position_embeddings, in double
         * (a Python int): the base times ((factor * L / L) - (factor - 1)) ** ..., the base
         * itself for every usual factor. */
        r->threshold = c->max_position;
        double ratio = (double)r->factor * c->max_position / c->max_position - ((double)r->factor - 1.0);
        double base = (double)c->rope_theta * pow(ratio, (double)c->head_dim / (c->head_dim - 2));
        default_freqs((float)base, c->head_dim, r->inv_freq);
        break;
    }
    default:
        rope_static_freqs(c, r->inv_freq);
        break;
    }
    if (c->fam.local_rope_theta > 0) {
        r->inv_freq_local = malloc((size_t)half * sizeof(float));
        if (!r->inv_freq_local) return -1;
        default_freqs(c->fam.local_rope_theta, c->head_dim, r->inv_freq_local);
    }
    return 0;
}

void rope_free(struct rope *r)
{
    free(r->inv_freq);
    free(r->inv_freq_long);
    free(r->inv_freq_local);
    r->inv_freq = r->inv_freq_long = r->inv_freq_local = NULL;
}

const float *rope_step_freqs(const struct rope *r, int32_t seq_len, float *scratch)
{
    if (r->type == ROPE_SCALING_LONGROPE) return seq_len > r->threshold ? r->inv_freq_long : r->inv_freq;
    if (r->type == ROPE_SCALING_DYNAMIC && seq_len > r->threshold) {
        dynamic_freqs(r, 2 * r->half, seq_len, scratch);
        return scratch;
    }
    return r->inv_freq;
}

void rope_angles(const struct rope *r, const float *inv_freq, int32_t pos, float *cos_t, float *sin_t)
{
    /* Angles as Hugging Face computes them: float32 position times float32 frequency. */
    for (int k = 0; k < r->half; k++) {
        float a = (float)pos * inv_freq[k];
        cos_t[k] = cosf(a);
        sin_t[k] = sinf(a);
        if (r->attn_factor != 1.0f) {
            cos_t[k] *= r->attn_factor;
            sin_t[k] *= r->attn_factor;
        }
    }
}
