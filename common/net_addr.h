/* Network addresses the programs trust or refuse: a worker's base URL (what the controller
 * stores and what the controller and gateway then fetch), and whether an IP is loopback
 * (where a server may listen without an internal token). Pure functions, no I/O. */
#ifndef SLUICE_COMMON_NET_ADDR_H
#define SLUICE_COMMON_NET_ADDR_H

#include <stdbool.h>
#include <stddef.h>

/* Room for any base URL net_base_url_parse accepts: "https://" + a 253-byte host + ":65535". */
enum { NET_BASE_URL_MAX = 280 };

/* Accepts exactly "http://host:port" or "https://host:port", with one trailing '/' allowed:
 * no path, query, fragment, user information or percent-escapes; a port of 1-65535 written
 * without leading zeros; a host that is a hostname (labels of letters, digits, '-' and '_'),
 * a dotted-quad IPv4 address, or an IPv6 address in brackets. Anything else would let a
 * registration make the controller and gateway fetch a URL of the caller's choosing.
 *
 * Writes the normalised form (scheme in lower case, no trailing slash) to out, which may be
 * s itself. Returns 0, or -1 with *why (when why is non-NULL) set to a static phrase that
 * completes "... is not a worker address: <why>". */
int net_base_url_parse(const char *s, char *out, size_t cap, const char **why);

/* --controller-address (the gateway's and the worker's): base URLs separated by commas, with
 * blanks around each and a trailing '/' dropped, otherwise as written. Fills urls[0..*n) with
 * malloc'd copies. Returns 0, or -1 with err set (an empty address, more than max of them, out
 * of memory) and nothing left allocated. */
int net_url_list_parse(const char *csv, char **urls, size_t max, size_t *n, char *err, size_t cap);

/* True for an IPv4 address in 127.0.0.0/8, ::1, and IPv4-mapped ::ffff:127.x.y.z, given as a
 * literal ("127.0.0.1", "::1", "[::1]"): the rule http_request_from_loopback applies to a
 * connection (common/http_peers.h). False for anything else, hostnames included. */
bool net_ip_is_loopback(const char *ip);

#endif
