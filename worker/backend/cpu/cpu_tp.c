/* The CPU backend over N tensor-parallel ranks (cpu_tp.h): the plan and the shards, one CPU
 * backend per rank, a thread for each rank but the first (which runs on the caller's thread,
 * the engine's), and the steps where the forward pass meets the other ranks.
 *
 * A step: the caller posts the batch, ranks 1..N-1 wake and run it on their own backends
 * while rank 0 runs it on the caller's thread; rank 0 alone samples and writes what the step
 * hands back. A rank that fails aborts the communicator, so the others fail at their next
 * collective instead of waiting; a rank that never finishes is given the communicator's
 * timeout, after which the backend reports the failure and refuses further steps (the
 * worker then stops serving, as after any device error). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_internal.h"
#include "worker/backend/cpu/cpu_tp.h"
#include "worker/parallel/comm.h"
#include "worker/parallel/tp_plan.h"
#include "worker/parallel/tp_shard.h"

struct cpu_tp {
    struct backend base;
    int n;
    double timeout_s;
    struct tp_plan plan;
    struct comm *comms[COMM_MAX_RANKS];
    struct model *shards[COMM_MAX_RANKS];
    struct backend *ranks[COMM_MAX_RANKS];
    struct cpu_tp_rank tp[COMM_MAX_RANKS];
    struct rank_thread {
        struct cpu_tp *t;
        int rank;
        pthread_t thread;
        bool started;
        bool busy; /* running a step */
        int rc;
    } threads[COMM_MAX_RANKS];
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    bool sync_ready;
    unsigned long step; /* steps posted */
    int n_done;         /* ranks 1..N-1 done with the current step */
    const struct batch *batch;
    bool stop;
    bool broken; /* a rank never finished a step: no step may run again */
};

void cpu_tp_embed_row(struct cpu_backend *cb, int32_t token, float *dst)
{
    const struct cpu_tp_rank *tp = cb->tp;
    if (!tp) {
        cpu_weight_row(&cb->tok_embed, token, dst);
    } else if (token >= tp->vocab_begin && token < tp->vocab_end) {
        cpu_weight_row(&cb->tok_embed, token - tp->vocab_begin, dst);
    } else {
        memset(dst, 0, (size_t)cb->c.hidden_size * sizeof(float));
    }
}

int cpu_tp_all_reduce(struct cpu_backend *cb, float *x, int64_t n)
{
    if (!cb->tp) return 0;
    if (comm_all_reduce_sum(cb->tp->comm, x, (size_t)n, COMM_F32) != 0) {
        snprintf(cb->base.error, sizeof cb->base.error, "tensor parallel all-reduce: %.450s", comm_error(cb->tp->comm));
        return -1;
    }
    return 0;
}

int cpu_tp_lm_head(struct cpu_backend *cb, const float *xs, int64_t n_rows, float *logits)
{
    struct cpu_tp_rank *tp = cb->tp;
    if (!tp) {
        cpu_matmul_w(cb->pool, xs, n_rows, &cb->lm_head, NULL, logits);
        return 0;
    }
    int64_t mine = tp->vocab_end - tp->vocab_begin, w = tp->vocab_per_rank, vocab = cb->c.vocab_size;
    cpu_matmul_w(cb->pool, xs, n_rows, &cb->lm_head, NULL, tp->local);
    for (int64_t r = 0; r < n_rows; r++) memcpy(tp->send + r * w, tp->local + r * mine, (size_t)mine * sizeof(float));
    if (comm_all_gather(tp->comm, tp->send, tp->gathered, (size_t)(n_rows * w), COMM_F32) != 0) {
        snprintf(cb->base.error, sizeof cb->base.error, "tensor parallel all-gather of the logits: %.450s",
                 comm_error(tp->comm));
        return -1;
    }
    /* Rank k's block holds its n_rows rows of w logits, of which the first are real. */
    for (int k = 0; k < tp->size; k++) {
        int64_t begin = (int64_t)k * w, len = begin + w < vocab ? w : vocab - begin;
        const float *src = tp->gathered + (int64_t)k * n_rows * w;
        for (int64_t r = 0; r < n_rows; r++) memcpy(logits + r * vocab + begin, src + r * w, (size_t)len * sizeof(float));
    }
    return 0;
}

static void *rank_main(void *arg)
{
    struct rank_thread *rt = arg;
    struct cpu_tp *t = rt->t;
    unsigned long seen = 0;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (t->step == seen && !t->stop) pthread_cond_wait(&t->work, &t->mu);
        if (t->stop) break;
        seen = t->step;
        const struct batch *batch = t->batch;
        rt->busy = true;
        pthread_mutex_unlock(&t->mu);
        int rc = cpu_backend_forward(t->ranks[rt->rank], batch, NULL);
        if (rc != 0) comm_abort(t->comms[rt->rank], t->ranks[rt->rank]->error);
        pthread_mutex_lock(&t->mu);
        rt->rc = rc;
        rt->busy = false;
        t->n_done++;
        pthread_cond_signal(&t->done);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static int tp_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    struct cpu_tp *t = (struct cpu_tp *)b;
    if (t->broken) return -1; /* b->error still says why */
    pthread_mutex_lock(&t->mu);
    t->batch = batch;
    t->n_done = 0;
    t->step++;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);

    int rc0 = cpu_backend_forward(t->ranks[0], batch, results);
    if (rc0 != 0) comm_abort(t->comms[0], t->ranks[0]->error);

    /* The others finish within the communicator's timeout of rank 0, unless one is stuck
     * outside any collective. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)t->timeout_s + 1;
    pthread_mutex_lock(&t->mu);
    while (t->n_done < t->n - 1) {
        if (pthread_cond_timedwait(&t->done, &t->mu, &deadline) == ETIMEDOUT && t->n_done < t->n - 1) {
            t->broken = true;
            break;
        }
    }
    int failed = rc0 != 0 ? 0 : -1, stuck = 1;
    for (int r = 1; r < t->n && failed < 0; r++)
        if (!t->threads[r].busy && t->threads[r].rc != 0) failed = r;
    while (stuck < t->n && !t->threads[stuck].busy) stuck++;
    pthread_mutex_unlock(&t->mu);
    if (t->broken) {
        comm_abort(t->comms[0], "a rank never finished its step");
        snprintf(b->error, sizeof b->error, "tensor parallel rank %d did not finish its step within %.0f s of rank 0",
                 stuck, t->timeout_s + 1);
        return -1;
    }
    if (failed < 0) return 0;
    snprintf(b->error, sizeof b->error, "tensor parallel rank %d: %.450s", failed, t->ranks[failed]->error);
    return -1;
}

static void tp_free(struct backend *b)
{
    struct cpu_tp *t = (struct cpu_tp *)b;
    if (!t) return;
    bool leak = false;
    if (t->sync_ready) {
        pthread_mutex_lock(&t->mu);
        t->stop = true;
        pthread_cond_broadcast(&t->work);
        pthread_mutex_unlock(&t->mu);
        for (int r = 1; r < t->n; r++) {
            if (!t->threads[r].started) continue;
            if (t->threads[r].busy) {
                /* Stuck in a step: its backend and shard cannot be freed under it. */
                pthread_detach(t->threads[r].thread);
                leak = true;
            } else {
                pthread_join(t->threads[r].thread, NULL);
            }
        }
    }
    if (leak) {
        log_warn("cpu: a tensor-parallel rank is stuck in a step; its memory is left to the process's exit");
        return;
    }
    for (int r = 0; r < t->n; r++) {
        backend_free(t->ranks[r]);
        tp_shard_free(t->shards[r]);
        free(t->tp[r].local), free(t->tp[r].send), free(t->tp[r].gathered);
    }
    if (t->comms[0]) comm_destroy(t->comms, t->n);
    if (t->sync_ready) {
        pthread_cond_destroy(&t->work);
        pthread_cond_destroy(&t->done);
        pthread_mutex_destroy(&t->mu);
    }
    free(t);
}

static const struct backend_ops cpu_tp_ops = {.forward = tp_forward, .free = tp_free};

int cpu_tp_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                  size_t errlen)
{
    *out = NULL;
    int n = opt->tensor_parallel_size;
    struct cpu_tp *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->n = n;
    t->base.ops = &cpu_tp_ops;
    t->base.name = "cpu";
    t->base.config = m->config;
    t->timeout_s = COMM_DEFAULT_TIMEOUT_S;
    if (tp_plan_make(&t->plan, &m->config, n, err, errlen) != 0) goto fail;
    if (comm_cpu_create(t->comms, n, t->timeout_s, err, errlen) != 0) goto fail;

    /* The cores are shared among the ranks. */
    struct backend_options ro = *opt;
    ro.tensor_parallel_size = 1;
    long cores = opt->cpu.n_threads > 0 ? opt->cpu.n_threads : sysconf(_SC_NPROCESSORS_ONLN);
    ro.cpu.n_threads = cores / n > 0 ? cores / n : 1;
    for (int r = 0; r < n; r++) {
        char why[512] = "";
        if (tp_shard_make(&t->shards[r], m, &t->plan, r, why, sizeof why) != 0 ||
            backend_cpu_create(&t->ranks[r], t->shards[r], &ro, why, sizeof why) != 0) {
            snprintf(err, errlen, "tensor parallel rank %d: %.450s", r, why);
            goto fail;
        }
        struct backend *rb = t->ranks[r];
        if (r == 0) {
            /* Every rank's cache has the same blocks: the engine's block tables index them all. */
            ro.kv_blocks = rb->num_kv_blocks;
        } else if (rb->num_kv_blocks != t->ranks[0]->num_kv_blocks) {
            snprintf(err, errlen, "tensor parallel rank %d has %d KV blocks, rank 0 %d", r, rb->num_kv_blocks,
                     t->ranks[0]->num_kv_blocks);
            goto fail;
        }
        const struct tp_rank *pr = &t->plan.ranks[r];
        struct cpu_tp_rank *tp = &t->tp[r];
        *tp = (struct cpu_tp_rank){.comm = t->comms[r], .rank = r, .size = n, .vocab_begin = pr->vocab.begin,
                                   .vocab_end = pr->vocab.end, .vocab_per_rank = t->plan.vocab_per_rank};
        size_t rows = (size_t)rb->max_batch_seqs, w = (size_t)tp->vocab_per_rank;
        tp->local = malloc(rows * (size_t)(tp->vocab_end - tp->vocab_begin) * sizeof(float));
        tp->send = calloc(rows * w, sizeof(float));
        tp->gathered = malloc((size_t)n * rows * w * sizeof(float));
        if (!tp->local || !tp->send || !tp->gathered) {
            snprintf(err, errlen, "out of memory for tensor parallel rank %d's logits", r);
            goto fail;
        }
        ((struct cpu_backend *)rb)->tp = tp;
        size_t bytes = tp_plan_rank_bytes(&t->plan, m, r);
        log_info("cpu: tensor parallel rank %d of %d: query heads %lld-%lld, KV heads %lld-%lld%s, intermediate "
                 "%lld-%lld, vocabulary %lld-%lld; weights %zu bytes (%.1f MiB) in the checkpoint's dtypes, %ld thread(s)",
                 r, n, (long long)pr->q_heads.begin, (long long)pr->q_heads.end - 1, (long long)pr->kv_heads.begin,
                 (long long)pr->kv_heads.end - 1, t->plan.kv_replicas > 1 ? " (replicated)" : "",
                 (long long)pr->inter.begin, (long long)pr->inter.end - 1, (long long)pr->vocab.begin,
                 (long long)pr->vocab.end - 1, bytes, (double)bytes / (1 << 20), ro.cpu.n_threads);
    }
    struct backend *r0 = t->ranks[0];
    t->base.num_kv_blocks = r0->num_kv_blocks;
    t->base.max_batch_tokens = r0->max_batch_tokens;
    t->base.max_batch_seqs = r0->max_batch_seqs;
    t->base.supports_token_mask = r0->supports_token_mask;
    t->base.supports_logit_bias = r0->supports_logit_bias;
    t->base.supports_suppress = r0->supports_suppress;
    t->base.supports_prompt_logprobs = r0->supports_prompt_logprobs;
    t->base.supports_hidden_states = r0->supports_hidden_states;

    if (pthread_mutex_init(&t->mu, NULL) != 0) goto threads;
    if (pthread_cond_init(&t->work, NULL) != 0) {
        pthread_mutex_destroy(&t->mu);
        goto threads;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* tp_forward's deadline */
    int crc = pthread_cond_init(&t->done, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) {
        pthread_cond_destroy(&t->work);
        pthread_mutex_destroy(&t->mu);
        goto threads;
    }
    t->sync_ready = true;
    for (int r = 1; r < n; r++) {
        t->threads[r] = (struct rank_thread){.t = t, .rank = r};
        if (pthread_create(&t->threads[r].thread, NULL, rank_main, &t->threads[r]) != 0) goto threads;
        t->threads[r].started = true;
    }
    log_info("cpu: tensor parallel over %d ranks (%d query heads, %d KV heads%s, %d intermediate channels and %d "
             "tokens of the vocabulary each)",
             n, t->plan.heads_per_rank, t->plan.kv_heads_per_rank,
             t->plan.kv_replicas > 1 ? ", each on several ranks" : "", t->plan.inter_per_rank, t->plan.vocab_per_rank);
    *out = &t->base;
    return 0;
threads:
    snprintf(err, errlen, "cannot start the tensor parallel ranks' threads");
fail:
    tp_free(&t->base);
    return -1;
}
