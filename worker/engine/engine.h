/* The engine: one thread per backend that runs continuous batching over a paged KV cache.
 *
 * The loop thread submits requests and aborts (thread-safe, never blocking on a step); the
 * engine thread schedules a ragged batch each step, runs the backend, applies stops, and
 * hands events back to the loop through a queue and uv_async_send, so on_event always runs
 * on the loop thread. */
#ifndef SLUICE_WORKER_ENGINE_H
#define SLUICE_WORKER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "worker/backend/backend.h"
#include "worker/grammar/grammar.h"
#include "worker/tokenizer/tokenizer.h"

#define ENGINE_MAX_STOPS 16

struct engine;

enum finish_reason {
    FINISH_NONE = 0,
    FINISH_STOP,     /* EOS or a stop string / stop token */
    FINISH_LENGTH,   /* max_tokens or the context length */
    FINISH_ABORT,    /* aborted by the caller */
    FINISH_ERROR,    /* backend failure; see the event's error */
};
const char *finish_reason_name(enum finish_reason r); /* "stop", "length", "abort", "error" */

/* What a request asks: a generation (ENGINE_POOL_NONE), or an embedding of its prompt pooled
 * from the final hidden states (prefill only, nothing sampled), L2-normalised. */
enum engine_pooling {
    ENGINE_POOL_NONE = 0,
    ENGINE_POOL_LAST,  /* the last prompt token's hidden state */
    ENGINE_POOL_MEAN,  /* the mean over every prompt token's */
};

struct engine_request {
    uint64_t id;                  /* chosen by the caller, unique among live requests */
    int32_t *prompt;              /* malloc'd; the engine takes ownership */
    int32_t n_prompt;
    struct sampling_params sampling;
    bool has_seed;                /* false: the engine draws a seed */
    int32_t max_tokens;           /* >= 1; clipped to the context length */
    bool ignore_eos;
    int32_t n_stop;
    char *stop[ENGINE_MAX_STOPS]; /* malloc'd strings; ownership moves */
    int32_t n_stop_ids;
    int32_t stop_ids[ENGINE_MAX_STOPS];
    bool skip_special;            /* in the streamed text (default true) */
    /* OpenAI's logit_bias: n_bias distinct ids in the vocabulary and their biases in [-100, 100]
     * (malloc'd, owned). Refused on a backend without supports_logit_bias. */
    int32_t n_bias;
    int32_t *bias_ids;
    float *bias_values;
    /* EOS and stop token ids are not sampled while fewer than min_tokens tokens are generated
     * (the sampler excludes them), and stop strings are matched from the min_tokens-th token's
     * text on, as vLLM does. Refused on a backend without supports_suppress. */
    int32_t min_tokens;
    /* The stop string, stop token or EOS that ends the generation stays in its text (vLLM's
     * include_stop_str_in_output; the EOS text is empty while skip_special holds). */
    bool include_stop_str;
    /* The first event with a token also carries every prompt token's logprob (from the second
     * token on: n_prompt - 1 of them) with prompt_top_logprobs (0..20) alternatives each. The
     * prompt is then computed whole, never mapped from the prefix cache. Refused on a backend
     * without supports_prompt_logprobs. */
    bool prompt_logprobs;
    int32_t prompt_top_logprobs;
    /* An embedding request (not ENGINE_POOL_NONE): the prompt is computed and pooled, nothing
     * is generated; its one event has the embedding. Refused on a backend without
     * supports_hidden_states. */
    enum engine_pooling pooling;
    /* Prefix caching: whatever besides the tokens changes their K/V (an adapter, images), so
     * that only requests with the same salt share cached blocks. 0: nothing. */
    uint64_t cache_salt;
    /* Structured output: the output follows this grammar (one reference, which the engine
     * takes; NULL: none). Each step the engine asks the sequence's matcher for the mask of
     * allowed tokens, which the backend's sampler applies (backend.h, batch_seq.allowed); a
     * sequence ends (stop) as soon as nothing but the end can follow. Its steps are never
     * overlapped: the mask needs the last token. Refused on a backend without
     * supports_token_mask. */
    struct grammar_compiled *grammar;
};

struct engine_token {
    int32_t id;
    float logprob;
    int32_t n_top;
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_TOP_LOGPROBS];
};

/* One event per request per step at most, plus the final one. Pointers are valid during the
 * callback only. */
struct engine_event {
    uint64_t id;
    int32_t n_tokens;                 /* tokens generated this step (usually 1) */
    const struct engine_token *tokens;
    const char *text;                 /* new final text (stop strings never appear) */
    size_t text_len;
    enum finish_reason finish;        /* FINISH_NONE until the last event */
    const char *error;                /* FINISH_ERROR: what went wrong */
    int32_t prompt_tokens;            /* usage, on every event */
    int32_t completion_tokens;
    double first_token_ms;            /* from submit to the first token, on the last event */
    double time_ms;                   /* CLOCK_MONOTONIC, when the engine thread made the event:
                                         the loop may take several steps' events in one pass */
    /* prompt_logprobs: on the first event with a token, the logprobs of prompt tokens 1 ..
     * n_prompt - 1 (the first token has none), n_prompt - 1 of them. */
    int32_t n_prompt_logprobs;
    const struct prompt_logprob *prompt_logprobs;
    /* Embedding requests: on their last event (finish "stop"), the embedding, L2-normalised. */
    int32_t embedding_dim;
    const float *embedding;
};

typedef void (*engine_event_fn)(const struct engine_event *ev, void *user);

struct engine_options {
    int32_t max_num_seqs;           /* running sequences at most */
    int32_t max_num_batched_tokens; /* tokens per step at most (prefill is chunked to fit) */
    int32_t max_model_len;          /* context length */
    uint64_t seed;                  /* seeds requests that bring none */
    /* Steps overlap (the next one is queued before the last one's tokens are taken) where the
     * backend's submit returns before the step has run. Tests set overlap_always to overlap them
     * over any backend; overlap_never (--no-overlap-steps) turns overlapping off, to measure what
     * it buys or to rule it out. */
    bool overlap_always;
    /* Prefix caching is on unless this is set (--no-enable-prefix-caching). */
    bool no_prefix_caching;
    /* Cache only prompt blocks (sched_options.prefix_cache_prompt_only): for a backend whose
     * decode steps compute K/V other than a prefill would, in the last bits, when outputs must
     * not depend on what the cache holds (the CUDA backend under --deterministic). */
    bool prefix_cache_prompt_only;
    bool overlap_never;
};

struct engine_stats {
    int32_t waiting, running;       /* sequences */
    int32_t kv_blocks_total, kv_blocks_free;
    uint64_t steps, preemptions, tokens_generated, prompt_tokens;
    uint64_t overlapped_steps;      /* steps queued before the host took the previous one's tokens */
    /* Prefix cache: on or off; tokens looked up at admission and found cached (a preempted
     * sequence's recompute counts again); blocks holding reusable prefixes; blocks evicted. */
    bool prefix_caching;
    uint64_t prefix_query_tokens, prefix_hit_tokens;
    int32_t kv_blocks_cached;
    uint64_t prefix_evictions;
    /* Structured output: token masks made (one per constrained row a step) and the host time
     * spent making them. */
    uint64_t grammar_masks;
    double grammar_mask_seconds;
    bool failed;                    /* the backend reported an error; no more steps */
    char error[512];
};

/* The model's own context on this backend: max_position_embeddings, times the factor for
 * dynamic NTK (which exists to run past it, as vLLM assumes). */
int64_t engine_model_context(const struct backend *backend);
/* Whether every layer of the model slides and a lone sequence's window and largest step
 * (step_tokens) always fit the KV cache: the scheduler then frees the blocks behind the
 * window, and the context is not bounded by the cache's size. */
bool engine_windowed(const struct backend *backend, int32_t step_tokens);

/* Starts the engine thread. The engine uses but does not own backend and tokenizer. */
int engine_create(struct engine **out, struct backend *backend, const struct tokenizer *tok,
                  const struct engine_options *opt, uv_loop_t *loop, engine_event_fn on_event,
                  void *user);
/* Takes ownership of req (and frees it when done). Returns 0, or negative when the engine has
 * failed or is stopping (req is freed). */
int engine_submit(struct engine *e, struct engine_request *req);
/* The request ends with FINISH_ABORT and its KV blocks are freed at the next step. */
void engine_abort(struct engine *e, uint64_t id);
/* Ends every request (those submitted before this call included) with FINISH_ERROR and
 * message as the event's error, and refuses later submits: a worker whose drain ran out of
 * time ends what is left with an answer saying why. */
void engine_abort_all(struct engine *e, const char *message);
void engine_get_stats(struct engine *e, struct engine_stats *out);
/* Stops the thread (in-flight requests end with FINISH_ABORT events that are not delivered)
 * and frees the engine. */
void engine_free(struct engine *e);

void engine_request_free(struct engine_request *req);

#endif
