/* Admission, shared by the socket and D-Bus: validation, tokenizing, the
 * user's quotas and the global queue, then the request goes to the engine.
 * Also cancel and the quota report, which need the same bookkeeping. */
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "mx_common.h"
#include "mixtrald.h"

uint64_t md_wall_now(void) {
        return (uint64_t)time(NULL);
}

static void live_add(md_server *srv, md_request *r) {
        srv->live[srv->n_live++] = r;
}

void md_live_remove(md_server *srv, md_request *r) {
        for (size_t i = 0; i < srv->n_live; i++)
                if (srv->live[i] == r) {
                        srv->live[i] = srv->live[--srv->n_live];
                        return;
                }
}

static void inflight_of(md_server *srv, uint32_t uid, md_inflight *f) {
        *f = (md_inflight){0};
        md_sched_lock(srv->sched);
        for (size_t i = 0; i < srv->n_live; i++) {
                md_request *r = srv->live[i];
                if (r->uid != uid)
                        continue;
                if (r->state == MD_QUEUED)
                        f->queued++;
                else
                        f->running++;
                f->reserved += r->reserved;
        }
        md_sched_unlock(srv->sched);
}

static uint32_t queued_total(md_server *srv) {
        uint32_t q, run;
        md_sched_lock(srv->sched);
        md_sched_counts_locked(srv->sched, &q, &run);
        md_sched_unlock(srv->sched);
        return q;
}

/* A request ready for the engine, owning copies of what it needs. */
static md_request *request_new(md_server *srv, uint32_t uid, uint64_t tag, const md_gen_params *p,
                               mx_ids *ids, const md_admission *a, const md_limits *l, bool exempt) {
        md_request *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;
        *r = (md_request){.id = ++srv->next_id, .tag = tag, .uid = uid, .prompt = *ids,
                          .want_ids = p->want_ids, .reserved = a->reserve, .t_submit = md_now(),
                          .max_concurrent = exempt ? 0 : l->max_concurrent};
        *ids = (mx_ids){0};
        r->opts = (mx_gen_opts){.sampling = p->sampling, .max_tokens = a->max_tokens,
                                .max_context = (uint32_t)r->prompt.n + a->max_tokens,
                                .prefill_chunk = srv->cfg.prefill_chunk, .keep_leading_space = p->raw,
                                .ignore_eos = p->ignore_eos};
        /* The context holds the prompt and every granted token, plus the
         * slot the last one is fed into. */
        if (r->opts.max_context < srv->context_length)
                r->opts.max_context++;
        if (p->n_stop && !(r->stop = calloc(p->n_stop, sizeof(char *))))
                goto fail;
        for (size_t i = 0; i < p->n_stop; i++)
                if (!(r->stop[i] = strdup(p->stop[i])))
                        goto fail;
        r->opts.n_stop = p->n_stop;
        return r;
fail:
        r->opts.n_stop = p->n_stop;
        md_request_destroy(r);
        return NULL;
}

static void refuse(md_refusal *ref, int code, const char *msg) {
        ref->code = code;
        snprintf(ref->msg, sizeof(ref->msg), "%s", msg);
}

md_request *md_admit(md_server *srv, uint32_t uid, uint32_t gid, uint64_t tag, const Mixtrald__V1__Generate *g,
                     uint32_t *position, md_refusal *ref) {
        *ref = (md_refusal){0};
        if (srv->draining)
                return refuse(ref, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon is stopping"), NULL;
        mx_error err = {0};
        _cleanup_(md_gen_params_free) md_gen_params p = {0};
        _cleanup_(mx_ids_free) mx_ids ids = {0};
        if (md_gen_params_from(g, &p, &err) < 0 || md_gen_params_ids(&p, srv->tok, &ids, &err) < 0)
                return refuse(ref, err.code == -ENOMEM ? MIXTRALD__V1__ERROR_CODE__INTERNAL
                                                       : MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, err.msg), NULL;
        md_limits l;
        bool exempt;
        md_config_limits(&srv->cfg, uid, gid, &l, &exempt);
        md_inflight f;
        inflight_of(srv, uid, &f);
        uint64_t now = md_wall_now();
        md_usage_entry *e = md_usage_get(&srv->usage, uid, now);
        if (!e)
                return refuse(ref, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory"), NULL;
        md_admission a;
        uint32_t n = ids.n > UINT32_MAX ? UINT32_MAX : (uint32_t)ids.n;
        md_quota_admit(&l, exempt, e, &f, n, p.max_tokens, srv->context_length, now, &a);
        if (a.code) {
                refuse(ref, a.code, a.msg);
                ref->retry_at = a.retry_at;
                return NULL;
        }
        uint32_t queued = queued_total(srv);
        if (srv->cfg.max_queue && queued >= srv->cfg.max_queue) {
                refuse(ref, MIXTRALD__V1__ERROR_CODE__BUSY, "the daemon's queue is full");
                ref->retry_after_ms = 1000;
                return NULL;
        }
        md_request *r = NULL;
        if (mx_grow((void **)&srv->live, &srv->cap_live, srv->n_live + 1, sizeof(*srv->live)) < 0 ||
            !(r = request_new(srv, uid, tag, &p, &ids, &a, &l, exempt)))
                return refuse(ref, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory"), NULL;
        *position = queued;
        return r;
}

void md_submit(md_server *srv, md_request *r) {
        live_add(srv, r);
        srv->requests_total++;
        md_log_request(LOG_INFO, &(md_log_fields){.request_id = r->id, .uid = r->uid,
                                                 .prompt_tokens = (uint32_t)r->prompt.n},
                       "accepted: %zu prompt tokens, up to %u more", r->prompt.n, r->opts.max_tokens);
        md_sched_submit(srv->sched, r);
}

md_request *md_find_request(md_server *srv, uint32_t uid, uint64_t id) {
        for (size_t i = 0; i < srv->n_live; i++) {
                md_request *r = srv->live[i];
                /* Someone else's request is as good as absent: no probing. */
                if (r->id == id && (r->uid == uid || uid == 0))
                        return r;
        }
        return NULL;
}

int md_fill_quota(md_server *srv, uint32_t uid, uint32_t gid, Mixtrald__V1__Quota *q, Mixtrald__V1__Limits *lim) {
        md_limits l;
        bool exempt;
        md_config_limits(&srv->cfg, uid, gid, &l, &exempt);
        md_inflight f;
        inflight_of(srv, uid, &f);
        md_usage_entry *e = md_usage_get(&srv->usage, uid, md_wall_now());
        if (!e)
                return -ENOMEM;
        mixtrald__v1__limits__init(lim);
        lim->has_tokens_per_hour = lim->has_tokens_per_day = lim->has_max_concurrent = true;
        lim->has_max_queued = lim->has_max_context = lim->has_max_tokens = true;
        lim->tokens_per_hour = l.tokens_per_hour, lim->tokens_per_day = l.tokens_per_day;
        lim->max_concurrent = l.max_concurrent, lim->max_queued = l.max_queued;
        lim->max_context = l.max_context ? l.max_context : srv->context_length;
        lim->max_tokens = l.max_tokens;
        mixtrald__v1__quota__init(q);
        q->has_uid = true, q->uid = uid;
        q->has_exempt = true, q->exempt = exempt;
        q->limits = lim;
        q->has_used_hour = true, q->used_hour = e->hour_used;
        q->has_used_day = true, q->used_day = e->day_used;
        q->has_hour_resets_unix = true, q->hour_resets_unix = e->hour_start + 3600;
        q->has_day_resets_unix = true, q->day_resets_unix = e->day_start + 86400;
        q->has_running = true, q->running = f.running;
        q->has_queued = true, q->queued = f.queued;
        return 0;
}

/* Charges what a request used and saves the usage file, so that a crash
 * right after loses nothing. */
void md_charge(md_server *srv, const md_request *r) {
        if (!r->seen.started)
                return;
        uint64_t tokens = r->prompt.n + r->seen.completion_tokens;
        srv->tokens_total += tokens;
        mx_error err = {0};
        if (md_usage_charge(&srv->usage, r->uid, tokens, md_wall_now()) < 0 ||
            md_usage_save(&srv->usage, &err) < 0)
                md_log(LOG_ERR, "usage of uid %u not saved: %s", r->uid, err.msg[0] ? err.msg : "out of memory");
}

