/* The backend interface: what the engine asks of a device (CPU or CUDA) each step.
 *
 * The engine (scheduler, KV block manager, stops) is the same for every backend. Each step it
 * hands the backend one ragged batch: for each sequence, the new tokens of this step (a
 * prefill chunk or one decode token), the position of the first of them, the sequence's
 * block table into the paged KV cache, and whether to sample a next token after the step.
 * The backend writes the new tokens' K and V into the blocks, runs the model, and samples
 * where the logits are (on the GPU for CUDA), returning only sampled ids and logprobs. */
#ifndef SLUICE_WORKER_BACKEND_H
#define SLUICE_WORKER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/model/model.h"

#define KV_BLOCK_SIZE 16

/* Where every layer slides over `window` keys (0: none), the blocks a sequence's step never
 * reads: those wholly before the window of its first token at start_pos. The engine frees them
 * (their table entries become -1) and the backends skip them. */
static inline int32_t kv_blocks_before_window(int32_t window, int32_t start_pos)
{
    return window > 0 && start_pos >= window ? (start_pos - window + 1) / KV_BLOCK_SIZE : 0;
}

#define SAMPLER_MAX_TOP_LOGPROBS 20

struct sampling_params {
    float temperature;        /* 0: greedy (argmax, ties to the lowest id) */
    float top_p;              /* 1: off */
    int top_k;                /* 0 or -1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; over prompt and output tokens, as Hugging Face */
    float presence_penalty;   /* 0: off; over output tokens, as OpenAI */
    float frequency_penalty;  /* 0: off; over output tokens */
    uint64_t seed;            /* the engine fills one in when the request gave none */
    int logprobs;             /* -1: none; 0..20: the sampled token's logprob plus that many top */
    /* OpenAI's logit_bias: bias_values[i] (in [-100, 100]) is added to the logit of token
     * bias_ids[i] (ids in the vocabulary, distinct) before sampling (sampler.h, step 2). Only
     * on a backend with supports_logit_bias. Borrowed: they live as long as the request. */
    int32_t n_bias;
    const int32_t *bias_ids;
    const float *bias_values;
};

/* Whether sampling reads the sequence's tokens (penalties): then they must all be on the host. */
static inline bool sampling_uses_history(const struct sampling_params *sp)
{
    return (sp->repetition_penalty > 0.0f && sp->repetition_penalty != 1.0f) || sp->presence_penalty != 0.0f ||
           sp->frequency_penalty != 0.0f;
}

/* A prompt token's logprob: token is the prompt's token at the next position. */
struct prompt_logprob {
    int32_t token;
    float logprob;                 /* log-softmax of the raw logits at token */
    int32_t rank;                  /* 1 + the tokens whose raw logit is larger */
    int32_t n_top;
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_TOP_LOGPROBS];
};

struct batch_seq {
    int32_t n_new;                 /* tokens of this step in batch.tokens, in order */
    int32_t start_pos;             /* position of the first of them = tokens already in KV */
    /* Physical block ids covering start_pos + n_new tokens. When every layer of the model slides
     * (model_family.h all_sliding), the blocks wholly before start_pos - sliding_window + 1 are
     * never read and may be -1 (freed by the scheduler). */
    const int32_t *block_table;
    int32_t n_blocks;
    bool sample;                   /* sample a token after the last new token */
    /* The new tokens are (or begin with) prompt tokens: a prefill chunk, whatever its length.
     * A backend computes prompt tokens one way and generated tokens another, so that a
     * prompt's last token cut into a chunk of its own is computed as in a whole prefill. */
    bool prompt;
    const struct sampling_params *sampling; /* when sample */
    /* The sampler's draw for the k-th generated token depends only on (seed, k), so a seeded
     * request gives the same output whatever else shares its batch. */
    uint64_t n_generated;
    /* For penalties: all prompt+output tokens, of which the last n_output are output. */
    const int32_t *history;
    int32_t n_history;
    int32_t n_output;
    /* Structured output (worker/grammar/): when sample and not NULL, the tokens the sampler
     * may draw, bit (id % 32) of word id / 32, (vocab + 31) / 32 words at least; the others are
     * excluded as sampler.h says. Only on a backend with supports_token_mask. */
    const uint32_t *allowed;
    /* Structured output on a backend with a sample op: when sample, the row's mask is not known
     * at submit (it follows the token the step before samples) and comes with backend_sample
     * instead of allowed (NULL then). See backend_sample. */
    bool mask_later;
    /* min_tokens: when sample, tokens the sampler must not draw this step (the EOS and stop
     * token ids while fewer than min_tokens are generated; sampler.h, step 2). Only on a
     * backend with supports_suppress. */
    const int32_t *suppress;
    int32_t n_suppress;
    /* Prompt logprobs (prompt_logprobs, and completions' echo with logprobs), only on a backend
     * with supports_prompt_logprobs: for each new token i in [lp_first, lp_first + lp_rows), the
     * logprob under its logits of the token that follows it, lp_targets[i - lp_first], with the
     * lp_top (0..20) most likely alternatives, into lp_out[i - lp_first]. Written by the time the
     * step is collected; the engine keeps lp_out until then. */
    int32_t lp_first, lp_rows, lp_top;
    const int32_t *lp_targets;
    struct prompt_logprob *lp_out;
    /* Embeddings, only on a backend with supports_hidden_states: the final hidden state (after
     * the model's last norm, before lm_head; hidden_size floats) of each new token is added into
     * hidden_sum when it is not NULL, and the last new token's is written to hidden_last when
     * that is not NULL. */
    float *hidden_sum;
    float *hidden_last;
};

struct batch {
    int32_t n_seqs;
    const struct batch_seq *seqs;
    int32_t n_tokens;              /* sum of n_new */
    const int32_t *tokens;
    /* Tests only: when non-NULL, the logits of each sampled row (vocab floats each, in
     * sequence order, before any penalty) are copied here. */
    float *logits_out;
};

struct sample_result {
    int32_t token;
    float logprob;                 /* log-softmax of the raw logits at token */
    int32_t n_top;
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_TOP_LOGPROBS];
};

struct backend;
struct backend_stash;

/* A token of batch->tokens that the host does not know yet: the one sampled for row r (the
 * r-th sequence with sample set) of the step submitted just before this one. The engine
 * queues the next decode step with these before it has taken the last step's tokens. */
#define BACKEND_TOKEN_FROM_PREV(r) (-1 - (int32_t)(r))
#define BACKEND_TOKEN_PREV_ROW(tok) (-1 - (tok))

struct backend_ops {
    /* Runs one step. results has one entry per sequence with sample set, in order. Returns 0
     * or negative with b->error filled (a device error: the worker reports it and stops
     * serving, see /health). Used when submit is NULL. */
    int (*forward)(struct backend *b, const struct batch *batch, struct sample_result *results);
    /* Optional, both or neither: a step in two halves (see backend_submit). submit queues the
     * step on the device and returns; collect waits for the oldest queued step. */
    int (*submit)(struct backend *b, const struct batch *batch);
    int (*collect)(struct backend *b, struct sample_result *results);
    /* Optional, with submit: the sampling of a submitted step that has mask_later rows (see
     * backend_sample). */
    int (*sample)(struct backend *b, const uint32_t *const *masks, int32_t n_masks);
    void (*free)(struct backend *b);
};

struct backend {
    const struct backend_ops *ops;
    const char *name;             /* "cpu", "cuda" */
    struct model_config config;
    int32_t num_kv_blocks;        /* set by the backend at creation */
    int32_t max_batch_tokens;     /* the largest n_tokens a step may carry */
    int32_t max_batch_seqs;
    char error[512];
    struct backend_stash *stash;  /* backend_submit's, for a backend without its own submit */
    /* The sampler applies batch_seq.allowed; the engine refuses constrained requests (a
     * grammar) on a backend without it rather than sample unconstrained. */
    bool supports_token_mask;
    /* What else the backend does beyond sampling as the CUDA kernel does; the worker answers
     * 400 naming the parameter, and the engine refuses the request, on a backend without it
     * (the CUDA backend, for now), rather than ignore it: sampling_params' logit bias,
     * batch_seq.suppress (min_tokens), prompt logprobs, hidden states (embeddings). */
    bool supports_logit_bias;
    bool supports_suppress;
    bool supports_prompt_logprobs;
    bool supports_hidden_states;
};

/* How the decode attention does qkv_post's work (sk_attention_decode_qkv) on decode-only steps
 * of one token per sequence. */
enum cuda_fused_qkv {
    CUDA_FUSED_QKV_AUTO = 0, /* over CUDA_FUSED_QKV_ROWS rows (cuda_plan.h), where it wins */
    CUDA_FUSED_QKV_OFF,      /* never: qkv_post is always its own kernel */
    CUDA_FUSED_QKV_ALL,      /* at every batch size (tests compare it against the CPU backend) */
};

/* The CUDA backend's options; zero everywhere is the default. The first four are the worker's
 * flags (--enforce-eager, --cuda-profile, --no-cuda-warmup, --cuda-step-timeout). The rest turn
 * one shipped path off each, so that tests and benchmarks can compare against it (the worker's
 * --cuda-options KEY=VALUE,...: worker/backend/cuda/cuda_options.h). */
struct cuda_options {
    bool enforce_eager;     /* no CUDA graphs: every step launched kernel by kernel */
    bool profile;           /* per-phase device times of each step shape, printed at exit (eager) */
    bool no_warmup;         /* no warm-up prefill and decode step at creation */
    double step_timeout_s;  /* a step not done after this long is a stuck GPU; 0: 60 s */
    bool no_gemv;           /* gemv=0: one-row products on cuBLAS too */
    bool no_prefill_mma;    /* prefill_mma=0: prefill attention on the decode attention's kernels */
    bool no_hopper;         /* hopper=0: cuBLAS for the decode products on Hopper too (so no parts,
                               no fused MLP, gate/up not fused with its activation) */
    bool no_split_parts;    /* split_parts=0: the Hopper products add their split-K sums in clusters
                               themselves (so no fused MLP either) */
    bool no_fused_mlp;      /* fused_mlp=0: a decode batch's MLP in two launches */
    bool no_early_trigger;  /* early_trigger=0: no product lets the next kernel launch early */
    bool no_attn_early;     /* attn_early=0: the decode attention reads no key before its wait (so
                               no fused qkv either) */
    enum cuda_fused_qkv fused_qkv; /* fused_qkv=auto|off|all */
    bool no_fp8_lt;         /* fp8_lt=0: FP8 products over the gemv's rows on dequantized weights
                               (cuBLAS) instead of cuBLASLt's FP8 GEMM */
    bool no_fp8_outer;      /* fp8_outer=0: cuBLASLt's FP8 output scaled by an own kernel instead
                               of its outer-vector scales */
    bool no_fp8_mma;        /* fp8_mma=0: no tensor-core FP8 kernel; cuBLASLt (or, without it, the
                               gemv and dequantized weights) takes what it would */
    bool no_fp8_hopper;     /* fp8_hopper=0: no FP8 product on the Hopper weight stream (wgmma on
                               e4m3); the tensor-core FP8 kernel and cuBLASLt take its batches */
    bool no_fp8_prefetch;   /* fp8_prefetch=0: an FP8 decode product does not bring the next
                               product's first weights into L2 at its end */
    bool no_quant_mma;      /* quant_mma=0: no tensor-core kernel for GGUF block weights; the block
                               GEMV (up to 16 rows) and dequantized tiles (cuBLAS) take its products */
    bool no_late_masks;     /* late_masks=0: structured output's masks go with the step (no
                               backend_sample), so constrained steps are not overlapped */
    bool no_tp_nccl;        /* tp_nccl=0: a tensor-parallel group's collectives go through host
                               memory (the CPU communicator) instead of NCCL, its steps run eagerly,
                               and its ranks may share a GPU: the sharding tested on one GPU */
    bool tp_oneshot;        /* tp_oneshot=1: a tensor-parallel step's small all-reduces (decode) in
                               one kernel that reads the other ranks' memory directly
                               (kernels/sk_allreduce.h), fused with the residual add; off by default,
                               NCCL (or host memory) being the reference */
    bool quant_overlap;     /* quant_overlap=1: GGUF block kernels (GEMV, x quantizer, tensor-core
                               kernel) launched as programmatic dependents, and the norm and SwiGLU
                               before a block GEMV that takes int8 x leave it so (one launch fewer);
                               off by default until it has run on a GPU (docs/performance.md) */
    const char *nccl_library; /* the NCCL library to dlopen (NULL: the loader's libnccl.so.2) */
};

/* The CPU backend's options; zero everywhere is the default. n_threads is the worker's --threads
 * (worker/backend/cpu/cpu_options.h); the rest are for tests and benchmarks to compare against.
 * n_threads is a long because the flag table writes it there (FLAG_INT). */
struct cpu_options {
    long n_threads;         /* threads of the backend, its tensor-parallel ranks' together; 0: the cores
                               online */
    /* Dequantize GGUF block weights to float32 at load instead of keeping them in their blocks: the
     * same results, 4-8x the memory. */
    bool f32_weights;
    /* A yardstick for the CUDA backend's FP8 GEMM (cuBLASLt), which quantizes activations: for each
     * layer product (qkv, o, gate/up, down), in steps of at least this many tokens (0: never), its
     * input is rounded to bf16 and then to e4m3 with a scale per token (fp8_quantize_row), as the
     * CUDA path does. */
    int32_t fp8_act_rows[4];
};

/* --kv-cache-dtype (worker/backend/kv_dtype.h): the paged KV cache's elements. AUTO: the
 * backend's own (CPU float32, CUDA bf16); FP8_E4M3: e4m3 codes of value / scale, one float scale
 * per layer for K and one for V (the checkpoint's k_scale / v_scale, else 1), half the bytes of
 * bf16 a token. */
enum kv_cache_dtype { KV_CACHE_AUTO = 0, KV_CACHE_FP8_E4M3 };

struct backend_options {
    int32_t kv_blocks;            /* 0: size automatically (CUDA: gpu_memory_utilization) */
    enum kv_cache_dtype kv_dtype; /* --kv-cache-dtype */
    double gpu_memory_utilization;
    int32_t max_batch_tokens;     /* --max-num-batched-tokens */
    int32_t max_batch_seqs;       /* --max-num-seqs */
    int32_t device;               /* CUDA device ordinal */
    /* --deterministic: a sequence's arithmetic does not depend on what else shares its steps
     * (batch size, chunking), so greedy output equals the sequence's output alone. */
    bool deterministic;
    /* --tensor-parallel-size: ranks the model is sharded over; 0: not asked. CPU: one thread per
     * rank in this process (worker/backend/cpu/cpu_tp.c), 0 and 1 alike. CUDA: one thread and GPU
     * per rank from device on (cuda/cuda_tp_group.c), joined by NCCL; 1 makes an NCCL
     * communicator of one GPU whose collectives are no-ops (cuda/cuda_tp.c), 0 none. */
    int32_t tensor_parallel_size;
    struct cpu_options cpu;
    struct cuda_options cuda;
};

int backend_cpu_create(struct backend **out, const struct model *m,
                       const struct backend_options *opt, char *err, size_t errlen);
/* In a build without CUDA, and on a machine with no visible GPU, this fails with a message
 * saying so. */
int backend_cuda_create(struct backend **out, const struct model *m,
                        const struct backend_options *opt, char *err, size_t errlen);

/* A step in two halves, so that the next step can be queued while this one runs: the device
 * then does not wait for the host between steps. backend_submit queues a step; batch and
 * everything it points to may change once it returns. backend_collect waits for the oldest
 * step queued and not collected yet and writes its results (one per sequence with sample
 * set). At most two steps are queued at once. Where the backend has no submit of its own,
 * backend_submit runs the step to the end and keeps its results for backend_collect. */
int backend_submit(struct backend *b, const struct batch *batch);
int backend_collect(struct backend *b, struct sample_result *results);
/* Whether backend_submit returns before the step has run (only then does overlapping pay). */
bool backend_submit_returns_early(const struct backend *b);
/* Masks that follow the step before (structured output, overlapped): a step submitted with
 * mask_later rows runs the model but waits to sample until backend_sample gives their masks,
 * masks[k] for the k-th such row (as batch_seq.allowed; the backend copies them before it
 * returns). The engine takes the previous step's tokens, advances its grammars and makes the
 * masks while the device runs the model. No other step is submitted, and this one is not
 * collected, before it. Only where backend_defers_masks. */
bool backend_defers_masks(const struct backend *b);
int backend_sample(struct backend *b, const uint32_t *const *masks, int32_t n_masks);
/* One step to the end: submit, then collect. */
int backend_forward(struct backend *b, const struct batch *batch, struct sample_result *results);
void backend_free(struct backend *b);

#endif
