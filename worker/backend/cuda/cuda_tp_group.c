/* --tensor-parallel-size N > 1 on CUDA: one worker drives N GPUs. Each rank is a CUDA backend of
 * its own on its shard of the weights (worker/parallel/tp_shard.h) and its own GPU (device,
 * device + 1, ...), with its own stream, KV heads and CUDA graphs; the ranks' steps meet in NCCL
 * collectives on their streams (cuda_tp.c). Rank 0 runs on the engine's thread, the others on a
 * thread each (worker/parallel/tp_group.h).
 *
 * Every rank runs every step whole, sampler included: the gathered logits are the same bits on
 * every rank, so each samples the tokens rank 0 does and feeds them to its next step on its own
 * (backend.h's BACKEND_TOKEN_FROM_PREV), and the steps overlap as one backend's do. Only rank 0
 * writes what a step hands back; the others run a copy of the batch without its outputs. Prompt
 * logprobs are not offered (their lm_head rows would need the vocabulary gathered per prompt
 * token); masks go with the step (no late sample op).
 *
 * A rank that fails aborts the communicator, so the others fail at their next collective
 * instead of waiting, and the group reports the rank and its error; a rank that never finishes
 * is given the step timeout, after which every step fails (the worker stops serving, as after
 * any device error). --cuda-options tp_nccl=0 joins the ranks through host memory instead,
 * eagerly, and lets them share a GPU: how the sharding is tested on a machine with one.
 * --cuda-options tp_oneshot=1 gives the ranks a one-shot all-reduce group (cuda_tp_oneshot.c)
 * for their small all-reduces, through NCCL's path or host memory's alike; a failed rank aborts
 * it too. */
#include "common/log.h"
#include "worker/backend/cuda/cuda_internal.h"
#include "worker/backend/cuda/cuda_options.h"
#include "worker/backend/tp_ranks.h"
#include "worker/parallel/comm.h"
#include "worker/parallel/tp_plan.h"
#include "worker/parallel/tp_shard.h"

struct cuda_tp_group {
    struct backend base;
    struct tp_ranks t;
    int devices[COMM_MAX_RANKS];
    /* The step being submitted or collected. */
    const struct batch *batch;
    struct batch rest;             /* what ranks 1..N-1 run: the batch without its outputs */
    struct batch_seq *rest_seqs;   /* [max_batch_seqs] */
    struct sample_result *results; /* rank 0's: the caller's */
    struct sample_result *discard; /* [N][max_batch_seqs]: the other ranks' */
    struct sk_oneshot_group *oneshot; /* tp_oneshot=1; NULL otherwise */
};

/* A step's half on rank r, on the rank's thread (whose current GPU it sets). A rank that fails
 * aborts the communicator, so that the others fail at their next collective instead of waiting. */
static int rank_step(struct cuda_tp_group *g, int r, bool submit)
{
    struct backend *rb = g->t.ranks[r];
    int rc = cudaSetDevice(g->devices[r]) == cudaSuccess ? 0 : -1;
    if (rc != 0)
        snprintf(rb->error, sizeof rb->error, "cuda: cannot select GPU %d", g->devices[r]);
    else if (submit)
        rc = backend_submit(rb, r ? &g->rest : g->batch);
    else
        rc = backend_collect(rb, r ? g->discard + (size_t)r * g->base.max_batch_seqs : g->results);
    if (rc != 0) {
        comm_abort(g->t.comms[r], rb->error);
        if (g->oneshot) sk_oneshot_group_abort(g->oneshot);
    }
    return rc;
}

static int rank_submit(void *arg, int r) { return rank_step(arg, r, true); }
static int rank_collect(void *arg, int r) { return rank_step(arg, r, false); }

/* A step's half on every rank. A rank that never finished leaves the others' one-shot kernels
 * waiting for it: the abort ends those waits. */
static int run_ranks(struct cuda_tp_group *g, tp_rank_fn fn)
{
    const int rc = tp_ranks_run(&g->t, fn, g, g->base.error, sizeof g->base.error);
    if (rc != 0 && g->oneshot) sk_oneshot_group_abort(g->oneshot);
    return rc;
}

static int group_submit(struct backend *b, const struct batch *batch)
{
    struct cuda_tp_group *g = (struct cuda_tp_group *)b;
    if (batch->n_seqs > b->max_batch_seqs) {
        snprintf(b->error, sizeof b->error, "cuda: a step of %d sequences exceeds --max-num-seqs %d", batch->n_seqs,
                 b->max_batch_seqs);
        return -1;
    }
    g->batch = batch;
    g->rest = *batch;
    g->rest.logits_out = NULL;
    for (int s = 0; s < batch->n_seqs; s++) {
        struct batch_seq *q = &g->rest_seqs[s];
        *q = batch->seqs[s];
        q->hidden_sum = q->hidden_last = NULL;
    }
    g->rest.seqs = g->rest_seqs;
    return run_ranks(g, rank_submit);
}

static int group_collect(struct backend *b, struct sample_result *results)
{
    struct cuda_tp_group *g = (struct cuda_tp_group *)b;
    g->results = results;
    return run_ranks(g, rank_collect);
}

static void group_free(struct backend *b)
{
    struct cuda_tp_group *g = (struct cuda_tp_group *)b;
    if (!g || !tp_ranks_free(&g->t, "cuda")) return; /* each rank's free selects its GPU */
    sk_oneshot_group_destroy(g->oneshot); /* after the ranks: their frees wait for their streams */
    free(g->rest_seqs);
    free(g->discard);
    free(g);
}

static const struct backend_ops group_ops = {.submit = group_submit, .collect = group_collect, .free = group_free};

/* Each rank's GPU: device, device + 1, ...; sharing them round-robin only through host memory. */
static int pick_devices(struct cuda_tp_group *g, const struct backend_options *opt, bool host, char *err,
                        size_t errlen)
{
    int n_dev = 0;
    if (cuda_visible_devices(opt->device, &n_dev, err, errlen)) return -1;
    if (!host && opt->device + g->t.n > n_dev) {
        snprintf(err, errlen,
                 "cuda: --tensor-parallel-size %d needs %d GPUs from device %d, and %d %s visible (CUDA_VISIBLE_DEVICES "
                 "chooses them; --device cpu runs any size)",
                 g->t.n, g->t.n, opt->device, n_dev, n_dev == 1 ? "is" : "are");
        return -1;
    }
    for (int r = 0; r < g->t.n; r++) g->devices[r] = (opt->device + r) % n_dev;
    return 0;
}

/* How many ranks share rank r's GPU. */
static int sharing(const struct cuda_tp_group *g, int r)
{
    int k = 0;
    for (int q = 0; q < g->t.n; q++) k += g->devices[q] == g->devices[r];
    return k;
}

/* The CUDA forward adds o_proj's and down's biases after the ranks' sum (with Gemma's post-norms
 * and Granite's scale, cuda_forward.c), so every rank holds them whole, not rank 0 alone as the
 * plan's TP_FIRST_RANK gives them. The tensors are the model's, borrowed like the norms. */
static void whole_output_biases(struct model *shard, const struct model *m)
{
    for (int l = 0; l < m->config.n_layers; l++) {
        shard->layers[l].bo = m->layers[l].bo;
        shard->layers[l].b_down = m->layers[l].b_down;
    }
}

static bool fp8_checkpoint(const struct model *m)
{
    for (int l = 0; l < m->config.n_layers; l++)
        if (tp_is_fp8(m->layers[l].wq.dtype) || tp_is_fp8(m->layers[l].w_down.dtype)) return true;
    return false;
}

int cuda_tp_group_create(struct backend **out, const struct model *m, const struct backend_options *opt, char *err,
                         size_t errlen)
{
    *out = NULL;
    const bool host = opt->cuda.no_tp_nccl;
    struct cuda_tp_group *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "cuda: out of host memory");
        return -1;
    }
    g->base.ops = &group_ops;
    g->base.name = "cuda";
    g->base.config = m->config;
    g->t.timeout_s = opt->cuda.step_timeout_s > 0 ? opt->cuda.step_timeout_s : CUDA_STEP_TIMEOUT_S;
    if (opt->tensor_parallel_size > COMM_MAX_RANKS) {
        snprintf(err, errlen, "cuda: --tensor-parallel-size %d: at most %d", opt->tensor_parallel_size,
                 COMM_MAX_RANKS);
        goto fail;
    }
    g->t.n = opt->tensor_parallel_size;
    if (fp8_checkpoint(m)) {
        /* A shard's FP8 parts are held as float32 (tp_shard.h), which would load as bf16. */
        snprintf(err, errlen,
                 "cuda: --tensor-parallel-size %d: %s is an FP8 checkpoint, which the CUDA backend does not shard yet "
                 "(a bf16 checkpoint with --quantization fp8 does)",
                 g->t.n, m->config.arch_name);
        goto fail;
    }
    if (pick_devices(g, opt, host, err, errlen) != 0) goto fail;
    if (tp_plan_make(&g->t.plan, &m->config, g->t.n, err, errlen) != 0) goto fail;

    struct backend_options ro = *opt;
    ro.tensor_parallel_size = 0;
    if (host) ro.cuda.enforce_eager = true; /* host collectives cannot be captured */
    for (int r = 0; r < g->t.n; r++) {
        char why[512] = "";
        const struct tp_rank *pr = &g->t.plan.ranks[r];
        const struct cuda_tp rank = {.host = host,
                                     .rank = r,
                                     .size = g->t.n,
                                     .vocab_begin = (int)pr->vocab.begin,
                                     .vocab_rows = (int)(pr->vocab.end - pr->vocab.begin),
                                     .vocab_per_rank = g->t.plan.vocab_per_rank};
        ro.device = g->devices[r];
        if (r == 0 && opt->kv_blocks <= 0) {
            /* Ranks that share a GPU share its memory: rank 0 sizes its cache from its part, and
             * every rank takes as many blocks (the engine's block tables index them all). */
            const double util = opt->gpu_memory_utilization > 0 ? opt->gpu_memory_utilization : 0.9;
            ro.gpu_memory_utilization = util / sharing(g, 0);
        }
        if (tp_shard_make(&g->t.shards[r], m, &g->t.plan, r, why, sizeof why) != 0) {
            snprintf(err, errlen, "cuda: tensor parallel rank %d: %.450s", r, why);
            goto fail;
        }
        whole_output_biases(g->t.shards[r], m);
        if (cuda_backend_create_rank(&g->t.ranks[r], g->t.shards[r], &ro, &rank, why, sizeof why) != 0) {
            snprintf(err, errlen, "tensor parallel rank %d (GPU %d): %.450s", r, g->devices[r], why);
            goto fail;
        }
        if (r == 0) ro.kv_blocks = g->t.ranks[0]->num_kv_blocks;
        char parts[256];
        tp_ranks_describe_rank(&g->t, m, r, parts, sizeof parts);
        log_info("cuda: tensor parallel rank %d of %d on GPU %d: %s", r, g->t.n, g->devices[r], parts);
    }

    if (host) {
        if (comm_cpu_create(g->t.comms, g->t.n, g->t.timeout_s, err, errlen) != 0) goto fail;
    } else {
        void *streams[COMM_MAX_RANKS];
        for (int r = 0; r < g->t.n; r++) streams[r] = ((struct cuda_backend *)g->t.ranks[r])->stream;
        char why[512] = "";
        if (comm_nccl_create(g->t.comms, g->t.n, g->devices, streams, g->t.timeout_s, opt->cuda.nccl_library, why,
                             sizeof why) != 0) {
            snprintf(err, errlen, "cuda: --tensor-parallel-size %d: %.450s", g->t.n, why);
            goto fail;
        }
    }
    if (opt->cuda.tp_oneshot && cuda_tp_oneshot_create(&g->oneshot, g->t.n, g->devices, g->t.timeout_s, err, errlen))
        goto fail;
    for (int r = 0; r < g->t.n; r++)
        cuda_tp_attach((struct cuda_backend *)g->t.ranks[r], g->t.comms[r], g->oneshot);

    struct backend *r0 = g->t.ranks[0];
    tp_ranks_take_limits(&g->base, r0);
    g->base.supports_prompt_logprobs = false;
    g->rest_seqs = calloc((size_t)r0->max_batch_seqs, sizeof *g->rest_seqs);
    g->discard = calloc((size_t)g->t.n * (size_t)r0->max_batch_seqs, sizeof *g->discard);
    if (!g->rest_seqs || !g->discard) {
        snprintf(err, errlen, "cuda: out of host memory");
        goto fail;
    }
    if (tp_group_start(&g->t.threads, g->t.n, g->t.timeout_s, err, errlen) != 0) goto fail;
    char whole[256];
    tp_ranks_describe(&g->t, whole, sizeof whole);
    log_info("cuda: %s, collectives through %s%s", whole, host ? "host memory (tp_nccl=0)" : "NCCL",
             g->oneshot ? "; small all-reduces through the one-shot kernel (tp_oneshot=1)" : "");
    if (!opt->cuda.no_warmup && cuda_warm_up(&g->base, ((struct cuda_backend *)r0)->plan.bt_cap) != 0) {
        snprintf(err, errlen, "%s", g->base.error);
        goto fail;
    }
    *out = &g->base;
    return 0;
fail:
    group_free(&g->base);
    return -1;
}
