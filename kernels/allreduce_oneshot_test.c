/* sk_allreduce_oneshot (kernels/allreduce_oneshot.cu) against its CPU reference, with 2 and 4 ranks
 * on one GPU, each rank a host thread with its own stream as the worker drives them: fp32 and
 * bf16, with the residual add fused (out apart, or out = residual) and without (out apart, or in
 * place over the partial), one or three parts per rank (part strides and pointers off the vector
 * width), counts from 1 to the largest message, none a multiple of the vector width but the
 * largest. 60 rounds launched back to back with no host synchronization between them, then 4
 * launches captured in a CUDA graph replayed 6 times (the rounds continuing on the device):
 * every rank's output bit-equal to the reference (each rank's parts added in order from zero and
 * rounded, then the ranks' copies added in rank order in fp32, then the residual), hence to every
 * other rank's. Then the failures: a rank that never launches makes the others give up after the
 * group's timeout (and record who waited for whom), later launches give up at once, the group
 * works again after a reset; an abort from the host ends the waits long before the timeout. With
 * two or more GPUs, the same over GPUs with peer access (or its refusal where they have none). */
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "kernels/sk_allreduce.h"
#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

#define MAX_RANKS 4
#define ROUNDS 60
#define SLOTS 4   /* launches in the captured graph */
#define REPLAYS 6
#define WAIT_S 30.0 /* a stream not done after this long is a hang: the check fails, the test ends */

enum alias { OUT_APART, OUT_IS_RESIDUAL, OUT_IS_PARTIAL };

struct shape {
    int64_t count, stride; /* stride: between parts, at least count */
    int n_parts, misalign; /* misalign: elements the parts start past an aligned allocation */
    bool residual;
    enum alias alias;
};

/* One rank's device buffers of one round: in holds the parts (at alloc + misalign elements). */
struct rank_bufs {
    void *alloc, *in, *res, *out;
};

struct round {
    struct shape sh;
    void *host_in[MAX_RANKS], *host_res, *want; /* the inputs' and the expected output's bits */
    struct rank_bufs d[MAX_RANKS];
};

static int elem_size(int dtype) { return dtype == SK_F32 ? 4 : 2; }

static float value_at(const void *p, int64_t i, int dtype)
{
    return dtype == SK_F32 ? ((const float *)p)[i] : gt_bf2f(((const uint16_t *)p)[i]);
}

/* v rounded to dtype, stored at p[i]. */
static void put(void *p, int64_t i, float v, int dtype)
{
    if (dtype == SK_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = gt_f2bf(v);
}

static float round_to(float v, int dtype) { return dtype == SK_F32 ? v : gt_round_bf(v); }

/* Round k's shape: counts from 1 to the largest message, parts and aliasing taking turns. */
static struct shape shape_of(int k, int dtype, bool residual)
{
    const int64_t max = SK_ONESHOT_MAX_BYTES / elem_size(dtype);
    static const int64_t counts[] = {1, 7, 4096 * 3 + 5, 12345, 0, 1001, 33, 65537, 259, 8191};
    struct shape sh = {.count = counts[k % 10] ? counts[k % 10] : max, .n_parts = k % 3 == 1 ? 3 : 1,
                       .misalign = k % 4 == 3 ? 1 : 0, .residual = residual};
    sh.stride = sh.count + (k % 5 == 2 ? 1 : 0); /* k = 7, 22, ...: three parts off the vector width */
    sh.alias = k % 2 == 0 ? OUT_APART : residual ? OUT_IS_RESIDUAL : OUT_IS_PARTIAL;
    return sh;
}

/* Random inputs for n ranks (the residual the same on every rank, as the residual stream is) and
 * the output they must give, computed as the kernel computes it; the device buffers on devices. */
static void round_make(struct round *r, struct shape sh, int n, const int *devices, int dtype)
{
    const int es = elem_size(dtype);
    const int64_t n_in = (sh.n_parts - 1) * sh.stride + sh.count;
    memset(r, 0, sizeof *r);
    r->sh = sh;
    r->host_res = malloc((size_t)sh.count * es);
    r->want = malloc((size_t)sh.count * es);
    for (int64_t i = 0; i < sh.count; i++) put(r->host_res, i, 4.0f * gt_normal(), dtype);
    for (int k = 0; k < n; k++) {
        r->host_in[k] = malloc((size_t)n_in * es);
        for (int64_t i = 0; i < n_in; i++) put(r->host_in[k], i, gt_normal(), dtype);
    }
    for (int64_t i = 0; i < sh.count; i++) {
        float s = 0.0f;
        for (int k = 0; k < n; k++) {
            float a = 0.0f;
            for (int j = 0; j < sh.n_parts; j++) a += value_at(r->host_in[k], j * sh.stride + i, dtype);
            s += round_to(a, dtype);
        }
        put(r->want, i, sh.residual ? value_at(r->host_res, i, dtype) + s : s, dtype);
    }
    for (int k = 0; k < n; k++) {
        struct rank_bufs *b = &r->d[k];
        GT_CUDA(cudaSetDevice(devices[k]));
        b->alloc = gt_dev((size_t)(n_in + sh.misalign) * es);
        b->in = (char *)b->alloc + (size_t)sh.misalign * es;
        GT_CUDA(cudaMemcpy(b->in, r->host_in[k], (size_t)n_in * es, cudaMemcpyHostToDevice));
        b->res = gt_up(r->host_res, (size_t)sh.count * es);
        b->out = gt_dev((size_t)sh.count * es);
    }
}

static void round_free(struct round *r, int n)
{
    for (int k = 0; k < n; k++) {
        free(r->host_in[k]);
        cudaFree(r->d[k].alloc), cudaFree(r->d[k].res), cudaFree(r->d[k].out);
    }
    free(r->host_res), free(r->want);
}

/* Where a round's output lands on a rank. */
static void *out_of(const struct shape *sh, const struct rank_bufs *b)
{
    return sh->alias == OUT_IS_RESIDUAL ? b->res : sh->alias == OUT_IS_PARTIAL ? b->in : b->out;
}

static cudaError_t launch(const struct sk_oneshot_peers *p, const struct shape *sh, const struct rank_bufs *b,
                          int dtype, cudaStream_t s)
{
    return sk_allreduce_oneshot(p, out_of(sh, b), sh->residual ? b->res : NULL, b->in, sh->n_parts, sh->stride,
                                sh->count, dtype, s);
}

/* Waits for s at most WAIT_S: cudaErrorTimeout past it (a hang the test reports, not one it has). */
static cudaError_t wait_stream(cudaStream_t s, double *elapsed_s)
{
    const double t0 = gt_now_s();
    cudaError_t e;
    while ((e = cudaStreamQuery(s)) == cudaErrorNotReady) {
        if (gt_now_s() - t0 > WAIT_S) return cudaErrorTimeout;
        usleep(100);
    }
    if (elapsed_s) *elapsed_s = gt_now_s() - t0;
    return e;
}

/* One rank's thread. Eager: rounds[0 .. n_rounds) launched in a row. Graph (slots != NULL): the
 * slots' SLOTS launches captured; once every rank has its graph, per replay the next SLOTS rounds'
 * inputs copied into the slots, the graph launched, the outputs copied back into those rounds. */
struct rank_job {
    int rank, device, dtype;
    struct sk_oneshot_peers peers;
    struct round *rounds;
    int n_rounds;
    struct round *slots;
    pthread_barrier_t *captured;
    double elapsed_s;
    cudaError_t err;
};

static cudaError_t replay(struct rank_job *j, cudaStream_t s, cudaGraphExec_t exec, int rep)
{
    const int r = j->rank, es = elem_size(j->dtype);
    cudaError_t e = cudaSuccess;
    for (int k = 0; k < SLOTS && e == cudaSuccess; k++) {
        const struct round *src = &j->rounds[rep * SLOTS + k];
        const struct shape *sh = &src->sh;
        const struct rank_bufs *slot = &j->slots[k].d[r];
        e = cudaMemcpyAsync(slot->in, src->d[r].in, (size_t)((sh->n_parts - 1) * sh->stride + sh->count) * es,
                            cudaMemcpyDeviceToDevice, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(slot->res, src->d[r].res, (size_t)sh->count * es, cudaMemcpyDeviceToDevice, s);
    }
    if (e == cudaSuccess) e = cudaGraphLaunch(exec, s);
    for (int k = 0; k < SLOTS && e == cudaSuccess; k++) {
        struct round *dst = &j->rounds[rep * SLOTS + k];
        e = cudaMemcpyAsync(out_of(&dst->sh, &dst->d[r]), out_of(&dst->sh, &j->slots[k].d[r]),
                            (size_t)dst->sh.count * es, cudaMemcpyDeviceToDevice, s);
    }
    return e;
}

static void *rank_thread(void *arg)
{
    struct rank_job *j = arg;
    cudaStream_t s = NULL;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaSetDevice(j->device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (!j->slots) {
        for (int k = 0; k < j->n_rounds && e == cudaSuccess; k++)
            e = launch(&j->peers, &j->rounds[k].sh, &j->rounds[k].d[j->rank], j->dtype, s);
    } else {
        if (e == cudaSuccess) e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        for (int k = 0; k < SLOTS && e == cudaSuccess; k++)
            e = launch(&j->peers, &j->slots[k].sh, &j->slots[k].d[j->rank], j->dtype, s);
        cudaError_t end = cudaStreamEndCapture(s, &graph);
        if (e == cudaSuccess) e = end;
        if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
        if (e == cudaSuccess) e = cudaGraphUpload(exec, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
        /* No rank replays before every rank is done capturing: nothing that might wait for the
         * device then runs beside a kernel that waits for another rank. */
        pthread_barrier_wait(j->captured);
        for (int rep = 0; rep < j->n_rounds / SLOTS && e == cudaSuccess; rep++) e = replay(j, s, exec, rep);
    }
    if (e == cudaSuccess) e = wait_stream(s, &j->elapsed_s);
    j->err = e;
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    /* A stream still running a hung kernel is left alone: the check reports it, the test ends. */
    if (s && e != cudaErrorTimeout) cudaStreamDestroy(s);
    return NULL;
}

/* Runs ranks [0, n_launching) of g's n on their threads; the others never launch. */
static void run_ranks(struct sk_oneshot_group *g, int n_launching, int dtype, struct round *rounds, int n_rounds,
                      struct round *slots, struct rank_job *jobs)
{
    pthread_t th[MAX_RANKS];
    pthread_barrier_t captured;
    pthread_barrier_init(&captured, NULL, (unsigned)n_launching);
    for (int r = 0; r < n_launching; r++) {
        jobs[r] = (struct rank_job){.rank = r, .device = g->devices[r], .dtype = dtype,
                                    .peers = sk_oneshot_group_peers(g, r), .rounds = rounds, .n_rounds = n_rounds,
                                    .slots = slots, .captured = &captured};
        pthread_create(&th[r], NULL, rank_thread, &jobs[r]);
    }
    for (int r = 0; r < n_launching; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&captured);
}

/* How many of rounds' outputs differ from the reference on some rank; the first in first_bad. */
static int count_bad(struct round *rounds, int n_rounds, int n, int dtype, char *first_bad, size_t len)
{
    const int es = elem_size(dtype);
    int bad = 0;
    for (int k = 0; k < n_rounds; k++) {
        const struct round *r = &rounds[k];
        void *got = malloc((size_t)r->sh.count * es);
        for (int q = 0; q < n; q++) {
            GT_CUDA(cudaMemcpy(got, out_of(&r->sh, &r->d[q]), (size_t)r->sh.count * es, cudaMemcpyDeviceToHost));
            if (!memcmp(got, r->want, (size_t)r->sh.count * es)) continue;
            int64_t i = 0;
            while (i < r->sh.count && !memcmp((char *)got + i * es, (char *)r->want + i * es, (size_t)es)) i++;
            if (!bad++)
                snprintf(first_bad, len, " (first: round %d, rank %d, element %lld of %lld: %g, want %g)", k, q,
                         (long long)i, (long long)r->sh.count, value_at(got, i, dtype), value_at(r->want, i, dtype));
            break;
        }
        free(got);
    }
    return bad;
}

static const char *dtype_name(int dtype) { return dtype == SK_F32 ? "fp32" : "bf16"; }

static bool jobs_ok(const struct rank_job *jobs, int n, const char *label, const char *phase)
{
    for (int r = 0; r < n; r++)
        if (jobs[r].err != cudaSuccess) {
            GT_CHECK(0, "%s, %s: rank %d: %s", label, phase, r, cudaGetErrorString(jobs[r].err));
            return false;
        }
    return true;
}

/* ROUNDS eager rounds, then SLOTS x REPLAYS in a graph, on one group (the rounds continue). */
static void check_sums(int n, const int *devices, int dtype, bool residual, const char *where)
{
    char label[160], first_bad[200] = "";
    snprintf(label, sizeof label, "%d ranks %s, %s, %s", n, where, dtype_name(dtype),
             residual ? "residual fused" : "no residual");
    struct sk_oneshot_group *g = NULL;
    GT_CUDA(sk_oneshot_group_create(&g, n, devices, 2000000000ull, NULL));
    struct round *rounds = calloc(ROUNDS, sizeof *rounds), slots[SLOTS];
    struct rank_job jobs[MAX_RANKS];
    for (int k = 0; k < ROUNDS; k++) round_make(&rounds[k], shape_of(k, dtype, residual), n, devices, dtype);
    run_ranks(g, n, dtype, rounds, ROUNDS, NULL, jobs);
    if (jobs_ok(jobs, n, label, "eager")) {
        int bad = count_bad(rounds, ROUNDS, n, dtype, first_bad, sizeof first_bad);
        GT_CHECK(bad == 0 && sk_oneshot_group_status(g) == 0,
                 "%s: %d rounds back to back, every rank bit-equal to the rank-order reference: %d differ%s, status "
                 "%#x", label, ROUNDS, bad, first_bad, sk_oneshot_group_status(g));
    }
    for (int k = 0; k < ROUNDS; k++) round_free(&rounds[k], n);

    /* The graph's slots take the shapes of rounds 1..SLOTS (three parts, misaligned, aliased). */
    const int n_data = SLOTS * REPLAYS;
    for (int k = 0; k < SLOTS; k++) round_make(&slots[k], shape_of(k + 1, dtype, residual), n, devices, dtype);
    for (int k = 0; k < n_data; k++) round_make(&rounds[k], shape_of(k % SLOTS + 1, dtype, residual), n, devices, dtype);
    run_ranks(g, n, dtype, rounds, n_data, slots, jobs);
    if (jobs_ok(jobs, n, label, "CUDA graph")) {
        first_bad[0] = 0;
        int bad = count_bad(rounds, n_data, n, dtype, first_bad, sizeof first_bad);
        GT_CHECK(bad == 0 && sk_oneshot_group_status(g) == 0,
                 "%s: a graph of %d launches replayed %d times, every rank bit-equal to the reference: %d differ%s",
                 label, SLOTS, REPLAYS, bad, first_bad);
    }
    for (int k = 0; k < n_data; k++) round_free(&rounds[k], n);
    for (int k = 0; k < SLOTS; k++) round_free(&slots[k], n);
    free(rounds);
    sk_oneshot_group_destroy(g);
}

struct aborter {
    struct sk_oneshot_group *g;
    double delay_s;
};

static void *abort_later(void *arg)
{
    struct aborter *a = arg;
    usleep((useconds_t)(a->delay_s * 1e6));
    sk_oneshot_group_abort(a->g);
    return NULL;
}

/* Rank n - 1 never launches: the others give up after the timeout, naming it; a later launch gives
 * up at once; after a reset every rank's launch works again. Then an abort from the host ends
 * waits that a long timeout would not. */
static void check_failures(int n, const int *devices)
{
    const double timeout_s = 0.2;
    struct sk_oneshot_group *g = NULL;
    GT_CUDA(sk_oneshot_group_create(&g, n, devices, (uint64_t)(timeout_s * 1e9), NULL));
    struct round r;
    struct rank_job jobs[MAX_RANKS];
    round_make(&r, shape_of(2, SK_F32, true), n, devices, SK_F32);
    double worst = 0;
    run_ranks(g, n - 1, SK_F32, &r, 1, NULL, jobs);
    for (int q = 0; q < n - 1; q++) worst = jobs[q].elapsed_s > worst ? jobs[q].elapsed_s : worst;
    unsigned st = sk_oneshot_group_status(g);
    if (jobs_ok(jobs, n - 1, "timeout", "a rank missing"))
        GT_CHECK((st & SK_ONESHOT_TIMED_OUT) && (int)(st & 0xff) == n - 1 && (int)(st >> 8 & 0xff) < n - 1 &&
                     worst >= timeout_s * 0.9 && worst < 5.0,
                 "%d ranks, rank %d never launches: the others give up after the %.1f s timeout (%.2f s), status %#x "
                 "names rank %d waiting for rank %d",
                 n, n - 1, timeout_s, worst, st, (int)(st >> 8 & 0xff), (int)(st & 0xff));
    worst = 0;
    run_ranks(g, n - 1, SK_F32, &r, 1, NULL, jobs);
    for (int q = 0; q < n - 1; q++) worst = jobs[q].elapsed_s > worst ? jobs[q].elapsed_s : worst;
    if (jobs_ok(jobs, n - 1, "timeout", "after the failure"))
        GT_CHECK(worst < timeout_s / 2, "%d ranks: once failed, a later launch gives up at once (%.3f s)", n, worst);
    GT_CUDA(sk_oneshot_group_reset(g));
    round_free(&r, n);
    round_make(&r, shape_of(3, SK_F32, true), n, devices, SK_F32);
    run_ranks(g, n, SK_F32, &r, 1, NULL, jobs);
    char first_bad[200] = "";
    if (jobs_ok(jobs, n, "timeout", "after the reset"))
        GT_CHECK(count_bad(&r, 1, n, SK_F32, first_bad, sizeof first_bad) == 0 && sk_oneshot_group_status(g) == 0,
                 "%d ranks: after a reset every rank's launch gives the reference again%s", n, first_bad);
    round_free(&r, n);
    sk_oneshot_group_destroy(g);

    /* A minute's timeout, which the abort must cut short. */
    GT_CUDA(sk_oneshot_group_create(&g, n, devices, 60000000000ull, NULL));
    round_make(&r, shape_of(0, SK_BF16, false), n, devices, SK_BF16);
    struct aborter a = {.g = g, .delay_s = 0.1};
    pthread_t th;
    pthread_create(&th, NULL, abort_later, &a);
    run_ranks(g, n - 1, SK_BF16, &r, 1, NULL, jobs);
    pthread_join(th, NULL);
    worst = 0;
    for (int q = 0; q < n - 1; q++) worst = jobs[q].elapsed_s > worst ? jobs[q].elapsed_s : worst;
    if (jobs_ok(jobs, n - 1, "abort", "a rank missing"))
        GT_CHECK(sk_oneshot_group_status(g) == SK_ONESHOT_ABORTED && worst < 5.0,
                 "%d ranks, rank %d never launches, the host aborts after %.1f s: the others give up (%.2f s, a "
                 "60 s timeout), status %#x",
                 n, n - 1, a.delay_s, worst, sk_oneshot_group_status(g));
    round_free(&r, n);
    sk_oneshot_group_destroy(g);
}

int main(void)
{
    if (!gt_have_gpu()) return 0;
    int n_gpus = 0;
    GT_CUDA(cudaGetDeviceCount(&n_gpus));
    const int same[MAX_RANKS] = {0, 0, 0, 0};
    struct sk_oneshot_peers p = {.rank = 0, .n_ranks = 1};
    float dummy[8];
    GT_CHECK(sk_allreduce_oneshot(&p, dummy, NULL, dummy, 1, 0, SK_ONESHOT_MAX_BYTES / 4 + 1, SK_F32, 0) ==
                     cudaErrorInvalidValue &&
                 sk_allreduce_oneshot(&p, dummy, NULL, dummy, 2, 7, 8, SK_F32, 0) == cudaErrorInvalidValue,
             "a message past SK_ONESHOT_MAX_BYTES, and parts closer than the count, are refused");
    for (int n = 2; n <= 4; n += 2)
        for (int dtype = 0; dtype < 2; dtype++)
            for (int residual = 0; residual < 2; residual++)
                check_sums(n, same, dtype ? SK_BF16 : SK_F32, residual, "on GPU 0");
    check_failures(2, same);
    check_failures(4, same);
    if (n_gpus >= 2) {
        const int m = n_gpus < MAX_RANKS ? n_gpus : MAX_RANKS, devices[MAX_RANKS] = {0, 1, 2, 3};
        struct sk_oneshot_group *g = NULL;
        int no_peer[2] = {-1, -1};
        cudaError_t e = sk_oneshot_group_create(&g, m, devices, 1000000000ull, no_peer);
        sk_oneshot_group_destroy(g);
        if (e == cudaErrorPeerAccessUnsupported) {
            GT_CHECK(no_peer[0] >= 0 && no_peer[1] >= 0 && no_peer[0] != no_peer[1],
                     "GPUs without peer access are refused, naming them (%d cannot reach %d)", no_peer[0], no_peer[1]);
            printf("SKIP: the one-shot all-reduce across GPUs (no peer access between GPU %d and %d)\n", no_peer[0],
                   no_peer[1]);
        } else {
            GT_CUDA(e);
            char where[64];
            const int sizes[2] = {2, m};
            for (int i = 0; i < (m > 2 ? 2 : 1); i++) {
                snprintf(where, sizeof where, "on %d GPUs (peer access)", sizes[i]);
                for (int dtype = 0; dtype < 2; dtype++)
                    check_sums(sizes[i], devices, dtype ? SK_BF16 : SK_F32, true, where);
                check_failures(sizes[i], devices);
            }
        }
    }
    return gt_finish();
}
