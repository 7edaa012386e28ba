/* tp_ranks.h */
#include <stdio.h>

#include "common/log.h"
#include "worker/backend/tp_ranks.h"
#include "worker/parallel/tp_shard.h"

int tp_ranks_run(struct tp_ranks *t, tp_rank_fn fn, void *arg, char *error, size_t errlen)
{
    struct tp_run_result res;
    if (tp_group_run(t->threads, fn, arg, &res) == 0) return 0;
    if (res.stuck_rank >= 0) {
        comm_abort(t->comms[0], "a rank never finished its step");
        snprintf(error, errlen, "tensor parallel rank %d did not finish its step within %.0f s of rank 0",
                 res.stuck_rank, t->timeout_s + 1);
    } else {
        snprintf(error, errlen, "tensor parallel rank %d: %.450s", res.failed_rank, t->ranks[res.failed_rank]->error);
    }
    return -1;
}

void tp_ranks_describe_rank(const struct tp_ranks *t, const struct model *m, int r, char *buf, size_t len)
{
    const struct tp_rank *pr = &t->plan.ranks[r];
    const size_t bytes = tp_plan_rank_bytes(&t->plan, m, r);
    snprintf(buf, len,
             "query heads %lld-%lld, KV heads %lld-%lld%s, intermediate %lld-%lld, vocabulary %lld-%lld; %.1f MiB of "
             "the checkpoint's weights",
             (long long)pr->q_heads.begin, (long long)pr->q_heads.end - 1, (long long)pr->kv_heads.begin,
             (long long)pr->kv_heads.end - 1, t->plan.kv_replicas > 1 ? " (replicated)" : "", (long long)pr->inter.begin,
             (long long)pr->inter.end - 1, (long long)pr->vocab.begin, (long long)pr->vocab.end - 1,
             (double)bytes / (1 << 20));
}

void tp_ranks_describe(const struct tp_ranks *t, char *buf, size_t len)
{
    snprintf(buf, len,
             "tensor parallel over %d ranks (%d query heads, %d KV heads%s, %d intermediate channels and %d tokens of "
             "the vocabulary each)",
             t->n, t->plan.heads_per_rank, t->plan.kv_heads_per_rank,
             t->plan.kv_replicas > 1 ? ", each on several ranks" : "", t->plan.inter_per_rank, t->plan.vocab_per_rank);
}

void tp_ranks_take_limits(struct backend *dst, const struct backend *rank0)
{
    dst->num_kv_blocks = rank0->num_kv_blocks;
    dst->max_batch_tokens = rank0->max_batch_tokens;
    dst->max_batch_seqs = rank0->max_batch_seqs;
    dst->supports_token_mask = rank0->supports_token_mask;
    dst->supports_logit_bias = rank0->supports_logit_bias;
    dst->supports_suppress = rank0->supports_suppress;
    dst->supports_prompt_logprobs = rank0->supports_prompt_logprobs;
    dst->supports_hidden_states = rank0->supports_hidden_states;
}

bool tp_ranks_free(struct tp_ranks *t, const char *backend_name)
{
    if (!tp_group_stop(t->threads)) {
        /* A rank stuck in a step: its backend and shard cannot be freed under it. */
        log_warn("%s: a tensor-parallel rank is stuck in a step; its memory is left to the process's exit",
                 backend_name);
        return false;
    }
    t->threads = NULL;
    for (int r = 0; r < t->n; r++) {
        backend_free(t->ranks[r]);
        tp_shard_free(t->shards[r]);
        t->ranks[r] = NULL;
        t->shards[r] = NULL;
    }
    if (t->comms[0]) comm_destroy(t->comms, t->n);
    t->comms[0] = NULL;
    return true;
}
