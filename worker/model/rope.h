/* The rotary embedding of every rope variant of model_config, for every backend: the inverse
 * frequencies computed as transformers' modeling_rope_utils computes them (float32 where it
 * works in float32), and the choice the variants that depend on the sequence's length make
 * (dynamic NTK, LongRoPE) taken per sequence and step. */
#ifndef SLUICE_WORKER_MODEL_ROPE_H
#define SLUICE_WORKER_MODEL_ROPE_H

#include <stdint.h>

#include "worker/model/model.h"

struct rope {
    int half;                /* head_dim / 2 */
    float *inv_freq;         /* the frequencies of short sequences (all of them when static) */
    float *inv_freq_long;    /* LongRoPE beyond the original context; NULL otherwise */
    float *inv_freq_local;   /* Gemma 3's sliding layers; NULL when they rotate as the others */
    float attn_factor;       /* cos and sin times this (YaRN, LongRoPE); 1 otherwise */
    enum rope_scaling_type type;
    int32_t threshold;       /* dynamic: max_position_embeddings; longrope: the original context */
    float theta, factor;
};

/* The frequencies of the variants that need no sequence length (default, linear, llama3):
 * head_dim / 2 floats. */
void rope_static_freqs(const struct model_config *c, float *inv_freq);

/* Every table c needs (-1: out of memory). */
int rope_init(struct rope *r, const struct model_config *c);
void rope_free(struct rope *r);

/* The frequencies a step of one sequence uses, seq_len being the sequence's known length (its
 * whole prompt while it prefills, in however many chunks; its length so far while it decodes):
 * as transformers' dynamic_rope_update decides for a forward call whose largest position is
 * seq_len - 1, which for one sequence run by Hugging Face's generate is exactly its choice. For
 * the dynamic variant they are computed into scratch (half floats). */
const float *rope_step_freqs(const struct rope *r, int32_t seq_len, float *scratch);

/* cos and sin (half each) of position pos, times the attention factor. */
void rope_angles(const struct rope *r, const float *inv_freq, int32_t pos, float *cos_t, float *sin_t);

#endif
