// Launch shapes that several launchers share: the grid of a grid-stride loop over n elements
// (convert.cu, silu_mul.cu, sample.cu's sort setup) and the block of a kernel that takes one
// row per block (embed.cu, add_rmsnorm.cu, qkv_norm_full.cu).
//
// In an anonymous namespace, as they were in the one file these launchers came from: each file
// that includes this keeps internal copies (inline, so a file that calls only one of them has no
// unused function).
#pragma once

#include <cstdint>

namespace
{

// Enough blocks of `threads` for n elements, at least 1 and at most 65535 * 16: past that the
// kernel's loop strides over the rest.
inline int grid_for(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    if (g > 65535 * 16) g = 65535 * 16;
    return g < 1 ? 1 : (int)g;
}

// A row of n elements: n rounded up to whole warps, from 32 to 1024 threads.
inline int threads_for_row(int n)
{
    int t = (n + 31) / 32 * 32;
    return t > 1024 ? 1024 : (t < 32 ? 32 : t);
}

} // namespace
