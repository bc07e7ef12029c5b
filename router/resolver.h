/* resolver.h - a shard's replica targets: "host:port" (static) or gRPC-style DNS targets
 * ("dns:///name:port", "dns://SERVER:PORT/name:port"), the parse of both, and the router's
 * resolver thread, which turns every address a DNS name returns (A and AAAA, with c-ares)
 * into a replica and drains the replicas whose address went away. */
#ifndef MX_ROUTER_RESOLVER_H
#define MX_ROUTER_RESOLVER_H

#include <stdbool.h>

#include "core/error.h"

#define MX_ROUTER_NAME_MAX 256

/* One entry of a shard's `replicas` list. */
typedef struct mx_router_target {
    bool dns;                          /* a DNS name to resolve (else a fixed address) */
    char server[MX_ROUTER_NAME_MAX];   /* dns: the DNS server "ip:port" ("[ip6]:port"), "" =
                                        * the system's (resolv.conf) */
    char host[MX_ROUTER_NAME_MAX];     /* the name (dns) or host (static; IPv6 without brackets) */
    int port;                          /* 1..65535 */
} mx_router_target;

/* Parses s: "host:port", "[ipv6]:port", "dns:///name:port" or "dns://server[:port]/name:port"
 * (server an IP address, port 53 by default). Errors say what is wrong with s. */
int mx_router_target_parse(const char *s, mx_router_target *out, mx_error *err);

#endif
