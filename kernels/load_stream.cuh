// A 16-byte load of weights read once per kernel: through the non-coherent path, not kept in L1
// (the activations that are reused stay there).
#pragma once

#include <cstdint>

__device__ __forceinline__ uint4 load_stream(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
