/* What both tensor-parallel backends share (worker/backend/tp_ranks.c), on stand-in ranks: a
 * step's half that fails on one rank is reported with that rank and its own error, and the
 * others, waiting in a collective, are released by the abort; a rank that never finishes is
 * named with the timeout; the limits come from rank 0; freeing frees every rank. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/backend/tp_ranks.h"

#define N 3

static atomic_int freed;

static void stand_in_free(struct backend *b)
{
    atomic_fetch_add(&freed, 1);
    free(b);
}

static const struct backend_ops stand_in_ops = {.free = stand_in_free};

struct step {
    struct tp_ranks *t;
    int fail_rank, stuck_rank;
    atomic_int release;
};

/* Each rank meets the others in an all-reduce, as a step does; the failing rank writes its error
 * and aborts instead, as the backends' rank functions do. */
static int step_fn(void *arg, int r)
{
    struct step *s = arg;
    if (r == s->stuck_rank) {
        while (!atomic_load(&s->release)) usleep(1000);
        return 0;
    }
    if (r == s->fail_rank) {
        snprintf(s->t->ranks[r]->error, sizeof s->t->ranks[r]->error, "device %d fell over", r);
        comm_abort(s->t->comms[r], s->t->ranks[r]->error);
        return -1;
    }
    float x = 1.0f;
    if (comm_all_reduce_sum(s->t->comms[r], &x, 1, COMM_F32) == 0) return x == (float)N ? 0 : -1;
    /* As a backend's collective reports it: the communicator names the rank that aborted, and why. */
    snprintf(s->t->ranks[r]->error, sizeof s->t->ranks[r]->error, "all-reduce: %s", comm_error(s->t->comms[r]));
    return -1;
}

static void make(struct tp_ranks *t, double timeout_s)
{
    char err[256] = "";
    memset(t, 0, sizeof *t);
    t->n = N;
    t->timeout_s = timeout_s;
    cr_assert_eq(comm_cpu_create(t->comms, N, timeout_s, err, sizeof err), 0, "%s", err);
    for (int r = 0; r < N; r++) {
        t->ranks[r] = calloc(1, sizeof *t->ranks[r]);
        t->ranks[r]->ops = &stand_in_ops;
        t->ranks[r]->max_batch_seqs = 10 + r;
    }
    cr_assert_eq(tp_group_start(&t->threads, N, timeout_s, err, sizeof err), 0, "%s", err);
}

Test(tp_ranks, a_step_on_every_rank_then_everything_freed)
{
    struct tp_ranks t;
    make(&t, 5);
    struct step s = {.t = &t, .fail_rank = -1, .stuck_rank = -1};
    char error[512] = "";
    cr_assert_eq(tp_ranks_run(&t, step_fn, &s, error, sizeof error), 0, "%s", error);
    struct backend whole = {0};
    t.ranks[0]->num_kv_blocks = 77;
    t.ranks[0]->supports_token_mask = true;
    tp_ranks_take_limits(&whole, t.ranks[0]);
    cr_expect_eq(whole.num_kv_blocks, 77);
    cr_expect_eq(whole.max_batch_seqs, 10, "rank 0's");
    cr_expect(whole.supports_token_mask);
    atomic_store(&freed, 0);
    cr_assert(tp_ranks_free(&t, "test"));
    cr_expect_eq(atomic_load(&freed), N);
    cr_expect_null(t.ranks[1]);
    cr_expect_null(t.comms[0]);
}

Test(tp_ranks, a_failing_rank_is_named_with_its_error)
{
    for (int fail = 0; fail < N; fail++) {
        struct tp_ranks t;
        make(&t, 5);
        struct step s = {.t = &t, .fail_rank = fail, .stuck_rank = -1};
        char error[512] = "";
        cr_assert_eq(tp_ranks_run(&t, step_fn, &s, error, sizeof error), -1);
        /* The lowest rank that failed: the failing one, or a lower one whose collective its abort
         * failed, whose error then says why. */
        char want[64];
        snprintf(want, sizeof want, "device %d fell over", fail);
        cr_expect(strstr(error, "tensor parallel rank ") == error, "%s", error);
        cr_expect(strstr(error, want), "names the cause: %s", error);
        cr_assert(tp_ranks_free(&t, "test"));
    }
}

Test(tp_ranks, a_rank_that_never_finishes_is_named_and_nothing_is_freed_under_it)
{
    static struct tp_ranks t;
    static struct step s;
    make(&t, 1);
    s = (struct step){.t = &t, .fail_rank = -1, .stuck_rank = 1};
    char error[512] = "";
    cr_assert_eq(tp_ranks_run(&t, step_fn, &s, error, sizeof error), -1);
    cr_expect(strstr(error, "tensor parallel rank 1 did not finish its step within 2 s of rank 0"), "%s", error);
    atomic_store(&freed, 0);
    cr_expect(!tp_ranks_free(&t, "test"), "a stuck rank keeps everything");
    cr_expect_eq(atomic_load(&freed), 0);
    atomic_store(&s.release, 1);
}
