#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/net_addr.h"

static void expect_good(const char *in, const char *want)
{
    char out[NET_BASE_URL_MAX];
    const char *why = NULL;
    cr_expect_eq(net_base_url_parse(in, out, sizeof out, &why), 0, "'%s' refused: %s", in, why ? why : "");
    if (why == NULL) cr_expect_str_eq(out, want, "'%s'", in);
}

static void expect_bad(const char *in, const char *reason_part)
{
    char out[NET_BASE_URL_MAX] = "untouched";
    const char *why = NULL;
    cr_expect_eq(net_base_url_parse(in, out, sizeof out, &why), -1, "'%s' accepted as '%s'", in, out);
    cr_expect_not_null(why, "'%s' has no reason", in);
    if (why && reason_part) cr_expect_not_null(strstr(why, reason_part), "'%s': '%s'", in, why);
}

Test(base_url, accepts_scheme_host_port)
{
    expect_good("http://127.0.0.1:21002", "http://127.0.0.1:21002");
    expect_good("http://127.0.0.1:21002/", "http://127.0.0.1:21002");
    expect_good("https://worker-3.example.com:443", "https://worker-3.example.com:443");
    expect_good("HTTP://Worker:1", "http://Worker:1");
    expect_good("HtTpS://w:65535/", "https://w:65535");
    expect_good("http://localhost:21002", "http://localhost:21002");
    expect_good("http://gpu_node_1:8000", "http://gpu_node_1:8000");
    expect_good("http://[::1]:21002", "http://[::1]:21002");
    expect_good("http://[2001:db8::7]:80/", "http://[2001:db8::7]:80");
    expect_good("http://[::ffff:10.0.0.1]:80", "http://[::ffff:10.0.0.1]:80");
    expect_good("http://10.1.2.3:1", "http://10.1.2.3:1");
    expect_good("http://0.0.0.0:21002", "http://0.0.0.0:21002");
    expect_good("http://a1.b2.c3:9", "http://a1.b2.c3:9");
    expect_good("http://123abc.example:9", "http://123abc.example:9");
}

Test(base_url, out_may_be_the_input)
{
    char buf[NET_BASE_URL_MAX] = "HTTP://h:7/";
    cr_assert_eq(net_base_url_parse(buf, buf, sizeof buf, NULL), 0);
    cr_assert_str_eq(buf, "http://h:7");
}

Test(base_url, refuses_other_schemes)
{
    expect_bad("", "http://");
    expect_bad("127.0.0.1:21002", "http://");
    expect_bad("ftp://h:21", "http://");
    expect_bad("file:///etc/passwd", "http://");
    expect_bad("gopher://h:70", "http://");
    expect_bad("http:/h:1", "http://");
    expect_bad("http:h:1", "http://");
    expect_bad(" http://h:1", "http://");
    expect_bad("httpx://h:1", "http://");
    expect_bad(NULL, NULL);
}

Test(base_url, refuses_paths_queries_fragments_userinfo)
{
    expect_bad("http://h:1/generate", "path");
    expect_bad("http://h:1//", "path");
    expect_bad("http://h:1/a/", "path");
    expect_bad("http://h/:1", "path");
    expect_bad("http://h:1?x=1", "query");
    expect_bad("http://h:1/?x", "query");
    expect_bad("http://h:1#frag", "fragment");
    expect_bad("http://user@h:1", "user");
    expect_bad("http://user:pw@h:1", "user");
    expect_bad("http://h:1@evil:2", "user");
    expect_bad("http://h%2e:1", "%");
    expect_bad("http://[fe80::1%25eth0]:1", "%");
    expect_bad("http://h\\@evil:1", NULL);
}

Test(base_url, refuses_bad_ports)
{
    expect_bad("http://h", "port");
    expect_bad("http://h:", "port");
    expect_bad("http://h/", "port");
    expect_bad("http://h:0", "port");
    expect_bad("http://h:65536", "port");
    expect_bad("http://h:99999", "port");
    expect_bad("http://h:123456", "port");
    expect_bad("http://h:08080", "port");
    expect_bad("http://h:-1", "port");
    expect_bad("http://h:+80", "port");
    expect_bad("http://h:8o", "port");
    expect_bad("http://h:80:90", "brackets");
    expect_bad("http://[::1]", "port");
    expect_bad("http://[::1]:", "port");
    expect_bad("http://[::1]x:80", "port");
}

Test(base_url, refuses_bad_hosts)
{
    expect_bad("http://:80", "host");
    expect_bad("http://-h:80", "host");
    expect_bad("http://h-:80", "host");
    expect_bad("http://a..b:80", "host");
    expect_bad("http://.h:80", "host");
    expect_bad("http://h.:80", "host");
    expect_bad("http://h!:80", "host");
    expect_bad("http://h*:80", "host");
    expect_bad("http://h;x:80", "host");
    expect_bad("http://h,x:80", "host");
    expect_bad("http://\xc3\xa9t\xc3\xa9:80", "non-ASCII");
    expect_bad("http://h x:80", "spaces");
    expect_bad("http://h\t:80", "spaces");
    expect_bad("http://h\r\nX-Injected: 1:80", "spaces");
    /* Numbers that resolvers would read as an IPv4 address in some other spelling. */
    expect_bad("http://127.1:80", "host");
    expect_bad("http://2130706433:80", "host");
    expect_bad("http://0x7f000001:80", "host");
    expect_bad("http://0x7f.0.0.1:80", "host");
    expect_bad("http://127.0.0.01:80", "host");
    expect_bad("http://256.0.0.1:80", "host");
    expect_bad("http://1.2.3.4.5:80", "host");
    /* IPv6 must be bracketed and valid. */
    expect_bad("http://::1:80", "brackets");
    expect_bad("http://[::1:80", "]");
    expect_bad("http://[]:80", "IPv6");
    expect_bad("http://[::g]:80", "IPv6");
    expect_bad("http://[h]:80", "IPv6");
    expect_bad("http://[127.0.0.1]:80", "IPv6");
    /* Labels of at most 63 characters, hosts of at most 253. */
    char host[400], want[400];
    size_t n = 0;
    n += (size_t)sprintf(host, "http://");
    memset(host + n, 'a', 64);
    strcpy(host + n + 64, ":80");
    expect_bad(host, "host");
    strcpy(host + n + 63, ":80");
    expect_good(host, host);
    /* 63+1+63+1+63+1+61 = 253 characters: accepted; one more is too long. */
    for (int i = 0; i < 3; i++) {
        memset(host + n, 'b', 63);
        n += 63;
        host[n++] = '.';
    }
    memset(host + n, 'c', 61);
    strcpy(host + n + 61, ":80");
    strcpy(want, host);
    expect_good(host, want);
    memset(host + n, 'c', 62);
    strcpy(host + n + 62, ":80");
    expect_bad(host, "host");
}

Test(base_url, output_capacity_is_respected)
{
    char small[12];
    const char *why = NULL;
    cr_expect_eq(net_base_url_parse("http://worker:21002", small, sizeof small, &why), -1);
    cr_expect_str_eq(why, "it is too long");
}

Test(loopback, ips)
{
    cr_expect(net_ip_is_loopback("127.0.0.1"));
    cr_expect(net_ip_is_loopback("127.255.3.4"));
    cr_expect(net_ip_is_loopback("::1"));
    cr_expect(net_ip_is_loopback("[::1]"));
    cr_expect(net_ip_is_loopback("::ffff:127.0.0.1"));
    cr_expect(net_ip_is_loopback("0:0:0:0:0:0:0:1"));
    cr_expect_not(net_ip_is_loopback("0.0.0.0"));
    cr_expect_not(net_ip_is_loopback("::"));
    cr_expect_not(net_ip_is_loopback("128.0.0.1"));
    cr_expect_not(net_ip_is_loopback("10.0.0.1"));
    cr_expect_not(net_ip_is_loopback("::ffff:10.0.0.1"));
    cr_expect_not(net_ip_is_loopback("::2"));
    cr_expect_not(net_ip_is_loopback("localhost"));
    cr_expect_not(net_ip_is_loopback("127.1"));
    cr_expect_not(net_ip_is_loopback(""));
    cr_expect_not(net_ip_is_loopback(NULL));
}

Test(url_list, controller_addresses_split_on_commas)
{
    char *urls[3], err[300] = "";
    size_t n = 9;
    cr_assert_eq(net_url_list_parse("http://a:1/, http://b:2 ,\thttp://c:3", urls, 3, &n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(urls[0], "http://a:1");
    cr_assert_str_eq(urls[1], "http://b:2");
    cr_assert_str_eq(urls[2], "http://c:3");
    for (size_t i = 0; i < n; i++) free(urls[i]);
    /* Refused whole, with nothing left allocated (ASan's leak check sees to that). */
    cr_assert_eq(net_url_list_parse("http://a:1,,http://b:2", urls, 3, &n, err, sizeof err), -1);
    cr_assert(strstr(err, "empty"), "%s", err);
    cr_assert_eq(n, 0);
    cr_assert_eq(net_url_list_parse("", urls, 3, &n, err, sizeof err), -1);
    cr_assert_eq(net_url_list_parse(NULL, urls, 3, &n, err, sizeof err), -1);
    cr_assert_eq(net_url_list_parse("a,b,c,d", urls, 3, &n, err, sizeof err), -1);
    cr_assert(strstr(err, "at most 3"), "%s", err);
    cr_assert_eq(n, 0);
}
