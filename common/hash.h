/* Non-cryptographic hashes the programs share, for hash tables and cache keys. Where a client
 * chooses what is hashed, the tables compare the keys themselves too: a collision costs a
 * probe, never a wrong answer. */
#ifndef SLUICE_COMMON_HASH_H
#define SLUICE_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

/* SplitMix64's finalizer: every bit of z reaches every bit of the result. */
static inline uint64_t hash_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* FNV-1a over p[0..n), going on from h: HASH_FNV1A_INIT to start. */
#define HASH_FNV1A_INIT 0xcbf29ce484222325ull
static inline uint64_t hash_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

#endif
