/* The planner's choice of path for a tensor-parallel all-reduce on CUDA (cuda_plan_all_reduce):
 * the one-shot kernel only where --cuda-options tp_oneshot=1 asks for it, for messages up to
 * SK_ONESHOT_MAX_BYTES over up to SK_ONESHOT_MAX_RANKS ranks, never under --deterministic, and
 * fused with the residual add only where nothing comes between the sum and that add. */
#include <criterion/criterion.h>

#include "worker/backend/cuda/cuda_plan.h"

/* A step of `rows` rows of a hidden size of H in fp32: the bytes one rank sends. */
static size_t message(int rows, int H) { return (size_t)rows * (size_t)H * 4; }

Test(cuda_plan_tp, the_communicator_unless_tp_oneshot_is_on)
{
    for (int ranks = 1; ranks <= 8; ranks *= 2)
        for (int fused = 0; fused < 2; fused++)
            cr_expect_eq(cuda_plan_all_reduce(false, false, ranks, message(1, 4096), fused), CUDA_ALL_REDUCE_COMM);
}

Test(cuda_plan_tp, decode_steps_take_the_one_shot_kernel_fused_where_nothing_comes_between)
{
    cr_expect_eq(cuda_plan_all_reduce(true, false, 2, message(1, 4096), true), CUDA_ALL_REDUCE_ONESHOT_FUSED);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 2, message(1, 4096), false), CUDA_ALL_REDUCE_ONESHOT,
                 "a bias or post-norm on the sum keeps the residual add apart");
    cr_expect_eq(cuda_plan_all_reduce(true, false, 1, message(8, 4096), true), CUDA_ALL_REDUCE_ONESHOT_FUSED,
                 "one rank (--tensor-parallel-size 1) runs the kernel too");
}

Test(cuda_plan_tp, larger_messages_go_to_the_communicator)
{
    cr_expect_eq(cuda_plan_all_reduce(true, false, 4, SK_ONESHOT_MAX_BYTES, true), CUDA_ALL_REDUCE_ONESHOT_FUSED);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 4, SK_ONESHOT_MAX_BYTES + 1, true), CUDA_ALL_REDUCE_COMM);
    /* Hidden size 4096: decode batches up to 32 rows; 8192: up to 16; a prefill chunk: never. */
    cr_expect_eq(cuda_plan_all_reduce(true, false, 8, message(32, 4096), false), CUDA_ALL_REDUCE_ONESHOT);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 8, message(33, 4096), false), CUDA_ALL_REDUCE_COMM);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 8, message(16, 8192), false), CUDA_ALL_REDUCE_ONESHOT);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 8, message(17, 8192), false), CUDA_ALL_REDUCE_COMM);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 2, message(512, 4096), true), CUDA_ALL_REDUCE_COMM);
}

Test(cuda_plan_tp, more_ranks_than_the_kernel_takes_go_to_the_communicator)
{
    cr_expect_eq(cuda_plan_all_reduce(true, false, SK_ONESHOT_MAX_RANKS, message(1, 4096), true),
                 CUDA_ALL_REDUCE_ONESHOT_FUSED);
    cr_expect_eq(cuda_plan_all_reduce(true, false, SK_ONESHOT_MAX_RANKS + 1, message(1, 4096), true),
                 CUDA_ALL_REDUCE_COMM);
    cr_expect_eq(cuda_plan_all_reduce(true, false, 0, message(1, 4096), true), CUDA_ALL_REDUCE_COMM);
}

Test(cuda_plan_tp, the_deterministic_mode_keeps_the_communicator)
{
    cr_expect_eq(cuda_plan_all_reduce(true, true, 2, message(1, 4096), true), CUDA_ALL_REDUCE_COMM,
                 "which path a step took would depend on its batch, and with it the row's bits");
}
