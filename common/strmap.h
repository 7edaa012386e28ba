/* A string-keyed hash map (chained, FNV-1a): the controller's name lookups (worker name to
 * worker, model name to its workers), the rate limits' keys, the names remembered lately
 * (common/recent.h). Keys are copied; values are borrowed pointers. The hash is not keyed:
 * keys are names the operator or an authenticated caller chose, not any client's. */
#ifndef SLUICE_COMMON_STRMAP_H
#define SLUICE_COMMON_STRMAP_H

#include <stddef.h>

typedef struct strmap strmap;

int strmap_init(strmap **out);
/* Frees the map and its keys; values are the caller's. */
void strmap_free(strmap *m);
void *strmap_get(const strmap *m, const char *key);
/* Inserts or replaces. Returns 0, or -1 when out of memory. */
int strmap_put(strmap *m, const char *key, void *value);
/* Returns the removed value, or NULL when the key was absent. */
void *strmap_remove(strmap *m, const char *key);
size_t strmap_count(const strmap *m);
/* Calls fn for each entry in no particular order; the map must not change meanwhile. */
void strmap_each(const strmap *m, void (*fn)(const char *key, void *value, void *arg), void *arg);

#endif
