/* The bounded table of names seen lately behind the controller's and the gateway's "served
 * lately" hints: what it remembers, for how long, and what a full table forgets. */
#include <criterion/criterion.h>
#include <stdio.h>

#include "common/recent.h"

Test(recent, remembers_within_the_window_and_keeps_the_first_time)
{
    recent *r = NULL;
    cr_assert_eq(recent_init(&r, 4, 10.0), 0);
    double first = -1;
    cr_assert_not(recent_within(r, "a", 0));
    cr_assert_not(recent_first(r, "a", &first));

    cr_assert_eq(recent_note(r, "a", 100), 0);
    cr_assert(recent_within(r, "a", 100));
    cr_assert(recent_within(r, "a", 110), "the window's end is still within");
    cr_assert_not(recent_within(r, "a", 110.5));
    cr_assert(recent_first(r, "a", &first));
    cr_assert_float_eq(first, 100, 1e-12);

    cr_assert_eq(recent_note(r, "a", 105), 0);
    cr_assert(recent_within(r, "a", 114), "a new note moves the window");
    cr_assert(recent_first(r, "a", &first));
    cr_assert_float_eq(first, 100, 1e-12, "but not the first time");
    cr_assert_not(recent_within(r, "a", 200));
    cr_assert(recent_first(r, "a", &first), "a name past the window is still held until it makes room");

    recent_forget(r, "a");
    cr_assert_not(recent_within(r, "a", 105));
    cr_assert_not(recent_first(r, "a", &first));
    recent_forget(r, "never");
    cr_assert_eq(recent_count(r), 0);
    recent_free(r);
}

Test(recent, a_full_table_forgets_the_name_noted_longest_ago)
{
    recent *r = NULL;
    cr_assert_eq(recent_init(&r, 3, 1000.0), 0);
    recent_note(r, "a", 1);
    recent_note(r, "b", 1); /* the same time: the order of the notes decides */
    recent_note(r, "c", 2);
    recent_note(r, "a", 3); /* a is now the newest */
    recent_note(r, "d", 4);
    cr_assert_eq(recent_count(r), 3);
    cr_assert_not(recent_within(r, "b", 4), "b was noted longest ago");
    cr_assert(recent_within(r, "a", 4));
    cr_assert(recent_within(r, "c", 4));
    cr_assert(recent_within(r, "d", 4));

    char name[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "m%d", i);
        cr_assert_eq(recent_note(r, name, 5 + i), 0);
    }
    cr_assert_eq(recent_count(r), 3);
    for (int i = 97; i < 100; i++) {
        snprintf(name, sizeof name, "m%d", i);
        cr_assert(recent_within(r, name, 200), "%s", name);
    }
    cr_assert_not(recent_within(r, "m96", 200));
    recent_free(r);
}
