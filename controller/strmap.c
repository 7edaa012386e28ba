#include "controller/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

struct ctl_map_node {
    struct ctl_map_node *next;
    uint64_t hash;
    void *value;
    char key[]; /* NUL-terminated copy */
};

struct ctl_map {
    struct ctl_map_node **buckets;
    size_t n_buckets; /* a power of two */
    size_t count;
};

static uint64_t map_hash(const char *s)
{
    return hash_fnv1a_str(HASH_FNV1A_INIT, s);
}

int ctl_map_init(ctl_map **out)
{
    ctl_map *m = calloc(1, sizeof *m);
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

void ctl_map_free(ctl_map *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct ctl_map_node *n = m->buckets[i];
        while (n) {
            struct ctl_map_node *next = n->next;
            free(n);
            n = next;
        }
    }
    free(m->buckets);
    free(m);
}

static struct ctl_map_node **map_slot(const ctl_map *m, const char *key, uint64_t h)
{
    struct ctl_map_node **p = &m->buckets[h & (m->n_buckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->key, key) != 0)) p = &(*p)->next;
    return p;
}

void *ctl_map_get(const ctl_map *m, const char *key)
{
    struct ctl_map_node **p = map_slot(m, key, map_hash(key));
    return *p ? (*p)->value : NULL;
}

/* Doubles the bucket array; on allocation failure the map keeps working, only slower. */
static void map_grow(ctl_map *m)
{
    size_t nb = m->n_buckets * 2;
    struct ctl_map_node **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct ctl_map_node *n = m->buckets[i];
        while (n) {
            struct ctl_map_node *next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = nb;
}

int ctl_map_put(ctl_map *m, const char *key, void *value)
{
    uint64_t h = map_hash(key);
    struct ctl_map_node **p = map_slot(m, key, h);
    if (*p) {
        (*p)->value = value;
        return 0;
    }
    size_t len = strlen(key);
    struct ctl_map_node *n = malloc(sizeof *n + len + 1);
    if (!n) return -1;
    memcpy(n->key, key, len + 1);
    n->hash = h;
    n->value = value;
    n->next = NULL;
    *p = n;
    if (++m->count > m->n_buckets) map_grow(m);
    return 0;
}

void *ctl_map_remove(ctl_map *m, const char *key)
{
    struct ctl_map_node **p = map_slot(m, key, map_hash(key));
    struct ctl_map_node *n = *p;
    if (!n) return NULL;
    void *value = n->value;
    *p = n->next;
    free(n);
    m->count--;
    return value;
}

size_t ctl_map_count(const ctl_map *m)
{
    return m->count;
}

void ctl_map_each(const ctl_map *m, void (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct ctl_map_node *n = m->buckets[i]; n; n = n->next) fn(n->key, n->value, arg);
}
