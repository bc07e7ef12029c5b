/* openai_http.c - the OpenAI-compatible HTTP server of the gateway (see openai_http.h):
 * libmicrohttpd with a thread per connection, so a handler may block while its request is
 * generated; routing, bounded bodies, plain and server-sent-event responses, disconnect
 * detection and the drain; each call's access line and its request's gateway metrics (api
 * "openai", gw_metrics.h). The JSON side is openai_json.c. */
#include "openai_http.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "core/clock.h"
#include "gw_metrics.h"
#include "openai_json.h"

/* An idle keep-alive connection is closed after this; a connection whose handler waits for
 * tokens has its clock reset whenever something is written (see touch). */
#define OA_IDLE_TIMEOUT_S 300

struct gw_openai_http {
    const gw_generation_ctx *g;
    gw_pipeline_health *const *health;
    struct MHD_Daemon *d;
    int port;
    int64_t started_s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool draining;             /* under mu */
    double drain_start_ms;     /* under mu */
    int active;                /* generation requests in flight, under mu */
    struct oa_waiter *waiting; /* handlers waiting for tokens (woken on stop), under mu */
    atomic_bool stopping;      /* waits give up and cancel their requests */
};

typedef enum { R_NONE, R_HEALTH, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT } route;

/* Per HTTP request (MHD's con_cls); only the connection's own thread touches it. */
typedef struct oa_conn {
    route route;
    char *body;
    size_t len, cap;
    bool responded;            /* an error was queued before the body was complete */
    bool discard;              /* over the limit: the body is read and dropped, then 413 */
    size_t dropped;
    /* the access line, written when MHD is done with the request (on_completed) */
    double t0;                 /* arrival, mx_now_ms */
    char what[128];            /* "POST /v1/completions": the line's method */
    unsigned status;           /* the HTTP status queued; 0 = none (the client left first) */
    gw_request *r;             /* a reference for the token counts; NULL = nothing generated */
    char id[48];               /* the response's id ("cmpl-..."), the line's request id */
} oa_conn;

/* A streamed response: the MHD content reader turns the request's progress into SSE bytes. */
typedef struct oa_stream {
    gw_openai_http *h;
    struct MHD_Connection *c;
    gw_request *r;
    oa_meta meta;
    char id[48];
    bool include_usage, role_sent, ended;
    bool counted;              /* the request is in the metrics (gw_metrics_finished) */
    double last_ms;            /* when tokens were last written (inter-token metric) */
    int sent;
    size_t text_sent;
    mx_text out;
    size_t out_pos;
} oa_stream;

/* ---- small helpers ---- */

static void end_active(gw_openai_http *h)
{
    pthread_mutex_lock(&h->mu);
    h->active--;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Resets the connection's idle clock (MHD would otherwise count a long generation as idle). */
static void touch(struct MHD_Connection *c)
{
    (void)MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)OA_IDLE_TIMEOUT_S);
}

/* True when the client closed or reset its connection. A pipelined next request (readable
 * bytes) is not a disconnect. */
static bool peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP))
        return true;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* A handler waiting for its request's tokens, on its own stack, in h->waiting while it waits:
 * stopping the server wakes it at once instead of it polling the flag. */
typedef struct oa_waiter {
    gw_openai_http *h;
    struct MHD_Connection *c;
    gw_request *r;
    struct oa_waiter *prev, *next;
} oa_waiter;

/* Asked before each sleep of the wait: the stop wakes waiters; a client that closed its socket
 * is seen at the next token or after the wait's safety timeout (MHD cannot tell us: the
 * connection's thread is the one waiting here). */
static bool client_gone(void *ctx)
{
    oa_waiter *w = ctx;
    return atomic_load(&w->h->stopping) || peer_gone(w->c);
}

/* Lock order h->mu, then r->mu (the stop wakes waiters under h->mu): so waiters enter and leave
 * the list without r->mu held. */
static void waiter_add(oa_waiter *w)
{
    pthread_mutex_lock(&w->h->mu);
    w->prev = NULL;
    w->next = w->h->waiting;
    if (w->next)
        w->next->prev = w;
    w->h->waiting = w;
    pthread_mutex_unlock(&w->h->mu);
}

static void waiter_remove(oa_waiter *w)
{
    pthread_mutex_lock(&w->h->mu);
    if (w->prev)
        w->prev->next = w->next;
    else
        w->h->waiting = w->next;
    if (w->next)
        w->next->prev = w->prev;
    pthread_mutex_unlock(&w->h->mu);
}

/* Takes r->mu and waits until r has tokens beyond `sent` (sent < 0: until r is done), then
 * returns with r->mu held. False (r marked cancelled, so the scheduler drops it and releases
 * its stage state) when the client went away or the server stops. */
static bool wait_progress(gw_openai_http *h, struct MHD_Connection *c, gw_request *r, int sent)
{
    oa_waiter w = {.h = h, .c = c, .r = r};
    waiter_add(&w);
    pthread_mutex_lock(&r->mu);
    bool alive = true;
    if (sent >= 0)
        alive = gw_request_wait_progress(r, sent, client_gone, &w);
    else
        while (alive && !r->done)
            alive = gw_request_wait_progress(r, r->n_out, client_gone, &w);
    pthread_mutex_unlock(&r->mu);
    waiter_remove(&w);
    pthread_mutex_lock(&r->mu);
    return alive;
}

/* Queues a JSON answer; cn->status keeps its status for the access line. */
static enum MHD_Result send_json(oa_conn *cn, struct MHD_Connection *c, unsigned status, json_t *o,
                                 const char *allow, bool retry_after)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (retry_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    if (rc == MHD_YES)
        cn->status = status;
    return rc;
}

static enum MHD_Result send_error(oa_conn *cn, struct MHD_Connection *c, const oa_error *e, const char *allow)
{
    return send_json(cn, c, (unsigned)e->status, oa_error_json(e), allow, e->status == 429 || e->status == 503);
}

/* A generation request refused before it was queued: counted by its HTTP status, answered. */
static enum MHD_Result reject(const gw_openai_http *h, oa_conn *cn, struct MHD_Connection *c, const oa_error *e)
{
    char code[16];
    snprintf(code, sizeof code, "%d", e->status);
    gw_metrics_rejected(h->g->metrics, GW_API_OPENAI, code);
    return send_error(cn, c, e, NULL);
}

/* ---- GET endpoints ---- */

static json_t *model_json(const gw_openai_http *h)
{
    const gw_generation_ctx *g = h->g;
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:I}", "id", g->cfg->model_name, "object", "model", "created",
                     (json_int_t)h->started_s, "owned_by", "mx", "root", g->cfg->model_name, "max_model_len",
                     (json_int_t)gw_scheduler_max_context(g->sched, g->lim->model_context_tokens));
}

static enum MHD_Result on_get(gw_openai_http *h, oa_conn *cn, struct MHD_Connection *c, const char *url)
{
    route rt = cn->route;
    if (rt == R_HEALTH) {
        pthread_mutex_lock(&h->mu);
        /* before the watcher's first round (-1) the stages are known good: the gateway only
         * serves once every stage has answered Info */
        int ok = h->draining ? 0 : *h->health ? gw_pipeline_health_ok(*h->health) != 0 : 0;
        bool draining = h->draining;
        pthread_mutex_unlock(&h->mu);
        json_t *o = json_pack("{s:s}", "status", ok == 1 ? "ok" : draining ? "draining" : "unavailable");
        return send_json(cn, c, ok == 1 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, o, NULL, false);
    }
    if (rt == R_MODELS)
        return send_json(cn, c, MHD_HTTP_OK, json_pack("{s:s, s:[o]}", "object", "list", "data", model_json(h)),
                         NULL, false);
    const char *id = url + strlen("/v1/models/");
    if (strcmp(id, h->g->cfg->model_name) == 0)
        return send_json(cn, c, MHD_HTTP_OK, model_json(h), NULL, false);
    oa_error e;
    oa_error_set(&e, 404, "model", "model_not_found", "The model '%.200s' does not exist", id);
    return send_error(cn, c, &e, NULL);
}

/* ---- streaming ---- */

static int emit(oa_stream *s, json_t *o)
{
    char *j = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    mx_error err = {0};
    int rc = !j || mx_text_append(&s->out, "data: ", 6, &err) || mx_text_append(&s->out, j, strlen(j), &err) ||
             mx_text_append(&s->out, "\n\n", 2, &err);
    free(j);
    return rc ? -1 : 0;
}

static int emit_done(oa_stream *s)
{
    mx_error err = {0};
    s->ended = true;
    return mx_text_append(&s->out, "data: [DONE]\n\n", 14, &err) ? -1 : 0;
}

/* Appends the next events to s->out, waiting for the request's next tokens. -1 = end the
 * connection (client gone, server stopping, out of memory). */
static int stream_fill(oa_stream *s)
{
    gw_request *r = s->r;
    if (s->meta.kind == OA_CHAT && !s->role_sent) {
        s->role_sent = true;
        return emit(s, oa_chunk(&s->meta, r, "", 0, 0, NULL, true, s->include_usage));
    }
    bool alive = wait_progress(s->h, s->c, r, s->sent);
    int upto = r->n_out;
    bool done = r->done;
    double first_ms = r->t_first_ms;
    /* the text buffer may move when the scheduler appends, so the new part is copied */
    size_t text_upto = r->text.len;
    char *piece = alive ? strndup(r->text.data ? r->text.data + s->text_sent : "", text_upto - s->text_sent) : NULL;
    pthread_mutex_unlock(&r->mu);
    if (!alive && atomic_load(&s->h->stopping)) {
        /* the drain is over: the stream ends with an error event rather than a cut connection */
        oa_error e;
        oa_error_set(&e, 503, NULL, NULL, "the gateway is shutting down");
        return emit(s, oa_error_json(&e)) ? -1 : emit_done(s);
    }
    if (!alive || !piece) {
        free(piece);
        return -1;
    }
    touch(s->c);
    gw_metrics *metrics = s->h->g->metrics;
    gw_metrics_streamed(metrics, GW_API_OPENAI, &s->last_ms, s->sent, upto, first_ms, mx_now_ms());
    if (done) { /* counted before the last events go out: a client that saw them sees the count */
        gw_metrics_finished(metrics, GW_API_OPENAI, r, false);
        s->counted = true;
    }
    int rc = 0;
    if (done && (r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR ||
                 r->finish == MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED)) {
        /* the status line is long gone: the error travels as an event, as vLLM sends it */
        mx_error me = {r->error_code ? r->error_code : MX_EINTERNAL, ""};
        snprintf(me.msg, sizeof me.msg, "%s", r->error[0] ? r->error : "the request was cancelled");
        oa_error e;
        oa_error_from_mx(&me, &e);
        rc = emit(s, oa_error_json(&e));
        free(piece);
        return rc ? rc : emit_done(s);
    }
    /* Tokens below upto are written once and never change, so they are read unlocked. */
    /* tokens whose text is held back (a partial character, a possible stop string) make no
     * chunk unless their logprobs were asked for */
    if (piece[0] || done || (upto > s->sent && r->out_logprob))
        rc = emit(s, oa_chunk(&s->meta, r, piece, s->sent, upto, done ? oa_finish_reason(r->finish) : NULL, false,
                              s->include_usage));
    free(piece);
    s->sent = upto;
    s->text_sent = text_upto;
    if (!rc && done) {
        if (s->include_usage)
            rc = emit(s, oa_usage_chunk(&s->meta, r));
        if (!rc)
            rc = emit_done(s);
    }
    return rc;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    oa_stream *s = cls;
    while (s->out_pos == s->out.len) {
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        s->out.len = 0;
        s->out_pos = 0;
        if (stream_fill(s))
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = s->out.len - s->out_pos;
    if (n > max)
        n = max;
    memcpy(buf, s->out.data + s->out_pos, n);
    s->out_pos += n;
    return (ssize_t)n;
}

/* MHD is done with the response: a stream that did not reach its end (client gone, write
 * failed, server stopping) cancels its request. */
static void stream_free(void *cls)
{
    oa_stream *s = cls;
    if (!s->ended)
        gw_request_cancel(s->r);
    if (!s->counted)
        gw_metrics_finished(s->h->g->metrics, GW_API_OPENAI, s->r, true);
    gw_request_unref(s->r);
    mx_text_free(&s->out);
    end_active(s->h);
    free(s);
}

/* ---- generation ---- */

static enum MHD_Result finish_plain(gw_openai_http *h, oa_conn *cn, struct MHD_Connection *c, gw_request *r,
                                    const oa_meta *m)
{
    bool alive = wait_progress(h, c, r, -1);
    pthread_mutex_unlock(&r->mu);
    /* counted before the answer goes out: a client that has it sees the count */
    gw_metrics_finished(h->g->metrics, GW_API_OPENAI, r, !alive);
    if (alive)
        gw_metrics_answered(h->g->metrics, GW_API_OPENAI, r); /* one answer: the mean gap for every gap */
    enum MHD_Result rc = MHD_NO; /* client gone: close the connection */
    if (!alive && atomic_load(&h->stopping)) {
        oa_error e;
        oa_error_set(&e, 503, NULL, NULL, "the gateway is shutting down");
        rc = send_error(cn, c, &e, NULL);
    } else if (alive) {
        touch(c);
        if (r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR ||
            r->finish == MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED) {
            mx_error me = {r->error_code ? r->error_code : MX_EINTERNAL, ""};
            snprintf(me.msg, sizeof me.msg, "%s", r->error[0] ? r->error : "the request was cancelled");
            oa_error e;
            oa_error_from_mx(&me, &e);
            rc = send_error(cn, c, &e, NULL);
        } else {
            rc = send_json(cn, c, MHD_HTTP_OK, oa_response(m, r), NULL, false);
        }
    }
    gw_request_unref(r);
    end_active(h);
    return rc;
}

static enum MHD_Result on_generate(gw_openai_http *h, struct MHD_Connection *c, oa_conn *cn)
{
    const gw_generation_ctx *g = h->g;
    oa_error e;
    pthread_mutex_lock(&h->mu);
    bool draining = h->draining;
    if (!draining)
        h->active++;
    pthread_mutex_unlock(&h->mu);
    if (draining) {
        oa_error_set(&e, 503, NULL, NULL, "the gateway is shutting down");
        return reject(h, cn, c, &e);
    }
    oa_kind kind = cn->route == R_CHAT ? OA_CHAT : OA_COMPLETIONS;
    gw_limits lim = *g->lim;
    lim.max_context_tokens = (int)gw_scheduler_max_context(g->sched, lim.model_context_tokens);
    oa_request q;
    gw_request *r = NULL;
    mx_error err = {0};
    int rc = oa_parse(kind, cn->body ? cn->body : "", cn->len, &lim, g->cfg->model_name, &q, &e);
    if (!rc && (gw_validate(&lim, g->text, &q.rq, &r, &err) || gw_scheduler_submit(g->sched, r, &err))) {
        oa_error_from_mx(&err, &e);
        rc = -1;
    }
    bool stream = q.stream, include_usage = q.include_usage, as_ids = q.tokens_as_ids;
    oa_request_free(&q);
    if (rc) {
        if (r)
            gw_request_unref(r);
        end_active(h);
        return reject(h, cn, c, &e);
    }
    gw_request_ref(r); /* the access line's */
    cn->r = r;
    snprintf(cn->id, sizeof cn->id, "%s-%016" PRIx64, kind == OA_CHAT ? "chatcmpl" : "cmpl", r->seq_id);
    oa_meta meta = {.kind = kind, .id = cn->id, .created = (int64_t)time(NULL), .model = g->cfg->model_name,
                    .tok = g->text->tok, .tokens_as_ids = as_ids};
    if (!stream)
        return finish_plain(h, cn, c, r, &meta);
    oa_stream *s = calloc(1, sizeof *s);
    if (!s) {
        gw_request_cancel(r);
        gw_request_unref(r);
        end_active(h);
        return MHD_NO;
    }
    *s = (oa_stream){.h = h, .c = c, .r = r, .meta = meta, .include_usage = include_usage};
    snprintf(s->id, sizeof s->id, "%s", cn->id);
    s->meta.id = s->id;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, s,
                                                                  stream_free);
    if (!resp) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result qr = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp); /* MHD holds its own reference; stream_free runs when it is done */
    if (qr == MHD_YES)
        cn->status = MHD_HTTP_OK;
    return qr;
}

/* ---- routing ---- */

static route route_of(const char *url)
{
    if (!strcmp(url, "/health"))
        return R_HEALTH;
    if (!strcmp(url, "/v1/models"))
        return R_MODELS;
    if (!strncmp(url, "/v1/models/", 11) && url[11])
        return R_MODEL;
    if (!strcmp(url, "/v1/completions"))
        return R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions"))
        return R_CHAT;
    return R_NONE;
}

static size_t max_body(const gw_openai_http *h)
{
    return (size_t)h->g->cfg->max_request_bytes;
}

/* Bodies up to this are read to their end before the 413, so that a client that writes its
 * whole body before reading (most do) sees the answer; beyond it the connection is closed. */
static size_t max_drained(const gw_openai_http *h)
{
    return 4 * max_body(h);
}

static enum MHD_Result too_large(gw_openai_http *h, struct MHD_Connection *c, oa_conn *cn)
{
    oa_error e;
    oa_error_set(&e, 413, NULL, "request_too_large", "the request body is over %zu bytes (gateway.max_request_kb)",
                 max_body(h));
    cn->responded = true;
    return reject(h, cn, c, &e);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    gw_openai_http *h = cls;
    oa_conn *cn = *con_cls;
    if (!cn) {
        cn = calloc(1, sizeof *cn);
        if (!cn)
            return MHD_NO;
        *con_cls = cn;
        cn->t0 = mx_now_ms();
        snprintf(cn->what, sizeof cn->what, "%.16s %.100s", method, url);
        cn->route = route_of(url);
        bool post = cn->route == R_COMPLETIONS || cn->route == R_CHAT;
        oa_error e;
        if (cn->route == R_NONE) {
            cn->responded = true;
            oa_error_set(&e, 404, NULL, "not_found", "no such endpoint: %.200s %.300s", method, url);
            return send_error(cn, c, &e, NULL);
        }
        if (strcmp(method, post ? "POST" : "GET") != 0) {
            cn->responded = true;
            oa_error_set(&e, 405, NULL, "method_not_allowed", "%.300s takes %s, not %.20s", url, post ? "POST" : "GET",
                         method);
            return send_error(cn, c, &e, post ? "POST" : "GET");
        }
        if (!post) {
            cn->responded = true;
            return on_get(h, cn, c, url);
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > max_drained(h))
            return too_large(h, c, cn);
        cn->discard = cl && strtoull(cl, NULL, 10) > max_body(h);
        return MHD_YES;
    }
    if (cn->responded) {
        *upload_size = 0; /* an early error is on its way; the rest of the body is dropped */
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (cn->discard || cn->len + n > max_body(h)) {
            cn->discard = true;
            cn->dropped += n;
            return cn->len + cn->dropped > max_drained(h) ? too_large(h, c, cn) : MHD_YES;
        }
        if (cn->len + n + 1 > cn->cap) {
            size_t cap = cn->cap ? cn->cap : 4096;
            while (cap < cn->len + n + 1)
                cap *= 2;
            char *b = realloc(cn->body, cap);
            if (!b)
                return MHD_NO;
            cn->body = b;
            cn->cap = cap;
        }
        memcpy(cn->body + cn->len, upload, n);
        cn->len += n;
        return MHD_YES;
    }
    if (cn->discard)
        return too_large(h, c, cn);
    cn->responded = true;
    return on_generate(h, c, cn);
}

/* The access line of one call (core/log.h): "POST /v1/completions", the HTTP status, the
 * request's tokens, the time from arrival to the end of the answer. 499 (nginx's "client
 * closed request") stands for an answer the client did not wait for: nothing was sent yet, or
 * a stream was cut before its end. */
static void log_access(const gw_openai_http *h, const oa_conn *cn, enum MHD_RequestTerminationCode why)
{
    if (!mx_log_enabled(h->g->log, MX_LOG_INFO))
        return;
    unsigned status = cn->status;
    if (status == 0 || (status == MHD_HTTP_OK && why != MHD_REQUEST_TERMINATED_COMPLETED_OK))
        status = 499;
    char text[16];
    snprintf(text, sizeof text, "%u", status);
    int64_t prompt = -1, generated = -1;
    if (cn->r) {
        pthread_mutex_lock(&cn->r->mu);
        prompt = cn->r->n_prompt;
        generated = cn->r->n_out;
        pthread_mutex_unlock(&cn->r->mu);
    }
    mx_log_access(h->g->log, cn->what, text, prompt, generated, mx_now_ms() - cn->t0, cn->r ? cn->id : NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why)
{
    (void)c;
    oa_conn *cn = *con_cls;
    if (cn) {
        log_access(cls, cn, why);
        if (cn->r)
            gw_request_unref(cn->r);
        free(cn->body);
        free(cn);
        *con_cls = NULL;
    }
}

/* ---- start and stop ---- */

static int resolve(const char *listen, struct sockaddr_storage *ss, mx_error *err)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1])
        return mx_fail(err, MX_EINVAL, "gateway.http_listen \"%s\" is not host:port", listen);
    char host[256];
    int n = (int)(colon - listen);
    if (n >= 2 && listen[0] == '[' && listen[n - 1] == ']')
        snprintf(host, sizeof host, "%.*s", n - 2, listen + 1);
    else
        snprintf(host, sizeof host, "%.*s", n, listen);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc || !res)
        return mx_fail(err, MX_EINVAL, "gateway.http_listen \"%s\": %s", listen, gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static int write_port_file(const char *path, int port, mx_error *err)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return mx_fail(err, MX_EINVAL, "gateway.http_port_file is too long: %s", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return mx_fail(err, MX_EIO, "cannot write gateway.http_port_file %s", path);
    int bad = fprintf(f, "%d\n", port) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0)
        return mx_fail(err, MX_EIO, "cannot write gateway.http_port_file %s", path);
    return 0;
}

int gw_openai_http_start(const gw_generation_ctx *g, gw_pipeline_health *const *health, gw_openai_http **out,
                         mx_error *err)
{
    *out = NULL;
    struct sockaddr_storage ss = {0};
    MX_TRY(resolve(g->cfg->http_listen, &ss, err));
    gw_openai_http *h = calloc(1, sizeof *h);
    if (!h)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    h->g = g;
    h->health = health;
    h->started_s = (int64_t)time(NULL);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    atomic_init(&h->stopping, false);
    /* as many connections as the gRPC side has workers and queue slots */
    unsigned limit = (unsigned)(g->cfg->max_batch_sequences + 16 + g->cfg->max_queued);
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_LIMIT, limit,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)OA_IDLE_TIMEOUT_S, MHD_OPTION_END);
    const union MHD_DaemonInfo *di = h->d ? MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    int rc = 0;
    if (!h->d)
        rc = mx_fail(err, MX_EIO, "cannot serve HTTP on gateway.http_listen \"%s\" (address in use?)",
                     g->cfg->http_listen);
    else if (!di)
        rc = mx_fail(err, MX_EIO, "the HTTP server on %s has no port", g->cfg->http_listen);
    if (!rc) {
        h->port = di->port;
        if (g->cfg->http_port_file[0])
            rc = write_port_file(g->cfg->http_port_file, h->port, err);
    }
    if (rc) {
        gw_openai_http_stop(h);
        return rc;
    }
    *out = h;
    return 0;
}

int gw_openai_http_port(const gw_openai_http *h)
{
    return h->port;
}

void gw_openai_http_drain(gw_openai_http *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    if (!h->draining) {
        h->draining = true;
        h->drain_start_ms = mx_now_ms();
    }
    pthread_mutex_unlock(&h->mu);
}

/* Waits until no generation request is in flight or mx_now_ms() reaches until. */
static void wait_idle(gw_openai_http *h, double until)
{
    pthread_mutex_lock(&h->mu);
    while (h->active > 0 && mx_now_ms() < until) {
        struct timespec ts = mx_wall_after_ms(50);
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
}

void gw_openai_http_stop(gw_openai_http *h)
{
    if (!h)
        return;
    gw_openai_http_drain(h);
    pthread_mutex_lock(&h->mu);
    double until = h->drain_start_ms + (double)h->g->cfg->drain_ms;
    pthread_mutex_unlock(&h->mu);
    wait_idle(h, until);
    /* the waits still going are woken, cancel their requests and answer 503; their answers get
     * up to a second to go out before the connections are shut */
    atomic_store(&h->stopping, true);
    pthread_mutex_lock(&h->mu);
    for (oa_waiter *w = h->waiting; w; w = w->next)
        gw_request_wake(w->r);
    pthread_mutex_unlock(&h->mu);
    wait_idle(h, mx_now_ms() + 1000);
    if (h->d)
        MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}
