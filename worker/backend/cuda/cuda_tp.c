/* Tensor parallelism inside one CUDA backend: the collectives a step makes on its stream.
 *
 * Alone (no flag) there is no communicator and none of this runs. With --tensor-parallel-size 1
 * the backend makes an NCCL communicator of its one GPU, whose all-reduces (after attention and
 * after the MLP) and logits gather are no-ops that run the NCCL path end to end, eagerly and in
 * CUDA graphs. A rank of a larger group (cuda_tp_group.c) holds its shard of the weights
 * (worker/parallel/tp_plan.h), and its step meets the other ranks' here:
 *
 *   embedding   each rank's rows (zeros for another rank's tokens) summed: one all-reduce
 *   attention,  the row-parallel o_proj's and down's partial outputs summed, before their bias
 *   MLP         and Gemma's post-norms, which every rank then applies alike
 *   lm_head     each rank's share of the vocabulary's logits gathered, then laid out whole, so
 *               every rank holds the same logits and samples the same tokens
 *
 * The collectives go through NCCL, or (host, a test of the sharding where the ranks share one
 * GPU, which NCCL refuses) through host memory and the CPU communicator: the stream is waited
 * for, the buffer copied out, summed or gathered, and copied back; such steps cannot be captured
 * in graphs, so the group runs them eagerly. With --cuda-options tp_oneshot=1 the all-reduces of
 * small steps (cuda_plan_all_reduce) take the one-shot kernel instead (cuda_tp_oneshot.c), which
 * adds the sublayers' sums into the residual itself where nothing comes between. */
#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/parallel/comm.h"

int cuda_tp_init(struct cuda_backend *b, const struct backend_options *opt, const struct cuda_tp *rank)
{
    int rc = 0;
    const int V = b->base.config.vocab_size;
    b->tp = (struct cuda_tp){.size = 1, .vocab_rows = V, .vocab_per_rank = V};
    if (rank) {
        b->tp = *rank;
        b->tp.comm = NULL;
        b->tp.owns_comm = false;
        const size_t S = (size_t)b->base.max_batch_seqs, w = (size_t)rank->vocab_per_rank;
        CUDA_CHECK(b, cudaMalloc((void **)&b->tp.gathered, (size_t)rank->size * S * w * 4));
        b->ws.bytes += (size_t)rank->size * S * w * 4;
        if (b->tp.host) {
            /* The largest collective: an all-reduce of the whole delta buffer (T rows of the
             * hidden size, or a decode step's split parts: workspace_alloc), or a gather's own
             * share and every rank's. */
            const size_t T = (size_t)b->base.max_batch_tokens > CUDA_PARTS_ROWS ? (size_t)b->base.max_batch_tokens
                                                                                 : CUDA_PARTS_ROWS;
            size_t n = T * (size_t)b->base.config.hidden_size;
            if (n < (size_t)(rank->size + 1) * S * w) n = (size_t)(rank->size + 1) * S * w;
            CUDA_CHECK(b, cudaHostAlloc((void **)&b->tp.host_buf, n * 4, cudaHostAllocDefault));
            b->tp.host_floats = n;
        }
        return 0;
    }
    if (opt->tensor_parallel_size < 1) return 0;
    char err[512];
    void *streams[1] = {b->stream};
    /* The step's own watchdog (cuda_watchdog.c) bounds the wait for its collectives. */
    if (comm_nccl_create(&b->tp.comm, 1, &b->device, streams, b->watchdog.timeout_s, b->opt.nccl_library, err,
                         sizeof err) != 0)
        CUDA_FAIL(b, "cuda: --tensor-parallel-size 1: %.450s", err);
    b->tp.owns_comm = true;
    if (opt->cuda.tp_oneshot) {
        if (cuda_tp_oneshot_create(&b->tp.oneshot_group, 1, &b->device, b->watchdog.timeout_s, err, sizeof err) != 0)
            CUDA_FAIL(b, "%.500s", err);
        b->tp.owns_oneshot = true;
        b->tp.oneshot = sk_oneshot_group_peers(b->tp.oneshot_group, 0);
    }
    log_info("cuda: tensor parallel over 1 rank: an NCCL communicator on GPU %d (its all-reduces are no-ops%s)",
             b->device, b->tp.oneshot_group ? "; small ones through the one-shot kernel" : "");
fail:
    return rc;
}

void cuda_tp_attach(struct cuda_backend *b, struct comm *comm, struct sk_oneshot_group *oneshot)
{
    b->tp.comm = comm;
    b->tp.oneshot_group = oneshot;
    if (oneshot) b->tp.oneshot = sk_oneshot_group_peers(oneshot, b->tp.rank);
}

void cuda_tp_free(struct cuda_backend *b)
{
    if (b->tp.oneshot_group && b->tp.owns_oneshot) sk_oneshot_group_destroy(b->tp.oneshot_group);
    if (b->tp.comm && b->tp.owns_comm) comm_destroy(&b->tp.comm, 1);
    if (b->tp.gathered) cudaFree(b->tp.gathered);
    if (b->tp.host_buf) cudaFreeHost(b->tp.host_buf);
    b->tp = (struct cuda_tp){0};
}

/* The host collectives' copy out of the device: the stream's work up to here, then n floats. */
static int to_host(struct cuda_backend *b, const float *x, size_t n)
{
    int rc = 0;
    if (n > b->tp.host_floats)
        CUDA_FAIL(b, "cuda: tensor parallel: a collective of %zu floats exceeds the staging buffer (%zu)", n,
                  b->tp.host_floats);
    CUDA_CHECK(b, cudaMemcpyAsync(b->tp.host_buf, x, n * 4, cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

/* The communicator's all-reduce of x[0 .. n), in place. */
static int comm_all_reduce(struct cuda_backend *b, float *x, size_t n)
{
    int rc = 0;
    if (!b->tp.comm) return 0;
    if (b->tp.host) {
        if ((rc = to_host(b, x, n)) < 0) goto fail;
        if (comm_all_reduce_sum(b->tp.comm, b->tp.host_buf, n, COMM_F32) != 0)
            CUDA_FAIL(b, "cuda: tensor parallel all-reduce: %.450s", comm_error(b->tp.comm));
        CUDA_CHECK(b, cudaMemcpyAsync(x, b->tp.host_buf, n * 4, cudaMemcpyHostToDevice, b->stream));
    } else if (comm_all_reduce_sum(b->tp.comm, x, n, COMM_F32) != 0) {
        CUDA_FAIL(b, "cuda: tensor parallel all-reduce: %.450s", comm_error(b->tp.comm));
    }
fail:
    return rc;
}

/* The path of an all-reduce of count floats (cuda_plan.h). */
static enum cuda_all_reduce path(const struct cuda_backend *b, size_t count, bool residual_next)
{
    return cuda_plan_all_reduce(b->tp.oneshot_group != NULL, b->plan.deterministic, b->tp.size, count * 4,
                                residual_next);
}

int cuda_tp_all_reduce_embed(struct cuda_backend *b, float *x, size_t n)
{
    if (b->tp.size < 2) return 0;
    if (path(b, n, false) == CUDA_ALL_REDUCE_COMM) return comm_all_reduce(b, x, n);
    return cuda_tp_oneshot(b, x, NULL, x, 1, 0, n);
}

int cuda_tp_sum_delta(struct cuda_backend *b, int *delta_parts, int64_t part_stride, int rows, bool residual_next)
{
    int rc = 0;
    float *delta = b->ws.delta, *x = b->ws.x;
    const size_t count = (size_t)rows * (size_t)b->base.config.hidden_size;
    if (!b->tp.comm) return 0;
    switch (path(b, count, residual_next)) {
    case CUDA_ALL_REDUCE_COMM:
        /* Each part summed over the ranks is the sum's part: the norm adds them as before. */
        return comm_all_reduce(b, delta, (size_t)*delta_parts * (size_t)part_stride);
    case CUDA_ALL_REDUCE_ONESHOT:
        rc = cuda_tp_oneshot(b, delta, NULL, delta, *delta_parts, part_stride, count);
        *delta_parts = 1;
        break;
    case CUDA_ALL_REDUCE_ONESHOT_FUSED:
        rc = cuda_tp_oneshot(b, x, x, delta, *delta_parts, part_stride, count);
        *delta_parts = 0;
        break;
    }
    return rc;
}

float *cuda_tp_lm_head_out(struct cuda_backend *b, float *logits)
{
    /* The sampler's scratch is idle until the logits are whole. */
    return b->tp.size > 1 ? b->ws.work : logits;
}

int cuda_tp_gather_logits(struct cuda_backend *b, const float *lm_out, float *logits, int rows)
{
    int rc = 0;
    const size_t V = (size_t)b->base.config.vocab_size;
    if (!b->tp.comm) return 0;
    if (b->tp.size == 1) {
        /* In place: rank 0's part of the gathered buffer is its own. */
        if (comm_all_gather(b->tp.comm, logits, logits, (size_t)rows * V, COMM_F32) != 0)
            CUDA_FAIL(b, "cuda: tensor parallel all-gather of the logits: %.450s", comm_error(b->tp.comm));
        return 0;
    }
    /* Each rank sends rows x vocab_per_rank floats, its rows of vocab_rows logits first (the last
     * rank's share may be shorter; the rest is not read), and rank k's block of the gathered
     * buffer is laid into columns k * vocab_per_rank .. of every row. */
    const int n = b->tp.size, w = b->tp.vocab_per_rank;
    const size_t count = (size_t)rows * (size_t)w;
    if (b->tp.host) {
        float *send = b->tp.host_buf, *recv = b->tp.host_buf + count;
        if ((rc = to_host(b, lm_out, count)) < 0) goto fail;
        if (comm_all_gather(b->tp.comm, send, recv, count, COMM_F32) != 0)
            CUDA_FAIL(b, "cuda: tensor parallel all-gather of the logits: %.450s", comm_error(b->tp.comm));
        CUDA_CHECK(b, cudaMemcpyAsync(b->tp.gathered, recv, (size_t)n * count * 4, cudaMemcpyHostToDevice, b->stream));
    } else if (comm_all_gather(b->tp.comm, lm_out, b->tp.gathered, count, COMM_F32) != 0) {
        CUDA_FAIL(b, "cuda: tensor parallel all-gather of the logits: %.450s", comm_error(b->tp.comm));
    }
    for (int k = 0; k < n; k++) {
        const size_t begin = (size_t)k * (size_t)w;
        if (begin >= V) break;
        const size_t len = begin + (size_t)w <= V ? (size_t)w : V - begin;
        CUDA_CHECK(b, cudaMemcpy2DAsync(logits + begin, V * 4, b->tp.gathered + (size_t)k * count, len * 4, len * 4,
                                        (size_t)rows, cudaMemcpyDeviceToDevice, b->stream));
    }
fail:
    return rc;
}

int cuda_tp_check(struct cuda_backend *b)
{
    int rc = 0;
    if ((rc = cuda_tp_oneshot_check(b)) < 0) goto fail;
    if (b->tp.comm && comm_failed(b->tp.comm))
        CUDA_FAIL(b, "cuda: the tensor parallel communicator failed: %.450s", comm_error(b->tp.comm));
fail:
    return rc;
}
