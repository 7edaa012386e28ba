/* The hash behind --load-format dummy's random weights, in one place for the CPU loader
 * (model.c) and the CUDA kernel (kernels/dummy.cu), so that both backends see the same model bit
 * for bit: mix = the splitmix64 finalizer, G = 0x9E3779B97F4A7C15 (arithmetic modulo 2^64),
 * h = mix(mix(mix(seed + G) + (id + 1) * G) + (index + 1) * G). A weight is then
 * u = (h >> 40) * 2^-24 in [0, 1) and value = (2u - 1) * MODEL_DUMMY_SCALE, each step rounded on
 * its own (the CUDA side spells the roundings out so that nothing is fused). */
#ifndef SLUICE_MODEL_DUMMY_HASH_H
#define SLUICE_MODEL_DUMMY_HASH_H

#include <stdint.h>

#define MODEL_DUMMY_SCALE 0.02f

#ifdef __CUDACC__
#define DUMMY_HASH_FN static __host__ __device__ __forceinline__
#else
#define DUMMY_HASH_FN static inline
#endif

DUMMY_HASH_FN uint64_t dummy_mix(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

DUMMY_HASH_FN uint64_t dummy_hash(uint64_t seed, uint64_t id, uint64_t index)
{
    const uint64_t g = 0x9E3779B97F4A7C15ull;
    return dummy_mix(dummy_mix(dummy_mix(seed + g) + (id + 1) * g) + (index + 1) * g);
}

#endif
