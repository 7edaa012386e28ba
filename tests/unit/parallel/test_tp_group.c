/* The ranks' threads of a tensor-parallel backend: every rank runs each function at the same
 * time (a collective inside it completes), rank 0 on the caller's thread and the others each
 * always on the same thread of their own; a failing rank is named; a rank that never finishes
 * is given the timeout, named, and breaks the group, whose later runs fail at once. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/parallel/comm.h"
#include "worker/parallel/tp_group.h"

#define N 4

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

struct sum_arg {
    struct comm *comms[N];
    float bufs[N][3];
    pthread_t threads[N][2]; /* the thread of each rank in two runs */
    int run;
    int fail_rank;  /* -1: none */
    int stuck_rank; /* -1: none */
    atomic_int release; /* lets the stuck rank go at the end of its test */
};

/* Every rank sums its buffer with the others': it completes only if all of them are in it at once. */
static int sum_fn(void *p, int rank)
{
    struct sum_arg *a = p;
    a->threads[rank][a->run] = pthread_self();
    if (rank == a->stuck_rank) {
        while (!atomic_load(&a->release)) usleep(1000);
        return 0;
    }
    if (rank == a->fail_rank) {
        comm_abort(a->comms[rank], "rank fails on purpose");
        return -1;
    }
    for (int i = 0; i < 3; i++) a->bufs[rank][i] = (float)(rank + 1) * (float)(i + 1);
    return comm_all_reduce_sum(a->comms[rank], a->bufs[rank], 3, COMM_F32) == 0 ? 0 : -1;
}

Test(tp_group, every_rank_runs_at_once_each_on_its_own_thread)
{
    struct sum_arg a = {.fail_rank = -1, .stuck_rank = -1};
    char err[256] = "";
    struct tp_group *g;
    cr_assert_eq(comm_cpu_create(a.comms, N, 5, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tp_group_start(&g, N, 5, err, sizeof err), 0, "%s", err);
    struct tp_run_result res;
    for (a.run = 0; a.run < 2; a.run++) {
        cr_assert_eq(tp_group_run(g, sum_fn, &a, &res), 0);
        cr_assert_eq(res.failed_rank, -1);
        cr_assert_eq(res.stuck_rank, -1);
        for (int r = 0; r < N; r++)
            for (int i = 0; i < 3; i++) cr_assert_float_eq(a.bufs[r][i], 10.0f * (float)(i + 1), 0, "rank %d", r);
    }
    cr_assert(pthread_equal(a.threads[0][0], pthread_self()), "rank 0 runs on the caller's thread");
    for (int r = 1; r < N; r++) {
        cr_assert(!pthread_equal(a.threads[r][0], pthread_self()));
        cr_assert(pthread_equal(a.threads[r][0], a.threads[r][1]), "rank %d keeps its thread", r);
        for (int q = 1; q < r; q++) cr_assert(!pthread_equal(a.threads[r][0], a.threads[q][0]));
    }
    cr_assert(tp_group_stop(g));
    comm_destroy(a.comms, N);
}

Test(tp_group, a_failing_rank_is_named_and_the_others_return)
{
    for (int fail = 0; fail < N; fail++) {
        struct sum_arg a = {.fail_rank = fail, .stuck_rank = -1};
        char err[256] = "";
        struct tp_group *g;
        cr_assert_eq(comm_cpu_create(a.comms, N, 5, err, sizeof err), 0, "%s", err);
        cr_assert_eq(tp_group_start(&g, N, 5, err, sizeof err), 0, "%s", err);
        struct tp_run_result res;
        double t0 = now_s();
        cr_assert_eq(tp_group_run(g, sum_fn, &a, &res), -1);
        cr_assert_lt(now_s() - t0, 2.0, "the abort wakes the others");
        /* The others' collectives fail too, so the lowest failing rank is 0 unless rank 0 got
         * out before the abort; the failing rank itself is never missed. */
        cr_assert(res.failed_rank >= 0 && res.failed_rank <= fail, "failed %d, fail %d", res.failed_rank, fail);
        cr_assert_eq(res.stuck_rank, -1);
        cr_assert(!tp_group_broken(g));
        cr_assert(tp_group_stop(g));
        comm_destroy(a.comms, N);
    }
}

Test(tp_group, a_rank_that_never_finishes_breaks_the_group_after_the_timeout)
{
    static struct sum_arg a = {.fail_rank = -1, .stuck_rank = 2};
    static struct tp_group *g; /* static: the stuck thread still holds it at exit, which is no leak */
    char err[256] = "";
    cr_assert_eq(comm_cpu_create(a.comms, N, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tp_group_start(&g, N, 1, err, sizeof err), 0, "%s", err);
    struct tp_run_result res;
    double t0 = now_s();
    cr_assert_eq(tp_group_run(g, sum_fn, &a, &res), -1);
    double took = now_s() - t0;
    cr_assert(took >= 1.0 && took < 4.0, "took %.2f s", took);
    cr_assert_eq(res.stuck_rank, 2);
    cr_assert(tp_group_broken(g));
    /* Later runs fail at once, naming the same rank. */
    t0 = now_s();
    cr_assert_eq(tp_group_run(g, sum_fn, &a, &res), -1);
    cr_assert_lt(now_s() - t0, 0.5);
    cr_assert_eq(res.stuck_rank, 2);
    cr_assert(!tp_group_stop(g), "a stuck rank's thread is left running");
    atomic_store(&a.release, 1);
}

Test(tp_group, one_rank_runs_on_the_callers_thread_alone)
{
    struct sum_arg a = {.fail_rank = -1, .stuck_rank = -1};
    char err[256] = "";
    struct tp_group *g;
    cr_assert_eq(comm_cpu_create(a.comms, 1, 5, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tp_group_start(&g, 1, 5, err, sizeof err), 0, "%s", err);
    struct tp_run_result res;
    cr_assert_eq(tp_group_run(g, sum_fn, &a, &res), 0);
    cr_assert(pthread_equal(a.threads[0][0], pthread_self()));
    cr_assert_float_eq(a.bufs[0][2], 3.0f, 0);
    cr_assert(tp_group_stop(g));
    comm_destroy(a.comms, 1);
    cr_assert_neq(tp_group_start(&g, 0, 5, err, sizeof err), 0);
    cr_assert(strstr(err, "not in 1.."), "%s", err);
}
