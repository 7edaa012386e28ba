// Programmatic dependent launch (PDL, Hopper and later). A kernel launched with launch_pdl may
// start while the kernel before it on the stream still runs, as soon as every block of that
// kernel has called pdl_let_dependents_launch (or exited). It must call pdl_wait before it reads
// anything the previous kernel writes: the wait returns once that kernel has completed and its
// writes are visible. What comes before the wait (weights, indices, shared memory setup) then
// overlaps the previous kernel's tail, and the launch latency disappears from the step.
//
// Both instructions are no-ops where PDL does not apply: a kernel launched the ordinary way, or
// code built for an architecture before sm_90.
#pragma once

#include <cuda_runtime.h>

__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_let_dependents_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, s>>>(args...), as a programmatic dependent when pdl.
template <typename... Params, typename... Args>
cudaError_t launch_maybe_pdl(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
    return e != cudaSuccess ? e : cudaGetLastError();
}

template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args)
{
    return launch_maybe_pdl(true, kernel, grid, block, smem, s, args...);
}
