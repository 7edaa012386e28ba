/* An open-addressing hash table (linear probing, deletion by backward shift, so no
 * tombstones pile up) from client address to connection count. Its hash is keyed with a
 * random value per table: the addresses are chosen by clients, who must not be able to make
 * every lookup walk one long run. */
#include "common/http_peers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "common/hash.h"

struct slot {
    struct http_peer_addr addr;
    unsigned count; /* 0: empty */
};

struct http_peers {
    struct slot *slots;
    size_t cap; /* a power of two */
    size_t used;
    uint64_t key[2];
};

enum { PEERS_INITIAL = 64 };

static const unsigned char v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int http_peer_addr_from_sockaddr(const struct sockaddr *sa, struct http_peer_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        memcpy(out->b, v4_prefix, sizeof v4_prefix);
        memcpy(out->b + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (!memcmp(b, v4_prefix, sizeof v4_prefix)) {
            memcpy(out->b, b, 16);
        } else {
            /* ::1 keeps its host half so that it is told apart from the rest of ::/64. */
            static const unsigned char loop6[16] = {[15] = 1};
            memcpy(out->b, b, memcmp(b, loop6, 16) ? 8 : 16);
        }
        return 0;
    }
    return -1;
}

bool http_peer_addr_is_loopback(const struct http_peer_addr *a)
{
    static const unsigned char loop6[16] = {[15] = 1};
    if (!memcmp(a->b, v4_prefix, sizeof v4_prefix)) return a->b[12] == 127;
    return !memcmp(a->b, loop6, 16);
}

void http_peer_addr_format(const struct http_peer_addr *a, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (!memcmp(a->b, v4_prefix, sizeof v4_prefix)) {
        inet_ntop(AF_INET, a->b + 12, ip, sizeof ip);
        snprintf(buf, cap, "%s", ip);
    } else {
        inet_ntop(AF_INET6, a->b, ip, sizeof ip);
        snprintf(buf, cap, "%s%s", ip, http_peer_addr_is_loopback(a) ? "" : "/64");
    }
}

static size_t slot_of(const http_peers *p, const struct http_peer_addr *a)
{
    uint64_t hi, lo;
    memcpy(&hi, a->b, 8);
    memcpy(&lo, a->b + 8, 8);
    return (size_t)(hash_mix64(hash_mix64(hi ^ p->key[0]) ^ lo ^ p->key[1])) & (p->cap - 1);
}

int http_peers_init(http_peers **out)
{
    http_peers *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->cap = PEERS_INITIAL;
    p->slots = calloc(p->cap, sizeof *p->slots);
    if (!p->slots) {
        free(p);
        return -1;
    }
    if (getrandom(p->key, sizeof p->key, GRND_NONBLOCK) != (ssize_t)sizeof p->key) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        p->key[0] = hash_mix64((uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)p);
        p->key[1] = hash_mix64(p->key[0] ^ (uint64_t)ts.tv_sec);
    }
    *out = p;
    return 0;
}

void http_peers_free(http_peers *p)
{
    if (!p) return;
    free(p->slots);
    free(p);
}

/* The slot holding a, or the empty slot where it would go. */
static struct slot *find(const http_peers *p, const struct http_peer_addr *a)
{
    size_t i = slot_of(p, a);
    for (;;) {
        struct slot *s = &p->slots[i];
        if (!s->count || !memcmp(&s->addr, a, sizeof *a)) return s;
        i = (i + 1) & (p->cap - 1);
    }
}

unsigned http_peers_count(const http_peers *p, const struct http_peer_addr *a)
{
    return find(p, a)->count;
}

static int grow(http_peers *p)
{
    struct slot *old = p->slots;
    size_t old_cap = p->cap;
    struct slot *slots = calloc(old_cap * 2, sizeof *slots);
    if (!slots) return -1;
    p->slots = slots;
    p->cap = old_cap * 2;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].count) *find(p, &old[i].addr) = old[i];
    free(old);
    return 0;
}

int http_peers_add(http_peers *p, const struct http_peer_addr *a)
{
    struct slot *s = find(p, a);
    if (s->count) {
        s->count++;
        return 0;
    }
    /* At most half full, so that probe runs stay short. */
    if ((p->used + 1) * 2 > p->cap) {
        if (grow(p) != 0) return -1;
        s = find(p, a);
    }
    s->addr = *a;
    s->count = 1;
    p->used++;
    return 0;
}

void http_peers_remove(http_peers *p, const struct http_peer_addr *a)
{
    struct slot *s = find(p, a);
    if (!s->count || --s->count) return;
    p->used--;
    /* Backward shift: move later members of the run into the hole when their home allows. */
    size_t hole = (size_t)(s - p->slots), mask = p->cap - 1;
    for (size_t i = (hole + 1) & mask; p->slots[i].count; i = (i + 1) & mask) {
        size_t home = slot_of(p, &p->slots[i].addr);
        /* The entry may move back to the hole only if its home is not within (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            p->slots[hole] = p->slots[i];
            hole = i;
        }
    }
    p->slots[hole].count = 0;
}

size_t http_peers_size(const http_peers *p)
{
    return p->used;
}

bool http_log_gate_pass(struct http_log_gate *g, uint64_t now_ms, uint64_t interval_ms, unsigned long *held)
{
    if (now_ms < g->next_ms) {
        g->held++;
        return false;
    }
    if (held) *held = g->held;
    g->held = 0;
    g->next_ms = now_ms + interval_ms;
    return true;
}
