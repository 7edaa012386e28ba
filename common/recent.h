/* Names seen lately: a bounded table of name -> when it was first and last noted, for hints
 * such as "this model was served a moment ago, so its absence now is a restart (503, retry),
 * not a name nobody serves (404)". The controller remembers the models whose last worker left,
 * the gateway the models it listed or routed.
 *
 * The table holds at most max names. Noting one more when it is full forgets the name noted
 * longest ago, which on a clock that does not go backwards is also the first to have left the
 * window: so a full table never forgets a name still within it while one outside is held.
 * Every operation is O(1). Times are seconds on whatever clock the caller passes. */
#ifndef SLUICE_COMMON_RECENT_H
#define SLUICE_COMMON_RECENT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct recent recent;

/* max >= 1 names, each remembered for window_s after it was last noted. Returns 0 or -1. */
int recent_init(recent **out, size_t max, double window_s);
void recent_free(recent *r);
/* Notes name at now: its first time stays when it is held already; its last becomes now.
 * Returns 0, or -1 when out of memory (then nothing was noted: only a hint is lost). */
int recent_note(recent *r, const char *name, double now);
/* Whether name was noted within the window before now. */
bool recent_within(const recent *r, const char *name, double now);
/* When name was first noted, while it is held (*first set, true); false when it is not. */
bool recent_first(const recent *r, const char *name, double *first);
void recent_forget(recent *r, const char *name);
size_t recent_count(const recent *r);

#endif
