/* --kv-cache-dtype's parsing and an FP8 cache's per-layer scales (kv_dtype.h). */
#include "worker/backend/kv_dtype.h"

#include <stdio.h>
#include <string.h>

int kv_cache_dtype_parse(const char *text, enum kv_cache_dtype *out, char *err, size_t errlen)
{
    if (!text || !*text || !strcmp(text, "auto")) {
        *out = KV_CACHE_AUTO;
    } else if (!strcmp(text, "fp8") || !strcmp(text, "fp8_e4m3")) {
        *out = KV_CACHE_FP8_E4M3;
    } else {
        snprintf(err, errlen, "--kv-cache-dtype must be auto, fp8 or fp8_e4m3, not '%s'%s", text,
                 !strcmp(text, "fp8_e5m2") ? " (an e5m2 cache is not supported)" : "");
        return -1;
    }
    return 0;
}

int kv_cache_scales(const struct model *m, float *scales, char *what, size_t whatlen)
{
    const int n = m->config.n_layers;
    int n_found = 0;
    float lo = 0.0f, hi = 0.0f;
    for (int l = 0; l < n; l++) {
        const struct layer_weights *L = &m->layers[l];
        /* The loader reads both or neither (kv_scale stands for both). */
        const bool have = L->k_scale > 0.0f && L->v_scale > 0.0f;
        scales[2 * l] = have ? L->k_scale : 1.0f;
        scales[2 * l + 1] = have ? L->v_scale : 1.0f;
        if (!have) continue;
        const float a = L->k_scale < L->v_scale ? L->k_scale : L->v_scale;
        const float b = L->k_scale < L->v_scale ? L->v_scale : L->k_scale;
        if (!n_found || a < lo) lo = a;
        if (!n_found || b > hi) hi = b;
        n_found++;
    }
    if (what) {
        if (n_found == 0)
            snprintf(what, whatlen, "scales 1 (the checkpoint has no k_scale/v_scale)");
        else
            snprintf(what, whatlen, "the checkpoint's k_scale/v_scale for %d of %d layers (%g to %g)%s", n_found, n,
                     (double)lo, (double)hi, n_found < n ? ", 1 for the others" : "");
    }
    return n_found;
}
