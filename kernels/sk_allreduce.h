/* The one-shot all-reduce (kernels/allreduce_oneshot.cu): a sum over the N ranks of one process
 * (a thread and a stream each) in one kernel per rank, for messages small enough that latency,
 * not bandwidth, bounds them (a decode step's all-reduces after attention and the MLP). Each rank
 * copies its partial into a buffer of its own, signals the others, waits for their signals and
 * reads every rank's copy directly, through unified addressing: the ranks share a GPU, or their
 * GPUs have peer access to each other (NVLink or PCIe). No IPC handle is involved: the ranks are
 * threads of one process. Every rank adds the copies in rank order 0, 1, ..., N-1 in fp32, so
 * every rank gets the same bits.
 *
 * The launch takes no host-side state that changes between launches (each rank's round counter
 * lives in its buffer and the kernel advances it), so it can be captured in a CUDA graph and
 * replayed. A rank that waits longer than the group's timeout for another, or finds the group
 * aborted, leaves its output unwritten, records why in the group's status word and exits: no
 * launch hangs. After that the group is broken (the ranks' rounds disagree) until
 * sk_oneshot_group_reset.
 *
 * Host code, callable from C; bf16 travels as uint16_t. */
#ifndef SLUICE_KERNELS_SK_ALLREDUCE_H
#define SLUICE_KERNELS_SK_ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#include "kernels/sk_shapes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The status word: 0 while the group is sound. */
#define SK_ONESHOT_ABORTED 0x80000000u   /* sk_oneshot_group_abort: stop waiting */
#define SK_ONESHOT_TIMED_OUT 0x40000000u /* | waiting rank << 8 | the rank it waited for */

/* A group of n ranks: their buffers (buf[r] on devices[r], every one addressable from every
 * rank's GPU) and the status word, in mapped pinned host memory so that the host can read it
 * after a failure and set it to abort while kernels wait. */
struct sk_oneshot_group {
    int n;
    int devices[SK_ONESHOT_MAX_RANKS];
    void *buf[SK_ONESHOT_MAX_RANKS];
    volatile unsigned int *status; /* host address; the kernels' is the same (unified addressing) */
    uint64_t timeout_ns;
};

/* What rank `rank`'s launches take: every rank's buffer, the status word, the timeout. */
struct sk_oneshot_peers {
    void *buf[SK_ONESHOT_MAX_RANKS];
    unsigned int *status;
    uint64_t timeout_ns;
    int rank, n_ranks;
};

/* Makes a group of n ranks (1 <= n <= SK_ONESHOT_MAX_RANKS), rank r's buffer on devices[r]
 * (several ranks may name one device): enables peer access between every two distinct devices
 * (once enabled it stays, for whoever else uses it), allocates and zeroes the buffers, and loads
 * the kernel on every device now (lazy loading would otherwise load it at a rank's first launch,
 * which synchronizes the device, and so waits for another rank's kernel that is waiting for this
 * one). A wait for a peer longer than timeout_ns fails the group. Restores the calling thread's
 * current device. cudaErrorPeerAccessUnsupported when two of the devices cannot reach each
 * other's memory: *no_peer (may be NULL) then holds those two devices. */
cudaError_t sk_oneshot_group_create(struct sk_oneshot_group **out, int n, const int *devices, uint64_t timeout_ns,
                                    int no_peer[2]);
/* Frees the buffers and the status word (after every rank's launches are done). */
void sk_oneshot_group_destroy(struct sk_oneshot_group *g);
/* Rank r's view of the group, for its launches. */
struct sk_oneshot_peers sk_oneshot_group_peers(const struct sk_oneshot_group *g, int r);
/* Makes every rank's waiting launch, and every later one, give up at its next check of the status
 * word: a rank that failed on the host side will never launch its part. Any thread, any time. */
void sk_oneshot_group_abort(struct sk_oneshot_group *g);
/* The status word (0: sound; else SK_ONESHOT_ABORTED or SK_ONESHOT_TIMED_OUT | ...). */
unsigned int sk_oneshot_group_status(const struct sk_oneshot_group *g);
/* Zeroes the buffers and the status word, synchronizing each device: a broken group made sound
 * again (tests), once no rank has a launch in flight. */
cudaError_t sk_oneshot_group_reset(struct sk_oneshot_group *g);

/* out[i] = residual[i] + sum over ranks k = 0, 1, ..., N-1 of partial_k[i], for i < count, where a
 * rank's partial is its n_parts parts added in order (part j at partial + j * part_stride
 * elements: a split product's sums, sk_hopper_gemm_parts) and rounded to dtype; the sum over the
 * ranks is in fp32, rounded once to dtype with the residual (NULL: none) added. dtype: SK_F32 or
 * SK_BF16 (sluice_kernels.h) for partial, residual and out alike. out may be residual (the
 * residual add fused: x += sum) or partial (in place); count * the dtype's size at most
 * SK_ONESHOT_MAX_BYTES. Every rank of the group launches it with the same count and dtype, in
 * the same order as its other launches on the group; each on its own stream, as a programmatic
 * dependent of the kernel before it (the kernels between two of a rank's launches must each end
 * after the one before them: an ordinary launch, or pdl_wait before they end, as every kernel
 * that reads its predecessor's output has). cudaErrorInvalidValue for arguments out of range. */
cudaError_t sk_allreduce_oneshot(const struct sk_oneshot_peers *p, void *out, const void *residual,
                                 const void *partial, int n_parts, int64_t part_stride, int64_t count, int dtype,
                                 cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
