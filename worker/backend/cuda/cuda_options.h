/* The CUDA backend's options (struct cuda_options, worker/backend/backend.h) as worker flags: the
 * flag table entries both `sluice-worker` and `sluice-worker bench` take, and the parser of
 * --cuda-options. Plain C: built with and without nvcc, so every build takes the same flags. */
#ifndef SLUICE_BACKEND_CUDA_OPTIONS_H
#define SLUICE_BACKEND_CUDA_OPTIONS_H

#include <stddef.h>

#include "common/flags.h"
#include "worker/backend/backend.h"

/* What --cuda-options takes, for --help. */
#define CUDA_OPTIONS_KEYS                                                                                      \
    "gemv, prefill_mma, hopper, split_parts, fused_mlp, early_trigger, attn_early, fp8_lt, fp8_outer, "            \
    "fp8_mma, fp8_hopper, fp8_prefetch, quant_mma, late_masks, tp_nccl (each 0: that path off; 1: the default), "   \
    "tp_oneshot (1: small all-reduces in one kernel; 0: the default), quant_overlap (1: GGUF block kernels "       \
    "launched as programmatic dependents, their int8 x written by the norm and SwiGLU; 0: the default), "          \
    "fused_qkv (auto, off or all)"

/* The flag table entries for o (a struct cuda_options *); text (a const char **) receives
 * --cuda-options, for cuda_options_parse once the flags are parsed. The step timeout's default
 * shows in --help when o->step_timeout_s holds it (CUDA_STEP_TIMEOUT_S). */
#define CUDA_OPTIONS_FLAG_SPECS(o, text)                                                                       \
    {"enforce-eager", FLAG_BOOL, &(o)->enforce_eager, NULL, NULL,                                              \
     "CUDA: no CUDA graphs; every step is launched kernel by kernel", 0, 0},                                   \
    {"cuda-step-timeout", FLAG_DOUBLE, &(o)->step_timeout_s, NULL, "SECONDS",                                  \
     "CUDA: a step not done after this long is a stuck GPU: its requests end with an error and /health "       \
     "answers 503",                                                                                            \
     0.001, 1e6},                                                                                              \
    {"cuda-profile", FLAG_BOOL, &(o)->profile, NULL, NULL,                                                     \
     "CUDA: time each phase of every step on the device (steps then run without graphs) and print the "        \
     "means per step shape at exit",                                                                           \
     0, 0},                                                                                                    \
    {"no-cuda-warmup", FLAG_BOOL, &(o)->no_warmup, NULL, NULL,                                                 \
     "CUDA: no warm-up prefill and decode step at start (the first request then pays the kernels' loading "    \
     "and a graph capture)",                                                                                   \
     0, 0},                                                                                                    \
    {"cuda-options", FLAG_STRING, (text), NULL, "KEY=VALUE,...",                                               \
     "CUDA: turn shipped paths off to compare against them (tests, benchmarks), or optional ones on: "         \
     CUDA_OPTIONS_KEYS, 0, 0},                                                                                 \
    {"nccl-library", FLAG_STRING, &(o)->nccl_library, "SLUICE_NCCL_LIBRARY", "PATH",                           \
     "CUDA, --tensor-parallel-size: the NCCL library to load where the loader would not find "                 \
     "libnccl.so.2",                                                                                           \
     0, 0}

/* A step not done after this many seconds is a stuck GPU, unless cuda_options.step_timeout_s
 * says otherwise. */
#define CUDA_STEP_TIMEOUT_S 60.0

/* Sets o's fields from text ("split_parts=0,fused_qkv=all"; NULL or empty: nothing). Returns 0,
 * or -1 with a message naming the bad item in err. */
int cuda_options_parse(struct cuda_options *o, const char *text, char *err, size_t errlen);

#endif
