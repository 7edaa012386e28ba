/* The per-address connection counts behind the HTTP server's cap, against a plain array as
 * the model, and the gate that keeps refusals from flooding the log. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/http_peers.h"

static struct http_peer_addr v4(const char *ip)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    cr_assert_eq(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    struct http_peer_addr a;
    cr_assert_eq(http_peer_addr_from_sockaddr((struct sockaddr *)&sa, &a), 0);
    return a;
}

static struct http_peer_addr v6(const char *ip)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    cr_assert_eq(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
    struct http_peer_addr a;
    cr_assert_eq(http_peer_addr_from_sockaddr((struct sockaddr *)&sa, &a), 0);
    return a;
}

static const char *fmt(struct http_peer_addr a)
{
    static char buf[64];
    http_peer_addr_format(&a, buf, sizeof buf);
    return buf;
}

Test(http_peers, addresses_ipv4_mapped_and_ipv6_networks)
{
    struct http_peer_addr a = v4("10.1.2.3"), mapped = v6("::ffff:10.1.2.3");
    cr_assert(!memcmp(&a, &mapped, sizeof a), "a dual-stack listener's view is the same client");
    cr_assert_str_eq(fmt(a), "10.1.2.3");
    struct http_peer_addr h1 = v6("2001:db8:1:2::1"), h2 = v6("2001:db8:1:2:ffff::9");
    cr_assert(!memcmp(&h1, &h2, sizeof h1), "one /64 is one client");
    struct http_peer_addr other = v6("2001:db8:1:3::1");
    cr_assert(memcmp(&h1, &other, sizeof h1));
    cr_assert_str_eq(fmt(h1), "2001:db8:1:2::/64");

    cr_assert(http_peer_addr_is_loopback(&(struct http_peer_addr){0}) == false);
    struct http_peer_addr l4 = v4("127.0.0.1"), l4b = v4("127.8.9.10"), l6 = v6("::1");
    cr_assert(http_peer_addr_is_loopback(&l4));
    cr_assert(http_peer_addr_is_loopback(&l4b));
    cr_assert(http_peer_addr_is_loopback(&l6));
    cr_assert_str_eq(fmt(l6), "::1");
    struct http_peer_addr near_loop = v6("::2"), pub = v4("128.0.0.1");
    cr_assert(!http_peer_addr_is_loopback(&near_loop), "only ::1 itself is loopback in ::/64");
    cr_assert(!http_peer_addr_is_loopback(&pub));

    struct sockaddr sa = {.sa_family = AF_UNIX};
    struct http_peer_addr x;
    cr_assert_eq(http_peer_addr_from_sockaddr(&sa, &x), -1);
}

Test(http_peers, counts_add_and_remove)
{
    http_peers *p;
    cr_assert_eq(http_peers_init(&p), 0);
    struct http_peer_addr a = v4("192.0.2.1"), b = v4("192.0.2.2");
    cr_assert_eq(http_peers_count(p, &a), 0);
    for (int i = 0; i < 3; i++) cr_assert_eq(http_peers_add(p, &a), 0);
    cr_assert_eq(http_peers_add(p, &b), 0);
    cr_assert_eq(http_peers_count(p, &a), 3);
    cr_assert_eq(http_peers_count(p, &b), 1);
    cr_assert_eq(http_peers_size(p), 2);
    http_peers_remove(p, &b);
    cr_assert_eq(http_peers_count(p, &b), 0);
    cr_assert_eq(http_peers_size(p), 1, "an address at 0 is forgotten");
    http_peers_remove(p, &b); /* not counted: nothing happens */
    cr_assert_eq(http_peers_count(p, &a), 3);
    http_peers_free(p);
}

/* Random adds and removes over many addresses (so the table grows and runs collide), checked
 * after every step against an array. */
Test(http_peers, matches_a_model_under_churn)
{
    enum { N = 3000 };
    http_peers *p;
    cr_assert_eq(http_peers_init(&p), 0);
    static unsigned model[N];
    static struct http_peer_addr addrs[N];
    for (int i = 0; i < N; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "10.%d.%d.%d", i / 65536, i / 256 % 256, i % 256);
        addrs[i] = v4(ip);
    }
    srand(3);
    size_t live = 0;
    for (int step = 0; step < 200000; step++) {
        int i = rand() % N;
        if (rand() % 3 || !model[i]) {
            if (!model[i]) live++;
            model[i]++;
            cr_assert_eq(http_peers_add(p, &addrs[i]), 0);
        } else {
            model[i]--;
            if (!model[i]) live--;
            http_peers_remove(p, &addrs[i]);
        }
        int j = rand() % N;
        cr_assert_eq(http_peers_count(p, &addrs[j]), model[j], "step %d", step);
        cr_assert_eq(http_peers_size(p), live);
        /* Now and then drain everything: removal must leave every run findable. */
        if (step % 50000 == 49999) {
            for (int k = 0; k < N; k++) {
                while (model[k]) {
                    http_peers_remove(p, &addrs[k]);
                    model[k]--;
                }
                for (int m = k + 1; m < N; m += 97) cr_assert_eq(http_peers_count(p, &addrs[m]), model[m]);
            }
            live = 0;
            cr_assert_eq(http_peers_size(p), 0);
        }
    }
    for (int k = 0; k < N; k++) cr_assert_eq(http_peers_count(p, &addrs[k]), model[k]);
    http_peers_free(p);
}

Test(http_peers, log_gate_lets_one_line_through_per_interval)
{
    struct http_log_gate g = {0};
    unsigned long held = 99;
    cr_assert(http_log_gate_pass(&g, 1000, 10000, &held));
    cr_assert_eq(held, 0);
    for (int i = 0; i < 500; i++) cr_assert(!http_log_gate_pass(&g, 1000 + (uint64_t)i * 10, 10000, &held));
    cr_assert(!http_log_gate_pass(&g, 10999, 10000, &held));
    cr_assert(http_log_gate_pass(&g, 11000, 10000, &held));
    cr_assert_eq(held, 501, "the next line says how many were held back");
    cr_assert(http_log_gate_pass(&g, 30000, 10000, &held));
    cr_assert_eq(held, 0);
}
