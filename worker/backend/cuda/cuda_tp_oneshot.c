/* --cuda-options tp_oneshot=1: a tensor-parallel step's small all-reduces in one kernel per rank
 * (kernels/sk_allreduce.h) instead of NCCL's, where cuda_plan_all_reduce takes it: the ranks read
 * each other's memory directly, so their GPUs must have peer access (NVLink or PCIe), or be the
 * same GPU (tp_nccl=0, how it is tested on one GPU). NCCL stays the default and the reference.
 *
 * A rank that never launches its part makes the others give up after half the step timeout, so
 * that the step fails naming the ranks before the watchdog would call the GPU stuck; a rank that
 * fails on the host side aborts the group (cuda_tp_group.c), which ends the others' waits at once.
 * Either way the group is broken for good, and every later step fails, as after any device
 * error. */
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/parallel/comm.h"

int cuda_tp_oneshot_create(struct sk_oneshot_group **out, int n, const int *devices, double step_timeout_s,
                           char *err, size_t errlen)
{
    int no_peer[2] = {-1, -1};
    cudaError_t e = sk_oneshot_group_create(out, n, devices, (uint64_t)(step_timeout_s * 0.5e9), no_peer);
    if (e == cudaErrorPeerAccessUnsupported) {
        snprintf(err, errlen,
                 "cuda: --cuda-options tp_oneshot=1: GPU %d cannot access GPU %d's memory (no peer access over NVLink "
                 "or PCIe), which the one-shot all-reduce reads directly; without tp_oneshot the ranks meet through "
                 "NCCL alone",
                 no_peer[0], no_peer[1]);
        return -1;
    }
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cuda: --cuda-options tp_oneshot=1: the one-shot all-reduce's buffers: %s",
                 cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

int cuda_tp_oneshot_check(struct cuda_backend *b)
{
    int rc = 0;
    const unsigned st = b->tp.oneshot_group ? sk_oneshot_group_status(b->tp.oneshot_group) : 0;
    if (st & SK_ONESHOT_TIMED_OUT)
        CUDA_FAIL(b, "cuda: tensor parallel one-shot all-reduce: rank %u waited more than %.1f s for rank %u",
                  (st >> 8) & 0xffu, (double)b->tp.oneshot.timeout_ns * 1e-9, st & 0xffu);
    if (st)
        CUDA_FAIL(b, "cuda: tensor parallel one-shot all-reduce: aborted (another rank failed)");
fail:
    return rc;
}

int cuda_tp_oneshot(struct cuda_backend *b, float *out, const float *residual, const float *partial, int n_parts,
                    int64_t part_stride, size_t count)
{
    int rc = 0;
    /* A failed group's rounds disagree: launch nothing more into it. */
    if ((rc = cuda_tp_oneshot_check(b)) < 0) goto fail;
    /* Ranks that may share a GPU (host mode) meet here first. Otherwise a rank could launch and
     * wait on the device while another, before its own launch, makes a call that waits for the
     * whole device (lazy module loading, cudaFree): each would wait for the other until the
     * timeout. Ranks on GPUs of their own wait only for their own device's work, all of which
     * comes before launches every rank makes. */
    if (b->tp.host && comm_barrier(b->tp.comm) != 0)
        CUDA_FAIL(b, "cuda: tensor parallel all-reduce: %.450s", comm_error(b->tp.comm));
    CUDA_CHECK(b, sk_allreduce_oneshot(&b->tp.oneshot, out, residual, partial, n_parts, part_stride, (int64_t)count,
                                       SK_F32, b->stream));
fail:
    return rc;
}
