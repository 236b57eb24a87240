/* The request core: what happens to a generation request between the
 * transport that decoded it and the engine, whatever the transport.
 *
 *   submit    cheap checks on the main thread: stopping, the user's and
 *             the daemon's places (counting requests still being
 *             admitted), and a lower bound on the prompt's tokens against
 *             the context and the quota, so hopeless requests cost nothing
 *   tokenize  on tokenize.c's thread
 *   admit     the exact quota check, then the request is accepted (an id,
 *             a place in the queue) and goes to the scheduler
 *   news      each step's output to the request's sink, its end charged
 *
 * Limits are a property of what was admitted: a user's places and the
 * daemon's queue count requests accepted and not ended (and, at submit,
 * those being admitted), all on the main thread, never how far the engine
 * thread got. Every refusal is logged once, with the uid and the reason.
 *
 * A transport hands the core an md_sink_ops and its own data; it hears of
 * the request only through them, and detaches when its client goes. */
#include <string.h>
#include <sys/eventfd.h>
#include <syslog.h>
#include <systemd/sd-event.h>

#include "mx_common.h"
#include "mixtrald.h"

struct md_request {
        md_core *core;
        uint64_t id;                 /* 0 until accepted */
        uint32_t uid;
        const md_sink_ops *ops;      /* NULL once detached */
        void *data;
        md_gen_params params;        /* its text, its stop strings */
        md_tok_job *tok;             /* while being tokenized */
        bool detached;
        mx_ids prompt;               /* [prompt.n] ids, BOS first */
        mx_error tok_err;
        double t_submit;
        /* accepted */
        md_job *job;
        const char **stop;           /* [params.n_stop], into params */
        mx_gen_opts opts;
        uint64_t reserved;           /* quota tokens held */
        int cut;                     /* MD_CUT_*: what set max_tokens */
        /* as of the last news */
        md_state state;
        uint32_t completion_tokens, cached_tokens;
        double t_start, t_first, t_end;
        md_request *next;            /* in the admitting list */
};

struct md_core {
        md_server *srv;
        md_tokenizer_thread *tok;
        int tok_fd;
        sd_event_source *tok_src;
        md_request *admitting;       /* being tokenized, by next */
        size_t n_admitting;
        md_request **live;           /* [n_live]: accepted, not ended */
        size_t n_live, cap_live;
        uint64_t next_id, requests_total, tokens_total;
};

static void refusal(md_refusal *ref, int code, const char *msg) {
        *ref = (md_refusal){.code = code};
        snprintf(ref->msg, sizeof(ref->msg), "%s", msg);
}

/* Logged and counted (/metrics) once each. */
static void log_refusal(md_core *c, uint32_t uid, const md_refusal *ref) {
        md_log_request(LOG_NOTICE, &(md_log_fields){.uid = uid}, "refused: %s: %s", mxp_error_name(ref->code),
                       ref->msg);
        md_metrics_refused(&c->srv->metrics, ref->code);
}

static void request_free(md_request *r) {
        if (!r)
                return;
        if (r->job)
                md_sched_release(r->core->srv->sched, r->job);
        md_gen_params_free(&r->params);
        mx_ids_free(&r->prompt);
        free(r->stop);
        free(r);
}

/* The transport's last word on r, then r goes. */
static void finish(md_request *r) {
        if (r->ops)
                r->ops->forget(r->data);
        request_free(r);
}

/* ---- the tallies admission counts ----------------------------------------- */

static void inflight_of(md_core *c, uint32_t uid, bool with_admitting, md_inflight *f) {
        *f = (md_inflight){0};
        for (size_t i = 0; i < c->n_live; i++) {
                md_request *r = c->live[i];
                if (r->uid != uid)
                        continue;
                if (r->state == MD_QUEUED)
                        f->queued++;
                else
                        f->running++;
                f->reserved += r->reserved;
        }
        for (md_request *r = c->admitting; with_admitting && r; r = r->next)
                f->queued += r->uid == uid;
}

/* Room in the daemon: what is running plus max_queue waiting. */
static bool daemon_full(md_core *c, size_t counted) {
        const md_config *cfg = &c->srv->cfg;
        return cfg->max_queue && counted >= (size_t)cfg->max_batch + cfg->max_queue;
}

/* The quota's verdict for a prompt of n tokens (exact, or a lower bound). */
static void judge(md_core *c, uint32_t uid, uint64_t n, uint32_t max_tokens, bool with_admitting, md_admission *a,
                  md_limits *l, bool *exempt) {
        md_server *srv = c->srv;
        md_users_limits(srv->users, &srv->cfg, uid, l, exempt);
        md_inflight f;
        inflight_of(c, uid, with_admitting, &f);
        uint64_t now = md_wall_now();
        md_usage_entry *e = md_usage_get(&srv->usage, uid, now);
        if (!e) {
                *a = (md_admission){.code = MIXTRALD__V1__ERROR_CODE__INTERNAL};
                snprintf(a->msg, sizeof(a->msg), "out of memory");
                return;
        }
        md_quota_admit(l, *exempt, e, &f, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n, max_tokens, srv->context_length,
                       now, a);
}

static bool refused_by(const md_core *c, const md_admission *a, md_refusal *ref) {
        if (!a->code)
                return false;
        refusal(ref, a->code, a->msg);
        /* A context cut to the KV pool's size is the admin's to raise. */
        size_t n = strlen(ref->msg);
        if (a->code == MIXTRALD__V1__ERROR_CODE__TOO_LONG && c->srv->context_is_kv)
                snprintf(ref->msg + n, sizeof(ref->msg) - n, " (all the KV cache holds: kv_memory)");
        ref->retry_at = a->retry_at;
        return true;
}

/* ---- submit ------------------------------------------------------------------- */

static bool early_refusal(md_core *c, uint32_t uid, const md_gen_params *p, md_refusal *ref) {
        md_server *srv = c->srv;
        if (srv->draining) {
                refusal(ref, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon is stopping");
                return true;
        }
        if (daemon_full(c, c->n_live + c->n_admitting)) {
                refusal(ref, MIXTRALD__V1__ERROR_CODE__BUSY, "the daemon's queue is full");
                ref->retry_after_ms = 1000;
                return true;
        }
        /* Counting the requests of this user still being admitted, with
         * the fewest tokens this prompt can have. */
        md_admission a;
        md_limits l;
        bool exempt;
        uint64_t least = md_gen_params_min_tokens(p, srv->load.tok);
        judge(c, uid, least, p->max_tokens, true, &a, &l, &exempt);
        if (a.code == MIXTRALD__V1__ERROR_CODE__TOO_LONG)
                snprintf(a.msg, sizeof(a.msg), "the prompt has at least %llu tokens; the context holds %u",
                         (unsigned long long)least, l.max_context && !exempt && l.max_context < srv->context_length
                                                            ? l.max_context
                                                            : srv->context_length);
        return refused_by(c, &a, ref);
}

md_request *md_core_submit(md_core *c, uint32_t uid, md_gen_params *p, const md_sink_ops *ops, void *data,
                           md_refusal *ref) {
        if (early_refusal(c, uid, p, ref)) {
                log_refusal(c, uid, ref);
                return NULL;
        }
        md_request *r = calloc(1, sizeof(*r));
        if (!r) {
                refusal(ref, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
                return NULL;
        }
        *r = (md_request){.core = c, .uid = uid, .ops = ops, .data = data, .params = *p, .t_submit = md_now()};
        *p = (md_gen_params){0};
        r->tok = md_tokenize_submit(c->tok, uid, &r->params, &r->prompt, &r->tok_err, r);
        if (!r->tok) {
                request_free(r);
                refusal(ref, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
                return NULL;
        }
        r->next = c->admitting;
        c->admitting = r;
        c->n_admitting++;
        return r;
}

/* ---- admit ------------------------------------------------------------------ */

static void unlink_admitting(md_core *c, md_request *r) {
        for (md_request **p = &c->admitting; *p; p = &(*p)->next)
                if (*p == r) {
                        *p = r->next;
                        c->n_admitting--;
                        return;
                }
}

/* Requests ahead of r before it runs: beyond the batch's places, and
 * beyond the user's own (0: it starts at the next step). */
static uint32_t position_of(md_core *c, const md_request *r, const md_limits *l, bool exempt) {
        size_t ahead = c->n_live, mine = 0, batch = c->srv->cfg.max_batch;
        for (size_t i = 0; i < c->n_live; i++)
                mine += c->live[i]->uid == r->uid;
        size_t pos = ahead >= batch ? ahead - batch + 1 : 0;
        if (!exempt && l->max_concurrent && mine >= l->max_concurrent && mine - l->max_concurrent + 1 > pos)
                pos = mine - l->max_concurrent + 1;
        return pos > UINT32_MAX ? UINT32_MAX : (uint32_t)pos;
}

static int to_engine(md_core *c, md_request *r, const md_admission *a, const md_limits *l, bool exempt) {
        md_server *srv = c->srv;
        const md_gen_params *p = &r->params;
        if (p->n_stop && !(r->stop = calloc(p->n_stop, sizeof(*r->stop))))
                return -ENOMEM;
        for (size_t i = 0; i < p->n_stop; i++)
                r->stop[i] = p->stop[i].s;
        /* Namespace 0 is everyone's; a user's own is uid + 1. */
        int share = srv->cfg.prefix_cache_share;
        r->opts = (mx_gen_opts){.sampling = p->sampling, .max_tokens = a->max_tokens, .stop = r->stop,
                                .n_stop = p->n_stop, .max_context = (uint32_t)r->prompt.n + a->max_tokens,
                                .prefill_chunk = srv->cfg.prefill_chunk, .keep_leading_space = p->raw,
                                .ignore_eos = p->ignore_eos, .no_prefix_cache = share == MD_SHARE_OFF,
                                .cache_namespace = share == MD_SHARE_USER ? (uint64_t)r->uid + 1 : 0};
        /* The context holds the prompt and every granted token, plus the
         * slot the last one is fed into. */
        if (r->opts.max_context < srv->context_length)
                r->opts.max_context++;
        md_job_spec spec = {.uid = r->uid, .max_concurrent = exempt ? 0 : l->max_concurrent, .prompt = r->prompt.v,
                            .n_prompt = r->prompt.n, .opts = r->opts, .want_ids = p->want_ids, .owner = r};
        if (mx_grow((void **)&c->live, &c->cap_live, c->n_live + 1, sizeof(*c->live)) < 0 ||
            !(r->job = md_sched_submit(srv->sched, &spec)))
                return -ENOMEM;
        return 0;
}

static void accept_request(md_core *c, md_request *r, const md_admission *a, const md_limits *l, bool exempt) {
        uint32_t position = position_of(c, r, l, exempt);
        r->id = ++c->next_id;
        r->reserved = a->reserve;
        r->cut = a->cut;
        r->state = MD_QUEUED;
        c->live[c->n_live++] = r;
        c->requests_total++;
        md_log_request(LOG_INFO, &(md_log_fields){.request_id = r->id, .uid = r->uid,
                                                 .prompt_tokens = (uint32_t)r->prompt.n},
                       "accepted: %zu prompt tokens, up to %u more, %u ahead", r->prompt.n, r->opts.max_tokens,
                       position);
        md_accepted acc = {r->id, position, (uint32_t)r->prompt.n, r->opts.max_tokens};
        r->ops->accepted(r->data, &acc);
}

static void admit(md_core *c, md_request *r, int rc) {
        md_refusal ref = {0};
        md_admission a;
        md_limits l;
        bool exempt = false;
        if (rc < 0)
                refusal(&ref, rc == -ENOMEM ? MIXTRALD__V1__ERROR_CODE__INTERNAL
                                            : MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT, r->tok_err.msg);
        else if (c->srv->draining)
                refusal(&ref, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon is stopping");
        else if (daemon_full(c, c->n_live)) {
                refusal(&ref, MIXTRALD__V1__ERROR_CODE__BUSY, "the daemon's queue is full");
                ref.retry_after_ms = 1000;
        } else {
                judge(c, r->uid, r->prompt.n, r->params.max_tokens, false, &a, &l, &exempt);
                if (!refused_by(c, &a, &ref) && to_engine(c, r, &a, &l, exempt) < 0)
                        refusal(&ref, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        }
        if (ref.code) {
                log_refusal(c, r->uid, &ref);
                r->ops->refused(r->data, &ref);
                return finish(r);
        }
        accept_request(c, r, &a, &l, exempt);
}

static void on_tokenized(void *owner, int rc, void *arg) {
        md_core *c = arg;
        md_request *r = owner;
        r->tok = NULL;
        unlink_admitting(c, r);
        if (r->detached)
                return request_free(r);
        admit(c, r, rc);
}

static int on_tok_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_core *c = userdata;
        uint64_t count;
        if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
                md_log(LOG_WARNING, "tokenizer eventfd: %m");
        md_tokenize_collect(c->tok, on_tokenized, c);
        md_service_maybe_exit(c->srv);
        return 0;
}

/* ---- output ------------------------------------------------------------------- */

static void live_remove(md_core *c, md_request *r) {
        for (size_t i = 0; i < c->n_live; i++)
                if (c->live[i] == r) {
                        c->live[i] = c->live[--c->n_live];
                        return;
                }
}

static void fill_usage(const md_request *r, md_usage_report *u) {
        uint32_t n = r->completion_tokens;
        bool started = r->t_start > 0;
        *u = (md_usage_report){.prompt_tokens = (uint32_t)r->prompt.n, .completion_tokens = n,
                               .cached_prompt_tokens = r->cached_tokens, .total_s = r->t_end - r->t_submit};
        u->queued_s = started ? r->t_start - r->t_submit : u->total_s;
        if (n) {
                u->has_ttft = true, u->ttft_s = r->t_first - r->t_submit;
                double decode = r->t_end - r->t_first;
                u->tokens_per_s = n > 1 && decode > 0 ? (n - 1) / decode : 0;
        }
}

/* Charges what a request used (the prompt tokens it computed, those the
 * KV cache served being free, and what it generated) and saves the usage
 * file, so that a crash right after loses nothing. */
static void charge(md_core *c, const md_request *r) {
        if (r->t_start <= 0)
                return;
        uint64_t tokens = r->prompt.n - r->cached_tokens + r->completion_tokens;
        c->tokens_total += tokens;
        mx_error err = {0};
        md_server *srv = c->srv;
        if (md_usage_charge(&srv->usage, r->uid, tokens, md_wall_now()) < 0 || md_usage_save(&srv->usage, &err) < 0)
                md_log(LOG_ERR, "usage of uid %u not saved: %s", r->uid, err.msg[0] ? err.msg : "out of memory");
}

static const char *cut_note(const md_request *r, mx_finish f) {
        if (f != MX_FINISH_LENGTH)
                return NULL;
        return r->cut == MD_CUT_BUDGET     ? "the answer was cut short by your token quota"
               : r->cut == MD_CUT_MAX_TOKENS ? "the answer was cut short by your max_tokens limit"
                                             : NULL;
}

static void end(md_core *c, md_request *r, const md_news *n) {
        md_outcome o = {.error_code = n->error_code, .error_msg = n->error_msg, .finish = n->finish,
                        .note = n->error_code ? NULL : cut_note(r, n->finish)};
        fill_usage(r, &o.usage);
        md_log_fields lf = {.request_id = r->id, .uid = r->uid, .prompt_tokens = o.usage.prompt_tokens,
                            .completion_tokens = o.usage.completion_tokens, .ttft_s = o.usage.ttft_s,
                            .tokens_per_s = o.usage.tokens_per_s, .total_s = o.usage.total_s};
        if (o.error_code)
                md_log_request(LOG_INFO, &lf, "%s: %s", mxp_error_name(o.error_code), o.error_msg);
        else
                md_log_request(LOG_INFO, &lf,
                               "finished (%s%s%s): %u + %u tokens (%u of the prompt's cached), %.2f s to the first, "
                               "%.1f tokens/s",
                               mx_finish_name(o.finish), o.note ? ", " : "", o.note ? o.note : "",
                               o.usage.prompt_tokens, o.usage.completion_tokens, o.usage.cached_prompt_tokens,
                               o.usage.ttft_s, o.usage.tokens_per_s);
        if (r->ops)
                r->ops->end(r->data, &o);
        md_metrics_ended(&c->srv->metrics, &o);
        charge(c, r);
        live_remove(c, r);
        finish(r);
}

int md_core_on_engine(md_core *c) {
        const md_news *news;
        size_t n = md_sched_collect(c->srv->sched, &news);
        for (size_t i = 0; i < n; i++) {
                const md_news *x = &news[i];
                md_request *r = x->owner;
                r->state = x->state, r->completion_tokens = x->completion_tokens;
                r->cached_tokens = x->cached_tokens;
                r->t_start = x->t_start, r->t_first = x->t_first, r->t_end = x->t_end;
                if (r->ops && (x->text_len || x->n_ids))
                        r->ops->chunk(r->data, x->text, x->text_len, x->ids, x->n_ids);
                if (x->state == MD_DONE)
                        end(c, r, x);
        }
        return 0;
}

/* ---- the transports' other calls ------------------------------------------------- */

void md_core_detach(md_core *c, md_request *r) {
        r->ops = NULL, r->data = NULL;
        if (r->tok) {
                r->detached = true;
                md_tokenize_cancel(c->tok, r->tok);
        } else if (r->job)
                md_sched_cancel(c->srv->sched, r->job, 0, NULL);
}

static md_request *find(md_core *c, uint32_t uid, uint64_t id) {
        for (size_t i = 0; i < c->n_live; i++) {
                md_request *r = c->live[i];
                /* Someone else's request is as good as absent: no probing. */
                if (r->id == id && (r->uid == uid || uid == 0))
                        return r;
        }
        return NULL;
}

int md_core_cancel(md_core *c, uint32_t uid, uint64_t id) {
        md_request *r = find(c, uid, id);
        if (!r)
                return -ENOENT;
        md_sched_cancel(c->srv->sched, r->job, 0, NULL);
        return 0;
}

bool md_core_visible(md_core *c, uint32_t uid, uint64_t id) {
        return find(c, uid, id) != NULL;
}

size_t md_core_live(md_core *c) {
        return c->n_live + c->n_admitting;
}

void md_core_drain(md_core *c) {
        md_sched_abort_queued(c->srv->sched, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE,
                              "the daemon is stopping; the request had not started");
}

void md_core_totals(md_core *c, uint64_t *requests, uint64_t *tokens) {
        *requests = c->requests_total, *tokens = c->tokens_total;
}

int md_core_quota(md_core *c, uint32_t uid, md_quota_report *q) {
        md_server *srv = c->srv;
        *q = (md_quota_report){.uid = uid};
        md_users_limits(srv->users, &srv->cfg, uid, &q->limits, &q->exempt);
        if (!q->limits.max_context)
                q->limits.max_context = srv->context_length;
        md_inflight f;
        inflight_of(c, uid, true, &f);
        md_usage_entry *e = md_usage_get(&srv->usage, uid, md_wall_now());
        if (!e)
                return -ENOMEM;
        q->used_hour = e->hour_used, q->used_day = e->day_used;
        q->hour_resets = e->hour_start + 3600, q->day_resets = e->day_start + 86400;
        q->running = f.running, q->queued = f.queued;
        return 0;
}

int md_core_requests(md_core *c, uint32_t uid, bool all, md_request_view **out, size_t *n,
                     md_request_counts *counts) {
        *counts = (md_request_counts){.queued = (uint32_t)c->n_admitting};
        *n = 0;
        if (!(*out = calloc(c->n_live + 1, sizeof(**out))))
                return -ENOMEM;
        double now = md_now();
        for (size_t i = 0; i < c->n_live; i++) {
                const md_request *r = c->live[i];
                counts->prefilling += r->state == MD_PREFILL;
                counts->decoding += r->state == MD_DECODE;
                counts->queued += r->state == MD_QUEUED;
                counts->running += r->state == MD_PREFILL || r->state == MD_DECODE;
                if (r->uid == uid || all)
                        (*out)[(*n)++] = (md_request_view){r->id, r->uid, r->state, (uint32_t)r->prompt.n,
                                                           r->completion_tokens, now - r->t_submit};
        }
        return 0;
}

/* ---- life ------------------------------------------------------------------------- */

int md_core_new(md_server *srv, md_core **out, mx_error *err) {
        md_core *c = calloc(1, sizeof(*c));
        if (!c)
                return mx_error_set(err, -ENOMEM, "out of memory");
        c->srv = srv;
        c->tok_fd = -1;
        *out = c;
        return 0;
}

int md_core_start(md_core *c, mx_error *err) {
        md_server *srv = c->srv;
        if ((c->tok_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
                return mx_error_set(err, -errno, "eventfd: %s", strerror(errno));
        int r = md_tokenize_start(&c->tok, srv->load.tok, c->tok_fd, err);
        if (r < 0)
                return r;
        if ((r = sd_event_add_io(srv->event, &c->tok_src, c->tok_fd, EPOLLIN, on_tok_event, c)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        return 0;
}

/* After the scheduler stopped and its last news were taken. */
void md_core_free(md_core *c) {
        if (!c)
                return;
        md_tokenize_stop(c->tok); /* (frees its jobs; their requests go below) */
        for (md_request *r = c->admitting, *next; r; r = next) {
                next = r->next;
                request_free(r);
        }
        for (size_t i = 0; i < c->n_live; i++)
                request_free(c->live[i]);
        free(c->live);
        sd_event_source_disable_unref(c->tok_src);
        if (c->tok_fd >= 0)
                close(c->tok_fd);
        free(c);
}
