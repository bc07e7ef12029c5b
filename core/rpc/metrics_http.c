/* metrics_http.c - GET /metrics over libmicrohttpd (metrics_http.h): one internal polling
 * thread, answers rendered on that thread from the registry's atomics (no service lock). */
#include "metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct mx_metrics_http {
    struct MHD_Daemon *d;
    mx_metrics *m;
    int port;
};

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result mhd_result;
#else
typedef int mhd_result;
#endif

static mhd_result reply(struct MHD_Connection *c, unsigned status, const char *type, char *body, size_t len,
                        enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    mhd_result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static mhd_result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_size;
    (void)con_cls;
    mx_metrics_http *h = cls;
    static char not_found[] = "not found: only GET /metrics is served here\n";
    static char bad_method[] = "only GET and HEAD\n";
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", bad_method,
                     sizeof bad_method - 1, MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/metrics"))
        return reply(c, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", not_found, sizeof not_found - 1,
                     MHD_RESPMEM_PERSISTENT);
    char *body = NULL;
    size_t len = 0;
    mx_error err = {0};
    if (mx_metrics_render(h->m, &body, &len, &err)) {
        static char failed[] = "cannot render the metrics\n";
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", failed, sizeof failed - 1,
                     MHD_RESPMEM_PERSISTENT);
    }
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len, MHD_RESPMEM_MUST_FREE);
}

/* "host:port" or "[v6]:port" -> a bindable address. */
static int resolve(const char *address, struct sockaddr_storage *sa, socklen_t *sa_len, mx_error *err)
{
    char host[256];
    const char *colon = strrchr(address, ':');
    if (!colon || colon == address || strlen(address) >= sizeof host)
        return mx_fail(err, MX_EINVAL, "metrics_listen \"%s\": expected host:port", address);
    size_t hl = (size_t)(colon - address);
    memcpy(host, address, hl);
    host[hl] = 0;
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return mx_fail(err, MX_EINVAL, "metrics_listen \"%s\": bad port", address);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    int g = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
    if (g)
        return mx_fail(err, MX_EINVAL, "metrics_listen \"%s\": %s", address, gai_strerror(g));
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    *sa_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

int mx_metrics_http_start(const char *address, mx_metrics *m, mx_metrics_http **out, mx_error *err)
{
    struct sockaddr_storage sa;
    socklen_t sa_len;
    MX_TRY(resolve(address, &sa, &sa_len, err));
    mx_metrics_http *h = calloc(1, sizeof *h);
    if (!h)
        return mx_fail(err, MX_ENOMEM, "out of memory starting the metrics server");
    h->m = m;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (sa.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                            MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return mx_fail(err, MX_EIO, "metrics_listen \"%s\": cannot listen (address in use?)", address);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (!info || getsockname(info->listen_fd, (struct sockaddr *)&bound, &bl)) {
        MHD_stop_daemon(h->d);
        free(h);
        return mx_fail(err, MX_EIO, "metrics_listen \"%s\": cannot read the bound port", address);
    }
    h->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = h;
    return 0;
}

int mx_metrics_http_port(const mx_metrics_http *h)
{
    return h ? h->port : 0;
}

void mx_metrics_http_stop(mx_metrics_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
