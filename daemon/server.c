/* The requests, on the main thread: admission against quotas and the
 * queue, cancel, status and quota replies, and shipping what the engine
 * produced to each client as it comes. */
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "mx_common.h"
#include "mixtrald.h"

double md_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void conn_remove(md_conn *c, md_request *r) {
        for (md_request **p = &c->reqs; *p; p = &(*p)->conn_next)
                if (*p == r) {
                        *p = r->conn_next;
                        return;
                }
}

void md_server_detach(md_server *srv, md_conn *c) {
        for (md_request *r = c->reqs, *next; r; r = next) {
                next = r->conn_next;
                r->conn = NULL;
                r->conn_next = NULL;
                md_sched_cancel(srv->sched, r);
        }
        c->reqs = NULL;
}

static void send_accepted(md_conn *c, const md_request *r, uint32_t position) {
        Mixtrald__V1__Accepted a = MIXTRALD__V1__ACCEPTED__INIT;
        a.has_queue_position = true, a.queue_position = position;
        a.has_prompt_tokens = true, a.prompt_tokens = (uint32_t)r->prompt.n;
        a.has_max_tokens = true, a.max_tokens = r->opts.max_tokens;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = r->tag;
        resp.has_request_id = true, resp.request_id = r->id;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ACCEPTED, resp.accepted = &a;
        md_conn_send(c, &resp);
}

static void send_refusal(md_conn *c, uint64_t tag, const md_refusal *ref) {
        Mixtrald__V1__Error e = MIXTRALD__V1__ERROR__INIT;
        e.has_code = true, e.code = ref->code, e.message = (char *)ref->msg;
        e.has_retry_at_unix = ref->retry_at != 0, e.retry_at_unix = ref->retry_at;
        e.has_retry_after_ms = ref->retry_after_ms != 0, e.retry_after_ms = ref->retry_after_ms;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ERROR, resp.error = &e;
        md_conn_send(c, &resp);
}

void md_server_generate(md_conn *c, uint64_t tag, const Mixtrald__V1__Generate *g) {
        md_refusal ref;
        uint32_t position;
        md_request *r = md_admit(c->srv, c->uid, c->gid, tag, g, &position, &ref);
        if (!r)
                return send_refusal(c, tag, &ref);
        r->conn = c;
        r->conn_next = c->reqs;
        c->reqs = r;
        send_accepted(c, r, position);
        md_submit(c->srv, r);
}

void md_server_cancel(md_conn *c, uint64_t tag, const Mixtrald__V1__Cancel *m) {
        md_server *srv = c->srv;
        if (!m->has_request_id)
                return md_conn_send_error(c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                          "cancel needs a request_id");
        md_request *r = md_find_request(srv, c->uid, m->request_id);
        if (!r) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no request %llu of yours is running or queued",
                         (unsigned long long)m->request_id);
                return md_conn_send_error(c, tag, 0, MIXTRALD__V1__ERROR_CODE__NOT_FOUND, msg);
        }
        md_sched_cancel(srv->sched, r);
        Mixtrald__V1__CancelReply cr = MIXTRALD__V1__CANCEL_REPLY__INIT;
        cr.has_request_id = true, cr.request_id = r->id;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.has_request_id = true, resp.request_id = r->id;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_CANCELLED, resp.cancelled = &cr;
        md_conn_send(c, &resp);
}

static uint64_t rss_bytes(void) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/statm", "re");
        unsigned long long size, rss;
        if (!f || fscanf(f, "%llu %llu", &size, &rss) != 2)
                return 0;
        return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

void md_fill_expert_stats(const mx_expert_stats *xs, uint64_t configured, Mixtrald__V1__ExpertStreaming *ex) {
        ex->has_budget_bytes = true, ex->budget_bytes = xs->budget;
        /* "min" is configured as 1 byte, a GPU's own choice as 0: the
         * engine's budget says what those came to. */
        ex->has_configured_bytes = true, ex->configured_bytes = configured > xs->budget ? configured : xs->budget;
        ex->has_resident_bytes = true, ex->resident_bytes = xs->resident;
        ex->has_slots_per_layer = true, ex->slots_per_layer = xs->slots_per_layer;
        ex->has_hits = true, ex->hits = xs->hits;
        ex->has_misses = true, ex->misses = xs->misses;
        ex->has_bytes_read = true, ex->bytes_read = xs->bytes_read;
        ex->has_read_gbps = true, ex->read_gbps = xs->read_wait_s > 0 ? (double)xs->bytes_read / xs->read_wait_s / 1e9 : 0;
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

void md_server_status(md_conn *c, uint64_t tag) {
        md_server *srv = c->srv;
        md_limits l;
        bool admin;
        md_config_limits(&srv->cfg, c->uid, c->gid, &l, &admin);
        Mixtrald__V1__Status st = MIXTRALD__V1__STATUS__INIT;
        mx_footprint fp;
        mx_model_footprint(srv->model, &fp);
        st.version = MX_VERSION_STRING, st.model = (char *)srv->model_dir;
        st.device = (char *)mx_engine_describe(srv->engine);
        st.state = srv->draining ? "draining" : "serving";
        st.has_weight_bytes = true, st.weight_bytes = fp.bytes;
        st.has_rss_bytes = true, st.rss_bytes = rss_bytes();
        st.has_max_batch = true, st.max_batch = srv->cfg.max_batch;
        st.has_max_queue = true, st.max_queue = srv->cfg.max_queue;
        st.has_connections = true, st.connections = srv->n_conns;
        st.has_requests_total = true, st.requests_total = srv->requests_total;
        st.has_tokens_total = true, st.tokens_total = srv->tokens_total;
        st.has_uptime_s = true, st.uptime_s = md_now() - srv->t_start;
        st.has_context_length = true, st.context_length = srv->context_length;

        _cleanup_free_ Mixtrald__V1__RequestInfo *infos = calloc(srv->n_live + 1, sizeof(*infos));
        _cleanup_free_ Mixtrald__V1__RequestInfo **ptrs = calloc(srv->n_live + 1, sizeof(*ptrs));
        if (!infos || !ptrs)
                return md_conn_send_error(c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        uint64_t kv_tokens = 0;
        double now = md_now();
        mx_expert_stats xs;
        Mixtrald__V1__ExpertStreaming ex = MIXTRALD__V1__EXPERT_STREAMING__INIT;
        md_sched_lock(srv->sched);
        md_sched_counts_locked(srv->sched, &st.queued, &st.running);
        md_sched_expert_stats_locked(srv->sched, &xs);
        for (size_t i = 0; i < srv->n_live; i++) {
                md_request *r = srv->live[i];
                if (r->state == MD_PREFILL || r->state == MD_DECODE)
                        kv_tokens += r->prompt.n + r->completion_tokens;
                st.prefilling += r->state == MD_PREFILL;
                st.decoding += r->state == MD_DECODE;
                if (r->uid != c->uid && !admin)
                        continue;
                Mixtrald__V1__RequestInfo *ri = &infos[st.n_requests];
                mixtrald__v1__request_info__init(ri);
                ri->has_id = true, ri->id = r->id;
                ri->has_uid = true, ri->uid = r->uid;
                ri->state = (char *)md_state_name(r->state);
                ri->has_prompt_tokens = true, ri->prompt_tokens = (uint32_t)r->prompt.n;
                ri->has_completion_tokens = true, ri->completion_tokens = r->completion_tokens;
                ri->has_age_s = true, ri->age_s = now - r->t_submit;
                ptrs[st.n_requests++] = ri;
        }
        md_sched_unlock(srv->sched);
        if (xs.streaming) {
                md_fill_expert_stats(&xs, srv->expert_budget, &ex);
                st.experts = &ex;
        }
        st.has_queued = st.has_running = st.has_prefilling = st.has_decoding = true;
        st.has_kv_bytes = true, st.kv_bytes = kv_tokens * srv->kv_bytes_per_token;
        st.requests = ptrs;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_STATUS, resp.status = &st;
        md_conn_send(c, &resp);
}

void md_server_quota(md_conn *c, uint64_t tag) {
        Mixtrald__V1__Limits lim;
        Mixtrald__V1__Quota q;
        if (md_fill_quota(c->srv, c->uid, c->gid, &q, &lim) < 0)
                return md_conn_send_error(c, tag, 0, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_QUOTA, resp.quota = &q;
        md_conn_send(c, &resp);
}

/* ---- output -------------------------------------------------------------- */

static void ship_chunk(md_server *srv, md_request *r) {
        if (r->bus && r->ship_text.n)
                md_dbus_chunk(srv, r);
        if (!r->conn || (!r->ship_text.n && !r->ship_ids.n))
                return;
        if (mx_buf_append(&r->ship_text, "", 0) < 0) /* NUL-terminate */
                return md_conn_kill(r->conn, "out of memory");
        Mixtrald__V1__Chunk ch = MIXTRALD__V1__CHUNK__INIT;
        ch.text = r->ship_text.p;
        ch.n_token_ids = r->ship_ids.n, ch.token_ids = r->ship_ids.v;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = r->tag;
        resp.has_request_id = true, resp.request_id = r->id;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_CHUNK, resp.chunk = &ch;
        md_conn_send(r->conn, &resp);
}

void md_fill_usage(const md_request *r, Mixtrald__V1__Usage *u) {
        uint32_t n = r->seen.completion_tokens;
        u->has_prompt_tokens = true, u->prompt_tokens = (uint32_t)r->prompt.n;
        u->has_completion_tokens = true, u->completion_tokens = n;
        u->has_total_s = true, u->total_s = r->seen.t_end - r->t_submit;
        u->has_queued_s = true, u->queued_s = r->seen.started ? r->seen.t_start - r->t_submit : u->total_s;
        if (n) {
                u->has_time_to_first_token_s = true, u->time_to_first_token_s = r->seen.t_first - r->t_submit;
                double decode = r->seen.t_end - r->seen.t_first;
                u->has_tokens_per_second = true;
                u->tokens_per_second = n > 1 && decode > 0 ? (n - 1) / decode : 0;
        }
}

static void ship_end(md_server *srv, md_request *r) {
        Mixtrald__V1__Usage u = MIXTRALD__V1__USAGE__INIT;
        md_fill_usage(r, &u);
        md_log_fields lf = {.request_id = r->id, .uid = r->uid, .prompt_tokens = u.prompt_tokens,
                            .completion_tokens = u.completion_tokens, .ttft_s = u.time_to_first_token_s,
                            .tokens_per_s = u.tokens_per_second, .total_s = u.total_s};
        if (r->seen.error_code) {
                md_log_request(LOG_INFO, &lf, "%s: %s", mxp_error_name(r->seen.error_code), r->error_msg);
                if (r->conn)
                        md_conn_send_error(r->conn, r->tag, r->id, r->seen.error_code, r->error_msg);
                if (r->bus)
                        md_dbus_end(srv, r, &u);
        } else {
                md_log_request(LOG_INFO, &lf, "finished (%s): %u + %u tokens, %.2f s to the first, %.1f tokens/s",
                               mx_finish_name(r->seen.finish), u.prompt_tokens, u.completion_tokens,
                               u.time_to_first_token_s, u.tokens_per_second);
                Mixtrald__V1__Finished fin = MIXTRALD__V1__FINISHED__INIT;
                fin.reason = (char *)mx_finish_name(r->seen.finish);
                fin.usage = &u;
                Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
                resp.has_tag = true, resp.tag = r->tag;
                resp.has_request_id = true, resp.request_id = r->id;
                resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_FINISHED, resp.finished = &fin;
                if (r->conn)
                        md_conn_send(r->conn, &resp);
                if (r->bus)
                        md_dbus_end(srv, r, &u);
        }
}

static void take_snapshot(md_request *r) {
        mx_buf t = r->ship_text;
        r->ship_text = r->out_text, r->out_text = t;
        r->out_text.n = 0;
        mx_ids ids = r->ship_ids;
        r->ship_ids = r->out_ids, r->out_ids = ids;
        r->out_ids.n = 0;
        r->seen.state = r->state, r->seen.started = r->started, r->seen.finish = r->finish;
        r->seen.error_code = r->error_code, r->seen.completion_tokens = r->completion_tokens;
        r->seen.t_start = r->t_start, r->seen.t_first = r->t_first, r->seen.t_end = r->t_end;
}

int md_server_on_engine(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_server *srv = userdata;
        uint64_t count;
        if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
                md_log(LOG_WARNING, "engine eventfd: %m");
        /* Every request with news is live: room for all of them, before the
         * lock, since the engine may relink dirty_next once it is released. */
        if (mx_grow((void **)&srv->ship, &srv->cap_ship, srv->n_live, sizeof(*srv->ship)) < 0) {
                md_log(LOG_ERR, "out of memory shipping output; retrying");
                uint64_t one = 1;
                return write(fd, &one, sizeof(one)) < 0 ? -errno : 0;
        }
        size_t n = 0;
        for (md_request *r = md_sched_take_dirty(srv->sched); r && n < srv->n_live; r = r->dirty_next) {
                take_snapshot(r);
                srv->ship[n++] = r;
        }
        md_sched_unlock(srv->sched);
        for (size_t i = 0; i < n; i++) {
                md_request *r = srv->ship[i];
                ship_chunk(srv, r);
                if (r->seen.state != MD_DONE)
                        continue;
                ship_end(srv, r);
                md_charge(srv, r);
                if (r->conn)
                        conn_remove(r->conn, r);
                md_live_remove(srv, r);
                md_dbus_forget(r);
                md_request_destroy(r);
        }
        return 0;
}
