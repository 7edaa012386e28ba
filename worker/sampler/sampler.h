/* The CPU reference sampler: turns one row of logits into a token, its logprob and the top
 * logprobs. The CPU backend calls it directly; the CUDA backend reimplements it in a kernel and
 * must follow the same definition, written out here.
 *
 * Order of operations for one row (vocab floats, raw logits from the model):
 *  1. Logprobs from the RAW logits: lse = log(sum exp(l)), logprob(t) = l[t] - lse; top-N
 *     (N = sampling->logprobs, 0..20, none when -1) are the N largest raw logits, ties to the
 *     lower id, in descending order. out->logprob is always filled.
 *  2. Penalties on a copy:
 *     - repetition p (!= 1) over every distinct token of history (prompt + output), as Hugging
 *       Face: l = l > 0 ? l / p : l * p (applied once per distinct token);
 *     - presence and frequency over the output tokens (the last n_output of history), as
 *       OpenAI: l -= count * frequency + (count > 0) * presence;
 *     - logit_bias (sampling->bias_ids / bias_values): l += bias, after the penalties;
 *     - suppressed tokens (seq->suppress, min_tokens): l = -inf.
 *  2b. The mask (seq->allowed, structured output): tokens whose bit is clear get -inf in the
 *     penalized copy, so steps 3-5 see only the allowed ones (logprobs stay those of step 1).
 *     When no allowed token has a finite logit, the token is the lowest allowed id; when none
 *     is allowed at all, sampling fails.
 *  3. temperature <= SAMPLER_GREEDY_EPS: greedy, argmax of the penalized logits, ties to the
 *     lowest id. No random number is used.
 *  4. Otherwise w[i] = expf(l[i] / T - max_j(l[j] / T)) (so the top weight is exactly 1), and
 *     tokens are ranked by (w descending, id ascending):
 *     - top_k (> 0 and < vocab): keep the k best ranked;
 *     - top_p (< 1): of those, keep the shortest ranked prefix whose weight reaches
 *       top_p * (sum of the kept weights): token r is kept when the sum of the weights ranked
 *       before it is < top_p * total; the first is always kept;
 *     - min_p (> 0): also drop tokens with w < min_p (relative to the top weight, which is 1);
 *     - tokens with w == 0 (a -inf logit, or underflow) are never drawn.
 *  5. Draw: u = sampler_uniform(seed, n_generated) in [0, 1); S = sum of kept weights taken in
 *     ascending id order (double); the token is the lowest kept id whose running sum (same
 *     order, double) exceeds u * S; rounding fallback: the highest kept id.
 *
 * The random number, bit for bit (all arithmetic modulo 2^64):
 *     mix(z) = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
 *              z ^= z >> 31   (the splitmix64 finalizer)
 *     G = 0x9E3779B97F4A7C15
 *     h = mix(mix(seed + G) + (n_generated + 1) * G)
 *     u = (float)(h >> 40) * 2^-24     (exact: 24 random bits, u in [0, 1 - 2^-24])
 * so a draw depends only on the request's seed and which output token it is, never on the
 * batch. */
#ifndef SLUICE_WORKER_SAMPLER_H
#define SLUICE_WORKER_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "worker/backend/backend.h"

#define SAMPLER_GREEDY_EPS 1e-5f

uint64_t sampler_mix64(uint64_t z);
/* The draw for output token n_generated (0 for the first) of a request seeded with seed. */
float sampler_uniform(uint64_t seed, uint64_t n_generated);

/* Floats of scratch that sampler_sample needs for a vocabulary of this size (2 * vocab). The
 * scratch must come from malloc/calloc (part of it is used as int32_t), one per thread. */
size_t sampler_scratch_floats(int vocab);

/* Step 2 alone, for tests and as the CUDA kernel's reference: writes the penalized logits
 * into scratch[0 .. vocab) (scratch as for sampler_sample). */
void sampler_penalize(const float *logits, int vocab, const struct batch_seq *seq, float *scratch);

/* A prompt token's logprob (batch_seq.lp_*): step 1 alone, for the token target (in the
 * vocabulary), with rank = 1 + the tokens whose raw logit is larger, and n_top (0..20)
 * alternatives. Returns 0, or negative on bad arguments. */
int sampler_prompt_logprob(const float *logits, int vocab, int32_t target, int n_top, struct prompt_logprob *out);

/* Samples one token from logits (vocab floats, not modified) for seq (its sampling params,
 * n_generated and history). Returns 0, or negative when vocab < 1 or seq->sampling is NULL. */
int sampler_sample(const float *logits, int vocab, const struct batch_seq *seq, float *scratch,
                   struct sample_result *out);

#endif
