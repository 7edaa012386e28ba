/* A communicator: the collectives that tensor parallelism needs between the ranks of one
 * worker process (one thread per rank), behind one interface with two implementations.
 *
 *   CPU  (comm_cpu_create): threads and shared memory. Sums run in rank order 0, 1, ..., N-1
 *        whatever the threads' timing, so every rank gets the same bits and a tensor-parallel
 *        run is reproducible. float32 only. Buffers are host memory.
 *   NCCL (comm_nccl_create): ncclCommInitAll over N GPUs of this process, one CUDA stream per
 *        rank. Buffers are device memory on the rank's GPU; collectives are queued on the
 *        rank's stream and return at once; comm_sync waits for them, watching NCCL's
 *        asynchronous errors and a timeout. float32 and bf16. In a build without NCCL,
 *        comm_nccl_create fails saying so.
 *
 * Every rank calls the same collectives in the same order, each from its own thread, with the
 * same count. No call hangs: a rank that fails calls comm_abort (or a collective fails on its
 * own), and every rank's pending and later collectives return an error within the group's
 * timeout at most; a rank that stops calling makes the others time out. Once a group has
 * failed, every later call fails too: a device error ends the worker's serving (its /health
 * says so) rather than risk ranks that disagree. */
#ifndef SLUICE_WORKER_PARALLEL_COMM_H
#define SLUICE_WORKER_PARALLEL_COMM_H

#include <stdbool.h>
#include <stddef.h>

/* The most ranks one group has: the GPUs of one host. */
#define COMM_MAX_RANKS 64
/* How long a rank waits for the others at one collective before the group fails. */
#define COMM_DEFAULT_TIMEOUT_S 300.0

enum comm_dtype { COMM_F32 = 0, COMM_BF16 };

/* One rank's handle; a group is the array that comm_*_create fills, one handle per rank. */
struct comm;

/* Creates a group of n ranks (1 <= n <= COMM_MAX_RANKS) into ranks[0 .. n-1]. timeout_s <= 0
 * takes COMM_DEFAULT_TIMEOUT_S. */
int comm_cpu_create(struct comm **ranks, int n, double timeout_s, char *err, size_t errlen);
/* devices[i] is rank i's CUDA device ordinal (NULL: 0 .. n-1). streams[i], when streams is not
 * NULL, is the cudaStream_t rank i's collectives go on (the caller's compute stream, so that
 * they order with its kernels and can be captured in its CUDA graphs); NULL makes one per
 * rank, owned by the group. library: the NCCL library to dlopen (NULL: libnccl.so.2 as the
 * loader finds it); the first call's is the process's. */
int comm_nccl_create(struct comm **ranks, int n, const int *devices, void *const *streams, double timeout_s,
                     const char *library, char *err, size_t errlen);
/* Frees a whole group (after every rank's thread is done with it). */
void comm_destroy(struct comm **ranks, int n);

int comm_rank(const struct comm *c);
int comm_size(const struct comm *c);
/* "cpu" or "nccl". */
const char *comm_kind(const struct comm *c);

/* buf[i] = sum over ranks of their buf[i], for i < count, in place. */
int comm_all_reduce_sum(struct comm *c, void *buf, size_t count, enum comm_dtype dtype);
/* recv = rank 0's send, then rank 1's, ...: n * count elements. send and recv do not overlap,
 * or send is recv + rank * count (in place). */
int comm_all_gather(struct comm *c, const void *send, void *recv, size_t count, enum comm_dtype dtype);
/* Returns once every rank has reached it (NCCL: and every rank's queued collectives are done). */
int comm_barrier(struct comm *c);
/* Waits until this rank's queued collectives are done (CPU: they are already, returns 0). */
int comm_sync(struct comm *c);
/* Fails the group: every rank's pending and later calls return an error naming this rank and
 * why. Safe to call from any rank's thread at any time, more than once. */
void comm_abort(struct comm *c, const char *why);
/* Whether the group has failed (NCCL: also asks NCCL for this rank's asynchronous error, so
 * call it from the rank's thread). */
bool comm_failed(const struct comm *c);
/* What the last failed call on this rank said ("" when none). */
const char *comm_error(const struct comm *c);

#endif
