/* The CUDA backend's life cycle: device checks, weights, activation workspace, and the paged KV
 * cache sized from what memory is left (--gpu-memory-utilization).
 *
 * Options (struct cuda_options, from the worker's flags) are read here, at creation, and nowhere
 * below: the choices they fix live in the backend's state. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/backend/cuda/cuda_options.h"


void cuda_report(struct cuda_backend *b, const char *what, const char *msg, const char *file, int line)
{
    snprintf(b->base.error, sizeof b->base.error, "cuda: %s failed: %s (%s:%d)", what, msg, file, line);
}

static void cuda_free(struct backend *base)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    if (!b) return;
    if (b->stuck) {
        /* Every call that waits for the device would wait forever: the process's exit frees the rest. */
        free(b->prof);
        free(b->layers);
        free(b);
        return;
    }
    cudaSetDevice(b->device);
    if (b->stream) cudaStreamSynchronize(b->stream);
    for (int i = 0; i < b->n_graphs; i++) cudaGraphExecDestroy(b->graphs[i].exec);
    if (b->prof) {
        cuda_prof_report(b);
        for (int i = 0; i < CUDA_PROF_EVENTS; i++)
            if (b->prof->ev[i]) cudaEventDestroy(b->prof->ev[i]);
        free(b->prof);
    }
    cuda_gemm_free(b);
    cuda_weights_free(b);
    void *devs[] = {b->kv,         b->x,         b->delta,    b->big,      b->q,       b->part_o,   b->part_ml,
                    b->logits,     b->work,      b->sorted_w, b->y,        b->counts,  b->ids_in,   b->offsets,
                    b->sorted_ids, b->sort_temp, b->meta_dev, b->hist_dev, b->out_dev, b->cublas_ws};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++)
        if (devs[i]) cudaFree(devs[i]);
    if (b->meta_host) cudaFreeHost(b->meta_host);
    if (b->hist_host) cudaFreeHost(b->hist_host);
    if (b->out_host) cudaFreeHost(b->out_host);
    if (b->meta_sent) cudaEventDestroy(b->meta_sent);
    for (int i = 0; i < 2; i++)
        if (b->step_done[i]) cudaEventDestroy(b->step_done[i]);
    if (b->cublas) cublasDestroy(b->cublas);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

static const struct backend_ops cuda_ops = {.submit = cuda_submit, .collect = cuda_collect, .free = cuda_free};

static int alloc_ws(struct cuda_backend *b, void **p, size_t bytes)
{
    int rc = 0;
    if (bytes == 0) bytes = 16;
    CUDA_CHECK(b, cudaMalloc(p, bytes));
    b->workspace_bytes += bytes;
fail:
    return rc;
}

static size_t meta_size(const struct cuda_backend *b)
{
    size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    return S * sizeof(struct sk_sample_row) + 5 * T * 4 + S * 4 + S * (size_t)b->bt_cap * 4 +
           (T / SK_PREFILL_TILE + S + 1) * 3 * 4 + 8 * 16;
}

static int workspace_alloc(struct cuda_backend *b)
{
    const struct model_config *c = &b->base.config;
    const size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    const size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, D = (size_t)c->head_dim;
    const size_t qd = (size_t)c->n_heads * D, qkvd = qd + 2 * (size_t)c->n_kv_heads * D, V = (size_t)c->vocab_size;
    int rc = 0;
    size_t ywidth = H > qd ? H : qd;
    if (I > ywidth) ywidth = I;
    size_t bigw = qkvd > 2 * I ? qkvd : 2 * I;

    if ((rc = alloc_ws(b, (void **)&b->x, T * H * 4)) < 0) goto fail;
    /* delta and big also hold the split parts of a decode batch's products (cuda_gemm_parts). */
    const size_t T_parts = T > CUDA_PARTS_ROWS ? T : CUDA_PARTS_ROWS;
    if ((rc = alloc_ws(b, (void **)&b->delta, T_parts * H * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->big, T_parts * bigw * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->q, T * qd * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->y, T * ywidth * 2)) < 0) goto fail;
    b->part_rows = (int64_t)S * c->n_heads * CUDA_MAX_SPLITS;
    if ((rc = alloc_ws(b, (void **)&b->part_o, (size_t)b->part_rows * D * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->part_ml, (size_t)b->part_rows * 2 * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->logits, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->work, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->sorted_w, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->counts, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->ids_in, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->sorted_ids, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&b->offsets, (S + 1) * 4)) < 0) goto fail;
    CUDA_CHECK(b, sk_sort_temp_bytes((int)S, (int)V, &b->sort_temp_bytes));
    if ((rc = alloc_ws(b, &b->sort_temp, b->sort_temp_bytes)) < 0) goto fail;
    CUDA_CHECK(b, sk_fill_iota_rows(b->ids_in, (int)S, (int)V, b->stream));
    CUDA_CHECK(b, sk_fill_row_offsets(b->offsets, (int)S, (int)V, b->stream));
    CUDA_CHECK(b, cudaMemsetAsync(b->counts, 0, S * V * 4, b->stream));

    b->meta_bytes = meta_size(b);
    if ((rc = alloc_ws(b, (void **)&b->meta_dev, b->meta_bytes)) < 0) goto fail;
    CUDA_CHECK(b, cudaHostAlloc((void **)&b->meta_host, b->meta_bytes, cudaHostAllocDefault));
    if ((rc = alloc_ws(b, (void **)&b->out_dev, S * sizeof(struct sk_sample_out))) < 0) goto fail;
    CUDA_CHECK(b, cudaHostAlloc((void **)&b->out_host, 2 * S * sizeof(struct sk_sample_out), cudaHostAllocDefault));
    CUDA_CHECK(b, cudaEventCreateWithFlags(&b->meta_sent, cudaEventDisableTiming));
    for (int i = 0; i < 2; i++) CUDA_CHECK(b, cudaEventCreateWithFlags(&b->step_done[i], cudaEventDisableTiming));
    CUDA_CHECK(b, cudaEventRecord(b->meta_sent, b->stream));
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

/* One prefill of up to 1024 tokens and one decode step on scratch KV blocks, before an engine owns
 * any. CUDA loads kernel modules on first use (a cuBLAS kernel's ~40 ms) and a decode shape's
 * graph is captured on its first step; without this the first request paid both (time to first
 * token 161 ms against 26 ms warm, 1000-token prompt, H200). Whoever gets the blocks later
 * writes them before reading. --no-cuda-warmup skips it. */
static int warm_up(struct cuda_backend *b)
{
    int n = 1024;
    if (n > b->base.max_batch_tokens) n = b->base.max_batch_tokens;
    if (n > (b->base.num_kv_blocks - 1) * KV_BLOCK_SIZE) n = (b->base.num_kv_blocks - 1) * KV_BLOCK_SIZE;
    if (n > (b->bt_cap - 1) * KV_BLOCK_SIZE) n = (b->bt_cap - 1) * KV_BLOCK_SIZE;
    if (b->base.config.max_position > 1 && n > b->base.config.max_position - 1) n = b->base.config.max_position - 1;
    if (n < 2 || b->opt.no_warmup) return 0;
    const int n_blocks = (n + 1 + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    int32_t *mem = malloc((size_t)(n + n_blocks) * sizeof *mem);
    if (!mem) {
        snprintf(b->base.error, sizeof b->base.error, "cuda: out of host memory");
        return -1;
    }
    int32_t *tokens = mem, *blocks = mem + n;
    for (int i = 0; i < n; i++) tokens[i] = i % b->base.config.vocab_size;
    for (int i = 0; i < n_blocks; i++) blocks[i] = i;
    const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                           .logprobs = -1};
    struct batch_seq seq = {
        .n_new = n, .start_pos = 0, .block_table = blocks, .n_blocks = n_blocks, .sample = true, .sampling = &greedy};
    struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = n, .tokens = tokens};
    struct sample_result res;
    int rc = backend_forward(&b->base, &batch, &res);
    if (rc == 0) {
        seq.n_new = 1;
        seq.start_pos = n;
        seq.n_generated = 1;
        batch.n_tokens = 1;
        tokens[0] = res.token;
        rc = backend_forward(&b->base, &batch, &res);
    }
    free(mem);
    return rc;
}

static int kv_alloc(struct cuda_backend *b, const struct backend_options *opt)
{
    const struct model_config *c = &b->base.config;
    int rc = 0;
    size_t free_b = 0, total_b = 0;
    const size_t block_elems = (size_t)c->n_kv_heads * KV_BLOCK_SIZE * (size_t)c->head_dim;
    const size_t block_bytes = 2 * (size_t)c->n_layers * block_elems * 2;
    int64_t blocks;
    CUDA_CHECK(b, cudaMemGetInfo(&free_b, &total_b));
    if (opt->kv_blocks > 0) {
        blocks = opt->kv_blocks;
    } else {
        double util = opt->gpu_memory_utilization > 0 ? opt->gpu_memory_utilization : 0.9;
        /* What this process may still take: its share of the card minus what is already used. */
        double budget = (double)total_b * util - (double)(total_b - free_b);
        blocks = budget > 0 ? (int64_t)(budget / (double)block_bytes) : 0;
        if (blocks < 1)
            CUDA_FAIL(b,
                      "cuda: no memory left for the KV cache at --gpu-memory-utilization %.2f: %.2f GiB of %.2f GiB "
                      "in use after weights (%.2f GiB) and workspace (%.2f GiB)",
                      util, (double)(total_b - free_b) / (1 << 30), (double)total_b / (1 << 30),
                      (double)b->weight_bytes / (1 << 30), (double)b->workspace_bytes / (1 << 30));
    }
    if (blocks > INT32_MAX / KV_BLOCK_SIZE) blocks = INT32_MAX / KV_BLOCK_SIZE;
    if ((size_t)blocks * block_bytes > free_b)
        CUDA_FAIL(b, "cuda: %lld KV blocks need %.2f GiB, only %.2f GiB free", (long long)blocks,
                  (double)blocks * (double)block_bytes / (1 << 30), (double)free_b / (1 << 30));
    b->kv_layer_elems = (size_t)blocks * block_elems;
    CUDA_CHECK(b, cudaMalloc((void **)&b->kv, (size_t)blocks * block_bytes));
    b->base.num_kv_blocks = (int32_t)blocks;
    log_info("cuda: KV cache %lld blocks = %lld tokens (%.2f GiB); weights %.2f GiB, workspace %.2f GiB, "
             "%.2f of %.2f GiB free before the cache",
             (long long)blocks, (long long)blocks * KV_BLOCK_SIZE, (double)blocks * (double)block_bytes / (1 << 30),
             (double)b->weight_bytes / (1 << 30), (double)b->workspace_bytes / (1 << 30), (double)free_b / (1 << 30),
             (double)total_b / (1 << 30));
fail:
    return rc;
}

int backend_cuda_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                        size_t errlen)
{
    int rc = 0, n_dev = 0;
    struct cuda_backend *b = NULL;
    const struct model_config *c = &m->config;
    *out = NULL;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        snprintf(err, errlen, "cuda: no GPU visible (%s); use --device cpu",
                 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
        return -1;
    }
    if (opt->device < 0 || opt->device >= n_dev) {
        snprintf(err, errlen, "cuda: device %d not found (%d visible)", opt->device, n_dev);
        return -1;
    }
    if (c->head_dim < 2 || c->head_dim > SK_MAX_HEAD_DIM || c->head_dim % 2 || c->n_kv_heads < 1 ||
        c->n_heads % c->n_kv_heads) {
        snprintf(err, errlen, "cuda: unsupported head layout (head_dim %d, %d heads, %d kv heads)", c->head_dim,
                 c->n_heads, c->n_kv_heads);
        return -1;
    }
    b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "cuda: out of host memory");
        return -1;
    }
    b->base.ops = &cuda_ops;
    b->base.name = "cuda";
    b->base.config = *c;
    b->base.max_batch_tokens = opt->max_batch_tokens > 0 ? opt->max_batch_tokens : 8192;
    b->base.max_batch_seqs = opt->max_batch_seqs > 0 ? opt->max_batch_seqs : 256;
    if (b->base.max_batch_tokens > 65535) b->base.max_batch_tokens = 65535;
    b->device = opt->device;
    b->opt = opt->cuda;
    b->bt_cap = (c->max_position > 0 ? c->max_position : 4096) / KV_BLOCK_SIZE + 2;

    struct cudaDeviceProp prop;
    CUDA_CHECK(b, cudaSetDevice(b->device));
    CUDA_CHECK(b, cudaGetDeviceProperties(&prop, b->device));
    b->n_sms = prop.multiProcessorCount;
    b->use_gemv = !b->opt.no_gemv;
    b->use_prefill_mma = !b->opt.no_prefill_mma && (c->head_dim == 64 || c->head_dim == 128);
    b->attn_early = !b->opt.no_attn_early;
    /* Without attn_early no step's keys are settled, which the fused kernel needs too. */
    b->fused_qkv_rows = b->opt.fused_qkv == CUDA_FUSED_QKV_OFF   ? -1
                        : b->opt.fused_qkv == CUDA_FUSED_QKV_ALL ? 0
                                                                 : 32;
    b->use_graphs = !b->opt.enforce_eager;
    b->deterministic = opt->deterministic;
    if (b->deterministic) {
        /* The fused decode attention takes only pure decode steps: a token in a mixed step would
         * take the other path, whose sums are not the same bits. */
        b->fused_qkv_rows = -1;
        /* Ranges of a fixed length, so a token's split depends on its own position alone; long
         * enough that the longest context needs at most CUDA_MAX_SPLITS of them (part_o's rows). */
        const int ctx = b->bt_cap * KV_BLOCK_SIZE; /* the longest block table a step may carry */
        const int len = (ctx + CUDA_MAX_SPLITS - 1) / CUDA_MAX_SPLITS;
        b->det_split_len = len < 256 ? 256 : (len + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
    }
    b->step_timeout_s = b->opt.step_timeout_s > 0.0 ? b->opt.step_timeout_s : CUDA_STEP_TIMEOUT_S;
    CUDA_CHECK(b, cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(b, cublasCreate(&b->cublas));
    CUBLAS_CHECK(b, cublasSetStream(b->cublas, b->stream));
    /* A fixed workspace, so cuBLAS allocates nothing later (KV sizing, CUDA graphs). */
    CUDA_CHECK(b, cudaMalloc(&b->cublas_ws, CUBLAS_WS_BYTES));
    CUBLAS_CHECK(b, cublasSetWorkspace(b->cublas, b->cublas_ws, CUBLAS_WS_BYTES));
    CUBLAS_CHECK(b, cublasSetMathMode(b->cublas, CUBLAS_DEFAULT_MATH));
    if ((rc = cuda_gemm_init(b, c)) < 0) goto fail;
    if (b->opt.profile) {
        /* Timing each phase needs eager steps: graphs off. */
        b->use_graphs = false;
        b->prof = calloc(1, sizeof *b->prof);
        if (!b->prof) CUDA_FAIL(b, "cuda: out of host memory");
        for (int i = 0; i < CUDA_PROF_EVENTS; i++) CUDA_CHECK(b, cudaEventCreate(&b->prof->ev[i]));
    }
    log_info("cuda: %s (%d SMs, %.1f GiB), loading %s weights as bf16", prop.name, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1 << 30), dtype_name(c->dtype));

    if ((rc = cuda_weights_load(b, m)) < 0) goto fail;
    if ((rc = workspace_alloc(b)) < 0) goto fail;
    if ((rc = kv_alloc(b, opt)) < 0) goto fail;
    if ((rc = warm_up(b)) < 0) goto fail;
    *out = &b->base;
    return 0;
fail:
    snprintf(err, errlen, "%s", b->base.error);
    cuda_free(&b->base);
    return rc;
}
