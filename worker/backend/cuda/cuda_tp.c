/* Tensor parallelism on the CUDA backend, so far for one rank: with --tensor-parallel-size 1 the
 * backend makes an NCCL communicator of one GPU on its own stream, and each step all-reduces
 * the attention's and the MLP's outputs and gathers the logits through it, where N ranks would
 * (worker/parallel/tp_plan.h). With one rank these are no-ops whose results equal the backend
 * without a communicator; they run the NCCL path end to end (eagerly and in CUDA graphs, whose
 * capture records them) until the backend shards its weights over several GPUs. Without the
 * flag (tensor_parallel_size 0) there is no communicator and none of this runs. */
#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/parallel/comm.h"

int cuda_tp_init(struct cuda_backend *b, const struct backend_options *opt)
{
    int rc = 0;
    if (opt->tensor_parallel_size < 1) return 0;
    if (opt->tensor_parallel_size > 1)
        CUDA_FAIL(b, "cuda: --tensor-parallel-size %d: the CUDA backend shards over 1 GPU so far (--device cpu runs "
                     "any size)",
                  (int)opt->tensor_parallel_size);
    char err[512];
    void *streams[1] = {b->stream};
    /* The step's own watchdog (cuda_watchdog.c) bounds the wait for its collectives. */
    if (comm_nccl_create(&b->tp_comm, 1, &b->device, streams, b->watchdog.timeout_s, b->opt.nccl_library, err,
                         sizeof err) != 0)
        CUDA_FAIL(b, "cuda: --tensor-parallel-size 1: %.450s", err);
    log_info("cuda: tensor parallel over 1 rank: an NCCL communicator on GPU %d (its all-reduces are no-ops)",
             b->device);
fail:
    return rc;
}

void cuda_tp_free(struct cuda_backend *b)
{
    if (b->tp_comm) comm_destroy(&b->tp_comm, 1);
}

int cuda_tp_all_reduce(struct cuda_backend *b, float *x, size_t n)
{
    int rc = 0;
    if (!b->tp_comm) return 0;
    if (comm_all_reduce_sum(b->tp_comm, x, n, COMM_F32) != 0)
        CUDA_FAIL(b, "cuda: tensor parallel all-reduce: %.450s", comm_error(b->tp_comm));
fail:
    return rc;
}

int cuda_tp_gather_logits(struct cuda_backend *b, float *logits, size_t n)
{
    int rc = 0;
    if (!b->tp_comm) return 0;
    /* In place: rank 0's part of the gathered buffer is its own. */
    if (comm_all_gather(b->tp_comm, logits, logits, n, COMM_F32) != 0)
        CUDA_FAIL(b, "cuda: tensor parallel all-gather of the logits: %.450s", comm_error(b->tp_comm));
fail:
    return rc;
}

int cuda_tp_check(struct cuda_backend *b)
{
    int rc = 0;
    if (b->tp_comm && comm_failed(b->tp_comm))
        CUDA_FAIL(b, "cuda: the tensor parallel communicator failed: %.450s", comm_error(b->tp_comm));
fail:
    return rc;
}
