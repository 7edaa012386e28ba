/* The CPU communicator: sums in rank order on every rank (bit for bit the same), gathers in
 * rank order, barriers, and failures that return errors in bounded time instead of hanging:
 * a rank that aborts, a rank that never comes, counts that disagree, bf16 refused. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/parallel/comm.h"

#define MAX_N 8

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static struct comm *group[MAX_N];

static void make_group(int n, double timeout_s)
{
    char err[256] = "";
    cr_assert_eq(comm_cpu_create(group, n, timeout_s, err, sizeof err), 0, "%s", err);
    for (int r = 0; r < n; r++) {
        cr_assert_eq(comm_rank(group[r]), r);
        cr_assert_eq(comm_size(group[r]), n);
        cr_assert_str_eq(comm_kind(group[r]), "cpu");
    }
}

/* Runs fn(rank) on one thread per rank and waits for them all. */
struct rank_arg {
    int rank;
    int (*fn)(int rank);
    int rc;
};

static void *rank_main(void *p)
{
    struct rank_arg *a = p;
    a->rc = a->fn(a->rank);
    return NULL;
}

static void run_ranks(int n, int (*fn)(int), int *rcs)
{
    pthread_t t[MAX_N];
    struct rank_arg args[MAX_N];
    for (int r = 0; r < n; r++) {
        args[r] = (struct rank_arg){.rank = r, .fn = fn};
        cr_assert_eq(pthread_create(&t[r], NULL, rank_main, &args[r]), 0);
    }
    for (int r = 0; r < n; r++) {
        pthread_join(t[r], NULL);
        rcs[r] = args[r].rc;
    }
}

/* Values whose float sums depend on the order they are added in. */
static float value(int rank, size_t i) { return (float)((double)(i % 97) * 1e-3 + (rank + 1) * (1.0 + 1e-7 * (double)i) * (rank % 2 ? 1e4 : 1e-4)); }

#define COUNT 1003 /* not a multiple of any n: uneven slices */
static float bufs[MAX_N][COUNT];
static float gathered[MAX_N][MAX_N * 7];
static int g_n;

static int reduce_many(int rank)
{
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < COUNT; i++) bufs[rank][i] = value(rank, i + (size_t)round);
        if (comm_all_reduce_sum(group[rank], bufs[rank], COUNT, COMM_F32)) return -1;
        for (size_t i = 0; i < COUNT; i++) {
            float want = value(0, i + (size_t)round);
            for (int r = 1; r < g_n; r++) want += value(r, i + (size_t)round);
            if (bufs[rank][i] != want) return -2;
        }
        if (comm_barrier(group[rank])) return -1;
    }
    return 0;
}

Test(comm_cpu, all_reduce_sums_in_rank_order_on_every_rank)
{
    for (int n = 1; n <= MAX_N; n++) {
        g_n = n;
        make_group(n, 10);
        int rcs[MAX_N];
        run_ranks(n, reduce_many, rcs);
        for (int r = 0; r < n; r++)
            cr_expect_eq(rcs[r], 0, "n=%d rank %d: %d (%s)", n, r, rcs[r], comm_error(group[r]));
        for (int r = 1; r < n; r++) cr_expect(memcmp(bufs[0], bufs[r], sizeof bufs[0]) == 0);
        comm_destroy(group, n);
    }
}

static int gather_once(int rank)
{
    float send[7];
    for (int i = 0; i < 7; i++) send[i] = (float)(rank * 100 + i);
    if (comm_all_gather(group[rank], send, gathered[rank], 7, COMM_F32)) return -1;
    return comm_sync(group[rank]);
}

Test(comm_cpu, all_gather_concatenates_in_rank_order)
{
    for (int n = 1; n <= MAX_N; n++) {
        make_group(n, 10);
        memset(gathered, 0, sizeof gathered);
        int rcs[MAX_N];
        run_ranks(n, gather_once, rcs);
        for (int r = 0; r < n; r++) {
            cr_expect_eq(rcs[r], 0, "%s", comm_error(group[r]));
            for (int s = 0; s < n; s++)
                for (int i = 0; i < 7; i++) cr_expect_eq(gathered[r][s * 7 + i], (float)(s * 100 + i));
        }
        comm_destroy(group, n);
    }
}

/* Rank 2 fails before the second all-reduce and aborts; the others, already waiting there,
 * return an error naming it, long before the timeout. */
static int abort_midway(int rank)
{
    if (comm_all_reduce_sum(group[rank], bufs[rank], COUNT, COMM_F32)) return -1;
    if (rank == 2) {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&pause, NULL);
        comm_abort(group[rank], "out of memory in its attention");
        return 1;
    }
    return comm_all_reduce_sum(group[rank], bufs[rank], COUNT, COMM_F32) ? 2 : 0;
}

Test(comm_cpu, an_aborting_rank_fails_the_others_at_once)
{
    make_group(4, 30);
    int rcs[MAX_N];
    double t0 = now_s();
    run_ranks(4, abort_midway, rcs);
    double took = now_s() - t0;
    cr_expect(took < 5.0, "took %.2f s with a 30 s timeout", took);
    for (int r = 0; r < 4; r++) {
        cr_expect_eq(rcs[r], r == 2 ? 1 : 2, "rank %d: %d", r, rcs[r]);
        if (r != 2) cr_expect(strstr(comm_error(group[r]), "rank 2 aborted: out of memory"), "%s", comm_error(group[r]));
        cr_expect(comm_failed(group[r]));
    }
    /* A failed group stays failed. */
    cr_expect_neq(comm_sync(group[0]), 0);
    comm_destroy(group, 4);
}

/* Rank 1 never calls the collective: the others return an error after the timeout, not later. */
static int rank1_stops(int rank)
{
    if (rank == 1) return 0;
    return comm_all_reduce_sum(group[rank], bufs[rank], COUNT, COMM_F32) ? 2 : 0;
}

Test(comm_cpu, a_rank_that_never_comes_times_the_others_out)
{
    make_group(3, 0.2);
    int rcs[MAX_N];
    double t0 = now_s();
    run_ranks(3, rank1_stops, rcs);
    double took = now_s() - t0;
    cr_expect(took >= 0.19 && took < 3.0, "took %.2f s with a 0.2 s timeout", took);
    cr_expect_eq(rcs[0], 2);
    cr_expect_eq(rcs[2], 2);
    cr_expect(strstr(comm_error(group[0]), "never came"), "%s", comm_error(group[0]));
    comm_destroy(group, 3);
}

static int counts_differ(int rank)
{
    return comm_all_reduce_sum(group[rank], bufs[rank], rank == 0 ? 10 : 11, COMM_F32) ? 2 : 0;
}

Test(comm_cpu, ranks_out_of_step_fail_instead_of_reading_past_a_buffer)
{
    make_group(2, 5);
    int rcs[MAX_N];
    run_ranks(2, counts_differ, rcs);
    cr_expect_eq(rcs[0], 2);
    cr_expect_eq(rcs[1], 2);
    cr_expect(strstr(comm_error(group[0]), "rank 0 posted 10 elements, rank 1 11"), "%s", comm_error(group[0]));
    comm_destroy(group, 2);
}

Test(comm_cpu, bf16_and_bad_sizes_are_refused)
{
    make_group(1, 1);
    cr_expect_neq(comm_all_reduce_sum(group[0], bufs[0], 4, COMM_BF16), 0);
    cr_expect(strstr(comm_error(group[0]), "float32 only"), "%s", comm_error(group[0]));
    comm_destroy(group, 1);
    char err[256];
    struct comm *c[1];
    cr_expect_neq(comm_cpu_create(c, 0, 1, err, sizeof err), 0);
    cr_expect(strstr(err, "1 to 64 ranks, not 0"), "%s", err);
    char nerr[256] = "";
    struct comm *g[1];
    int rc = comm_nccl_create(g, 1, NULL, NULL, 1, NULL, nerr, sizeof nerr);
    /* No GPU here: fails with a message whichever the build (no NCCL, or no device). */
    if (rc == 0) comm_destroy(g, 1);
    else cr_expect(nerr[0] != 0);
}
