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
#include "worker/backend/kv_dtype.h"

void cuda_report(struct cuda_backend *b, const char *what, const char *msg, const char *file, int line)
{
    snprintf(b->base.error, sizeof b->base.error, "cuda: %s failed: %s (%s:%d)", what, msg, file, line);
}

static void cuda_free(struct backend *base)
{
    struct cuda_backend *b = (struct cuda_backend *)base;
    if (!b) return;
    if (b->watchdog.stuck) {
        /* Every call that waits for the device would wait forever: the process's exit frees the rest. */
        cuda_prof_free(b);
        free(b->w.layers);
        free(b->kv.scales);
        free(b);
        return;
    }
    cudaSetDevice(b->device);
    if (b->stream) cudaStreamSynchronize(b->stream);
    cuda_graphs_free(b);
    cuda_prof_free(b);
    cuda_weights_free(b);
    cuda_moe_free(b);
    struct cuda_workspace *ws = &b->ws;
    free(b->kv.scales);
    void *devs[] = {b->kv.cache, ws->x,       ws->delta,      ws->big,      ws->q, ws->part_o,
                    ws->part_ml, ws->logits,  ws->work,       ws->sorted_w, ws->y, ws->counts,
                    ws->ids_in,  ws->offsets, ws->sorted_ids, ws->sort_temp};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++)
        if (devs[i]) cudaFree(devs[i]);
    cuda_steps_free(b);
    cuda_extras_free(b);
    cuda_gemm_free(b);
    cuda_tp_free(b);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

static const struct backend_ops cuda_ops = {
    .submit = cuda_submit, .collect = cuda_collect, .sample = cuda_sample, .free = cuda_free};
/* --cuda-options late_masks=0: masks only with the step (the engine then does not overlap
 * constrained steps), to compare against. */
static const struct backend_ops cuda_ops_masks_first = {.submit = cuda_submit, .collect = cuda_collect, .free = cuda_free};

static int alloc_ws(struct cuda_backend *b, void **p, size_t bytes)
{
    int rc = 0;
    if (bytes == 0) bytes = 16;
    CUDA_CHECK(b, cudaMalloc(p, bytes));
    b->ws.bytes += bytes;
fail:
    return rc;
}

static int workspace_alloc(struct cuda_backend *b)
{
    const struct model_config *c = &b->base.config;
    struct cuda_workspace *ws = &b->ws;
    const size_t T = (size_t)b->base.max_batch_tokens, S = (size_t)b->base.max_batch_seqs;
    const size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, D = (size_t)c->head_dim;
    const size_t qd = (size_t)c->n_heads * D, qkvd = qd + 2 * (size_t)c->n_kv_heads * D, V = (size_t)c->vocab_size;
    int rc = 0;
    size_t ywidth = H > qd ? H : qd;
    if (I > ywidth) ywidth = I;
    size_t bigw = qkvd > 2 * I ? qkvd : 2 * I;

    if ((rc = alloc_ws(b, (void **)&ws->x, T * H * 4)) < 0) goto fail;
    /* delta and big also hold the split parts of a decode batch's products (cuda_plan.h). */
    const size_t T_parts = T > CUDA_PARTS_ROWS ? T : CUDA_PARTS_ROWS;
    if ((rc = alloc_ws(b, (void **)&ws->delta, T_parts * H * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->big, T_parts * bigw * 4)) < 0) goto fail;
    ws->big_floats = T_parts * bigw;
    if ((rc = alloc_ws(b, (void **)&ws->q, T * qd * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->y, T * ywidth * 2)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->part_o, (size_t)b->plan.part_rows * D * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->part_ml, (size_t)b->plan.part_rows * 2 * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->logits, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->work, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->sorted_w, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->counts, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->ids_in, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->sorted_ids, S * V * 4)) < 0) goto fail;
    if ((rc = alloc_ws(b, (void **)&ws->offsets, (S + 1) * 4)) < 0) goto fail;
    CUDA_CHECK(b, sk_sort_temp_bytes((int)S, (int)V, &ws->sort_temp_bytes));
    if ((rc = alloc_ws(b, &ws->sort_temp, ws->sort_temp_bytes)) < 0) goto fail;
    CUDA_CHECK(b, sk_fill_iota_rows(ws->ids_in, (int)S, (int)V, b->stream));
    CUDA_CHECK(b, sk_fill_row_offsets(ws->offsets, (int)S, (int)V, b->stream));
    CUDA_CHECK(b, cudaMemsetAsync(ws->counts, 0, S * V * 4, b->stream));
    if ((rc = cuda_moe_workspace_alloc(b)) < 0) goto fail;
    if ((rc = cuda_steps_alloc(b)) < 0) goto fail;
    CUDA_CHECK(b, cudaStreamSynchronize(b->stream));
fail:
    return rc;
}

/* One prefill of up to 1024 tokens and one decode step on scratch KV blocks, before an engine owns
 * any. CUDA loads kernel modules on first use and a decode shape's graph is captured on its first
 * step; without this the first request paid both, several times its warm time to first token
 * (docs/performance.md). Whoever gets the blocks later writes them before reading.
 * --no-cuda-warmup skips it (the caller's test). base is the backend, or a tensor-parallel group
 * whose ranks each have bt_cap block-table entries per sequence. */
int cuda_warm_up(struct backend *base, int bt_cap)
{
    int n = 1024;
    if (n > base->max_batch_tokens) n = base->max_batch_tokens;
    if (n > (base->num_kv_blocks - 1) * KV_BLOCK_SIZE) n = (base->num_kv_blocks - 1) * KV_BLOCK_SIZE;
    if (n > (bt_cap - 1) * KV_BLOCK_SIZE) n = (bt_cap - 1) * KV_BLOCK_SIZE;
    if (base->config.max_position > 1 && n > base->config.max_position - 1) n = base->config.max_position - 1;
    if (n < 2) return 0;
    const int n_blocks = (n + 1 + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    int32_t *mem = malloc((size_t)(n + n_blocks) * sizeof *mem);
    if (!mem) {
        snprintf(base->error, sizeof base->error, "cuda: out of host memory");
        return -1;
    }
    int32_t *tokens = mem, *blocks = mem + n;
    for (int i = 0; i < n; i++) tokens[i] = i % base->config.vocab_size;
    for (int i = 0; i < n_blocks; i++) blocks[i] = i;
    const struct sampling_params greedy = {.temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                           .logprobs = -1};
    struct batch_seq seq = {
        .n_new = n, .start_pos = 0, .block_table = blocks, .n_blocks = n_blocks, .sample = true, .sampling = &greedy};
    struct batch batch = {.n_seqs = 1, .seqs = &seq, .n_tokens = n, .tokens = tokens};
    struct sample_result res;
    int rc = backend_forward(base, &batch, &res);
    if (rc == 0) {
        seq.n_new = 1;
        seq.start_pos = n;
        seq.n_generated = 1;
        batch.n_tokens = 1;
        tokens[0] = res.token;
        rc = backend_forward(base, &batch, &res);
    }
    free(mem);
    return rc;
}

/* The paged KV cache in what memory is left, bf16 or (--kv-cache-dtype fp8) e4m3 with the
 * layers' scales, m's (kv_dtype.h): an FP8 block is half a bf16 one, so the same share of the
 * GPU holds twice the tokens. */
static int kv_alloc(struct cuda_backend *b, const struct model *m, const struct backend_options *opt)
{
    const struct model_config *c = &b->base.config;
    int rc = 0;
    size_t free_b = 0, total_b = 0;
    char scales[256] = "";
    b->kv.fp8 = opt->kv_dtype == KV_CACHE_FP8_E4M3;
    if (b->kv.fp8) {
        if (!(b->kv.scales = malloc((size_t)c->n_layers * 2 * sizeof *b->kv.scales)))
            CUDA_FAIL(b, "cuda: out of host memory");
        kv_cache_scales(m, b->kv.scales, scales, sizeof scales);
    }
    const size_t block_elems = (size_t)c->n_kv_heads * KV_BLOCK_SIZE * (size_t)c->head_dim;
    const size_t block_bytes = 2 * (size_t)c->n_layers * block_elems * (b->kv.fp8 ? 1 : 2);
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
                      (double)b->w.bytes / (1 << 30), (double)b->ws.bytes / (1 << 30));
    }
    if (blocks > INT32_MAX / KV_BLOCK_SIZE) blocks = INT32_MAX / KV_BLOCK_SIZE;
    if ((size_t)blocks * block_bytes > free_b)
        CUDA_FAIL(b, "cuda: %lld KV blocks need %.2f GiB, only %.2f GiB free", (long long)blocks,
                  (double)blocks * (double)block_bytes / (1 << 30), (double)free_b / (1 << 30));
    b->kv.layer_elems = (size_t)blocks * block_elems;
    CUDA_CHECK(b, cudaMalloc((void **)&b->kv.cache, (size_t)blocks * block_bytes));
    b->base.num_kv_blocks = (int32_t)blocks;
    b->plan.num_kv_blocks = b->base.num_kv_blocks;
    log_info("cuda: KV cache %s, %lld blocks = %lld tokens (%.2f GiB, %zu bytes a token); weights %.2f GiB, "
             "workspace %.2f GiB, %.2f of %.2f GiB free before the cache%s%s",
             b->kv.fp8 ? "fp8_e4m3" : "bf16", (long long)blocks, (long long)blocks * KV_BLOCK_SIZE,
             (double)blocks * (double)block_bytes / (1 << 30), block_bytes / KV_BLOCK_SIZE,
             (double)b->w.bytes / (1 << 30), (double)b->ws.bytes / (1 << 30), (double)free_b / (1 << 30),
             (double)total_b / (1 << 30), b->kv.fp8 ? "; " : "", scales);
fail:
    return rc;
}

int cuda_visible_devices(int device, int *n_dev, char *err, size_t errlen)
{
    cudaError_t e = cudaGetDeviceCount(n_dev);
    if (e != cudaSuccess || *n_dev == 0) {
        snprintf(err, errlen, "cuda: no GPU visible (%s); use --device cpu",
                 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
        return -1;
    }
    if (device < 0 || device >= *n_dev) {
        snprintf(err, errlen, "cuda: device %d not found (%d visible)", device, *n_dev);
        return -1;
    }
    return 0;
}

/* The backend on model m, alone (rank NULL) or as a rank of a tensor-parallel group on its shard. */
static int create(struct backend **out, const struct model *m, const struct backend_options *opt,
                  const struct cuda_tp *rank, char *err, size_t errlen)
{
    int rc = 0, n_dev = 0;
    struct cuda_backend *b = NULL;
    const struct model_config *c = &m->config;
    *out = NULL;
    if (cuda_plan_model_supported(c, err, errlen)) return -1;
    if (cuda_visible_devices(opt->device, &n_dev, err, errlen)) return -1;
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
    /* The device sampler applies token masks, the logit bias and suppressed tokens
     * (kernels/sample.cu; the extras travel with the step's metadata, cuda_step.c). */
    b->base.supports_token_mask = true;
    b->base.supports_logit_bias = true;
    b->base.supports_suppress = true;
    /* Prompt logprobs and hidden states come out of eager steps (cuda_extras.c). */
    b->base.supports_prompt_logprobs = true;
    b->base.supports_hidden_states = true;
    b->base.config = *c;
    b->base.max_batch_tokens = opt->max_batch_tokens > 0 ? opt->max_batch_tokens : 8192;
    b->base.max_batch_seqs = opt->max_batch_seqs > 0 ? opt->max_batch_seqs : 256;
    if (b->base.max_batch_tokens > 65535) b->base.max_batch_tokens = 65535;
    b->device = opt->device;
    b->opt = opt->cuda;
    if (b->opt.no_late_masks) b->base.ops = &cuda_ops_masks_first;
    const int bt_cap = (c->max_position > 0 ? c->max_position : 4096) / KV_BLOCK_SIZE + 2;
    b->watchdog.timeout_s = b->opt.step_timeout_s > 0.0 ? b->opt.step_timeout_s : CUDA_STEP_TIMEOUT_S;

    struct cudaDeviceProp prop;
    CUDA_CHECK(b, cudaSetDevice(b->device));
    CUDA_CHECK(b, cudaGetDeviceProperties(&prop, b->device));
    CUDA_CHECK(b, cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    if ((rc = cuda_gemm_init(b)) < 0) goto fail;
    if ((rc = cuda_tp_init(b, opt, rank)) < 0) goto fail;
    cuda_plan_config_init(&b->plan, c, &b->opt, opt->deterministic, b->gemm.hopper != NULL, prop.multiProcessorCount,
                          b->base.max_batch_tokens, b->base.max_batch_seqs, bt_cap);
    b->plan.lm_rows = b->tp.vocab_rows;
    if ((rc = cuda_fp8_init(b, m)) < 0) goto fail;
    if (opt->deterministic) {
        const int qd = c->n_heads * c->head_dim;
        if (!b->gemm.hopper)
            CUDA_FAIL(b, "cuda: --deterministic needs the Hopper products (a compute capability 9.0 GPU and a build "
                         "for sm_90); this GPU or build has none");
        if (c->hidden_size % 8 || qd % 8 || c->intermediate_size % 8)
            CUDA_FAIL(b, "cuda: --deterministic needs hidden_size, heads x head_dim and intermediate_size divisible "
                         "by 8 (the Hopper products' rows); this model has %d, %d, %d",
                      c->hidden_size, qd, c->intermediate_size);
    }
    if (b->opt.profile && (rc = cuda_prof_create(b)) < 0) goto fail;
    log_info("cuda: %s (%d SMs, %.1f GiB), loading %s weights as %s", prop.name, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1 << 30), dtype_name(c->dtype), b->fp8 ? "FP8 (layers) and bf16" : "bf16");

    if ((rc = cuda_weights_load(b, m)) < 0) goto fail;
    if ((rc = workspace_alloc(b)) < 0) goto fail;
    if ((rc = kv_alloc(b, m, opt)) < 0) goto fail;
    /* A group's ranks warm up together (their steps meet in collectives). */
    if (!rank && !b->opt.no_warmup && (rc = cuda_warm_up(&b->base, b->plan.bt_cap)) < 0) goto fail;
    *out = &b->base;
    return 0;
fail:
    snprintf(err, errlen, "%s", b->base.error);
    cuda_free(&b->base);
    return rc;
}

int backend_cuda_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                        size_t errlen)
{
    if (opt->tensor_parallel_size > 1) return cuda_tp_group_create(out, m, opt, err, errlen);
    return create(out, m, opt, NULL, err, errlen);
}

int cuda_backend_create_rank(struct backend **out, const struct model *shard, const struct backend_options *opt,
                             const struct cuda_tp *rank, char *err, size_t errlen)
{
    return create(out, shard, opt, rank, err, errlen);
}
