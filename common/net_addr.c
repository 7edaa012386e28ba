#include "common/net_addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/http_peers.h"

static int fail(const char **why, const char *reason)
{
    if (why) *why = reason;
    return -1;
}

/* A hostname: dot-separated labels of 1-63 letters, digits, '-' or '_' (compose and
 * Kubernetes service names use '_'), no label starting or ending with '-'. A name whose last
 * label looks numeric is read as IPv4 by resolvers (inet_aton takes "127.1" and "0x7f.1"),
 * so it must then be a plain dotted quad. */
static bool host_ok(const char *h, size_t n)
{
    if (n == 0 || n > 253) return false;
    size_t label = 0, last_start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || h[i] == '.') {
            if (label == 0 || label > 63 || h[i - 1] == '-' || h[i - label] == '-') return false;
            if (i < n) last_start = i + 1;
            label = 0;
            continue;
        }
        unsigned char ch = (unsigned char)h[i];
        if (!isalnum(ch) && ch != '-' && ch != '_') return false;
        label++;
    }
    const char *last = h + last_start;
    size_t last_len = n - last_start;
    bool numeric = true;
    for (size_t i = 0; i < last_len; i++) numeric = numeric && isdigit((unsigned char)last[i]);
    bool hex = last_len >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X');
    if (!numeric && !hex) return true;
    char v4[16];
    struct in_addr a;
    if (n >= sizeof v4) return false;
    memcpy(v4, h, n);
    v4[n] = '\0';
    /* inet_pton takes only a.b.c.d with decimal parts and no leading zeros. */
    return inet_pton(AF_INET, v4, &a) == 1;
}

int net_base_url_parse(const char *s, char *out, size_t cap, const char **why)
{
    if (!s) return fail(why, "it is missing");
    size_t scheme;
    if (!strncasecmp(s, "http://", 7)) scheme = 7;
    else if (!strncasecmp(s, "https://", 8)) scheme = 8;
    else return fail(why, "it must start with http:// or https://");
    const char *auth = s + scheme;
    for (const unsigned char *p = (const unsigned char *)auth; *p; p++) {
        if (*p <= ' ' || *p >= 0x7f) return fail(why, "it contains spaces, control or non-ASCII characters");
        if (*p == '@') return fail(why, "it must not carry user information ('@')");
        if (*p == '?') return fail(why, "it must not have a query ('?')");
        if (*p == '#') return fail(why, "it must not have a fragment ('#')");
        if (*p == '%' || *p == '\\') return fail(why, "it must not contain '%' or '\\'");
    }
    const char *slash = strchr(auth, '/');
    size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
    if (slash && slash[1] != '\0') return fail(why, "it must not have a path (only scheme://host:port)");

    const char *host, *port;
    size_t hlen;
    if (alen && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (!close) return fail(why, "an IPv6 address must be closed with ']'");
        host = auth;
        hlen = (size_t)(close - auth) + 1;
        char v6[64];
        struct in6_addr a6;
        size_t inner = hlen - 2;
        if (inner == 0 || inner >= sizeof v6) return fail(why, "the host is not a valid IPv6 address");
        memcpy(v6, auth + 1, inner);
        v6[inner] = '\0';
        if (inet_pton(AF_INET6, v6, &a6) != 1) return fail(why, "the host is not a valid IPv6 address");
        if (hlen == alen || auth[hlen] != ':') return fail(why, "it must name a port (scheme://host:port)");
        port = auth + hlen + 1;
    } else {
        const char *colon = memchr(auth, ':', alen);
        if (!colon) return fail(why, "it must name a port (scheme://host:port)");
        if (memchr(colon + 1, ':', alen - (size_t)(colon - auth) - 1))
            return fail(why, "an IPv6 address must be written in brackets");
        host = auth;
        hlen = (size_t)(colon - auth);
        if (!host_ok(host, hlen)) return fail(why, "the host is not a valid hostname or IP address");
        port = colon + 1;
    }
    size_t plen = alen - (size_t)(port - auth);
    if (plen == 0) return fail(why, "it must name a port (scheme://host:port)");
    uint32_t pv = 0;
    for (size_t i = 0; i < plen; i++) {
        if (!isdigit((unsigned char)port[i]) || plen > 5) return fail(why, "the port must be a number from 1 to 65535");
        pv = pv * 10 + (uint32_t)(port[i] - '0');
    }
    if (pv == 0 || pv > 65535 || port[0] == '0') return fail(why, "the port must be a number from 1 to 65535");

    char tmp[NET_BASE_URL_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s://%.*s:%u", scheme == 8 ? "https" : "http", (int)hlen, host, (unsigned)pv);
    if (n < 0 || (size_t)n >= sizeof tmp || (size_t)n >= cap) return fail(why, "it is too long");
    memcpy(out, tmp, (size_t)n + 1);
    return 0;
}

bool net_ip_is_loopback(const char *ip)
{
    if (!ip) return false;
    char buf[64];
    size_t n = strlen(ip);
    if (n >= 2 && ip[0] == '[' && ip[n - 1] == ']') {
        ip++;
        n -= 2;
    }
    if (n >= sizeof buf) return false;
    memcpy(buf, ip, n);
    buf[n] = '\0';
    /* Read as an address, then judged by the rule connections are judged by. */
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, buf, &a4->sin_addr) == 1) ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, buf, &a6->sin6_addr) == 1) ss.ss_family = AF_INET6;
    else return false;
    struct http_peer_addr a;
    return http_peer_addr_from_sockaddr((struct sockaddr *)&ss, &a) == 0 && http_peer_addr_is_loopback(&a);
}

int net_url_list_parse(const char *csv, char **urls, size_t max, size_t *n, char *err, size_t cap)
{
    *n = 0;
    for (const char *p = csv ? csv : "";;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '/')) len--;
        if (!len) {
            snprintf(err, cap, "an empty address in '%.200s'", csv ? csv : "");
            goto fail;
        }
        if (*n == max) {
            snprintf(err, cap, "at most %zu addresses", max);
            goto fail;
        }
        if (!(urls[*n] = strndup(p, len))) {
            snprintf(err, cap, "out of memory");
            goto fail;
        }
        (*n)++;
        if (!comma) return 0;
        p = comma + 1;
    }
fail:
    while (*n > 0) free(urls[--*n]);
    return -1;
}
