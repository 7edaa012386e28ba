/* The NCCL communicator: one process drives N GPUs (ncclCommInitAll), each rank from its own
 * thread, each with its own stream. Collectives are queued on the rank's stream and return;
 * comm_sync polls the stream, NCCL's asynchronous error and a deadline, so that a rank whose
 * peer failed or never came returns an error instead of waiting forever. On any failure the
 * rank aborts its NCCL communicator (ncclCommAbort, which also ends its kernels still
 * waiting on a peer) and fails the group; every other rank sees the group's failure at its
 * next call or while it syncs, and aborts its own. Built only where NCCL's header is found (the
 * Makefile's HAVE_NCCL).
 *
 * The library is opened at run time (dlopen), not linked: a worker that never asks for NCCL
 * (the CPU backend, one GPU without --tensor-parallel-size) starts on a machine without it, and
 * one that asks is told it is missing. Tried in order: $SLUICE_NCCL_LIBRARY, libnccl.so.2 where
 * the dynamic loader looks (LD_LIBRARY_PATH, the program's run path), and the build machine's
 * copy (SLUICE_NCCL_LIBDIR). */
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/parallel/comm.h"
#include "worker/parallel/comm_internal.h"


/* NCCL's entry points, from the library opened once. */
static struct {
    __typeof__(&ncclCommInitAll) CommInitAll;
    __typeof__(&ncclAllReduce) AllReduce;
    __typeof__(&ncclAllGather) AllGather;
    __typeof__(&ncclCommAbort) CommAbort;
    __typeof__(&ncclCommDestroy) CommDestroy;
    __typeof__(&ncclCommGetAsyncError) CommGetAsyncError;
    __typeof__(&ncclGetErrorString) GetErrorString;
    __typeof__(&ncclGetLastError) GetLastError;
    char error[512]; /* why it could not be opened; "" once it is */
} nccl;
/* Held while the library is opened, once per process (nccl_opened). */
static pthread_mutex_t nccl_lock = PTHREAD_MUTEX_INITIALIZER;
static bool nccl_opened;

#ifndef SLUICE_NCCL_LIBDIR
#define SLUICE_NCCL_LIBDIR ""
#endif

/* library: the one --nccl-library named, or NULL. */
static void nccl_open(const char *library)
{
    char built[4096];
    snprintf(built, sizeof built, "%slibnccl.so.2", SLUICE_NCCL_LIBDIR);
    /* A library named on the command line is the only one tried: never another in its place. */
    const bool named = library && *library;
    const char *tries[] = {named ? library : "libnccl.so.2", named || !SLUICE_NCCL_LIBDIR[0] ? NULL : built};
    void *h = NULL;
    char last[300] = "";
    for (size_t i = 0; i < sizeof tries / sizeof tries[0] && !h; i++) {
        if (!tries[i]) continue;
        h = dlopen(tries[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) snprintf(last, sizeof last, "%s", dlerror());
    }
    if (!h) {
        snprintf(nccl.error, sizeof nccl.error,
                 "cannot open the NCCL library (%s); --nccl-library (SLUICE_NCCL_LIBRARY) names its path", last);
        return;
    }
    struct {
        void **fn;
        const char *name;
    } syms[] = {
        {(void **)&nccl.CommInitAll, "ncclCommInitAll"},
        {(void **)&nccl.AllReduce, "ncclAllReduce"},
        {(void **)&nccl.AllGather, "ncclAllGather"},
        {(void **)&nccl.CommAbort, "ncclCommAbort"},
        {(void **)&nccl.CommDestroy, "ncclCommDestroy"},
        {(void **)&nccl.CommGetAsyncError, "ncclCommGetAsyncError"},
        {(void **)&nccl.GetErrorString, "ncclGetErrorString"},
        {(void **)&nccl.GetLastError, "ncclGetLastError"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].fn = dlsym(h, syms[i].name);
        if (!*syms[i].fn) {
            snprintf(nccl.error, sizeof nccl.error, "the NCCL library has no %s (too old?)", syms[i].name);
            dlclose(h);
            return;
        }
    }
    nccl.error[0] = 0;
}

struct nccl_group;

struct nccl_comm {
    struct comm base;
    struct nccl_group *g;
    ncclComm_t nc; /* NULL once aborted */
    cudaStream_t stream;
    bool own_stream;
    int device;
    float *one; /* a float on the device: comm_barrier's all-reduce */
};

struct nccl_group {
    int n;
    double timeout_s;
    pthread_mutex_t mu;
    atomic_bool failed;
    char why[512];
    struct nccl_comm ranks[];
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void group_fail(struct nccl_group *g, int rank, const char *why)
{
    pthread_mutex_lock(&g->mu);
    if (!atomic_load(&g->failed)) {
        snprintf(g->why, sizeof g->why, "rank %d: %s", rank, why);
        atomic_store(&g->failed, true);
    }
    pthread_mutex_unlock(&g->mu);
}

static void abort_own(struct nccl_comm *nc)
{
    if (!nc->nc) return;
    nccl.CommAbort(nc->nc);
    nc->nc = NULL;
}

/* Records the failure on this rank and the group, aborts this rank's NCCL communicator. */
static int fail_rank(struct nccl_comm *nc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_rank(struct nccl_comm *nc, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    group_fail(nc->g, nc->base.rank, msg);
    abort_own(nc);
    return comm_fail(&nc->base, "%s", msg);
}

#define NCCL_CHECK(nc, stmt)                                                                                    \
    do {                                                                                                        \
        ncclResult_t r_ = (stmt);                                                                               \
        if (r_ != ncclSuccess && r_ != ncclInProgress)                                                          \
            return fail_rank((nc), "%s failed at %s:%d: %s (%s)", #stmt, __FILE__, __LINE__,                     \
                             nccl.GetErrorString(r_), (nc)->nc ? nccl.GetLastError((nc)->nc) : "");               \
    } while (0)

#define CUDA_CHECK(nc, stmt)                                                                                    \
    do {                                                                                                        \
        cudaError_t e_ = (stmt);                                                                                \
        if (e_ != cudaSuccess)                                                                                  \
            return fail_rank((nc), "%s failed at %s:%d: %s", #stmt, __FILE__, __LINE__, cudaGetErrorString(e_)); \
    } while (0)

/* Before each call: the group has not failed (else this rank aborts too), and this thread's
 * current device is the rank's. */
static int ready(struct nccl_comm *nc, const char *what)
{
    if (atomic_load(&nc->g->failed)) {
        abort_own(nc);
        pthread_mutex_lock(&nc->g->mu);
        int rc = comm_fail(&nc->base, "%s: the group has failed: %s", what, nc->g->why);
        pthread_mutex_unlock(&nc->g->mu);
        return rc;
    }
    if (!nc->nc) return comm_fail(&nc->base, "%s: this rank's NCCL communicator was aborted", what);
    int dev = -1;
    CUDA_CHECK(nc, cudaGetDevice(&dev));
    if (dev != nc->device) CUDA_CHECK(nc, cudaSetDevice(nc->device));
    return 0;
}

static int nccl_type(struct nccl_comm *nc, enum comm_dtype dtype, ncclDataType_t *t)
{
    switch (dtype) {
    case COMM_F32: *t = ncclFloat32; return 0;
    case COMM_BF16: *t = ncclBfloat16; return 0;
    }
    return fail_rank(nc, "unknown element type %d", (int)dtype);
}

static int nccl_all_reduce_sum(struct comm *c, void *buf, size_t count, enum comm_dtype dtype)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    ncclDataType_t t = ncclFloat32;
    if (ready(nc, "all_reduce_sum") || nccl_type(nc, dtype, &t)) return -1;
    NCCL_CHECK(nc, nccl.AllReduce(buf, buf, count, t, ncclSum, nc->nc, nc->stream));
    return 0;
}

static int nccl_all_gather(struct comm *c, const void *send, void *recv, size_t count, enum comm_dtype dtype)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    ncclDataType_t t = ncclFloat32;
    if (ready(nc, "all_gather") || nccl_type(nc, dtype, &t)) return -1;
    NCCL_CHECK(nc, nccl.AllGather(send, recv, count, t, nc->nc, nc->stream));
    return 0;
}

static int nccl_sync(struct comm *c)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    if (ready(nc, "sync")) return -1;
    double deadline = now_s() + nc->g->timeout_s;
    for (;;) {
        cudaError_t e = cudaStreamQuery(nc->stream);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady)
            return fail_rank(nc, "the rank's stream failed: %s", cudaGetErrorString(e));
        ncclResult_t async = ncclSuccess;
        NCCL_CHECK(nc, nccl.CommGetAsyncError(nc->nc, &async));
        if (async != ncclSuccess && async != ncclInProgress)
            return fail_rank(nc, "NCCL reported an asynchronous error: %s (%s)", nccl.GetErrorString(async),
                             nccl.GetLastError(nc->nc));
        if (atomic_load(&nc->g->failed)) return ready(nc, "sync");
        if (now_s() > deadline)
            return fail_rank(nc, "its collectives were not done after %.3g s (a peer rank failed or never came)",
                             nc->g->timeout_s);
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 50000};
        nanosleep(&pause, NULL);
    }
}

static int nccl_barrier(struct comm *c)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    if (nccl_all_reduce_sum(c, nc->one, 1, COMM_F32)) return -1;
    return nccl_sync(c);
}

static void nccl_abort(struct comm *c, const char *why)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    char msg[400];
    snprintf(msg, sizeof msg, "aborted: %s", why && *why ? why : "no reason given");
    group_fail(nc->g, c->rank, msg);
    abort_own(nc);
}

static bool nccl_failed(const struct comm *c)
{
    struct nccl_comm *nc = (struct nccl_comm *)c;
    if (atomic_load(&nc->g->failed)) return true;
    if (!nc->nc) return false;
    ncclResult_t async = ncclSuccess, rc = nccl.CommGetAsyncError(nc->nc, &async);
    if (rc == ncclSuccess && (async == ncclSuccess || async == ncclInProgress)) return false;
    char msg[300];
    snprintf(msg, sizeof msg, "NCCL reported an asynchronous error: %s",
             nccl.GetErrorString(rc != ncclSuccess ? rc : async));
    group_fail(nc->g, c->rank, msg);
    return true;
}

static void nccl_destroy(struct comm **ranks, int n)
{
    struct nccl_group *g = ((struct nccl_comm *)ranks[0])->g;
    for (int r = 0; r < g->n; r++) {
        struct nccl_comm *nc = &g->ranks[r];
        if (cudaSetDevice(nc->device) != cudaSuccess) continue;
        /* A failed group's peers may be gone: nothing may wait on them. */
        if (nc->nc) atomic_load(&g->failed) ? nccl.CommAbort(nc->nc) : nccl.CommDestroy(nc->nc);
        if (nc->one) cudaFree(nc->one);
        if (nc->own_stream && nc->stream) cudaStreamDestroy(nc->stream);
    }
    pthread_mutex_destroy(&g->mu);
    free(g);
    for (int r = 0; r < n; r++) ranks[r] = NULL;
}

static const struct comm_ops nccl_comm_ops = {
    .kind = "nccl",
    .all_reduce_sum = nccl_all_reduce_sum,
    .all_gather = nccl_all_gather,
    .barrier = nccl_barrier,
    .sync = nccl_sync,
    .abort = nccl_abort,
    .failed = nccl_failed,
    .destroy = nccl_destroy,
};

int comm_nccl_create(struct comm **ranks, int n, const int *devices, void *const *streams, double timeout_s,
                     const char *library, char *err, size_t errlen)
{
    if (n < 1 || n > COMM_MAX_RANKS) {
        snprintf(err, errlen, "a communicator has 1 to %d ranks, not %d", COMM_MAX_RANKS, n);
        return -1;
    }
    /* The library is opened once per process: a later call's library changes nothing. */
    pthread_mutex_lock(&nccl_lock);
    if (!nccl_opened) nccl_open(library);
    nccl_opened = true;
    pthread_mutex_unlock(&nccl_lock);
    if (nccl.error[0]) {
        snprintf(err, errlen, "%s", nccl.error);
        return -1;
    }
    int visible = 0;
    cudaError_t ce = cudaGetDeviceCount(&visible);
    if (ce != cudaSuccess || visible < 1) {
        snprintf(err, errlen, "no CUDA device is visible (%s)", ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
        return -1;
    }
    int devlist[COMM_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        devlist[r] = devices ? devices[r] : r;
        if (devlist[r] < 0 || devlist[r] >= visible) {
            snprintf(err, errlen, "rank %d's GPU %d is not one of the %d visible (CUDA_VISIBLE_DEVICES)", r, devlist[r],
                     visible);
            return -1;
        }
    }
    struct nccl_group *g = calloc(1, sizeof *g + (size_t)n * sizeof(struct nccl_comm));
    if (!g || pthread_mutex_init(&g->mu, NULL) != 0) {
        free(g);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->n = n;
    g->timeout_s = timeout_s > 0 ? timeout_s : COMM_DEFAULT_TIMEOUT_S;
    atomic_init(&g->failed, false);
    ncclComm_t comms[COMM_MAX_RANKS];
    ncclResult_t nr = nccl.CommInitAll(comms, n, devlist);
    if (nr != ncclSuccess) {
        snprintf(err, errlen, "ncclCommInitAll over %d GPU(s) failed: %s (%s)", n, nccl.GetErrorString(nr),
                 nccl.GetLastError(NULL));
        pthread_mutex_destroy(&g->mu);
        free(g);
        return -1;
    }
    for (int r = 0; r < n; r++) {
        struct nccl_comm *nc = &g->ranks[r];
        nc->base = (struct comm){.ops = &nccl_comm_ops, .rank = r, .size = n};
        nc->g = g;
        nc->nc = comms[r];
        nc->device = devlist[r];
        ranks[r] = &nc->base;
    }
    for (int r = 0; r < n; r++) {
        struct nccl_comm *nc = &g->ranks[r];
        const char *what = "cudaSetDevice";
        ce = cudaSetDevice(nc->device);
        if (ce == cudaSuccess && streams && streams[r]) {
            nc->stream = (cudaStream_t)streams[r];
        } else if (ce == cudaSuccess) {
            what = "cudaStreamCreateWithFlags";
            ce = cudaStreamCreateWithFlags(&nc->stream, cudaStreamNonBlocking);
            nc->own_stream = ce == cudaSuccess;
        }
        if (ce == cudaSuccess) {
            what = "cudaMalloc";
            ce = cudaMalloc((void **)&nc->one, sizeof(float));
        }
        if (ce == cudaSuccess) {
            what = "cudaMemset";
            ce = cudaMemset(nc->one, 0, sizeof(float));
        }
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "rank %d on GPU %d: %s failed: %s", r, nc->device, what, cudaGetErrorString(ce));
            nccl_destroy(ranks, n);
            return -1;
        }
    }
    return 0;
}
