/* Which origins --allowed-origins lets in. */
#include <criterion/criterion.h>

#include "gateway/gateway.h"

Test(cors, origins_match_exactly_or_by_star)
{
    cr_expect(gw_cors_allowed("*", "https://a.example"));
    cr_expect(gw_cors_allowed("https://a.example", "https://a.example"));
    cr_expect(gw_cors_allowed("https://b.example, https://a.example", "https://a.example"));
    cr_expect(gw_cors_allowed("https://b.example,*", "http://anything:8080"));
    cr_expect_not(gw_cors_allowed("https://a.example", "http://a.example"), "the scheme counts");
    cr_expect_not(gw_cors_allowed("https://a.example", "https://a.example:8443"), "the port counts");
    cr_expect_not(gw_cors_allowed("https://a.example", "https://a.example.evil"));
    cr_expect_not(gw_cors_allowed("https://a.example.evil", "https://a.example"));
    cr_expect_not(gw_cors_allowed(NULL, "https://a.example"), "off by default");
    cr_expect_not(gw_cors_allowed("", "https://a.example"));
    cr_expect_not(gw_cors_allowed("*", ""), "no Origin, no CORS");
    cr_expect_not(gw_cors_allowed("*", NULL));
}
