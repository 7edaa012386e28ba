#include "common/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

struct strmap_node {
    struct strmap_node *next;
    uint64_t hash;
    void *value;
    char key[]; /* NUL-terminated copy */
};

struct strmap {
    struct strmap_node **buckets;
    size_t n_buckets; /* a power of two */
    size_t count;
};

static uint64_t map_hash(const char *s)
{
    return hash_fnv1a_str(HASH_FNV1A_INIT, s);
}

int strmap_init(strmap **out)
{
    strmap *m = calloc(1, sizeof *m);
    if (!m) return -1;
    m->n_buckets = 64;
    m->buckets = calloc(m->n_buckets, sizeof *m->buckets);
    if (!m->buckets) {
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void strmap_free(strmap *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct strmap_node *n = m->buckets[i];
        while (n) {
            struct strmap_node *next = n->next;
            free(n);
            n = next;
        }
    }
    free(m->buckets);
    free(m);
}

static struct strmap_node **map_slot(const strmap *m, const char *key, uint64_t h)
{
    struct strmap_node **p = &m->buckets[h & (m->n_buckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->key, key) != 0)) p = &(*p)->next;
    return p;
}

void *strmap_get(const strmap *m, const char *key)
{
    struct strmap_node **p = map_slot(m, key, map_hash(key));
    return *p ? (*p)->value : NULL;
}

/* Doubles the bucket array; on allocation failure the map keeps working, only slower. */
static void map_grow(strmap *m)
{
    size_t nb = m->n_buckets * 2;
    struct strmap_node **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct strmap_node *n = m->buckets[i];
        while (n) {
            struct strmap_node *next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = nb;
}

int strmap_put(strmap *m, const char *key, void *value)
{
    uint64_t h = map_hash(key);
    struct strmap_node **p = map_slot(m, key, h);
    if (*p) {
        (*p)->value = value;
        return 0;
    }
    size_t len = strlen(key);
    struct strmap_node *n = malloc(sizeof *n + len + 1);
    if (!n) return -1;
    memcpy(n->key, key, len + 1);
    n->hash = h;
    n->value = value;
    n->next = NULL;
    *p = n;
    if (++m->count > m->n_buckets) map_grow(m);
    return 0;
}

void *strmap_remove(strmap *m, const char *key)
{
    struct strmap_node **p = map_slot(m, key, map_hash(key));
    struct strmap_node *n = *p;
    if (!n) return NULL;
    void *value = n->value;
    *p = n->next;
    free(n);
    m->count--;
    return value;
}

size_t strmap_count(const strmap *m)
{
    return m->count;
}

void strmap_each(const strmap *m, void (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct strmap_node *n = m->buckets[i]; n; n = n->next) fn(n->key, n->value, arg);
}
