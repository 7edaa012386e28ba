// Shared-memory addresses and mbarriers (sm_90), for kernels that move data with the copy engine
// (bulk copies, TMA) and wait for it: the Hopper products (hopper_stream.cuh) and the SIMT decode
// attention in kernels/dev/; mma.cuh takes its shared-memory addresses from here. Barriers are
// named by their 32-bit shared-memory address, as the PTX instructions take them.
#ifndef SLUICE_KERNELS_MBARRIER_CUH
#define SLUICE_KERNELS_MBARRIER_CUH

#include <stdint.h>

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

// One arrival that also announces `bytes` the copy engine will deliver before the phase completes.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Waits until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    asm volatile("{\n\t.reg .pred done;\n"
                 "WAIT_%=:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT_%=;\n}" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

#endif
