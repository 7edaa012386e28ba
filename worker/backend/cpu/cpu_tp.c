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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/cpu_internal.h"
#include "worker/backend/cpu/cpu_tp.h"
#include "worker/parallel/comm.h"
#include "worker/backend/tp_ranks.h"
#include "worker/parallel/tp_plan.h"
#include "worker/parallel/tp_shard.h"

struct cpu_tp {
    struct backend base;
    struct tp_ranks t;
    struct cpu_tp_rank tp[COMM_MAX_RANKS];
    const struct batch *batch;     /* the step being run */
    struct sample_result *results; /* rank 0's */
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

/* One rank's part of a step (tp_group_run): rank 0 alone samples and writes what the step hands
 * back. A rank that fails aborts the communicator, so that the others fail at their next
 * collective instead of waiting. */
static int rank_step(void *arg, int rank)
{
    struct cpu_tp *c = arg;
    struct backend *rb = c->t.ranks[rank];
    int rc = cpu_backend_forward(rb, c->batch, rank == 0 ? c->results : NULL);
    if (rc != 0) comm_abort(c->t.comms[rank], rb->error);
    return rc;
}

static int tp_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    struct cpu_tp *c = (struct cpu_tp *)b;
    c->batch = batch;
    c->results = results;
    return tp_ranks_run(&c->t, rank_step, c, b->error, sizeof b->error);
}

static void tp_free(struct backend *b)
{
    struct cpu_tp *c = (struct cpu_tp *)b;
    if (!c || !tp_ranks_free(&c->t, "cpu")) return;
    for (int r = 0; r < c->t.n; r++) free(c->tp[r].local), free(c->tp[r].send), free(c->tp[r].gathered);
    free(c);
}

static const struct backend_ops cpu_tp_ops = {.forward = tp_forward, .free = tp_free};

int cpu_tp_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                  size_t errlen)
{
    *out = NULL;
    int n = opt->tensor_parallel_size;
    struct cpu_tp *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct tp_ranks *t = &c->t;
    t->n = n;
    c->base.ops = &cpu_tp_ops;
    c->base.name = "cpu";
    c->base.config = m->config;
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
        struct cpu_tp_rank *tp = &c->tp[r];
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
        char parts[256];
        tp_ranks_describe_rank(t, m, r, parts, sizeof parts);
        log_info("cpu: tensor parallel rank %d of %d: %s, %ld thread(s)", r, n, parts, ro.cpu.n_threads);
    }
    tp_ranks_take_limits(&c->base, t->ranks[0]);
    if (tp_group_start(&t->threads, n, t->timeout_s, err, errlen) != 0) goto fail;
    char whole[256];
    tp_ranks_describe(t, whole, sizeof whole);
    log_info("cpu: %s", whole);
    *out = &c->base;
    return 0;
fail:
    tp_free(&c->base);
    return -1;
}
