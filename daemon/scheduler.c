/* The engine thread and its continuous batching. Each step advances every
 * running request together: decoding requests by one token, prefilling ones
 * by a chunk of their prompt (within a per-step budget, so a long prompt
 * never stalls the others for long). New requests join at the next step;
 * free places go round-robin between users, not requests, so one user's
 * hundred requests do not starve another's one.
 *
 * The main thread only ever sets flags and reads counters under the lock;
 * the engine thread alone touches the model, and publishes output to each
 * request's buffers, then wakes the main thread through an eventfd. */
#include <pthread.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "mx_common.h"
#include "mixtrald.h"

struct md_sched {
        mx_engine *e;
        const mx_tokenizer *tok;
        md_sched_opts o;
        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        md_request *queue;        /* FIFO by sched_next */
        md_request **running;     /* engine thread writes, under the lock */
        size_t n_running, cap_running;
        md_request *dirty;
        int notify_fd;
        uint32_t last_uid;        /* round-robin cursor for admission */
        uint32_t last_prefill_uid;
        bool stop;
        int stop_code;
        char stop_msg[256];
        mx_buf text;              /* one step's new text for one request */
        uint64_t expert_memory;   /* engine thread: the budget in force */
        uint64_t host_cache;      /* engine thread: a GPU's host cache in force */
        mx_expert_stats xstats;   /* locked: as of the last step */
};

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *md_state_name(md_state s) {
        static const char *const names[] = {"queued", "prefill", "decode", "done"};
        return s <= MD_DONE ? names[s] : "?";
}

void md_request_destroy(md_request *r) {
        if (!r)
                return;
        mx_gen_free(r->gen);
        mx_ids_free(&r->prompt);
        mx_buf_free(&r->out_text);
        mx_ids_free(&r->out_ids);
        mx_buf_free(&r->ship_text);
        mx_ids_free(&r->ship_ids);
        if (r->stop)
                for (size_t i = 0; i < r->opts.n_stop; i++)
                        free(r->stop[i]);
        free(r->stop);
        free(r);
}

static void wake_main(md_sched *s) {
        uint64_t one = 1;
        ssize_t k = write(s->notify_fd, &one, sizeof(one));
        (void)k; /* an eventfd at its maximum is already awake */
}

static void mark_dirty(md_sched *s, md_request *r) {
        if (r->dirty)
                return;
        r->dirty = true;
        r->dirty_next = s->dirty;
        s->dirty = r;
}

static void remove_running(md_sched *s, md_request *r) {
        for (size_t i = 0; i < s->n_running; i++)
                if (s->running[i] == r) {
                        s->running[i] = s->running[--s->n_running];
                        return;
                }
}

/* Ends r (locked): it leaves the engine, its KV cache is freed, and the
 * main thread learns of it; from here on only the main thread touches it. */
static void end_locked(md_sched *s, md_request *r, int code, const char *msg) {
        if (code && !r->error_code) {
                r->error_code = code;
                snprintf(r->error_msg, sizeof(r->error_msg), "%s", msg);
        }
        remove_running(s, r);
        mx_gen_free(r->gen);
        r->gen = NULL;
        r->state = MD_DONE;
        r->t_end = now_s();
        mark_dirty(s, r);
}

/* Cancelled requests leave at once: the queued ones and, between steps,
 * the running ones, whose KV cache is freed here. */
static void reap_locked(md_sched *s) {
        for (md_request **p = &s->queue; *p;) {
                md_request *r = *p;
                if (!r->cancel) {
                        p = &r->sched_next;
                        continue;
                }
                *p = r->sched_next;
                end_locked(s, r, MIXTRALD__V1__ERROR_CODE__CANCELLED, "cancelled");
        }
        for (size_t i = 0; i < s->n_running;) {
                md_request *r = s->running[i];
                if (r->cancel)
                        end_locked(s, r, MIXTRALD__V1__ERROR_CODE__CANCELLED, "cancelled");
                else
                        i++;
        }
}

static uint32_t running_of(const md_sched *s, uint32_t uid) {
        uint32_t n = 0;
        for (size_t i = 0; i < s->n_running; i++)
                n += s->running[i]->uid == uid;
        return n;
}

/* The first queued request of the next user after the cursor (in uid
 * order, wrapping) who is under their concurrency limit. */
static md_request **pick_locked(md_sched *s) {
        md_request **best = NULL, **first = NULL;
        for (md_request **p = &s->queue; *p; p = &(*p)->sched_next) {
                md_request *r = *p;
                if (r->max_concurrent && running_of(s, r->uid) >= r->max_concurrent)
                        continue;
                if (r->uid > s->last_uid && (!best || r->uid < (*best)->uid))
                        best = p;
                if (!first || r->uid < (*first)->uid)
                        first = p;
        }
        return best ? best : first;
}

static void admit_locked(md_sched *s) {
        md_request **p;
        while (s->n_running < s->o.max_batch && (p = pick_locked(s))) {
                md_request *r = *p;
                if (mx_grow((void **)&s->running, &s->cap_running, s->n_running + 1, sizeof(*s->running)) < 0)
                        return; /* try again next step */
                *p = r->sched_next;
                r->sched_next = NULL;
                r->state = MD_PREFILL;
                r->started = true;
                r->t_start = now_s();
                s->last_uid = r->uid;
                s->running[s->n_running++] = r;
        }
}

static int start_gen(md_sched *s, md_request *r) {
        mx_error err = {0};
        r->opts.stop = (const char *const *)r->stop;
        int rc = mx_gen_new(s->e, s->tok, r->prompt.v, r->prompt.n, &r->opts, &r->gen, &err);
        if (rc < 0) {
                pthread_mutex_lock(&s->lock);
                end_locked(s, r,
                           rc == -E2BIG ? MIXTRALD__V1__ERROR_CODE__TOO_LONG : MIXTRALD__V1__ERROR_CODE__INTERNAL,
                           err.msg);
                pthread_mutex_unlock(&s->lock);
        }
        return rc;
}

/* Prefilling requests take prompt chunks in round-robin by uid until the
 * step's budget is spent; decoding ones always go. */
static size_t build_batch(md_sched *s, md_request **run, size_t n, mx_batch_item *items, md_request **who) {
        size_t k = 0;
        uint32_t budget = s->o.prefill_chunk;
        for (size_t i = 0; i < n; i++)
                if (run[i]->gen && run[i]->state == MD_DECODE) {
                        mx_gen_prepare(run[i]->gen, &items[k]);
                        who[k++] = run[i];
                }
        bool any = false;
        /* Users after the one served last go first: pass 0 takes uids above
         * the cursor, pass 1 the rest. */
        uint32_t cursor = s->last_prefill_uid;
        for (int pass = 0; pass < 2; pass++)
                for (size_t i = 0; i < n; i++) {
                        md_request *r = run[i];
                        if (!r->gen || r->state != MD_PREFILL || (r->uid > cursor) != (pass == 0))
                                continue;
                        mx_batch_item it;
                        mx_gen_prepare(r->gen, &it);
                        if (any && it.n_tokens > budget)
                                continue;
                        budget = it.n_tokens > budget ? 0 : budget - it.n_tokens;
                        any = true;
                        items[k] = it;
                        who[k++] = r;
                        s->last_prefill_uid = r->uid;
                }
        return k;
}

/* After a step: each request's new text and ids go to its buffers. */
static void publish(md_sched *s, md_request *r, int32_t token, int rc) {
        pthread_mutex_lock(&s->lock);
        double t = now_s();
        if (rc < 0) {
                end_locked(s, r, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
        } else {
                if (token >= 0) {
                        if (r->state == MD_PREFILL)
                                r->state = MD_DECODE, r->t_first = t;
                        r->completion_tokens++;
                        if (r->want_ids && mx_ids_push(&r->out_ids, token) < 0)
                                rc = -ENOMEM;
                }
                if (s->text.n && mx_buf_append(&r->out_text, s->text.p, s->text.n) < 0)
                        rc = -ENOMEM;
                r->finish = mx_gen_finished(r->gen);
                if (rc < 0)
                        end_locked(s, r, MIXTRALD__V1__ERROR_CODE__INTERNAL, "out of memory");
                else if (r->finish != MX_FINISH_NONE)
                        end_locked(s, r, 0, NULL);
                else if (s->text.n || token >= 0)
                        mark_dirty(s, r);
        }
        pthread_mutex_unlock(&s->lock);
}

static void step(md_sched *s, md_request **run, size_t n, mx_batch_item *items, md_request **who) {
        for (size_t i = 0; i < n; i++)
                if (!run[i]->gen && start_gen(s, run[i]) < 0)
                        run[i]->gen = NULL;
        size_t k = build_batch(s, run, n, items, who);
        if (k == 0)
                return;
        mx_error err = {0};
        int rc = mx_forward(s->e, items, k, &err);
        if (rc < 0) {
                pthread_mutex_lock(&s->lock);
                for (size_t i = 0; i < k; i++)
                        end_locked(s, who[i], MIXTRALD__V1__ERROR_CODE__INTERNAL, err.msg);
                pthread_mutex_unlock(&s->lock);
                return;
        }
        for (size_t i = 0; i < k; i++) {
                int32_t token = -1;
                s->text.n = 0;
                int r = mx_gen_advance(who[i]->gen, &s->text, &token);
                publish(s, who[i], token, r);
        }
}

/* A new expert budget or host cache (SIGHUP, memory pressure) takes
 * effect between steps, on this thread, which alone touches the engine. */
static void apply_budget(md_sched *s, uint64_t want, uint64_t host) {
        mx_error err = {0};
        if (want != s->expert_memory) {
                if (mx_engine_set_expert_memory(s->e, want, &err) < 0)
                        md_log(LOG_ERR, "expert memory stays at %llu bytes: %s", (unsigned long long)s->expert_memory,
                               err.msg);
                else
                        md_log(LOG_INFO, "expert memory now %llu bytes%s", (unsigned long long)want,
                               want ? "" : " (all mapped)");
        }
        if (host != s->host_cache) {
                if (mx_engine_set_host_cache(s->e, host, &err) < 0)
                        md_log(LOG_ERR, "the host cache stays at %llu bytes: %s", (unsigned long long)s->host_cache,
                               err.msg);
                else
                        md_log(LOG_INFO, "the GPU's host cache now %llu bytes", (unsigned long long)host);
        }
        s->expert_memory = want, s->host_cache = host; /* (tried once per change) */
}

static void *engine_thread(void *arg) {
        md_sched *s = arg;
        md_request **run = NULL, **who = NULL;
        mx_batch_item *items = NULL;
        size_t cap = 0;
        pthread_mutex_lock(&s->lock);
        for (;;) {
                reap_locked(s);
                if (s->stop)
                        break;
                admit_locked(s);
                if (s->dirty)
                        wake_main(s);
                if (s->o.expert_memory != s->expert_memory || s->o.host_cache != s->host_cache) {
                        uint64_t budget = s->o.expert_memory, host = s->o.host_cache;
                        pthread_mutex_unlock(&s->lock);
                        apply_budget(s, budget, host);
                        mx_expert_stats xs;
                        mx_engine_expert_stats(s->e, &xs);
                        pthread_mutex_lock(&s->lock);
                        s->xstats = xs;
                        continue;
                }
                if (s->n_running == 0) {
                        pthread_cond_wait(&s->wake, &s->lock);
                        continue;
                }
                size_t n = s->n_running;
                if (n > cap) {
                        free(run), free(who), free(items);
                        run = calloc(n, sizeof(*run)), who = calloc(n, sizeof(*who));
                        items = calloc(n, sizeof(*items));
                        cap = run && who && items ? n : 0;
                        if (!cap) {
                                pthread_mutex_unlock(&s->lock);
                                struct timespec ts = {0, 10000000};
                                nanosleep(&ts, NULL);
                                pthread_mutex_lock(&s->lock);
                                continue;
                        }
                }
                memcpy(run, s->running, n * sizeof(*run));
                pthread_mutex_unlock(&s->lock);
                step(s, run, n, items, who);
                mx_expert_stats xs;
                mx_engine_expert_stats(s->e, &xs);
                pthread_mutex_lock(&s->lock);
                s->xstats = xs;
        }
        for (md_request *r = s->queue; r; r = r->sched_next)
                end_locked(s, r, s->stop_code, s->stop_msg);
        s->queue = NULL;
        while (s->n_running)
                end_locked(s, s->running[0], s->stop_code, s->stop_msg);
        wake_main(s);
        pthread_mutex_unlock(&s->lock);
        free(run), free(who), free(items);
        return NULL;
}

int md_sched_start(md_sched **out, mx_engine *e, const mx_tokenizer *tok, const md_sched_opts *o,
                   int notify_fd, mx_error *err) {
        md_sched *s = calloc(1, sizeof(*s));
        if (!s)
                return mx_error_set(err, -ENOMEM, "out of memory");
        *s = (md_sched){.e = e, .tok = tok, .o = *o, .notify_fd = notify_fd, .expert_memory = o->expert_memory,
                           .host_cache = o->host_cache};
        mx_engine_expert_stats(e, &s->xstats);
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->wake, NULL);
        int r = pthread_create(&s->thread, NULL, engine_thread, s);
        if (r) {
                free(s);
                return mx_error_set(err, -r, "cannot start the engine thread: %s", strerror(r));
        }
        s->thread_started = true;
        *out = s;
        return 0;
}

void md_sched_stop(md_sched *s, int code, const char *msg) {
        if (!s)
                return;
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        s->stop_code = code;
        snprintf(s->stop_msg, sizeof(s->stop_msg), "%s", msg);
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        if (s->thread_started)
                pthread_join(s->thread, NULL);
        s->thread_started = false;
}

/* After md_sched_stop and after the main thread took the last dirty list. */
void md_sched_free(md_sched *s) {
        if (!s)
                return;
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        free(s->running);
        mx_buf_free(&s->text);
        free(s);
}

void md_sched_set_opts(md_sched *s, const md_sched_opts *o) {
        pthread_mutex_lock(&s->lock);
        s->o = *o;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
}

void md_sched_submit(md_sched *s, md_request *r) {
        pthread_mutex_lock(&s->lock);
        r->state = MD_QUEUED;
        r->sched_next = NULL;
        md_request **p = &s->queue;
        while (*p)
                p = &(*p)->sched_next;
        *p = r;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
}

void md_sched_cancel(md_sched *s, md_request *r) {
        pthread_mutex_lock(&s->lock);
        if (r->state != MD_DONE) {
                r->cancel = true;
                pthread_cond_signal(&s->wake);
        }
        pthread_mutex_unlock(&s->lock);
}

void md_sched_wake(md_sched *s) {
        pthread_mutex_lock(&s->lock);
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
}

void md_sched_abort_all(md_sched *s, int code, const char *msg) {
        pthread_mutex_lock(&s->lock);
        for (md_request *r = s->queue; r; r = r->sched_next)
                end_locked(s, r, code, msg);
        s->queue = NULL;
        for (size_t i = 0; i < s->n_running; i++) {
                md_request *r = s->running[i];
                if (!r->error_code) {
                        r->error_code = code;
                        snprintf(r->error_msg, sizeof(r->error_msg), "%s", msg);
                }
                r->cancel = true;
        }
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
}

md_request *md_sched_take_dirty(md_sched *s) {
        pthread_mutex_lock(&s->lock);
        md_request *list = s->dirty;
        s->dirty = NULL;
        for (md_request *r = list; r; r = r->dirty_next)
                r->dirty = false;
        return list;
}

void md_sched_lock(md_sched *s) {
        pthread_mutex_lock(&s->lock);
}

void md_sched_unlock(md_sched *s) {
        pthread_mutex_unlock(&s->lock);
}

void md_sched_counts_locked(md_sched *s, uint32_t *queued, uint32_t *running) {
        uint32_t q = 0;
        for (md_request *r = s->queue; r; r = r->sched_next)
                q++;
        *queued = q;
        *running = (uint32_t)s->n_running;
}

md_request *md_sched_queue_locked(md_sched *s) {
        return s->queue;
}

void md_sched_expert_stats_locked(md_sched *s, mx_expert_stats *out) {
        *out = s->xstats;
}
