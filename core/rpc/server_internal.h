/* server_internal.h - internal to core/rpc: the server and call structures shared by
 * server.c (lifecycle, poller, dispatch), server_call.c (handler-side API) and health.c.
 * Services must include server.h only. server.c knows nothing of health: add-ons such as
 * health.c attach through hooks the server calls at shutdown and destroy. */
#ifndef MX_RPC_SERVER_INTERNAL_H
#define MX_RPC_SERVER_INTERNAL_H

#include <grpc/grpc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "server.h"

/* Every operation batch is tagged with one of these; the poller calls done(tag, ok). */
typedef struct mx_rpc_tag {
    void (*done)(struct mx_rpc_tag *tag, int ok);
} mx_rpc_tag;

typedef enum { MX_RPC_KIND_UNARY, MX_RPC_KIND_STREAM } mx_rpc_kind;

typedef struct mx_rpc_method {
    char *name;
    mx_rpc_kind kind;
    mx_rpc_handler handler;
    void *user;
    int control;                     /* served by the control pool (mx_rpc_server_add_control) */
} mx_rpc_method;

/* A FIFO of ready calls and the threads that run them. */
typedef struct mx_rpc_pool {
    struct mx_rpc_server *srv;
    struct mx_rpc_call *head, *tail;
    int n_queued;                    /* calls in the FIFO */
    int busy;                        /* handlers running */
    int n_threads;
    pthread_t *threads;
    pthread_cond_t ready;            /* with srv->mu: a call was queued, or workers_stop */
} mx_rpc_pool;

typedef struct mx_rpc_health mx_rpc_health;

/* An add-on's lifecycle callbacks: on_shutdown when a graceful shutdown begins (before new
 * calls stop), on_destroy when the server is freed. Either may be NULL. */
typedef struct mx_rpc_server_hook {
    void (*on_shutdown)(void *ctx);
    void (*on_destroy)(void *ctx);
    void *ctx;
} mx_rpc_server_hook;

#define MX_RPC_MAX_HOOKS 4

struct mx_rpc_call {
    mx_rpc_server *srv;
    grpc_call *call;                 /* NULL while the request slot is waiting */
    grpc_call_details details;
    grpc_metadata_array request_md;
    grpc_byte_buffer *request_buffer;
    mx_rpc_bytes request;
    const mx_rpc_method *method;
    char method_name[256];
    char *peer;                      /* gpr_malloc'd by gRPC */

    mx_rpc_tag tag_new, tag_recv, tag_close, tag_sync, tag_async_status;
    int close_cancelled;             /* written by gRPC when RECV_CLOSE_ON_SERVER completes */
    atomic_int cancelled;

    pthread_mutex_t mu;
    pthread_cond_t cond;
    int sync_done, sync_ok;          /* completion of the batch a worker waits for */
    int refs;                        /* owner path + RECV_CLOSE_ON_SERVER */
    void (*on_cancel)(void *arg);    /* mx_rpc_call_on_cancel, under mu; run by on_close */
    void *on_cancel_arg;

    int sent_initial_metadata;
    int messages_written;
    grpc_byte_buffer *unary_reply;
    grpc_status_code status;
    char status_message[MX_ERROR_MSG_MAX];

    struct mx_rpc_call *next;        /* worker queue */
};

struct mx_rpc_server {
    grpc_server *server;
    grpc_completion_queue *cq;
    int port;

    mx_rpc_method *methods;
    int n_methods;

    pthread_t poller;
    mx_rpc_pool pool, control;       /* service methods; control methods (health Check, ...) */
    int max_queued_calls;            /* 0 = unbounded */
    int64_t write_timeout_ms;        /* 0 = none */
    int ran_since_trim;              /* a call ran since the heap was last trimmed */
    int started, shut_down, grpc_started;

    pthread_mutex_t mu;
    pthread_cond_t cond;             /* live_calls and shutdown_done (idle workers wait on their
                                      * pool's own condition, so a freed call wakes none) */
    int live_calls;                  /* request slots + calls not yet freed */
    int stopping;                    /* no new request slots */
    int workers_stop;
    int shutdown_done;
    mx_rpc_tag tag_shutdown;

    mx_rpc_server_hook hooks[MX_RPC_MAX_HOOKS];
    int n_hooks;
    mx_rpc_health *health;           /* set by health.c (mx_rpc_health_attach); opaque here */
};

/* Drops one reference of call; the last one frees it (server.c). */
void mx_rpc_call_unref(mx_rpc_call *call);

/* Adds a lifecycle hook before _start (server.c). MX_EINVAL when full or started. */
int mx_rpc_server_add_hook(mx_rpc_server *srv, mx_rpc_server_hook hook, mx_error *err);

/* Sends the final status (with the unary reply if any) and waits for it (server_call.c). */
void mx_rpc_call_send_final(mx_rpc_call *call);

#endif
