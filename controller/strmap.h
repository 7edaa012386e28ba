/* A string-keyed hash map (chained, FNV-1a) for the controller's name lookups: worker name to
 * worker, model name to its workers. Keys are copied; values are borrowed pointers. */
#ifndef SLUICE_CONTROLLER_STRMAP_H
#define SLUICE_CONTROLLER_STRMAP_H

#include <stddef.h>

typedef struct ctl_map ctl_map;

int ctl_map_init(ctl_map **out);
/* Frees the map and its keys; values are the caller's. */
void ctl_map_free(ctl_map *m);
void *ctl_map_get(const ctl_map *m, const char *key);
/* Inserts or replaces. Returns 0, or -1 when out of memory. */
int ctl_map_put(ctl_map *m, const char *key, void *value);
/* Returns the removed value, or NULL when the key was absent. */
void *ctl_map_remove(ctl_map *m, const char *key);
size_t ctl_map_count(const ctl_map *m);
/* Calls fn for each entry in no particular order; the map must not change meanwhile. */
void ctl_map_each(const ctl_map *m, void (*fn)(const char *key, void *value, void *arg), void *arg);

#endif
