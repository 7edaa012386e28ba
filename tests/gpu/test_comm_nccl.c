/* The NCCL communicator over every visible GPU (N = 1 on a one-GPU machine), one thread per
 * rank as the worker drives them: float32 and bf16 all-reduce sums, all-gather (apart and in
 * place), barrier; then failures: a rank that aborts fails the others, and (N >= 2) a rank that
 * never comes makes the others time out, both within bounded time; a failed group stays failed.
 * Exits 0 with a SKIP line where no GPU is visible or the build has no NCCL. */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "tests/gpu/gpu_test.h"
#include "worker/parallel/comm.h"

#define MAX_RANKS 8
#define COUNT 4099 /* odd: no rank or vector width divides it */

static int n_ranks;
static struct comm *group[MAX_RANKS];

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Small integers: their sums are exact in float32 and bf16 alike, whatever order NCCL adds in. */
static float value(int rank, int i) { return (float)((i * 7 + rank * 13) % 29 - 14); }

struct rank_result {
    int rc;
    char error[512];
    int reduce_bad, reduce_bf16_bad, gather_bad, gather_inplace_bad;
    double seconds;
};
static struct rank_result results[MAX_RANKS];

static void *correctness(void *arg)
{
    int r = (int)(intptr_t)arg;
    struct rank_result *res = &results[r];
    struct comm *c = group[r];
    GT_CUDA(cudaSetDevice(r));
    float *host = malloc((size_t)COUNT * n_ranks * sizeof(float));
    uint16_t *host16 = malloc((size_t)COUNT * sizeof(uint16_t));
    float *d, *dg;
    uint16_t *d16;
    GT_CUDA(cudaMalloc((void **)&d, COUNT * sizeof(float)));
    GT_CUDA(cudaMalloc((void **)&d16, COUNT * sizeof(uint16_t)));
    GT_CUDA(cudaMalloc((void **)&dg, (size_t)COUNT * n_ranks * sizeof(float)));
    for (int i = 0; i < COUNT; i++) host[i] = value(r, i), host16[i] = to_bf16(value(r, i));
    GT_CUDA(cudaMemcpy(d, host, COUNT * sizeof(float), cudaMemcpyHostToDevice));
    GT_CUDA(cudaMemcpy(d16, host16, COUNT * sizeof(uint16_t), cudaMemcpyHostToDevice));
    if (comm_all_reduce_sum(c, d, COUNT, COMM_F32) || comm_all_reduce_sum(c, d16, COUNT, COMM_BF16) ||
        comm_sync(c))
        goto fail;
    GT_CUDA(cudaMemcpy(host, d, COUNT * sizeof(float), cudaMemcpyDeviceToHost));
    GT_CUDA(cudaMemcpy(host16, d16, COUNT * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    for (int i = 0; i < COUNT; i++) {
        float want = 0;
        for (int k = 0; k < n_ranks; k++) want += value(k, i);
        res->reduce_bad += host[i] != want;
        res->reduce_bf16_bad += from_bf16(host16[i]) != want;
    }
    /* Gather apart: rank k's block holds k's values. */
    for (int i = 0; i < COUNT; i++) host[i] = value(r, i);
    GT_CUDA(cudaMemcpy(d, host, COUNT * sizeof(float), cudaMemcpyHostToDevice));
    if (comm_all_gather(c, d, dg, COUNT, COMM_F32) || comm_sync(c)) goto fail;
    GT_CUDA(cudaMemcpy(host, dg, (size_t)COUNT * n_ranks * sizeof(float), cudaMemcpyDeviceToHost));
    for (int k = 0; k < n_ranks; k++)
        for (int i = 0; i < COUNT; i++) res->gather_bad += host[(size_t)k * COUNT + i] != value(k, i);
    /* In place: each rank's own block already sits where the gather puts it. */
    GT_CUDA(cudaMemset(dg, 0, (size_t)COUNT * n_ranks * sizeof(float)));
    for (int i = 0; i < COUNT; i++) host[i] = value(r, i) + 100;
    GT_CUDA(cudaMemcpy(dg + (size_t)r * COUNT, host, COUNT * sizeof(float), cudaMemcpyHostToDevice));
    if (comm_all_gather(c, dg + (size_t)r * COUNT, dg, COUNT, COMM_F32) || comm_barrier(c)) goto fail;
    GT_CUDA(cudaMemcpy(host, dg, (size_t)COUNT * n_ranks * sizeof(float), cudaMemcpyDeviceToHost));
    for (int k = 0; k < n_ranks; k++)
        for (int i = 0; i < COUNT; i++) res->gather_inplace_bad += host[(size_t)k * COUNT + i] != value(k, i) + 100;
    res->rc = 0;
    goto done;
fail:
    res->rc = -1;
    snprintf(res->error, sizeof res->error, "%s", comm_error(c));
done:
    cudaFree(d), cudaFree(d16), cudaFree(dg);
    free(host), free(host16);
    return NULL;
}

/* The failure tests: every rank but `odd` all-reduces and waits; rank `odd` aborts the group
 * (odd_aborts) or never comes. */
static int odd_rank;
static bool odd_aborts;

static void *one_rank_fails(void *arg)
{
    int r = (int)(intptr_t)arg;
    struct rank_result *res = &results[r];
    GT_CUDA(cudaSetDevice(r));
    float *d;
    GT_CUDA(cudaMalloc((void **)&d, COUNT * sizeof(float)));
    double t0 = now_s();
    if (r == odd_rank && odd_aborts) {
        comm_abort(group[r], "test: this rank gives up");
        res->rc = comm_sync(group[r]);
    } else if (r == odd_rank) {
        res->rc = 0;
    } else {
        res->rc = comm_all_reduce_sum(group[r], d, COUNT, COMM_F32);
        if (res->rc == 0) res->rc = comm_sync(group[r]);
    }
    res->seconds = now_s() - t0;
    snprintf(res->error, sizeof res->error, "%s", comm_error(group[r]));
    cudaFree(d);
    return NULL;
}

static void run_all(void *(*fn)(void *))
{
    pthread_t t[MAX_RANKS];
    memset(results, 0, sizeof results);
    for (int r = 0; r < n_ranks; r++) pthread_create(&t[r], NULL, fn, (void *)(intptr_t)r);
    for (int r = 0; r < n_ranks; r++) pthread_join(t[r], NULL);
}

static int make_group(double timeout_s)
{
    char err[512] = "";
    if (comm_nccl_create(group, n_ranks, NULL, NULL, timeout_s, NULL, err, sizeof err) != 0) {
        if (strstr(err, "without NCCL") || strstr(err, "cannot open the NCCL library")) {
            printf("SKIP: %s\n", err);
            return 1;
        }
        GT_CHECK(0, "comm_nccl_create over %d GPU(s): %s", n_ranks, err);
        return -1;
    }
    GT_CHECK(comm_size(group[0]) == n_ranks && !strcmp(comm_kind(group[0]), "nccl"), "a group of %d NCCL ranks",
             n_ranks);
    return 0;
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    GT_CUDA(cudaGetDeviceCount(&n_ranks));
    if (n_ranks > MAX_RANKS) n_ranks = MAX_RANKS;
    printf("NCCL communicator over %d GPU(s)\n", n_ranks);
    int rc = make_group(30);
    if (rc > 0) return gt_finish();
    if (rc < 0) return gt_finish();
    run_all(correctness);
    for (int r = 0; r < n_ranks; r++) {
        GT_CHECK(results[r].rc == 0, "rank %d: collectives ran %s", r, results[r].error);
        GT_CHECK(results[r].reduce_bad == 0, "rank %d: float32 all-reduce sums (%d wrong)", r, results[r].reduce_bad);
        GT_CHECK(results[r].reduce_bf16_bad == 0, "rank %d: bf16 all-reduce sums (%d wrong)", r,
                 results[r].reduce_bf16_bad);
        GT_CHECK(results[r].gather_bad == 0, "rank %d: all-gather in rank order (%d wrong)", r, results[r].gather_bad);
        GT_CHECK(results[r].gather_inplace_bad == 0, "rank %d: in-place all-gather (%d wrong)", r,
                 results[r].gather_inplace_bad);
    }
    GT_CHECK(!comm_failed(group[0]), "no asynchronous error after the collectives");

    odd_rank = 0, odd_aborts = true;
    run_all(one_rank_fails);
    for (int r = 0; r < n_ranks; r++)
        GT_CHECK(results[r].rc != 0 && results[r].seconds < 35, "rank %d fails after rank 0 aborts, in %.2f s: %s", r,
                 results[r].seconds, results[r].error);
    GT_CHECK(comm_failed(group[n_ranks - 1]), "the group stays failed");
    comm_destroy(group, n_ranks);

    if (n_ranks >= 2) {
        if (make_group(2.0) != 0) return gt_finish();
        odd_rank = 1, odd_aborts = false;
        run_all(one_rank_fails);
        for (int r = 0; r < n_ranks; r++) {
            if (r == 1) continue;
            GT_CHECK(results[r].rc != 0 && results[r].seconds >= 1.9 && results[r].seconds < 20,
                     "rank %d times out waiting for rank 1 in %.2f s (2 s timeout): %s", r, results[r].seconds,
                     results[r].error);
        }
        comm_destroy(group, n_ranks);
    } else {
        printf("  (one GPU: the test of a rank that never comes needs two)\n");
    }
    return gt_finish();
}
