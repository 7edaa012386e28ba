// Raising a kernel's dynamic shared-memory limit past 48 KB (cudaFuncSetAttribute), once per
// kernel and device: the limit stays set in the device's context, and a host call before every
// launch would sit on every step's path. For the launchers of attention_decode_gqa.cu and
// attention_prefill.cu.
#pragma once

#include <cuda_runtime.h>

template <auto Kernel> cudaError_t raise_smem_limit_once(int bytes)
{
    static unsigned long long done = 0; // bit d: set on device d
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    const unsigned long long bit = 1ull << (dev & 63);
    if (__atomic_load_n(&done, __ATOMIC_ACQUIRE) & bit) return cudaSuccess;
    e = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess) __atomic_fetch_or(&done, bit, __ATOMIC_RELEASE);
    return e;
}
