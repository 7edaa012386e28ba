/* The scheduler: which sequences run in the next step and with how many tokens each. Pure
 * bookkeeping over the KV block allocator, no threads and no backend, so it can be tested alone.
 *
 * A sequence holds all its tokens (prompt, then generated) and counts how many of them are in
 * the KV cache (n_computed). Each step a running sequence contributes its tokens not yet in the
 * cache: one for a decode, or the next chunk of a prefill. It is sampled only in the step that
 * brings n_computed up to n_tokens. Preemption is by recompute: the sequence's blocks are freed,
 * n_computed drops to 0 and it goes back to the front of the queue; when admitted again it
 * prefills prompt and generated tokens together and sampling carries on where it stopped.
 *
 * Prefix caching (sched_options.prefix_caching): a sequence's full blocks are indexed by the
 * hash chain of their tokens (prefix_cache.h) once the step that computes them is scheduled,
 * hashed once each. A waiting sequence is admitted with the longest indexed run of its blocks
 * mapped (shared, reference counted) and n_computed starting after them; it always computes
 * at least its last token, whose logits it samples from. Blocks are only indexed whole and
 * never written again, so sharing needs no copy. A block indexed in the step being planned is
 * not readable by another sequence in that same step: a waiting sequence whose next blocks are
 * being computed right now by another (the n choices of one request, arriving together; or at
 * least SCHED_WAIT_MIN_BLOCKS of a shared system prompt) waits one step and maps them then,
 * instead of computing the same prefix again. Freed blocks stay
 * indexed until their memory is needed, so a preempted sequence's recompute, the next turn of
 * a conversation or the next request with the same system prompt finds them. */
#ifndef SLUICE_WORKER_SCHEDULER_H
#define SLUICE_WORKER_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/engine/kv_cache.h"

#define SCHED_ERR_NOMEM (-2)
#define SCHED_ERR_TOO_LONG (-3) /* the prompt alone needs more blocks than the cache holds */

/* A waiting sequence waits a step for at least this many blocks being computed (128 tokens). */
#define SCHED_WAIT_MIN_BLOCKS 8

enum sched_state { SCHED_WAITING, SCHED_RUNNING };

struct sched_seq {
    uint64_t id;
    enum sched_state state;
    int32_t *tokens;       /* prompt then generated tokens */
    int32_t n_tokens, cap;
    int32_t n_prompt;      /* the original prompt; n_tokens - n_prompt were generated */
    int32_t n_computed;    /* tokens whose K/V are in the cache */
    int32_t n_dropped;     /* leading blocks freed out of the sliding window (-1 in table) */
    int32_t len_at_step;   /* n_tokens when its last step was planned (recompute_past) */
    struct kv_table table;
    /* Prefix caching. salt: whatever else changes the K/V of these tokens (0: nothing), set
     * before the sequence is first scheduled. hashes: the chain hashes of its first n_hashed
     * full blocks, computed once each; n_registered: table blocks offered to the index. */
    uint64_t salt;
    uint64_t *hashes;
    int32_t n_hashed, hashes_cap;
    int32_t n_registered;
    /* Admitted without mapping cached blocks: every prompt position is computed (the caller
     * needs what only a computation gives, such as each position's logits). */
    bool no_cached_prefix;
    void *user;            /* the caller's per-sequence state */
    struct sched_seq *prev, *next;
};

struct sched_list {
    struct sched_seq *head, *tail;
    int32_t count;
};

/* One sequence's share of a step: tokens[start_pos .. start_pos + n_new) of seq. */
struct sched_entry {
    struct sched_seq *seq;
    int32_t start_pos;
    int32_t n_new;
    bool sample;
};

struct sched_options {
    int32_t max_num_seqs;           /* running sequences at most */
    int32_t max_num_batched_tokens; /* tokens per step at most */
    bool prefix_caching;            /* share full blocks between sequences with the same prefix */
    /* Index only blocks that lie in their sequence's prompt: a generated token's K/V come from
     * a decode step, and a later prompt mapping them would differ, in the last bits, from the
     * same prompt computed (the next turn of a conversation cached its own prefill instead). */
    bool prefix_cache_prompt_only;
    /* > 0 when every layer of the model attends to the last sliding_window positions only
     * (Mistral): a running sequence's blocks wholly before the window of the next token it
     * computes are never read again, and go back to the pool (their table entries become -1)
     * before its next step is planned. One whose content is indexed stays in the prefix
     * cache's LRU like any released block, so another prompt can still map the whole chain;
     * a chain whose first blocks were evicted meanwhile is simply not found (computed again). */
    int32_t sliding_window;
    /* > 0 for LongRoPE (Phi-3): K/V computed while the sequence was at most this long used the
     * short factors. When it grows past it, it is computed again from its first token (as
     * transformers drops its cache there), its blocks released as on a preemption, without
     * mapping cached blocks. */
    int32_t recompute_past;
};

struct scheduler {
    struct kv_cache kv;
    struct sched_options opt;
    struct sched_list waiting;      /* FCFS; preempted sequences go back to the front */
    struct sched_list running;      /* in admission order: the tail is the newest */
    struct sched_entry *entries;
    int32_t *hits;                  /* an admission's cached blocks (num_blocks) */
    uint64_t step;                  /* sched_schedule calls so far */
    uint64_t preemptions;
    /* Prefix cache: tokens of admitted sequences looked up, and how many of them were found
     * (each admission counts, a preempted sequence's again). */
    uint64_t prefix_query_tokens, prefix_hit_tokens;
};

int sched_init(struct scheduler *s, int32_t num_blocks, const struct sched_options *opt);
/* Frees every sequence still held (their user pointers are the caller's business). */
void sched_free(struct scheduler *s);

/* Queues a new sequence. On success takes ownership of prompt (malloc'd) and returns 0; on
 * failure returns SCHED_ERR_* and prompt stays the caller's. */
int sched_add(struct scheduler *s, uint64_t id, int32_t *prompt, int32_t n_prompt, void *user,
              struct sched_seq **out);

/* Plans the next step: *entries (valid until the next call) lists the sequences in batch
 * order; *n_entries may be 0 when there is nothing to do. Reserves the blocks the step
 * writes and advances n_computed, so the caller must run the step (or fail every sequence).
 * Returns 0 or SCHED_ERR_NOMEM. */
int sched_schedule(struct scheduler *s, const struct sched_entry **entries, int32_t *n_entries);

/* Appends a sampled token to a sequence (it enters the cache in the next step). */
int sched_seq_append(struct sched_seq *seq, int32_t token);
static inline int32_t sched_seq_generated(const struct sched_seq *seq)
{
    return seq->n_tokens - seq->n_prompt;
}

/* Removes a finished or aborted sequence: frees its blocks and the sequence. */
void sched_seq_remove(struct scheduler *s, struct sched_seq *seq);

static inline bool sched_idle(const struct scheduler *s)
{
    return s->waiting.count == 0 && s->running.count == 0;
}

#endif
