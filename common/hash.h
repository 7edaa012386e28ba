/* The two hashes the programs use, in one place so that every table and every draw computes
 * them alike:
 *
 * - FNV-1a (64-bit) over bytes: cheap, byte at a time, for strings of modest length;
 * - splitmix64's finalizer, which spreads every input bit over every output bit: applied to an
 *   FNV value where the low bits pick a slot, to mix a keyed hash, and (after adding its
 *   increment) as splitmix64, the generator of dispatch draws and trace ids.
 *
 * Neither is keyed: where clients choose the input (a per-address table), the caller mixes a
 * random key in. */
#ifndef SLUICE_COMMON_HASH_H
#define SLUICE_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV1A_INIT 0xcbf29ce484222325ull
#define HASH_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

/* Continues an FNV-1a hash h (HASH_FNV1A_INIT to start) over n bytes. */
static inline uint64_t hash_fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* The same over a NUL-terminated string (its bytes, not the NUL). */
static inline uint64_t hash_fnv1a_str(uint64_t h, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

/* splitmix64's finalizer: a bijection on 64 bits with full avalanche. */
static inline uint64_t hash_mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* splitmix64: the next value of the sequence whose state is *state. */
static inline uint64_t hash_splitmix64(uint64_t *state)
{
    return hash_mix64(*state += HASH_SPLITMIX64_GAMMA);
}

#endif
