/* --kv-cache-dtype: the paged KV cache in the backend's own type (auto) or in FP8 (e4m3, vLLM's
 * fp8 and fp8_e4m3), which halves a token's bytes against bf16 and so doubles the tokens a
 * memory budget holds. An FP8 cache stores value / scale, rounded to nearest even and saturated
 * at +-448 (fp8_e4m3_from_f32, bit for bit CUDA's __nv_cvt_float_to_fp8 with __NV_SATFINITE),
 * with one float scale per layer for K and one for V: the checkpoint's, else 1 as vLLM takes
 * them. Both backends parse and resolve them here, so that they agree. */
#ifndef SLUICE_WORKER_BACKEND_KV_DTYPE_H
#define SLUICE_WORKER_BACKEND_KV_DTYPE_H

#include <stddef.h>

#include "common/flags.h"
#include "worker/backend/backend.h"
#include "worker/model/model.h"

/* The flag table entry both `sluice-worker` and `sluice-worker bench` take; text (a const char **)
 * is then given to kv_cache_dtype_parse. */
#define KV_CACHE_DTYPE_FLAG_SPEC(text)                                                                         \
    {"kv-cache-dtype", FLAG_STRING, (text), NULL, "DTYPE",                                                     \
     "the KV cache's element type: auto (the model's: bf16 on CUDA, float32 on the CPU), or fp8 (alias "        \
     "fp8_e4m3): e4m3, a byte a value, with a scale per layer for K and for V (the checkpoint's "               \
     "k_scale/v_scale, else 1), so the same memory holds twice bf16's tokens",                                 \
     0, 0}

/* "auto", "fp8" and "fp8_e4m3" (NULL or empty: auto); -1 with a message naming the flag and the
 * accepted values for anything else (fp8_e5m2 among them). */
int kv_cache_dtype_parse(const char *text, enum kv_cache_dtype *out, char *err, size_t errlen);

/* The scales of an FP8 cache for m's layers: scales[2 l] for layer l's K, scales[2 l + 1] for its
 * V, the checkpoint's where it has them (model.h's k_scale, v_scale), else 1. Returns how many
 * layers took the checkpoint's; what (may be NULL) says which in a sentence for the log. */
int kv_cache_scales(const struct model *m, float *scales, char *what, size_t whatlen);

#endif
