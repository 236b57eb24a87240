/* The HTTP API's endpoints, in OpenAI's shapes, over http.c's requests:
 *
 *   POST /v1/chat/completions  messages through the chat template
 *   POST /v1/completions       a raw prompt
 *   GET  /v1/models, /v1/models/ID   the one model served
 *   GET  /health               200 serving, 503 loading or draining
 *   GET  /metrics              Prometheus text, root and admin_group only
 *
 * A generation is a transport of the request core: the body becomes
 * md_gen_params (http_request.c), the core admits it for the caller's uid
 * (quotas, limits, fairness as for any transport), and its sink turns the
 * core's answers into a JSON answer or a stream of server-sent events. An
 * answer's status waits for admission, so a refusal is a status (429 with
 * Retry-After, 400, ...), never a stream that fails at once; an error after
 * the stream began is an event with OpenAI's error object. Errors always
 * have OpenAI's shape ({"error": {"message", "type", "param", "code"}}).
 * Main thread only. */
#include <jansson.h>
#include <string.h>
#include <syslog.h>

#include "mx_common.h"
#include "http.h"

struct md_http_gen {
        md_server *srv;
        md_http_req *q;
        md_request *r;
        md_http_kind kind;
        bool stream, include_usage;
        uint64_t id, created;        /* the core's id; unix seconds */
        mx_buf text;                 /* [text.n] the answer so far, when not streamed */
};

/* ---- errors ------------------------------------------------------------------------- */

static const char *error_type(unsigned status) {
        return status == 401   ? "authentication_error"
               : status == 403 ? "permission_error"
               : status == 429 ? "rate_limit_error"
               : status >= 500 ? "server_error"
                               : "invalid_request_error";
}

char *md_http_error_json(unsigned status, const char *code, const char *msg) {
        json_auto_t *e = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", msg, "type",
                                                      error_type(status), "param", "code", code);
        return e ? json_dumps(e, JSON_COMPACT) : NULL;
}

/* An error of the core as HTTP: its status, name, and whether to retry. */
typedef struct http_error {
        unsigned status;
        const char *code;
        bool retry;
} http_error;

static http_error http_error_of(int code) {
        switch (code) {
        case MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT: return (http_error){400, "invalid_argument", false};
        case MIXTRALD__V1__ERROR_CODE__TOO_LONG: return (http_error){400, "context_length_exceeded", false};
        case MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED: return (http_error){429, "quota_exceeded", true};
        case MIXTRALD__V1__ERROR_CODE__BUSY: return (http_error){429, "busy", true};
        case MIXTRALD__V1__ERROR_CODE__NOT_FOUND: return (http_error){404, "not_found", false};
        case MIXTRALD__V1__ERROR_CODE__CANCELLED: return (http_error){409, "cancelled", false};
        case MIXTRALD__V1__ERROR_CODE__UNAVAILABLE: return (http_error){503, "unavailable", true};
        default: return (http_error){500, "internal", true};
        }
}

static void reply_refusal(md_http_req *q, const md_refusal *ref) {
        http_error e = http_error_of(ref->code);
        uint64_t now = md_wall_now(), after = 0;
        if (ref->retry_at)
                after = ref->retry_at > now ? ref->retry_at - now : 1;
        else if (ref->retry_after_ms)
                after = (ref->retry_after_ms + 999) / 1000;
        /* OpenAI's clients wait at most a minute for a Retry-After; an
         * hour's quota is not worth their retries. */
        md_httpq_error(q, e.status, e.code, ref->msg, after, e.retry && after <= 60);
}

static void refuse_params(md_http_req *q, uint32_t uid, const mx_error *err) {
        bool oom = err->code == -ENOMEM;
        md_log_request(LOG_NOTICE, &(md_log_fields){.uid = uid}, "refused: %s: %s",
                       oom ? "INTERNAL" : "INVALID_ARGUMENT", err->msg);
        md_httpq_error(q, oom ? 500 : 400, oom ? "internal" : "invalid_argument", err->msg, 0, oom);
}

/* 503 while loading or draining; false when serving. */
static bool not_serving(md_server *srv, md_http_req *q) {
        if (srv->draining)
                md_httpq_error(q, 503, "unavailable", "the daemon is stopping", 0, false);
        else if (srv->loading)
                md_httpq_error(q, 503, "loading", "the model is still loading", 5, true);
        return srv->draining || srv->loading;
}

/* ---- the model ----------------------------------------------------------------------- */

static const char *model_id(const md_server *srv) {
        const char *slash = srv->model_dir ? strrchr(srv->model_dir, '/') : NULL;
        return slash && slash[1] ? slash + 1 : srv->model_dir ? srv->model_dir : "mixtral";
}

static uint64_t started_unix(const md_server *srv) {
        return md_wall_now() - (uint64_t)(md_now() - srv->t_start);
}

static json_t *model_json(const md_server *srv) {
        return json_pack("{s:s,s:s,s:I,s:s,s:I}", "id", model_id(srv), "object", "model", "created",
                         (json_int_t)started_unix(srv), "owned_by", "mixtrald", "context_length",
                         (json_int_t)srv->context_length);
}

/* Consumes j. */
static void reply_json(md_http_req *q, unsigned status, json_t *j) {
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!s)
                return md_httpq_error(q, 500, "internal", "out of memory", 0, true);
        md_httpq_reply(q, status, "application/json", s, strlen(s), NULL);
}

static void models(md_server *srv, md_http_req *q, const md_http_call *c) {
        reply_json(q, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(srv)));
}

static void model_one(md_server *srv, md_http_req *q, const md_http_call *c) {
        if (strcmp(c->path + strlen("/v1/models/"), model_id(srv)))
                return md_httpq_error(q, 404, "model_not_found", "this daemon serves one model: GET /v1/models", 0,
                                      false);
        reply_json(q, 200, model_json(srv));
}

static void health(md_server *srv, md_http_req *q, const md_http_call *c) {
        const char *state = md_server_state(srv);
        double fraction = 1;
        md_sched_loaded(srv->sched, &fraction);
        bool ok = !strcmp(state, "serving");
        json_t *j = json_pack("{s:s,s:f}", "status", ok ? "ok" : state, "load_progress", fraction);
        if (ok || !j)
                return reply_json(q, 200, j);
        _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        static const char *const retry[] = {"Retry-After", "5", NULL};
        md_httpq_reply(q, 503, "application/json", s ? s : "{}", s ? strlen(s) : 2, srv->loading ? retry : NULL);
}

static void metrics(md_server *srv, md_http_req *q, const md_http_call *c) {
        md_limits l;
        bool admin;
        md_users_limits(srv->users, &srv->cfg, c->uid, &l, &admin);
        if (!admin)
                return md_httpq_error(q, 403, "forbidden", "metrics are for root and the admin group", 0, false);
        _cleanup_(mx_buf_free) mx_buf text = {0};
        if (md_metrics_render(srv, &text) < 0)
                return md_httpq_error(q, 500, "internal", "out of memory", 0, true);
        md_httpq_reply(q, 200, "text/plain; version=0.0.4; charset=utf-8", text.p, text.n, NULL);
}

/* ---- generations -------------------------------------------------------------------------- */

static const char *finish_reason(mx_finish f) {
        return f == MX_FINISH_LENGTH || f == MX_FINISH_CONTEXT ? "length" : "stop";
}

/* OpenAI's usage, the prompt tokens the KV cache served in its
 * prompt_tokens_details.cached_tokens. */
static json_t *usage_json(const md_usage_report *u) {
        return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", (int)u->prompt_tokens, "completion_tokens",
                         (int)u->completion_tokens, "total_tokens", (int)(u->prompt_tokens + u->completion_tokens),
                         "prompt_tokens_details", "cached_tokens", (int)u->cached_prompt_tokens);
}

/* The fields every answer and chunk has; choice (stolen) is its one choice
 * (NULL: none, for the usage chunk). */
static json_t *envelope(const md_http_gen *g, const char *object, json_t *choice) {
        char id[40];
        snprintf(id, sizeof(id), "%s-%llu", g->kind == MD_HTTP_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)g->id);
        json_t *choices = choice ? json_pack("[o]", choice) : json_array();
        return json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", id, "object", object, "created", (json_int_t)g->created,
                         "model", model_id(g->srv), "choices", choices);
}

/* One choice of a chunk: new text, or the end (reason). */
static json_t *chunk_choice(const md_http_gen *g, const char *text, size_t len, const char *reason) {
        if (g->kind == MD_HTTP_COMPLETION)
                return json_pack("{s:i,s:s%,s:n,s:s?}", "index", 0, "text", text, len, "logprobs", "finish_reason",
                                 reason);
        json_t *delta = reason ? json_object() : json_pack("{s:s%}", "content", text, len);
        return json_pack("{s:i,s:o,s:n,s:s?}", "index", 0, "delta", delta, "logprobs", "finish_reason", reason);
}

/* A stream's event (j stolen); -ENOBUFS when the client was dropped. */
static int send_event(md_http_gen *g, json_t *j) {
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL, *line = NULL;
        json_decref(j);
        int n = s ? asprintf(&line, "data: %s\n\n", s) : -1;
        if (n < 0)
                line = NULL;
        return md_httpq_write(g->q, line ? line : "data: {\"error\":{\"message\":\"out of memory\"}}\n\n",
                              line ? (size_t)n : 47);
}

static int send_chunk(md_http_gen *g, json_t *choice) {
        const char *object = g->kind == MD_HTTP_CHAT ? "chat.completion.chunk" : "text_completion";
        json_t *j = envelope(g, object, choice);
        /* With include_usage every chunk says "usage": null but the last. */
        if (j && g->include_usage)
                json_object_set_new(j, "usage", json_null());
        return send_event(g, j);
}

static void gen_free(md_http_gen *g) {
        mx_buf_free(&g->text);
        free(g);
}

/* The request must not reach the client any more (it went, or cannot
 * take more): the core forgets it, and so do we. */
static void let_go(md_http_gen *g) {
        md_core_detach(g->srv->core, g->r);
        md_httpq_set_gen(g->q, NULL);
        gen_free(g);
}

static void on_accepted(void *data, const md_accepted *a) {
        md_http_gen *g = data;
        g->id = a->id;
        if (!g->stream)
                return;
        md_httpq_stream(g->q);
        /* OpenAI's first chat chunk names the role. */
        if (g->kind == MD_HTTP_CHAT &&
            send_chunk(g, json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", 0, "delta", "role", "assistant", "content", "",
                                    "logprobs", "finish_reason")) < 0)
                let_go(g);
}

static void on_refused(void *data, const md_refusal *ref) {
        md_http_gen *g = data;
        reply_refusal(g->q, ref);
}

static void on_chunk(void *data, const char *text, size_t len, const int32_t *ids, size_t n_ids) {
        md_http_gen *g = data;
        if (!len)
                return;
        if (g->stream) {
                if (send_chunk(g, chunk_choice(g, text, len, NULL)) < 0)
                        let_go(g);
                return;
        }
        if (g->text.n + len > g->srv->cfg.max_output_bytes || mx_buf_append(&g->text, text, len) < 0) {
                md_httpq_error(g->q, 500, "internal", "the answer is longer than max_output_bytes", 0, false);
                let_go(g);
        }
}

static void end_stream(md_http_gen *g, const md_outcome *o) {
        int r = 0;
        if (o->error_code) {
                http_error e = http_error_of(o->error_code);
                _cleanup_free_ char *err = md_http_error_json(e.status, e.code, o->error_msg), *line = NULL;
                int n = err ? asprintf(&line, "data: %s\n\n", err) : -1;
                r = n > 0 ? md_httpq_write(g->q, line, (size_t)n) : 0;
        } else {
                r = send_chunk(g, chunk_choice(g, "", 0, finish_reason(o->finish)));
                if (r == 0 && g->include_usage) {
                        json_t *j = envelope(g, g->kind == MD_HTTP_CHAT ? "chat.completion.chunk" : "text_completion",
                                             NULL);
                        if (j)
                                json_object_set_new(j, "usage", usage_json(&o->usage));
                        r = send_event(g, j);
                }
                if (r == 0)
                        r = md_httpq_write(g->q, "data: [DONE]\n\n", 14);
        }
        if (r == 0)
                md_httpq_end(g->q);
}

static void end_whole(md_http_gen *g, const md_outcome *o) {
        if (o->error_code) {
                http_error e = http_error_of(o->error_code);
                return md_httpq_error(g->q, e.status, e.code, o->error_msg, 0, e.retry);
        }
        const char *text = g->text.p ? g->text.p : "";
        json_t *choice = g->kind == MD_HTTP_CHAT
                                 ? json_pack("{s:i,s:{s:s,s:s%},s:n,s:s}", "index", 0, "message", "role", "assistant",
                                             "content", text, g->text.n, "logprobs", "finish_reason",
                                             finish_reason(o->finish))
                                 : json_pack("{s:i,s:s%,s:n,s:s}", "index", 0, "text", text, g->text.n, "logprobs",
                                             "finish_reason", finish_reason(o->finish));
        json_t *j = envelope(g, g->kind == MD_HTTP_CHAT ? "chat.completion" : "text_completion", choice);
        if (j)
                json_object_set_new(j, "usage", usage_json(&o->usage));
        reply_json(g->q, 200, j);
}

static void on_end(void *data, const md_outcome *o) {
        md_http_gen *g = data;
        if (g->stream)
                end_stream(g, o);
        else
                end_whole(g, o);
}

static void on_forget(void *data) {
        md_http_gen *g = data;
        md_httpq_set_gen(g->q, NULL);
        gen_free(g);
}

static const md_sink_ops http_sink = {on_accepted, on_refused, on_chunk, on_end, on_forget};

void md_http_api_gone(md_server *srv, md_http_gen *g) {
        md_core_detach(srv->core, g->r);
        gen_free(g);
}

static void generate(md_server *srv, md_http_req *q, const md_http_call *c, md_http_kind kind) {
        if (not_serving(srv, q))
                return;
        _cleanup_(md_http_gen_req_free) md_http_gen_req in = {0};
        mx_error err = {0};
        if (md_http_gen_parse(kind, c->body, c->body_len, &in, &err) < 0)
                return refuse_params(q, c->uid, &err);
        md_http_gen *g = calloc(1, sizeof(*g));
        if (!g)
                return md_httpq_error(q, 500, "internal", "out of memory", 0, true);
        *g = (md_http_gen){.srv = srv, .q = q, .kind = kind, .stream = in.stream, .include_usage = in.include_usage,
                           .created = md_wall_now()};
        md_refusal ref;
        if (!(g->r = md_core_submit(srv->core, c->uid, &in.params, &http_sink, g, &ref))) {
                gen_free(g);
                return reply_refusal(q, &ref);
        }
        md_httpq_set_gen(q, g);
}

static void chat(md_server *srv, md_http_req *q, const md_http_call *c) {
        generate(srv, q, c, MD_HTTP_CHAT);
}

static void completion(md_server *srv, md_http_req *q, const md_http_call *c) {
        generate(srv, q, c, MD_HTTP_COMPLETION);
}

/* ---- routes ------------------------------------------------------------------------------ */

typedef void (*endpoint)(md_server *srv, md_http_req *q, const md_http_call *c);

static const struct route {
        const char *path, *method;
        endpoint fn;
        bool prefix;                 /* path is a prefix: /v1/models/ID */
} routes[] = {
        {"/v1/chat/completions", "POST", chat, false},
        {"/v1/completions", "POST", completion, false},
        {"/v1/models", "GET", models, false},
        {"/v1/models/", "GET", model_one, true},
        {"/health", "GET", health, false},
        {"/metrics", "GET", metrics, false},
};

static const struct route *route_of(const char *path) {
        for (size_t i = 0; i < MX_ELEMENTSOF(routes); i++) {
                size_t n = strlen(routes[i].path);
                if (routes[i].prefix ? !strncmp(path, routes[i].path, n) && path[n] : !strcmp(path, routes[i].path))
                        return &routes[i];
        }
        return NULL;
}

bool md_http_api_routes(md_http_req *q, const char *method, const char *path) {
        const struct route *r = route_of(path);
        if (!r) {
                md_httpq_error(q, 404, "not_found", "no such endpoint (see docs/http.md)", 0, false);
                return false;
        }
        if (strcmp(method, r->method)) {
                char msg[64];
                snprintf(msg, sizeof(msg), "%s takes %s only", r->path, r->method);
                _cleanup_free_ char *body = md_http_error_json(405, "method_not_allowed", msg);
                const char *const allow[] = {"Allow", r->method, "x-should-retry", "false", NULL};
                md_httpq_reply(q, 405, "application/json", body ? body : "{}", body ? strlen(body) : 2, allow);
                return false;
        }
        return true;
}

void md_http_api_handle(md_server *srv, md_http_req *q, const md_http_call *c) {
        const struct route *r = route_of(c->path);
        if (r)
                r->fn(srv, q, c);
}
