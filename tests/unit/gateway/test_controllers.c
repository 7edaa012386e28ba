/* The gateway's controllers (--controller-address a,b): the list, and the order calls try
 * them in as they fail and come back. The failover itself runs against real controllers in
 * tests/integration/test_controller_ha.py. */
#include <criterion/criterion.h>
#include <string.h>

#include "gateway/controllers.h"

static gw_ctls *make(const char *csv)
{
    gw_ctls *s = NULL;
    char err[256] = "";
    cr_assert_eq(gw_ctls_init(&s, csv, err, sizeof err), 0, "%s: %s", csv, err);
    return s;
}

Test(controllers, the_list_is_read_in_order_without_trailing_slashes)
{
    gw_ctls *s = make("http://a:1/, http://b:2 ,http://c:3");
    cr_assert_eq(gw_ctls_count(s), 3);
    cr_assert_str_eq(gw_ctls_url(s, 0), "http://a:1");
    cr_assert_str_eq(gw_ctls_url(s, 1), "http://b:2");
    cr_assert_str_eq(gw_ctls_url(s, 2), "http://c:3");
    gw_ctls_free(s);
    s = make("http://only:1");
    cr_assert_eq(gw_ctls_count(s), 1);
    gw_ctls_free(s);
}

Test(controllers, bad_lists_are_refused)
{
    gw_ctls *s = NULL;
    char err[256];
    cr_assert_eq(gw_ctls_init(&s, "", err, sizeof err), -1);
    cr_assert(strstr(err, "empty"), "%s", err);
    cr_assert_eq(gw_ctls_init(&s, "http://a:1,,http://b:2", err, sizeof err), -1);
    cr_assert_eq(gw_ctls_init(&s, "a,b,c,d,e,f,g,h,i", err, sizeof err), -1);
    cr_assert(strstr(err, "at most"), "%s", err);
    cr_assert_null(s);
}

Test(controllers, failed_ones_go_last_until_they_answer_again)
{
    gw_ctls *s = make("http://a:1,http://b:2,http://c:3");
    size_t order[GW_CTLS_MAX];
    cr_assert_eq(gw_ctls_order(s, order), 3);
    cr_assert(order[0] == 0 && order[1] == 1 && order[2] == 2);
    gw_ctls_report(s, 0, false);
    cr_assert_not(gw_ctls_healthy(s, 0));
    cr_assert_eq(gw_ctls_order(s, order), 3, "a failed controller is still a last resort");
    cr_assert(order[0] == 1 && order[1] == 2 && order[2] == 0);
    gw_ctls_report(s, 2, false);
    gw_ctls_order(s, order);
    cr_assert(order[0] == 1 && order[1] == 0 && order[2] == 2);
    gw_ctls_report(s, 0, true);
    gw_ctls_order(s, order);
    cr_assert(order[0] == 0 && order[1] == 1 && order[2] == 2, "the first, once back, is preferred again");
    cr_assert_eq(gw_ctls_failovers(s), 0);
    gw_ctls_free(s);
}
