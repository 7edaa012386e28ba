// Kernels that only tests call: they stage the orderings a step's kernels must survive.
#include "kernels/pdl.cuh"
#include "kernels/sluice_kernels.h"

namespace
{

__device__ __forceinline__ uint64_t global_ns()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Lets its programmatic dependents launch at once, then holds the GPU for delay_us before it
// copies: a dependent that reads dst before its pdl_wait sees the old bytes.
__global__ void late_copy_kernel(unsigned char *dst, const unsigned char *src, size_t bytes, int delay_us)
{
    pdl_let_dependents_launch();
    if (threadIdx.x == 0) {
        const uint64_t until = global_ns() + (uint64_t)delay_us * 1000;
        while (global_ns() < until) __nanosleep(1000);
    }
    __syncthreads();
    if (!((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | bytes) & 15)) {
        for (size_t i = threadIdx.x; i < bytes / 16; i += blockDim.x)
            reinterpret_cast<uint4 *>(dst)[i] = reinterpret_cast<const uint4 *>(src)[i];
        return;
    }
    for (size_t i = threadIdx.x; i < bytes; i += blockDim.x) dst[i] = src[i];
}

} // namespace

extern "C" cudaError_t sk_test_late_copy(void *dst, const void *src, size_t bytes, int delay_us, cudaStream_t s)
{
    late_copy_kernel<<<1, 256, 0, s>>>((unsigned char *)dst, (const unsigned char *)src, bytes, delay_us);
    return cudaGetLastError();
}
