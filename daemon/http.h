/* The HTTP API's two halves, private to them: http.c is the server (the
 * sockets' connections on libmicrohttpd, who each caller is, bodies,
 * output and its bounds), http_api.c the endpoints (OpenAI's shapes, the
 * request core's sink). A request is http.c's md_http_req; its generation,
 * while the core knows it, is http_api.c's md_http_gen. Main thread only. */
#pragma once

#include "mixtrald.h"

typedef struct md_http_req md_http_req;
typedef struct md_http_gen md_http_gen;

/* A request whose body is complete, as http_api.c sees it. */
typedef struct md_http_call {
        const char *method, *path;
        const char *body;            /* [body_len], NUL after it */
        size_t body_len;
        uint32_t uid;                /* SO_PEERCRED, or the owner of the API key */
        bool tcp;                    /* on the TCP listener */
} md_http_call;

/* ---- http_api.c --------------------------------------------------------------- */

/* Whether method and path name an endpoint; if not, the 404 or 405 is
 * already answered (before any body is read). */
bool md_http_api_routes(md_http_req *q, const char *method, const char *path);
/* Answers the request: at once, or through a generation. */
void md_http_api_handle(md_server *srv, md_http_req *q, const md_http_call *call);
/* The client went: g is detached from the core and freed. */
void md_http_api_gone(md_server *srv, md_http_gen *g);
/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}
 * with the type that goes with status. */
char *md_http_error_json(unsigned status, const char *code, const char *msg);

/* ---- http.c, for http_api.c ------------------------------------------------------ */

/* A whole response (body copied); extra: NULL-terminated name, value
 * pairs of headers, or NULL. */
void md_httpq_reply(md_http_req *q, unsigned status, const char *content_type, const char *body, size_t len,
                    const char *const *extra);
/* OpenAI's error answer (md_http_error_json); retry_after: seconds for a
 * Retry-After header (0: none); retry: whether a client should. */
void md_httpq_error(md_http_req *q, unsigned status, const char *code, const char *msg, uint64_t retry_after,
                    bool retry);
/* Starts a server-sent event stream (200, text/event-stream). */
void md_httpq_stream(md_http_req *q);
/* Queues output of a stream: -ENOBUFS when it would pass max_output_bytes
 * (the client does not read): the client is then dropped, and the caller
 * must let go of the request (md_httpq_set_gen NULL). */
int md_httpq_write(md_http_req *q, const char *data, size_t len);
/* The stream is complete once what is queued is sent. */
void md_httpq_end(md_http_req *q);
/* Ties a generation to the request (NULL: untied), so that the client's
 * going reaches it through md_http_api_gone. */
void md_httpq_set_gen(md_http_req *q, md_http_gen *g);
md_server *md_httpq_server(const md_http_req *q);
