/* --cuda-options KEY=VALUE,...: the paths a test or benchmark turns off to compare against. Each
 * key names a shipped path and 0 turns it off (its field in struct cuda_options is the negation,
 * so that a zeroed struct is the default); tp_oneshot and quant_overlap are the paths that are
 * off unless 1 turns them on. */
#include "worker/backend/cuda/cuda_options.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool *switch_field(struct cuda_options *o, const char *key, size_t len)
{
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
        {"gemv", offsetof(struct cuda_options, no_gemv)},
        {"prefill_mma", offsetof(struct cuda_options, no_prefill_mma)},
        {"hopper", offsetof(struct cuda_options, no_hopper)},
        {"split_parts", offsetof(struct cuda_options, no_split_parts)},
        {"fused_mlp", offsetof(struct cuda_options, no_fused_mlp)},
        {"early_trigger", offsetof(struct cuda_options, no_early_trigger)},
        {"attn_early", offsetof(struct cuda_options, no_attn_early)},
        {"fp8_lt", offsetof(struct cuda_options, no_fp8_lt)},
        {"fp8_outer", offsetof(struct cuda_options, no_fp8_outer)},
        {"fp8_mma", offsetof(struct cuda_options, no_fp8_mma)},
        {"fp8_hopper", offsetof(struct cuda_options, no_fp8_hopper)},
        {"fp8_prefetch", offsetof(struct cuda_options, no_fp8_prefetch)},
        {"quant_mma", offsetof(struct cuda_options, no_quant_mma)},
        {"late_masks", offsetof(struct cuda_options, no_late_masks)},
        {"tp_nccl", offsetof(struct cuda_options, no_tp_nccl)},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strlen(keys[i].key) == len && !strncmp(keys[i].key, key, len)) return (bool *)((char *)o + keys[i].off);
    return NULL;
}

static bool value_is(const char *v, size_t len, const char *word)
{
    return strlen(word) == len && !strncmp(v, word, len);
}

/* The paths that are off unless KEY=1 turns them on. */
static bool *opt_in_field(struct cuda_options *o, const char *key, size_t len)
{
    if (value_is(key, len, "tp_oneshot")) return &o->tp_oneshot;
    if (value_is(key, len, "quant_overlap")) return &o->quant_overlap;
    return NULL;
}

int cuda_options_parse(struct cuda_options *o, const char *text, char *err, size_t errlen)
{
    for (const char *p = text; p && *p;) {
        const char *end = strchr(p, ',');
        const size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (n == 0) {
            p = end ? end + 1 : p + n;
            continue;
        }
        if (!eq) {
            snprintf(err, errlen, "--cuda-options: '%.*s' is not KEY=VALUE (keys: %s)", (int)n, p, CUDA_OPTIONS_KEYS);
            return -1;
        }
        const size_t klen = (size_t)(eq - p), vlen = n - klen - 1;
        const char *v = eq + 1;
        bool *off = switch_field(o, p, klen), *on = opt_in_field(o, p, klen);
        const bool bit = value_is(v, vlen, "0") || value_is(v, vlen, "1");
        if (off && bit) {
            *off = v[0] == '0';
        } else if (on && bit) {
            *on = v[0] == '1';
        } else if (value_is(p, klen, "fused_qkv") && value_is(v, vlen, "auto")) {
            o->fused_qkv = CUDA_FUSED_QKV_AUTO;
        } else if (value_is(p, klen, "fused_qkv") && value_is(v, vlen, "off")) {
            o->fused_qkv = CUDA_FUSED_QKV_OFF;
        } else if (value_is(p, klen, "fused_qkv") && value_is(v, vlen, "all")) {
            o->fused_qkv = CUDA_FUSED_QKV_ALL;
        } else {
            snprintf(err, errlen, "--cuda-options: %s '%.*s' (keys: %s)",
                     off || on || value_is(p, klen, "fused_qkv") ? "bad value in" : "unknown key in", (int)n, p,
                     CUDA_OPTIONS_KEYS);
            return -1;
        }
        p = end ? end + 1 : p + n;
    }
    return 0;
}
