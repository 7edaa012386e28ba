#include "common/recent.h"

#include <stdlib.h>
#include <string.h>

#include "common/strmap.h"

/* The names in the order they were last noted, the one noted longest ago first. */
struct entry {
    struct entry *prev, *next;
    double first, last;
    char name[]; /* the map's key too */
};

struct recent {
    strmap *by_name; /* name -> struct entry */
    struct entry *oldest, *newest;
    size_t max;
    double window;
};

int recent_init(recent **out, size_t max, double window_s)
{
    *out = NULL;
    recent *r = calloc(1, sizeof *r);
    if (!r || strmap_init(&r->by_name) != 0) {
        free(r);
        return -1;
    }
    r->max = max ? max : 1;
    r->window = window_s;
    *out = r;
    return 0;
}

void recent_free(recent *r)
{
    if (!r) return;
    for (struct entry *e = r->oldest, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    strmap_free(r->by_name);
    free(r);
}

static void unlink_entry(recent *r, struct entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else r->oldest = e->next;
    if (e->next) e->next->prev = e->prev;
    else r->newest = e->prev;
    e->prev = e->next = NULL;
}

static void append(recent *r, struct entry *e)
{
    e->prev = r->newest;
    e->next = NULL;
    if (r->newest) r->newest->next = e;
    else r->oldest = e;
    r->newest = e;
}

static void drop(recent *r, struct entry *e)
{
    unlink_entry(r, e);
    strmap_remove(r->by_name, e->name);
    free(e);
}

int recent_note(recent *r, const char *name, double now)
{
    struct entry *e = strmap_get(r->by_name, name);
    if (e) {
        e->last = now;
        unlink_entry(r, e);
        append(r, e);
        return 0;
    }
    if (strmap_count(r->by_name) >= r->max) drop(r, r->oldest);
    size_t len = strlen(name);
    e = malloc(sizeof *e + len + 1);
    if (!e) return -1;
    memcpy(e->name, name, len + 1);
    e->first = e->last = now;
    if (strmap_put(r->by_name, e->name, e) != 0) {
        free(e);
        return -1;
    }
    append(r, e);
    return 0;
}

bool recent_within(const recent *r, const char *name, double now)
{
    const struct entry *e = strmap_get(r->by_name, name);
    return e && now - e->last <= r->window;
}

bool recent_first(const recent *r, const char *name, double *first)
{
    const struct entry *e = strmap_get(r->by_name, name);
    if (e) *first = e->first;
    return e != NULL;
}

void recent_forget(recent *r, const char *name)
{
    struct entry *e = strmap_get(r->by_name, name);
    if (e) drop(r, e);
}

size_t recent_count(const recent *r)
{
    return strmap_count(r->by_name);
}
