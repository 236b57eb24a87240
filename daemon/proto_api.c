/* The protobuf socket as a transport of the request core: each frame's
 * Request turned into the core's calls, and the core's answers (accepted,
 * refused, chunks, the end) and the status and quota reports turned into
 * Responses on the connection. API keys (keys.c) are made, listed and
 * revoked here only, so that a key is bound to the uid SO_PEERCRED gave. A connection's generate requests carry its
 * tag in their sink data; when the connection goes, they are detached and
 * stop. Main thread only. */
#include <string.h>
#include <syslog.h>

#include "mx_common.h"
#include "mixtrald.h"

typedef struct proto_req proto_req;

struct md_proto_conn {
        md_server *srv;
        md_conn *c;
        proto_req *reqs;     /* by next: requests the core still knows */
};

struct proto_req {
        md_proto_conn *pc;
        md_request *r;       /* NULL until md_core_submit returned */
        uint64_t tag, id;    /* id: once accepted */
        proto_req *next;
};

md_proto_conn *md_proto_conn_new(md_server *srv, md_conn *c) {
        md_proto_conn *pc = calloc(1, sizeof(*pc));
        if (pc)
                *pc = (md_proto_conn){srv, c, NULL};
        return pc;
}

void md_proto_conn_free(md_proto_conn *pc) {
        if (!pc)
                return;
        for (proto_req *q = pc->reqs, *next; q; q = next) {
                next = q->next;
                md_core_detach(pc->srv->core, q->r);
                free(q);
        }
        free(pc);
}

static Mixtrald__V1__Response response(uint64_t tag, uint64_t id) {
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.has_request_id = id != 0, resp.request_id = id;
        return resp;
}

/* ---- the core's answers ---------------------------------------------------------- */

static void on_accepted(void *data, const md_accepted *acc) {
        proto_req *q = data;
        q->id = acc->id;
        Mixtrald__V1__Accepted a = MIXTRALD__V1__ACCEPTED__INIT;
        a.has_queue_position = true, a.queue_position = acc->position;
        a.has_prompt_tokens = true, a.prompt_tokens = acc->prompt_tokens;
        a.has_max_tokens = true, a.max_tokens = acc->max_tokens;
        Mixtrald__V1__Response resp = response(q->tag, q->id);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ACCEPTED, resp.accepted = &a;
        md_conn_send(q->pc->c, &resp);
}

static void send_refusal(md_conn *c, uint64_t tag, const md_refusal *ref) {
        Mixtrald__V1__Error e = MIXTRALD__V1__ERROR__INIT;
        e.has_code = true, e.code = ref->code, e.message = (char *)ref->msg;
        e.has_retry_at_unix = ref->retry_at != 0, e.retry_at_unix = ref->retry_at;
        e.has_retry_after_ms = ref->retry_after_ms != 0, e.retry_after_ms = ref->retry_after_ms;
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ERROR, resp.error = &e;
        md_conn_send(c, &resp);
}

static void on_refused(void *data, const md_refusal *ref) {
        proto_req *q = data;
        send_refusal(q->pc->c, q->tag, ref);
}

static void on_chunk(void *data, const char *text, size_t len, const int32_t *ids, size_t n_ids) {
        proto_req *q = data;
        _cleanup_free_ char *t = malloc(len + 1);
        if (!t)
                return md_conn_kill(q->pc->c, "out of memory");
        if (len) /* a chunk of ids alone has no text at all */
                memcpy(t, text, len);
        t[len] = '\0';
        Mixtrald__V1__Chunk ch = MIXTRALD__V1__CHUNK__INIT;
        ch.text = t;
        ch.n_token_ids = n_ids, ch.token_ids = (int32_t *)ids;
        Mixtrald__V1__Response resp = response(q->tag, q->id);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_CHUNK, resp.chunk = &ch;
        md_conn_send(q->pc->c, &resp);
}

static void fill_usage(const md_usage_report *u, Mixtrald__V1__Usage *pu) {
        pu->has_prompt_tokens = true, pu->prompt_tokens = u->prompt_tokens;
        pu->has_completion_tokens = true, pu->completion_tokens = u->completion_tokens;
        pu->has_total_s = true, pu->total_s = u->total_s;
        pu->has_queued_s = true, pu->queued_s = u->queued_s;
        pu->has_time_to_first_token_s = u->has_ttft, pu->time_to_first_token_s = u->ttft_s;
        pu->has_tokens_per_second = u->has_ttft, pu->tokens_per_second = u->tokens_per_s;
        pu->has_cached_prompt_tokens = true, pu->cached_prompt_tokens = u->cached_prompt_tokens;
}

static void on_end(void *data, const md_outcome *o) {
        proto_req *q = data;
        if (o->error_code)
                return md_conn_send_error(q->pc->c, q->tag, q->id, o->error_code, o->error_msg);
        Mixtrald__V1__Usage u = MIXTRALD__V1__USAGE__INIT;
        fill_usage(&o->usage, &u);
        Mixtrald__V1__Finished fin = MIXTRALD__V1__FINISHED__INIT;
        fin.reason = (char *)mx_finish_name(o->finish);
        fin.usage = &u;
        fin.note = (char *)o->note;
        Mixtrald__V1__Response resp = response(q->tag, q->id);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_FINISHED, resp.finished = &fin;
        md_conn_send(q->pc->c, &resp);
}

static void on_forget(void *data) {
        proto_req *q = data;
        for (proto_req **p = &q->pc->reqs; *p; p = &(*p)->next)
                if (*p == q) {
                        *p = q->next;
                        break;
                }
        free(q);
}

static const md_sink_ops proto_sink = {on_accepted, on_refused, on_chunk, on_end, on_forget};

/* ---- requests ---------------------------------------------------------------- */

static void generate(md_proto_conn *pc, uint64_t tag, const Mixtrald__V1__Generate *g) {
        md_refusal ref = {0};
        mx_error err = {0};
        _cleanup_(md_gen_params_free) md_gen_params p = {0};
        if (md_gen_params_from(g, &p, &err) < 0) {
                ref.code = err.code == -ENOMEM ? MIXTRALD__V1__ERROR_CODE__INTERNAL
                                               : MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT;
                snprintf(ref.msg, sizeof(ref.msg), "%s", err.msg);
                md_log_request(LOG_NOTICE, &(md_log_fields){.uid = md_conn_uid(pc->c)}, "refused: %s: %s",
                               mxp_error_name(ref.code), ref.msg);
                return send_refusal(pc->c, tag, &ref);
        }
        proto_req *q = calloc(1, sizeof(*q));
        if (!q)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        *q = (proto_req){.pc = pc, .tag = tag};
        if (!(q->r = md_core_submit(pc->srv->core, md_conn_uid(pc->c), &p, &proto_sink, q, &ref))) {
                free(q);
                return send_refusal(pc->c, tag, &ref);
        }
        q->next = pc->reqs;
        pc->reqs = q;
}

static void cancel(md_proto_conn *pc, uint64_t tag, const Mixtrald__V1__Cancel *m) {
        if (!m->has_request_id)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                          "cancel needs a request_id");
        if (md_core_cancel(pc->srv->core, md_conn_uid(pc->c), m->request_id) < 0) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no request %llu of yours is running or queued",
                         (unsigned long long)m->request_id);
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__NOT_FOUND, msg);
        }
        Mixtrald__V1__CancelReply cr = MIXTRALD__V1__CANCEL_REPLY__INIT;
        cr.has_request_id = true, cr.request_id = m->request_id;
        Mixtrald__V1__Response resp = response(tag, m->request_id);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_CANCELLED, resp.cancelled = &cr;
        md_conn_send(pc->c, &resp);
}

static void fill_experts(const md_status *s, Mixtrald__V1__ExpertStreaming *ex) {
        const mx_expert_stats *xs = &s->experts;
        ex->has_budget_bytes = true, ex->budget_bytes = xs->budget;
        ex->has_configured_bytes = true, ex->configured_bytes = s->expert_configured;
        ex->has_resident_bytes = true, ex->resident_bytes = xs->resident;
        ex->has_slots_per_layer = true, ex->slots_per_layer = xs->slots_per_layer;
        ex->has_hits = true, ex->hits = xs->hits;
        ex->has_misses = true, ex->misses = xs->misses;
        ex->has_bytes_read = true, ex->bytes_read = xs->bytes_read;
        ex->has_read_gbps = true, ex->read_gbps = s->expert_read_gbps;
        ex->has_predicted = true, ex->predicted = xs->predicted;
        ex->has_predicted_used = true, ex->predicted_used = xs->predicted_used;
        ex->how = (char *)xs->how;
        if (xs->host_budget) {
                ex->has_host_cache_bytes = true, ex->host_cache_bytes = xs->host_budget;
                ex->has_host_hits = true, ex->host_hits = xs->host_hits;
                ex->has_host_misses = true, ex->host_misses = xs->host_misses;
                ex->has_bytes_uploaded = true, ex->bytes_uploaded = xs->bytes_uploaded;
        }
}

static void fill_kv(const mx_kv_stats *k, Mixtrald__V1__KvCache *kv) {
        kv->type = (char *)mx_kv_type_name(k->type);
        kv->has_block_tokens = true, kv->block_tokens = k->block_tokens;
        kv->has_block_bytes = true, kv->block_bytes = k->block_bytes;
        kv->has_blocks = true, kv->blocks = k->blocks;
        kv->has_used = true, kv->used = k->used;
        kv->has_cached = true, kv->cached = k->cached;
        kv->has_free = true, kv->free = k->free;
        kv->has_lookups = true, kv->lookups = k->lookups;
        kv->has_hits = true, kv->hits = k->hits;
        kv->has_hit_tokens = true, kv->hit_tokens = k->hit_tokens;
        kv->has_evictions = true, kv->evictions = k->evictions;
}

static void fill_status(const md_status *s, Mixtrald__V1__Status *st) {
        st->version = (char *)s->version, st->model = (char *)s->model, st->device = (char *)s->device;
        st->state = (char *)s->state;
        st->has_load_progress = true, st->load_progress = s->load_fraction;
        st->has_weight_bytes = true, st->weight_bytes = s->weight_bytes;
        st->has_kv_bytes = true, st->kv_bytes = s->kv_bytes;
        st->has_rss_bytes = true, st->rss_bytes = s->rss_bytes;
        st->has_queued = true, st->queued = s->queued;
        st->has_running = true, st->running = s->running;
        st->has_prefilling = true, st->prefilling = s->prefilling;
        st->has_decoding = true, st->decoding = s->decoding;
        st->has_max_batch = true, st->max_batch = s->max_batch;
        st->has_max_queue = true, st->max_queue = s->max_queue;
        st->has_connections = true, st->connections = s->connections;
        st->has_requests_total = true, st->requests_total = s->requests_total;
        st->has_tokens_total = true, st->tokens_total = s->tokens_total;
        st->has_uptime_s = true, st->uptime_s = s->uptime_s;
        st->has_context_length = true, st->context_length = s->context_length;
}

static void status(md_proto_conn *pc, uint64_t tag) {
        _cleanup_(md_status_free) md_status s = {0};
        if (md_status_fill(pc->srv, md_conn_uid(pc->c), &s) < 0)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        _cleanup_free_ Mixtrald__V1__RequestInfo *infos = calloc(s.n_requests + 1, sizeof(*infos));
        _cleanup_free_ Mixtrald__V1__RequestInfo **ptrs = calloc(s.n_requests + 1, sizeof(*ptrs));
        if (!infos || !ptrs)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        Mixtrald__V1__Status st = MIXTRALD__V1__STATUS__INIT;
        fill_status(&s, &st);
        for (size_t i = 0; i < s.n_requests; i++) {
                const md_request_view *v = &s.requests[i];
                Mixtrald__V1__RequestInfo *ri = &infos[i];
                mixtrald__v1__request_info__init(ri);
                ri->has_id = true, ri->id = v->id;
                ri->has_uid = true, ri->uid = v->uid;
                ri->state = (char *)md_state_name(v->state);
                ri->has_prompt_tokens = true, ri->prompt_tokens = v->prompt_tokens;
                ri->has_completion_tokens = true, ri->completion_tokens = v->completion_tokens;
                ri->has_age_s = true, ri->age_s = v->age_s;
                ptrs[i] = ri;
        }
        st.n_requests = s.n_requests, st.requests = ptrs;
        Mixtrald__V1__ExpertStreaming ex = MIXTRALD__V1__EXPERT_STREAMING__INIT;
        if (s.streaming) {
                fill_experts(&s, &ex);
                st.experts = &ex;
        }
        Mixtrald__V1__KvCache kv = MIXTRALD__V1__KV_CACHE__INIT;
        if (s.kv.blocks) {
                fill_kv(&s.kv, &kv);
                st.kv_cache = &kv;
        }
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_STATUS, resp.status = &st;
        md_conn_send(pc->c, &resp);
}

static void quota(md_proto_conn *pc, uint64_t tag) {
        md_quota_report r;
        if (md_core_quota(pc->srv->core, md_conn_uid(pc->c), &r) < 0)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        Mixtrald__V1__Limits lim = MIXTRALD__V1__LIMITS__INIT;
        lim.has_tokens_per_hour = lim.has_tokens_per_day = lim.has_max_concurrent = true;
        lim.has_max_queued = lim.has_max_context = lim.has_max_tokens = true;
        lim.tokens_per_hour = r.limits.tokens_per_hour, lim.tokens_per_day = r.limits.tokens_per_day;
        lim.max_concurrent = r.limits.max_concurrent, lim.max_queued = r.limits.max_queued;
        lim.max_context = r.limits.max_context, lim.max_tokens = r.limits.max_tokens;
        Mixtrald__V1__Quota q = MIXTRALD__V1__QUOTA__INIT;
        q.has_uid = true, q.uid = r.uid;
        q.has_exempt = true, q.exempt = r.exempt;
        q.limits = &lim;
        q.has_used_hour = true, q.used_hour = r.used_hour;
        q.has_used_day = true, q.used_day = r.used_day;
        q.has_hour_resets_unix = true, q.hour_resets_unix = r.hour_resets;
        q.has_day_resets_unix = true, q.day_resets_unix = r.day_resets;
        q.has_running = true, q.running = r.running;
        q.has_queued = true, q.queued = r.queued;
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_QUOTA, resp.quota = &q;
        md_conn_send(pc->c, &resp);
}

/* ---- API keys ---------------------------------------------------------------------- */

static void fill_key(const md_key *k, Mixtrald__V1__ApiKey *out) {
        out->id = (char *)k->id;
        out->has_uid = true, out->uid = k->uid;
        out->has_created_unix = true, out->created_unix = k->created;
        out->name = (char *)k->name;
}

static bool is_admin(md_proto_conn *pc) {
        md_limits l;
        bool admin;
        md_users_limits(pc->srv->users, &pc->srv->cfg, md_conn_uid(pc->c), &l, &admin);
        return admin;
}

static void send_key_error(md_proto_conn *pc, uint64_t tag, const mx_error *err) {
        int code = err->code == -EINVAL   ? MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT
                   : err->code == -ENOENT ? MIXTRALD__V1__ERROR_CODE__NOT_FOUND
                                          : MIXTRALD__V1__ERROR_CODE__INTERNAL;
        md_log_request(code == MIXTRALD__V1__ERROR_CODE__INTERNAL ? LOG_ERR : LOG_NOTICE,
                       &(md_log_fields){.uid = md_conn_uid(pc->c)}, "refused: %s: %s", mxp_error_name(code), err->msg);
        md_conn_send_error(pc->c, tag, 0, code, err->msg);
}

static void key_new(md_proto_conn *pc, uint64_t tag, const Mixtrald__V1__KeyNew *m) {
        mx_error err = {0};
        md_key k;
        char secret[MD_KEY_LEN + 1];
        uint32_t uid = md_conn_uid(pc->c);
        if (md_keys_new(&pc->srv->keys, uid, m->name, md_wall_now(), &k, secret, &err) < 0)
                return send_key_error(pc, tag, &err);
        md_log(LOG_INFO, "uid %u made API key %s", uid, k.id);
        Mixtrald__V1__ApiKey a = MIXTRALD__V1__API_KEY__INIT;
        fill_key(&k, &a);
        a.secret = secret;
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_KEY_CREATED, resp.key_created = &a;
        md_conn_send(pc->c, &resp);
        explicit_bzero(secret, sizeof(secret));
}

static void key_list(md_proto_conn *pc, uint64_t tag) {
        const md_keys *ks = &pc->srv->keys;
        uint32_t uid = md_conn_uid(pc->c);
        bool all = is_admin(pc);
        _cleanup_free_ Mixtrald__V1__ApiKey *keys = calloc(ks->n + 1, sizeof(*keys));
        _cleanup_free_ Mixtrald__V1__ApiKey **ptrs = calloc(ks->n + 1, sizeof(*ptrs));
        if (!keys || !ptrs)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        Mixtrald__V1__ApiKeys list = MIXTRALD__V1__API_KEYS__INIT;
        for (size_t i = 0; i < ks->n; i++) {
                if (ks->v[i].uid != uid && !all)
                        continue;
                mixtrald__v1__api_key__init(&keys[list.n_keys]);
                fill_key(&ks->v[i], &keys[list.n_keys]);
                ptrs[list.n_keys] = &keys[list.n_keys];
                list.n_keys++;
        }
        list.keys = ptrs;
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_KEYS, resp.keys = &list;
        md_conn_send(pc->c, &resp);
}

static void key_revoke(md_proto_conn *pc, uint64_t tag, const Mixtrald__V1__KeyRevoke *m) {
        mx_error err = {0};
        md_key k;
        uint32_t uid = md_conn_uid(pc->c);
        if (!m->id)
                return md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                          "key_revoke needs an id");
        if (md_keys_revoke(&pc->srv->keys, uid, is_admin(pc), m->id, &k, &err) < 0)
                return send_key_error(pc, tag, &err);
        md_log(LOG_INFO, "uid %u revoked API key %s of uid %u", uid, k.id, k.uid);
        Mixtrald__V1__ApiKey a = MIXTRALD__V1__API_KEY__INIT;
        fill_key(&k, &a);
        Mixtrald__V1__Response resp = response(tag, 0);
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_KEY_REVOKED, resp.key_revoked = &a;
        md_conn_send(pc->c, &resp);
}

/* A frame that is not a Request ends the connection (BAD_FRAME); a
 * Request that is wrong gets its error and the connection goes on. */
bool md_proto_dispatch(md_proto_conn *pc, const uint8_t *body, size_t len) {
        Mixtrald__V1__Request *req = md_request_unpack(body, len);
        if (!req)
                return false;
        uint64_t tag = req->has_tag ? req->tag : 0;
        const char *nul = md_request_nul_field(body, len);
        char msg[128];
        if (nul) {
                snprintf(msg, sizeof(msg), "the %s field holds a NUL byte (text may not)", nul);
                md_log_request(LOG_NOTICE, &(md_log_fields){.uid = md_conn_uid(pc->c)}, "refused: INVALID_ARGUMENT: %s",
                               msg);
                md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, msg);
        } else
                switch (req->kind_case) {
                case MIXTRALD__V1__REQUEST__KIND_GENERATE: generate(pc, tag, req->generate); break;
                case MIXTRALD__V1__REQUEST__KIND_CANCEL: cancel(pc, tag, req->cancel); break;
                case MIXTRALD__V1__REQUEST__KIND_STATUS: status(pc, tag); break;
                case MIXTRALD__V1__REQUEST__KIND_QUOTA: quota(pc, tag); break;
                case MIXTRALD__V1__REQUEST__KIND_KEY_NEW: key_new(pc, tag, req->key_new); break;
                case MIXTRALD__V1__REQUEST__KIND_KEY_LIST: key_list(pc, tag); break;
                case MIXTRALD__V1__REQUEST__KIND_KEY_REVOKE: key_revoke(pc, tag, req->key_revoke); break;
                default:
                        md_conn_send_error(pc->c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                           "the request has no kind this daemon knows (generate, cancel, status, "
                                           "quota, key_new, key_list, key_revoke)");
                }
        md_request_free(req);
        return true;
}
