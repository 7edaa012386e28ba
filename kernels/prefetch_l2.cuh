// The next weight matrix's first bytes into L2 at the end of a decode product: between two
// products of a layer run small kernels (norms, rope, attention, the activation) that leave
// most of the memory bandwidth idle, and a product's own start and end are the slowest parts of
// a short kernel; bytes fetched in between are bytes the next product finds in L2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

// Warps that share the prefetch: the last ones of the grid (the last to run), at most this
// many, so the lines arrive after the current product's own stream has gone through L2.
constexpr int kPrefetchWarps = 1024;
constexpr uint32_t kPrefetchPiece = 16384;

// Called once per warp after its last load (every warp of the grid, warps_per_block a block):
// lane 0 of each of the last kPrefetchWarps warps asks for its share of [p, p + bytes) with TMA
// bulk prefetches (sm_90; no registers, nothing waits for them). p 16-byte aligned.
__device__ __forceinline__ void prefetch_l2_share(const void *p, size_t bytes, int warps_per_block)
{
    if (!p || bytes == 0 || (threadIdx.x & 31) != 0) return;
    const long long total = (long long)gridDim.x * warps_per_block;
    const long long tail = total < kPrefetchWarps ? total : kPrefetchWarps;
    const long long part = (long long)blockIdx.x * warps_per_block + (threadIdx.x >> 5) - (total - tail);
    if (part < 0) return;
    const size_t per = ((bytes + tail - 1) / tail + 15) & ~(size_t)15;
    size_t off = (size_t)part * per;
    const size_t end = off + per < bytes ? off + per : bytes;
    const char *base = static_cast<const char *>(p);
    for (; off < end; off += kPrefetchPiece) {
        const uint32_t n = (uint32_t)(end - off < kPrefetchPiece ? end - off : kPrefetchPiece) & ~15u;
        if (n == 0) break;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off), "r"(n) : "memory");
    }
}
