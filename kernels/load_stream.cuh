// A 16-byte load of data read once (weights streaming through a gemv): through the read-only
// path, not kept in L1, so it does not evict what is reused (the activations).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

__device__ __forceinline__ uint4 load_stream(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
