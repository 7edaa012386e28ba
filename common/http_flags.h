/* The flags every program that serves HTTP takes for its server's timeouts and per-address
 * cap, so that the three programs spell them, bound them and document them alike. A program
 * puts HTTP_SERVER_FLAG_SPECS(&f) into its flag table and http_server_flags_apply() into its
 * server configuration. */
#ifndef SLUICE_COMMON_HTTP_FLAGS_H
#define SLUICE_COMMON_HTTP_FLAGS_H

#include "common/flags.h"
#include "common/http_server.h"

struct http_server_flags {
    long header_timeout_ms, body_timeout_ms, idle_timeout_ms;
    long max_connections_per_ip, max_connections_per_loopback;
};

/* The server's defaults, so that --help shows them. */
#define HTTP_SERVER_FLAGS_DEFAULT                                                                          \
    {HTTP_DEFAULT_HEADER_TIMEOUT_MS, HTTP_DEFAULT_BODY_TIMEOUT_MS, HTTP_DEFAULT_IDLE_TIMEOUT_MS,           \
     HTTP_DEFAULT_MAX_CONNECTIONS_PER_IP, HTTP_DEFAULT_MAX_CONNECTIONS_PER_LOOPBACK}

#define HTTP_SERVER_FLAG_SPECS(f)                                                                          \
    {"header-timeout-ms", FLAG_INT, &(f)->header_timeout_ms, NULL, "MS",                                   \
     "a client must send a request's headers within this long of connecting (keep-alive: of the request's " \
     "first byte); 408 after",                                                                             \
     1, 3600000},                                                                                          \
    {"body-timeout-ms", FLAG_INT, &(f)->body_timeout_ms, NULL, "MS",                                       \
     "a client must send a request's body within this long of its headers; 408 after", 1, 3600000},       \
    {"idle-timeout-ms", FLAG_INT, &(f)->idle_timeout_ms, NULL, "MS",                                       \
     "a keep-alive connection with no request in flight is closed after this long", 1, 86400000},         \
    {"max-connections-per-ip", FLAG_INT, &(f)->max_connections_per_ip, NULL, "N",                          \
     "connections with no request in flight from one client address (IPv6: one /64); more get 429 "       \
     "(0: no cap)",                                                                                        \
     0, 1000000},                                                                                          \
    {"max-connections-per-loopback", FLAG_INT, &(f)->max_connections_per_loopback, NULL, "N",              \
     "the same cap for 127.0.0.0/8 and ::1, where a local proxy brings every client from (0: no cap)", 0,  \
     1000000}

void http_server_flags_apply(const struct http_server_flags *f, struct http_server_config *cfg);

#endif
