/* Connections per client address, for the HTTP server's per-address cap, and a gate that lets
 * a repeated warning through at most once per interval.
 *
 * An address is an IPv4 address, or an IPv6 /64 network: one IPv6 host commonly holds a whole
 * /64, so counting single IPv6 addresses would let one client multiply its share at will.
 * IPv4-mapped IPv6 addresses ("::ffff:10.0.0.1", what a dual-stack listener on "::" sees)
 * count as the IPv4 address. */
#ifndef SLUICE_COMMON_HTTP_PEERS_H
#define SLUICE_COMMON_HTTP_PEERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

struct http_peer_addr {
    unsigned char b[16]; /* IPv4 as ::ffff:a.b.c.d; IPv6 with the host half zeroed */
};

typedef struct http_peers http_peers;

/* 0, or -1 for a family other than AF_INET and AF_INET6. */
int http_peer_addr_from_sockaddr(const struct sockaddr *sa, struct http_peer_addr *out);
/* 127.0.0.0/8 and ::1 (whose /64 is ::/64). */
bool http_peer_addr_is_loopback(const struct http_peer_addr *a);
/* "10.0.0.1" or "2001:db8::/64". */
void http_peer_addr_format(const struct http_peer_addr *a, char *buf, size_t cap);

int http_peers_init(http_peers **out);
void http_peers_free(http_peers *p);
unsigned http_peers_count(const http_peers *p, const struct http_peer_addr *a);
/* One more connection from a: 0, or -1 when out of memory (nothing counted then). */
int http_peers_add(http_peers *p, const struct http_peer_addr *a);
/* One fewer; the address is forgotten when its count reaches 0. */
void http_peers_remove(http_peers *p, const struct http_peer_addr *a);
/* Addresses with at least one connection counted. */
size_t http_peers_size(const http_peers *p);

/* Lets a log line through when interval_ms has passed since the last one it let through;
 * the caller says how many were held back meanwhile (*held, then reset). */
struct http_log_gate {
    uint64_t next_ms;
    unsigned long held;
};
bool http_log_gate_pass(struct http_log_gate *g, uint64_t now_ms, uint64_t interval_ms, unsigned long *held);

#endif
