/* resolver.c - where a shard's replicas come from: the parse of its `replicas` entries
 * ("host:port" or a gRPC-style "dns://[server]/name:port" target) and of the stage's own
 * host (which of them are local, for the send order), the static replicas made
 * at start, and the router's resolver thread. That thread resolves every DNS target (A and
 * AAAA, c-ares) every resolve_interval_ms, and at once (at most every RESOLVE_MIN_GAP_MS)
 * when a replica of its shard failed; each new address becomes a PENDING replica (taken
 * into the pick once a health check says SERVING), each address gone starts draining, and
 * drained replicas are closed here (watch stopped, channel destroyed). */
#include "router_internal.h"
#include "resolver.h"

#include <arpa/inet.h>
#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "core/clock.h"

#define RESOLVER_TICK_MS 100       /* housekeeping: asap requests, closing drained replicas */
#define RESOLVE_MIN_GAP_MS 500     /* a target is not resolved more often than this */
#define RESOLVE_ROUND_MS 3000      /* one round of queries is abandoned after this */
#define RESOLVE_MAX_ADDRS ROUTER_MAX_REPLICAS

/* ---- target syntax ---- */

/* "port" -> 1..65535, or -1. */
static int parse_port(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

/* "host:port" or "[v6]:port" (s[0..n)) into host and port; def_port when the port is left
 * out and def_port > 0. Returns 0 or a static reason. */
static const char *split_host_port(const char *s, size_t n, int def_port, char *host, size_t cap, int *port)
{
    const char *h = s, *colon = NULL;
    size_t hn;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return "'[' without ']'";
        h = s + 1;
        hn = (size_t)(close - h);
        if (close + 1 < s + n) {
            if (close[1] != ':')
                return "expected ':' after ']'";
            colon = close + 1;
        }
        char tmp[MX_ROUTER_NAME_MAX];
        struct in6_addr a6;
        if (hn == 0 || hn >= sizeof tmp)
            return "bad IPv6 address";
        memcpy(tmp, h, hn);
        tmp[hn] = 0;
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return "bad IPv6 address";
    } else {
        for (size_t i = 0; i < n; i++)
            if (s[i] == ':') {
                if (colon)
                    return "more than one ':' (write an IPv6 address as [addr]:port)";
                colon = s + i;
            }
        hn = colon ? (size_t)(colon - s) : n;
        for (size_t i = 0; i < hn; i++)
            if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') || (h[i] >= '0' && h[i] <= '9') ||
                  h[i] == '-' || h[i] == '.' || h[i] == '_'))
                return "bad character in the host name";
    }
    if (hn == 0)
        return "no host";
    if (hn >= cap)
        return "host name too long";
    memcpy(host, h, hn);
    host[hn] = 0;
    if (!colon) {
        if (def_port <= 0)
            return "no port (expected host:port)";
        *port = def_port;
        return NULL;
    }
    *port = parse_port(colon + 1, (size_t)(s + n - colon - 1));
    return *port < 0 ? "the port must be a number in [1, 65535]" : NULL;
}

int mx_router_target_parse(const char *s, mx_router_target *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    if (!s || !s[0])
        return mx_fail(err, MX_EINVAL, "empty replica target");
    const char *why;
    if (!strncmp(s, "dns:", 4)) {
        if (strncmp(s, "dns://", 6) != 0)
            return mx_fail(err, MX_EINVAL, "\"%s\": expected dns:///name:port or dns://server:port/name:port", s);
        const char *auth = s + 6, *slash = strchr(auth, '/');
        if (!slash)
            return mx_fail(err, MX_EINVAL, "\"%s\": expected dns:///name:port or dns://server:port/name:port", s);
        out->dns = true;
        if (slash > auth) {
            char host[MX_ROUTER_NAME_MAX];
            int port;
            why = split_host_port(auth, (size_t)(slash - auth), 53, host, sizeof host, &port);
            if (why)
                return mx_fail(err, MX_EINVAL, "\"%s\": DNS server: %s", s, why);
            struct in_addr a4;
            struct in6_addr a6;
            bool v6 = inet_pton(AF_INET6, host, &a6) == 1;
            if (!v6 && inet_pton(AF_INET, host, &a4) != 1)
                return mx_fail(err, MX_EINVAL, "\"%s\": the DNS server must be an IP address, not \"%s\"", s, host);
            snprintf(out->server, sizeof out->server, v6 ? "[%s]:%d" : "%s:%d", host, port);
        }
        const char *name = slash + 1;
        why = split_host_port(name, strlen(name), 0, out->host, sizeof out->host, &out->port);
        if (!why && out->host[0] == '.')
            why = "bad name";
        if (why)
            return mx_fail(err, MX_EINVAL, "\"%s\": %s", s, why);
        return 0;
    }
    if (strstr(s, "://"))
        return mx_fail(err, MX_EINVAL, "\"%s\": unknown scheme (expected host:port or dns:///name:port)", s);
    why = split_host_port(s, strlen(s), 0, out->host, sizeof out->host, &out->port);
    if (why)
        return mx_fail(err, MX_EINVAL, "\"%s\": %s", s, why);
    return 0;
}

void mx_router_host_of(const char *address, char *out, size_t cap)
{
    out[0] = '\0';
    const char *colon = strrchr(address, ':');
    if (!colon)
        return;
    const char *host = address;
    size_t len = (size_t)(colon - address);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') { /* "[v6]:port" */
        host++;
        len -= 2;
    }
    if (len >= cap)
        return;
    memcpy(out, host, len);
    out[len] = '\0';
}

bool router_address_is_local(const char *address, const char *local_host)
{
    mx_router_target t; /* the parse every replica address went through */
    return local_host[0] && !mx_router_target_parse(address, &t, NULL) && !t.dns && !strcmp(t.host, local_host);
}

/* ---- the resolver thread ---- */

typedef struct dns_target {
    int shard, entry;
    char spec[MX_ROUTER_NAME_MAX * 2]; /* as written in the config, for messages */
    mx_router_target t;
    ares_channel ch;
    bool ch_ok;
    double next_ms, last_ms;
    /* one query's outcome */
    bool pending, done;
    int status;
    int n_addrs;
    char addrs[RESOLVE_MAX_ADDRS][ROUTER_ADDR_MAX];
} dns_target;

typedef struct router_resolver {
    mx_router *r;
    dns_target *targets;
    int n, cap;
    pthread_t thread;
    bool started, ares_init;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
} router_resolver;

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    dns_target *t = arg;
    t->pending = false;
    t->done = true;
    t->status = status;
    t->n_addrs = 0;
    if (status == ARES_SUCCESS && res) {
        for (struct ares_addrinfo_node *nd = res->nodes; nd && t->n_addrs < RESOLVE_MAX_ADDRS; nd = nd->ai_next) {
            char ip[INET6_ADDRSTRLEN];
            char *dst = t->addrs[t->n_addrs];
            if (nd->ai_family == AF_INET &&
                inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)nd->ai_addr)->sin_addr, ip, sizeof ip))
                snprintf(dst, ROUTER_ADDR_MAX, "%s:%d", ip, t->t.port);
            else if (nd->ai_family == AF_INET6 &&
                     inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)nd->ai_addr)->sin6_addr, ip, sizeof ip))
                snprintf(dst, ROUTER_ADDR_MAX, "[%s]:%d", ip, t->t.port);
            else
                continue;
            bool dup = false;
            for (int k = 0; k < t->n_addrs && !dup; k++)
                dup = !strcmp(t->addrs[k], dst);
            if (!dup)
                t->n_addrs++;
        }
    }
    if (res)
        ares_freeaddrinfo(res);
}

static bool stopping(router_resolver *rs)
{
    pthread_mutex_lock(&rs->mu);
    bool s = rs->stop;
    pthread_mutex_unlock(&rs->mu);
    return s;
}

/* Sends the queries of every due target and waits for them (RESOLVE_ROUND_MS at most). */
static void resolve_due(router_resolver *rs, double now)
{
    int n = 0;
    for (int i = 0; i < rs->n; i++) {
        dns_target *t = &rs->targets[i];
        router_shard *sh = &rs->r->shards[t->shard];
        bool due = now >= t->next_ms;
        if (!due && now - t->last_ms >= RESOLVE_MIN_GAP_MS && atomic_load(&sh->resolve_asap))
            due = true;
        if (!due || !t->ch_ok)
            continue;
        t->last_ms = now;
        t->next_ms = now + (double)rs->r->cfg.resolve_interval_ms;
        t->pending = true;
        t->done = false;
        char port[8];
        snprintf(port, sizeof port, "%d", t->t.port);
        struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_flags = ARES_AI_NUMERICSERV};
        ares_getaddrinfo(t->ch, t->t.host, port, &hints, on_addrinfo, t);
        n++;
    }
    if (!n)
        return;
    /* the asap flags are consumed: the targets of those shards were just sent */
    for (int i = 0; i < rs->n; i++)
        if (rs->targets[i].done || rs->targets[i].pending)
            atomic_store(&rs->r->shards[rs->targets[i].shard].resolve_asap, false);
    double end = now + RESOLVE_ROUND_MS;
    for (;;) {
        int left = 0;
        for (int i = 0; i < rs->n; i++)
            left += rs->targets[i].pending;
        if (!left || mx_now_ms() >= end || stopping(rs))
            break;
        fd_set rd, wr;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        int nfds = 0;
        for (int i = 0; i < rs->n; i++)
            if (rs->targets[i].pending) {
                int m = ares_fds(rs->targets[i].ch, &rd, &wr);
                if (m > nfds)
                    nfds = m;
            }
        struct timeval tv = {0, 50 * 1000};
        select(nfds, &rd, &wr, NULL, &tv);
        for (int i = 0; i < rs->n; i++)
            if (rs->targets[i].pending)
                ares_process(rs->targets[i].ch, &rd, &wr);
    }
    for (int i = 0; i < rs->n; i++)
        if (rs->targets[i].pending)
            ares_cancel(rs->targets[i].ch); /* calls on_addrinfo with ARES_ECANCELLED */
}

/* Applies the answers: new addresses become PENDING replicas, gone ones drain. A failed
 * query (timeout, refused, server failure) changes nothing: only an authoritative "no such
 * name / no address" empties the set. */
static void apply(router_resolver *rs, dns_target *t)
{
    mx_router *r = rs->r;
    t->done = false;
    if (t->status != ARES_SUCCESS && t->status != ARES_ENOTFOUND && t->status != ARES_ENODATA) {
        if (t->status != ARES_ECANCELLED && t->status != ARES_EDESTRUCTION)
            atomic_fetch_add(&r->resolve_errors, 1);
        return;
    }
    atomic_fetch_add(&r->resolves, 1);
    if (t->status != ARES_SUCCESS)
        t->n_addrs = 0;
    router_shard *sh = &r->shards[t->shard];
    bool found[RESOLVE_MAX_ADDRS];
    router_slot_sync(sh, t->entry, (const char(*)[ROUTER_ADDR_MAX])t->addrs, t->n_addrs, found, mx_now_ms());
    mx_rpc_channel_options opts = {.max_message_bytes = r->cfg.max_message_bytes};
    for (int k = 0; k < t->n_addrs; k++) {
        if (found[k])
            continue;
        mx_rpc_channel *ch = NULL;
        mx_error err = {0};
        if (mx_rpc_channel_create(t->addrs[k], &opts, &ch, &err))
            continue; /* tried again on the next resolve */
        int at = router_slot_add(sh, t->entry, t->addrs[k], ch, true,
                                 router_address_is_local(t->addrs[k], r->cfg.local_host));
        if (at < 0) {
            mx_rpc_channel_destroy(ch);
            continue;
        }
        atomic_fetch_add(&r->replicas_added, 1);
        /* without its watch the replica is still checked by the prober */
        (void)router_watch_start(r, t->shard, at, &err);
    }
}

/* Closes every drained replica whose calls are done. */
static void reap(router_resolver *rs)
{
    mx_router *r = rs->r;
    double now = mx_now_ms();
    for (int s = 0; s < r->n_shards; s++) {
        router_shard *sh = &r->shards[s];
        int i;
        while ((i = router_slot_reap(r, sh, now)) >= 0) {
            router_watch_stop(r, s, i);
            mx_rpc_channel_destroy(sh->replicas[i].channel);
            router_slot_release(sh, i);
            atomic_fetch_add(&r->replicas_closed, 1);
        }
    }
}

static void *resolver_main(void *arg)
{
    router_resolver *rs = arg;
    for (;;) {
        resolve_due(rs, mx_now_ms());
        for (int i = 0; i < rs->n; i++)
            if (rs->targets[i].done)
                apply(rs, &rs->targets[i]);
        reap(rs);
        pthread_mutex_lock(&rs->mu);
        if (!rs->stop) {
            struct timespec ts = mx_wall_after_ms(RESOLVER_TICK_MS);
            pthread_cond_timedwait(&rs->cv, &rs->mu, &ts);
        }
        bool stop = rs->stop;
        pthread_mutex_unlock(&rs->mu);
        if (stop)
            break;
    }
    return NULL;
}

/* ---- setup and teardown ---- */

static int add_dns_target(mx_router *r, int shard, int entry, const char *spec, const mx_router_target *t,
                          mx_error *err)
{
    router_resolver *rs = r->resolver;
    if (!rs) {
        rs = calloc(1, sizeof *rs);
        if (!rs)
            return mx_fail(err, MX_ENOMEM, "router: out of memory");
        rs->r = r;
        pthread_mutex_init(&rs->mu, NULL);
        pthread_cond_init(&rs->cv, NULL);
        r->resolver = rs;
    }
    if (rs->n == rs->cap) {
        int cap = rs->cap ? 2 * rs->cap : 4;
        dns_target *nt = realloc(rs->targets, (size_t)cap * sizeof *nt);
        if (!nt)
            return mx_fail(err, MX_ENOMEM, "router: out of memory");
        rs->targets = nt;
        rs->cap = cap;
    }
    dns_target *d = &rs->targets[rs->n++];
    memset(d, 0, sizeof *d);
    d->shard = shard;
    d->entry = entry;
    d->t = *t;
    snprintf(d->spec, sizeof d->spec, "%s", spec);
    return 0;
}

int router_targets_init(mx_router *r, int shard, const mx_router_shard_config *c, mx_error *err)
{
    router_shard *sh = &r->shards[shard];
    sh->replicas = calloc(ROUTER_MAX_REPLICAS, sizeof *sh->replicas);
    if (!sh->replicas)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the router");
    for (int i = 0; i < ROUTER_MAX_REPLICAS; i++) {
        atomic_init(&sh->replicas[i].in_flight, 0);
        atomic_init(&sh->replicas[i].state, ROUTER_SLOT_FREE);
    }
    /* what a message names while the shard has no replica (its DNS names did not resolve) */
    size_t at_ch = (size_t)snprintf(sh->none_yet, sizeof sh->none_yet, "no replica yet from");
    for (int i = 0; i < c->n_replicas && at_ch < sizeof sh->none_yet; i++)
        at_ch += (size_t)snprintf(sh->none_yet + at_ch, sizeof sh->none_yet - at_ch, "%s %s", i ? "," : "",
                                  c->replicas[i]);
    mx_rpc_channel_options opts = {.max_message_bytes = r->cfg.max_message_bytes};
    for (int i = 0; i < c->n_replicas; i++) {
        mx_router_target t;
        if (mx_router_target_parse(c->replicas[i], &t, err))
            return mx_error_prefix(err, "expert shard %d replica", shard);
        if (t.dns) {
            MX_TRY(add_dns_target(r, shard, i, c->replicas[i], &t, err));
            continue;
        }
        mx_rpc_channel *ch = NULL;
        if (mx_rpc_channel_create(c->replicas[i], &opts, &ch, err))
            return mx_error_prefix(err, "expert shard %d replica %s", shard, c->replicas[i]);
        int at = router_slot_add(sh, i, c->replicas[i], ch, false,
                                 router_address_is_local(c->replicas[i], r->cfg.local_host));
        if (at < 0) {
            mx_rpc_channel_destroy(ch);
            return mx_fail(err, MX_EINVAL, "expert shard %d has more than %d replicas", shard, ROUTER_MAX_REPLICAS);
        }
        if (router_watch_start(r, shard, at, err))
            return mx_error_prefix(err, "expert shard %d replica %s", shard, c->replicas[i]);
    }
    return 0;
}

int router_resolver_start(mx_router *r, mx_error *err)
{
    router_resolver *rs = r->resolver;
    if (!rs)
        return 0;
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
        return mx_fail(err, MX_EINTERNAL, "router: c-ares initialisation failed");
    rs->ares_init = true;
    for (int i = 0; i < rs->n; i++) {
        dns_target *d = &rs->targets[i];
        struct ares_options o = {.timeout = 1000, .tries = 2};
        int rc = ares_init_options(&d->ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
        if (rc != ARES_SUCCESS)
            return mx_fail(err, MX_EINTERNAL, "expert shard %d replica %s: c-ares: %s", d->shard, d->spec,
                           ares_strerror(rc));
        d->ch_ok = true;
        if (d->t.server[0] && (rc = ares_set_servers_ports_csv(d->ch, d->t.server)) != ARES_SUCCESS)
            return mx_fail(err, MX_EINVAL, "expert shard %d replica %s: DNS server %s: %s", d->shard, d->spec,
                           d->t.server, ares_strerror(rc));
    }
    if (pthread_create(&rs->thread, NULL, resolver_main, rs) != 0)
        return mx_fail(err, MX_ENOMEM, "router: cannot start the resolver thread");
    rs->started = true;
    return 0;
}

void router_targets_close(mx_router *r)
{
    router_resolver *rs = r->resolver;
    if (rs) {
        if (rs->started) {
            pthread_mutex_lock(&rs->mu);
            rs->stop = true;
            pthread_cond_broadcast(&rs->cv);
            pthread_mutex_unlock(&rs->mu);
            pthread_join(rs->thread, NULL);
        }
        for (int i = 0; i < rs->n; i++)
            if (rs->targets[i].ch_ok)
                ares_destroy(rs->targets[i].ch);
        if (rs->ares_init)
            ares_library_cleanup();
        pthread_mutex_destroy(&rs->mu);
        pthread_cond_destroy(&rs->cv);
        free(rs->targets);
        free(rs);
        r->resolver = NULL;
    }
    for (int s = 0; s < r->n_shards; s++)
        if (r->shards[s].replicas)
            for (int i = 0; i < r->shards[s].n_replicas; i++)
                router_watch_stop(r, s, i);
}
