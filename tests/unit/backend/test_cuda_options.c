/* --cuda-options KEY=VALUE,...: each key turns its shipped path off (0) or back on (1), fused_qkv
 * takes auto, off or all, and anything else is refused with a message naming the item. Built with
 * and without nvcc alike. */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/backend/cuda/cuda_options.h"

Test(cuda_options, empty_text_leaves_the_defaults)
{
    struct cuda_options o = {0}, zero = {0};
    char err[256] = "";
    cr_assert_eq(cuda_options_parse(&o, NULL, err, sizeof err), 0);
    cr_assert_eq(cuda_options_parse(&o, "", err, sizeof err), 0);
    cr_assert_eq(cuda_options_parse(&o, ",,", err, sizeof err), 0);
    cr_assert(!memcmp(&o, &zero, sizeof o));
}

Test(cuda_options, each_key_turns_its_path_off_and_on)
{
    struct cuda_options o = {0};
    char err[256] = "";
    cr_assert_eq(cuda_options_parse(&o,
                                    "gemv=0,prefill_mma=0,hopper=0,split_parts=0,fused_mlp=0,early_trigger=0,"
                                    "attn_early=0,late_masks=0,quant_mma=0,fused_qkv=all",
                                    err, sizeof err),
                 0, "%s", err);
    cr_assert(o.no_gemv && o.no_prefill_mma && o.no_hopper && o.no_split_parts && o.no_fused_mlp &&
              o.no_early_trigger && o.no_attn_early && o.no_late_masks && o.no_quant_mma);
    cr_assert_eq(o.fused_qkv, CUDA_FUSED_QKV_ALL);
    cr_assert(!o.enforce_eager && !o.profile && !o.no_warmup && o.step_timeout_s == 0.0, "flags are not keys");
    cr_assert_eq(cuda_options_parse(&o, "split_parts=1,fused_qkv=off", err, sizeof err), 0, "%s", err);
    cr_assert(!o.no_split_parts && o.no_gemv, "only the named key changes");
    cr_assert_eq(o.fused_qkv, CUDA_FUSED_QKV_OFF);
    cr_assert_eq(cuda_options_parse(&o, "fused_qkv=auto", err, sizeof err), 0, "%s", err);
    cr_assert_eq(o.fused_qkv, CUDA_FUSED_QKV_AUTO);
}

Test(cuda_options, tp_oneshot_is_off_unless_turned_on)
{
    struct cuda_options o = {0};
    char err[512] = "";
    cr_assert_eq(cuda_options_parse(&o, "tp_nccl=0", err, sizeof err), 0, "%s", err);
    cr_assert(!o.tp_oneshot, "NCCL, or host memory, stays the default");
    cr_assert_eq(cuda_options_parse(&o, "tp_oneshot=1", err, sizeof err), 0, "%s", err);
    cr_assert(o.tp_oneshot && o.no_tp_nccl);
    cr_assert_eq(cuda_options_parse(&o, "tp_oneshot=0", err, sizeof err), 0, "%s", err);
    cr_assert(!o.tp_oneshot);
    cr_assert_eq(cuda_options_parse(&o, "tp_oneshot=on", err, sizeof err), -1);
    cr_assert(strstr(err, "bad value in 'tp_oneshot=on'") && strstr(err, "tp_oneshot (1: small"), "%s", err);
}

Test(cuda_options, quant_overlap_is_off_unless_turned_on)
{
    struct cuda_options o = {0};
    char err[512] = "";
    cr_assert_eq(cuda_options_parse(&o, "quant_mma=0", err, sizeof err), 0, "%s", err);
    cr_assert(!o.quant_overlap, "the block kernels launch the ordinary way by default");
    cr_assert_eq(cuda_options_parse(&o, "quant_overlap=1", err, sizeof err), 0, "%s", err);
    cr_assert(o.quant_overlap && o.no_quant_mma && !o.tp_oneshot, "only the named key changes");
    cr_assert_eq(cuda_options_parse(&o, "quant_overlap=0", err, sizeof err), 0, "%s", err);
    cr_assert(!o.quant_overlap);
    cr_assert_eq(cuda_options_parse(&o, "quant_overlap=yes", err, sizeof err), -1);
    cr_assert(strstr(err, "bad value in 'quant_overlap=yes'") && strstr(err, "quant_overlap (1: GGUF"), "%s", err);
}

Test(cuda_options, bad_items_are_refused_by_name)
{
    const char *bad[] = {
        "graphs=0", "split_parts", "split_parts=2", "split_parts=", "fused_qkv=1", "=0", "gemv=0,fused_mlp=no",
        "families=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cuda_options o = {0};
        char err[512] = "";
        cr_assert_eq(cuda_options_parse(&o, bad[i], err, sizeof err), -1, "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "--cuda-options") && strstr(err, "fused_qkv (auto, off or all)"), "%s", err);
    }
    struct cuda_options o = {0};
    char err[512] = "";
    cr_assert_eq(cuda_options_parse(&o, "gemv=0,graphs=0", err, sizeof err), -1);
    cr_assert(strstr(err, "unknown key in 'graphs=0'"), "%s", err);
    cr_assert_eq(cuda_options_parse(&o, "hopper=off", err, sizeof err), -1);
    cr_assert(strstr(err, "bad value in 'hopper=off'"), "%s", err);
}
